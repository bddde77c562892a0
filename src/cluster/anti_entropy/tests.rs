//! Anti-entropy driven end to end without I/O: two replicas (a toy store and
//! a tree each), two sessions, messages handed over directly.
//!
//! The toy "merge" keeps the larger of two values (bytewise), a stand-in for
//! `SiblingSet::merge` with the same laws (commutative, associative,
//! idempotent), so both replicas must end equal.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

/// The ring's key hash: the first 8 bytes of SHA-256, big-endian.
fn key_hash(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn shape(buckets: u32) -> TreeShape {
    TreeShape::new(buckets).expect("test shapes are powers of two")
}

/// A toy replica's data: key -> value (the "encoded sibling set").
type ToyMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the driver needs from a replica's storage.
trait Store {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    fn put(&mut self, key: &[u8], value: Vec<u8>);
    fn bucket_entries(&self, shape: TreeShape, buckets: &[BucketIndex]) -> Vec<BucketKeys>;
}

impl Store for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.insert(key.to_vec(), value);
    }

    fn bucket_entries(&self, shape: TreeShape, buckets: &[BucketIndex]) -> Vec<BucketKeys> {
        BucketKeys::from_scan(
            shape,
            buckets,
            self.iter().map(|(k, v)| (key_hash(k), k, v)),
        )
    }
}

struct Replica<S> {
    store: S,
    tree: MerkleTree,
}

impl Replica<BTreeMap<Vec<u8>, Vec<u8>>> {
    fn from_map(shape: TreeShape, map: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        let tree = MerkleTree::from_entries(
            shape,
            map.iter()
                .map(|(k, v)| (key_hash(k), k.as_slice(), v.as_slice())),
        );
        Replica { store: map, tree }
    }
}

impl<S: Store> Replica<S> {
    /// The toy merge: keep the larger value; keep the tree current.
    fn merge(&mut self, key: &[u8], incoming: Vec<u8>) {
        let old = self.store.get(key);
        let merged = match &old {
            Some(current) if *current >= incoming => return,
            _ => incoming,
        };
        self.tree
            .update(key_hash(key), key, old.as_deref(), Some(&merged));
        self.store.put(key, merged);
    }

    /// Carries out a session's effects, feeding loads back into it.
    fn apply(
        &mut self,
        session: &mut AntiEntropySession,
        effects: Vec<Effect>,
        outbox: &mut VecDeque<Msg>,
        done: &mut Option<SessionReport>,
    ) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Send(msg) => outbox.push_back(msg),
                Effect::LoadBucketKeys { buckets } => {
                    let lists = self.store.bucket_entries(self.tree.shape(), &buckets);
                    queue.extend(session.on_bucket_keys(lists));
                }
                Effect::LoadVersions { keys } => {
                    let entries = keys
                        .iter()
                        .filter_map(|key| {
                            self.store.get(key).map(|sibling_set| VersionEntry {
                                key: key.clone(),
                                sibling_set,
                            })
                        })
                        .collect();
                    queue.extend(session.on_versions(entries));
                }
                Effect::Merge { entries } => {
                    for entry in entries {
                        self.merge(&entry.key, entry.sibling_set);
                    }
                }
                Effect::Done(report) => {
                    assert!(done.is_none(), "a session reports Done once");
                    *done = Some(report);
                }
            }
        }
    }
}

struct Round {
    initiator: SessionReport,
    responder: SessionReport,
    /// Message kinds in delivery order, with the receiver ('a' or 'b').
    trace: Vec<(char, &'static str)>,
}

/// One anti-entropy round opened by `a`, messages passed directly.
fn run_round<S: Store>(a: &mut Replica<S>, b: &mut Replica<S>, limits: SessionLimits) -> Round {
    let (mut session_a, opening) = AntiEntropySession::start(SessionId(7), 3, limits, &mut a.tree);
    let mut session_b: Option<AntiEntropySession> = None;
    let (mut to_a, mut to_b) = (VecDeque::new(), VecDeque::from([opening]));
    let (mut done_a, mut done_b) = (None, None);
    let mut trace = Vec::new();
    for _ in 0..100 {
        if let Some(msg) = to_b.pop_front() {
            trace.push(('b', msg.kind()));
            let (session, effects) = match session_b.as_mut() {
                Some(session) => {
                    let effects = session.on_message(msg, &mut b.tree);
                    (session, effects)
                }
                None => {
                    let (session, effects) = AntiEntropySession::respond(msg, limits, &mut b.tree);
                    (session_b.insert(session), effects)
                }
            };
            b.apply(session, effects, &mut to_a, &mut done_b);
        } else if let Some(msg) = to_a.pop_front() {
            trace.push(('a', msg.kind()));
            let effects = session_a.on_message(msg, &mut a.tree);
            a.apply(&mut session_a, effects, &mut to_b, &mut done_a);
        } else {
            break;
        }
    }
    Round {
        initiator: done_a.expect("the initiator finishes"),
        responder: done_b.expect("the responder finishes"),
        trace,
    }
}

/// Keys whose values differ between two maps, or that only one has.
fn differing_keys(
    a: &BTreeMap<Vec<u8>, Vec<u8>>,
    b: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeSet<Vec<u8>> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn map_of(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn numbered_map(n: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    (0..n)
        .map(|i| {
            (
                format!("key{i}").into_bytes(),
                format!("value{i}").into_bytes(),
            )
        })
        .collect()
}

#[test]
fn equal_replicas_settle_in_one_round_trip() {
    let map = numbered_map(200);
    let mut a = Replica::from_map(TreeShape::default(), map.clone());
    let mut b = Replica::from_map(TreeShape::default(), map);
    let round = run_round(&mut a, &mut b, SessionLimits::default());
    assert_eq!(round.trace, vec![('b', "Root"), ('a', "InSync")]);
    assert_eq!(round.initiator.outcome, Outcome::InSync);
    assert_eq!(round.responder.outcome, Outcome::InSync);
    assert_eq!(round.initiator.keys_exchanged, 0);
}

#[test]
fn one_key_differing_both_ways_descends_one_level_per_message() {
    let mut map = numbered_map(500);
    let mut a = Replica::from_map(TreeShape::default(), map.clone());
    map.insert(b"key42".to_vec(), b"value42-newer".to_vec());
    let mut b = Replica::from_map(TreeShape::default(), map.clone());
    let round = run_round(&mut a, &mut b, SessionLimits::default());
    let kinds: Vec<_> = round.trace.iter().map(|(to, kind)| (*to, *kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ('b', "Root"),
            ('a', "Level"), // depth 1, from b
            ('b', "Level"), // depth 2, from a
            ('a', "Level"), // depth 3 = buckets, from b
            ('b', "BucketKeys"),
            ('a', "Versions"), // b's set of key42, and b wants a's
            ('b', "Versions"), // a's set of key42
        ]
    );
    for report in [&round.initiator, &round.responder] {
        assert_eq!(report.outcome, Outcome::Repaired);
        assert_eq!(report.keys_exchanged, 1);
        assert_eq!(report.buckets_compared, 1);
    }
    assert_eq!(a.store, map);
    assert_eq!(b.store, map);
    assert_eq!(a.tree.root(), b.tree.root());
    assert_eq!(round.initiator.bytes_sent, round.responder.bytes_received);
    assert_eq!(round.initiator.bytes_received, round.responder.bytes_sent);
}

#[test]
fn key_missing_on_the_initiator_needs_no_final_message() {
    let mut map = numbered_map(50);
    let mut a = Replica::from_map(shape(16), map.clone());
    map.insert(b"only-on-b".to_vec(), b"v".to_vec());
    let mut b = Replica::from_map(shape(16), map.clone());
    let round = run_round(&mut a, &mut b, SessionLimits::default());
    // 16 buckets: depth 1 is the buckets; a finds them and lists its keys.
    assert_eq!(
        round.trace,
        vec![
            ('b', "Root"),
            ('a', "Level"),
            ('b', "BucketKeys"),
            ('a', "Versions")
        ]
    );
    assert_eq!(a.store, map);
    assert_eq!(round.initiator.keys_exchanged, 1);
}

#[test]
fn write_that_closes_the_gap_during_the_descent_ends_in_sync() {
    let old_map = numbered_map(100);
    let mut new_map = old_map.clone();
    new_map.insert(b"key7".to_vec(), b"value7-newer".to_vec());
    let mut a = Replica::from_map(TreeShape::default(), old_map);
    let mut b = Replica::from_map(TreeShape::default(), new_map);
    let limits = SessionLimits::default();
    let (mut session_a, opening) = AntiEntropySession::start(SessionId(2), 0, limits, &mut a.tree);
    let (_session_b, effects) = AntiEntropySession::respond(opening, limits, &mut b.tree);
    let [Effect::Send(level)] = effects.as_slice() else {
        panic!("expected b to answer with its first level, got {effects:?}");
    };
    // The same write reaches a (say by replication) before b's level does.
    a.merge(b"key7", b"value7-newer".to_vec());
    let effects = session_a.on_message(level.clone(), &mut a.tree);
    assert!(matches!(
        &effects[0],
        Effect::Send(Msg {
            body: Body::InSync,
            ..
        })
    ));
    assert!(matches!(
        &effects[1],
        Effect::Done(SessionReport {
            outcome: Outcome::InSync,
            ..
        })
    ));
}

#[test]
fn mismatched_shapes_abort_on_both_sides() {
    let mut a = Replica::from_map(shape(1024), numbered_map(10));
    let mut b = Replica::from_map(shape(256), numbered_map(11));
    let round = run_round(&mut a, &mut b, SessionLimits::default());
    assert_eq!(round.trace, vec![('b', "Root"), ('a', "Abort")]);
    assert!(matches!(round.responder.outcome, Outcome::Aborted(ref r) if r.contains("buckets")));
    assert!(
        matches!(round.initiator.outcome, Outcome::Aborted(ref r) if r.contains("peer aborted"))
    );
    assert_eq!(
        b.store,
        numbered_map(11),
        "an aborted round changes nothing"
    );
}

#[test]
fn other_protocol_version_is_refused() {
    let mut tree = MerkleTree::new(TreeShape::default());
    let opening = Msg {
        session: SessionId(1),
        partition: 0,
        body: Body::Root {
            version: PROTOCOL_VERSION + 1,
            shape: TreeShape::default(),
            root: NodeHash::ZERO,
        },
    };
    let (session, effects) =
        AntiEntropySession::respond(opening, SessionLimits::default(), &mut tree);
    assert!(session.is_finished());
    assert!(matches!(
        &effects[0],
        Effect::Send(Msg {
            body: Body::Abort { .. },
            ..
        })
    ));
    assert!(matches!(
        &effects[1],
        Effect::Done(SessionReport {
            outcome: Outcome::Aborted(_),
            ..
        })
    ));
}

#[test]
fn a_session_cancelled_by_its_caller_aborts_once_and_the_peer_follows() {
    let mut a = MerkleTree::new(TreeShape::default());
    let mut b = MerkleTree::new(TreeShape::default());
    b.insert(key_hash(b"k"), b"k", b"v");
    let (mut initiator, opening) =
        AntiEntropySession::start(SessionId(9), 3, SessionLimits::default(), &mut a);
    let (mut responder, _) = AntiEntropySession::respond(opening, SessionLimits::default(), &mut b);
    let effects = initiator.cancel("storage failed".into());
    let Some(Effect::Send(abort)) = effects.first().cloned() else {
        panic!("cancel sends an Abort first: {effects:?}");
    };
    assert!(matches!(
        effects.get(1),
        Some(Effect::Done(SessionReport { outcome: Outcome::Aborted(r), .. })) if r == "storage failed"
    ));
    assert!(initiator.is_finished());
    assert!(initiator.cancel("again".into()).is_empty());
    let effects = responder.on_message(abort, &mut b);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Done(SessionReport { outcome: Outcome::Aborted(r), .. })] if r.contains("storage failed")
    ));
}

#[test]
fn malformed_level_is_aborted_not_trusted() {
    let mut a = MerkleTree::new(TreeShape::default());
    let (mut session, _) =
        AntiEntropySession::start(SessionId(1), 0, SessionLimits::default(), &mut a);
    let bad = Msg {
        session: SessionId(1),
        partition: 0,
        body: Body::Level {
            depth: 1,
            parents: vec![0],
            hashes: vec![NodeHash::ZERO; 3], // the root has 4 children
        },
    };
    let effects = session.on_message(bad, &mut a);
    assert!(matches!(
        &effects[0],
        Effect::Send(Msg {
            body: Body::Abort { .. },
            ..
        })
    ));
    assert!(session.is_finished());
    // Late messages after the end are ignored.
    assert!(session
        .on_message(
            Msg {
                session: SessionId(1),
                partition: 0,
                body: Body::InSync
            },
            &mut a
        )
        .is_empty());
}

#[test]
fn peer_asking_for_keys_it_was_not_shown_is_refused() {
    // First the planning side: a (one bucket) receives an empty peer's keys
    // and plans to send its only key.
    let map = map_of(&[("k", "v")]);
    let mut a = Replica::from_map(shape(1), map.clone());
    let (mut session, _) =
        AntiEntropySession::start(SessionId(9), 0, SessionLimits::default(), &mut a.tree);
    // With one bucket the root is the bucket: the peer answers with its keys.
    let peer_keys = Msg {
        session: SessionId(9),
        partition: 0,
        body: Body::BucketKeys {
            buckets: vec![BucketKeys {
                bucket: BucketIndex(0),
                entries: vec![],
            }],
        },
    };
    let effects = session.on_message(peer_keys, &mut a.tree);
    assert_eq!(
        effects,
        vec![Effect::LoadBucketKeys {
            buckets: vec![BucketIndex(0)]
        }]
    );
    let effects = session.on_bucket_keys(map.bucket_entries(shape(1), &[BucketIndex(0)]));
    assert_eq!(
        effects,
        vec![Effect::LoadVersions {
            keys: vec![b"k".to_vec()]
        }]
    );
    let effects = session.on_versions(vec![VersionEntry {
        key: b"k".to_vec(),
        sibling_set: b"v".to_vec(),
    }]);
    // It planned to send "k" and wants nothing: done after one message.
    assert!(
        matches!(&effects[0], Effect::Send(Msg { body: Body::Versions { want, .. }, .. }) if want.is_empty())
    );
    assert!(matches!(
        &effects[1],
        Effect::Done(SessionReport {
            outcome: Outcome::Repaired,
            keys_exchanged: 1,
            ..
        })
    ));

    // The listing side refuses a want list naming keys it did not list.
    let mut b = Replica::from_map(shape(16), map.clone());
    let (mut lister, _) =
        AntiEntropySession::start(SessionId(4), 0, SessionLimits::default(), &mut b.tree);
    let mut peer_tree = MerkleTree::new(shape(16));
    let level = Msg {
        session: SessionId(4),
        partition: 0,
        body: Body::Level {
            depth: 1,
            parents: vec![0],
            hashes: peer_tree.level(1).to_vec(),
        },
    };
    let effects = lister.on_message(level, &mut b.tree);
    let Some(Effect::LoadBucketKeys { buckets }) = effects.first() else {
        panic!("expected a bucket load, got {effects:?}");
    };
    let lists = map.bucket_entries(shape(16), buckets);
    lister.on_bucket_keys(lists);
    let greedy = Msg {
        session: SessionId(4),
        partition: 0,
        body: Body::Versions {
            entries: vec![],
            want: vec![b"secret".to_vec()],
        },
    };
    let effects = lister.on_message(greedy, &mut b.tree);
    assert!(matches!(
        &effects[0],
        Effect::Send(Msg {
            body: Body::Abort { .. },
            ..
        })
    ));
}

#[test]
fn plan_sends_missing_keys_one_way_and_differing_keys_both_ways() {
    let mine = vec![
        KeyEntry::of(b"both-same", b"1"),
        KeyEntry::of(b"both-differ", b"1"),
        KeyEntry::of(b"only-mine", b"1"),
    ];
    let peer = vec![
        KeyEntry::of(b"only-peer", b"1"),
        KeyEntry::of(b"both-differ", b"2"),
        KeyEntry::of(b"both-same", b"1"),
    ];
    let plan = plan_exchange(&mine, &peer);
    assert_eq!(
        plan.send_to_peer,
        vec![b"both-differ".to_vec(), b"only-mine".to_vec()]
    );
    assert_eq!(
        plan.request_from_peer,
        vec![b"both-differ".to_vec(), b"only-peer".to_vec()]
    );
    assert_eq!(plan.distinct_keys(), 3);
}

#[test]
fn wire_size_is_the_postcard_encoding_and_round_trips() {
    let msg = Msg {
        session: SessionId(u64::MAX),
        partition: 255,
        body: Body::BucketKeys {
            buckets: vec![BucketKeys {
                bucket: BucketIndex(1023),
                entries: vec![KeyEntry::of(b"k", b"v")],
            }],
        },
    };
    let bytes = postcard::to_allocvec(&msg).expect("encodes");
    assert_eq!(msg.wire_size(), bytes.len());
    // session (10) + partition (2) + variant (1) + count (1) + bucket (2)
    // + count (1) + key (1 + 1) + fingerprint (16)
    assert_eq!(bytes.len(), 35);
    let back: Msg = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, msg);
}

/// Two maps over a small key space: a common base, then edits on each side.
fn arb_map_pair() -> impl Strategy<Value = (ToyMap, ToyMap)> {
    let map = || {
        prop::collection::btree_map(
            any::<u8>().prop_map(|k| vec![k, k ^ 0x5A]),
            prop::collection::vec(any::<u8>(), 0..6),
            0..40,
        )
    };
    (
        map(),
        map(),
        map(),
        prop::collection::btree_set(any::<u8>(), 0..10),
    )
        .prop_map(|(base, edits_a, edits_b, deletes)| {
            let mut a = base.clone();
            let mut b = base;
            a.extend(edits_a);
            b.extend(edits_b);
            for k in deletes {
                b.remove(&vec![k, k ^ 0x5A]);
            }
            (a, b)
        })
}

proptest! {
    /// The descent finds exactly the buckets that hold a differing key.
    #[test]
    fn diff_finds_exactly_the_buckets_of_differing_keys(
        (a, b) in arb_map_pair(),
        bucket_bits in 0u32..9,
    ) {
        let s = shape(1 << bucket_bits);
        let mut ta = Replica::from_map(s, a.clone()).tree;
        let mut tb = Replica::from_map(s, b.clone()).tree;
        let expected: Vec<BucketIndex> = differing_keys(&a, &b)
            .iter()
            .map(|k| s.bucket_of(key_hash(k)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found = diff_levels(&mut ta, &tb.snapshot_levels()).expect("same shape");
        prop_assert_eq!(&found, &expected);
        // And symmetric.
        let back = diff_levels(&mut tb, &ta.snapshot_levels()).expect("same shape");
        prop_assert_eq!(back, expected);
    }

    /// One round makes both replicas equal, to the union under the toy
    /// merge, and exchanges exactly the differing keys.
    #[test]
    fn one_round_converges_and_exchanges_only_differing_keys(
        (a, b) in arb_map_pair(),
        bucket_bits in 0u32..11,
    ) {
        let s = shape(1 << bucket_bits);
        let differing = differing_keys(&a, &b).len();
        let mut expected = a.clone();
        for (k, v) in &b {
            let e = expected.entry(k.clone()).or_default();
            if *v > *e || !a.contains_key(k) {
                *e = v.clone();
            }
        }
        let mut ra = Replica::from_map(s, a);
        let mut rb = Replica::from_map(s, b);
        let limits = SessionLimits { max_buckets_per_round: s.buckets() as usize };
        let round = run_round(&mut ra, &mut rb, limits);
        prop_assert_eq!(&ra.store, &expected);
        prop_assert_eq!(&rb.store, &expected);
        prop_assert_eq!(ra.tree.root(), rb.tree.root());
        prop_assert_eq!(round.initiator.keys_exchanged, differing);
        prop_assert_eq!(round.responder.keys_exchanged, differing);
        let outcome = if differing == 0 { Outcome::InSync } else { Outcome::Repaired };
        prop_assert_eq!(&round.initiator.outcome, &outcome);
        prop_assert_eq!(&round.responder.outcome, &outcome);
    }

}

proptest! {
    // Each case runs one round per differing bucket: fewer cases keep the
    // debug test time short.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With a cap of one bucket per round, rounds repeat until the roots
    /// agree, one differing bucket at a time.
    #[test]
    fn capped_rounds_converge_one_bucket_at_a_time((a, b) in arb_map_pair()) {
        let s = shape(64);
        let buckets_differing = diff_levels(
            &mut Replica::from_map(s, a.clone()).tree,
            &Replica::from_map(s, b.clone()).tree.snapshot_levels(),
        ).expect("same shape").len();
        let mut ra = Replica::from_map(s, a);
        let mut rb = Replica::from_map(s, b);
        let limits = SessionLimits { max_buckets_per_round: 1 };
        let mut rounds = 0;
        while run_round(&mut ra, &mut rb, limits).initiator.outcome != Outcome::InSync {
            rounds += 1;
            prop_assert!(rounds <= buckets_differing, "more rounds than differing buckets");
        }
        prop_assert_eq!(rounds, buckets_differing);
        prop_assert_eq!(&ra.store, &rb.store);
    }
}

/// A generated replica for the large test: keys `user:NNNNNNNN`, values of
/// 100 bytes derived from the key, plus per-replica edits. The data is never
/// materialised, so two replicas of a million keys fit in a few MiB.
struct GeneratedStore<'a> {
    index: &'a GeneratedIndex,
    base_keys: u32,
    missing: BTreeSet<u32>,
    overrides: HashMap<u32, Vec<u8>>,
}

/// Key hashes and bucket membership of every key id either replica may hold.
struct GeneratedIndex {
    hashes: Vec<u64>,
    buckets: Vec<Vec<u32>>,
}

const VALUE_LEN: usize = 100;

fn generated_key(id: u32) -> Vec<u8> {
    format!("user:{id:08}").into_bytes()
}

fn generated_id(key: &[u8]) -> Option<u32> {
    std::str::from_utf8(key.strip_prefix(b"user:")?)
        .ok()?
        .parse()
        .ok()
}

fn generated_value(id: u32, generation: u8) -> Vec<u8> {
    let mut value = vec![generation];
    value.extend(id.to_le_bytes().iter().cycle().take(VALUE_LEN - 1));
    value
}

impl GeneratedIndex {
    fn new(shape: TreeShape, ids: u32) -> Self {
        let hashes: Vec<u64> = (0..ids).map(|id| key_hash(&generated_key(id))).collect();
        let mut buckets = vec![Vec::new(); shape.buckets() as usize];
        for (id, hash) in hashes.iter().enumerate() {
            buckets[shape.bucket_of(*hash).0 as usize].push(id as u32);
        }
        GeneratedIndex { hashes, buckets }
    }
}

impl GeneratedStore<'_> {
    fn value_of(&self, id: u32) -> Option<Vec<u8>> {
        if let Some(value) = self.overrides.get(&id) {
            return Some(value.clone());
        }
        (id < self.base_keys && !self.missing.contains(&id)).then(|| generated_value(id, 1))
    }

    fn tree(&self, shape: TreeShape) -> MerkleTree {
        let mut tree = MerkleTree::new(shape);
        for id in 0..self.index.hashes.len() as u32 {
            if let Some(value) = self.value_of(id) {
                tree.insert(self.index.hashes[id as usize], &generated_key(id), &value);
            }
        }
        tree
    }

    fn data_bytes(&self) -> usize {
        (0..self.index.hashes.len() as u32)
            .filter_map(|id| self.value_of(id).map(|v| v.len() + generated_key(id).len()))
            .sum()
    }
}

impl Store for GeneratedStore<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.value_of(generated_id(key)?)
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let id = generated_id(key).expect("only generated keys are merged");
        self.missing.remove(&id);
        self.overrides.insert(id, value);
    }

    fn bucket_entries(&self, _shape: TreeShape, buckets: &[BucketIndex]) -> Vec<BucketKeys> {
        buckets
            .iter()
            .map(|&bucket| BucketKeys {
                bucket,
                entries: self.index.buckets[bucket.0 as usize]
                    .iter()
                    .filter_map(|&id| {
                        let value = self.value_of(id)?;
                        Some(KeyEntry::of(&generated_key(id), &value))
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Issue 5's target: with 1M keys and 100 differing, one round moves under
/// 1% of the data set. Debug builds run 20k keys to stay quick, where only
/// the per-key bound applies (100 keys of hashes are 4% of 2 MB); run
/// `cargo test --release --lib anti_entropy_moves -- --nocapture` for 1M.
#[test]
fn anti_entropy_moves_under_one_percent_of_the_data_for_100_differing_keys() {
    let keys: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        1_000_000
    };
    // About four keys per bucket, as Q = 256 partitions of 1024 buckets give
    // for 1M keys per replica.
    let s = shape((keys / 4).next_power_of_two());
    let extra = 20;
    let index = GeneratedIndex::new(s, keys + extra);
    let store = |missing, overrides| GeneratedStore {
        index: &index,
        base_keys: keys,
        missing,
        overrides,
    };
    let a_store = store(BTreeSet::new(), HashMap::new());
    // b: 50 newer values, 30 keys it lacks, 20 keys only it has.
    let stride = keys / 100;
    let newer: HashMap<u32, Vec<u8>> = (0..50)
        .map(|i| (i * stride, generated_value(i * stride, 2)))
        .chain((0..extra).map(|i| (keys + i, generated_value(keys + i, 1))))
        .collect();
    let missing: BTreeSet<u32> = (50..80).map(|i| i * stride).collect();
    let b_store = store(missing, newer);
    let data_bytes = a_store.data_bytes();

    let started = std::time::Instant::now();
    let mut a = Replica {
        tree: a_store.tree(s),
        store: a_store,
    };
    let mut b = Replica {
        tree: b_store.tree(s),
        store: b_store,
    };
    let built = started.elapsed();

    let started = std::time::Instant::now();
    let round = run_round(&mut a, &mut b, SessionLimits::default());
    let repaired = started.elapsed();
    let exchanged = round.initiator.bytes_sent + round.initiator.bytes_received;
    let share = exchanged as f64 / data_bytes as f64 * 100.0;
    println!(
        "anti-entropy: {keys} keys ({data_bytes} bytes), {} buckets, 100 differing keys: \
         {} keys exchanged in {} buckets, {} messages, {exchanged} bytes ({share:.3}% of the data), \
         trees built in {built:?}, round in {repaired:?}",
        s.buckets(),
        round.initiator.keys_exchanged,
        round.initiator.buckets_compared,
        round.initiator.messages_sent + round.initiator.messages_received,
    );
    assert_eq!(round.initiator.keys_exchanged, 100);
    assert_eq!(a.tree.root(), b.tree.root());
    // The cost follows the differing keys, not the data: about 1 KiB of
    // hashes and fingerprints per differing key plus its value both ways.
    assert!(exchanged < 100 * 2048, "{exchanged} bytes for 100 keys");
    if keys >= 1_000_000 {
        assert!(share < 1.0, "exchanged {share:.3}% of the data set");
    }
}

fn arb_hash() -> impl Strategy<Value = NodeHash> {
    prop_oneof![Just(NodeHash::ZERO), any::<[u8; 32]>().prop_map(NodeHash)]
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop::collection::vec(any::<u8>(), 0..4)
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u8>(), 0u32..12, arb_hash()).prop_map(|(version, bits, root)| Body::Root {
            version: version % 3,
            shape: shape(1 << bits),
            root,
        }),
        (
            0u8..5,
            prop::collection::vec(0u32..70, 0..4),
            prop::collection::vec(arb_hash(), 0..40)
        )
            .prop_map(|(depth, parents, hashes)| Body::Level {
                depth,
                parents,
                hashes
            }),
        prop::collection::vec(
            (
                0u32..1100,
                prop::collection::vec((arb_key(), any::<[u8; 16]>()), 0..3)
            ),
            0..4
        )
        .prop_map(|buckets| Body::BucketKeys {
            buckets: buckets
                .into_iter()
                .map(|(bucket, entries)| BucketKeys {
                    bucket: BucketIndex(bucket),
                    entries: entries
                        .into_iter()
                        .map(|(key, f)| KeyEntry {
                            key,
                            fingerprint: KeyFingerprint(f),
                        })
                        .collect(),
                })
                .collect(),
        }),
        (
            prop::collection::vec((arb_key(), arb_key()), 0..3),
            prop::collection::vec(arb_key(), 0..3)
        )
            .prop_map(|(entries, want)| Body::Versions {
                entries: entries
                    .into_iter()
                    .map(|(key, sibling_set)| VersionEntry { key, sibling_set })
                    .collect(),
                want,
            }),
        Just(Body::InSync),
        ".{0,8}".prop_map(|reason| Body::Abort { reason }),
    ]
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    (0u64..3, 0u32..3, arb_body()).prop_map(|(session, partition, body)| Msg {
        session: SessionId(session),
        partition,
        body,
    })
}

proptest! {
    /// Every message survives the wire unchanged, and its announced size is
    /// its encoded size.
    #[test]
    fn messages_round_trip_through_postcard(msg in arb_msg()) {
        let bytes = postcard::to_allocvec(&msg).expect("encodes");
        prop_assert_eq!(msg.wire_size(), bytes.len());
        let back: Msg = postcard::from_bytes(&bytes).expect("decodes");
        prop_assert_eq!(back, msg);
    }

    /// Whatever a peer sends, in whatever order, a session neither panics
    /// nor reports `Done` twice, nor asks to merge after it finished.
    #[test]
    fn random_peer_messages_never_break_a_session(
        map in prop::collection::btree_map(arb_key(), arb_key(), 0..20),
        bits in 0u32..11,
        as_initiator in any::<bool>(),
        msgs in prop::collection::vec(arb_msg(), 1..12),
    ) {
        let s = shape(1 << bits);
        let mut replica = Replica::from_map(s, map);
        let limits = SessionLimits { max_buckets_per_round: 2 };
        // Mostly addressed right, so that later states are reached too.
        let mut msgs = msgs.into_iter().map(|mut msg| {
            if msg.session != SessionId(0) {
                msg.session = SessionId(1);
                msg.partition = 1;
            }
            msg
        });
        let (mut session, effects) = if as_initiator {
            let (session, _) = AntiEntropySession::start(SessionId(1), 1, limits, &mut replica.tree);
            (session, Vec::new())
        } else {
            let first = msgs.next().expect("at least one message");
            AntiEntropySession::respond(first, limits, &mut replica.tree)
        };
        let (mut outbox, mut done) = (VecDeque::new(), None);
        replica.apply(&mut session, effects, &mut outbox, &mut done);
        for msg in msgs {
            let finished_before = done.is_some();
            let effects = session.on_message(msg, &mut replica.tree);
            if finished_before {
                prop_assert!(effects.is_empty(), "a finished session stays silent");
            }
            replica.apply(&mut session, effects, &mut outbox, &mut done);
        }
        prop_assert_eq!(session.is_finished(), done.is_some());
    }
}
