//! Rebalancing on join and leave, the deciding half: which partitions this
//! node must stream to whom, and when it may drop one.
//!
//! The ring is a pure function of the member set ([`super::ring`]), so a
//! join or a leave changes the owners of some partitions at once on every
//! node; the data does not follow by itself. This module decides the
//! transfers; the server's `rebalance` task streams them and drops data
//! (nothing here does I/O: the tests drive whole clusters of planners).
//!
//! # The plan
//!
//! [`Planner::plan`] takes this node's id, the current ring, the partitions
//! this node holds data for (found by the caller with one seek per
//! partition) and who is live, and returns the [`Transfer`]s:
//!
//! - **Handoff.** Every partition held here that this node does not own is
//!   streamed to *every* current owner, and dropped here once all of them
//!   confirmed it ([`may_drop`]). This rule needs no history: it is right
//!   after a join (the old owner that lost a partition to the joiner), after
//!   `CLUSTER LEAVE` (a node that left owns nothing, so it hands everything
//!   away), after a restart with a changed ring, and for a late write that
//!   landed on a node that is no longer an owner (a coordinator with a stale
//!   view, a hint replayed after the ring moved): such a key simply makes the
//!   partition "held" again and it follows the others. Streaming to every
//!   owner rather than only to the new ones costs bandwidth (up to `N` times
//!   the partition), but it is what makes "dropped here" imply "every owner
//!   has every version this node had", without trusting anti-entropy.
//! - **Push.** A partition this node still owns, whose owner set gained a
//!   node since the previous plan (the planner keeps the previous ring), is
//!   pushed to the new owners, and kept. Only one stayer pushes (the first
//!   live owner, in preference order, that was already an owner), and only
//!   when no owner that lost the partition is still live: a live loser hands
//!   the partition off itself (above), so in an ordinary join the joiner gets
//!   each partition from the node it replaced, once, instead of from every
//!   replica. Pushes cover what the handoff rule cannot: the replication
//!   factor growing with the cluster (a second node joining a cluster of one
//!   with `N >= 2`: nobody lost anything), and a loser that is down or was
//!   forgotten. Pushes are remembered until done ([`Planner::pushed`]) or
//!   moot (the target or this node no longer owns the partition, or this
//!   node holds nothing of it), across ring changes, but not across a
//!   restart of this node; anti-entropy covers what a lost push would have
//!   brought. The previous ring must be a real one: a node that just started
//!   and has not found its cluster yet sees a ring of itself alone, and
//!   planning with it would make it push everything it holds to every
//!   co-owner once gossip finds the others. The server therefore plans with
//!   a ring of this node alone only once it has lasted a while (see
//!   `server::rebalance`).
//!
//! # Dropping
//!
//! A partition is dropped only when every target acknowledged every chunk,
//! the last one included ([`StreamProgress::complete`]), *and* the ring at
//! that moment still says this node is no owner and every current owner is
//! among the nodes that confirmed ([`may_drop`]): a ring that moved during
//! the stream (another join) makes the next plan stream to the new owners
//! first. The server then drops key by key, deleting only keys whose stored
//! set is unchanged since it was sent, so a write that raced with the stream
//! is streamed again rather than lost (see `server::rebalance`).
//!
//! # Departures from Dynamo
//!
//! Dynamo's strategy 3 transfers whole partition files and confirms each
//! transfer before the old owner deletes, as here; its joiner "steals"
//! partitions chosen at join time, whereas here the ring decides and each
//! losing owner pushes. Riak's ownership handoff is the closer model: the
//! old vnode streams its data to the new owner, then deletes itself.

use std::collections::{BTreeMap, BTreeSet};

use super::ring::{NodeId, PartitionId, Ring};

/// What happens to the partition here once a transfer is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransferKind {
    /// This node no longer owns the partition: drop it once every target
    /// confirmed having it.
    Handoff,
    /// This node still owns the partition: keep it, the targets are new
    /// owners that need a copy.
    Push,
}

/// One partition to stream to some nodes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Transfer {
    pub partition: PartitionId,
    /// Never empty, never this node, sorted by id.
    pub targets: Vec<NodeId>,
    pub kind: TransferKind,
}

/// The deciding half of rebalancing for one node (see the module doc).
#[derive(Clone, Debug)]
pub struct Planner {
    me: NodeId,
    /// The ring of the previous plan; `None` before the first.
    prev: Option<Ring>,
    /// Pushes still owed: partition -> new owners that need a copy.
    pushes: BTreeMap<PartitionId, BTreeSet<NodeId>>,
}

impl Planner {
    /// A planner for node `me` that has seen no ring yet (so its first plan
    /// schedules handoffs only).
    pub fn new(me: NodeId) -> Planner {
        Planner {
            me,
            prev: None,
            pushes: BTreeMap::new(),
        }
    }

    /// The transfers to run now for `ring`, given the partitions `held`
    /// here (with any data, tombstones included) and `live` (whether a
    /// member is up). Handoffs come first, in partition order, then pushes.
    /// Remembers `ring` as the previous ring for the next plan.
    pub fn plan(
        &mut self,
        ring: &Ring,
        held: &BTreeSet<PartitionId>,
        live: &dyn Fn(NodeId) -> bool,
    ) -> Vec<Transfer> {
        let me = self.me;
        // New pushes: partitions whose owner set gained nodes since the last
        // ring, where this node is the one stayer that should push.
        if let Some(prev) = self
            .prev
            .as_ref()
            .filter(|p| p.partitions() == ring.partitions())
        {
            for p in ring.partition_ids() {
                let (now, before) = (ring.owners(p), prev.owners(p));
                if !now.contains(&me) || !before.contains(&me) {
                    continue;
                }
                let gained: Vec<NodeId> = now
                    .iter()
                    .copied()
                    .filter(|x| !before.contains(x))
                    .collect();
                if gained.is_empty() {
                    continue;
                }
                let live_loser = before.iter().any(|x| !now.contains(x) && live(*x));
                let pusher = now
                    .iter()
                    .copied()
                    .find(|x| before.contains(x) && (*x == me || live(*x)));
                if !live_loser && pusher == Some(me) {
                    self.pushes.entry(p).or_default().extend(gained);
                }
            }
        }
        // Pushes that no longer make sense: the target or this node is no
        // longer an owner (a handoff covers the latter), or there is nothing
        // here to push (writes from now on reach every owner anyway).
        self.pushes.retain(|&p, targets| {
            let owners = ring.owners(p);
            targets.retain(|t| owners.contains(t));
            owners.contains(&me) && !targets.is_empty() && held.contains(&p)
        });
        self.prev = Some(ring.clone());

        let mut transfers = Vec::new();
        for &p in held {
            let owners = ring.owners(p);
            if owners.is_empty() || owners.contains(&me) {
                continue;
            }
            let mut targets = owners.to_vec();
            targets.sort_unstable();
            transfers.push(Transfer {
                partition: p,
                targets,
                kind: TransferKind::Handoff,
            });
        }
        for (&p, targets) in &self.pushes {
            transfers.push(Transfer {
                partition: p,
                targets: targets.iter().copied().collect(),
                kind: TransferKind::Push,
            });
        }
        transfers
    }

    /// A push of `partition` to `targets` is done (every target confirmed).
    pub fn pushed(&mut self, partition: PartitionId, targets: &[NodeId]) {
        if let Some(owed) = self.pushes.get_mut(&partition) {
            for t in targets {
                owed.remove(t);
            }
            if owed.is_empty() {
                self.pushes.remove(&partition);
            }
        }
    }

    /// How many partitions still owe a push.
    pub fn pushes_owed(&self) -> usize {
        self.pushes.len()
    }
}

/// Whether `me` may drop its copy of `partition` now that `confirmed`
/// acknowledged all of it: `me` is not an owner in the current `ring`, the
/// partition has owners, and every one of them confirmed.
pub fn may_drop(
    me: NodeId,
    ring: &Ring,
    partition: PartitionId,
    confirmed: &BTreeSet<NodeId>,
) -> bool {
    let owners = ring.owners(partition);
    !owners.is_empty() && !owners.contains(&me) && owners.iter().all(|o| confirmed.contains(o))
}

/// The acknowledgements of one partition's stream to several targets. The
/// sender numbers chunks from 0; a chunk counts for a target once that
/// target acknowledged it, and the stream is complete once every target
/// acknowledged every chunk up to the one marked last.
#[derive(Clone, Debug)]
pub struct StreamProgress {
    /// Per target: the chunks it acknowledged.
    acked: BTreeMap<NodeId, BTreeSet<u64>>,
    /// Chunks sent so far (`0..sent`).
    sent: u64,
    /// The sequence number of the chunk marked last, once sent.
    last: Option<u64>,
}

impl StreamProgress {
    /// A stream to `targets` with nothing sent.
    pub fn new(targets: &[NodeId]) -> StreamProgress {
        StreamProgress {
            acked: targets.iter().map(|&t| (t, BTreeSet::new())).collect(),
            sent: 0,
            last: None,
        }
    }

    /// Numbers the next chunk; `last` marks the end of the partition.
    pub fn next_chunk(&mut self, last: bool) -> u64 {
        let seq = self.sent;
        self.sent += 1;
        if last {
            self.last = Some(seq);
        }
        seq
    }

    /// `target` acknowledged chunk `seq`. Acks from strangers or for chunks
    /// never sent are ignored.
    pub fn on_ack(&mut self, target: NodeId, seq: u64) {
        if seq < self.sent {
            if let Some(acked) = self.acked.get_mut(&target) {
                acked.insert(seq);
            }
        }
    }

    /// Every target acknowledged every chunk, the last one included.
    pub fn complete(&self) -> bool {
        self.last.is_some()
            && self
                .acked
                .values()
                .all(|acked| acked.len() as u64 == self.sent)
    }

    /// The targets that confirmed the whole stream (all of them once
    /// [`complete`](Self::complete), none before the last chunk was sent).
    pub fn confirmed(&self) -> BTreeSet<NodeId> {
        if self.last.is_none() {
            return BTreeSet::new();
        }
        self.acked
            .iter()
            .filter(|(_, acked)| acked.len() as u64 == self.sent)
            .map(|(t, _)| *t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_peer_addr(&format!("10.0.0.{i}:17000"))
    }

    fn all_live(_: NodeId) -> bool {
        true
    }

    fn held_all(ring: &Ring, me: NodeId) -> BTreeSet<PartitionId> {
        ring.partitions_of(me).into_iter().collect()
    }

    /// A cluster of planners, each with the set of partitions it holds:
    /// runs every node's plan and carries the transfers out in memory.
    struct Sim {
        planners: BTreeMap<NodeId, Planner>,
        held: BTreeMap<NodeId, BTreeSet<PartitionId>>,
        sent: usize,
    }

    impl Sim {
        fn settled(ring: &Ring) -> Sim {
            let mut sim = Sim {
                planners: BTreeMap::new(),
                held: BTreeMap::new(),
                sent: 0,
            };
            for &m in ring.members() {
                let mut planner = Planner::new(m);
                assert!(planner.plan(ring, &held_all(ring, m), &all_live).is_empty());
                sim.planners.insert(m, planner);
                sim.held.insert(m, held_all(ring, m));
            }
            sim
        }

        fn add(&mut self, joiner: NodeId) {
            self.planners.insert(joiner, Planner::new(joiner));
            self.held.insert(joiner, BTreeSet::new());
        }

        /// Every node plans with `ring` and runs its transfers.
        fn step(&mut self, ring: &Ring, live: &dyn Fn(NodeId) -> bool) -> Vec<(NodeId, Transfer)> {
            let mut all = Vec::new();
            for (&me, planner) in &mut self.planners {
                for t in planner.plan(ring, &self.held[&me], live) {
                    all.push((me, t));
                }
            }
            for (me, t) in &all {
                let mut progress = StreamProgress::new(&t.targets);
                let seq = progress.next_chunk(true);
                for &target in &t.targets {
                    self.held
                        .get_mut(&target)
                        .expect("target")
                        .insert(t.partition);
                    progress.on_ack(target, seq);
                    self.sent += 1;
                }
                assert!(progress.complete());
                match t.kind {
                    TransferKind::Handoff => {
                        assert!(may_drop(*me, ring, t.partition, &progress.confirmed()));
                        self.held.get_mut(me).expect("me").remove(&t.partition);
                    }
                    TransferKind::Push => {
                        let planner = self.planners.get_mut(me).expect("me");
                        planner.pushed(t.partition, &t.targets);
                    }
                }
            }
            all
        }

        fn check_placement(&self, ring: &Ring) {
            for (&m, held) in &self.held {
                let owned: BTreeSet<PartitionId> = held_all_if_member(ring, m);
                assert_eq!(held, &owned, "node {m:?} holds what it owns, no more");
            }
        }
    }

    fn held_all_if_member(ring: &Ring, m: NodeId) -> BTreeSet<PartitionId> {
        if ring.members().contains(&m) {
            held_all(ring, m)
        } else {
            BTreeSet::new()
        }
    }

    #[test]
    fn a_settled_cluster_plans_nothing() {
        let ring = Ring::new((1..=4).map(node), 64, 2).unwrap();
        let mut sim = Sim::settled(&ring);
        assert!(sim.step(&ring, &all_live).is_empty());
    }

    #[test]
    fn a_join_hands_the_joiners_partitions_over_once_each() {
        let before = Ring::new((1..=3).map(node), 256, 2).unwrap();
        let after = Ring::new((1..=4).map(node), 256, 2).unwrap();
        let joiner = node(4);
        let mut sim = Sim::settled(&before);
        sim.add(joiner);
        let transfers = sim.step(&after, &all_live);
        // Only losers stream (no pushes: every loser is live), and the
        // joiner gets each of its partitions exactly once.
        assert!(transfers
            .iter()
            .all(|(_, t)| t.kind == TransferKind::Handoff));
        let to_joiner: Vec<PartitionId> = transfers
            .iter()
            .filter(|(_, t)| t.targets.contains(&joiner))
            .map(|(_, t)| t.partition)
            .collect();
        let unique: BTreeSet<PartitionId> = to_joiner.iter().copied().collect();
        assert_eq!(to_joiner.len(), unique.len());
        assert_eq!(unique, held_all(&after, joiner));
        sim.check_placement(&after);
        assert!(
            sim.step(&after, &all_live).is_empty(),
            "the second round is idle"
        );
    }

    #[test]
    fn a_leave_streams_everything_away_and_a_forgotten_dead_node_is_replaced_by_pushes() {
        let members: Vec<NodeId> = (1..=4).map(node).collect();
        let before = Ring::new(members.clone(), 128, 3).unwrap();
        let leaver = node(2);
        let after = Ring::new(members.iter().copied().filter(|&m| m != leaver), 128, 3).unwrap();

        // A live leaver: it hands everything off; nobody else pushes.
        let mut sim = Sim::settled(&before);
        let transfers = sim.step(&after, &all_live);
        let leaver_streams = transfers.iter().filter(|(m, _)| *m == leaver).count();
        assert_eq!(leaver_streams, before.partitions_of(leaver).len());
        sim.check_placement(&after);

        // A dead node that was forgotten: its partitions come from stayers.
        let mut sim = Sim::settled(&before);
        sim.held.get_mut(&leaver).expect("leaver").clear(); // it is gone
        let dead = |x: NodeId| x != leaver;
        let transfers = sim.step(&after, &dead);
        assert!(transfers
            .iter()
            .all(|(m, t)| *m != leaver && t.kind == TransferKind::Push));
        sim.held.remove(&leaver);
        sim.check_placement(&after);
    }

    #[test]
    fn a_second_node_with_n_2_gets_everything_by_push() {
        let (a, b) = (node(1), node(2));
        let alone = Ring::new([a], 32, 2).unwrap();
        let pair = Ring::new([a, b], 32, 2).unwrap();
        let mut sim = Sim::settled(&alone);
        sim.add(b);
        let transfers = sim.step(&pair, &all_live);
        assert_eq!(transfers.len(), 32);
        assert!(transfers
            .iter()
            .all(|(m, t)| *m == a && t.kind == TransferKind::Push && t.targets == [b]));
        sim.check_placement(&pair);
        assert_eq!(sim.planners[&a].pushes_owed(), 0);
    }

    #[test]
    fn an_unfinished_push_survives_another_ring_change_while_it_still_applies() {
        let (a, b, c) = (node(1), node(2), node(3));
        let r1 = Ring::new([a], 16, 3).unwrap();
        let r2 = Ring::new([a, b], 16, 3).unwrap();
        let r3 = Ring::new([a, b, c], 16, 3).unwrap();
        let held = held_all(&r1, a);
        let mut planner = Planner::new(a);
        assert!(planner.plan(&r1, &held, &all_live).is_empty());
        let first = planner.plan(&r2, &held, &all_live);
        assert_eq!(first.len(), 16);
        // Not done yet; c joins: b is still owed everywhere, and c where
        // `a` is the first stayer in the new preference order (elsewhere
        // `b` pushes to c).
        let second = planner.plan(&r3, &held, &all_live);
        assert_eq!(second.len(), 16);
        for t in &second {
            let a_pushes_c = r3.owners(t.partition).iter().find(|x| **x != c) == Some(&a);
            let mut expected = vec![b];
            if a_pushes_c {
                expected.push(c);
            }
            expected.sort_unstable();
            assert_eq!(t.targets, expected, "partition {}", t.partition);
        }
        assert!(second.iter().any(|t| t.targets.len() == 2));
        for t in &second {
            planner.pushed(t.partition, &t.targets);
        }
        assert!(planner.plan(&r3, &held, &all_live).is_empty());
    }

    #[test]
    fn a_stream_is_complete_only_when_every_target_acked_every_chunk() {
        let (a, b) = (node(1), node(2));
        let mut s = StreamProgress::new(&[a, b]);
        let c0 = s.next_chunk(false);
        s.on_ack(a, c0);
        s.on_ack(b, c0);
        assert!(!s.complete(), "the last chunk is not sent yet");
        assert!(s.confirmed().is_empty());
        let c1 = s.next_chunk(true);
        s.on_ack(a, c1);
        assert!(!s.complete());
        assert_eq!(s.confirmed(), BTreeSet::from([a]));
        s.on_ack(node(9), c1); // a stranger
        s.on_ack(b, 7); // never sent
        assert!(!s.complete());
        s.on_ack(b, c1);
        assert!(s.complete());
    }

    #[test]
    fn no_drop_while_this_node_owns_the_partition_or_an_owner_did_not_confirm() {
        let members: Vec<NodeId> = (1..=3).map(node).collect();
        let ring = Ring::new(members.clone(), 16, 2).unwrap();
        let p = PartitionId(5);
        let owners: BTreeSet<NodeId> = ring.owners(p).iter().copied().collect();
        let outsider = *members.iter().find(|m| !owners.contains(m)).unwrap();
        let insider = *owners.iter().next().unwrap();
        assert!(may_drop(outsider, &ring, p, &owners));
        assert!(!may_drop(insider, &ring, p, &owners));
        let mut partial = owners.clone();
        partial.remove(&insider);
        assert!(!may_drop(outsider, &ring, p, &partial));
        assert!(!may_drop(outsider, &ring, PartitionId(99), &owners));
    }

    fn cluster(size: usize) -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set(any::<[u8; 16]>(), size)
            .prop_map(|s| s.into_iter().map(NodeId::from_bytes).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A join moves only partitions whose owner set changed, each to
        /// its new owners, and nothing else; the second round is idle.
        #[test]
        fn a_join_moves_only_partitions_whose_owners_changed(
            members in cluster(7),
            size in 2usize..=6,
            n in 1usize..=3,
        ) {
            let before = Ring::new(members[..size].to_vec(), 64, n).unwrap();
            let after = Ring::new(members[..=size].to_vec(), 64, n).unwrap();
            let joiner = members[size];
            let mut sim = Sim::settled(&before);
            sim.add(joiner);
            let transfers = sim.step(&after, &all_live);
            for (from, t) in &transfers {
                prop_assert_ne!(before.owners(t.partition), after.owners(t.partition));
                prop_assert!(before.owners(t.partition).contains(from));
                let new_owner = after.owners(t.partition).iter()
                    .any(|o| !before.owners(t.partition).contains(o));
                prop_assert!(new_owner, "partition {} moved without a new owner", t.partition);
            }
            // The joiner got exactly its partitions, each from one sender.
            let mut to_joiner = BTreeMap::new();
            for (_, t) in &transfers {
                if t.targets.contains(&joiner) {
                    *to_joiner.entry(t.partition).or_insert(0) += 1;
                }
            }
            prop_assert!(to_joiner.values().all(|&c| c == 1));
            prop_assert_eq!(to_joiner.keys().copied().collect::<BTreeSet<_>>(), held_all(&after, joiner));
            sim.check_placement(&after);
            prop_assert!(sim.step(&after, &all_live).is_empty());
        }

        /// Whatever a node holds, each held partition is owned or handed
        /// off to exactly its current owners.
        #[test]
        fn every_held_partition_is_owned_or_handed_off_to_its_owners(
            members in cluster(5),
            me_index in 0usize..5,
            held in prop::collection::btree_set(0u32..32, 0..32),
            member_here in any::<bool>(),
        ) {
            let me = members[me_index];
            let ring_members: Vec<NodeId> = members
                .iter()
                .copied()
                .filter(|&m| m != me || member_here)
                .collect();
            let ring = Ring::new(ring_members, 32, 2).unwrap();
            let held: BTreeSet<PartitionId> = held.into_iter().map(PartitionId).collect();
            let plan = Planner::new(me).plan(&ring, &held, &all_live);
            for &p in &held {
                if ring.owners(p).contains(&me) {
                    prop_assert!(plan.iter().all(|t| t.partition != p));
                } else {
                    let mut owners = ring.owners(p).to_vec();
                    owners.sort_unstable();
                    let handoffs: Vec<&Transfer> = plan.iter().filter(|t| t.partition == p).collect();
                    prop_assert_eq!(handoffs.len(), 1);
                    prop_assert_eq!(handoffs[0].kind, TransferKind::Handoff);
                    prop_assert_eq!(&handoffs[0].targets, &owners);
                }
            }
            prop_assert!(plan.iter().all(|t| held.contains(&t.partition) && !t.targets.contains(&me)));
        }

        /// Acks in any order, any subset: complete (and so a drop) only
        /// once every target acked every chunk, the last one included.
        #[test]
        fn a_drop_needs_every_target_to_confirm_every_chunk(
            chunks in 1u64..6,
            acks in prop::collection::vec((0usize..3, 0u64..8), 0..40),
        ) {
            let targets = [node(1), node(2), node(3)];
            let mut s = StreamProgress::new(&targets);
            for i in 0..chunks {
                s.next_chunk(i + 1 == chunks);
            }
            let mut seen: BTreeSet<(usize, u64)> = BTreeSet::new();
            for (t, seq) in acks {
                s.on_ack(targets[t], seq);
                if seq < chunks {
                    seen.insert((t, seq));
                }
                let everything = (0..3).all(|t| (0..chunks).all(|c| seen.contains(&(t, c))));
                prop_assert_eq!(s.complete(), everything);
            }
        }
    }
}
