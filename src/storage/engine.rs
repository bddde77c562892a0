//! [`Engine`]: the commit log, memtables, SSTables, manifest and background
//! threads put together. The architecture is described in the module doc of
//! [`crate::storage`].

use std::fs::{self, File, OpenOptions};
use std::ops::Bound;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::batch::{BatchOp, BatchOps, WriteBatch};
use super::cache::{BlockCache, StripedCounter};
use super::compaction::{self, MergeContext, TieringPolicy};
use super::manifest::{self, ManifestData};
use super::memtable::{MemTable, MemTableIter};
use super::merge::{MergeIter, Source};
use super::options::Options;
use super::rate_limiter::RateLimiter;
use super::sstable::{SsTable, SsTableBuilder};
use super::types::{Entry, SeqNo, TableId};
use super::version::{table_path, Run, SuperVersion, TableHandle};
use super::wal::{self, GroupCommit, SegmentId, WalWriter};
use crate::config::FsyncPolicy;
use crate::error::{Error, Result};

const LOCK_FILE: &str = "LOCK";
/// How often the background syncer runs under `everysec` (and hands the log
/// buffer to the OS under `no`).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A single-node LSM key-value store. Cheap to clone (an `Arc` inside); every
/// method may be called from many threads at once.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

/// Owns the background threads; closing happens when the last [`Engine`]
/// clone is dropped, if nobody called [`Engine::close`] before.
struct Handle {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(err) = close(&self.inner, &self.threads) {
            tracing::warn!(%err, dir = %self.inner.dir.display(), "closing the storage engine on drop failed");
        }
    }
}

/// The state the write lock guards: the log writer and the memtable writes go
/// to, so that log order and sequence order are the same.
struct WriteState {
    wal: WalWriter,
    active: Arc<MemTable>,
    last_seq: SeqNo,
}

/// A flag with a condition variable, for waking background threads.
#[derive(Default)]
struct Signal {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    fn notify(&self) {
        *self.pending.lock() = true;
        self.cv.notify_all();
    }

    /// Wait until notified or `timeout` passed; consumes the notification.
    fn wait(&self, timeout: Duration) {
        let mut pending = self.pending.lock();
        if !*pending {
            self.cv.wait_for(&mut pending, timeout);
        }
        *pending = false;
    }
}

/// Counters bumped on every request are striped (a cache line per thread
/// stripe): as plain atomics side by side, every get and write took the one
/// line exclusive, bouncing it between the cores serving requests.
#[derive(Default)]
struct Counters {
    puts: StripedCounter,
    deletes: StripedCounter,
    gets: StripedCounter,
    batches: StripedCounter,
    scans: AtomicU64,
    flushes: AtomicU64,
    flushed_bytes: AtomicU64,
    compactions: AtomicU64,
    compacted_bytes_read: AtomicU64,
    compacted_bytes_written: AtomicU64,
    write_stalls: AtomicU64,
    write_stall_micros: AtomicU64,
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    cache: Arc<BlockCache>,
    /// The flock'ed lock file; dropped (unlocking) on close.
    lock_file: Mutex<Option<File>>,
    write: Mutex<WriteState>,
    /// Writers stalled on memtable space wait here; flushes notify it.
    space: Condvar,
    current: RwLock<Arc<SuperVersion>>,
    /// Readers see writes up to this sequence number: every write at or below
    /// it is completely in a memtable or a table.
    visible: AtomicU64,
    group: GroupCommit,
    /// The durable manifest as last stored; also serializes version edits.
    manifest: Mutex<ManifestData>,
    /// One flush at a time, in memtable order.
    flush_lock: Mutex<()>,
    /// One compaction at a time.
    compaction_lock: Mutex<()>,
    flush_signal: Signal,
    compaction_signal: Signal,
    sync_signal: Signal,
    limiter: RateLimiter,
    policy: TieringPolicy,
    closed: AtomicBool,
    /// The last background failure, reported to stalled writers.
    background_error: Mutex<Option<String>>,
    /// Set when the commit log failed; see `poison_on_error`.
    poisoned: Mutex<Option<String>>,
    counters: Counters,
}

/// Counters and gauges for `INFO` and the benchmark. Counters count since
/// open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Put operations (inside batches too).
    pub puts: u64,
    /// Delete operations (inside batches too).
    pub deletes: u64,
    /// Point reads.
    pub gets: u64,
    /// Write calls (batches, including single puts and deletes).
    pub write_batches: u64,
    /// Scans started.
    pub scans: u64,
    /// Commit-log fsync rounds (group commit leaders and the background syncer).
    pub log_fsyncs: u64,
    /// Bytes appended to the commit log.
    pub log_bytes: u64,
    /// The newest sequence number.
    pub last_seq: u64,
    /// The newest sequence number known to be on disk.
    pub synced_seq: u64,
    /// Memtables flushed to SSTables.
    pub flushes: u64,
    /// Bytes of SSTables written by flushes.
    pub flushed_bytes: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// SSTable bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// SSTable bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Live SSTables.
    pub tables: u64,
    /// Sorted runs (a point read checks one table per run).
    pub runs: u64,
    /// Bytes of live SSTables on disk.
    pub table_bytes: u64,
    /// Memory held by SSTables (filters, indexes) outside the block cache.
    pub table_memory_bytes: u64,
    /// Estimated bytes in all memtables (active and frozen).
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for their flush.
    pub frozen_memtables: u64,
    /// Writes that had to wait for a flush.
    pub write_stalls: u64,
    /// Total time writers waited, in microseconds.
    pub write_stall_micros: u64,
    /// Point reads that consulted a table's bloom filter.
    pub bloom_checks: u64,
    /// Of those, the ones the filter answered "absent" (no block read).
    pub bloom_negatives: u64,
    /// Data blocks point reads fetched (from the cache or from disk).
    pub data_block_reads: u64,
    /// Of those, the ones read from disk.
    pub block_disk_reads: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// Bytes of data blocks in the block cache.
    pub cache_bytes: u64,
    /// Bytes of table indexes and filters charged to the block cache.
    pub cache_pinned_bytes: u64,
}

/// An ordered snapshot iterator over a key range; skips deleted keys. The
/// snapshot is taken when the scan is created: later writes are not seen, and
/// flushes or compactions meanwhile do not disturb it.
pub struct Scan {
    merge: MergeIter,
    end: Bound<Bytes>,
    snapshot: SeqNo,
    last_key: Option<Bytes>,
    done: bool,
    /// Keeps the memtables and tables of the snapshot alive.
    _version: Arc<SuperVersion>,
}

impl Iterator for Scan {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (key, seq, entry) = match self.merge.next()? {
                Ok(item) => item,
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            };
            let past_end = match &self.end {
                Bound::Included(end) => key > *end,
                Bound::Excluded(end) => key >= *end,
                Bound::Unbounded => false,
            };
            if past_end {
                self.done = true;
                return None;
            }
            if seq > self.snapshot || self.last_key.as_ref() == Some(&key) {
                continue;
            }
            self.last_key = Some(key.clone());
            if let Entry::Value(value) = entry {
                return Some(Ok((key, value)));
            }
        }
        None
    }
}

impl Engine {
    /// Open (or create) the engine in `dir`: take the directory lock, load the
    /// manifest, open every live SSTable, replay the commit log, and start the
    /// background threads.
    pub fn open(dir: &Path, opts: Options) -> Result<Engine> {
        fs::create_dir_all(dir)?;
        let lock_file = lock_dir(dir)?;
        let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));

        let manifest_data = match manifest::load(dir)? {
            Some(data) => data,
            None => {
                refuse_without_manifest(dir)?;
                let fresh = ManifestData {
                    next_table_id: TableId(1),
                    log_start: SegmentId(1),
                    flushed_seq: SeqNo(0),
                    runs: Vec::new(),
                };
                manifest::store(dir, &fresh)?;
                fresh
            }
        };

        let mut runs = Vec::with_capacity(manifest_data.runs.len());
        let mut max_table_seq = SeqNo(0);
        for run_ids in &manifest_data.runs {
            let mut tables = Vec::with_capacity(run_ids.len());
            for &id in run_ids {
                let table = open_table(dir, id, &cache)?;
                max_table_seq = max_table_seq.max(table.meta().max_seq);
                tables.push(TableHandle::new(table));
            }
            runs.push(Arc::new(Run { tables }));
        }
        remove_orphans(dir, &manifest_data)?;

        let mem = Arc::new(MemTable::new(opts.memtable_bytes));
        let report = wal::replay(
            dir,
            manifest_data.log_start,
            manifest_data.flushed_seq,
            |seq, op| {
                match op {
                    BatchOp::Put(key, value) => mem.insert_put(key, value, seq),
                    BatchOp::Delete(key) => mem.insert_delete(key, seq),
                }
                Ok(())
            },
        )?;
        let last_seq = report
            .last_seq
            .unwrap_or_default()
            .max(manifest_data.flushed_seq)
            .max(max_table_seq);
        let segments = wal::list_segments(dir)?;
        let next_segment = SegmentId(
            segments
                .last()
                .map_or(0, |s| s.0)
                .max(manifest_data.log_start.0.saturating_sub(1))
                + 1,
        );
        let mut wal = WalWriter::create(dir, next_segment, last_seq, opts.wal_segment_bytes)?;
        wal.set_keep_retired(opts.fsync != FsyncPolicy::No);
        if report.records > 0 || report.bytes_dropped > 0 {
            tracing::info!(
                dir = %dir.display(),
                records = report.records,
                bytes_dropped = report.bytes_dropped,
                last_seq = last_seq.0,
                "storage engine recovered its commit log"
            );
        }

        let version = SuperVersion {
            active: mem.clone(),
            frozen: Vec::new(),
            runs,
        };
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            cache,
            lock_file: Mutex::new(Some(lock_file)),
            write: Mutex::new(WriteState {
                wal,
                active: mem,
                last_seq,
            }),
            space: Condvar::new(),
            current: RwLock::new(Arc::new(version)),
            visible: AtomicU64::new(last_seq.0),
            // Everything recovered from the log is on disk already.
            group: GroupCommit::new(last_seq),
            manifest: Mutex::new(manifest_data),
            flush_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            flush_signal: Signal::default(),
            compaction_signal: Signal::default(),
            sync_signal: Signal::default(),
            limiter: RateLimiter::new(opts.compaction_bytes_per_sec),
            policy: TieringPolicy::default(),
            closed: AtomicBool::new(false),
            background_error: Mutex::new(None),
            poisoned: Mutex::new(None),
            counters: Counters::default(),
            opts,
        });
        inner.delete_segments_below(inner.manifest.lock().log_start)?;

        let mut threads = Vec::new();
        let spawn = |name: &str, body: fn(&Inner)| -> Result<JoinHandle<()>> {
            let inner = inner.clone();
            Ok(std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || body(&inner))?)
        };
        if inner.opts.fsync != FsyncPolicy::Always {
            threads.push(spawn("ringkv-log-sync", Inner::sync_loop)?);
        }
        if inner.opts.background_threads {
            threads.push(spawn("ringkv-flush", Inner::flush_loop)?);
            threads.push(spawn("ringkv-compact", Inner::compaction_loop)?);
        }
        Ok(Engine {
            handle: Arc::new(Handle {
                inner,
                threads: Mutex::new(threads),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Set `key` to `value`. Durable on return under `fsync always`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        with_scratch_batch(|batch| {
            batch.put(key, value);
            self.write(batch).map(|_| ())
        })
    }

    /// Delete `key`. Durable on return under `fsync always`.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        with_scratch_batch(|batch| {
            batch.delete(key);
            self.write(batch).map(|_| ())
        })
    }

    /// Apply `batch` atomically and return the sequence number of its last
    /// operation. Visible to readers on return; under `fsync always` also
    /// durable (sharing an fsync with concurrent writers).
    pub fn write(&self, batch: &WriteBatch) -> Result<SeqNo> {
        let seq = self.write_unsynced(batch)?;
        if self.inner().opts.fsync == FsyncPolicy::Always {
            self.wait_synced(seq)?;
        }
        Ok(seq)
    }

    /// Apply `batch` atomically without waiting for any fsync; visible on
    /// return. Pair with [`wait_synced`](Self::wait_synced) to pipeline
    /// durability (e.g. answer a whole batch of client commands after one
    /// wait).
    pub fn write_unsynced(&self, batch: &WriteBatch) -> Result<SeqNo> {
        self.inner().write_unsynced(batch)
    }

    /// Under `fsync always`, block until the log is on disk through `seq`
    /// (group commit: one fsync serves every writer waiting meanwhile). A
    /// no-op under the other policies, whose syncing is periodic or left to
    /// the OS.
    pub fn wait_synced(&self, seq: SeqNo) -> Result<()> {
        let inner = self.inner();
        if inner.opts.fsync != FsyncPolicy::Always {
            return Ok(());
        }
        inner.check_open()?;
        inner.sync_through(seq)
    }

    /// The newest value of `key`, `None` if absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let inner = self.inner();
        inner.check_open()?;
        inner.counters.gets.incr();
        let (version, snapshot) = inner.snapshot();
        for mem in version.memtables() {
            if let Some((_, entry)) = mem.get(key, snapshot) {
                return Ok(into_value(entry));
            }
        }
        for run in &version.runs {
            if let Some(table) = run.table_for(key) {
                if let Some((_, entry)) = table.get(key)? {
                    return Ok(into_value(entry));
                }
            }
        }
        Ok(None)
    }

    /// Live keys and values in `[start, end]` (per the bounds), ascending,
    /// from a snapshot taken now.
    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let inner = self.inner();
        inner.check_open()?;
        inner.counters.scans.fetch_add(1, Ordering::Relaxed);
        let (version, snapshot) = inner.snapshot();
        let mut sources: Vec<Source> = Vec::new();
        for mem in version.memtables() {
            sources.push(Box::new(
                MemTableIter::new(mem.clone(), start, snapshot).map(Ok),
            ));
        }
        for run in &version.runs {
            sources.push(Box::new(run.iter(start)));
        }
        let end = match end {
            Bound::Included(key) => Bound::Included(Bytes::copy_from_slice(key)),
            Bound::Excluded(key) => Bound::Excluded(Bytes::copy_from_slice(key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(Scan {
            merge: MergeIter::new(sources),
            end,
            snapshot,
            last_key: None,
            done: false,
            _version: version,
        })
    }

    /// Live keys starting with `prefix`, ascending (the cluster scans one
    /// partition this way).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Scan> {
        match prefix_successor(prefix) {
            Some(end) => self.scan(Bound::Included(prefix), Bound::Excluded(&end)),
            None => self.scan(Bound::Included(prefix), Bound::Unbounded),
        }
    }

    /// Write every memtable out to SSTables and wait until that is done.
    pub fn flush(&self) -> Result<()> {
        let inner = self.inner();
        inner.check_open()?;
        {
            let mut state = inner.write.lock();
            inner.check_open()?;
            if !state.active.is_empty() {
                inner.freeze(&mut state)?;
            }
        }
        loop {
            if !inner.flush_oldest()? {
                return Ok(());
            }
        }
    }

    /// Flush, then merge every sorted run into one (a bottommost merge: it
    /// drops every tombstone and applies the compaction filter). Waits until
    /// done. Not throttled: the caller asked for it now.
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let inner = self.inner();
        let _compacting = inner.compaction_lock.lock();
        let runs = inner.current.read().runs.len();
        if runs > 0 {
            inner.compact_runs(0..runs, false)?;
        }
        Ok(())
    }

    /// fsync the commit log now, whatever the policy.
    pub fn sync(&self) -> Result<()> {
        let inner = self.inner();
        inner.check_open()?;
        let last = SeqNo(inner.visible.load(Ordering::Acquire));
        inner.sync_through(last)
    }

    /// Stop the background threads and fsync the log. Memtables are not
    /// flushed (the log holds them; the next open replays it). Every later
    /// call on any clone fails with [`Error::Closed`]; closing again is a
    /// no-op.
    pub fn close(&self) -> Result<()> {
        close(&self.handle.inner, &self.handle.threads)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EngineStats {
        self.inner().stats()
    }

    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.inner().dir
    }
}

fn close(inner: &Arc<Inner>, threads: &Mutex<Vec<JoinHandle<()>>>) -> Result<()> {
    {
        let _state = inner.write.lock();
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
    }
    inner.space.notify_all();
    inner.flush_signal.notify();
    inner.compaction_signal.notify();
    inner.sync_signal.notify();
    for thread in threads.lock().drain(..) {
        if thread.join().is_err() {
            tracing::error!("a storage background thread panicked");
        }
    }
    let result = {
        let mut state = inner.write.lock();
        state
            .wal
            .trim()
            .and_then(|()| state.wal.prepare_sync())
            .and_then(|(files, _)| {
                for file in files {
                    file.sync_data()?;
                }
                Ok(())
            })
    };
    *inner.lock_file.lock() = None;
    result
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("storage engine"));
        }
        Ok(())
    }

    /// The current version and the sequence number readers may see, taken
    /// together so that no write at or below the snapshot can be missing
    /// from the version (see the module doc of `storage`).
    fn snapshot(&self) -> (Arc<SuperVersion>, SeqNo) {
        let current = self.current.read();
        let snapshot = SeqNo(self.visible.load(Ordering::Acquire));
        (current.clone(), snapshot)
    }

    /// After the commit log failed to write or fsync, what is on disk is
    /// unknown (a failed fsync may have dropped dirty pages), so every later
    /// write fails rather than being acknowledged on top of a hole. Reads go
    /// on; reopening recovers whatever the log really holds.
    fn poison_on_error<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result {
            tracing::error!(%err, dir = %self.dir.display(), "commit log write failed; refusing further writes");
            self.poisoned.lock().get_or_insert_with(|| err.to_string());
        }
        result
    }

    fn check_not_poisoned(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            None => Ok(()),
            Some(err) => Err(Error::Io(std::io::Error::other(format!(
                "the commit log failed earlier ({err}); writes are refused until the engine is reopened"
            )))),
        }
    }

    fn write_unsynced(&self, batch: &WriteBatch) -> Result<SeqNo> {
        batch.check()?;
        self.warm_memtable_for(batch);
        let mut state = self.write.lock();
        self.check_open()?;
        self.check_not_poisoned()?;
        if batch.is_empty() {
            return Ok(state.last_seq);
        }
        self.make_room(&mut state)?;
        let first = SeqNo(state.last_seq.0 + 1);
        state.wal.append(first, batch)?;
        let mut ops = BatchOps::new(batch.encoded_ops());
        let mut seq = first;
        let (mut puts, mut deletes) = (0, 0);
        while let Ok(Some(op)) = ops.next_op() {
            match op {
                BatchOp::Put(key, value) => {
                    state.active.insert_put(key, value, seq);
                    puts += 1;
                }
                BatchOp::Delete(key) => {
                    state.active.insert_delete(key, seq);
                    deletes += 1;
                }
            }
            seq = SeqNo(seq.0 + 1);
        }
        let last = SeqNo(seq.0 - 1);
        state.last_seq = last;
        self.visible.store(last.0, Ordering::Release);
        if state.wal.should_write_out() {
            let written = state.wal.write_out();
            self.poison_on_error(written)?;
        }
        if state.wal.segment_bytes() >= self.opts.wal_segment_bytes {
            let next = SegmentId(state.wal.segment().0 + 1);
            let rotated = state.wal.rotate(next);
            self.poison_on_error(rotated)?;
        }
        drop(state);
        self.counters.puts.add(puts);
        if deletes > 0 {
            self.counters.deletes.add(deletes);
        }
        self.counters.batches.incr();
        Ok(last)
    }

    /// Walk the active memtable's skiplist to where `batch`'s keys will go,
    /// before the write lock is taken, so that the inserts under the lock
    /// find that path in the CPU cache. A skiplist insert is a search that
    /// misses the cache at nearly every level; done under the lock, those
    /// misses serialise every writer (the server's SET path, whose `get`
    /// no longer walks the skiplist when the memtable filter rules the key
    /// out). Only for small batches: a large one would evict its own path.
    /// If the memtable is frozen meanwhile, the walk was wasted, not wrong.
    fn warm_memtable_for(&self, batch: &WriteBatch) {
        const MAX_WARMED_OPS: u32 = 4;
        if batch.count() > MAX_WARMED_OPS {
            return;
        }
        let active = self.current.read().active.clone();
        let mut ops = BatchOps::new(batch.encoded_ops());
        while let Ok(Some(BatchOp::Put(key, _) | BatchOp::Delete(key))) = ops.next_op() {
            active.warm(key);
        }
    }

    /// Make sure the active memtable has room, freezing it if it is full; if
    /// too many frozen memtables wait for their flush, wait (bounded by
    /// `max_write_stall`) rather than grow memory.
    fn make_room(&self, state: &mut MutexGuard<'_, WriteState>) -> Result<()> {
        let mut stalled_since: Option<Instant> = None;
        let result = loop {
            if state.active.approximate_bytes() < self.opts.memtable_bytes {
                break Ok(());
            }
            let frozen = self.current.read().frozen.len();
            if frozen < self.opts.max_frozen_memtables.max(1) {
                break self.freeze(state);
            }
            if !self.opts.background_threads {
                // Nobody else will flush: do it here, without the write lock.
                let flushed = MutexGuard::unlocked(state, || self.flush_oldest());
                if let Err(err) = flushed {
                    break Err(err);
                }
                continue;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.opts.max_write_stall {
                break Err(Error::Timeout(format!(
                    "write stalled for {:?}: memtable flushes are behind",
                    self.opts.max_write_stall
                )));
            }
            if let Some(err) = self.background_error.lock().clone() {
                break Err(Error::Io(std::io::Error::other(format!(
                    "write stalled and the background flush is failing: {err}"
                ))));
            }
            self.check_open()?;
            self.space.wait_for(state, Duration::from_millis(100));
        };
        if let Some(since) = stalled_since {
            self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            self.counters
                .write_stall_micros
                .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        result
    }

    /// Freeze the active memtable: start a new log segment and a fresh
    /// memtable, and queue the old one for its flush.
    fn freeze(&self, state: &mut WriteState) -> Result<()> {
        let next = SegmentId(state.wal.segment().0 + 1);
        let rotated = state.wal.rotate(next);
        self.poison_on_error(rotated)?;
        let old = std::mem::replace(
            &mut state.active,
            Arc::new(MemTable::new(self.opts.memtable_bytes)),
        );
        old.set_successor_segment(next);
        {
            let mut current = self.current.write();
            let mut version = SuperVersion::clone(&current);
            version.frozen.insert(0, old);
            version.active = state.active.clone();
            *current = Arc::new(version);
        }
        self.flush_signal.notify();
        Ok(())
    }

    fn sync_through(&self, seq: SeqNo) -> Result<()> {
        self.check_not_poisoned()?;
        let synced = self.group.sync_through(
            seq,
            || SeqNo(self.visible.load(Ordering::Acquire)),
            || self.write.lock().wal.prepare_sync(),
        );
        self.poison_on_error(synced)
    }

    /// Flush the oldest frozen memtable, if any. Returns whether there was one.
    fn flush_oldest(&self) -> Result<bool> {
        let _flushing = self.flush_lock.lock();
        let Some(mem) = self.current.read().frozen.last().cloned() else {
            return Ok(false);
        };
        let table = if mem.is_empty() {
            None
        } else {
            Some(self.write_memtable(&mem)?)
        };
        let flushed_bytes = table.as_ref().map_or(0, |t| t.meta().file_bytes);
        let log_start = mem.successor_segment();
        {
            let mut durable = self.manifest.lock();
            let mut next = durable.clone();
            if let Some(table) = &table {
                next.runs.insert(0, vec![table.meta().id]);
                next.flushed_seq = next.flushed_seq.max(table.meta().max_seq);
            }
            next.log_start = log_start;
            if let Err(err) = manifest::store(&self.dir, &next) {
                if let Some(table) = &table {
                    let _ = fs::remove_file(table.path());
                }
                return Err(err);
            }
            *durable = next;
            let mut current = self.current.write();
            let mut version = SuperVersion::clone(&current);
            let popped = version.frozen.pop();
            debug_assert!(popped.is_some_and(|p| Arc::ptr_eq(&p, &mem)));
            if let Some(table) = table {
                version.runs.insert(
                    0,
                    Arc::new(Run {
                        tables: vec![TableHandle::new(table)],
                    }),
                );
            }
            *current = Arc::new(version);
        }
        self.delete_segments_below(log_start)?;
        release_freed_memory(mem);
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .flushed_bytes
            .fetch_add(flushed_bytes, Ordering::Relaxed);
        self.space.notify_all();
        self.compaction_signal.notify();
        Ok(true)
    }

    /// Write the newest version of every key of `mem` into a new SSTable.
    fn write_memtable(&self, mem: &Arc<MemTable>) -> Result<Arc<SsTable>> {
        let (id, path) = self.allocate_table();
        let mut builder = SsTableBuilder::create(&path, id, &self.opts.table)?;
        let mut last_key: Option<Bytes> = None;
        for (key, seq, entry) in MemTableIter::new(mem.clone(), Bound::Unbounded, SeqNo(u64::MAX)) {
            if last_key.as_ref() == Some(&key) {
                continue;
            }
            if let Err(err) = builder.add(&key, seq, &entry) {
                let _ = builder.abandon();
                return Err(err);
            }
            last_key = Some(key);
        }
        builder.finish()?;
        wal::sync_dir(&self.dir)?;
        SsTable::open(&path, id, self.cache.clone())
    }

    fn allocate_table(&self) -> (TableId, PathBuf) {
        let mut durable = self.manifest.lock();
        let id = durable.next_table_id;
        durable.next_table_id = TableId(id.0 + 1);
        (id, table_path(&self.dir, id))
    }

    /// Merge the runs at `range` (indices into the current version, newest
    /// first) into one run and install it.
    fn compact_runs(&self, range: std::ops::Range<usize>, throttle: bool) -> Result<()> {
        let version = self.current.read().clone();
        let inputs: Vec<Arc<Run>> = version.runs[range.clone()].to_vec();
        let bottommost = range.end == version.runs.len();
        let bytes_read: u64 = inputs.iter().map(|r| r.bytes()).sum();
        let ctx = MergeContext {
            bottommost,
            filter: self.opts.compaction_filter.as_deref(),
            target_table_bytes: self.opts.target_table_bytes,
            limiter: throttle.then_some(&self.limiter),
            table: &self.opts.table,
            cache: &self.cache,
            cancel: &self.closed,
        };
        let started = Instant::now();
        let output = compaction::merge_runs(&inputs, &ctx, || self.allocate_table())?;
        let bytes_written: u64 = output.tables.iter().map(|t| t.meta().file_bytes).sum();
        if !output.tables.is_empty() {
            wal::sync_dir(&self.dir)?;
        }
        let input_ids: Vec<Vec<TableId>> = inputs.iter().map(|r| r.ids()).collect();
        let output_ids: Vec<TableId> = output.tables.iter().map(|t| t.meta().id).collect();
        {
            let mut durable = self.manifest.lock();
            let mut next = durable.clone();
            // Flushes may have added newer runs meanwhile; the inputs are
            // still neighbours (only compaction removes runs).
            let Some(at) = next
                .runs
                .windows(input_ids.len())
                .position(|w| w == input_ids.as_slice())
            else {
                panic!("compaction inputs vanished from the manifest: only one compaction runs at a time");
            };
            next.runs.splice(
                at..at + input_ids.len(),
                (!output_ids.is_empty()).then(|| output_ids.clone()),
            );
            if let Err(err) = manifest::store(&self.dir, &next) {
                for table in &output.tables {
                    let _ = fs::remove_file(table.path());
                }
                return Err(err);
            }
            *durable = next;
            let mut current = self.current.write();
            let mut version = SuperVersion::clone(&current);
            let replacement = (!output.tables.is_empty()).then(|| {
                Arc::new(Run {
                    tables: output
                        .tables
                        .iter()
                        .cloned()
                        .map(TableHandle::new)
                        .collect(),
                })
            });
            version.runs.splice(at..at + input_ids.len(), replacement);
            *current = Arc::new(version);
        }
        for run in &inputs {
            for table in &run.tables {
                table.mark_obsolete();
            }
        }

        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .compacted_bytes_read
            .fetch_add(bytes_read, Ordering::Relaxed);
        self.counters
            .compacted_bytes_written
            .fetch_add(bytes_written, Ordering::Relaxed);
        tracing::info!(
            runs = input_ids.len(),
            bottommost,
            bytes_read,
            bytes_written,
            entries_read = output.entries_read,
            entries_written = output.entries_written,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction finished"
        );
        // The replaced tables' filters and indexes go once no reader holds them.
        drop(inputs);
        drop(version);
        trim_heap();
        Ok(())
    }

    /// Delete commit-log segments whose records are all in SSTables.
    fn delete_segments_below(&self, log_start: SegmentId) -> Result<()> {
        let mut deleted = false;
        for id in wal::list_segments(&self.dir)? {
            if id < log_start {
                fs::remove_file(wal::segment_path(&self.dir, id))?;
                deleted = true;
            }
        }
        if deleted {
            wal::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn report_background(&self, what: &str, result: Result<()>) {
        match result {
            Ok(()) => {
                self.background_error.lock().take();
            }
            Err(err) => {
                tracing::error!(%err, dir = %self.dir.display(), "storage {what} failed; retrying");
                *self.background_error.lock() = Some(err.to_string());
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    fn flush_loop(&self) {
        while !self.closed.load(Ordering::Acquire) {
            let result = (|| {
                while !self.closed.load(Ordering::Acquire) {
                    if !self.flush_oldest()? {
                        break;
                    }
                }
                Ok(())
            })();
            self.report_background("flush", result);
            self.flush_signal.wait(Duration::from_secs(1));
        }
    }

    fn compaction_loop(&self) {
        while !self.closed.load(Ordering::Acquire) {
            let result = (|| {
                while !self.closed.load(Ordering::Acquire) {
                    let _compacting = self.compaction_lock.lock();
                    let sizes: Vec<u64> =
                        self.current.read().runs.iter().map(|r| r.bytes()).collect();
                    let Some(range) = compaction::pick(&sizes, &self.policy) else {
                        break;
                    };
                    self.compact_runs(range, true)?;
                }
                Ok(())
            })();
            self.report_background("compaction", result);
            self.compaction_signal.wait(Duration::from_secs(5));
        }
    }

    fn sync_loop(&self) {
        while !self.closed.load(Ordering::Acquire) {
            self.sync_signal.wait(SYNC_INTERVAL);
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            let result = match self.opts.fsync {
                FsyncPolicy::Everysec => {
                    let last = SeqNo(self.visible.load(Ordering::Acquire));
                    self.sync_through(last)
                }
                _ => {
                    let written = self.write.lock().wal.write_out();
                    self.poison_on_error(written)
                }
            };
            if let Err(err) = result {
                tracing::error!(%err, "commit log background sync failed");
            }
        }
    }

    fn stats(&self) -> EngineStats {
        let c = &self.counters;
        let version = self.current.read().clone();
        let (log_bytes, last_seq) = {
            let state = self.write.lock();
            (state.wal.bytes_appended(), state.last_seq)
        };
        let tables = version.runs.iter().flat_map(|r| r.tables.iter());
        let cache = self.cache.stats();
        let reads = self.cache.read_stats();
        EngineStats {
            puts: c.puts.get(),
            deletes: c.deletes.get(),
            gets: c.gets.get(),
            write_batches: c.batches.get(),
            scans: c.scans.load(Ordering::Relaxed),
            log_fsyncs: self.group.fsyncs(),
            log_bytes,
            last_seq: last_seq.0,
            synced_seq: self.group.synced().0,
            flushes: c.flushes.load(Ordering::Relaxed),
            flushed_bytes: c.flushed_bytes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            compaction_bytes_read: c.compacted_bytes_read.load(Ordering::Relaxed),
            compaction_bytes_written: c.compacted_bytes_written.load(Ordering::Relaxed),
            tables: tables.clone().count() as u64,
            runs: version.runs.len() as u64,
            table_bytes: tables.clone().map(|t| t.table.meta().file_bytes).sum(),
            table_memory_bytes: tables.map(|t| t.table.memory_bytes() as u64).sum(),
            memtable_bytes: version
                .memtables()
                .map(|m| m.approximate_bytes() as u64)
                .sum(),
            frozen_memtables: version.frozen.len() as u64,
            write_stalls: c.write_stalls.load(Ordering::Relaxed),
            write_stall_micros: c.write_stall_micros.load(Ordering::Relaxed),
            bloom_checks: reads.bloom_checks,
            bloom_negatives: reads.bloom_negatives,
            data_block_reads: reads.data_block_reads,
            block_disk_reads: reads.block_disk_reads,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_bytes: cache.bytes,
            cache_pinned_bytes: cache.pinned_bytes,
        }
    }
}

thread_local! {
    /// A per-thread batch reused by single puts and deletes, so they do not
    /// allocate one each.
    static SCRATCH_BATCH: std::cell::RefCell<WriteBatch> = std::cell::RefCell::new(WriteBatch::new());
}

/// Run `f` with this thread's cleared scratch batch (or a fresh one if it is
/// already in use further up the stack).
fn with_scratch_batch<T>(f: impl FnOnce(&mut WriteBatch) -> T) -> T {
    SCRATCH_BATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut batch) => {
            batch.clear();
            let result = f(&mut batch);
            if batch.encoded_ops().len() > 64 << 10 {
                // Do not keep a huge key's buffer for the thread's lifetime.
                *batch = WriteBatch::new();
            }
            result
        }
        Err(_) => f(&mut WriteBatch::new()),
    })
}

/// Drop a flushed memtable and, if that freed it, hand the freed memory back
/// to the OS. A memtable is hundreds of thousands of small skiplist nodes
/// allocated on whichever threads wrote; glibc keeps such memory in its
/// per-thread arenas, so without a trim the process's resident size creeps
/// towards several memtables' worth even though only one or two are live.
fn release_freed_memory(mem: Arc<MemTable>) {
    if Arc::strong_count(&mem) == 1 {
        drop(mem);
        trim_heap();
    }
}

/// Return free heap pages to the OS (glibc only; elsewhere a no-op).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn into_value(entry: Entry) -> Option<Bytes> {
    match entry {
        Entry::Value(value) => Some(value),
        Entry::Tombstone => None,
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (the prefix is empty or all 0xff).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Take an exclusive `flock` on `dir/LOCK` so a second process (or a second
/// `Engine` in this one) cannot open the same directory.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Io(std::io::Error::new(
            err.kind(),
            format!(
                "{} is locked: another process (or engine) has this data directory open ({err})",
                path.display()
            ),
        )));
    }
    Ok(file)
}

/// A directory without a manifest must not hold tables or log segments: that
/// would mean the manifest was lost, and starting afresh would silently drop
/// data.
fn refuse_without_manifest(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sst") || name.ends_with(".log") {
            return Err(Error::corruption(
                manifest::manifest_path(dir),
                0,
                format!(
                    "the manifest is missing but the directory holds data files such as {name}"
                ),
            ));
        }
    }
    Ok(())
}

fn open_table(dir: &Path, id: TableId, cache: &Arc<BlockCache>) -> Result<Arc<SsTable>> {
    let path = table_path(dir, id);
    match SsTable::open(&path, id, cache.clone()) {
        Ok(table) => Ok(table),
        Err(Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => Err(
            Error::corruption(&path, 0, "SSTable listed in the manifest is missing"),
        ),
        Err(err) => Err(err),
    }
}

/// Delete SSTable files the manifest does not name: outputs of a flush or
/// compaction that crashed before its manifest was stored.
fn remove_orphans(dir: &Path, data: &ManifestData) -> Result<()> {
    let live: std::collections::HashSet<u64> = data.runs.iter().flatten().map(|id| id.0).collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".sst") else {
            continue;
        };
        if let Ok(id) = stem.parse::<u64>() {
            if !live.contains(&id) {
                tracing::info!(file = %entry.path().display(), "removing an SSTable no manifest names (unfinished flush or compaction)");
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
