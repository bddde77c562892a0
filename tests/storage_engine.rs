//! Behaviour of the engine's public API: locking, closing, durability policy
//! hooks, compaction semantics, concurrency, statistics.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringkv::config::FsyncPolicy;
use ringkv::storage::{CompactionFilter, Engine, FilterDecision, Options, WriteBatch};
use ringkv::Error;

fn small() -> Options {
    Options {
        fsync: FsyncPolicy::No,
        memtable_bytes: 16 << 10,
        wal_segment_bytes: 8 << 10,
        ..Options::default()
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    let err = Engine::open(dir.path(), small())
        .err()
        .expect("second open succeeded");
    assert!(err.to_string().contains("LOCK"), "{err}");
    engine.close().unwrap();
    Engine::open(dir.path(), small()).unwrap();
}

#[test]
fn calls_after_close_fail_with_closed_on_every_clone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    let clone = engine.clone();
    engine.put(b"k", b"v").unwrap();
    engine.close().unwrap();
    assert!(matches!(clone.get(b"k"), Err(Error::Closed(_))));
    assert!(matches!(clone.put(b"k", b"v"), Err(Error::Closed(_))));
    assert!(matches!(clone.flush(), Err(Error::Closed(_))));
    assert!(matches!(clone.scan_prefix(b""), Err(Error::Closed(_))));
    engine.close().unwrap();
}

#[test]
fn dropping_the_last_clone_closes_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), small()).unwrap();
        engine.put(b"k", b"v").unwrap();
    }
    let engine = Engine::open(dir.path(), small()).unwrap();
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn write_returns_increasing_sequence_numbers_and_empty_batches_are_no_ops() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"a", b"1");
    batch.put(b"b", b"2");
    let first = engine.write(&batch).unwrap();
    batch.clear();
    assert_eq!(engine.write(&batch).unwrap(), first);
    batch.delete(b"a");
    let second = engine.write_unsynced(&batch).unwrap();
    assert!(second > first);
    engine.wait_synced(second).unwrap();
    assert_eq!(engine.get(b"a").unwrap(), None);
    assert_eq!(engine.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn fsync_always_counts_fsyncs_and_group_commit_shares_them() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: FsyncPolicy::Always,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    engine.put(format!("t{t}-{i}").as_bytes(), b"v").unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = engine.stats();
    assert_eq!(stats.puts, 800);
    assert!(stats.log_fsyncs >= 1);
    assert!(
        stats.log_fsyncs < 800,
        "no fsync was shared: {}",
        stats.log_fsyncs
    );
    assert_eq!(stats.synced_seq, stats.last_seq);
}

#[test]
fn everysec_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: FsyncPolicy::Everysec,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    engine.put(b"k", b"v").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.stats().synced_seq < engine.stats().last_seq {
        assert!(std::time::Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn compaction_drops_shadowed_versions_and_bottom_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    for round in 0..5 {
        for i in 0..300u32 {
            engine
                .put(
                    format!("k{i:04}").as_bytes(),
                    format!("v{round}").as_bytes(),
                )
                .unwrap();
        }
        engine.flush().unwrap();
    }
    for i in 0..150u32 {
        engine.delete(format!("k{i:04}").as_bytes()).unwrap();
    }
    engine.compact().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.runs, 1);
    let live: Vec<_> = engine
        .scan(Bound::Unbounded, Bound::Unbounded)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(live.len(), 150);
    assert!(live.iter().all(|(_, v)| v.as_ref() == b"v4"));
    // 150 live keys of ~10 bytes: far less than 5 rounds of 300 keys.
    assert!(
        stats.table_bytes < 300 * 5 * 10,
        "table bytes {}",
        stats.table_bytes
    );
}

struct DropMarked(AtomicBool);
impl CompactionFilter for DropMarked {
    fn filter(&self, _key: &[u8], value: &[u8]) -> FilterDecision {
        self.0.store(true, Ordering::Relaxed);
        if value.starts_with(b"expired") {
            FilterDecision::Remove
        } else {
            FilterDecision::Keep
        }
    }
}

#[test]
fn the_compaction_filter_removes_values_without_resurrecting_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let filter = Arc::new(DropMarked(AtomicBool::new(false)));
    let opts = Options {
        compaction_filter: Some(filter.clone()),
        background_threads: false,
        ..small()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    engine.put(b"a", b"keep-old").unwrap();
    engine.put(b"b", b"fine").unwrap();
    engine.flush().unwrap();
    engine.put(b"a", b"expired-new").unwrap();
    engine.flush().unwrap();
    assert_eq!(
        engine.get(b"a").unwrap().as_deref(),
        Some(&b"expired-new"[..])
    );
    engine.compact().unwrap();
    assert!(filter.0.load(Ordering::Relaxed), "filter never called");
    // The newest value was removed; the older one must not come back.
    assert_eq!(engine.get(b"a").unwrap(), None);
    assert_eq!(engine.get(b"b").unwrap().as_deref(), Some(&b"fine"[..]));
}

#[test]
fn readers_see_consistent_data_while_flushes_and_compactions_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    // Invariant the readers check: pairs are written in one batch, so a scan
    // or get never sees one without the other.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut checks = 0;
                while !stop.load(Ordering::Relaxed) {
                    let items: Vec<_> = engine
                        .scan_prefix(b"pair/")
                        .unwrap()
                        .map(|r| r.unwrap())
                        .collect();
                    assert_eq!(items.len() % 2, 0, "half a batch visible");
                    for pair in items.chunks(2) {
                        assert_eq!(pair[0].1, pair[1].1, "pair halves differ");
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for i in 0..3000u32 {
        let mut batch = WriteBatch::new();
        let value = format!("value-{i}");
        let n = i % 200;
        batch.put(format!("pair/{n:04}/a").as_bytes(), value.as_bytes());
        batch.put(format!("pair/{n:04}/b").as_bytes(), value.as_bytes());
        engine.write(&batch).unwrap();
        if i % 1000 == 999 {
            engine.compact().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert!(
        engine.stats().flushes > 3,
        "memtables should have been flushed"
    );
}

#[test]
fn writers_stall_rather_than_fail_when_flushes_fall_behind() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 4 << 10,
        max_frozen_memtables: 1,
        ..small()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    let value = vec![7u8; 512];
    for i in 0..2000u32 {
        engine.put(format!("k{i:05}").as_bytes(), &value).unwrap();
    }
    let stats = engine.stats();
    assert!(stats.frozen_memtables <= 1);
    assert!(
        stats.memtable_bytes <= 2 * ((4 << 10) + 512 + 256),
        "{}",
        stats.memtable_bytes
    );
    for i in (0..2000u32).step_by(97) {
        assert_eq!(
            engine
                .get(format!("k{i:05}").as_bytes())
                .unwrap()
                .as_deref(),
            Some(value.as_slice())
        );
    }
}

#[test]
fn commit_log_segments_are_deleted_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    for i in 0..5000u32 {
        engine
            .put(format!("k{i:05}").as_bytes(), b"some value bytes")
            .unwrap();
    }
    engine.flush().unwrap();
    let logs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(
        logs, 1,
        "only the segment of the (empty) active memtable remains"
    );
}

#[test]
fn prefix_scans_cover_exactly_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small()).unwrap();
    for key in [
        &b"p\x01a"[..],
        b"p\x01b",
        b"p\x02a",
        b"p\x01\xff\xff",
        b"p\x00z",
        b"p",
    ] {
        engine.put(key, b"v").unwrap();
    }
    engine.flush().unwrap();
    let keys: Vec<Vec<u8>> = engine
        .scan_prefix(b"p\x01")
        .unwrap()
        .map(|r| r.unwrap().0.to_vec())
        .collect();
    assert_eq!(
        keys,
        vec![
            b"p\x01a".to_vec(),
            b"p\x01b".to_vec(),
            b"p\x01\xff\xff".to_vec()
        ]
    );
}

#[test]
fn engine_and_scan_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<ringkv::storage::Scan>();
}
