//! Membership: who is in the cluster and who is alive, agreed by gossip.
//!
//! # What it does
//!
//! [`Membership`] is one node's view of the member list. It is a pure state
//! machine: [`tick`](Membership::tick) with the current time and
//! [`on_gossip`](Membership::on_gossip) with a received message both return
//! [`Effect`]s (messages to send, status changes, refusals) for the caller to
//! carry out. Time is passed in ([`Millis`]) and randomness comes from a
//! seeded generator, so the same inputs give the same outputs; the
//! [`sim`](super::sim) harness relies on that.
//!
//! # Gossip
//!
//! Every [`GossipConfig::interval_ms`] (default 1 s) a node increments its own
//! heartbeat and sends its whole member list to [`GossipConfig::fanout`]
//! (default 3) random live peers ("push"). A receiver merges the list and, if
//! it knows anything the sender did not, answers with its own list ("pull").
//! Push-pull spreads news in `O(log n)` rounds and lets a joining node learn
//! the whole cluster from its seed's first answer. Entries merge per member
//! by the version `(incarnation, left, heartbeat)`, highest wins:
//!
//! - the **incarnation** is chosen by the node itself at start-up and must be
//!   higher than any it used before (the server uses
//!   `max(stored + 1, wall clock ms)`, which survives a wiped data directory),
//!   so a restarted node's entry replaces its old one everywhere;
//! - **left** marks a tombstone: a member that left (`CLUSTER LEAVE`) or was
//!   forgotten (`CLUSTER FORGET`). It outranks any heartbeat of the same
//!   incarnation, so a stale message can never revive it; only a restart with
//!   a higher incarnation can. Tombstones are kept for
//!   [`GossipConfig::tombstone_ttl_ms`] and then dropped;
//! - the **heartbeat** counts the owner's gossip rounds.
//!
//! A node is the only authority on its own entry: if gossip ever shows it a
//! higher version of itself (it restarted with a clock that went backwards)
//! it jumps its incarnation past it; if it shows it a tombstone of its current
//! incarnation, it was forgotten and it takes the status `Left`.
//!
//! # Failure detection: timeouts, not phi accrual
//!
//! Each node records, for every member, when that member's version last went
//! up *in its own view*. A member whose version has not moved for
//! [`GossipConfig::suspect_after_ms`] is `Suspect`, for
//! [`GossipConfig::down_after_ms`] it is `Down`; any newer version makes it
//! `Up` again. Status is a local opinion and is not gossiped (only
//! tombstones are). A member first heard of second-hand is presumed `Up`
//! until the timeout says otherwise. "Down once others agree" (DESIGN.md §4) falls out of the
//! epidemic: if any node still hears from `X`, the higher heartbeat reaches
//! everyone within a few rounds, so `X` turns `Down` only where nobody
//! connected has heard from it for the whole timeout.
//!
//! Why not Cassandra's phi-accrual detector: phi models the arrival times of
//! one sender's heartbeats, but here news about `X` arrives second-hand,
//! through whichever peers gossiped last, so the inter-arrival times are
//! bursty and depend on cluster size and fanout rather than on `X`'s health.
//! A fixed timeout, a few gossip rounds long, is easier to reason about, to
//! configure (`down_after` = how long writes may go to a dead node before
//! sloppy quorum routes around it), and to test deterministically. The
//! defaults (suspect 5 s, down 10 s with 1 s rounds) leave a margin over the
//! longest silence the simulation measures for a live node (3.2 s, at 64
//! nodes with 5 % message loss for a minute: news of a node is second-hand,
//! so three quiet rounds in a row do happen). Down after 10 s costs little:
//! with `N = 3`, `W = 2` a write still succeeds while one replica is dead
//! and not yet detected.
//!
//! `Down` members stay in the ring (their partitions are served by fallbacks
//! through sloppy quorum); only `Left` removes a member from
//! [`ring_members`](Membership::ring_members). Each round a node also probes
//! one random `Down` member with probability `down / (live + 1)`, so the two
//! sides of a healed partition and restarted nodes find each other again.
//!
//! # Cluster settings
//!
//! Every gossip message carries the sender's [`ClusterSettings`] (cluster
//! name, `Q`, `N`, `R`, `W`). A message whose settings differ from ours is
//! not merged: we answer with a [`GossipReject`] and report
//! [`Effect::Rejected`]; the other side reports the same when the refusal
//! arrives. `Q` fixes the on-disk layout and `N/R/W` the meaning of every
//! acknowledgement, so a mixed cluster would be silently wrong.
//!
//! # Departures from Dynamo and Cassandra
//!
//! - Whole member lists are gossiped, not Cassandra's digest/ack/ack2
//!   exchange: a list costs about 55 bytes per member (14 KiB at 256 nodes),
//!   and one message instead of three keeps the state machine small.
//! - Membership changes (join, leave) are gossiped like heartbeats; there is
//!   no separate reconciled ring history as in Dynamo, because the ring is a
//!   pure function of the member set (see [`ring`](super::ring)).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::messages::Message;
use super::ring::{validate_partitions, NodeId, Ring, DEFAULT_PARTITIONS};
use crate::error::{Error, Result};

/// A point in time, in milliseconds, on the clock the caller drives the state
/// machine with (wall clock in the server, virtual time in the simulation).
/// Only differences between two readings of the same clock are ever used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `self` plus `ms`.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

/// Which life of a node an entry describes; higher is newer (see the module
/// doc for how a node picks it).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Incarnation(pub u64);

/// A node's gossip-round counter within one incarnation; higher is newer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Heartbeat(pub u64);

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Its heartbeat advanced within `suspect_after`.
    Up,
    /// Silent for `suspect_after`; still treated as a replica.
    Suspect,
    /// Silent for `down_after`: requests route around it (sloppy quorum).
    Down,
    /// It left or was forgotten (a tombstone); not in the ring.
    Left,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Up => "up",
            Status::Suspect => "suspect",
            Status::Down => "down",
            Status::Left => "left",
        })
    }
}

/// Settings every member of a cluster must share; carried in every gossip
/// message, compared on receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// The cluster's name (default `"ringkv"`); two clusters on one network
    /// with different names never merge.
    pub name: String,
    /// `Q`, the number of partitions (default 256). Fixed at creation.
    pub partitions: u32,
    /// `N`, replicas per key (default 3; capped at the member count).
    pub replicas: u32,
    /// `R`, replies a read waits for (default 2).
    pub read_quorum: u32,
    /// `W`, acknowledgements a write waits for (default 2).
    pub write_quorum: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            name: "ringkv".to_string(),
            partitions: DEFAULT_PARTITIONS,
            replicas: 3,
            read_quorum: 2,
            write_quorum: 2,
        }
    }
}

impl ClusterSettings {
    /// Check the settings for a new cluster.
    pub fn validate(&self) -> Result<()> {
        validate_partitions(self.partitions)?;
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(Error::invalid("cluster name must be 1 to 64 bytes"));
        }
        let n = self.replicas;
        if n == 0 || self.read_quorum == 0 || self.write_quorum == 0 {
            return Err(Error::invalid("N, R and W must be at least 1"));
        }
        if self.read_quorum > n || self.write_quorum > n {
            return Err(Error::invalid(format!(
                "R={} and W={} must not exceed N={n}",
                self.read_quorum, self.write_quorum
            )));
        }
        Ok(())
    }

    /// Why a peer with `theirs` may not join us, or `None` if it may.
    pub fn mismatch(&self, theirs: &ClusterSettings) -> Option<String> {
        let ours = self;
        if ours.name != theirs.name {
            return Some(format!(
                "cluster name differs: peer is in '{}', this node in '{}'",
                theirs.name, ours.name
            ));
        }
        let fields = [
            ("Q", theirs.partitions, ours.partitions),
            ("N", theirs.replicas, ours.replicas),
            ("R", theirs.read_quorum, ours.read_quorum),
            ("W", theirs.write_quorum, ours.write_quorum),
        ];
        fields.iter().find(|(_, t, o)| t != o).map(|(what, t, o)| {
            format!("{what} differs: peer has {what}={t}, this node {what}={o}")
        })
    }
}

/// Timing of gossip and failure detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    /// Milliseconds between gossip rounds (heartbeat increments). Default 1000.
    pub interval_ms: u64,
    /// Peers each round pushes to. Default 3.
    pub fanout: usize,
    /// Milliseconds without news after which a member is `Suspect`. Default 5000.
    pub suspect_after_ms: u64,
    /// Milliseconds without news after which a member is `Down`. Default 10000.
    pub down_after_ms: u64,
    /// Milliseconds a `Left` tombstone is kept before it is dropped. Default
    /// 3,600,000 (one hour): long enough for every node, including ones that
    /// were partitioned away for a while, to have seen it.
    pub tombstone_ttl_ms: u64,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            interval_ms: 1000,
            fanout: 3,
            suspect_after_ms: 5000,
            down_after_ms: 10_000,
            tombstone_ttl_ms: 3_600_000,
        }
    }
}

impl GossipConfig {
    /// Check the timing for consistency.
    pub fn validate(&self) -> Result<()> {
        if self.interval_ms == 0 || self.fanout == 0 {
            return Err(Error::invalid(
                "gossip interval and fanout must be positive",
            ));
        }
        if !(self.interval_ms < self.suspect_after_ms
            && self.suspect_after_ms <= self.down_after_ms)
        {
            return Err(Error::invalid(
                "gossip timing must satisfy interval < suspect_after <= down_after",
            ));
        }
        Ok(())
    }
}

/// One member as gossip carries it: what every node agrees on, without any
/// node's local opinion (status, timers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDigest {
    /// The member's id.
    pub id: NodeId,
    /// Its client (RESP) address, `host:port`, for `CLUSTER NODES`.
    pub addr: String,
    /// Its internode address, `host:port`.
    pub peer_addr: String,
    /// Which life of the member this is.
    pub incarnation: Incarnation,
    /// Its heartbeat within that life.
    pub heartbeat: Heartbeat,
    /// Whether it left (a tombstone).
    pub left: bool,
}

impl MemberDigest {
    /// The merge order: higher wins (see the module doc).
    fn version(&self) -> (Incarnation, bool, Heartbeat) {
        (self.incarnation, self.left, self.heartbeat)
    }
}

/// Whether a gossip message asks for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipKind {
    /// A round's push: answer with our list if we know something newer.
    Push,
    /// The answer to a push: merge, never answer.
    Reply,
}

/// A member list in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMessage {
    /// The sender's cluster settings; compared before anything is merged.
    pub settings: ClusterSettings,
    /// The sender.
    pub from: NodeId,
    /// Where to answer (the sender's internode address).
    pub from_peer_addr: String,
    /// Push or reply.
    pub kind: GossipKind,
    /// Every member the sender knows, itself and tombstones included.
    pub members: Vec<MemberDigest>,
}

/// A refusal to merge gossip, sent back to the peer whose settings differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipReject {
    /// The refusing node.
    pub from: NodeId,
    /// The refusing node's internode address.
    pub from_peer_addr: String,
    /// The refusing node's settings.
    pub settings: ClusterSettings,
    /// Why, in words (e.g. `Q differs: peer has Q=128, this node Q=256`).
    pub reason: String,
}

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id.
    pub id: NodeId,
    /// Its client (RESP) address.
    pub addr: String,
    /// Its internode address.
    pub peer_addr: String,
    /// The newest incarnation seen.
    pub incarnation: Incarnation,
    /// The newest heartbeat seen within that incarnation.
    pub heartbeat: Heartbeat,
    /// This node's opinion of it.
    pub status: Status,
    /// When `status` last changed (this node's clock).
    pub status_since: Millis,
    /// When its version last went up in this node's view (this node's clock).
    pub last_news: Millis,
}

impl Member {
    fn digest(&self) -> MemberDigest {
        MemberDigest {
            id: self.id,
            addr: self.addr.clone(),
            peer_addr: self.peer_addr.clone(),
            incarnation: self.incarnation,
            heartbeat: self.heartbeat,
            left: self.status == Status::Left,
        }
    }

    fn version(&self) -> (Incarnation, bool, Heartbeat) {
        (
            self.incarnation,
            self.status == Status::Left,
            self.heartbeat,
        )
    }
}

/// What the caller must do, or may want to know, after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `msg` to the node listening on `to` (an internode `host:port`).
    Send { to: String, msg: Message },
    /// This node's opinion of `id` changed (`from` is `None` for a member
    /// seen for the first time). `Up` after `Down` is when hints for it
    /// should be replayed.
    StatusChanged {
        id: NodeId,
        from: Option<Status>,
        to: Status,
    },
    /// The set of [`ring_members`](Membership::ring_members) changed: the
    /// ring must be rebuilt.
    RingChanged,
    /// Gossip from or to `peer_addr` was refused because cluster settings
    /// differ; nothing was merged.
    Rejected { peer_addr: String, reason: String },
}

/// This node's identity for its current life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// Its id (normally [`NodeId::from_peer_addr`] of `peer_addr`).
    pub id: NodeId,
    /// Its advertised client address.
    pub addr: String,
    /// Its advertised internode address.
    pub peer_addr: String,
    /// Its incarnation for this life, higher than any earlier one.
    pub incarnation: Incarnation,
}

/// One node's view of the cluster (see the module doc).
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    settings: ClusterSettings,
    config: GossipConfig,
    members: BTreeMap<NodeId, Member>,
    /// Internode addresses to contact while no live peer is known.
    seeds: BTreeSet<String>,
    next_round: Millis,
    rounds: u64,
    rng: StdRng,
}

impl Membership {
    /// A node alone in its cluster, as it starts. `rng_seed` drives peer
    /// selection (the server passes a random seed; tests a fixed one).
    pub fn new(
        local: LocalNode,
        settings: ClusterSettings,
        config: GossipConfig,
        rng_seed: u64,
        now: Millis,
    ) -> Result<Membership> {
        settings.validate()?;
        config.validate()?;
        let me = Member {
            id: local.id,
            addr: local.addr,
            peer_addr: local.peer_addr,
            incarnation: local.incarnation,
            heartbeat: Heartbeat(0),
            status: Status::Up,
            status_since: now,
            last_news: now,
        };
        let mut members = BTreeMap::new();
        members.insert(local.id, me);
        Ok(Membership {
            me: local.id,
            settings,
            config,
            members,
            seeds: BTreeSet::new(),
            // The first tick runs a round at once: a starting node should
            // announce itself without waiting a full interval.
            next_round: now,
            rounds: 0,
            rng: StdRng::seed_from_u64(rng_seed),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The cluster settings this node enforces.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The gossip timing.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Gossip rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// This node's own entry.
    pub fn local(&self) -> &Member {
        // The own entry is inserted in `new` and never removed (purging skips it).
        &self.members[&self.me]
    }

    fn local_mut(&mut self) -> &mut Member {
        self.members
            .get_mut(&self.me)
            .unwrap_or_else(|| unreachable!("the own entry is never removed"))
    }

    /// Every known member (this node included, tombstones included), by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member, if known.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// This node's opinion of `id`, if known.
    pub fn status(&self, id: NodeId) -> Option<Status> {
        self.members.get(&id).map(|m| m.status)
    }

    /// Whether `id` is `Up` (or `Suspect`: not yet routed around).
    pub fn is_live(&self, id: NodeId) -> bool {
        matches!(self.status(id), Some(Status::Up | Status::Suspect))
    }

    /// The members that own partitions: everyone not `Left`. `Down` members
    /// stay in the ring; requests route around them.
    pub fn ring_members(&self) -> Vec<NodeId> {
        self.members
            .values()
            .filter(|m| m.status != Status::Left)
            .map(|m| m.id)
            .collect()
    }

    /// The ring of the current [`ring_members`](Self::ring_members) with
    /// the cluster's `Q` and `N`. Rebuild it on [`Effect::RingChanged`].
    pub fn ring(&self) -> Result<Ring> {
        Ring::new(
            self.ring_members(),
            self.settings.partitions,
            self.settings.replicas as usize,
        )
    }

    /// How many known members have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.members.values().filter(|m| m.status == status).count()
    }

    /// Remember a seed's internode address. Seeds are contacted while no
    /// live peer is known; they are not members until they answer. (`--join`
    /// names a client address; the caller maps it to the peer address.)
    pub fn add_seed(&mut self, peer_addr: impl Into<String>) {
        let addr = peer_addr.into();
        if addr != self.local().peer_addr {
            self.seeds.insert(addr);
        }
    }

    /// `CLUSTER MEET`: remember `peer_addr` as a seed and push to it now.
    pub fn meet(&mut self, peer_addr: impl Into<String>) -> Vec<Effect> {
        let addr = peer_addr.into();
        if addr == self.local().peer_addr {
            return Vec::new();
        }
        self.add_seed(addr.clone());
        vec![self.push_to(addr)]
    }

    /// The member list as this node would gossip it.
    pub fn digest(&self, kind: GossipKind) -> GossipMessage {
        GossipMessage {
            settings: self.settings.clone(),
            from: self.me,
            from_peer_addr: self.local().peer_addr.clone(),
            kind,
            members: self.members.values().map(Member::digest).collect(),
        }
    }

    fn push_to(&self, to: String) -> Effect {
        Effect::Send {
            to,
            msg: Message::Gossip(self.digest(GossipKind::Push)),
        }
    }

    /// Advance time: update failure detection, drop old tombstones, and run
    /// a gossip round if one is due. Call it often (every 100 ms, say); a
    /// round runs at most once per `interval_ms`.
    pub fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.detect(now, &mut effects);
        self.purge_tombstones(now);
        if now >= self.next_round {
            // Schedule from `now`, not from the missed slot: a stalled caller
            // must not cause a burst of catch-up rounds.
            self.next_round = now.plus(self.config.interval_ms);
            self.rounds += 1;
            self.gossip_round(&mut effects);
        }
        effects
    }

    fn detect(&mut self, now: Millis, effects: &mut Vec<Effect>) {
        let (suspect_after, down_after) = (self.config.suspect_after_ms, self.config.down_after_ms);
        for m in self.members.values_mut() {
            if m.id == self.me || m.status == Status::Left {
                continue;
            }
            let silent = now.since(m.last_news);
            let status = if silent >= down_after {
                Status::Down
            } else if silent >= suspect_after {
                Status::Suspect
            } else {
                Status::Up
            };
            // News makes a member Up in `merge`; here status only worsens.
            if status > m.status {
                effects.push(Effect::StatusChanged {
                    id: m.id,
                    from: Some(m.status),
                    to: status,
                });
                m.status = status;
                m.status_since = now;
            }
        }
    }

    fn purge_tombstones(&mut self, now: Millis) {
        // Tombstones are not ring members, so dropping one changes no ring.
        let (me, ttl) = (self.me, self.config.tombstone_ttl_ms);
        self.members.retain(|id, m| {
            *id == me || m.status != Status::Left || now.since(m.status_since) < ttl
        });
    }

    fn gossip_round(&mut self, effects: &mut Vec<Effect>) {
        let me = self.local_mut();
        me.heartbeat.0 += 1;
        let mut live: Vec<&Member> = Vec::new();
        let mut down: Vec<&Member> = Vec::new();
        for m in self.members.values() {
            if m.id == self.me {
                continue;
            }
            match m.status {
                Status::Up | Status::Suspect => live.push(m),
                Status::Down => down.push(m),
                Status::Left => {}
            }
        }
        let mut targets: Vec<String> = live
            .choose_multiple(&mut self.rng, self.config.fanout)
            .map(|m| m.peer_addr.clone())
            .collect();
        if !down.is_empty() && self.rng.gen_range(0..=live.len()) < down.len() {
            if let Some(m) = down.choose(&mut self.rng) {
                targets.push(m.peer_addr.clone());
            }
        }
        if live.is_empty() {
            // Alone (starting, or cut off): knock on every seed.
            targets.extend(self.seeds.iter().cloned());
        }
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            return;
        }
        let msg = Message::Gossip(self.digest(GossipKind::Push));
        for to in targets {
            effects.push(Effect::Send {
                to,
                msg: msg.clone(),
            });
        }
    }

    /// A gossip message arrived: check settings, merge, maybe answer.
    pub fn on_gossip(&mut self, msg: GossipMessage, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(reason) = self.settings.mismatch(&msg.settings) {
            effects.push(Effect::Rejected {
                peer_addr: msg.from_peer_addr.clone(),
                reason: reason.clone(),
            });
            if msg.kind == GossipKind::Push {
                effects.push(Effect::Send {
                    to: msg.from_peer_addr,
                    msg: Message::GossipReject(GossipReject {
                        from: self.me,
                        from_peer_addr: self.local().peer_addr.clone(),
                        settings: self.settings.clone(),
                        reason,
                    }),
                });
            }
            return effects;
        }
        let we_know_more = self.knows_more_than(&msg.members);
        let ring_before = self.ring_members();
        for entry in msg.members {
            self.merge(entry, now, &mut effects);
        }
        if self.ring_members() != ring_before {
            effects.push(Effect::RingChanged);
        }
        if msg.kind == GossipKind::Push && we_know_more {
            effects.push(Effect::Send {
                to: msg.from_peer_addr,
                msg: Message::Gossip(self.digest(GossipKind::Reply)),
            });
        }
        effects
    }

    /// A peer refused our gossip (its settings differ).
    pub fn on_reject(&mut self, reject: GossipReject) -> Vec<Effect> {
        vec![Effect::Rejected {
            peer_addr: reject.from_peer_addr,
            reason: reject.reason,
        }]
    }

    /// Whether we hold a newer version of some member than `theirs`, or a
    /// member they lack.
    fn knows_more_than(&self, theirs: &[MemberDigest]) -> bool {
        let theirs: BTreeMap<NodeId, _> = theirs.iter().map(|d| (d.id, d.version())).collect();
        self.members
            .values()
            .any(|m| theirs.get(&m.id).is_none_or(|v| m.version() > *v))
    }

    fn merge(&mut self, entry: MemberDigest, now: Millis, effects: &mut Vec<Effect>) {
        if entry.id == self.me {
            self.merge_self(entry, now, effects);
            return;
        }
        let status = if entry.left { Status::Left } else { Status::Up };
        match self.members.get_mut(&entry.id) {
            None => {
                effects.push(Effect::StatusChanged {
                    id: entry.id,
                    from: None,
                    to: status,
                });
                self.members.insert(
                    entry.id,
                    Member {
                        id: entry.id,
                        addr: entry.addr,
                        peer_addr: entry.peer_addr,
                        incarnation: entry.incarnation,
                        heartbeat: entry.heartbeat,
                        status,
                        status_since: now,
                        last_news: now,
                    },
                );
            }
            Some(m) if entry.version() > m.version() => {
                m.addr = entry.addr;
                m.peer_addr = entry.peer_addr;
                m.incarnation = entry.incarnation;
                m.heartbeat = entry.heartbeat;
                m.last_news = now;
                if m.status != status {
                    effects.push(Effect::StatusChanged {
                        id: m.id,
                        from: Some(m.status),
                        to: status,
                    });
                    m.status = status;
                    m.status_since = now;
                }
            }
            Some(_) => {}
        }
    }

    fn merge_self(&mut self, entry: MemberDigest, now: Millis, effects: &mut Vec<Effect>) {
        let me = self.local_mut();
        if entry.incarnation > me.incarnation {
            // Someone remembers a later life of ours (our clock went back):
            // jump past it so our entry wins again everywhere.
            me.incarnation = Incarnation(entry.incarnation.0 + 1);
            me.heartbeat = Heartbeat(0);
        } else if entry.incarnation == me.incarnation && entry.left && me.status != Status::Left {
            // Forgotten by an operator (CLUSTER FORGET): accept it.
            effects.push(Effect::StatusChanged {
                id: me.id,
                from: Some(me.status),
                to: Status::Left,
            });
            me.status = Status::Left;
            me.status_since = now;
            effects.push(Effect::RingChanged);
        }
    }

    /// `CLUSTER LEAVE`: tombstone this node and push the news now. The node
    /// keeps gossiping (so the tombstone spreads) until the caller stops it.
    pub fn leave(&mut self, now: Millis) -> Vec<Effect> {
        let id = self.me;
        self.tombstone(id, now)
    }

    /// `CLUSTER FORGET id`: tombstone another member at its current
    /// incarnation and push the news now. A later life of it (higher
    /// incarnation) can rejoin.
    pub fn forget(&mut self, id: NodeId, now: Millis) -> Result<Vec<Effect>> {
        if !self.members.contains_key(&id) {
            return Err(Error::invalid(format!("unknown node {id}")));
        }
        Ok(self.tombstone(id, now))
    }

    fn tombstone(&mut self, id: NodeId, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(m) = self.members.get_mut(&id) {
            if m.status != Status::Left {
                effects.push(Effect::StatusChanged {
                    id,
                    from: Some(m.status),
                    to: Status::Left,
                });
                m.status = Status::Left;
                m.status_since = now;
                effects.push(Effect::RingChanged);
            }
        }
        let targets: Vec<String> = self
            .members
            .values()
            .filter(|m| m.id != self.me && matches!(m.status, Status::Up | Status::Suspect))
            .map(|m| m.peer_addr.clone())
            .collect::<Vec<_>>()
            .choose_multiple(&mut self.rng, self.config.fanout)
            .cloned()
            .collect();
        for to in targets {
            effects.push(self.push_to(to));
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn local(name: &str, incarnation: u64) -> LocalNode {
        let peer_addr = format!("{name}:17000");
        LocalNode {
            id: NodeId::from_peer_addr(&peer_addr),
            addr: format!("{name}:7000"),
            peer_addr,
            incarnation: Incarnation(incarnation),
        }
    }

    fn node(name: &str) -> Membership {
        Membership::new(
            local(name, 1),
            ClusterSettings::default(),
            GossipConfig::default(),
            7,
            Millis(0),
        )
        .unwrap()
    }

    fn digest(name: &str, incarnation: u64, heartbeat: u64, left: bool) -> MemberDigest {
        let l = local(name, incarnation);
        MemberDigest {
            id: l.id,
            addr: l.addr,
            peer_addr: l.peer_addr,
            incarnation: Incarnation(incarnation),
            heartbeat: Heartbeat(heartbeat),
            left,
        }
    }

    fn push(from: &str, members: Vec<MemberDigest>) -> GossipMessage {
        GossipMessage {
            settings: ClusterSettings::default(),
            from: NodeId::from_peer_addr(&format!("{from}:17000")),
            from_peer_addr: format!("{from}:17000"),
            kind: GossipKind::Push,
            members,
        }
    }

    fn sends(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, .. } => Some(to.as_str()),
                _ => None,
            })
            .collect()
    }

    fn id(name: &str) -> NodeId {
        NodeId::from_peer_addr(&format!("{name}:17000"))
    }

    #[test]
    fn entries_merge_by_incarnation_then_heartbeat() {
        let mut a = node("a");
        a.on_gossip(push("b", vec![digest("b", 1, 5, false)]), Millis(0));
        assert_eq!(a.member(id("b")).unwrap().heartbeat, Heartbeat(5));
        // Older heartbeat: ignored.
        a.on_gossip(push("c", vec![digest("b", 1, 3, false)]), Millis(10));
        assert_eq!(a.member(id("b")).unwrap().heartbeat, Heartbeat(5));
        assert_eq!(a.member(id("b")).unwrap().last_news, Millis(0));
        // New incarnation wins even with a lower heartbeat.
        a.on_gossip(push("c", vec![digest("b", 2, 1, false)]), Millis(20));
        let b = a.member(id("b")).unwrap();
        assert_eq!((b.incarnation, b.heartbeat), (Incarnation(2), Heartbeat(1)));
        assert_eq!(b.last_news, Millis(20));
    }

    #[test]
    fn left_is_sticky_within_an_incarnation() {
        let mut a = node("a");
        a.on_gossip(push("b", vec![digest("b", 1, 5, false)]), Millis(0));
        let effects = a.on_gossip(push("c", vec![digest("b", 1, 5, true)]), Millis(1));
        assert!(effects.contains(&Effect::RingChanged));
        assert_eq!(a.status(id("b")), Some(Status::Left));
        // A later heartbeat of the same life does not revive it...
        a.on_gossip(push("b", vec![digest("b", 1, 99, false)]), Millis(2));
        assert_eq!(a.status(id("b")), Some(Status::Left));
        assert!(!a.ring_members().contains(&id("b")));
        // ... a new life does.
        let effects = a.on_gossip(push("b", vec![digest("b", 2, 1, false)]), Millis(3));
        assert_eq!(a.status(id("b")), Some(Status::Up));
        assert!(effects.contains(&Effect::RingChanged));
    }

    #[test]
    fn a_node_defends_its_own_entry() {
        let mut a = node("a");
        // Someone remembers a later life of ours: we jump past it.
        a.on_gossip(push("b", vec![digest("a", 5, 9, false)]), Millis(0));
        assert_eq!(a.local().incarnation, Incarnation(6));
        assert_eq!(a.local().status, Status::Up);
        // A tombstone of an older life changes nothing.
        a.on_gossip(push("b", vec![digest("a", 5, 9, true)]), Millis(1));
        assert_eq!(a.local().status, Status::Up);
        // A tombstone of this life: we were forgotten.
        let effects = a.on_gossip(push("b", vec![digest("a", 6, 0, true)]), Millis(2));
        assert_eq!(a.local().status, Status::Left);
        assert!(effects.contains(&Effect::RingChanged));
        assert!(a.ring_members().is_empty());
    }

    #[test]
    fn a_lone_node_knocks_on_its_seeds_every_round() {
        let mut a = node("a");
        a.add_seed("a:17000"); // its own address is ignored
        a.add_seed("s:17000");
        let effects = a.tick(Millis(0));
        assert_eq!(sends(&effects), ["s:17000"]);
        assert_eq!(a.local().heartbeat, Heartbeat(1));
        // No second round within the interval.
        assert!(a.tick(Millis(500)).is_empty());
        assert_eq!(a.local().heartbeat, Heartbeat(1));
        let effects = a.tick(Millis(1000));
        assert_eq!(sends(&effects), ["s:17000"]);
        assert_eq!(a.local().heartbeat, Heartbeat(2));
    }

    #[test]
    fn meet_pushes_to_the_new_address_at_once() {
        let mut a = node("a");
        assert!(a.meet("a:17000").is_empty(), "meeting oneself does nothing");
        let effects = a.meet("s:17000");
        assert_eq!(sends(&effects), ["s:17000"]);
        // Still alone: the next round knocks on it again.
        assert_eq!(sends(&a.tick(Millis(0))), ["s:17000"]);
    }

    #[test]
    fn a_round_pushes_to_fanout_live_peers_and_not_to_seeds() {
        let mut a = node("a");
        a.add_seed("s:17000");
        let peers: Vec<MemberDigest> = (0..10)
            .map(|i| digest(&format!("p{i}"), 1, 1, false))
            .collect();
        a.on_gossip(push("p0", peers), Millis(0));
        let effects = a.tick(Millis(0));
        let to = sends(&effects);
        assert_eq!(to.len(), 3);
        assert!(to.iter().all(|t| t.starts_with('p')));
        let Effect::Send {
            msg: Message::Gossip(g),
            ..
        } = &effects[effects.len() - 1]
        else {
            panic!("expected a gossip push, got {effects:?}");
        };
        assert_eq!(g.kind, GossipKind::Push);
        assert_eq!(g.members.len(), 11);
    }

    #[test]
    fn silence_makes_a_member_suspect_then_down_and_news_makes_it_up() {
        let mut a = node("a");
        a.on_gossip(push("b", vec![digest("b", 1, 1, false)]), Millis(0));
        a.tick(Millis(4_999));
        assert_eq!(a.status(id("b")), Some(Status::Up));
        let effects = a.tick(Millis(5_000));
        assert!(effects.contains(&Effect::StatusChanged {
            id: id("b"),
            from: Some(Status::Up),
            to: Status::Suspect
        }));
        a.tick(Millis(10_000));
        assert_eq!(a.status(id("b")), Some(Status::Down));
        assert!(!a.is_live(id("b")));
        // Down members stay in the ring.
        assert!(a.ring_members().contains(&id("b")));
        let ring = a.ring().unwrap();
        assert_eq!(ring.members().len(), 2);
        assert_eq!(ring.replication(), 2, "N is capped at the member count");
        let effects = a.on_gossip(push("b", vec![digest("b", 1, 2, false)]), Millis(11_000));
        assert!(effects.contains(&Effect::StatusChanged {
            id: id("b"),
            from: Some(Status::Down),
            to: Status::Up
        }));
        // The same heartbeat again is not news.
        a.tick(Millis(16_000));
        assert_eq!(a.status(id("b")), Some(Status::Suspect));
    }

    #[test]
    fn a_push_is_answered_only_with_news_and_a_reply_never() {
        let mut a = node("a");
        a.tick(Millis(0)); // heartbeat 1
                           // The pusher already knows everything we know: no answer.
        let effects = a.on_gossip(
            push(
                "b",
                vec![digest("a", 1, 1, false), digest("b", 1, 1, false)],
            ),
            Millis(0),
        );
        assert!(sends(&effects).is_empty());
        // The pusher lacks our newest heartbeat: answer with a reply.
        a.tick(Millis(1000));
        let effects = a.on_gossip(push("b", vec![digest("b", 1, 2, false)]), Millis(1000));
        assert_eq!(sends(&effects), ["b:17000"]);
        // A reply is merged but never answered.
        let mut reply = push("c", vec![digest("c", 1, 1, false)]);
        reply.kind = GossipKind::Reply;
        assert!(sends(&a.on_gossip(reply, Millis(1000))).is_empty());
        assert!(a.member(id("c")).is_some());
    }

    #[test]
    fn gossip_with_other_settings_is_refused_and_not_merged() {
        let mut a = node("a");
        let mut msg = push("b", vec![digest("b", 1, 1, false)]);
        msg.settings.partitions = 128;
        let effects = a.on_gossip(msg, Millis(0));
        assert!(a.member(id("b")).is_none());
        assert!(matches!(&effects[0], Effect::Rejected { reason, .. }
            if reason == "Q differs: peer has Q=128, this node Q=256"));
        let Effect::Send {
            to,
            msg: Message::GossipReject(r),
        } = &effects[1]
        else {
            panic!("expected a reject, got {effects:?}");
        };
        assert_eq!(to, "b:17000");
        // The refused side reports it too.
        let mut b = node("b");
        let reported = b.on_reject(r.clone());
        assert!(
            matches!(&reported[0], Effect::Rejected { peer_addr, .. } if peer_addr == "a:17000")
        );

        let other = ClusterSettings {
            name: "other".into(),
            ..ClusterSettings::default()
        };
        assert!(ClusterSettings::default()
            .mismatch(&other)
            .is_some_and(|r| r.contains("cluster name")));
    }

    #[test]
    fn forget_and_leave_tombstone_and_tombstones_expire() {
        let mut a = node("a");
        a.on_gossip(push("b", vec![digest("b", 1, 1, false)]), Millis(0));
        assert!(a.forget(id("zz"), Millis(0)).is_err());
        let effects = a.forget(id("b"), Millis(0)).unwrap();
        assert!(effects.contains(&Effect::RingChanged));
        assert_eq!(a.status(id("b")), Some(Status::Left));
        a.tick(Millis(3_599_999));
        assert!(a.member(id("b")).is_some());
        a.tick(Millis(3_600_000));
        assert!(
            a.member(id("b")).is_none(),
            "tombstone dropped after its TTL"
        );

        let mut c = node("c");
        c.on_gossip(push("d", vec![digest("d", 1, 1, false)]), Millis(0));
        let effects = c.leave(Millis(0));
        assert_eq!(c.local().status, Status::Left);
        // The news goes out at once, to the live peer.
        assert_eq!(sends(&effects), ["d:17000"]);
        // A node that left still gossips its tombstone, never purges itself.
        c.tick(Millis(10_000_000));
        assert!(c.member(c.id()).is_some());
    }

    #[test]
    fn bad_settings_and_timings_are_refused() {
        let bad_settings = [
            ClusterSettings {
                partitions: 0,
                ..ClusterSettings::default()
            },
            ClusterSettings {
                read_quorum: 4,
                ..ClusterSettings::default()
            },
            ClusterSettings {
                name: String::new(),
                ..ClusterSettings::default()
            },
        ];
        for s in bad_settings {
            assert!(
                Membership::new(local("a", 1), s, GossipConfig::default(), 0, Millis(0)).is_err()
            );
        }
        let bad_timing = GossipConfig {
            suspect_after_ms: 500,
            ..GossipConfig::default()
        };
        assert!(Membership::new(
            local("a", 1),
            ClusterSettings::default(),
            bad_timing,
            0,
            Millis(0)
        )
        .is_err());
    }

    fn versions(m: &Membership) -> Vec<(NodeId, Incarnation, Heartbeat, Status)> {
        m.members()
            .map(|x| (x.id, x.incarnation, x.heartbeat, x.status))
            .collect()
    }

    proptest! {
        /// Gossip is a join: the resulting view does not depend on the order
        /// messages arrive in, and hearing a message twice changes nothing.
        #[test]
        fn merging_is_order_insensitive_and_idempotent(
            entries in prop::collection::vec((0u8..4, 1u64..3, 0u64..5, any::<bool>()), 1..12),
            seed in any::<u64>(),
        ) {
            let msgs: Vec<GossipMessage> = entries
                .iter()
                .map(|&(who, inc, hb, left)| push("x", vec![digest(&format!("n{who}"), inc, hb, left)]))
                .collect();
            let mut forward = node("a");
            for m in &msgs {
                forward.on_gossip(m.clone(), Millis(0));
            }
            let mut shuffled = msgs.clone();
            let mut rng = StdRng::seed_from_u64(seed);
            shuffled.shuffle(&mut rng);
            let mut other = node("a");
            for m in shuffled.iter().chain(&msgs) {
                other.on_gossip(m.clone(), Millis(0));
            }
            prop_assert_eq!(versions(&forward), versions(&other));
        }
    }
}
