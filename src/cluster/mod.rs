//! The cluster's logic, as pure state machines: no sockets, no threads, no
//! clocks of their own.
//!
//! Each part consumes inputs (a message from a peer, a tick with the current
//! time) and returns what should happen (messages to send, status changes) as
//! plain values. The server's network layer feeds them real packets and real
//! time; the tests feed them a simulated network with a virtual clock and a
//! seeded random generator, so a 100-node cluster with partitions, loss and
//! restarts runs in milliseconds and the same seed always gives the same run.
//!
//! - [`ring`]: key hashing, the `Q` fixed partitions and who owns them
//!   (preference lists with fallbacks), computed identically on every node
//!   from the member set alone.
//! - [`membership`]: gossip of the member list (heartbeats, incarnations,
//!   tombstones of members that left) and failure detection (Up / Suspect /
//!   Down), plus the cluster-wide settings a node must share to join.
//! - [`messages`]: everything nodes say to each other, its postcard encoding
//!   and the framing of the internode connection.
//! - [`sim`]: a deterministic simulation harness for the state machines
//!   (virtual clock, message delay and loss, network partitions, restarts).
//! - [`merkle`]: one Merkle tree per partition over buckets of key hashes,
//!   maintained incrementally on every write (order-independent leaf sums).
//! - [`anti_entropy`]: the deciding half of replica repair: which buckets
//!   differ, which keys go each way, as a session driven by messages.
//!
//! - [`coordinator`]: the quorum coordinator: routing (one-hop forward),
//!   sloppy-quorum writes with hints, R/W quorum reads, deadlines.
//! - [`read_repair`]: which replicas lack what after a quorum read.
//! - [`hints`]: the durable hint store (on its own storage engine, behind a
//!   narrow trait) and the throttled handoff planner.
//! - [`rebalance`]: join and leave: which partitions a node streams to
//!   which new owners, and when it may drop one.
//!
//! The server drives each of them over the real transport (`server::*`).

pub mod anti_entropy;
pub mod coordinator;
pub mod hints;
pub mod membership;
pub mod merkle;
pub mod messages;
pub mod read_repair;
pub mod rebalance;
pub mod ring;
pub mod sim;

pub use membership::{ClusterSettings, Effect, GossipConfig, Member, Membership, Status};
pub use messages::Message;
pub use ring::{key_hash, partition_of, NodeId, PartitionId, Ring, Token};
