//! Anti-entropy, the doing half: runs Merkle-tree repair sessions between
//! the replicas of each partition over the peer transport.
//!
//! The deciding half is [`crate::cluster::anti_entropy`] (a pure session that
//! turns messages into [`Effect`]s) and the trees are kept by the replica
//! ([`super::keyspace::merkle_index`]). This module carries the messages,
//! loads and merges what the sessions ask for, paces itself, and answers
//! `CLUSTER REPAIR`, `CLUSTER MERKLE` and `INFO`.
//!
//! # One round
//!
//! ```text
//! at start-up: build every partition's tree, one scan each (trees are not
//!              persisted; a partition is usable once its own build is done)
//! every --anti-entropy-interval-ms (default 10 s; 0 = off):
//!     for each partition this node owns (ring owners):
//!         peer = one other live owner, rotating from round to round
//!         run a session with it (below), then pause as long as it took
//!     check one partition's tree against a scan (round-robin over all Q),
//!         correcting any drift
//! CLUSTER REPAIR [p]: the same for p (or every owned partition) now, with
//!     *every* other live owner, no pause; answers a summary when done
//! ```
//!
//! # Sessions over a one-way transport
//!
//! The peer transport is request/response with the dialer asking
//! ([`PeerClient::request`](super::peer::PeerClient::request)), so a session
//! runs as a chain of requests from its initiator: each request carries the
//! initiator's next [`Msg`] ([`Message::AntiEntropy`]), and its response the
//! responder's next one ([`Message::AntiEntropyReply`], empty when the
//! responder's side ended without a message, e.g. after the initiator's last
//! `Versions`). A session that repairs something takes at most four
//! requests with the default 1024-bucket trees; one between equal replicas
//! takes one. The responder does all the work a request causes (scans,
//! merges) before it answers, so when the initiator's session ends both
//! sides have merged: that is what lets `CLUSTER REPAIR` answer "done".
//!
//! The responder keeps its half of each session in a map keyed by (peer,
//! session id), dropped when the session ends or after
//! [`RESPONDER_IDLE`] without a message (an initiator that died). At most
//! [`MAX_RESPONDERS`] run at once; an opening past that, or for a partition
//! whose tree is not built yet or that this node does not own, is answered
//! with an `Abort`.
//!
//! # Safety of merges
//!
//! Every set received is merged with [`Replica::merge_remote`] (the sibling
//! set merge: idempotent, commutative, associative), never stored blindly,
//! and only if its key hashes into the session's partition (others are
//! dropped and counted: a peer's bug must not plant keys elsewhere). Deletes
//! and expiry cannot be undone by a merge: a tombstone supersedes the values
//! it was written over, so a replica still holding an old value receives the
//! tombstone and the value is dropped. Expired values travel like any other
//! version (they read as absent everywhere); each replica's active expiry
//! turns them into tombstones with its own actor, and those tombstones merge
//! as concurrent siblings of each other, after which no replica has anything
//! left to expire: the next round finds equal roots and stops there (the
//! unit test `expiry_on_both_sides_converges_without_resurrection` runs
//! this). The one way to resurrect is a tombstone purged by compaction on
//! one replica while another still holds the value it deleted. So a round
//! also records, per partition and peer, when the two last compared equal
//! roots, and moves the partition's tombstone GC horizon to the oldest of
//! those times over every other owner ([`AntiEntropy::advance_horizons`]):
//! compaction purges a tombstone only once it is older than both the grace
//! period (10 days by default, as Cassandra's) and that horizon, that is,
//! only once every replica is known to have it.
//!
//! # Rate and yielding
//!
//! - One node-wide token bucket ([`TokenBucket`], `--anti-entropy-bytes-per-sec`,
//!   default 8 MiB/s) is charged with every byte sent and received and every
//!   byte a scan reads from storage (bucket listings, tree checks). The
//!   initiator waits out the debt before its next request; a responder only
//!   charges (its initiator paces the exchange), so its own rounds slow down.
//! - Scans, loads and merges run on blocking threads, never on the async
//!   threads that serve clients; merges go in batches of [`MERGE_BATCH`].
//! - A node initiates one session at a time, and periodic rounds pause after
//!   each session for as long as it took, so anti-entropy keeps at most
//!   about half of one core busy on the initiating side.
//! - A session compares at most 256 buckets
//!   ([`SessionLimits::max_buckets_per_round`]) and a `Versions` message
//!   carries at most [`MAX_VERSIONS_BYTES`] of sets; what does not fit waits
//!   for the next round, so one far-behind replica cannot make one huge
//!   message.
//!
//! The start-up build is not charged to the bucket: it is one scan per
//! partition, on one blocking thread, like the key count at open.
//!
//! # Departures
//!
//! Dynamo leaves the exchange unspecified; Riak's AAE exchanges run between
//! vnode pairs on a timer with a concurrency limit, much like here. Unlike
//! Riak, trees are not persisted (rebuilt at start-up), and unlike
//! Cassandra's repair, nothing is streamed by range: only differing keys.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cluster_node::ClusterHandle;
use super::keyspace::layout::{self, PartitionId};
use super::keyspace::replica::{Key, Replica};
use super::keyspace::Keyspace;
use crate::cluster::anti_entropy::{
    AntiEntropySession, Body, BucketKeys, Effect, Msg, Outcome, SessionId, SessionLimits,
    SessionReport, VersionEntry,
};
use crate::cluster::merkle::BucketIndex;
use crate::cluster::messages::{AntiEntropyReply, Message};
use crate::cluster::ring::{NodeId, Ring};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Reply;
use crate::version::SiblingSet;

/// A responder session with no message for this long is dropped.
pub const RESPONDER_IDLE: Duration = Duration::from_secs(60);

/// Most responder sessions at once.
pub const MAX_RESPONDERS: usize = 16;

/// Longest one request of a session may take (the responder may scan a
/// partition and merge before it answers).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of sibling sets in one `Versions` message (the transport's
/// frames are at most 64 MiB).
pub const MAX_VERSIONS_BYTES: usize = 32 << 20;

/// Sets merged per blocking call.
pub const MERGE_BATCH: usize = 256;

/// How long after a start a partition with no other owner may have its
/// tombstone GC horizon moved: a restarted node sees only itself until
/// gossip finds the others, and must not take that for a cluster of one.
pub const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(30);

/// How long `CLUSTER REPAIR` waits for a partition's tree to be built.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Settings of the anti-entropy task.
#[derive(Clone, Debug)]
pub struct AntiEntropyConfig {
    /// Time between periodic rounds; zero turns them off. Default 10 s.
    pub interval: Duration,
    /// Node-wide byte rate (sent, received, scanned); 0 = unlimited.
    /// Default 8 MiB/s.
    pub bytes_per_sec: u64,
    /// Bounds on one session. Default: [`SessionLimits::default`].
    pub limits: SessionLimits,
}

impl AntiEntropyConfig {
    /// The settings from the node's configuration.
    pub fn from_config(config: &Config) -> AntiEntropyConfig {
        AntiEntropyConfig {
            interval: Duration::from_millis(config.anti_entropy_interval_ms),
            bytes_per_sec: config.anti_entropy_bytes_per_sec,
            limits: SessionLimits::default(),
        }
    }
}

/// A token bucket that may go into debt: a caller charges what it moved
/// (after the fact, when sizes are only known then) and waits as long as the
/// bucket says.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: f64,
    /// Most tokens saved up while idle: a quarter second of rate.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `bytes_per_sec` (0 = unlimited).
    pub fn new(bytes_per_sec: u64, now: Instant) -> TokenBucket {
        let rate = bytes_per_sec as f64;
        let burst = rate / 4.0;
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` at `now`; returns how long to wait before moving more
    /// (zero while the bucket is not in debt).
    pub fn charge(&mut self, now: Instant, bytes: u64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The other owner a periodic round syncs `partition` with: the live owners
/// other than `me`, in ring order, taken in turn from round to round (and
/// offset by the partition, so one round spreads over all peers).
pub fn pick_peer(
    owners: &[NodeId],
    me: NodeId,
    live: &[NodeId],
    round: u64,
    partition: u32,
) -> Option<NodeId> {
    let candidates: Vec<NodeId> = owners
        .iter()
        .copied()
        .filter(|id| *id != me && live.contains(id))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let turn = round.wrapping_add(u64::from(partition)) % candidates.len() as u64;
    Some(candidates[turn as usize])
}

/// The sets of `entries` whose keys are in `partition` (of `partitions`),
/// and how many were not.
pub fn keep_own_keys(
    partition: PartitionId,
    partitions: u32,
    entries: Vec<VersionEntry>,
) -> (Vec<VersionEntry>, usize) {
    let before = entries.len();
    let own: Vec<VersionEntry> = entries
        .into_iter()
        .filter(|e| layout::partition_of(layout::key_hash(&e.key), partitions) == partition)
        .collect();
    let foreign = before - own.len();
    (own, foreign)
}

/// Counters for `INFO cluster`.
#[derive(Debug, Default)]
struct Counters {
    rounds: AtomicU64,
    sessions_initiated: AtomicU64,
    sessions_served: AtomicU64,
    in_sync: AtomicU64,
    repaired: AtomicU64,
    aborted: AtomicU64,
    keys_exchanged: AtomicU64,
    keys_merged: AtomicU64,
    foreign_keys_dropped: AtomicU64,
    bad_sets_dropped: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_scanned: AtomicU64,
    skipped_not_ready: AtomicU64,
}

/// What one side's step of a session produced.
#[derive(Default)]
struct Step {
    send: Option<Msg>,
    done: Option<SessionReport>,
}

/// A responder's half of a session, between two requests.
struct Responder {
    session: AntiEntropySession,
    last_seen: Instant,
}

/// The replica side of anti-entropy: runs sessions' effects against this
/// node's storage, and keeps the responder sessions. Knows nothing of the
/// ring or the transport, so two of them can be driven against each other
/// in a test.
pub struct LocalSide {
    keyspace: Keyspace,
    limits: SessionLimits,
    bucket: Mutex<TokenBucket>,
    responders: Mutex<HashMap<(NodeId, SessionId), Responder>>,
    last_abort: Mutex<Option<String>>,
    counters: Counters,
}

impl LocalSide {
    /// The replica side over `keyspace`.
    pub fn new(keyspace: Keyspace, config: &AntiEntropyConfig) -> LocalSide {
        LocalSide {
            keyspace,
            limits: config.limits,
            bucket: Mutex::new(TokenBucket::new(config.bytes_per_sec, Instant::now())),
            responders: Mutex::new(HashMap::new()),
            last_abort: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    fn replica(&self) -> &Replica {
        self.keyspace.replica()
    }

    /// The layout partition of a partition number from the wire.
    fn partition(&self, number: u32) -> Option<PartitionId> {
        u16::try_from(number)
            .ok()
            .filter(|_| number < self.replica().partitions())
            .map(PartitionId)
    }

    /// Runs one session for `partition` as its initiator. `exchange` sends
    /// one encoded request (a [`Message::AntiEntropy`]) to the peer and
    /// returns its encoded answer. The report's byte counts are the real
    /// frame payloads.
    pub async fn initiate<F, Fut>(&self, partition: PartitionId, mut exchange: F) -> SessionReport
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, String>>,
    {
        let id = SessionId(rand::random());
        let number = u32::from(partition.0);
        let limits = self.limits;
        let started = self.replica().merkle().with_tree(partition, |t| {
            AntiEntropySession::start(id, number, limits, t)
        });
        let Some((mut session, first)) = started else {
            self.counters.skipped_not_ready.fetch_add(1, Relaxed);
            return SessionReport {
                session: id,
                partition: number,
                outcome: Outcome::Aborted("this node's tree is not built yet".into()),
                buckets_compared: 0,
                keys_exchanged: 0,
                bytes_sent: 0,
                bytes_received: 0,
                messages_sent: 0,
                messages_received: 0,
            };
        };
        self.counters.sessions_initiated.fetch_add(1, Relaxed);
        let (mut sent, mut received) = (0usize, 0usize);
        let mut outgoing = Some(first);
        let mut report = None;
        while let Some(msg) = outgoing.take() {
            let request = Bytes::from(Message::AntiEntropy(msg).encode());
            sent += request.len();
            self.pace(request.len() as u64).await;
            let answer = match exchange(request).await {
                Ok(answer) => answer,
                Err(e) => {
                    // The Abort cannot reach a peer we cannot reach; its
                    // half of the session times out there.
                    report = done_of(session.cancel(format!("exchange failed: {e}")));
                    break;
                }
            };
            received += answer.len();
            self.pace(answer.len() as u64).await;
            if session.is_finished() {
                // That was our last message; the answer only acknowledges it.
                break;
            }
            let effects = match Message::decode(&answer) {
                Ok(Message::AntiEntropyReply(AntiEntropyReply { msg: Some(reply) })) => {
                    let tree_step = self
                        .replica()
                        .merkle()
                        .with_tree(partition, |t| session.on_message(reply, t));
                    match tree_step {
                        Some(effects) => effects,
                        None => session.cancel("this node's tree is being rebuilt".into()),
                    }
                }
                Ok(Message::AntiEntropyReply(AntiEntropyReply { msg: None })) => {
                    session.cancel("the peer ended the session without an answer".into())
                }
                Ok(other) => session.cancel(format!("the peer answered '{}'", other.kind())),
                Err(e) => session.cancel(format!("the peer answered garbage: {e}")),
            };
            let step = self.drive(partition, &mut session, effects).await;
            outgoing = step.send;
            if step.done.is_some() {
                report = step.done;
            }
        }
        let mut report = report.unwrap_or_else(|| {
            done_of(session.cancel("the session ended unfinished".into()))
                .unwrap_or_else(|| session.report().clone())
        });
        report.bytes_sent = sent;
        report.bytes_received = received;
        self.counters.bytes_sent.fetch_add(sent as u64, Relaxed);
        self.counters
            .bytes_received
            .fetch_add(received as u64, Relaxed);
        self.record(&report);
        report
    }

    /// Serves one request of a session this node answers; returns the
    /// encoded [`Message::AntiEntropyReply`]. `request_bytes` is the size of
    /// the request's payload (for the counters and the rate).
    pub async fn serve(&self, from: NodeId, msg: Msg, request_bytes: usize) -> Bytes {
        let reply = self.respond(from, msg).await;
        let answer =
            Bytes::from(Message::AntiEntropyReply(AntiEntropyReply { msg: reply }).encode());
        self.counters
            .bytes_received
            .fetch_add(request_bytes as u64, Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(answer.len() as u64, Relaxed);
        // Charged, not waited for: the initiator paces the exchange.
        self.bucket
            .lock()
            .charge(Instant::now(), (request_bytes + answer.len()) as u64);
        answer
    }

    async fn respond(&self, from: NodeId, msg: Msg) -> Option<Msg> {
        let Some(partition) = self.partition(msg.partition) else {
            return refuse(&msg, format!("no partition {} here", msg.partition));
        };
        let key = (from, msg.session);
        let opened = if matches!(msg.body, Body::Root { .. }) {
            self.sweep_idle(Instant::now());
            let mut responders = self.responders.lock();
            // A repeated opening restarts the session.
            responders.remove(&key);
            if responders.len() >= MAX_RESPONDERS {
                return refuse(&msg, "busy: too many anti-entropy sessions".into());
            }
            drop(responders);
            let limits = self.limits;
            let opening = msg.clone();
            match self.replica().merkle().with_tree(partition, |t| {
                AntiEntropySession::respond(opening, limits, t)
            }) {
                Some(opened) => {
                    self.counters.sessions_served.fetch_add(1, Relaxed);
                    opened
                }
                None => return refuse(&msg, "tree not built yet".into()),
            }
        } else {
            let Some(Responder { mut session, .. }) = self.responders.lock().remove(&key) else {
                return refuse(&msg, "unknown or expired session".into());
            };
            let effects = match self
                .replica()
                .merkle()
                .with_tree(partition, |t| session.on_message(msg, t))
            {
                Some(effects) => effects,
                None => session.cancel("tree is being rebuilt".into()),
            };
            (session, effects)
        };
        let (mut session, effects) = opened;
        let step = self.drive(partition, &mut session, effects).await;
        match &step.done {
            Some(report) => self.record(report),
            None => {
                self.responders.lock().insert(
                    key,
                    Responder {
                        session,
                        last_seen: Instant::now(),
                    },
                );
            }
        }
        step.send
    }

    /// Drops responder sessions idle since before `now - RESPONDER_IDLE`.
    pub fn sweep_idle(&self, now: Instant) {
        let mut responders = self.responders.lock();
        let before = responders.len();
        responders.retain(|_, r| now.saturating_duration_since(r.last_seen) < RESPONDER_IDLE);
        let dropped = before - responders.len();
        if dropped > 0 {
            self.counters.aborted.fetch_add(dropped as u64, Relaxed);
            debug!(dropped, "dropped idle anti-entropy sessions");
        }
    }

    /// Carries out a session's effects until it has a message to send, or
    /// ended.
    async fn drive(
        &self,
        partition: PartitionId,
        session: &mut AntiEntropySession,
        effects: Vec<Effect>,
    ) -> Step {
        let mut queue: VecDeque<Effect> = effects.into();
        let mut step = Step::default();
        while let Some(effect) = queue.pop_front() {
            let failed = match effect {
                Effect::Send(msg) => {
                    step.send = Some(msg);
                    None
                }
                Effect::Done(report) => {
                    step.done = Some(report);
                    None
                }
                Effect::LoadBucketKeys { buckets } => {
                    match self.load_bucket_keys(partition, buckets).await {
                        Ok(lists) => {
                            queue.extend(session.on_bucket_keys(lists));
                            None
                        }
                        Err(e) => Some(format!("listing bucket keys failed: {e}")),
                    }
                }
                Effect::LoadVersions { keys } => match self.load_versions(keys).await {
                    Ok(loaded) => {
                        queue.extend(session.on_versions(loaded));
                        None
                    }
                    Err(e) => Some(format!("loading versions failed: {e}")),
                },
                Effect::Merge { entries } => match self.merge(partition, entries).await {
                    Ok(()) => None,
                    Err(e) => Some(format!("merging failed: {e}")),
                },
            };
            if let Some(reason) = failed {
                warn!(partition = partition.0, %reason, "anti-entropy session given up");
                queue.clear();
                queue.extend(session.cancel(reason));
            }
        }
        step
    }

    /// One scan of the partition: the keys (with fingerprints) of `buckets`.
    async fn load_bucket_keys(
        &self,
        partition: PartitionId,
        buckets: Vec<BucketIndex>,
    ) -> Result<Vec<BucketKeys>> {
        let (lists, scanned) = self
            .blocking(move |replica| {
                let shape = replica.merkle().shape();
                let mut scanned = 0u64;
                let mut failed = None;
                let entries = replica.partition_entries(partition)?;
                let scan = entries
                    .map_while(|entry| match entry {
                        Ok(kv) => Some(kv),
                        Err(e) => {
                            failed = Some(e);
                            None
                        }
                    })
                    .map(|(key, value)| {
                        scanned += (key.len() + value.len()) as u64;
                        (layout::key_hash(&key), key, value)
                    });
                let lists = BucketKeys::from_scan(shape, &buckets, scan);
                match failed {
                    Some(e) => Err(e),
                    None => Ok((lists, scanned)),
                }
            })
            .await?;
        self.counters.bytes_scanned.fetch_add(scanned, Relaxed);
        self.pace(scanned).await;
        Ok(lists)
    }

    /// The stored sets of `keys` (absent ones skipped), at most
    /// [`MAX_VERSIONS_BYTES`] of them (at least one): the rest waits for the
    /// next round.
    async fn load_versions(&self, keys: Vec<Vec<u8>>) -> Result<Vec<VersionEntry>> {
        self.blocking(move |replica| {
            let mut loaded = Vec::new();
            let mut bytes = 0usize;
            for key in keys {
                if bytes >= MAX_VERSIONS_BYTES {
                    break;
                }
                if let Some(set) = replica.read_encoded(Key::new(&key))? {
                    bytes += key.len() + set.len();
                    loaded.push(VersionEntry {
                        key,
                        sibling_set: set.to_vec(),
                    });
                }
            }
            Ok(loaded)
        })
        .await
    }

    /// Merges the peer's sets into the replica, in batches; keys outside
    /// `partition` and sets that do not decode are dropped and counted.
    async fn merge(&self, partition: PartitionId, entries: Vec<VersionEntry>) -> Result<()> {
        let partitions = self.replica().partitions();
        let (own, foreign) = keep_own_keys(partition, partitions, entries);
        if foreign > 0 {
            self.counters
                .foreign_keys_dropped
                .fetch_add(foreign as u64, Relaxed);
            warn!(
                partition = partition.0,
                foreign, "anti-entropy peer sent keys of other partitions; dropped"
            );
        }
        let mut rest = own.into_iter().peekable();
        while rest.peek().is_some() {
            let batch: Vec<VersionEntry> = rest.by_ref().take(MERGE_BATCH).collect();
            let (merged, bad) = self
                .blocking(move |replica| {
                    let (mut merged, mut bad) = (0u64, 0u64);
                    for entry in batch {
                        let set = match SiblingSet::decode(&entry.sibling_set) {
                            Ok(set) => set,
                            Err(e) => {
                                bad += 1;
                                warn!(key = %String::from_utf8_lossy(&entry.key), error = %e, "anti-entropy peer sent a set that does not decode; dropped");
                                continue;
                            }
                        };
                        if replica.merge_remote(Key::new(&entry.key), set)?.is_some() {
                            merged += 1;
                        }
                    }
                    Ok((merged, bad))
                })
                .await?;
            self.counters.keys_merged.fetch_add(merged, Relaxed);
            self.counters.bad_sets_dropped.fetch_add(bad, Relaxed);
        }
        Ok(())
    }

    /// Checks one partition's tree against a scan (building it if needed),
    /// charging the scan to the rate. Returns the drifted buckets.
    pub async fn check_tree(&self, partition: PartitionId) -> Result<Vec<BucketIndex>> {
        let scanned = self
            .blocking(move |replica| replica.check_tree(partition))
            .await?;
        self.counters
            .bytes_scanned
            .fetch_add(scanned.bytes, Relaxed);
        if !scanned.drifted.is_empty() {
            warn!(
                partition = partition.0,
                buckets = scanned.drifted.len(),
                "merkle tree had drifted from the data; corrected"
            );
        }
        self.pace(scanned.bytes).await;
        Ok(scanned.drifted)
    }

    /// Builds every partition's tree, one after the other (see the module
    /// doc); stops early when `stop` fires.
    pub async fn build_all(&self, stop: &CancellationToken) {
        let started = Instant::now();
        let mut keys = 0u64;
        for p in 0..self.replica().partitions() {
            if stop.is_cancelled() {
                return;
            }
            let partition = PartitionId(p as u16);
            match self
                .blocking(move |replica| replica.build_tree(partition))
                .await
            {
                Ok(scanned) => keys += scanned.keys,
                Err(e) if stop.is_cancelled() => {
                    debug!(error = %e, "tree build stopped by shutdown");
                    return;
                }
                Err(e) => {
                    warn!(partition = p, error = %e, "building a merkle tree failed; anti-entropy skips it until a check rebuilds it")
                }
            }
        }
        info!(
            partitions = self.replica().partitions(),
            keys,
            took_ms = started.elapsed().as_millis() as u64,
            "merkle trees built"
        );
    }

    async fn pace(&self, bytes: u64) {
        let wait = self.bucket.lock().charge(Instant::now(), bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Replica) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let keyspace = self.keyspace.clone();
        match tokio::task::spawn_blocking(move || work(keyspace.replica())).await {
            Ok(result) => result,
            Err(e) => Err(Error::invalid(format!("anti-entropy task failed: {e}"))),
        }
    }

    fn record(&self, report: &SessionReport) {
        let c = &self.counters;
        c.keys_exchanged
            .fetch_add(report.keys_exchanged as u64, Relaxed);
        match &report.outcome {
            Outcome::InSync => c.in_sync.fetch_add(1, Relaxed),
            Outcome::Repaired => c.repaired.fetch_add(1, Relaxed),
            Outcome::Aborted(reason) => {
                debug!(partition = report.partition, %reason, "anti-entropy session aborted");
                *self.last_abort.lock() = Some(reason.clone());
                c.aborted.fetch_add(1, Relaxed)
            }
        };
    }
}

/// The `Done` report among `effects`.
fn done_of(effects: Vec<Effect>) -> Option<SessionReport> {
    effects.into_iter().find_map(|e| match e {
        Effect::Done(report) => Some(report),
        _ => None,
    })
}

/// An `Abort` answering `msg` outside any session (never one answering an
/// `Abort`).
fn refuse(msg: &Msg, reason: String) -> Option<Msg> {
    if matches!(msg.body, Body::Abort { .. }) {
        return None;
    }
    Some(Msg {
        session: msg.session,
        partition: msg.partition,
        body: Body::Abort { reason },
    })
}

/// What `CLUSTER REPAIR` (or a periodic round) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundSummary {
    pub partitions: usize,
    pub sessions: usize,
    pub in_sync: usize,
    pub repaired: usize,
    pub aborted: usize,
    pub keys_exchanged: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
    pub last_abort: Option<String>,
}

impl RoundSummary {
    /// Counts one session's report in.
    pub fn add(&mut self, report: &SessionReport) {
        self.sessions += 1;
        self.keys_exchanged += report.keys_exchanged;
        self.bytes_sent += report.bytes_sent;
        self.bytes_received += report.bytes_received;
        match &report.outcome {
            Outcome::InSync => self.in_sync += 1,
            Outcome::Repaired => self.repaired += 1,
            Outcome::Aborted(reason) => {
                self.aborted += 1;
                self.last_abort = Some(reason.clone());
            }
        }
    }

    /// The `CLUSTER REPAIR` answer: `field:value` lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (k, v) in [
            ("partitions", self.partitions),
            ("sessions", self.sessions),
            ("in_sync", self.in_sync),
            ("repaired", self.repaired),
            ("aborted", self.aborted),
            ("keys_exchanged", self.keys_exchanged),
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
        ] {
            let _ = write!(out, "{k}:{v}\r\n");
        }
        let _ = write!(
            out,
            "last_abort:{}\r\n",
            self.last_abort.as_deref().unwrap_or("none")
        );
        out
    }
}

/// A peer to sync with: its id and internode address.
type Peer = (NodeId, SocketAddr);

/// Which peers a round syncs each partition with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// One live owner, taken in turn (periodic rounds).
    OnePeer,
    /// Every other live owner (`CLUSTER REPAIR`).
    EveryPeer,
}

/// This node's anti-entropy: the background task, the peer-side handler
/// and the commands. See the module doc.
pub struct AntiEntropy {
    local: LocalSide,
    cluster: ClusterHandle,
    config: AntiEntropyConfig,
    /// One initiated session at a time (periodic or manual).
    initiating: tokio::sync::Mutex<()>,
    check_cursor: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
    /// When this node last compared equal roots with each peer, per
    /// partition: the wall-clock ms at the start of that session.
    in_sync_at: Mutex<HashMap<(u16, NodeId), u64>>,
    started: Instant,
}

impl AntiEntropy {
    /// Starts the task: build the trees, then run rounds every interval.
    /// It ends when the cluster node shuts down.
    pub fn start(
        keyspace: Keyspace,
        cluster: ClusterHandle,
        config: AntiEntropyConfig,
    ) -> Arc<AntiEntropy> {
        let this = Arc::new(AntiEntropy {
            local: LocalSide::new(keyspace, &config),
            cluster,
            config,
            initiating: tokio::sync::Mutex::new(()),
            check_cursor: AtomicU64::new(0),
            task: Mutex::new(None),
            in_sync_at: Mutex::new(HashMap::new()),
            started: Instant::now(),
        });
        let task = tokio::spawn(run(this.clone()));
        *this.task.lock() = Some(task);
        this
    }

    /// Waits for the task to end (after the cluster node's shutdown).
    pub async fn stop(&self) {
        let task = self.task.lock().take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                debug!(error = %e, "anti-entropy task ended abnormally");
            }
        }
    }

    /// Serves an anti-entropy request from `from` (the peer handler's entry
    /// point); the answer is the encoded reply.
    pub fn serve(
        self: Arc<Self>,
        from: NodeId,
        msg: Msg,
        request_bytes: usize,
    ) -> BoxFuture<'static, Option<Bytes>> {
        Box::pin(async move {
            if matches!(msg.body, Body::Root { .. }) && !self.owns(msg.partition) {
                let refusal = refuse(&msg, format!("not an owner of partition {}", msg.partition));
                return Some(Bytes::from(
                    Message::AntiEntropyReply(AntiEntropyReply { msg: refusal }).encode(),
                ));
            }
            Some(self.local.serve(from, msg, request_bytes).await)
        })
    }

    /// The replica side (for tests and tools).
    pub fn local(&self) -> &LocalSide {
        &self.local
    }

    fn replica(&self) -> &Replica {
        self.local.replica()
    }

    /// The current ring, rebuilt only when the membership's view moved.
    fn ring(&self) -> Result<Arc<Ring>> {
        Ok(self.cluster.ring())
    }

    /// Whether the ring makes this node an owner of partition `number`.
    fn owns(&self, number: u32) -> bool {
        let me = self.cluster.id();
        self.ring().is_ok_and(|ring| {
            number < ring.partitions()
                && ring
                    .owners(crate::cluster::ring::PartitionId(number))
                    .contains(&me)
        })
    }

    /// For each partition to sync (`only`, or every partition this node
    /// owns), the peers to sync it with and their addresses.
    fn plan(
        &self,
        only: Option<PartitionId>,
        reach: Reach,
        round: u64,
    ) -> Result<Vec<(PartitionId, Vec<Peer>)>> {
        let me = self.cluster.id();
        let partitions = self.replica().partitions();
        let ring = self.ring()?;
        self.cluster.with_membership(|m| {
            if ring.partitions() != partitions {
                return Err(Error::invalid(format!(
                    "the ring has {} partitions but the data directory {partitions}; anti-entropy is off",
                    ring.partitions()
                )));
            }
            let live: Vec<NodeId> = m
                .members()
                .filter(|x| m.is_live(x.id))
                .map(|x| x.id)
                .collect();
            let addr = |id: NodeId| {
                m.member(id)
                    .and_then(|x| x.peer_addr.parse::<SocketAddr>().ok())
                    .map(|a| (id, a))
            };
            let mut plan = Vec::new();
            for p in ring.partitions_of(me) {
                let partition = PartitionId(p.0 as u16);
                if only.is_some_and(|o| o != partition) {
                    continue;
                }
                let owners = ring.owners(p);
                let peers: Vec<Peer> = match reach {
                    Reach::OnePeer => pick_peer(owners, me, &live, round, p.0)
                        .and_then(addr)
                        .into_iter()
                        .collect(),
                    Reach::EveryPeer => owners
                        .iter()
                        .filter(|id| **id != me && live.contains(id))
                        .filter_map(|id| addr(*id))
                        .collect(),
                };
                plan.push((partition, peers));
            }
            Ok(plan)
        })
    }

    /// One session with `peer` for `partition`, as the initiator.
    async fn sync(&self, partition: PartitionId, addr: SocketAddr) -> SessionReport {
        let _one = self.initiating.lock().await;
        let peers = self.cluster.peers();
        self.local
            .initiate(partition, |request| async move {
                peers
                    .request(addr, request, STEP_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    /// A round over `only` (or every owned partition); see the module doc.
    async fn round(
        &self,
        only: Option<PartitionId>,
        reach: Reach,
        stop: &CancellationToken,
    ) -> Result<RoundSummary> {
        let round = self.local.counters.rounds.fetch_add(1, Relaxed);
        let plan = self.plan(only, reach, round)?;
        let mut summary = RoundSummary {
            partitions: plan.len(),
            ..RoundSummary::default()
        };
        for (partition, peers) in plan {
            if reach == Reach::EveryPeer {
                self.wait_ready(partition, stop).await;
            }
            for (peer, addr) in peers {
                if stop.is_cancelled() {
                    return Ok(summary);
                }
                let started = Instant::now();
                let started_ms = crate::server::keyspace::now_ms();
                let report = self.sync(partition, addr).await;
                match &report.outcome {
                    Outcome::Aborted(reason) => {
                        debug!(partition = partition.0, peer = %peer.short(), %reason, "anti-entropy session aborted");
                    }
                    Outcome::InSync => {
                        self.in_sync_at
                            .lock()
                            .insert((partition.0, peer), started_ms);
                    }
                    Outcome::Repaired => {}
                }
                summary.add(&report);
                if reach == Reach::OnePeer {
                    // Yield: idle as long as the session worked.
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(summary),
                        _ = tokio::time::sleep(started.elapsed()) => {}
                    }
                }
            }
        }
        self.advance_horizons();
        Ok(summary)
    }

    /// Moves each owned partition's tombstone GC horizon (see
    /// [`GcHorizon`](super::keyspace::expiry::GcHorizon)) to the oldest of
    /// the times this node last found equal roots with each other owner: a
    /// tombstone written before that is on every replica, so purging it
    /// cannot let another replica bring the deleted value back. An owner
    /// never compared with (a new one, or one down since this node started)
    /// holds it at 0. A partition with no other owner (a single node) has
    /// nothing to wait for, but only once membership has had
    /// [`MEMBERSHIP_SETTLE`] to find the rest of the cluster after a start.
    fn advance_horizons(&self) {
        let Some(horizon) = self.local.keyspace.gc_horizon() else {
            return;
        };
        let Ok(ring) = self.ring() else {
            return;
        };
        if self.started.elapsed() < MEMBERSHIP_SETTLE {
            return;
        }
        let me = self.cluster.id();
        let now = crate::server::keyspace::now_ms();
        let in_sync = self.in_sync_at.lock();
        for p in ring.partitions_of(me) {
            let partition = PartitionId(p.0 as u16);
            let at = ring
                .owners(p)
                .iter()
                .filter(|o| **o != me)
                .map(|o| in_sync.get(&(partition.0, *o)).copied().unwrap_or(0))
                .fold(now, u64::min);
            horizon.set(partition, at);
        }
    }

    async fn wait_ready(&self, partition: PartitionId, stop: &CancellationToken) {
        let deadline = Instant::now() + READY_WAIT;
        while !self.replica().merkle().is_ready(partition)
            && Instant::now() < deadline
            && !stop.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks the next partition's tree (round-robin over all of them).
    async fn check_next(&self) {
        let partitions = u64::from(self.replica().partitions());
        let p = self.check_cursor.fetch_add(1, Relaxed) % partitions.max(1);
        let partition = PartitionId(p as u16);
        if let Err(e) = self.local.check_tree(partition).await {
            warn!(partition = p, error = %e, "checking a merkle tree failed");
        }
    }

    /// `CLUSTER REPAIR [partition]`: a round now, with every other live
    /// owner; the answer is the round's summary.
    pub async fn repair_command(&self, args: &[Bytes]) -> Reply {
        if args.len() > 3 {
            return Reply::err("syntax error");
        }
        let only = match args.get(2) {
            None => None,
            Some(arg) => match self.parse_partition(arg) {
                Ok(p) => Some(p),
                Err(reply) => return reply,
            },
        };
        if let Some(p) = only {
            if !self.owns(u32::from(p.0)) {
                return Reply::err(format!("this node does not own partition {}", p.0));
            }
        }
        let stop = self.cluster.shutdown_token();
        match self.round(only, Reach::EveryPeer, &stop).await {
            Ok(summary) => Reply::Verbatim(summary.text()),
            Err(e) => e.into(),
        }
    }

    /// `CLUSTER MERKLE [partition]`: the root of one partition's tree (hex),
    /// or `partition root` lines for every partition this node owns
    /// (`building` for a tree not built yet).
    pub fn merkle_command(&self, args: &[Bytes]) -> Reply {
        if args.len() > 3 {
            return Reply::err("syntax error");
        }
        let merkle = self.replica().merkle();
        if let Some(arg) = args.get(2) {
            let p = match self.parse_partition(arg) {
                Ok(p) => p,
                Err(reply) => return reply,
            };
            return match merkle.root(p) {
                Some(root) => Reply::bulk(hex(&root.0)),
                None => Reply::err(format!(
                    "the merkle tree of partition {} is still being built",
                    p.0
                )),
            };
        }
        let me = self.cluster.id();
        let owned = match self.ring() {
            Ok(ring) => ring.partitions_of(me),
            Err(e) => return e.into(),
        };
        let rows = owned
            .into_iter()
            .filter(|p| p.0 < merkle.partitions())
            .map(|p| {
                let root = merkle.root(PartitionId(p.0 as u16));
                let shown = root.map_or_else(|| "building".to_string(), |r| hex(&r.0));
                Reply::bulk(format!("{} {shown}", p.0))
            })
            .collect();
        Reply::Array(rows)
    }

    fn parse_partition(&self, arg: &[u8]) -> std::result::Result<PartitionId, Reply> {
        let q = self.replica().partitions();
        std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|p| *p < q)
            .map(|p| PartitionId(p as u16))
            .ok_or_else(|| {
                Reply::err(format!(
                    "partition must be an integer between 0 and {}",
                    q.saturating_sub(1)
                ))
            })
    }

    /// Appends the anti-entropy lines of `INFO cluster`.
    pub fn info_section(&self, out: &mut String) {
        let c = &self.local.counters;
        let merkle = self.replica().merkle();
        let m = &merkle.counters;
        let load = |a: &AtomicU64| a.load(Relaxed);
        let lines: [(&str, u64); 22] = [
            (
                "anti_entropy_interval_ms",
                self.config.interval.as_millis() as u64,
            ),
            ("anti_entropy_bytes_per_sec", self.config.bytes_per_sec),
            ("anti_entropy_trees_ready", merkle.ready_count() as u64),
            ("anti_entropy_trees", u64::from(merkle.partitions())),
            ("anti_entropy_rounds", load(&c.rounds)),
            (
                "anti_entropy_sessions_initiated",
                load(&c.sessions_initiated),
            ),
            ("anti_entropy_sessions_served", load(&c.sessions_served)),
            ("anti_entropy_sessions_in_sync", load(&c.in_sync)),
            ("anti_entropy_sessions_repaired", load(&c.repaired)),
            ("anti_entropy_sessions_aborted", load(&c.aborted)),
            (
                "anti_entropy_sessions_skipped_not_ready",
                load(&c.skipped_not_ready),
            ),
            ("anti_entropy_keys_exchanged", load(&c.keys_exchanged)),
            ("anti_entropy_keys_merged", load(&c.keys_merged)),
            (
                "anti_entropy_foreign_keys_dropped",
                load(&c.foreign_keys_dropped),
            ),
            ("anti_entropy_bad_sets_dropped", load(&c.bad_sets_dropped)),
            ("anti_entropy_bytes_sent", load(&c.bytes_sent)),
            ("anti_entropy_bytes_received", load(&c.bytes_received)),
            ("anti_entropy_bytes_scanned", load(&c.bytes_scanned)),
            ("anti_entropy_tree_rebuilds", load(&m.builds)),
            ("anti_entropy_tree_checks", load(&m.checks)),
            ("anti_entropy_tree_drift_repairs", load(&m.drift_repairs)),
            (
                "anti_entropy_responder_sessions",
                self.local.responders.lock().len() as u64,
            ),
        ];
        for (name, value) in lines {
            let _ = write!(out, "{name}:{value}\r\n");
        }
        let last = self.local.last_abort.lock().clone();
        let _ = write!(
            out,
            "anti_entropy_last_abort:{}\r\n",
            last.as_deref()
                .map(one_line)
                .unwrap_or_else(|| "none".into())
        );
    }
}

/// The task: build the trees, then a round every interval.
async fn run(ae: Arc<AntiEntropy>) {
    let stop = ae.cluster.shutdown_token();
    ae.local.build_all(&stop).await;
    let mut tick = tokio::time::interval(ae.config.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the first round waits an interval.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        ae.local.sweep_idle(Instant::now());
        if ae.config.interval.is_zero() {
            continue;
        }
        match ae.round(None, Reach::OnePeer, &stop).await {
            Ok(summary) if summary.repaired > 0 => info!(
                repaired = summary.repaired,
                keys = summary.keys_exchanged,
                bytes_sent = summary.bytes_sent,
                bytes_received = summary.bytes_received,
                "anti-entropy round repaired replicas"
            ),
            Ok(_) => {}
            Err(e) => debug!(error = %e, "anti-entropy round skipped"),
        }
        if !stop.is_cancelled() {
            ae.check_next().await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `text` with CR/LF made spaces, for an `INFO` line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
