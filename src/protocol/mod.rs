//! The RESP wire format: an incremental request parser of our own (multibulk
//! and inline commands, with Redis' limits and error texts) and the [`Reply`]
//! type with its RESP2/RESP3 encoder. Pure bytes in, frames out; no I/O.

pub mod reply;

pub use reply::Reply;
