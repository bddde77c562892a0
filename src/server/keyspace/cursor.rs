//! `SCAN` cursors.
//!
//! Real clients (redis-py, the Rust `redis` crate) parse the cursor as an
//! unsigned 64-bit integer, so the cursor cannot simply carry the last key
//! returned. Keys are visited in engine order: partition by partition, and by
//! key bytes within a partition. The cursor names a place in that order:
//!
//! ```text
//! cursor (u64) = partition u16 << 48 | slot u24 << 24 | offset u24
//! ```
//!
//! - `offset`: how many stored keys of the partition the scan has passed
//!   (saturating at 2^24 - 1).
//! - `slot`: an entry of a bounded server-side table holding the last key
//!   passed (and, as a check, the partition and offset); 0 = none. The table
//!   keeps the newest [`DEFAULT_SLOTS`] positions and is not persisted.
//!
//! With its slot, a scan resumes strictly after the remembered key: exact, at
//! the cost of one seek. Without it (evicted by many concurrent scans, a
//! restart, a cursor from another node, a slot number reused after 2^24
//! cursors) it skips `offset` keys from the partition's start instead, which
//! always makes progress. Keys present from the start to the end of an
//! iteration are returned at least once, as Redis promises: inserts before
//! the position only cause repeats, and deletions do not shift positions,
//! because a deleted key stays stored as a tombstone for the grace period.
//! The one gap: if the slot was lost *and* compaction purged old tombstones
//! before the position in that partition during the iteration, the skip can
//! pass keys not yet returned. Cursor `0` is both the start and, in a reply,
//! the end of the iteration.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

use super::layout::PartitionId;

/// How many resume positions the table keeps by default.
pub const DEFAULT_SLOTS: usize = 16 * 1024;

const FIELD_BITS: u32 = 24;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// Where a scan resumes inside its partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Strictly after this key.
    After(Bytes),
    /// After skipping this many keys from the partition's start (0 = start).
    Skip(u64),
}

/// A decoded cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: PartitionId,
    /// Keys of the partition already passed.
    pub offset: u64,
    pub resume: Resume,
}

/// The bounded table of resume positions.
pub struct CursorTable {
    inner: Mutex<Table>,
    capacity: usize,
}

struct Table {
    next_slot: u64,
    positions: HashMap<u64, Remembered>,
    order: VecDeque<u64>,
}

struct Remembered {
    partition: PartitionId,
    offset: u64,
    key: Bytes,
}

impl CursorTable {
    pub fn new(capacity: usize) -> CursorTable {
        CursorTable {
            inner: Mutex::new(Table {
                next_slot: 1,
                positions: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// The position a client's cursor stands for.
    pub fn resolve(&self, cursor: u64) -> Position {
        let partition = PartitionId((cursor >> (2 * FIELD_BITS)) as u16);
        let slot = (cursor >> FIELD_BITS) & FIELD_MASK;
        let offset = cursor & FIELD_MASK;
        let remembered = match slot {
            0 => None,
            _ => self.inner.lock().positions.get(&slot).and_then(|r| {
                (r.partition == partition && r.offset == offset).then(|| r.key.clone())
            }),
        };
        let resume = match remembered {
            Some(key) => Resume::After(key),
            None => Resume::Skip(offset),
        };
        Position {
            partition,
            offset,
            resume,
        }
    }

    /// A cursor for "resume in `partition` after `key`, the `offset`-th key
    /// passed in it".
    pub fn remember(&self, partition: PartitionId, offset: u64, key: Bytes) -> u64 {
        let offset = offset.min(FIELD_MASK);
        let mut table = self.inner.lock();
        let slot = table.next_slot;
        table.next_slot = if slot >= FIELD_MASK { 1 } else { slot + 1 };
        let entry = Remembered {
            partition,
            offset,
            key,
        };
        // Only after 2^24 cursors does a slot number come round again.
        if table.positions.insert(slot, entry).is_some() {
            table.order.retain(|s| *s != slot);
        }
        table.order.push_back(slot);
        while table.order.len() > self.capacity {
            if let Some(oldest) = table.order.pop_front() {
                table.positions.remove(&oldest);
            }
        }
        u64::from(partition.0) << (2 * FIELD_BITS) | slot << FIELD_BITS | offset
    }

    /// The cursor for the start of `partition`.
    pub fn partition_start(partition: PartitionId) -> u64 {
        u64::from(partition.0) << (2 * FIELD_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_position_resolves_back() {
        let table = CursorTable::new(4);
        let cursor = table.remember(PartitionId(7), 12, Bytes::from_static(b"k"));
        assert_eq!(cursor >> 48, 7);
        assert_eq!(
            table.resolve(cursor),
            Position {
                partition: PartitionId(7),
                offset: 12,
                resume: Resume::After(Bytes::from_static(b"k")),
            }
        );
    }

    #[test]
    fn a_forgotten_slot_falls_back_to_skipping_the_offset() {
        let table = CursorTable::new(2);
        let first = table.remember(PartitionId(1), 5, Bytes::from_static(b"a"));
        table.remember(PartitionId(1), 6, Bytes::from_static(b"b"));
        table.remember(PartitionId(1), 7, Bytes::from_static(b"c"));
        assert_eq!(table.resolve(first).resume, Resume::Skip(5));
        let start = CursorTable::partition_start(PartitionId(3));
        assert_eq!(table.resolve(start).resume, Resume::Skip(0));
        assert_eq!(table.resolve(0).partition, PartitionId(0));
    }

    #[test]
    fn a_slot_only_counts_for_its_own_partition_and_offset() {
        let table = CursorTable::new(4);
        let cursor = table.remember(PartitionId(1), 3, Bytes::from_static(b"a"));
        let other_partition = (cursor & ((1 << 48) - 1)) | 2 << 48;
        assert_eq!(table.resolve(other_partition).resume, Resume::Skip(3));
        let other_offset = (cursor & !FIELD_MASK) | 4;
        assert_eq!(table.resolve(other_offset).resume, Resume::Skip(4));
    }
}
