//! Property tests over realistic histories: a few replicas take random
//! writes, deletes, stale resolves and syncs, and the laws of the sibling-set
//! algebra are checked on the sets they produce.
//!
//! The laws are stated for sets that a real history can produce (unique
//! dots, contexts read from replicas); arbitrary versions with clashing dots
//! or contexts that claim dots nobody wrote are not in their scope.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// A context-free write (`SET`) through `node`, maybe with a TTL.
    Set { node: usize, ttl: Option<u64> },
    /// A context-free delete through `node`.
    Del { node: usize },
    /// A client reads `node`'s context and keeps it for later.
    Read { node: usize },
    /// A client resolves through `node` with a context it read earlier.
    Resolve {
        node: usize,
        read: Index,
        tombstone: bool,
    },
    /// Anti-entropy or replication: `to` merges `from`'s set.
    Sync { from: usize, to: usize },
}

const NODES: usize = 3;

fn arb_op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        3 => (node.clone(), prop::option::weighted(0.2, 0u64..20))
            .prop_map(|(node, ttl)| Op::Set { node, ttl }),
        1 => node.clone().prop_map(|node| Op::Del { node }),
        2 => node.clone().prop_map(|node| Op::Read { node }),
        2 => (node.clone(), any::<Index>(), prop::bool::weighted(0.2))
            .prop_map(|(node, read, tombstone)| Op::Resolve { node, read, tombstone }),
        3 => (node.clone(), node).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

/// The outcome of one history.
struct History {
    replicas: Vec<SiblingSet>,
    /// Every version ever written, by any replica.
    written: Vec<Version>,
    /// Every state some replica was in, for picking law operands.
    snapshots: Vec<SiblingSet>,
    now_ms: u64,
}

fn actor(node: usize) -> ActorId {
    ActorId(0xa0 + node as u64)
}

fn run(ops: &[Op]) -> History {
    let mut h = History {
        replicas: vec![SiblingSet::new(); NODES],
        written: Vec::new(),
        snapshots: vec![SiblingSet::new()],
        now_ms: 1_000,
    };
    let mut reads = vec![VersionVector::new()];
    for op in ops {
        h.now_ms += 1;
        let now = h.now_ms;
        let touched = match *op {
            Op::Set { node, ttl } => {
                let ctx = h.replicas[node].causal_context();
                let payload = Payload::Value(Bytes::from(format!("v{now}")));
                write(&mut h, node, &ctx, payload, ttl.map(|t| now + t));
                node
            }
            Op::Del { node } => {
                let ctx = h.replicas[node].causal_context();
                write(&mut h, node, &ctx, Payload::Tombstone, None);
                node
            }
            Op::Read { node } => {
                reads.push(h.replicas[node].causal_context());
                node
            }
            Op::Resolve {
                node,
                read,
                tombstone,
            } => {
                let ctx = reads[read.index(reads.len())].clone();
                let payload = if tombstone {
                    Payload::Tombstone
                } else {
                    Payload::Value(Bytes::from(format!("r{now}")))
                };
                write(&mut h, node, &ctx, payload, None);
                node
            }
            Op::Sync { from, to } => {
                let source = h.replicas[from].clone();
                h.replicas[to].merge(&source);
                to
            }
        };
        h.snapshots.push(h.replicas[touched].clone());
    }
    h
}

fn write(
    h: &mut History,
    node: usize,
    ctx: &VersionVector,
    payload: Payload,
    expires: Option<u64>,
) {
    let now = h.now_ms;
    let set = &mut h.replicas[node];
    let dot = set.write(actor(node), ctx, payload, expires, now);
    let version = set
        .versions()
        .iter()
        .find(|v| v.dot == dot)
        .cloned()
        .expect("invariant: write keeps the version it just made");
    h.written.push(version);
}

fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
    let mut out = a.clone();
    out.merge(b);
    out
}

fn assert_normalized(set: &SiblingSet) -> Result<(), TestCaseError> {
    let versions = set.versions();
    prop_assert!(
        versions.windows(2).all(|w| w[0].dot < w[1].dot),
        "sorted, unique dots"
    );
    for x in versions {
        for y in versions {
            prop_assert!(!y.obsoletes(x), "{} supersedes {} in one set", y.dot, x.dot);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_is_idempotent_commutative_and_associative(
        ops in prop::collection::vec(arb_op(), 0..40),
        a in any::<Index>(), b in any::<Index>(), c in any::<Index>(),
    ) {
        let h = run(&ops);
        let pick = |i: &Index| h.snapshots[i.index(h.snapshots.len())].clone();
        let (a, b, c) = (pick(&a), pick(&b), pick(&c));
        prop_assert_eq!(merged(&a, &a), a.clone());
        let mut owned = a.clone();
        owned.merge_owned(b.clone());
        prop_assert_eq!(&owned, &merged(&a, &b));
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        assert_normalized(&merged(&merged(&a, &b), &c))?;
    }

    #[test]
    fn after_full_sync_exactly_the_unsuperseded_writes_survive(
        ops in prop::collection::vec(arb_op(), 0..60),
    ) {
        let h = run(&ops);
        let mut all = SiblingSet::new();
        for replica in &h.replicas {
            assert_normalized(replica)?;
            all.merge(replica);
        }
        let mut dots: Vec<Dot> = h.written.iter().map(|v| v.dot).collect();
        dots.sort();
        let unique = dots.len();
        dots.dedup();
        prop_assert_eq!(dots.len(), unique, "a dot was issued twice");
        // No loss and no resurrection: what survives is exactly what no
        // write's context covered.
        let expected: Vec<Dot> = h
            .written
            .iter()
            .filter(|x| !h.written.iter().any(|y| y.obsoletes(x)))
            .map(|v| v.dot)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let got: Vec<Dot> = all.versions().iter().map(|v| v.dot).collect();
        prop_assert_eq!(got, expected);
        // A context-free write at a fully synced replica supersedes all.
        let ctx = all.causal_context();
        all.write(actor(0), &ctx, Payload::Value(Bytes::from_static(b"last")), None, h.now_ms + 1);
        prop_assert_eq!(all.len(), 1);
    }

    #[test]
    fn a_written_version_descends_from_everything_its_context_covered(
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let h = run(&ops);
        for y in &h.written {
            // New dots are above everything the context knew of that actor...
            prop_assert!(!y.past.covers(y.dot));
            for x in h.written.iter().filter(|x| y.obsoletes(x)) {
                // ...and the full clock of what it supersedes is in its past
                // (contexts are down-closed; this is what makes merge
                // associative).
                prop_assert!(y.past.descends(&x.clock()), "{} vs {}", y.dot, x.dot);
            }
        }
    }

    #[test]
    fn realistic_sets_survive_encode_and_decode(
        ops in prop::collection::vec(arb_op(), 0..40),
        now_offset in 0u64..30,
    ) {
        let h = run(&ops);
        for set in &h.replicas {
            let bytes = set.to_bytes();
            prop_assert_eq!(&SiblingSet::decode(&bytes).unwrap(), set);
            prop_assert_eq!(&SiblingSet::decode_shared(&bytes).unwrap(), set);
            let now = h.now_ms + now_offset;
            let live: Vec<Bytes> = set.live_values(now).cloned().collect();
            let fast = decode_live_values(&bytes, now).unwrap();
            match (&fast, live.as_slice()) {
                (LiveValues::Absent, []) => {}
                (LiveValues::One { value, expires_at_ms }, [only]) => {
                    prop_assert_eq!(value, only);
                    prop_assert_eq!(*expires_at_ms, set.single_live(now).and_then(|v| v.expires_at_ms));
                }
                (LiveValues::Siblings(values), many) if many.len() > 1 => {
                    prop_assert_eq!(values.as_slice(), many);
                }
                (fast, slow) => prop_assert!(false, "fast path {:?} vs {:?}", fast, slow),
            }
            let token = encode_token(&set.causal_context());
            prop_assert_eq!(decode_token(&token).unwrap(), set.causal_context());
            prop_assert!(set.validate_context(&set.causal_context()).is_ok());
        }
    }
}
