//! The RESP wire format: an incremental request parser of our own (multibulk
//! and inline commands, with Redis' limits and error texts) and the [`Reply`]
//! type with its RESP2/RESP3 encoder. Pure bytes in, frames out; no I/O.
//!
//! - [`parser`]: [`RequestParser`] turns a connection's read buffer into
//!   [`Request`]s, enforcing [`Limits`]; its errors ([`ProtocolError`]) carry
//!   Redis' texts. Also [`split_args`], Redis' quoting rules for a command
//!   line (inline requests and the REPL).
//! - [`encode`](mod@encode): [`encode()`] writes a [`Reply`] as RESP2 or RESP3 into an
//!   output buffer; [`encode_command`] writes a request (for clients).
//! - [`reply`]: the protocol-independent [`Reply`].
//! - [`value`]: [`Value`], a reply as a client reads it, and [`ValueDecoder`],
//!   an incremental RESP2/RESP3 reply decoder (used by [`crate::client`]).
//!
//! Departure from DESIGN.md §1, which planned to parse requests with
//! `redis-protocol`: that crate has no limits and recurses, so requests use our
//! parser; `redis-protocol` is the reference our encoder and reply decoder are tested
//! against (it loses RESP3 map order and cannot hold a set of arrays, so the
//! client decodes with [`ValueDecoder`]).

pub mod encode;
pub mod parser;
pub mod reply;
pub mod value;

pub use encode::{encode, encode_command, ProtocolVersion};
pub use parser::{parse_redis_int, split_args, Limits, ProtocolError, Request, RequestParser};
pub use reply::Reply;
pub use value::{MalformedReply, Value, ValueDecoder, ValueLimits};
