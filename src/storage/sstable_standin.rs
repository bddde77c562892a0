//! TEMPORARY stand-in for `storage::sstable` (written on branch `sstable` by
//! another engineer), implementing only the promised interface so the engine
//! compiles and its tests run until the real module is merged. Whole-file
//! format, loaded into memory; no blocks, no bloom filter. Deleted at merge.

use std::fs::{self, File};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::types::{Entry, SeqNo, TableId};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct TableOptions {
    pub block_bytes: usize,
    pub bloom_bits_per_key: u32,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            block_bytes: 4096,
            bloom_bits_per_key: 10,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TableMeta {
    pub id: TableId,
    pub file_bytes: u64,
    pub entries: u64,
    pub tombstones: u64,
    pub smallest: Bytes,
    pub largest: Bytes,
    pub min_seq: SeqNo,
    pub max_seq: SeqNo,
}

#[derive(Default)]
pub struct BlockCache {
    pub bloom_checks: AtomicU64,
    pub bloom_negatives: AtomicU64,
    pub block_reads: AtomicU64,
}

pub struct CacheStats {
    pub bloom_checks: u64,
    pub bloom_negatives: u64,
    pub data_block_reads: u64,
    pub hits: u64,
    pub misses: u64,
}

impl BlockCache {
    pub fn new(_capacity_bytes: usize) -> Self {
        Self::default()
    }
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bloom_checks: self.bloom_checks.load(Ordering::Relaxed),
            bloom_negatives: self.bloom_negatives.load(Ordering::Relaxed),
            data_block_reads: self.block_reads.load(Ordering::Relaxed),
            hits: 0,
            misses: 0,
        }
    }
}

pub struct SsTableBuilder {
    path: PathBuf,
    id: TableId,
    buf: Vec<u8>,
    meta: Option<TableMeta>,
}

impl SsTableBuilder {
    pub fn create(path: &Path, id: TableId, _opts: &TableOptions) -> Result<Self> {
        File::create(path)?;
        Ok(SsTableBuilder {
            path: path.to_path_buf(),
            id,
            buf: Vec::new(),
            meta: None,
        })
    }

    pub fn add(&mut self, key: &[u8], seq: SeqNo, entry: &Entry) -> Result<()> {
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(&seq.0.to_le_bytes());
        let key = Bytes::copy_from_slice(key);
        let meta = self.meta.get_or_insert_with(|| TableMeta {
            id: self.id,
            file_bytes: 0,
            entries: 0,
            tombstones: 0,
            smallest: key.clone(),
            largest: key.clone(),
            min_seq: seq,
            max_seq: seq,
        });
        meta.entries += 1;
        meta.largest = key;
        meta.min_seq = meta.min_seq.min(seq);
        meta.max_seq = meta.max_seq.max(seq);
        match entry {
            Entry::Value(v) => {
                self.buf.push(0);
                self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(v);
            }
            Entry::Tombstone => {
                meta.tombstones += 1;
                self.buf.push(1);
            }
        }
        Ok(())
    }

    pub fn approximate_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    pub fn finish(mut self) -> Result<TableMeta> {
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        let mut file = File::create(&self.path)?;
        file.write_all(&self.buf)?;
        file.sync_all()?;
        let mut meta = self
            .meta
            .take()
            .ok_or_else(|| Error::invalid("empty table"))?;
        meta.file_bytes = self.buf.len() as u64;
        Ok(meta)
    }

    pub fn abandon(self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub struct SsTable {
    path: PathBuf,
    meta: TableMeta,
    entries: Vec<(Bytes, SeqNo, Entry)>,
}

impl SsTable {
    pub fn open(path: &Path, id: TableId, _cache: Arc<BlockCache>) -> Result<Arc<SsTable>> {
        let bytes = fs::read(path)?;
        let corrupt = |d: &str| Error::corruption(path, 0, d);
        if bytes.len() < 4 {
            return Err(corrupt("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("checksum"));
        }
        let mut entries = Vec::new();
        let mut at = 0;
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let s = body.get(*at..*at + n).ok_or_else(|| corrupt("truncated"))?;
            *at += n;
            Ok(s)
        };
        let mut tombstones = 0;
        while at < body.len() {
            let kl = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
            let key = Bytes::copy_from_slice(take(&mut at, kl as usize)?);
            let seq = SeqNo(u64::from_le_bytes(
                take(&mut at, 8)?.try_into().unwrap_or_default(),
            ));
            let entry = if take(&mut at, 1)?[0] == 0 {
                let vl = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
                Entry::Value(Bytes::copy_from_slice(take(&mut at, vl as usize)?))
            } else {
                tombstones += 1;
                Entry::Tombstone
            };
            entries.push((key, seq, entry));
        }
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(corrupt("empty"));
        };
        let meta = TableMeta {
            id,
            file_bytes: bytes.len() as u64,
            entries: entries.len() as u64,
            tombstones,
            smallest: first.0.clone(),
            largest: last.0.clone(),
            min_seq: entries.iter().map(|e| e.1).min().unwrap_or_default(),
            max_seq: entries.iter().map(|e| e.1).max().unwrap_or_default(),
        };
        Ok(Arc::new(SsTable {
            path: path.to_path_buf(),
            meta,
            entries,
        }))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<(SeqNo, Entry)>> {
        Ok(self
            .entries
            .binary_search_by(|e| e.0.as_ref().cmp(key))
            .ok()
            .map(|i| (self.entries[i].1, self.entries[i].2.clone())))
    }

    pub fn may_contain(&self, _key: &[u8]) -> bool {
        true
    }

    pub fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> SsTableIter {
        let pos = match start {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.entries.partition_point(|e| e.0.as_ref() < k),
            Bound::Excluded(k) => self.entries.partition_point(|e| e.0.as_ref() <= k),
        };
        SsTableIter {
            table: self.clone(),
            pos,
        }
    }

    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * 64
    }
}

pub struct SsTableIter {
    table: Arc<SsTable>,
    pos: usize,
}

impl Iterator for SsTableIter {
    type Item = Result<(Bytes, SeqNo, Entry)>;
    fn next(&mut self) -> Option<Self::Item> {
        let e = self.table.entries.get(self.pos)?.clone();
        self.pos += 1;
        Some(Ok(e))
    }
}
