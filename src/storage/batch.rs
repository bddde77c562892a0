//! [`WriteBatch`]: a group of puts and deletes applied atomically.
//!
//! The batch keeps its operations already encoded in the commit log's format
//! (LevelDB does the same), so a write copies the batch into the log buffer
//! once and never re-encodes it. Encoding of the operations, all integers
//! little-endian:
//!
//! ```text
//! put:    tag u8 = 0 | key_len u32 | key | value_len u32 | value
//! delete: tag u8 = 1 | key_len u32 | key
//! ```
//!
//! The record that carries a batch in the log is described in [`super::wal`].

use super::sstable::MAX_ENTRY_BYTES;
use crate::error::{Error, Result};

const TAG_PUT: u8 = 0;
const TAG_DELETE: u8 = 1;

/// Puts and deletes that [`Engine::write`](super::Engine::write) applies
/// atomically: a reader sees all of them or none, and recovery replays all of
/// them or none. A later operation on the same key wins over an earlier one.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<u8>,
    count: u32,
    oversized: bool,
}

/// One decoded operation of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchOp<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.oversized |= key.len().saturating_add(value.len()) > MAX_ENTRY_BYTES;
        self.ops.reserve(9 + key.len() + value.len());
        self.ops.push(TAG_PUT);
        self.push_bytes(key);
        self.push_bytes(value);
        self.count += 1;
    }

    /// Delete `key` (writes a tombstone).
    pub fn delete(&mut self, key: &[u8]) {
        self.oversized |= key.len() > MAX_ENTRY_BYTES;
        self.ops.push(TAG_DELETE);
        self.push_bytes(key);
        self.count += 1;
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Remove every operation, keeping the allocation.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.count = 0;
        self.oversized = false;
    }

    /// Encoded size of the operations in bytes.
    pub(crate) fn encoded_ops(&self) -> &[u8] {
        &self.ops
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Refuse entries an SSTable cannot hold (they would make every flush
    /// fail), before they reach the log.
    pub(crate) fn check(&self) -> Result<()> {
        if self.oversized {
            return Err(Error::invalid(format!(
                "key plus value longer than the {MAX_ENTRY_BYTES}-byte limit"
            )));
        }
        Ok(())
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        // Longer inputs are refused by `check` (`oversized` is set).
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.ops.extend_from_slice(&len.to_le_bytes());
        self.ops.extend_from_slice(bytes);
    }
}

/// Decodes the operations of an encoded batch. Yields `None` (via
/// [`BatchOps::next_op`] returning `Err`) when the bytes are malformed, which
/// only happens for a log record whose checksum matched but whose content does
/// not parse: corruption that a CRC32C collision let through, or a bug.
pub(crate) struct BatchOps<'a> {
    rest: &'a [u8],
}

impl<'a> BatchOps<'a> {
    pub(crate) fn new(encoded: &'a [u8]) -> Self {
        BatchOps { rest: encoded }
    }

    /// The next operation, `Ok(None)` at the end, `Err(())` if malformed.
    pub(crate) fn next_op(&mut self) -> std::result::Result<Option<BatchOp<'a>>, ()> {
        let Some((&tag, rest)) = self.rest.split_first() else {
            return Ok(None);
        };
        self.rest = rest;
        let key = self.take_bytes()?;
        match tag {
            TAG_PUT => {
                let value = self.take_bytes()?;
                Ok(Some(BatchOp::Put(key, value)))
            }
            TAG_DELETE => Ok(Some(BatchOp::Delete(key))),
            _ => Err(()),
        }
    }

    fn take_bytes(&mut self) -> std::result::Result<&'a [u8], ()> {
        if self.rest.len() < 4 {
            return Err(());
        }
        let (len, rest) = self.rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err(());
        }
        let (bytes, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_decode_in_the_order_they_were_added() {
        let mut batch = WriteBatch::new();
        batch.put(b"a", b"1");
        batch.delete(b"b");
        batch.put(b"", b"");
        assert_eq!(batch.len(), 3);
        let mut ops = BatchOps::new(batch.encoded_ops());
        assert_eq!(ops.next_op(), Ok(Some(BatchOp::Put(b"a", b"1"))));
        assert_eq!(ops.next_op(), Ok(Some(BatchOp::Delete(b"b"))));
        assert_eq!(ops.next_op(), Ok(Some(BatchOp::Put(b"", b""))));
        assert_eq!(ops.next_op(), Ok(None));
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.encoded_ops().is_empty());
    }

    #[test]
    fn truncated_operations_are_reported_as_malformed() {
        let mut batch = WriteBatch::new();
        batch.put(b"key", b"value");
        let encoded = batch.encoded_ops();
        for cut in 1..encoded.len() {
            let mut ops = BatchOps::new(&encoded[..cut]);
            assert_eq!(ops.next_op(), Err(()), "cut at {cut}");
        }
    }
}
