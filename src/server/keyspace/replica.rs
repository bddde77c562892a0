//! [`Replica`]: this node's store of sibling sets, on top of the storage
//! engine.
//!
//! Every change to a key is a read-modify-write of its whole sibling set under
//! that key's lock: read the encoded set, let the command compute the new set
//! (or decide to write nothing), then put the new set, its expiry-index entry
//! and nothing else into one engine [`WriteBatch`]. The locks are striped
//! (4096 `parking_lot` mutexes chosen by the key's ring hash) so unrelated keys
//! rarely contend, and a multi-key command takes its stripes in ascending order
//! so two of them can never deadlock. Reads take no lock: the engine's `get`
//! sees either the old or the new set, never half of one.
//!
//! The lock covers only CPU work and the engine's in-memory append
//! (`write_unsynced`); waiting for an fsync under `fsync always` happens after
//! the lock is released ([`Replica::wait_durable`], called from a blocking
//! thread), so one slow disk flush does not serialize writers of a stripe and
//! concurrent writers share one fsync (group commit).
//!
//! Every write also updates the Merkle tree of the key's partition
//! ([`super::merkle_index`]): the old and new encoded sets are hashed before
//! the write, and the difference is applied right after the engine write,
//! under the index's shared gate, so a scan that builds or checks a tree sees
//! exactly the writes the tree has seen.
//!
//! The replica also keeps the exact counters `DBSIZE` and `INFO keyspace` need
//! (keys, keys with an expiry, keys with siblings). Each write knows the key's
//! facts before and after, so the counters move by the exact difference under
//! the key's lock. At open they come from the counts saved at the last clean
//! close if the data is exactly what was counted ([`super::counts`]), and
//! otherwise from a scan of the data. A
//! "key" here is a stored set holding at least one value version, expired or
//! not: like Redis, `DBSIZE` counts an expired key until active expiry turns
//! it into a tombstone (within about 100 ms of its deadline).

use std::ops::Bound;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

use super::counts::Counts;
use super::deps::{
    decode_live_values, ActorId, Engine, LiveValues, Payload, SiblingLimits, SiblingPressure,
    SiblingSet, Version, WriteBatch,
};
use super::layout::{self, PartitionId};
use super::merkle_index::{MerkleIndex, TreeDelta};
use crate::cluster::merkle::{BucketIndex, MerkleTree};
use crate::error::{Error, Result};
use crate::storage::{Scan, SeqNo};

mod drop_partition;
pub use drop_partition::Dropped;

/// Number of lock stripes. A power of two well above the number of
/// connections that write at once, so contention stays rare.
const LOCK_STRIPES: usize = 4096;

/// What a command decided to do with one key.
///
/// There is deliberately no "remove the key": a replica loses versions only
/// through writes, merges and tombstone GC (see the module doc of
/// [`crate::version`]); expiry and `FLUSHALL` write tombstones instead.
#[derive(Debug)]
pub enum Change {
    /// Write nothing.
    Keep,
    /// Store this sibling set.
    Put(SiblingSet),
}

/// The time-independent facts about a stored set that the counters track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// At least one value version (expired or not).
    pub exists: bool,
    /// When every value version will have expired, if they all expire.
    pub deadline: Option<u64>,
    /// More than one value version.
    pub siblings: bool,
}

impl Facts {
    pub fn of(set: Option<&SiblingSet>) -> Facts {
        let Some(set) = set else {
            return Facts::default();
        };
        let mut values = 0usize;
        let mut deadline = Some(0u64);
        for version in set.versions() {
            if let Payload::Value(_) = version.payload {
                values += 1;
                deadline = match (deadline, version.expires_at_ms) {
                    (Some(d), Some(t)) => Some(d.max(t)),
                    _ => None,
                };
            }
        }
        Facts {
            exists: values > 0,
            deadline: if values > 0 { deadline } else { None },
            siblings: values > 1,
        }
    }
}

/// Counters the replica maintains; read by `INFO`.
#[derive(Debug, Default)]
pub struct Counters {
    pub keys: AtomicI64,
    pub expires: AtomicI64,
    pub siblings: AtomicI64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub expired_keys: AtomicU64,
}

impl Counters {
    fn apply(&self, before: Facts, after: Facts) {
        let delta = |b: bool, a: bool| i64::from(a) - i64::from(b);
        self.keys
            .fetch_add(delta(before.exists, after.exists), Ordering::Relaxed);
        self.expires.fetch_add(
            delta(before.deadline.is_some(), after.deadline.is_some()),
            Ordering::Relaxed,
        );
        self.siblings
            .fetch_add(delta(before.siblings, after.siblings), Ordering::Relaxed);
    }
}

/// This node's sibling sets over the storage engine.
pub struct Replica {
    engine: Arc<Engine>,
    actor: ActorId,
    partitions: u32,
    limits: SiblingLimits,
    locks: Box<[Mutex<()>]>,
    merkle: MerkleIndex,
    pub counters: Counters,
}

/// What building or checking a partition's tree read, and what it fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeScan {
    /// Keys scanned.
    pub keys: u64,
    /// Bytes of keys and encoded sets scanned.
    pub bytes: u64,
    /// Buckets a check found drifted and corrected (empty for a build).
    pub drifted: Vec<BucketIndex>,
}

/// A user key with its ring hash, computed once per command.
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    pub bytes: &'a [u8],
    pub hash: u64,
}

impl<'a> Key<'a> {
    pub fn new(bytes: &'a [u8]) -> Key<'a> {
        Key {
            bytes,
            hash: layout::key_hash(bytes),
        }
    }
}

impl Replica {
    /// Wraps an open engine and counts what it holds (one scan of the data).
    /// Wraps an open engine. `known` are counts saved at a clean close for
    /// exactly this data; without them the data is scanned and counted.
    pub fn open(
        engine: Arc<Engine>,
        actor: ActorId,
        partitions: u32,
        limits: SiblingLimits,
        known: Option<Counts>,
    ) -> Result<Replica> {
        limits.validate()?;
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let replica = Replica {
            engine,
            actor,
            partitions,
            limits,
            locks,
            merkle: MerkleIndex::new(partitions),
            counters: Counters::default(),
        };
        if let Some(known) = known {
            let c = &replica.counters;
            let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            c.keys.store(signed(known.keys), Ordering::Relaxed);
            c.expires.store(signed(known.expires), Ordering::Relaxed);
            c.siblings.store(signed(known.siblings), Ordering::Relaxed);
            return Ok(replica);
        }
        let (start, end) = layout::data_range();
        for entry in replica.engine.scan(start, end)? {
            let (engine_key, value) = entry?;
            let set = decode(&engine_key, &value)?;
            replica
                .counters
                .apply(Facts::default(), Facts::of(Some(&set)));
        }
        Ok(replica)
    }

    pub fn actor(&self) -> ActorId {
        self.actor
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn partition(&self, key: Key<'_>) -> PartitionId {
        layout::partition_of(key.hash, self.partitions)
    }

    /// The stored set of `key`, without locking.
    pub fn read(&self, key: Key<'_>) -> Result<Option<SiblingSet>> {
        Ok(self.read_stored(key)?.1)
    }

    /// The stored set of `key` as encoded on disk (the bytes its Merkle
    /// digest covers), without locking.
    pub fn read_encoded(&self, key: Key<'_>) -> Result<Option<Bytes>> {
        let engine_key = layout::data_key(self.partition(key), key.bytes);
        self.engine.get(&engine_key)
    }

    /// The stored set of `key`, encoded and decoded.
    fn read_stored(&self, key: Key<'_>) -> Result<(Option<Bytes>, Option<SiblingSet>)> {
        let engine_key = layout::data_key(self.partition(key), key.bytes);
        match self.engine.get(&engine_key)? {
            None => Ok((None, None)),
            Some(value) => {
                let set = decode(&engine_key, &value)?;
                Ok((Some(value), Some(set)))
            }
        }
    }

    /// The live values of `key` at `now_ms`, decoded without building the
    /// set (the `GET` fast path), without locking.
    pub fn read_live(&self, key: Key<'_>, now_ms: u64) -> Result<LiveValues> {
        let engine_key = layout::data_key(self.partition(key), key.bytes);
        match self.engine.get(&engine_key)? {
            None => Ok(LiveValues::Absent),
            Some(value) => {
                decode_live_values(&value, now_ms).map_err(|e| corrupt(&engine_key, e.to_string()))
            }
        }
    }

    /// Read-modify-write of one key under its lock. `decide` gets the stored
    /// set and returns the command's result and what to store. Returns the
    /// result and the sequence number of the write, if there was one.
    pub fn update<T>(
        &self,
        key: Key<'_>,
        decide: impl FnOnce(Option<SiblingSet>) -> Result<(T, Change)>,
    ) -> Result<(T, Option<SeqNo>)> {
        self.update_one(key, Limits::Enforce, decide)
    }

    /// Merges a set received from another replica (replication, read repair,
    /// hinted handoff, anti-entropy) into the stored one. Never refused for
    /// the sibling bound: the versions are already acknowledged elsewhere.
    pub fn merge_remote(&self, key: Key<'_>, incoming: SiblingSet) -> Result<Option<SeqNo>> {
        let (_, wrote) = self.update_one(key, Limits::Ignore, |current| {
            let mut merged = current.clone().unwrap_or_default();
            merged.merge_owned(incoming);
            let change = if Some(&merged) == current.as_ref() {
                Change::Keep
            } else {
                Change::Put(merged)
            };
            Ok(((), change))
        })?;
        Ok(wrote)
    }

    fn update_one<T>(
        &self,
        key: Key<'_>,
        limits: Limits,
        decide: impl FnOnce(Option<SiblingSet>) -> Result<(T, Change)>,
    ) -> Result<(T, Option<SeqNo>)> {
        let _guard = self.locks[stripe(key)].lock();
        let (stored, current) = self.read_stored(key)?;
        let before = Facts::of(current.as_ref());
        let (result, change) = decide(current)?;
        let mut batch = WriteBatch::new();
        let Some((after, encoded)) = self.stage(&mut batch, key, before, change, limits)? else {
            return Ok((result, None));
        };
        let delta = self.delta(key, stored.as_deref(), &encoded);
        let seq = self.write(&batch, &[delta])?;
        self.counters.apply(before, after);
        Ok((result, Some(seq)))
    }

    /// Read-modify-write of several distinct keys atomically: all their locks
    /// are held while `decide` runs and one batch carries every change.
    /// `decide` returns one [`Change`] per key, in order.
    pub fn update_many<T>(
        &self,
        keys: &[Key<'_>],
        decide: impl FnOnce(Vec<Option<SiblingSet>>) -> Result<(T, Vec<Change>)>,
    ) -> Result<(T, Option<SeqNo>)> {
        let _guards = self.lock_many(keys);
        let mut current = Vec::with_capacity(keys.len());
        let mut stored = Vec::with_capacity(keys.len());
        for key in keys {
            let (encoded, set) = self.read_stored(*key)?;
            stored.push(encoded);
            current.push(set);
        }
        let before: Vec<Facts> = current.iter().map(|s| Facts::of(s.as_ref())).collect();
        let (result, changes) = decide(current)?;
        if changes.len() != keys.len() {
            panic!(
                "update_many: {} changes for {} keys (one per key is the contract)",
                changes.len(),
                keys.len()
            );
        }
        let mut batch = WriteBatch::new();
        let mut moved = Vec::new();
        let mut deltas = Vec::new();
        for (((key, before), change), old) in keys.iter().zip(&before).zip(changes).zip(&stored) {
            if let Some((after, encoded)) =
                self.stage(&mut batch, *key, *before, change, Limits::Enforce)?
            {
                moved.push((*before, after));
                deltas.push(self.delta(*key, old.as_deref(), &encoded));
            }
        }
        if batch.is_empty() {
            return Ok((result, None));
        }
        let seq = self.write(&batch, &deltas)?;
        for (before, after) in moved {
            self.counters.apply(before, after);
        }
        Ok((result, Some(seq)))
    }

    /// The current counts.
    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        let count = |v: &AtomicI64| u64::try_from(v.load(Ordering::Relaxed)).unwrap_or(0);
        Counts {
            keys: count(&c.keys),
            expires: count(&c.expires),
            siblings: count(&c.siblings),
        }
    }

    /// Closes the engine with every key lock held, so that no write is in
    /// flight, and returns the counts and the engine's last sequence number
    /// at that moment (what [`Counts::save`] records). Writes attempted
    /// afterwards fail: the engine is closed.
    pub fn close(&self) -> Result<(Counts, SeqNo)> {
        let _all: Vec<MutexGuard<'_, ()>> = self.locks.iter().map(|l| l.lock()).collect();
        self.engine.close()?;
        Ok((self.counts(), SeqNo(self.engine.stats().last_seq)))
    }

    /// Blocks until the write `seq` is on disk (for `fsync always`).
    pub fn wait_durable(&self, seq: SeqNo) -> Result<()> {
        self.engine.wait_synced(seq)
    }

    /// Writes `batch` to the engine and applies the Merkle deltas of its
    /// keys, under the index's gate (see [`super::merkle_index`]).
    fn write(&self, batch: &WriteBatch, deltas: &[TreeDelta]) -> Result<SeqNo> {
        let gate = self.merkle.gate();
        let seq = self.engine.write_unsynced(batch)?;
        for delta in deltas {
            self.merkle.apply(&gate, delta);
        }
        Ok(seq)
    }

    /// The Merkle delta of `key` going from the stored `old` to `new`.
    fn delta(&self, key: Key<'_>, old: Option<&[u8]>, new: &[u8]) -> TreeDelta {
        TreeDelta::of(self.partition(key), key.hash, key.bytes, old, Some(new))
    }

    /// Adds the engine operations of `change` to `batch`; returns the key's
    /// facts after the change and the encoded set written, or `None` when
    /// nothing is written.
    fn stage(
        &self,
        batch: &mut WriteBatch,
        key: Key<'_>,
        before: Facts,
        change: Change,
        limits: Limits,
    ) -> Result<Option<(Facts, Vec<u8>)>> {
        let engine_key = layout::data_key(self.partition(key), key.bytes);
        let (after, encoded) = match change {
            Change::Keep => return Ok(None),
            Change::Put(set) => {
                if limits == Limits::Enforce {
                    self.check_siblings(key, &set)?;
                }
                let mut encoded = Vec::new();
                set.encode(&mut encoded);
                batch.put(&engine_key, &encoded);
                (Facts::of(Some(&set)), encoded)
            }
        };
        if before.deadline != after.deadline {
            if let Some(old) = before.deadline {
                batch.delete(&layout::expiry_key(old, key.bytes));
            }
            if let Some(new) = after.deadline {
                batch.put(&layout::expiry_key(new, key.bytes), b"");
            }
        }
        Ok(Some((after, encoded)))
    }

    /// Refuses a set past the sibling bound (`-CONFLICT too many siblings`);
    /// logs a warning past the warning level.
    fn check_siblings(&self, key: Key<'_>, set: &SiblingSet) -> Result<()> {
        if let SiblingPressure::Warn { versions } = self.limits.check(set.len())? {
            tracing::warn!(
                key = %String::from_utf8_lossy(key.bytes),
                versions,
                warn_at = self.limits.warn,
                "key has many siblings; clients should RESOLVE them"
            );
        }
        Ok(())
    }

    fn lock_many(&self, keys: &[Key<'_>]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| stripe(*k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| self.locks[s].lock()).collect()
    }

    /// The Merkle trees of the partitions, kept current by every write.
    pub fn merkle(&self) -> &MerkleIndex {
        &self.merkle
    }

    /// Builds `partition`'s Merkle tree from one scan of its data, while
    /// writes go on (see [`super::merkle_index`]). The tree is ready after.
    pub fn build_tree(&self, partition: PartitionId) -> Result<TreeScan> {
        let _maintenance = self.merkle.maintenance();
        let scan = self
            .merkle
            .begin_build(partition, || self.partition_entries(partition))?;
        let (built, scanned) = self.hash_partition(scan)?;
        self.merkle.finish_build(partition, &built)?;
        Ok(scanned)
    }

    /// Checks `partition`'s tree against one scan of its data and corrects
    /// any drift (the buckets are in the result); builds it if it is not
    /// ready yet.
    pub fn check_tree(&self, partition: PartitionId) -> Result<TreeScan> {
        let maintenance = self.merkle.maintenance();
        let Some((scan, copy)) = self
            .merkle
            .begin_check(partition, || self.partition_entries(partition))?
        else {
            drop(maintenance);
            return self.build_tree(partition);
        };
        let (rebuilt, mut scanned) = self.hash_partition(scan)?;
        scanned.drifted = self.merkle.finish_check(partition, &copy, &rebuilt)?;
        Ok(scanned)
    }

    fn hash_partition(&self, entries: PartitionEntries) -> Result<(MerkleTree, TreeScan)> {
        let mut tree = MerkleTree::new(self.merkle.shape());
        let mut scanned = TreeScan::default();
        for entry in entries {
            let (key, value) = entry?;
            scanned.keys += 1;
            scanned.bytes += (key.len() + value.len()) as u64;
            tree.insert(layout::key_hash(&key), &key, &value);
        }
        Ok((tree, scanned))
    }

    /// Every stored key of `partition` with its encoded set, in key order,
    /// from a snapshot taken now.
    pub fn partition_entries(&self, partition: PartitionId) -> Result<PartitionEntries> {
        let prefix = partition.prefix();
        let next = partition.0.checked_add(1).map(|p| PartitionId(p).prefix());
        let end = match &next {
            Some(next) => Bound::Excluded(&next[..]),
            None => Bound::Unbounded,
        };
        Ok(PartitionEntries {
            scan: self.engine.scan(Bound::Included(&prefix[..]), end)?,
        })
    }

    /// Up to `limit` stored keys of `partition`, in key order, strictly
    /// after `after` (or from the partition's start).
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Stored>> {
        let prefix = partition.prefix();
        let start_key;
        let start = match after {
            Some(user_key) => {
                start_key = layout::data_key(partition, user_key);
                Bound::Excluded(start_key.as_slice())
            }
            None => Bound::Included(&prefix[..]),
        };
        let next = partition.0.checked_add(1).map(|p| PartitionId(p).prefix());
        let end = match &next {
            Some(next) => Bound::Excluded(&next[..]),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for entry in self.engine.scan(start, end)? {
            if out.len() >= limit {
                break;
            }
            let (engine_key, value) = entry?;
            let Some(user_key) = layout::user_key(&engine_key) else {
                break;
            };
            out.push(Stored {
                key: Bytes::copy_from_slice(user_key),
                value,
            });
        }
        Ok(out)
    }

    /// The `index`-th stored key of `partition` (from 0) in key order, or
    /// `None` past the end: a walk of `index + 1` keys.
    pub fn key_at(&self, partition: PartitionId, index: u64) -> Result<Option<Bytes>> {
        let prefix = partition.prefix();
        // Walk rather than `nth`, which would skip over read errors.
        for (passed, entry) in (0u64..).zip(self.engine.scan_prefix(&prefix)?) {
            let (engine_key, _) = entry?;
            if passed == index {
                return Ok(layout::user_key(&engine_key).map(Bytes::copy_from_slice));
            }
        }
        Ok(None)
    }

    /// Visits every stored key of `partition` that starts with `prefix`, in
    /// key order, with whether it is live at `now_ms`.
    pub fn scan_prefix(
        &self,
        partition: PartitionId,
        prefix: &[u8],
        now_ms: u64,
        mut visit: impl FnMut(&[u8], bool),
    ) -> Result<()> {
        let engine_prefix = layout::data_key(partition, prefix);
        for entry in self.engine.scan_prefix(&engine_prefix)? {
            let (engine_key, value) = entry?;
            if let Some(user_key) = layout::user_key(&engine_key) {
                visit(user_key, is_live(&engine_key, &value, now_ms)?);
            }
        }
        Ok(())
    }

    /// Expiry-index entries due at `now_ms`, at most `limit`, oldest first.
    pub fn due_expiries(&self, now_ms: u64, limit: usize) -> Result<Vec<(u64, Bytes)>> {
        let (start, end) = layout::expiry_due_range(now_ms);
        let mut out = Vec::new();
        for entry in self
            .engine
            .scan(Bound::Included(&start), Bound::Excluded(&end))?
        {
            if out.len() >= limit {
                break;
            }
            let (engine_key, _) = entry?;
            if let Some((deadline, user_key)) = layout::parse_expiry_key(&engine_key) {
                out.push((deadline, Bytes::copy_from_slice(user_key)));
            }
        }
        Ok(out)
    }

    /// Handles one due expiry-index entry. If every value version of the key
    /// has expired, the key gets a tombstone superseding them (so its clock
    /// survives and no counter is ever reused; compaction purges the
    /// tombstone after the grace period). An entry that no longer matches the
    /// stored set (the key was rewritten or persisted) is just dropped.
    /// Returns whether a key was expired.
    pub fn expire_entry(&self, deadline: u64, user_key: &[u8], now_ms: u64) -> Result<bool> {
        let key = Key::new(user_key);
        let _guard = self.locks[stripe(key)].lock();
        let (stored, current) = self.read_stored(key)?;
        let before = Facts::of(current.as_ref());
        let mut batch = WriteBatch::new();
        // The entry itself goes in every case: it is either acted on or stale.
        batch.delete(&layout::expiry_key(deadline, user_key));
        // A version is still readable at the millisecond of its deadline.
        let reclaim = matches!(before.deadline, Some(d) if d < now_ms);
        let mut deltas = Vec::new();
        let after = match current {
            Some(mut set) if reclaim => {
                set.overwrite(self.actor, Payload::Tombstone, None, now_ms);
                match self.stage(&mut batch, key, before, Change::Put(set), Limits::Ignore)? {
                    Some((after, encoded)) => {
                        deltas.push(self.delta(key, stored.as_deref(), &encoded));
                        after
                    }
                    None => Facts::default(),
                }
            }
            _ => before,
        };
        self.write(&batch, &deltas)?;
        self.counters.apply(before, after);
        if reclaim {
            self.counters.expired_keys.fetch_add(1, Ordering::Relaxed);
        }
        Ok(reclaim)
    }
}

fn stripe(key: Key<'_>) -> usize {
    (key.hash as usize) % LOCK_STRIPES
}

/// The keys of one partition with their encoded sets (user key, set).
pub struct PartitionEntries {
    scan: Scan,
}

impl Iterator for PartitionEntries {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.scan.next()? {
            // The scan is bounded by the partition's prefix, which is never
            // in the reserved space, so every key has a user key.
            Ok((engine_key, value)) => {
                layout::user_key(&engine_key).map(|_| Ok((engine_key.slice(2..), value)))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// A stored key and its encoded set, as scans return them.
#[derive(Clone, Debug)]
pub struct Stored {
    pub key: Bytes,
    value: Bytes,
}

impl Stored {
    /// Whether a read at `now_ms` sees a value (decoded without building
    /// the set).
    /// The stored set itself (for streaming a partition to another node).
    pub fn decode(&self) -> Result<SiblingSet> {
        SiblingSet::decode_shared(&self.value)
            .map_err(|e| corrupt_user_key(&self.key, e.to_string()))
    }

    /// The encoded set as stored (format of [`crate::version::codec`]).
    pub fn encoded(&self) -> &Bytes {
        &self.value
    }

    pub fn is_live(&self, now_ms: u64) -> Result<bool> {
        match decode_live_values(&self.value, now_ms) {
            Ok(live) => Ok(!matches!(live, LiveValues::Absent)),
            Err(e) => Err(corrupt_user_key(&self.key, e.to_string())),
        }
    }
}

fn is_live(engine_key: &[u8], value: &Bytes, now_ms: u64) -> Result<bool> {
    match decode_live_values(value, now_ms) {
        Ok(live) => Ok(!matches!(live, LiveValues::Absent)),
        Err(e) => Err(corrupt(engine_key, e.to_string())),
    }
}

/// Whether a write is held to the sibling bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limits {
    /// Client writes: refused past the bound.
    Enforce,
    /// Merges and expiry: never refused.
    Ignore,
}

fn decode(engine_key: &[u8], value: &Bytes) -> Result<SiblingSet> {
    SiblingSet::decode_shared(value).map_err(|e| corrupt(engine_key, e.to_string()))
}

/// A stored set that does not decode: reported with its key, never skipped.
fn corrupt(engine_key: &[u8], detail: String) -> Error {
    corrupt_user_key(layout::user_key(engine_key).unwrap_or(engine_key), detail)
}

fn corrupt_user_key(user_key: &[u8], detail: String) -> Error {
    let key = String::from_utf8_lossy(user_key);
    Error::corruption(format!("sibling set of key {key:?}"), 0, detail)
}

/// The live (value, not expired) versions of a set, in the set's order.
pub fn live(set: Option<&SiblingSet>, now_ms: u64) -> Vec<&Version> {
    match set {
        None => Vec::new(),
        Some(set) => set.live(now_ms).collect(),
    }
}

/// The bytes of a live version.
pub fn value_of(version: &Version) -> Bytes {
    match &version.payload {
        Payload::Value(bytes) => bytes.clone(),
        // `live` never yields a tombstone.
        Payload::Tombstone => Bytes::new(),
    }
}

/// `set` (or an empty set) after a context-free write: the new version
/// supersedes every version this replica holds (DESIGN.md §3).
pub fn supersede(
    actor: ActorId,
    set: Option<SiblingSet>,
    payload: Payload,
    expires_at_ms: Option<u64>,
    now_ms: u64,
) -> SiblingSet {
    let mut set = set.unwrap_or_default();
    set.overwrite(actor, payload, expires_at_ms, now_ms);
    set
}

#[cfg(test)]
mod merkle_tests {
    use std::sync::Arc;

    use super::*;
    use crate::server::keyspace::deps::StorageOptions;

    fn replica(dir: &std::path::Path) -> Replica {
        let engine = Engine::open(dir, StorageOptions::default()).expect("engine");
        Replica::open(
            Arc::new(engine),
            ActorId(1),
            16,
            SiblingLimits::default(),
            None,
        )
        .expect("replica")
    }

    fn value(set: Option<SiblingSet>, v: &'static [u8], expires: Option<u64>) -> Change {
        Change::Put(supersede(
            ActorId(1),
            set,
            Payload::Value(Bytes::from_static(v)),
            expires,
            1_000,
        ))
    }

    fn all_partitions(r: &Replica) -> Vec<PartitionId> {
        (0..r.partitions()).map(|p| PartitionId(p as u16)).collect()
    }

    #[test]
    fn every_write_path_keeps_the_trees_equal_to_a_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        for p in all_partitions(&r) {
            r.build_tree(p).expect("build");
        }
        let keys: Vec<Vec<u8>> = (0..200u32).map(|i| format!("k{i}").into_bytes()).collect();
        for (i, key) in keys.iter().enumerate() {
            let expires = (i % 3 == 0).then_some(2_000);
            r.update(Key::new(key), |set| Ok(((), value(set, b"v1", expires))))
                .expect("update");
        }
        // A multi-key write, then merges of sets made elsewhere.
        let pair = [Key::new(&keys[1]), Key::new(&keys[2])];
        r.update_many(&pair, |sets| {
            let changes = sets.into_iter().map(|s| value(s, b"v2", None)).collect();
            Ok(((), changes))
        })
        .expect("update_many");
        let mut remote = SiblingSet::new();
        remote.overwrite(
            ActorId(2),
            Payload::Value(Bytes::from_static(b"other")),
            None,
            5,
        );
        r.merge_remote(Key::new(&keys[5]), remote.clone())
            .expect("merge");
        r.merge_remote(Key::new(b"new-from-peer"), remote)
            .expect("merge");
        // Active expiry tombstones a third of the keys.
        let expired =
            crate::server::keyspace::expiry::expire_due(&r, 3_000, 1_000).expect("expiry");
        assert!(expired.reclaimed > 50);
        let roots: Vec<_> = all_partitions(&r)
            .into_iter()
            .map(|p| r.merkle().root(p).expect("ready"))
            .collect();
        for p in all_partitions(&r) {
            let checked = r.check_tree(p).expect("check");
            assert!(checked.drifted.is_empty(), "partition {p:?} drifted");
        }
        // A rebuild from scratch lands on the same roots.
        for p in all_partitions(&r) {
            r.build_tree(p).expect("rebuild");
            assert_eq!(r.merkle().root(p), Some(roots[p.0 as usize]));
        }
        assert_eq!(r.merkle().counters.drift_repairs.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_write_that_bypassed_the_replica_is_found_and_corrected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        let key = Key::new(b"sneaky");
        let p = r.partition(key);
        r.build_tree(p).expect("build");
        let empty_root = r.merkle().root(p).expect("ready");
        // Straight into the engine, as tombstone GC or a bug would.
        let mut set = SiblingSet::new();
        set.overwrite(ActorId(1), Payload::Tombstone, None, 1);
        let mut encoded = Vec::new();
        set.encode(&mut encoded);
        let mut batch = WriteBatch::new();
        batch.put(&layout::data_key(p, key.bytes), &encoded);
        r.engine().write(&batch).expect("write");
        assert_eq!(r.merkle().root(p), Some(empty_root));
        let checked = r.check_tree(p).expect("check");
        assert_eq!(checked.keys, 1);
        assert_eq!(
            checked.drifted,
            vec![r.merkle().shape().bucket_of(key.hash)]
        );
        assert_ne!(r.merkle().root(p), Some(empty_root));
        assert!(r.check_tree(p).expect("check again").drifted.is_empty());
    }

    #[test]
    fn writes_before_the_build_are_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        let key = Key::new(b"early");
        let p = r.partition(key);
        r.update(key, |set| Ok(((), value(set, b"v", None))))
            .expect("write");
        assert!(!r.merkle().is_ready(p));
        r.build_tree(p).expect("build");
        let built = r.merkle().root(p);
        r.update(key, |set| Ok(((), value(set, b"w", None))))
            .expect("write");
        assert_ne!(r.merkle().root(p), built);
        assert!(r.check_tree(p).expect("check").drifted.is_empty());
    }
}
