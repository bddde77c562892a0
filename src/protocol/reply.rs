//! [`Reply`]: what a command answers, independent of the protocol version.
//! The encoder (RESP2 or RESP3, chosen per connection by `HELLO`) decides how
//! each variant goes on the wire: a `Map` is a flat array in RESP2, a `Double`
//! a bulk string, `Null` is `$-1`/`*-1` in RESP2 and `_` in RESP3.

use bytes::Bytes;

/// A reply to one command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK` and other simple strings.
    Simple(&'static str),
    /// A simple string built at run time (e.g. `TYPE`'s answer).
    Status(String),
    /// An error line without the leading `-` (e.g. `ERR syntax error`).
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$len\r\nbytes\r\n`
    Bulk(Bytes),
    /// Absent value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// Absent array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// `*n` followed by n replies.
    Array(Vec<Reply>),
    /// A map (`%n` in RESP3; a flat array of 2n in RESP2).
    Map(Vec<(Reply, Reply)>),
    /// A set (`~n` in RESP3; an array in RESP2).
    Set(Vec<Reply>),
    /// A double (`,` in RESP3; a bulk string in RESP2).
    Double(f64),
    /// A boolean (`#t`/`#f` in RESP3; `:1`/`:0` in RESP2).
    Boolean(bool),
    /// Verbatim text (`=n\r\ntxt:...` in RESP3; a bulk string in RESP2).
    Verbatim(String),
    /// One reply already encoded, in the protocol of the connection it goes
    /// to: what another node answered to a forwarded command (the forward
    /// names the protocol). Copied to the wire as is.
    Raw(Bytes),
}

impl Reply {
    /// `+OK`
    pub const OK: Reply = Reply::Simple("OK");

    /// An `ERR ...` error reply.
    pub fn err(msg: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", msg.as_ref()))
    }

    /// A bulk string reply from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }
}

impl From<crate::error::Error> for Reply {
    fn from(e: crate::error::Error) -> Reply {
        Reply::Error(e.to_resp())
    }
}
