//! The pure helpers, then two real replicas (storage engines in temporary
//! directories) repaired by sessions whose requests are handed from one
//! [`LocalSide`] to the other in memory, through the wire encoding.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::server::keyspace::{expiry, now_ms, KeyspaceOptions};

#[test]
fn the_bucket_lets_a_burst_through_then_charges_debt_at_the_rate() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(1000, t0);
    // A quarter second of rate is saved up.
    assert_eq!(bucket.charge(t0, 250), Duration::ZERO);
    // 500 bytes of debt at 1000 B/s: half a second.
    assert_eq!(bucket.charge(t0, 500), Duration::from_millis(500));
    // Half a second later the debt is paid.
    assert_eq!(
        bucket.charge(t0 + Duration::from_millis(500), 0),
        Duration::ZERO
    );
    // Idle time saves at most the burst.
    let later = t0 + Duration::from_secs(60);
    assert_eq!(bucket.charge(later, 250), Duration::ZERO);
    assert!(bucket.charge(later, 1) > Duration::ZERO);
    // Unlimited never waits.
    let mut free = TokenBucket::new(0, t0);
    assert_eq!(free.charge(t0, u64::MAX), Duration::ZERO);
}

#[test]
fn periodic_rounds_take_the_other_live_owners_in_turn() {
    let [a, b, c, d] = ["a", "b", "c", "d"].map(NodeId::from_peer_addr);
    let owners = [a, b, c];
    let live = [a, b, c, d];
    let picks: Vec<_> = (0..4)
        .map(|round| pick_peer(&owners, a, &live, round, 0))
        .collect();
    assert_eq!(picks, vec![Some(b), Some(c), Some(b), Some(c)]);
    // Partitions start at different peers within one round.
    assert_ne!(
        pick_peer(&owners, a, &live, 0, 0),
        pick_peer(&owners, a, &live, 0, 1)
    );
    // Down owners are skipped; alone there is nobody to ask.
    assert_eq!(pick_peer(&owners, a, &[a, c], 7, 3), Some(c));
    assert_eq!(pick_peer(&owners, a, &[a], 0, 0), None);
    assert_eq!(pick_peer(&[a], a, &live, 0, 0), None);
}

#[test]
fn sets_of_keys_outside_the_partition_are_dropped() {
    let entry = |key: &str| VersionEntry {
        key: key.as_bytes().to_vec(),
        sibling_set: vec![1],
    };
    let home = layout::partition_of(layout::key_hash(b"k1"), 256);
    let entries: Vec<VersionEntry> = (0..50).map(|i| entry(&format!("k{i}"))).collect();
    let theirs = entries
        .iter()
        .filter(|e| layout::partition_of(layout::key_hash(&e.key), 256) != home)
        .count();
    let (own, foreign) = keep_own_keys(home, 256, entries);
    assert_eq!(foreign, theirs);
    assert!(own.iter().any(|e| e.key == b"k1"));
    assert!(own
        .iter()
        .all(|e| layout::partition_of(layout::key_hash(&e.key), 256) == home));
}

/// One replica: a keyspace in a temporary directory and its anti-entropy side.
struct Node {
    _dir: tempfile::TempDir,
    keyspace: Keyspace,
    side: LocalSide,
    id: NodeId,
}

impl Node {
    async fn new(name: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyspace = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
        let config = AntiEntropyConfig {
            interval: Duration::ZERO,
            bytes_per_sec: 0,
            limits: SessionLimits::default(),
        };
        let side = LocalSide::new(keyspace.clone(), &config);
        side.build_all(&CancellationToken::new()).await;
        Node {
            _dir: dir,
            keyspace,
            side,
            id: NodeId::from_peer_addr(name),
        }
    }

    async fn run(&self, args: &[&str]) -> Reply {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        self.keyspace.execute(&args).await
    }

    fn partitions(&self) -> Vec<PartitionId> {
        (0..self.keyspace.replica().partitions())
            .map(|p| PartitionId(p as u16))
            .collect()
    }

    fn root(&self, p: PartitionId) -> crate::cluster::merkle::NodeHash {
        self.keyspace
            .replica()
            .merkle()
            .root(p)
            .expect("tree built")
    }

    fn stored(&self, key: &str) -> Option<Bytes> {
        self.keyspace
            .replica()
            .read_encoded(Key::new(key.as_bytes()))
            .expect("read")
    }

    fn get(&self, key: &str) -> Vec<Bytes> {
        let set = self
            .keyspace
            .replica()
            .read(Key::new(key.as_bytes()))
            .expect("read");
        match set {
            None => Vec::new(),
            Some(set) => set.live_values(now_ms()).cloned().collect(),
        }
    }
}

/// One session for `p`, opened by `a`, answered by `b`.
async fn sync(a: &Node, b: &Node, p: PartitionId) -> SessionReport {
    session(&a.side, a.id, &b.side, p).await
}

/// One session for `p`, opened by `initiator` (known as `from`), answered by
/// `responder`.
async fn session(
    initiator: &LocalSide,
    from: NodeId,
    responder: &LocalSide,
    p: PartitionId,
) -> SessionReport {
    initiator
        .initiate(p, |request| async move {
            match Message::decode(&request) {
                Ok(Message::AntiEntropy(msg)) => {
                    Ok(responder.serve(from, msg, request.len()).await)
                }
                other => Err(format!("not an anti-entropy request: {other:?}")),
            }
        })
        .await
}

/// Sessions for every partition; the summed outcome.
async fn sync_all(a: &Node, b: &Node) -> RoundSummary {
    let mut summary = RoundSummary::default();
    for p in a.partitions() {
        summary.add(&sync(a, b, p).await);
    }
    summary
}

fn assert_same_roots(a: &Node, b: &Node) {
    for p in a.partitions() {
        assert_eq!(a.root(p), b.root(p), "partition {p:?}");
    }
}

fn ok(reply: Reply) {
    assert!(
        matches!(reply, Reply::Simple("OK") | Reply::Integer(_)),
        "{reply:?}"
    );
}

#[tokio::test]
async fn replicas_that_differ_converge_to_equal_roots_and_sets() {
    let (a, b) = (Node::new("a").await, Node::new("b").await);
    for i in 0..300 {
        let key = format!("common{i}");
        ok(a.run(&["SET", &key, "same"]).await);
        let set = a.stored(&key).expect("stored");
        // b holds the very same set (as replication would leave it).
        let decoded = SiblingSet::decode(&set).expect("decode");
        b.keyspace
            .replica()
            .merge_remote(Key::new(key.as_bytes()), decoded)
            .expect("merge");
    }
    for i in 0..40 {
        ok(a.run(&["SET", &format!("only-a{i}"), "x"]).await);
        ok(b.run(&["SET", &format!("only-b{i}"), "y"]).await);
    }
    // Concurrent writes of one key on both sides: siblings after the merge.
    ok(a.run(&["SET", "both", "from-a"]).await);
    ok(b.run(&["SET", "both", "from-b"]).await);

    let first = sync_all(&a, &b).await;
    assert_eq!(first.aborted, 0, "{first:?}");
    assert!(first.repaired > 0);
    // 40 + 40 missing keys and one differing key, each counted once.
    assert_eq!(first.keys_exchanged, 81, "{first:?}");
    assert_same_roots(&a, &b);
    for key in ["only-a7", "only-b39", "common5", "both"] {
        assert_eq!(a.stored(key), b.stored(key), "{key}");
    }
    let mut both = a.get("both");
    both.sort();
    assert_eq!(both, vec![Bytes::from("from-a"), Bytes::from("from-b")]);

    // Nothing left: every session ends at the roots.
    let second = sync_all(&b, &a).await;
    assert_eq!(second.in_sync, second.sessions, "{second:?}");
    assert_eq!(second.keys_exchanged, 0);
    // And the trees agree with the data on both sides.
    for p in a.partitions() {
        for node in [&a, &b] {
            let checked = node.keyspace.replica().check_tree(p).expect("check");
            assert!(checked.drifted.is_empty());
        }
    }
}

#[tokio::test]
async fn a_deleted_key_is_not_resurrected_by_a_replica_that_missed_the_delete() {
    let (a, b) = (Node::new("a").await, Node::new("b").await);
    ok(a.run(&["SET", "gone", "v"]).await);
    let set = SiblingSet::decode(&a.stored("gone").expect("stored")).expect("decode");
    b.keyspace
        .replica()
        .merge_remote(Key::new(b"gone"), set)
        .expect("merge");
    // a deletes; b never hears of it.
    ok(a.run(&["DEL", "gone"]).await);
    assert_eq!(b.get("gone"), vec![Bytes::from("v")]);
    let p = a.keyspace.replica().partition(Key::new(b"gone"));
    // Whoever opens the session, the tombstone wins.
    let report = sync(&b, &a, p).await;
    assert_eq!(report.outcome, Outcome::Repaired);
    assert!(a.get("gone").is_empty());
    assert!(b.get("gone").is_empty());
    assert_eq!(a.stored("gone"), b.stored("gone"));
    assert_eq!(a.root(p), b.root(p));
    assert_eq!(sync(&a, &b, p).await.outcome, Outcome::InSync);
}

#[tokio::test]
async fn expiry_on_both_sides_converges_without_resurrection() {
    let (a, b) = (Node::new("a").await, Node::new("b").await);
    // Same expiring value on both replicas, and one only b has.
    ok(a.run(&["SET", "ttl", "v", "PX", "30"]).await);
    let set = SiblingSet::decode(&a.stored("ttl").expect("stored")).expect("decode");
    b.keyspace
        .replica()
        .merge_remote(Key::new(b"ttl"), set)
        .expect("merge");
    ok(b.run(&["SET", "ttl-b", "w", "PX", "30"]).await);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Only a has run active expiry: a tombstone there, an expired value on b.
    let reclaimed = expiry::expire_due(a.keyspace.replica(), now_ms(), 100).expect("expire");
    assert_eq!(reclaimed.reclaimed, 1);
    let first = sync_all(&a, &b).await;
    assert_eq!(first.aborted, 0);
    assert_same_roots(&a, &b);
    for node in [&a, &b] {
        assert!(node.get("ttl").is_empty() && node.get("ttl-b").is_empty());
    }
    // Now each replica expires what it still holds, with its own actor:
    // b's "ttl-b" on both sides (a received the expired value).
    let on_a = expiry::expire_due(a.keyspace.replica(), now_ms(), 100).expect("expire");
    let on_b = expiry::expire_due(b.keyspace.replica(), now_ms(), 100).expect("expire");
    assert_eq!((on_a.reclaimed, on_b.reclaimed), (1, 1));
    // Two concurrent tombstones: one more exchange, then quiet for good.
    let second = sync_all(&a, &b).await;
    assert_eq!(second.repaired, 1, "{second:?}");
    assert_same_roots(&a, &b);
    let on_a = expiry::expire_due(a.keyspace.replica(), now_ms(), 100).expect("expire");
    let on_b = expiry::expire_due(b.keyspace.replica(), now_ms(), 100).expect("expire");
    assert_eq!(
        (on_a.reclaimed, on_b.reclaimed),
        (0, 0),
        "nothing left to expire"
    );
    let third = sync_all(&b, &a).await;
    assert_eq!(third.in_sync, third.sessions, "{third:?}");
    for key in ["ttl", "ttl-b"] {
        let set = SiblingSet::decode(&a.stored(key).expect("kept")).expect("decode");
        assert!(set.is_only_tombstones(), "{key}");
        assert_eq!(a.stored(key), b.stored(key));
    }
}

#[tokio::test]
async fn a_partition_whose_tree_is_not_built_is_refused_and_unknown_sessions_aborted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyspace = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
    let config = AntiEntropyConfig {
        interval: Duration::ZERO,
        bytes_per_sec: 0,
        limits: SessionLimits::default(),
    };
    let cold = LocalSide::new(keyspace, &config);
    let warm = Node::new("warm").await;
    let p = PartitionId(3);
    // The initiator side: not built, no session.
    let report = cold
        .initiate(p, |_| async { Err::<Bytes, String>("never called".into()) })
        .await;
    assert!(matches!(report.outcome, Outcome::Aborted(ref r) if r.contains("not built")));
    // The responder side answers an Abort.
    let report = session(&warm.side, warm.id, &cold, p).await;
    assert!(
        matches!(report.outcome, Outcome::Aborted(ref r) if r.contains("not built")),
        "{report:?}"
    );
    // A message for a session nobody opened.
    let stray = Msg {
        session: SessionId(77),
        partition: 3,
        body: Body::InSync,
    };
    let answer = warm.side.serve(warm.id, stray, 10).await;
    assert!(matches!(
        Message::decode(&answer),
        Ok(Message::AntiEntropyReply(AntiEntropyReply {
            msg: Some(Msg {
                body: Body::Abort { .. },
                ..
            })
        }))
    ));
    // A partition that does not exist.
    let bogus = Msg {
        session: SessionId(78),
        partition: 100_000,
        body: Body::InSync,
    };
    let answer = warm.side.serve(warm.id, bogus, 10).await;
    assert!(matches!(
        Message::decode(&answer),
        Ok(Message::AntiEntropyReply(AntiEntropyReply {
            msg: Some(Msg {
                body: Body::Abort { .. },
                ..
            })
        }))
    ));
}

#[tokio::test]
async fn an_unreachable_peer_aborts_the_session_and_changes_nothing() {
    let a = Node::new("a").await;
    ok(a.run(&["SET", "k", "v"]).await);
    let p = a.keyspace.replica().partition(Key::new(b"k"));
    let before = a.root(p);
    let report = a
        .side
        .initiate(p, |_| async {
            Err::<Bytes, String>("connection refused".into())
        })
        .await;
    assert!(
        matches!(report.outcome, Outcome::Aborted(ref r) if r.contains("connection refused")),
        "{report:?}"
    );
    assert!(report.bytes_sent > 0);
    assert_eq!(a.root(p), before);
    assert_eq!(a.side.counters.aborted.load(Relaxed), 1);
}

#[tokio::test]
async fn a_peer_cannot_plant_keys_of_another_partition() {
    let a = Node::new("a").await;
    let p = PartitionId(0);
    let stranger = (0..1000)
        .map(|i| format!("s{i}"))
        .find(|k| a.keyspace.replica().partition(Key::new(k.as_bytes())) != p)
        .expect("a key of another partition");
    let mut set = SiblingSet::new();
    set.overwrite(
        crate::version::ActorId(9),
        crate::version::Payload::Value(Bytes::from_static(b"planted")),
        None,
        1,
    );
    let mut encoded = Vec::new();
    set.encode(&mut encoded);
    a.side
        .merge(
            p,
            vec![VersionEntry {
                key: stranger.clone().into_bytes(),
                sibling_set: encoded,
            }],
        )
        .await
        .expect("merge");
    assert!(a.stored(&stranger).is_none());
    assert_eq!(a.side.counters.foreign_keys_dropped.load(Relaxed), 1);
}
