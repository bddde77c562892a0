//! The RESP wire format: an incremental request parser of our own (multibulk
//! and inline commands, with Redis' limits and error texts) and the [`Reply`]
//! type with its RESP2/RESP3 encoder. Pure bytes in, frames out; no I/O.
//!
//! - [`parser`]: [`RequestParser`] turns a connection's read buffer into
//!   [`Request`]s, enforcing [`Limits`]; its errors ([`ProtocolError`]) carry
//!   Redis' texts. Also [`split_args`], Redis' quoting rules for a command
//!   line (inline requests and the REPL).
//! - [`encode`]: [`encode()`] writes a [`Reply`] as RESP2 or RESP3 into an
//!   output buffer; [`encode_command`] writes a request (for clients).
//! - [`reply`]: the protocol-independent [`Reply`].
//!
//! Departure from DESIGN.md §1, which planned to parse requests with
//! `redis-protocol`: that crate has no limits and recurses, so requests use our
//! parser; `redis-protocol` decodes *replies* in the client and checks the
//! encoder in tests.

pub mod encode;
pub mod parser;
pub mod reply;

pub use encode::{encode, encode_command, ProtocolVersion};
pub use parser::{parse_redis_int, split_args, Limits, ProtocolError, Request, RequestParser};
pub use reply::Reply;
