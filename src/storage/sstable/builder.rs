//! Writing an SSTable: [`SsTableBuilder`].
//!
//! Entries stream in, in key order; data blocks are written as they fill, so
//! a builder holds one block, the encoded index and 8 bytes of filter hash per
//! key, never the table. `finish` writes the filter, the index and the footer
//! (format in the [`sstable`](super) module doc) and fsyncs the file. Making
//! the file part of the engine (manifest, directory fsync) is the caller's job.

use super::block::{put_varint, BlockBuilder};
use super::{TableMeta, TableOptions, FOOTER_LEN, FORMAT_VERSION, MAGIC};
use crate::error::{Error, Result};
use crate::storage::bloom;
use crate::storage::types::{Entry, SeqNo, TableId};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Largest key plus value accepted in one entry: keeps every block length and
/// in-block offset within the format's `u32`.
pub const MAX_ENTRY_BYTES: usize = 1 << 30;

/// Writes one SSTable. Keys must be added in strictly increasing order.
///
/// The file is created with `create_new`: a builder never overwrites a file,
/// since tables are immutable and an existing file of that name is either
/// live or a leftover the engine must decide about. A builder dropped (or
/// [`abandon`](Self::abandon)ed) before [`finish`](Self::finish) succeeded
/// deletes its partial file; after any failed write it refuses further calls.
pub struct SsTableBuilder {
    path: PathBuf,
    id: TableId,
    opts: TableOptions,
    out: BufWriter<File>,
    /// Bytes handed to `out` so far: the offset of the next block.
    offset: u64,
    block: BlockBuilder,
    block_buf: Vec<u8>,
    /// Encoded index entries (without the index header).
    index: Vec<u8>,
    num_blocks: u64,
    last_key: Vec<u8>,
    smallest: Option<Bytes>,
    hashes: Vec<u64>,
    entries: u64,
    tombstones: u64,
    min_seq: u64,
    max_seq: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Building,
    /// A write failed; the file is garbage and will be deleted on drop.
    Failed,
    /// `finish` succeeded; the file is the caller's.
    Finished,
}

impl std::fmt::Debug for SsTableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsTableBuilder")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("entries", &self.entries)
            .field("bytes", &self.offset)
            .field("state", &self.state)
            .finish()
    }
}

impl SsTableBuilder {
    /// Creates `path` (which must not exist) for table `id`.
    pub fn create(path: &Path, id: TableId, opts: &TableOptions) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| with_path(e, path))?;
        Ok(SsTableBuilder {
            path: path.to_path_buf(),
            id,
            opts: opts.clone(),
            out: BufWriter::with_capacity(64 * 1024, file),
            offset: 0,
            block: BlockBuilder::default(),
            block_buf: Vec::with_capacity(opts.block_bytes + 64),
            index: Vec::new(),
            num_blocks: 0,
            last_key: Vec::new(),
            smallest: None,
            hashes: Vec::new(),
            entries: 0,
            tombstones: 0,
            min_seq: u64::MAX,
            max_seq: 0,
            state: State::Building,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Adds `key` at `seq`. Errors with `InvalidInput` unless `key` sorts
    /// strictly after the previous key, or if key plus value exceed
    /// [`MAX_ENTRY_BYTES`].
    pub fn add(&mut self, key: &[u8], seq: SeqNo, entry: &Entry) -> Result<()> {
        self.check_building()?;
        if self.smallest.is_some() && key <= self.last_key.as_slice() {
            return Err(Error::invalid(format!(
                "sstable {}: keys must be strictly increasing",
                self.path.display()
            )));
        }
        let value_len = match entry {
            Entry::Value(v) => v.len(),
            Entry::Tombstone => 0,
        };
        if key.len().saturating_add(value_len) > MAX_ENTRY_BYTES {
            return Err(Error::invalid(format!(
                "sstable entry of {} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit",
                key.len().saturating_add(value_len)
            )));
        }
        if !self.block.is_empty()
            && self.block.encoded_len() + BlockBuilder::entry_cost(key.len(), value_len)
                > self.opts.block_bytes
        {
            self.flush_block()?;
        }
        self.block.add(key, seq, entry);
        if self.smallest.is_none() {
            self.smallest = Some(Bytes::copy_from_slice(key));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.hashes.push(bloom::key_hash(key));
        self.entries += 1;
        if matches!(entry, Entry::Tombstone) {
            self.tombstones += 1;
        }
        self.min_seq = self.min_seq.min(seq.0);
        self.max_seq = self.max_seq.max(seq.0);
        Ok(())
    }

    /// About how large the file would be if finished now.
    pub fn approximate_bytes(&self) -> u64 {
        let filter = self.hashes.len() as u64 * u64::from(self.opts.bloom_bits_per_key.max(1)) / 8;
        self.offset
            + self.block.encoded_len() as u64
            + filter
            + self.index.len() as u64
            + FOOTER_LEN as u64
    }

    /// Writes the last data block, the filter, the index and the footer, and
    /// fsyncs the file (not its directory).
    pub fn finish(mut self) -> Result<TableMeta> {
        self.check_building()?;
        match self.write_tail() {
            Ok(meta) => {
                self.state = State::Finished;
                Ok(meta)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Gives up on the table and deletes its partial file.
    pub fn abandon(mut self) -> Result<()> {
        self.state = State::Failed;
        let removed = std::fs::remove_file(&self.path).map_err(|e| with_path(e, &self.path));
        // Nothing is left for drop to delete.
        self.state = State::Finished;
        removed
    }

    fn check_building(&self) -> Result<()> {
        match self.state {
            State::Building => Ok(()),
            _ => Err(Error::invalid(format!(
                "sstable {}: builder already failed or finished",
                self.path.display()
            ))),
        }
    }

    fn write_tail(&mut self) -> Result<TableMeta> {
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        let filter = bloom::build(&self.hashes, self.opts.bloom_bits_per_key);
        let (filter_offset, filter_len) = self.write_block_contents(&filter)?;

        let smallest = self.smallest.clone().unwrap_or_default();
        let mut index = Vec::with_capacity(self.index.len() + smallest.len() + 20);
        put_varint(&mut index, smallest.len() as u64);
        index.extend_from_slice(&smallest);
        put_varint(&mut index, self.num_blocks);
        index.extend_from_slice(&self.index);
        let index_len = u32::try_from(index.len())
            .map_err(|_| Error::invalid("sstable index larger than 4 GiB"))?;
        let (index_offset, _) = self.write_block_contents(&index)?;

        let (min_seq, max_seq) = if self.entries == 0 {
            (0, 0)
        } else {
            (self.min_seq, self.max_seq)
        };
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&filter_offset.to_le_bytes());
        footer.extend_from_slice(&filter_len.to_le_bytes());
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&index_len.to_le_bytes());
        footer.extend_from_slice(&self.entries.to_le_bytes());
        footer.extend_from_slice(&self.tombstones.to_le_bytes());
        footer.extend_from_slice(&min_seq.to_le_bytes());
        footer.extend_from_slice(&max_seq.to_le_bytes());
        footer.extend_from_slice(&(FOOTER_LEN as u32).to_le_bytes());
        footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(&MAGIC);
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        self.write_all(&footer)?;

        let path = self.path.clone();
        self.out.flush().map_err(|e| with_path(e, &path))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| with_path(e, &path))?;
        Ok(TableMeta {
            id: self.id,
            file_bytes: self.offset,
            entries: self.entries,
            tombstones: self.tombstones,
            smallest,
            largest: Bytes::copy_from_slice(&self.last_key),
            min_seq: SeqNo(min_seq),
            max_seq: SeqNo(max_seq),
        })
    }

    /// Writes the current data block and records it in the index.
    fn flush_block(&mut self) -> Result<()> {
        let mut buf = std::mem::take(&mut self.block_buf);
        self.block.finish(&mut buf);
        let written = self.write_block_contents(&buf);
        self.block_buf = buf;
        let (offset, len) = written?;
        put_varint(&mut self.index, self.last_key.len() as u64);
        self.index.extend_from_slice(&self.last_key);
        put_varint(&mut self.index, offset);
        put_varint(&mut self.index, u64::from(len));
        self.num_blocks += 1;
        Ok(())
    }

    /// Writes `contents` and its CRC32C; returns the block handle.
    fn write_block_contents(&mut self, contents: &[u8]) -> Result<(u64, u32)> {
        let len = u32::try_from(contents.len())
            .map_err(|_| Error::invalid("sstable block larger than 4 GiB"))?;
        let offset = self.offset;
        self.write_all(contents)?;
        self.write_all(&crc32c::crc32c(contents).to_le_bytes())?;
        Ok((offset, len))
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.out.write_all(bytes) {
            self.state = State::Failed;
            return Err(with_path(e, &self.path));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for SsTableBuilder {
    fn drop(&mut self) {
        if self.state != State::Finished {
            // Best effort: were the removal to fail, the partial file has no
            // valid footer, so `SsTable::open` would reject it anyway.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An I/O error that names the file, keeping its kind.
pub(crate) fn with_path(e: std::io::Error, path: &Path) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}
