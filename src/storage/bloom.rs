//! A bloom filter with a stable, documented on-disk form, and the stable hash
//! it is built on.
//!
//! SSTables persist one filter each so that a `get` for a key the table does
//! not hold usually costs no data-block read (DESIGN.md §5, the seed's read
//! path: memtable -> bloom filter -> block index -> one data block).
//!
//! # Hash
//!
//! [`xxh64`] is XXH64 (Yann Collet's xxHash, 64-bit variant) with seed 0,
//! written here so that its output can never change under us: a filter written
//! by one release must answer the same way in every later one. The general
//! purpose hashers of the ecosystem (`ahash`, std's `RandomState`) are keyed per
//! process or free to change between versions, so they cannot be used for
//! anything persisted. XXH64 is fast (a few ns for a 16-byte key) and well
//! mixed; its reference vectors are checked in the tests.
//!
//! # Probing: one cache line per key
//!
//! The bit array is split into 512-bit blocks, one 64-byte cache line each,
//! and all `k` probes of a key fall into one block (a "blocked" bloom
//! filter, as RocksDB's `FastLocalBloom`). A lookup thus costs one cache miss
//! instead of up to `k`: with filters of many tables far larger than the CPU
//! caches, that is most of the cost of a `get` for an absent key. The price
//! is a slightly higher false-positive rate for the same memory (measured
//! 0.95% instead of 0.82% at 10 bits per key).
//!
//! For a key with hash `h = xxh64(key)`:
//! - the block is `((h >> 32) * num_blocks) >> 32` (multiply-shift range
//!   reduction of the high half: no division, uses well-mixed bits);
//! - the probes come from the low half `x = h as u32`: probe `i` sets or tests
//!   bit `x_i >> 23` (the top 9 bits, 0..512) of the block, with `x_0 = x`
//!   and `x_{i+1} = x_i * 0x9E3779B9 (mod 2^32)`.
//!
//! With `b` bits per key, `k = round(b * ln 2)` probes (clamped to 1..=30):
//! 7 for the default `b = 10` (measured in the tests on 100k absent keys).
//!
//! # Format (version 1)
//!
//! ```text
//! offset  size  field
//! 0       1     scheme: 1 = XXH64 seed 0, 512-bit blocks, probing as above
//! 1       1     k, the number of probes (1..=30)
//! 2       8     num_blocks, u64 little-endian (1..=2^32-1)
//! 10      64 * num_blocks  the blocks; bit j (0..512) of block i is
//!               (byte[64 * i + j / 8] >> (j % 8)) & 1
//! ```
//!
//! `num_blocks = max(1, ceil(n * b / 512))` for `n` keys. The SSTable wraps
//! this in a block with a CRC32C (see `sstable`), so the filter itself carries
//! no checksum.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The only scheme this build writes and reads.
const SCHEME_XXH64_BLOCKED_512: u8 = 1;
/// Bytes per filter block: one cache line.
const LINE_BYTES: usize = 64;
/// Bits per filter block.
const LINE_BITS: u64 = 512;
/// Bytes before the bit array.
const HEADER_LEN: usize = 10;
/// More probes cost time and buy nothing past ~30 bits per key.
const MAX_PROBES: u32 = 30;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge_round(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `data` with `seed`: the stable hash behind the bloom filter.
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len() as u64;
    let mut rest = data;
    let mut h = if rest.len() >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while rest.len() >= 32 {
            v1 = round(v1, read_u64(&rest[0..]));
            v2 = round(v2, read_u64(&rest[8..]));
            v3 = round(v3, read_u64(&rest[16..]));
            v4 = round(v4, read_u64(&rest[24..]));
            rest = &rest[32..];
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = merge_round(h, v1);
        h = merge_round(h, v2);
        h = merge_round(h, v3);
        merge_round(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h ^= round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The filter's hash of a key; builders collect these, readers probe with them.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// The block a hash selects among `num_blocks` (< 2^32).
#[inline]
fn block_of(hash: u64, num_blocks: u64) -> usize {
    (((hash >> 32) * num_blocks) >> 32) as usize
}

/// The `k` bit positions (0..512) within its block that `hash` probes.
#[inline]
fn probes(hash: u64, k: u32) -> impl Iterator<Item = u32> {
    let mut x = hash as u32;
    (0..k).map(move |_| {
        let bit = x >> 23;
        x = x.wrapping_mul(0x9E37_79B9);
        bit
    })
}

/// The number of probes that minimises false positives for `bits_per_key`.
pub fn probes_for(bits_per_key: u32) -> u32 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round() as u32;
    k.clamp(1, MAX_PROBES)
}

/// Builds the encoded filter (format above) for the key hashes `hashes`.
///
/// Even an empty table gets one block, so every filter is well-formed.
pub fn build(hashes: &[u64], bits_per_key: u32) -> Vec<u8> {
    let bits_per_key = bits_per_key.max(1);
    let k = probes_for(bits_per_key);
    let num_blocks = (hashes.len() as u64)
        .saturating_mul(u64::from(bits_per_key))
        .div_ceil(LINE_BITS)
        .clamp(1, u64::from(u32::MAX));
    let mut out = vec![0u8; HEADER_LEN + num_blocks as usize * LINE_BYTES];
    out[0] = SCHEME_XXH64_BLOCKED_512;
    out[1] = k as u8;
    out[2..10].copy_from_slice(&num_blocks.to_le_bytes());
    let lines = &mut out[HEADER_LEN..];
    for &h in hashes {
        let line = &mut lines[block_of(h, num_blocks) * LINE_BYTES..][..LINE_BYTES];
        for bit in probes(h, k) {
            line[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    out
}

/// One filter block, aligned so it is exactly one cache line in memory.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u64; 8]);

/// A decoded filter, kept resident by its table.
pub struct BloomFilter {
    k: u32,
    lines: Box<[Line]>,
}

impl std::fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BloomFilter")
            .field("k", &self.k)
            .field("blocks", &self.lines.len())
            .finish()
    }
}

impl BloomFilter {
    /// Decodes a filter written by [`build`]. `file` and `offset` name the
    /// filter block in errors.
    pub fn decode(data: &[u8], file: &Path, offset: u64) -> Result<Self> {
        let bad = |detail: &str| Error::corruption(file, offset, format!("bloom filter: {detail}"));
        if data.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        if data[0] != SCHEME_XXH64_BLOCKED_512 {
            return Err(bad(&format!("unknown scheme {}", data[0])));
        }
        let k = u32::from(data[1]);
        if k == 0 || k > MAX_PROBES {
            return Err(bad(&format!("probe count {k} out of range")));
        }
        let num_blocks = read_u64(&data[2..10]);
        let bits = &data[HEADER_LEN..];
        if num_blocks == 0
            || num_blocks > u64::from(u32::MAX)
            || num_blocks.checked_mul(LINE_BYTES as u64) != Some(bits.len() as u64)
        {
            return Err(bad(&format!(
                "{num_blocks} blocks do not match {} bytes of bits",
                bits.len()
            )));
        }
        let lines = bits
            .chunks_exact(LINE_BYTES)
            .map(|chunk| Line(std::array::from_fn(|w| read_u64(&chunk[8 * w..]))))
            .collect();
        Ok(BloomFilter { k, lines })
    }

    /// False means the key is certainly absent; true means "maybe present".
    #[inline]
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        let line = &self.lines[block_of(hash, self.lines.len() as u64)].0;
        probes(hash, self.k).all(|bit| line[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// [`may_contain_hash`](Self::may_contain_hash) of [`key_hash`]`(key)`.
    #[inline]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(key_hash(key))
    }

    /// Resident bytes of the bit array.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[Line]>(&self.lines) + std::mem::size_of::<Self>()
    }
}

/// An in-memory blocked bloom filter that one writer fills while readers
/// probe it: the memtable's, so a `get` for a key the memtable does not hold
/// costs one cache line instead of a skiplist search (about twenty dependent
/// cache misses at 64 MiB). Same hash and probing as the persisted filter;
/// never written to disk, so it has no format.
///
/// Bits are set with relaxed atomics *before* the entry they cover is
/// inserted. A reader that may see the entry (its sequence number is at most
/// the reader's snapshot, published with release ordering after the insert)
/// therefore also sees its bits.
pub(crate) struct AtomicBloom {
    lines: Box<[[AtomicU64; 8]]>,
    k: u32,
}

impl AtomicBloom {
    /// A filter for up to `keys` keys at `bits_per_key`; more keys only raise
    /// the false-positive rate.
    pub(crate) fn new(keys: usize, bits_per_key: u32) -> Self {
        let bits_per_key = bits_per_key.max(1);
        let num_blocks = (keys as u64)
            .saturating_mul(u64::from(bits_per_key))
            .div_ceil(LINE_BITS)
            .clamp(1, u64::from(u32::MAX));
        AtomicBloom {
            lines: (0..num_blocks)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            k: probes_for(bits_per_key),
        }
    }

    /// Set `hash`'s bits. Callers must serialise inserts (the memtable calls
    /// this under its arena lock): each word is updated with a plain load and
    /// store, not a locked read-modify-write (about 20 ns each, seven per
    /// key, on the write path under the engine's write lock), so two
    /// concurrent inserts could lose each other's bits.
    pub(crate) fn insert_hash_serialized(&self, hash: u64) {
        let line = &self.lines[block_of(hash, self.lines.len() as u64)];
        let mut masks = [0u64; 8];
        for bit in probes(hash, self.k) {
            masks[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (word, mask) in line.iter().zip(masks) {
            if mask != 0 {
                word.store(word.load(Ordering::Relaxed) | mask, Ordering::Relaxed);
            }
        }
    }

    /// False means the key was certainly never inserted.
    #[inline]
    pub(crate) fn may_contain_hash(&self, hash: u64) -> bool {
        let line = &self.lines[block_of(hash, self.lines.len() as u64)];
        probes(hash, self.k)
            .all(|bit| line[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }

    /// Resident bytes of the bit array.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[[AtomicU64; 8]]>(&self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxh64(b"asdf", 0), 0x4158_72F5_99CE_A71E);
        assert_eq!(xxh64(b"Call me Ishmael.", 0), 0x6D04_390F_C9D6_1A90);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
        assert_eq!(
            xxh64(b"Some years ago--never mind how long precisely-", 0),
            0x8F26_F2B9_86AF_DC52
        );
        assert_eq!(xxh64(b"", 1), 0xD5AF_BA13_36A3_BE4B);
    }

    #[test]
    fn every_inserted_key_is_reported_present() {
        let keys: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("key{i}").into_bytes())
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        let encoded = build(&hashes, 10);
        let filter = BloomFilter::decode(&encoded, Path::new("t"), 0).unwrap();
        assert!(keys.iter().all(|k| filter.may_contain(k)));
    }

    #[test]
    fn false_positive_rate_is_about_one_percent_at_ten_bits_per_key() {
        let hashes: Vec<u64> = (0..100_000u32)
            .map(|i| key_hash(format!("present-{i:08}").as_bytes()))
            .collect();
        let encoded = build(&hashes, 10);
        let filter = BloomFilter::decode(&encoded, Path::new("t"), 0).unwrap();
        let false_positives = (0..100_000u32)
            .filter(|i| filter.may_contain(format!("absent-{i:08}").as_bytes()))
            .count();
        let rate = false_positives as f64 / 100_000.0;
        // 0.95% measured over 1M keys for k = 7, b = 10 (0.82% unblocked).
        assert!((0.006..0.014).contains(&rate), "false-positive rate {rate}");
    }

    #[test]
    fn malformed_filters_are_corruption_not_panics() {
        let good = build(&[1, 2, 3], 10);
        assert!(BloomFilter::decode(&good, Path::new("f.sst"), 9).is_ok());
        let with = |at: usize, byte: u8| {
            let mut bad = good.clone();
            bad[at] = byte;
            bad
        };
        let mut grown = good.clone();
        grown.extend_from_slice(&[0; 64]);
        for bad in [
            good[..5].to_vec(),
            good[..good.len() - 1].to_vec(),
            grown,
            with(0, 2),  // unknown scheme
            with(1, 0),  // no probes
            with(1, 31), // too many probes
            with(2, 0),  // zero blocks
            with(2, 2),  // more blocks than bytes
            with(9, 1),  // an absurd block count
        ] {
            assert!(matches!(
                BloomFilter::decode(&bad, Path::new("f.sst"), 9),
                Err(Error::Corruption { offset: 9, .. })
            ));
        }
    }

    #[test]
    fn atomic_filter_reports_every_inserted_key_and_rejects_most_others() {
        let filter = AtomicBloom::new(10_000, 10);
        for i in 0..10_000u64 {
            filter.insert_hash_serialized(key_hash(&i.to_be_bytes()));
        }
        assert!((0..10_000u64).all(|i| filter.may_contain_hash(key_hash(&i.to_be_bytes()))));
        let false_positives = (10_000..110_000u64)
            .filter(|i| filter.may_contain_hash(key_hash(&i.to_be_bytes())))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100000");
    }
}
