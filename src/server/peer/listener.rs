//! The accepting side: the peer port's accept loop and one task per incoming
//! connection (handler scheduling and shutdown are described in the module
//! doc of [`peer`](super)).

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;

use futures::future::Either;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::frame::{Frame, PeerCodec, RequestId};
use super::handshake;
use super::stats::{Counter, PeerStats};
use super::writer::{write_batches, WRITE_BUFFER_BOUNDARY};
use super::{Handler, PeerConfig};
use crate::error::Error;

/// The peer port: accepts connections from other nodes and hands their
/// messages to a [`Handler`].
pub struct PeerListener {
    local_addr: SocketAddr,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PeerListener {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn bind(
        addr: SocketAddr,
        config: PeerConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<PeerListener, Error> {
        config.validate()?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let stats = Arc::new(PeerStats::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            handler,
            stats.clone(),
            shutdown.clone(),
        ));
        info!(addr = %local_addr, "listening for peers");
        Ok(PeerListener {
            local_addr,
            stats,
            shutdown,
            accept_task: Mutex::new(Some(task)),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's counters.
    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }

    /// Stops accepting and reading, lets running handlers finish (up to the
    /// configured grace) and send their answers, and closes every connection.
    /// Returns when all of that is done.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let task = self.accept_task.lock().take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                error!(error = %e, "peer accept loop panicked");
            }
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<PeerConfig>,
    handler: Arc<dyn Handler>,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "peer connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((_, remote)) if connections.len() >= config.max_connections => {
                    // Dropping the stream closes it. Peers that belong here
                    // redial with back-off once slots free up.
                    stats.incr(Counter::HandshakeFailures);
                    warn!(peer = %remote, limit = config.max_connections,
                          "refused peer connection: too many connections");
                }
                Ok((stream, remote)) => {
                    connections.spawn(serve_connection(
                        stream,
                        remote,
                        config.clone(),
                        handler.clone(),
                        stats.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Typically EMFILE: pause instead of spinning on the error.
                    warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The frame that answers a handled message, if one is due: requests get a
/// response or a failure while their requester still waits; one-way messages
/// get nothing.
fn answer(
    request: Option<(RequestId, Instant)>,
    outcome: std::thread::Result<Option<Bytes>>,
    config: &PeerConfig,
    remote: SocketAddr,
    node: &str,
) -> Option<Frame> {
    let Some((id, deadline)) = request else {
        if outcome.is_err() {
            error!(peer = %remote, %node, "peer message handler panicked");
        }
        return None;
    };
    // The requester stops waiting at the deadline; a later answer would only
    // cost bandwidth.
    if Instant::now() >= deadline {
        return None;
    }
    let max_frame = config.max_frame_bytes;
    Some(match outcome {
        Ok(Some(payload)) => {
            let response = Frame::Response { id, payload };
            if response.body_len() <= max_frame {
                response
            } else {
                Frame::Failure {
                    id,
                    reason: format!(
                        "answer of {} bytes exceeds the maximum frame size of {max_frame}",
                        response.body_len()
                    ),
                }
            }
        }
        Ok(None) => Frame::Failure {
            id,
            reason: "no reply from handler".to_string(),
        },
        Err(_) => {
            error!(peer = %remote, %node, "peer request handler panicked");
            Frame::Failure {
                id,
                reason: "handler panicked".to_string(),
            }
        }
    })
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    config: Arc<PeerConfig>,
    handler: Arc<dyn Handler>,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(peer = %remote, error = %e, "cannot set TCP_NODELAY");
    }
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        done = timeout(config.handshake_timeout, handshake::accept(stream, &config, remote)) => done,
    };
    let established = match handshake {
        Ok(Ok(established)) => established,
        Ok(Err(error)) => {
            stats.incr(Counter::HandshakeFailures);
            warn!(peer = %remote, %error, "refused peer connection");
            return;
        }
        Err(_) => {
            stats.incr(Counter::HandshakeFailures);
            warn!(peer = %remote, timeout = ?config.handshake_timeout,
                  "refused peer connection: handshake timed out");
            return;
        }
    };
    stats.incr(Counter::ConnectionsAccepted);
    let _active = stats.active_connection();
    let peer = Arc::new(established.peer);
    debug!(peer = %remote, node = %peer.node_id, "peer connected");

    let parts = established.framed.into_parts();
    let (read_half, write_half) = parts.io.into_split();
    let mut reader = FramedRead::new(read_half, parts.codec);
    // Bytes the handshake read past its last frame belong to the data phase.
    *reader.read_buffer_mut() = parts.read_buf;
    let mut writer = FramedWrite::new(write_half, PeerCodec::new(config.max_frame_bytes));
    writer.set_backpressure_boundary(WRITE_BUFFER_BOUNDARY);

    // Answers wait here for the writer. Bounded like the handler slots: when
    // the peer stops reading its answers, we stop reading its requests.
    let (answers, mut answer_queue) = mpsc::channel::<Frame>(config.max_inflight);
    let permits = Arc::new(Semaphore::new(config.max_inflight));
    let mut writer_task = {
        let stats = stats.clone();
        let max_batch = config.max_batch;
        tokio::spawn(async move {
            write_batches(
                &mut writer,
                &mut answer_queue,
                None,
                max_batch,
                &stats,
                Some,
            )
            .await
        })
    };

    let ended = loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break "shutting down".to_string(),
            frame = reader.next() => frame,
        };
        let frame = match frame {
            None => break "closed by peer".to_string(),
            Some(Err(error)) => {
                stats.incr(Counter::ProtocolErrors);
                warn!(peer = %remote, node = %peer.node_id, %error,
                      "closing peer connection: bad frame");
                break format!("bad frame: {error}");
            }
            Some(Ok(frame)) => frame,
        };
        stats.add(Counter::BytesReceived, frame.wire_len() as u64);
        stats.incr(Counter::MessagesReceived);
        let (request, payload) = match frame {
            Frame::Request {
                id,
                budget,
                payload,
            } => (Some((id, Instant::now() + budget)), payload),
            Frame::OneWay { payload } => (None, payload),
            other => {
                stats.incr(Counter::ProtocolErrors);
                warn!(peer = %remote, node = %peer.node_id, kind = ?other.kind(),
                      "closing peer connection: unexpected frame from the dialer");
                break format!("unexpected {:?} frame", other.kind());
            }
        };
        // Waiting here stops reading, which pushes back on the sender.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break "shutting down".to_string(),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break "handler slots closed".to_string(),
            },
        };
        if let Some((_, deadline)) = request {
            if Instant::now() >= deadline {
                stats.incr(Counter::ExpiredBeforeHandling);
                continue;
            }
        }
        // A panicking handler fails its request, never the connection.
        let mut handling =
            match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&peer, payload))) {
                Ok(future) => Either::Left(AssertUnwindSafe(future).catch_unwind()),
                Err(panic) => Either::Right(futures::future::ready(Err(panic))),
            };
        // Most handlers answer from memory without waiting; their answer goes
        // straight to the writer, saving a task spawn per request.
        if let Some(outcome) = (&mut handling).now_or_never() {
            if let Some(answer) = answer(request, outcome, &config, remote, &peer.node_id) {
                // Waits only while the writer is behind (the peer is not
                // reading its answers), which pushes back like a full slot.
                let _ = answers.send(answer).await;
            }
            drop(permit);
            continue;
        }
        let answers = answers.clone();
        let config = config.clone();
        let node = peer.node_id.clone();
        tokio::spawn(async move {
            let outcome = handling.await;
            if let Some(answer) = answer(request, outcome, &config, remote, &node) {
                let _ = answers.send(answer).await;
            }
            drop(permit);
        });
    };
    drop(answers);

    if shutdown.is_cancelled() {
        // Let running handlers finish and their answers go out.
        let all = u32::try_from(config.max_inflight).unwrap_or(u32::MAX);
        let drained = timeout(config.shutdown_grace, permits.acquire_many(all)).await;
        if drained.is_err() {
            warn!(peer = %remote, node = %peer.node_id,
                  "peer handlers still running after the shutdown grace; closing anyway");
        }
        // The writer ends once every handler's sender is gone and the queue
        // is flushed; bound it by the grace as well.
        match timeout(config.shutdown_grace, &mut writer_task).await {
            Ok(Ok(Err(error))) => debug!(peer = %remote, %error, "flushing answers failed"),
            Ok(_) => {}
            Err(_) => {
                writer_task.abort();
                debug!(peer = %remote, "answers not flushed within the grace");
            }
        }
    } else {
        // The peer is gone or misbehaved: its answers cannot be delivered.
        writer_task.abort();
    }
    debug!(peer = %remote, node = %peer.node_id, reason = %ended, "peer connection closed");
}
