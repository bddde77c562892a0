//! The one place where the keyspace names the storage engine and the version
//! module it is built on.

pub use crate::storage::{
    CompactionFilter, Engine, EngineStats, FilterDecision, Options as StorageOptions, WriteBatch,
};
pub use crate::version::{
    context, decode_live_values, ActorId, LiveValues, Payload, SiblingLimits, SiblingPressure,
    SiblingSet, Version, VersionVector,
};
