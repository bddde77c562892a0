//! A deterministic simulation of the cluster's state machines.
//!
//! [`Sim`] runs any number of [`Membership`] nodes against a virtual clock
//! and a simulated network: every message is encoded with the real wire
//! format ([`Message::encode`]), delayed by a random amount, possibly lost,
//! dropped between nodes that are partitioned apart, and decoded on arrival.
//! Nodes can be stopped and restarted (with a higher incarnation) and new
//! nodes can join. All randomness (delays, loss, each node's peer choice)
//! comes from one seed, and every collection is ordered, so a seed always
//! produces the same run: [`Sim::trace_hash`] digests every delivery and
//! status change to prove it.
//!
//! Why a hand-driven harness instead of `turmoil`: the state machines take
//! time and messages as plain arguments, so there is no async code to
//! virtualise, and a direct event loop is simpler, shows exactly what
//! happens, and runs 256 nodes faster than real time even in a debug build. The server's real transport drives the same machines with
//! sockets and wall-clock time.
//!
//! Nodes are numbered `0..n`; node `i` advertises `sim-node-{i}:17000` and its
//! id is derived from that address as in production. Every node but node 0
//! joins through node 0 as its seed (node 0 through node 1).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::membership::{
    ClusterSettings, Effect, GossipConfig, Incarnation, LocalNode, Membership, Millis, Status,
};
use super::messages::Message;
use super::ring::NodeId;

/// The simulated world's parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Gossip timing for every node.
    pub gossip: GossipConfig,
    /// Cluster settings for every node.
    pub settings: ClusterSettings,
    /// How often each running node's `tick` is called, in ms. Default 100.
    pub tick_ms: u64,
    /// Smallest one-way message delay, in ms. Default 1.
    pub min_delay_ms: u64,
    /// Largest one-way message delay, in ms. Default 50.
    pub max_delay_ms: u64,
    /// Probability that a message is lost. Default 0.
    pub loss: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            gossip: GossipConfig::default(),
            settings: ClusterSettings::default(),
            tick_ms: 100,
            min_delay_ms: 1,
            max_delay_ms: 50,
            loss: 0.0,
        }
    }
}

/// A status change one node observed about another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    /// When.
    pub at: Millis,
    /// The node whose view changed.
    pub observer: usize,
    /// The member whose status changed.
    pub subject: NodeId,
    /// The previous status (`None`: first sighting).
    pub from: Option<Status>,
    /// The new status.
    pub to: Status,
    /// Whether the subject was running and on the observer's side of every
    /// network cut at that moment (a `Down` with this set is a false
    /// positive of the failure detector).
    pub subject_reachable: bool,
}

/// Message counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered to a running node.
    pub delivered: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped because sender and receiver were partitioned apart.
    pub cut: u64,
    /// Dropped because the receiver was stopped (or the address unknown).
    pub unreachable: u64,
    /// Encoded bytes handed to the network.
    pub bytes: u64,
}

struct SimNode {
    id: NodeId,
    addr: String,
    peer_addr: String,
    incarnation: Incarnation,
    membership: Option<Membership>,
    next_tick: Millis,
    /// Network side: nodes in different groups cannot talk.
    group: usize,
}

struct InFlight {
    from: usize,
    to: usize,
    payload: Vec<u8>,
}

/// The simulated cluster (see the module doc).
pub struct Sim {
    config: SimConfig,
    now: Millis,
    rng: StdRng,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<String, usize>,
    by_id: BTreeMap<NodeId, usize>,
    /// Messages in flight, by (delivery time, send order).
    queue: BTreeMap<(Millis, u64), InFlight>,
    sent_seq: u64,
    trace: Sha256,
    log: Vec<StatusEvent>,
    rejections: Vec<(usize, String)>,
    stats: SimStats,
}

impl Sim {
    /// `nodes` nodes, all starting now (time 0), each with its first gossip
    /// round at a random moment within the first interval.
    pub fn new(nodes: usize, config: SimConfig) -> Sim {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now: Millis(0),
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            by_id: BTreeMap::new(),
            queue: BTreeMap::new(),
            sent_seq: 0,
            trace: Sha256::new(),
            log: Vec::new(),
            rejections: Vec::new(),
            stats: SimStats::default(),
        };
        for _ in 0..nodes {
            sim.add_node();
        }
        sim
    }

    /// Start one more node now; it joins through node 0. Returns its number.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let peer_addr = format!("sim-node-{i}:17000");
        let id = NodeId::from_peer_addr(&peer_addr);
        self.by_addr.insert(peer_addr.clone(), i);
        self.by_id.insert(id, i);
        self.nodes.push(SimNode {
            id,
            addr: format!("sim-node-{i}:7000"),
            peer_addr,
            incarnation: Incarnation(1),
            membership: None,
            next_tick: self.now,
            group: 0,
        });
        self.boot(i);
        i
    }

    fn boot(&mut self, i: usize) {
        let settings = self.config.settings.clone();
        let gossip = self.config.gossip.clone();
        let rng_seed = self.rng.gen();
        let phase = self.rng.gen_range(0..gossip.interval_ms);
        let seed_node = if i == 0 { 1 } else { 0 };
        let seed_addr = self.nodes.get(seed_node).map(|n| n.peer_addr.clone());
        let node = &mut self.nodes[i];
        let local = LocalNode {
            id: node.id,
            addr: node.addr.clone(),
            peer_addr: node.peer_addr.clone(),
            incarnation: node.incarnation,
        };
        let start = self.now.plus(phase);
        let mut membership = Membership::new(local, settings, gossip, rng_seed, start)
            .unwrap_or_else(|e| panic!("simulation config must be valid: {e}"));
        if let Some(addr) = seed_addr {
            membership.add_seed(addr);
        }
        node.membership = Some(membership);
        node.next_tick = start;
    }

    /// Stop node `i` (a crash: nothing more is sent or received).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].membership = None;
    }

    /// Restart a stopped node `i` with a higher incarnation; it rejoins
    /// through its seed knowing nothing of its previous life.
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.incarnation = Incarnation(node.incarnation.0 + 1);
        self.boot(i);
    }

    /// Cut the network into `groups`; nodes listed in no group form one
    /// more group together. Messages already in flight across a cut are
    /// dropped on arrival.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for node in &mut self.nodes {
            node.group = groups.len();
        }
        for (g, members) in groups.iter().enumerate() {
            for &i in *members {
                self.nodes[i].group = g;
            }
        }
    }

    /// Remove every network cut.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Set the message loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.config.loss = loss;
    }

    /// The current virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The gossip round length, in ms.
    pub fn interval_ms(&self) -> u64 {
        self.config.gossip.interval_ms
    }

    /// The number of nodes ever started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    /// Node `i`'s current incarnation.
    pub fn incarnation(&self, i: usize) -> Incarnation {
        self.nodes[i].incarnation
    }

    /// Whether node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].membership.is_some()
    }

    /// Node `i`'s membership view, if it is running.
    pub fn view(&self, i: usize) -> Option<&Membership> {
        self.nodes[i].membership.as_ref()
    }

    /// Every status change observed so far, in order.
    pub fn status_log(&self) -> &[StatusEvent] {
        &self.log
    }

    /// `Down` verdicts about nodes that were running and reachable at the
    /// time.
    pub fn false_downs(&self) -> Vec<&StatusEvent> {
        self.log
            .iter()
            .filter(|e| e.to == Status::Down && e.subject_reachable)
            .collect()
    }

    /// Every refusal reported, as (node, reason).
    pub fn rejections(&self) -> &[(usize, String)] {
        &self.rejections
    }

    /// Message counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// A digest of every delivery (time, sender, receiver, bytes) and every
    /// status change so far: equal digests mean identical runs.
    pub fn trace_hash(&self) -> [u8; 32] {
        self.trace.clone().finalize().into()
    }

    /// Whether every running node sees every running node `Up` at its
    /// current incarnation.
    pub fn converged(&self) -> bool {
        let running: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|n| n.membership.is_some())
            .collect();
        running.iter().all(|observer| {
            running.iter().all(|subject| {
                observer
                    .membership
                    .as_ref()
                    .and_then(|m| m.member(subject.id))
                    .is_some_and(|m| m.status == Status::Up && m.incarnation == subject.incarnation)
            })
        })
    }

    /// Whether every running node other than `subject` sees it with `status`.
    pub fn all_see(&self, subject: usize, status: Status) -> bool {
        let id = self.nodes[subject].id;
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != subject)
            .filter_map(|(_, n)| n.membership.as_ref())
            .all(|m| m.status(id) == Some(status))
    }

    /// Run until `cond` holds or `deadline` passes; returns the first check
    /// time at which it held. `cond` is checked every `tick_ms` of virtual
    /// time (checking after every event would cost more than the run).
    pub fn run_until_true(
        &mut self,
        deadline: Millis,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Millis> {
        loop {
            if cond(self) {
                return Some(self.now);
            }
            if self.now >= deadline {
                return None;
            }
            let next_check = self.now.plus(self.config.tick_ms).min(deadline);
            self.run_until(next_check);
        }
    }

    /// Run every event up to and including `until`.
    pub fn run_until(&mut self, until: Millis) {
        while self.step(until) {}
    }

    /// Run for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now.plus(ms);
        self.run_until(until);
    }

    /// Process everything due at the next event time, if it is `<= until`;
    /// otherwise move the clock to `until` and return false.
    fn step(&mut self, until: Millis) -> bool {
        let next_delivery = self.queue.keys().next().map(|(t, _)| *t);
        let next_tick = self
            .nodes
            .iter()
            .filter(|n| n.membership.is_some())
            .map(|n| n.next_tick)
            .min();
        let next = match [next_delivery, next_tick].into_iter().flatten().min() {
            Some(t) if t <= until => t,
            _ => {
                self.now = self.now.max(until);
                return false;
            }
        };
        self.now = next;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > next {
                break;
            }
            let msg = entry.remove();
            self.deliver(msg);
        }
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let Some(membership) = node.membership.as_mut() else {
                continue;
            };
            if node.next_tick > next {
                continue;
            }
            node.next_tick = next.plus(self.config.tick_ms);
            let effects = membership.tick(next);
            self.apply(i, effects);
        }
        true
    }

    fn deliver(&mut self, msg: InFlight) {
        let (from, to) = (msg.from, msg.to);
        if self.nodes[from].group != self.nodes[to].group {
            self.stats.cut += 1;
            return;
        }
        let now = self.now;
        let Some(membership) = self.nodes[to].membership.as_mut() else {
            self.stats.unreachable += 1;
            return;
        };
        self.stats.delivered += 1;
        self.trace.update(now.0.to_be_bytes());
        self.trace.update((from as u64).to_be_bytes());
        self.trace.update((to as u64).to_be_bytes());
        self.trace.update(&msg.payload);
        // The sim encoded this payload itself: failing to decode it would be
        // a codec bug, which is exactly what should stop the run.
        let decoded = Message::decode(&msg.payload)
            .unwrap_or_else(|e| panic!("a message the simulation encoded must decode: {e}"));
        let effects = match decoded {
            Message::Gossip(g) => membership.on_gossip(g, now),
            Message::GossipReject(r) => membership.on_reject(r),
            other => panic!("membership never sends {}", other.kind()),
        };
        self.apply(to, effects);
    }

    fn apply(&mut self, i: usize, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => self.send(i, &to, &msg),
                Effect::StatusChanged { id, from, to } => {
                    let subject_reachable = self.by_id.get(&id).is_some_and(|&j| {
                        self.nodes[j].membership.is_some()
                            && self.nodes[j].group == self.nodes[i].group
                    });
                    self.trace.update((i as u64).to_be_bytes());
                    self.trace.update(id.as_bytes());
                    self.trace.update([to as u8]);
                    self.log.push(StatusEvent {
                        at: self.now,
                        observer: i,
                        subject: id,
                        from,
                        to,
                        subject_reachable,
                    });
                }
                Effect::RingChanged => {}
                Effect::Rejected { reason, .. } => self.rejections.push((i, reason)),
            }
        }
    }

    fn send(&mut self, from: usize, to: &str, msg: &Message) {
        self.stats.sent += 1;
        let Some(&to) = self.by_addr.get(to) else {
            self.stats.unreachable += 1;
            return;
        };
        let payload = msg.encode();
        self.stats.bytes += payload.len() as u64;
        if self.config.loss > 0.0 && self.rng.gen_bool(self.config.loss.min(1.0)) {
            self.stats.lost += 1;
            return;
        }
        let delay = self.rng.gen_range(
            self.config.min_delay_ms..=self.config.max_delay_ms.max(self.config.min_delay_ms),
        );
        self.sent_seq += 1;
        self.queue.insert(
            (self.now.plus(delay), self.sent_seq),
            InFlight { from, to, payload },
        );
    }

    /// Node `i` leaves the cluster (`CLUSTER LEAVE`); it keeps running and
    /// gossiping its tombstone.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(m) = self.nodes[i].membership.as_mut() {
            let effects = m.leave(now);
            self.apply(i, effects);
        }
    }

    /// Node `at` forgets node `subject` (`CLUSTER FORGET`).
    pub fn forget(&mut self, at: usize, subject: usize) {
        let (now, id) = (self.now, self.nodes[subject].id);
        if let Some(m) = self.nodes[at].membership.as_mut() {
            if let Ok(effects) = m.forget(id, now) {
                self.apply(at, effects);
            }
        }
    }

    /// The longest time, right now, that any running node has gone without
    /// news of any other running node it knows: how close live nodes are to
    /// being suspected.
    pub fn max_silence_ms(&self) -> u64 {
        let mut max = 0;
        for observer in self.nodes.iter().filter_map(|n| n.membership.as_ref()) {
            for subject in &self.nodes {
                if subject.membership.is_none() || subject.id == observer.id() {
                    continue;
                }
                if let Some(m) = observer.member(subject.id) {
                    max = max.max(self.now.since(m.last_news));
                }
            }
        }
        max
    }

    /// Set a node's cluster settings before it (re)starts: used to check
    /// that a mismatched node is refused.
    pub fn start_with_settings(&mut self, settings: ClusterSettings) -> usize {
        let saved = std::mem::replace(&mut self.config.settings, settings);
        let i = self.add_node();
        self.config.settings = saved;
        i
    }
}
