//! The key counts `DBSIZE` and `INFO` report, saved at a clean close so the
//! next open need not recount them.
//!
//! The replica maintains the counts exactly while it runs (see
//! [`super::replica`]); at open they must be rebuilt. Recounting is a scan of
//! every stored set (about 3 s per million keys on a small machine), so a
//! clean close writes them to `COUNTS` together with the engine's last
//! sequence number, with every key lock held so no write is half counted.
//! The next open uses the file only if the engine recovered to exactly that
//! sequence number, i.e. the data is the data that was counted, and deletes
//! it either way. After a crash, or any write since, the sequence numbers
//! differ and the keyspace recounts.
//!
//! # File `COUNTS` (format version 1), 48 bytes, integers big-endian
//!
//! ```text
//! magic      8 bytes  "RKVCOUNT"
//! version    u32      1
//! last_seq   u64      the engine's last sequence number when counted
//! keys       u64
//! expires    u64
//! siblings   u64
//! crc32c     u32      CRC32C of the 44 bytes above
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::storage::SeqNo;

const FILE_NAME: &str = "COUNTS";
const MAGIC: &[u8; 8] = b"RKVCOUNT";
const FORMAT_VERSION: u32 = 1;
const LEN: usize = 48;

/// Counts of a keyspace at one engine sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub keys: u64,
    pub expires: u64,
    pub siblings: u64,
}

impl Counts {
    /// Writes `COUNTS` durably (temporary file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path, last_seq: SeqNo) -> Result<()> {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[12..20].copy_from_slice(&last_seq.0.to_be_bytes());
        out[20..28].copy_from_slice(&self.keys.to_be_bytes());
        out[28..36].copy_from_slice(&self.expires.to_be_bytes());
        out[36..44].copy_from_slice(&self.siblings.to_be_bytes());
        let crc = crc32c::crc32c(&out[..44]);
        out[44..].copy_from_slice(&crc.to_be_bytes());
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&out)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Takes the saved counts out of `dir` (the file is removed): `Some` only
    /// if they were saved at `last_seq`. Anything unreadable is ignored (the
    /// caller recounts), since the file is only a shortcut.
    pub fn take(dir: &Path, last_seq: SeqNo) -> Result<Option<Counts>> {
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        fs::remove_file(&path)?;
        File::open(dir)?.sync_all()?;
        Ok(decode(&bytes).and_then(|(seq, counts)| (seq == last_seq).then_some(counts)))
    }
}

fn decode(bytes: &[u8]) -> Option<(SeqNo, Counts)> {
    if bytes.len() != LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let version = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    let crc = u32::from_be_bytes(bytes[44..48].try_into().ok()?);
    if version != FORMAT_VERSION || crc != crc32c::crc32c(&bytes[..44]) {
        return None;
    }
    Some((
        SeqNo(word(12)?),
        Counts {
            keys: word(20)?,
            expires: word(28)?,
            siblings: word(36)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTS: Counts = Counts {
        keys: 3,
        expires: 2,
        siblings: 1,
    };

    #[test]
    fn saved_counts_are_used_once_and_only_at_their_sequence_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        COUNTS.save(dir.path(), SeqNo(42)).expect("save");
        assert_eq!(
            Counts::take(dir.path(), SeqNo(42)).expect("take"),
            Some(COUNTS)
        );
        assert_eq!(
            Counts::take(dir.path(), SeqNo(42)).expect("take"),
            None,
            "used once"
        );
        COUNTS.save(dir.path(), SeqNo(42)).expect("save");
        assert_eq!(
            Counts::take(dir.path(), SeqNo(43)).expect("take"),
            None,
            "data moved on"
        );
    }

    #[test]
    fn a_damaged_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        COUNTS.save(dir.path(), SeqNo(7)).expect("save");
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).expect("read");
        bytes[25] ^= 0x10;
        fs::write(&path, bytes).expect("write");
        assert_eq!(Counts::take(dir.path(), SeqNo(7)).expect("take"), None);
    }
}
