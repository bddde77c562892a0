//! The cluster node: gossip membership running over the real peer transport,
//! and the `CLUSTER` commands.
//!
//! # What runs where
//!
//! [`ClusterNode::start`] (called by `Server::bind`) gives this process its
//! cluster identity and starts three things:
//!
//! - a [`PeerListener`] on the peer port whose handler decodes each one-way
//!   payload as a [`Message`] (postcard) and feeds gossip into the
//!   [`Membership`] state machine. A payload that does not decode is counted,
//!   logged and dropped: a stranger's bytes never panic the node or change the
//!   member list;
//! - a gossip task that calls [`Membership::tick`] every
//!   [`TICK_EVERY`] (or a quarter of the gossip interval when that is
//!   shorter) and carries out the [`Effect`]s: `Send` goes out through
//!   [`PeerClient::send`] (one-way, never waits: a stuck peer cannot stall
//!   the loop, and the next round repairs a dropped message);
//! - one join task per `--join` seed or `CLUSTER MEET` (see below).
//!
//! The membership sits behind a `parking_lot` mutex that is only held for the
//! synchronous call into the state machine; effects are carried out after it
//! is released, and no lock here is ever held across an `.await`.
//!
//! # Identity
//!
//! - **Addresses.** The client address is `advertise:port` and the peer
//!   address `advertise:peer-port` (`advertise` defaults to the bind address,
//!   the peer port to the client port + 10000). With a client port of 0
//!   (tests) and no explicit peer port, the peer port is picked by the kernel
//!   too, so in-process test servers never collide on port 10000.
//! - **NodeId** is [`NodeId::from_peer_addr`] of the advertised peer address,
//!   so a node that comes back at the same address owns the same partitions.
//! - **Incarnation** is `max(stored + 1, wall clock ms)`, stored back before
//!   the node announces itself, so a restart always gossips a higher
//!   incarnation than its previous life, even with a clock that went
//!   backwards; a wiped data directory still gets the wall clock, which is
//!   higher than any earlier life's start unless the clock jumped back.
//!   File `cluster-incarnation` in the data directory, format version 1:
//!   one line of ASCII, `ringkv-incarnation-v1 <decimal u64>\n`, written to a
//!   temporary file, fsynced and renamed over the old one. An unreadable file
//!   is logged and the wall clock used.
//!
//! # Joining: `--join` names a client address
//!
//! DESIGN.md §6 has operators name the address they know, the seed's client
//! port. Rather than guess that its peer port is `port + 10000` (wrong for a
//! seed started with `--peer-port`), the join task asks the seed over RESP:
//! `CLUSTER MYPEERADDR` (no `AUTH` needed: it reveals only the peer address,
//! and the peer port enforces the cluster secret itself). Until the seed
//! answers (it may start after us) the task retries with back-off, from 100
//! ms up to 2 s; once it has the address it calls [`Membership::meet`], and
//! gossip does the rest. A seed that is still unreachable when gossip has
//! found some other live member is given up (seeds only help a node find the
//! cluster; no node is special). `CLUSTER MEET host port` starts the same task and
//! answers `OK` at once, as Redis' `CLUSTER MEET` does.
//!
//! # Departures: nothing of the member list is persisted
//!
//! Dynamo stores membership changes (made with an admin tool) and reconciles
//! them with gossip; here only the incarnation survives a restart. A node
//! comes back knowing nobody and finds the cluster again either through its
//! `--join` seeds or because the others still list it as `Down` and probe
//! one `Down` member now and then (see [`Membership`]), so a node that was
//! added with `CLUSTER MEET` rejoins too, a little later. If gossip ever
//! shows a node a later incarnation of itself than the one it picked (a
//! clock that jumped back and a wiped directory), it jumps past it.
//!
//! # The data path
//!
//! Data-path messages (`Put`, `Get`, `Forward`) arriving on the peer port go
//! to the [`DataPath`] the server attached ([`ClusterNode::attach_data_path`]);
//! before it is attached they are counted (`peer_unserved_messages`) and
//! dropped. Partition stream chunks (join/leave) go to the attached
//! [`Rebalance`] ([`ClusterNode::attach_rebalance`]) the same way. The data
//! path follows the membership through a
//! [`ClusterHandle`]: a view version that moves on every ring or status
//! change tells it when to re-read the member list.
//!
//! Gossip whose `from` differs from the node id the connection's handshake
//! named is dropped too: with a cluster secret that id is proven, so a peer
//! cannot speak for another (it can still relay news about others; that is
//! what gossip is).
//!
//! # INFO
//!
//! `INFO cluster` has members up/suspect/down, gossip rounds, messages
//! received, refused and malformed, and the transport's counters (client and
//! listener added). `cluster_enabled` stays `0`, as Redis defines it: ringkv
//! does not speak Redis Cluster (slots, `MOVED`), and smart clients that read
//! `1` would switch to it.
//!
//! # Commands
//!
//! `CLUSTER NODES | INFO | MEET host port | FORGET node-id | LEAVE |
//! PREFLIST key | PARTITIONS | HINTS | REPAIR [partition] |
//! MERKLE [partition] | MYID | MYPEERADDR | HELP`. `REPAIR` and `MERKLE`
//! belong to anti-entropy ([`AntiEntropy`]): `MERKLE` is answered here
//! through the attached service, `REPAIR` by dispatch, because it waits for
//! its sessions (the commands here answer synchronously). Anti-entropy
//! messages on the peer port go to that service too
//! ([`ClusterNode::attach_anti_entropy`]). Unknown
//! subcommands and wrong arities are answered by dispatch, in Redis 7's
//! words (`ERR unknown subcommand 'x'. Try CLUSTER HELP.`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::anti_entropy::AntiEntropy;
use super::data_path::DataPath;
use super::dispatch::Ctx;
use super::peer::{ClusterSecret, Handler, PeerClient, PeerConfig, PeerInfo, PeerListener};
use super::rebalance::Rebalance;
use crate::client::{Client, ConnectOptions, Value};
use crate::cluster::membership::{
    ClusterSettings, Effect, GossipConfig, Incarnation, LocalNode, Member, Membership, Millis,
    Status,
};
use crate::cluster::messages::Message;
use crate::cluster::ring::{NodeId, PartitionId, Ring};
use crate::config::{parse_host_port, Config, PEER_PORT_OFFSET};
use crate::error::{Error, Result};
use crate::protocol::Reply;

/// How often the gossip task ticks the membership (failure detection runs on
/// every tick; a gossip round only once per interval).
pub const TICK_EVERY: Duration = Duration::from_millis(100);

/// The file in the data directory holding the last incarnation used.
pub const INCARNATION_FILE: &str = "cluster-incarnation";

/// The first word of the incarnation file: its format version.
const INCARNATION_MAGIC: &str = "ringkv-incarnation-v1";

/// The file in the data directory listing the peers last seen in the ring.
pub const MEMBERS_FILE: &str = "cluster-members";

/// The first line of the members file: its format version.
const MEMBERS_MAGIC: &str = "ringkv-members-v1";

/// Back-off of a join task between attempts to ask a seed for its peer address.
const JOIN_RETRY_INITIAL: Duration = Duration::from_millis(100);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(2);

/// Which `CLUSTER` subcommand the table dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterCmd {
    Nodes,
    Info,
    Meet,
    Forget,
    Leave,
    Preflist,
    Partitions,
    Hints,
    Repair,
    Merkle,
    MyId,
    MyPeerAddr,
    Help,
}

/// `CLUSTER HELP`.
pub const CLUSTER_HELP: &[&str] = &[
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "NODES",
    "    One line per member: id, client address, peer address, status, heartbeat,",
    "    incarnation, partitions owned, and 'myself' for this node.",
    "INFO",
    "    N/R/W, Q, members up/suspect/down/left and this node's state.",
    "MEET <host> <port>",
    "    Join the cluster of the node whose CLIENT port is <host>:<port>.",
    "FORGET <node-id>",
    "    Remove a member (a tombstone is gossiped; a restart of it rejoins).",
    "LEAVE",
    "    Leave the cluster: this node gives up its partitions until it restarts",
    "    and streams its data to their owners; stop it once INFO cluster shows",
    "    rebalance_partitions_held:0.",
    "PREFLIST <key>",
    "    The N nodes that own <key>, then its fallbacks, one row each:",
    "    id, client address, peer address, owner|fallback, status, partition.",
    "PARTITIONS",
    "    Partition ranges and their owners (short ids, primary first).",
    "HINTS",
    "    Hints held here for replicas that were down, one row each:",
    "    target id, hints, bytes, target status.",
    "REPAIR [<partition>]",
    "    Run anti-entropy now for <partition> (default: every partition this node",
    "    owns) with every other live owner; answers a summary when done.",
    "MERKLE [<partition>]",
    "    The Merkle root of <partition> on this node (hex), or one",
    "    '<partition> <root>' line per partition this node owns.",
    "MYID",
    "    This node's id.",
    "MYPEERADDR",
    "    This node's internode address (what --join asks a seed for).",
    "HELP",
    "    Print this help.",
];

/// Why a join task runs (see [`Core::spawn_join`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JoinKind {
    /// A `--join` seed.
    Seed,
    /// `CLUSTER MEET`.
    Meet,
}

/// Counters for `INFO cluster`.
#[derive(Debug, Default)]
struct Counters {
    gossip_received: AtomicU64,
    malformed: AtomicU64,
    spoofed: AtomicU64,
    rejected: AtomicU64,
    unserved: AtomicU64,
    send_failures: AtomicU64,
}

/// The ring of the current members, with how many partitions each holds.
#[derive(Debug)]
struct RingView {
    ring: Arc<Ring>,
    owned: BTreeMap<NodeId, usize>,
}

impl RingView {
    fn new(ring: Ring) -> RingView {
        let mut owned = BTreeMap::new();
        for p in ring.partition_ids() {
            for id in ring.owners(p) {
                *owned.entry(*id).or_insert(0) += 1;
            }
        }
        RingView {
            ring: Arc::new(ring),
            owned,
        }
    }
}

/// What the handler, the tasks and the commands share.
struct Core {
    id: NodeId,
    addr: String,
    peer_addr: String,
    membership: Mutex<Membership>,
    ring: RwLock<Arc<RingView>>,
    peers: PeerClient,
    origin: Instant,
    shutdown: CancellationToken,
    counters: Counters,
    last_rejection: Mutex<Option<String>>,
    /// Bumped after every change of the ring or of a member's status, so the
    /// data path re-reads the membership only when it changed.
    view_version: AtomicU64,
    /// Whether this node was started as part of a cluster: with `--join`
    /// seeds, or with peers remembered in the members file. Such a node
    /// must not mistake its empty member list at start-up for a cluster of
    /// one (see [`ClusterHandle::expects_peers`]).
    expects_peers: bool,
    /// The data directory (for the members file).
    dir: std::path::PathBuf,
    /// The peer addresses last written to the members file.
    remembered: Mutex<Vec<String>>,
    /// The data path, once the server has built it: `Put`, `Get` and
    /// `Forward` messages go there.
    data: std::sync::OnceLock<Arc<DataPath>>,
    /// Anti-entropy, once the server has started it: its messages go there.
    anti_entropy: std::sync::OnceLock<Arc<AntiEntropy>>,
    /// Join/leave streaming, once the server has started it: stream chunks
    /// go there.
    rebalance: std::sync::OnceLock<Arc<Rebalance>>,
}

/// What the data path needs of the cluster node: identity, the transport,
/// and the membership (read under its lock when the view version moved).
#[derive(Clone)]
pub struct ClusterHandle {
    core: Arc<Core>,
}

impl ClusterHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// The internode transport (requests to peers).
    pub fn peers(&self) -> &PeerClient {
        &self.core.peers
    }

    /// The ring of the current members (rebuilt when they change; shared,
    /// so callers need no cache of their own).
    pub fn ring(&self) -> Arc<Ring> {
        self.core.ring.read().ring.clone()
    }

    /// A number that changes whenever the ring or a member's status changed.
    pub fn view_version(&self) -> u64 {
        self.core.view_version.load(Relaxed)
    }

    /// Runs `f` on the membership under its lock (keep it short).
    pub fn with_membership<T>(&self, f: impl FnOnce(&Membership) -> T) -> T {
        f(&self.core.membership.lock())
    }

    /// Whether this node was started as part of a cluster (`--join`, or
    /// peers remembered from its last life): until it has found a peer, it
    /// must not serve data as a cluster of one.
    pub fn expects_peers(&self) -> bool {
        self.core.expects_peers
    }

    /// Milliseconds since this node started (the membership's clock).
    pub fn now(&self) -> Millis {
        self.core.now()
    }

    /// Stops when the cluster node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.core.shutdown.clone()
    }
}

/// This node's membership in the cluster (see the module doc).
pub struct ClusterNode {
    core: Arc<Core>,
    listener: PeerListener,
    gossip_task: Mutex<Option<JoinHandle<()>>>,
}

impl ClusterNode {
    /// Picks the identity, binds the peer port, starts gossip and joins the
    /// `--join` seeds. `client_addr` is the address the client listener got.
    pub async fn start(config: &Config, client_addr: SocketAddr) -> Result<ClusterNode> {
        let gossip = gossip_config(config);
        gossip.validate()?;
        let seeds = config
            .join
            .iter()
            .map(|seed| parse_host_port(seed))
            .collect::<Result<Vec<_>>>()?;
        let host = config.effective_advertise();
        if config.advertise.is_none() && config.bind.is_unspecified() {
            warn!(
                bind = %config.bind,
                "no --advertise given and bind is a wildcard: other nodes cannot reach this one"
            );
        }
        let peer_port = match config.peer_port {
            Some(p) => p,
            // Port 0 (tests): let the kernel pick the peer port too.
            None if config.port == 0 => 0,
            None => config.port.checked_add(PEER_PORT_OFFSET).ok_or_else(|| {
                Error::invalid("no default peer port (port + 10000 > 65535); set --peer-port")
            })?,
        };
        let settings = cluster_settings(config);
        settings.validate()?;
        let secret = config
            .cluster_secret
            .as_deref()
            .map(ClusterSecret::new)
            .transpose()?;

        // The listener binds before the id is known (the port may be 0), so
        // its handler reaches the core through a slot filled just below.
        let slot: Arc<RwLock<Option<Arc<Core>>>> = Arc::new(RwLock::new(None));
        let handler = Arc::new(GossipHandler { core: slot.clone() });
        // The listener's node id goes into the handshake for the dialer's
        // logs; with a kernel-picked port it is not known yet (left empty).
        let listener_id = if peer_port == 0 {
            String::new()
        } else {
            NodeId::from_peer_addr(&join_host_port(&host, peer_port)).to_string()
        };
        let provisional = PeerConfig {
            cluster_name: settings.name.clone(),
            secret: secret.clone(),
            ..PeerConfig::new(listener_id)
        };
        let bind = SocketAddr::new(config.bind, peer_port);
        let listener = PeerListener::bind(bind, provisional.clone(), handler)
            .await
            .map_err(|e| Error::invalid(format!("cannot listen for peers on {bind}: {e}")))?;
        let addr = join_host_port(&host, client_addr.port());
        let peer_addr = join_host_port(
            &host,
            config
                .peer_advertise_port
                .unwrap_or(listener.local_addr().port()),
        );
        let id = NodeId::from_peer_addr(&peer_addr);
        let incarnation = next_incarnation(&config.dir)?;
        let remembered: Vec<String> = read_members(&config.dir)
            .into_iter()
            .filter(|p| *p != peer_addr)
            .collect();
        let peers = PeerClient::new(PeerConfig {
            node_id: id.to_string(),
            ..provisional
        })?;
        let origin = Instant::now();
        let membership = Membership::new(
            LocalNode {
                id,
                addr: addr.clone(),
                peer_addr: peer_addr.clone(),
                incarnation,
            },
            settings,
            gossip,
            rand::random(),
            Millis(0),
        )?;
        let ring = RingView::new(membership.ring()?);
        let core = Arc::new(Core {
            id,
            addr,
            peer_addr,
            membership: Mutex::new(membership),
            ring: RwLock::new(Arc::new(ring)),
            peers,
            origin,
            shutdown: CancellationToken::new(),
            counters: Counters::default(),
            last_rejection: Mutex::new(None),
            view_version: AtomicU64::new(0),
            expects_peers: !seeds.is_empty() || !remembered.is_empty(),
            dir: config.dir.clone(),
            remembered: Mutex::new(remembered.clone()),
            data: std::sync::OnceLock::new(),
            anti_entropy: std::sync::OnceLock::new(),
            rebalance: std::sync::OnceLock::new(),
        });
        *slot.write() = Some(core.clone());
        info!(
            id = %core.id,
            addr = %core.addr,
            peer_addr = %core.peer_addr,
            incarnation = incarnation.0,
            "cluster node started"
        );
        // Knock on the peers this node last saw in the ring: a restarted
        // node finds its cluster even without --join (gossip keeps knocking
        // on them every round while it is alone).
        for peer in &remembered {
            let effects = core.membership.lock().meet(peer.clone());
            core.apply(effects);
        }
        let gossip_task = tokio::spawn(gossip_loop(core.clone()));
        for (host, port) in seeds {
            core.clone().spawn_join(host, port, JoinKind::Seed);
        }
        Ok(ClusterNode {
            core,
            listener,
            gossip_task: Mutex::new(Some(gossip_task)),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// What the data path needs of this node.
    pub fn handle(&self) -> ClusterHandle {
        ClusterHandle {
            core: self.core.clone(),
        }
    }

    /// Routes `Put`, `Get` and `Forward` messages to `data` from now on.
    pub fn attach_data_path(&self, data: Arc<DataPath>) {
        if self.core.data.set(data).is_err() {
            warn!("a data path was already attached; keeping the first");
        }
    }

    /// Routes anti-entropy messages to `service` from now on.
    pub fn attach_anti_entropy(&self, service: Arc<AntiEntropy>) {
        if self.core.anti_entropy.set(service).is_err() {
            warn!("anti-entropy was already attached; keeping the first");
        }
    }

    /// Routes partition stream chunks (join/leave) to `service` from now on.
    pub fn attach_rebalance(&self, service: Arc<Rebalance>) {
        if self.core.rebalance.set(service).is_err() {
            warn!("rebalancing was already attached; keeping the first");
        }
    }

    /// The advertised internode address.
    pub fn peer_addr(&self) -> &str {
        &self.core.peer_addr
    }

    /// The advertised client address.
    pub fn addr(&self) -> &str {
        &self.core.addr
    }

    /// Stops gossip and the join tasks, closes the peer port and every
    /// connection to peers. (Shutting down is not leaving: the others will
    /// see this node go down, and come back with its next incarnation.)
    pub async fn shutdown(&self) {
        self.core.shutdown.cancel();
        let task = self.gossip_task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.core.peers.shutdown();
        self.listener.shutdown().await;
    }

    /// Appends the `# Cluster` section of `INFO`.
    pub fn info_section(&self, out: &mut String) {
        let core = &self.core;
        let (up, suspect, down, rounds) = {
            let m = core.membership.lock();
            (
                m.count(Status::Up),
                m.count(Status::Suspect),
                m.count(Status::Down),
                m.rounds(),
            )
        };
        let peers = core.peers.stats().snapshot() + self.listener.stats().snapshot();
        let c = &core.counters;
        let mut line = |s: String| {
            out.push_str(&s);
            out.push_str("\r\n");
        };
        line("# Cluster".into());
        // Redis' meaning: "speaks Redis Cluster" (slots, MOVED). ringkv does
        // not; clients that read 1 here would switch to cluster mode.
        line("cluster_enabled:0".into());
        line(format!("cluster_members_up:{up}"));
        line(format!("cluster_members_suspect:{suspect}"));
        line(format!("cluster_members_down:{down}"));
        line(format!("gossip_rounds:{rounds}"));
        line(format!(
            "gossip_messages_received:{}",
            c.gossip_received.load(Relaxed)
        ));
        line(format!("gossip_rejected:{}", c.rejected.load(Relaxed)));
        line(format!("gossip_spoofed:{}", c.spoofed.load(Relaxed)));
        line(format!(
            "peer_unserved_messages:{}",
            c.unserved.load(Relaxed)
        ));
        line(format!(
            "peer_malformed_messages:{}",
            c.malformed.load(Relaxed)
        ));
        line(format!(
            "peer_send_failures:{}",
            c.send_failures.load(Relaxed)
        ));
        for (name, value) in peers.fields() {
            line(format!("{name}:{value}"));
        }
    }

    /// Runs a `CLUSTER` subcommand whose arity dispatch has checked.
    pub fn command(&self, cmd: ClusterCmd, args: &[Bytes]) -> Reply {
        let core = &self.core;
        match cmd {
            ClusterCmd::Nodes => Reply::Verbatim(core.nodes_text()),
            ClusterCmd::Info => Reply::Verbatim(core.info_text()),
            ClusterCmd::Meet => core.meet(&args[2], &args[3]),
            ClusterCmd::Forget => core.forget(&args[2]),
            ClusterCmd::Leave => {
                let effects = core.membership.lock().leave(core.now());
                core.apply(effects);
                Reply::OK
            }
            ClusterCmd::Preflist => core.preflist(&args[2]),
            ClusterCmd::Partitions => core.partitions(),
            ClusterCmd::Hints => match core.data.get() {
                Some(data) => data.hints_reply(),
                None => Reply::Array(Vec::new()),
            },
            ClusterCmd::Merkle => match core.anti_entropy.get() {
                Some(ae) => ae.merkle_command(args),
                None => Reply::err("anti-entropy is not running"),
            },
            // Dispatch runs REPAIR itself (it waits for its sessions).
            ClusterCmd::Repair => Reply::err("CLUSTER REPAIR is run by dispatch"),
            ClusterCmd::MyId => Reply::bulk(core.id.to_string()),
            ClusterCmd::MyPeerAddr => Reply::bulk(core.peer_addr.clone()),
            ClusterCmd::Help => {
                Reply::Array(CLUSTER_HELP.iter().map(|l| Reply::Simple(l)).collect())
            }
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // A server dropped without running still stops its tasks.
        self.core.shutdown.cancel();
        self.core.peers.shutdown();
    }
}

/// Dispatch's entry point for `CLUSTER ...`.
pub(crate) fn command(cmd: ClusterCmd, ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    ctx.shared.cluster.command(cmd, args)
}

impl Core {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Carries out what the membership asked for. Never called with the
    /// membership lock held (rebuilding the ring takes it).
    fn apply(self: &Arc<Self>, effects: Vec<Effect>) {
        let mut ring_changed = false;
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => self.deliver(to, Bytes::from(msg.encode())),
                Effect::StatusChanged { id, from, to } => {
                    match from {
                        None => info!(node = %id, status = %to, "new cluster member"),
                        Some(from) => info!(node = %id, %from, %to, "member status changed"),
                    }
                    self.view_version.fetch_add(1, Relaxed);
                }
                Effect::RingChanged => ring_changed = true,
                Effect::Rejected { peer_addr, reason } => {
                    self.counters.rejected.fetch_add(1, Relaxed);
                    warn!(peer = %peer_addr, %reason, "gossip refused: cluster settings differ");
                    *self.last_rejection.lock() = Some(format!("{peer_addr}: {reason}"));
                }
            }
        }
        if ring_changed {
            self.rebuild_ring();
            self.view_version.fetch_add(1, Relaxed);
        }
    }

    fn rebuild_ring(&self) {
        // Built and published under the membership lock, so two rebuilds
        // racing cannot publish an older member set last. (Lock order:
        // membership, then ring; readers never nest them.)
        let membership = self.membership.lock();
        match membership.ring() {
            Ok(ring) => {
                let peers: Vec<String> = ring
                    .members()
                    .iter()
                    .filter(|id| **id != self.id)
                    .filter_map(|id| membership.member(*id).map(|m| m.peer_addr.clone()))
                    .collect();
                *self.ring.write() = Arc::new(RingView::new(ring));
                self.remember(peers);
            }
            // Only an empty member set (this node left and everyone else is
            // gone) fails; keep the last ring for PREFLIST and friends.
            Err(e) => debug!(error = %e, "ring not rebuilt"),
        }
    }

    /// Writes the members file when the ring's peers changed. An empty
    /// ring of one is written too (every other member left or was
    /// forgotten: a restart is then a cluster of one); a ring that only
    /// lost members to `Down` keeps them, since `Down` members stay in it.
    fn remember(&self, mut peers: Vec<String>) {
        peers.sort();
        let mut last = self.remembered.lock();
        if *last == peers {
            return;
        }
        match write_members(&self.dir, &peers) {
            Ok(()) => *last = peers,
            Err(e) => warn!(error = %e, "cannot write the members file"),
        }
    }

    /// Sends one gossip payload to the internode address `to`.
    fn deliver(self: &Arc<Self>, to: String, payload: Bytes) {
        match to.parse::<SocketAddr>() {
            Ok(addr) => self.send_to(addr, &to, payload),
            Err(_) => {
                // A host name: resolve off the caller's path.
                let core = self.clone();
                tokio::spawn(async move {
                    match tokio::net::lookup_host(to.as_str()).await {
                        Ok(mut addrs) => match addrs.next() {
                            Some(addr) => core.send_to(addr, &to, payload),
                            None => warn!(peer = %to, "peer address resolves to nothing"),
                        },
                        Err(e) => warn!(peer = %to, error = %e, "cannot resolve peer address"),
                    }
                });
            }
        }
    }

    fn send_to(&self, addr: SocketAddr, name: &str, payload: Bytes) {
        if let Err(e) = self.peers.send(addr, payload) {
            // Expected while a peer is down (the transport fails fast during
            // its back-off); the failure detector, not this log, reports it.
            self.counters.send_failures.fetch_add(1, Relaxed);
            debug!(peer = %name, error = %e, "gossip not sent");
        }
    }

    /// One payload from the peer port.
    fn on_gossip(self: &Arc<Self>, from: &PeerInfo, msg: Message) {
        let (sender, kind) = match &msg {
            Message::Gossip(g) => (g.from, "gossip"),
            Message::GossipReject(r) => (r.from, "gossip-reject"),
            _ => return,
        };
        // The handshake names the dialer; gossip claiming to be someone else
        // is dropped (with a secret, the handshake name is proven).
        if sender.to_string() != from.node_id {
            self.counters.spoofed.fetch_add(1, Relaxed);
            warn!(peer = %from.addr, claimed = %sender, handshake = %from.node_id, kind, "dropping gossip whose sender differs from the connection's node");
            return;
        }
        self.counters.gossip_received.fetch_add(1, Relaxed);
        let now = self.now();
        let effects = {
            let mut m = self.membership.lock();
            match msg {
                Message::Gossip(g) => m.on_gossip(g, now),
                Message::GossipReject(r) => m.on_reject(r),
                _ => Vec::new(),
            }
        };
        self.apply(effects);
    }

    /// Starts a task that asks the node at client address `host:port` for its
    /// peer address and meets it (see the module doc).
    ///
    /// A `--join` seed ([`JoinKind::Seed`]) is given up once gossip has found
    /// any live peer (seeds only help a node find the cluster; one that is
    /// down for good must not be asked forever). `CLUSTER MEET`
    /// ([`JoinKind::Meet`]) keeps trying: it names a node the operator wants
    /// in, typically one that is not in the cluster yet.
    fn spawn_join(self: Arc<Self>, host: String, port: u16, kind: JoinKind) {
        tokio::spawn(async move {
            let mut wait = JOIN_RETRY_INITIAL;
            let mut attempts = 0u32;
            loop {
                if kind == JoinKind::Seed && self.has_live_peer() {
                    debug!(seed = %format!("{host}:{port}"), "already in a cluster; seed not needed");
                    return;
                }
                match ask_peer_addr(&host, port).await {
                    Ok(peer_addr) => {
                        info!(seed = %format!("{host}:{port}"), %peer_addr, "meeting seed");
                        let effects = self.membership.lock().meet(peer_addr);
                        self.apply(effects);
                        return;
                    }
                    Err(e) => {
                        attempts += 1;
                        // The seed may simply not be up yet: say so once in a while.
                        if attempts == 1 || attempts % 10 == 0 {
                            warn!(seed = %format!("{host}:{port}"), error = %e, attempts, "cannot reach seed yet; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(JOIN_RETRY_MAX);
            }
        });
    }

    fn has_live_peer(&self) -> bool {
        let m = self.membership.lock();
        let live = m
            .members()
            .any(|x| x.id != self.id && matches!(x.status, Status::Up | Status::Suspect));
        live
    }

    fn meet(self: &Arc<Self>, host: &[u8], port: &[u8]) -> Reply {
        let Ok(host) = std::str::from_utf8(host) else {
            return Reply::err("Invalid node address specified");
        };
        let port = match std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(p) if p != 0 => p,
            _ => {
                return Reply::err(format!(
                    "Invalid base port specified: {}",
                    String::from_utf8_lossy(port)
                ))
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Reply::err("Invalid node address specified");
        }
        self.clone()
            .spawn_join(host.to_string(), port, JoinKind::Meet);
        Reply::OK
    }

    fn forget(self: &Arc<Self>, id: &[u8]) -> Reply {
        let Some(id) = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.parse::<NodeId>().ok())
        else {
            return Reply::err(format!("Unknown node {}", String::from_utf8_lossy(id)));
        };
        if id == self.id {
            return Reply::err("I tried hard but I can't forget myself... (use CLUSTER LEAVE)");
        }
        let result = self.membership.lock().forget(id, self.now());
        match result {
            Ok(effects) => {
                self.apply(effects);
                Reply::OK
            }
            Err(_) => Reply::err(format!("Unknown node {id}")),
        }
    }

    fn nodes_text(&self) -> String {
        let ring = self.ring.read().clone();
        let members: Vec<Member> = self.membership.lock().members().cloned().collect();
        let mut out = String::new();
        for m in &members {
            let owned = ring.owned.get(&m.id).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{} {} {} {} heartbeat={} incarnation={} partitions={}{}",
                m.id,
                m.addr,
                m.peer_addr,
                m.status,
                m.heartbeat.0,
                m.incarnation.0,
                owned,
                if m.id == self.id { " myself" } else { "" }
            );
        }
        out
    }

    fn info_text(&self) -> String {
        let ring = self.ring.read().clone();
        let m = self.membership.lock();
        let s = m.settings();
        let g = m.config();
        let me = m.local();
        let state = if me.status == Status::Left {
            "left"
        } else {
            "ok"
        };
        let mut out = String::new();
        let mut kv = |k: &str, v: &dyn std::fmt::Display| {
            let _ = write!(out, "{k}:{v}\r\n");
        };
        kv("cluster_state", &state);
        kv("cluster_name", &s.name);
        kv("cluster_data_replication", &"on");
        kv("cluster_partitions", &s.partitions);
        kv("cluster_replicas_n", &s.replicas);
        kv("cluster_read_quorum_r", &s.read_quorum);
        kv("cluster_write_quorum_w", &s.write_quorum);
        kv("cluster_effective_n", &ring.ring.replication());
        kv("cluster_known_members", &m.members().count());
        kv("cluster_members_up", &m.count(Status::Up));
        kv("cluster_members_suspect", &m.count(Status::Suspect));
        kv("cluster_members_down", &m.count(Status::Down));
        kv("cluster_members_left", &m.count(Status::Left));
        kv("cluster_ring_members", &ring.ring.members().len());
        kv("myself_id", &self.id);
        kv("myself_addr", &me.addr);
        kv("myself_peer_addr", &me.peer_addr);
        kv("myself_status", &me.status);
        kv("myself_incarnation", &me.incarnation.0);
        kv("myself_heartbeat", &me.heartbeat.0);
        kv(
            "myself_partitions",
            &ring.owned.get(&self.id).copied().unwrap_or(0),
        );
        kv("gossip_rounds", &m.rounds());
        kv("gossip_interval_ms", &g.interval_ms);
        kv("gossip_fanout", &g.fanout);
        kv("gossip_suspect_after_ms", &g.suspect_after_ms);
        kv("gossip_down_after_ms", &g.down_after_ms);
        drop(m);
        let last = self.last_rejection.lock().clone();
        let _ = write!(
            out,
            "cluster_last_rejection:{}\r\n",
            last.as_deref().unwrap_or("none")
        );
        out
    }

    fn preflist(&self, key: &[u8]) -> Reply {
        let ring = self.ring.read().clone();
        let m = self.membership.lock();
        let p = ring.ring.partition_for_key(key);
        let n = ring.ring.owners(p).len();
        let rows = ring
            .ring
            .preference_list(p)
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (addr, peer_addr, status) = m
                    .member(*id)
                    .map(|mm| (mm.addr.clone(), mm.peer_addr.clone(), mm.status.to_string()))
                    .unwrap_or_default();
                Reply::Array(vec![
                    Reply::bulk(id.to_string()),
                    Reply::bulk(addr),
                    Reply::bulk(peer_addr),
                    Reply::Simple(if i < n { "owner" } else { "fallback" }),
                    Reply::Status(status),
                    Reply::Integer(i64::from(p.0)),
                ])
            })
            .collect();
        Reply::Array(rows)
    }

    fn partitions(&self) -> Reply {
        let ring = self.ring.read().clone();
        let ring = &ring.ring;
        let mut rows = Vec::new();
        let mut start = PartitionId(0);
        for p in ring.partition_ids() {
            let next = PartitionId(p.0 + 1);
            let run_ends = next.0 >= ring.partitions() || ring.owners(next) != ring.owners(p);
            if run_ends {
                let owners: Vec<String> = ring.owners(p).iter().map(NodeId::short).collect();
                let range = if start == p {
                    format!("{}", p.0)
                } else {
                    format!("{}-{}", start.0, p.0)
                };
                rows.push(Reply::bulk(format!("{range} {}", owners.join(","))));
                start = next;
            }
        }
        Reply::Array(rows)
    }
}

/// The transport's handler: decodes and feeds gossip (see the module doc).
struct GossipHandler {
    core: Arc<RwLock<Option<Arc<Core>>>>,
}

impl Handler for GossipHandler {
    fn handle(&self, from: &PeerInfo, payload: Bytes) -> BoxFuture<'static, Option<Bytes>> {
        let core = self.core.read().clone();
        let Some(core) = core else {
            debug!(peer = %from.addr, "message before the node finished starting; dropped");
            return Box::pin(std::future::ready(None));
        };
        let msg = match Message::decode(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                core.counters.malformed.fetch_add(1, Relaxed);
                warn!(peer = %from.addr, error = %e, "dropping malformed internode message");
                return Box::pin(std::future::ready(None));
            }
        };
        match msg {
            Message::Gossip(_) | Message::GossipReject(_) => {
                // Cheap and synchronous: the state machine answers from memory.
                core.on_gossip(from, msg);
                Box::pin(std::future::ready(None))
            }
            Message::AntiEntropy(ae_msg) => {
                match (core.anti_entropy.get(), from.node_id.parse::<NodeId>()) {
                    (Some(ae), Ok(sender)) => ae.clone().serve(sender, ae_msg, payload.len()),
                    _ => {
                        core.counters.unserved.fetch_add(1, Relaxed);
                        debug!(peer = %from.addr, "anti-entropy message dropped: not running or no valid sender id");
                        Box::pin(std::future::ready(None))
                    }
                }
            }
            Message::StreamChunk(chunk) => {
                match (core.rebalance.get(), from.node_id.parse::<NodeId>()) {
                    (Some(r), Ok(sender)) => r.clone().serve(sender, chunk),
                    _ => {
                        core.counters.unserved.fetch_add(1, Relaxed);
                        debug!(peer = %from.addr, "stream chunk dropped: rebalancing not running or no valid sender id");
                        Box::pin(std::future::ready(None))
                    }
                }
            }
            other => match (core.data.get(), from.node_id.parse::<NodeId>()) {
                (Some(data), Ok(sender)) => data.clone().serve(sender, other),
                _ => {
                    core.counters.unserved.fetch_add(1, Relaxed);
                    debug!(peer = %from.addr, kind = other.kind(), "data-path message dropped: no data path or no valid sender id");
                    Box::pin(std::future::ready(None))
                }
            },
        }
    }
}

async fn gossip_loop(core: Arc<Core>) {
    let interval = core.membership.lock().config().interval_ms;
    let every = TICK_EVERY.min(Duration::from_millis((interval / 4).max(1)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = core.now();
        let effects = core.membership.lock().tick(now);
        core.apply(effects);
    }
}

/// Asks the node at client address `host:port` for its peer address.
async fn ask_peer_addr(host: &str, port: u16) -> Result<String> {
    let opts = ConnectOptions {
        connect_timeout: Duration::from_secs(1),
        ..ConnectOptions::new(host, port)
    };
    let exchange = async {
        let mut client = Client::connect_with(&opts).await?;
        client.send(&["CLUSTER", "MYPEERADDR"]).await
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| {
            Error::Timeout(format!("{host}:{port} did not answer CLUSTER MYPEERADDR"))
        })??;
    match answer {
        Value::Bulk(b) => {
            let addr = String::from_utf8(b.to_vec())
                .map_err(|_| Error::invalid("CLUSTER MYPEERADDR answer is not UTF-8"))?;
            parse_host_port(&addr)?;
            Ok(addr)
        }
        Value::Error(e) => Err(Error::invalid(format!(
            "{host}:{port} answered CLUSTER MYPEERADDR with: {e}"
        ))),
        other => Err(Error::invalid(format!(
            "{host}:{port} answered CLUSTER MYPEERADDR with {other:?}"
        ))),
    }
}

/// The gossip timing: the membership defaults, overridden by the flags.
fn gossip_config(config: &Config) -> GossipConfig {
    let mut g = GossipConfig::default();
    if let Some(ms) = config.gossip_interval_ms {
        g.interval_ms = ms;
    }
    if let Some(ms) = config.gossip_suspect_ms {
        g.suspect_after_ms = ms;
    }
    if let Some(ms) = config.gossip_down_ms {
        g.down_after_ms = ms;
    }
    g
}

/// The cluster-wide settings: the defaults, overridden by the flags.
fn cluster_settings(config: &Config) -> ClusterSettings {
    let mut s = ClusterSettings::default();
    if let Some(n) = config.replicas {
        s.replicas = n;
    }
    if let Some(r) = config.read_quorum {
        s.read_quorum = r;
    }
    if let Some(w) = config.write_quorum {
        s.write_quorum = w;
    }
    s
}

/// `host:port`, with brackets around an IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Picks this life's incarnation and stores it (see the module doc).
fn next_incarnation(dir: &Path) -> Result<Incarnation> {
    let path = dir.join(INCARNATION_FILE);
    let stored = match std::fs::read(&path) {
        Ok(bytes) => match std::str::from_utf8(&bytes).ok().and_then(parse_incarnation) {
            Some(n) => Some(n),
            None => {
                warn!(file = %path.display(), "unreadable incarnation file; using the wall clock");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let next = choose_incarnation(stored, now_ms);
    let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{INCARNATION_MAGIC} {}", next.0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

/// The peer addresses in the members file; none if it is missing or
/// unreadable (logged). Format version 1, ASCII: the line
/// `ringkv-members-v1`, then one peer address (`host:port`) per line.
fn read_members(dir: &Path) -> Vec<String> {
    let path = dir.join(MEMBERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read the members file");
            return Vec::new();
        }
    };
    let mut lines = text.lines();
    if lines.next() != Some(MEMBERS_MAGIC) {
        warn!(file = %path.display(), "members file of an unknown format; ignored");
        return Vec::new();
    }
    lines
        .filter(|l| parse_host_port(l).is_ok())
        .map(str::to_string)
        .collect()
}

/// Replaces the members file (temporary file, fsync, rename, fsync dir).
fn write_members(dir: &Path, peers: &[String]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{MEMBERS_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{MEMBERS_MAGIC}")?;
        for p in peers {
            writeln!(f, "{p}")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(MEMBERS_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn parse_incarnation(text: &str) -> Option<u64> {
    let rest = text.strip_suffix('\n')?.strip_prefix(INCARNATION_MAGIC)?;
    rest.strip_prefix(' ')?.parse().ok()
}

/// `max(stored + 1, now_ms)`.
fn choose_incarnation(stored: Option<u64>, now_ms: u64) -> Incarnation {
    let after_stored = stored.map_or(0, |s| s.saturating_add(1));
    Incarnation(after_stored.max(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_always_rises_even_when_the_clock_goes_back() {
        assert_eq!(choose_incarnation(None, 1000), Incarnation(1000));
        assert_eq!(choose_incarnation(Some(5000), 1000), Incarnation(5001));
        assert_eq!(choose_incarnation(Some(999), 1000), Incarnation(1000));
        assert_eq!(choose_incarnation(Some(u64::MAX), 0), Incarnation(u64::MAX));
    }

    #[test]
    fn incarnation_file_round_trips_and_a_restart_is_higher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = next_incarnation(dir.path()).expect("first");
        let second = next_incarnation(dir.path()).expect("second");
        assert!(second > first);
        let text = std::fs::read_to_string(dir.path().join(INCARNATION_FILE)).expect("read");
        assert_eq!(parse_incarnation(&text), Some(second.0));
    }

    #[test]
    fn a_garbled_incarnation_file_falls_back_to_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(INCARNATION_FILE), b"\xff\x00 nonsense").expect("write");
        assert!(next_incarnation(dir.path()).expect("incarnation").0 > 1_600_000_000_000);
        assert_eq!(parse_incarnation("ringkv-incarnation-v1 12\n"), Some(12));
        assert_eq!(parse_incarnation("ringkv-incarnation-v2 12\n"), None);
        assert_eq!(parse_incarnation("ringkv-incarnation-v1 -1\n"), None);
    }

    #[test]
    fn gossip_timing_comes_from_the_config_file_and_flags() {
        let file = crate::config::FileConfig::parse(
            "gossip-interval-ms = 50\ngossip-suspect-ms = 400\ngossip-down-ms = 900\n",
        )
        .expect("parse");
        let mut config = Config::default();
        config.apply_file(&file);
        let g = gossip_config(&config);
        assert_eq!(
            (g.interval_ms, g.suspect_after_ms, g.down_after_ms),
            (50, 400, 900)
        );
        assert_eq!(gossip_config(&Config::default()), GossipConfig::default());
        // Inconsistent timing is refused when the node starts.
        config.gossip_down_ms = Some(100);
        assert!(gossip_config(&config).validate().is_err());
    }

    #[test]
    fn the_members_file_round_trips_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_members(dir.path()).is_empty());
        let peers = vec!["127.0.0.1:17001".to_string(), "[::1]:17002".to_string()];
        write_members(dir.path(), &peers).expect("write");
        assert_eq!(read_members(dir.path()), peers);
        std::fs::write(dir.path().join(MEMBERS_FILE), b"\xff\x00garbage").expect("write");
        assert!(read_members(dir.path()).is_empty());
        std::fs::write(
            dir.path().join(MEMBERS_FILE),
            "ringkv-members-v1\nnot an address\n127.0.0.1:1\n",
        )
        .expect("write");
        assert_eq!(read_members(dir.path()), ["127.0.0.1:1"]);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("127.0.0.1", 7000), "127.0.0.1:7000");
        assert_eq!(join_host_port("::1", 7000), "[::1]:7000");
    }

    fn test_config(dir: &Path) -> Config {
        Config {
            port: 0,
            dir: dir.to_path_buf(),
            gossip_interval_ms: Some(50),
            gossip_suspect_ms: Some(500),
            gossip_down_ms: Some(1000),
            ..Config::default()
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn garbage_payloads_are_counted_and_dropped_and_membership_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client_addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let node = ClusterNode::start(&test_config(dir.path()), client_addr)
            .await
            .expect("start");
        let stranger = PeerClient::new(PeerConfig::new("stranger")).expect("client");
        let target = node.listener.local_addr();
        for junk in [&b""[..], b"\xff\xff\xff\xff", b"\x02garbage", &[0u8; 64]] {
            stranger
                .send(target, Bytes::copy_from_slice(junk))
                .expect("queued");
        }
        wait_for("four malformed messages", || {
            node.core.counters.malformed.load(Relaxed) == 4
        })
        .await;
        assert_eq!(node.core.membership.lock().members().count(), 1);
        stranger.shutdown();
        node.shutdown().await;
    }

    /// A gossip push from `from` (listening at `peer_addr`) with `settings`.
    fn push(from: NodeId, peer_addr: &str, settings: ClusterSettings) -> Bytes {
        use crate::cluster::membership::{GossipKind, GossipMessage, Heartbeat, MemberDigest};
        let msg = Message::Gossip(GossipMessage {
            settings,
            from,
            from_peer_addr: peer_addr.to_string(),
            kind: GossipKind::Push,
            members: vec![MemberDigest {
                id: from,
                addr: "127.0.0.1:9".to_string(),
                peer_addr: peer_addr.to_string(),
                incarnation: Incarnation(1),
                heartbeat: Heartbeat(1),
                left: false,
            }],
        });
        Bytes::from(msg.encode())
    }

    #[tokio::test]
    async fn gossip_speaking_for_another_node_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = ClusterNode::start(&test_config(dir.path()), "127.0.0.1:1".parse().expect("a"))
            .await
            .expect("start");
        // The connection says "stranger"; the gossip claims another id.
        let stranger = PeerClient::new(PeerConfig::new("stranger")).expect("client");
        let claimed = NodeId::from_peer_addr("127.0.0.1:9");
        let payload = push(claimed, "127.0.0.1:9", ClusterSettings::default());
        stranger
            .send(node.listener.local_addr(), payload)
            .expect("queued");
        wait_for("the spoofed message", || {
            node.core.counters.spoofed.load(Relaxed) == 1
        })
        .await;
        assert_eq!(node.core.membership.lock().members().count(), 1);
        stranger.shutdown();
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_peer_with_different_settings_is_refused_and_not_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = ClusterNode::start(&test_config(dir.path()), "127.0.0.1:1".parse().expect("a"))
            .await
            .expect("start");
        let other = NodeId::from_peer_addr("127.0.0.1:9");
        let client = PeerClient::new(PeerConfig::new(other.to_string())).expect("client");
        let settings = ClusterSettings {
            partitions: 128,
            ..ClusterSettings::default()
        };
        client
            .send(
                node.listener.local_addr(),
                push(other, "127.0.0.1:9", settings),
            )
            .expect("queued");
        wait_for("the refusal", || {
            node.core.counters.rejected.load(Relaxed) == 1
        })
        .await;
        assert_eq!(node.core.membership.lock().members().count(), 1);
        let info = node.core.info_text();
        assert!(
            info.contains("Q differs: peer has Q=128, this node Q=256"),
            "{info}"
        );
        client.shutdown();
        node.shutdown().await;
    }

    #[tokio::test]
    async fn two_nodes_meet_through_a_seed_and_see_each_other_up() {
        let (d1, d2) = (
            tempfile::tempdir().expect("d1"),
            tempfile::tempdir().expect("d2"),
        );
        let a = ClusterNode::start(&test_config(d1.path()), "127.0.0.1:1".parse().expect("a"))
            .await
            .expect("a");
        let b = ClusterNode::start(&test_config(d2.path()), "127.0.0.1:2".parse().expect("b"))
            .await
            .expect("b");
        let effects = b.core.membership.lock().meet(a.peer_addr().to_string());
        b.core.apply(effects);
        wait_for("both members up on both nodes", || {
            [&a, &b]
                .iter()
                .all(|n| n.core.membership.lock().count(Status::Up) == 2)
        })
        .await;
        let nodes = a.core.nodes_text();
        assert_eq!(nodes.lines().count(), 2);
        assert!(nodes.contains(&format!("{} 127.0.0.1:1 {} up", a.id(), a.peer_addr())));
        assert!(nodes
            .lines()
            .any(|l| l.starts_with(&b.id().to_string()) && !l.ends_with("myself")));
        // Every partition has min(N, 2) = 2 owners.
        assert!(a.core.info_text().contains("cluster_effective_n:2\r\n"));
        assert!(a
            .core
            .info_text()
            .contains("cluster_data_replication:on\r\n"));
        a.shutdown().await;
        b.shutdown().await;
    }
}
