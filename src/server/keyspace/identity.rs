//! The node's identity on disk: its clock actor (incarnation id) and the
//! partition count its data was laid out with.
//!
//! The actor is created once, at random, when a data directory is first
//! opened, and read back ever after. A node whose directory was wiped gets a
//! new actor, so its new writes can never carry dots that collide with dots it
//! issued before the loss (Riak's kv679 bug, DESIGN.md §2). The partition
//! count is recorded because the on-disk layout depends on it: opening data
//! with another count would make every key unreachable, so it is refused.
//!
//! # File `IDENTITY` (format version 1), 28 bytes, integers big-endian
//!
//! ```text
//! magic     8 bytes  "RKVIDENT"
//! version   u32      1
//! actor     u64      the ActorId
//! partitions u32     Q
//! crc32c    u32      CRC32C of the 24 bytes above
//! ```
//!
//! Written to `IDENTITY.tmp`, fsynced, renamed over `IDENTITY`, and the
//! directory fsynced, so a crash leaves either no file or a whole one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::deps::ActorId;
use crate::error::{Error, Result};

const FILE_NAME: &str = "IDENTITY";
const MAGIC: &[u8; 8] = b"RKVIDENT";
const FORMAT_VERSION: u32 = 1;
const LEN: usize = 28;

/// What `IDENTITY` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub actor: ActorId,
    pub partitions: u32,
}

impl Identity {
    /// Reads the identity of `dir`, or creates one (new random actor) if the
    /// directory has none. Refuses a directory laid out with another
    /// partition count.
    pub fn load_or_create(dir: &Path, partitions: u32) -> Result<Identity> {
        let path = dir.join(FILE_NAME);
        match fs::read(&path) {
            Ok(bytes) => {
                let identity = Identity::decode(&path, &bytes)?;
                if identity.partitions != partitions {
                    return Err(Error::invalid(format!(
                        "data directory {} was created with {} partitions, but {partitions} are \
                         configured; the partition count cannot change",
                        dir.display(),
                        identity.partitions
                    )));
                }
                Ok(identity)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity {
                    actor: ActorId::random(),
                    partitions,
                };
                identity.persist(dir)?;
                tracing::info!(actor = %identity.actor, "new data directory: created a new clock actor");
                Ok(identity)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[12..20].copy_from_slice(&self.actor.0.to_be_bytes());
        out[20..24].copy_from_slice(&self.partitions.to_be_bytes());
        let crc = crc32c::crc32c(&out[..24]);
        out[24..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Identity> {
        let corrupt = |offset: u64, what: &str| {
            Error::corruption(
                path,
                offset,
                format!(
                    "{what}; if the data directory is otherwise intact, remove this file to \
                     continue as a new incarnation"
                ),
            )
        };
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(corrupt(0, "not an identity file (bad magic)"));
        }
        let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if bytes.len() != LEN {
            return Err(corrupt(12, "wrong length"));
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[12..20]);
        let actor = ActorId(u64::from_be_bytes(word));
        let partitions = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        let crc = u32::from_be_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        if crc != crc32c::crc32c(&bytes[..24]) {
            return Err(corrupt(24, "checksum mismatch"));
        }
        Ok(Identity { actor, partitions })
    }

    fn persist(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&self.encode())?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_survives_reopen_and_a_wiped_dir_gets_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::load_or_create(dir.path(), 256).expect("create");
        let again = Identity::load_or_create(dir.path(), 256).expect("reopen");
        assert_eq!(first, again);
        fs::remove_file(dir.path().join(FILE_NAME)).expect("wipe");
        let fresh = Identity::load_or_create(dir.path(), 256).expect("recreate");
        assert_ne!(fresh.actor, first.actor);
    }

    #[test]
    fn another_partition_count_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Identity::load_or_create(dir.path(), 256).expect("create");
        let err = Identity::load_or_create(dir.path(), 512).expect_err("must refuse");
        assert!(err.to_string().contains("partition count"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        Identity::load_or_create(dir.path(), 256).expect("create");
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).expect("read");
        bytes[14] ^= 1;
        fs::write(&path, bytes).expect("write");
        let err = Identity::load_or_create(dir.path(), 256).expect_err("corrupt");
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
    }
}
