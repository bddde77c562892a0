//! A cluster of real `ringkv` processes for the multi-process tests under
//! `integration/`.
//!
//! [`Cluster::start`] (or [`ClusterBuilder`]) starts `n` nodes of the built
//! binary on free 127.0.0.1 ports, each with its own data directory under one
//! temporary root, `--fsync no` unless asked otherwise, fast gossip (100 ms
//! rounds, suspect after 1 s, down after 2 s) and a 1 s request deadline.
//! Nodes 2..n `--join` node 1. It returns once every node answers `PING` and
//! every node's `CLUSTER NODES` lists all `n` members as `up`.
//!
//! Nodes are numbered from 1, as a test reads ("SET through node 1"). The
//! test can kill (SIGKILL), restart (same ports, same data directory), pause
//! (SIGSTOP) and resume (SIGCONT) a node, wipe a stopped node's directory,
//! add a node with the same flags ([`Cluster::add_node`]), and talk to any
//! node through the `redis` crate. Signals go to the PIDs of
//! the children this harness started, nothing else; every child is killed on
//! drop.
//!
//! With [`ClusterBuilder::proxied`], every node's peer traffic passes a
//! fault-injecting proxy ([`proxy`]): node i listens on its peer port and
//! advertises its proxy's port (`--peer-advertise-port`), so the test can
//! partition and heal the network through [`Cluster::net`].
//!
//! Each node's stderr goes to `node<i>.log` in the root; when a test fails
//! the tail of every log is printed with the failure. `RINGKV_IT_LOG` sets
//! the nodes' `RUST_LOG` (default `info`), and `RINGKV_IT_KEEP=1` keeps the
//! root directory for a look afterwards.

#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxy::Network;

/// Gossip timing for tests: the defaults are 1 s, 5 s and 10 s.
pub const GOSSIP: &[&str] = &[
    "--gossip-interval-ms",
    "100",
    "--gossip-suspect-ms",
    "1000",
    "--gossip-down-ms",
    "2000",
];

/// The deadline of one request inside the cluster, in ms (`--request-timeout-ms`).
pub const REQUEST_TIMEOUT_MS: u64 = 1000;

/// How long a node may take to answer `PING` after its start.
const START_WITHIN: Duration = Duration::from_secs(20);
/// How long membership may take to converge.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(20);
/// Client-side socket timeouts: far above the request deadline, so a reply
/// that never comes fails the test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL: usize = 40;

/// How to start a cluster.
pub struct ClusterBuilder {
    size: usize,
    proxied: bool,
    fsync: String,
    args: Vec<String>,
}

impl ClusterBuilder {
    pub fn new(size: usize) -> ClusterBuilder {
        assert!(size >= 1, "a cluster has at least one node");
        ClusterBuilder {
            size,
            proxied: false,
            fsync: "no".into(),
            args: Vec::new(),
        }
    }

    /// Route every node's incoming peer connections through a proxy the
    /// test controls.
    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// The `--fsync` policy of every node (default `no`).
    pub fn fsync(mut self, policy: &str) -> Self {
        self.fsync = policy.into();
        self
    }

    /// Extra flags for every node, e.g. `["--write-quorum", "1"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts the nodes and waits until they all see each other up.
    pub fn start(self) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("ringkv-it-")
            .tempdir()
            .expect("create the cluster's temp dir");
        let net = self.proxied.then(Network::new);
        // Hold every picked port until all are picked so that no two nodes
        // get the same one; the nodes bind them a moment later.
        let mut held = Vec::new();
        let mut nodes = Vec::new();
        for number in 1..=self.size {
            let (port, l1) = free_port();
            let (peer_port, l2) = free_port();
            held.extend([l1, l2]);
            let proxy = net
                .as_ref()
                .map(|n| n.proxy(number, SocketAddr::from(([127, 0, 0, 1], peer_port))));
            let dir = root.path().join(format!("node{number}"));
            fs::create_dir_all(&dir).expect("create a node's data dir");
            let mut args = vec![
                "--dir".to_string(),
                dir.display().to_string(),
                "--fsync".to_string(),
                self.fsync.clone(),
                "--request-timeout-ms".to_string(),
                REQUEST_TIMEOUT_MS.to_string(),
            ];
            args.extend(GOSSIP.iter().map(|a| a.to_string()));
            if let Some(p) = &proxy {
                args.extend(["--peer-advertise-port".to_string(), p.port().to_string()]);
            }
            args.extend(self.args.iter().cloned());
            nodes.push(Node {
                number,
                port,
                peer_port,
                proxy,
                dir,
                log: root.path().join(format!("node{number}.log")),
                args,
                log_start: 0,
                child: None,
                id: String::new(),
            });
        }
        drop(held);
        let mut cluster = Cluster {
            nodes,
            net,
            root: Some(root),
        };
        // The seed first, so that its port is final before the others name
        // it in --join; then the others all at once.
        cluster.start_node(1, None);
        let seed = cluster.node(1).port;
        for i in 2..=cluster.size() {
            cluster.node_mut(i).spawn(Some(seed));
        }
        for i in 2..=cluster.size() {
            cluster.start_node(i, Some(seed));
        }
        cluster.wait_all_up();
        cluster
    }
}

/// Why a node did not come up.
enum StartFailure {
    /// It exited; `log` is what it wrote during this attempt.
    Exited { status: String, log: String },
    /// It ran but did not answer `PING` in time.
    Silent,
}

/// A running cluster; every node is SIGKILLed on drop.
pub struct Cluster {
    nodes: Vec<Node>,
    net: Option<Network>,
    root: Option<tempfile::TempDir>,
}

/// One `ringkv` child process and what it needs to come back the same.
pub struct Node {
    pub number: usize,
    /// The client (RESP) port.
    pub port: u16,
    /// The port the node's peer listener binds.
    pub peer_port: u16,
    proxy: Option<proxy::Proxy>,
    dir: PathBuf,
    log: PathBuf,
    /// Every flag but `--port`, `--peer-port` and `--join`.
    args: Vec<String>,
    /// Where this attempt's lines start in the log file.
    log_start: u64,
    child: Option<Child>,
    /// `CLUSTER MYID`, known once the node first answered.
    id: String,
}

impl Node {
    fn spawn(&mut self, join: Option<u16>) {
        assert!(self.child.is_none(), "node {} is running", self.number);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open a node's log file");
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        cmd.args(["--port", &self.port.to_string()])
            .args(["--peer-port", &self.peer_port.to_string()])
            .args(&self.args);
        if let Some(port) = join {
            cmd.args(["--join", &format!("127.0.0.1:{port}")]);
        }
        let filter = std::env::var("RINGKV_IT_LOG").unwrap_or_else(|_| "info".into());
        let child = cmd
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ringkv");
        self.child = Some(child);
    }

    fn pid(&self) -> libc::pid_t {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.number));
        libc::pid_t::try_from(child.id()).expect("a pid fits pid_t")
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not
        // reaped yet, so the PID cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// What the node logged since its last spawn.
    fn log_since_spawn(&self) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.log_start).unwrap_or(0).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Cluster {
    /// `size` nodes with the default settings (N=3, R=2, W=2), no proxies.
    pub fn start(size: usize) -> Cluster {
        ClusterBuilder::new(size).start()
    }

    pub fn builder(size: usize) -> ClusterBuilder {
        ClusterBuilder::new(size)
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node numbers, 1..=size.
    pub fn numbers(&self) -> Vec<usize> {
        (1..=self.size()).collect()
    }

    pub fn node(&self, number: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&number),
            "no node {number} in a cluster of {}",
            self.nodes.len()
        );
        &self.nodes[number - 1]
    }

    fn node_mut(&mut self, number: usize) -> &mut Node {
        assert!((1..=self.nodes.len()).contains(&number), "no node {number}");
        &mut self.nodes[number - 1]
    }

    /// The proxies' switchboard; only for a [`ClusterBuilder::proxied`] cluster.
    pub fn net(&self) -> &Network {
        self.net
            .as_ref()
            .expect("start the cluster with .proxied() to partition it")
    }

    /// The node's id (`CLUSTER MYID`).
    pub fn id(&self, number: usize) -> &str {
        &self.node(number).id
    }

    /// The number of the node with this id.
    pub fn number_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node has id {id}"))
            .number
    }

    /// Whether the node's process is running (paused counts as running).
    pub fn is_running(&self, number: usize) -> bool {
        self.node(number).child.is_some()
    }

    /// A fresh RESP2 connection to the node, with socket timeouts.
    pub fn con(&self, number: usize) -> redis::Connection {
        self.try_con(number)
            .unwrap_or_else(|e| panic!("connect to node {number}: {e}"))
    }

    fn try_con(&self, number: usize) -> redis::RedisResult<redis::Connection> {
        let con = redis::Client::open(self.node(number).url())?
            .get_connection_with_timeout(CLIENT_TIMEOUT)?;
        con.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        con.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(con)
    }

    /// Runs one command on a fresh connection to the node. A server error
    /// comes back as `Err` with its RESP line (e.g. `UNAVAILABLE needed
    /// W=2 acks, got 1`); a client-side failure as `Err("client: ...")`.
    pub fn cmd(&self, number: usize, args: &[&str]) -> Result<redis::Value, String> {
        let mut con = self.try_con(number).map_err(|e| format!("client: {e}"))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut con)
            .map_err(|e| error_line(&e))
            .and_then(|v| match v {
                redis::Value::ServerError(e) => {
                    Err(format!("{} {}", e.code(), e.details().unwrap_or_default()))
                }
                v => Ok(v),
            })
    }

    /// `SET key value` through the node; the error line if it fails.
    pub fn try_set(&self, number: usize, key: &str, value: &str) -> Result<(), String> {
        match self.cmd(number, &["SET", key, value])? {
            redis::Value::Okay => Ok(()),
            other => Err(format!("SET answered {other:?}")),
        }
    }

    /// `SET key value` through the node, which must answer OK.
    pub fn set(&self, number: usize, key: &str, value: &str) {
        if let Err(e) = self.try_set(number, key, value) {
            panic!("SET {key} {value} through node {number}: {e}");
        }
    }

    /// `GET key` through the node as a sorted list of values: empty for nil,
    /// one for a single value, several for siblings.
    pub fn try_get(&self, number: usize, key: &str) -> Result<Vec<String>, String> {
        values(&self.cmd(number, &["GET", key])?)
    }

    /// `GET key` through the node, which must answer.
    pub fn get(&self, number: usize, key: &str) -> Vec<String> {
        self.try_get(number, key)
            .unwrap_or_else(|e| panic!("GET {key} through node {number}: {e}"))
    }

    /// `DEL key` through the node, which must answer with a count.
    pub fn del(&self, number: usize, key: &str) -> i64 {
        match self.cmd(number, &["DEL", key]) {
            Ok(redis::Value::Int(n)) => n,
            other => panic!("DEL {key} through node {number}: {other:?}"),
        }
    }

    /// The node's `CLUSTER NODES`, parsed.
    pub fn members(&self, number: usize) -> Result<Vec<Member>, String> {
        let text = match self.cmd(number, &["CLUSTER", "NODES"])? {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => return Err(format!("CLUSTER NODES answered {other:?}")),
        };
        text.lines().map(Member::parse).collect()
    }

    /// The key's preference list as the node sees it.
    pub fn preflist(&self, number: usize, key: &str) -> Vec<PrefEntry> {
        let rows = match self.cmd(number, &["CLUSTER", "PREFLIST", key]) {
            Ok(redis::Value::Array(rows)) => rows,
            other => panic!("CLUSTER PREFLIST {key} on node {number}: {other:?}"),
        };
        rows.iter()
            .map(|row| {
                let redis::Value::Array(fields) = row else {
                    panic!("PREFLIST row {row:?}");
                };
                let text = |i: usize| fields.get(i).and_then(text_of).unwrap_or_default();
                PrefEntry {
                    node: self.number_of(&text(0)),
                    owner: text(3) == "owner",
                    status: text(4),
                }
            })
            .collect()
    }

    /// The key's N owners, as node numbers, in preference order.
    pub fn owners(&self, number: usize, key: &str) -> Vec<usize> {
        self.preflist(number, key)
            .into_iter()
            .filter(|e| e.owner)
            .map(|e| e.node)
            .collect()
    }

    /// Spawns the node unless it runs already (with `--join` of `join`),
    /// waits until it answers `PING`, and records its id. A node that dies
    /// because a port it was given got taken meanwhile (another process bound
    /// it between our check and its own bind) gets new ports and another
    /// try; behind a proxy its advertised address, hence its id, stays.
    fn start_node(&mut self, number: usize, join: Option<u16>) {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            if !self.is_running(number) {
                self.node_mut(number).spawn(join);
            }
            match self.wait_ready(number) {
                Ok(()) => return,
                Err(StartFailure::Exited { status, log })
                    if log.contains("Address already in use") && attempt < ATTEMPTS =>
                {
                    eprintln!("node {number} exited ({status}), a port was taken; new ports");
                    let (port, _l1) = free_port();
                    let (peer_port, _l2) = free_port();
                    let node = self.node_mut(number);
                    node.port = port;
                    node.peer_port = peer_port;
                    if let Some(p) = &node.proxy {
                        p.set_upstream(SocketAddr::from(([127, 0, 0, 1], peer_port)));
                    }
                }
                Err(StartFailure::Exited { status, log }) => {
                    panic!("node {number} exited with {status} while starting; its log:\n{log}")
                }
                Err(StartFailure::Silent) => panic!(
                    "node {number} did not answer PING within {START_WITHIN:?}; its log:\n{}",
                    self.node(number).log_tail()
                ),
            }
        }
    }

    /// Waits until the running node answers `PING`, then records its id.
    fn wait_ready(&mut self, number: usize) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let ok = self
                .try_con(number)
                .ok()
                .is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok());
            if ok {
                break;
            }
            let node = self.node_mut(number);
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                node.child = None;
                return Err(StartFailure::Exited {
                    status: status.to_string(),
                    log: node.log_since_spawn(),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Silent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let id = match self.cmd(number, &["CLUSTER", "MYID"]) {
            Ok(v) => text_of(&v).unwrap_or_else(|| panic!("CLUSTER MYID answered {v:?}")),
            Err(e) => panic!("CLUSTER MYID on node {number}: {e}"),
        };
        if let Some(net) = &self.net {
            net.register(&id, number);
        }
        self.node_mut(number).id = id;
        Ok(())
    }

    /// Waits until every running node lists all members of the cluster, all
    /// `up`.
    pub fn wait_all_up(&self) {
        let n = self.size();
        for i in self.numbers() {
            if !self.is_running(i) {
                continue;
            }
            eventually(
                &format!("node {i} sees all {n} members up"),
                CONVERGE_WITHIN,
                || {
                    let m = self.members(i)?;
                    if m.len() == n && m.iter().all(|m| m.status == "up") {
                        Ok(())
                    } else {
                        Err(format!("{m:?}"))
                    }
                },
            );
        }
    }

    /// Waits until each of `observers` lists each of `targets` with `status`
    /// (`up`, `suspect`, `down`, `left`).
    pub fn wait_status(&self, observers: &[usize], targets: &[usize], status: &str) {
        for &o in observers {
            for &t in targets {
                let id = self.id(t).to_string();
                eventually(
                    &format!("node {o} sees node {t} {status}"),
                    CONVERGE_WITHIN,
                    || {
                        let m = self.members(o)?;
                        match m.iter().find(|m| m.id == id) {
                            Some(m) if m.status == status => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    },
                );
            }
        }
    }

    /// SIGKILLs the node and reaps it.
    pub fn kill(&mut self, number: usize) {
        self.node_mut(number).sigkill();
    }

    /// Starts a killed node again on the same ports and data directory,
    /// joining through a running node, and waits until it answers `PING`
    /// (not for membership: see [`Cluster::wait_all_up`]).
    pub fn restart(&mut self, number: usize) {
        let seed = self
            .numbers()
            .into_iter()
            .find(|&i| i != number && self.is_running(i))
            .map(|i| self.node(i).port);
        self.node_mut(number).spawn(seed);
        match self.wait_ready(number) {
            Ok(()) => {}
            Err(StartFailure::Exited { status, log }) => {
                panic!("node {number} exited with {status} on restart; its log:\n{log}")
            }
            Err(StartFailure::Silent) => panic!(
                "restarted node {number} did not answer PING within {START_WITHIN:?}; its log:\n{}",
                self.node(number).log_tail()
            ),
        }
    }

    /// Freezes the node (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&mut self, number: usize) {
        self.node(number).signal(libc::SIGSTOP);
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&mut self, number: usize) {
        self.node(number).signal(libc::SIGCONT);
    }

    /// Empties a stopped node's data directory, as a lost disk would.
    pub fn wipe(&mut self, number: usize) {
        let node = self.node(number);
        assert!(node.child.is_none(), "kill node {number} before wiping it");
        fs::remove_dir_all(&node.dir).expect("remove a node's data dir");
        fs::create_dir_all(&node.dir).expect("recreate a node's data dir");
    }

    /// Starts one more node with the flags every node was built with,
    /// joining through the first running node, and waits until it answers
    /// `PING` (not for membership: see [`Cluster::wait_all_up`], which then
    /// expects the new size). Returns its number.
    pub fn add_node(&mut self) -> usize {
        let number = self.size() + 1;
        let seed = self
            .numbers()
            .into_iter()
            .find(|&i| self.is_running(i))
            .map(|i| self.node(i).port)
            .expect("a running node to join through");
        let root = self
            .root
            .as_ref()
            .expect("the cluster's root directory")
            .path()
            .to_path_buf();
        let (port, l1) = free_port();
        let (peer_port, l2) = free_port();
        let proxy = self
            .net
            .as_ref()
            .map(|n| n.proxy(number, SocketAddr::from(([127, 0, 0, 1], peer_port))));
        let dir = root.join(format!("node{number}"));
        fs::create_dir_all(&dir).expect("create a node's data dir");
        // Node 1's flags, with this node's directory and proxy port.
        let mut args = self.node(1).args.clone();
        let mut replace = |flag: &str, value: String| {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args[i + 1] = value;
            }
        };
        replace("--dir", dir.display().to_string());
        if let Some(p) = &proxy {
            replace("--peer-advertise-port", p.port().to_string());
        }
        drop((l1, l2));
        self.nodes.push(Node {
            number,
            port,
            peer_port,
            proxy,
            dir,
            log: root.join(format!("node{number}.log")),
            args,
            log_start: 0,
            child: None,
            id: String::new(),
        });
        self.start_node(number, Some(seed));
        number
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.sigkill();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "----- node {} (id {}, port {}, peer port {}) log tail -----\n{}",
                    n.number,
                    n.id,
                    n.port,
                    n.peer_port,
                    n.log_tail()
                );
            }
        }
        if std::env::var_os("RINGKV_IT_KEEP").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("keeping {}", root.keep().display());
            }
        }
    }
}

/// One line of `CLUSTER NODES`: `id addr peer_addr status heartbeat=..
/// incarnation=.. partitions=.. [myself]`.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub status: String,
    pub myself: bool,
}

impl Member {
    fn parse(line: &str) -> Result<Member, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 4 {
            return Err(format!("CLUSTER NODES line {line:?}"));
        }
        Ok(Member {
            id: words[0].to_string(),
            addr: words[1].to_string(),
            status: words[3].to_string(),
            myself: words.last() == Some(&"myself"),
        })
    }
}

/// One row of `CLUSTER PREFLIST`.
#[derive(Clone, Debug)]
pub struct PrefEntry {
    pub node: usize,
    /// One of the N owners (else a fallback).
    pub owner: bool,
    pub status: String,
}

/// A free 127.0.0.1 port and the listener holding it. Picked below Linux's
/// ephemeral range (32768-60999), where the kernel never hands out ports by
/// itself (outgoing connections, other tests' binds to port 0), so that a
/// node's ports are rarely taken between this check and its own bind, or
/// while it is down for a restart.
fn free_port() -> (u16, TcpListener) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_700);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (port, l);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = l.local_addr().expect("local addr").port();
    (port, l)
}

/// The RESP error line of a failed command (`CODE detail`), or the client's
/// own error.
pub fn error_line(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => format!("{code} {}", e.detail().unwrap_or_default())
            .trim_end()
            .to_string(),
        None => format!("client: {e}"),
    }
}

/// A string reply's text.
pub fn text_of(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        redis::Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A `GET` reply as a sorted list of values (nil: none; siblings: several).
pub fn values(v: &redis::Value) -> Result<Vec<String>, String> {
    let mut out = match v {
        redis::Value::Nil => Vec::new(),
        redis::Value::Array(items) => items
            .iter()
            .map(|i| text_of(i).ok_or_else(|| format!("sibling {i:?}")))
            .collect::<Result<_, _>>()?,
        other => vec![text_of(other).ok_or_else(|| format!("reply {other:?}"))?],
    };
    out.sort();
    Ok(out)
}

/// Polls `check` until it returns `Ok`, at most `within`; on timeout fails
/// with `what` and the last `Err` it gave (the state it saw).
pub fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting until {what}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node numbers as a set, for comparing unordered node lists.
pub fn set_of(items: &[usize]) -> BTreeSet<usize> {
    items.iter().copied().collect()
}
