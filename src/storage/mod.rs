//! The single-node LSM storage engine (under construction).

pub mod bloom;
pub mod cache;
pub mod sstable;
pub mod types;

pub use types::{Entry, SeqNo, TableId};
