//! What a reader sees: the memtables and the sorted runs of SSTables at one
//! moment ([`SuperVersion`]), and the handles that keep table files alive while
//! any reader still uses them.
//!
//! The engine publishes a new `SuperVersion` (an immutable value behind an
//! `Arc`) whenever a memtable is frozen, flushed, or runs are compacted. A read
//! clones the `Arc` and then works without any lock, so flushes and
//! compactions never block it; a table replaced by compaction is deleted from
//! disk only when the last `SuperVersion` naming it is gone (LevelDB's
//! approach).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::memtable::MemTable;
use super::sstable::{SsTable, SsTableIter};
use super::types::{Entry, SeqNo, TableId};
use crate::error::Result;

/// The path of table `id` in `dir`.
pub(crate) fn table_path(dir: &Path, id: TableId) -> PathBuf {
    dir.join(format!("{:020}.sst", id.0))
}

/// An open SSTable that deletes its file when dropped after being marked
/// obsolete (replaced by compaction and no longer in the manifest).
pub(crate) struct TableHandle {
    pub table: Arc<SsTable>,
    obsolete: AtomicBool,
}

impl TableHandle {
    pub(crate) fn new(table: Arc<SsTable>) -> Arc<TableHandle> {
        Arc::new(TableHandle {
            table,
            obsolete: AtomicBool::new(false),
        })
    }

    /// Delete the file once the last reader lets go.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for TableHandle {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            let path = self.table.path();
            if let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(file = %path.display(), %err, "could not delete an obsolete SSTable");
            }
        }
    }
}

/// A sorted run: tables whose key ranges do not overlap, in key order, all
/// written by one flush or one compaction. At most one table of a run can hold
/// a given key.
pub(crate) struct Run {
    pub tables: Vec<Arc<TableHandle>>,
}

impl Run {
    /// The table of this run whose key range covers `key`, if any.
    pub(crate) fn table_for(&self, key: &[u8]) -> Option<&Arc<SsTable>> {
        let index = self
            .tables
            .partition_point(|t| t.table.meta().largest.as_ref() < key);
        let handle = self.tables.get(index)?;
        (handle.table.meta().smallest.as_ref() <= key).then_some(&handle.table)
    }

    /// Total file bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.table.meta().file_bytes).sum()
    }

    pub(crate) fn ids(&self) -> Vec<TableId> {
        self.tables.iter().map(|t| t.table.meta().id).collect()
    }

    /// Every entry from `start` on, in key order (one entry per key).
    pub(crate) fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> RunIter {
        let first = match start {
            Bound::Unbounded => 0,
            Bound::Included(key) | Bound::Excluded(key) => self
                .tables
                .partition_point(|t| t.table.meta().largest.as_ref() < key),
        };
        let current = self.tables.get(first).map(|t| t.table.iter(start));
        RunIter {
            run: self.clone(),
            next_table: first + 1,
            current,
        }
    }
}

/// Iterates a run table after table, opening each table's iterator lazily.
pub(crate) struct RunIter {
    run: Arc<Run>,
    next_table: usize,
    current: Option<SsTableIter>,
}

impl Iterator for RunIter {
    type Item = Result<(Bytes, SeqNo, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.as_mut()?.next() {
                return Some(item);
            }
            let table = self.run.tables.get(self.next_table)?;
            self.next_table += 1;
            self.current = Some(table.table.iter(Bound::Unbounded));
        }
    }
}

/// Everything a read needs, frozen at one moment.
#[derive(Clone)]
pub(crate) struct SuperVersion {
    /// Takes writes now.
    pub active: Arc<MemTable>,
    /// Frozen memtables waiting for their flush, newest first.
    pub frozen: Vec<Arc<MemTable>>,
    /// Sorted runs, newest first. Their sequence-number ranges do not overlap
    /// and decrease along the list, because flushes happen in order and
    /// compaction only merges neighbouring runs.
    pub runs: Vec<Arc<Run>>,
}

impl SuperVersion {
    /// Memtables newest first: the active one, then the frozen ones.
    pub(crate) fn memtables(&self) -> impl Iterator<Item = &Arc<MemTable>> {
        std::iter::once(&self.active).chain(self.frozen.iter())
    }
}
