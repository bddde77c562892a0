//! The single-node LSM storage engine (under construction).

pub mod types;

pub use types::{Entry, SeqNo, TableId};
