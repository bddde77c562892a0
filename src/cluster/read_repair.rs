//! The deciding half of read repair: given what each replica answered to a
//! quorum read and the merge of those answers, which replicas are stale and
//! how.
//!
//! A read collects every replica's whole sibling set (see `version`: sets,
//! never single versions, are the unit of replication). Their
//! [`SiblingSet::merge`] is the join of everything the replicas know; a
//! replica whose set is not equal to that join either lacks versions or
//! still holds versions the join supersedes. Both are fixed the same way:
//! send it the merged set, which it merges into its own (merge is
//! idempotent, so repairing a replica that caught up meanwhile is harmless).
//!
//! The coordinator ([`super::coordinator`]) does the sending; this module
//! only decides, so the decision is unit-tested without a network.
//!
//! Departures from Dynamo: Dynamo repairs with the single reconciled
//! version; we send the whole merged set so that causal contexts stay
//! "down-closed" on every replica (see `version`'s "Replicate whole sets").
//! Replicas that failed or did not answer are not repaired: their state is
//! unknown, and hinted handoff and anti-entropy cover them.

use super::ring::NodeId;
use crate::version::{SiblingSet, Version};

/// How a replica's set differs from the merged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairNeed {
    /// Versions of the merged set the replica does not hold.
    pub missing: usize,
    /// Versions the replica holds that the merged set supersedes.
    pub obsolete: usize,
}

/// Which replicas need the merged set, and why: every replica in `replies`
/// (its answer, `None` if it never saw the key) whose set is not equal to
/// `merged`, in the order of `replies`.
///
/// `merged` must be the merge of every answer in `replies`; a replica then
/// can hold nothing outside `merged` except versions `merged` supersedes.
pub fn plan_read_repair(
    replies: &[(NodeId, Option<&SiblingSet>)],
    merged: &SiblingSet,
) -> Vec<(NodeId, RepairNeed)> {
    let empty = SiblingSet::new();
    replies
        .iter()
        .filter_map(|&(node, set)| {
            let set = set.unwrap_or(&empty);
            if set == merged {
                return None;
            }
            let need = RepairNeed {
                missing: count_absent(merged.versions(), set.versions()),
                obsolete: count_absent(set.versions(), merged.versions()),
            };
            // Unequal sets always differ in at least one version; the check
            // keeps a replica out of the plan if that ever stopped holding.
            (need.missing + need.obsolete > 0).then_some((node, need))
        })
        .collect()
}

/// How many of `these` are not in `those` (both sorted by dot, as
/// [`SiblingSet::versions`] guarantees). A version with the same dot but a
/// different body counts as absent: it is not the same write.
fn count_absent(these: &[Version], those: &[Version]) -> usize {
    these
        .iter()
        .filter(|v| match those.binary_search_by(|o| o.dot.cmp(&v.dot)) {
            Ok(at) => those[at] != **v,
            Err(_) => true,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{ActorId, Payload};
    use bytes::Bytes;

    const A: ActorId = ActorId(0xA);
    const B: ActorId = ActorId(0xB);

    fn node(name: &str) -> NodeId {
        NodeId::from_peer_addr(name)
    }

    fn value(s: &str) -> Payload {
        Payload::Value(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn set_after(base: &SiblingSet, actor: ActorId, v: &str, now: u64) -> SiblingSet {
        let mut set = base.clone();
        set.overwrite(actor, value(v), None, now);
        set
    }

    fn merged(sets: &[&SiblingSet]) -> SiblingSet {
        let mut out = SiblingSet::new();
        for set in sets {
            out.merge(set);
        }
        out
    }

    #[test]
    fn replicas_equal_to_the_merge_need_nothing() {
        let s = set_after(&SiblingSet::new(), A, "v", 1);
        let plan = plan_read_repair(&[(node("x"), Some(&s)), (node("y"), Some(&s))], &s);
        assert!(plan.is_empty());
    }

    #[test]
    fn nobody_has_the_key_means_no_repair() {
        let plan = plan_read_repair(&[(node("x"), None), (node("y"), None)], &SiblingSet::new());
        assert!(plan.is_empty());
    }

    #[test]
    fn a_replica_without_the_key_lacks_every_version() {
        let s1 = set_after(&SiblingSet::new(), A, "a", 1);
        let s2 = set_after(&SiblingSet::new(), B, "b", 2);
        let m = merged(&[&s1, &s2]);
        let plan = plan_read_repair(
            &[
                (node("x"), Some(&s1)),
                (node("y"), Some(&s2)),
                (node("z"), None),
            ],
            &m,
        );
        assert_eq!(
            plan,
            vec![
                (
                    node("x"),
                    RepairNeed {
                        missing: 1,
                        obsolete: 0
                    }
                ),
                (
                    node("y"),
                    RepairNeed {
                        missing: 1,
                        obsolete: 0
                    }
                ),
                (
                    node("z"),
                    RepairNeed {
                        missing: 2,
                        obsolete: 0
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_replica_holding_a_superseded_version_is_told_it_is_obsolete() {
        let old = set_after(&SiblingSet::new(), A, "old", 1);
        let new = set_after(&old, A, "new", 2);
        let m = merged(&[&old, &new]);
        assert_eq!(m, new);
        let plan = plan_read_repair(&[(node("x"), Some(&old)), (node("y"), Some(&new))], &m);
        assert_eq!(
            plan,
            vec![(
                node("x"),
                RepairNeed {
                    missing: 1,
                    obsolete: 1
                }
            )]
        );
    }

    /// Replica histories from random writes and merges (from the next
    /// replica), in order. Each replica writes as its own actor, as a
    /// coordinator does: an actor issuing dots on two replicas that do not
    /// see each other would reuse counters, which `version` rules out.
    fn histories() -> impl proptest::strategy::Strategy<Value = Vec<Option<SiblingSet>>> {
        use proptest::prelude::*;
        let step = (0..4usize, any::<bool>());
        prop::collection::vec(step, 0..24).prop_map(|steps| {
            let mut replicas: Vec<Option<SiblingSet>> = vec![None; 4];
            for (at, (replica, merge)) in steps.into_iter().enumerate() {
                let actor = replica as u64;
                if merge {
                    let from = replicas[(replica + 1) % 4].clone();
                    if let Some(from) = from {
                        replicas[replica]
                            .get_or_insert_with(SiblingSet::new)
                            .merge(&from);
                    }
                } else {
                    let set = replicas[replica].get_or_insert_with(SiblingSet::new);
                    set.overwrite(ActorId(actor), value(&format!("v{at}")), None, at as u64);
                }
            }
            replicas
        })
    }

    proptest::proptest! {
        #[test]
        fn the_plan_names_exactly_the_replicas_unequal_to_the_merge(replicas in histories()) {
            let answers: Vec<(NodeId, Option<&SiblingSet>)> = replicas
                .iter()
                .enumerate()
                .map(|(i, s)| (node(&format!("n{i}")), s.as_ref()))
                .collect();
            let m = merged(&answers.iter().filter_map(|(_, s)| *s).collect::<Vec<_>>());
            let plan = plan_read_repair(&answers, &m);
            for (n, set) in &answers {
                let stale = set.map_or(!m.is_empty(), |s| *s != m);
                proptest::prop_assert_eq!(plan.iter().any(|(p, _)| p == n), stale);
            }
            // Merging the merged set into each named replica makes it equal.
            for (n, need) in &plan {
                let (_, set) = answers.iter().find(|(a, _)| a == n).expect("named replicas answered");
                let mut repaired = set.cloned().unwrap_or_default();
                repaired.merge(&m);
                proptest::prop_assert_eq!(&repaired, &m);
                proptest::prop_assert!(need.missing > 0 || need.obsolete > 0);
            }
        }
    }

    #[test]
    fn after_merging_the_plan_every_replica_equals_the_merge() {
        let base = set_after(&SiblingSet::new(), A, "d2", 1);
        let left = set_after(&base, A, "d3", 2);
        let right = set_after(&base, B, "d4", 3);
        let mut replicas = [
            (node("x"), Some(base.clone())),
            (node("y"), Some(left)),
            (node("z"), Some(right)),
            (node("w"), None),
        ];
        let answers: Vec<_> = replicas.iter().map(|(n, s)| (*n, s.as_ref())).collect();
        let m = merged(&answers.iter().filter_map(|(_, s)| *s).collect::<Vec<_>>());
        let plan = plan_read_repair(&answers, &m);
        assert_eq!(plan.len(), 4);
        for (target, _) in plan {
            let (_, set) = replicas
                .iter_mut()
                .find(|(n, _)| *n == target)
                .expect("the plan names only replicas that answered");
            set.get_or_insert_with(SiblingSet::new).merge(&m);
        }
        let answers: Vec<_> = replicas.iter().map(|(n, s)| (*n, s.as_ref())).collect();
        assert!(plan_read_repair(&answers, &m).is_empty());
    }
}
