//! Compaction: merge sorted runs into one, dropping what no reader can see.
//!
//! # Strategy: size-tiered (universal), and why
//!
//! Every flush adds a sorted run of one table. [`pick`] chooses a window of
//! neighbouring runs (newest first) to merge, in the manner of RocksDB's
//! universal compaction:
//!
//! 1. **Space**: if the runs above the oldest add up to more than
//!    `max_space_amplification` (4) times the oldest, merge everything (a full
//!    compaction), since in the worst case all of that is garbage.
//! 2. **Similar sizes**: from the newest run on, grow a window while the next
//!    (older) run is at most `size_ratio` (1.5) times the largest run in the
//!    window; a window of at least `min_merge_width` (4) runs is merged. Four
//!    flushes make a run four times as big, four of those one sixteen times
//!    as big, and so on: the classic size-tiered shape.
//! 3. **Count**: if there are more than `max_runs` (12), merge the newest ones
//!    so that reads never consult more than that many runs.
//!
//! Only neighbouring runs merge, so the runs' sequence-number ranges stay
//! disjoint and ordered, and "bottommost" simply means the window includes the
//! oldest run. (The merge itself still orders by sequence number, not by run
//! position.)
//!
//! Why tiered rather than leveled: this engine's load is the cluster's, which
//! is write-heavy (every replica write, hint and anti-entropy repair is a put)
//! and mostly point reads that bloom filters answer. Tiering writes each byte
//! about `log_4(data / memtable)` times (about 2-3 for 1 GB with 64 MiB
//! memtables) where leveling writes it about 10 times per level, and it is much
//! simpler to make correct. Its costs, stated with the defaults:
//!
//! - **Write amplification**: O(log_w(N / M)) with w = `min_merge_width` = 4,
//!   N the data size and M the memtable size; plus 1 for the log and 1 for the
//!   flush.
//! - **Read amplification**: a point read checks the memtables and, per run,
//!   one bloom filter (binary search picks the table); only about 1% of runs
//!   that lack the key cost a block read, and a present key costs one block.
//!   The number of runs is bounded by `max_runs` (12) and is O(log N) in
//!   steady state. A range scan merges one iterator per run.
//! - **Space amplification**: the runs above the oldest may hold up to
//!   `max_space_amplification` (4) times its size of overwritten or deleted
//!   data before a full compaction (worst case ~5x; with few overwrites, as in
//!   a load of distinct keys, ~1x), and during any merge its inputs and
//!   outputs coexist on disk, so a full compaction needs free space equal to
//!   the data size.
//!
//! # What a merge keeps
//!
//! For each key only its newest entry survives (older ones are shadowed). An
//! engine tombstone is dropped only in a bottommost merge, where nothing older
//! can lie beneath it. The caller's [`CompactionFilter`] sees every surviving
//! value; `Remove` drops the key in a bottommost merge and turns it into a
//! tombstone otherwise (so an older value below cannot resurface).
//!
//! Deciding (this module's [`pick`] and [`survivor`]) is kept apart from
//! doing ([`merge_runs`]), and the deciding half is pure and unit-tested.

use std::ops::{Bound, Range};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::cache::BlockCache;
use super::merge::{MergeIter, Source};
use super::options::{CompactionFilter, FilterDecision};
use super::rate_limiter::RateLimiter;
use super::sstable::{SsTable, SsTableBuilder, TableOptions};
use super::types::{Entry, TableId};
use super::version::Run;
use crate::error::{Error, Result};

/// The knobs of [`pick`]. See the module doc for what each rule does.
#[derive(Clone, Debug)]
pub(crate) struct TieringPolicy {
    pub min_merge_width: usize,
    pub max_merge_width: usize,
    pub size_ratio: f64,
    pub max_space_amplification: f64,
    pub max_runs: usize,
}

impl Default for TieringPolicy {
    fn default() -> Self {
        TieringPolicy {
            min_merge_width: 4,
            max_merge_width: 16,
            size_ratio: 1.5,
            max_space_amplification: 4.0,
            max_runs: 12,
        }
    }
}

/// Which neighbouring runs to merge next, as a range of indices into
/// `run_bytes` (the runs' sizes, newest first), or `None` if the shape is fine.
pub(crate) fn pick(run_bytes: &[u64], policy: &TieringPolicy) -> Option<Range<usize>> {
    let n = run_bytes.len();
    if n < 2 {
        return None;
    }
    let newer: u64 = run_bytes[..n - 1].iter().sum();
    let oldest = run_bytes[n - 1].max(1);
    if newer as f64 > policy.max_space_amplification * oldest as f64 {
        return Some(0..n);
    }
    for start in 0..n {
        let mut largest: u64 = run_bytes[start].max(1);
        let mut end = start + 1;
        while end < n
            && end - start < policy.max_merge_width
            && run_bytes[end] as f64 <= policy.size_ratio * largest as f64
        {
            largest = largest.max(run_bytes[end]);
            end += 1;
        }
        if end - start >= policy.min_merge_width {
            return Some(start..end);
        }
    }
    if n > policy.max_runs {
        let width = (n - policy.max_runs + 1).max(policy.min_merge_width).min(n);
        return Some(0..width);
    }
    None
}

/// What becomes of the newest entry of a key in a merge: `None` drops it.
pub(crate) fn survivor(
    key: &[u8],
    entry: Entry,
    bottommost: bool,
    filter: Option<&dyn CompactionFilter>,
) -> Option<Entry> {
    match entry {
        Entry::Tombstone => (!bottommost).then_some(Entry::Tombstone),
        Entry::Value(value) => {
            let decision = filter.map_or(FilterDecision::Keep, |f| f.filter(key, &value));
            match decision {
                FilterDecision::Keep => Some(Entry::Value(value)),
                FilterDecision::Remove => (!bottommost).then_some(Entry::Tombstone),
            }
        }
    }
}

/// Everything a merge needs besides its inputs.
pub(crate) struct MergeContext<'a> {
    pub bottommost: bool,
    pub filter: Option<&'a dyn CompactionFilter>,
    pub target_table_bytes: u64,
    pub limiter: Option<&'a RateLimiter>,
    pub table: &'a TableOptions,
    pub cache: &'a Arc<BlockCache>,
    /// Set when the engine closes: the merge gives up (its outputs are
    /// removed; the inputs stay live).
    pub cancel: &'a AtomicBool,
}

/// What [`merge_runs`] wrote.
pub(crate) struct MergeOutput {
    /// The new run's tables in key order (empty if nothing survived).
    pub tables: Vec<Arc<SsTable>>,
    pub entries_read: u64,
    pub entries_written: u64,
}

/// Merge `inputs` (neighbouring runs) into new tables. `new_table` hands out
/// an id and a path for each output table. On error every output file written
/// so far is removed.
pub(crate) fn merge_runs(
    inputs: &[Arc<Run>],
    ctx: &MergeContext<'_>,
    mut new_table: impl FnMut() -> (TableId, PathBuf),
) -> Result<MergeOutput> {
    let sources: Vec<Source> = inputs
        .iter()
        .map(|run| Box::new(run.iter(Bound::Unbounded)) as Source)
        .collect();
    let mut output = MergeOutput {
        tables: Vec::new(),
        entries_read: 0,
        entries_written: 0,
    };
    let mut builder: Option<(SsTableBuilder, TableId, PathBuf)> = None;
    let result = (|| -> Result<()> {
        let mut last_key: Option<Bytes> = None;
        let mut unthrottled = 0u64;
        for item in MergeIter::new(sources) {
            let (key, seq, entry) = item?;
            output.entries_read += 1;
            if output.entries_read % 1024 == 0 && ctx.cancel.load(Ordering::Relaxed) {
                return Err(Error::Closed("storage engine"));
            }
            if last_key.as_ref() == Some(&key) {
                continue;
            }
            let Some(entry) = survivor(&key, entry, ctx.bottommost, ctx.filter) else {
                last_key = Some(key);
                continue;
            };
            if builder.is_none() {
                let (id, path) = new_table();
                builder = Some((SsTableBuilder::create(&path, id, ctx.table)?, id, path));
            }
            if let Some((b, _, _)) = builder.as_mut() {
                b.add(&key, seq, &entry)?;
                output.entries_written += 1;
                if let Some(limiter) = ctx.limiter {
                    let value_len = match &entry {
                        Entry::Value(v) => v.len(),
                        Entry::Tombstone => 0,
                    };
                    unthrottled += (key.len() + value_len + 16) as u64;
                    // Ask the limiter per 64 KiB, not per entry: it takes a lock.
                    if unthrottled >= 64 << 10 {
                        limiter.acquire(unthrottled);
                        unthrottled = 0;
                    }
                }
                if b.approximate_bytes() >= ctx.target_table_bytes {
                    if let Some((b, id, path)) = builder.take() {
                        output.tables.push(finish(b, id, &path, ctx.cache)?);
                    }
                }
            }
            last_key = Some(key);
        }
        if let Some((b, id, path)) = builder.take() {
            output.tables.push(finish(b, id, &path, ctx.cache)?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(output),
        Err(err) => {
            if let Some((b, _, _)) = builder.take() {
                let _ = b.abandon();
            }
            for table in &output.tables {
                let _ = std::fs::remove_file(table.path());
            }
            Err(err)
        }
    }
}

fn finish(
    builder: SsTableBuilder,
    id: TableId,
    path: &std::path::Path,
    cache: &Arc<BlockCache>,
) -> Result<Arc<SsTable>> {
    builder.finish()?;
    SsTable::open(path, id, cache.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn four_similar_fresh_runs_merge_and_a_lone_big_run_waits() {
        let policy = TieringPolicy::default();
        assert_eq!(pick(&[64 * MB; 3], &policy), None);
        assert_eq!(pick(&[64 * MB; 4], &policy), Some(0..4));
        assert_eq!(pick(&[64 * MB, 64 * MB, 1024 * MB], &policy), None);
        assert_eq!(pick(&[64 * MB], &policy), None);
        assert_eq!(pick(&[], &policy), None);
    }

    #[test]
    fn the_window_stops_at_a_run_much_bigger_than_the_window() {
        let policy = TieringPolicy::default();
        let runs = [64 * MB, 64 * MB, 64 * MB, 64 * MB, 2048 * MB, 4096 * MB];
        assert_eq!(pick(&runs, &policy), Some(0..4));
        // Four flushes do not merge into the run that four earlier ones made.
        let runs = [64 * MB, 64 * MB, 64 * MB, 64 * MB, 256 * MB];
        assert_eq!(pick(&runs, &policy), Some(0..4));
        // Four runs of a tier merge into the next tier.
        let runs = [256 * MB, 250 * MB, 240 * MB, 256 * MB, 4096 * MB];
        assert_eq!(pick(&runs, &policy), Some(0..4));
    }

    #[test]
    fn a_steady_load_rewrites_each_byte_about_log4_times() {
        // Simulate 256 flushes of 64 MiB with merges of distinct keys.
        let policy = TieringPolicy::default();
        let mut runs: Vec<u64> = Vec::new();
        let (mut flushed, mut rewritten) = (0u64, 0u64);
        for _ in 0..256 {
            runs.insert(0, 64 * MB);
            flushed += 64 * MB;
            while let Some(range) = pick(&runs, &policy) {
                let merged: u64 = runs[range.clone()].iter().sum();
                rewritten += merged;
                runs.splice(range, [merged]);
            }
        }
        let amplification = rewritten as f64 / flushed as f64;
        // log4(256) = 4 tiers above the flushes.
        assert!(
            amplification <= 4.5,
            "compaction rewrote each byte {amplification} times"
        );
        assert!(runs.len() <= policy.max_runs);
    }

    #[test]
    fn too_much_garbage_above_the_oldest_run_forces_a_full_merge() {
        let policy = TieringPolicy::default();
        assert_eq!(pick(&[300 * MB, 10 * MB], &policy), Some(0..2));
        assert_eq!(
            pick(&[40 * MB, 40 * MB, 240 * MB, 240 * MB, 240 * MB], &policy),
            None
        );
    }

    #[test]
    fn the_number_of_runs_stays_bounded() {
        let policy = TieringPolicy::default();
        // Each run much bigger than all newer ones together: no ratio window.
        let runs: Vec<u64> = (0..14).map(|i| 1u64 << (i * 2)).collect();
        let picked = pick(&runs, &policy).expect("too many runs must trigger a merge");
        assert_eq!(picked.start, 0);
        assert!(runs.len() - picked.len() < policy.max_runs);
    }

    struct DropOdd;
    impl CompactionFilter for DropOdd {
        fn filter(&self, _key: &[u8], value: &[u8]) -> FilterDecision {
            if value.first().is_some_and(|b| b % 2 == 1) {
                FilterDecision::Remove
            } else {
                FilterDecision::Keep
            }
        }
    }

    #[test]
    fn tombstones_and_filtered_values_vanish_only_at_the_bottom() {
        let odd = Entry::Value(Bytes::from_static(&[1]));
        let even = Entry::Value(Bytes::from_static(&[2]));
        let filter: &dyn CompactionFilter = &DropOdd;
        assert_eq!(survivor(b"k", Entry::Tombstone, true, None), None);
        assert_eq!(
            survivor(b"k", Entry::Tombstone, false, None),
            Some(Entry::Tombstone)
        );
        assert_eq!(survivor(b"k", odd.clone(), true, Some(filter)), None);
        assert_eq!(
            survivor(b"k", odd.clone(), false, Some(filter)),
            Some(Entry::Tombstone)
        );
        assert_eq!(survivor(b"k", even.clone(), true, Some(filter)), Some(even));
        assert_eq!(survivor(b"k", odd.clone(), true, None), Some(odd));
    }
}
