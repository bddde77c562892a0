//! The coordinator driven through a small deterministic step harness:
//! every node is a [`Coordinator`] over a [`MemStore`], messages travel
//! through the real wire encoding with seeded random delays, loss and
//! network cuts, and time is virtual. The same seed gives the same run
//! (checked by comparing delivery traces).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::version::{ActorId, Payload, VersionVector};

/// How often every node's `on_tick` runs, in virtual ms.
const TICK_MS: u64 = 10;
/// A client request that has no answer this long after it started hangs.
const HANG_MS: u64 = 5_000;

struct Node {
    coord: Coordinator,
    actor: ActorId,
    store: MemStore,
    /// Hints held for other nodes (in `hints.hints`).
    hints: MemStore,
    /// Stopped: receives nothing, sends nothing, its clock does not tick.
    down: bool,
}

struct Cluster {
    nodes: Vec<Node>,
    index: BTreeMap<NodeId, usize>,
    now: Millis,
    rng: StdRng,
    /// Messages in flight by (delivery time, send order): (from, to, bytes).
    queue: BTreeMap<(Millis, u64), (usize, usize, Vec<u8>)>,
    sent: u64,
    /// Probability that a message is lost.
    loss: f64,
    /// Network side of each node: different sides cannot talk.
    side: Vec<usize>,
    replies: BTreeMap<(usize, RequestId), std::result::Result<Answer, QuorumError>>,
    /// Every delivery, for determinism checks.
    trace: Vec<String>,
    next_tick: Millis,
}

impl Cluster {
    fn new(size: usize, seed: u64) -> Cluster {
        Cluster::with_config(size, seed, QuorumConfig::default())
    }

    fn with_config(size: usize, seed: u64, config: QuorumConfig) -> Cluster {
        let ids: Vec<NodeId> = (0..size)
            .map(|i| NodeId::from_peer_addr(&format!("coord-test-{i}:17000")))
            .collect();
        let ring = Ring::new(ids.iter().copied(), 64, 3).expect("a valid test ring");
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Node {
                coord: Coordinator::new(id, ring.clone(), config).expect("a valid config"),
                actor: ActorId(100 + i as u64),
                store: MemStore::default(),
                hints: MemStore::default(),
                down: false,
            })
            .collect();
        Cluster {
            nodes,
            index: ids.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            now: Millis(0),
            rng: StdRng::seed_from_u64(seed),
            queue: BTreeMap::new(),
            sent: 0,
            loss: 0.0,
            side: vec![0; size],
            replies: BTreeMap::new(),
            trace: Vec::new(),
            next_tick: Millis(TICK_MS),
        }
    }

    fn id(&self, node: usize) -> NodeId {
        self.nodes[node].coord.id()
    }

    /// The key's owners then fallbacks, as node indices.
    fn preference(&self, key: &str) -> Vec<usize> {
        let ring = self.nodes[0].coord.ring();
        ring.preference_list(ring.partition_for_key(key.as_bytes()))
            .iter()
            .map(|id| self.index[id])
            .collect()
    }

    /// Every running node's view of `subject` becomes `status`.
    fn everyone_sees(&mut self, subject: usize, status: Status) {
        let id = self.id(subject);
        for node in &mut self.nodes {
            node.coord.set_status(id, status);
        }
    }

    /// Stop a node: messages to it are dropped; membership marks it `Down`
    /// everywhere when `detected`.
    fn kill(&mut self, node: usize, detected: bool) {
        self.nodes[node].down = true;
        if detected {
            self.everyone_sees(node, Status::Down);
        }
    }

    /// Restart a stopped node with its data; everyone sees it `Up`.
    fn revive(&mut self, node: usize) {
        self.nodes[node].down = false;
        self.everyone_sees(node, Status::Up);
    }

    /// Cut the network into `sides`; each node sees the other sides `Down`.
    fn partition(&mut self, sides: &[&[usize]]) {
        for (s, members) in sides.iter().enumerate() {
            for &n in *members {
                self.side[n] = s;
            }
        }
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                let status = if self.side[a] == self.side[b] {
                    Status::Up
                } else {
                    Status::Down
                };
                let id = self.id(b);
                self.nodes[a].coord.set_status(id, status);
            }
        }
    }

    /// Hinted handoff, as the hints module will do it once gossip shows the
    /// owners back: every hint goes to its owner as a plain `Put`.
    fn hand_off_hints(&mut self) {
        for n in 0..self.nodes.len() {
            let hints = std::mem::take(&mut self.nodes[n].hints.hints);
            for ((owner, key), set) in hints {
                let ring = self.nodes[n].coord.ring();
                let partition = ring.partition_for_key(&key);
                let id = RequestId(u64::MAX - self.sent);
                let put = repair_request(id, partition, key, &set, 1000);
                self.send(n, self.index[&owner], &Message::Put(put));
            }
        }
    }

    fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
        for n in 0..self.nodes.len() {
            self.everyone_sees(n, Status::Up);
        }
    }

    /// Carry out `effects` of node `at`, feeding local results straight back.
    fn apply(&mut self, at: usize, effects: Vec<Effect>) {
        let mut work: VecDeque<Effect> = effects.into();
        while let Some(effect) = work.pop_front() {
            let more = match effect {
                Effect::Send { to, msg } => {
                    self.send(at, self.index[&to], &msg);
                    Vec::new()
                }
                Effect::StoreLocal { id, key, set } => {
                    let node = &mut self.nodes[at];
                    let result = node.store.merge(&key, &set);
                    node.coord.on_local_stored(id, result, self.now)
                }
                Effect::ReadLocal { id, key } => {
                    let node = &mut self.nodes[at];
                    let result = node.store.get(&key);
                    node.coord.on_local_read(id, result)
                }
                Effect::Reply { id, result } => {
                    self.replies.insert((at, id), result);
                    Vec::new()
                }
                Effect::Repair {
                    id,
                    to,
                    partition,
                    key,
                    set,
                    ..
                } => {
                    let to = self.index[&to];
                    if to == at {
                        // A stale local replica cannot fail to merge in memory.
                        let _ = self.nodes[at].store.merge(&key, &set);
                    } else {
                        let put = repair_request(id, partition, key, &set, 1000);
                        self.send(at, to, &Message::Put(put));
                    }
                    Vec::new()
                }
            };
            // Effects caused by an effect happen after the ones already due.
            work.extend(more);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: &Message) {
        self.sent += 1;
        if self.rng.gen_bool(self.loss) {
            return;
        }
        let delay = self.rng.gen_range(1..=5);
        self.queue
            .insert((self.now.plus(delay), self.sent), (from, to, msg.encode()));
    }

    /// Deliver the next message or run the next tick, whichever is first.
    fn step(&mut self) {
        let next_msg = self.queue.keys().next().map(|&(at, _)| at);
        if next_msg.is_some_and(|at| at <= self.next_tick) {
            let Some(((at, _), (from, to, bytes))) = self.queue.pop_first() else {
                return;
            };
            self.now = at;
            self.deliver(from, to, &bytes);
        } else {
            self.now = self.next_tick;
            self.next_tick = self.now.plus(TICK_MS);
            for n in 0..self.nodes.len() {
                if !self.nodes[n].down {
                    let effects = self.nodes[n].coord.on_tick(self.now);
                    self.apply(n, effects);
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        if self.nodes[to].down || self.side[from] != self.side[to] {
            return;
        }
        let msg = Message::decode(bytes).expect("the harness sends only valid frames");
        self.trace
            .push(format!("{} {from}->{to} {}", self.now.0, msg.kind()));
        let from_id = self.id(from);
        let node = &mut self.nodes[to];
        let effects = match msg {
            Message::Put(req) => node
                .coord
                .on_put(from_id, req, &mut node.store, &mut node.hints),
            Message::Get(req) => node.coord.on_get(from_id, req, &node.store),
            other => node.coord.on_reply(from_id, other, self.now),
        };
        self.apply(to, effects);
    }

    /// Run until node `at` answered request `id`; panics if it hangs.
    fn wait(&mut self, at: usize, id: RequestId) -> std::result::Result<Answer, QuorumError> {
        let give_up = self.now.plus(HANG_MS);
        while self.now < give_up {
            if let Some(result) = self.replies.remove(&(at, id)) {
                return result;
            }
            self.step();
        }
        panic!("request {id:?} at node {at} hung past {HANG_MS} ms");
    }

    /// Run until no message is in flight and no request is open.
    fn settle(&mut self) {
        let give_up = self.now.plus(HANG_MS);
        while self.now < give_up {
            let open = self
                .nodes
                .iter()
                .any(|n| !n.down && n.coord.in_flight() > 0);
            if self.queue.is_empty() && !open {
                return;
            }
            self.step();
        }
        panic!("the cluster did not settle within {HANG_MS} ms");
    }

    /// Where a client's request to node `via` is coordinated.
    fn coordinator_for(&mut self, via: usize, key: &str) -> usize {
        match self.nodes[via].coord.route(key.as_bytes(), Origin::Client) {
            Route::Coordinate => via,
            Route::Forward(to) => {
                let to = self.index[&to];
                assert_eq!(
                    self.nodes[to]
                        .coord
                        .route(key.as_bytes(), Origin::Forwarded),
                    Route::Coordinate,
                    "a forwarded request is never forwarded again"
                );
                to
            }
        }
    }

    /// Write `new_set` through coordinator `at` and wait for the answer.
    fn write_set(
        &mut self,
        at: usize,
        key: &str,
        new_set: SiblingSet,
    ) -> std::result::Result<Answer, QuorumError> {
        let (id, effects) = self.nodes[at]
            .coord
            .begin_write(key.as_bytes().to_vec(), new_set, self.now)
            .expect("test values are small");
        self.apply(at, effects);
        self.wait(at, id)
    }

    /// `SET key value` sent to node `via`.
    fn set(
        &mut self,
        via: usize,
        key: &str,
        value: &str,
    ) -> std::result::Result<Answer, QuorumError> {
        let at = self.coordinator_for(via, key);
        let node = &self.nodes[at];
        let mut set = node
            .store
            .keys
            .get(key.as_bytes())
            .cloned()
            .unwrap_or_default();
        set.overwrite(node.actor, payload(value), None, self.now.0);
        self.write_set(at, key, set)
    }

    /// `GET key` sent to node `via`: the merged set.
    fn get(&mut self, via: usize, key: &str) -> std::result::Result<SiblingSet, QuorumError> {
        let at = self.coordinator_for(via, key);
        let (id, effects) = self.nodes[at]
            .coord
            .begin_read(key.as_bytes().to_vec(), self.now);
        self.apply(at, effects);
        self.wait(at, id).map(|answer| match answer {
            Answer::Read(set) => set,
            Answer::Written => panic!("a read answered as a write"),
        })
    }

    /// `RESOLVE key context value` sent to node `via`: a quorum read, then
    /// a write with the client's context on top of the merged set.
    fn resolve(
        &mut self,
        via: usize,
        key: &str,
        context: &VersionVector,
        value: &str,
    ) -> std::result::Result<Answer, QuorumError> {
        let at = self.coordinator_for(via, key);
        let mut merged = self.get(at, key)?;
        merged
            .validate_context(context)
            .expect("the context came from a read of this key");
        merged.write(
            self.nodes[at].actor,
            context,
            payload(value),
            None,
            self.now.0,
        );
        self.write_set(at, key, merged)
    }

    fn stored(&self, node: usize, key: &str) -> Option<&SiblingSet> {
        self.nodes[node].store.keys.get(key.as_bytes())
    }
}

fn payload(value: &str) -> Payload {
    Payload::Value(Bytes::copy_from_slice(value.as_bytes()))
}

fn values(set: &SiblingSet) -> Vec<String> {
    set.live_values(0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A clock's (actor, counter) pairs, ignoring order and timestamps.
fn entries(clock: &VersionVector) -> BTreeSet<(ActorId, u64)> {
    clock.iter().map(|e| (e.actor, e.counter)).collect()
}

fn entries_of(pairs: &[(ActorId, u64)]) -> BTreeSet<(ActorId, u64)> {
    pairs.iter().copied().collect()
}

const KEY: &str = "user:42";

#[test]
fn a_write_through_one_node_is_read_through_another() {
    let mut c = Cluster::new(5, 1);
    assert_eq!(c.set(1, KEY, "hello"), Ok(Answer::Written));
    let read = c.get(3, KEY).expect("a healthy cluster reads");
    assert_eq!(values(&read), ["hello"]);
    c.settle();
    // Exactly the three owners hold the key; nobody holds hints.
    let pref = c.preference(KEY);
    for (rank, &n) in pref.iter().enumerate() {
        assert_eq!(
            c.stored(n, KEY).is_some(),
            rank < 3,
            "node {n} at rank {rank}"
        );
        assert!(c.nodes[n].hints.hints.is_empty());
    }
}

#[test]
fn a_non_owner_forwards_once_to_the_first_owner_which_coordinates() {
    let mut c = Cluster::new(5, 2);
    let pref = c.preference(KEY);
    let outsider = pref[3];
    assert_eq!(
        c.nodes[outsider]
            .coord
            .route(KEY.as_bytes(), Origin::Client),
        Route::Forward(c.id(pref[0]))
    );
    assert_eq!(c.nodes[outsider].coord.stats().forwarded, 1);
    // With the first owner down, the next healthy one.
    c.kill(pref[0], true);
    assert_eq!(
        c.nodes[outsider]
            .coord
            .route(KEY.as_bytes(), Origin::Client),
        Route::Forward(c.id(pref[1]))
    );
    assert_eq!(c.set(outsider, KEY, "v"), Ok(Answer::Written));
    // The write's dot is the coordinating owner's, not the outsider's.
    let stored = c.stored(pref[1], KEY).expect("the coordinator stored it");
    assert_eq!(stored.versions()[0].dot.actor, c.nodes[pref[1]].actor);
    assert_eq!(c.nodes[pref[1]].coord.stats().writes, 1);
    assert_eq!(c.nodes[outsider].coord.stats().writes, 0);
}

#[test]
fn a_write_survives_a_dead_owner_through_a_hinted_fallback() {
    let mut c = Cluster::new(5, 3);
    let pref = c.preference(KEY);
    c.kill(pref[2], true);
    assert_eq!(c.set(pref[0], KEY, "v"), Ok(Answer::Written));
    c.settle();
    // The first fallback holds the write as a hint for the dead owner, not
    // in its own keyspace.
    let fallback = &c.nodes[pref[3]];
    let hint = fallback
        .hints
        .hints
        .get(&(c.id(pref[2]), KEY.as_bytes().to_vec()))
        .expect("a hint for the dead owner");
    assert_eq!(values(hint), ["v"]);
    assert!(fallback.store.keys.is_empty());
    assert!(c.stored(pref[2], KEY).is_none());
    assert_eq!(c.nodes[pref[0]].coord.stats().hinted_puts, 1);
    assert_eq!(
        values(&c.get(pref[1], KEY).expect("R=2 of the live owners")),
        ["v"]
    );
}

#[test]
fn an_undetected_dead_owner_gets_a_fallback_after_the_hedge_delay() {
    let mut c = Cluster::new(5, 4);
    let pref = c.preference(KEY);
    // Dead, but membership has not noticed: the Put goes out and is lost.
    c.kill(pref[1], false);
    c.kill(pref[2], false);
    let started = c.now;
    assert_eq!(c.set(pref[0], KEY, "v"), Ok(Answer::Written));
    let took = c.now.since(started);
    assert!(
        (300..1000).contains(&took),
        "acked via a fallback after the hedge delay, before the timeout: {took} ms"
    );
    c.settle();
    let hints = |n: usize| c.nodes[n].hints.hints.len();
    assert_eq!(
        hints(pref[3]) + hints(pref[4]),
        2,
        "one hint per dead owner"
    );
}

#[test]
fn two_of_three_owners_down_is_unavailable_at_once_and_stores_nothing() {
    let mut c = Cluster::new(3, 5);
    let pref = c.preference(KEY);
    c.kill(pref[1], true);
    c.kill(pref[2], true);
    let started = c.now;
    assert_eq!(c.set(pref[0], KEY, "v"), Err(expected_unavailable()));
    assert_eq!(c.now, started, "answered without waiting");
    assert!(c.stored(pref[0], KEY).is_none());
    assert!(matches!(
        c.get(pref[0], KEY),
        Err(QuorumError::Unavailable {
            what: "R",
            needed: 2,
            ..
        })
    ));
    assert_eq!(
        Error::from(expected_unavailable()).to_resp(),
        "UNAVAILABLE needed W=2 acks, got 0"
    );
}

fn expected_unavailable() -> QuorumError {
    QuorumError::Unavailable {
        what: "W",
        needed: 2,
        got: 0,
    }
}

#[test]
fn failing_replicas_make_writes_and_reads_unavailable_before_the_deadline() {
    let mut c = Cluster::new(3, 6);
    let pref = c.preference(KEY);
    c.nodes[pref[1]].store.failing = true;
    c.nodes[pref[2]].store.failing = true;
    let started = c.now;
    let result = c.set(pref[0], KEY, "v");
    assert_eq!(
        result,
        Err(QuorumError::Unavailable {
            what: "W",
            needed: 2,
            got: 1
        })
    );
    assert!(c.now.since(started) < 100, "no waiting for the deadline");
    let started = c.now;
    assert_eq!(
        c.get(pref[0], KEY),
        Err(QuorumError::Unavailable {
            what: "R",
            needed: 2,
            got: 1
        })
    );
    assert!(c.now.since(started) < 100, "no waiting for the deadline");
}

#[test]
fn undetected_dead_replicas_time_out_at_the_deadline_without_hanging() {
    let mut c = Cluster::new(3, 7);
    let pref = c.preference(KEY);
    c.kill(pref[1], false);
    c.kill(pref[2], false);
    let started = c.now;
    let result = c.set(pref[0], KEY, "v");
    assert_eq!(
        result,
        Err(QuorumError::Timeout {
            what: "W",
            needed: 2,
            got: 1,
            after_ms: 1000
        })
    );
    let took = c.now.since(started);
    assert!((1000..1000 + TICK_MS + 1).contains(&took), "{took} ms");
    assert!(Error::from(result.unwrap_err())
        .to_resp()
        .starts_with("TIMEOUT needed W=2"));
    assert!(matches!(
        c.get(pref[0], KEY),
        Err(QuorumError::Timeout {
            what: "R",
            got: 1,
            ..
        })
    ));
    c.settle();
    assert_eq!(c.nodes[pref[0]].coord.in_flight(), 0, "nothing left open");
}

#[test]
fn quorums_are_capped_while_the_cluster_is_smaller_than_n() {
    let config = QuorumConfig {
        read_quorum: 3,
        write_quorum: 3,
        ..QuorumConfig::default()
    };
    let mut c = Cluster::with_config(1, 8, config);
    assert_eq!(c.set(0, KEY, "alone"), Ok(Answer::Written));
    assert_eq!(
        values(&c.get(0, KEY).expect("one node is a cluster")),
        ["alone"]
    );
    let mut c = Cluster::with_config(2, 8, config);
    assert_eq!(c.set(1, KEY, "pair"), Ok(Answer::Written));
    c.settle();
    assert!(c.stored(0, KEY).is_some() && c.stored(1, KEY).is_some());
}

#[test]
fn read_repair_makes_a_stale_replica_equal() {
    let mut c = Cluster::new(5, 9);
    let pref = c.preference(KEY);
    // The third owner misses the write (down, undetected) and comes back.
    c.kill(pref[2], false);
    assert_eq!(c.set(pref[0], KEY, "fresh"), Ok(Answer::Written));
    c.settle();
    c.revive(pref[2]);
    assert!(c.stored(pref[2], KEY).is_none());
    let read = c.get(pref[0], KEY).expect("the owners answer");
    assert_eq!(values(&read), ["fresh"]);
    c.settle();
    assert_eq!(c.stored(pref[2], KEY), c.stored(pref[0], KEY));
    assert_eq!(c.nodes[pref[0]].coord.stats().read_repairs, 1);
    // A second read finds nothing to repair.
    c.get(pref[0], KEY).expect("the owners answer");
    c.settle();
    assert_eq!(c.nodes[pref[0]].coord.stats().read_repairs, 1);
}

/// The seed's D1..D5 example through the coordinators of a 5-node cluster.
/// Returns the delivery trace, for the determinism test.
fn seed_example(seed: u64) -> Vec<String> {
    let mut c = Cluster::new(5, seed);
    let pref = c.preference(KEY);
    let (a, b, cc, f0, f1) = (pref[0], pref[1], pref[2], pref[3], pref[4]);

    // D1 and D2 through A, replicated to every owner.
    assert_eq!(c.set(a, KEY, "D1"), Ok(Answer::Written));
    assert_eq!(c.set(a, KEY, "D2"), Ok(Answer::Written));
    c.settle();
    for n in [a, b, cc] {
        assert_eq!(values(c.stored(n, KEY).expect("replicated")), ["D2"]);
    }

    // Partition: {A, B, f0} | {C, f1}. Each side has a write quorum: B with
    // A (f0 stands in for C), C with f1 standing in for an owner.
    c.partition(&[&[a, b, f0], &[cc, f1]]);
    assert_eq!(c.set(b, KEY, "D3"), Ok(Answer::Written));
    assert_eq!(c.set(cc, KEY, "D4"), Ok(Answer::Written));
    c.settle();
    assert_eq!(
        c.nodes[b].hints.hints.len() + c.nodes[f0].hints.hints.len(),
        1
    );
    assert_eq!(c.nodes[f1].hints.hints.len(), 1);
    let clock =
        |c: &Cluster, n: usize| entries(&c.stored(n, KEY).expect("written").versions()[0].clock());
    let (aa, ab, ac) = (c.nodes[a].actor, c.nodes[b].actor, c.nodes[cc].actor);
    assert_eq!(clock(&c, b), entries_of(&[(aa, 2), (ab, 1)]));
    assert_eq!(clock(&c, cc), entries_of(&[(aa, 2), (ac, 1)]));

    // Heal, and let the fallbacks hand their hints to the owners: a read
    // returns both as siblings. (Without handoff an R=2 read may ask only A
    // and B, which never saw D4, until read repair or anti-entropy.)
    c.heal();
    c.hand_off_hints();
    c.settle();
    let read = c.get(a, KEY).expect("healed");
    assert_eq!(values(&read), ["D3", "D4"], "siblings in dot order");
    let context = read.causal_context();
    assert_eq!(entries(&context), entries_of(&[(aa, 2), (ab, 1), (ac, 1)]));
    c.settle();
    // Read repair brought the owner that had only D3 up to date.
    for n in [a, b, cc] {
        assert_eq!(values(c.stored(n, KEY).expect("repaired")), ["D3", "D4"]);
    }

    // RESOLVE through A with the joined context: D5 descends from both.
    assert_eq!(c.resolve(a, KEY, &context, "D5"), Ok(Answer::Written));
    c.settle();
    let d5 = c.stored(a, KEY).expect("resolved").clone();
    assert_eq!(values(&d5), ["D5"]);
    assert_eq!(d5.len(), 1);
    let d5_clock = d5.versions()[0].clock();
    assert_eq!(entries(&d5_clock), entries_of(&[(aa, 3), (ab, 1), (ac, 1)]));
    for sibling in read.versions() {
        assert!(d5_clock.descends(&sibling.clock()));
    }

    // A read and its repair: every owner holds only D5.
    assert_eq!(values(&c.get(cc, KEY).expect("healed")), ["D5"]);
    c.settle();
    for n in [a, b, cc] {
        assert_eq!(c.stored(n, KEY), Some(&d5), "node {n}");
    }
    c.trace
}

#[test]
fn seed_example_d1_to_d5_across_a_partition() {
    seed_example(10);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(seed_example(11), seed_example(11));
}

#[test]
fn message_loss_gives_answers_never_hangs_and_replays_by_seed() {
    fn run(seed: u64) -> (Vec<String>, Vec<std::result::Result<Answer, QuorumError>>) {
        let mut c = Cluster::new(5, seed);
        c.loss = 0.3;
        let mut results = Vec::new();
        for i in 0..20 {
            let key = format!("k{i}");
            results.push(c.set(i % 5, &key, "v"));
            results.push(c.get((i + 2) % 5, &key).map(|_| Answer::Written));
        }
        c.settle();
        (c.trace, results)
    }
    let (trace, results) = run(12);
    assert!(results.iter().any(|r| r.is_ok()));
    assert_eq!(run(12), (trace, results));
}

#[test]
fn a_write_too_large_for_a_frame_is_refused_before_anything_is_stored() {
    let config = QuorumConfig {
        max_set_bytes: 64,
        ..QuorumConfig::default()
    };
    let mut c = Cluster::with_config(3, 13, config);
    let mut set = SiblingSet::new();
    set.overwrite(ActorId(1), payload(&"x".repeat(100)), None, 0);
    let err = c.nodes[0]
        .coord
        .begin_write(KEY.as_bytes().to_vec(), set, c.now)
        .expect_err("over the limit");
    assert!(err.to_resp().starts_with("ERR value too large"), "{err}");
    assert_eq!(c.nodes[0].coord.in_flight(), 0);
    assert_eq!(c.queue.len(), 0);
}

/// Random writes and reads through random nodes while nodes die (detected
/// or not), come back, and the network splits, with 10% message loss.
/// Afterwards (all up, healed, hints handed off, every key read once):
/// every owner of a key holds the same set, and no acknowledged write is
/// lost (its dot is covered by the key's final causal context).
#[test]
fn acknowledged_writes_survive_failures_and_owners_converge_after_heal() {
    for seed in 0..32 {
        let mut c = Cluster::new(5, 1000 + seed);
        c.loss = 0.1;
        let mut chaos = StdRng::seed_from_u64(seed);
        let keys: Vec<String> = (0..6).map(|i| format!("key-{i}")).collect();
        let mut acked: Vec<(String, crate::version::Dot)> = Vec::new();
        for _ in 0..60 {
            let node = chaos.gen_range(0..5);
            match chaos.gen_range(0..10) {
                0 => {
                    let detected = chaos.gen_bool(0.5);
                    if c.nodes.iter().filter(|n| n.down).count() < 2 {
                        c.kill(node, detected);
                    }
                }
                1 => c.revive(node),
                2 => {
                    let mut all: Vec<usize> = (0..5).collect();
                    let cut = chaos.gen_range(1..5);
                    let right = all.split_off(cut);
                    c.partition(&[&all, &right]);
                }
                3 => c.heal(),
                _ => {
                    let key = &keys[chaos.gen_range(0..keys.len())];
                    let at = c.coordinator_for(node, key);
                    // A forward to an unreachable node times out in the
                    // server's forwarding layer, not in the coordinator.
                    if c.nodes[node].down || c.nodes[at].down || c.side[node] != c.side[at] {
                        continue;
                    }
                    if chaos.gen_bool(0.3) {
                        let _ = c.get(at, key);
                        continue;
                    }
                    let mut set = c.stored(at, key).cloned().unwrap_or_default();
                    let dot = set.overwrite(c.nodes[at].actor, payload("v"), None, c.now.0);
                    if c.write_set(at, key, set) == Ok(Answer::Written) {
                        acked.push((key.clone(), dot));
                    }
                }
            }
        }
        c.loss = 0.0;
        for n in 0..5 {
            c.revive(n);
        }
        c.heal();
        c.settle();
        c.hand_off_hints();
        c.settle();
        for key in &keys {
            let first_owner = c.preference(key)[0];
            c.get(first_owner, key).expect("a healed cluster reads");
        }
        c.settle();
        for key in &keys {
            let owners = &c.preference(key)[..3];
            let sets: Vec<_> = owners.iter().map(|&n| c.stored(n, key)).collect();
            assert!(
                sets.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}: owners of {key} differ: {sets:?}"
            );
            let context = sets[0].map(SiblingSet::causal_context).unwrap_or_default();
            for (_, dot) in acked.iter().filter(|(k, _)| k == key) {
                assert!(
                    context.covers(*dot),
                    "seed {seed}: acked {dot} of {key} lost"
                );
            }
        }
        assert!(!acked.is_empty(), "seed {seed}: some writes succeed");
    }
}

/// A lone coordinator of a 3-node ring, for the replica side and for
/// answers that arrive out of turn.
fn lone(me: usize) -> (Coordinator, Vec<NodeId>) {
    let c = Cluster::new(3, 0);
    let ids: Vec<NodeId> = c.preference(KEY).iter().map(|&n| c.id(n)).collect();
    let coord = Coordinator::new(
        ids[me],
        c.nodes[0].coord.ring().clone(),
        QuorumConfig::default(),
    )
    .expect("a valid config");
    (coord, ids)
}

fn put_of(effects: &[Effect]) -> Vec<(NodeId, PutRequest)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                to,
                msg: Message::Put(p),
            } => Some((*to, p.clone())),
            _ => None,
        })
        .collect()
}

fn ack_of(effects: &[Effect]) -> std::result::Result<(), RemoteError> {
    match effects {
        [Effect::Send {
            msg: Message::PutAck(ack),
            ..
        }] => ack.outcome.clone(),
        other => panic!("expected one PutAck, got {other:?}"),
    }
}

fn one_version(value: &str) -> SiblingSet {
    let mut set = SiblingSet::new();
    set.overwrite(ActorId(7), payload(value), None, 0);
    set
}

#[test]
fn acks_from_nodes_never_asked_or_repeated_do_not_count() {
    let (mut coord, ids) = lone(0);
    let (id, effects) = coord
        .begin_write(KEY.as_bytes().to_vec(), one_version("v"), Millis(0))
        .expect("small");
    assert!(
        matches!(effects[0], Effect::StoreLocal { .. }),
        "local copy first"
    );
    assert_eq!(put_of(&effects).len(), 2);
    let ok = |id| {
        Message::PutAck(PutAck {
            id,
            outcome: Ok(()),
        })
    };
    let stranger = NodeId::from_peer_addr("stranger:1");
    assert!(coord.on_reply(stranger, ok(id), Millis(1)).is_empty());
    assert!(coord
        .on_reply(ids[1], ok(RequestId(999)), Millis(1))
        .is_empty());
    assert!(coord.on_reply(ids[1], ok(id), Millis(1)).is_empty());
    assert!(
        coord.on_reply(ids[1], ok(id), Millis(2)).is_empty(),
        "one vote per node"
    );
    let done = coord.on_local_stored(id, Ok(()), Millis(3));
    assert_eq!(
        done,
        vec![Effect::Reply {
            id,
            result: Ok(Answer::Written)
        }]
    );
    // The third owner's late answer finishes the request silently.
    assert!(coord.on_reply(ids[2], ok(id), Millis(4)).is_empty());
    assert_eq!(coord.in_flight(), 0);
}

#[test]
fn a_failed_put_is_retried_on_a_fallback_with_a_hint_for_the_owner() {
    let c = Cluster::new(5, 0);
    let pref: Vec<NodeId> = c.preference(KEY).iter().map(|&n| c.id(n)).collect();
    let mut coord = Coordinator::new(
        pref[0],
        c.nodes[0].coord.ring().clone(),
        QuorumConfig::default(),
    )
    .expect("a valid config");
    let (id, _) = coord
        .begin_write(KEY.as_bytes().to_vec(), one_version("v"), Millis(0))
        .expect("small");
    let failed = Message::PutAck(PutAck {
        id,
        outcome: Err(RemoteError::Overloaded),
    });
    let retry = put_of(&coord.on_reply(pref[1], failed, Millis(5)));
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].0, pref[3], "the first fallback");
    assert_eq!(
        retry[0].1.hint_for,
        Some(pref[1]),
        "for the owner that failed"
    );
    assert_eq!(retry[0].1.budget_ms, 995, "what is left of the deadline");
}

#[test]
fn a_replica_refuses_a_put_for_the_wrong_partition_or_with_no_budget_left() {
    let (mut coord, ids) = lone(1);
    let mut store = MemStore::default();
    let mut hints = MemStore::default();
    let good = repair_request(
        RequestId(1),
        coord.ring().partition_for_key(KEY.as_bytes()),
        KEY.as_bytes().to_vec(),
        &one_version("v"),
        100,
    );
    let wrong_partition = PutRequest {
        partition: PartitionId(good.partition.0 + 1),
        ..good.clone()
    };
    let ack = ack_of(&coord.on_put(ids[0], wrong_partition, &mut store, &mut hints));
    assert!(matches!(ack, Err(RemoteError::Rejected(_))), "{ack:?}");
    let expired = PutRequest {
        budget_ms: 0,
        ..good.clone()
    };
    let ack = ack_of(&coord.on_put(ids[0], expired, &mut store, &mut hints));
    assert_eq!(ack, Err(RemoteError::DeadlinePassed));
    let garbage = PutRequest {
        siblings: vec![0xFF; 3],
        ..good.clone()
    };
    let ack = ack_of(&coord.on_put(ids[0], garbage, &mut store, &mut hints));
    assert!(matches!(ack, Err(RemoteError::Rejected(_))), "{ack:?}");
    assert!(store.keys.is_empty(), "nothing refused was stored");
    store.failing = true;
    let ack = ack_of(&coord.on_put(ids[0], good.clone(), &mut store, &mut hints));
    assert!(matches!(ack, Err(RemoteError::Storage(_))), "{ack:?}");
    store.failing = false;
    assert_eq!(
        ack_of(&coord.on_put(ids[0], good, &mut store, &mut hints)),
        Ok(())
    );
    assert_eq!(values(&store.keys[KEY.as_bytes()]), ["v"]);
}

#[test]
fn a_hint_meant_for_this_node_is_stored_as_its_own_replica() {
    let (mut coord, ids) = lone(1);
    let mut store = MemStore::default();
    let mut hints = MemStore::default();
    let partition = coord.ring().partition_for_key(KEY.as_bytes());
    let mut put = repair_request(
        RequestId(1),
        partition,
        KEY.as_bytes().to_vec(),
        &one_version("v"),
        100,
    );
    put.hint_for = Some(ids[1]);
    assert_eq!(
        ack_of(&coord.on_put(ids[0], put.clone(), &mut store, &mut hints)),
        Ok(())
    );
    assert!(hints.hints.is_empty());
    assert!(store.keys.contains_key(KEY.as_bytes()));
    put.hint_for = Some(ids[2]);
    assert_eq!(
        ack_of(&coord.on_put(ids[0], put, &mut store, &mut hints)),
        Ok(())
    );
    assert!(hints.hints.contains_key(&(ids[2], KEY.as_bytes().to_vec())));
}

#[test]
fn a_read_answers_after_r_and_repairs_only_after_every_owner_answered() {
    let (mut coord, ids) = lone(0);
    let (id, effects) = coord.begin_read(KEY.as_bytes().to_vec(), Millis(0));
    assert!(matches!(effects[0], Effect::ReadLocal { .. }));
    assert_eq!(effects.len(), 3);
    let fresh = one_version("fresh");
    let reply = |set: Option<&SiblingSet>| {
        Message::GetReply(GetReply {
            id,
            outcome: Ok(set.map(encode)),
        })
    };
    assert!(coord.on_local_read(id, Ok(Some(fresh.clone()))).is_empty());
    let answered = coord.on_reply(ids[1], reply(Some(&fresh)), Millis(2));
    assert_eq!(
        answered,
        vec![Effect::Reply {
            id,
            result: Ok(Answer::Read(fresh.clone()))
        }]
    );
    let repair = coord.on_reply(ids[2], reply(None), Millis(3));
    match &repair[..] {
        [Effect::Repair { to, set, need, .. }] => {
            assert_eq!(*to, ids[2]);
            assert_eq!(set, &fresh);
            assert_eq!(need.missing, 1);
        }
        other => panic!("expected one repair, got {other:?}"),
    }
    assert_eq!(coord.in_flight(), 0);
}

/// Runs a cluster scenario written as a script, one command per line;
/// `command -> expected` checks what the command printed. Nodes are named
/// by their role for the key `k`: owners `o1 o2 o3` (in preference order),
/// then fallbacks `f1 f2`. Every command runs until the cluster is quiet.
///
/// ```text
/// start N                        a cluster of N nodes (Q=64, N=3, R=W=2)
/// set KEY VALUE via NODE         a client SET; prints OK or the error
/// get KEY via NODE               a client GET; prints the values or (nil)
/// resolve KEY VALUE via NODE     RESOLVE with the context of the last get
/// kill NODE..                    stop nodes; membership marks them down
/// crash NODE..                   stop nodes; membership does not notice
/// revive NODE..                  restart nodes with their data
/// partition NODE.. | NODE..      cut the network; each side sees the other down
/// heal                           join the network again
/// handoff                        fallbacks hand their hints to the owners
/// stored KEY on NODE             the values in a node's own replica
/// hints on NODE                  how many hints a node holds
/// ```
fn run_script(seed: u64, script: &str) {
    let mut cluster: Option<Cluster> = None;
    let mut last_read = SiblingSet::new();
    for (number, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, expected) = match line.split_once("->") {
            Some((command, expected)) => (command.trim(), Some(expected.trim())),
            None => (line, None),
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        if let ["start", size] = words[..] {
            let size = size.parse().expect("start takes a node count");
            cluster = Some(Cluster::new(size, seed));
            continue;
        }
        let c = cluster.as_mut().expect("the script starts with `start N`");
        let pref = c.preference("k");
        let node = |name: &str| -> usize {
            let rank = ["o1", "o2", "o3", "f1", "f2"]
                .iter()
                .position(|&r| r == name)
                .unwrap_or_else(|| panic!("line {}: unknown node {name}", number + 1));
            pref[rank]
        };
        let show = |result: std::result::Result<Answer, QuorumError>| match result {
            Ok(_) => "OK".to_string(),
            Err(e) => Error::from(e).to_resp(),
        };
        let output = match words[..] {
            ["set", key, value, "via", via] => show(c.set(node(via), key, value)),
            ["get", key, "via", via] => match c.get(node(via), key) {
                Ok(set) => {
                    last_read = set.clone();
                    let values = values(&set);
                    if values.is_empty() {
                        "(nil)".to_string()
                    } else {
                        values.join(" ")
                    }
                }
                Err(e) => Error::from(e).to_resp(),
            },
            ["resolve", key, value, "via", via] => {
                let context = last_read.causal_context();
                show(c.resolve(node(via), key, &context, value))
            }
            ["kill", ref names @ ..] => {
                names.iter().for_each(|n| c.kill(node(n), true));
                String::new()
            }
            ["crash", ref names @ ..] => {
                names.iter().for_each(|n| c.kill(node(n), false));
                String::new()
            }
            ["revive", ref names @ ..] => {
                names.iter().for_each(|n| c.revive(node(n)));
                String::new()
            }
            ["partition", ref names @ ..] => {
                let sides: Vec<Vec<usize>> = names
                    .split(|&w| w == "|")
                    .map(|side| side.iter().map(|n| node(n)).collect())
                    .collect();
                let sides: Vec<&[usize]> = sides.iter().map(Vec::as_slice).collect();
                c.partition(&sides);
                String::new()
            }
            ["heal"] => {
                c.heal();
                String::new()
            }
            ["handoff"] => {
                c.hand_off_hints();
                String::new()
            }
            ["stored", key, "on", at] => c
                .stored(node(at), key)
                .map(|set| values(set).join(" "))
                .unwrap_or_else(|| "(none)".to_string()),
            ["hints", "on", at] => c.nodes[node(at)].hints.hints.len().to_string(),
            _ => panic!("line {}: unknown command {command:?}", number + 1),
        };
        c.settle();
        if let Some(expected) = expected {
            assert_eq!(output, expected, "line {}: {line}", number + 1);
        }
    }
}

#[test]
fn script_seed_example_d1_to_d5() {
    run_script(
        20,
        "
        start 5
        set k D1 via o1 -> OK
        set k D2 via o1 -> OK
        partition o1 o2 f1 | o3 f2
        # Each side has a write quorum: o2 with o1 (f1 holds o3's copy),
        # o3 with f2 holding a copy for o1.
        set k D3 via o2 -> OK
        set k D4 via o3 -> OK
        hints on f1 -> 1
        hints on f2 -> 1
        heal
        handoff
        get k via o1 -> D3 D4
        resolve k D5 via o1 -> OK
        get k via f2 -> D5
        stored k on o1 -> D5
        stored k on o2 -> D5
        stored k on o3 -> D5
        ",
    );
}

#[test]
fn script_two_replicas_down_then_back() {
    run_script(
        21,
        "
        start 3
        set k v1 via o1 -> OK
        kill o2 o3
        set k v2 via o1 -> UNAVAILABLE needed W=2 acks, got 0
        get k via o1 -> UNAVAILABLE needed R=2 acks, got 0
        stored k on o1 -> v1
        revive o3
        set k v3 via o1 -> OK
        get k via o3 -> v3
        ",
    );
}

#[test]
fn script_an_unnoticed_crash_costs_latency_not_the_write() {
    run_script(
        22,
        "
        start 5
        crash o3
        set k v via o1 -> OK
        stored k on o3 -> (none)
        hints on f1 -> 1
        revive o3
        handoff
        stored k on o3 -> v
        ",
    );
}

#[test]
fn the_next_wakeup_is_the_earliest_fallback_timer_or_deadline() {
    let (mut coord, _) = lone(0);
    assert_eq!(coord.next_wakeup(), None, "idle");
    let (id, _) = coord
        .begin_write(KEY.as_bytes().to_vec(), one_version("v"), Millis(100))
        .expect("small");
    assert_eq!(coord.next_wakeup(), Some(Millis(400)), "fallback_after_ms");
    // Past the fallback timer with no spare to ask: only the deadline is left.
    coord.on_tick(Millis(400));
    assert_eq!(coord.next_wakeup(), Some(Millis(1100)));
    let done = coord.on_tick(Millis(1100));
    assert!(matches!(
        done[..],
        [Effect::Reply {
            id: done_id,
            result: Err(QuorumError::Timeout { .. })
        }] if done_id == id
    ));
    assert_eq!(coord.next_wakeup(), None);
}

#[test]
fn membership_views_drive_routing() {
    use crate::cluster::membership::{ClusterSettings, GossipConfig, Incarnation, LocalNode};
    let (mut coord, ids) = lone(0);
    let local = LocalNode {
        id: ids[0],
        addr: "127.0.0.1:7000".into(),
        peer_addr: "127.0.0.1:17000".into(),
        incarnation: Incarnation(1),
    };
    let membership = Membership::new(
        local,
        ClusterSettings::default(),
        GossipConfig::default(),
        1,
        Millis(0),
    )
    .expect("valid settings");
    // Alone in its own view, the node owns every key and capped quorums
    // let it write alone.
    coord.sync_with(&membership).expect("a ring of one");
    assert_eq!(coord.ring().members(), &[ids[0]]);
    let (_, effects) = coord
        .begin_write(KEY.as_bytes().to_vec(), one_version("v"), Millis(0))
        .expect("small");
    assert!(matches!(effects[..], [Effect::StoreLocal { .. }]));
}

#[test]
fn a_write_already_stored_here_counts_the_local_copy_and_asks_only_the_others() {
    let (mut coord, ids) = lone(0);
    let (id, effects) = coord
        .begin_write_stored(KEY.as_bytes().to_vec(), one_version("v"), Millis(0))
        .expect("small");
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::StoreLocal { .. })),
        "no second local store: {effects:?}"
    );
    let puts = put_of(&effects);
    assert_eq!(puts.len(), 2, "the other two owners");
    assert!(puts.iter().all(|(to, _)| *to != ids[0]));
    // W=2: the local copy plus one owner.
    let ok = Message::PutAck(PutAck {
        id,
        outcome: Ok(()),
    });
    assert_eq!(
        coord.on_reply(ids[2], ok, Millis(1)),
        vec![Effect::Reply {
            id,
            result: Ok(Answer::Written)
        }]
    );
}

#[test]
fn with_w_1_a_write_already_stored_here_is_answered_at_once() {
    let (coord, ids) = lone(0);
    let config = QuorumConfig {
        write_quorum: 1,
        ..QuorumConfig::default()
    };
    let mut coord = Coordinator::new(ids[0], coord.ring().clone(), config).expect("a valid config");
    let (id, effects) = coord
        .begin_write_stored(KEY.as_bytes().to_vec(), one_version("v"), Millis(0))
        .expect("small");
    assert!(effects.contains(&Effect::Reply {
        id,
        result: Ok(Answer::Written)
    }));
    assert_eq!(put_of(&effects).len(), 2, "the others still get the set");
}

#[test]
fn a_read_with_owners_down_asks_fallbacks_in_their_place_and_repairs_only_owners() {
    let c = Cluster::new(5, 0);
    let pref: Vec<NodeId> = c.preference(KEY).iter().map(|&n| c.id(n)).collect();
    let mut coord = Coordinator::new(
        pref[0],
        c.nodes[0].coord.ring().clone(),
        QuorumConfig::default(),
    )
    .expect("a valid config");
    coord.set_status(pref[1], Status::Down);
    coord.set_status(pref[2], Status::Down);
    let (id, effects) = coord.begin_read(KEY.as_bytes().to_vec(), Millis(0));
    assert!(
        matches!(effects[0], Effect::ReadLocal { .. }),
        "{effects:?}"
    );
    let asked: Vec<NodeId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                to,
                msg: Message::Get(_),
            } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [pref[3], pref[4]], "both fallbacks, in order");
    // The fallback has an older value (from a hint), the owner a newer one.
    let older = one_version("old");
    let mut newer = older.clone();
    newer.overwrite(ActorId(8), payload("new"), None, 1);
    assert!(coord.on_local_read(id, Ok(Some(newer.clone()))).is_empty());
    let mut encoded = Vec::new();
    older.encode(&mut encoded);
    let reply = Message::GetReply(GetReply {
        id,
        outcome: Ok(Some(encoded)),
    });
    let done = coord.on_reply(pref[3], reply, Millis(1));
    assert_eq!(
        done,
        vec![Effect::Reply {
            id,
            result: Ok(Answer::Read(newer))
        }]
    );
    // The last fallback answers: the read ends, and the stale fallback gets
    // no repair (it keeps hints, not replicas).
    let last = Message::GetReply(GetReply {
        id,
        outcome: Ok(None),
    });
    let after = coord.on_reply(pref[4], last, Millis(2));
    assert!(
        !after.iter().any(|e| matches!(e, Effect::Repair { .. })),
        "{after:?}"
    );
    assert_eq!(coord.in_flight(), 0);
}

#[test]
fn a_read_with_two_silent_owners_is_answered_through_a_fallback_after_the_hedge_delay() {
    let mut c = Cluster::new(5, 3);
    let pref = c.preference(KEY);
    assert_eq!(c.set(pref[0], KEY, "v"), Ok(Answer::Written));
    c.settle();
    // Two owners die and nobody has noticed yet: their Gets hang.
    c.kill(pref[1], false);
    c.kill(pref[2], false);
    let started = c.now;
    let read = c.get(pref[0], KEY).expect("R=2 through a fallback");
    let took = c.now.since(started);
    assert!(
        took >= QuorumConfig::default().fallback_after_ms && took < 1000,
        "answered after {took} ms"
    );
    // The fallback holds no hint for the key: the owner's copy is the answer.
    assert_eq!(values(&read), ["v"]);
}
