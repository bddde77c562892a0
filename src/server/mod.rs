//! The server: the only async and network layer of ringkv.
//!
//! [`Server::bind`] opens the keyspace (which opens the storage engine) and
//! binds the client listener; [`Server::run`] accepts connections until a
//! shutdown is asked for (`SHUTDOWN`, SIGTERM/SIGINT via the binary, or a
//! [`ShutdownHandle`]), then stops accepting, lets every connection finish the
//! batch of commands it is executing and send its replies, closes the keyspace
//! (which fsyncs the commit log) and returns.
//!
//! Each client connection is one tokio task ([`connection`]): it reads into a
//! reused buffer, parses every complete command, executes them in order
//! ([`dispatch`]), encodes all replies into one output buffer and writes it
//! with one system call per batch, which is what makes pipelining cheap. A
//! client that does not read its replies is slowed, not buffered for: once its
//! pending replies pass `client-output-buffer-limit`, the connection writes
//! them and waits for the socket before it executes (or reads) anything more,
//! so memory per connection stays bounded by that limit plus one reply and
//! the kernel's socket buffers. (Redis instead keeps buffering and closes the
//! client past a hard limit; for normal clients its default limit is none.)
//!
//! Performance: per command, the connection does one table probe (a stack
//! lowercase + hash lookup), one `Keyspace::execute_unsynced` call and one
//! encode into the reused output buffer (the parser recycles its argument
//! vectors); per batch, one read, one write, at most one durability wait, and
//! a handful of relaxed atomic adds for `INFO`. No lock is held across an
//! `.await`. Measured with `perf record --call-graph dwarf` on the release
//! binary under `redis-benchmark -r 1000000 -d 100 -c 50`: at `-P 16` GET,
//! about 80% of the CPU is `Engine::get` (memtable skiplist search about 45%,
//! SSTable block reads through `pread` 20-30%) and SET spends about 60% in
//! the read half of its read-modify-write; this module's own code (parse,
//! dispatch, encode) is 2-3% and `sendto` about 5%. At `-P 1` with PING only,
//! about 30% is the kernel switching tokio's worker threads in and out
//! (park/unpark); `--threads 1` uses a third less CPU per request but gave
//! lower throughput here. What to look at next: a point-read fast path in the
//! memtable, the block cache hit rate, and a thread-per-core runtime.
//!
//! Module map:
//! - [`connection`]: the per-connection read/parse/execute/write loop.
//! - [`dispatch`]: command lookup, arity and authentication checks, routing.
//! - [`commands`]: the command table and the connection and server commands;
//!   data commands live in the keyspace.
//! - [`data_path`]: every data command in a cluster: one-hop forwarding,
//!   quorum reads and writes through the coordinator, replication, read
//!   repair, the replica side of `Put`/`Get`/`Forward`. A cluster of one
//!   runs commands on the keyspace directly.
//! - [`handoff`]: replays the durable hints to owners that came back.
//! - [`keyspace`]: the versioned data commands over the storage engine.
//! - [`clients`], [`stats`]: what `CLIENT LIST` and `INFO` report.
//! - [`peer`]: the internode transport.
//! - [`cluster_node`]: gossip membership over the transport and the `CLUSTER`
//!   commands; routes incoming peer messages to the services above.
//! - [`anti_entropy`]: Merkle-tree repair sessions between the replicas of
//!   each partition (background rounds, `CLUSTER REPAIR`/`MERKLE`); the
//!   trees themselves are kept by the keyspace's replica.
//! - [`rebalance`]: join and leave: streams the partitions a node no longer
//!   owns (or that gained an owner) to their owners, throttled, and drops
//!   them once every owner confirmed.

pub mod anti_entropy;
pub mod clients;
pub mod cluster_node;
pub mod commands;
pub mod connection;
pub mod data_path;
pub mod dispatch;
pub mod handoff;
pub mod keyspace;
pub mod peer;
pub mod rebalance;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use clients::ClientRegistry;
use commands::config::LiveConfig;
use keyspace::{Keyspace, KeyspaceOptions};
use stats::Stats;

/// The version string `HELLO` and `INFO` report as `redis_version`/`version`.
/// Clients gate features on it (redis-py, go-redis and Jedis check for >= 6 or
/// 7), so it names the Redis release whose behaviour ringkv follows; ringkv's
/// own version is reported separately as `ringkv_version`.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// State shared by every connection.
pub struct Shared {
    /// The configuration the server started with.
    pub config: Config,
    /// Settings `CONFIG SET` may change while running.
    pub live: LiveConfig,
    pub keyspace: Keyspace,
    pub clients: Arc<ClientRegistry>,
    pub stats: Stats,
    pub started: Instant,
    /// A random id for this run of the server (`INFO server`'s `run_id`).
    pub run_id: String,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// Membership and gossip.
    pub cluster: cluster_node::ClusterNode,
    /// Routing, quorum reads and writes, replication: every data command.
    pub data: Arc<data_path::DataPath>,
    /// Merkle-tree anti-entropy between the replicas of each partition.
    pub anti_entropy: Arc<anti_entropy::AntiEntropy>,
    /// Join/leave: streams partitions to their new owners.
    pub rebalance: Arc<rebalance::Rebalance>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Asks the server to shut down (idempotent).
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Asks a running server to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Stop accepting, finish in-flight commands, close the keyspace.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the data directory and binds `config.bind:config.port`
    /// (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(config: Config) -> Result<Server> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            Error::invalid(format!(
                "cannot create data directory {}: {e}",
                config.dir.display()
            ))
        })?;
        let keyspace = Keyspace::open(&config.dir, keyspace_options(&config))?;
        let listener = TcpListener::bind((config.bind, config.port)).await?;
        let local_addr = listener.local_addr()?;
        let cluster = cluster_node::ClusterNode::start(&config, local_addr).await?;
        let data = data_path::DataPath::start(keyspace.clone(), cluster.handle(), &config)?;
        cluster.attach_data_path(data.clone());
        let anti_entropy = anti_entropy::AntiEntropy::start(
            keyspace.clone(),
            cluster.handle(),
            anti_entropy::AntiEntropyConfig::from_config(&config),
        );
        cluster.attach_anti_entropy(anti_entropy.clone());
        let rebalance = rebalance::Rebalance::start(
            keyspace.clone(),
            cluster.handle(),
            rebalance::RebalanceConfig::from_config(&config),
        );
        cluster.attach_rebalance(rebalance.clone());
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            live: LiveConfig::new(&config),
            config,
            keyspace,
            clients: Arc::new(ClientRegistry::default()),
            stats: Stats::default(),
            started: Instant::now(),
            run_id: random_run_id(),
            local_addr,
            cluster,
            data,
            anti_entropy,
            rebalance,
            shutdown,
        });
        Ok(Server { listener, shared })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle that shuts the server down from elsewhere (signals, tests).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves clients until shutdown, then closes the keyspace.
    pub async fn run(self) -> Result<()> {
        let Server { listener, shared } = self;
        info!(addr = %shared.local_addr, dir = %shared.config.dir.display(), fsync = %shared.config.fsync, "ringkv ready to accept connections");
        let background = shared.keyspace.spawn_background();
        let sampler = tokio::spawn(sample_stats(shared.clone()));
        // Every connection task holds a clone of `done_tx`; when all are
        // dropped, `done_rx.recv()` returns None and every connection is gone.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        connection::spawn(stream, addr, shared.clone(), done_tx.clone());
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        info!("shutting down: no longer accepting connections");
        drop(listener);
        drop(done_tx);
        let _ = done_rx.recv().await;
        sampler.abort();
        shared.cluster.shutdown().await;
        // Its task stops with the cluster node; wait for it so that no scan
        // or merge of it is running when the keyspace closes.
        shared.anti_entropy.stop().await;
        shared.rebalance.stop().await;
        if let Err(e) = shared.data.close() {
            error!(error = %e, "closing the hint store failed");
        }
        let keyspace = shared.keyspace.clone();
        let closed = tokio::task::spawn_blocking(move || keyspace.close())
            .await
            .map_err(|e| Error::invalid(format!("keyspace close task failed: {e}")))?;
        if let Err(e) = &closed {
            error!(error = %e, "closing the keyspace failed");
        }
        if let Err(e) = background.await {
            debug!(error = %e, "background task ended abnormally");
        }
        info!("ringkv stopped");
        closed
    }

    /// Runs the server on a new task: for tests and embedding.
    pub fn spawn(self) -> RunningServer {
        let addr = self.local_addr();
        let handle = self.shutdown_handle();
        let task = tokio::spawn(self.run());
        RunningServer { addr, handle, task }
    }
}

/// A server running on its own task.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Shuts the server down and waits until it has closed the keyspace.
    pub async fn shutdown(self) -> Result<()> {
        self.handle.shutdown();
        self.wait().await
    }

    /// Waits until the server stops (e.g. after `SHUTDOWN`).
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::invalid(format!("server task failed: {e}")))?
    }
}

/// The keyspace's options from the configuration.
fn keyspace_options(config: &Config) -> KeyspaceOptions {
    let partitions = KeyspaceOptions::default().partitions;
    KeyspaceOptions {
        tombstone_grace: Duration::from_millis(config.tombstone_grace_ms),
        // A node never purges a tombstone that some replica may lack:
        // anti-entropy moves each partition's horizon (see anti_entropy).
        gc_horizon: Some(keyspace::expiry::GcHorizon::new(partitions)),
        storage: keyspace::StorageOptions {
            fsync: config.fsync,
            memtable_bytes: usize::try_from(config.memtable_size.bytes()).unwrap_or(usize::MAX),
            block_cache_bytes: usize::try_from(config.block_cache_size.bytes())
                .unwrap_or(usize::MAX),
            ..keyspace::StorageOptions::default()
        },
        ..KeyspaceOptions::default()
    }
}

async fn sample_stats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(stats::SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.stats.sample();
    }
}

/// Resolves once shutdown has been requested (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before returning.
    let _ = rx.wait_for(|stop| *stop).await.is_ok();
}

fn random_run_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..40)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}
