//! The Merkle tree of one partition, maintained incrementally on every write.
//!
//! # What
//!
//! A [`MerkleTree`] summarises the contents of one partition (every key the
//! node stores for it, with its whole encoded sibling set) in a fixed number
//! of **buckets** (default 1024, a power of two). Two replicas of a partition
//! hold the same data iff their roots are equal (up to SHA-256 collisions);
//! when they differ, comparing hashes level by level finds the buckets that
//! differ, and only those buckets' keys need to be looked at
//! ([`crate::cluster::anti_entropy`] does that comparison).
//!
//! # Shape
//!
//! - **Bucket of a key**: the *low* [`TreeShape::bucket_bits`] bits of the
//!   ring's 64-bit key hash (the first 8 bytes of SHA-256 of the user key,
//!   big-endian). The partition already fixes the *top* bits of that hash (all
//!   keys of a partition share them), so buckets chosen by top bits would all
//!   collapse into a few; the low bits of a SHA-256 output are uniform and
//!   independent of the top bits whatever the number of partitions is.
//! - **Leaf** (one per bucket): the sum, modulo 2^256, of the
//!   [`KeyDigest`]s of the keys in the bucket, where a key's digest is
//!   `SHA-256(0x00 || u64 BE key length || key || encoded sibling set)` read
//!   as a little-endian 256-bit integer. An empty bucket is all zeros.
//! - **Inner node**: `SHA-256(0x01 || child hashes in order)`; each inner node
//!   has up to [`FANOUT`] = 16 children (the level above groups 16 consecutive
//!   nodes, so with 1024 buckets the levels have 1, 4, 64 and 1024 nodes).
//!   The leading byte separates the two kinds of input so a leaf's content
//!   can never be mistaken for an inner node's.
//!
//! Depth 0 is the root; depth [`TreeShape::leaf_depth`] is the buckets.
//!
//! # Why an order-independent leaf
//!
//! The leaf is a *multiset hash* (AdHash, Bellare and Micciancio 1997): its
//! value depends only on the set of (key, sibling set) pairs in the bucket,
//! not on the order they were added. A write therefore updates its leaf in
//! O(1) without reading the rest of the bucket: subtract the digest of the
//! key's old set, add the digest of the new one ([`MerkleTree::update`]).
//! The storage engine already knows the old set (a write merges into it), so
//! the tree costs two SHA-256 computations per write and no I/O, and a
//! rebuild from a scan in any order gives the same tree as the history of
//! incremental updates (property-tested). Modular addition is chosen over
//! XOR, at the same cost, because XOR lets a digest cancel itself: adding
//! the same (key, set) twice (a caller bug) would look like never adding
//! it, whereas a sum shows it. XOR also makes colliding buckets a matter of
//! linear algebra over GF(2), while colliding sums need a generalized
//! birthday search (Wagner), which a 256-bit modulus puts out of reach.
//! Replicas are not adversaries, but a hash that is easy to fool by accident
//! is a poor check.
//!
//! Inner nodes are recomputed lazily: a write marks its leaf's parent dirty
//! (one bit, O(1)), and reading the root or a level first recomputes the
//! dirty nodes bottom-up, each once, so a burst of writes costs O(1) each and
//! a root read costs O(dirty paths).
//!
//! # Why 16 children per node
//!
//! Anti-entropy descends one level per message, so the number of round trips
//! is the tree's depth: 10 levels for a binary tree of 1024 buckets, 3 for a
//! 16-ary one. A wider node costs bytes instead: when one bucket differs,
//! each level sends the 16 hashes under the differing node instead of 2, i.e.
//! about `16 * 32 * depth` = 1.5 KiB per differing bucket, far less than the
//! bucket keys that follow. Cassandra's repair trees are binary (they are
//! shipped whole, so depth costs nothing there); Riak's `hashtree` groups
//! nodes by a configurable width (1024 by default) over a million segments.
//! 16 keeps both the round trips and the per-level bytes small for trees of
//! 2^10 to 2^20 buckets.
//!
//! # Memory
//!
//! A tree holds one 32-byte hash per node and one dirty flag per inner node,
//! independent of the number of keys: with the default 1024 buckets,
//! (1024 + 64 + 4 + 1) * 32 B = 34 KiB per partition, so about 8.5 MiB for
//! Q = 256 partitions if a node held every partition (with N = 3 replicas a
//! node of a 5-node cluster holds about 3/5 of them: 5 MiB). The bucket count
//! trades memory for precision: with `k` keys per partition a differing bucket
//! costs sending about `k / buckets` key fingerprints.
//!
//! # Departures from Dynamo and Cassandra
//!
//! Dynamo keeps one Merkle tree per key range, rebuilt when ranges change,
//! and does not say how trees are maintained. Cassandra (before incremental
//! repair) builds a tree per repair by scanning and hashing the whole range
//! ("validation compaction"), which makes every repair cost a full read of the
//! data even when nothing differs. Here trees live in memory, are kept current
//! on every write, and a repair round that finds equal roots costs one
//! message. The price is a full scan at start-up (the trees are not persisted)
//! and the need to detect drift between the in-memory tree and the data (a bug
//! or a write path that forgot to call [`MerkleTree::update`]):
//! [`MerkleTree::drifted_buckets`] compares against a tree rebuilt from a scan
//! ([`MerkleTree::from_entries`]), and [`MerkleTree::verify_inner_nodes`]
//! recomputes the cached inner nodes from the leaves.
//!
//! Riak's `hashtree` also keeps each segment's `(key, hash)` list on disk,
//! so listing a differing bucket's keys is a range read. Here the storage
//! engine orders a partition by user key, not by bucket, so listing the keys
//! of the differing buckets costs one scan of the partition per repairing
//! round (all differing buckets at once); rounds that find equal roots scan
//! nothing. A bucket-ordered secondary index would remove that scan at the
//! price of a second write per key.
//!
//! Trees cover every stored key, tombstones and expired versions included:
//! they are part of the sibling set, so a replica missing a tombstone differs
//! from one holding it and anti-entropy ships the tombstone (no resurrection).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Children per inner node. Part of the wire contract of anti-entropy (a
/// change needs a new [`crate::cluster::anti_entropy::PROTOCOL_VERSION`]).
pub const FANOUT: usize = 16;
/// `log2(FANOUT)`.
const FANOUT_BITS: u32 = 4;

/// Default number of buckets per partition tree.
pub const DEFAULT_BUCKETS: u32 = 1024;

/// Most buckets a tree may have (2^20: 32 MiB of leaves per partition).
pub const MAX_BUCKETS: u32 = 1 << 20;

/// Domain-separation byte in front of a key digest's input.
const KEY_DIGEST_TAG: u8 = 0x00;
/// Domain-separation byte in front of an inner node's input.
const INNER_NODE_TAG: u8 = 0x01;

/// A node hash of the tree: a leaf's accumulator or an inner node's SHA-256.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeHash(pub [u8; 32]);

impl NodeHash {
    /// The hash of an empty bucket.
    pub const ZERO: NodeHash = NodeHash([0; 32]);

    /// Adds `digest` modulo 2^256 (both little-endian integers).
    fn add(&mut self, digest: &KeyDigest) {
        let mut carry = false;
        for limb in 0..4 {
            let range = limb * 8..limb * 8 + 8;
            let a = u64::from_le_bytes(le_limb(&self.0[range.clone()]));
            let b = u64::from_le_bytes(le_limb(&digest.0[range.clone()]));
            let (sum, c1) = a.overflowing_add(b);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            self.0[range].copy_from_slice(&sum.to_le_bytes());
        }
    }

    /// Subtracts `digest` modulo 2^256 (both little-endian integers).
    fn sub(&mut self, digest: &KeyDigest) {
        let mut borrow = false;
        for limb in 0..4 {
            let range = limb * 8..limb * 8 + 8;
            let a = u64::from_le_bytes(le_limb(&self.0[range.clone()]));
            let b = u64::from_le_bytes(le_limb(&digest.0[range.clone()]));
            let (diff, b1) = a.overflowing_sub(b);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            borrow = b1 || b2;
            self.0[range].copy_from_slice(&diff.to_le_bytes());
        }
    }
}

/// An 8-byte limb of a 32-byte hash; the ranges above are always 8 long.
fn le_limb(bytes: &[u8]) -> [u8; 8] {
    let mut limb = [0; 8];
    limb.copy_from_slice(bytes);
    limb
}

impl fmt::Debug for NodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes of hex tell hashes apart in logs and test failures.
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("..")
    }
}

/// The digest of one stored key: `SHA-256(0x00 || u64 BE key length || key
/// || encoded sibling set)`. The key length keeps `("ab", "c")` and
/// `("a", "bc")` apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Digest of `key` holding the encoded sibling set `value`.
    pub fn of(key: &[u8], value: &[u8]) -> KeyDigest {
        let mut hasher = Sha256::new();
        hasher.update([KEY_DIGEST_TAG]);
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update(value);
        KeyDigest(hasher.finalize().into())
    }

    /// The first 16 bytes, sent on the wire to compare one key's sets.
    pub fn fingerprint(&self) -> KeyFingerprint {
        let mut short = [0; 16];
        short.copy_from_slice(&self.0[..16]);
        KeyFingerprint(short)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&NodeHash(self.0), f)
    }
}

/// A key digest truncated to 16 bytes, as anti-entropy sends it. It is only
/// ever compared with the other replica's fingerprint *of the same key*, so a
/// false match needs a 2^-128 coincidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyFingerprint(pub [u8; 16]);

impl KeyFingerprint {
    /// Fingerprint of `key` holding the encoded sibling set `value`.
    pub fn of(key: &[u8], value: &[u8]) -> KeyFingerprint {
        KeyDigest::of(key, value).fingerprint()
    }
}

/// The index of a bucket (a leaf) in a partition's tree.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct BucketIndex(pub u32);

/// The shape of a tree: the number of buckets (a power of two). Two trees
/// can only be compared if their shapes are equal; anti-entropy sends the
/// shape first and refuses a mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TreeShape {
    buckets: u32,
}

impl Default for TreeShape {
    fn default() -> Self {
        TreeShape {
            buckets: DEFAULT_BUCKETS,
        }
    }
}

impl TreeShape {
    /// A shape with `buckets` leaves: a power of two in `1..=`[`MAX_BUCKETS`].
    pub fn new(buckets: u32) -> Result<TreeShape> {
        if !buckets.is_power_of_two() || buckets > MAX_BUCKETS {
            return Err(Error::invalid(format!(
                "merkle tree buckets must be a power of two between 1 and {MAX_BUCKETS}, got {buckets}"
            )));
        }
        Ok(TreeShape { buckets })
    }

    /// Checks a shape received from the network (serde bypasses [`new`](Self::new)).
    pub fn validate(&self) -> Result<()> {
        TreeShape::new(self.buckets).map(|_| ())
    }

    /// Number of buckets (leaves).
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// How many low bits of the key hash select the bucket.
    pub fn bucket_bits(&self) -> u32 {
        self.buckets.trailing_zeros()
    }

    /// The bucket of a key, from the low bits of its ring hash.
    pub fn bucket_of(&self, key_hash: u64) -> BucketIndex {
        BucketIndex((key_hash & u64::from(self.buckets - 1)) as u32)
    }

    /// Depth of the buckets (the root is depth 0): 3 for 1024 buckets.
    pub fn leaf_depth(&self) -> usize {
        // Each level up divides the width by FANOUT = 2^4, rounding up.
        self.bucket_bits().div_ceil(FANOUT_BITS) as usize
    }

    /// Nodes at `depth` (0 for depths past the leaves).
    pub fn width(&self, depth: usize) -> usize {
        let leaf_depth = self.leaf_depth();
        if depth > leaf_depth {
            return 0;
        }
        let levels_up = (leaf_depth - depth) as u32;
        1 << self.bucket_bits().saturating_sub(levels_up * FANOUT_BITS)
    }

    /// The children of node `node` at `depth`, as a range of indices at
    /// `depth + 1` (empty at the leaves or out of range).
    pub fn children(&self, depth: usize, node: usize) -> std::ops::Range<usize> {
        if depth >= self.leaf_depth() || node >= self.width(depth) {
            return 0..0;
        }
        let below = self.width(depth + 1);
        (node * FANOUT).min(below)..(node * FANOUT + FANOUT).min(below)
    }

    /// Level widths from the root (index 0) down to the buckets.
    fn widths(&self) -> Vec<usize> {
        (0..=self.leaf_depth()).map(|d| self.width(d)).collect()
    }

    /// Bytes of hashes a tree of this shape holds in memory.
    pub fn memory_bytes(&self) -> usize {
        let nodes: usize = self.widths().iter().sum();
        nodes * std::mem::size_of::<NodeHash>() + (nodes - self.buckets as usize)
    }
}

/// The hashes of one whole level, for the wire or for an offline diff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelSnapshot {
    /// Depth of the level (0 = root).
    pub depth: u8,
    /// Every node hash of the level, by index.
    pub hashes: Vec<NodeHash>,
}

/// The Merkle tree of one partition. See the module doc.
///
/// Methods that read inner hashes take `&mut self`: they first recompute
/// the nodes that writes left dirty. The tree lives with the partition's
/// write path (behind whatever lock serialises that partition's writes), so
/// a reader takes the same lock.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    shape: TreeShape,
    /// `levels[0]` is the root level, `levels[leaf_depth]` the buckets.
    levels: Vec<Vec<NodeHash>>,
    /// Per inner level: whether a node must be recomputed from its children.
    dirty: Vec<Vec<bool>>,
    /// Per inner level: the dirty nodes, so a flush does not scan the flags.
    dirty_nodes: Vec<Vec<u32>>,
}

impl MerkleTree {
    /// An empty tree (every bucket empty).
    pub fn new(shape: TreeShape) -> MerkleTree {
        let widths = shape.widths();
        let leaf_depth = widths.len() - 1;
        let mut tree = MerkleTree {
            shape,
            levels: widths.iter().map(|&w| vec![NodeHash::ZERO; w]).collect(),
            dirty: widths[..leaf_depth]
                .iter()
                .map(|&w| vec![false; w])
                .collect(),
            dirty_nodes: vec![Vec::new(); leaf_depth],
        };
        // Inner hashes of empty children are not zero; compute them once.
        tree.recompute_all_inner_nodes();
        tree
    }

    /// Builds the tree from a full scan of the partition: `(key hash, key,
    /// encoded sibling set)` for every stored key, in any order.
    pub fn from_entries<K, V, I>(shape: TreeShape, entries: I) -> MerkleTree
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        I: IntoIterator<Item = (u64, K, V)>,
    {
        let mut tree = MerkleTree::new(shape);
        for (key_hash, key, value) in entries {
            tree.insert(key_hash, key.as_ref(), value.as_ref());
        }
        tree.flush();
        tree
    }

    /// The tree's shape.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// Accounts for a write of `key`: its stored set changed from `old_value`
    /// to `new_value` (encoded sibling sets; `None` = the key is not stored).
    /// O(1): two digests and a dirty flag. The caller must pass the set that
    /// was really stored before, or the tree drifts from the data (see
    /// [`drifted_buckets`](Self::drifted_buckets)).
    pub fn update(
        &mut self,
        key_hash: u64,
        key: &[u8],
        old_value: Option<&[u8]>,
        new_value: Option<&[u8]>,
    ) {
        if old_value == new_value {
            return;
        }
        let old = old_value.map(|v| KeyDigest::of(key, v));
        let new = new_value.map(|v| KeyDigest::of(key, v));
        self.update_digests(key_hash, old.as_ref(), new.as_ref());
    }

    /// [`update`](Self::update) with the key digests already computed
    /// ([`KeyDigest::of`]), so that a writer can hash its (possibly large)
    /// sibling sets before it takes the lock that guards the tree.
    pub fn update_digests(
        &mut self,
        key_hash: u64,
        old: Option<&KeyDigest>,
        new: Option<&KeyDigest>,
    ) {
        if old == new {
            return;
        }
        let bucket = self.shape.bucket_of(key_hash).0 as usize;
        let leaf_depth = self.levels.len() - 1;
        let leaf = &mut self.levels[leaf_depth][bucket];
        if let Some(old) = old {
            leaf.sub(old);
        }
        if let Some(new) = new {
            leaf.add(new);
        }
        if leaf_depth > 0 {
            self.mark_dirty(leaf_depth - 1, bucket / FANOUT);
        }
    }

    /// Corrects drift found by comparing `stale`, a copy of this tree, with
    /// `rebuilt`, a tree built from a scan of the data taken at the same
    /// moment as the copy: adds `rebuilt - stale` to every bucket where the
    /// two differ, and returns those buckets.
    ///
    /// Because a leaf is a sum of key digests, this is exact even when this
    /// tree took more writes since the copy: each of them added its own
    /// difference to both the live tree and (had it been there) the scan, so
    /// `live + (rebuilt - stale)` is what a scan taken now would build. With
    /// `stale` an empty tree this *adds* a freshly built tree to one that
    /// only collected the writes made since the scan began (a build while
    /// writes go on). Refuses trees of another shape.
    pub fn apply_correction(
        &mut self,
        stale: &MerkleTree,
        rebuilt: &MerkleTree,
    ) -> Result<Vec<BucketIndex>> {
        if stale.shape != self.shape || rebuilt.shape != self.shape {
            return Err(Error::invalid(
                "merkle correction between trees of different shapes",
            ));
        }
        let drifted = stale.drifted_buckets(rebuilt);
        let leaf_depth = self.shape.leaf_depth();
        for &BucketIndex(bucket) in &drifted {
            let bucket = bucket as usize;
            let leaf = &mut self.levels[leaf_depth][bucket];
            leaf.add(&KeyDigest(rebuilt.levels[leaf_depth][bucket].0));
            leaf.sub(&KeyDigest(stale.levels[leaf_depth][bucket].0));
            if leaf_depth > 0 {
                self.mark_dirty(leaf_depth - 1, bucket / FANOUT);
            }
        }
        Ok(drifted)
    }

    /// Accounts for a key that was not stored before.
    pub fn insert(&mut self, key_hash: u64, key: &[u8], value: &[u8]) {
        self.update(key_hash, key, None, Some(value));
    }

    /// Accounts for a key that is no longer stored.
    pub fn remove(&mut self, key_hash: u64, key: &[u8], value: &[u8]) {
        self.update(key_hash, key, Some(value), None);
    }

    /// The root hash (recomputes dirty inner nodes first).
    pub fn root(&mut self) -> NodeHash {
        self.flush();
        self.levels[0][0]
    }

    /// Every hash at `depth` (recomputes dirty inner nodes first). Empty past
    /// the leaves.
    pub fn level(&mut self, depth: usize) -> &[NodeHash] {
        self.flush();
        self.levels.get(depth).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The hashes of the children of node `node` at `depth` (at `depth + 1`).
    pub fn children(&mut self, depth: usize, node: usize) -> &[NodeHash] {
        let range = self.shape.children(depth, node);
        if range.is_empty() {
            return &[];
        }
        self.flush();
        &self.levels[depth + 1][range]
    }

    /// A bucket's hash; always current (leaves are never dirty).
    pub fn leaf(&self, bucket: BucketIndex) -> NodeHash {
        self.levels[self.shape.leaf_depth()]
            .get(bucket.0 as usize)
            .copied()
            .unwrap_or(NodeHash::ZERO)
    }

    /// A copy of the level at `depth`, for the wire or an offline diff.
    pub fn snapshot_level(&mut self, depth: usize) -> LevelSnapshot {
        LevelSnapshot {
            depth: depth as u8,
            hashes: self.level(depth).to_vec(),
        }
    }

    /// Every level, root first.
    pub fn snapshot_levels(&mut self) -> Vec<LevelSnapshot> {
        (0..=self.shape.leaf_depth())
            .map(|depth| self.snapshot_level(depth))
            .collect()
    }

    /// The buckets whose hash differs from `rebuilt`'s, a tree of the same
    /// shape built from a scan of the data ([`from_entries`](Self::from_entries)).
    /// Non-empty means this tree drifted from the data: replace it with the
    /// rebuilt one. Every bucket if the shapes differ.
    ///
    /// The two must describe the same moment: with writes still arriving,
    /// clone this tree (34 KiB by default) and open the storage snapshot for
    /// the scan under the same partition lock, then compare the clone, or
    /// writes made during the scan show up as false drift.
    pub fn drifted_buckets(&self, rebuilt: &MerkleTree) -> Vec<BucketIndex> {
        if self.shape != rebuilt.shape {
            return (0..self.shape.buckets).map(BucketIndex).collect();
        }
        let depth = self.shape.leaf_depth();
        let (mine, theirs) = (&self.levels[depth], &rebuilt.levels[depth]);
        (0..mine.len())
            .filter(|&i| mine[i] != theirs[i])
            .map(|i| BucketIndex(i as u32))
            .collect()
    }

    /// Whether every cached inner node equals its recomputation from the
    /// leaves (a self-check against memory corruption or a bug in the dirty
    /// tracking). Costs one SHA-256 per inner node: about 70 for the default.
    pub fn verify_inner_nodes(&mut self) -> bool {
        self.flush();
        let mut fresh = self.clone();
        fresh.recompute_all_inner_nodes();
        fresh.levels == self.levels
    }

    /// Recomputes every inner node from the leaves: the fix when
    /// [`verify_inner_nodes`](Self::verify_inner_nodes) fails.
    pub fn recompute_inner_nodes(&mut self) {
        self.recompute_all_inner_nodes();
    }

    /// Bytes of hashes this tree holds (independent of the data size).
    pub fn memory_bytes(&self) -> usize {
        self.shape.memory_bytes()
    }

    fn mark_dirty(&mut self, depth: usize, node: usize) {
        let flag = &mut self.dirty[depth][node];
        if !*flag {
            *flag = true;
            self.dirty_nodes[depth].push(node as u32);
        }
    }

    /// Recomputes dirty inner nodes bottom-up, each at most once.
    fn flush(&mut self) {
        for depth in (0..self.shape.leaf_depth()).rev() {
            let nodes = std::mem::take(&mut self.dirty_nodes[depth]);
            for &node in &nodes {
                let node = node as usize;
                self.dirty[depth][node] = false;
                self.levels[depth][node] = self.hash_children(depth, node);
                if depth > 0 {
                    self.mark_dirty(depth - 1, node / FANOUT);
                }
            }
            // Nothing marks this level while it is flushed (marks go up), so
            // the list is empty: give its allocation back for the next burst.
            let mut nodes = nodes;
            nodes.clear();
            self.dirty_nodes[depth] = nodes;
        }
    }

    fn recompute_all_inner_nodes(&mut self) {
        for depth in (0..self.shape.leaf_depth()).rev() {
            for node in 0..self.levels[depth].len() {
                self.levels[depth][node] = self.hash_children(depth, node);
            }
            self.dirty[depth].fill(false);
            self.dirty_nodes[depth].clear();
        }
    }

    fn hash_children(&self, depth: usize, node: usize) -> NodeHash {
        let mut hasher = Sha256::new();
        hasher.update([INNER_NODE_TAG]);
        for child in &self.levels[depth + 1][self.shape.children(depth, node)] {
            hasher.update(child.0);
        }
        NodeHash(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A stand-in for the ring's key hash (first 8 bytes of SHA-256, BE).
    pub(crate) fn key_hash(key: &[u8]) -> u64 {
        let digest = Sha256::digest(key);
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    fn shape(buckets: u32) -> TreeShape {
        TreeShape::new(buckets).unwrap()
    }

    fn rebuilt(shape: TreeShape, map: &BTreeMap<Vec<u8>, Vec<u8>>) -> MerkleTree {
        MerkleTree::from_entries(
            shape,
            map.iter()
                .map(|(k, v)| (key_hash(k), k.as_slice(), v.as_slice())),
        )
    }

    #[test]
    fn default_shape_has_four_levels_of_1_4_64_1024() {
        let s = TreeShape::default();
        assert_eq!(s.leaf_depth(), 3);
        assert_eq!(
            (0..4).map(|d| s.width(d)).collect::<Vec<_>>(),
            vec![1, 4, 64, 1024]
        );
        assert_eq!(s.children(0, 0), 0..4);
        assert_eq!(s.children(1, 3), 48..64);
        assert_eq!(s.children(3, 0), 0..0);
        assert_eq!(s.bucket_bits(), 10);
        // (1024 + 64 + 4 + 1) hashes and 69 dirty flags: about 34 KiB.
        assert_eq!(s.memory_bytes(), 1093 * 32 + 69);
    }

    #[test]
    fn shapes_that_are_not_powers_of_two_are_refused() {
        assert!(TreeShape::new(0).is_err());
        assert!(TreeShape::new(1000).is_err());
        assert!(TreeShape::new(MAX_BUCKETS * 2).is_err());
        assert!(TreeShape::new(1).is_ok());
    }

    #[test]
    fn bucket_comes_from_the_low_bits_of_the_key_hash() {
        let s = shape(1024);
        assert_eq!(s.bucket_of(0xFF00_0000_0000_0000), BucketIndex(0));
        assert_eq!(s.bucket_of(0x0000_0000_0000_07FF), BucketIndex(0x3FF));
    }

    #[test]
    fn single_bucket_tree_root_is_the_bucket() {
        let mut tree = MerkleTree::new(shape(1));
        tree.insert(7, b"k", b"v");
        assert_eq!(tree.root(), tree.leaf(BucketIndex(0)));
        assert_ne!(tree.root(), NodeHash::ZERO);
    }

    #[test]
    fn overwrite_then_restore_returns_to_the_same_root() {
        let mut tree = MerkleTree::new(TreeShape::default());
        tree.insert(key_hash(b"a"), b"a", b"1");
        let before = tree.root();
        tree.update(key_hash(b"a"), b"a", Some(b"1"), Some(b"2"));
        assert_ne!(tree.root(), before);
        tree.update(key_hash(b"a"), b"a", Some(b"2"), Some(b"1"));
        assert_eq!(tree.root(), before);
        tree.remove(key_hash(b"a"), b"a", b"1");
        assert_eq!(tree.root(), MerkleTree::new(TreeShape::default()).root());
    }

    #[test]
    fn key_and_value_boundary_is_part_of_the_digest() {
        assert_ne!(KeyDigest::of(b"ab", b"c"), KeyDigest::of(b"a", b"bc"));
    }

    #[test]
    fn accumulator_carries_and_borrows_across_limbs() {
        let mut acc = NodeHash([0xFF; 32]);
        let mut one = [0; 32];
        one[0] = 1;
        acc.add(&KeyDigest(one));
        assert_eq!(acc, NodeHash::ZERO);
        acc.sub(&KeyDigest(one));
        assert_eq!(acc, NodeHash([0xFF; 32]));
    }

    #[test]
    fn drift_is_detected_against_a_rebuild() {
        let mut map = BTreeMap::new();
        for i in 0..100u32 {
            map.insert(i.to_be_bytes().to_vec(), vec![i as u8; 3]);
        }
        let s = shape(64);
        let mut tree = rebuilt(s, &map);
        assert!(tree.drifted_buckets(&rebuilt(s, &map)).is_empty());
        // A write path that forgot to update the tree.
        map.insert(b"forgotten".to_vec(), b"x".to_vec());
        let drift = tree.drifted_buckets(&rebuilt(s, &map));
        assert_eq!(drift, vec![s.bucket_of(key_hash(b"forgotten"))]);
        assert!(tree.verify_inner_nodes());
        tree.levels[1][0] = NodeHash([9; 32]);
        assert!(!tree.verify_inner_nodes());
    }

    #[test]
    fn correction_fixes_drift_even_after_later_writes() {
        let s = shape(64);
        let mut map = BTreeMap::new();
        for i in 0..50u32 {
            map.insert(i.to_be_bytes().to_vec(), vec![i as u8; 4]);
        }
        let mut live = rebuilt(s, &map);
        // The data took a write the tree never saw (the drift), then the
        // copy and the scan were taken together.
        map.insert(b"missed".to_vec(), b"x".to_vec());
        let stale = live.clone();
        let scan = rebuilt(s, &map);
        // Writes after the copy reach the live tree (and the data) only.
        for key in [&b"later"[..], &b"missed"[..]] {
            let old = map.insert(key.to_vec(), b"new".to_vec());
            live.update(key_hash(key), key, old.as_deref(), Some(b"new"));
        }
        let fixed = live.apply_correction(&stale, &scan).expect("same shape");
        assert_eq!(fixed, vec![s.bucket_of(key_hash(b"missed"))]);
        assert_eq!(live.root(), rebuilt(s, &map).root());
        assert!(live.verify_inner_nodes());
        // A fresh build added to a tree that only saw later writes.
        let mut after_scan = MerkleTree::new(s);
        after_scan.update(key_hash(b"z"), b"z", None, Some(b"1"));
        let mut built = rebuilt(s, &map);
        after_scan
            .apply_correction(&MerkleTree::new(s), &built)
            .expect("same shape");
        map.insert(b"z".to_vec(), b"1".to_vec());
        assert_eq!(after_scan.root(), rebuilt(s, &map).root());
        assert_ne!(after_scan.root(), built.root());
        assert!(MerkleTree::new(shape(16))
            .apply_correction(&stale, &scan)
            .is_err());
    }

    #[test]
    fn broken_inner_nodes_are_recomputed() {
        let mut tree = MerkleTree::new(shape(256));
        tree.insert(key_hash(b"a"), b"a", b"1");
        let root = tree.root();
        tree.levels[1][3] = NodeHash([7; 32]);
        assert!(!tree.verify_inner_nodes());
        tree.recompute_inner_nodes();
        assert!(tree.verify_inner_nodes());
        assert_eq!(tree.root(), root);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
                1 => any::<u8>().prop_map(Op::Delete),
            ],
            0..200,
        )
    }

    proptest! {
        /// Incremental maintenance over any history of writes, overwrites and
        /// deletes ends at the tree a scan of the final data builds, whatever
        /// the order of that scan.
        #[test]
        fn incremental_updates_equal_a_rebuild_in_any_order(
            ops in arb_ops(),
            bucket_bits in 0u32..8,
            seed in any::<u64>(),
        ) {
            let s = shape(1 << bucket_bits);
            let mut tree = MerkleTree::new(s);
            let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Op::Put(k, v) => {
                        let key = vec![k];
                        let new = vec![v; 1 + (k % 5) as usize];
                        let old = map.insert(key.clone(), new.clone());
                        tree.update(key_hash(&key), &key, old.as_deref(), Some(&new));
                    }
                    Op::Delete(k) => {
                        let key = vec![k];
                        if let Some(old) = map.remove(&key) {
                            tree.remove(key_hash(&key), &key, &old);
                        }
                    }
                }
                // Reading the root mid-stream must not disturb later updates.
                if i % 17 == 0 {
                    tree.root();
                }
            }
            // Rebuild in a shuffled order.
            let mut entries: Vec<_> = map.iter().collect();
            let mut state = seed | 1;
            for i in (1..entries.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                entries.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut scan = MerkleTree::from_entries(
                s,
                entries.iter().map(|(k, v)| (key_hash(k), k.as_slice(), v.as_slice())),
            );
            prop_assert_eq!(tree.root(), scan.root());
            prop_assert!(tree.drifted_buckets(&scan).is_empty());
            prop_assert!(tree.verify_inner_nodes());
        }
    }
}
