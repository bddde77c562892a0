//! A measurement, not a timed test: how fast a node stores hints (durably,
//! several writers sharing fsyncs) and how fast the store and planner replay
//! them when no network or throttle is in the way. Run by hand:
//! `cargo test --release --test hints_bench -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringkv::cluster::hints::{HandoffConfig, HandoffPlanner, HintStore};
use ringkv::cluster::{NodeId, PartitionId, Status};
use ringkv::version::{ActorId, Payload, SiblingSet, VersionVector};

#[test]
#[ignore = "benchmark: prints figures, run by hand with --ignored --nocapture"]
fn store_and_replay_100k_hints() {
    let hints = 100_000u64;
    let writers = 8u64;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(HintStore::open(dir.path()).unwrap());
    let target = NodeId::from_bytes([1; 16]);
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in (w..hints).step_by(writers as usize) {
                    let mut set = SiblingSet::new();
                    set.write(
                        ActorId(7),
                        &VersionVector::new(),
                        Payload::Value(Bytes::from(vec![b'x'; 100])),
                        None,
                        1,
                    );
                    let key = format!("key-{i:08}");
                    let partition = PartitionId((i % 256) as u32);
                    store
                        .store(target, partition, key.as_bytes(), &set, 1)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stored_in = started.elapsed();
    let pending = store.pending_for(target);
    assert_eq!(pending.count, hints);

    let config = HandoffConfig {
        bytes_per_sec: 0,
        ..HandoffConfig::default()
    };
    let mut planner = HandoffPlanner::new(config);
    let started = Instant::now();
    let mut batches = 0;
    loop {
        let plan = store
            .plan_handoff(&mut planner, target, Status::Up, 1)
            .unwrap();
        let Some(batch) = plan.send else {
            if plan.retry_after_ms == Some(0) {
                continue;
            }
            break;
        };
        batches += 1;
        let refs = planner.on_ack(target, batch.id).unwrap();
        store.acknowledge(&refs).unwrap();
    }
    let replayed_in = started.elapsed();
    assert!(store.pending_by_target().is_empty());
    println!(
        "stored {hints} hints ({} bytes) with {writers} writers in {stored_in:?} ({:.0}/s, fsync always)",
        pending.bytes,
        hints as f64 / stored_in.as_secs_f64()
    );
    println!(
        "replayed them (scan + plan + compare-and-delete, no network) in {replayed_in:?}: {batches} batches, {:.0} hints/s",
        hints as f64 / replayed_in.as_secs_f64()
    );
}
