//! Data blocks: sorted entries with prefix-compressed keys and restart points.
//!
//! The byte layout is documented in the [`sstable`](super) module doc. In short,
//! each key is stored as the length it shares with the previous key plus the
//! rest; every [`RESTART_INTERVAL`]th entry stores its key whole (a *restart
//! point*) and the block ends with the offsets of its restart points, so a
//! lookup binary-searches the restart points and then scans at most
//! `RESTART_INTERVAL - 1` entries. This is LevelDB's layout; it saves most of
//! the key bytes when keys share a prefix (the cluster puts a partition id in
//! front of every key) while keeping lookups logarithmic.
//!
//! Decoding never trusts the bytes: every length and offset is checked, and a
//! violation is reported as [`Malformed`], which the table turns into
//! `Error::Corruption` with the file and the block's offset.

use crate::storage::types::{Entry, SeqNo};
use bytes::Bytes;
use std::cmp::Ordering;

/// Entries between two restart points (full keys).
pub(crate) const RESTART_INTERVAL: usize = 16;

/// Entry kind byte: a value follows.
pub(crate) const KIND_VALUE: u8 = 0;
/// Entry kind byte: a tombstone (value length is 0).
pub(crate) const KIND_TOMBSTONE: u8 = 1;

/// Why a block's bytes could not be decoded; the caller adds file and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads an unsigned LEB128 varint of at most 10 bytes at `*pos`.
#[inline]
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    // Most varints in a block (lengths, the shared prefix) are one byte.
    if let Some(&byte) = buf.get(*pos) {
        if byte < 0x80 {
            *pos += 1;
            return Ok(u64::from(byte));
        }
    }
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(Malformed("varint runs past the end"))?;
        *pos += 1;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(Malformed("varint overflows 64 bits"));
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Malformed("varint longer than 10 bytes"))
}

/// A varint that must fit in `usize` and in `u32` (lengths inside a block).
fn get_len(buf: &[u8], pos: &mut usize) -> Result<usize, Malformed> {
    let v = get_varint(buf, pos)?;
    u32::try_from(v)
        .map(|v| v as usize)
        .map_err(|_| Malformed("length does not fit in 32 bits"))
}

fn read_u32_le(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(a)
}

/// One entry as stored: the key is `previous_key[..shared] ++ suffix`.
struct RawEntry<'a> {
    shared: usize,
    suffix: &'a [u8],
    kind: u8,
    seq: u64,
    value_start: usize,
    value_len: usize,
    /// Offset of the entry after this one.
    next: usize,
}

/// A data block, checksum already verified, restart array validated.
pub(crate) struct Block {
    /// The block's bytes without its CRC trailer.
    data: Bytes,
    /// Where the restart array starts; entries live in `data[..restarts_at]`.
    restarts_at: usize,
    num_restarts: usize,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("bytes", &self.data.len())
            .field("restarts", &self.num_restarts)
            .finish()
    }
}

impl Block {
    /// Validates the restart array of `data` (a block without its CRC).
    pub(crate) fn decode(data: Bytes) -> Result<Block, Malformed> {
        if data.len() < 4 {
            return Err(Malformed("data block shorter than its restart count"));
        }
        let num_restarts = read_u32_le(&data, data.len() - 4) as usize;
        let restarts_len = num_restarts
            .checked_mul(4)
            .and_then(|n| n.checked_add(4))
            .ok_or(Malformed("restart count overflows"))?;
        let restarts_at = data
            .len()
            .checked_sub(restarts_len)
            .ok_or(Malformed("restart array longer than the block"))?;
        if num_restarts == 0 {
            return Err(Malformed("data block without restart points"));
        }
        let mut previous = None;
        for i in 0..num_restarts {
            let at = read_u32_le(&data, restarts_at + 4 * i) as usize;
            if at >= restarts_at || previous.is_some_and(|p| at <= p) || (i == 0 && at != 0) {
                return Err(Malformed("restart point out of order or out of range"));
            }
            previous = Some(at);
        }
        Ok(Block {
            data,
            restarts_at,
            num_restarts,
        })
    }

    /// Bytes held by this block (for cache accounting).
    pub(crate) fn size(&self) -> usize {
        self.data.len()
    }

    fn restart(&self, i: usize) -> usize {
        read_u32_le(&self.data, self.restarts_at + 4 * i) as usize
    }

    fn entry_at(&self, pos: usize) -> Result<RawEntry<'_>, Malformed> {
        let buf = &self.data[..self.restarts_at];
        let mut p = pos;
        let shared = get_len(buf, &mut p)?;
        let unshared = get_len(buf, &mut p)?;
        let value_len = get_len(buf, &mut p)?;
        let kind = *buf.get(p).ok_or(Malformed("entry kind past the end"))?;
        p += 1;
        let seq = get_varint(buf, &mut p)?;
        let suffix_end = p
            .checked_add(unshared)
            .filter(|&e| e <= buf.len())
            .ok_or(Malformed("key runs past the entries"))?;
        let suffix = &buf[p..suffix_end];
        let value_end = suffix_end
            .checked_add(value_len)
            .filter(|&e| e <= buf.len())
            .ok_or(Malformed("value runs past the entries"))?;
        match kind {
            KIND_VALUE => {}
            KIND_TOMBSTONE if value_len == 0 => {}
            KIND_TOMBSTONE => return Err(Malformed("tombstone with a value")),
            _ => return Err(Malformed("unknown entry kind")),
        }
        Ok(RawEntry {
            shared,
            suffix,
            kind,
            seq,
            value_start: suffix_end,
            value_len,
            next: value_end,
        })
    }

    /// The entry's value as an owned `Entry`.
    ///
    /// A value that fills at least half its block shares the block's buffer
    /// (no copy of a large value); a smaller one is copied, so that a value
    /// the caller keeps never pins a whole block outside the cache's
    /// accounting (a 100-byte value would otherwise hold 4 KiB).
    fn entry_value(&self, raw: &RawEntry<'_>) -> (SeqNo, Entry) {
        let entry = if raw.kind == KIND_TOMBSTONE {
            Entry::Tombstone
        } else {
            let range = raw.value_start..raw.value_start + raw.value_len;
            if 2 * raw.value_len >= self.data.len() {
                Entry::Value(self.data.slice(range))
            } else {
                Entry::Value(Bytes::copy_from_slice(&self.data[range]))
            }
        };
        (SeqNo(raw.seq), entry)
    }

    /// The full key at restart point `i` (restart entries share nothing).
    fn restart_key(&self, i: usize) -> Result<&[u8], Malformed> {
        let raw = self.entry_at(self.restart(i))?;
        if raw.shared != 0 {
            return Err(Malformed("restart entry shares a prefix"));
        }
        Ok(raw.suffix)
    }

    /// The last restart point whose key is `<= target` (0 if none is).
    fn restart_for(&self, target: &[u8]) -> Result<usize, Malformed> {
        let (mut lo, mut hi) = (0, self.num_restarts - 1);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.restart_key(mid)? <= target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }

    /// The entry stored for exactly `key`, if any.
    ///
    /// Allocation-free: instead of rebuilding each key, the scan tracks how
    /// long a prefix the current key shares with `key` and how they compare;
    /// an entry that keeps more of the previous key than that prefix compares
    /// like the previous key did.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<(SeqNo, Entry)>, Malformed> {
        let mut pos = self.restart(self.restart_for(key)?);
        // State of the previous key relative to `key`.
        let mut prev_len = 0usize;
        let mut common = 0usize;
        let mut ord = Ordering::Less;
        let mut first = true;
        while pos < self.restarts_at {
            let raw = self.entry_at(pos)?;
            if raw.shared > prev_len || (first && raw.shared != 0) {
                return Err(Malformed("entry shares more than the previous key"));
            }
            if first || raw.shared <= common {
                let rest = &key[raw.shared.min(key.len())..];
                let same = raw
                    .suffix
                    .iter()
                    .zip(rest)
                    .take_while(|(a, b)| a == b)
                    .count();
                common = raw.shared + same;
                ord = raw.suffix.cmp(rest);
            }
            // else: the entry keeps the byte where the previous key and `key`
            // first differ, so it compares the same way and `common` holds.
            match ord {
                Ordering::Equal => return Ok(Some(self.entry_value(&raw))),
                Ordering::Greater => return Ok(None),
                Ordering::Less => {}
            }
            prev_len = raw.shared + raw.suffix.len();
            first = false;
            pos = raw.next;
        }
        Ok(None)
    }
}

/// A forward cursor over one block, rebuilding each key into a reused buffer.
#[derive(Debug)]
pub(crate) struct BlockCursor {
    block: std::sync::Arc<Block>,
    /// Offset of the next entry to decode.
    pos: usize,
    /// The key of the entry most recently returned by `next_entry`.
    key: Vec<u8>,
}

impl BlockCursor {
    /// A cursor before the first entry of `block`.
    pub(crate) fn new(block: std::sync::Arc<Block>) -> Self {
        BlockCursor {
            block,
            pos: 0,
            key: Vec::new(),
        }
    }

    /// Positions the cursor so the next `next_entry` call decodes from the
    /// restart point at or before `target`; the caller skips what is smaller.
    pub(crate) fn seek_near(&mut self, target: &[u8]) -> Result<(), Malformed> {
        let restart = self.block.restart_for(target)?;
        self.pos = self.block.restart(restart);
        self.key.clear();
        Ok(())
    }

    /// The key of the entry last returned by [`next_entry`](Self::next_entry).
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Decodes the next entry; its key is then in [`key`](Self::key).
    pub(crate) fn next_entry(&mut self) -> Option<Result<(SeqNo, Entry), Malformed>> {
        if self.pos >= self.block.restarts_at {
            return None;
        }
        // Disjoint field borrows: the block is read while the key is rebuilt.
        let block = &self.block;
        let raw = match block.entry_at(self.pos) {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        if raw.shared > self.key.len() {
            return Some(Err(Malformed("entry shares more than the previous key")));
        }
        self.key.truncate(raw.shared);
        self.key.extend_from_slice(raw.suffix);
        self.pos = raw.next;
        Some(Ok(block.entry_value(&raw)))
    }
}

/// Accumulates entries into one encoded data block.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    since_restart: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    /// Whether no entry was added since the last `finish`.
    pub(crate) fn is_empty(&self) -> bool {
        self.restarts.is_empty()
    }

    /// The encoded size if the block were finished now.
    pub(crate) fn encoded_len(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// An upper bound on what adding an entry of these sizes would cost.
    pub(crate) fn entry_cost(key_len: usize, value_len: usize) -> usize {
        // Three 5-byte length varints, the kind byte, a 10-byte seq varint,
        // a possible new restart offset.
        key_len + value_len + 15 + 1 + 10 + 4
    }

    /// Appends an entry; the caller guarantees `key` sorts after the last one
    /// and that the block's size stays within `u32`.
    pub(crate) fn add(&mut self, key: &[u8], seq: SeqNo, entry: &Entry) {
        let shared = if self.since_restart >= RESTART_INTERVAL || self.restarts.is_empty() {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let (kind, value): (u8, &[u8]) = match entry {
            Entry::Value(v) => (KIND_VALUE, v),
            Entry::Tombstone => (KIND_TOMBSTONE, &[]),
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.push(kind);
        put_varint(&mut self.buf, seq.0);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
    }

    /// Appends the restart array and returns the encoded block; the builder
    /// is empty afterwards (its buffers are kept for reuse).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.buf.clear();
        self.restarts.clear();
        self.since_restart = 0;
        self.last_key.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// (key, seq, value or tombstone)
    type TestEntry<'a> = (&'a [u8], u64, Option<&'a [u8]>);

    fn build(entries: &[TestEntry<'_>]) -> Block {
        let mut b = BlockBuilder::default();
        for (k, s, v) in entries {
            let e = match v {
                Some(v) => Entry::Value(Bytes::copy_from_slice(v)),
                None => Entry::Tombstone,
            };
            b.add(k, SeqNo(*s), &e);
        }
        let mut out = Vec::new();
        b.finish(&mut out);
        Block::decode(Bytes::from(out)).unwrap()
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
        let mut pos = 0;
        assert!(get_varint(&[0xff; 11], &mut pos).is_err());
        let mut pos = 0;
        assert!(get_varint(&[0x80], &mut pos).is_err());
    }

    #[test]
    fn get_finds_every_key_and_only_those() {
        let keys: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("prefix/{:05}", i * 2).into_bytes())
            .collect();
        let entries: Vec<TestEntry<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_slice(), i as u64, (i % 3 != 0).then_some(k.as_slice())))
            .collect();
        let block = build(&entries);
        for (i, k) in keys.iter().enumerate() {
            let (seq, entry) = block.get(k).unwrap().unwrap();
            assert_eq!(seq, SeqNo(i as u64));
            if i % 3 == 0 {
                assert_eq!(entry, Entry::Tombstone);
            } else {
                assert_eq!(entry, Entry::Value(Bytes::copy_from_slice(k)));
            }
        }
        for i in 0..100u32 {
            let absent = format!("prefix/{:05}", i * 2 + 1);
            assert_eq!(block.get(absent.as_bytes()).unwrap(), None);
        }
        assert_eq!(block.get(b"").unwrap(), None);
        assert_eq!(block.get(b"prefix/").unwrap(), None);
        assert_eq!(block.get(b"prefix/00000\0").unwrap(), None);
        assert_eq!(block.get(b"zzz").unwrap(), None);
    }

    #[test]
    fn keys_that_are_prefixes_of_each_other_are_told_apart() {
        let block = build(&[
            (b"", 1, Some(b"empty")),
            (b"a", 2, Some(b"a")),
            (b"aa", 3, Some(b"aa")),
            (b"aab", 4, None),
            (b"ab", 5, Some(b"ab")),
            (b"b", 6, Some(b"b")),
        ]);
        assert_eq!(block.get(b"").unwrap().unwrap().0, SeqNo(1));
        assert_eq!(block.get(b"aa").unwrap().unwrap().0, SeqNo(3));
        assert_eq!(block.get(b"aab").unwrap().unwrap().1, Entry::Tombstone);
        assert_eq!(block.get(b"aaa").unwrap(), None);
        assert_eq!(block.get(b"aac").unwrap(), None);
        assert_eq!(block.get(b"ab").unwrap().unwrap().0, SeqNo(5));
        let mut cursor = BlockCursor::new(Arc::new(block));
        let mut seen = Vec::new();
        while let Some(e) = cursor.next_entry() {
            e.unwrap();
            seen.push(cursor.key().to_vec());
        }
        let expected: Vec<&[u8]> = vec![b"", b"a", b"aa", b"aab", b"ab", b"b"];
        assert_eq!(seen, expected);
    }

    #[test]
    fn garbage_decodes_to_malformed_never_a_panic() {
        let block = build(&[(b"k1", 1, Some(b"v")), (b"k2", 2, None)]);
        let raw = block.data.to_vec();
        for i in 0..raw.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[i] ^= flip;
                if let Ok(b) = Block::decode(Bytes::from(bad)) {
                    let _ = b.get(b"k1");
                    let _ = b.get(b"k2");
                    let mut c = BlockCursor::new(Arc::new(b));
                    while let Some(Ok(_)) = c.next_entry() {}
                }
            }
        }
        for len in 0..raw.len() {
            if let Ok(b) = Block::decode(Bytes::copy_from_slice(&raw[..len])) {
                let _ = b.get(b"k2");
            }
        }
    }
}
