//! The data path: every data command of a client, carried out by the cluster.
//!
//! [`DataPath::execute`] is what dispatch calls for a data command. It routes
//! the command by its key, runs the quorum reads and writes of the pure
//! [`Coordinator`] over the real peer transport, and serves the replica side
//! of other nodes' requests ([`DataPath::serve`]). The decisions (who owns a
//! key, when a quorum is reached, which replica is stale, which fallback
//! stands in for a down owner) are the coordinator's; this file only carries
//! out its effects: it sends messages, touches the local replica, and wakes
//! the client that waits for an answer.
//!
//! # One command, start to finish
//!
//! 1. **Route.** A node not among the key's `N` owners forwards the client's
//!    command as it came (a `Forward` message) to the first healthy owner,
//!    which coordinates it and sends back the encoded reply; the client gets
//!    those bytes as they are ([`Reply::Raw`]). One hop only: a forwarded
//!    command is coordinated where it lands. If every owner is down the
//!    command fails with `-UNAVAILABLE` (the node never coordinates a key it
//!    does not own, so clock actors stay bounded to owners).
//! 2. **Read first, when the command reads.** Every command except the blind
//!    writes (`SET` without `NX`/`XX`/`GET`/`KEEPTTL`, `SETEX`, `PSETEX`) starts
//!    with a quorum read: `R` replicas answer (this one included), their sets
//!    are merged into the local replica, so the command sees everything the
//!    quorum knew. That is how `GET` answers, and how read-modify-write
//!    commands (`INCR`, `APPEND`, `SET NX`, `DEL`, `EXPIRE`, `RESOLVE`...)
//!    build on the quorum's view, as DESIGN.md §3 asks.
//! 3. **Run it locally.** The command runs against the local replica with
//!    the keyspace's own code ([`Keyspace::execute_tracked`]), under the
//!    key's lock, so its semantics are exactly the single node's: a `SET`
//!    supersedes every version the coordinator's replica knows (merged clocks
//!    plus a new dot of this node's actor), siblings answer `-CONFLICT` for
//!    read-modify-write commands, and so on.
//! 4. **Replicate what it wrote.** If the command wrote, the key's whole new
//!    sibling set goes to the other owners as a `Put` (the coordinator's
//!    write: `W` acknowledgements, this node's durable write counting as
//!    one, fallbacks with hints for down or silent owners). The client gets
//!    the command's reply once `W` replicas have the set, or
//!    `-UNAVAILABLE`/`-TIMEOUT` when the quorum fails. A write that failed
//!    its quorum may still be stored on some replicas, as in Dynamo.
//! 5. **Read repair** happens after the reply: once every owner answered a
//!    read (or the deadline passed), stale replicas get the merged set.
//!
//! Multi-key commands (`MGET`, `MSET`, `MSETNX`, `DEL`/`UNLINK`/`EXISTS` with
//! several keys) run as one command per key, concurrently, each routed on
//! its own, and their replies are combined as Redis would. They are not
//! atomic across keys in a cluster (on a single node they still are).
//! `MSETNX` checks every key with a quorum read and then writes them, so a
//! concurrent writer can slip in between. `KEYS`, `SCAN`, `RANDOMKEY`,
//! `DBSIZE` and `FLUSHALL`/`FLUSHDB` act on this node's replica only: with
//! `N` equal to the cluster size that is every key; in larger clusters, ask
//! every node. (`FLUSHALL` writes tombstones here; read repair and
//! anti-entropy carry them to the other replicas.)
//!
//! A cluster of one node skips all of this: the command runs on the local
//! keyspace exactly as it did before clustering (the fast path of the
//! single-node benchmarks). But a node started as part of a cluster (with
//! `--join`, or with peers remembered in its data directory from its last
//! life) knows only itself until gossip finds the others; until then it
//! answers data commands `-UNAVAILABLE ... not found its cluster yet`
//! instead of acting as a cluster of one, which would answer reads from its
//! own replica alone and acknowledge writes with one copy, most of them of
//! keys it does not own (the chaos test caught that losing acknowledged
//! writes).
//!
//! # The replica side
//!
//! `Put` merges the set into the local replica ([`Replica::merge_remote`])
//! and acknowledges once it is durable under the node's fsync policy; a
//! `Put` with a hint for another owner goes to the durable hint store
//! instead (fsynced before the acknowledgement). `Get` answers with the
//! stored set, or, on a node that does not own the key (a fallback asked in
//! place of a down owner), with the merge of the hints it holds for the key. `Forward` runs the command through [`DataPath::execute`] as
//! its coordinator. None of them takes the coordinator's lock.
//!
//! # Concurrency
//!
//! The coordinator is a plain state machine behind a mutex held only for the
//! synchronous call; every effect is carried out after the lock is released.
//! Each request to a peer runs on its own small task that feeds the answer
//! (or the transport's failure, as a failed answer, so a fallback is asked at
//! once) back into the coordinator. A ticker task drives deadlines and
//! hedged fallbacks every [`TICK_EVERY`] while requests are in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, BoxFuture};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::cluster_node::ClusterHandle;
use super::keyspace::replica::{Key, Replica};
use super::keyspace::{self, Keyspace};
use crate::cluster::coordinator::{
    repair_request, serve_get, serve_put, Answer, Coordinator, Effect, HintStore as HintSink,
    LocalStore, Origin, QuorumConfig, QuorumError, Route,
};
use crate::cluster::hints::HintStore;
use crate::cluster::membership::Millis;
use crate::cluster::messages::{
    ForwardReply, ForwardRequest, GetReply, Message, PutAck, RemoteError, RequestId,
};
use crate::cluster::ring::{NodeId, PartitionId};
use crate::config::FsyncPolicy;
use crate::error::{Error, Result};
use crate::protocol::{encode, ProtocolVersion, Reply};
use crate::storage::SeqNo;
use crate::version::SiblingSet;

/// The answer to data commands on a node that was started as part of a
/// cluster (`--join`, or peers remembered from its last life) and has not
/// found any of it yet.
pub const NOT_JOINED: &str =
    "UNAVAILABLE this node has not found its cluster yet (no peer answered); retry shortly";

/// How often the ticker drives the coordinator's timers while requests are
/// in flight (the granularity of hedged fallbacks and deadlines).
pub const TICK_EVERY: Duration = Duration::from_millis(10);

/// Counters for `INFO cluster`, beyond the coordinator's own.
#[derive(Debug, Default)]
struct Counters {
    forwards_served: AtomicU64,
    puts_served: AtomicU64,
    gets_served: AtomicU64,
    hints_stored: AtomicU64,
    forward_failures: AtomicU64,
    peer_failures: AtomicU64,
    read_repairs_sent: AtomicU64,
}

/// How a data command uses its key (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Runs on this node's replica only (`KEYS`, `SCAN`, `DBSIZE`...).
    Local,
    /// Reads the key with a quorum, then runs (and replicates any write).
    ReadFirst,
    /// Writes without looking: runs locally, then replicates.
    Blind,
    /// Several keys: one command per key.
    Multi,
}

/// The data path of this node (see the module doc). Shared by every
/// connection and the peer handler.
pub struct DataPath {
    /// This data path itself, for the tasks it spawns.
    this: std::sync::Weak<DataPath>,
    me: NodeId,
    keyspace: Keyspace,
    cluster: ClusterHandle,
    coordinator: Mutex<Coordinator>,
    /// Clients waiting for their request's answer, by coordinator request id.
    waiting: Mutex<HashMap<RequestId, oneshot::Sender<std::result::Result<Answer, QuorumError>>>>,
    hints: Arc<HintStore>,
    /// Internode addresses of the members, from the membership.
    addrs: RwLock<HashMap<NodeId, SocketAddr>>,
    /// The cluster view the coordinator was last synced with.
    synced_view: AtomicU64,
    /// The ring has this node only: commands run on the local keyspace.
    alone: AtomicBool,
    /// The ring has had another member since this node started.
    seen_peers: AtomicBool,
    partitions: u32,
    fsync: FsyncPolicy,
    timeout: Duration,
    next_forward: AtomicU64,
    counters: Counters,
}

impl DataPath {
    /// The data path over `keyspace`, with hints kept in `<dir>/hints`.
    /// Starts the ticker task, which ends when the cluster node shuts down.
    pub fn start(
        keyspace: Keyspace,
        cluster: ClusterHandle,
        node_config: &crate::config::Config,
    ) -> Result<Arc<DataPath>> {
        let timeout_ms = node_config.request_timeout_ms;
        let hints = Arc::new(HintStore::open(&node_config.dir.join("hints"))?);
        let (ring, settings) = cluster.with_membership(|m| (m.ring(), m.settings().clone()));
        let config = QuorumConfig {
            read_quorum: settings.read_quorum as usize,
            write_quorum: settings.write_quorum as usize,
            timeout_ms,
            fallback_after_ms: (timeout_ms * 3 / 10).max(1),
            ..QuorumConfig::default()
        };
        let me = cluster.id();
        let coordinator = Coordinator::new(me, ring?, config)?;
        let data = Arc::new_cyclic(|this| DataPath {
            this: this.clone(),
            me,
            fsync: keyspace.fsync_policy(),
            partitions: settings.partitions,
            keyspace,
            cluster,
            coordinator: Mutex::new(coordinator),
            waiting: Mutex::new(HashMap::new()),
            hints,
            addrs: RwLock::new(HashMap::new()),
            synced_view: AtomicU64::new(u64::MAX),
            alone: AtomicBool::new(true),
            seen_peers: AtomicBool::new(false),
            timeout: Duration::from_millis(timeout_ms),
            next_forward: AtomicU64::new(0),
            counters: Counters::default(),
        });
        data.refresh();
        tokio::spawn(ticker(data.clone()));
        tokio::spawn(super::handoff::run(
            data.hints.clone(),
            data.cluster.clone(),
            super::handoff::handoff_config(node_config),
            data.timeout,
        ));
        Ok(data)
    }

    /// Runs one data command for a client of this node (or, with
    /// `Origin::Forwarded`, for another node that forwarded it). Returns the
    /// reply and, on the single-node fast path under `fsync always`, the
    /// write the connection must wait for; cluster commands are durable on
    /// return.
    pub async fn execute(
        &self,
        args: &[Bytes],
        proto: ProtocolVersion,
        origin: Origin,
    ) -> (Reply, Option<SeqNo>) {
        self.refresh();
        if self.alone.load(Relaxed) {
            if self.cluster.expects_peers() && !self.seen_peers.load(Relaxed) {
                // A node of a cluster that has not found it yet: its replica
                // alone is not a quorum, and the keys it would write are
                // mostly not its own.
                return (Reply::Error(NOT_JOINED.to_string()), None);
            }
            return self.keyspace.execute_unsynced(args).await;
        }
        let mut lower = [0u8; 16];
        let Some(name) = keyspace::lowercase(&args[0], &mut lower) else {
            return self.keyspace.execute_unsynced(args).await;
        };
        if !arity_ok(name, args.len()) {
            // The keyspace answers unknown commands and wrong arities.
            return self.keyspace.execute_unsynced(args).await;
        }
        let reply = match classify(name, args) {
            Class::Local => return self.keyspace.execute_unsynced(args).await,
            Class::Multi => self.multi(name, args, proto, origin).await,
            class => self.one_key(args, class, proto, origin).await,
        };
        (reply, None)
    }

    /// Whether this node serves data as part of a cluster of several (and
    /// not on the single-node fast path).
    pub fn is_clustered(&self) -> bool {
        self.refresh();
        !self.alone.load(Relaxed)
    }

    /// A command on the one key `args[1]`: forward it, or coordinate it here.
    async fn one_key(
        &self,
        args: &[Bytes],
        class: Class,
        proto: ProtocolVersion,
        origin: Origin,
    ) -> Reply {
        let key = &args[1];
        let (route, owner_here, targets) = {
            let mut c = self.coordinator.lock();
            let route = c.route(key, origin);
            let ring = c.ring();
            let owners = ring.owners(ring.partition_for_key(key));
            let owner_here = owners.contains(&self.me);
            let targets = match route {
                Route::Forward(_) => c.forward_targets(key),
                Route::Coordinate => Vec::new(),
            };
            (route, owner_here, targets)
        };
        match route {
            Route::Forward(_) => self.forward(&targets, args, proto).await,
            Route::Coordinate if owner_here || origin == Origin::Forwarded => {
                match self.coordinate(key, args, class).await {
                    Ok(reply) => reply,
                    Err(e) => e.into(),
                }
            }
            Route::Coordinate => Reply::Error(
                "UNAVAILABLE every replica of this key is down; retry later".to_string(),
            ),
        }
    }

    async fn coordinate(&self, key: &Bytes, args: &[Bytes], class: Class) -> Result<Reply> {
        if class == Class::Blind && self.replica().read(Key::new(key))?.is_none() {
            // This replica knows nothing of the key, but it may have written
            // it before (and handed its copy off, or lost it with a rejoin
            // while others kept it): a new version would reuse one of its own
            // old dots, which the replicas holding the old one would take
            // for a version they already have, and drop. Reading the quorum
            // first brings the key's clock, and those dots, here. The read
            // is best effort: a write must stay available when a quorum
            // cannot be read (Dynamo's "always writable").
            match self.quorum_read(key).await {
                Ok(set) if !set.is_empty() => {
                    self.replica().merge_remote(Key::new(key), set)?;
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "no quorum read before a blind write; writing anyway"),
            }
        }
        if class == Class::ReadFirst && args[0].eq_ignore_ascii_case(b"get") {
            // The hot read: answer from the quorum's merge; read repair
            // (this replica included) follows once every owner answered.
            let set = self.quorum_read(key).await?;
            return Ok(self.keyspace.get_reply(&set));
        }
        if class == Class::ReadFirst {
            let set = self.quorum_read(key).await?;
            if !set.is_empty() {
                // What the quorum knows becomes what this replica knows,
                // so the command below builds on it. Durability is not
                // awaited: those versions are already stored elsewhere.
                self.replica().merge_remote(Key::new(key), set)?;
            }
        }
        let (reply, wrote) = self.keyspace.execute_tracked(args).await;
        let Some(seq) = wrote else {
            return Ok(reply);
        };
        if self.fsync == FsyncPolicy::Always {
            self.keyspace.wait_durable(seq).await?;
        }
        let Some(set) = self.replica().read(Key::new(key))? else {
            // A write that left nothing is a broken invariant of the keyspace;
            // answer it rather than replicate nothing.
            return Ok(reply);
        };
        self.quorum_write(key, set).await?;
        Ok(reply)
    }

    /// A quorum read of `key`: the merge of `R` replicas' sets.
    async fn quorum_read(&self, key: &[u8]) -> Result<SiblingSet> {
        let (tx, rx) = oneshot::channel();
        let effects = {
            let mut c = self.coordinator.lock();
            let (id, effects) = c.begin_read(key.to_vec(), self.now());
            self.waiting.lock().insert(id, tx);
            effects
        };
        self.apply(effects);
        match rx.await {
            Ok(Ok(Answer::Read(set))) => Ok(set),
            Ok(Ok(Answer::Written)) => Err(Error::invalid("a read was answered as a write")),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Closed("data path")),
        }
    }

    /// A quorum write of `set` for `key`, already durable in the local
    /// replica (which counts as the first acknowledgement).
    async fn quorum_write(&self, key: &[u8], set: SiblingSet) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let effects = {
            let mut c = self.coordinator.lock();
            let (id, effects) = c.begin_write_stored(key.to_vec(), set, self.now())?;
            self.waiting.lock().insert(id, tx);
            effects
        };
        self.apply(effects);
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Closed("data path")),
        }
    }

    /// Sends the client's command to the first of `owners` that takes it and
    /// returns its encoded reply. An owner the transport refused before
    /// sending anything (a dial still backing off just after the owner came
    /// back, say) is skipped for the next; one that may have received the
    /// command is not, so a command never runs twice.
    async fn forward(&self, owners: &[NodeId], args: &[Bytes], proto: ProtocolVersion) -> Reply {
        // The owner has its own request timeout; wait a little longer so
        // that its TIMEOUT answer, not ours, reaches the client.
        let wait = self.timeout + self.timeout / 2;
        let request = Message::Forward(ForwardRequest {
            id: RequestId(self.next_forward.fetch_add(1, Relaxed)),
            args: args.iter().map(|a| a.to_vec()).collect(),
            resp3: proto == ProtocolVersion::Resp3,
            budget_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        });
        let payload = Bytes::from(request.encode());
        let failed = |what: String| {
            self.counters.forward_failures.fetch_add(1, Relaxed);
            Reply::Error(what)
        };
        let mut last = None;
        let mut last_refusal = None;
        for &owner in owners {
            let Some(addr) = self.addr_of(owner) else {
                continue;
            };
            match self
                .cluster
                .peers()
                .request(addr, payload.clone(), wait)
                .await
            {
                Ok(bytes) => {
                    return match Message::decode(&bytes) {
                        // An owner that came back and has not found its
                        // cluster yet ran nothing: try the next one.
                        Ok(Message::ForwardReply(r)) if is_not_joined(&r.reply) => {
                            last_refusal = Some(Reply::Raw(Bytes::from(r.reply)));
                            continue;
                        }
                        Ok(Message::ForwardReply(r)) => Reply::Raw(Bytes::from(r.reply)),
                        Ok(other) => failed(format!(
                            "ERR replica {} answered a forward with '{}'",
                            owner.short(),
                            other.kind()
                        )),
                        Err(e) => failed(format!(
                            "ERR replica {} answered garbage: {e}",
                            owner.short()
                        )),
                    };
                }
                Err(e) if e.never_sent() => last = Some((owner, e)),
                Err(e @ crate::server::peer::PeerError::Timeout { .. }) => {
                    return failed(format!(
                        "TIMEOUT forwarded to replica {} and got no answer: {e}",
                        owner.short()
                    ))
                }
                Err(e) => {
                    return failed(format!(
                        "UNAVAILABLE lost the connection to replica {} of this key: {e}",
                        owner.short()
                    ))
                }
            }
        }
        if let Some(refusal) = last_refusal {
            return refusal;
        }
        match last {
            Some((owner, e)) => failed(format!(
                "UNAVAILABLE cannot reach replica {} of this key: {e}",
                owner.short()
            )),
            None => failed("UNAVAILABLE no replica of this key has a known address".to_string()),
        }
    }

    /// `MGET`, `MSET`, `MSETNX` and multi-key `DEL`/`UNLINK`/`EXISTS`: one
    /// command per key, run concurrently, replies combined as Redis does.
    async fn multi(
        &self,
        name: &str,
        args: &[Bytes],
        proto: ProtocolVersion,
        origin: Origin,
    ) -> Reply {
        let run = |sub: Vec<Bytes>, class: Class| async move {
            self.one_key(&sub, class, proto, origin).await
        };
        let word = |w: &'static str| Bytes::from_static(w.as_bytes());
        match name {
            "mget" => {
                let gets = args[1..]
                    .iter()
                    .map(|k| run(vec![word("GET"), k.clone()], Class::ReadFirst));
                Reply::Array(join_all(gets).await)
            }
            "mset" => {
                let sets = args[1..].chunks(2).map(|kv| {
                    run(
                        vec![word("SET"), kv[0].clone(), kv[1].clone()],
                        Class::Blind,
                    )
                });
                first_error(join_all(sets).await).unwrap_or(Reply::OK)
            }
            "msetnx" => {
                let checks = args[1..]
                    .chunks(2)
                    .map(|kv| run(vec![word("EXISTS"), kv[0].clone()], Class::ReadFirst));
                let mut existing = 0;
                for reply in join_all(checks).await {
                    match integer_of(&reply) {
                        Some(n) => existing += n,
                        None => return reply,
                    }
                }
                if existing > 0 {
                    return Reply::Integer(0);
                }
                let sets = args[1..].chunks(2).map(|kv| {
                    run(
                        vec![word("SET"), kv[0].clone(), kv[1].clone()],
                        Class::Blind,
                    )
                });
                first_error(join_all(sets).await).unwrap_or(Reply::Integer(1))
            }
            // del, unlink, exists: the sum of the per-key counts.
            _ => {
                let verb = args[0].clone();
                let each = args[1..]
                    .iter()
                    .map(|k| run(vec![verb.clone(), k.clone()], Class::ReadFirst));
                let mut total = 0;
                for reply in join_all(each).await {
                    match integer_of(&reply) {
                        Some(n) => total += n,
                        None => return reply,
                    }
                }
                Reply::Integer(total)
            }
        }
    }

    /// Carries out the coordinator's effects (never under its lock).
    fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => self.send(to, msg),
                Effect::StoreLocal { id, key, set } => {
                    let stored = self.replica().merge_remote(Key::new(&key), set);
                    self.local_stored(id, stored);
                }
                Effect::ReadLocal { id, key } => {
                    let read = self.replica().read(Key::new(&key));
                    let more = self.coordinator.lock().on_local_read(id, read);
                    self.apply(more);
                }
                Effect::Reply { id, result } => {
                    if let Some(tx) = self.waiting.lock().remove(&id) {
                        // The client may have gone; nothing to do then.
                        let _ = tx.send(result);
                    }
                }
                Effect::Repair {
                    id,
                    to,
                    partition,
                    key,
                    set,
                    need: _,
                } => self.repair(id, to, partition, key, set),
            }
        }
    }

    /// Reports a local store to the coordinator once it is durable.
    fn local_stored(&self, id: RequestId, stored: Result<Option<SeqNo>>) {
        match stored {
            Ok(Some(seq)) if self.fsync == FsyncPolicy::Always => {
                let keyspace = self.keyspace.clone();
                let data = self.self_arc();
                tokio::spawn(async move {
                    let durable = keyspace.wait_durable(seq).await;
                    if let Some(data) = data {
                        let more = data
                            .coordinator
                            .lock()
                            .on_local_stored(id, durable, data.now());
                        data.apply(more);
                    }
                });
            }
            other => {
                let more =
                    self.coordinator
                        .lock()
                        .on_local_stored(id, other.map(|_| ()), self.now());
                self.apply(more);
            }
        }
    }

    /// Sends a `Put` or `Get` to `to` on a task of its own; its answer, or
    /// the transport's failure as a failed answer, goes to the coordinator.
    fn send(&self, to: NodeId, msg: Message) {
        let budget = match &msg {
            Message::Put(p) => p.budget_ms,
            Message::Get(g) => g.budget_ms,
            _ => u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let Some(data) = self.self_arc() else {
            return;
        };
        let addr = self.addr_of(to);
        tokio::spawn(async move {
            let answer = match addr {
                Some(addr) => data
                    .cluster
                    .peers()
                    .request(
                        addr,
                        Bytes::from(msg.encode()),
                        Duration::from_millis(u64::from(budget)),
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| Message::decode(&bytes).map_err(|e| e.to_string())),
                None => Err(format!("no address known for node {}", to.short())),
            };
            let reply = match answer {
                Ok(reply) => reply,
                Err(why) => {
                    data.counters.peer_failures.fetch_add(1, Relaxed);
                    debug!(peer = %to.short(), error = %why, kind = msg.kind(), "replica request failed");
                    match failed_answer(&msg, why) {
                        Some(reply) => reply,
                        None => return,
                    }
                }
            };
            let more = data.coordinator.lock().on_reply(to, reply, data.now());
            data.apply(more);
        });
    }

    /// Read repair: give replica `to` the merged set (fire and forget).
    fn repair(
        &self,
        id: RequestId,
        to: NodeId,
        partition: PartitionId,
        key: Vec<u8>,
        set: SiblingSet,
    ) {
        self.counters.read_repairs_sent.fetch_add(1, Relaxed);
        if to == self.me {
            if let Err(e) = self.replica().merge_remote(Key::new(&key), set) {
                warn!(error = %e, "local read repair failed");
            }
            return;
        }
        let Some(addr) = self.addr_of(to) else {
            return;
        };
        let budget = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        let put = Message::Put(repair_request(id, partition, key, &set, budget));
        let peers = self.cluster.peers().clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            if let Err(e) = peers
                .request(addr, Bytes::from(put.encode()), timeout)
                .await
            {
                debug!(peer = %to.short(), error = %e, "read repair not delivered");
            }
        });
    }

    /// Serves a data message from peer `from`: the replica side of `Put` and
    /// `Get`, and forwarded commands. The answer is the encoded reply
    /// message; `None` for messages that are not requests.
    pub fn serve(self: Arc<Self>, from: NodeId, msg: Message) -> BoxFuture<'static, Option<Bytes>> {
        match msg {
            Message::Put(req) => {
                self.counters.puts_served.fetch_add(1, Relaxed);
                let hinted = req.hint_for.is_some_and(|owner| owner != self.me);
                Box::pin(async move {
                    let ack = if hinted {
                        // The hint store fsyncs: keep that off the async threads.
                        let data = self.clone();
                        tokio::task::spawn_blocking(move || data.store_put(&req))
                            .await
                            .unwrap_or_else(|e| PutAck {
                                id: RequestId(0),
                                outcome: Err(RemoteError::Storage(format!(
                                    "hint task failed: {e}"
                                ))),
                            })
                    } else {
                        let (ack, wrote) = self.merge_put(&req);
                        match wrote {
                            Some(seq)
                                if self.fsync == FsyncPolicy::Always && ack.outcome.is_ok() =>
                            {
                                match self.keyspace.wait_durable(seq).await {
                                    Ok(()) => ack,
                                    Err(e) => PutAck {
                                        id: ack.id,
                                        outcome: Err(RemoteError::Storage(e.to_string())),
                                    },
                                }
                            }
                            _ => ack,
                        }
                    };
                    Some(Bytes::from(Message::PutAck(ack).encode()))
                })
            }
            Message::Get(req) => {
                self.counters.gets_served.fetch_add(1, Relaxed);
                let reply: GetReply = if self.owns(&req.key) {
                    serve_get(self.partitions, &req, &ReplicaStore::new(self.replica()))
                } else {
                    // Asked in place of a down owner: answer from the hints.
                    let hinted = HintedStore {
                        hints: &self.hints,
                        partition: req.partition,
                    };
                    serve_get(self.partitions, &req, &hinted)
                };
                Box::pin(std::future::ready(Some(Bytes::from(
                    Message::GetReply(reply).encode(),
                ))))
            }
            Message::Forward(req) => {
                self.counters.forwards_served.fetch_add(1, Relaxed);
                Box::pin(async move {
                    let proto = if req.resp3 {
                        ProtocolVersion::Resp3
                    } else {
                        ProtocolVersion::Resp2
                    };
                    let args: Vec<Bytes> = req.args.into_iter().map(Bytes::from).collect();
                    let reply = if args.is_empty() {
                        Reply::err("empty forwarded command")
                    } else {
                        self.execute(&args, proto, Origin::Forwarded).await.0
                    };
                    let mut out = BytesMut::new();
                    encode(&reply, proto, &mut out);
                    let answer = Message::ForwardReply(ForwardReply {
                        id: req.id,
                        reply: out.to_vec(),
                    });
                    Some(Bytes::from(answer.encode()))
                })
            }
            other => {
                debug!(peer = %from.short(), kind = other.kind(), "unexpected data-path message; dropped");
                Box::pin(std::future::ready(None))
            }
        }
    }

    /// A `Put` for this node's own replica: merge, and the write to wait for.
    fn merge_put(&self, req: &crate::cluster::messages::PutRequest) -> (PutAck, Option<SeqNo>) {
        let mut store = ReplicaStore::new(self.replica());
        let mut hints = HintAdapter {
            store: &self.hints,
            partition: req.partition,
        };
        let ack = serve_put(self.me, self.partitions, req, &mut store, &mut hints);
        (ack, store.wrote)
    }

    /// A `Put` with a hint: into the durable hint store.
    fn store_put(&self, req: &crate::cluster::messages::PutRequest) -> PutAck {
        let (ack, _) = self.merge_put(req);
        if ack.outcome.is_ok() {
            self.counters.hints_stored.fetch_add(1, Relaxed);
        }
        ack
    }

    /// Re-reads the membership into the coordinator when it changed.
    fn refresh(&self) {
        let version = self.cluster.view_version();
        if self.synced_view.load(Relaxed) == version {
            return;
        }
        let synced = self.cluster.with_membership(|m| {
            let mut addrs = HashMap::new();
            for member in m.members() {
                if let Ok(addr) = member.peer_addr.parse::<SocketAddr>() {
                    addrs.insert(member.id, addr);
                }
            }
            *self.addrs.write() = addrs;
            let mut c = self.coordinator.lock();
            let synced = c.sync_with(m);
            let alone = c.ring().members().len() <= 1;
            (synced, alone)
        });
        match synced {
            (Ok(()), alone) => {
                if !alone {
                    self.seen_peers.store(true, Relaxed);
                }
                self.alone.store(alone, Relaxed);
                self.synced_view.store(version, Relaxed);
            }
            (Err(e), _) => debug!(error = %e, "ring not rebuilt for the data path"),
        }
    }

    /// Appends the data path's lines to `INFO cluster`.
    pub fn info_section(&self, out: &mut String) {
        let s = self.coordinator.lock().stats();
        let c = &self.counters;
        let hints = self.hints.pending_by_target();
        let (hint_count, hint_bytes) = hints
            .iter()
            .fold((0, 0), |(n, b), (_, count, bytes)| (n + count, b + bytes));
        let lines: [(&str, u64); 16] = [
            ("requests_coordinated_reads", s.reads),
            ("requests_coordinated_writes", s.writes),
            ("requests_forwarded", s.forwarded),
            (
                "requests_forwarded_failed",
                c.forward_failures.load(Relaxed),
            ),
            ("forwards_served", c.forwards_served.load(Relaxed)),
            ("quorum_failures_unavailable", s.unavailable),
            ("quorum_failures_timeout", s.timeouts),
            ("read_repairs", s.read_repairs),
            ("read_repairs_sent", c.read_repairs_sent.load(Relaxed)),
            ("hinted_puts_sent", s.hinted_puts),
            ("hints_stored", c.hints_stored.load(Relaxed)),
            ("hints_pending", hint_count),
            ("hints_pending_bytes", hint_bytes),
            ("replica_puts_served", c.puts_served.load(Relaxed)),
            ("replica_gets_served", c.gets_served.load(Relaxed)),
            ("replica_request_failures", c.peer_failures.load(Relaxed)),
        ];
        for (name, value) in lines {
            out.push_str(name);
            out.push(':');
            out.push_str(&value.to_string());
            out.push_str("\r\n");
        }
        // One line per target, in the style of Redis' `slave0:...` lines.
        for (target, count, bytes) in hints {
            let status = self
                .cluster
                .with_membership(|m| m.status(target))
                .map_or_else(|| "unknown".to_string(), |s| s.to_string());
            out.push_str(&format!(
                "hints_for_{target}:hints={count},bytes={bytes},status={status}\r\n"
            ));
        }
    }

    /// `CLUSTER HINTS`: the hints held here, per target replica.
    pub fn hints_reply(&self) -> Reply {
        super::handoff::hints_reply(&self.hints, &self.cluster)
    }

    /// Closes the hint store (fsyncs it). The keyspace is closed by the server.
    pub fn close(&self) -> Result<()> {
        self.hints.close()
    }

    fn replica(&self) -> &Replica {
        self.keyspace.replica()
    }

    /// Whether this node is one of `key`'s owners by its ring.
    fn owns(&self, key: &[u8]) -> bool {
        let c = self.coordinator.lock();
        let ring = c.ring();
        ring.owners(ring.partition_for_key(key)).contains(&self.me)
    }

    fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.addrs.read().get(&node).copied()
    }

    fn now(&self) -> Millis {
        self.cluster.now()
    }

    /// An owning handle for tasks (the data path lives in an `Arc`).
    fn self_arc(&self) -> Option<Arc<DataPath>> {
        self.this.upgrade()
    }
}

/// Drives the coordinator's timers and keeps its view of the membership fresh.
async fn ticker(data: Arc<DataPath>) {
    let stop = data.cluster.shutdown_token();
    let mut tick = tokio::time::interval(TICK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        data.refresh();
        let effects = {
            let mut c = data.coordinator.lock();
            if c.in_flight() == 0 {
                continue;
            }
            c.on_tick(data.now())
        };
        data.apply(effects);
    }
}

/// The replica as the coordinator's [`LocalStore`]; remembers the write.
struct ReplicaStore<'a> {
    replica: &'a Replica,
    wrote: Option<SeqNo>,
}

impl<'a> ReplicaStore<'a> {
    fn new(replica: &'a Replica) -> Self {
        ReplicaStore {
            replica,
            wrote: None,
        }
    }
}

impl LocalStore for ReplicaStore<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<SiblingSet>> {
        self.replica.read(Key::new(key))
    }

    fn merge(&mut self, key: &[u8], set: &SiblingSet) -> Result<()> {
        self.wrote = self.replica.merge_remote(Key::new(key), set.clone())?;
        Ok(())
    }
}

/// The hints held here for a key this node does not own, read as a
/// replica would be (a sloppy-quorum read of a fallback). Never written.
struct HintedStore<'a> {
    hints: &'a HintStore,
    partition: PartitionId,
}

impl LocalStore for HintedStore<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<SiblingSet>> {
        self.hints.hinted_set(self.partition, key)
    }

    fn merge(&mut self, _key: &[u8], _set: &SiblingSet) -> Result<()> {
        Err(Error::invalid("a fallback keeps hints, not replicas"))
    }
}

/// The durable hint store as the coordinator's [`HintSink`].
struct HintAdapter<'a> {
    store: &'a HintStore,
    partition: PartitionId,
}

impl HintSink for HintAdapter<'_> {
    fn store_hint(&mut self, owner: NodeId, key: &[u8], set: &SiblingSet) -> Result<()> {
        self.store
            .store(owner, self.partition, key, set, keyspace::now_ms())?;
        Ok(())
    }
}

/// The failed answer standing in for a request the transport could not
/// deliver, so the coordinator moves on (to a fallback) at once.
fn failed_answer(request: &Message, why: String) -> Option<Message> {
    let outcome = RemoteError::Unreachable(why);
    match request {
        Message::Put(p) => Some(Message::PutAck(PutAck {
            id: p.id,
            outcome: Err(outcome),
        })),
        Message::Get(g) => Some(Message::GetReply(GetReply {
            id: g.id,
            outcome: Err(outcome),
        })),
        _ => None,
    }
}

/// How `name` (lower case, arity checked) uses its keys.
fn classify(name: &str, args: &[Bytes]) -> Class {
    match name {
        "keys" | "scan" | "randomkey" | "dbsize" | "flushall" | "flushdb" => Class::Local,
        "mget" | "mset" | "msetnx" => Class::Multi,
        "del" | "unlink" | "exists" if args.len() > 2 => Class::Multi,
        "setex" | "psetex" => Class::Blind,
        "set" => {
            let reads = args[3..].iter().any(|a| {
                [&b"nx"[..], b"xx", b"get", b"keepttl"]
                    .iter()
                    .any(|w| a.eq_ignore_ascii_case(w))
            });
            if reads {
                Class::ReadFirst
            } else {
                Class::Blind
            }
        }
        _ => Class::ReadFirst,
    }
}

/// Whether `n` words fit the keyspace command `name`'s arity.
fn arity_ok(name: &str, n: usize) -> bool {
    match keyspace::arity(name) {
        Some(a) if a >= 0 => n == a as usize,
        Some(a) => n >= a.unsigned_abs() as usize,
        None => false,
    }
}

/// Whether an encoded reply is [`NOT_JOINED`] (the node ran nothing).
fn is_not_joined(reply: &[u8]) -> bool {
    reply
        .strip_prefix(b"-")
        .is_some_and(|r| r.starts_with(NOT_JOINED.as_bytes()))
}

/// The integer of a reply (a forwarded one is still encoded).
fn integer_of(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        Reply::Raw(bytes) => std::str::from_utf8(bytes.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
            .ok()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// The first error among `replies`, if any (a forwarded one is encoded).
fn first_error(replies: Vec<Reply>) -> Option<Reply> {
    replies.into_iter().find(|r| match r {
        Reply::Error(_) => true,
        Reply::Raw(bytes) => bytes.first() == Some(&b'-'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn only_plain_sets_are_blind_writes() {
        assert_eq!(classify("set", &args(&["SET", "k", "v"])), Class::Blind);
        assert_eq!(
            classify("set", &args(&["SET", "k", "v", "EX", "5"])),
            Class::Blind
        );
        assert_eq!(
            classify("set", &args(&["SET", "k", "v", "nx"])),
            Class::ReadFirst
        );
        assert_eq!(
            classify("set", &args(&["SET", "k", "v", "GET"])),
            Class::ReadFirst
        );
        assert_eq!(
            classify("set", &args(&["SET", "k", "v", "KeepTTL"])),
            Class::ReadFirst
        );
        assert_eq!(
            classify("setex", &args(&["SETEX", "k", "5", "v"])),
            Class::Blind
        );
        assert_eq!(classify("incr", &args(&["INCR", "k"])), Class::ReadFirst);
        assert_eq!(
            classify("resolve", &args(&["RESOLVE", "k", "c", "v"])),
            Class::ReadFirst
        );
    }

    #[test]
    fn multi_key_forms_are_split_and_keyless_commands_stay_local() {
        assert_eq!(classify("del", &args(&["DEL", "a"])), Class::ReadFirst);
        assert_eq!(classify("del", &args(&["DEL", "a", "b"])), Class::Multi);
        assert_eq!(
            classify("exists", &args(&["EXISTS", "a", "b"])),
            Class::Multi
        );
        assert_eq!(classify("mget", &args(&["MGET", "a"])), Class::Multi);
        for name in ["keys", "scan", "dbsize", "flushall", "randomkey"] {
            assert_eq!(classify(name, &args(&[name, "x"])), Class::Local);
        }
    }

    #[test]
    fn forwarded_integer_and_error_replies_are_recognised() {
        assert_eq!(
            integer_of(&Reply::Raw(Bytes::from_static(b":12\r\n"))),
            Some(12)
        );
        assert_eq!(
            integer_of(&Reply::Raw(Bytes::from_static(b"$2\r\nab\r\n"))),
            None
        );
        assert_eq!(integer_of(&Reply::Integer(-3)), Some(-3));
        let err = Reply::Raw(Bytes::from_static(b"-UNAVAILABLE x\r\n"));
        assert_eq!(first_error(vec![Reply::OK, err.clone()]), Some(err));
        assert_eq!(first_error(vec![Reply::OK]), None);
    }

    #[test]
    fn a_forwarded_not_joined_refusal_is_recognised() {
        let mut out = BytesMut::new();
        encode(
            &Reply::Error(NOT_JOINED.to_string()),
            ProtocolVersion::Resp3,
            &mut out,
        );
        assert!(is_not_joined(&out));
        assert!(!is_not_joined(b"-UNAVAILABLE needed W=2 acks, got 1\r\n"));
        assert!(!is_not_joined(b"+OK\r\n"));
    }

    #[test]
    fn arity_follows_the_keyspace_table() {
        assert!(arity_ok("get", 2));
        assert!(!arity_ok("get", 3));
        assert!(arity_ok("mset", 5));
        assert!(!arity_ok("mset", 2));
        assert!(!arity_ok("nosuch", 2));
    }
}
