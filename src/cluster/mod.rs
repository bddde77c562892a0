//! (module under construction; see lib.rs for its role)

pub mod anti_entropy;
pub mod merkle;
