//! The ring: which nodes hold which keys.
//!
//! # Keys to partitions (fixed forever)
//!
//! A key's position is [`key_hash`]: the first 8 bytes of `SHA-256(key)` read
//! as a big-endian `u64`. The 64-bit space is cut into `Q` equal partitions
//! (Dynamo's strategy 3, Q fixed at cluster creation, default 256):
//! [`partition_of`]`(hash, q) = min(hash / floor(2^64 / q), q - 1)`. For a
//! power-of-two `Q` the `min` never bites and every partition is exactly
//! `2^64 / Q` hashes wide; for other `Q` the last partition also takes the
//! `2^64 mod Q` leftover hashes. The storage layer prefixes every key on disk
//! with this partition id, so this function is part of the on-disk format:
//! changing it (or `Q`) means rewriting every table. SHA-256 rather than a
//! faster hash because it must be identical on every node, platform and
//! release (never `ahash` or std's randomly seeded hashers), and key hashing
//! is nowhere near the hot path's cost next to a network round trip.
//!
//! # Partitions to nodes
//!
//! Every node places [`VNODES`] virtual-node tokens on the same 64-bit circle,
//! `token_i = first 8 bytes (big-endian) of SHA-256("ringkv/token/v1" || node_id || i as u32 BE)`,
//! so a node's tokens follow from its [`NodeId`] alone and need no
//! coordination. A node's *distance* to a partition is the clockwise distance
//! from the partition's first hash (its start) to the node's nearest token at
//! or after it. Walking clockwise from a partition's start and listing
//! distinct physical nodes in the order their tokens appear is exactly
//! sorting the nodes by that distance.
//!
//! Pure consistent hashing would give partition `p` to the nearest node. It
//! is perfectly stable (a join only takes partitions from others, a leave only
//! hands its own away) but it cannot be balanced at `Q = 256`: any placement
//! that is a pure function of the member set *and* moves nothing but the
//! joiner's gains is, per partition, "the highest of the members under a
//! fixed ranking" (rendezvous hashing in disguise), so loads follow a
//! multinomial law. At 10 nodes a node's share of 256 partitions has a mean of
//! 25.6 and a standard deviation near 4.8, and about 40 % of random 10-node
//! clusters have some node above 1.3x its fair share. More tokens do not help:
//! the noise comes from the 256 partition starts, not from the arcs.
//!
//! So ownership is *consistent hashing with bounded loads* (Mirrokni, Thorup,
//! Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018), made
//! deterministic by a global order: all `(partition, node)` pairs are sorted
//! by `(distance, node id, partition)` and taken greedily.
//!
//! 1. **Primaries.** A pair gives the partition to the node if the partition
//!    has no primary yet and the node holds fewer than
//!    `cap(Q / n)` primaries, where `cap(f) = max(ceil(f), floor(5 f / 4))`.
//! 2. **Replicas.** A second pass over the same order adds the node to the
//!    partition's replica set if the set has fewer than `N` nodes, does not
//!    contain the node, and the node holds fewer than `cap(Q N / n)`
//!    placements (primaries included, never more than `Q`). If that ever
//!    leaves a set short (capacity stuck on nodes already in it) a last pass
//!    fills it in the same order without the cap.
//! 3. **Fallbacks.** The other nodes follow in distance order (ring order).
//!
//! The order is total and built from ids alone, so the result does not
//! depend on the order members are listed in. (For the primaries it is also
//! the unique stable matching of partitions to capped nodes when both sides
//! prefer nearer pairs: no partition and node would both rather have each
//! other than what they got.) Every node
//! holds at most `max(ceil(Q/n), 1.25 Q/n)` primaries and at most
//! `max(ceil(QN/n), 1.25 QN/n)` replica placements, which is within 1.3x of
//! the fair share whenever the fair share is at least 4 (`n <= 64` at
//! `Q = 256`). Most partitions still go to their nearest node (the cap binds
//! only on the unlucky tails), so a join or leave still moves little: the
//! tests check that at most [`MAX_COLLATERAL_PRIMARY_MOVES`] partitions change
//! primary between nodes that stayed (measured: at most 6, mean about 1, at
//! 10 nodes), against the ~Q/n the joiner takes, and that stayers gain at
//! most [`MAX_COLLATERAL_PLACEMENTS`] replica placements on a join. Loads are
//! capped above only: an unlucky node may hold somewhat less than its share.
//!
//! # Departures from Dynamo
//!
//! - Dynamo's strategy 3 keeps balance by having a joining node *steal*
//!   partitions chosen at join time, which makes the placement depend on the
//!   order of joins and requires gossiping the ring itself. Here the ring is a
//!   pure function of the member set: every node computes it with no
//!   coordination (DESIGN.md §4) at the price of a few collateral moves.
//! - The preference list of a partition is not simply "the first N distinct
//!   nodes clockwise" but that order adjusted by the load caps above. The
//!   fallbacks after the first N are in plain clockwise order.
//! - `N` is capped at the number of members: a 2-node cluster keeps 2 copies.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Virtual-node tokens per node. With 128 a node's share of the circle has
/// a standard deviation of about 8 % of fair, so the load caps rarely bind
/// and collateral moves on join/leave stay in the low single digits
/// (measured: see [`MAX_COLLATERAL_PRIMARY_MOVES`]).
pub const VNODES: u32 = 128;

/// The default number of partitions (set at cluster creation, never changed).
pub const DEFAULT_PARTITIONS: u32 = 256;

/// The largest supported `Q`. Partition ids must fit the on-disk key prefix
/// and the ring stores `Q * members` entries.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The bound the property tests check for partitions whose primary moves
/// between two nodes that both stayed, when one node joins or leaves (3..=11
/// nodes, `Q = 256`, `N = 3`). Ideal consistent hashing would be 0. Measured
/// over 2,400 random clusters: at most 6 (of 256), on average at most 1.0
/// (at 10 nodes; 0.01 at 3 nodes).
pub const MAX_COLLATERAL_PRIMARY_MOVES: usize = 12;

/// The bound the property tests check for replica placements that nodes
/// which stayed *gain* on a join (a set may take in a stayer instead of the
/// joiner only when caps shift). Measured over 2,400 random clusters: at
/// most 1 (of 768).
pub const MAX_COLLATERAL_PLACEMENTS: usize = 6;

/// A node's identity: 16 bytes, stable across restarts and data loss.
///
/// Derived from the node's advertised peer address:
/// `NodeId = first 16 bytes of SHA-256("ringkv/node-id/v1\0" || peer_addr)`
/// ([`NodeId::from_peer_addr`]). Why not random bytes kept in the data
/// directory: a node whose data directory is wiped comes back at the same
/// address and must take back the same partitions (and be refilled by
/// anti-entropy), not leave a ghost member behind. Its *incarnation* (a new
/// clock actor, see `version`) is what changes. The cost: moving a node to a
/// new address makes it a new member (leave + join). Callers must pass the
/// address in one canonical form (`"127.0.0.1:17000"`, not sometimes
/// `"localhost:17000"`).
///
/// Shown as 32 lowercase hex digits; postcard encodes it as its 16 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId([u8; 16]);

impl NodeId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// A node id from its raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> NodeId {
        NodeId(bytes)
    }

    /// The id a node advertising `peer_addr` has (see the type's doc).
    pub fn from_peer_addr(peer_addr: &str) -> NodeId {
        let mut h = Sha256::new();
        h.update(b"ringkv/node-id/v1\0");
        h.update(peer_addr.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        NodeId(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first 8 hex digits, for logs and narrow tables.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    /// Parses the 32-hex-digit form printed by `Display`.
    fn from_str(s: &str) -> Result<NodeId> {
        let invalid = || Error::invalid(format!("invalid node id '{s}' (expected 32 hex digits)"));
        if s.len() != 2 * Self::LEN || !s.is_ascii() {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(NodeId(bytes))
    }
}

/// One of the `Q` equal slices of the hash space; `0..Q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position on the 64-bit circle (a key hash or a virtual-node token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Token(pub u64);

impl Token {
    /// Clockwise distance from `self` to `to` (0 if equal), wrapping at 2^64.
    pub fn distance_to(self, to: Token) -> u64 {
        to.0.wrapping_sub(self.0)
    }
}

/// A key's position on the circle: the first 8 bytes of `SHA-256(key)`,
/// big-endian. Part of the on-disk format (see the module doc).
pub fn key_hash(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The width of each of `q` partitions: `floor(2^64 / q)` (`q >= 1`).
fn partition_width(q: u32) -> u128 {
    (1u128 << 64) / u128::from(q.max(1))
}

/// The partition holding `hash` among `q` equal partitions:
/// `min(hash / floor(2^64 / q), q - 1)`. `q = 0` is treated as 1 (the
/// caller validates `q` once, at cluster creation). Part of the on-disk
/// format (see the module doc).
pub fn partition_of(hash: u64, q: u32) -> PartitionId {
    let q = q.max(1);
    let index = u128::from(hash) / partition_width(q);
    // Only reachable when q does not divide 2^64: the leftover top hashes.
    PartitionId(index.min(u128::from(q - 1)) as u32)
}

/// The first hash of partition `p` among `q`.
pub fn partition_start(p: PartitionId, q: u32) -> Token {
    // p < q, so p * floor(2^64 / q) < 2^64.
    Token((u128::from(p.0) * partition_width(q)) as u64)
}

/// The virtual-node tokens of `node`, sorted: see the module doc for the
/// derivation.
pub fn tokens_of(node: NodeId) -> Vec<Token> {
    let mut tokens: Vec<Token> = (0..VNODES)
        .map(|i| {
            let mut h = Sha256::new();
            h.update(b"ringkv/token/v1");
            h.update(node.as_bytes());
            h.update(i.to_be_bytes());
            let digest = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            Token(u64::from_be_bytes(first))
        })
        .collect();
    tokens.sort_unstable();
    tokens
}

/// Check `q` for a new cluster.
pub fn validate_partitions(q: u32) -> Result<()> {
    if q == 0 || q > MAX_PARTITIONS {
        return Err(Error::invalid(format!(
            "partition count must be between 1 and {MAX_PARTITIONS}, got {q}"
        )));
    }
    Ok(())
}

/// The load cap for a fair share of `total / members`:
/// `max(ceil(f), floor(5 f / 4))`, computed exactly in integers.
fn load_cap(total: usize, members: usize) -> usize {
    let ceil = total.div_ceil(members);
    let five_quarters = (5 * total) / (4 * members);
    ceil.max(five_quarters)
}

/// The placement of `Q` partitions on a set of members. Immutable: build a
/// new one when the member set changes. Cheap to query (every list is
/// precomputed); building costs `O(Q n log(Q n))` plus `n * VNODES` hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    q: u32,
    /// Effective replication factor: `min(N, members)`.
    n: usize,
    /// The members, sorted by id.
    members: Vec<NodeId>,
    /// `Q` lists of `members.len()` nodes each, flattened: partition `p`'s
    /// preference list is `lists[p * m .. (p + 1) * m]`.
    lists: Vec<NodeId>,
}

impl Ring {
    /// The ring of `members` (duplicates ignored) with `q` partitions and `n`
    /// replicas per partition (capped at the member count).
    pub fn new(members: impl IntoIterator<Item = NodeId>, q: u32, n: usize) -> Result<Ring> {
        validate_partitions(q)?;
        if n == 0 {
            return Err(Error::invalid("replication factor N must be at least 1"));
        }
        let members: Vec<NodeId> = members
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if members.is_empty() {
            return Err(Error::invalid("a ring needs at least one member"));
        }
        let m = members.len();
        let n = n.min(m);
        let qn = q as usize;

        // Every (partition, member) pair with the member's clockwise distance
        // from the partition start; sorting them is the one global order all
        // three passes share.
        let tokens: Vec<Vec<Token>> = members.iter().map(|&id| tokens_of(id)).collect();
        let mut pairs: Vec<(u64, u32, u32)> = Vec::with_capacity(qn * m);
        for p in 0..q {
            let start = partition_start(PartitionId(p), q);
            for (j, toks) in tokens.iter().enumerate() {
                let next = toks.partition_point(|t| *t < start);
                let token = toks[next % toks.len()];
                pairs.push((start.distance_to(token), j as u32, p));
            }
        }
        // Member index order is node-id order, so this is (distance, id, p).
        pairs.sort_unstable();

        // Pass 1: primaries under the primary cap.
        let primary_cap = load_cap(qn, m);
        let mut primary: Vec<Option<u32>> = vec![None; qn];
        let mut primaries_held = vec![0usize; m];
        for &(_, j, p) in &pairs {
            let (j, p) = (j as usize, p as usize);
            if primary[p].is_none() && primaries_held[j] < primary_cap {
                primary[p] = Some(j as u32);
                primaries_held[j] += 1;
            }
        }

        // Pass 2 (and 3 if needed): the other replicas under the placement cap.
        let replica_cap = load_cap(qn * n, m).min(qn);
        let mut replicas: Vec<Vec<u32>> = primary
            .iter()
            .map(|owner| {
                let mut set = Vec::with_capacity(n);
                // The primary cap is at least ceil(Q/m) and there are Q
                // partitions, so pass 1 always finds room.
                set.extend(*owner);
                set
            })
            .collect();
        let mut placements_held = primaries_held.clone();
        for capped in [true, false] {
            for &(_, j, p) in &pairs {
                let set = &mut replicas[p as usize];
                if set.len() < n
                    && !set.contains(&j)
                    && (!capped || placements_held[j as usize] < replica_cap)
                {
                    set.push(j);
                    placements_held[j as usize] += 1;
                }
            }
            if replicas.iter().all(|set| set.len() == n) {
                break;
            }
        }

        // Preference lists: primary, the other replicas in ring order, then
        // the fallbacks in ring order. `pairs` is in ring order per partition.
        let mut lists: Vec<Vec<u32>> = replicas;
        for &(_, j, p) in &pairs {
            let list = &mut lists[p as usize];
            if !list[..n].contains(&j) {
                list.push(j);
            }
        }
        // Reorder the non-primary replicas by distance.
        let mut rank = vec![0u32; qn * m];
        let mut seen = vec![0u32; qn];
        for &(_, j, p) in &pairs {
            rank[p as usize * m + j as usize] = seen[p as usize];
            seen[p as usize] += 1;
        }
        let mut flat = Vec::with_capacity(qn * m);
        for (p, list) in lists.iter_mut().enumerate() {
            list[1..n].sort_unstable_by_key(|&j| rank[p * m + j as usize]);
            assert_eq!(list.len(), m, "preference list must name every member once");
            flat.extend(list.iter().map(|&j| members[j as usize]));
        }
        Ok(Ring {
            q,
            n,
            members,
            lists: flat,
        })
    }

    /// The number of partitions `Q`.
    pub fn partitions(&self) -> u32 {
        self.q
    }

    /// The effective replication factor: `min(N, members)`.
    pub fn replication(&self) -> usize {
        self.n
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The partition of `key`.
    pub fn partition_for_key(&self, key: &[u8]) -> PartitionId {
        partition_of(key_hash(key), self.q)
    }

    /// Every member, in the order a request for `partition` should try them:
    /// the `N` owners first (primary first), then the fallbacks for sloppy
    /// quorum. Empty if `partition` is out of range.
    pub fn preference_list(&self, partition: PartitionId) -> &[NodeId] {
        let m = self.members.len();
        let p = partition.0 as usize;
        if partition.0 >= self.q {
            return &[];
        }
        &self.lists[p * m..(p + 1) * m]
    }

    /// The `N` nodes that hold `partition` (primary first).
    pub fn owners(&self, partition: PartitionId) -> &[NodeId] {
        let list = self.preference_list(partition);
        &list[..self.n.min(list.len())]
    }

    /// The first owner of `partition`, if it exists.
    pub fn primary(&self, partition: PartitionId) -> Option<NodeId> {
        self.preference_list(partition).first().copied()
    }

    /// The fallbacks of `partition`: every member after the owners.
    pub fn fallbacks(&self, partition: PartitionId) -> &[NodeId] {
        let list = self.preference_list(partition);
        &list[self.n.min(list.len())..]
    }

    /// Every partition `node` holds a replica of (as primary or not).
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partition_ids()
            .filter(|&p| self.owners(p).contains(&node))
            .collect()
    }

    /// Every partition `node` is the primary of.
    pub fn primaries_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partition_ids()
            .filter(|&p| self.primary(p) == Some(node))
            .collect()
    }

    /// `0..Q` as partition ids.
    pub fn partition_ids(&self) -> impl Iterator<Item = PartitionId> {
        (0..self.q).map(PartitionId)
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("q", &self.q)
            .field("n", &self.n)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ids(seeds: &[[u8; 16]]) -> Vec<NodeId> {
        seeds.iter().map(|&b| NodeId::from_bytes(b)).collect()
    }

    fn count_primaries(ring: &Ring) -> BTreeMap<NodeId, usize> {
        let mut c = BTreeMap::new();
        for p in ring.partition_ids() {
            *c.entry(ring.primary(p).unwrap()).or_default() += 1;
        }
        c
    }

    fn count_placements(ring: &Ring) -> BTreeMap<NodeId, usize> {
        let mut c = BTreeMap::new();
        for p in ring.partition_ids() {
            for &o in ring.owners(p) {
                *c.entry(o).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn key_hash_is_the_first_eight_bytes_of_sha256_big_endian() {
        // SHA-256("") = e3b0c44298fc1c14 9afbf4c8...
        assert_eq!(key_hash(b""), 0xe3b0_c442_98fc_1c14);
        // SHA-256("abc") = ba7816bf8f01cfea ...
        assert_eq!(key_hash(b"abc"), 0xba78_16bf_8f01_cfea);
    }

    #[test]
    fn partitions_cut_the_hash_space_into_equal_slices() {
        assert_eq!(partition_of(0, 256), PartitionId(0));
        assert_eq!(partition_of((1 << 56) - 1, 256), PartitionId(0));
        assert_eq!(partition_of(1 << 56, 256), PartitionId(1));
        assert_eq!(partition_of(u64::MAX, 256), PartitionId(255));
        assert_eq!(partition_of(u64::MAX, 1), PartitionId(0));
        // q = 3 does not divide 2^64: the top leftover hash stays in range.
        assert_eq!(partition_of(u64::MAX, 3), PartitionId(2));
        assert_eq!(partition_start(PartitionId(1), 256), Token(1 << 56));
        // "abc" hashes to 0xba..., i.e. partition 0xba of 256.
        assert_eq!(partition_of(key_hash(b"abc"), 256), PartitionId(0xba));
    }

    #[test]
    fn node_ids_follow_the_peer_address_and_print_as_hex() {
        let a = NodeId::from_peer_addr("127.0.0.1:17000");
        assert_eq!(a, NodeId::from_peer_addr("127.0.0.1:17000"));
        assert_ne!(a, NodeId::from_peer_addr("127.0.0.1:17001"));
        let hex = a.to_string();
        assert_eq!(hex.len(), 32);
        assert_eq!(hex.parse::<NodeId>().unwrap(), a);
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("zz".repeat(16).parse::<NodeId>().is_err());
        assert!("é".repeat(16).parse::<NodeId>().is_err());
        assert_eq!(a.short(), hex[..8]);
    }

    #[test]
    fn one_node_owns_everything_and_n_is_capped() {
        let a = NodeId::from_peer_addr("a");
        let ring = Ring::new([a], 256, 3).unwrap();
        assert_eq!(ring.replication(), 1);
        assert!(ring.partition_ids().all(|p| ring.owners(p) == [a]));
        assert_eq!(ring.partitions_of(a).len(), 256);
        assert!(ring.fallbacks(PartitionId(7)).is_empty());
        assert!(ring.preference_list(PartitionId(256)).is_empty());
    }

    #[test]
    fn invalid_rings_are_refused() {
        let a = NodeId::from_peer_addr("a");
        assert!(Ring::new([a], 0, 3).is_err());
        assert!(Ring::new([a], MAX_PARTITIONS + 1, 3).is_err());
        assert!(Ring::new([a], 256, 0).is_err());
        assert!(Ring::new([], 256, 3).is_err());
    }

    fn check_preference_lists(ring: &Ring) {
        let m = ring.members().len();
        for p in ring.partition_ids() {
            let list = ring.preference_list(p);
            assert_eq!(list.len(), m);
            let distinct: BTreeSet<_> = list.iter().collect();
            assert_eq!(distinct.len(), m, "partition {p} lists a node twice");
        }
    }

    /// (primary moves between stayers, placements gained by stayers) when
    /// going from `before` to `after`; `changed` is the node that joined or left.
    fn collateral(before: &Ring, after: &Ring, changed: NodeId) -> (usize, usize) {
        let mut primary_moves = 0;
        let mut placements_gained = 0;
        for p in before.partition_ids() {
            let (old, new) = (before.primary(p).unwrap(), after.primary(p).unwrap());
            if old != new && old != changed && new != changed {
                primary_moves += 1;
            }
            let old_set: BTreeSet<_> = before.owners(p).iter().collect();
            placements_gained += after
                .owners(p)
                .iter()
                .filter(|o| **o != changed && !old_set.contains(o))
                .count();
        }
        (primary_moves, placements_gained)
    }

    /// Clockwise distance from partition `p`'s start to `node`'s nearest token.
    fn distance(node: NodeId, p: PartitionId, q: u32) -> u64 {
        let start = partition_start(p, q);
        tokens_of(node)
            .into_iter()
            .map(|t| start.distance_to(t))
            .min()
            .unwrap()
    }

    #[test]
    fn owners_come_first_then_fallbacks_in_ring_order() {
        let members: Vec<NodeId> = (0..6)
            .map(|i| NodeId::from_peer_addr(&format!("10.0.0.{i}:17000")))
            .collect();
        let ring = Ring::new(members.clone(), 64, 3).unwrap();
        check_preference_lists(&ring);
        let mut nearest_is_primary = 0;
        for p in ring.partition_ids() {
            let fallbacks: Vec<u64> = ring
                .fallbacks(p)
                .iter()
                .map(|&x| distance(x, p, 64))
                .collect();
            assert!(fallbacks.windows(2).all(|w| w[0] < w[1]), "partition {p}");
            let owners: Vec<u64> = ring.owners(p)[1..]
                .iter()
                .map(|&x| distance(x, p, 64))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] < w[1]), "partition {p}");
            let nearest = members.iter().min_by_key(|&&x| distance(x, p, 64)).unwrap();
            nearest_is_primary += usize::from(ring.primary(p) == Some(*nearest));
        }
        // The caps only bind on the tails: most partitions go to the nearest node.
        assert!(nearest_is_primary >= 48, "only {nearest_is_primary} of 64");
        for &node in &members {
            for p in ring.partitions_of(node) {
                assert!(ring.owners(p).contains(&node));
            }
            assert!(ring
                .primaries_of(node)
                .iter()
                .all(|&p| ring.primary(p) == Some(node)));
        }
        assert_eq!(
            ring.partition_for_key(b"abc"),
            partition_of(key_hash(b"abc"), 64)
        );
    }

    fn cluster(size: usize) -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set(any::<[u8; 16]>(), size).prop_map(|s| {
            let v: Vec<[u8; 16]> = s.into_iter().collect();
            ids(&v)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn no_node_holds_more_than_1_3x_its_fair_share(
            size in prop::sample::select(vec![3usize, 5, 10]),
            seeds in prop::collection::btree_set(any::<[u8; 16]>(), 10),
        ) {
            let members: Vec<NodeId> = seeds.into_iter().take(size).map(NodeId::from_bytes).collect();
            let ring = Ring::new(members.clone(), 256, 3).unwrap();
            check_preference_lists(&ring);
            let fair = 256.0 / size as f64;
            for (&node, &held) in &count_primaries(&ring) {
                prop_assert!(held as f64 <= 1.3 * fair, "{node:?} is primary of {held} (fair {fair:.1})");
            }
            let fair_placements = 256.0 * 3.0 / size as f64;
            let placements = count_placements(&ring);
            prop_assert_eq!(placements.values().sum::<usize>(), 256 * 3);
            for (&node, &held) in &placements {
                prop_assert!(held as f64 <= 1.3 * fair_placements,
                    "{node:?} holds {held} replicas (fair {fair_placements:.1})");
            }
        }

        #[test]
        fn the_ring_does_not_depend_on_member_order(
            members in cluster(6),
            shuffle in any::<u64>(),
        ) {
            let mut shuffled = members.clone();
            // A deterministic shuffle (rotation plus swap) driven by the case.
            shuffled.rotate_left((shuffle % 6) as usize);
            shuffled.swap(0, (shuffle / 7 % 6) as usize);
            shuffled.push(members[0]); // duplicates are ignored
            let a = Ring::new(members, 64, 3).unwrap();
            let b = Ring::new(shuffled, 64, 3).unwrap();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_join_moves_little_beyond_what_the_new_node_takes(
            size in 3usize..=10,
            seeds in prop::collection::btree_set(any::<[u8; 16]>(), 11),
        ) {
            let all: Vec<NodeId> = seeds.into_iter().map(NodeId::from_bytes).collect();
            let before = Ring::new(all[..size].to_vec(), 256, 3).unwrap();
            let joiner = all[size];
            let after = Ring::new(all[..=size].to_vec(), 256, 3).unwrap();
            let (moves, gained) = collateral(&before, &after, joiner);
            prop_assert!(moves <= MAX_COLLATERAL_PRIMARY_MOVES,
                "{moves} primaries moved between old nodes");
            prop_assert!(gained <= MAX_COLLATERAL_PLACEMENTS,
                "old nodes gained {gained} replica placements");
            // ... and the joiner took a real share. Loads are capped above,
            // not below: an unlucky joiner whose nearest partitions went to
            // capped neighbours first can end with well under its fair
            // share (the regression seed: 10 of 256 at 11 nodes, fair 23),
            // so "real" means at least a third of fair here.
            let took = after.primaries_of(joiner).len();
            prop_assert!(took * (size + 1) * 3 >= 256, "joiner took only {took}");
        }

        #[test]
        fn a_leave_moves_little_beyond_what_the_leaver_held(
            size in 4usize..=11,
            seeds in prop::collection::btree_set(any::<[u8; 16]>(), 11),
            which in any::<prop::sample::Index>(),
        ) {
            let all: Vec<NodeId> = seeds.into_iter().take(size).map(NodeId::from_bytes).collect();
            let leaver = all[which.index(size)];
            let before = Ring::new(all.clone(), 256, 3).unwrap();
            let after = Ring::new(all.iter().copied().filter(|&x| x != leaver), 256, 3).unwrap();
            let (moves, _) = collateral(&before, &after, leaver);
            prop_assert!(moves <= MAX_COLLATERAL_PRIMARY_MOVES,
                "{moves} primaries moved between remaining nodes");
            // Every replica set that did not contain the leaver is unchanged
            // except for a bounded number of partitions.
            let changed_untouched = before.partition_ids().filter(|&p| {
                !before.owners(p).contains(&leaver) && before.owners(p) != after.owners(p)
            }).count();
            prop_assert!(changed_untouched <= MAX_COLLATERAL_PRIMARY_MOVES,
                "{changed_untouched} replica sets without the leaver changed");
        }
    }
}
