//! Reclaiming space: active expiry of keys whose every value version has
//! expired, and the compaction filter that purges old tombstones.
//!
//! # Active expiry
//!
//! Expired versions read as absent at once (every read filters on the
//! version's absolute deadline); this task makes the keys *go away* so they
//! leave `DBSIZE`, `KEYS` and `SCAN` and free their space, as Redis' active
//! expiry does. Every [`DEFAULT_INTERVAL`] it reads the expiry index
//! (see [`super::layout`]) from its oldest entry up to "now", a bounded batch
//! at a time, and for each entry re-checks the stored set under the key's
//! lock: a set whose value versions have all expired gets a tombstone that
//! supersedes them, an entry that no longer matches the set (the key was
//! rewritten with another TTL or persisted) is dropped. Work per tick is
//! bounded by [`DEFAULT_BATCH`] entries and [`TICK_BUDGET`] of time, so a mass
//! expiry is spread over ticks instead of stalling the node.
//!
//! Why a tombstone rather than erasing the key: erasing forgets the key's
//! clock, so its next write would start again at `(actor, 1)` and an old
//! context token could silently supersede it (the counter-reset hazard in
//! [`crate::version`]); in the cluster, a replica that forgot a key would also
//! let anti-entropy resurrect it. The value bytes go at the next compaction,
//! the small tombstone after the grace period. In the cluster each replica
//! expires independently, so replicas may hold different tombstones for one
//! expiry; they merge as concurrent tombstones, which read as absent.
//!
//! # Tombstone GC
//!
//! `DEL` writes a tombstone version (DESIGN.md §3), so a deleted key keeps a
//! small record with its clock. [`TombstoneGc`] is the compaction filter the
//! keyspace gives the engine: it drops a set made only of tombstones once the
//! newest of them is older than the grace period (default 10 days, like
//! Cassandra's `gc_grace`). Expired values are not its business: active
//! expiry turns them into tombstones first, so a set the filter drops never
//! counted in `DBSIZE` and never had an expiry-index entry, and the
//! maintained counters stay exact. That is safe on a single node; the
//! cluster adds the condition that every replica of the partition has the
//! tombstone, otherwise anti-entropy could bring the deleted value back.
//! That condition is a [`GcHorizon`]: per partition, a time before which
//! every replica is known to hold everything this one holds (anti-entropy
//! sets it when every other owner compared equal Merkle roots with this
//! node). A tombstone is purged only if it is older than both the grace
//! period and its partition's horizon. A keyspace opened without a horizon
//! (a library user, the single-node tests) purges on the grace period alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deps::{CompactionFilter, FilterDecision, SiblingSet};
use super::layout;
use super::now_ms;
use super::replica::Replica;
use crate::error::Result;

/// How often the active expiry task wakes up.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Expiry-index entries read per batch.
pub const DEFAULT_BATCH: usize = 512;
/// Longest time one tick may spend expiring before it yields.
pub const TICK_BUDGET: Duration = Duration::from_millis(25);
/// Default age after which a tombstone-only set may be purged.
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(10 * 24 * 3600);

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpiryTick {
    /// Index entries examined.
    pub examined: usize,
    /// Keys tombstoned because all their values had expired.
    pub reclaimed: usize,
}

/// Runs one tick of active expiry at `now_ms`.
pub fn expire_due(replica: &Replica, now_ms: u64, batch: usize) -> Result<ExpiryTick> {
    let started = Instant::now();
    let mut tick = ExpiryTick::default();
    loop {
        let due = replica.due_expiries(now_ms, batch)?;
        for (deadline, key) in &due {
            tick.examined += 1;
            if replica.expire_entry(*deadline, key, now_ms)? {
                tick.reclaimed += 1;
            }
        }
        if due.len() < batch || started.elapsed() >= TICK_BUDGET {
            return Ok(tick);
        }
    }
}

/// The keyspace's compaction filter: purges tombstone-only sibling sets past
/// the grace period. Never touches the reserved (index) key space.
pub struct TombstoneGc {
    grace_ms: u64,
    horizon: Option<Arc<GcHorizon>>,
}

/// Per partition, the wall-clock time (ms since the epoch) before which
/// every replica of the partition is known to hold every version this node
/// holds: versions written before it cannot come back from another replica.
/// Starts at 0 (nothing known: purge nothing); anti-entropy moves it.
#[derive(Debug)]
pub struct GcHorizon {
    at: Box<[AtomicU64]>,
}

impl GcHorizon {
    /// A horizon of 0 for each of `partitions` partitions.
    pub fn new(partitions: u32) -> Arc<GcHorizon> {
        Arc::new(GcHorizon {
            at: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The horizon of `partition` (0 for one out of range).
    pub fn get(&self, partition: layout::PartitionId) -> u64 {
        self.at
            .get(usize::from(partition.0))
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Sets the horizon of `partition` (it may move back: a new owner that
    /// has not compared yet makes it 0 again).
    pub fn set(&self, partition: layout::PartitionId, at_ms: u64) {
        if let Some(a) = self.at.get(usize::from(partition.0)) {
            a.store(at_ms, Ordering::Relaxed);
        }
    }
}

impl TombstoneGc {
    /// Purges on the grace period alone (a single node, with no replica
    /// that could hold a deleted value).
    pub fn new(grace: Duration) -> Arc<TombstoneGc> {
        Self::with_horizon(grace, None)
    }

    /// Purges only tombstones older than both the grace period and their
    /// partition's `horizon` (when given).
    pub fn with_horizon(grace: Duration, horizon: Option<Arc<GcHorizon>>) -> Arc<TombstoneGc> {
        Arc::new(TombstoneGc {
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            horizon,
        })
    }

    /// Whether `set` may be dropped at `now_ms`: it holds only tombstones,
    /// all written more than the grace period ago.
    pub fn purgeable(&self, set: &SiblingSet, now_ms: u64) -> bool {
        self.purgeable_before(set, now_ms.saturating_sub(self.grace_ms))
    }

    fn purgeable_before(&self, set: &SiblingSet, cutoff: u64) -> bool {
        set.is_only_tombstones() && set.versions().iter().all(|v| v.written_at_ms < cutoff)
    }

    /// The time before which a tombstone of the engine key `key` may go.
    fn cutoff(&self, key: &[u8], now_ms: u64) -> u64 {
        let grace = now_ms.saturating_sub(self.grace_ms);
        match (&self.horizon, layout::partition_in(key)) {
            (None, _) => grace,
            (Some(h), Some(p)) => grace.min(h.get(p)),
            (Some(_), None) => 0,
        }
    }
}

impl CompactionFilter for TombstoneGc {
    fn filter(&self, key: &[u8], value: &[u8]) -> FilterDecision {
        if layout::user_key(key).is_none() {
            return FilterDecision::Keep;
        }
        let cutoff = self.cutoff(key, now_ms());
        if cutoff == 0 {
            return FilterDecision::Keep;
        }
        match SiblingSet::decode(value) {
            Ok(set) if self.purgeable_before(&set, cutoff) => FilterDecision::Remove,
            // A set that does not decode is kept: the read path reports it.
            _ => FilterDecision::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::server::keyspace::deps::{ActorId, Payload};
    use crate::server::keyspace::layout::{data_key, expiry_key, PartitionId};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn a_tombstone_past_its_grace_waits_for_the_partition_horizon() {
        let mut set = SiblingSet::new();
        set.overwrite(ActorId(1), Payload::Tombstone, None, 1000);
        let bytes = encoded(&set);
        let key = data_key(PartitionId(3), b"gone");
        let horizon = GcHorizon::new(8);
        let gc = TombstoneGc::with_horizon(Duration::from_millis(1), Some(horizon.clone()));
        // Long past the grace period, but no replica comparison yet.
        assert_eq!(gc.filter(&key, &bytes), FilterDecision::Keep);
        // Every replica compared equal before the tombstone was written.
        horizon.set(PartitionId(3), 999);
        assert_eq!(gc.filter(&key, &bytes), FilterDecision::Keep);
        // ... and after: now it may go.
        horizon.set(PartitionId(3), 1001);
        assert_eq!(gc.filter(&key, &bytes), FilterDecision::Remove);
        // Another partition's horizon says nothing about this one.
        let other = data_key(PartitionId(4), b"gone");
        assert_eq!(gc.filter(&other, &bytes), FilterDecision::Keep);
        // Without a horizon (a single node), the grace period alone decides.
        let alone = TombstoneGc::new(Duration::from_millis(1));
        assert_eq!(alone.filter(&other, &bytes), FilterDecision::Remove);
    }

    fn encoded(set: &SiblingSet) -> Vec<u8> {
        let mut out = Vec::new();
        set.encode(&mut out);
        out
    }

    #[test]
    fn only_sets_dead_for_longer_than_the_grace_period_are_purged() {
        let gc = TombstoneGc::new(Duration::from_millis(10 * DAY_MS));
        let actor = ActorId(7);
        let now = 100 * DAY_MS;

        let mut deleted = SiblingSet::new();
        deleted.overwrite(
            actor,
            Payload::Value(Bytes::from_static(b"v")),
            None,
            now - 30 * DAY_MS,
        );
        deleted.overwrite(actor, Payload::Tombstone, None, now - 11 * DAY_MS);
        assert!(gc.purgeable(&deleted, now));
        assert!(
            !gc.purgeable(&deleted, now - 2 * DAY_MS),
            "still in its grace period"
        );

        let mut live = SiblingSet::new();
        live.overwrite(
            actor,
            Payload::Value(Bytes::from_static(b"v")),
            None,
            now - 30 * DAY_MS,
        );
        assert!(
            !gc.purgeable(&live, now),
            "a value without expiry never dies"
        );

        let mut expired = SiblingSet::new();
        let deadline = Some(now - 12 * DAY_MS);
        expired.overwrite(
            actor,
            Payload::Value(Bytes::from_static(b"v")),
            deadline,
            now - 20 * DAY_MS,
        );
        assert!(
            !gc.purgeable(&expired, now),
            "expired values are tombstoned by active expiry first"
        );

        assert!(!gc.purgeable(&SiblingSet::new(), now));
    }

    #[test]
    fn the_filter_keeps_index_entries_and_undecodable_values() {
        let gc = TombstoneGc::new(Duration::ZERO);
        let mut deleted = SiblingSet::new();
        deleted.overwrite(ActorId(1), Payload::Tombstone, None, 1);
        let key = data_key(PartitionId(3), b"k");
        assert_eq!(gc.filter(&key, &encoded(&deleted)), FilterDecision::Remove);
        assert_eq!(gc.filter(&expiry_key(1, b"k"), b""), FilterDecision::Keep);
        assert_eq!(gc.filter(&key, b"\xffgarbage"), FilterDecision::Keep);
    }
}

#[cfg(test)]
mod active_expiry_tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::server::keyspace::deps::{
        ActorId, Engine, Payload, SiblingLimits, StorageOptions, WriteBatch,
    };
    use crate::server::keyspace::layout::expiry_key;
    use crate::server::keyspace::replica::{supersede, Change, Key};

    fn replica(dir: &std::path::Path) -> Replica {
        let engine = Engine::open(dir, StorageOptions::default()).expect("engine");
        Replica::open(
            Arc::new(engine),
            ActorId(1),
            256,
            SiblingLimits::default(),
            None,
        )
        .expect("replica")
    }

    fn put(r: &Replica, key: &[u8], expires: Option<u64>, now: u64) {
        r.update(Key::new(key), |set| {
            let set = supersede(
                ActorId(1),
                set,
                Payload::Value(Bytes::from_static(b"v")),
                expires,
                now,
            );
            Ok(((), Change::Put(set)))
        })
        .expect("write");
    }

    #[test]
    fn due_keys_become_tombstones_and_leave_the_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        put(&r, b"a", Some(1_000), 500);
        put(&r, b"b", Some(5_000), 500);
        put(&r, b"c", None, 500);
        assert_eq!(r.counts().keys, 3);
        assert_eq!(r.counts().expires, 2);
        // Not due at its own deadline millisecond.
        assert_eq!(expire_due(&r, 1_000, 10).expect("tick").reclaimed, 0);
        let tick = expire_due(&r, 1_001, 10).expect("tick");
        assert_eq!(
            tick,
            ExpiryTick {
                examined: 1,
                reclaimed: 1
            }
        );
        assert_eq!((r.counts().keys, r.counts().expires), (2, 1));
        let a = r
            .read(Key::new(b"a"))
            .expect("read")
            .expect("kept as a tombstone");
        assert!(a.is_only_tombstones());
        assert!(
            r.due_expiries(u64::MAX, 10).expect("index").len() == 1,
            "only b's entry is left"
        );
    }

    #[test]
    fn a_stale_index_entry_is_dropped_without_touching_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        put(&r, b"k", Some(9_000), 500);
        // An entry that does not match the stored deadline: writes keep the
        // index in step, but it is only a hint and the task must not trust it.
        let mut batch = WriteBatch::new();
        batch.put(&expiry_key(2_000, b"k"), b"");
        r.engine().write(&batch).expect("write");
        let tick = expire_due(&r, 3_000, 10).expect("tick");
        assert_eq!(
            tick,
            ExpiryTick {
                examined: 1,
                reclaimed: 0
            }
        );
        assert!(r
            .read(Key::new(b"k"))
            .expect("read")
            .is_some_and(|s| !s.is_only_tombstones()));
        assert_eq!(r.due_expiries(3_000, 10).expect("index"), vec![]);
        assert_eq!(
            r.due_expiries(u64::MAX, 10).expect("index").len(),
            1,
            "the real entry stays"
        );
    }

    #[test]
    fn a_tick_works_through_more_entries_than_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        for i in 0..25u32 {
            put(
                &r,
                format!("k{i}").as_bytes(),
                Some(1_000 + u64::from(i)),
                500,
            );
        }
        let tick = expire_due(&r, 10_000, 4).expect("tick");
        assert_eq!(tick.reclaimed, 25);
        assert_eq!(r.counts().keys, 0);
    }
}
