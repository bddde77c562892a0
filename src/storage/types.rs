//! Small types shared by every part of the storage engine.

use bytes::Bytes;

/// A write's position in the engine's history: every put or delete gets the
/// next sequence number; a larger one is newer. Persisted in the commit log and
/// in SSTables so that merging any set of tables keeps the newest entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNo(pub u64);

/// The number of an SSTable file (`{id:020}.sst`); assigned in increasing order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u64);

/// What the engine holds for a key at one sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The key maps to these bytes.
    Value(Bytes),
    /// The key was deleted; shadows older values until compaction drops it.
    Tombstone,
}
