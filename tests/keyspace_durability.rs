//! The keyspace across restarts, under `fsync always`, and under concurrent
//! writers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv::config::FsyncPolicy;
use ringkv::protocol::Reply;
use ringkv::server::keyspace::{Keyspace, KeyspaceOptions, StorageOptions};

fn args(list: &[&str]) -> Vec<Bytes> {
    list.iter()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

fn always() -> KeyspaceOptions {
    KeyspaceOptions {
        storage: StorageOptions {
            fsync: FsyncPolicy::Always,
            ..StorageOptions::default()
        },
        ..KeyspaceOptions::default()
    }
}

#[tokio::test]
async fn writes_under_fsync_always_are_acknowledged_and_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Keyspace::open(dir.path(), always()).expect("open");
    assert_eq!(ks.fsync_policy(), FsyncPolicy::Always);
    assert_eq!(ks.execute(&args(&["SET", "k", "v"])).await, Reply::OK);
    let (reply, wrote) = ks.execute_unsynced(&args(&["INCR", "n"])).await;
    assert_eq!(reply, Reply::Integer(1));
    let seq = wrote.expect("a write under fsync always names its sequence number");
    ks.wait_durable(seq).await.expect("durable");
    assert!(ks.info().engine.synced_seq >= seq.0);
    let (_, read) = ks.execute_unsynced(&args(&["GET", "k"])).await;
    assert_eq!(read, None, "reads have nothing to wait for");
    ks.close().expect("close");
}

#[tokio::test]
async fn the_fsync_policy_cannot_change_at_run_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
    assert!(ks.set_fsync(FsyncPolicy::Everysec).is_ok());
    let err = ks.set_fsync(FsyncPolicy::Always).expect_err("refused");
    assert!(err.to_string().contains("--fsync always"), "{err}");
    ks.close().expect("close");
}

#[tokio::test]
async fn expiry_deadlines_survive_a_restart_and_active_expiry_finds_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
        ks.execute(&args(&["SET", "soon", "v", "PX", "200"])).await;
        ks.execute(&args(&["SET", "stays", "v"])).await;
        ks.close().expect("close");
    }
    let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("reopen");
    assert_eq!(ks.info().keys, 2);
    let task = ks.spawn_background();
    let start = Instant::now();
    while ks.execute(&args(&["DBSIZE"])).await != Reply::Integer(1) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not expired after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ks.execute(&args(&["GET", "soon"])).await, Reply::Null);
    assert!(
        matches!(ks.execute(&args(&["VCLOCK", "soon"])).await, Reply::Bulk(_)),
        "an expired key keeps its clock as a tombstone"
    );
    ks.close().expect("close");
    task.await.expect("task ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_are_never_lost_or_duplicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = Arc::new(Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open"));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ks = ks.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                match ks.execute(&args(&["INCR", "counter"])).await {
                    Reply::Integer(n) => seen.push(n),
                    other => panic!("INCR answered {other:?}"),
                }
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1600).collect::<Vec<i64>>());
    assert_eq!(
        ks.execute(&args(&["GET", "counter"])).await,
        Reply::Bulk(Bytes::from_static(b"1600"))
    );
    assert_eq!(ks.info().keys_with_siblings, 0);
    ks.close().expect("close");
}

#[tokio::test]
async fn compaction_purges_tombstones_past_the_grace_period_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = KeyspaceOptions {
        // Long enough that "young" cannot age past it on a loaded machine
        // between its DEL and the compaction.
        tombstone_grace: Duration::from_secs(1),
        ..KeyspaceOptions::default()
    };
    let ks = Keyspace::open(dir.path(), opts).expect("open");
    for key in ["old", "young", "kept"] {
        ks.execute(&args(&["SET", key, "v"])).await;
    }
    ks.execute(&args(&["DEL", "old"])).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ks.execute(&args(&["DEL", "young"])).await;
    let engine = ks.replica().engine().clone();
    tokio::task::spawn_blocking(move || {
        engine.flush().expect("flush");
        engine.compact().expect("compact");
    })
    .await
    .expect("compaction");
    assert_eq!(ks.execute(&args(&["VCLOCK", "old"])).await, Reply::Null);
    assert!(matches!(
        ks.execute(&args(&["VCLOCK", "young"])).await,
        Reply::Bulk(_)
    ));
    assert_eq!(
        ks.execute(&args(&["GET", "kept"])).await,
        Reply::Bulk(Bytes::from_static(b"v"))
    );
    assert_eq!(ks.execute(&args(&["DBSIZE"])).await, Reply::Integer(1));
    ks.close().expect("close");
}
