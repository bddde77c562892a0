//! A k-way merge of sorted sources (memtables, runs) into one stream ordered by
//! key ascending, then sequence number descending.
//!
//! Ordering by sequence number rather than by the position of the source
//! means the newest version of a key comes first whatever the sources are; the
//! consumers ([`Scan`](super::Scan), compaction) keep the first entry of each
//! key and skip the rest.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;

use super::types::{Entry, SeqNo};
use crate::error::Result;

/// One sorted input of a merge.
pub(crate) type Source = Box<dyn Iterator<Item = Result<(Bytes, SeqNo, Entry)>> + Send>;

struct Head {
    key: Bytes,
    seq: SeqNo,
    entry: Entry,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// `BinaryHeap` pops the greatest element, so the smallest key (and for
    /// equal keys the largest sequence number) must compare greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .key
            .cmp(&self.key)
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

/// Merges sources; stops after yielding the first error.
pub(crate) struct MergeIter {
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
    pending_error: Option<crate::Error>,
    done: bool,
}

impl MergeIter {
    pub(crate) fn new(mut sources: Vec<Source>) -> Self {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        let mut pending_error = None;
        for (index, source) in sources.iter_mut().enumerate() {
            match source.next() {
                Some(Ok((key, seq, entry))) => heap.push(Head {
                    key,
                    seq,
                    entry,
                    source: index,
                }),
                Some(Err(err)) => {
                    pending_error.get_or_insert(err);
                }
                None => {}
            }
        }
        MergeIter {
            sources,
            heap,
            pending_error,
            done: false,
        }
    }
}

impl Iterator for MergeIter {
    type Item = Result<(Bytes, SeqNo, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(err) = self.pending_error.take() {
            self.done = true;
            return Some(Err(err));
        }
        let head = self.heap.pop()?;
        match self.sources[head.source].next() {
            Some(Ok((key, seq, entry))) => self.heap.push(Head {
                key,
                seq,
                entry,
                source: head.source,
            }),
            Some(Err(err)) => self.pending_error = Some(err),
            None => {}
        }
        Some(Ok((head.key, head.seq, head.entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(items: &[(&'static str, u64)]) -> Source {
        let items: Vec<_> = items
            .iter()
            .map(|&(k, s)| Ok((Bytes::from_static(k.as_bytes()), SeqNo(s), Entry::Tombstone)))
            .collect();
        Box::new(items.into_iter())
    }

    #[test]
    fn merge_orders_by_key_then_newest_first_regardless_of_source_order() {
        let merged: Vec<(Bytes, SeqNo)> = MergeIter::new(vec![
            source(&[("a", 1), ("c", 2)]),
            source(&[("a", 7), ("b", 3)]),
            source(&[("c", 9)]),
        ])
        .map(|item| item.map(|(k, s, _)| (k, s)).unwrap())
        .collect();
        let expected: Vec<(Bytes, SeqNo)> = [("a", 7), ("a", 1), ("b", 3), ("c", 9), ("c", 2)]
            .iter()
            .map(|&(k, s)| (Bytes::from_static(k.as_bytes()), SeqNo(s)))
            .collect();
        assert_eq!(merged, expected);
    }
}
