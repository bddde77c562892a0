//! The single-node LSM storage engine: commit log, memtables, SSTables with
//! bloom filters, a manifest, and size-tiered compaction.
//!
//! Keys and values are opaque bytes. The cluster stores an encoded sibling set
//! as each key's value and puts the partition id in front of every key, so one
//! partition is one key prefix ([`Engine::scan_prefix`]). Nothing here knows
//! about the network or the cluster.
//!
//! # Architecture
//!
//! ```text
//!  write(batch) ──► commit log (wal.rs) ──► active memtable (memtable.rs)
//!                    group commit fsync        │ full: freeze, new log segment
//!                                              ▼
//!                                     frozen memtables ──flush thread──► SSTable = new sorted run
//!                                                                          │
//!  manifest.rs: which runs/tables are live, where the log starts ◄─────────┤
//!                                                                          ▼
//!                                            compaction thread (compaction.rs) merges runs
//!
//!  get(key):  memtables newest first (each behind a bloom filter) ──► per run, newest first: the one table whose
//!             key range covers key ──► bloom filter ──► block index ──► one data block
//! ```
//!
//! - **Write path** (the seed's): a small batch first searches the active
//!   memtable for its keys without any lock, so that the inserts' skiplist
//!   paths are in the CPU cache; then the write takes the write lock, gets
//!   the next sequence numbers ([`SeqNo`]), appends one record to the commit
//!   log's buffer, inserts into the active memtable, publishes the new
//!   visible sequence number and releases the lock; then, under `fsync
//!   always`, it waits for the group commit (`wal.rs`): one writer fsyncs
//!   for everyone who queued meanwhile. [`Engine::write_unsynced`] +
//!   [`Engine::wait_synced`] split the two halves so a server can answer a
//!   pipeline of commands after one wait. `everysec` fsyncs from a background
//!   thread every second; `no` only hands the buffer to the OS every second.
//!   Log segments are preallocated a few MiB ahead, and a segment closed by
//!   rotation is fsynced by the next sync, not under the write lock.
//! - **Memtables** hold every version keyed by (key, sequence number); when
//!   the active one passes `memtable_bytes` it is frozen (the log starts a new
//!   segment at the same moment) and the flush thread writes the newest
//!   version of each key to an SSTable. While `max_frozen_memtables` wait for
//!   their flush, writers stall (bounded by `max_write_stall`) instead of
//!   growing memory.
//! - **Reads never block** on flushes or compactions: the engine publishes an
//!   immutable `SuperVersion` (memtables + runs) behind an `Arc`, swapped
//!   under a lock held only for the swap. A reader
//!   takes the version and the visible sequence number together (under the
//!   version lock's read side), which makes them consistent: every write at or
//!   below the sequence number is in one of the version's memtables or tables.
//!   Scans filter by that sequence number, so a scan is a snapshot and a
//!   half-inserted batch is never seen. Tables that compaction replaced are
//!   deleted only when the last version naming them is dropped.
//! - **Sorted runs**: a flush adds a run of one table; compaction merges
//!   neighbouring runs into one (split into tables of `target_table_bytes`).
//!   Runs are ordered newest first with disjoint sequence-number ranges, so a
//!   point read stops at the first run that has the key. Merges still order
//!   by sequence number, never by position, to keep the newest entry.
//! - **Durability order**: a table is fsynced (file and directory) before the
//!   manifest names it; the manifest's `log_start` moves past a log segment
//!   only after the tables holding its records are in a durable manifest, and
//!   only then is the segment deleted. Replaced tables leave the directory
//!   after the manifest that dropped them is durable.
//! - **Recovery**: take the `LOCK` file (`flock`, so a second process cannot
//!   open the directory), load the manifest, open every live table (a missing
//!   or damaged one fails the open with its path), delete orphan tables,
//!   replay the log from `log_start` up to the first torn or corrupt record
//!   (truncating there, with a warning that says how many bytes were dropped),
//!   and start a new log segment.
//!
//! # Compaction and amplification
//!
//! Size-tiered compaction; the reasons and the read, write and space
//! amplification are in the `compaction` module's doc. In short, with the
//! defaults: a write costs the log, the flush and about log4(data/memtable)
//! rewrites (about 2 for 1 GB with 64 MiB memtables); a point read costs at
//! most one data block in the run that holds the key plus about 1% false
//! positives of the bloom filters of the other runs, with at most 12 runs and
//! one filter per run (binary search picks the table); space overhead is
//! about 1x for distinct keys and at most ~5x under heavy overwrites before a
//! full merge, and a merge needs room for its output.
//!
//! # Memory
//!
//! Bounded by the options, not by the data: `(1 + max_frozen_memtables) *
//! memtable_bytes` for memtables (their size counts the skiplist's per-entry
//! overhead, so it is real memory), and `block_cache_bytes` for data blocks
//! together with every open table's bloom filter and block index, which the
//! cache charges against its capacity (about 2.7 bytes per key: 10 bits of
//! filter plus the index). Compaction adds its table builders (8 bytes of
//! filter hash per key of one output table of at most `target_table_bytes`),
//! and while it runs the filters of its inputs and outputs coexist. Two
//! things can hold memory past these bounds for as long as the caller keeps
//! them: a [`Scan`] pins the memtables and tables of its snapshot, and a
//! value returned by [`Engine::get`] shares the memtable's 1 MiB arena chunk
//! it came from. After a flush or compaction frees memory, the engine asks
//! glibc to return free heap pages to the OS (`malloc_trim`).
//!
//! # Failures
//!
//! A failed commit-log write or fsync refuses every later write with the
//! error (after a failed fsync the kernel may have dropped the dirty pages,
//! so acknowledging later writes would put them on top of a hole); reads go
//! on, and reopening recovers what the log really holds. A failed flush or
//! compaction is logged and retried; writers that stall meanwhile get the
//! error instead of waiting out `max_write_stall`. Damaged or missing files
//! (manifest, tables, log segments) fail [`Engine::open`] with the file's
//! path; a file written by a newer format version fails it with
//! [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion).
//!
//! # Departures from the seed
//!
//! Tombstones of the engine are dropped by bottommost compactions; the
//! cluster's own tombstones (versions in a sibling set, kept for a grace
//! period) are values to the engine, and the cluster removes them through a
//! [`CompactionFilter`].

mod batch;
pub mod bloom;
pub mod cache;
mod compaction;
mod engine;
mod manifest;
mod memtable;
mod merge;
mod options;
mod rate_limiter;
pub mod sstable;
pub mod types;
mod version;
mod wal;

pub use batch::WriteBatch;
pub use engine::{Engine, EngineStats, Scan};
pub use options::{CompactionFilter, FilterDecision, Options};
pub use types::{Entry, SeqNo, TableId};
