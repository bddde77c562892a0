//! Tuning knobs of the storage engine, and the compaction filter hook.
//!
//! Every field of [`Options`] has a default chosen for a node with a few
//! hundred MiB of memory to spare; the unit is in the field's name or doc.

use std::sync::Arc;
use std::time::Duration;

use crate::config::FsyncPolicy;
use crate::storage::sstable::TableOptions;

/// What a [`CompactionFilter`] wants done with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterDecision {
    /// Keep the value as it is.
    Keep,
    /// The value is garbage (e.g. a cluster-level tombstone past its grace
    /// period): compaction removes it. In a bottommost compaction the key simply
    /// disappears; otherwise an engine tombstone takes its place so that older
    /// values of the key in tables below cannot resurface.
    Remove,
}

/// A caller-supplied policy that compaction consults for every value that
/// survives the merge (the newest value of each key). The cluster uses it to
/// purge its own tombstones after their grace period; the engine itself never
/// looks inside values.
///
/// It runs on the compaction thread, so it must be cheap and must not call
/// back into the engine.
pub trait CompactionFilter: Send + Sync {
    /// Decide about `value`, the newest value stored for `key`.
    fn filter(&self, key: &[u8], value: &[u8]) -> FilterDecision;
}

/// Options of [`Engine::open`](crate::storage::Engine::open).
#[derive(Clone)]
pub struct Options {
    /// When the commit log is fsynced. Default: [`FsyncPolicy::Everysec`].
    pub fsync: FsyncPolicy,
    /// Size in bytes at which the active memtable is frozen and handed to the
    /// flush thread. Counts keys, values and an estimate of the per-entry
    /// overhead of the skiplist, so it tracks real memory. Default: 64 MiB.
    pub memtable_bytes: usize,
    /// How many frozen memtables may wait for their flush before writers stall.
    /// Memtable memory is bounded by `(1 + max_frozen_memtables) *
    /// memtable_bytes`. Default: 1.
    pub max_frozen_memtables: usize,
    /// How SSTables are built (block size, bloom filter bits per key).
    /// Default: [`TableOptions::default`].
    pub table: TableOptions,
    /// Capacity in bytes of the block cache shared by all SSTables. The
    /// tables' resident indexes and bloom filters are charged against it too,
    /// so it bounds all read-side memory. Default: 64 MiB.
    pub block_cache_bytes: usize,
    /// Bytes per second that background compaction may write (a token bucket);
    /// 0 means unlimited. Flushes are never throttled (they unblock writers).
    /// Default: 128 MiB/s.
    pub compaction_bytes_per_sec: u64,
    /// Size in bytes after which the commit log starts a new segment file.
    /// Default: 64 MiB.
    pub wal_segment_bytes: u64,
    /// Policy consulted by compaction for every surviving value. Default: none.
    pub compaction_filter: Option<Arc<dyn CompactionFilter>>,
    /// Size in bytes at which compaction starts a new output table (a run is
    /// split into tables of about this size). Smaller tables bound the memory
    /// a table builder holds (8 bytes of filter hash per key). Default:
    /// 64 MiB.
    pub target_table_bytes: u64,
    /// Longest time a writer waits for a flush to free memtable space before
    /// the write fails with [`Error::Timeout`](crate::Error::Timeout).
    /// Default: 60 s.
    pub max_write_stall: Duration,
    /// Whether the flush and compaction threads run. Tests switch them off to
    /// drive flushes and compactions by hand. Default: true.
    pub background_threads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: FsyncPolicy::Everysec,
            memtable_bytes: 64 << 20,
            max_frozen_memtables: 1,
            table: TableOptions::default(),
            block_cache_bytes: 64 << 20,
            compaction_bytes_per_sec: 128 << 20,
            wal_segment_bytes: 64 << 20,
            compaction_filter: None,
            target_table_bytes: 64 << 20,
            max_write_stall: Duration::from_secs(60),
            background_threads: true,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("fsync", &self.fsync)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("max_frozen_memtables", &self.max_frozen_memtables)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("compaction_bytes_per_sec", &self.compaction_bytes_per_sec)
            .field("wal_segment_bytes", &self.wal_segment_bytes)
            .field("compaction_filter", &self.compaction_filter.is_some())
            .field("target_table_bytes", &self.target_table_bytes)
            .field("max_write_stall", &self.max_write_stall)
            .field("background_threads", &self.background_threads)
            .finish()
    }
}
