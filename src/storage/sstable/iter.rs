//! Ordered iteration over one SSTable: [`SsTableIter`].
//!
//! The iterator owns an `Arc` of its table, so it outlives any borrow and can
//! be moved into a merge (the engine merges memtables and tables by key). It
//! reads one block at a time, only when the previous one is exhausted; blocks
//! come from the block cache when present but scans do not fill it (see
//! [`SsTable::iter`]). The first error (corruption, I/O) is yielded once and
//! ends the iteration.

use super::block::BlockCursor;
use super::table::{BlockUse, SsTable};
use crate::error::Result;
use crate::storage::types::{Entry, SeqNo};
use bytes::Bytes;
use std::ops::Bound;
use std::sync::Arc;

/// Entries of one table in key order, from a start bound on:
/// `Iterator<Item = Result<(key, seq, entry)>>`.
#[derive(Debug)]
pub struct SsTableIter {
    table: Arc<SsTable>,
    /// The start bound, until the first `next` applies it.
    start: Option<Bound<Vec<u8>>>,
    /// The block loaded next when the cursor runs out.
    next_block: usize,
    /// The current block and its file offset (for errors).
    cursor: Option<(BlockCursor, u64)>,
    done: bool,
}

impl SsTableIter {
    pub(crate) fn new(table: Arc<SsTable>, start: Bound<&[u8]>) -> Self {
        SsTableIter {
            table,
            start: Some(start.map(<[u8]>::to_vec)),
            next_block: 0,
            cursor: None,
            done: false,
        }
    }

    /// Loads block `i`; false if there is none.
    fn load_block(&mut self, i: usize) -> Result<bool> {
        if i >= self.table.block_count() {
            return Ok(false);
        }
        let handle = self.table.block_handle(i);
        let block = self.table.block(handle, BlockUse::Scan)?;
        self.cursor = Some((BlockCursor::new(block), handle.offset));
        self.next_block = i + 1;
        Ok(true)
    }

    /// Decodes the next entry, crossing into later blocks as needed; its key
    /// is then the cursor's key.
    fn step(&mut self) -> Result<Option<(SeqNo, Entry)>> {
        loop {
            if let Some((cursor, offset)) = &mut self.cursor {
                match cursor.next_entry() {
                    Some(Ok(found)) => return Ok(Some(found)),
                    Some(Err(m)) => return Err(self.table.corruption(*offset, m)),
                    None => {}
                }
            }
            if !self.load_block(self.next_block)? {
                return Ok(None);
            }
        }
    }

    fn current_key(&self) -> &[u8] {
        self.cursor.as_ref().map_or(&[], |(c, _)| c.key())
    }

    /// Moves to the first entry within `start` and returns it.
    fn seek(&mut self, start: Bound<Vec<u8>>) -> Result<Option<(SeqNo, Entry)>> {
        let (target, inclusive) = match start {
            Bound::Unbounded => return self.step(),
            Bound::Included(k) => (k, true),
            Bound::Excluded(k) => (k, false),
        };
        let Some(first) = self.table.find_block(&target) else {
            return Ok(None);
        };
        if !self.load_block(first)? {
            return Ok(None);
        }
        if let Some((cursor, offset)) = &mut self.cursor {
            cursor
                .seek_near(&target)
                .map_err(|m| self.table.corruption(*offset, m))?;
        }
        while let Some(found) = self.step()? {
            let key = self.current_key();
            if key > target.as_slice() || (inclusive && key == target.as_slice()) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn advance(&mut self) -> Result<Option<(Bytes, SeqNo, Entry)>> {
        let found = match self.start.take() {
            Some(start) => self.seek(start)?,
            None => self.step()?,
        };
        Ok(found.map(|(seq, entry)| (Bytes::copy_from_slice(self.current_key()), seq, entry)))
    }
}

impl Iterator for SsTableIter {
    type Item = Result<(Bytes, SeqNo, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for SsTableIter {}
