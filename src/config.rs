//! Configuration: defaults <- TOML file (`--config`) <- environment <- CLI flags.
//!
//! (The full `Config` is built by the server work; this file starts with the
//! types the lower layers share.)

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// When the commit log is fsynced, named as Redis names `appendfsync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// A write is acknowledged only after its record is on disk (group commit
    /// lets concurrent writers share one fsync).
    Always,
    /// The log is fsynced about once a second (default): a crash loses at most
    /// about one second of acknowledged writes.
    #[default]
    Everysec,
    /// Never fsync explicitly; the operating system decides.
    No,
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::Everysec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(Error::invalid(format!(
                "invalid fsync policy '{s}' (expected always, everysec or no)"
            ))),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Everysec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}
