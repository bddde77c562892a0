//! The one error type of ringkv, grouped by what a caller does about it.
//!
//! - `InvalidInput`: the request is wrong; answer the client and carry on.
//! - `Refused`: a Redis error with its own code (`NOAUTH`, `NOPROTO`,
//!   `WRONGPASS`, `WRONGTYPE`, ...); answer and carry on.
//! - `Corruption`: a file is damaged; name the file and offset, never panic,
//!   never return wrong data.
//! - `Io`: the operating system failed us; usually retryable.
//! - `Unavailable` / `Timeout`: a quorum could not be reached; retryable.
//! - `Conflict`: the key has siblings; the client must resolve them first.
//! - `Closed`: the component is shutting down.
//!
//! Every variant knows its RESP error line through [`Error::to_resp`].

use std::path::PathBuf;

/// Result with ringkv's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure in ringkv.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or not allowed; the text follows Redis' wording
    /// after the `ERR ` prefix (e.g. `wrong number of arguments for 'get' command`).
    #[error("{0}")]
    InvalidInput(String),

    /// A Redis error with its own code instead of `ERR`, e.g.
    /// `code = "NOAUTH"`, `message = "Authentication required."`.
    #[error("{code} {message}")]
    Refused { code: &'static str, message: String },

    /// On-disk data failed a check (checksum, magic, length, ordering).
    #[error("corruption in {}: offset {offset}: {detail}", file.display())]
    Corruption {
        file: PathBuf,
        offset: u64,
        detail: String,
    },

    /// A file was written by a newer (or unknown) format version.
    #[error("{}: unsupported format version {found} (this build reads up to {supported})", file.display())]
    UnsupportedVersion {
        file: PathBuf,
        found: u32,
        supported: u32,
    },

    /// An operating-system I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// Too few replicas answered for the quorum.
    #[error("needed {what}={needed} acks, got {got}")]
    Unavailable {
        what: &'static str,
        needed: usize,
        got: usize,
    },

    /// The request's deadline passed.
    #[error("{0}")]
    Timeout(String),

    /// The key has siblings; the operation needs a single value.
    #[error("{0}")]
    Conflict(String),

    /// The component is closed or shutting down.
    #[error("{0} is closed")]
    Closed(&'static str),
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// Shorthand for a [`Error::Corruption`].
    pub fn corruption(file: impl Into<PathBuf>, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// The RESP error line, without the leading `-` and trailing CRLF.
    pub fn to_resp(&self) -> String {
        match self {
            Error::InvalidInput(msg) => format!("ERR {msg}"),
            Error::Refused { code, message } => format!("{code} {message}"),
            Error::Unavailable { what, needed, got } => {
                format!("UNAVAILABLE needed {what}={needed} acks, got {got}")
            }
            Error::Timeout(msg) => format!("TIMEOUT {msg}"),
            Error::Conflict(msg) => format!("CONFLICT {msg}"),
            Error::Closed(what) => format!("ERR {what} is shutting down"),
            other => format!("ERR {other}"),
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Unavailable { .. } | Error::Timeout(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_errors_use_the_documented_codes() {
        let e = Error::Unavailable {
            what: "W",
            needed: 2,
            got: 1,
        };
        assert_eq!(e.to_resp(), "UNAVAILABLE needed W=2 acks, got 1");
        assert!(e.is_retryable());
        assert!(!Error::invalid("syntax error").is_retryable());
        assert_eq!(Error::invalid("syntax error").to_resp(), "ERR syntax error");
    }
}
