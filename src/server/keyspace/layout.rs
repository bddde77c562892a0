//! The keyspace's on-disk layout inside the storage engine, and the ring's
//! hash.
//!
//! # The hash
//!
//! [`key_hash`] is the stable hash of a user key that decides its partition
//! here and its place on the cluster's ring: the first 8 bytes of the key's
//! SHA-256 digest, read as a big-endian `u64`. It must never change between
//! releases or differ between nodes, which rules out `ahash` and std's
//! `RandomState`. [`partition_of`] cuts the 64-bit space into `Q` equal
//! ranges: `partition = hash / (2^64 / Q)`, clamped to `Q - 1` for the few
//! hashes past `Q * (2^64 / Q)` when `Q` does not divide `2^64`. With the
//! default `Q = 256` this is simply the top byte of the hash. The cluster's
//! ring (`cluster::ring::key_hash`, `partition_of`) computes exactly the same
//! functions; the tests below pin the values so neither can drift, and once
//! both are on one branch this module should call the ring's (the server
//! layer may import the cluster, not the other way round).
//!
//! # Engine keys (layout version 1)
//!
//! The engine is one ordered byte-string map. Its first byte splits it in two:
//!
//! ```text
//! data:         partition u16 BE | user key            -> encoded SiblingSet
//! expiry index: 0xFF | 'x' | deadline_ms u64 BE | user key -> empty value
//! ```
//!
//! Partition ids are below [`MAX_PARTITIONS`] (`0xFF00`), so a data key never
//! starts with `0xFF` and the reserved `0xFF` space never collides with data.
//! Keeping the partition in front makes each partition one contiguous range
//! that can be scanned, streamed or dropped on its own (DESIGN.md §5).
//!
//! The expiry index is ordered by deadline, so the active expiry task reads
//! only the entries that are due ([`expiry_due_range`]), a bounded batch at a
//! time, and the index survives restarts with the data it describes. An entry
//! is a hint, not the truth: the task re-checks the stored versions before it
//! tombstones anything.

use std::ops::Bound;

use crate::cluster::ring;

/// The largest number of partitions the layout can address: partition ids
/// must leave the first byte `0xFF` free for the reserved key space.
pub const MAX_PARTITIONS: u32 = 0xFF00;

/// First byte of every engine key that is not data.
const RESERVED: u8 = 0xFF;
/// Second byte of an expiry-index key.
const EXPIRY_INDEX: u8 = b'x';

/// A partition of the ring: `0..Q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u16);

impl PartitionId {
    /// The two bytes every data key of this partition starts with.
    pub fn prefix(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

/// The ring's stable hash of a user key (first 8 bytes of SHA-256, big-endian):
/// the cluster's [`ring::key_hash`], so the on-disk layout and the ring can
/// never disagree about where a key lives.
pub fn key_hash(key: &[u8]) -> u64 {
    ring::key_hash(key)
}

/// The partition that owns `hash` when the hash space is cut into
/// `partitions` equal ranges (`1..=MAX_PARTITIONS`): the ring's
/// [`ring::partition_of`], narrowed to the two bytes the layout stores.
pub fn partition_of(hash: u64, partitions: u32) -> PartitionId {
    assert!(
        (1..=MAX_PARTITIONS).contains(&partitions),
        "partition count {partitions} outside 1..={MAX_PARTITIONS} (validated at open)"
    );
    let index = ring::partition_of(hash, partitions).0;
    // `index < partitions <= 0xFF00`, so it fits a u16.
    PartitionId(index as u16)
}

/// The engine key of `user_key`: partition ++ user key.
pub fn data_key(partition: PartitionId, user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + user_key.len());
    key.extend_from_slice(&partition.prefix());
    key.extend_from_slice(user_key);
    key
}

/// The user key inside a data engine key, or `None` for a reserved key.
pub fn user_key(engine_key: &[u8]) -> Option<&[u8]> {
    match engine_key.first() {
        Some(&RESERVED) | None => None,
        Some(_) => engine_key.get(2..),
    }
}

/// The partition of a data engine key.
pub fn partition_in(engine_key: &[u8]) -> Option<PartitionId> {
    match engine_key {
        [hi, lo, ..] if *hi != RESERVED => Some(PartitionId(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// The expiry-index key saying "`user_key` may be fully expired at `deadline_ms`".
pub fn expiry_key(deadline_ms: u64, user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + user_key.len());
    key.push(RESERVED);
    key.push(EXPIRY_INDEX);
    key.extend_from_slice(&deadline_ms.to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// Splits an expiry-index key into its deadline and user key.
pub fn parse_expiry_key(engine_key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = engine_key.strip_prefix(&[RESERVED, EXPIRY_INDEX])?;
    let deadline = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((deadline, &rest[8..]))
}

/// Engine-key bounds of the expiry-index entries due at `now_ms`: deadline
/// `< now_ms` (a version is still readable at the millisecond of its
/// deadline, as in Redis).
pub fn expiry_due_range(now_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let start = vec![RESERVED, EXPIRY_INDEX];
    // Every key with deadline < now_ms sorts below `prefix ++ now_ms`.
    let end = expiry_key(now_ms, b"");
    (start, end)
}

/// Engine-key bounds of the whole data space (every partition).
pub fn data_range() -> (Bound<&'static [u8]>, Bound<&'static [u8]>) {
    (Bound::Unbounded, Bound::Excluded(&[RESERVED]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_the_first_eight_bytes_of_sha256() {
        // SHA-256("") = e3b0c442 98fc1c14 ...
        assert_eq!(key_hash(b""), 0xe3b0_c442_98fc_1c14);
        // SHA-256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(key_hash(b"abc"), 0xba78_16bf_8f01_cfea);
    }

    #[test]
    fn default_partitioning_is_the_top_byte_of_the_hash() {
        for hash in [
            0,
            1,
            u64::MAX,
            0x1234_5678_9abc_def0,
            1 << 56,
            (1 << 56) - 1,
        ] {
            assert_eq!(partition_of(hash, 256), PartitionId((hash >> 56) as u16));
        }
    }

    #[test]
    fn partition_of_stays_in_range_when_q_does_not_divide_the_space() {
        for q in [1, 3, 7, 1000, MAX_PARTITIONS] {
            assert_eq!(partition_of(u64::MAX, q), PartitionId((q - 1) as u16));
            assert_eq!(partition_of(0, q), PartitionId(0));
        }
    }

    #[test]
    fn data_keys_never_enter_the_reserved_space() {
        let last = PartitionId((MAX_PARTITIONS - 1) as u16);
        let key = data_key(last, b"\xff\xff");
        assert!(key.as_slice() < [RESERVED].as_slice());
        assert_eq!(user_key(&key), Some(&b"\xff\xff"[..]));
        assert_eq!(partition_in(&key), Some(last));
        assert_eq!(user_key(&expiry_key(5, b"k")), None);
    }

    #[test]
    fn expiry_keys_sort_by_deadline_and_round_trip() {
        let a = expiry_key(1_000, b"zzz");
        let b = expiry_key(2_000, b"aaa");
        assert!(a < b);
        assert_eq!(parse_expiry_key(&b), Some((2_000, &b"aaa"[..])));
        let (start, end) = expiry_due_range(1_001);
        assert!(start <= a && a < end);
        assert!(b >= end);
        let (_, end) = expiry_due_range(1_000);
        assert!(a >= end, "not due at its own deadline");
    }
}
