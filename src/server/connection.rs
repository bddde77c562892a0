//! One client connection: read, parse every complete command, execute them in
//! order, encode all replies into one buffer, write it once.
//!
//! Buffers are per connection and reused for its whole life: the input buffer
//! keeps its allocation once the commands it held are consumed (the parser
//! hands out `Bytes` that share it, and they are dropped before the next
//! read), and the output buffer is cleared, not freed, after each write.
//!
//! Backpressure: when a batch's replies pass `client-output-buffer-limit` the
//! connection writes them before executing the next command, and since it
//! never reads while writing, a client that stops reading stalls in the
//! kernel's socket buffers instead of in server memory. The idle `timeout`
//! applies to waiting for input only.
//!
//! Shutdown is observed only between batches: a batch that was read is
//! executed and answered before the connection closes.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::clients::Registration;
use super::dispatch::{self, Flow, Session};
use super::protocol_standin::{encode, RequestParser};
use super::Shared;

/// Initial size of, and the free space kept in, the input buffer.
const READ_CHUNK: usize = 16 * 1024;
/// How long a write to a client that does not read may delay a shutdown.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);
/// Initial size of the output buffer.
const WRITE_CHUNK: usize = 16 * 1024;

/// Starts serving `stream` on its own task.
pub(crate) fn spawn(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    shared
        .stats
        .total_connections_received
        .fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let _done = done;
        if let Err(e) = serve(stream, addr, shared).await {
            debug!(%addr, error = %e, "connection ended with an error");
        }
    });
}

async fn serve(
    mut stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    // Replies to one-command round trips must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    let laddr = stream.local_addr()?;
    let maxclients = shared.live.maxclients() as usize;
    let Some(registration) = shared
        .clients
        .register(addr, laddr, stream.as_raw_fd(), maxclients)
    else {
        shared.stats.rejected_connections.fetch_add(1, Relaxed);
        warn!(%addr, maxclients, "refusing client: max number of clients reached");
        stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        return Ok(());
    };
    let mut conn = Connection::new(stream, shared, registration);
    conn.run().await
}

struct Connection {
    stream: TcpStream,
    shared: Arc<Shared>,
    registration: Registration,
    session: Session,
    parser: RequestParser,
    input: BytesMut,
    output: BytesMut,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    fn new(stream: TcpStream, shared: Arc<Shared>, registration: Registration) -> Self {
        let mut session = Session::new(registration.info.id, shared.live.requirepass_is_set());
        session.max_bulk_len = shared.live.proto_max_bulk_len();
        let shutdown = shared.shutdown.subscribe();
        let parser = RequestParser::new(session.max_bulk_len);
        Connection {
            stream,
            shared,
            registration,
            session,
            parser,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(WRITE_CHUNK),
            shutdown,
        }
    }

    async fn run(&mut self) -> std::io::Result<()> {
        loop {
            let flow = self.execute_buffered().await?;
            self.flush().await?;
            if flow != Flow::Continue {
                return Ok(());
            }
            if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
                self.input.reserve(READ_CHUNK);
            }
            let idle_limit = self.shared.live.timeout_secs();
            let read = tokio::select! {
                biased;
                _ = super::stopped(&mut self.shutdown) => return Ok(()),
                n = read_with_timeout(&mut self.stream, &mut self.input, idle_limit) => n?,
            };
            match read {
                Some(0) => return Ok(()),
                Some(n) => {
                    self.shared
                        .stats
                        .total_net_input_bytes
                        .fetch_add(n as u64, Relaxed);
                }
                None => {
                    debug!(id = self.session.id.0, "closing idle client");
                    return Ok(());
                }
            }
        }
    }

    /// Executes every complete command in the input buffer, encoding replies.
    async fn execute_buffered(&mut self) -> std::io::Result<Flow> {
        let mut executed = 0u64;
        let mut last_cmd = "";
        let limit = self.shared.live.output_buffer_limit();
        let flow = loop {
            let request = match self.parser.parse(&mut self.input) {
                Ok(Some(request)) => request,
                Ok(None) => break Flow::Continue,
                Err(e) => {
                    debug!(id = self.session.id.0, error = %e.to_resp(), "protocol error; closing");
                    self.output.extend_from_slice(b"-");
                    self.output.extend_from_slice(e.to_resp().as_bytes());
                    self.output.extend_from_slice(b"\r\n");
                    break Flow::Close;
                }
            };
            if request.is_empty() {
                continue;
            }
            executed += 1;
            let (reply, flow, name) = dispatch::execute(
                &self.shared,
                &mut self.session,
                &self.registration.info,
                &request,
            )
            .await;
            last_cmd = name;
            if let Some(reply) = reply {
                encode(&reply, self.session.protocol, &mut self.output);
            }
            if flow != Flow::Continue {
                break flow;
            }
            if self.output.len() >= limit {
                self.flush().await?;
            }
        };
        if executed > 0 {
            self.shared
                .stats
                .total_commands_processed
                .fetch_add(executed, Relaxed);
            self.registration.info.touch(Instant::now(), last_cmd);
            if self.session.max_bulk_len_changed(&self.shared) {
                self.parser.set_max_bulk_len(self.session.max_bulk_len);
            }
        }
        Ok(flow)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        // A client that stopped reading must not hold up a shutdown forever:
        // once shutdown is asked for, its write gets a grace period.
        let write = self.stream.write_all(&self.output);
        let abandon = async {
            super::stopped(&mut self.shutdown).await;
            tokio::time::sleep(SHUTDOWN_WRITE_GRACE).await;
        };
        tokio::select! {
            written = write => written?,
            _ = abandon => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client did not read its replies during shutdown",
                ))
            }
        }
        self.shared
            .stats
            .total_net_output_bytes
            .fetch_add(self.output.len() as u64, Relaxed);
        self.output.clear();
        Ok(())
    }
}

/// Reads once; `None` when the client stayed idle for `idle_secs` (0 = never).
async fn read_with_timeout(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    idle_secs: u64,
) -> std::io::Result<Option<usize>> {
    if idle_secs == 0 {
        return stream.read_buf(buf).await.map(Some);
    }
    match tokio::time::timeout(Duration::from_secs(idle_secs), stream.read_buf(buf)).await {
        Ok(n) => n.map(Some),
        Err(_elapsed) => Ok(None),
    }
}
