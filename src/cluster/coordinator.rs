//! The quorum coordinator: where a client's read or write of a key goes,
//! when it has succeeded, and what each replica does with it. A pure state
//! machine, like the rest of `cluster`: calls take a message or the current
//! time and return [`Effect`]s (messages to send, local storage to touch,
//! answers for the client); nothing here owns a socket, a thread or a clock.
//!
//! # One request, start to finish
//!
//! 1. **Route** ([`Coordinator::route`]). A node coordinates a key only if it
//!    is one of the key's `N` owners. Otherwise the request is forwarded to
//!    the first healthy owner, once: a forwarded request is coordinated
//!    where it lands even if that node's ring disagrees, so a request never
//!    bounces. Forwarding keeps the set of clock actors per key down to the
//!    owners (plus fallbacks during failures), which keeps clocks small. The
//!    forward itself (a `Forward` message carrying the client's command) is
//!    the server's: it waits for the `ForwardReply` under the client's
//!    deadline and answers `TIMEOUT` if the owner does not answer.
//! 2. **Write** ([`Coordinator::begin_write`]). The caller builds the new
//!    sibling set (from its replica, or from a quorum read for `RESOLVE` and
//!    read-modify-write commands) and hands it over. The coordinator stores
//!    it locally ([`Effect::StoreLocal`]) and sends a `Put` to every other
//!    owner. An owner that membership says is `Down`, or whose `Put` failed
//!    or went unanswered for [`QuorumConfig::fallback_after_ms`], is replaced
//!    by the next healthy fallback of the preference list, with `hint_for`
//!    naming the owner (sloppy quorum). The client gets `Ok` after `W`
//!    acknowledgements, [`QuorumError::Unavailable`] as soon as `W` can no
//!    longer be reached, [`QuorumError::Timeout`] at the deadline.
//! 3. **Read** ([`Coordinator::begin_read`]). `Get` to every healthy owner
//!    (a fallback in place of a down one), the coordinator's own replica as
//!    [`Effect::ReadLocal`]. An owner whose `Get` failed, or that has not
//!    answered within [`QuorumConfig::fallback_after_ms`], gets a fallback
//!    asked as well, as writes do. After `R`
//!    answers the client gets their [`SiblingSet::merge`]; the coordinator
//!    keeps collecting until every owner answered or the deadline, then
//!    plans read repair ([`super::read_repair::plan_read_repair`]) over all
//!    answers and emits one [`Effect::Repair`] per stale replica.
//! 4. **Replica side** ([`Coordinator::on_put`], [`Coordinator::on_get`]).
//!    A `Put` merges the incoming set into the local one through the narrow
//!    [`LocalStore`] trait, or, with `hint_for`, hands it to the
//!    [`HintStore`]; the acknowledgement says whether that worked.
//!
//! `N`, `R` and `W` are capped at the ring's size while the cluster has
//! fewer than `N` members. The ring counts `Down` members (only `Left` ones
//! leave it), so killing nodes never silently shrinks a quorum: a 3-node
//! cluster with two nodes down answers `UNAVAILABLE`, as it should.
//!
//! # Where this departs from Dynamo
//!
//! - **Forwarding.** Dynamo lets any of the first `N` healthy nodes of the
//!   preference list coordinate, and client libraries route. Clients here
//!   are plain Redis clients that connect anywhere, so a non-owner forwards
//!   (one hop). With every owner down a node coordinates itself, through
//!   fallbacks only: it never stores a key it does not own in its keyspace.
//! - **Whole sets.** As in Dynamo the coordinator stores locally first, but
//!   what it stores and sends is the key's whole sibling set, not one new
//!   version (see `version`), so a `Put`, a hinted `Put` and a read repair
//!   are the same message and the same idempotent merge.
//! - **Hints are effects, not a second keyspace.** A fallback does not merge
//!   hinted data into its own keyspace (it does not own the partition, and
//!   its Merkle trees and anti-entropy cover owned partitions only). It hands
//!   `(owner, key, set)` to a [`HintStore`], which must make the hint durable
//!   before the `Put` is acknowledged and replays it when the owner is back
//!   (the hints module). Reads are sloppy too: a down owner's place in a
//!   read goes to the next healthy fallback, which answers from the hints
//!   it holds for the key (nothing, if it holds none), so a read needs `R`
//!   healthy nodes among the preference list, not `R` healthy owners. Only
//!   owners get read repair. A write acknowledged partly by fallbacks may
//!   still be missed by an `R` read that asks other fallbacks, until the
//!   hints are handed off or read repair or anti-entropy catch up; sloppy
//!   quorums never promised read-your-writes (Dynamo §4.6).
//! - **Hedged fallbacks.** Dynamo replaces a replica that membership shows
//!   as failed. Here a replica that has not answered within
//!   `fallback_after_ms` also gets a fallback (the original request stays
//!   open; a late acknowledgement still counts), so one slow node costs a
//!   little latency, not the whole timeout.
//! - **Fail fast.** A write that cannot reach `W` live replicas up front is
//!   refused before anything is stored. Once started, a write that fails
//!   its quorum may still be stored on some replicas, as in Dynamo.
//! - **Read repair after the fact.** Repair waits for every owner's answer
//!   (or the deadline) so that one merge covers all of them; it never delays
//!   the client, who is answered after `R`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::membership::{Membership, Millis, Status};
use super::messages::{
    GetReply, GetRequest, Message, PutAck, PutRequest, RemoteError, RequestId,
    DEFAULT_MAX_FRAME_LEN, FRAME_OVERHEAD,
};
use super::read_repair::{plan_read_repair, RepairNeed};
use super::ring::{NodeId, PartitionId, Ring};
use crate::error::{Error, Result};
use crate::version::SiblingSet;

#[cfg(test)]
mod tests;

/// Quorum settings and time limits of a coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    /// Answers needed for a read (`R`). Default 2; capped at the ring's `N`.
    pub read_quorum: usize,
    /// Acknowledgements needed for a write (`W`). Default 2; capped at the
    /// ring's `N`.
    pub write_quorum: usize,
    /// A request's deadline after it starts, in ms. Default 1000.
    pub timeout_ms: u64,
    /// After how long without an answer a write replica also gets a
    /// fallback, in ms. Default 300 (under the timeout, so the fallback has
    /// time to answer).
    pub fallback_after_ms: u64,
    /// The largest encoded sibling set a write may replicate, in bytes.
    /// Default: the internode frame limit minus its overhead
    /// ([`DEFAULT_MAX_FRAME_LEN`] - [`FRAME_OVERHEAD`]), so that every `Put`
    /// fits in a frame; a larger write is refused before it is stored.
    pub max_set_bytes: usize,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            read_quorum: 2,
            write_quorum: 2,
            timeout_ms: 1000,
            fallback_after_ms: 300,
            max_set_bytes: DEFAULT_MAX_FRAME_LEN - FRAME_OVERHEAD,
        }
    }
}

impl QuorumConfig {
    /// Rejects quorums of zero and a zero timeout.
    pub fn validate(&self) -> Result<()> {
        if self.read_quorum == 0 || self.write_quorum == 0 {
            return Err(Error::invalid("R and W must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(Error::invalid("the request timeout must be at least 1 ms"));
        }
        Ok(())
    }
}

/// Where a client request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client connected to this node.
    Client,
    /// Another node forwarded it: coordinate here, never forward again.
    Forwarded,
}

/// Where a client request for a key should be coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Here: call [`Coordinator::begin_read`] or [`Coordinator::begin_write`].
    Coordinate,
    /// Forward the client's command to this owner (one hop).
    Forward(NodeId),
}

/// What a successful client request produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `W` replicas stored the write.
    Written,
    /// The merge of the first `R` answers (empty if none had the key).
    Read(SiblingSet),
}

/// Why a client request failed its quorum. Both are retryable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumError {
    /// Too few replicas are reachable for the quorum; answered as soon as
    /// that is certain.
    Unavailable {
        /// `"R"` or `"W"`.
        what: &'static str,
        needed: usize,
        got: usize,
    },
    /// The deadline passed before the quorum was reached.
    Timeout {
        /// `"R"` or `"W"`.
        what: &'static str,
        needed: usize,
        got: usize,
        /// The timeout that passed, in ms.
        after_ms: u64,
    },
}

impl From<QuorumError> for Error {
    fn from(e: QuorumError) -> Error {
        match e {
            QuorumError::Unavailable { what, needed, got } => {
                Error::Unavailable { what, needed, got }
            }
            QuorumError::Timeout {
                what,
                needed,
                got,
                after_ms,
            } => Error::Timeout(format!(
                "needed {what}={needed} acks, got {got} within {after_ms} ms"
            )),
        }
    }
}

/// What the caller must do after an input, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `msg` to node `to` (a `Put`, `Get`, or a replica's answer).
    Send { to: NodeId, msg: Message },
    /// Merge `set` into this node's replica of `key`, then report the result
    /// with [`Coordinator::on_local_stored`]. Always before the `Put`s of the
    /// same write: the coordinator stores first.
    StoreLocal {
        id: RequestId,
        key: Vec<u8>,
        set: SiblingSet,
    },
    /// Read this node's replica of `key`, then report it with
    /// [`Coordinator::on_local_read`].
    ReadLocal { id: RequestId, key: Vec<u8> },
    /// The client request `id` is finished: answer the client.
    Reply {
        id: RequestId,
        result: std::result::Result<Answer, QuorumError>,
    },
    /// Read repair: replica `to` is stale (`need` says how); send it `set`,
    /// the merge of every answer, as a `Put` with this `id` and no hint (or
    /// merge it locally when `to` is this node). Fire and forget: the
    /// acknowledgement is ignored, and a lost repair is retried by the next
    /// read or by anti-entropy.
    Repair {
        id: RequestId,
        to: NodeId,
        partition: PartitionId,
        key: Vec<u8>,
        set: SiblingSet,
        need: RepairNeed,
    },
}

/// A node's replica storage as the coordinator sees it: read a key's
/// sibling set, merge one into it. The server implements it over its
/// keyspace; [`MemStore`] is the in-memory one for tests and simulations.
pub trait LocalStore {
    /// The key's stored set, `None` if this replica never saw the key.
    fn get(&self, key: &[u8]) -> Result<Option<SiblingSet>>;
    /// Merge `set` into the key's stored set ([`SiblingSet::merge`]), durably
    /// by the store's sync policy before returning.
    fn merge(&mut self, key: &[u8], set: &SiblingSet) -> Result<()>;
}

/// Where a fallback keeps data meant for another node (sloppy quorum). The
/// hints module implements it durably and replays hints to `owner` when
/// gossip shows it back.
pub trait HintStore {
    /// Keep `set` for `owner`, durably before returning: the `Put` is
    /// acknowledged (and counts towards `W`) only after this.
    fn store_hint(&mut self, owner: NodeId, key: &[u8], set: &SiblingSet) -> Result<()>;
}

/// An in-memory [`LocalStore`] and [`HintStore`], for tests and simulations
/// only: nothing survives the process.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// Every key's set.
    pub keys: BTreeMap<Vec<u8>, SiblingSet>,
    /// Hints held for other nodes, by (owner, key), merged like replicas.
    pub hints: BTreeMap<(NodeId, Vec<u8>), SiblingSet>,
    /// While set, every operation fails (a broken disk).
    pub failing: bool,
}

impl MemStore {
    fn check(&self) -> Result<()> {
        if self.failing {
            return Err(Error::Io(std::io::Error::other(
                "simulated storage failure",
            )));
        }
        Ok(())
    }
}

impl LocalStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<SiblingSet>> {
        self.check()?;
        Ok(self.keys.get(key).cloned())
    }

    fn merge(&mut self, key: &[u8], set: &SiblingSet) -> Result<()> {
        self.check()?;
        self.keys.entry(key.to_vec()).or_default().merge(set);
        Ok(())
    }
}

impl HintStore for MemStore {
    fn store_hint(&mut self, owner: NodeId, key: &[u8], set: &SiblingSet) -> Result<()> {
        self.check()?;
        self.hints
            .entry((owner, key.to_vec()))
            .or_default()
            .merge(set);
        Ok(())
    }
}

/// Counters for `INFO` and `CLUSTER INFO`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Client reads coordinated here.
    pub reads: u64,
    /// Client writes coordinated here.
    pub writes: u64,
    /// Client requests forwarded to an owner.
    pub forwarded: u64,
    /// Requests answered `UNAVAILABLE`.
    pub unavailable: u64,
    /// Requests answered `TIMEOUT`.
    pub timeouts: u64,
    /// `Put`s sent to a fallback with a hint.
    pub hinted_puts: u64,
    /// Read-repair `Put`s emitted.
    pub read_repairs: u64,
}

/// One node's coordinator and replica logic (see the module doc).
#[derive(Debug)]
pub struct Coordinator {
    me: NodeId,
    config: QuorumConfig,
    ring: Ring,
    /// Members membership reports `Down` or `Left`: routed around.
    unhealthy: BTreeSet<NodeId>,
    next_id: u64,
    ops: BTreeMap<RequestId, Op>,
    stats: CoordinatorStats,
}

#[derive(Debug)]
enum Op {
    Write(WriteOp),
    Read(ReadOp),
}

#[derive(Debug)]
struct WriteOp {
    key: Vec<u8>,
    partition: PartitionId,
    /// The set, encoded once for every `Put`.
    encoded: Vec<u8>,
    needed: usize,
    deadline: Millis,
    /// One per replica asked: owners first, then fallbacks as they join.
    attempts: Vec<Attempt>,
    /// Healthy fallbacks not asked yet, in preference-list order.
    spares: VecDeque<NodeId>,
    replied: bool,
}

#[derive(Debug)]
struct Attempt {
    node: NodeId,
    /// The owner this copy is for, if `node` is a fallback.
    hint_for: Option<NodeId>,
    sent_at: Millis,
    state: AttemptState,
    /// Whether a fallback has already been asked in its place.
    replaced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttemptState {
    Pending,
    Acked,
    Failed,
}

#[derive(Debug)]
struct ReadOp {
    key: Vec<u8>,
    partition: PartitionId,
    /// The key's owners: only they get read repair (a fallback keeps
    /// hints, not replicas).
    owners: Vec<NodeId>,
    needed: usize,
    deadline: Millis,
    /// When replicas still silent get a fallback asked as well (once).
    hedge_at: Option<Millis>,
    pending: BTreeSet<NodeId>,
    /// Healthy fallbacks not asked yet, in preference-list order.
    spares: VecDeque<NodeId>,
    /// Successful answers in arrival order (`None`: the replica lacks the key).
    answers: Vec<(NodeId, Option<SiblingSet>)>,
    replied: bool,
}

impl Coordinator {
    /// The coordinator of node `me` over `ring`, every other member healthy
    /// until [`set_status`](Self::set_status) says otherwise.
    pub fn new(me: NodeId, ring: Ring, config: QuorumConfig) -> Result<Coordinator> {
        config.validate()?;
        Ok(Coordinator {
            me,
            config,
            ring,
            unhealthy: BTreeSet::new(),
            next_id: 0,
            ops: BTreeMap::new(),
            stats: CoordinatorStats::default(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The ring requests are routed by.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The counters so far.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// Requests still in flight (answered or not: reads stay until their
    /// repair is planned, writes until every replica answered).
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// When [`on_tick`](Self::on_tick) next has work: the earliest request
    /// deadline or fallback timer in flight, `None` when idle. The server
    /// sleeps until then (or the next message) instead of polling.
    pub fn next_wakeup(&self) -> Option<Millis> {
        self.ops
            .values()
            .map(|op| match op {
                Op::Write(w) => w
                    .attempts
                    .iter()
                    .filter(|a| a.state == AttemptState::Pending && !a.replaced)
                    .map(|a| a.sent_at.plus(self.config.fallback_after_ms))
                    .fold(w.deadline, Millis::min),
                Op::Read(r) => match r.hedge_at {
                    Some(at) if !r.replied && !r.spares.is_empty() => at.min(r.deadline),
                    _ => r.deadline,
                },
            })
            .min()
    }

    /// Route by a new ring (membership changed). Requests in flight keep
    /// the replicas they chose.
    pub fn set_ring(&mut self, ring: Ring) {
        self.ring = ring;
    }

    /// Record membership's opinion of a node: `Down` and `Left` are routed
    /// around, `Up` and `Suspect` are asked.
    pub fn set_status(&mut self, node: NodeId, status: Status) {
        match status {
            Status::Up | Status::Suspect => self.unhealthy.remove(&node),
            Status::Down | Status::Left => self.unhealthy.insert(node),
        };
    }

    /// Take ring and statuses from a node's membership view at once.
    pub fn sync_with(&mut self, membership: &Membership) -> Result<()> {
        self.ring = membership.ring()?;
        self.unhealthy = membership
            .members()
            .filter(|m| matches!(m.status, Status::Down | Status::Left))
            .map(|m| m.id)
            .collect();
        Ok(())
    }

    fn healthy(&self, node: NodeId) -> bool {
        node == self.me || !self.unhealthy.contains(&node)
    }

    fn fresh_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn quorum(&self, wanted: usize) -> usize {
        wanted.min(self.ring.replication())
    }

    /// Where a client request for `key` is coordinated (see the module doc).
    /// Counts a forward.
    pub fn route(&mut self, key: &[u8], origin: Origin) -> Route {
        if origin == Origin::Forwarded {
            return Route::Coordinate;
        }
        let owners = self.ring.owners(self.ring.partition_for_key(key));
        if owners.contains(&self.me) {
            return Route::Coordinate;
        }
        match owners.iter().copied().find(|&n| self.healthy(n)) {
            Some(owner) => {
                self.stats.forwarded += 1;
                Route::Forward(owner)
            }
            // Every owner is down: coordinate here through fallbacks rather
            // than forward to a node that will not answer.
            None => Route::Coordinate,
        }
    }

    /// The healthy owners of `key` other than this node, in preference
    /// order: where a forward goes, the next one if a forward could not be
    /// sent to the one before.
    pub fn forward_targets(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring
            .owners(self.ring.partition_for_key(key))
            .iter()
            .copied()
            .filter(|&n| n != self.me && self.healthy(n))
            .collect()
    }

    /// Start a write of `set` (the key's new sibling set, built by the
    /// caller) for a client. Returns the request's id, which the final
    /// [`Effect::Reply`] repeats, or an `InvalidInput` error, with nothing
    /// stored, if the set is larger than [`QuorumConfig::max_set_bytes`].
    pub fn begin_write(
        &mut self,
        key: Vec<u8>,
        set: SiblingSet,
        now: Millis,
    ) -> Result<(RequestId, Vec<Effect>)> {
        self.start_write(key, set, false, now)
    }

    /// [`begin_write`](Self::begin_write) of a set this node has already
    /// stored durably (the coordinator ran the client's command on its own
    /// replica): no [`Effect::StoreLocal`]; the local copy counts as one
    /// acknowledgement from the start.
    pub fn begin_write_stored(
        &mut self,
        key: Vec<u8>,
        set: SiblingSet,
        now: Millis,
    ) -> Result<(RequestId, Vec<Effect>)> {
        self.start_write(key, set, true, now)
    }

    fn start_write(
        &mut self,
        key: Vec<u8>,
        set: SiblingSet,
        stored_here: bool,
        now: Millis,
    ) -> Result<(RequestId, Vec<Effect>)> {
        let encoded = encode(&set);
        if encoded.len() + key.len() > self.config.max_set_bytes {
            return Err(Error::invalid(format!(
                "value too large to replicate: {} bytes with its versions, limit {}",
                encoded.len() + key.len(),
                self.config.max_set_bytes
            )));
        }
        let id = self.fresh_id();
        self.stats.writes += 1;
        let partition = self.ring.partition_for_key(&key);
        let needed = self.quorum(self.config.write_quorum);
        let mut spares: VecDeque<NodeId> = self
            .ring
            .fallbacks(partition)
            .iter()
            .copied()
            .filter(|&n| n != self.me && self.healthy(n))
            .collect();
        // Each owner, or the fallback standing in for it: (node, hint_for).
        let mut targets: Vec<(NodeId, Option<NodeId>)> = Vec::new();
        for &owner in self.ring.owners(partition) {
            if self.healthy(owner) {
                targets.push((owner, None));
            } else if let Some(fallback) = spares.pop_front() {
                targets.push((fallback, Some(owner)));
            }
        }
        if targets.len() + spares.len() < needed {
            // Refuse before storing anything: nothing partial to explain.
            self.stats.unavailable += 1;
            let result = Err(QuorumError::Unavailable {
                what: "W",
                needed,
                got: 0,
            });
            return Ok((id, vec![Effect::Reply { id, result }]));
        }
        let mut op = WriteOp {
            encoded,
            key,
            partition,
            needed,
            deadline: now.plus(self.config.timeout_ms),
            attempts: Vec::with_capacity(targets.len()),
            spares,
            replied: false,
        };
        let mut effects = Vec::with_capacity(targets.len());
        // The local copy first (StoreLocal precedes every Put).
        targets.sort_by_key(|&(node, _)| node != self.me);
        for (node, hint_for) in targets {
            if node == self.me {
                op.attempts.push(Attempt {
                    node,
                    hint_for: None,
                    sent_at: now,
                    state: if stored_here {
                        AttemptState::Acked
                    } else {
                        AttemptState::Pending
                    },
                    replaced: false,
                });
                if !stored_here {
                    effects.push(Effect::StoreLocal {
                        id,
                        key: op.key.clone(),
                        set: set.clone(),
                    });
                }
            } else {
                effects.push(self.ask(&mut op, id, node, hint_for, now));
            }
        }
        // With the local copy already counted, W may be reached at once.
        self.settle_write(id, op, &mut effects);
        Ok((id, effects))
    }

    /// Record and return a `Put` of `op` to `node`.
    fn ask(
        &mut self,
        op: &mut WriteOp,
        id: RequestId,
        node: NodeId,
        hint_for: Option<NodeId>,
        now: Millis,
    ) -> Effect {
        if hint_for.is_some() {
            self.stats.hinted_puts += 1;
        }
        op.attempts.push(Attempt {
            node,
            hint_for,
            sent_at: now,
            state: AttemptState::Pending,
            replaced: false,
        });
        Effect::Send {
            to: node,
            msg: Message::Put(PutRequest {
                id,
                partition: op.partition,
                key: op.key.clone(),
                siblings: op.encoded.clone(),
                budget_ms: budget(op.deadline, now),
                hint_for,
            }),
        }
    }

    /// Start a quorum read of `key` for a client. Returns the request's id,
    /// which the final [`Effect::Reply`] repeats.
    pub fn begin_read(&mut self, key: Vec<u8>, now: Millis) -> (RequestId, Vec<Effect>) {
        let id = self.fresh_id();
        self.stats.reads += 1;
        let partition = self.ring.partition_for_key(&key);
        let needed = self.quorum(self.config.read_quorum);
        // Each healthy owner, or the next healthy fallback standing in for
        // a down one (sloppy quorum: a fallback answers from the hints it
        // holds for the key).
        let owners: Vec<NodeId> = self.ring.owners(partition).to_vec();
        let mut spares: VecDeque<NodeId> = self
            .ring
            .fallbacks(partition)
            .iter()
            .copied()
            .filter(|&n| n != self.me && self.healthy(n))
            .collect();
        let mut asked: Vec<NodeId> = Vec::with_capacity(owners.len());
        for &owner in &owners {
            if self.healthy(owner) {
                asked.push(owner);
            } else if let Some(fallback) = spares.pop_front() {
                asked.push(fallback);
            }
        }
        if asked.len() + spares.len() < needed {
            self.stats.unavailable += 1;
            let result = Err(QuorumError::Unavailable {
                what: "R",
                needed,
                got: 0,
            });
            return (id, vec![Effect::Reply { id, result }]);
        }
        asked.sort_by_key(|&node| node != self.me);
        let deadline = now.plus(self.config.timeout_ms);
        let effects = asked
            .iter()
            .map(|&node| {
                if node == self.me {
                    Effect::ReadLocal {
                        id,
                        key: key.clone(),
                    }
                } else {
                    Effect::Send {
                        to: node,
                        msg: Message::Get(GetRequest {
                            id,
                            partition,
                            key: key.clone(),
                            budget_ms: budget(deadline, now),
                        }),
                    }
                }
            })
            .collect();
        let op = ReadOp {
            key,
            partition,
            owners,
            needed,
            deadline,
            hedge_at: Some(now.plus(self.config.fallback_after_ms)),
            pending: asked.into_iter().collect(),
            spares,
            answers: Vec::new(),
            replied: false,
        };
        self.ops.insert(id, Op::Read(op));
        (id, effects)
    }

    /// Record and return a `Get` of `op`'s key from the fallback `node`.
    fn ask_read(&self, op: &mut ReadOp, id: RequestId, node: NodeId, now: Millis) -> Effect {
        op.pending.insert(node);
        Effect::Send {
            to: node,
            msg: Message::Get(GetRequest {
                id,
                partition: op.partition,
                key: op.key.clone(),
                budget_ms: budget(op.deadline, now),
            }),
        }
    }

    /// The outcome of an [`Effect::StoreLocal`].
    pub fn on_local_stored(
        &mut self,
        id: RequestId,
        result: Result<()>,
        now: Millis,
    ) -> Vec<Effect> {
        let outcome = result.map_err(|e| RemoteError::Storage(e.to_string()));
        self.on_put_ack(self.me, PutAck { id, outcome }, now)
    }

    /// The outcome of an [`Effect::ReadLocal`].
    pub fn on_local_read(
        &mut self,
        id: RequestId,
        result: Result<Option<SiblingSet>>,
    ) -> Vec<Effect> {
        let answer = result.map_err(|e| RemoteError::Storage(e.to_string()));
        self.on_answer(self.me, id, answer)
    }

    /// An answer from replica `from` (`PutAck` or `GetReply`; other
    /// messages are not the coordinator's and are ignored). Answers to
    /// finished requests, and answers from a node that was not asked, are
    /// ignored.
    pub fn on_reply(&mut self, from: NodeId, msg: Message, now: Millis) -> Vec<Effect> {
        match msg {
            Message::PutAck(ack) => self.on_put_ack(from, ack, now),
            Message::GetReply(GetReply { id, outcome }) => {
                let answer = outcome.and_then(|bytes| match bytes {
                    None => Ok(None),
                    Some(bytes) => SiblingSet::decode(&bytes).map(Some).map_err(|e| {
                        RemoteError::Rejected(format!("malformed sibling set: {e:?}"))
                    }),
                });
                self.on_answer(from, id, answer)
            }
            _ => Vec::new(),
        }
    }

    fn on_put_ack(&mut self, from: NodeId, ack: PutAck, now: Millis) -> Vec<Effect> {
        let Some(Op::Write(mut op)) = self.ops.remove(&ack.id) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        let at = op
            .attempts
            .iter()
            .position(|a| a.node == from && a.state == AttemptState::Pending);
        if let Some(at) = at {
            if ack.outcome.is_ok() {
                op.attempts[at].state = AttemptState::Acked;
            } else {
                op.attempts[at].state = AttemptState::Failed;
                if !op.attempts[at].replaced {
                    effects.extend(self.replace(&mut op, ack.id, at, now));
                }
            }
        }
        self.settle_write(ack.id, op, &mut effects);
        effects
    }

    /// Ask the next spare fallback in place of attempt `at`, if any is left.
    fn replace(
        &mut self,
        op: &mut WriteOp,
        id: RequestId,
        at: usize,
        now: Millis,
    ) -> Option<Effect> {
        op.attempts[at].replaced = true;
        let fallback = op.spares.pop_front()?;
        let attempt = &op.attempts[at];
        let owner = attempt.hint_for.unwrap_or(attempt.node);
        Some(self.ask(op, id, fallback, Some(owner), now))
    }

    /// Answer the client if the write's fate is known; keep `op` while
    /// replicas are still pending.
    fn settle_write(&mut self, id: RequestId, mut op: WriteOp, effects: &mut Vec<Effect>) {
        let count = |s| op.attempts.iter().filter(|a| a.state == s).count();
        let (acked, pending) = (count(AttemptState::Acked), count(AttemptState::Pending));
        if !op.replied {
            let result = if acked >= op.needed {
                Some(Ok(Answer::Written))
            } else if acked + pending + op.spares.len() < op.needed {
                self.stats.unavailable += 1;
                Some(Err(QuorumError::Unavailable {
                    what: "W",
                    needed: op.needed,
                    got: acked,
                }))
            } else {
                None
            };
            if let Some(result) = result {
                op.replied = true;
                effects.push(Effect::Reply { id, result });
            }
        }
        if pending > 0 {
            self.ops.insert(id, Op::Write(op));
        }
    }

    fn on_answer(
        &mut self,
        from: NodeId,
        id: RequestId,
        answer: std::result::Result<Option<SiblingSet>, RemoteError>,
    ) -> Vec<Effect> {
        let Some(Op::Read(mut op)) = self.ops.remove(&id) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        if op.pending.remove(&from) {
            match answer {
                Ok(set) => op.answers.push((from, set)),
                // A replica that failed gets a fallback at once.
                Err(_) if !op.replied => {
                    if let Some(fallback) = op.spares.pop_front() {
                        let at = op.deadline.0.saturating_sub(self.config.timeout_ms);
                        effects.push(self.ask_read(&mut op, id, fallback, Millis(at)));
                    }
                }
                Err(_) => {}
            }
        }
        if !op.replied {
            let got = op.answers.len();
            let result = if got >= op.needed {
                Some(Ok(Answer::Read(merge_answers(&op.answers))))
            } else if got + op.pending.len() + op.spares.len() < op.needed {
                self.stats.unavailable += 1;
                Some(Err(QuorumError::Unavailable {
                    what: "R",
                    needed: op.needed,
                    got,
                }))
            } else {
                None
            };
            if let Some(result) = result {
                op.replied = true;
                effects.push(Effect::Reply { id, result });
            }
        }
        if op.pending.is_empty() {
            self.finish_read(op, &mut effects);
        } else {
            self.ops.insert(id, Op::Read(op));
        }
        effects
    }

    /// Plan read repair over every answer the read collected.
    fn finish_read(&mut self, op: ReadOp, effects: &mut Vec<Effect>) {
        if op.answers.len() < 2 {
            return;
        }
        let merged = merge_answers(&op.answers);
        let answers: Vec<(NodeId, Option<&SiblingSet>)> =
            op.answers.iter().map(|(n, s)| (*n, s.as_ref())).collect();
        for (to, need) in plan_read_repair(&answers, &merged) {
            if !op.owners.contains(&to) {
                continue;
            }
            self.stats.read_repairs += 1;
            let id = self.fresh_id();
            effects.push(Effect::Repair {
                id,
                to,
                partition: op.partition,
                key: op.key.clone(),
                set: merged.clone(),
                need,
            });
        }
    }

    /// Advance time: ask fallbacks for silent write replicas, answer
    /// `TIMEOUT` for requests past their deadline, and plan read repair for
    /// reads that stopped waiting.
    pub fn on_tick(&mut self, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ids: Vec<RequestId> = self.ops.keys().copied().collect();
        for id in ids {
            let Some(op) = self.ops.remove(&id) else {
                continue;
            };
            match op {
                Op::Write(mut op) => {
                    if now >= op.deadline {
                        self.expire_write(id, op, &mut effects);
                        continue;
                    }
                    let slow: Vec<usize> = (0..op.attempts.len())
                        .filter(|&i| {
                            let a = &op.attempts[i];
                            a.state == AttemptState::Pending
                                && !a.replaced
                                && now.since(a.sent_at) >= self.config.fallback_after_ms
                        })
                        .collect();
                    for at in slow {
                        effects.extend(self.replace(&mut op, id, at, now));
                    }
                    self.ops.insert(id, Op::Write(op));
                }
                Op::Read(mut op) => {
                    if !op.replied && op.hedge_at.is_some_and(|at| now >= at) {
                        // Replicas silent this long get a fallback each, as
                        // writes do; a late answer still counts.
                        op.hedge_at = None;
                        for _ in 0..op.pending.len() {
                            let Some(fallback) = op.spares.pop_front() else {
                                break;
                            };
                            effects.push(self.ask_read(&mut op, id, fallback, now));
                        }
                    }
                    if now >= op.deadline {
                        if !op.replied {
                            self.stats.timeouts += 1;
                            effects.push(Effect::Reply {
                                id,
                                result: Err(QuorumError::Timeout {
                                    what: "R",
                                    needed: op.needed,
                                    got: op.answers.len(),
                                    after_ms: self.config.timeout_ms,
                                }),
                            });
                        }
                        self.finish_read(op, &mut effects);
                    } else {
                        self.ops.insert(id, Op::Read(op));
                    }
                }
            }
        }
        effects
    }

    fn expire_write(&mut self, id: RequestId, op: WriteOp, effects: &mut Vec<Effect>) {
        if op.replied {
            return;
        }
        self.stats.timeouts += 1;
        let got = op
            .attempts
            .iter()
            .filter(|a| a.state == AttemptState::Acked)
            .count();
        effects.push(Effect::Reply {
            id,
            result: Err(QuorumError::Timeout {
                what: "W",
                needed: op.needed,
                got,
                after_ms: self.config.timeout_ms,
            }),
        });
    }

    /// Replica side of a `Put` from `from`: check it, merge the set into
    /// `store` (or give it to `hints` when it is meant for another owner),
    /// and acknowledge. (See [`serve_put`], which the server calls without
    /// a coordinator.)
    pub fn on_put(
        &mut self,
        from: NodeId,
        req: PutRequest,
        store: &mut impl LocalStore,
        hints: &mut impl HintStore,
    ) -> Vec<Effect> {
        let ack = serve_put(self.me, self.ring.partitions(), &req, store, hints);
        vec![Effect::Send {
            to: from,
            msg: Message::PutAck(ack),
        }]
    }

    /// Replica side of a `Get` from `from`: answer with the stored set.
    pub fn on_get(
        &mut self,
        from: NodeId,
        req: GetRequest,
        store: &impl LocalStore,
    ) -> Vec<Effect> {
        let reply = serve_get(self.ring.partitions(), &req, store);
        vec![Effect::Send {
            to: from,
            msg: Message::GetReply(reply),
        }]
    }
}

/// The replica side of a `Put` on node `me` of a ring with `partitions`
/// partitions: check the request, merge the set into `store` (or hand it to
/// `hints` when it is meant for another owner), and say how that went. Needs
/// no coordinator state, so the server serves replica requests without
/// taking the coordinator's lock.
pub fn serve_put(
    me: NodeId,
    partitions: u32,
    req: &PutRequest,
    store: &mut impl LocalStore,
    hints: &mut impl HintStore,
) -> PutAck {
    let outcome =
        check_request(partitions, req.partition, &req.key, req.budget_ms).and_then(|()| {
            let set = SiblingSet::decode(&req.siblings)
                .map_err(|e| RemoteError::Rejected(format!("malformed sibling set: {e:?}")))?;
            let stored = match req.hint_for {
                Some(owner) if owner != me => hints.store_hint(owner, &req.key, &set),
                _ => store.merge(&req.key, &set),
            };
            stored.map_err(|e| RemoteError::Storage(e.to_string()))
        });
    PutAck {
        id: req.id,
        outcome,
    }
}

/// The replica side of a `Get`: check the request and answer with the
/// stored set, encoded.
pub fn serve_get(partitions: u32, req: &GetRequest, store: &impl LocalStore) -> GetReply {
    let outcome =
        check_request(partitions, req.partition, &req.key, req.budget_ms).and_then(|()| {
            store
                .get(&req.key)
                .map(|set| set.map(|s| encode(&s)))
                .map_err(|e| RemoteError::Storage(e.to_string()))
        });
    GetReply {
        id: req.id,
        outcome,
    }
}

fn check_request(
    partitions: u32,
    partition: PartitionId,
    key: &[u8],
    budget_ms: u32,
) -> std::result::Result<(), RemoteError> {
    if budget_ms == 0 {
        return Err(RemoteError::DeadlinePassed);
    }
    let ours = super::ring::partition_of(super::ring::key_hash(key), partitions);
    if ours != partition {
        return Err(RemoteError::Rejected(format!(
            "key is in partition {ours} here, request says {partition} (rings disagree on Q?)"
        )));
    }
    Ok(())
}

/// The `Put` a caller sends for an [`Effect::Repair`] to another node.
pub fn repair_request(
    id: RequestId,
    partition: PartitionId,
    key: Vec<u8>,
    set: &SiblingSet,
    budget_ms: u32,
) -> PutRequest {
    PutRequest {
        id,
        partition,
        key,
        siblings: encode(set),
        budget_ms,
        hint_for: None,
    }
}

fn encode(set: &SiblingSet) -> Vec<u8> {
    let mut out = Vec::new();
    set.encode(&mut out);
    out
}

/// Milliseconds from `now` to `deadline`, as a message budget.
fn budget(deadline: Millis, now: Millis) -> u32 {
    u32::try_from(deadline.since(now)).unwrap_or(u32::MAX)
}

fn merge_answers(answers: &[(NodeId, Option<SiblingSet>)]) -> SiblingSet {
    let mut merged = SiblingSet::new();
    for set in answers.iter().filter_map(|(_, s)| s.as_ref()) {
        merged.merge(set);
    }
    merged
}
