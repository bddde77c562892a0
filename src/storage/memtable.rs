//! The memtable: recent writes, sorted, in memory, readable while being
//! written.
//!
//! A lock-free skiplist (`crossbeam-skiplist`) maps `(key, sequence number)` to
//! an [`Entry`], ordered by key ascending then sequence number descending, so
//! the newest version of a key comes first. Keeping every version (instead of
//! overwriting) is what gives scans a consistent snapshot: a reader takes the
//! engine's visible sequence number and ignores anything newer, including the
//! second half of a batch still being inserted. Readers never take a lock; the
//! one writer at a time (the engine's write lock) inserts without blocking
//! them.
//!
//! A bloom filter of the keys inserted sits in front of the skiplist. Once
//! the data outgrows one memtable, most gets ask memtables for keys they do
//! not hold; the filter answers those with one cache line instead of a
//! search that misses the cache at nearly every level (RocksDB's
//! `memtable_whole_key_filtering`).
//!
//! The size counts keys, values, an estimate of the skiplist's per-entry
//! overhead and the filter (about 1% of the budget), so
//! `Options::memtable_bytes` bounds real memory rather than just payload
//! bytes.

use std::borrow::Borrow;
use std::cmp::Ordering as CmpOrdering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use crossbeam_epoch as epoch;
use crossbeam_skiplist::base::SkipList;
use parking_lot::Mutex;

use super::bloom::{key_hash, AtomicBloom};
use super::types::{Entry, SeqNo};
use super::wal::SegmentId;

/// Estimated bytes per entry beyond key and value: the skiplist node and its
/// tower, two `Bytes` handles and their shared allocation header.
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Filter bits per entry, for a memtable full of the smallest entries (each
/// is charged at least `ENTRY_OVERHEAD_BYTES`); with typical keys and values
/// there are several times fewer entries and far fewer false positives. The
/// filter costs `10 / 8 / 128`, about 1%, of the memtable budget.
const FILTER_BITS_PER_ENTRY: u32 = 10;

/// The filter is sized for at most this many entries (a 20 MiB filter, for a
/// 2 GiB memtable budget), so a huge or unbounded budget cannot make every
/// new memtable allocate a huge filter up front. A bigger memtable still
/// works; its filter only answers "maybe" more often.
const FILTER_MAX_ENTRIES: usize = 16 << 20;

/// How many entries a [`MemTableIter`] copies out per skiplist descent.
const ITER_CHUNK: usize = 128;

/// A key and one of its versions. `prefix` caches the key's first sixteen
/// bytes (big-endian, zero-padded) inside the skiplist node, so most
/// comparisons during a search finish without touching the key's bytes
/// elsewhere in memory: the search is bound by cache misses, and this halves
/// them. Sixteen rather than eight because the keyspace's keys start with a
/// two-byte partition and then usually a common text prefix (`user:`,
/// `key:0000`): with eight bytes, the keys of one partition all tied on the
/// prefix and every comparison near the bottom of the search went to
/// `memcmp` (a third of a `get`'s CPU in the server-like benchmark).
#[derive(Clone, Debug)]
struct MemKey {
    prefix: u128,
    key: Bytes,
    seq: SeqNo,
}

impl MemKey {
    fn new(key: Bytes, seq: SeqNo) -> Self {
        MemKey {
            prefix: key_prefix(&key),
            key,
            seq,
        }
    }
}

/// The first sixteen bytes of `key` as a big-endian number, zero-padded.
/// Keys compare like their prefixes whenever the prefixes differ, because
/// padding with zeros (the smallest byte) keeps a shorter key first.
fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

/// A borrowed search key, so a lookup needs no allocation.
struct Probe<'a> {
    prefix: u128,
    key: &'a [u8],
    seq: SeqNo,
}

impl<'a> Probe<'a> {
    fn new(key: &'a [u8], seq: SeqNo) -> Self {
        Probe {
            prefix: key_prefix(key),
            key,
            seq,
        }
    }
}

/// Lets the skiplist (which searches through `Borrow`) compare stored keys
/// with a [`Probe`].
trait VersionedKey {
    fn view(&self) -> (u128, &[u8], SeqNo);
}

impl VersionedKey for MemKey {
    fn view(&self) -> (u128, &[u8], SeqNo) {
        (self.prefix, &self.key, self.seq)
    }
}

impl VersionedKey for Probe<'_> {
    fn view(&self) -> (u128, &[u8], SeqNo) {
        (self.prefix, self.key, self.seq)
    }
}

/// Key ascending, then sequence number descending (newest first).
fn compare(a: (u128, &[u8], SeqNo), b: (u128, &[u8], SeqNo)) -> CmpOrdering {
    a.0.cmp(&b.0)
        .then_with(|| a.1.cmp(b.1))
        .then_with(|| b.2.cmp(&a.2))
}

impl PartialEq for dyn VersionedKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for dyn VersionedKey + '_ {}
impl PartialOrd for dyn VersionedKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn VersionedKey + '_ {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        compare(self.view(), other.view())
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for MemKey {}
impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        compare(self.view(), other.view())
    }
}

impl<'a> Borrow<dyn VersionedKey + 'a> for MemKey {
    fn borrow(&self) -> &(dyn VersionedKey + 'a) {
        self
    }
}

/// Bytes of key and value data are carved out of chunks of this size, so an
/// insert costs no allocation of its own and dropping a memtable frees a few
/// hundred chunks instead of millions of small buffers.
const ARENA_CHUNK_BYTES: usize = 1 << 20;

/// The memtable's data arena: `BytesMut` chunks whose frozen slices the
/// entries share (a reference count per chunk). A value handed out by `get`
/// keeps its whole chunk alive until dropped; callers copy or drop values
/// promptly, so this costs at most a chunk per value in flight.
struct Arena {
    chunk: BytesMut,
}

impl Arena {
    /// `parts` copied back to back into shared memory.
    fn copy(&mut self, parts: [&[u8]; 2]) -> Bytes {
        let len = parts[0].len() + parts[1].len();
        if len > ARENA_CHUNK_BYTES / 8 {
            let mut own = BytesMut::with_capacity(len);
            own.extend_from_slice(parts[0]);
            own.extend_from_slice(parts[1]);
            return own.freeze();
        }
        if self.chunk.capacity() - self.chunk.len() < len {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK_BYTES);
        }
        self.chunk.extend_from_slice(parts[0]);
        self.chunk.extend_from_slice(parts[1]);
        self.chunk.split().freeze()
    }
}

/// A sorted, concurrent, multi-version map of recent writes.
pub(crate) struct MemTable {
    /// The guard-based skiplist rather than `SkipMap`: a point lookup under an
    /// epoch guard borrows the entry instead of taking a reference count on
    /// it (`SkipMap`'s `try_pin_loop`, 12% of a SET's CPU in a profile).
    map: SkipList<MemKey, Entry>,
    /// Every key inserted, so a `get` of a key this memtable lacks (most
    /// gets, once data outgrows one memtable) skips the skiplist search.
    filter: AtomicBloom,
    /// Only the engine's one writer at a time inserts, so this lock is never
    /// contended.
    arena: Mutex<Arena>,
    bytes: AtomicUsize,
    /// Set when the memtable is frozen: the commit-log segment the next
    /// memtable starts in. Once this memtable is flushed, every segment below
    /// it can go.
    successor_segment: AtomicU64,
}

impl MemTable {
    /// A memtable that will be frozen at about `budget_bytes`; its filter is
    /// sized for that.
    pub(crate) fn new(budget_bytes: usize) -> Self {
        let filter = AtomicBloom::new(
            (budget_bytes / ENTRY_OVERHEAD_BYTES).min(FILTER_MAX_ENTRIES),
            FILTER_BITS_PER_ENTRY,
        );
        MemTable {
            map: SkipList::new(epoch::default_collector().clone()),
            arena: Mutex::new(Arena {
                chunk: BytesMut::new(),
            }),
            bytes: AtomicUsize::new(filter.memory_bytes()),
            filter,
            successor_segment: AtomicU64::new(0),
        }
    }

    /// Insert `key` at `seq`. Sequence numbers are unique, so this never
    /// replaces an existing version.
    fn insert(&self, key: Bytes, seq: SeqNo, entry: Entry) {
        let value_bytes = match &entry {
            Entry::Value(value) => value.len(),
            Entry::Tombstone => 0,
        };
        self.bytes.fetch_add(
            key.len() + value_bytes + ENTRY_OVERHEAD_BYTES,
            Ordering::Relaxed,
        );
        let guard = &epoch::pin();
        self.map
            .insert(MemKey::new(key, seq), entry, guard)
            .release(guard);
    }

    /// `key` and `value` copied into the arena, and `key` added to the
    /// filter, before the entry is inserted (see `AtomicBloom` for why that
    /// suffices); the arena lock serialises the filter's writers.
    fn copy_and_filter(&self, key: &[u8], value: &[u8]) -> Bytes {
        let mut arena = self.arena.lock();
        self.filter.insert_hash_serialized(key_hash(key));
        arena.copy([key, value])
    }

    /// Insert a put, copying key and value into the arena.
    pub(crate) fn insert_put(&self, key: &[u8], value: &[u8], seq: SeqNo) {
        let joined = self.copy_and_filter(key, value);
        let key_bytes = joined.slice(..key.len());
        let value_bytes = joined.slice(key.len()..);
        self.insert(key_bytes, seq, Entry::Value(value_bytes));
    }

    /// Insert a delete (a tombstone) of `key`.
    pub(crate) fn insert_delete(&self, key: &[u8], seq: SeqNo) {
        let key_bytes = self.copy_and_filter(key, &[]);
        self.insert(key_bytes, seq, Entry::Tombstone);
    }

    /// The newest version of `key` with a sequence number `<= snapshot`.
    pub(crate) fn get(&self, key: &[u8], snapshot: SeqNo) -> Option<(SeqNo, Entry)> {
        if !self.filter.may_contain_hash(key_hash(key)) {
            return None;
        }
        let probe = Probe::new(key, snapshot);
        let guard = &epoch::pin();
        let found = self
            .map
            .lower_bound(Bound::Included(&probe as &dyn VersionedKey), guard)?;
        (found.key().key.as_ref() == key).then(|| (found.key().seq, found.value().clone()))
    }

    /// Search for `key` and discard the result, to bring the path an insert
    /// of `key` will take into the CPU cache.
    pub(crate) fn warm(&self, key: &[u8]) {
        let probe = Probe::new(key, SeqNo(u64::MAX));
        let guard = &epoch::pin();
        let _ = self
            .map
            .lower_bound(Bound::Included(&probe as &dyn VersionedKey), guard);
    }

    /// Estimated memory held, in bytes.
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether nothing was ever inserted.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn set_successor_segment(&self, segment: SegmentId) {
        self.successor_segment.store(segment.0, Ordering::Release);
    }

    pub(crate) fn successor_segment(&self) -> SegmentId {
        SegmentId(self.successor_segment.load(Ordering::Acquire))
    }
}

/// Where a [`MemTableIter`] resumes.
enum Position {
    Start(Bound<Bytes>),
    After(MemKey),
    Done,
}

/// Every version with a sequence number `<= snapshot`, from a start bound on,
/// in (key ascending, sequence descending) order. Holds the memtable alive and
/// copies entries out in small chunks, so it borrows nothing.
pub(crate) struct MemTableIter {
    mem: Arc<MemTable>,
    snapshot: SeqNo,
    position: Position,
    chunk: VecDeque<(Bytes, SeqNo, Entry)>,
}

impl MemTableIter {
    pub(crate) fn new(mem: Arc<MemTable>, start: Bound<&[u8]>, snapshot: SeqNo) -> Self {
        let start = match start {
            Bound::Included(key) => Bound::Included(Bytes::copy_from_slice(key)),
            Bound::Excluded(key) => Bound::Excluded(Bytes::copy_from_slice(key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        MemTableIter {
            mem,
            snapshot,
            position: Position::Start(start),
            chunk: VecDeque::with_capacity(ITER_CHUNK),
        }
    }

    fn refill(&mut self) {
        let map = &self.mem.map;
        let guard = &epoch::pin();
        let first = match &self.position {
            Position::Done => return,
            Position::Start(Bound::Unbounded) => map.front(guard),
            Position::Start(Bound::Included(key)) => {
                let probe = Probe::new(key, SeqNo(u64::MAX));
                map.lower_bound(Bound::Included(&probe as &dyn VersionedKey), guard)
            }
            Position::Start(Bound::Excluded(key)) => {
                // (key, 0) sorts after every version of `key`.
                let probe = Probe::new(key, SeqNo(0));
                map.lower_bound(Bound::Excluded(&probe as &dyn VersionedKey), guard)
            }
            Position::After(last) => {
                map.lower_bound(Bound::Excluded(last as &dyn VersionedKey), guard)
            }
        };
        let mut cursor = first;
        let mut last = None;
        let mut scanned = 0;
        while let Some(entry) = cursor {
            let key = entry.key();
            if key.seq <= self.snapshot {
                self.chunk
                    .push_back((key.key.clone(), key.seq, entry.value().clone()));
            }
            scanned += 1;
            if scanned == ITER_CHUNK {
                last = Some(key.clone());
                break;
            }
            cursor = entry.next();
        }
        self.position = match last {
            Some(key) => Position::After(key),
            None => Position::Done,
        };
    }
}

impl Iterator for MemTableIter {
    type Item = (Bytes, SeqNo, Entry);

    fn next(&mut self) -> Option<Self::Item> {
        while self.chunk.is_empty() {
            if matches!(self.position, Position::Done) {
                return None;
            }
            self.refill();
        }
        self.chunk.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> Entry {
        Entry::Value(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn get_returns_the_newest_version_visible_at_the_snapshot() {
        let mem = MemTable::new(1 << 20);
        mem.insert_put(b"k", b"old", SeqNo(1));
        mem.insert_put(b"k", b"new", SeqNo(5));
        mem.insert_delete(b"k", SeqNo(9));
        assert_eq!(mem.get(b"k", SeqNo(0)), None);
        assert_eq!(mem.get(b"k", SeqNo(4)), Some((SeqNo(1), value("old"))));
        assert_eq!(mem.get(b"k", SeqNo(8)), Some((SeqNo(5), value("new"))));
        assert_eq!(mem.get(b"k", SeqNo(9)), Some((SeqNo(9), Entry::Tombstone)));
        assert_eq!(mem.get(b"j", SeqNo(9)), None);
        assert_eq!(mem.get(b"kk", SeqNo(9)), None);
    }

    #[test]
    fn iteration_is_sorted_by_key_then_newest_first_and_respects_bounds() {
        let mem = Arc::new(MemTable::new(1 << 20));
        for i in 0..1000u32 {
            mem.insert_put(
                format!("{:04}", i % 300).as_bytes(),
                b"v",
                SeqNo(u64::from(i) + 1),
            );
        }
        let all: Vec<_> =
            MemTableIter::new(mem.clone(), Bound::Unbounded, SeqNo(u64::MAX)).collect();
        assert_eq!(all.len(), 1000);
        for pair in all.windows(2) {
            let ordered =
                pair[0].0 < pair[1].0 || (pair[0].0 == pair[1].0 && pair[0].1 > pair[1].1);
            assert!(ordered, "{:?} before {:?}", pair[0], pair[1]);
        }
        let from: Vec<_> =
            MemTableIter::new(mem.clone(), Bound::Excluded(b"0298"), SeqNo(u64::MAX)).collect();
        assert!(from.iter().all(|(k, _, _)| k.as_ref() == b"0299"));
        assert_eq!(from.len(), 3);
        let snap: Vec<_> = MemTableIter::new(mem, Bound::Included(b"0000"), SeqNo(10)).collect();
        assert_eq!(snap.len(), 10);
    }

    proptest::proptest! {
        /// The cached prefix must never change the order: keys that tie on
        /// their first sixteen bytes, shorter keys padded with zero bytes
        /// and keys that are zero bytes themselves all sort as plain byte
        /// strings, and every `get` finds the newest version.
        #[test]
        fn order_and_gets_match_a_sorted_map(
            suffixes in proptest::collection::vec(
                (
                    proptest::bool::ANY,
                    proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0xff]), 0..6),
                ),
                1..60,
            )
        ) {
            // Half the keys share fourteen bytes, so they tie on the prefix
            // or differ only in its last bytes or past it.
            let keys: Vec<Vec<u8>> = suffixes
                .into_iter()
                .map(|(shared, suffix)| {
                    let mut key = if shared { vec![7u8; 14] } else { Vec::new() };
                    key.extend(suffix);
                    key
                })
                .collect();
            let mem = Arc::new(MemTable::new(1 << 20));
            let mut model = std::collections::BTreeMap::new();
            for (i, key) in keys.iter().enumerate() {
                let seq = SeqNo(i as u64 + 1);
                mem.insert_put(key, &i.to_be_bytes(), seq);
                model.insert(key.clone(), seq);
            }
            let newest: Vec<_> =
                MemTableIter::new(mem.clone(), Bound::Unbounded, SeqNo(u64::MAX))
                    .map(|(key, seq, _)| (key.to_vec(), seq))
                    .fold(Vec::new(), |mut out: Vec<(Vec<u8>, SeqNo)>, (key, seq)| {
                        if out.last().map(|(last, _)| last != &key).unwrap_or(true) {
                            out.push((key, seq));
                        }
                        out
                    });
            let expected: Vec<_> = model.iter().map(|(k, s)| (k.clone(), *s)).collect();
            proptest::prop_assert_eq!(newest, expected);
            for (key, seq) in &model {
                proptest::prop_assert_eq!(mem.get(key, SeqNo(u64::MAX)).map(|(s, _)| s), Some(*seq));
            }
        }
    }
}
