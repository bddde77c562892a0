//! Counters of the peer transport, for `INFO` and the metrics endpoint.
//!
//! Plain relaxed atomics: each counter is read on its own, and a snapshot that
//! is a few increments apart between fields is fine for monitoring.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every task of a [`PeerClient`](super::PeerClient)
/// or [`PeerListener`](super::PeerListener).
#[derive(Debug, Default)]
pub struct PeerStats {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    write_batches: AtomicU64,
    connections_opened: AtomicU64,
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    handshake_failures: AtomicU64,
    protocol_errors: AtomicU64,
    timeouts: AtomicU64,
    failed_fast: AtomicU64,
    queue_full: AtomicU64,
    expired_before_handling: AtomicU64,
}

/// A copy of the counters at one moment. Snapshots of a client and a listener
/// add up with `+` into the node's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStatsSnapshot {
    /// Bytes of data frames written, length prefixes included (handshakes
    /// are not counted).
    pub bytes_sent: u64,
    /// Bytes of data frames read, length prefixes included.
    pub bytes_received: u64,
    /// Data frames written (requests, responses, failures, one-way messages).
    pub messages_sent: u64,
    /// Data frames read.
    pub messages_received: u64,
    /// Socket flushes of the writer tasks; `messages_sent / write_batches` is
    /// the average number of frames coalesced into one write.
    pub write_batches: u64,
    /// Outbound connections that completed their handshake.
    pub connections_opened: u64,
    /// Inbound connections that completed their handshake.
    pub connections_accepted: u64,
    /// Connections (both directions) open right now.
    pub connections_active: u64,
    /// Outbound connections re-established after an earlier one to the same
    /// peer was lost or failed.
    pub reconnects: u64,
    /// Outbound connection attempts that failed before or during the handshake.
    pub connect_failures: u64,
    /// Handshakes that failed in either direction (bad magic, version, cluster,
    /// secret, deadline).
    pub handshake_failures: u64,
    /// Established connections closed because of a malformed or oversized
    /// frame or a frame that does not belong in that direction.
    pub protocol_errors: u64,
    /// Requests that hit their deadline.
    pub timeouts: u64,
    /// Requests and messages refused at once because the peer is in back-off
    /// after a failed connection attempt.
    pub failed_fast: u64,
    /// One-way messages dropped because the peer's queue was full.
    pub queue_full: u64,
    /// Incoming requests whose deadline had passed before a handler started;
    /// they were dropped without running.
    pub expired_before_handling: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    BytesSent,
    BytesReceived,
    MessagesSent,
    MessagesReceived,
    WriteBatches,
    ConnectionsOpened,
    ConnectionsAccepted,
    Reconnects,
    ConnectFailures,
    HandshakeFailures,
    ProtocolErrors,
    Timeouts,
    FailedFast,
    QueueFull,
    ExpiredBeforeHandling,
}

impl PeerStats {
    fn counter(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::BytesSent => &self.bytes_sent,
            Counter::BytesReceived => &self.bytes_received,
            Counter::MessagesSent => &self.messages_sent,
            Counter::MessagesReceived => &self.messages_received,
            Counter::WriteBatches => &self.write_batches,
            Counter::ConnectionsOpened => &self.connections_opened,
            Counter::ConnectionsAccepted => &self.connections_accepted,
            Counter::Reconnects => &self.reconnects,
            Counter::ConnectFailures => &self.connect_failures,
            Counter::HandshakeFailures => &self.handshake_failures,
            Counter::ProtocolErrors => &self.protocol_errors,
            Counter::Timeouts => &self.timeouts,
            Counter::FailedFast => &self.failed_fast,
            Counter::QueueFull => &self.queue_full,
            Counter::ExpiredBeforeHandling => &self.expired_before_handling,
        }
    }

    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.counter(counter).fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn active_connection(self: &std::sync::Arc<Self>) -> ActiveConnection {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }

    /// The counters now.
    pub fn snapshot(&self) -> PeerStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeerStatsSnapshot {
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            write_batches: get(&self.write_batches),
            connections_opened: get(&self.connections_opened),
            connections_accepted: get(&self.connections_accepted),
            connections_active: get(&self.connections_active),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            handshake_failures: get(&self.handshake_failures),
            protocol_errors: get(&self.protocol_errors),
            timeouts: get(&self.timeouts),
            failed_fast: get(&self.failed_fast),
            queue_full: get(&self.queue_full),
            expired_before_handling: get(&self.expired_before_handling),
        }
    }
}

/// Decrements `connections_active` when the connection it stands for closes.
pub(crate) struct ActiveConnection(std::sync::Arc<PeerStats>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerStatsSnapshot {
    /// `(name, value)` pairs in a fixed order, named as they appear in the
    /// `INFO` section (`peer_bytes_sent:1234`).
    pub fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("peer_bytes_sent", self.bytes_sent),
            ("peer_bytes_received", self.bytes_received),
            ("peer_messages_sent", self.messages_sent),
            ("peer_messages_received", self.messages_received),
            ("peer_write_batches", self.write_batches),
            ("peer_connections_opened", self.connections_opened),
            ("peer_connections_accepted", self.connections_accepted),
            ("peer_connections_active", self.connections_active),
            ("peer_reconnects", self.reconnects),
            ("peer_connect_failures", self.connect_failures),
            ("peer_handshake_failures", self.handshake_failures),
            ("peer_protocol_errors", self.protocol_errors),
            ("peer_timeouts", self.timeouts),
            ("peer_failed_fast", self.failed_fast),
            ("peer_queue_full", self.queue_full),
            ("peer_expired_before_handling", self.expired_before_handling),
        ]
    }
}

impl std::ops::Add for PeerStatsSnapshot {
    type Output = PeerStatsSnapshot;

    fn add(self, o: PeerStatsSnapshot) -> PeerStatsSnapshot {
        PeerStatsSnapshot {
            bytes_sent: self.bytes_sent + o.bytes_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            messages_sent: self.messages_sent + o.messages_sent,
            messages_received: self.messages_received + o.messages_received,
            write_batches: self.write_batches + o.write_batches,
            connections_opened: self.connections_opened + o.connections_opened,
            connections_accepted: self.connections_accepted + o.connections_accepted,
            connections_active: self.connections_active + o.connections_active,
            reconnects: self.reconnects + o.reconnects,
            connect_failures: self.connect_failures + o.connect_failures,
            handshake_failures: self.handshake_failures + o.handshake_failures,
            protocol_errors: self.protocol_errors + o.protocol_errors,
            timeouts: self.timeouts + o.timeouts,
            failed_fast: self.failed_fast + o.failed_fast,
            queue_full: self.queue_full + o.queue_full,
            expired_before_handling: self.expired_before_handling + o.expired_before_handling,
        }
    }
}
