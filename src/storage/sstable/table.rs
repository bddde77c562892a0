//! Reading an SSTable: [`SsTable`].
//!
//! `open` reads and verifies the footer, the filter block and the index block
//! (format in the [`sstable`](super) module doc) and keeps the decoded index
//! and filter resident, charged to the block cache. After that a `get` costs
//! one filter probe sequence, one binary search over the in-memory index and,
//! unless the filter rules the key out, one data block: from the cache, or one
//! positional read verified by its CRC32C.

use super::block::{get_varint, Block, BlockCursor, Malformed};
use super::builder::with_path;
use super::iter::SsTableIter;
use super::{
    ReadStatsSnapshot, TableMeta, BLOCK_TRAILER_LEN, FOOTER_LEN, FORMAT_VERSION, MAGIC, TAIL_LEN,
};
use crate::error::{Error, Result};
use crate::storage::bloom::BloomFilter;
use crate::storage::cache::{BlockCache, BlockKey, CacheSlot};
use crate::storage::types::{Entry, SeqNo, TableId};
use bytes::Bytes;
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a data block's contents are in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl BlockHandle {
    /// Where the block's CRC trailer ends; `None` if that overflows (garbage).
    fn end(&self) -> Option<u64> {
        self.offset
            .checked_add(u64::from(self.len))?
            .checked_add(BLOCK_TRAILER_LEN)
    }
}

/// One index entry: the last key of a block (a range of the raw index bytes)
/// and where the block is.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    /// The key's first 8 bytes, big-endian, zero-padded: most binary-search
    /// steps are decided here without touching the key bytes (one cache miss
    /// per step instead of two).
    prefix: u64,
    key_start: u32,
    key_end: u32,
    handle: BlockHandle,
}

/// The decoded block index. Keys stay in the raw index block; entries point
/// into it, so the index costs its block plus 32 bytes per data block.
struct Index {
    raw: Bytes,
    smallest: Bytes,
    entries: Box<[IndexEntry]>,
}

impl Index {
    fn last_key(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.raw[e.key_start as usize..e.key_end as usize]
    }

    /// The first block whose last key is `>= key`: the only block that can
    /// hold `key`, or the first to scan from it.
    pub(crate) fn find(&self, key: &[u8]) -> Option<usize> {
        let wanted = key_prefix(key);
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Unequal prefixes order their keys the same way; equal ones
            // need the whole keys.
            let prefix = self.entries[mid].prefix;
            let below = prefix < wanted || (prefix == wanted && self.last_key(mid) < key);
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo < self.entries.len()).then_some(lo)
    }

    fn memory_bytes(&self) -> usize {
        self.raw.len() + std::mem::size_of_val::<[IndexEntry]>(&self.entries)
    }

    /// Decodes and validates the index block: handles tile the data region
    /// `0..data_end` in order, keys strictly increase.
    fn decode(raw: Bytes, data_end: u64) -> Result<Index, Malformed> {
        let mut pos = 0;
        let smallest_len = get_len(&raw, &mut pos)?;
        let smallest_end = pos
            .checked_add(smallest_len)
            .filter(|&e| e <= raw.len())
            .ok_or(Malformed("smallest key runs past the index"))?;
        let smallest = raw.slice(pos..smallest_end);
        pos = smallest_end;
        let n = get_varint(&raw, &mut pos)?;
        // Each entry takes at least 3 bytes; a count beyond that is garbage
        // and must not size an allocation.
        if n > (raw.len() / 3) as u64 {
            return Err(Malformed("block count larger than the index"));
        }
        let mut entries = Vec::with_capacity(n as usize);
        let mut expected_offset = 0u64;
        for _ in 0..n {
            let key_len = get_len(&raw, &mut pos)?;
            let key_end = pos
                .checked_add(key_len)
                .filter(|&e| e <= raw.len())
                .ok_or(Malformed("index key runs past the index"))?;
            let key_start = pos;
            pos = key_end;
            let offset = get_varint(&raw, &mut pos)?;
            let len = u32::try_from(get_varint(&raw, &mut pos)?)
                .map_err(|_| Malformed("block length does not fit in 32 bits"))?;
            if offset != expected_offset || len == 0 {
                return Err(Malformed("data blocks do not tile the file"));
            }
            expected_offset = offset + u64::from(len) + BLOCK_TRAILER_LEN;
            let key = &raw[key_start..key_end];
            if let Some(prev) = entries.last() {
                let prev: &IndexEntry = prev;
                if key <= &raw[prev.key_start as usize..prev.key_end as usize] {
                    return Err(Malformed("index keys out of order"));
                }
            } else if key < &smallest[..] {
                return Err(Malformed("first block ends before the smallest key"));
            }
            entries.push(IndexEntry {
                prefix: key_prefix(key),
                key_start: key_start as u32,
                key_end: key_end as u32,
                handle: BlockHandle { offset, len },
            });
        }
        if pos != raw.len() {
            return Err(Malformed("trailing bytes after the index"));
        }
        if expected_offset != data_end {
            return Err(Malformed("data blocks do not end where the filter starts"));
        }
        Ok(Index {
            raw,
            smallest,
            entries: entries.into_boxed_slice(),
        })
    }
}

/// The first 8 bytes of `key` as a big-endian number, zero-padded; a strict
/// order between two prefixes is the order between their keys.
fn key_prefix(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = key.len().min(8);
    a[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(a)
}

fn get_len(buf: &[u8], pos: &mut usize) -> Result<usize, Malformed> {
    let v = get_varint(buf, pos)?;
    u32::try_from(v)
        .map(|v| v as usize)
        .map_err(|_| Malformed("length does not fit in 32 bits"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// An open, immutable SSTable. Shared as `Arc<SsTable>` between readers;
/// every method takes `&self` and none takes a lock (the block cache's shard
/// locks aside).
pub struct SsTable {
    path: PathBuf,
    file: File,
    meta: TableMeta,
    index: Index,
    filter: BloomFilter,
    cache: Arc<BlockCache>,
    /// This table's namespace in the cache.
    slot: CacheSlot,
    /// Bytes charged to the cache at open, returned on drop.
    pinned: usize,
}

impl std::fmt::Debug for SsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsTable")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .field("data_blocks", &self.index.entries.len())
            .field("memory_bytes", &self.pinned)
            .finish()
    }
}

impl SsTable {
    /// Opens and verifies the table at `path`. Errors: `Io` (naming the
    /// path) if it cannot be read, `Corruption` if the footer, index or
    /// filter fail their checks, `UnsupportedVersion` if a newer build wrote
    /// it.
    pub fn open(path: &Path, id: TableId, cache: Arc<BlockCache>) -> Result<Arc<SsTable>> {
        let file = File::open(path).map_err(|e| with_path(e, path))?;
        let file_len = file.metadata().map_err(|e| with_path(e, path))?.len();
        let corrupt = |offset: u64, detail: &str| Error::corruption(path, offset, detail);

        // The tail every version shares: footer length, version, CRC, magic.
        if file_len < TAIL_LEN as u64 {
            return Err(corrupt(0, "file shorter than a footer"));
        }
        let mut tail = [0u8; TAIL_LEN];
        read_at(&file, path, &mut tail, file_len - TAIL_LEN as u64)?;
        if tail[12..20] != MAGIC {
            return Err(corrupt(
                file_len - 8,
                "bad magic: not an sstable, or truncated",
            ));
        }
        let footer_len = u64::from(u32_at(&tail, 0));
        if footer_len < TAIL_LEN as u64 || footer_len > file_len {
            return Err(corrupt(
                file_len - TAIL_LEN as u64,
                "footer length out of range",
            ));
        }
        let footer_offset = file_len - footer_len;
        let mut footer = vec![0u8; footer_len as usize];
        read_at(&file, path, &mut footer, footer_offset)?;
        let crc_at = footer.len() - 12;
        if crc32c::crc32c(&footer[..crc_at]) != u32_at(&footer, crc_at) {
            return Err(corrupt(footer_offset, "footer checksum mismatch"));
        }
        let version = u32_at(&footer, crc_at - 4);
        if version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version != FORMAT_VERSION || footer.len() != FOOTER_LEN {
            return Err(corrupt(footer_offset, "footer of an unknown layout"));
        }

        let filter_handle = BlockHandle {
            offset: u64_at(&footer, 0),
            len: u32_at(&footer, 8),
        };
        let index_handle = BlockHandle {
            offset: u64_at(&footer, 12),
            len: u32_at(&footer, 20),
        };
        let entries = u64_at(&footer, 24);
        let tombstones = u64_at(&footer, 32);
        let min_seq = u64_at(&footer, 40);
        let max_seq = u64_at(&footer, 48);
        if filter_handle.end() != Some(index_handle.offset)
            || index_handle.end() != Some(footer_offset)
        {
            return Err(corrupt(
                footer_offset,
                "filter and index do not tile the file",
            ));
        }
        if tombstones > entries || min_seq > max_seq {
            return Err(corrupt(footer_offset, "inconsistent table statistics"));
        }

        let filter_raw = read_block(&file, path, filter_handle)?;
        let filter = BloomFilter::decode(&filter_raw, path, filter_handle.offset)?;
        let index_raw = read_block(&file, path, index_handle)?;
        let index = Index::decode(index_raw, filter_handle.offset)
            .map_err(|m| corrupt(index_handle.offset, m.0))?;
        if (entries == 0) != index.entries.is_empty() {
            return Err(corrupt(
                index_handle.offset,
                "block count disagrees with entry count",
            ));
        }

        let largest = match index.entries.len() {
            0 => Bytes::new(),
            n => Bytes::copy_from_slice(index.last_key(n - 1)),
        };
        let meta = TableMeta {
            id,
            file_bytes: file_len,
            entries,
            tombstones,
            smallest: index.smallest.clone(),
            largest,
            min_seq: SeqNo(min_seq),
            max_seq: SeqNo(max_seq),
        };
        let pinned = index.memory_bytes() + filter.memory_bytes();
        cache.pin(pinned);
        Ok(Arc::new(SsTable {
            path: path.to_path_buf(),
            file,
            meta,
            index,
            filter,
            slot: cache.new_slot(),
            cache,
            pinned,
        }))
    }

    /// The entry stored for `key` in this table, tombstones included.
    ///
    /// Bloom filter first, then the smallest key and the index, then exactly
    /// one data block. The value is copied out of the block unless it fills
    /// most of it (see the `block` module), so keeping it pins no block.
    pub fn get(&self, key: &[u8]) -> Result<Option<(SeqNo, Entry)>> {
        let stats = self.cache.counters();
        stats.bloom_checks.incr();
        if !self.filter.may_contain(key) {
            stats.bloom_negatives.incr();
            return Ok(None);
        }
        if key < &self.index.smallest[..] {
            return Ok(None);
        }
        let Some(i) = self.index.find(key) else {
            return Ok(None);
        };
        stats.data_block_reads.incr();
        let handle = self.index.entries[i].handle;
        let block = self.block(handle, BlockUse::Get)?;
        block
            .get(key)
            .map_err(|m| Error::corruption(&self.path, handle.offset, m.0))
    }

    /// Whether the bloom filter admits `key` (false means certainly absent).
    /// Counts nothing in [`ReadStats`](super::ReadStats).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.filter.may_contain(key)
    }

    /// An ordered iterator over the entries from `start` on. It reads blocks
    /// lazily (the first on the first `next`), uses cached blocks but does not
    /// fill the cache, so a scan or compaction does not evict the hot set.
    pub fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> SsTableIter {
        SsTableIter::new(Arc::clone(self), start)
    }

    /// The table's id, size, key range and statistics.
    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resident bytes of the block index and the bloom filter (charged to the
    /// block cache while the table is open).
    pub fn memory_bytes(&self) -> usize {
        self.pinned
    }

    /// The read counters of the block cache this table was opened with.
    pub fn read_stats(&self) -> ReadStatsSnapshot {
        self.cache.read_stats()
    }

    /// Reads every data block and checks what `open` could not: each block's
    /// CRC, that keys strictly increase across the whole table, that each
    /// block ends with its index key, and that the footer's counts and
    /// sequence range match the entries. For tools and repair paths; a
    /// `get` or scan checks the blocks it reads anyway.
    pub fn verify(&self) -> Result<()> {
        let mut entries = 0u64;
        let mut tombstones = 0u64;
        let mut seqs: Option<(u64, u64)> = None;
        let mut previous: Option<Vec<u8>> = None;
        for i in 0..self.block_count() {
            let handle = self.block_handle(i);
            let corrupt = |detail: &str| Error::corruption(&self.path, handle.offset, detail);
            let mut cursor = BlockCursor::new(self.block(handle, BlockUse::Scan)?);
            while let Some(decoded) = cursor.next_entry() {
                let (seq, entry) = decoded.map_err(|m| self.corruption(handle.offset, m))?;
                let key = cursor.key();
                match &mut previous {
                    Some(prev) if key <= prev.as_slice() => {
                        return Err(corrupt("keys out of order"));
                    }
                    Some(prev) => {
                        prev.clear();
                        prev.extend_from_slice(key);
                    }
                    None => {
                        if key != &self.meta.smallest[..] {
                            return Err(corrupt("first key differs from the index's"));
                        }
                        previous = Some(key.to_vec());
                    }
                }
                entries += 1;
                tombstones += u64::from(entry == Entry::Tombstone);
                let (lo, hi) = seqs.get_or_insert((seq.0, seq.0));
                *lo = (*lo).min(seq.0);
                *hi = (*hi).max(seq.0);
            }
            if previous.as_deref() != Some(self.index.last_key(i)) {
                return Err(corrupt("block's last key differs from the index"));
            }
        }
        let (min_seq, max_seq) = seqs.unwrap_or((0, 0));
        if (entries, tombstones, min_seq, max_seq)
            != (
                self.meta.entries,
                self.meta.tombstones,
                self.meta.min_seq.0,
                self.meta.max_seq.0,
            )
        {
            let footer = self.meta.file_bytes - FOOTER_LEN as u64;
            return Err(Error::corruption(
                &self.path,
                footer,
                "footer statistics differ from the entries",
            ));
        }
        Ok(())
    }

    pub(crate) fn block_count(&self) -> usize {
        self.index.entries.len()
    }

    pub(crate) fn block_handle(&self, i: usize) -> BlockHandle {
        self.index.entries[i].handle
    }

    /// The first block that may hold keys `>= key`.
    pub(crate) fn find_block(&self, key: &[u8]) -> Option<usize> {
        self.index.find(key)
    }

    pub(crate) fn corruption(&self, offset: u64, m: Malformed) -> Error {
        Error::corruption(&self.path, offset, m.0)
    }

    /// A data block from the cache, else from disk (verified, decoded and,
    /// for gets, cached).
    pub(crate) fn block(&self, handle: BlockHandle, why: BlockUse) -> Result<Arc<Block>> {
        let key = BlockKey {
            table: self.slot,
            offset: handle.offset,
        };
        let stats = self.cache.counters();
        if why == BlockUse::Scan {
            stats.scan_block_reads.incr();
        }
        if let Some(block) = self.cache.get(key, why == BlockUse::Get) {
            return Ok(block);
        }
        let raw = read_block(&self.file, &self.path, handle)?;
        let block = Arc::new(Block::decode(raw).map_err(|m| self.corruption(handle.offset, m))?);
        if why == BlockUse::Get {
            stats.block_disk_reads.incr();
            self.cache.insert(key, Arc::clone(&block));
        }
        Ok(block)
    }
}

/// Who wants a block: gets count in the get counters and fill the cache;
/// scans do neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockUse {
    Get,
    Scan,
}

impl Drop for SsTable {
    fn drop(&mut self) {
        self.cache.unpin(self.pinned);
    }
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corruption(path, offset, "read past the end of the file")
        } else {
            with_path(e, path)
        }
    })
}

/// Reads a block's contents and CRC, verifies the CRC, returns the contents.
fn read_block(file: &File, path: &Path, handle: BlockHandle) -> Result<Bytes> {
    let len = handle.len as usize;
    let mut buf = vec![0u8; len + BLOCK_TRAILER_LEN as usize];
    read_at(file, path, &mut buf, handle.offset)?;
    let stored = u32_at(&buf, len);
    if crc32c::crc32c(&buf[..len]) != stored {
        return Err(Error::corruption(
            path,
            handle.offset,
            "block checksum mismatch",
        ));
    }
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::super::{SsTableBuilder, TableOptions};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Model = BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

    fn entry(v: &Option<Vec<u8>>) -> Entry {
        match v {
            Some(v) => Entry::Value(Bytes::copy_from_slice(v)),
            None => Entry::Tombstone,
        }
    }

    fn write(path: &Path, model: &Model, opts: &TableOptions) -> TableMeta {
        let mut b = SsTableBuilder::create(path, TableId(1), opts).unwrap();
        for (k, (seq, v)) in model {
            b.add(k, SeqNo(*seq), &entry(v)).unwrap();
        }
        b.finish().unwrap()
    }

    fn open(path: &Path) -> Result<Arc<SsTable>> {
        SsTable::open(path, TableId(1), Arc::new(BlockCache::new(1 << 20)))
    }

    fn collect(it: SsTableIter) -> Vec<(Vec<u8>, u64, Option<Vec<u8>>)> {
        it.map(|r| {
            let (k, s, e) = r.unwrap();
            let v = match e {
                Entry::Value(v) => Some(v.to_vec()),
                Entry::Tombstone => None,
            };
            (k.to_vec(), s.0, v)
        })
        .collect()
    }

    fn expected(model: &Model, start: Bound<&[u8]>) -> Vec<(Vec<u8>, u64, Option<Vec<u8>>)> {
        model
            .range::<[u8], _>((start, Bound::Unbounded))
            .map(|(k, (s, v))| (k.clone(), *s, v.clone()))
            .collect()
    }

    fn numbered(n: u32) -> Model {
        (0..n)
            .map(|i| {
                let key = format!("user:{:08}", i * 2).into_bytes();
                let value = (i % 10 != 0)
                    .then(|| format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes());
                (key, (u64::from(i) + 100, value))
            })
            .collect()
    }

    #[test]
    fn tables_iterators_and_the_cache_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SsTable>();
        shareable::<BlockCache>();
        shareable::<SsTableBuilder>();
        fn sendable<T: Send>() {}
        sendable::<SsTableIter>();
    }

    #[test]
    fn every_key_written_is_read_back_and_absent_keys_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let model = numbered(20_000);
        let meta = write(&path, &model, &TableOptions::default());
        let table = open(&path).unwrap();
        assert_eq!(table.meta(), &meta);
        assert_eq!(meta.entries, 20_000);
        assert_eq!(meta.tombstones, 2_000);
        assert_eq!(meta.min_seq, SeqNo(100));
        assert_eq!(meta.max_seq, SeqNo(20_099));
        assert_eq!(&meta.smallest[..], b"user:00000000");
        assert_eq!(&meta.largest[..], b"user:00039998");
        assert_eq!(meta.file_bytes, std::fs::metadata(&path).unwrap().len());
        for (k, (seq, v)) in &model {
            assert_eq!(table.get(k).unwrap(), Some((SeqNo(*seq), entry(v))));
        }
        for i in 0..20_000u32 {
            let absent = format!("user:{:08}", i * 2 + 1);
            assert_eq!(table.get(absent.as_bytes()).unwrap(), None);
        }
        assert_eq!(table.get(b"").unwrap(), None);
        assert_eq!(table.get(b"zzz").unwrap(), None);
        assert_eq!(
            collect(table.iter(Bound::Unbounded)),
            expected(&model, Bound::Unbounded)
        );
    }

    #[test]
    fn seek_honours_included_excluded_and_unbounded_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let model = numbered(3_000);
        let opts = TableOptions {
            block_bytes: 256,
            ..TableOptions::default()
        };
        write(&path, &model, &opts);
        let table = open(&path).unwrap();
        let mut probes: Vec<Vec<u8>> = model.keys().step_by(7).cloned().collect();
        probes.extend(
            (0..3_000u32)
                .step_by(13)
                .map(|i| format!("user:{:08}", i * 2 + 1).into_bytes()),
        );
        probes.extend([
            b"".to_vec(),
            b"a".to_vec(),
            b"user:".to_vec(),
            b"zzz".to_vec(),
        ]);
        // The last key of a block, excluded, must continue in the next block.
        probes.push(table.index.last_key(0).to_vec());
        for p in &probes {
            let inc = collect(table.iter(Bound::Included(p)));
            assert_eq!(inc, expected(&model, Bound::Included(p)), "included {p:?}");
            let exc = collect(table.iter(Bound::Excluded(p)));
            assert_eq!(exc, expected(&model, Bound::Excluded(p)), "excluded {p:?}");
        }
    }

    #[test]
    fn an_empty_table_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let meta = write(&path, &Model::new(), &TableOptions::default());
        assert_eq!(
            (meta.entries, meta.min_seq, meta.max_seq),
            (0, SeqNo(0), SeqNo(0))
        );
        let table = open(&path).unwrap();
        assert_eq!(table.meta(), &meta);
        assert_eq!(table.get(b"k").unwrap(), None);
        assert_eq!(table.iter(Bound::Unbounded).count(), 0);
    }

    #[test]
    fn approximate_bytes_tracks_the_final_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let mut b = SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).unwrap();
        for (k, (seq, v)) in &numbered(20_000) {
            b.add(k, SeqNo(*seq), &entry(v)).unwrap();
        }
        let estimate = b.approximate_bytes() as f64;
        let actual = b.finish().unwrap().file_bytes as f64;
        assert!(
            (estimate / actual - 1.0).abs() < 0.05,
            "{estimate} vs {actual}"
        );
    }

    #[test]
    fn degenerate_options_still_make_a_correct_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let model = numbered(500);
        let opts = TableOptions {
            block_bytes: 0,
            bloom_bits_per_key: 0,
        };
        write(&path, &model, &opts);
        let table = open(&path).unwrap();
        for (k, (seq, v)) in &model {
            assert_eq!(table.get(k).unwrap(), Some((SeqNo(*seq), entry(v))));
        }
        assert_eq!(
            collect(table.iter(Bound::Unbounded)),
            expected(&model, Bound::Unbounded)
        );
    }

    #[test]
    fn out_of_order_or_duplicate_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let mut b = SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).unwrap();
        b.add(b"b", SeqNo(1), &Entry::Tombstone).unwrap();
        assert!(matches!(
            b.add(b"b", SeqNo(2), &Entry::Tombstone),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            b.add(b"a", SeqNo(2), &Entry::Tombstone),
            Err(Error::InvalidInput(_))
        ));
        b.add(b"c", SeqNo(3), &Entry::Tombstone).unwrap();
        assert_eq!(b.finish().unwrap().entries, 2);
    }

    #[test]
    fn an_abandoned_or_dropped_builder_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let mut b = SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).unwrap();
        b.add(b"a", SeqNo(1), &Entry::Tombstone).unwrap();
        b.abandon().unwrap();
        assert!(!path.exists());
        let b = SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).unwrap();
        drop(b);
        assert!(!path.exists());
    }

    #[test]
    fn a_builder_never_overwrites_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write(&path, &numbered(10), &TableOptions::default());
        assert!(SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).is_err());
        assert!(open(&path).is_ok());
    }

    #[test]
    fn a_value_larger_than_a_block_gets_a_block_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let mut model = numbered(50);
        model.insert(b"user:00000011".to_vec(), (7, Some(vec![0xab; 100_000])));
        write(&path, &model, &TableOptions::default());
        let table = open(&path).unwrap();
        for (k, (seq, v)) in &model {
            assert_eq!(table.get(k).unwrap(), Some((SeqNo(*seq), entry(v))));
        }
        assert_eq!(
            collect(table.iter(Bound::Unbounded)),
            expected(&model, Bound::Unbounded)
        );
    }

    #[test]
    fn absent_keys_mostly_stop_at_the_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write(&path, &numbered(100_000), &TableOptions::default());
        let table = open(&path).unwrap();
        let before = table.read_stats();
        for i in 0..100_000u32 {
            let absent = format!("user:{:08}", i * 2 + 1);
            assert_eq!(table.get(absent.as_bytes()).unwrap(), None);
        }
        let delta = table.read_stats().since(&before);
        assert_eq!(delta.bloom_checks, 100_000);
        let rate = delta.data_block_reads as f64 / delta.bloom_checks as f64;
        assert!(
            (0.003..0.02).contains(&rate),
            "block reads per absent get: {rate}"
        );
        assert_eq!(delta.bloom_negatives + delta.data_block_reads, 100_000);
    }

    #[test]
    fn index_and_filter_are_charged_to_the_cache_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write(&path, &numbered(10_000), &TableOptions::default());
        let cache = Arc::new(BlockCache::new(1 << 20));
        let table = SsTable::open(&path, TableId(1), Arc::clone(&cache)).unwrap();
        let pinned = table.memory_bytes();
        // 10k keys: ~12.5 KB of filter plus the index.
        assert!((12_000..60_000).contains(&pinned), "{pinned}");
        assert_eq!(cache.stats().pinned_bytes, pinned as u64);
        drop(table);
        assert_eq!(cache.stats().pinned_bytes, 0);
    }

    #[test]
    fn tables_sharing_an_id_and_a_cache_never_see_each_others_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlockCache::new(1 << 20));
        let mut tables = Vec::new();
        for (name, value) in [("a.sst", "first"), ("b.sst", "second")] {
            let path = dir.path().join(name);
            let model: Model = [(b"k".to_vec(), (1, Some(value.as_bytes().to_vec())))].into();
            write(&path, &model, &TableOptions::default());
            let table = SsTable::open(&path, TableId(1), Arc::clone(&cache)).unwrap();
            assert_eq!(
                table.get(b"k").unwrap().unwrap().1,
                entry(&Some(value.into()))
            );
            tables.push(table);
        }
        assert_eq!(
            tables[0].get(b"k").unwrap().unwrap().1,
            entry(&Some(b"first".to_vec()))
        );
        assert_eq!(
            tables[1].get(b"k").unwrap().unwrap().1,
            entry(&Some(b"second".to_vec()))
        );
    }

    #[test]
    fn concurrent_readers_through_a_churning_cache_read_correct_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let model = numbered(5_000);
        write(&path, &model, &TableOptions::default());
        // Room for only a few blocks per shard: constant eviction.
        let cache = Arc::new(BlockCache::new(256 * 1024));
        let table = SsTable::open(&path, TableId(1), Arc::clone(&cache)).unwrap();
        let keys: Vec<&Vec<u8>> = model.keys().collect();
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (table, keys, model) = (&table, &keys, &model);
                s.spawn(move || {
                    for i in 0..5_000usize {
                        let k = keys[(i * 7919 + t * 104_729) % keys.len()];
                        let (seq, v) = &model[k];
                        assert_eq!(table.get(k).unwrap(), Some((SeqNo(*seq), entry(v))));
                    }
                });
            }
        });
        let stats = cache.stats();
        assert!(stats.bytes + stats.pinned_bytes <= stats.capacity_bytes);
        assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    }

    #[test]
    fn repeated_gets_are_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        write(&path, &numbered(1_000), &TableOptions::default());
        let table = open(&path).unwrap();
        table.get(b"user:00000000").unwrap().unwrap();
        table.get(b"user:00000000").unwrap().unwrap();
        let stats = table.read_stats();
        assert_eq!((stats.data_block_reads, stats.block_disk_reads), (2, 1));
    }

    /// Writes a small multi-block table and returns (dir, path, model, file bytes).
    fn small_table() -> (tempfile::TempDir, PathBuf, Model, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("7.sst");
        let model = numbered(60);
        let opts = TableOptions {
            block_bytes: 256,
            ..TableOptions::default()
        };
        write(&path, &model, &opts);
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, model, bytes)
    }

    fn flip(path: &Path, bytes: &[u8], at: usize) {
        let mut bad = bytes.to_vec();
        bad[at] ^= 0x20;
        std::fs::write(path, bad).unwrap();
    }

    /// Asserts `e` is a corruption naming `path`; returns its offset.
    fn assert_corruption(e: &Error, path: &Path) -> u64 {
        match e {
            Error::Corruption { file, offset, .. } => {
                assert_eq!(file, path);
                *offset
            }
            other => panic!("expected corruption in {}, got {other:?}", path.display()),
        }
    }

    /// (filter, index, footer) offsets of a version-1 file.
    fn layout(bytes: &[u8]) -> (usize, usize, usize) {
        let footer = bytes.len() - FOOTER_LEN;
        let f = &bytes[footer..];
        (u64_at(f, 0) as usize, u64_at(f, 12) as usize, footer)
    }

    #[test]
    fn a_flipped_byte_in_a_data_block_is_reported_with_path_and_block_offset() {
        let (_dir, path, model, bytes) = small_table();
        let table_ok = open(&path).unwrap();
        let second = table_ok.index.entries[1].handle;
        drop(table_ok);
        flip(&path, &bytes, second.offset as usize + 3);
        let table = open(&path).unwrap();
        let key_in_block = table.index.last_key(1).to_vec();
        let offset = assert_corruption(&table.get(&key_in_block).unwrap_err(), &path);
        assert_eq!(offset, second.offset);
        // Other blocks still answer; the scan stops at the damaged block.
        let first_key = model.keys().next().unwrap();
        assert!(table.get(first_key).unwrap().is_some());
        let results: Vec<_> = table.iter(Bound::Unbounded).collect();
        match results.last() {
            Some(Err(e)) => assert_eq!(assert_corruption(e, &path), second.offset),
            other => panic!("expected the scan to end in corruption, got {other:?}"),
        }
        assert!(results[..results.len() - 1].iter().all(|r| r.is_ok()));
    }

    #[test]
    fn verify_passes_a_sound_table_and_finds_a_damaged_block() {
        let (_dir, path, _model, bytes) = small_table();
        open(&path).unwrap().verify().unwrap();
        let (filter, _, _) = layout(&bytes);
        flip(&path, &bytes, filter - 10);
        let table = open(&path).unwrap();
        let offset = assert_corruption(&table.verify().unwrap_err(), &path);
        assert_eq!(offset, table.index.entries.last().unwrap().handle.offset);
    }

    #[test]
    fn a_flipped_byte_in_the_index_fails_open() {
        let (_dir, path, _model, bytes) = small_table();
        let (_, index, footer) = layout(&bytes);
        for at in [index, (index + footer) / 2, footer - 1] {
            flip(&path, &bytes, at);
            assert_eq!(
                assert_corruption(&open(&path).unwrap_err(), &path),
                index as u64
            );
        }
    }

    #[test]
    fn a_flipped_byte_in_the_filter_fails_open() {
        let (_dir, path, _model, bytes) = small_table();
        let (filter, index, _) = layout(&bytes);
        for at in [filter, filter + 1, (filter + index) / 2, index - 1] {
            flip(&path, &bytes, at);
            assert_eq!(
                assert_corruption(&open(&path).unwrap_err(), &path),
                filter as u64
            );
        }
    }

    #[test]
    fn a_flipped_byte_in_the_footer_fails_open() {
        let (_dir, path, _model, bytes) = small_table();
        let (_, _, footer) = layout(&bytes);
        for at in footer..bytes.len() {
            flip(&path, &bytes, at);
            assert_corruption(&open(&path).unwrap_err(), &path);
        }
    }

    #[test]
    fn a_truncated_file_fails_open() {
        let (_dir, path, _model, bytes) = small_table();
        for len in [
            0,
            1,
            19,
            20,
            75,
            76,
            bytes.len() / 2,
            bytes.len() - 77,
            bytes.len() - 1,
        ] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert_corruption(&open(&path).unwrap_err(), &path);
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sst");
        match open(&path) {
            Err(Error::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                assert!(e.to_string().contains("missing.sst"), "{e}");
            }
            other => panic!("expected a not-found error, got {other:?}"),
        }
    }

    #[test]
    fn a_file_from_a_newer_format_version_is_refused_as_such() {
        let (_dir, path, _model, mut bytes) = small_table();
        let footer = bytes.len() - FOOTER_LEN;
        bytes[footer + 60..footer + 64].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[footer..footer + 64]);
        bytes[footer + 64..footer + 68].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        match open(&path) {
            Err(Error::UnsupportedVersion {
                file,
                found: 2,
                supported: 1,
            }) => assert_eq!(file, path),
            other => panic!("expected an unsupported version, got {other:?}"),
        }
    }

    #[test]
    fn no_single_flipped_byte_anywhere_yields_wrong_data() {
        let (_dir, path, model, bytes) = small_table();
        for at in 0..bytes.len() {
            flip(&path, &bytes, at);
            let table = match open(&path) {
                Err(e) => {
                    assert_corruption(&e, &path);
                    continue;
                }
                Ok(table) => table,
            };
            // Open succeeded, so the flip is in a data block: every answer is
            // right or a corruption error, and at least one is an error.
            let mut errors = 0;
            for (k, (seq, v)) in &model {
                match table.get(k) {
                    Ok(found) => assert_eq!(found, Some((SeqNo(*seq), entry(v))), "flip at {at}"),
                    Err(e) => {
                        assert_corruption(&e, &path);
                        errors += 1;
                    }
                }
            }
            assert!(errors > 0, "flip at {at} went unnoticed");
            let scanned: Vec<_> = table.iter(Bound::Unbounded).collect();
            assert!(scanned.last().is_some_and(|r| r.is_err()), "flip at {at}");
        }
    }

    /// Throughput of `get` from two threads over a table larger than the
    /// cache. Prints figures; asserts nothing about speed.
    #[test]
    #[ignore = "benchmark: run with `cargo test --release --lib sstable::table::tests::bench -- --ignored --nocapture`"]
    fn bench_two_thread_gets() {
        use std::time::Instant;
        let n: u64 = std::env::var("SST_BENCH_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.sst");
        let value = Entry::Value(Bytes::from(vec![b'v'; 100]));
        let started = Instant::now();
        let mut b = SsTableBuilder::create(&path, TableId(1), &TableOptions::default()).unwrap();
        for i in 0..n {
            b.add(format!("{:016x}", i * 2).as_bytes(), SeqNo(i), &value)
                .unwrap();
        }
        let meta = b.finish().unwrap();
        let build = started.elapsed();
        println!(
            "built {n} keys, {} MB in {:.2}s ({:.0} keys/s)",
            meta.file_bytes >> 20,
            build.as_secs_f64(),
            n as f64 / build.as_secs_f64()
        );
        let cache_mb: usize = std::env::var("SST_BENCH_CACHE_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let cache = Arc::new(BlockCache::new(cache_mb << 20));
        let table = SsTable::open(&path, TableId(1), Arc::clone(&cache)).unwrap();
        // Warm the cache (when it is large enough) so the timed part is steady.
        for entry in table.iter(Bound::Unbounded).step_by(10) {
            let (key, _, _) = entry.unwrap();
            table.get(&key).unwrap();
        }
        println!("resident index+filter: {} KB", table.memory_bytes() >> 10);
        let started = Instant::now();
        let mut scanned = 0usize;
        for entry in table.iter(Bound::Unbounded) {
            entry.unwrap();
            scanned += 1;
        }
        let took = started.elapsed();
        assert_eq!(scanned as u64, n);
        println!(
            "full scan: {:.0} entries/s ({:.0} MB/s)",
            n as f64 / took.as_secs_f64(),
            meta.file_bytes as f64 / took.as_secs_f64() / 1e6
        );
        for (label, odd) in [("present", 0u64), ("absent", 1u64)] {
            let per_thread = 1_000_000u64;
            let before = table.read_stats();
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let table = &table;
                    s.spawn(move || {
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                        let mut key = [0u8; 16];
                        let mut found = 0u64;
                        for _ in 0..per_thread {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let i = (x % n) * 2 + odd;
                            use std::io::Write;
                            write!(&mut key[..], "{i:016x}").unwrap();
                            found += u64::from(table.get(&key).unwrap().is_some());
                        }
                        assert_eq!(found, if odd == 0 { per_thread } else { found });
                    });
                }
            });
            let took = started.elapsed();
            let stats = table.read_stats().since(&before);
            println!(
                "{label}: {:.0} gets/s from 2 threads; {stats:?}; cache {:?}",
                2.0 * per_thread as f64 / took.as_secs_f64(),
                cache.stats()
            );
        }
    }

    /// Random keys, and keys from a tiny alphabet with zero bytes so that many
    /// share prefixes or differ only past their 8th byte or by trailing zeros.
    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 0xff]), 0..12),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn tables_agree_with_a_btreemap(
            model in prop::collection::btree_map(
                key_strategy(),
                (any::<u64>(), prop::option::of(prop::collection::vec(any::<u8>(), 0..300))),
                0..400,
            ),
            block_bytes in prop::sample::select(vec![1usize, 64, 512, 4096, 65536]),
            probes in prop::collection::vec(key_strategy(), 0..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("1.sst");
            let opts = TableOptions { block_bytes, ..TableOptions::default() };
            let meta = write(&path, &model, &opts);
            let table = open(&path).unwrap();
            prop_assert_eq!(table.meta(), &meta);
            prop_assert!(table.verify().is_ok());
            for (k, (seq, v)) in &model {
                prop_assert_eq!(table.get(k).unwrap(), Some((SeqNo(*seq), entry(v))));
            }
            prop_assert_eq!(collect(table.iter(Bound::Unbounded)), expected(&model, Bound::Unbounded));
            for p in &probes {
                let want = model.get(p).map(|(s, v)| (SeqNo(*s), entry(v)));
                prop_assert_eq!(table.get(p).unwrap(), want);
                prop_assert_eq!(collect(table.iter(Bound::Included(p))), expected(&model, Bound::Included(p)));
                prop_assert_eq!(collect(table.iter(Bound::Excluded(p))), expected(&model, Bound::Excluded(p)));
            }
        }
    }
}
