//! The hint store on a real storage engine in a temporary directory:
//! durability across reopen, merging, exact pending counters,
//! compare-and-delete on ack, window expiry, and corrupt records.

use bytes::Bytes;
use ringkv::cluster::hints::{
    hint_log_key, HandoffConfig, HandoffPlanner, Hint, HintStore, Pending,
};
use ringkv::cluster::{NodeId, PartitionId, Status};
use ringkv::storage::{Engine, Options};
use ringkv::version::{ActorId, Payload, SiblingSet, VersionVector};
use ringkv::Error;

const HOUR_MS: u64 = 3600 * 1000;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

/// A set holding one fresh write of `value` by `actor`, on top of `base`.
fn write(base: &SiblingSet, actor: u64, value: &str, now_ms: u64) -> SiblingSet {
    let mut set = base.clone();
    set.write(
        ActorId(actor),
        &VersionVector::new(),
        Payload::Value(Bytes::copy_from_slice(value.as_bytes())),
        None,
        now_ms,
    );
    set
}

fn values(set: &SiblingSet) -> Vec<String> {
    set.versions()
        .iter()
        .filter_map(|v| v.value())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn hints_of(store: &HintStore, target: NodeId) -> Vec<Hint> {
    store
        .hints_for(target)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn hints_survive_reopen_with_exact_pending_counters() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(1), node(2));
    let expected = {
        let store = HintStore::open(dir.path()).unwrap();
        for i in 0..50u32 {
            let key = format!("key-{i}");
            let set = write(&SiblingSet::new(), 7, &format!("v{i}"), 1_000);
            store
                .store(a, PartitionId(i % 4), key.as_bytes(), &set, 1_000)
                .unwrap();
            if i % 5 == 0 {
                store
                    .store(b, PartitionId(i % 4), key.as_bytes(), &set, 1_000)
                    .unwrap();
            }
        }
        let pending = store.pending_by_target();
        assert_eq!(pending.len(), 2);
        assert_eq!((pending[0].0, pending[0].1), (a, 50));
        assert_eq!((pending[1].0, pending[1].1), (b, 10));
        store.close().unwrap();
        pending
    };
    let store = HintStore::open(dir.path()).unwrap();
    assert_eq!(
        store.pending_by_target(),
        expected,
        "rebuilt by the scan at open"
    );
    let hints = hints_of(&store, a);
    assert_eq!(hints.len(), 50);
    let bytes: u64 = hints.iter().map(|h| h.stored_bytes).sum();
    assert_eq!(store.pending_for(a), Pending { count: 50, bytes });
    // In (partition, key) order, with the data intact.
    let h = hints.iter().find(|h| &h.key[..] == b"key-13").unwrap();
    assert_eq!(h.partition, PartitionId(1));
    assert_eq!(values(&h.siblings), vec!["v13"]);
}

#[test]
fn repeated_hints_for_a_key_merge_into_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = HintStore::open(dir.path()).unwrap();
    let target = node(3);
    let first = write(&SiblingSet::new(), 1, "from-a", 1_000);
    let concurrent = write(&SiblingSet::new(), 2, "from-b", 2_000);
    let s1 = store
        .store(target, PartitionId(9), b"k", &first, 1_000)
        .unwrap();
    let s2 = store
        .store(target, PartitionId(9), b"k", &concurrent, 2_000)
        .unwrap();
    assert!(s2 > s1, "a merge gives the hint a new sequence");
    // The same set again changes nothing, not even the sequence.
    let s3 = store
        .store(target, PartitionId(9), b"k", &concurrent, 3_000)
        .unwrap();
    assert_eq!(s3, s2);

    let hints = hints_of(&store, target);
    assert_eq!(hints.len(), 1, "one hint per key per target");
    let mut got = values(&hints[0].siblings);
    got.sort();
    assert_eq!(
        got,
        vec!["from-a", "from-b"],
        "concurrent writes stay siblings"
    );
    assert_eq!(
        hints[0].created_at_ms, 1_000,
        "a merge keeps the oldest creation time"
    );
    assert_eq!(store.pending_for(target).count, 1);
    assert_eq!(store.pending_for(target).bytes, hints[0].stored_bytes);

    // A write that supersedes both replaces them in the merged hint.
    let mut resolved = hints[0].siblings.clone();
    let ctx = resolved.causal_context();
    resolved.write(
        ActorId(1),
        &ctx,
        Payload::Value(Bytes::from_static(b"resolved")),
        None,
        4_000,
    );
    store
        .store(target, PartitionId(9), b"k", &resolved, 4_000)
        .unwrap();
    let hints = hints_of(&store, target);
    assert_eq!(values(&hints[0].siblings), vec!["resolved"]);
    let stats = store.stats();
    assert_eq!((stats.created, stats.merged), (1, 2));
}

#[test]
fn ack_deletes_sent_hints_but_not_one_merged_with_a_newer_write_since() {
    let dir = tempfile::tempdir().unwrap();
    let store = HintStore::open(dir.path()).unwrap();
    let target = node(4);
    for key in ["a", "b", "c"] {
        let set = write(&SiblingSet::new(), 1, key, 1_000);
        store
            .store(target, PartitionId(0), key.as_bytes(), &set, 1_000)
            .unwrap();
    }
    let mut planner = HandoffPlanner::new(HandoffConfig::default());
    let batch = store
        .plan_handoff(&mut planner, target, Status::Up, 1_000)
        .unwrap()
        .send
        .unwrap();
    assert_eq!(batch.hints.len(), 3);

    // While the batch is in flight, a new write for "b" merges into its hint.
    let newer = write(&batch.hints[1].siblings, 2, "b-newer", 1_500);
    store
        .store(target, PartitionId(0), b"b", &newer, 1_500)
        .unwrap();

    let refs = planner.on_ack(target, batch.id).unwrap();
    let outcome = store.acknowledge(&refs).unwrap();
    assert_eq!((outcome.deleted, outcome.kept), (2, 1));
    let left = hints_of(&store, target);
    assert_eq!(left.len(), 1);
    assert_eq!(&left[0].key[..], b"b");
    assert!(values(&left[0].siblings).contains(&"b-newer".to_string()));
    assert_eq!(store.pending_for(target).count, 1);
    assert_eq!(store.pending_for(target).bytes, left[0].stored_bytes);

    // A duplicate ack deletes nothing more.
    let again = store.acknowledge(&refs).unwrap();
    assert_eq!(again.deleted, 0);

    // The next round sends the newer hint, and its ack clears the store.
    // The batch went up to "c"; the scan after it finds nothing and the
    // planner wraps around to the kept hint.
    let plan = store
        .plan_handoff(&mut planner, target, Status::Up, 2_000)
        .unwrap();
    assert!(plan.send.is_none());
    assert_eq!(
        plan.retry_after_ms,
        Some(0),
        "poll again at once after a wrap"
    );
    let batch = store
        .plan_handoff(&mut planner, target, Status::Up, 2_000)
        .unwrap()
        .send
        .unwrap();
    let refs = planner.on_ack(target, batch.id).unwrap();
    assert_eq!(store.acknowledge(&refs).unwrap().deleted, 1);
    assert!(store.pending_by_target().is_empty());
    store.close().unwrap();
    let reopened = HintStore::open(dir.path()).unwrap();
    assert!(reopened.pending_by_target().is_empty(), "deletes persist");
}

#[test]
fn hints_past_the_window_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = HintStore::open(dir.path()).unwrap();
    let (up, gone) = (node(5), node(6));
    let set = write(&SiblingSet::new(), 1, "v", 0);
    store.store(up, PartitionId(0), b"old", &set, 0).unwrap();
    store
        .store(up, PartitionId(0), b"new", &set, 3 * HOUR_MS)
        .unwrap();
    store.store(gone, PartitionId(0), b"old", &set, 0).unwrap();
    let now = 3 * HOUR_MS + 1_000;

    // Replay to an owner that is back: the old hint is dropped, not sent.
    let mut planner = HandoffPlanner::new(HandoffConfig::default());
    let plan = store
        .plan_handoff(&mut planner, up, Status::Up, now)
        .unwrap();
    let sent: Vec<_> = plan
        .send
        .unwrap()
        .hints
        .iter()
        .map(|h| h.key.clone())
        .collect();
    assert_eq!(sent, vec![Bytes::from_static(b"new")]);
    assert_eq!(store.drop_expired(&plan.expired).unwrap(), 1);

    // An owner that never comes back: the periodic sweep drops its hints.
    let window_ms = 3 * HOUR_MS;
    assert_eq!(store.expire(now, window_ms).unwrap(), 1);
    assert_eq!(store.pending_for(gone), Pending::default());
    assert_eq!(store.pending_for(up).count, 1);
    assert_eq!(store.stats().expired, 2);
}

#[test]
fn corrupt_records_are_reported_as_corruption_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let target = node(7);
    {
        let store = HintStore::open(dir.path()).unwrap();
        let set = write(&SiblingSet::new(), 1, "good", 1_000);
        store
            .store(target, PartitionId(2), b"good", &set, 1_000)
            .unwrap();
        store
            .store(target, PartitionId(2), b"bad", &set, 1_000)
            .unwrap();
        store.close().unwrap();
    }
    // Flip a byte of one record behind the store's back.
    let log_key = hint_log_key(target, PartitionId(2), b"bad");
    {
        let engine = Engine::open(dir.path(), Options::default()).unwrap();
        let mut value = engine.get(&log_key).unwrap().unwrap().to_vec();
        value[12] ^= 0xff;
        engine.put(&log_key, &value).unwrap();
        engine.close().unwrap();
    }
    let store = HintStore::open(dir.path()).unwrap();
    // Open quarantined it: only the good hint is pending and replayed.
    let hints = hints_of(&store, target);
    assert_eq!(hints.len(), 1);
    assert_eq!(&hints[0].key[..], b"good");
    assert_eq!(store.pending_for(target).count, 1);
    assert_eq!(store.stats().quarantined, 1);

    // A truncated record is quarantined at open too.
    let good_key = hint_log_key(target, PartitionId(2), b"good");
    store.close().unwrap();
    {
        let engine = Engine::open(dir.path(), Options::default()).unwrap();
        engine.put(&good_key, b"\x01\x00short").unwrap();
        engine.close().unwrap();
    }
    let store = HintStore::open(dir.path()).unwrap();
    assert!(store.pending_by_target().is_empty());
    // A new hint for the key replaces the quarantined record cleanly.
    let set = write(&SiblingSet::new(), 1, "again", 2_000);
    store
        .store(target, PartitionId(2), b"good", &set, 2_000)
        .unwrap();
    assert_eq!(store.pending_for(target).count, 1);
}

#[test]
fn a_record_damaged_after_open_comes_out_of_the_scan_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let target = node(8);
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let store = HintStore::with_log(engine.clone()).unwrap();
    let set = write(&SiblingSet::new(), 1, "v", 1_000);
    store
        .store(target, PartitionId(1), b"k1", &set, 1_000)
        .unwrap();
    store
        .store(target, PartitionId(1), b"k2", &set, 1_000)
        .unwrap();
    // Damage k1 through the shared engine, as a bad disk block would.
    let log_key = hint_log_key(target, PartitionId(1), b"k1");
    let mut value = engine.get(&log_key).unwrap().unwrap().to_vec();
    let last = value.len() - 1;
    value[last] ^= 0x01;
    engine.put(&log_key, &value).unwrap();

    let mut planner = HandoffPlanner::new(HandoffConfig::default());
    let plan = store
        .plan_handoff(&mut planner, target, Status::Up, 1_000)
        .unwrap();
    assert_eq!(plan.corrupt.len(), 1);
    assert!(matches!(plan.corrupt[0].error, Error::Corruption { .. }));
    let sent = plan.send.unwrap();
    assert_eq!(sent.hints.len(), 1, "the good hint still goes");
    for bad in &plan.corrupt {
        store.quarantine(bad).unwrap();
    }
    assert_eq!(store.pending_for(target).count, 1, "quarantine uncounts it");
    assert_eq!(store.stats().quarantined, 1);
}

#[test]
fn pending_counters_stay_exact_under_concurrent_stores_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(HintStore::open(dir.path()).unwrap());
    let targets = [node(9), node(10)];
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..60u64 {
                    let target = targets[(i % 2) as usize];
                    let key = format!("k{}", i % 15);
                    // A fresh actor per write: reusing one with a fresh set would reuse a dot.
                    let set = write(
                        &SiblingSet::new(),
                        t * 1000 + i + 1,
                        &format!("t{t}-{i}"),
                        i,
                    );
                    store
                        .store(target, PartitionId(0), key.as_bytes(), &set, i)
                        .unwrap();
                    if i % 10 == 9 {
                        // Ack whatever is there now, as a replay would.
                        let refs: Vec<_> = store
                            .hints_for(target)
                            .unwrap()
                            .filter_map(Result::ok)
                            .map(|h| h.to_ref())
                            .collect();
                        store.acknowledge(&refs).unwrap();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for target in targets {
        let hints = hints_of(&store, target);
        let exact = Pending {
            count: hints.len() as u64,
            bytes: hints.iter().map(|h| h.stored_bytes).sum(),
        };
        assert_eq!(store.pending_for(target), exact);
    }
}

/// A replay from start to finish against an owner that fails some batches,
/// while new writes keep merging into hints already sent: in the end the
/// owner holds every hinted write, and the store is empty.
#[test]
fn replay_delivers_every_hint_despite_lost_batches_and_writes_during_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = HintStore::open(dir.path()).unwrap();
    let target = node(11);
    let keys = 600u64;
    // What the owner should end with: the merge of everything hinted.
    let mut expected: std::collections::HashMap<Bytes, SiblingSet> = Default::default();
    let mut hint = |store: &HintStore, k: u64, actor: u64, now: u64| {
        let key = Bytes::from(format!("key-{k:04}"));
        let set = write(&SiblingSet::new(), actor, &format!("{k}-{actor}"), now);
        store
            .store(target, PartitionId((k % 16) as u32), &key, &set, now)
            .unwrap();
        expected.entry(key).or_default().merge(&set);
    };
    for k in 0..keys {
        hint(&store, k, 1, 0);
    }
    let config = HandoffConfig {
        bytes_per_sec: 20_000,
        max_batch_bytes: 4_000,
        ..HandoffConfig::default()
    };
    let mut planner = HandoffPlanner::new(config);
    let mut owner: std::collections::HashMap<Bytes, SiblingSet> = Default::default();
    let (mut now, mut batches, mut lost, mut sent_bytes) = (0u64, 0u64, 0u64, 0u64);
    while !store.pending_by_target().is_empty() {
        assert!(
            now < 120_000,
            "replay did not finish: {:?}",
            store.pending_for(target)
        );
        let plan = store
            .plan_handoff(&mut planner, target, Status::Up, now)
            .unwrap();
        if let Some(batch) = plan.send {
            batches += 1;
            sent_bytes += batch.bytes;
            if batches % 4 == 0 {
                // Lost on the way: never reaches the owner.
                lost += 1;
                planner.on_failure(target, batch.id);
            } else {
                for h in &batch.hints {
                    owner.entry(h.key.clone()).or_default().merge(&h.siblings);
                }
                // A write arrives for a key of this batch before its ack.
                if batches % 3 == 0 {
                    let k = batch.hints[0].key[4..]
                        .iter()
                        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                    hint(&store, k, 1_000 + batches, now);
                }
                let refs = planner.on_ack(target, batch.id).unwrap();
                store.acknowledge(&refs).unwrap();
            }
        }
        now += match plan.retry_after_ms {
            Some(0) => 0,
            _ => 50,
        };
    }
    assert_eq!(owner, expected, "the owner holds exactly what was hinted");
    assert!(lost > 0 && batches > lost);
    // The throttle held: no more than the rate over the run plus one burst.
    assert!(
        sent_bytes <= 20_000 * (now / 1000 + 1) + 20_000,
        "{sent_bytes} B in {now} ms"
    );
    assert_eq!(store.stats().delivered, keys);
}

#[test]
fn hints_for_an_owner_that_left_are_dropped_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = HintStore::open(dir.path()).unwrap();
    let (left, staying) = (node(12), node(13));
    let set = write(&SiblingSet::new(), 1, "v", 0);
    for k in 0..5u8 {
        store
            .store(left, PartitionId(k.into()), &[k], &set, 0)
            .unwrap();
    }
    store.store(staying, PartitionId(0), b"k", &set, 0).unwrap();
    assert_eq!(store.drop_target(left).unwrap(), 5);
    assert_eq!(
        store.pending_by_target(),
        vec![(staying, 1, store.pending_for(staying).bytes)]
    );
    assert_eq!(hints_of(&store, staying).len(), 1);
}
