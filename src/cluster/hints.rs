//! Hinted handoff: the durable store of writes held for a replica that was
//! down, and (in [`planner`]) the pure decision of what to hand back when.
//!
//! # What
//!
//! When a preference-list node is down, the coordinator writes the key to the
//! next healthy node on the ring with a hint naming the intended owner
//! (DESIGN.md §4, the seed's "sloppy quorum"). The fallback keeps that data in
//! a [`HintStore`], apart from its own replica data, until the owner is back:
//! then [`planner::HandoffPlanner`] picks batches within a byte budget, the
//! server sends them as ordinary `Put`s, and on the owner's ack the store
//! deletes exactly the hints that were acknowledged.
//!
//! # Why this shape
//!
//! - **Durable before acknowledged.** A hint counts toward the write quorum
//!   `W`, so losing it after the ack loses an acknowledged write.
//!   [`HintStore::store`] returns only after the hint log is fsynced ([`HintLog::sync`]); the log
//!   is a real storage [`Engine`] in `<data_dir>/hints`, so a SIGKILL of the
//!   holder loses nothing it acknowledged (tests/hints_sigkill.rs).
//! - **One merged hint per key per target.** Storing a hint for a key that
//!   already has one for the same target merges the two sibling sets
//!   ([`SiblingSet::merge`]). Whole sets are the unit of replication anyway
//!   (see `version`), merging is idempotent and commutative, and the owner
//!   merges what it receives, so the merged hint carries exactly what the
//!   separate hints would have, and a hot key written a thousand times while
//!   its owner was down costs one hint, not a thousand.
//! - **Compare-and-delete on ack.** Every store or merge gives the hint a new
//!   [`HintSeq`]. A batch remembers the sequence of each hint it carried;
//!   [`HintStore::acknowledge`] deletes a hint only if its sequence is still
//!   the one sent. A hint that merged a newer write after it was sent stays,
//!   and is sent again: the owner must not miss that write.
//! - **Counters, not scans, for `INFO`.** Pending hints per target (count and
//!   bytes) are kept in memory, exact: rebuilt by one scan at open and updated
//!   under the same lock as each write.
//! - **Corruption is isolated.** Each record carries a CRC32C. A record that
//!   fails its checks is reported as [`Error::Corruption`], logged, moved to a
//!   quarantine key range (kept for inspection, never replayed) and skipped;
//!   anti-entropy repairs whatever it held.
//! - **A narrow log trait.** Cluster code reaches storage only through
//!   [`HintLog`] (DESIGN.md §1); [`Engine`] implements it in a few lines here.
//!
//! # Departures from Dynamo (and Cassandra)
//!
//! - Dynamo keeps hinted replicas in a separate local database and a hint per
//!   write; here there is one merged hint per (target, key), as above.
//! - The hint window (default 3 h) bounds the age of a hint, counted from
//!   when the first write it holds was stored (merges keep the oldest
//!   `created_at_ms`): no write waits in a hint longer than the window. Past
//!   it the hint is dropped (counted, logged) and anti-entropy, which must run
//!   anyway, repairs the owner. Cassandra instead stops *creating* hints for a
//!   node down longer than the window; that needs a down-since time per node,
//!   which gossip does not record, and still lets old hints pile up.
//! - Hints are replayed from any node that holds them, as soon as gossip
//!   reports the owner `Up` (not `Suspect`), one batch in flight per owner.
//!
//! # How the server drives it
//!
//! ```text
//! sloppy-quorum write for owner T:  store.store(T, partition, key, &set, now)?  // durable: count toward W
//! every tick, per member T:         plan = store.plan_handoff(&mut planner, T, gossip.status(T), now)?
//!                                   store.drop_expired(&plan.expired)?; quarantine each plan.corrupt
//!                                   send plan.send as Put(hint_for: None) to T; repoll after plan.retry_after_ms
//! T acked batch b:                  store.acknowledge(&planner.on_ack(T, b))?
//! batch b failed / connection lost: planner.on_failure(T, b)
//! every minute:                     store.expire(now, window)?      // owners that never come back
//! T left or was forgotten:          store.drop_target(T)?
//! INFO / CLUSTER HINTS:             store.pending_by_target(), store.stats()
//! ```
//!
//! # Key and record layout (format 1)
//!
//! Log key of a hint, so a prefix scan finds one target's hints in partition
//! order:
//!
//! ```text
//! offset  size  field
//! 0       1     tag: b'h' (a hint) — quarantined records use b'q' ++ the
//!               original log key, with the original value bytes
//! 1       16    target NodeId (raw bytes)
//! 17      4     partition (u32, big-endian)
//! 21      ..    the user key (rest of the log key; may be empty)
//! ```
//!
//! Record (the value under that key); integers big-endian:
//!
//! ```text
//! offset  size  field
//! 0       1     format version = 1
//! 1       1     flags = 0 (reserved; a reader of format 1 rejects others)
//! 2       8     created_at_ms: u64, when the oldest write it holds was hinted
//! 10      8     seq: HintSeq of the last store or merge (compare-and-delete)
//! 18      4     n: length of the sibling set encoding
//! 22      n     the key's SiblingSet in the `version` encoding
//! 22+n    4     CRC32C of bytes 0..22+n
//! ```

pub mod planner;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cluster::membership::Status;
use crate::cluster::ring::{NodeId, PartitionId};
use crate::config::FsyncPolicy;
use crate::error::{Error, Result};
use crate::storage::{Engine, Options, WriteBatch};
use crate::version::SiblingSet;

pub use planner::{BatchId, HandoffConfig, HandoffPlanner, HintBatch, Plan, Throttle};

/// The few operations the hint store needs from a durable ordered log.
///
/// [`apply`](Self::apply) makes a batch visible (atomically) without waiting
/// for the disk; [`sync`](Self::sync) makes everything applied so far
/// durable. Splitting them lets the store apply under a per-key lock and
/// fsync outside it, so concurrent hint writers share one fsync.
pub trait HintLog: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Apply `ops` atomically; visible to `get`/`scan_prefix` on return.
    fn apply(&self, ops: &[LogOp<'_>]) -> Result<()>;
    /// Make every applied op durable (fsync).
    fn sync(&self) -> Result<()>;
    /// Every live `(key, value)` whose key starts with `prefix` and is at or
    /// after `from` (if given), ascending, from a snapshot taken now.
    fn scan_prefix(&self, prefix: &[u8], from: Option<&[u8]>) -> Result<LogScan>;
    /// Where the log lives, to name it in corruption reports.
    fn location(&self) -> &Path;
}

/// One write of a [`HintLog`] batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOp<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// A [`HintLog`] scan.
pub type LogScan = Box<dyn Iterator<Item = Result<(Bytes, Bytes)>> + Send>;

impl HintLog for Engine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Engine::get(self, key)
    }

    fn apply(&self, ops: &[LogOp<'_>]) -> Result<()> {
        let mut batch = WriteBatch::new();
        for op in ops {
            match *op {
                LogOp::Put(key, value) => batch.put(key, value),
                LogOp::Delete(key) => batch.delete(key),
            }
        }
        self.write_unsynced(&batch).map(|_| ())
    }

    fn sync(&self) -> Result<()> {
        Engine::sync(self)
    }

    fn scan_prefix(&self, prefix: &[u8], from: Option<&[u8]>) -> Result<LogScan> {
        let Some(from) = from.filter(|from| *from > prefix) else {
            return Ok(Box::new(Engine::scan_prefix(self, prefix)?));
        };
        let end = prefix_successor(prefix);
        let end = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        Ok(Box::new(self.scan(Bound::Included(from), end)?))
    }

    fn location(&self) -> &Path {
        self.dir()
    }
}

/// The version of a hint record: bumped by every store or merge, compared on
/// ack. Strictly increasing while a store is open (resumed past the largest
/// stored value at open). A value may recur after a restart once the hint
/// that had it was deleted; that is harmless because the batches in flight,
/// which hold sequences, live only in the planner's memory and die with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HintSeq(pub u64);

/// Which hint: enough to compare-and-delete it after an ack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HintRef {
    pub target: NodeId,
    pub partition: PartitionId,
    pub key: Bytes,
    /// The sequence the hint had when it was read.
    pub seq: HintSeq,
}

/// A hint as read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub target: NodeId,
    pub partition: PartitionId,
    pub key: Bytes,
    pub siblings: SiblingSet,
    /// When the oldest write the hint holds was stored (ms since the epoch).
    pub created_at_ms: u64,
    pub seq: HintSeq,
    /// Bytes the hint occupies in the log (key + record): what the pending
    /// counters and the replay throttle charge for it.
    pub stored_bytes: u64,
}

/// Where a hint sits in one target's (partition, key) order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HintPosition {
    pub partition: PartitionId,
    pub key: Bytes,
}

impl Hint {
    /// This hint's place in its target's order.
    pub fn position(&self) -> HintPosition {
        HintPosition {
            partition: self.partition,
            key: self.key.clone(),
        }
    }

    /// The reference to delete this hint once acknowledged.
    pub fn to_ref(&self) -> HintRef {
        HintRef {
            target: self.target,
            partition: self.partition,
            key: self.key.clone(),
            seq: self.seq,
        }
    }
}

/// A record that failed its checks: what it was, and why.
#[derive(Debug)]
pub struct CorruptHint {
    /// The raw log key (to quarantine the record).
    pub log_key: Bytes,
    /// An [`Error::Corruption`] naming the log and the offset in the record.
    pub error: Error,
}

/// Hints pending for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub count: u64,
    pub bytes: u64,
}

/// What [`HintStore::acknowledge`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Hints deleted: unchanged since they were sent.
    pub deleted: usize,
    /// Hints kept: merged with a newer write after they were sent (or already
    /// gone); they will be sent again if still present.
    pub kept: usize,
}

/// Lifetime counters of a store, for `INFO`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Hints created (first hint of a key for a target).
    pub created: u64,
    /// Stores merged into an existing hint.
    pub merged: u64,
    /// Hints deleted after the target acknowledged them.
    pub delivered: u64,
    /// Acks that found the hint changed since it was sent (kept).
    pub superseded_acks: u64,
    /// Hints dropped for being older than the hint window.
    pub expired: u64,
    /// Corrupt records moved to quarantine.
    pub quarantined: u64,
}

const TAG_HINT: u8 = b'h';
const TAG_QUARANTINE: u8 = b'q';
const KEY_HEADER: usize = 1 + NodeId::LEN + 4;
const FORMAT_V1: u8 = 1;
const RECORD_HEADER: usize = 1 + 1 + 8 + 8 + 4;
const RECORD_TRAILER: usize = 4;
/// Per-key locks; a power of two so the stripe is a mask of the hash.
const STRIPES: usize = 64;

/// The log key of the hint for `key` in `partition` meant for `target` (see
/// the module doc for the layout).
pub fn hint_log_key(target: NodeId, partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_HEADER + key.len());
    out.push(TAG_HINT);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(&partition.0.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The first key after every key that starts with `prefix` (`None` if
/// `prefix` is all 0xff bytes: no such key).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn target_prefix(target: NodeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + NodeId::LEN);
    out.push(TAG_HINT);
    out.extend_from_slice(target.as_bytes());
    out
}

/// Splits a hint log key into `(target, partition, user key)`.
fn parse_log_key(log_key: &Bytes) -> Option<(NodeId, PartitionId, Bytes)> {
    if log_key.len() < KEY_HEADER || log_key[0] != TAG_HINT {
        return None;
    }
    let mut target = [0u8; NodeId::LEN];
    target.copy_from_slice(&log_key[1..1 + NodeId::LEN]);
    let mut partition = [0u8; 4];
    partition.copy_from_slice(&log_key[1 + NodeId::LEN..KEY_HEADER]);
    Some((
        NodeId::from_bytes(target),
        PartitionId(u32::from_be_bytes(partition)),
        log_key.slice(KEY_HEADER..),
    ))
}

/// Writes the format-1 record (see the module doc) into `out`.
fn encode_record(
    out: &mut Vec<u8>,
    siblings: &SiblingSet,
    created_at_ms: u64,
    seq: HintSeq,
) -> Result<()> {
    out.clear();
    out.extend_from_slice(&[FORMAT_V1, 0]);
    out.extend_from_slice(&created_at_ms.to_be_bytes());
    out.extend_from_slice(&seq.0.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    siblings.encode(out);
    let n = u32::try_from(out.len() - RECORD_HEADER)
        .map_err(|_| Error::invalid("sibling set too large for a hint (over 4 GiB)"))?;
    out[18..22].copy_from_slice(&n.to_be_bytes());
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// The fields of a decoded record.
struct Record {
    created_at_ms: u64,
    seq: HintSeq,
    siblings: SiblingSet,
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

/// Checks the header and checksum; returns `(created_at_ms, seq, length of
/// the sibling set)` without decoding the set, or `(offset, detail)` of the
/// first check that failed.
fn check_record(value: &[u8]) -> std::result::Result<(u64, HintSeq, usize), (u64, String)> {
    if value.len() < RECORD_HEADER + RECORD_TRAILER {
        return Err((
            0,
            format!("hint record of {} bytes is too short", value.len()),
        ));
    }
    if value[0] != FORMAT_V1 {
        return Err((0, format!("unknown hint record format {}", value[0])));
    }
    if value[1] != 0 {
        return Err((1, format!("unknown hint record flags {:#04x}", value[1])));
    }
    let body = value.len() - RECORD_TRAILER;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&value[body..]);
    if crc32c::crc32c(&value[..body]) != u32::from_be_bytes(crc) {
        return Err((body as u64, "hint record checksum mismatch".to_string()));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&value[18..22]);
    let n = u32::from_be_bytes(n) as usize;
    if RECORD_HEADER + n != body {
        return Err((
            18,
            format!("sibling set length {n} does not match the record"),
        ));
    }
    Ok((be_u64(&value[2..10]), HintSeq(be_u64(&value[10..18])), n))
}

fn decode_record(value: &Bytes) -> std::result::Result<Record, (u64, String)> {
    let (created_at_ms, seq, n) = check_record(value)?;
    let siblings = SiblingSet::decode_shared(&value.slice(RECORD_HEADER..RECORD_HEADER + n))
        .map_err(|e| {
            (
                (RECORD_HEADER + e.offset) as u64,
                format!("malformed sibling set: {}", e.detail),
            )
        })?;
    Ok(Record {
        created_at_ms,
        seq,
        siblings,
    })
}

/// Hex of a key for log lines, cut short so a huge key cannot flood the log.
struct KeyHex<'a>(&'a [u8]);

impl fmt::Display for KeyHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().take(48) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 48 {
            write!(f, "..")?;
        }
        Ok(())
    }
}

/// The durable hint store of one node (see the module doc).
pub struct HintStore<L: HintLog = Engine> {
    log: L,
    stripes: Vec<Mutex<()>>,
    next_seq: AtomicU64,
    pending: Mutex<BTreeMap<NodeId, Pending>>,
    stats: Mutex<HintStats>,
}

impl HintStore<Engine> {
    /// Open (or create) the store in `dir` (a node uses `<data_dir>/hints`),
    /// on its own storage engine with `fsync always`, and rebuild the pending
    /// counters by one scan (quarantining corrupt records found on the way).
    pub fn open(dir: &Path) -> Result<HintStore<Engine>> {
        let opts = Options {
            fsync: FsyncPolicy::Always,
            // Hints are few and short-lived: small memtables and cache keep
            // the store's memory a small fraction of the node's.
            memtable_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            ..Options::default()
        };
        HintStore::with_log(Engine::open(dir, opts)?)
    }

    /// Close the underlying engine (fsyncs its log).
    pub fn close(&self) -> Result<()> {
        self.log.close()
    }
}

impl<L: HintLog> HintStore<L> {
    /// A store over `log`, with counters rebuilt by a scan.
    pub fn with_log(log: L) -> Result<HintStore<L>> {
        let store = HintStore {
            log,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_seq: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(HintStats::default()),
        };
        store.rebuild()?;
        Ok(store)
    }

    fn rebuild(&self) -> Result<()> {
        let mut pending: BTreeMap<NodeId, Pending> = BTreeMap::new();
        let mut max_seq = 0;
        let mut corrupt = Vec::new();
        for item in self.log.scan_prefix(&[TAG_HINT], None)? {
            let (log_key, value) = item?;
            // Count every record in the hint range, damaged or not, so that
            // quarantining one (which removes it from the range) always
            // uncounts it: the counters stay exactly "records in the range".
            if let Some((target, _, _)) = parse_log_key(&log_key) {
                let p = pending.entry(target).or_default();
                p.count += 1;
                p.bytes += (log_key.len() + value.len()) as u64;
            }
            match self.read_entry(log_key, value) {
                Ok(hint) => max_seq = max_seq.max(hint.seq.0),
                Err(bad) => corrupt.push(bad),
            }
        }
        self.next_seq.store(max_seq + 1, Ordering::Relaxed);
        *self.pending.lock() = pending;
        for bad in &corrupt {
            self.quarantine(bad)?;
        }
        Ok(())
    }

    /// Decodes one log entry into a hint, or says why it cannot.
    fn read_entry(&self, log_key: Bytes, value: Bytes) -> std::result::Result<Hint, CorruptHint> {
        let corrupt = |log_key: Bytes, offset: u64, detail: String| CorruptHint {
            error: Error::corruption(
                self.log.location(),
                offset,
                format!("hint {}: {detail}", KeyHex(&log_key)),
            ),
            log_key,
        };
        let Some((target, partition, key)) = parse_log_key(&log_key) else {
            return Err(corrupt(log_key, 0, "malformed hint key".to_string()));
        };
        let stored_bytes = (log_key.len() + value.len()) as u64;
        match decode_record(&value) {
            Ok(record) => Ok(Hint {
                target,
                partition,
                key,
                siblings: record.siblings,
                created_at_ms: record.created_at_ms,
                seq: record.seq,
                stored_bytes,
            }),
            Err((offset, detail)) => Err(corrupt(log_key, offset, detail)),
        }
    }

    fn stripe(&self, log_key: &[u8]) -> &Mutex<()> {
        // Any hash works: stripes only spread contention, nothing persists.
        let mut h = ahash::AHasher::default();
        log_key.hash(&mut h);
        &self.stripes[(h.finish() as usize) & (STRIPES - 1)]
    }

    fn adjust_pending(&self, target: NodeId, old: Option<u64>, new: Option<u64>) {
        let mut pending = self.pending.lock();
        let p = pending.entry(target).or_default();
        if let Some(old) = old {
            p.count = p.count.saturating_sub(1);
            p.bytes = p.bytes.saturating_sub(old);
        }
        if let Some(new) = new {
            p.count += 1;
            p.bytes += new;
        }
        if p.count == 0 {
            pending.remove(&target);
        }
    }

    /// Store a hint: `siblings` of `key` (in `partition`) for `target`,
    /// merged into the hint already held for that key and target, if any.
    /// Durable on return (the caller may then count it toward `W`). Returns
    /// the hint's new sequence.
    ///
    /// A stored set that the merge leaves unchanged (a repeated hint) keeps
    /// its sequence, so a batch in flight that carries it still deletes it.
    pub fn store(
        &self,
        target: NodeId,
        partition: PartitionId,
        key: &[u8],
        siblings: &SiblingSet,
        now_ms: u64,
    ) -> Result<HintSeq> {
        let log_key = Bytes::from(hint_log_key(target, partition, key));
        let seq = {
            let _guard = self.stripe(&log_key).lock();
            let existing = match self.log.get(&log_key)? {
                Some(value) => match self.read_entry(log_key.clone(), value) {
                    Ok(hint) => Some(hint),
                    Err(bad) => {
                        // Keep the damaged bytes for inspection; the new
                        // write goes on in a fresh record.
                        self.quarantine_locked(&bad)?;
                        None
                    }
                },
                None => None,
            };
            match existing {
                Some(hint) => {
                    let mut merged = hint.siblings.clone();
                    merged.merge(siblings);
                    if merged == hint.siblings {
                        // Nothing new: keep the sequence. Still fsync below,
                        // in case the store that wrote it is mid-sync.
                        hint.seq
                    } else {
                        self.stats.lock().merged += 1;
                        let old = Some(hint.stored_bytes);
                        self.put_record(target, &log_key, &merged, hint.created_at_ms, old)?
                    }
                }
                None => {
                    self.stats.lock().created += 1;
                    self.put_record(target, &log_key, siblings, now_ms, None)?
                }
            }
        };
        // Outside the stripe lock, so writers of other keys share the fsync.
        self.log.sync()?;
        Ok(seq)
    }

    /// Write a record with a fresh sequence (under the key's stripe lock) and
    /// move the pending counters from the `old_bytes` record to the new one.
    fn put_record(
        &self,
        target: NodeId,
        log_key: &[u8],
        siblings: &SiblingSet,
        created_at_ms: u64,
        old_bytes: Option<u64>,
    ) -> Result<HintSeq> {
        let seq = HintSeq(self.next_seq.fetch_add(1, Ordering::Relaxed));
        let mut record = Vec::new();
        encode_record(&mut record, siblings, created_at_ms, seq)?;
        self.log.apply(&[LogOp::Put(log_key, &record)])?;
        let new_bytes = (log_key.len() + record.len()) as u64;
        self.adjust_pending(target, old_bytes, Some(new_bytes));
        Ok(seq)
    }

    /// The hints held for `target`, in (partition, key) order, from a
    /// snapshot taken now. Corrupt records come out as `Err`, for the caller
    /// to [`quarantine`](Self::quarantine); a failure of the log itself ends
    /// the scan with an `Err` whose `log_key` is empty.
    pub fn hints_for(
        &self,
        target: NodeId,
    ) -> Result<impl Iterator<Item = std::result::Result<Hint, CorruptHint>> + '_> {
        self.hints_for_after(target, None)
    }

    /// [`hints_for`](Self::hints_for), starting strictly after `after` (the
    /// planner's [`resume_after`](HandoffPlanner::resume_after)), so a replay
    /// does not walk again over the deleted hints of the batches before.
    pub fn hints_for_after(
        &self,
        target: NodeId,
        after: Option<&HintPosition>,
    ) -> Result<impl Iterator<Item = std::result::Result<Hint, CorruptHint>> + '_> {
        let from = after.map(|pos| {
            // The smallest key greater than the position's own key.
            let mut from = hint_log_key(target, pos.partition, &pos.key);
            from.push(0);
            from
        });
        let scan = self
            .log
            .scan_prefix(&target_prefix(target), from.as_deref())?;
        Ok(scan.map(move |item| match item {
            Ok((log_key, value)) => self.read_entry(log_key, value),
            Err(error) => Err(CorruptHint {
                log_key: Bytes::new(),
                error,
            }),
        }))
    }

    /// Ask `planner` what to send `target` now, scanning its hints from the
    /// planner's resume point. The plan's `expired` and `corrupt` lists are
    /// for [`drop_expired`](Self::drop_expired) and
    /// [`quarantine`](Self::quarantine); its batch is for the network.
    pub fn plan_handoff(
        &self,
        planner: &mut HandoffPlanner,
        target: NodeId,
        status: Status,
        now_ms: u64,
    ) -> Result<Plan> {
        if status != Status::Up {
            // No scan for an owner the planner will not send to.
            return Ok(planner.poll(target, status, now_ms, std::iter::empty()));
        }
        let after = planner.resume_after(target).cloned();
        let hints = self.hints_for_after(target, after.as_ref())?;
        Ok(planner.poll(target, status, now_ms, hints))
    }

    /// Every hint held, for every target (a sweep, e.g. for expiry).
    pub fn all_hints(
        &self,
    ) -> Result<impl Iterator<Item = std::result::Result<Hint, CorruptHint>> + '_> {
        let scan = self.log.scan_prefix(&[TAG_HINT], None)?;
        Ok(scan.map(move |item| match item {
            Ok((log_key, value)) => self.read_entry(log_key, value),
            Err(error) => Err(CorruptHint {
                log_key: Bytes::new(),
                error,
            }),
        }))
    }

    /// The target acknowledged `sent`: delete each hint whose sequence is
    /// still the one sent; keep (and count) those merged with newer writes
    /// since. Deletes need not be durable: a hint that comes back after a
    /// crash is sent again, and the owner's merge makes that harmless.
    pub fn acknowledge(&self, sent: &[HintRef]) -> Result<AckOutcome> {
        let mut outcome = AckOutcome::default();
        for hint in sent {
            if self.delete_if_unchanged(hint)? {
                outcome.deleted += 1;
            } else {
                outcome.kept += 1;
            }
        }
        let mut stats = self.stats.lock();
        stats.delivered += outcome.deleted as u64;
        stats.superseded_acks += outcome.kept as u64;
        Ok(outcome)
    }

    /// Drop `hints` for having outlived the hint window (compare-and-delete,
    /// like an ack: a hint merged meanwhile is left for the next sweep, which
    /// drops it too, since a merge keeps the oldest creation time). Returns
    /// how many were dropped; logs the count.
    pub fn drop_expired(&self, hints: &[HintRef]) -> Result<usize> {
        let mut dropped = 0;
        for hint in hints {
            if self.delete_if_unchanged(hint)? {
                dropped += 1;
                tracing::debug!(
                    target_node = %hint.target,
                    partition = %hint.partition,
                    key = %KeyHex(&hint.key),
                    "hint dropped: older than the hint window"
                );
            }
        }
        if dropped > 0 {
            // One line per sweep, not per hint: a node back after a long
            // outage may have expired hints by the hundred thousand.
            tracing::info!(
                dropped,
                "hints dropped: older than the hint window; anti-entropy will repair their owners"
            );
            self.stats.lock().expired += dropped as u64;
        }
        Ok(dropped)
    }

    /// Sweep every target's hints and drop those created more than
    /// `window_ms` before `now_ms` (also for targets that never come back,
    /// which the planner never polls). Returns how many were dropped.
    pub fn expire(&self, now_ms: u64, window_ms: u64) -> Result<usize> {
        let mut old = Vec::new();
        let mut corrupt = Vec::new();
        for item in self.all_hints()? {
            match item {
                Ok(hint) if planner::is_expired(hint.created_at_ms, now_ms, window_ms) => {
                    old.push(hint.to_ref())
                }
                Ok(_) => {}
                Err(bad) if bad.log_key.is_empty() => return Err(bad.error),
                Err(bad) => corrupt.push(bad),
            }
        }
        for bad in &corrupt {
            self.quarantine(bad)?;
        }
        self.drop_expired(&old)
    }

    /// Drop every hint for `target`: it left the cluster (or was forgotten),
    /// so its partitions now belong to others, which rebalancing and
    /// anti-entropy fill. Returns how many were dropped; logs the total.
    pub fn drop_target(&self, target: NodeId) -> Result<usize> {
        let mut refs = Vec::new();
        let mut corrupt = Vec::new();
        for item in self.hints_for(target)? {
            match item {
                Ok(hint) => refs.push(hint.to_ref()),
                Err(bad) if bad.log_key.is_empty() => return Err(bad.error),
                Err(bad) => corrupt.push(bad),
            }
        }
        for bad in &corrupt {
            self.quarantine(bad)?;
        }
        let mut dropped = 0;
        for hint in &refs {
            if self.delete_if_unchanged(hint)? {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(target_node = %target, dropped, "hints dropped: their owner left the cluster");
        }
        Ok(dropped)
    }

    fn delete_if_unchanged(&self, hint: &HintRef) -> Result<bool> {
        let log_key = hint_log_key(hint.target, hint.partition, &hint.key);
        let _guard = self.stripe(&log_key).lock();
        let Some(value) = self.log.get(&log_key)? else {
            return Ok(false);
        };
        let stored_bytes = (log_key.len() + value.len()) as u64;
        match check_record(&value) {
            Ok((_, seq, _)) if seq == hint.seq => {
                self.log.apply(&[LogOp::Delete(&log_key)])?;
                self.adjust_pending(hint.target, Some(stored_bytes), None);
                Ok(true)
            }
            Ok(_) => Ok(false),
            // Damaged since it was read: not ours to delete as "delivered".
            Err(_) => Ok(false),
        }
    }

    /// Move a corrupt record out of the hint range into quarantine (kept for
    /// inspection, never replayed), log it, and count it. A `bad` without a
    /// log key (a failure of the log itself) is only logged.
    pub fn quarantine(&self, bad: &CorruptHint) -> Result<()> {
        if bad.log_key.is_empty() {
            tracing::error!(error = %bad.error, "hint log scan failed");
            return Ok(());
        }
        let _guard = self.stripe(&bad.log_key).lock();
        self.quarantine_locked(bad)
    }

    fn quarantine_locked(&self, bad: &CorruptHint) -> Result<()> {
        let Some(value) = self.log.get(&bad.log_key)? else {
            return Ok(());
        };
        // Only quarantine what is still damaged: a concurrent store may have
        // replaced the record with a good one since it was read.
        let target = parse_log_key(&bad.log_key);
        if let (Some(_), Ok(_)) = (&target, decode_record(&value)) {
            return Ok(());
        }
        let mut qkey = Vec::with_capacity(1 + bad.log_key.len());
        qkey.push(TAG_QUARANTINE);
        qkey.extend_from_slice(&bad.log_key);
        self.log
            .apply(&[LogOp::Put(&qkey, &value), LogOp::Delete(&bad.log_key)])?;
        if let Some((target, _, _)) = target {
            self.adjust_pending(target, Some((bad.log_key.len() + value.len()) as u64), None);
        }
        self.stats.lock().quarantined += 1;
        tracing::warn!(error = %bad.error, "corrupt hint quarantined; anti-entropy will repair its key");
        Ok(())
    }

    /// Hints pending per target: `(target, count, bytes)`, by target id.
    pub fn pending_by_target(&self) -> Vec<(NodeId, u64, u64)> {
        self.pending
            .lock()
            .iter()
            .map(|(target, p)| (*target, p.count, p.bytes))
            .collect()
    }

    /// The merge of every hint held for `key`, whatever its target: what
    /// this node knows of a key it does not own, for a sloppy-quorum read
    /// that asked it in place of a down owner. `None` if no hint holds the
    /// key. A corrupt record is skipped (and reported by the next replay).
    pub fn hinted_set(&self, partition: PartitionId, key: &[u8]) -> Result<Option<SiblingSet>> {
        let targets: Vec<NodeId> = self.pending.lock().keys().copied().collect();
        let mut merged: Option<SiblingSet> = None;
        for target in targets {
            let log_key = Bytes::from(hint_log_key(target, partition, key));
            let Some(value) = self.log.get(&log_key)? else {
                continue;
            };
            if let Ok(hint) = self.read_entry(log_key, value) {
                merged
                    .get_or_insert_with(SiblingSet::new)
                    .merge(&hint.siblings);
            }
        }
        Ok(merged)
    }

    /// Hints pending for one target.
    pub fn pending_for(&self, target: NodeId) -> Pending {
        self.pending
            .lock()
            .get(&target)
            .copied()
            .unwrap_or_default()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> HintStats {
        *self.stats.lock()
    }

    /// Where the log lives.
    pub fn dir(&self) -> PathBuf {
        self.log.location().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::version::{ActorId, Payload, VersionVector};

    /// A set of concurrent writes (and tombstones) by a few actors.
    fn sibling_set() -> impl Strategy<Value = SiblingSet> {
        prop::collection::vec(
            (
                1u64..5,
                prop::collection::vec(any::<u8>(), 0..40),
                any::<bool>(),
            ),
            0..6,
        )
        .prop_map(|writes| {
            let mut set = SiblingSet::new();
            for (i, (actor, value, tombstone)) in writes.into_iter().enumerate() {
                let payload = if tombstone {
                    Payload::Tombstone
                } else {
                    Payload::Value(Bytes::from(value))
                };
                set.write(
                    ActorId(actor),
                    &VersionVector::new(),
                    payload,
                    None,
                    i as u64,
                );
            }
            set
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(set in sibling_set(), created in any::<u64>(), seq in any::<u64>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &set, created, HintSeq(seq)).unwrap();
            let record = decode_record(&Bytes::from(buf))
                .unwrap_or_else(|(offset, detail)| panic!("offset {offset}: {detail}"));
            prop_assert_eq!(record.siblings, set);
            prop_assert_eq!(record.created_at_ms, created);
            prop_assert_eq!(record.seq, HintSeq(seq));
        }

        #[test]
        fn any_damaged_byte_of_a_record_is_detected(
            set in sibling_set(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &set, 7, HintSeq(9)).unwrap();
            let at = at.index(buf.len());
            buf[at] ^= flip;
            prop_assert!(decode_record(&Bytes::from(buf)).is_err());
        }

        #[test]
        fn truncated_records_are_detected(set in sibling_set(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_record(&mut buf, &set, 7, HintSeq(9)).unwrap();
            let cut = cut.index(buf.len());
            buf.truncate(cut);
            prop_assert!(decode_record(&Bytes::from(buf)).is_err());
        }

        #[test]
        fn log_keys_round_trip_and_group_by_target(
            target in any::<[u8; 16]>(),
            partition in any::<u32>(),
            key in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let target = NodeId::from_bytes(target);
            let log_key = Bytes::from(hint_log_key(target, PartitionId(partition), &key));
            prop_assert!(log_key.starts_with(&target_prefix(target)));
            let parsed = parse_log_key(&log_key);
            prop_assert_eq!(parsed, Some((target, PartitionId(partition), Bytes::from(key))));
        }
    }

    #[test]
    fn record_layout_matches_the_documented_offsets() {
        let mut buf = Vec::new();
        let set = SiblingSet::new();
        encode_record(
            &mut buf,
            &set,
            0x0102_0304_0506_0708,
            HintSeq(0x1112_1314_1516_1718),
        )
        .unwrap();
        let encoded = set.to_bytes();
        assert_eq!(buf[0], 1, "format version");
        assert_eq!(buf[1], 0, "flags");
        assert_eq!(buf[2..10], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            buf[10..18],
            [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(buf[18..22], (encoded.len() as u32).to_be_bytes());
        assert_eq!(buf[22..22 + encoded.len()], encoded[..]);
        let crc = crc32c::crc32c(&buf[..22 + encoded.len()]);
        assert_eq!(buf[22 + encoded.len()..], crc.to_be_bytes());
    }
}
