//! The Merkle trees of this node's partitions, kept current by every write
//! of the [`Replica`](super::replica::Replica).
//!
//! # What
//!
//! One [`MerkleTree`] per partition (`Q` of them, all in memory: with the
//! default 1024 buckets about 34 KiB each, 8.7 MiB for `Q = 256`; see
//! [`shape_for`] for large `Q`). Every write path of the replica (client
//! writes, `merge_remote` for replication, read repair, hinted handoff and
//! anti-entropy, active expiry) hashes the key's old and new encoded sibling
//! sets ([`TreeDelta::of`], before any lock) and applies the difference to
//! the key's tree right after the engine write ([`MerkleIndex::apply`]). So
//! the trees cost two SHA-256 per write and no I/O, and an anti-entropy
//! round between equal replicas compares two roots and reads nothing.
//!
//! # Why a gate
//!
//! Building a tree from a scan, or checking a tree against one, needs the
//! tree and the scan to describe the same moment. Writers therefore hold the
//! index's *gate* in shared mode from before their engine write until their
//! delta is applied ([`MerkleIndex::gate`]); a build or a check takes it
//! exclusively just long enough to open the engine's snapshot scan and copy
//! (or reset) the tree, then scans with the gate released. Shared mode costs
//! writers one atomic add and never makes them wait for each other (the
//! engine serializes its writes under its own mutex anyway); they wait only
//! while a scan is being opened.
//!
//! Leaves are sums of key digests (see [`crate::cluster::merkle`]), so the
//! scan need not block writes for its duration:
//!
//! - **Build** ([`MerkleIndex::begin_build`]): under the gate, reset the tree
//!   to empty and open the scan. Writes made afterwards add their deltas to
//!   the empty tree; when the scan is hashed, its tree is *added* leaf by
//!   leaf ([`MerkleTree::apply_correction`] against an empty tree). The sum
//!   is exactly the tree of the data as it is then.
//! - **Check** ([`MerkleIndex::begin_check`]): under the gate, copy the tree
//!   and open the scan. If the scan's tree differs from the copy, the tree
//!   drifted from the data (a write path that missed its delta, a write the
//!   engine made visible but reported as failed, or tombstone GC, below);
//!   adding `scan - copy` to the live tree fixes it whatever was written
//!   since.
//!
//! Builds and checks of all partitions are serialized by one maintenance
//! lock (they run one partition at a time anyway), so a build can never
//! reset a tree that a check is about to correct.
//!
//! # Not ready until built
//!
//! Trees are not persisted. At open every tree is *not ready*: writes keep
//! updating it, but it lacks the data already stored, so anti-entropy must
//! not use it (a session for it is refused). The anti-entropy task builds
//! every partition in the background after start-up, one scan per
//! partition, so opening a node is not delayed by hashing its data; a
//! partition becomes usable as soon as its own build finishes.
//!
//! # Tombstone GC
//!
//! The compaction filter that purges old tombstone-only sets
//! ([`super::expiry::TombstoneGc`]) runs inside the storage engine, which
//! knows nothing of trees, and may drop a version the tree still counts. The
//! tree then differs from the data until the next check of that partition
//! corrects it (anti-entropy checks one partition per round), and two
//! replicas that purged at different times may compare unequal meanwhile;
//! such a round finds no key to exchange and costs one scan. Nothing is
//! resurrected: a purged key is simply absent on both sides.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::layout::PartitionId;
use crate::cluster::merkle::{BucketIndex, KeyDigest, MerkleTree, NodeHash, TreeShape};
use crate::error::Result;

/// Most partitions that get the default 1024-bucket trees; more partitions
/// get 16-bucket trees (see [`shape_for`]).
const LARGE_TREES_UP_TO: u32 = 512;

/// Buckets per tree for a node with `partitions` partitions: 1024 (the
/// default) up to 512 partitions (at most 17.5 MiB of trees), 16 beyond
/// (65 280 partitions, the layout's maximum, take 35 MiB). Both depths are
/// odd (3 and 1 levels below the root), so the initiator of a session is the
/// side that picks the buckets to compare. `Q` is a cluster-wide setting,
/// so every replica derives the same shape; a mismatch would be refused by
/// the session's opening anyway.
pub fn shape_for(partitions: u32) -> TreeShape {
    let buckets = if partitions <= LARGE_TREES_UP_TO {
        crate::cluster::merkle::DEFAULT_BUCKETS
    } else {
        16
    };
    TreeShape::new(buckets).unwrap_or_default()
}

/// What the index has done, for `INFO`.
#[derive(Debug, Default)]
pub struct IndexCounters {
    /// Trees built from a scan (start-up, or a check that found a broken
    /// tree).
    pub builds: AtomicU64,
    /// Trees checked against a scan.
    pub checks: AtomicU64,
    /// Checks that found drift and corrected it.
    pub drift_repairs: AtomicU64,
    /// Buckets those corrections changed.
    pub drifted_buckets: AtomicU64,
}

/// A write's effect on its partition's tree, hashed before any lock.
#[derive(Clone, Debug)]
pub struct TreeDelta {
    partition: PartitionId,
    key_hash: u64,
    old: Option<KeyDigest>,
    new: Option<KeyDigest>,
}

impl TreeDelta {
    /// The delta of `key` (ring hash `key_hash`, in `partition`) going from
    /// the encoded set `old` to `new` (`None` = not stored).
    pub fn of(
        partition: PartitionId,
        key_hash: u64,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> TreeDelta {
        let (old, new) = if old == new {
            (None, None)
        } else {
            (
                old.map(|v| KeyDigest::of(key, v)),
                new.map(|v| KeyDigest::of(key, v)),
            )
        };
        TreeDelta {
            partition,
            key_hash,
            old,
            new,
        }
    }
}

/// Held by a writer from before its engine write until its deltas are
/// applied (see the module doc).
pub struct WriteGate<'a>(#[allow(dead_code)] RwLockReadGuard<'a, ()>);

/// One partition's tree and whether it describes all of the data.
struct Slot {
    tree: MerkleTree,
    ready: bool,
}

/// The trees of every partition. See the module doc.
pub struct MerkleIndex {
    shape: TreeShape,
    gate: RwLock<()>,
    slots: Box<[Mutex<Slot>]>,
    maintenance: Mutex<()>,
    pub counters: IndexCounters,
}

impl MerkleIndex {
    /// Empty, not-ready trees for `partitions` partitions.
    pub fn new(partitions: u32) -> MerkleIndex {
        let shape = shape_for(partitions);
        let empty = MerkleTree::new(shape);
        let slots = (0..partitions)
            .map(|_| {
                Mutex::new(Slot {
                    tree: empty.clone(),
                    ready: false,
                })
            })
            .collect();
        MerkleIndex {
            shape,
            gate: RwLock::new(()),
            slots,
            maintenance: Mutex::new(()),
            counters: IndexCounters::default(),
        }
    }

    /// The shape of every tree.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// Number of partitions (trees).
    pub fn partitions(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Take before a write reaches the engine; apply the write's deltas
    /// before dropping it.
    pub fn gate(&self) -> WriteGate<'_> {
        WriteGate(self.gate.read())
    }

    /// Applies a write's delta. The caller holds the gate (the argument
    /// says so) and the key's lock, so the old digest is what the tree holds.
    pub fn apply(&self, _gate: &WriteGate<'_>, delta: &TreeDelta) {
        if delta.old.is_none() && delta.new.is_none() {
            return;
        }
        if let Some(slot) = self.slots.get(usize::from(delta.partition.0)) {
            slot.lock()
                .tree
                .update_digests(delta.key_hash, delta.old.as_ref(), delta.new.as_ref());
        }
    }

    /// Whether `partition`'s tree describes all of its data.
    pub fn is_ready(&self, partition: PartitionId) -> bool {
        self.slot(partition).is_some_and(|s| s.ready)
    }

    /// How many trees are ready.
    pub fn ready_count(&self) -> usize {
        self.slots.iter().filter(|s| s.lock().ready).count()
    }

    /// Runs `f` on `partition`'s tree under its lock (writes to the
    /// partition wait meanwhile: keep it short). `None` if the tree is not
    /// ready or the partition does not exist.
    pub fn with_tree<T>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&mut MerkleTree) -> T,
    ) -> Option<T> {
        let mut slot = self.slot(partition)?;
        if !slot.ready {
            return None;
        }
        Some(f(&mut slot.tree))
    }

    /// The root of `partition`'s tree, if it is ready.
    pub fn root(&self, partition: PartitionId) -> Option<NodeHash> {
        self.with_tree(partition, |t| t.root())
    }

    /// Serializes builds and checks (see the module doc); hold the guard
    /// from `begin_*` to `finish_*`.
    pub fn maintenance(&self) -> MutexGuard<'_, ()> {
        self.maintenance.lock()
    }

    /// Starts a build of `partition`: with no write in flight, marks its
    /// tree not ready and empty, and opens the scan `open` returns (a
    /// snapshot of the partition). Finish with [`finish_build`](Self::finish_build).
    pub fn begin_build<S>(
        &self,
        partition: PartitionId,
        open: impl FnOnce() -> Result<S>,
    ) -> Result<S> {
        let _exclusive = self.gate.write();
        let scan = open()?;
        if let Some(mut slot) = self.slot(partition) {
            slot.tree = MerkleTree::new(self.shape);
            slot.ready = false;
        }
        Ok(scan)
    }

    /// Adds the tree `built` from the scan to what writes collected since
    /// the scan began; the tree is ready from now on.
    pub fn finish_build(&self, partition: PartitionId, built: &MerkleTree) -> Result<()> {
        let empty = MerkleTree::new(self.shape);
        if let Some(mut slot) = self.slot(partition) {
            slot.tree.apply_correction(&empty, built)?;
            slot.ready = true;
        }
        self.counters.builds.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Starts a check of `partition`'s (ready) tree: with no write in
    /// flight, copies the tree and opens the scan. `None` if the tree is
    /// not ready (build it instead).
    pub fn begin_check<S>(
        &self,
        partition: PartitionId,
        open: impl FnOnce() -> Result<S>,
    ) -> Result<Option<(S, MerkleTree)>> {
        let _exclusive = self.gate.write();
        let copy = match self.slot(partition) {
            Some(slot) if slot.ready => slot.tree.clone(),
            _ => return Ok(None),
        };
        Ok(Some((open()?, copy)))
    }

    /// Compares the copy with the tree `rebuilt` from the scan and corrects
    /// the live tree where they differ; also recomputes its inner nodes if
    /// they do not match its leaves. Returns the buckets that had drifted.
    pub fn finish_check(
        &self,
        partition: PartitionId,
        copy: &MerkleTree,
        rebuilt: &MerkleTree,
    ) -> Result<Vec<BucketIndex>> {
        self.counters.checks.fetch_add(1, Relaxed);
        let Some(mut slot) = self.slot(partition) else {
            return Ok(Vec::new());
        };
        let drifted = slot.tree.apply_correction(copy, rebuilt)?;
        let inner_broken = !slot.tree.verify_inner_nodes();
        if inner_broken {
            slot.tree.recompute_inner_nodes();
        }
        drop(slot);
        if !drifted.is_empty() || inner_broken {
            self.counters.drift_repairs.fetch_add(1, Relaxed);
            self.counters
                .drifted_buckets
                .fetch_add(drifted.len() as u64, Relaxed);
        }
        Ok(drifted)
    }

    fn slot(&self, partition: PartitionId) -> Option<MutexGuard<'_, Slot>> {
        self.slots.get(usize::from(partition.0)).map(|s| s.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::keyspace::layout::key_hash;

    fn delta(key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> TreeDelta {
        TreeDelta::of(PartitionId(1), key_hash(key), key, old, new)
    }

    #[test]
    fn shapes_keep_memory_bounded_and_depths_odd() {
        assert_eq!(shape_for(256).buckets(), 1024);
        assert_eq!(shape_for(1).buckets(), 1024);
        assert_eq!(shape_for(65_280).buckets(), 16);
        for q in [1, 256, 512, 513, 65_280] {
            let s = shape_for(q);
            assert_eq!(s.leaf_depth() % 2, 1, "Q={q}");
            assert!(q as usize * s.memory_bytes() < 40 << 20, "Q={q}");
        }
    }

    #[test]
    fn trees_are_not_ready_until_built_and_writes_during_a_build_count() {
        let index = MerkleIndex::new(4);
        let p = PartitionId(1);
        assert!(!index.is_ready(p));
        assert_eq!(index.root(p), None);
        // A write before the build: in the scan, so dropped by the reset.
        index.apply(&index.gate(), &delta(b"a", None, Some(b"1")));
        let scan: Vec<(&[u8], &[u8])> = index
            .begin_build(p, || Ok(vec![(&b"a"[..], &b"1"[..])]))
            .expect("begin");
        // A write after the scan was opened: only in the tree.
        index.apply(&index.gate(), &delta(b"b", None, Some(b"2")));
        let built = MerkleTree::from_entries(
            index.shape(),
            scan.iter().map(|(k, v)| (key_hash(k), *k, *v)),
        );
        index.finish_build(p, &built).expect("finish");
        assert!(index.is_ready(p));
        let want = MerkleTree::from_entries(
            index.shape(),
            [(&b"a"[..], &b"1"[..]), (b"b", b"2")]
                .into_iter()
                .map(|(k, v)| (key_hash(k), k, v)),
        )
        .root();
        assert_eq!(index.root(p), Some(want));
        assert_eq!(index.ready_count(), 1);
    }

    #[test]
    fn a_check_corrects_a_missed_write_and_keeps_later_ones() {
        let index = MerkleIndex::new(2);
        let p = PartitionId(1);
        let empty = MerkleTree::new(index.shape());
        index.begin_build(p, || Ok(())).expect("begin");
        index.finish_build(p, &empty).expect("finish");
        index.apply(&index.gate(), &delta(b"seen", None, Some(b"1")));
        // The data also holds "missed", which no delta announced.
        let data = [(&b"seen"[..], &b"1"[..]), (b"missed", b"2")];
        let (_, copy) = index
            .begin_check(p, || Ok(()))
            .expect("begin")
            .expect("ready");
        index.apply(&index.gate(), &delta(b"later", None, Some(b"3")));
        let rebuilt = MerkleTree::from_entries(
            index.shape(),
            data.iter().map(|(k, v)| (key_hash(k), *k, *v)),
        );
        let drifted = index.finish_check(p, &copy, &rebuilt).expect("check");
        assert_eq!(drifted, vec![index.shape().bucket_of(key_hash(b"missed"))]);
        let want = MerkleTree::from_entries(
            index.shape(),
            data.iter()
                .chain([(&b"later"[..], &b"3"[..])].iter())
                .map(|(k, v)| (key_hash(k), *k, *v)),
        )
        .root();
        assert_eq!(index.root(p), Some(want));
        assert_eq!(index.counters.drift_repairs.load(Relaxed), 1);
        // A tree that is not ready is not checked.
        assert!(index
            .begin_check(PartitionId(0), || Ok(()))
            .expect("begin")
            .is_none());
    }

    #[test]
    fn an_unchanged_set_costs_no_hashing() {
        let d = delta(b"k", Some(b"same"), Some(b"same"));
        assert!(d.old.is_none() && d.new.is_none());
    }
}
