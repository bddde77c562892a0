//! The dialing side: a pool of one multiplexed connection per peer, each owned
//! by a link task (queueing, back-off and the reasons for them are in the
//! module doc of [`peer`](super)).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frame::{Frame, PeerCodec, RequestId};
use super::handshake::{self, Established, HandshakeError};
use super::stats::{Counter, PeerStats};
use super::writer::{write_batches, WRITE_BUFFER_BOUNDARY};
use super::{PeerConfig, PeerError};
use crate::error::Error;

/// Sends requests and one-way messages to peers. Cheap to clone; all clones
/// share the connections. Dropping the last clone closes them.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: Arc<PeerConfig>,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
    peers: RwLock<HashMap<SocketAddr, PeerHandle>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What callers hold of a peer: the queue into its link task and the state
/// they share with it. The link task holds no sender of its own queue, so the
/// queue closes (and the task ends) when the client is dropped.
#[derive(Clone)]
struct PeerHandle {
    queue: mpsc::Sender<Outgoing>,
    link: Arc<Link>,
}

type Reply = Result<Bytes, PeerError>;

/// Identifies one connection of a link, so that losing it fails exactly the
/// requests that were written on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnectionNo(u64);

struct Waiter {
    reply: oneshot::Sender<Reply>,
    /// The connection the request went out on; `None` while still queued.
    /// A queued request survives a lost connection and goes out on the next.
    written_on: Option<ConnectionNo>,
}

/// The state of one peer shared between callers and its link task.
struct Link {
    addr: SocketAddr,
    /// Requests waiting for an answer, by id. An entry is removed by whoever
    /// completes it: the reader (answer), the link task (connection lost), or
    /// the caller's guard (deadline or caller gone).
    pending: Mutex<HashMap<RequestId, Waiter>>,
    next_id: AtomicU64,
    state: Mutex<LinkState>,
    /// Requests that timed out since the connection last delivered a frame.
    silent_timeouts: AtomicU32,
    /// Wakes the connection to close itself when `silent_timeouts` reaches
    /// [`PeerConfig::stalled_after_timeouts`].
    stalled: Notify,
}

#[derive(Clone, Debug)]
enum LinkState {
    /// No connection; the next message dials.
    Idle,
    Connecting,
    Up,
    /// The last attempt failed; everything fails fast until `until`.
    BackingOff {
        until: Instant,
        reason: Arc<str>,
    },
}

/// The state of the connection to one peer, for diagnostics
/// ([`PeerClient::links`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// No connection open; the next message dials.
    Idle,
    /// Dialing or in the handshake.
    Connecting,
    /// Connected.
    Up,
    /// The last dial failed; messages fail at once for `retry_in` more.
    BackingOff { retry_in: Duration, reason: String },
}

impl LinkState {
    fn status(&self) -> LinkStatus {
        match self {
            LinkState::Idle => LinkStatus::Idle,
            LinkState::Connecting => LinkStatus::Connecting,
            LinkState::Up => LinkStatus::Up,
            LinkState::BackingOff { until, reason } => {
                let retry_in = until.saturating_duration_since(Instant::now());
                if retry_in.is_zero() {
                    LinkStatus::Idle
                } else {
                    LinkStatus::BackingOff {
                        retry_in,
                        reason: reason.to_string(),
                    }
                }
            }
        }
    }
}

/// An item in a peer's queue.
enum Outgoing {
    Request {
        id: RequestId,
        deadline: Instant,
        payload: Bytes,
    },
    OneWay(Bytes),
}

/// Removes a request's pending entry when its caller stops waiting, for
/// whatever reason (answer, deadline, or the caller's future being dropped).
struct PendingGuard<'a> {
    link: &'a Link,
    id: RequestId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.pending.lock().remove(&self.id);
    }
}

impl Link {
    fn fail_fast(&self) -> Result<(), PeerError> {
        if let LinkState::BackingOff { until, reason } = &*self.state.lock() {
            let now = Instant::now();
            if *until > now {
                return Err(PeerError::Unavailable {
                    addr: self.addr,
                    reason: format!(
                        "{reason} (retrying in {} ms)",
                        until.duration_since(now).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    fn set_state(&self, state: LinkState) {
        *self.state.lock() = state;
    }

    fn complete(&self, id: RequestId, reply: Reply) {
        if let Some(waiter) = self.pending.lock().remove(&id) {
            // The caller may have just given up; nothing to do then.
            let _ = waiter.reply.send(reply);
        }
    }

    /// Counts a timed-out request; wakes the connection to close itself when
    /// `threshold` of them in a row saw no frame from the peer.
    fn timed_out(&self, threshold: u32) {
        let silent = self.silent_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && silent >= threshold {
            self.stalled.notify_waiters();
        }
    }

    /// Records that request `id` is being written on `connection`; `false`
    /// when its caller has stopped waiting (then it is not written at all).
    fn mark_written(&self, id: RequestId, connection: ConnectionNo) -> bool {
        match self.pending.lock().get_mut(&id) {
            Some(waiter) => {
                waiter.written_on = Some(connection);
                true
            }
            None => false,
        }
    }

    /// Fails one queued item that will never be written.
    fn fail(&self, item: Outgoing, error: impl FnOnce() -> PeerError) {
        if let Outgoing::Request { id, .. } = item {
            self.complete(id, Err(error()));
        }
    }

    /// Fails every request waiting for an answer.
    fn fail_all(&self, error: impl Fn() -> PeerError) {
        let waiters: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in waiters {
            let _ = waiter.reply.send(Err(error()));
        }
    }

    /// Fails the requests written on `connection`: their answers can no
    /// longer arrive.
    fn fail_written_on(&self, connection: ConnectionNo, error: impl Fn() -> PeerError) {
        let lost: Vec<Waiter> = {
            let mut pending = self.pending.lock();
            let ids: Vec<RequestId> = pending
                .iter()
                .filter(|(_, w)| w.written_on == Some(connection))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for waiter in lost {
            let _ = waiter.reply.send(Err(error()));
        }
    }
}

impl PeerClient {
    /// A client with its own counters. Connections are made on first use.
    pub fn new(config: PeerConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(PeerClient {
            inner: Arc::new(ClientInner {
                config: Arc::new(config),
                stats: Arc::new(PeerStats::default()),
                shutdown: CancellationToken::new(),
                peers: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// The client's counters.
    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.inner.stats
    }

    /// Closes every connection and fails every waiting request with
    /// [`PeerError::Closed`]; later calls fail the same way at once.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Sends `payload` to the peer at `addr` and waits for its answer, at most
    /// `deadline` in all (queueing, connecting, round trip and handler).
    pub async fn request(
        &self,
        addr: SocketAddr,
        payload: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, PeerError> {
        let deadline_at = Instant::now() + deadline;
        self.check_size(Frame::request_body_len(payload.len()))?;
        let peer = self.peer(addr)?;
        if let Err(e) = peer.link.fail_fast() {
            self.inner.stats.incr(Counter::FailedFast);
            return Err(e);
        }
        let id = RequestId(peer.link.next_id.fetch_add(1, Ordering::Relaxed));
        let (answer_tx, answer_rx) = oneshot::channel();
        peer.link.pending.lock().insert(
            id,
            Waiter {
                reply: answer_tx,
                written_on: None,
            },
        );
        let _guard = PendingGuard {
            link: &peer.link,
            id,
        };
        let exchange = async {
            let item = Outgoing::Request {
                id,
                deadline: deadline_at,
                payload,
            };
            peer.queue.send(item).await.map_err(|_| PeerError::Closed)?;
            answer_rx.await.map_err(|_| PeerError::Closed)?
        };
        match timeout_at(deadline_at, exchange).await {
            Ok(reply) => reply,
            Err(_) => {
                self.inner.stats.incr(Counter::Timeouts);
                peer.link
                    .timed_out(self.inner.config.stalled_after_timeouts);
                Err(PeerError::Timeout {
                    addr,
                    after: deadline,
                })
            }
        }
    }

    /// Queues a one-way message to the peer at `addr` without waiting. `Ok`
    /// means queued, not delivered. Like every method here it must be called
    /// inside a Tokio runtime (the first message to a peer starts its task).
    pub fn send(&self, addr: SocketAddr, payload: Bytes) -> Result<(), PeerError> {
        self.check_size(1 + payload.len())?;
        let peer = self.peer(addr)?;
        if let Err(e) = peer.link.fail_fast() {
            self.inner.stats.incr(Counter::FailedFast);
            return Err(e);
        }
        match peer.queue.try_send(Outgoing::OneWay(payload)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.stats.incr(Counter::QueueFull);
                Err(PeerError::QueueFull { addr })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PeerError::Closed),
        }
    }

    /// The state of the connection to every peer this client has talked to,
    /// sorted by address.
    pub fn links(&self) -> Vec<(SocketAddr, LinkStatus)> {
        let mut links: Vec<_> = self
            .inner
            .peers
            .read()
            .iter()
            .map(|(addr, peer)| (*addr, peer.link.state.lock().status()))
            .collect();
        links.sort_by_key(|(addr, _)| *addr);
        links
    }

    /// Forgets the peer at `addr` (it left the cluster): its connection is
    /// closed once requests already queued to it have been written, and the
    /// next message to `addr` starts afresh.
    pub fn forget(&self, addr: SocketAddr) {
        // Dropping the last sender of the peer's queue ends its link task.
        self.inner.peers.write().remove(&addr);
    }

    fn check_size(&self, body_len: usize) -> Result<(), PeerError> {
        let max = self.inner.config.max_frame_bytes;
        if body_len > max {
            return Err(PeerError::TooLarge { len: body_len, max });
        }
        Ok(())
    }

    /// The handle of the peer at `addr`, starting its link task on first use.
    fn peer(&self, addr: SocketAddr) -> Result<PeerHandle, PeerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(PeerError::Closed);
        }
        if let Some(peer) = self.inner.peers.read().get(&addr) {
            return Ok(peer.clone());
        }
        let mut peers = self.inner.peers.write();
        let peer = peers.entry(addr).or_insert_with(|| {
            let (queue, rx) = mpsc::channel(self.inner.config.queue_depth);
            let link = Arc::new(Link {
                addr,
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                state: Mutex::new(LinkState::Idle),
                silent_timeouts: AtomicU32::new(0),
                stalled: Notify::new(),
            });
            tokio::spawn(run_link(
                link.clone(),
                rx,
                LinkEnv {
                    config: self.inner.config.clone(),
                    stats: self.inner.stats.clone(),
                    shutdown: self.inner.shutdown.clone(),
                },
            ));
            PeerHandle { queue, link }
        });
        Ok(peer.clone())
    }
}

/// What every link task of a client shares.
struct LinkEnv {
    config: Arc<PeerConfig>,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
}

/// Exponential back-off with jitter.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
            failures: 0,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
        self.failures = 0;
    }

    /// The delay before the next attempt: the current step with ±20% jitter.
    fn fail(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        self.failures += 1;
        step.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
}

async fn connect(
    addr: SocketAddr,
    config: &PeerConfig,
    stats: &PeerStats,
) -> Result<Established, ConnectError> {
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::Connect(e)),
        Err(_) => return Err(ConnectError::ConnectTimeout(config.connect_timeout)),
    };
    // Latency over packet count: batching is done by the writer task.
    stream.set_nodelay(true).map_err(ConnectError::Connect)?;
    match timeout(
        config.handshake_timeout,
        handshake::dial(stream, config, addr),
    )
    .await
    {
        Ok(Ok(established)) => Ok(established),
        Ok(Err(e)) => {
            stats.incr(Counter::HandshakeFailures);
            Err(ConnectError::Handshake(e))
        }
        Err(_) => {
            stats.incr(Counter::HandshakeFailures);
            Err(ConnectError::HandshakeTimeout(config.handshake_timeout))
        }
    }
}

/// Owns the connection to one peer for the client's lifetime: dial on demand,
/// serve the connection, back off after failures.
async fn run_link(link: Arc<Link>, mut queue: mpsc::Receiver<Outgoing>, env: LinkEnv) {
    let LinkEnv {
        config,
        stats,
        shutdown,
    } = &env;
    let addr = link.addr;
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut ever_connected = false;
    let mut connections = 0u64;
    'link: loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'link,
            item = queue.recv() => match item {
                Some(item) => item,
                None => break 'link,
            },
        };
        link.set_state(LinkState::Connecting);
        let attempt = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                link.fail(first, || PeerError::Closed);
                break 'link;
            }
            attempt = connect(addr, config, stats) => attempt,
        };
        match attempt {
            Ok(established) => {
                stats.incr(Counter::ConnectionsOpened);
                if ever_connected || backoff.failures > 0 {
                    stats.incr(Counter::Reconnects);
                    info!(peer = %addr, node = %established.peer.node_id,
                          failed_attempts = backoff.failures, "reconnected to peer");
                } else {
                    debug!(peer = %addr, node = %established.peer.node_id, "connected to peer");
                }
                ever_connected = true;
                backoff.reset();
                link.silent_timeouts.store(0, Ordering::Relaxed);
                link.set_state(LinkState::Up);
                connections += 1;
                let connection = ConnectionNo(connections);
                let ended =
                    serve_connection(established, connection, first, &mut queue, &link, &env).await;
                link.set_state(LinkState::Idle);
                if shutdown.is_cancelled() {
                    break 'link;
                }
                let reason = format!("{}: {ended}", super::CONNECTION_LOST);
                link.fail_written_on(connection, || PeerError::Unavailable {
                    addr,
                    reason: reason.clone(),
                });
                match ended {
                    ConnectionEnd::QueueClosed => break 'link,
                    ConnectionEnd::Shutdown => break 'link,
                    ConnectionEnd::ClosedByPeer => {
                        info!(peer = %addr, "peer closed the connection")
                    }
                    ConnectionEnd::Failed(error) => {
                        warn!(peer = %addr, %error, "peer connection failed")
                    }
                }
            }
            Err(error) => {
                stats.incr(Counter::ConnectFailures);
                let delay = backoff.fail();
                if backoff.failures == 1 {
                    warn!(peer = %addr, %error, retry_in = ?delay, "cannot reach peer");
                } else {
                    debug!(peer = %addr, %error, retry_in = ?delay,
                           failures = backoff.failures, "still cannot reach peer");
                }
                let reason: Arc<str> = error.to_string().into();
                let unavailable = || PeerError::Unavailable {
                    addr,
                    reason: reason.to_string(),
                };
                link.set_state(LinkState::BackingOff {
                    until: Instant::now() + delay,
                    reason: reason.clone(),
                });
                link.fail(first, unavailable);
                // Whatever was queued behind the first message, or slips in
                // before callers see the back-off state, fails now too.
                let wait = tokio::time::sleep(delay);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break 'link,
                        _ = &mut wait => break,
                        item = queue.recv() => match item {
                            Some(item) => {
                                stats.incr(Counter::FailedFast);
                                link.fail(item, unavailable);
                            }
                            None => break 'link,
                        },
                    }
                }
                link.set_state(LinkState::Idle);
            }
        }
    }
    // Shutting down or dropped: nothing queued or in flight will be answered.
    link.fail_all(|| PeerError::Closed);
    queue.close();
    while let Ok(item) = queue.try_recv() {
        link.fail(item, || PeerError::Closed);
    }
}

/// Why an established connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("client dropped")]
    QueueClosed,
    #[error("shutting down")]
    Shutdown,
    #[error("closed by peer")]
    ClosedByPeer,
    #[error("{0}")]
    Failed(String),
}

/// Writes queued messages and reads answers until either side stops.
async fn serve_connection(
    established: Established,
    connection: ConnectionNo,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
    link: &Link,
    env: &LinkEnv,
) -> ConnectionEnd {
    let LinkEnv {
        config,
        stats,
        shutdown,
    } = env;
    let _active = stats.active_connection();
    let parts = established.framed.into_parts();
    let (read_half, write_half) = parts.io.into_split();
    let mut reader = FramedRead::new(read_half, parts.codec);
    // Bytes the handshake read past its last frame belong to the data phase.
    *reader.read_buffer_mut() = parts.read_buf;
    let mut writer = FramedWrite::new(write_half, PeerCodec::new(config.max_frame_bytes));
    writer.set_backpressure_boundary(WRITE_BUFFER_BOUNDARY);

    let write = write_batches(
        &mut writer,
        queue,
        Some(first),
        config.max_batch,
        stats,
        |item| match item {
            Outgoing::Request {
                id,
                deadline,
                payload,
            } => {
                let now = Instant::now();
                // A caller that already gave up needs no frame on the wire.
                if deadline <= now || !link.mark_written(id, connection) {
                    return None;
                }
                Some(Frame::Request {
                    id,
                    budget: deadline - now,
                    payload,
                })
            }
            Outgoing::OneWay(payload) => Some(Frame::OneWay { payload }),
        },
    );
    let read = async {
        loop {
            let frame = match reader.next().await {
                None => return ConnectionEnd::ClosedByPeer,
                Some(Err(e)) => {
                    stats.incr(Counter::ProtocolErrors);
                    return ConnectionEnd::Failed(format!("bad frame from peer: {e}"));
                }
                Some(Ok(frame)) => frame,
            };
            stats.add(Counter::BytesReceived, frame.wire_len() as u64);
            stats.incr(Counter::MessagesReceived);
            link.silent_timeouts.store(0, Ordering::Relaxed);
            match frame {
                Frame::Response { id, payload } => link.complete(id, Ok(payload)),
                Frame::Failure { id, reason } => link.complete(
                    id,
                    Err(PeerError::Remote {
                        addr: link.addr,
                        reason,
                    }),
                ),
                other => {
                    stats.incr(Counter::ProtocolErrors);
                    return ConnectionEnd::Failed(format!(
                        "unexpected {:?} frame from the acceptor",
                        other.kind()
                    ));
                }
            }
        }
    };
    let stalled = link.stalled.notified();
    // Biased so that a connection found dead is closed before the writer gets
    // to put another request on it.
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => ConnectionEnd::Shutdown,
        _ = stalled => ConnectionEnd::Failed(format!(
            "{} requests in a row timed out with nothing received; assuming the connection is dead",
            config.stalled_after_timeouts
        )),
        written = write => match written {
            Ok(()) => ConnectionEnd::QueueClosed,
            Err(e) => ConnectionEnd::Failed(format!("write failed: {e}")),
        },
        end = read => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<Duration> = (0..5).map(|_| backoff.fail()).collect();
        for (step, nominal) in steps.iter().zip([100u64, 200, 400, 400, 400]) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *step >= nominal.mul_f64(0.8) && *step <= nominal.mul_f64(1.2),
                "{step:?} is not within 20% of {nominal:?}"
            );
        }
        backoff.reset();
        assert!(backoff.fail() <= Duration::from_millis(120));
    }
}
