//! The commit log (write-ahead log): every write is appended here before it
//! reaches the memtable, so a crash loses nothing the fsync policy promised.
//!
//! # Files
//!
//! The log is a sequence of segment files `{id:020}.log` in the engine's
//! directory. A new segment starts when the current one passes
//! `Options::wal_segment_bytes` and whenever the memtable is frozen, so that
//! every segment below the one the active memtable started in holds only
//! records that flushed SSTables already contain; the manifest remembers that
//! boundary (`log_start`) and older segments are deleted.
//!
//! # Format (all integers little-endian)
//!
//! A segment starts with a 16-byte header:
//!
//! ```text
//! 0..4    magic  b"RKWL"
//! 4..8    format version u32 (= 1)
//! 8..16   segment id u64 (must match the file name)
//! ```
//!
//! followed by records, one per [`WriteBatch`](super::WriteBatch):
//!
//! ```text
//! 0..4    payload length u32 (n)
//! 4..8    CRC32C u32 over bytes 0..4 (the length) followed by the payload
//! 8..8+n  payload:
//!           first sequence number u64 (the batch's i-th operation has
//!                                      first + i)
//!           operation count u32
//!           operations, encoded as in super::batch
//! ```
//!
//! The checksum covers the length too, so a flipped length bit is caught
//! rather than read as a torn tail. Segments are preallocated
//! (`fallocate`, a few MiB ahead of the writes), so the bytes after the last
//! record read as zeros: a segment whose remaining bytes are all zero ends
//! there cleanly. A record can never be all zeros (its CRC would have to be
//! zero over a zero length, and CRC32C of four zero bytes is not zero).
//!
//! # Recovery
//!
//! [`replay`] reads the segments from `log_start` on and applies each record
//! whose checksum and content check out, in order. At the first torn or corrupt
//! record it stops: that segment is truncated there, later segments are
//! deleted (their records would follow a hole), and a warning says how many
//! bytes were dropped. A record is applied whole or not at all, so batches stay
//! atomic across crashes.
//!
//! # Group commit
//!
//! [`GroupCommit`] lets concurrent writers share fsyncs: the first writer that
//! needs durability becomes the leader, writes out everything appended so far
//! and fsyncs once; writers that arrive meanwhile wait for it, and the next
//! leader's fsync covers every record they appended in the meantime.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::batch::{BatchOp, BatchOps, WriteBatch};
use super::types::SeqNo;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"RKWL";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
const RECORD_HEADER_BYTES: usize = 8;
/// first_seq u64 + count u32.
const PAYLOAD_PREFIX_BYTES: usize = 12;
/// The writer hands its buffer to the OS once it holds this much, so the
/// buffer stays small and a process crash loses little under `everysec`.
const WRITE_OUT_BYTES: usize = 256 << 10;
/// How long a group-commit leader may wait for more records to arrive.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_micros(500);
/// The leader stops gathering once no record arrived for this long.
const GATHER_QUIET: std::time::Duration = std::time::Duration::from_micros(30);
/// Segments are preallocated this much at a time (see [`preallocate_file`]).
const PREALLOCATE_STEP: u64 = 4 << 20;

/// The number of a commit-log segment file (`{id:020}.log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

/// The path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{:020}.log", id.0))
}

/// The segment ids present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(id) = stem.parse::<u64>() {
                ids.push(SegmentId(id));
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// fsync a directory so that file creations, renames and deletions in it are
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Appends records to the current segment. Owned by the engine's write lock.
pub(crate) struct WalWriter {
    dir: PathBuf,
    id: SegmentId,
    /// The rotation size; caps preallocation.
    segment_limit: u64,
    /// Bytes preallocated so far (0 if the file system cannot).
    allocated: u64,
    /// Rotated segments whose last records may not be fsynced yet.
    retired: Vec<Arc<File>>,
    keep_retired: bool,
    file: Arc<File>,
    /// Encoded records not yet handed to the OS.
    buf: Vec<u8>,
    /// Bytes in the segment, including `buf`.
    segment_bytes: u64,
    /// The last sequence number appended (buffered or written).
    last_seq: SeqNo,
    bytes_appended: u64,
}

impl WalWriter {
    /// Create segment `id` (which must not exist) and fsync the directory.
    /// `segment_limit` (the rotation size) caps the space preallocated.
    pub(crate) fn create(
        dir: &Path,
        id: SegmentId,
        last_seq: SeqNo,
        segment_limit: u64,
    ) -> Result<WalWriter> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[8..16].copy_from_slice(&id.0.to_le_bytes());
        file.write_all(&header)?;
        let allocated = preallocate_file(&file, HEADER_BYTES as u64, 0, segment_limit);
        file.sync_data()?;
        sync_dir(dir)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            id,
            segment_limit,
            allocated,
            retired: Vec::new(),
            keep_retired: true,
            file: Arc::new(file),
            buf: Vec::with_capacity(WRITE_OUT_BYTES * 2),
            segment_bytes: HEADER_BYTES as u64,
            last_seq,
            bytes_appended: 0,
        })
    }

    /// The current segment.
    pub(crate) fn segment(&self) -> SegmentId {
        self.id
    }

    /// Bytes in the current segment.
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Total record bytes appended since open.
    pub(crate) fn bytes_appended(&self) -> u64 {
        self.bytes_appended
    }

    /// Append one record carrying `batch` with sequence numbers from `first`
    /// to the buffer; it reaches the OS at the next
    /// [`write_out`](Self::write_out). Never fails after changing anything.
    pub(crate) fn append(&mut self, first: SeqNo, batch: &WriteBatch) -> Result<()> {
        let ops = batch.encoded_ops();
        let payload_len = PAYLOAD_PREFIX_BYTES + ops.len();
        let Ok(len32) = u32::try_from(payload_len) else {
            return Err(Error::invalid("write batch larger than 4 GiB"));
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(&len32.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&first.0.to_le_bytes());
        self.buf.extend_from_slice(&batch.count().to_le_bytes());
        self.buf.extend_from_slice(ops);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&self.buf[start..start + 4]),
            &self.buf[start + RECORD_HEADER_BYTES..],
        );
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        let record = (RECORD_HEADER_BYTES + payload_len) as u64;
        self.segment_bytes += record;
        self.bytes_appended += record;
        self.last_seq = SeqNo(first.0 + u64::from(batch.count()) - 1);
        Ok(())
    }

    /// Whether enough is buffered that it should be written out now.
    pub(crate) fn should_write_out(&self) -> bool {
        self.buf.len() >= WRITE_OUT_BYTES
    }

    /// Hand the buffered records to the OS (no fsync).
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            if self.allocated != 0 && self.segment_bytes > self.allocated {
                self.allocated = preallocate_file(
                    &self.file,
                    self.segment_bytes,
                    self.allocated,
                    self.segment_limit,
                );
            }
            (&*self.file).write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Write out the buffer and cut the preallocated zeros off the end of the
    /// segment (on rotation and close), so that a closed segment is exactly
    /// its records.
    pub(crate) fn trim(&mut self) -> Result<()> {
        self.write_out()?;
        if self.allocated > self.segment_bytes {
            self.file.set_len(self.segment_bytes)?;
            self.allocated = 0;
        }
        Ok(())
    }

    /// Write out the buffer and return what a syncer needs: the files to
    /// fsync (rotated segments not yet synced, then the current one) and the
    /// last sequence number they will then cover.
    pub(crate) fn prepare_sync(&mut self) -> Result<(Vec<Arc<File>>, SeqNo)> {
        self.write_out()?;
        let mut files = std::mem::take(&mut self.retired);
        files.push(self.file.clone());
        Ok((files, self.last_seq))
    }

    /// Close the current segment (written out and trimmed) and start segment
    /// `next`. The closed segment is not fsynced here, under the write lock:
    /// unless `keep_retired` is off (`fsync no`), it is kept for the next
    /// sync, which fsyncs it before the current segment, so "synced through
    /// seq" stays true across segments.
    pub(crate) fn rotate(&mut self, next: SegmentId) -> Result<()> {
        self.trim()?;
        let mut fresh = WalWriter::create(&self.dir, next, self.last_seq, self.segment_limit)?;
        fresh.keep_retired = self.keep_retired;
        fresh.bytes_appended = self.bytes_appended;
        fresh.retired = std::mem::take(&mut self.retired);
        if self.keep_retired {
            fresh.retired.push(self.file.clone());
        }
        *self = fresh;
        Ok(())
    }

    /// Whether rotated segments wait for the next sync (off under `fsync no`,
    /// where nothing is ever synced and they would pile up).
    pub(crate) fn set_keep_retired(&mut self, keep: bool) {
        self.keep_retired = keep;
    }
}

/// Reserve the segment's blocks ahead of the writes, `PREALLOCATE_STEP` at a
/// time, so that the file reads as zeros past the last record and most
/// fdatasyncs have no file size to update, which on ext4 makes them markedly
/// cheaper (measured here: ~6.5k/s instead of ~4k/s). Returns the new
/// allocated length, or 0 if the file system cannot preallocate (the file
/// then simply grows as written).
fn preallocate_file(file: &File, needed: u64, allocated: u64, limit: u64) -> u64 {
    use std::os::unix::io::AsRawFd;
    let target = (allocated + PREALLOCATE_STEP).max(needed + PREALLOCATE_STEP / 2);
    let target = target.min(limit.max(needed));
    if target <= allocated {
        return allocated;
    }
    let Ok(len) = libc::off_t::try_from(target) else {
        return 0;
    };
    // SAFETY: fallocate on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        tracing::debug!(err = %std::io::Error::last_os_error(), "commit log: fallocate failed; the segment grows as written");
        return 0;
    }
    target
}

/// Shares fsyncs between concurrent writers (see the module doc).
///
/// No lock is held during the fsync itself: a leader marks itself with the
/// `syncing` flag and fsyncs unlocked; followers wait on the condition
/// variable and are all woken when it is done. (Holding a mutex across the
/// fsync makes a convoy: the waiters are handed the mutex one by one, a woken
/// writer's next record barges in as the new leader, and each fsync ends up
/// covering one or two records.)
pub(crate) struct GroupCommit {
    /// Every record with a sequence number up to this one is on disk.
    synced: AtomicU64,
    /// Whether a leader is fsyncing now. `std`'s futex condition variable
    /// wakes every follower at once on `notify_all`, where parking_lot's
    /// requeues them onto the mutex and wakes them one after another.
    syncing: std::sync::Mutex<bool>,
    done: std::sync::Condvar,
    fsyncs: AtomicU64,
}

impl GroupCommit {
    pub(crate) fn new(synced: SeqNo) -> Self {
        GroupCommit {
            synced: AtomicU64::new(synced.0),
            syncing: std::sync::Mutex::new(false),
            done: std::sync::Condvar::new(),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// The highest sequence number known to be durable.
    pub(crate) fn synced(&self) -> SeqNo {
        SeqNo(self.synced.load(Ordering::Acquire))
    }

    /// Record that everything up to `seq` is durable (e.g. after a rotation).
    pub(crate) fn mark_synced(&self, seq: SeqNo) {
        self.synced.fetch_max(seq.0, Ordering::AcqRel);
    }

    /// Number of fsyncs issued.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Return once every record up to `seq` is durable. `prepare` writes the
    /// log buffer out (under the engine's write lock) and returns the file and
    /// the last sequence number it holds; the fsync happens outside any lock.
    pub(crate) fn sync_through(
        &self,
        seq: SeqNo,
        appended: impl Fn() -> SeqNo,
        prepare: impl FnOnce() -> Result<(Vec<Arc<File>>, SeqNo)>,
    ) -> Result<()> {
        if self.synced() >= seq {
            return Ok(());
        }
        {
            let mut syncing = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if self.synced() >= seq {
                    return Ok(());
                }
                if !*syncing {
                    *syncing = true;
                    break;
                }
                syncing = self.done.wait(syncing).unwrap_or_else(|p| p.into_inner());
            }
        }
        // This thread leads: everything appended so far rides on its fsync.
        // The writers the previous fsync just released are waking up to
        // append their next records; give them a moment (while they keep
        // arriving, at most `GATHER_WINDOW`) so that this fsync carries them
        // too, instead of leaving them for the next one. Without this the
        // writers split into two cohorts that alternate, each fsync carrying
        // half of them.
        let started = std::time::Instant::now();
        let mut seen = appended();
        let mut progressed_at = started;
        loop {
            std::thread::yield_now();
            let now = std::time::Instant::now();
            let current = appended();
            if current != seen {
                seen = current;
                progressed_at = now;
            } else if now.duration_since(progressed_at) >= GATHER_QUIET {
                break;
            }
            if now.duration_since(started) >= GATHER_WINDOW {
                break;
            }
        }
        let result = prepare().and_then(|(files, upto)| {
            for file in files {
                file.sync_data()?;
            }
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.mark_synced(upto);
            Ok(())
        });
        *self.syncing.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.done.notify_all();
        result
    }
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub(crate) struct ReplayReport {
    /// The highest sequence number replayed, if any record was.
    pub last_seq: Option<SeqNo>,
    /// Records applied.
    pub records: u64,
    /// Bytes dropped at and after the first torn or corrupt record.
    pub bytes_dropped: u64,
    /// The highest segment id that still exists after recovery.
    pub last_segment: Option<SegmentId>,
}

/// Replay the segments with ids `>= log_start` in order, calling `apply` for
/// every operation of every intact record whose sequence numbers are above
/// `skip_through` (those are already in SSTables). Stops at the first torn or
/// corrupt record, truncates the log there and deletes later segments.
pub(crate) fn replay(
    dir: &Path,
    log_start: SegmentId,
    skip_through: SeqNo,
    mut apply: impl FnMut(SeqNo, BatchOp<'_>) -> Result<()>,
) -> Result<ReplayReport> {
    let segments: Vec<SegmentId> = list_segments(dir)?
        .into_iter()
        .filter(|id| *id >= log_start)
        .collect();
    // Segments are numbered consecutively from `log_start` (the manifest's
    // boundary, where the oldest unflushed memtable began); a hole means a
    // lost file, and replaying around it would silently drop its writes.
    for (index, id) in segments.iter().enumerate() {
        let expected = SegmentId(log_start.0 + index as u64);
        if *id != expected {
            return Err(Error::corruption(
                segment_path(dir, expected),
                0,
                "commit log segment is missing (later segments exist)",
            ));
        }
    }
    let mut report = ReplayReport::default();
    let mut prev_seq = skip_through;
    let mut buf = Vec::new();
    for (index, &id) in segments.iter().enumerate() {
        let path = segment_path(dir, id);
        buf.clear();
        File::open(&path)?.read_to_end(&mut buf)?;
        match replay_segment(&path, id, &buf, &mut prev_seq, &mut report, &mut apply)? {
            None => report.last_segment = Some(id),
            Some(stop) => {
                let written_end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
                let mut dropped = written_end.saturating_sub(stop.offset);
                if stop.offset < HEADER_BYTES as u64 {
                    fs::remove_file(&path)?;
                } else {
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(stop.offset)?;
                    file.sync_all()?;
                    report.last_segment = Some(id);
                }
                for later in &segments[index + 1..] {
                    let later_path = segment_path(dir, *later);
                    dropped += fs::metadata(&later_path)?.len();
                    fs::remove_file(&later_path)?;
                }
                sync_dir(dir)?;
                report.bytes_dropped = dropped;
                tracing::warn!(
                    file = %path.display(),
                    offset = stop.offset,
                    reason = stop.reason,
                    bytes_dropped = dropped,
                    later_segments_deleted = segments.len() - index - 1,
                    "commit log: torn or corrupt record; recovery stopped and truncated the log here"
                );
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// Where and why a segment's replay stopped early.
struct Stop {
    offset: u64,
    reason: &'static str,
}

fn replay_segment(
    path: &Path,
    id: SegmentId,
    data: &[u8],
    prev_seq: &mut SeqNo,
    report: &mut ReplayReport,
    apply: &mut impl FnMut(SeqNo, BatchOp<'_>) -> Result<()>,
) -> Result<Option<Stop>> {
    let stop = |offset: usize, reason| {
        Ok(Some(Stop {
            offset: offset as u64,
            reason,
        }))
    };
    if data.len() < HEADER_BYTES {
        return stop(0, "torn segment header");
    }
    if &data[0..4] != MAGIC {
        return stop(0, "bad segment magic");
    }
    let version = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if version > FORMAT_VERSION || version == 0 {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if read_u64(&data[8..16]) != id.0 {
        return stop(0, "segment id in header does not match the file name");
    }
    let mut offset = HEADER_BYTES;
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.iter().all(|&b| b == 0) {
            // The preallocated, never written tail of the segment.
            return Ok(None);
        }
        if rest.len() < RECORD_HEADER_BYTES {
            return stop(offset, "torn record header");
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if rest.len() - RECORD_HEADER_BYTES < len {
            return stop(offset, "torn record");
        }
        let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
        if crc32c::crc32c_append(crc32c::crc32c(&rest[0..4]), payload) != crc {
            return stop(offset, "record checksum mismatch");
        }
        if len < PAYLOAD_PREFIX_BYTES {
            return stop(offset, "record too short");
        }
        let first = SeqNo(read_u64(&payload[0..8]));
        let count = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
        let ops = &payload[PAYLOAD_PREFIX_BYTES..];
        if !ops_are_well_formed(ops, count) {
            return stop(offset, "malformed record content");
        }
        let last = SeqNo(first.0 + u64::from(count).saturating_sub(1));
        if count == 0 || (first <= *prev_seq && last > *prev_seq) {
            return stop(offset, "sequence numbers out of order");
        }
        if first > *prev_seq {
            let mut decoder = BatchOps::new(ops);
            let mut seq = first;
            while let Ok(Some(op)) = decoder.next_op() {
                apply(seq, op)?;
                seq = SeqNo(seq.0 + 1);
            }
            *prev_seq = last;
            report.last_seq = Some(last);
            report.records += 1;
        }
        offset += RECORD_HEADER_BYTES + len;
    }
    Ok(None)
}

fn ops_are_well_formed(ops: &[u8], count: u32) -> bool {
    let mut decoder = BatchOps::new(ops);
    let mut seen = 0u32;
    loop {
        match decoder.next_op() {
            Ok(Some(_)) => seen += 1,
            Ok(None) => return seen == count,
            Err(()) => return false,
        }
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(key: &str, value: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes(), value.as_bytes());
        batch
    }

    fn replay_all(dir: &Path) -> (Vec<(u64, Vec<u8>)>, ReplayReport) {
        let mut seen = Vec::new();
        let report = replay(dir, SegmentId(1), SeqNo(0), |seq, op| {
            if let BatchOp::Put(key, _) = op {
                seen.push((seq.0, key.to_vec()));
            }
            Ok(())
        })
        .unwrap();
        (seen, report)
    }

    #[test]
    fn records_survive_rotation_and_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), SegmentId(1), SeqNo(0), 4096).unwrap();
        wal.append(SeqNo(1), &batch("a", "1")).unwrap();
        wal.rotate(SegmentId(2)).unwrap();
        wal.append(SeqNo(2), &batch("b", "2")).unwrap();
        wal.write_out().unwrap();
        let (seen, report) = replay_all(dir.path());
        assert_eq!(seen, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
        assert_eq!(report.last_seq, Some(SeqNo(2)));
        assert_eq!(report.bytes_dropped, 0);
        assert_eq!(report.last_segment, Some(SegmentId(2)));
    }

    #[test]
    fn a_flipped_bit_stops_replay_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), SegmentId(1), SeqNo(0), 4096).unwrap();
        wal.append(SeqNo(1), &batch("a", "1")).unwrap();
        let second_record_at = wal.segment_bytes();
        wal.append(SeqNo(2), &batch("b", "2")).unwrap();
        wal.append(SeqNo(3), &batch("c", "3")).unwrap();
        wal.write_out().unwrap();
        let path = segment_path(dir.path(), SegmentId(1));
        let mut bytes = fs::read(&path).unwrap();
        let total = wal.segment_bytes();
        bytes[second_record_at as usize + 10] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let (seen, report) = replay_all(dir.path());
        assert_eq!(seen, vec![(1, b"a".to_vec())]);
        assert_eq!(report.bytes_dropped, total - second_record_at);
        assert_eq!(fs::metadata(&path).unwrap().len(), second_record_at);
    }

    #[test]
    fn the_preallocated_zero_tail_is_a_clean_end_but_zeros_inside_are_not() {
        // An all-zero record header can never pass its checksum.
        assert_ne!(crc32c::crc32c(&[0u8; 4]), 0);
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), SegmentId(1), SeqNo(0), 1 << 20).unwrap();
        wal.append(SeqNo(1), &batch("a", "1")).unwrap();
        let second_record_at = wal.segment_bytes() as usize;
        wal.append(SeqNo(2), &batch("b", "2")).unwrap();
        wal.write_out().unwrap();
        let path = segment_path(dir.path(), SegmentId(1));
        assert!(fs::metadata(&path).unwrap().len() > wal.segment_bytes());
        let (seen, report) = replay_all(dir.path());
        assert_eq!(seen.len(), 2);
        assert_eq!(report.bytes_dropped, 0);

        // Zero the first record's header: not a clean end, since data follows.
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES..HEADER_BYTES + 8].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (seen, report) = replay_all(dir.path());
        assert!(seen.is_empty());
        assert_eq!(
            report.bytes_dropped,
            (second_record_at + 8 + 12 + 1 + 4 + 1 + 4 + 1 - HEADER_BYTES) as u64
        );
    }

    #[test]
    fn a_newer_segment_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        WalWriter::create(dir.path(), SegmentId(1), SeqNo(0), 4096).unwrap();
        let path = segment_path(dir.path(), SegmentId(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[4] = 9;
        fs::write(&path, &bytes).unwrap();
        let err = replay(dir.path(), SegmentId(1), SeqNo(0), |_, _| Ok(())).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
    }
}
