//! # ringkv
//!
//! A Dynamo-style, leaderless, replicated key-value store that speaks the Redis
//! protocol. This file is the map of the crate: one paragraph per module, what
//! it owns and who may call it. Imports go one way only:
//! `error`, `config` <- `protocol`, `storage`, `version` <- `cluster` <- `server`
//! <- `bin` (see `DESIGN.md` §1).
//!
//! - [`error`]: the one [`Error`] enum, grouped by what a caller
//!   does about a failure, and its RESP form (`to_resp`). Everyone uses it.
//! - [`config`]: the one [`Config`](config::Config): defaults <- TOML file <- env
//!   <- CLI flags, with `validate()`. Read by the binaries and the server.
//! - [`protocol`]: the RESP wire format. An incremental request parser of our own
//!   that enforces Redis' limits and error texts (multibulk and inline), and the
//!   [`Reply`](protocol::Reply) type with its RESP2/RESP3 encoder. Pure bytes in,
//!   frames out; no I/O.
//! - [`storage`]: the single-node LSM engine: commit log, memtable, SSTables with
//!   bloom filters, manifest, compaction. Keys and values are opaque bytes; it
//!   knows nothing of the network or the cluster.
//! - [`version`]: vector clocks (dotted version vectors), sibling sets, the
//!   causal-context tokens handed to clients, and their byte encodings. Pure
//!   logic, property-tested.
//! - [`cluster`]: the ring (partitions, preference lists), membership and gossip,
//!   the quorum coordinator, read-repair planning, Merkle trees and
//!   anti-entropy sessions, the durable hint store, and join/leave
//!   rebalancing plans (which partitions stream where). State machines that
//!   consume messages and ticks and produce messages and effects; no sockets.
//!   The server drives every one of them; tests drive them in simulations.
//! - [`server`]: the only async and network layer: the client listener and
//!   connection loop, command dispatch, the versioned keyspace over the storage
//!   engine (with its per-partition Merkle trees), background tasks (active
//!   expiry), the internode transport (`server::peer`), the gossip driver
//!   (`server::cluster_node`), the data path that routes, replicates and
//!   answers with quorums (`server::data_path`), hinted handoff
//!   (`server::handoff`), anti-entropy (`server::anti_entropy`), join/leave
//!   streaming (`server::rebalance`), and shutdown.
//! - [`client`]: a small async RESP client used by the REPL, tools and tests.
//! - [`cli`]: the `ringkv-cli` REPL: redis-cli-compatible output, hints from
//!   `COMMAND DOCS`, and the sibling display and `:resolve` helper.
//!
//! The binaries in `src/bin/` (`ringkv`, `ringkv-cli`) are thin: parse flags,
//! load config, set up tracing, run, report.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod protocol;
pub mod server;
pub mod storage;
pub mod version;

pub use error::{Error, Result};
