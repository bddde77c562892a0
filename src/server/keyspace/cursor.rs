//! `SCAN` cursors.
//!
//! Real clients (redis-py, the Rust `redis` crate) parse the cursor as an
//! unsigned 64-bit integer, so the cursor cannot simply carry the last key
//! returned. It is split in two:
//!
//! ```text
//! cursor (u64) = partition u16 << 48 | resume slot (48 bits)
//! ```
//!
//! Keys are visited in engine order: partition by partition, and by key bytes
//! within a partition. Slot 0 means "from the start of the partition". Any
//! other slot names an entry of a bounded server-side table holding the last
//! key returned in that partition; the scan resumes strictly after it. The
//! table keeps the newest [`DEFAULT_SLOTS`] positions and forgets the oldest,
//! and it is not persisted: a forgotten slot (evicted, a restart, a cursor
//! from another node) restarts its partition from the beginning. So a full
//! iteration returns every key present from start to end at least once, as
//! Redis promises, and at worst repeats the keys of one partition. Cursor `0`
//! is both the start and, in a reply, the end of the iteration.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

use super::layout::PartitionId;

/// How many resume positions the table keeps by default.
pub const DEFAULT_SLOTS: usize = 16 * 1024;

const SLOT_BITS: u32 = 48;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// Where a scan resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: PartitionId,
    /// Resume strictly after this user key; `None` = the partition's start.
    pub after: Option<Bytes>,
}

/// The bounded table of resume positions.
pub struct CursorTable {
    inner: Mutex<Table>,
    capacity: usize,
}

struct Table {
    next_slot: u64,
    positions: HashMap<u64, (PartitionId, Bytes)>,
    order: VecDeque<u64>,
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
        let partition = PartitionId((cursor >> SLOT_BITS) as u16);
        let slot = cursor & SLOT_MASK;
        let after = match slot {
            0 => None,
            _ => match self.inner.lock().positions.get(&slot) {
                Some((p, key)) if *p == partition => Some(key.clone()),
                _ => None,
            },
        };
        Position { partition, after }
    }

    /// A cursor for "resume in `partition` after `key`".
    pub fn remember(&self, partition: PartitionId, key: Bytes) -> u64 {
        let mut table = self.inner.lock();
        let slot = table.next_slot;
        table.next_slot = if slot >= SLOT_MASK { 1 } else { slot + 1 };
        // Only after 2^48 cursors does a slot come round again.
        if table.positions.insert(slot, (partition, key)).is_some() {
            table.order.retain(|s| *s != slot);
        }
        table.order.push_back(slot);
        while table.order.len() > self.capacity {
            if let Some(oldest) = table.order.pop_front() {
                table.positions.remove(&oldest);
            }
        }
        u64::from(partition.0) << SLOT_BITS | slot
    }

    /// The cursor for the start of `partition`.
    pub fn partition_start(partition: PartitionId) -> u64 {
        u64::from(partition.0) << SLOT_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_position_resolves_back() {
        let table = CursorTable::new(4);
        let cursor = table.remember(PartitionId(7), Bytes::from_static(b"k"));
        assert_eq!(cursor >> 48, 7);
        assert_eq!(
            table.resolve(cursor),
            Position {
                partition: PartitionId(7),
                after: Some(Bytes::from_static(b"k"))
            }
        );
    }

    #[test]
    fn a_forgotten_slot_restarts_its_partition() {
        let table = CursorTable::new(2);
        let first = table.remember(PartitionId(1), Bytes::from_static(b"a"));
        table.remember(PartitionId(1), Bytes::from_static(b"b"));
        table.remember(PartitionId(1), Bytes::from_static(b"c"));
        assert_eq!(table.resolve(first).after, None, "evicted: partition start");
        let forged = CursorTable::partition_start(PartitionId(3)) | 12345;
        assert_eq!(
            table.resolve(forged),
            Position {
                partition: PartitionId(3),
                after: None
            }
        );
    }

    #[test]
    fn a_slot_is_only_valid_in_its_own_partition() {
        let table = CursorTable::new(4);
        let cursor = table.remember(PartitionId(1), Bytes::from_static(b"a"));
        let moved = (cursor & SLOT_MASK) | 2 << 48;
        assert_eq!(table.resolve(moved).after, None);
    }
}
