//! The manifest: which SSTables are live, in which sorted run, and which part
//! of the commit log still matters. It is the engine's root of trust on open.
//!
//! # Crash safety
//!
//! The manifest is one small file, `MANIFEST`, replaced whole on every change:
//! write `MANIFEST.tmp`, fsync it, rename it over `MANIFEST`, fsync the
//! directory. A crash before the rename leaves the old manifest (a leftover
//! `MANIFEST.tmp` is deleted on open); after it, the new one. SSTables are
//! fsynced (and the directory with them) before the manifest that names them,
//! and files leave the directory only after a manifest that no longer names
//! them is durable, so the manifest never points at a file that is not there.
//! Rewriting the whole file is cheap because it lists table ids only; table
//! metadata (key range, sequence range) lives in each table's footer.
//!
//! # Format (all integers little-endian)
//!
//! ```text
//! 0..8      magic b"RKVMANIF"
//! 8..12     format version u32 (= 1)
//! 12..16    body length u32 (n)
//! 16..16+n  body:
//!             next table id u64      ids below it may have been used
//!             log start u64          first commit-log segment still needed
//!             flushed seq u64        every write up to it is in an SSTable
//!             run count u32
//!             per run, newest run first:
//!               table count u32
//!               table ids u64 each, in key order (tables of a run do not overlap)
//! 16+n..+4  CRC32C u32 of bytes 0..16+n
//! ```
//!
//! A version above 1 fails the open with [`Error::UnsupportedVersion`]; a bad
//! magic, length or checksum with [`Error::Corruption`] naming the file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::types::{SeqNo, TableId};
use super::wal::{sync_dir, SegmentId};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"RKVMANIF";
const FORMAT_VERSION: u32 = 1;
const FILE_NAME: &str = "MANIFEST";
const TEMP_NAME: &str = "MANIFEST.tmp";

/// The durable state the manifest records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ManifestData {
    /// The next SSTable id to hand out.
    pub next_table_id: TableId,
    /// The first commit-log segment whose records may not be in SSTables yet.
    pub log_start: SegmentId,
    /// Every write with a sequence number up to this one is in an SSTable.
    pub flushed_seq: SeqNo,
    /// Sorted runs, newest first; each run lists its tables in key order.
    pub runs: Vec<Vec<TableId>>,
}

/// The manifest's path in `dir`.
pub(crate) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Read the manifest, `None` if there is none. Deletes a leftover temp file.
pub(crate) fn load(dir: &Path) -> Result<Option<ManifestData>> {
    let temp = dir.join(TEMP_NAME);
    if temp.exists() {
        fs::remove_file(&temp)?;
    }
    let path = manifest_path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    decode(&path, &bytes).map(Some)
}

/// Durably replace the manifest with `data`.
pub(crate) fn store(dir: &Path, data: &ManifestData) -> Result<()> {
    let temp = dir.join(TEMP_NAME);
    let mut file = File::create(&temp)?;
    file.write_all(&encode(data))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, manifest_path(dir))?;
    sync_dir(dir)
}

pub(crate) fn encode(data: &ManifestData) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&data.next_table_id.0.to_le_bytes());
    body.extend_from_slice(&data.log_start.0.to_le_bytes());
    body.extend_from_slice(&data.flushed_seq.0.to_le_bytes());
    body.extend_from_slice(&(data.runs.len() as u32).to_le_bytes());
    for run in &data.runs {
        body.extend_from_slice(&(run.len() as u32).to_le_bytes());
        for id in run {
            body.extend_from_slice(&id.0.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<ManifestData> {
    let corrupt = |offset: usize, detail: &str| Error::corruption(path, offset as u64, detail);
    if bytes.len() < 16 || &bytes[0..8] != MAGIC {
        return Err(corrupt(0, "not a manifest (bad magic or too short)"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version > FORMAT_VERSION || version == 0 {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let body_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if bytes.len() != 16 + body_len + 4 {
        return Err(corrupt(
            12,
            "length does not match the file size (truncated?)",
        ));
    }
    let crc_at = 16 + body_len;
    let stored = u32::from_le_bytes([
        bytes[crc_at],
        bytes[crc_at + 1],
        bytes[crc_at + 2],
        bytes[crc_at + 3],
    ]);
    if crc32c::crc32c(&bytes[..crc_at]) != stored {
        return Err(corrupt(crc_at, "checksum mismatch"));
    }
    let mut reader = Reader {
        bytes: &bytes[..crc_at],
        offset: 16,
    };
    let next_table_id = TableId(reader.u64().ok_or_else(|| corrupt(16, "body too short"))?);
    let log_start = SegmentId(reader.u64().ok_or_else(|| corrupt(24, "body too short"))?);
    let flushed_seq = SeqNo(reader.u64().ok_or_else(|| corrupt(32, "body too short"))?);
    let run_count = reader.u32().ok_or_else(|| corrupt(40, "body too short"))?;
    let mut runs = Vec::new();
    for _ in 0..run_count {
        let at = reader.offset;
        let count = reader
            .u32()
            .ok_or_else(|| corrupt(at, "run list truncated"))?;
        let mut run = Vec::new();
        for _ in 0..count {
            let at = reader.offset;
            let id = reader
                .u64()
                .ok_or_else(|| corrupt(at, "table list truncated"))?;
            if id >= next_table_id.0 {
                return Err(corrupt(at, "table id not below the next table id"));
            }
            run.push(TableId(id));
        }
        runs.push(run);
    }
    if reader.offset != crc_at {
        return Err(corrupt(reader.offset, "trailing bytes in the body"));
    }
    Ok(ManifestData {
        next_table_id,
        log_start,
        flushed_seq,
        runs,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let slice = self.bytes.get(self.offset..self.offset + 8)?;
        self.offset += 8;
        let mut array = [0u8; 8];
        array.copy_from_slice(slice);
        Some(u64::from_le_bytes(array))
    }

    fn u32(&mut self) -> Option<u32> {
        let slice = self.bytes.get(self.offset..self.offset + 4)?;
        self.offset += 4;
        Some(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ManifestData {
        ManifestData {
            next_table_id: TableId(9),
            log_start: SegmentId(4),
            flushed_seq: SeqNo(1234),
            runs: vec![vec![TableId(8)], vec![TableId(3), TableId(5)]],
        }
    }

    #[test]
    fn stored_manifest_loads_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let path = Path::new("MANIFEST");
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode(path, &damaged).is_err(),
                    "flip at byte {i} bit {bit}"
                );
            }
            assert!(decode(path, &bytes[..i]).is_err(), "truncated to {i}");
        }
    }

    #[test]
    fn a_newer_format_version_is_a_clear_error() {
        let mut bytes = encode(&sample());
        bytes[8] = 2;
        let err = decode(Path::new("/data/MANIFEST"), &bytes).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("/data/MANIFEST"), "{err}");
    }
}
