//! TEMPORARY stand-ins for the storage engine (branch `engine`) and the
//! version module (branch `version`) while those branches are being written.
//! They implement the promised interfaces with the smallest correct code so
//! that the keyspace can be built and tested now; `super::deps` switches to the
//! real modules and this directory is deleted as soon as they land.

pub mod engine;
pub mod version;
