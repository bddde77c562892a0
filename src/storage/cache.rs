//! The block cache: decoded SSTable data blocks shared by every table of an
//! engine, bounded by bytes.
//!
//! # Design
//!
//! - **Keyed by `(CacheSlot, block offset)`**, where the slot is a number
//!   the cache hands to each `SsTable::open` (`BlockCache::new_slot`), not
//!   the table's id: even if an engine ever reused a `TableId` for a
//!   different file, or two engines shared one cache, no table could be
//!   served another's blocks. A closed table's blocks stop being referenced
//!   and age out.
//! - **Sharded CLOCK, not LRU.** A hit must be cheap and must not serialise
//!   readers: it takes a shard's *read* lock, sets the entry's "referenced"
//!   bit (a relaxed atomic store) and clones an `Arc`. A true LRU would have to
//!   move the entry in a list on every hit, which needs the write lock. CLOCK
//!   approximates LRU (an entry survives one sweep of the hand per hit) and is
//!   what many databases use for their buffer pools. Only a miss takes the
//!   write lock of one of [`SHARDS`] shards.
//! - **Bounded by bytes.** Each entry is charged its block size plus a fixed
//!   bookkeeping overhead. Blocks larger than a shard's share are not cached.
//! - **Pinned memory is charged here too.** Every open `SsTable` keeps its
//!   block index and bloom filter resident and registers their size with the
//!   cache (`BlockCache::pin`); the room left for blocks is
//!   `capacity - pinned`. So the engine's read-side memory is bounded by the
//!   one capacity it configures, as long as the pinned part fits (about 2.8
//!   bytes per key with 10 filter bits per key, 16-byte keys and 4 KiB
//!   blocks; see the `sstable` module doc). When pinned memory exceeds the
//!   capacity, the cache holds no blocks and [`CacheStats::pinned_bytes`] shows
//!   why.
//! - **Read counters live here** ([`BlockCache::read_stats`]): one cache per
//!   engine means per-engine counters, and tests with their own cache see only
//!   their own reads. Counters are striped over cache lines so two reader
//!   threads do not bounce one line between cores on every `get`.

use crate::storage::sstable::block::Block;
use crate::storage::sstable::{ReadStats, ReadStatsSnapshot};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Number of independently locked shards (a power of two).
pub const SHARDS: usize = 16;
/// Bytes charged per cached block on top of its data: map slot, slot vector
/// entry, `Arc` and `Block` headers.
const ENTRY_OVERHEAD: usize = 128;

/// Counters from [`BlockCache::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found their block.
    pub hits: u64,
    /// Lookups that did not (the block was then read from disk).
    pub misses: u64,
    /// Bytes charged for the blocks held now.
    pub bytes: u64,
    /// Blocks held now.
    pub blocks: u64,
    /// Bytes of table indexes and filters charged against the capacity.
    pub pinned_bytes: u64,
    /// The configured capacity in bytes.
    pub capacity_bytes: u64,
}

const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter many threads bump without sharing a cache line.
pub(crate) struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| Stripe::default()),
        }
    }
}

impl std::fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

fn this_threads_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl StripedCounter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[this_threads_stripe()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One open table's namespace in the cache, from [`BlockCache::new_slot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheSlot(u64);

/// Where a block lives: which open table, at which byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    pub(crate) table: CacheSlot,
    pub(crate) offset: u64,
}

impl BlockKey {
    fn shard(&self) -> usize {
        let h = (self.table.0 ^ self.offset.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

struct Slot {
    key: BlockKey,
    block: Arc<Block>,
    charge: usize,
    referenced: AtomicBool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<BlockKey, usize, ahash::RandomState>,
    slots: Vec<Slot>,
    hand: usize,
    bytes: usize,
}

impl Shard {
    /// Evicts unreferenced slots until `needed` more bytes fit in `budget`.
    fn make_room(&mut self, needed: usize, budget: usize) {
        // Each slot is passed at most twice: once to clear its bit, once to go.
        let mut steps = 2 * self.slots.len() + 1;
        while self.bytes + needed > budget && !self.slots.is_empty() && steps > 0 {
            steps -= 1;
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let slot = &self.slots[self.hand];
            if slot.referenced.swap(false, Ordering::Relaxed) {
                self.hand += 1;
                continue;
            }
            let evicted = self.slots.swap_remove(self.hand);
            self.index.remove(&evicted.key);
            self.bytes -= evicted.charge;
            if let Some(moved) = self.slots.get(self.hand) {
                self.index.insert(moved.key, self.hand);
            }
            // Step past the slot just moved here from the end: the end holds
            // the newest blocks, and examining it now (as this loop once
            // did) evicted each new block at the next insert, unless read
            // in between, while older blocks nobody read were never
            // reached. The moved block waits for the next sweep instead.
            self.hand += 1;
        }
    }
}

/// A sharded CLOCK cache of decoded data blocks, bounded by bytes.
pub struct BlockCache {
    shards: Box<[RwLock<Shard>]>,
    next_slot: AtomicU64,
    capacity: usize,
    pinned: AtomicUsize,
    hits: StripedCounter,
    misses: StripedCounter,
    read_stats: ReadStats,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks, indexes and filters.
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            next_slot: AtomicU64::new(0),
            capacity: capacity_bytes,
            pinned: AtomicUsize::new(0),
            hits: StripedCounter::default(),
            misses: StripedCounter::default(),
            read_stats: ReadStats::default(),
        }
    }

    /// Hit/miss counters and current occupancy.
    pub fn stats(&self) -> CacheStats {
        let (mut bytes, mut blocks) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = shard.read();
            bytes += shard.bytes as u64;
            blocks += shard.slots.len() as u64;
        }
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            bytes,
            blocks,
            pinned_bytes: self.pinned.load(Ordering::Relaxed) as u64,
            capacity_bytes: self.capacity as u64,
        }
    }

    /// The read counters of every table opened with this cache.
    pub fn read_stats(&self) -> ReadStatsSnapshot {
        self.read_stats.snapshot()
    }

    pub(crate) fn counters(&self) -> &ReadStats {
        &self.read_stats
    }

    /// A fresh namespace for one opened table's blocks.
    pub(crate) fn new_slot(&self) -> CacheSlot {
        CacheSlot(self.next_slot.fetch_add(1, Ordering::Relaxed))
    }

    /// Charges `bytes` of resident table memory (index, filter) to the cache.
    pub(crate) fn pin(&self, bytes: usize) {
        self.pinned.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Returns memory charged with [`pin`](Self::pin).
    pub(crate) fn unpin(&self, bytes: usize) {
        self.pinned.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn shard_budget(&self) -> usize {
        self.capacity
            .saturating_sub(self.pinned.load(Ordering::Relaxed))
            / SHARDS
    }

    /// The cached block at `key`; `count` says whether this lookup goes into
    /// the hit/miss counters (gets do, scans do not).
    pub(crate) fn get(&self, key: BlockKey, count: bool) -> Option<Arc<Block>> {
        let shard = self.shards[key.shard()].read();
        let found = shard.index.get(&key).map(|&i| {
            let slot = &shard.slots[i];
            // Load first: a hot block is already marked, and a store would
            // take its cache line exclusive on every hit, bouncing it
            // between the cores reading it.
            if !slot.referenced.load(Ordering::Relaxed) {
                slot.referenced.store(true, Ordering::Relaxed);
            }
            Arc::clone(&slot.block)
        });
        drop(shard);
        if count {
            match found {
                Some(_) => self.hits.incr(),
                None => self.misses.incr(),
            }
        }
        found
    }

    /// Caches `block` unless it is larger than a shard's share of the budget.
    pub(crate) fn insert(&self, key: BlockKey, block: Arc<Block>) {
        let charge = block.size() + ENTRY_OVERHEAD;
        let budget = self.shard_budget();
        let mut shard = self.shards[key.shard()].write();
        if shard.index.contains_key(&key) {
            return;
        }
        shard.make_room(charge, budget);
        if shard.bytes + charge > budget {
            return;
        }
        let at = shard.slots.len();
        shard.slots.push(Slot {
            key,
            block,
            charge,
            referenced: AtomicBool::new(false),
        });
        shard.index.insert(key, at);
        shard.bytes += charge;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn block(len: usize) -> Arc<Block> {
        // An all-zero entry region is not a valid block, but a block holding
        // one restart at 0 and `len` filler bytes is all the cache looks at.
        let mut data = vec![0u8; len];
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        Arc::new(Block::decode(Bytes::from(data)).unwrap())
    }

    fn key(table: u64, offset: u64) -> BlockKey {
        BlockKey {
            table: CacheSlot(table),
            offset,
        }
    }

    #[test]
    fn holds_what_fits_and_counts_hits_and_misses() {
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get(key(1, 0), true).is_none());
        cache.insert(key(1, 0), block(100));
        assert!(cache.get(key(1, 0), true).is_some());
        assert!(cache.get(key(2, 0), true).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.blocks), (1, 2, 1));
    }

    #[test]
    fn never_holds_more_bytes_than_its_capacity() {
        let capacity = 64 * 1024;
        let cache = BlockCache::new(capacity);
        for i in 0..1000 {
            cache.insert(key(1, i * 4096), block(1000));
            assert!(cache.stats().bytes <= capacity as u64);
        }
        assert!(cache.stats().blocks > 0);
    }

    #[test]
    fn recently_used_blocks_survive_a_sweep() {
        let cache = BlockCache::new(SHARDS * 10 * (1000 + ENTRY_OVERHEAD));
        let hot = key(7, 0);
        cache.insert(hot, block(1000));
        for i in 1..5000 {
            assert!(cache.get(hot, true).is_some(), "hot block evicted at {i}");
            cache.insert(key(1, i * 4096), block(1000));
        }
    }

    #[test]
    fn pinned_memory_leaves_less_room_for_blocks() {
        let cache = BlockCache::new(SHARDS * 4096);
        cache.pin(SHARDS * 4096);
        cache.insert(key(1, 0), block(100));
        assert_eq!(cache.stats().blocks, 0);
        cache.unpin(SHARDS * 4096);
        cache.insert(key(1, 0), block(100));
        assert_eq!(cache.stats().blocks, 1);
        assert_eq!(cache.stats().pinned_bytes, 0);
    }

    #[test]
    fn a_working_set_that_fits_displaces_blocks_nobody_reads() {
        let per_shard = 40;
        let cache = BlockCache::new(SHARDS * per_shard * (1000 + ENTRY_OVERHEAD));
        for i in 0..(SHARDS * per_shard) as u64 {
            cache.insert(key(1, i * 4096), block(1000));
        }
        let working_set: Vec<_> = (0..(SHARDS * per_shard / 4) as u64)
            .map(|i| key(2, i * 4096))
            .collect();
        for _ in 0..3 {
            for &k in &working_set {
                if cache.get(k, false).is_none() {
                    cache.insert(k, block(1000));
                }
            }
        }
        let hits = working_set
            .iter()
            .filter(|&&k| cache.get(k, false).is_some())
            .count();
        assert_eq!(hits, working_set.len());
    }
}
