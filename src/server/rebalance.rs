//! Rebalancing on join and leave, the doing half: streams the partitions
//! the [`Planner`] picks to their new owners, and drops handed-off
//! partitions once every owner confirmed having them.
//!
//! # One round
//!
//! ```text
//! wake: the membership's view moved (then wait SETTLE = 3 gossip intervals,
//!       so every node's ring agrees first), or ROUND_EVERY (5 s) passed,
//!       or the last round moved something (run again at once to confirm)
//! skip: while the ring is this node alone, for its first ALONE_GRACE (30 s)
//!       (a node that just started has not found its cluster yet)
//! held  = partitions with any stored key here (one seek each, blocking thread)
//! plan  = planner.plan(ring, held, live)          // cluster::rebalance
//! for each transfer, 4 at a time, until the view moves:
//!     stream:  read ~CHUNK_BYTES of the partition (scan pages, blocking
//!              thread), send it as a StreamChunk to every target at once,
//!              wait for every StreamAck, next chunk; the last one says so.
//!              Remember (range, SHA-256 of the range's keys and sets).
//!     push:    done (the planner forgets the push)
//!     handoff: if may_drop(current ring, targets that acked everything):
//!              per range: re-read it; if its digest differs (a write raced
//!              with the stream) send it again; then compare-and-delete
//!              exactly the sets just read (Replica::drop_unchanged)
//! ```
//!
//! Every byte sent is charged to one node-wide token bucket
//! (`--stream-bytes-per-sec`, default 32 MiB/s, counted once per target),
//! and every scan, merge and delete runs on a blocking thread, so client
//! traffic keeps the async threads. At most [`PARALLEL_TRANSFERS`] (4)
//! partitions stream at once, each one chunk at a time, and a chunk is at
//! most [`CHUNK_BYTES`] (512 KiB, plus one key's set when that
//! alone is larger): chunks share the internode connection with quorum
//! requests, and a small chunk keeps the head-of-line delay it adds to them
//! short (about 4 ms at 1 Gbit/s).
//!
//! # Why drops are safe
//!
//! A key is deleted here only if (1) every current owner of its partition
//! acknowledged a chunk holding exactly the stored bytes being deleted and
//! (2) this node is not an owner in the ring at that moment. An owner
//! acknowledges a chunk only after merging it and making it durable: under
//! `fsync always` it waits for the group commit as a `Put` does, under
//! `everysec` it fsyncs its log before answering (one fsync per chunk: the
//! sender is about to delete its copy, so "a second of writes" is not an
//! acceptable loss here), under `no` it does not. A write that raced with
//! the stream changed the stored bytes, so the key is either sent again
//! (its range's digest differs) or left in place by the compare-and-delete
//! and found on the next round; a write that arrives after the drop (a
//! coordinator whose view is behind, a hint replayed to a former owner, a
//! read repair) is stored like any other, makes the partition held again,
//! and follows the same path on the next round. So nothing acknowledged to
//! a client is lost by a handoff, however writes interleave with it.
//!
//! A receiver takes a chunk only for a partition it owns in its own view
//! (else `Rejected`; the sender retries after [`RETRY_AFTER`], by which time
//! gossip has usually converged), so data never flows to a node that is
//! itself leaving, and only keys of the chunk's partition are merged.
//!
//! # While it moves
//!
//! Reads and writes keep working: coordinators route by the new ring at
//! once, so writes go to the new owners (a joiner included) while the
//! stream runs. A quorum read that asks only new owners that have not
//! received a key yet misses it until the stream delivers it: with `N = 3,
//! R = 2` a join or leave replaces one owner per partition, so any two
//! owners include one that had the data all along; with `R = 1`, or when
//! two owners of a partition change at once, a read can miss a key during
//! the stream. (Riak forwards requests to the old owner during handoff;
//! that is not done here.) Writes that do not read first (a plain `SET`)
//! supersede only what their coordinator's replica knows (DESIGN.md §3):
//! coordinated by a new owner that has not received the key yet, such a
//! write becomes a sibling of the old value instead of replacing it (the
//! integration test counts a handful per 2000 keys overwritten during a
//! join). Closing that needs the data path to read first while a
//! partition is still arriving; it does not today.
//!
//! `CLUSTER LEAVE` answers once gossip has the node's `Left` state; the node
//! then owns nothing, and its next round hands every partition it holds to
//! the owners. The operator stops it once `INFO cluster` shows
//! `rebalance_partitions_held:0` (the integration test does exactly that).
//! A node forgotten while alive (`CLUSTER FORGET`) learns its tombstone
//! from gossip and does the same.
//!
//! # What is not kept
//!
//! Progress lives in memory: a node restarted in the middle of a stream
//! starts the partition again (merges are idempotent, so that costs only
//! bandwidth), and a push a stayer owed is forgotten (anti-entropy brings
//! the new owner the data instead). A stream that fails (a target down, a
//! refusal, a timeout) is abandoned and retried whole on a later round.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use futures::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::anti_entropy::TokenBucket;
use super::cluster_node::ClusterHandle;
use super::keyspace::layout;
use super::keyspace::replica::{Key, Replica, Stored};
use super::keyspace::Keyspace;
use crate::cluster::messages::{
    Message, RemoteError, RequestId, StreamAck, StreamChunk, StreamEntry,
};
use crate::cluster::rebalance::{may_drop, Planner, StreamProgress, Transfer, TransferKind};
use crate::cluster::ring::{NodeId, PartitionId, Ring};
use crate::config::{Config, FsyncPolicy};
use crate::error::{Error, Result};
use crate::storage::SeqNo;
use crate::version::SiblingSet;

/// Most bytes of keys and sets in one chunk (one set larger than this
/// travels alone).
pub const CHUNK_BYTES: usize = 512 << 10;

/// Partitions streamed at once. Small partitions are bound by round trips
/// rather than bytes, so a few run side by side; the token bucket bounds
/// the bytes whatever this is.
pub const PARALLEL_TRANSFERS: usize = 4;

/// Keys read per scan page while a chunk is assembled.
const PAGE_KEYS: usize = 128;

/// How often the task checks whether the view moved.
const POLL: Duration = Duration::from_millis(100);

/// An idle node re-checks what it holds this often (late writes to
/// partitions it no longer owns make them held again).
const ROUND_EVERY: Duration = Duration::from_secs(5);

/// Pause after a round in which a transfer failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a ring of this node alone must last before a round plans
/// with it (see [`crate::cluster::rebalance`]: a node that just started is
/// alone until gossip finds its cluster).
pub const ALONE_GRACE: Duration = Duration::from_secs(30);

/// Gossip intervals to wait after the view moved before planning.
const SETTLE_ROUNDS: u64 = 3;

/// The rebalancing settings.
#[derive(Clone, Debug)]
pub struct RebalanceConfig {
    /// Bytes per second sent, all targets together; 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Most bytes per chunk.
    pub chunk_bytes: usize,
    /// How long one chunk may take to be acknowledged.
    pub chunk_timeout: Duration,
}

impl RebalanceConfig {
    pub fn from_config(config: &Config) -> RebalanceConfig {
        RebalanceConfig {
            bytes_per_sec: config.stream_bytes_per_sec,
            chunk_bytes: CHUNK_BYTES,
            // A chunk is a merge of many keys and an fsync on the receiver:
            // allow far more than one request's deadline.
            chunk_timeout: Duration::from_millis(config.request_timeout_ms.saturating_mul(10))
                .max(Duration::from_secs(5)),
        }
    }
}

/// Counters for `INFO cluster`.
#[derive(Debug, Default)]
struct Counters {
    rounds: AtomicU64,
    partitions_sent: AtomicU64,
    partitions_dropped: AtomicU64,
    keys_sent: AtomicU64,
    bytes_sent: AtomicU64,
    keys_dropped: AtomicU64,
    transfer_failures: AtomicU64,
    chunks_received: AtomicU64,
    keys_received: AtomicU64,
    partitions_received: AtomicU64,
    chunks_refused: AtomicU64,
}

/// What the last round saw, for `INFO cluster`.
#[derive(Debug, Default)]
struct RoundStatus {
    held: usize,
    pending: usize,
    /// The view version of the last round that found nothing to do.
    settled_view: Option<u64>,
    last_error: Option<String>,
}

/// A range of a partition as it was streamed: the keys after `after` up to
/// and including `last`, and the digest of those keys and sets.
struct SentRange {
    after: Option<Bytes>,
    last: Bytes,
    digest: [u8; 32],
}

/// This node's rebalancing: the background task, the receiving side and
/// `INFO`. See the module doc.
pub struct Rebalance {
    keyspace: Keyspace,
    cluster: ClusterHandle,
    config: RebalanceConfig,
    planner: Mutex<Planner>,
    bucket: Mutex<TokenBucket>,
    status: Mutex<RoundStatus>,
    counters: Counters,
    next_id: AtomicU64,
    /// Since when the ring has had this node alone (none: it has others).
    alone_since: Mutex<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Rebalance {
    /// Starts the background task; it ends when the cluster node shuts down.
    pub fn start(
        keyspace: Keyspace,
        cluster: ClusterHandle,
        config: RebalanceConfig,
    ) -> Arc<Rebalance> {
        let this = Arc::new(Rebalance {
            planner: Mutex::new(Planner::new(cluster.id())),
            bucket: Mutex::new(TokenBucket::new(config.bytes_per_sec, Instant::now())),
            keyspace,
            cluster,
            config,
            status: Mutex::new(RoundStatus::default()),
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            alone_since: Mutex::new(None),
            task: Mutex::new(None),
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
                debug!(error = %e, "rebalance task ended abnormally");
            }
        }
    }

    /// Serves a chunk streamed by `from` (the peer handler's entry point);
    /// the answer is the encoded [`StreamAck`].
    pub fn serve(
        self: Arc<Self>,
        from: NodeId,
        chunk: StreamChunk,
    ) -> BoxFuture<'static, Option<Bytes>> {
        Box::pin(async move {
            let id = chunk.id;
            let outcome = self.receive(chunk).await;
            match &outcome {
                Ok(_) => {}
                Err(e) => {
                    self.counters.chunks_refused.fetch_add(1, Relaxed);
                    debug!(peer = %from.short(), error = ?e, "stream chunk refused");
                }
            }
            Some(Bytes::from(
                Message::StreamAck(StreamAck { id, outcome }).encode(),
            ))
        })
    }

    /// Appends the rebalancing lines of `INFO cluster`.
    pub fn info_section(&self, out: &mut String) {
        let c = &self.counters;
        let view = self.cluster.view_version();
        let (held, pending, settled, last_error) = {
            let s = self.status.lock();
            (
                s.held,
                s.pending,
                s.settled_view == Some(view),
                s.last_error.clone(),
            )
        };
        let mut line = |name: &str, value: &dyn std::fmt::Display| {
            let _ = write!(out, "{name}:{value}\r\n");
        };
        line("rebalance_settled", &u8::from(settled));
        line("rebalance_partitions_held", &held);
        line("rebalance_partitions_pending", &pending);
        line("rebalance_pushes_owed", &self.planner.lock().pushes_owed());
        let counters: [(&str, &AtomicU64); 11] = [
            ("rebalance_rounds", &c.rounds),
            ("rebalance_partitions_sent", &c.partitions_sent),
            ("rebalance_keys_sent", &c.keys_sent),
            ("rebalance_bytes_sent", &c.bytes_sent),
            ("rebalance_partitions_dropped", &c.partitions_dropped),
            ("rebalance_keys_dropped", &c.keys_dropped),
            ("rebalance_transfer_failures", &c.transfer_failures),
            ("rebalance_chunks_received", &c.chunks_received),
            ("rebalance_keys_received", &c.keys_received),
            ("rebalance_partitions_received", &c.partitions_received),
            ("rebalance_chunks_refused", &c.chunks_refused),
        ];
        for (name, value) in counters {
            line(name, &value.load(Relaxed));
        }
        line(
            "rebalance_last_error",
            &last_error.as_deref().unwrap_or("none"),
        );
    }

    fn replica(&self) -> &Replica {
        self.keyspace.replica()
    }

    /// The current ring, rebuilt only when the membership's view moved.
    fn ring(&self) -> Result<Arc<Ring>> {
        Ok(self.cluster.ring())
    }

    /// How long the view must stay put before a round plans with it.
    fn settle(&self) -> Duration {
        let interval = self.cluster.with_membership(|m| m.config().interval_ms);
        Duration::from_millis(interval.saturating_mul(SETTLE_ROUNDS).max(100))
    }

    /// One round (see the module doc). Returns how many transfers it ran
    /// and whether all of them succeeded.
    async fn round(self: &Arc<Self>, view: u64) -> Result<(usize, bool)> {
        self.counters.rounds.fetch_add(1, Relaxed);
        let ring = self.ring()?;
        let partitions = self.replica().partitions();
        if ring.partitions() != partitions {
            return Err(Error::invalid(format!(
                "the ring has {} partitions but the data directory {partitions}; rebalancing is off",
                ring.partitions()
            )));
        }
        let me = self.cluster.id();
        if ring.members() == [me] {
            // Nothing to stream to; and a ring this node is alone in is
            // remembered only once it lasted (see ALONE_GRACE).
            let since = *self.alone_since.lock().get_or_insert_with(Instant::now);
            if since.elapsed() < ALONE_GRACE {
                self.status.lock().settled_view = Some(view);
                return Ok((0, true));
            }
        } else {
            *self.alone_since.lock() = None;
        }
        let held = {
            let this = self.clone();
            blocking(move || held_partitions(this.replica())).await?
        };
        let live: BTreeSet<NodeId> = self.cluster.with_membership(|m| {
            m.members()
                .filter(|x| x.id == me || m.is_live(x.id))
                .map(|x| x.id)
                .collect()
        });
        let transfers = self
            .planner
            .lock()
            .plan(&ring, &held, &|x| live.contains(&x));
        {
            let mut s = self.status.lock();
            s.held = held.len();
            s.pending = transfers.len();
            if transfers.is_empty() {
                s.settled_view = Some(view);
            }
        }
        let total = transfers.len();
        // Per transfer: whether it succeeded; `None` if skipped because
        // the ring moved (the next round plans with the new one).
        let outcomes: Vec<Option<bool>> = futures::stream::iter(transfers)
            .map(|t| async move {
                if self.cluster.shutdown_token().is_cancelled()
                    || self.cluster.view_version() != view
                {
                    return None;
                }
                Some(self.settle_transfer(&t, self.transfer(&t).await))
            })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .collect()
            .await;
        let failed = outcomes.iter().filter(|o| **o == Some(false)).count();
        if failed > 0 {
            // One line per round: a join whose views are still converging
            // makes every transfer of the round fail the same way.
            let last = self.status.lock().last_error.clone().unwrap_or_default();
            warn!(failed, of = total, last_error = %last, "partition transfers failed; will retry");
        }
        Ok((total, outcomes.iter().all(|o| *o == Some(true))))
    }

    /// Books the outcome of transfer `t`; returns whether it succeeded.
    fn settle_transfer(&self, t: &Transfer, outcome: Result<()>) -> bool {
        match outcome {
            Ok(()) => {
                if t.kind == TransferKind::Push {
                    self.planner.lock().pushed(t.partition, &t.targets);
                }
                let mut s = self.status.lock();
                s.pending = s.pending.saturating_sub(1);
                true
            }
            Err(e) => {
                self.counters.transfer_failures.fetch_add(1, Relaxed);
                let targets: Vec<String> = t.targets.iter().map(NodeId::short).collect();
                debug!(partition = %t.partition, targets = %targets.join(","), kind = ?t.kind, error = %e, "partition transfer failed");
                self.status.lock().last_error = Some(format!("partition {}: {e}", t.partition));
                false
            }
        }
    }

    /// Streams one partition to its targets and, for a handoff, drops it.
    async fn transfer(self: &Arc<Self>, t: &Transfer) -> Result<()> {
        let targets = self.addresses(&t.targets)?;
        let local = local_partition(t.partition)?;
        let mut progress = StreamProgress::new(&t.targets);
        let mut ranges: Vec<SentRange> = Vec::new();
        let mut after: Option<Bytes> = None;
        let mut keys = 0u64;
        loop {
            let (entries, end) = self.read(local, after.clone(), None).await?;
            let seq = progress.next_chunk(end);
            self.send_chunk(&targets, t.partition, seq, &entries, end, &mut progress)
                .await?;
            keys += entries.len() as u64;
            if let Some(last) = entries.last() {
                ranges.push(SentRange {
                    after: after.clone(),
                    last: last.key.clone(),
                    digest: digest(&entries),
                });
                after = Some(last.key.clone());
            }
            if end {
                break;
            }
        }
        debug_assert!(progress.complete(), "every chunk was acknowledged");
        self.counters.partitions_sent.fetch_add(1, Relaxed);
        info!(partition = %t.partition, kind = ?t.kind, keys, targets = t.targets.len(), "partition streamed");
        if t.kind == TransferKind::Push {
            return Ok(());
        }

        let me = self.cluster.id();
        let confirmed = progress.confirmed();
        let mut dropped = 0u64;
        let mut changed = 0u64;
        for range in ranges {
            if !may_drop(me, &*self.ring()?, t.partition, &confirmed) {
                info!(partition = %t.partition, "not dropping: the ring moved during the stream");
                return Ok(());
            }
            let (entries, _) = self
                .read(local, range.after.clone(), Some(range.last.clone()))
                .await?;
            if digest(&entries) != range.digest {
                // Written to since it was sent: send what is there now.
                for piece in split(&entries, self.config.chunk_bytes) {
                    let seq = progress.next_chunk(false);
                    self.send_chunk(&targets, t.partition, seq, piece, false, &mut progress)
                        .await?;
                }
            }
            let this = self.clone();
            let gone = blocking(move || this.replica().drop_unchanged(local, &entries)).await?;
            dropped += gone.keys;
            changed += gone.changed;
        }
        self.counters.keys_dropped.fetch_add(dropped, Relaxed);
        let this = self.clone();
        let empty =
            blocking(move || Ok(this.replica().scan_partition(local, None, 1)?.is_empty())).await?;
        if empty {
            self.counters.partitions_dropped.fetch_add(1, Relaxed);
            info!(partition = %t.partition, keys = dropped, "partition handed off and dropped");
        } else {
            info!(partition = %t.partition, dropped, changed, "partition handed off; keys written meanwhile follow next round");
        }
        Ok(())
    }

    /// The internode addresses of `targets`.
    fn addresses(&self, targets: &[NodeId]) -> Result<Vec<(NodeId, SocketAddr)>> {
        self.cluster.with_membership(|m| {
            targets
                .iter()
                .map(|&id| {
                    m.member(id)
                        .and_then(|x| x.peer_addr.parse::<SocketAddr>().ok())
                        .map(|addr| (id, addr))
                        .ok_or_else(|| {
                            Error::invalid(format!("no address known for node {}", id.short()))
                        })
                })
                .collect()
        })
    }

    /// Reads the keys of `partition` after `after`: up to the chunk size,
    /// or (with `upto`) every key up to and including `upto`. Returns them
    /// and whether the partition (or the range) ends there.
    async fn read(
        self: &Arc<Self>,
        partition: layout::PartitionId,
        after: Option<Bytes>,
        upto: Option<Bytes>,
    ) -> Result<(Vec<Stored>, bool)> {
        let this = self.clone();
        let max = self.config.chunk_bytes;
        blocking(move || {
            let replica = this.replica();
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut cursor = after;
            loop {
                let page = replica.scan_partition(partition, cursor.as_deref(), PAGE_KEYS)?;
                let full = page.len() == PAGE_KEYS;
                for entry in page {
                    if upto.as_ref().is_some_and(|u| entry.key > *u) {
                        return Ok((out, true));
                    }
                    bytes += entry.key.len() + entry.encoded().len();
                    cursor = Some(entry.key.clone());
                    out.push(entry);
                    if upto.is_none() && bytes >= max {
                        // The end is not known yet: the next read finds it.
                        return Ok((out, false));
                    }
                }
                if !full {
                    return Ok((out, true));
                }
            }
        })
        .await
    }

    /// Sends one chunk to every target at once and waits for every ack.
    async fn send_chunk(
        &self,
        targets: &[(NodeId, SocketAddr)],
        partition: PartitionId,
        seq: u64,
        entries: &[Stored],
        last: bool,
        progress: &mut StreamProgress,
    ) -> Result<()> {
        let bytes: usize = entries
            .iter()
            .map(|e| e.key.len() + e.encoded().len())
            .sum();
        let sent = (bytes as u64).saturating_mul(targets.len() as u64);
        let wait = self.bucket.lock().charge(Instant::now(), sent);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let chunk = Message::StreamChunk(StreamChunk {
            id: RequestId(self.next_id.fetch_add(1, Relaxed)),
            partition,
            seq,
            entries: entries
                .iter()
                .map(|e| StreamEntry {
                    key: e.key.to_vec(),
                    siblings: e.encoded().to_vec(),
                })
                .collect(),
            last,
        });
        let payload = Bytes::from(chunk.encode());
        let peers = self.cluster.peers();
        let timeout = self.config.chunk_timeout;
        let answers = join_all(targets.iter().map(|&(id, addr)| {
            let payload = payload.clone();
            async move {
                let answer = peers
                    .request(addr, payload, timeout)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| Message::decode(&b).map_err(|e| e.to_string()));
                (id, answer)
            }
        }))
        .await;
        let mut failure = None;
        for (id, answer) in answers {
            match answer {
                Ok(Message::StreamAck(StreamAck { outcome: Ok(_), .. })) => {
                    progress.on_ack(id, seq)
                }
                Ok(Message::StreamAck(StreamAck {
                    outcome: Err(e), ..
                })) => failure = Some(format!("node {} refused the chunk: {e:?}", id.short())),
                Ok(other) => {
                    failure = Some(format!(
                        "node {} answered a chunk with '{}'",
                        id.short(),
                        other.kind()
                    ))
                }
                Err(e) => failure = Some(format!("node {}: {e}", id.short())),
            }
        }
        self.counters.bytes_sent.fetch_add(sent, Relaxed);
        if let Some(why) = failure {
            return Err(Error::invalid(why));
        }
        self.counters
            .keys_sent
            .fetch_add(entries.len() as u64, Relaxed);
        Ok(())
    }

    /// The receiving side of a chunk: check, merge, make durable.
    async fn receive(
        self: &Arc<Self>,
        chunk: StreamChunk,
    ) -> std::result::Result<u64, RemoteError> {
        let me = self.cluster.id();
        let ring = self
            .ring()
            .map_err(|e| RemoteError::Rejected(format!("no ring: {e}")))?;
        let partitions = self.replica().partitions();
        if chunk.partition.0 >= partitions || chunk.partition.0 >= ring.partitions() {
            return Err(RemoteError::Rejected(format!(
                "partition {} out of range",
                chunk.partition
            )));
        }
        if !ring.owners(chunk.partition).contains(&me) {
            return Err(RemoteError::Rejected(format!(
                "not an owner of partition {} in this node's view",
                chunk.partition
            )));
        }
        let local =
            local_partition(chunk.partition).map_err(|e| RemoteError::Rejected(e.to_string()))?;
        let last = chunk.last;
        let this = self.clone();
        let entries = chunk.entries;
        let merged = tokio::task::spawn_blocking(move || this.merge_chunk(local, entries))
            .await
            .map_err(|e| RemoteError::Storage(format!("merge task failed: {e}")))??;
        let (keys, wrote) = merged;
        if let Some(seq) = wrote {
            self.make_durable(seq)
                .await
                .map_err(|e| RemoteError::Storage(e.to_string()))?;
        }
        self.counters.chunks_received.fetch_add(1, Relaxed);
        self.counters.keys_received.fetch_add(keys, Relaxed);
        if last {
            self.counters.partitions_received.fetch_add(1, Relaxed);
        }
        Ok(keys)
    }

    /// Merges every set of a chunk, after checking that each key belongs to
    /// `partition` and each set decodes (a bad chunk merges nothing).
    /// Returns the keys merged and the last write made.
    fn merge_chunk(
        &self,
        partition: layout::PartitionId,
        entries: Vec<StreamEntry>,
    ) -> std::result::Result<(u64, Option<SeqNo>), RemoteError> {
        let replica = self.replica();
        let mut sets = Vec::with_capacity(entries.len());
        for entry in &entries {
            if replica.partition(Key::new(&entry.key)) != partition {
                return Err(RemoteError::Rejected(format!(
                    "key {:?} is not in partition {}",
                    String::from_utf8_lossy(&entry.key),
                    partition.0
                )));
            }
            let set = SiblingSet::decode(&entry.siblings).map_err(|e| {
                RemoteError::Rejected(format!(
                    "malformed sibling set for key {:?}: {e:?}",
                    String::from_utf8_lossy(&entry.key)
                ))
            })?;
            sets.push(set);
        }
        let mut last_write: Option<SeqNo> = None;
        for (entry, set) in entries.iter().zip(sets) {
            let wrote = replica
                .merge_remote(Key::new(&entry.key), set)
                .map_err(|e| RemoteError::Storage(e.to_string()))?;
            last_write = last_write.max(wrote);
        }
        Ok((entries.len() as u64, last_write))
    }

    /// Makes writes up to `seq` durable before a chunk is acknowledged (see
    /// the module doc for why `everysec` fsyncs here).
    async fn make_durable(self: &Arc<Self>, seq: SeqNo) -> Result<()> {
        match self.keyspace.fsync_policy() {
            FsyncPolicy::Always => self.keyspace.wait_durable(seq).await,
            FsyncPolicy::Everysec => {
                let this = self.clone();
                blocking(move || this.replica().engine().sync()).await
            }
            FsyncPolicy::No => Ok(()),
        }
    }
}

/// The task: rounds on view changes (after the settle time) and periodically.
async fn run(this: Arc<Rebalance>) {
    let stop = this.cluster.shutdown_token();
    let mut seen_view = this.cluster.view_version();
    let mut changed_at = Instant::now();
    let mut next_round = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let view = this.cluster.view_version();
        if view != seen_view {
            seen_view = view;
            changed_at = Instant::now();
            next_round = Instant::now();
            continue;
        }
        if changed_at.elapsed() < this.settle() || Instant::now() < next_round {
            continue;
        }
        next_round = match this.round(view).await {
            // Something moved: run again at once to confirm nothing is left.
            Ok((moved, true)) if moved > 0 => Instant::now(),
            Ok((_, true)) => Instant::now() + ROUND_EVERY,
            Ok((_, false)) => Instant::now() + RETRY_AFTER,
            Err(e) => {
                warn!(error = %e, "rebalance round failed");
                this.status.lock().last_error = Some(e.to_string());
                Instant::now() + RETRY_AFTER
            }
        };
    }
}

/// The partitions with at least one stored key (one seek each).
fn held_partitions(replica: &Replica) -> Result<BTreeSet<PartitionId>> {
    let mut held = BTreeSet::new();
    for p in 0..replica.partitions() {
        let local = local_partition(PartitionId(p))?;
        if !replica.scan_partition(local, None, 1)?.is_empty() {
            held.insert(PartitionId(p));
        }
    }
    Ok(held)
}

/// The layout's two-byte partition id of a ring partition.
fn local_partition(p: PartitionId) -> Result<layout::PartitionId> {
    u16::try_from(p.0)
        .ok()
        .filter(|&n| u32::from(n) < layout::MAX_PARTITIONS)
        .map(layout::PartitionId)
        .ok_or_else(|| Error::invalid(format!("partition {p} outside the on-disk layout")))
}

/// SHA-256 over the entries: each key and set, length-prefixed.
fn digest(entries: &[Stored]) -> [u8; 32] {
    let mut h = Sha256::new();
    for e in entries {
        h.update((e.key.len() as u64).to_be_bytes());
        h.update(&e.key);
        h.update((e.encoded().len() as u64).to_be_bytes());
        h.update(e.encoded());
    }
    h.finalize().into()
}

/// `entries` cut into runs of at most `max` bytes (at least one entry each).
fn split(entries: &[Stored], max: usize) -> Vec<&[Stored]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let size = e.key.len() + e.encoded().len();
        if i > start && bytes + size > max {
            out.push(&entries[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::invalid(format!("rebalance task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_entry_in_order_and_under_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keyspace::open(dir.path(), Default::default()).expect("open");
        let replica = ks.replica();
        for i in 0..50 {
            let key = format!("k{i}");
            let mut set = SiblingSet::new();
            set.overwrite(
                replica.actor(),
                crate::version::Payload::Value(Bytes::from(vec![b'x'; 100])),
                None,
                1,
            );
            replica
                .merge_remote(Key::new(key.as_bytes()), set)
                .expect("merge");
        }
        let mut all = Vec::new();
        for p in 0..replica.partitions() {
            let local = local_partition(PartitionId(p)).expect("p");
            all.extend(
                replica
                    .scan_partition(local, None, usize::MAX)
                    .expect("scan"),
            );
        }
        assert_eq!(all.len(), 50);
        let pieces = split(&all, 500);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        assert!(pieces.iter().all(|p| p.len() == 1
            || p.iter()
                .map(|e| e.key.len() + e.encoded().len())
                .sum::<usize>()
                <= 500));
        let joined: Vec<&Bytes> = pieces
            .iter()
            .flat_map(|p| p.iter().map(|e| &e.key))
            .collect();
        let original: Vec<&Bytes> = all.iter().map(|e| &e.key).collect();
        assert_eq!(joined, original);
        assert_eq!(digest(&all), digest(&all.clone()));
        assert_ne!(digest(&all), digest(&all[1..]));
        ks.close().expect("close");
    }
}
