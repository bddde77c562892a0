//! The one place where the keyspace names the storage engine and the version
//! module, so that switching from the temporary stand-ins to the real branches
//! (`engine`, `version`) touches only this file.

pub use super::standin::engine::{
    CompactionFilter, Engine, EngineStats, FilterDecision, Options as StorageOptions, WriteBatch,
};
pub use super::standin::version::{context, ActorId, Payload, SiblingSet, Version, VersionVector};
