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
//! Durability under `fsync always`: data commands run without waiting for
//! the disk, and before replies are written the connection waits once for
//! the newest write among them to be durable (the engine's group commit lets
//! all connections share fsyncs). A pipeline of 100 SETs thus costs one wait,
//! not 100, and no reply acknowledges a write that is not on disk; if the
//! fsync fails the connection is closed without sending those replies.
//!
//! On a node of a cluster, where a data command waits for other nodes, the
//! data commands of one pipeline run concurrently (up to `MAX_CONCURRENT`
//! at once) as long as they name different keys; their replies still go out
//! in the order the commands came, and a command on a key already in flight
//! (or any other kind of command) waits for those before it to finish. A
//! single node runs them one by one: they never wait there.
//!
//! Shutdown is observed only between batches: a batch that was read is
//! executed and answered before the connection closes. A write to a client
//! that does not read gets `SHUTDOWN_WRITE_GRACE` (5 s) once shutdown is asked.

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

use futures::future::join_all;

use super::clients::Registration;
use super::commands::table;
use super::dispatch::{self, Flow, Session};
use super::Shared;
use crate::cluster::coordinator::Origin;
use crate::protocol::{encode, Limits, Request, RequestParser};
use crate::storage::SeqNo;

/// Initial size of, and the free space kept in, the input buffer.
const READ_CHUNK: usize = 16 * 1024;
/// How long a write to a client that does not read may delay a shutdown.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);
/// Most bytes reserved ahead for a bulk argument still arriving.
const MAX_READ_AHEAD: usize = 4 * 1024 * 1024;
/// Initial size of the output buffer.
const WRITE_CHUNK: usize = 16 * 1024;
/// Most pipelined data commands of one connection that run at once on a
/// cluster node.
const MAX_CONCURRENT: usize = 64;

/// Pipelined data commands waiting to run together, and their keys: a
/// command that names a key already here waits for the group to finish, so
/// commands on one key still run in the order they were sent.
#[derive(Default)]
struct Group {
    requests: Vec<(Request, &'static str)>,
    keys: Vec<bytes::Bytes>,
}

impl Group {
    fn len(&self) -> usize {
        self.requests.len()
    }

    fn overlaps(&self, keys: &[bytes::Bytes]) -> bool {
        keys.iter().any(|k| self.keys.contains(k))
    }

    fn push(&mut self, request: Request, name: &'static str, keys: Vec<bytes::Bytes>) {
        self.requests.push((request, name));
        self.keys.extend(keys);
    }
}

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
    /// Under `fsync always`: the newest write whose reply is in `output` and
    /// must be on disk before `output` is sent.
    pending_durable: Option<SeqNo>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    fn new(stream: TcpStream, shared: Arc<Shared>, registration: Registration) -> Self {
        let mut session = Session::new(registration.info.id, shared.live.requirepass_is_set());
        session.max_bulk_len = shared.live.proto_max_bulk_len();
        let shutdown = shared.shutdown.subscribe();
        let mut parser = parser_for(session.max_bulk_len);
        parser.set_unauthenticated(!session.authenticated);
        Connection {
            stream,
            shared,
            registration,
            session,
            parser,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(WRITE_CHUNK),
            pending_durable: None,
            shutdown,
        }
    }

    async fn run(&mut self) -> std::io::Result<()> {
        // One shutdown future for the connection's life, not one per read.
        let mut shutdown = self.shutdown.clone();
        let stop = super::stopped(&mut shutdown);
        tokio::pin!(stop);
        loop {
            let flow = self.execute_buffered().await?;
            self.flush().await?;
            if flow != Flow::Continue {
                return Ok(());
            }
            // Room for the next read: a chunk, or more when a large bulk
            // argument is on its way (capped: the length is only declared).
            let wanted = self
                .parser
                .bulk_bytes_wanted(&self.input)
                .clamp(READ_CHUNK / 4, MAX_READ_AHEAD);
            if self.input.capacity() - self.input.len() < wanted {
                self.input.reserve(wanted.max(READ_CHUNK));
            }
            let idle_limit = self.shared.live.timeout_secs();
            let read = tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
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
        let mut group = Group::default();
        let flow = loop {
            let request = match self.parser.parse(&mut self.input) {
                Ok(Some(request)) => request,
                Ok(None) => {
                    self.run_group(&mut group, &mut last_cmd).await;
                    break Flow::Continue;
                }
                Err(e) => {
                    self.run_group(&mut group, &mut last_cmd).await;
                    debug!(id = self.session.id.0, error = %e.to_resp(), "protocol error; closing");
                    self.output.extend_from_slice(b"-");
                    self.output.extend_from_slice(e.to_resp().as_bytes());
                    self.output.extend_from_slice(b"\r\n");
                    break Flow::Close;
                }
            };
            executed += 1;
            if let Some((name, keys)) = self.concurrent(request.args()) {
                if group.len() >= MAX_CONCURRENT || group.overlaps(&keys) {
                    self.run_group(&mut group, &mut last_cmd).await;
                    if self.output.len() >= limit {
                        self.flush().await?;
                    }
                }
                group.push(request, name, keys);
                continue;
            }
            self.run_group(&mut group, &mut last_cmd).await;
            let was_authenticated = self.session.authenticated;
            let outcome = dispatch::execute(
                &self.shared,
                &mut self.session,
                &self.registration.info,
                request.args(),
            )
            .await;
            self.parser.recycle(request);
            last_cmd = outcome.name;
            if let Some(reply) = &outcome.reply {
                encode(reply, self.session.protocol, &mut self.output);
            }
            if outcome.wrote.is_some() {
                self.pending_durable = self.pending_durable.max(outcome.wrote);
            }
            if self.session.authenticated != was_authenticated {
                self.parser.set_unauthenticated(!self.session.authenticated);
            }
            if outcome.flow != Flow::Continue {
                break outcome.flow;
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
            // A new proto-max-bulk-len applies from the next request on.
            if !self.parser.in_progress() && self.session.max_bulk_len_changed(&self.shared) {
                self.parser = parser_for(self.session.max_bulk_len);
                self.parser.set_unauthenticated(!self.session.authenticated);
            }
        }
        Ok(flow)
    }

    /// Whether a command may run at the same time as its neighbours in
    /// the pipeline, and with which keys: a data command on named keys, on
    /// a node of a cluster (where commands wait on other nodes), from an
    /// authenticated client. Keyless data commands (`KEYS`, `SCAN`,
    /// `DBSIZE`, `FLUSHALL`...) and every other command run alone.
    fn concurrent(&self, args: &[bytes::Bytes]) -> Option<(&'static str, Vec<bytes::Bytes>)> {
        if !self.session.authenticated || !self.shared.data.is_clustered() {
            return None;
        }
        let spec = table::lookup(&args[0])?;
        if !matches!(spec.handler, table::Handler::Data) || !spec.arity_ok(args.len()) {
            return None;
        }
        let keys = match spec.name {
            "keys" | "scan" | "randomkey" | "dbsize" | "flushall" | "flushdb" => return None,
            "mset" | "msetnx" => args[1..].iter().step_by(2).cloned().collect(),
            "mget" | "del" | "unlink" | "exists" => args[1..].to_vec(),
            _ => vec![args[1].clone()],
        };
        Some((spec.name, keys))
    }

    /// Runs the pipelined data commands gathered in `group` at once and
    /// encodes their replies in the order the client sent them.
    async fn run_group(&mut self, group: &mut Group, last_cmd: &mut &'static str) {
        if group.requests.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let proto = self.session.protocol;
        let runs = group
            .requests
            .iter()
            .map(|(request, _)| shared.data.execute(request.args(), proto, Origin::Client));
        let outcomes = join_all(runs).await;
        for ((request, name), (reply, wrote)) in group.requests.drain(..).zip(outcomes) {
            encode(&reply, proto, &mut self.output);
            if wrote.is_some() {
                self.pending_durable = self.pending_durable.max(wrote);
            }
            self.parser.recycle(request);
            *last_cmd = name;
        }
        group.keys.clear();
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        // One durability wait for every write of the batch (group commit).
        // If it fails, the replies must not go out: they would acknowledge
        // writes that may be lost. Closing tells the client nothing was.
        if let Some(seq) = self.pending_durable.take() {
            if let Err(e) = self.shared.keyspace.wait_durable(seq).await {
                warn!(id = self.session.id.0, error = %e, "fsync failed; closing client without acknowledging");
                self.output.clear();
                return Err(std::io::Error::other(e.to_string()));
            }
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

/// A request parser with Redis' limits and `max_bulk_len`.
fn parser_for(max_bulk_len: u64) -> RequestParser {
    RequestParser::new(Limits {
        max_bulk_len: usize::try_from(max_bulk_len).unwrap_or(usize::MAX),
        ..Limits::default()
    })
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
