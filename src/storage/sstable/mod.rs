//! SSTables: immutable sorted files of `(key, seq, entry)`, the engine's
//! on-disk form of a flushed memtable or a compaction's output.
//!
//! [`SsTableBuilder`] writes one from keys in strictly increasing order;
//! [`SsTable`] opens it, answers point lookups ([`SsTable::get`]: bloom filter,
//! then block index, then exactly one data block) and ordered scans
//! ([`SsTable::iter`], blocks read lazily). Data blocks go through the shared
//! [`BlockCache`](crate::storage::cache::BlockCache); the block index and the
//! bloom filter stay resident for as long as the table is open.
//!
//! # Why this shape
//!
//! It is LevelDB's table, simplified where ringkv does not need the
//! generality: one entry per key per table (the engine keeps only the newest
//! version of a key when it flushes or compacts, so there is no internal-key
//! encoding), no compression (values are encoded sibling sets, mostly short),
//! and one whole-table bloom filter instead of per-block filters (a lookup
//! touches one cache line of it, see [`crate::storage::bloom`], and its size
//! is known at `finish`).
//!
//! Reads use positional reads (`FileExt::read_exact_at`) on one shared `File`,
//! so any number of threads read one table concurrently without a lock and
//! without a seek position to fight over.
//!
//! # File format, version 1
//!
//! All integers are little-endian. A *varint* is unsigned LEB128 (7 bits per
//! byte, low group first, high bit set on all but the last byte, at most 10
//! bytes). A file is:
//!
//! ```text
//! [data block 0] ... [data block n-1] [filter block] [index block] [footer]
//! ```
//!
//! **Every block** (data, filter, index) is its contents followed by a 4-byte
//! CRC32C (Castagnoli) of those contents. A block *handle* (offset, length)
//! names the contents; the CRC follows at `offset + length`. Data blocks are
//! contiguous from offset 0, each followed directly by the next.
//!
//! **Data block** contents: entries, then the restart array.
//!
//! ```text
//! entry (shared, unshared and value_len are < 2^32):
//!   varint  shared      bytes of the key shared with the previous entry's key
//!                       (0 at a restart point)
//!   varint  unshared    bytes of the key that follow
//!   varint  value_len   0 for a tombstone
//!   u8      kind        0 = value, 1 = tombstone
//!   varint  seq         the entry's SeqNo (u64)
//!   [unshared]          the key's suffix: key = previous_key[..shared] ++ suffix
//!   [value_len]         the value
//! restart array (after the last entry):
//!   u32 * r             offsets (within the block) of the restart entries,
//!                       increasing, the first one 0
//!   u32     r           the number of restart points (>= 1)
//! ```
//!
//! Every 16th entry is a restart point (its key stored whole), so a lookup
//! binary-searches the restart points and then scans at most 15 entries. A
//! block is closed before an entry would push it past
//! [`TableOptions::block_bytes`]; an entry larger than that gets a block of
//! its own. Keys inside a block, and across blocks, are strictly increasing
//! in bytewise order.
//!
//! **Filter block** contents: a bloom filter in the format documented in
//! [`crate::storage::bloom`] (scheme byte, probe count, bit count, bits) over
//! every key of the table.
//!
//! **Index block** contents:
//!
//! ```text
//! varint  smallest_len, [smallest_len]  the table's first key
//! varint  n                             the number of data blocks
//! n times:
//!   varint  key_len, [key_len]          the LAST key of data block i
//!   varint  offset                      the block's offset in the file (u64)
//!   varint  length                      its contents' length (u32, > 0)
//! ```
//!
//! **Footer**, the last 76 bytes of a version-1 file:
//!
//! ```text
//! offset  size  field
//! 0       8     filter block offset          u64
//! 8       4     filter block length          u32
//! 12      8     index block offset           u64
//! 20      4     index block length           u32
//! 24      8     entries (tombstones included) u64
//! 32      8     tombstones                   u64
//! 40      8     smallest SeqNo in the table  u64 (0 if empty)
//! 48      8     largest SeqNo in the table   u64 (0 if empty)
//! 56      4     footer length, 76            u32
//! 60      4     format version, 1            u32
//! 64      4     CRC32C of footer bytes 0..64 u32
//! 68      8     magic, the ASCII bytes "ringkvST"
//! ```
//!
//! The last 20 bytes (footer length, version, CRC, magic) keep this meaning
//! in every future version, so a reader can check any version's footer CRC
//! before trusting its version number: a flipped bit in the version is
//! reported as corruption, while a sound footer from a newer version is
//! reported as [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion).
//!
//! # Checks and errors
//!
//! `open` verifies the footer, the index block and the filter block (CRCs,
//! lengths, that the blocks tile the file, that index keys increase), so a
//! table that opens has a sound index and filter. Each data block's CRC is
//! verified when it is read from disk, before it is decoded or cached, and
//! decoding bounds-checks every length. Any failure is
//! `Error::Corruption { file, offset }` with the table's path and the
//! offending block's (or the footer's) offset: never a panic, never wrong
//! data.
//!
//! # Memory
//!
//! Resident per open table ([`SsTable::memory_bytes`]): the filter,
//! `bloom_bits_per_key / 8` bytes per key (1.25 B at the default 10), plus
//! the index: the raw index block (the last key of each block + ~6 bytes of
//! varints) and a 32-byte decoded entry per block (handle, key range, 8-byte
//! key prefix). With 16-byte keys, 100-byte values and 4 KiB blocks (~33
//! entries per block) that is about 1.25 + 54/33 ≈ 2.9 bytes per key;
//! measured: 27.3 MB for 10M keys (2.8 B/key). Both are charged against the
//! shared block cache's capacity (see [`crate::storage::cache`]), so one
//! configured number bounds the engine's read-side memory as long as the
//! resident part fits in it: a 64 MiB cache covers ~23M such keys. Past that,
//! resident memory still grows with the data (index and filter are never
//! evicted; RocksDB's partitioned, cache-managed filters are the known next
//! step) and the cache's `pinned_bytes` shows it. A builder holds its current
//! block, the encoded index and 8 bytes per key of filter hashes until
//! `finish`.
//!
//! # Read counters
//!
//! [`ReadStats`] lives in the [`BlockCache`](crate::storage::cache::BlockCache)
//! the tables were opened with (one per engine in practice), read with
//! [`BlockCache::read_stats`](crate::storage::cache::BlockCache::read_stats)
//! or [`SsTable::read_stats`]. `get` counts: every call a `bloom_checks`; a
//! filter "absent" answer a `bloom_negatives`; every data block it then
//! fetches (from cache or disk) a `data_block_reads`; and of those, the ones
//! read from disk a `block_disk_reads`. So for absent keys,
//! `data_block_reads / bloom_checks` is the filter's observed false-positive
//! rate. Iterators count their block loads in `scan_block_reads` only.

pub(crate) mod block;
mod builder;
mod iter;
mod table;

pub use builder::{SsTableBuilder, MAX_ENTRY_BYTES};
pub use iter::SsTableIter;
pub use table::SsTable;

use crate::storage::cache::StripedCounter;
use crate::storage::types::{SeqNo, TableId};
use bytes::Bytes;

/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The last 8 bytes of every SSTable.
pub(crate) const MAGIC: [u8; 8] = *b"ringkvST";
/// Length of the version-1 footer.
pub(crate) const FOOTER_LEN: usize = 76;
/// Length of the tail every version keeps: footer length, version, CRC, magic.
pub(crate) const TAIL_LEN: usize = 20;
/// Bytes of CRC32C after every block's contents.
pub(crate) const BLOCK_TRAILER_LEN: u64 = 4;

/// How tables are written. Readers need no options: everything is in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableOptions {
    /// Target size of a data block in bytes, before its CRC (default 4096).
    /// Larger blocks mean a smaller index but more bytes read per `get`.
    pub block_bytes: usize,
    /// Bloom filter bits per key (default 10: 0.95% false positives
    /// measured; 12 give 0.4%, 16 about 0.1%). 0 is treated as 1.
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

/// What the engine needs to know about a table without reading it: returned
/// by [`SsTableBuilder::finish`] and rebuilt by [`SsTable::open`] from the
/// footer and index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMeta {
    pub id: TableId,
    /// Size of the file in bytes.
    pub file_bytes: u64,
    /// Entries in the table, tombstones included.
    pub entries: u64,
    pub tombstones: u64,
    /// The first key (empty if the table is empty).
    pub smallest: Bytes,
    /// The last key (empty if the table is empty).
    pub largest: Bytes,
    /// The smallest sequence number of any entry (0 if the table is empty).
    pub min_seq: SeqNo,
    /// The largest sequence number of any entry (0 if the table is empty).
    pub max_seq: SeqNo,
}

/// Read counters shared by every table opened with one block cache; see the
/// module doc for what each counts.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub(crate) bloom_checks: StripedCounter,
    pub(crate) bloom_negatives: StripedCounter,
    pub(crate) data_block_reads: StripedCounter,
    pub(crate) block_disk_reads: StripedCounter,
    pub(crate) scan_block_reads: StripedCounter,
}

impl ReadStats {
    /// The counters' current values.
    pub fn snapshot(&self) -> ReadStatsSnapshot {
        ReadStatsSnapshot {
            bloom_checks: self.bloom_checks.get(),
            bloom_negatives: self.bloom_negatives.get(),
            data_block_reads: self.data_block_reads.get(),
            block_disk_reads: self.block_disk_reads.get(),
            scan_block_reads: self.scan_block_reads.get(),
        }
    }
}

/// A copy of [`ReadStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStatsSnapshot {
    /// `get` calls that consulted a table's bloom filter.
    pub bloom_checks: u64,
    /// Of those, the ones the filter answered "absent" (no block read).
    pub bloom_negatives: u64,
    /// Data blocks a `get` fetched, from the cache or from disk.
    pub data_block_reads: u64,
    /// Of those, the ones read from disk.
    pub block_disk_reads: u64,
    /// Data blocks loaded by iterators (cache or disk).
    pub scan_block_reads: u64,
}

impl ReadStatsSnapshot {
    /// Counter-wise difference `self - earlier`, for measuring one phase.
    pub fn since(&self, earlier: &ReadStatsSnapshot) -> ReadStatsSnapshot {
        ReadStatsSnapshot {
            bloom_checks: self.bloom_checks.saturating_sub(earlier.bloom_checks),
            bloom_negatives: self.bloom_negatives.saturating_sub(earlier.bloom_negatives),
            data_block_reads: self
                .data_block_reads
                .saturating_sub(earlier.data_block_reads),
            block_disk_reads: self
                .block_disk_reads
                .saturating_sub(earlier.block_disk_reads),
            scan_block_reads: self
                .scan_block_reads
                .saturating_sub(earlier.scan_block_reads),
        }
    }
}
