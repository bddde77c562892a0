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
//! # Probing
//!
//! One 64-bit hash `h` per key gives all `k` probe positions by double hashing
//! (Kirsch and Mitzenmacher, "Less hashing, same performance"):
//! `g_i = h + i * delta (mod 2^64)` with `delta = rotate_left(h, 32) | 1`, for
//! `i = 0..k`. Each `g_i` is mapped onto `0..m` with the multiply-shift range
//! reduction `(g_i * m) >> 64` (128-bit product), which avoids a division per
//! probe and uses the hash's well-mixed high bits.
//!
//! With `b` bits per key, `k = round(b * ln 2)` probes (clamped to 1..=30); the
//! false-positive rate is about `(1 - e^(-k/b))^k`: 0.8% for the default
//! `b = 10`, `k = 7` (measured in the tests on 100k absent keys).
//!
//! # Format (version 1)
//!
//! ```text
//! offset  size  field
//! 0       1     hash scheme: 1 = XXH64 seed 0, double hashing as above
//! 1       1     k, the number of probes (1..=30)
//! 2       8     m, the number of bits, u64 little-endian (> 0)
//! 10      ceil(m/8)  the bit array: bit j is (byte[j / 8] >> (j % 8)) & 1
//! ```
//!
//! The SSTable wraps this in a block with a CRC32C (see `sstable`), so the
//! filter itself carries no checksum.

use crate::error::{Error, Result};
use std::path::Path;

/// The only hash scheme this build writes and reads.
const SCHEME_XXH64_DOUBLE_HASHING: u8 = 1;
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

/// The `k` probe positions of `hash` in a filter of `m` bits.
#[inline]
fn probes(hash: u64, k: u32, m: u64) -> impl Iterator<Item = u64> {
    let delta = hash.rotate_left(32) | 1;
    (0..u64::from(k)).map(move |i| {
        let g = hash.wrapping_add(i.wrapping_mul(delta));
        ((u128::from(g) * u128::from(m)) >> 64) as u64
    })
}

/// The number of probes that minimises false positives for `bits_per_key`.
pub fn probes_for(bits_per_key: u32) -> u32 {
    let k = (f64::from(bits_per_key) * std::f64::consts::LN_2).round() as u32;
    k.clamp(1, MAX_PROBES)
}

/// Builds the encoded filter (format above) for the key hashes `hashes`.
///
/// The bit array has `max(64, n * bits_per_key)` bits, so even an empty or tiny
/// table gets a well-formed filter.
pub fn build(hashes: &[u64], bits_per_key: u32) -> Vec<u8> {
    let bits_per_key = bits_per_key.max(1);
    let k = probes_for(bits_per_key);
    let m = (hashes.len() as u64)
        .saturating_mul(u64::from(bits_per_key))
        .max(64);
    let nbytes = m.div_ceil(8) as usize;
    let mut out = vec![0u8; HEADER_LEN + nbytes];
    out[0] = SCHEME_XXH64_DOUBLE_HASHING;
    out[1] = k as u8;
    out[2..10].copy_from_slice(&m.to_le_bytes());
    let bits = &mut out[HEADER_LEN..];
    for &h in hashes {
        for bit in probes(h, k, m) {
            bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    out
}

/// A decoded filter, kept resident by its table.
#[derive(Debug)]
pub struct BloomFilter {
    k: u32,
    m: u64,
    bits: Box<[u8]>,
}

impl BloomFilter {
    /// Decodes a filter written by [`build`]. `file` and `offset` name the
    /// filter block in errors.
    pub fn decode(data: &[u8], file: &Path, offset: u64) -> Result<Self> {
        let bad = |detail: &str| Error::corruption(file, offset, format!("bloom filter: {detail}"));
        if data.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        if data[0] != SCHEME_XXH64_DOUBLE_HASHING {
            return Err(bad(&format!("unknown hash scheme {}", data[0])));
        }
        let k = u32::from(data[1]);
        if k == 0 || k > MAX_PROBES {
            return Err(bad(&format!("probe count {k} out of range")));
        }
        let m = read_u64(&data[2..10]);
        let bits = &data[HEADER_LEN..];
        if m == 0 || m.div_ceil(8) != bits.len() as u64 {
            return Err(bad(&format!(
                "{m} bits do not match a {}-byte bit array",
                bits.len()
            )));
        }
        Ok(BloomFilter {
            k,
            m,
            bits: bits.into(),
        })
    }

    /// False means the key is certainly absent; true means "maybe present".
    #[inline]
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        probes(hash, self.k, self.m)
            .all(|bit| self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// [`may_contain_hash`](Self::may_contain_hash) of [`key_hash`]`(key)`.
    #[inline]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(key_hash(key))
    }

    /// Resident bytes of the bit array.
    pub fn memory_bytes(&self) -> usize {
        self.bits.len() + std::mem::size_of::<Self>()
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
        // Theory says 0.82% for k = 7, b = 10.
        assert!((0.004..0.015).contains(&rate), "false-positive rate {rate}");
    }

    #[test]
    fn malformed_filters_are_corruption_not_panics() {
        let good = build(&[1, 2, 3], 10);
        for bad in [
            &good[..5],
            &good[..good.len() - 1],
            &[0u8, 7, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[1u8, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(matches!(
                BloomFilter::decode(bad, Path::new("f.sst"), 9),
                Err(Error::Corruption { offset: 9, .. })
            ));
        }
    }
}
