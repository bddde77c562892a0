//! The internode transport: the only code that moves cluster messages between
//! ringkv processes (DESIGN.md §4, "Internode transport").
//!
//! It carries opaque payloads ([`Bytes`]); the cluster layer serializes its
//! messages into them (serde + postcard) and versions them itself. The
//! transport knows framing, identity, deadlines and connections, nothing of
//! what a message means, so the cluster's message enum can change without
//! touching this code and the same cluster code can run over a simulated
//! network in tests.
//!
//! - [`PeerListener::bind`] serves the peer port (by default 10000 above the
//!   client port, see [`default_peer_port`]) and hands each incoming message
//!   to a [`Handler`].
//! - [`PeerClient::request`] sends a request and waits for its answer within a
//!   deadline; [`PeerClient::send`] sends a one-way message (gossip).
//! - [`PeerStats`] counts bytes, messages, connections, reconnects, handshake
//!   failures and timeouts for `INFO`.
//!
//! # Wire format (protocol version 1)
//!
//! All integers are big-endian. A connection carries, in each direction, a
//! 5-byte **preamble** and then only **frames**.
//!
//! ```text
//! preamble    offset  size  field
//!             0       4     magic  "RKVP" (52 4B 56 50)
//!             4       1     protocol version (1)
//!
//! frame       0       4     body length L (u32); 1 <= L <= max frame size
//!             4       1     kind
//!             5       L-1   kind-specific fields, below
//!
//! kind  name      fields after the kind byte
//! 0x01  HELLO     flags u8 (bit 0: sender has a cluster secret; other bits 0)
//!                 nonce [32] (random)
//!                 node id: length u8, UTF-8 bytes
//!                 cluster name: length u8, UTF-8 bytes
//! 0x02  PROOF     mac [32]: HMAC-SHA256(secret, transcript), see below
//! 0x03  READY     (nothing)
//! 0x04  REFUSE    reason: UTF-8, rest of the body (either side, handshake only)
//! 0x10  REQUEST   request id u64, budget u32 (milliseconds), payload (rest)
//! 0x11  RESPONSE  request id u64, payload (rest)
//! 0x12  FAILURE   request id u64, reason: UTF-8, rest of the body
//! 0x13  ONEWAY    payload (rest)
//! ```
//!
//! The handshake, with `[...]` only when a cluster secret is configured:
//!
//! ```text
//! dialer   -> acceptor  preamble, HELLO(dialer)
//! acceptor -> dialer    preamble, HELLO(acceptor), [PROOF(acceptor)]
//!                       (or preamble, REFUSE: wrong cluster, secret on one side only)
//! dialer   -> acceptor  [PROOF(dialer)]  (or REFUSE: the acceptor's proof was wrong)
//! acceptor -> dialer    READY   (or REFUSE: the dialer's proof was wrong)
//! ```
//!
//! then the dialer sends REQUEST and ONEWAY frames and the acceptor answers
//! each REQUEST with exactly one RESPONSE or FAILURE carrying its id, in any
//! order. The proof transcript is
//! `"ringkv-peer-proof-v1" || role || dialer nonce || acceptor nonce ||
//! len u8 || sender node id || len u8 || cluster name`, where role is `'D'`
//! (0x44) for the dialer's proof and `'A'` (0x41) for the acceptor's.
//!
//! Anything else closes the connection with a `warn!` naming the peer's
//! address: a wrong magic or version, a body over the maximum (64 MiB by
//! default; 4 KiB until the handshake is done), an unknown kind, a malformed
//! or truncated body, a frame in the wrong phase or direction, a handshake
//! that misses its deadline. The listener keeps serving everyone else.
//!
//! # Why it looks like this
//!
//! - **Magic first.** A stray client on the peer port (redis-cli, a port
//!   scanner, an HTTP probe) is recognised by its first four bytes and turned
//!   away with a clear log line, instead of its bytes being read as a length.
//! - **Version once, in the preamble.** Framing and handshake are fixed per
//!   version, so there is nothing to version per frame. An acceptor answers a
//!   version mismatch with its own preamble before closing, so the dialer's
//!   log names both versions. Payload versioning is the cluster layer's job.
//! - **A 4-byte length prefix** (the layout of tokio-util's
//!   `LengthDelimitedCodec`; the codec is our own, see [`frame::PeerCodec`]),
//!   with a configurable maximum: partition streaming sends large batches,
//!   but one frame must never make a node allocate without bound.
//! - **Relative budgets, not absolute deadlines.** Node clocks agree only
//!   roughly; the requester writes how many milliseconds it will still wait
//!   *when the frame is written*, so queueing time on the sender is already
//!   subtracted and clock offsets do not matter. Transit time is not
//!   subtracted: the receiver errs on the side of doing the work.
//! - **One-directional connections.** The dialer asks, the acceptor answers;
//!   two nodes that talk both ways hold two connections. This avoids the race
//!   (and tie-break protocol) of two nodes dialing each other at once, and a
//!   request id space belongs to one side only. The cost is one socket more
//!   per pair of nodes.
//! - **Proofs bind role, both nonces, sender id and cluster**, so a proof
//!   cannot be replayed on another connection or reflected back at its maker.
//!
//! # Authentication and its limits
//!
//! With a cluster secret ([`PeerConfig::secret`]) both ends prove knowledge of
//! it by the challenge-response above; a peer without it, with a different
//! one, or with one when this node has none, is refused and logged. Proofs are
//! compared in constant time. This authenticates the connection at set-up
//! only: frames after the handshake are neither encrypted nor individually
//! authenticated, so an attacker who can modify traffic on the path could
//! still inject frames into an established connection. Run the peer port on a
//! private network, or through a tunnel (WireGuard, stunnel) where the path is
//! not trusted.
//!
//! **Without a secret there is no authentication at all:** anyone who can
//! reach the peer port can write any key and forge membership. Bind it to a
//! private interface or firewall it.
//!
//! Either way, what a stranger can hold is bounded: at most
//! [`PeerConfig::max_connections`] incoming connections at once, 4 KiB of
//! buffered frame and [`PeerConfig::handshake_timeout`] per connection until
//! the handshake is done.
//!
//! # Connections, queues and deadlines
//!
//! A [`PeerClient`] keeps one connection per peer address and multiplexes all
//! requests to that peer over it, matched by request id. A per-peer task owns
//! the connection: it connects lazily on the first message, writes queued
//! frames in batches (everything queued, up to [`PeerConfig::max_batch`]
//! frames, is encoded into one buffer and flushed with one write), and reads
//! responses. The queue in front of it is bounded ([`PeerConfig::queue_depth`]):
//!
//! - [`PeerClient::request`] **waits** for room in the queue, but only until
//!   its deadline, then fails with [`PeerError::Timeout`]; the deadline covers
//!   queueing, connecting, the round trip and the handler.
//! - [`PeerClient::send`] **never waits**: a full queue drops the message
//!   with [`PeerError::QueueFull`]. Gossip is periodic; the next round repairs
//!   a lost one, and a stuck peer must not stall the gossip loop.
//!
//! When a connection breaks, every request written on it fails at once with
//! [`PeerError::Unavailable`] (its answer can no longer come); requests still
//! queued go out on the next connection, which the next message dials at
//! once. If a dial fails, the peer enters back-off (from
//! [`PeerConfig::backoff_initial`], doubling up to [`PeerConfig::backoff_max`],
//! with ±20% jitter so a cluster does not redial in lockstep), and until it
//! ends every request and message to that peer fails immediately with
//! [`PeerError::Unavailable`] instead of waiting for its deadline: the
//! coordinator can count that replica as down and go on to a fallback.
//!
//! A connection can also die silently (a partition that drops packets, a peer
//! frozen by SIGSTOP), and TCP would keep retransmitting for many minutes. So
//! when [`PeerConfig::stalled_after_timeouts`] requests in a row time out with
//! not a single frame arriving meanwhile, the connection is taken for dead and
//! closed; the redial then fails and backs off for as long as the peer stays
//! unreachable.
//!
//! A known limit of one connection per peer: a very large frame (a batch of a
//! partition being streamed) delays the small frames queued behind it by its
//! transfer time. Bulk senders should send chunks of about 1 MiB (a few
//! milliseconds on a LAN); a second, bulk connection per peer is the next
//! step should that not be enough.
//!
//! On the serving side, [`Handler::handle`] is called on the connection's
//! reader task in arrival order, so a handler sees one peer's one-way
//! messages in the order they were sent and can do cheap synchronous work
//! without a task switch. The future it returns is polled once right there;
//! if it is not done (it waits on disk or on other nodes), it moves to a task
//! of its own, so a slow request does not hold up the others on the same
//! connection, while an answer from memory costs no task spawn. At most
//! [`PeerConfig::max_inflight`] of them run per connection; beyond that the
//! reader stops reading, and TCP pushes back on the sender. (An mpsc of
//! incoming requests with responders was the alternative; it adds a queue
//! hop and a second bound without buying anything the trait does not.)
//! A request whose budget ran out before a handler slot was free is dropped
//! unhandled; a running handler is never cancelled midway (a replica write
//! must not be torn at an await point); its late answer is dropped.
//!
//! # Shutdown
//!
//! [`PeerListener::shutdown`] stops accepting, stops reading new frames,
//! waits up to [`PeerConfig::shutdown_grace`] for running handlers and sends
//! their answers, then closes. [`PeerClient::shutdown`] fails every waiting
//! request with [`PeerError::Closed`] and closes its connections.

mod client;
pub mod frame;
mod handshake;
mod listener;
mod stats;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use client::{LinkStatus, PeerClient};
pub use handshake::{ClusterSecret, HandshakeError};
pub use listener::PeerListener;
pub use stats::{PeerStats, PeerStatsSnapshot};

use crate::error::Error;
use frame::{HANDSHAKE_MAX_FRAME, MAX_NAME_LEN};

/// How far above the client port the peer port sits by default.
pub const PEER_PORT_OFFSET: u16 = 10_000;

/// The default peer port for a node whose client port is `client_port`
/// (client port + 10000), or `None` when that passes 65535.
pub fn default_peer_port(client_port: u16) -> Option<u16> {
    client_port.checked_add(PEER_PORT_OFFSET)
}

/// Settings of the peer transport. Every node of a cluster should use the
/// same `cluster_name`, `secret` and `max_frame_bytes`.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This node's id as other nodes know it; sent in the handshake and shown
    /// to their handlers as [`PeerInfo::node_id`]. At most 255 bytes.
    pub node_id: String,
    /// Nodes of different clusters refuse each other. At most 255 bytes.
    /// Default `"ringkv"`.
    pub cluster_name: String,
    /// The shared cluster secret; `None` (default) means no authentication.
    pub secret: Option<ClusterSecret>,
    /// The largest frame body, in bytes, accepted or sent once the handshake
    /// is done. Default 64 MiB; between 4 KiB and `u32::MAX`.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before [`PeerClient::request`] waits and
    /// [`PeerClient::send`] drops. Default 4096.
    pub queue_depth: usize,
    /// Handlers running at once per incoming connection. Default 1024.
    pub max_inflight: usize,
    /// Frames coalesced into one socket write at most. Default 256.
    pub max_batch: usize,
    /// Time allowed for the TCP connect. Default 1 s.
    pub connect_timeout: Duration,
    /// Time allowed for the whole handshake after the TCP connect, on both
    /// sides. Default 2 s.
    pub handshake_timeout: Duration,
    /// The first back-off after a failed connection attempt. Default 50 ms.
    pub backoff_initial: Duration,
    /// The longest back-off between attempts. Default 2 s.
    pub backoff_max: Duration,
    /// How long a listener shutting down waits for running handlers. Default 5 s.
    pub shutdown_grace: Duration,
    /// Incoming connections served at once, handshakes included; more are
    /// closed at once with a warning. Bounds what strangers on the peer port
    /// can hold. Default 1024.
    pub max_connections: usize,
    /// Requests to one peer that may time out in a row, with no frame at all
    /// arriving from it meanwhile, before its connection is taken for dead,
    /// closed and redialed. Default 3; 0 never gives up on a connection.
    pub stalled_after_timeouts: u32,
}

impl PeerConfig {
    /// The defaults for a node called `node_id` in the cluster `"ringkv"`.
    pub fn new(node_id: impl Into<String>) -> Self {
        PeerConfig {
            node_id: node_id.into(),
            cluster_name: "ringkv".to_string(),
            secret: None,
            max_frame_bytes: 64 * 1024 * 1024,
            queue_depth: 4096,
            max_inflight: 1024,
            max_batch: 256,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            max_connections: 1024,
            stalled_after_timeouts: 3,
        }
    }

    /// Checks the limits the wire format and the tasks rely on.
    pub fn validate(&self) -> Result<(), Error> {
        for (what, s) in [
            ("node id", &self.node_id),
            ("cluster name", &self.cluster_name),
        ] {
            if s.len() > MAX_NAME_LEN {
                return Err(Error::invalid(format!(
                    "peer {what} is {} bytes, at most {MAX_NAME_LEN} allowed",
                    s.len()
                )));
            }
        }
        if self.max_frame_bytes < HANDSHAKE_MAX_FRAME
            || u32::try_from(self.max_frame_bytes).is_err()
        {
            return Err(Error::invalid(format!(
                "peer max frame size {} must be between {HANDSHAKE_MAX_FRAME} and {}",
                self.max_frame_bytes,
                u32::MAX
            )));
        }
        for (what, n) in [
            ("queue depth", self.queue_depth),
            ("max in-flight", self.max_inflight),
            ("max batch", self.max_batch),
            ("max connections", self.max_connections),
        ] {
            if n == 0 {
                return Err(Error::invalid(format!("peer {what} must be at least 1")));
            }
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(Error::invalid(
                "peer back-off must be positive and backoff_max >= backoff_initial",
            ));
        }
        Ok(())
    }
}

/// Who sent an incoming message, as established by the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node id the peer announced (proven when `authenticated`).
    pub node_id: String,
    /// The socket address of the other end of the connection.
    pub addr: SocketAddr,
    /// Whether the peer proved the cluster secret.
    pub authenticated: bool,
}

/// Serves incoming peer messages. See the module doc for when it is called
/// and what runs where.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message from `from`. For a request, `Some(reply)` is sent
    /// back as the response and `None` as a failure ("no reply"), so the
    /// requester learns at once instead of at its deadline. For a one-way
    /// message the result is ignored.
    fn handle(&self, from: &PeerInfo, payload: Bytes) -> BoxFuture<'static, Option<Bytes>>;
}

impl<F> Handler for F
where
    F: Fn(&PeerInfo, Bytes) -> BoxFuture<'static, Option<Bytes>> + Send + Sync + 'static,
{
    fn handle(&self, from: &PeerInfo, payload: Bytes) -> BoxFuture<'static, Option<Bytes>> {
        self(from, payload)
    }
}

/// Why a message to a peer did not get through (or get answered).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The deadline passed first (queueing, connecting, round trip, handler).
    #[error("peer {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The peer cannot be reached: connection refused or lost, handshake
    /// failed, or in back-off after such a failure.
    #[error("peer {addr} unavailable: {reason}")]
    Unavailable { addr: SocketAddr, reason: String },
    /// A one-way message was dropped because the peer's queue is full.
    #[error("queue to peer {addr} is full")]
    QueueFull { addr: SocketAddr },
    /// The peer received the request but sent a failure instead of an answer.
    #[error("peer {addr} failed the request: {reason}")]
    Remote { addr: SocketAddr, reason: String },
    /// The payload does not fit the maximum frame size.
    #[error("message of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The transport is shutting down.
    #[error("peer transport is shut down")]
    Closed,
}

impl PeerError {
    /// Whether the same message may get through later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PeerError::Timeout { .. } | PeerError::Unavailable { .. } | PeerError::QueueFull { .. }
        )
    }

    /// Whether the message certainly never reached the peer (refused before
    /// sending: back-off, a failed dial, a full queue, too large), so sending
    /// it elsewhere cannot make it happen twice. A request lost with its
    /// connection, or one that timed out, may have been carried out.
    pub fn never_sent(&self) -> bool {
        match self {
            PeerError::Unavailable { reason, .. } => !reason.starts_with(CONNECTION_LOST),
            PeerError::QueueFull { .. } | PeerError::TooLarge { .. } => true,
            PeerError::Timeout { .. } | PeerError::Remote { .. } | PeerError::Closed => false,
        }
    }
}

/// How the reason of a [`PeerError::Unavailable`] starts when the request
/// was written on a connection that then broke (it may have been served).
pub(crate) const CONNECTION_LOST: &str = "connection lost";

impl From<PeerError> for Error {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Timeout { .. } => Error::Timeout(e.to_string()),
            PeerError::Unavailable { .. } | PeerError::QueueFull { .. } => Error::Io(
                std::io::Error::new(std::io::ErrorKind::NotConnected, e.to_string()),
            ),
            PeerError::Remote { .. } => Error::Io(std::io::Error::other(e.to_string())),
            PeerError::TooLarge { .. } => Error::invalid(e.to_string()),
            PeerError::Closed => Error::Closed("peer transport"),
        }
    }
}

/// A handler built from a closure, for callers that need no state.
pub fn handler_fn<F>(f: F) -> Arc<dyn Handler>
where
    F: Fn(&PeerInfo, Bytes) -> BoxFuture<'static, Option<Bytes>> + Send + Sync + 'static,
{
    Arc::new(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_peer_port_is_client_port_plus_ten_thousand() {
        assert_eq!(default_peer_port(7000), Some(17000));
        assert_eq!(default_peer_port(60000), None);
    }

    #[test]
    fn defaults_validate_and_limits_are_enforced() {
        let config = PeerConfig::new("n1");
        config.validate().expect("defaults are valid");
        assert_eq!(config.max_frame_bytes, 64 * 1024 * 1024);

        let mut bad = config.clone();
        bad.node_id = "x".repeat(256);
        assert!(bad.validate().is_err());
        let mut bad = config.clone();
        bad.max_frame_bytes = 100;
        assert!(bad.validate().is_err());
        let mut bad = config;
        bad.queue_depth = 0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn only_errors_raised_before_sending_say_the_message_was_never_sent() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("literal address");
        let refused = PeerError::Unavailable {
            addr,
            reason: "Connection refused (os error 111) (retrying in 40 ms)".into(),
        };
        assert!(refused.never_sent());
        let lost = PeerError::Unavailable {
            addr,
            reason: format!("{CONNECTION_LOST}: closed by peer"),
        };
        assert!(!lost.never_sent(), "a written request may have been served");
        assert!(PeerError::QueueFull { addr }.never_sent());
        let timeout = PeerError::Timeout {
            addr,
            after: Duration::from_secs(1),
        };
        assert!(!timeout.never_sent());
    }

    #[test]
    fn peer_errors_map_to_retryable_crate_errors() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("literal address");
        let timeout: Error = PeerError::Timeout {
            addr,
            after: Duration::from_secs(1),
        }
        .into();
        assert!(timeout.to_resp().starts_with("TIMEOUT "));
        assert!(timeout.is_retryable());
        let down: Error = PeerError::Unavailable {
            addr,
            reason: "connection refused".into(),
        }
        .into();
        assert!(down.is_retryable());
        assert!(!Error::from(PeerError::Closed).is_retryable());
    }
}
