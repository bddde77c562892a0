//! The chaos test of issue 5: five real `ringkv` processes, clients that
//! read-modify-write sets of unique elements through random nodes, and a
//! seeded nemesis that SIGKILLs, pauses, wipes and partitions nodes. At the
//! end everything is healed, hints and anti-entropy are left to finish, and
//! every key is read through every node.
//!
//! # The workload
//!
//! A key's value is a set of unique elements (`<client>.<n>`), written as a
//! comma-separated list whose **last** element is the one that write added.
//! A client reads the key with `VCLOCK key WITHVALUES` (one quorum read: the
//! context and exactly the values it covers), takes the union of all the
//! siblings, appends a new element and writes it with `RESOLVE key context
//! value`. An element is *acknowledged* when its `RESOLVE` answered `+OK`
//! (with the cluster's W=2). Keys come in three classes:
//!
//! - **set** keys are only ever read-modify-written (a few of them are hot,
//!   so concurrent writers make siblings);
//! - **churn** keys are also deleted now and then (`DEL`) and written again;
//! - **tomb** keys are written for a while, then *retired*: no client touches
//!   them again, and the retirer deletes them for good (see below).
//!
//! # The nemesis
//!
//! From `RINGKV_CHAOS_SEED` (default: random, printed), a schedule of steps:
//! a quiet gap of 1-3 s, then one or two faults held for 2-6 s, then undone.
//! Faults: SIGKILL (restart after), SIGSTOP (SIGCONT after), wipe (SIGKILL,
//! empty the data directory, restart after), and a network partition through
//! the peer proxies (one node or two cut off from the rest, blackholed or
//! with connections closed). At most two nodes are affected at once, so W=2
//! stays reachable through the sloppy quorum most of the time. Nodes run
//! with `--fsync always`, so a SIGKILL loses no acknowledged write and only a
//! wipe destroys data; since W=2 copies survive one lost disk but not two,
//! the nemesis makes the cluster repair itself (hints drained, `CLUSTER
//! REPAIR` on every node) before it wipes a second time. When the fault
//! phase ends, the clients stop and the faults of the step in progress are
//! undone: that is the heal the convergence time counts from.
//!
//! # What is checked
//!
//! - **Acknowledged elements lost: 0.** Every acknowledged element is in the
//!   union of the final reads of its key, unless a `DEL` of that key could
//!   have covered it: one sent after the element's `RESOLVE` was sent, or one
//!   whose effect may have come later. A `DEL` answered by the cluster (OK or
//!   an error from the coordinator) took effect, if at all, before its
//!   answer; one whose answer was lost (client timeout, `TIMEOUT forwarded`)
//!   may still run when the fault that held it ends (a blackholed proxy
//!   delivers what it held, a paused node reads its socket), so its effect is
//!   bounded by the next moment without faults plus [`IN_DOUBT_MARGIN`].
//! - **Deleted keys resurrected: 0.** Retiring a tomb key: wait until no
//!   client operation on it is in flight, then through one of its owners X
//!   (which coordinates, never forwards) read it with `VCLOCK WITHVALUES`
//!   (the quorum's versions are merged into X's replica) and `DEL` it through
//!   X, retrying until the `DEL` is acknowledged with no restart of X in
//!   between. That `DEL`'s tombstone then descends from every version the
//!   read saw. A value that the write of element `e` created descends from
//!   the write of every element it contains, so a final value whose newest
//!   (last) element was seen by that read is dominated by the tombstone:
//!   reading it is a resurrection. (A value written concurrently with the
//!   delete, e.g. held as a hint the read could not see, legitimately
//!   survives as a sibling; those are counted, not failed.)
//! - **Replicas converged**: after the heal, every node's hints drain and
//!   every partition's replicas report the same Merkle root (`CLUSTER
//!   MERKLE`, after `CLUSTER REPAIR` rounds) within [`Settings::settle_within`];
//!   the time is printed. Then every node answers the same for every key.
//! - **Availability** per fault kind: the share of client operations that
//!   were acknowledged among those started while a fault of that kind was
//!   active (an operation during two faults counts for both).
//! - **Stale reads** are counted, not failed: reads of a set key that missed
//!   an element acknowledged before the read began. R + W > N promises none
//!   between the owners, but the sloppy quorum lets a write be acknowledged
//!   by a fallback that a later read does not ask; the summary also counts
//!   those through a node that had just restarted.
//!
//! # Running it
//!
//! `cargo test --test chaos -- --nocapture` prints the summary. The short
//! mode (default, part of `cargo test`) runs 100 s of faults;
//! `RINGKV_CHAOS_LONG=1` runs 10 minutes, and `RINGKV_CHAOS_SECS` sets the
//! length of the fault phase. Every operation (with timings, the node it went
//! through and its outcome) and every fault goes to a history file in the
//! temporary directory; its path is printed, it is kept when the test fails
//! or with `RINGKV_IT_KEEP=1`, and `RINGKV_CHAOS_SEED=<seed>` replays the
//! same fault schedule and client choices (thread timing is not replayed).

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{LineWriter, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use support::proxy::CutMode;
use support::{text_of, Cluster};

/// Nodes in the cluster.
const NODES: usize = 5;
/// Replicas of each key (the cluster's default N).
const REPLICAS: usize = 3;

/// How long a client waits to connect, and for a reply: above the forward
/// budget (1.5 x the 1 s request deadline) with room for a loaded machine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REPLY_TIMEOUT: Duration = Duration::from_secs(4);
/// How long `CLUSTER REPAIR` may take to answer.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after the fault that held it an operation whose answer was lost
/// may still take effect (delivery, a forward budget, a quorum deadline).
const IN_DOUBT_MARGIN: Duration = Duration::from_secs(10);

/// The first keys of the set class take this share of the clients' picks.
const HOT_KEYS: usize = 8;
const HOT_SHARE: f64 = 0.3;
/// Chance that a client's operation on a churn key is a `DEL`.
const CHURN_DEL_SHARE: f64 = 0.12;

/// Stale reads through a node this soon after its restart (which the
/// nemesis logs once the node answers `PING`; a client may have got in a
/// moment before) are counted apart in the summary.
const RESTART_WINDOW: Duration = Duration::from_secs(1);
const RESTART_SLACK: Duration = Duration::from_millis(100);

/// How long the retirer may keep trying after the heal.
const RETIRE_AFTER_HEAL: Duration = Duration::from_secs(60);
/// How long the nemesis waits for the cluster to repair itself before a
/// second wipe (otherwise the wipe becomes a kill).
const REPAIR_BEFORE_WIPE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Settings and keys

struct Settings {
    seed: u64,
    long: bool,
    /// Length of the fault phase.
    faults_for: Duration,
    set_keys: usize,
    churn_keys: usize,
    tomb_keys: usize,
    clients: usize,
    /// Bound on hints draining and replicas converging after the heal.
    settle_within: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let seed = match std::env::var("RINGKV_CHAOS_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("RINGKV_CHAOS_SEED={s:?} is not a u64")),
            Err(_) => rand::thread_rng().gen(),
        };
        let long = std::env::var("RINGKV_CHAOS_LONG").is_ok_and(|v| v != "0" && !v.is_empty());
        let default_secs = if long { 600 } else { 100 };
        let secs = std::env::var("RINGKV_CHAOS_SECS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(default_secs);
        let scale = if long { 2 } else { 1 };
        Settings {
            seed,
            long,
            faults_for: Duration::from_secs(secs),
            set_keys: 140 * scale,
            churn_keys: 30 * scale,
            tomb_keys: 30 * scale,
            clients: 3,
            settle_within: Duration::from_secs(if long { 180 } else { 90 }),
        }
    }

    fn mode(&self) -> &'static str {
        if self.long {
            "long"
        } else {
            "short"
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Set,
    Churn,
    Tomb,
}

struct KeySpec {
    name: String,
    class: Class,
    /// When the retirer deletes a tomb key for good.
    retire_at: Option<Duration>,
}

fn plan_keys(s: &Settings, rng: &mut StdRng) -> Vec<KeySpec> {
    let mut keys = Vec::new();
    for i in 0..s.set_keys {
        keys.push(KeySpec {
            name: format!("set:{i:03}"),
            class: Class::Set,
            retire_at: None,
        });
    }
    for i in 0..s.churn_keys {
        keys.push(KeySpec {
            name: format!("churn:{i:03}"),
            class: Class::Churn,
            retire_at: None,
        });
    }
    let phase = s.faults_for.as_secs_f64();
    for i in 0..s.tomb_keys {
        keys.push(KeySpec {
            name: format!("tomb:{i:03}"),
            class: Class::Tomb,
            retire_at: Some(Duration::from_secs_f64(phase * rng.gen_range(0.15..0.9))),
        });
    }
    keys
}

// ---------------------------------------------------------------------------
// History

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    /// `VCLOCK WITHVALUES` then `RESOLVE` with one new element.
    Rmw,
    /// A client's `DEL` of a churn key.
    Del,
    /// The retirer's read before its `DEL` of a tomb key.
    RetireRead,
    /// The retirer's `DEL` of a tomb key.
    RetireDel,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Rmw => "rmw",
            OpKind::Del => "del",
            OpKind::RetireRead => "retire-read",
            OpKind::RetireDel => "retire-del",
        }
    }

    fn deletes(self) -> bool {
        matches!(self, OpKind::Del | OpKind::RetireDel)
    }
}

/// How an operation ended, as far as its effect on the data goes.
#[derive(Clone, Debug)]
enum Outcome {
    /// `+OK` (or the `DEL` count, or the read's answer).
    Acked,
    /// Never reached a node (connect failed): no effect.
    NotSent(String),
    /// The cluster answered an error: whatever it did, it did before answering.
    Ended(String),
    /// The answer was lost: it may still take effect later.
    InDoubt(String),
}

impl Outcome {
    fn acked(&self) -> bool {
        matches!(self, Outcome::Acked)
    }

    fn error(&self) -> Option<&str> {
        match self {
            Outcome::Acked => None,
            Outcome::NotSent(e) | Outcome::Ended(e) | Outcome::InDoubt(e) => Some(e),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::NotSent(_) => "not-sent",
            Outcome::Ended(_) => "failed",
            Outcome::InDoubt(_) => "in-doubt",
        }
    }
}

#[derive(Clone, Debug)]
struct Op {
    /// 0 is the retirer, 1.. the clients.
    client: usize,
    kind: OpKind,
    key: usize,
    node: usize,
    start: Duration,
    /// When the writing command (`RESOLVE`, `DEL`) was sent; the read's
    /// start for reads and for read-modify-writes whose read failed.
    sent: Duration,
    end: Duration,
    /// The element a read-modify-write added.
    elem: Option<String>,
    outcome: Outcome,
    /// For a read of a set key: how many of the elements acknowledged
    /// before the read began it did not return, and how many those were.
    stale: Option<(usize, usize)>,
    note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    Kill,
    Pause,
    Wipe,
    Partition,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Wipe,
        FaultKind::Partition,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Wipe => "wipe",
            FaultKind::Partition => "partition",
        }
    }
}

#[derive(Clone, Debug)]
struct FaultRecord {
    kind: FaultKind,
    nodes: Vec<usize>,
    what: String,
    start: Duration,
    end: Option<Duration>,
}

impl FaultRecord {
    fn active_at(&self, t: Duration) -> bool {
        self.start <= t && self.end.is_none_or(|end| t < end)
    }
}

/// Every operation and fault, in memory for the checks and as lines in a
/// file for a human replaying a failure.
struct History {
    start: Instant,
    path: PathBuf,
    file: Mutex<Option<LineWriter<File>>>,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultRecord>>,
    /// Replies that break the wire contract (not errors: shapes).
    anomalies: Mutex<Vec<String>>,
}

impl History {
    fn new(seed: u64) -> History {
        let path = std::env::temp_dir().join(format!(
            "ringkv-chaos-{seed}-{}.history",
            std::process::id()
        ));
        let file = File::create(&path)
            .unwrap_or_else(|e| panic!("create the history file {}: {e}", path.display()));
        History {
            start: Instant::now(),
            path,
            file: Mutex::new(Some(LineWriter::new(file))),
            ops: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            anomalies: Mutex::new(Vec::new()),
        }
    }

    fn at(&self) -> Duration {
        self.start.elapsed()
    }

    fn line(&self, text: &str) {
        let t = self.at().as_secs_f64();
        if let Some(f) = self.file.lock().as_mut() {
            let _ = writeln!(f, "[{t:9.3}] {text}");
        }
    }

    fn op(&self, keys: &[KeySpec], op: Op) {
        let mut text = format!(
            "{} {} {} via {}",
            if op.client == 0 {
                "retirer".to_string()
            } else {
                format!("c{}", op.client)
            },
            op.kind.name(),
            keys[op.key].name,
            op.node,
        );
        if let Some(e) = &op.elem {
            let _ = write!(text, " +{e}");
        }
        let _ = write!(
            text,
            " -> {} ({} ms; sent at {:.3})",
            op.outcome.label(),
            (op.end - op.start).as_millis(),
            op.sent.as_secs_f64()
        );
        if let Some(e) = op.outcome.error() {
            let _ = write!(text, " {e}");
        }
        if let Some((missed, of)) = op.stale.filter(|&(m, _)| m > 0) {
            let _ = write!(
                text,
                " STALE: missed {missed} of {of} acknowledged elements"
            );
        }
        if !op.note.is_empty() {
            let _ = write!(text, " | {}", op.note);
        }
        self.line(&text);
        self.ops.lock().push(op);
    }

    fn anomaly(&self, text: String) {
        self.line(&format!("ANOMALY {text}"));
        self.anomalies.lock().push(text);
    }

    fn fault_start(&self, kind: FaultKind, nodes: Vec<usize>, what: String) -> usize {
        self.line(&format!("FAULT start {} {what}", kind.name()));
        let mut faults = self.faults.lock();
        faults.push(FaultRecord {
            kind,
            nodes,
            what,
            start: self.at(),
            end: None,
        });
        faults.len() - 1
    }

    fn fault_end(&self, index: usize) {
        let mut faults = self.faults.lock();
        let f = &mut faults[index];
        f.end = Some(self.at());
        self.line(&format!("FAULT end   {} {}", f.kind.name(), f.what));
    }

    /// The first moment at or after `t` with no fault active (the end of
    /// the history if faults never stop).
    fn quiet_after(&self, t: Duration, end_of_history: Duration) -> Duration {
        let faults = self.faults.lock();
        let mut cur = t;
        loop {
            match faults.iter().find(|f| f.active_at(cur)) {
                None => return cur,
                Some(f) => match f.end {
                    Some(end) => cur = end,
                    None => return end_of_history,
                },
            }
        }
    }

    fn kinds_active_at(&self, t: Duration) -> BTreeSet<FaultKind> {
        self.faults
            .lock()
            .iter()
            .filter(|f| f.active_at(t))
            .map(|f| f.kind)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Talking to nodes

/// Why a command got no reply.
enum CmdError {
    /// No connection could be made: the command was not sent.
    NotSent(String),
    /// The node answered an error.
    Server(String),
    /// Sent, but the reply never came (timeout, reset).
    Lost(String),
}

impl CmdError {
    fn text(&self) -> &str {
        match self {
            CmdError::NotSent(e) | CmdError::Server(e) | CmdError::Lost(e) => e,
        }
    }

    /// The outcome of a write that failed this way. A forwarding node's own
    /// `TIMEOUT`/`UNAVAILABLE` means the owner may have the command in hand
    /// (or held in a partition) and run it later.
    fn outcome(self) -> Outcome {
        match self {
            CmdError::NotSent(e) => Outcome::NotSent(e),
            CmdError::Lost(e) => Outcome::InDoubt(e),
            CmdError::Server(e)
                if e.starts_with("TIMEOUT forwarded")
                    || e.starts_with("UNAVAILABLE cannot reach")
                    || e.starts_with("ERR replica") =>
            {
                Outcome::InDoubt(e)
            }
            CmdError::Server(e) => Outcome::Ended(e),
        }
    }
}

/// One connection per node, made on first use and dropped after a lost reply.
struct Links {
    ports: Vec<u16>,
    cons: Vec<Option<redis::Connection>>,
    reply_timeout: Duration,
}

impl Links {
    fn new(ports: &[u16], reply_timeout: Duration) -> Links {
        Links {
            ports: ports.to_vec(),
            cons: ports.iter().map(|_| None).collect(),
            reply_timeout,
        }
    }

    fn connect(&self, node: usize) -> redis::RedisResult<redis::Connection> {
        let url = format!("redis://127.0.0.1:{}/", self.ports[node - 1]);
        let con = redis::Client::open(url)?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(self.reply_timeout))?;
        con.set_write_timeout(Some(self.reply_timeout))?;
        Ok(con)
    }

    fn run(&mut self, node: usize, args: &[&[u8]]) -> Result<redis::Value, CmdError> {
        if self.cons[node - 1].is_none() {
            let con = self
                .connect(node)
                .map_err(|e| CmdError::NotSent(format!("connect: {e}")))?;
            self.cons[node - 1] = Some(con);
        }
        let con = self.cons[node - 1].as_mut().expect("connected above");
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command names are ASCII"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        match cmd.query::<redis::Value>(con) {
            Ok(redis::Value::ServerError(e)) => Err(CmdError::Server(
                format!("{} {}", e.code(), e.details().unwrap_or_default())
                    .trim_end()
                    .to_string(),
            )),
            Ok(v) => Ok(v),
            Err(e) if e.code().is_some() => Err(CmdError::Server(support::error_line(&e))),
            Err(e) => {
                self.cons[node - 1] = None;
                Err(CmdError::Lost(format!("client: {e}")))
            }
        }
    }
}

/// A `VCLOCK key WITHVALUES` reply: the context token and the values.
fn parse_vclock(v: &redis::Value) -> Result<(Vec<u8>, Vec<String>), String> {
    let redis::Value::Array(parts) = v else {
        return Err(format!("VCLOCK WITHVALUES answered {v:?}"));
    };
    let [token, values] = parts.as_slice() else {
        return Err(format!("VCLOCK WITHVALUES answered {v:?}"));
    };
    let token = match token {
        redis::Value::BulkString(b) => b.clone(),
        other => return Err(format!("VCLOCK WITHVALUES token {other:?}")),
    };
    let redis::Value::Array(items) = values else {
        return Err(format!("VCLOCK WITHVALUES values {values:?}"));
    };
    let values = items
        .iter()
        .map(|i| text_of(i).ok_or_else(|| format!("VCLOCK WITHVALUES value {i:?}")))
        .collect::<Result<_, _>>()?;
    Ok((token, values))
}

/// A `GET` reply as its values, in the order given (nil: none).
fn parse_get(v: &redis::Value) -> Result<Vec<String>, String> {
    match v {
        redis::Value::Nil => Ok(Vec::new()),
        redis::Value::Array(items) => items
            .iter()
            .map(|i| text_of(i).ok_or_else(|| format!("GET sibling {i:?}")))
            .collect(),
        other => Ok(vec![
            text_of(other).ok_or_else(|| format!("GET answered {other:?}"))?
        ]),
    }
}

/// The elements of one value.
fn elements(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|e| !e.is_empty())
}

/// The element the write that created `value` added: the last one.
fn newest(value: &str) -> Option<&str> {
    elements(value).last()
}

// ---------------------------------------------------------------------------
// Clients and the retirer

/// Whether clients may still touch a tomb key, and how many operations on
/// it are in flight.
#[derive(Default)]
struct TombState {
    retired: bool,
    inflight: usize,
}

/// What clients, the retirer and the nemesis share.
struct Shared {
    keys: Vec<KeySpec>,
    ports: Vec<u16>,
    history: History,
    stop: AtomicBool,
    tombs: Mutex<BTreeMap<usize, TombState>>,
    tomb_idle: Condvar,
    /// Bumped (before the signal) every time a node is SIGKILLed, so the
    /// retirer can tell that a node restarted between two commands.
    generation: Vec<AtomicU64>,
    /// The retirer gives up at this many ms of history (`u64::MAX`: never).
    retire_give_up_ms: AtomicU64,
    /// Per set key, its acknowledged elements in the order of their acks.
    acked: Vec<Mutex<Vec<String>>>,
}

impl Shared {
    /// Registers an operation on `key` unless the key was retired.
    fn enter(&self, key: usize) -> bool {
        if self.keys[key].class != Class::Tomb {
            return true;
        }
        let mut tombs = self.tombs.lock();
        let t = tombs.entry(key).or_default();
        if t.retired {
            return false;
        }
        t.inflight += 1;
        true
    }

    fn leave(&self, key: usize) {
        if self.keys[key].class != Class::Tomb {
            return;
        }
        let mut tombs = self.tombs.lock();
        let t = tombs.entry(key).or_default();
        t.inflight -= 1;
        self.tomb_idle.notify_all();
    }

    /// Stops clients from starting operations on `key`, then waits until
    /// none is in flight.
    fn retire(&self, key: usize) {
        let mut tombs = self.tombs.lock();
        tombs.entry(key).or_default().retired = true;
        while tombs.get(&key).is_some_and(|t| t.inflight > 0) {
            self.tomb_idle.wait(&mut tombs);
        }
    }

    fn generation(&self, node: usize) -> u64 {
        self.generation[node - 1].load(Ordering::SeqCst)
    }
}

/// Stops the client threads when the test ends, also by a panic.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.retire_give_up_ms.store(0, Ordering::SeqCst);
    }
}

struct Client {
    number: usize,
    shared: Arc<Shared>,
    links: Links,
    rng: StdRng,
    next_elem: u64,
}

impl Client {
    fn run(mut self) {
        let keys = self.shared.keys.len();
        while !self.shared.stop.load(Ordering::SeqCst) {
            let key = if self.rng.gen_bool(HOT_SHARE) {
                self.rng.gen_range(0..HOT_KEYS)
            } else {
                self.rng.gen_range(0..keys)
            };
            let node = self.rng.gen_range(1..=NODES);
            let delete = self.rng.gen_bool(CHURN_DEL_SHARE);
            if !self.shared.enter(key) {
                continue;
            }
            let op = if delete && self.shared.keys[key].class == Class::Churn {
                self.del(key, node)
            } else {
                self.rmw(key, node)
            };
            self.shared.leave(key);
            self.shared.history.op(&self.shared.keys, op);
            thread::sleep(Duration::from_millis(self.rng.gen_range(0..10)));
        }
    }

    fn rmw(&mut self, key: usize, node: usize) -> Op {
        let history = &self.shared.history;
        let name = self.shared.keys[key].name.as_bytes();
        let start = history.at();
        let mut op = Op {
            client: self.number,
            kind: OpKind::Rmw,
            key,
            node,
            start,
            sent: start,
            end: start,
            elem: None,
            outcome: Outcome::Acked,
            stale: None,
            note: String::new(),
        };
        let set_key = self.shared.keys[key].class == Class::Set;
        let acked_before = self.shared.acked[key].lock().len();
        let read = self.links.run(node, &[b"VCLOCK", name, b"WITHVALUES"]);
        let (token, values) = match read.map(|v| parse_vclock(&v)) {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                history.anomaly(format!("{}: {e}", self.shared.keys[key].name));
                op.end = history.at();
                op.outcome = Outcome::Ended(format!("read: {e}"));
                return op;
            }
            Err(e) => {
                op.end = history.at();
                op.outcome = Outcome::Ended(format!("read: {}", e.text()));
                return op;
            }
        };
        let seen: BTreeSet<&str> = values.iter().flat_map(|v| elements(v)).collect();
        if set_key {
            let acked = self.shared.acked[key].lock();
            let missed = acked[..acked_before]
                .iter()
                .filter(|e| !seen.contains(e.as_str()))
                .count();
            op.stale = Some((missed, acked_before));
        }
        self.next_elem += 1;
        let elem = format!("{}.{}", self.number, self.next_elem);
        let mut value = String::new();
        for e in &seen {
            value.push_str(e);
            value.push(',');
        }
        value.push_str(&elem);
        op.note = format!("read {} values, {} elements", values.len(), seen.len());
        op.sent = history.at();
        let reply = self
            .links
            .run(node, &[b"RESOLVE", name, &token, value.as_bytes()]);
        op.end = history.at();
        op.outcome = match reply {
            Ok(v) if is_ok(&v) => {
                if set_key {
                    self.shared.acked[key].lock().push(elem.clone());
                }
                Outcome::Acked
            }
            Ok(other) => {
                history.anomaly(format!(
                    "RESOLVE {} answered {other:?}",
                    self.shared.keys[key].name
                ));
                Outcome::InDoubt(format!("unexpected reply {other:?}"))
            }
            Err(e) => e.outcome(),
        };
        op.elem = Some(elem);
        op
    }

    fn del(&mut self, key: usize, node: usize) -> Op {
        del_op(
            &self.shared,
            &mut self.links,
            self.number,
            OpKind::Del,
            key,
            node,
        )
    }
}

fn is_ok(v: &redis::Value) -> bool {
    match v {
        redis::Value::Okay => true,
        redis::Value::SimpleString(s) => s == "OK",
        _ => false,
    }
}

fn del_op(
    shared: &Shared,
    links: &mut Links,
    client: usize,
    kind: OpKind,
    key: usize,
    node: usize,
) -> Op {
    let history = &shared.history;
    let start = history.at();
    let reply = links.run(node, &[b"DEL", shared.keys[key].name.as_bytes()]);
    let end = history.at();
    let (outcome, note) = match reply {
        Ok(redis::Value::Int(n)) => (Outcome::Acked, format!("deleted {n}")),
        Ok(other) => {
            history.anomaly(format!("DEL {} answered {other:?}", shared.keys[key].name));
            (
                Outcome::InDoubt(format!("unexpected reply {other:?}")),
                String::new(),
            )
        }
        Err(e) => (e.outcome(), String::new()),
    };
    Op {
        client,
        kind,
        key,
        node,
        start,
        sent: start,
        end,
        elem: None,
        outcome,
        stale: None,
        note,
    }
}

/// A tomb key deleted for good, and what the read before its `DEL` saw.
struct Retirement {
    key: usize,
    /// Every element of every value the read saw.
    seen: BTreeSet<String>,
}

/// Deletes every tomb key at its time (see the module doc); returns the
/// retirements done and the keys it gave up on.
fn retirer(
    shared: Arc<Shared>,
    owners: Vec<Vec<usize>>,
    seed: u64,
) -> (Vec<Retirement>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut links = Links::new(&shared.ports, REPLY_TIMEOUT);
    let mut tombs: Vec<(Duration, usize)> = shared
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.retire_at.map(|t| (t, i)))
        .collect();
    tombs.sort();
    let history = &shared.history;
    let give_up =
        || history.at().as_millis() as u64 >= shared.retire_give_up_ms.load(Ordering::SeqCst);
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (at, key) in tombs {
        while history.at() < at && !give_up() && !shared.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        shared.retire(key);
        history.line(&format!("retirer: {} retired", shared.keys[key].name));
        let name = shared.keys[key].name.as_bytes();
        let mut retired = None;
        while retired.is_none() && !give_up() {
            let x = owners[key][rng.gen_range(0..owners[key].len())];
            let generation = shared.generation(x);
            let start = history.at();
            let read = links.run(x, &[b"VCLOCK", name, b"WITHVALUES"]);
            let end = history.at();
            let (outcome, seen, note) = match read.map(|v| parse_vclock(&v)) {
                Ok(Ok((_, values))) => {
                    let seen: BTreeSet<String> = values
                        .iter()
                        .flat_map(|v| elements(v).map(str::to_string))
                        .collect();
                    let note = format!("saw {values:?}");
                    (Outcome::Acked, Some(seen), note)
                }
                Ok(Err(e)) => {
                    history.anomaly(format!("{}: {e}", shared.keys[key].name));
                    (Outcome::Ended(e), None, String::new())
                }
                Err(e) => (Outcome::Ended(e.text().to_string()), None, String::new()),
            };
            history.op(
                &shared.keys,
                Op {
                    client: 0,
                    kind: OpKind::RetireRead,
                    key,
                    node: x,
                    start,
                    sent: start,
                    end,
                    elem: None,
                    outcome,
                    stale: None,
                    note,
                },
            );
            if let Some(seen) = seen {
                let del = del_op(&shared, &mut links, 0, OpKind::RetireDel, key, x);
                let acked = del.outcome.acked();
                history.op(&shared.keys, del);
                if acked && shared.generation(x) == generation {
                    retired = Some(Retirement { key, seen });
                    break;
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
        match retired {
            Some(r) => done.push(r),
            None => {
                history.line(&format!(
                    "retirer: gave up deleting {}",
                    shared.keys[key].name
                ));
                failed.push(key);
            }
        }
    }
    (done, failed)
}

// ---------------------------------------------------------------------------
// The nemesis

#[derive(Clone, Debug)]
enum Fault {
    Kill(usize),
    Pause(usize),
    Wipe(usize),
    /// These nodes are cut off from the others.
    Partition(Vec<usize>, CutMode),
}

impl Fault {
    fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill(_) => FaultKind::Kill,
            Fault::Pause(_) => FaultKind::Pause,
            Fault::Wipe(_) => FaultKind::Wipe,
            Fault::Partition(..) => FaultKind::Partition,
        }
    }

    fn nodes(&self) -> Vec<usize> {
        match self {
            Fault::Kill(n) | Fault::Pause(n) | Fault::Wipe(n) => vec![*n],
            Fault::Partition(minority, _) => minority.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Fault::Kill(n) => format!("node {n}"),
            Fault::Pause(n) => format!("node {n}"),
            Fault::Wipe(n) => format!("node {n}"),
            Fault::Partition(minority, mode) => {
                let rest: Vec<usize> = (1..=NODES).filter(|n| !minority.contains(n)).collect();
                format!("{minority:?} | {rest:?} ({mode:?})")
            }
        }
    }
}

struct Step {
    gap: Duration,
    faults: Vec<Fault>,
    hold: Duration,
}

/// The next step of the schedule. Every call draws the same number of
/// values, so a seed gives the same schedule whatever the timing.
fn next_step(rng: &mut StdRng) -> Step {
    let gap = Duration::from_millis(rng.gen_range(1000..3000));
    let hold = Duration::from_millis(rng.gen_range(2000..6000));
    let pick = rng.gen_range(0..100);
    let a = rng.gen_range(1..=NODES);
    let mut b = rng.gen_range(1..NODES);
    if b >= a {
        b += 1;
    }
    let mode = if rng.gen_bool(0.25) {
        CutMode::Close
    } else {
        CutMode::Blackhole
    };
    let faults = match pick {
        0..=14 => vec![Fault::Kill(a)],
        15..=29 => vec![Fault::Pause(a)],
        30..=44 => vec![Fault::Wipe(a)],
        45..=59 => vec![Fault::Partition(vec![a], mode)],
        60..=71 => vec![Fault::Partition(vec![a, b], mode)],
        72..=81 => vec![Fault::Kill(a), Fault::Pause(b)],
        82..=89 => vec![Fault::Kill(a), Fault::Kill(b)],
        _ => vec![Fault::Partition(vec![a], mode), Fault::Pause(b)],
    };
    Step { gap, faults, hold }
}

struct Nemesis<'a> {
    c: &'a mut Cluster,
    shared: &'a Shared,
    owners: &'a [Vec<usize>],
    rng: StdRng,
    /// A wipe happened since the cluster last repaired itself.
    wiped: bool,
    steps: usize,
}

impl Nemesis<'_> {
    /// Runs steps until `until` (of the history's clock). The faults of the
    /// step in progress then are left in place and returned, for the final
    /// heal to undo ([`Nemesis::undo_step`]).
    fn run(&mut self, until: Duration) -> Vec<(usize, Fault)> {
        let history = &self.shared.history;
        loop {
            let mut step = next_step(&mut self.rng);
            self.steps += 1;
            thread::sleep(step.gap.min(until.saturating_sub(history.at())));
            if history.at() >= until {
                return Vec::new();
            }
            if step.faults.iter().any(|f| matches!(f, Fault::Wipe(_))) && self.wiped {
                history.line("nemesis: repairing before another wipe");
                let repaired =
                    repair_before_wipe(self.c, self.shared, self.owners, REPAIR_BEFORE_WIPE);
                history.line(&format!("nemesis: {repaired:?}"));
                if repaired.is_ok() {
                    self.wiped = false;
                } else {
                    history.line("nemesis: not repaired; the wipe becomes a kill");
                    for f in &mut step.faults {
                        if let Fault::Wipe(n) = *f {
                            *f = Fault::Kill(n);
                        }
                    }
                }
            }
            let active: Vec<(usize, Fault)> = step
                .faults
                .into_iter()
                .map(|f| (self.apply(&f), f))
                .collect();
            let left = until.saturating_sub(history.at());
            if step.hold >= left {
                thread::sleep(left);
                return active;
            }
            thread::sleep(step.hold);
            self.undo_step(active);
        }
    }

    /// Undoes a step's faults: the network heals and paused nodes resume
    /// before killed ones restart, so a restarted node joins through a node
    /// that answers.
    fn undo_step(&mut self, mut active: Vec<(usize, Fault)>) {
        active.sort_by_key(|(_, f)| match f {
            Fault::Partition(..) => 0,
            Fault::Pause(_) => 1,
            Fault::Kill(_) | Fault::Wipe(_) => 2,
        });
        for (record, fault) in active {
            self.undo(&fault);
            self.shared.history.fault_end(record);
            if matches!(fault, Fault::Wipe(_)) {
                self.wiped = true;
            }
        }
    }

    fn apply(&mut self, fault: &Fault) -> usize {
        let record = self
            .shared
            .history
            .fault_start(fault.kind(), fault.nodes(), fault.describe());
        match fault {
            Fault::Kill(n) => {
                self.shared.generation[n - 1].fetch_add(1, Ordering::SeqCst);
                self.c.kill(*n);
            }
            Fault::Pause(n) => self.c.pause(*n),
            Fault::Wipe(n) => {
                self.shared.generation[n - 1].fetch_add(1, Ordering::SeqCst);
                self.c.kill(*n);
                self.c.wipe(*n);
            }
            Fault::Partition(minority, mode) => {
                let rest: Vec<usize> = (1..=NODES).filter(|n| !minority.contains(n)).collect();
                self.c.net().partition_with(*mode, &[minority, &rest]);
            }
        }
        record
    }

    fn undo(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(n) | Fault::Wipe(n) => self.c.restart(*n),
            Fault::Pause(n) => self.c.resume(*n),
            Fault::Partition(..) => self.c.net().heal(),
        }
    }
}

// ---------------------------------------------------------------------------
// Settling: hints drained, replicas converged

/// Every partition's replicas' Merkle roots: partition -> node -> root.
type Roots = BTreeMap<u32, BTreeMap<usize, String>>;

/// Why the roots could not be compared.
enum RootsError {
    /// The server has no `CLUSTER MERKLE` (anti-entropy not wired).
    Unsupported(String),
    /// A node did not answer; try again.
    Transient(String),
}

/// The Merkle roots every node reports for the partitions it owns
/// (`CLUSTER MERKLE`: one `<partition> <root>` line per owned partition).
fn merkle_roots(c: &Cluster) -> Result<Roots, RootsError> {
    let mut roots = Roots::new();
    for n in c.numbers() {
        let rows = match c.cmd(n, &["CLUSTER", "MERKLE"]) {
            Ok(redis::Value::Array(rows)) => rows,
            Ok(other) => return Err(RootsError::Transient(format!("node {n}: {other:?}"))),
            Err(e) if e.contains("unknown subcommand") || e.contains("not running") => {
                return Err(RootsError::Unsupported(e))
            }
            Err(e) => return Err(RootsError::Transient(format!("node {n}: {e}"))),
        };
        for row in rows {
            let line = text_of(&row).unwrap_or_default();
            let mut words = line.split_whitespace();
            let (Some(p), Some(root)) = (words.next(), words.next()) else {
                return Err(RootsError::Transient(format!(
                    "node {n}: MERKLE line {line:?}"
                )));
            };
            let p: u32 = p
                .parse()
                .map_err(|_| RootsError::Transient(format!("node {n}: MERKLE line {line:?}")))?;
            roots.entry(p).or_default().insert(n, root.to_string());
        }
    }
    Ok(roots)
}

/// `Ok(partitions)` when every partition has [`REPLICAS`] replicas with the
/// same built root; else what differs.
fn roots_converged(roots: &Roots) -> Result<usize, String> {
    let mut bad = Vec::new();
    for (p, by_node) in roots {
        let distinct: BTreeSet<&String> = by_node.values().collect();
        if by_node.len() != REPLICAS
            || distinct.len() != 1
            || by_node.values().any(|r| r == "building")
        {
            bad.push(format!("{p}: {by_node:?}"));
        }
    }
    if roots.is_empty() {
        return Err("no node reported any partition".into());
    }
    if bad.is_empty() {
        Ok(roots.len())
    } else {
        let shown: Vec<&String> = bad.iter().take(4).collect();
        Err(format!(
            "{} of {} partitions differ, e.g. {shown:?}",
            bad.len(),
            roots.len()
        ))
    }
}

/// `hints_pending` of the node's `INFO cluster`.
fn hints_pending(c: &Cluster, n: usize) -> Result<u64, String> {
    let info = c.cmd(n, &["INFO", "cluster"])?;
    let text = text_of(&info).ok_or_else(|| format!("INFO answered {info:?}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("hints_pending:"))
        .ok_or_else(|| "no hints_pending in INFO cluster".to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("hints_pending: {e}"))
}

/// `CLUSTER REPAIR` on every node, one after the other (a node initiates one
/// session at a time anyway); the errors and aborted sessions, if any.
fn repair_all(c: &Cluster) -> Vec<String> {
    let mut links = Links::new(
        &c.numbers()
            .iter()
            .map(|&n| c.node(n).port)
            .collect::<Vec<_>>(),
        REPAIR_TIMEOUT,
    );
    let mut errors = Vec::new();
    for n in c.numbers() {
        match links.run(n, &[b"CLUSTER", b"REPAIR"]) {
            Ok(v) => {
                let text = text_of(&v).unwrap_or_default();
                let field = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(str::trim)
                        .unwrap_or("?")
                        .to_string()
                };
                if field("aborted") != "0" {
                    errors.push(format!(
                        "node {n}: {} sessions aborted, the last: {}",
                        field("aborted"),
                        field("last_abort")
                    ));
                }
            }
            Err(e) => errors.push(format!("node {n}: {}", e.text())),
        }
    }
    errors
}

/// Before a second wipe: every node's hints delivered, then one round of
/// `CLUSTER REPAIR` on every node without an error or an aborted session,
/// so that what the first wipe destroyed has its copies back. (Roots are
/// not compared: the clients keep writing, so they differ for a moment
/// after every write.) Without `CLUSTER REPAIR`, a `GET` of every key
/// through an owner does the repair instead.
fn repair_before_wipe(
    c: &Cluster,
    shared: &Shared,
    owners: &[Vec<usize>],
    within: Duration,
) -> Result<String, String> {
    let since = Instant::now();
    let drained = || {
        c.numbers()
            .iter()
            .map(|&n| hints_pending(c, n))
            .collect::<Result<Vec<u64>, String>>()
    };
    loop {
        match drained() {
            Ok(p) if p.iter().all(|&h| h == 0) => break,
            other if since.elapsed() >= within => {
                return Err(format!("hints still pending: {other:?}"))
            }
            _ => thread::sleep(Duration::from_millis(200)),
        }
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        let errors = repair_all(c);
        if errors.is_empty() {
            break;
        }
        if errors.iter().any(|e| e.contains("unknown subcommand")) {
            let failed = read_every_key(c, shared, owners);
            if failed == 0 {
                break;
            }
        }
        if since.elapsed() >= within {
            return Err(format!(
                "{rounds} repair rounds, the last failed: {errors:?}"
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(format!(
        "hints drained and repaired in {rounds} rounds, {:.1} s",
        since.elapsed().as_secs_f64()
    ))
}

/// Read repair instead of anti-entropy: a `GET` of every key through its
/// first owner (which coordinates, and repairs the other owners).
fn read_every_key(c: &Cluster, shared: &Shared, owners: &[Vec<usize>]) -> usize {
    let mut links = Links::new(&shared.ports, REPLY_TIMEOUT);
    let mut failed = 0;
    for (i, k) in shared.keys.iter().enumerate() {
        let via = owners[i].first().copied().unwrap_or(1);
        if !c.is_running(via) || links.run(via, &[b"GET", k.name.as_bytes()]).is_err() {
            failed += 1;
        }
    }
    failed
}

/// How settling went.
struct SettleReport {
    hints_drained: Option<Duration>,
    /// When the roots were first seen equal, and over how many partitions.
    converged: Option<(Duration, usize)>,
    /// Why roots could not be used (then convergence is by read repair).
    roots_unsupported: Option<String>,
    repair_rounds: usize,
    last_state: String,
}

impl SettleReport {
    fn settled(&self) -> bool {
        self.hints_drained.is_some() && self.converged.is_some()
    }

    fn describe(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or_else(
                || "never".to_string(),
                |d| format!("{:.1} s", d.as_secs_f64()),
            )
        };
        format!(
            "hints drained: {}, replicas converged: {}{}, {} repair rounds{}",
            secs(self.hints_drained),
            secs(self.converged.map(|c| c.0)),
            match (&self.converged, &self.roots_unsupported) {
                (_, Some(why)) => format!(" (by read repair; no merkle roots: {why})"),
                (Some((_, p)), None) => format!(" (merkle roots equal on {p} partitions)"),
                (None, None) => String::new(),
            },
            self.repair_rounds,
            if self.settled() {
                String::new()
            } else {
                format!("; last seen: {}", self.last_state)
            }
        )
    }
}

/// Waits until no node holds hints and every partition's replicas have the
/// same Merkle root, running `CLUSTER REPAIR` on every node while they
/// differ, until `within` after `since`; the report's times count from
/// `since`. Without `CLUSTER MERKLE`, replicas are
/// made equal by reading every key through an owner instead, and counted
/// converged after one such pass that failed no read.
fn settle(
    c: &Cluster,
    shared: &Shared,
    owners: &[Vec<usize>],
    since: Instant,
    within: Duration,
) -> SettleReport {
    let mut report = SettleReport {
        hints_drained: None,
        converged: None,
        roots_unsupported: None,
        repair_rounds: 0,
        last_state: String::new(),
    };
    while since.elapsed() < within {
        let pending: Result<Vec<u64>, String> =
            c.numbers().iter().map(|&n| hints_pending(c, n)).collect();
        let drained = matches!(&pending, Ok(p) if p.iter().all(|&h| h == 0));
        if drained && report.hints_drained.is_none() {
            report.hints_drained = Some(since.elapsed());
        }
        if !drained {
            report.hints_drained = None;
            report.last_state = format!("hints pending per node: {pending:?}");
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        if report.roots_unsupported.is_some() {
            report.repair_rounds += 1;
            let failed = read_every_key(c, shared, owners);
            if failed == 0 {
                report.converged = Some((since.elapsed(), 0));
                break;
            }
            report.last_state = format!("{failed} reads failed during read repair");
            continue;
        }
        match merkle_roots(c) {
            Err(RootsError::Unsupported(why)) => {
                report.roots_unsupported = Some(why);
            }
            Err(RootsError::Transient(e)) => {
                report.last_state = format!("merkle roots: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Ok(roots) => match roots_converged(&roots) {
                Ok(partitions) => {
                    report.converged = Some((since.elapsed(), partitions));
                    break;
                }
                Err(diff) => {
                    report.last_state = format!("merkle roots: {diff}");
                    report.repair_rounds += 1;
                    let errors = repair_all(c);
                    if !errors.is_empty() {
                        report
                            .last_state
                            .push_str(&format!("; repair errors: {errors:?}"));
                        thread::sleep(Duration::from_millis(200));
                    }
                }
            },
        }
    }
    report
}

// ---------------------------------------------------------------------------
// The final reads and the checks

/// Every key read through every node after settling.
struct FinalReads {
    /// key -> node -> values (or why the read failed).
    reads: Vec<Vec<Result<Vec<String>, String>>>,
}

fn read_everything(shared: &Shared) -> FinalReads {
    let mut links = Links::new(&shared.ports, REPLY_TIMEOUT);
    let mut reads = Vec::new();
    for k in &shared.keys {
        let mut per_node = Vec::new();
        for n in 1..=NODES {
            let mut last = Err(String::new());
            for _ in 0..10 {
                last = match links.run(n, &[b"GET", k.name.as_bytes()]) {
                    Ok(v) => parse_get(&v),
                    Err(e) => Err(e.text().to_string()),
                };
                if last.is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(300));
            }
            per_node.push(last);
        }
        reads.push(per_node);
    }
    FinalReads { reads }
}

impl FinalReads {
    /// Every value any node read for the key.
    fn values(&self, key: usize) -> BTreeSet<&str> {
        self.reads[key]
            .iter()
            .flatten()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    fn union(&self, key: usize) -> BTreeSet<&str> {
        self.values(key).into_iter().flat_map(elements).collect()
    }
}

/// The counts of one row of the availability table.
#[derive(Default)]
struct Tally {
    ops: usize,
    acked: usize,
    ended: usize,
    in_doubt: usize,
    not_sent: usize,
    stale: usize,
}

impl Tally {
    fn add(&mut self, op: &Op) {
        self.ops += 1;
        if op.stale.is_some_and(|(m, _)| m > 0) {
            self.stale += 1;
        }
        match &op.outcome {
            Outcome::Acked => self.acked += 1,
            Outcome::Ended(_) => self.ended += 1,
            Outcome::InDoubt(_) => self.in_doubt += 1,
            Outcome::NotSent(_) => self.not_sent += 1,
        }
    }

    fn row(&self, name: &str) -> String {
        let share = if self.ops == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * self.acked as f64 / self.ops as f64)
        };
        format!(
            "  {name:<10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>12} {:>7}",
            self.ops, self.acked, self.ended, self.in_doubt, self.not_sent, share, self.stale
        )
    }
}

/// The first word of an error (`UNAVAILABLE`, `TIMEOUT`, `client:`...), for
/// the error census.
fn error_class(e: &str) -> String {
    let e = e.strip_prefix("read: ").unwrap_or(e);
    let word = e.split_whitespace().next().unwrap_or("?");
    if word == "ERR" && e.contains("invalid context") {
        "ERR invalid context".to_string()
    } else if word == "TIMEOUT" && e.contains("forwarded") {
        "TIMEOUT forwarded".to_string()
    } else if word == "client:" && e.contains("timed out") {
        "client: timed out".to_string()
    } else {
        word.to_string()
    }
}

// ---------------------------------------------------------------------------
// The test

#[test]
fn chaos_loses_no_acknowledged_element_and_resurrects_no_deleted_key() {
    let settings = Settings::from_env();
    let seed = settings.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = plan_keys(&settings, &mut rng);
    let history = History::new(seed);
    let history_path = history.path.clone();
    println!(
        "chaos: seed {seed} ({} mode, {} s of faults); replay with RINGKV_CHAOS_SEED={seed}; history in {}",
        settings.mode(),
        settings.faults_for.as_secs(),
        history_path.display()
    );
    history.line(&format!(
        "seed {seed}, {} mode, {} s of faults, {} keys ({} set, {} churn, {} tomb), {} clients",
        settings.mode(),
        settings.faults_for.as_secs(),
        keys.len(),
        settings.set_keys,
        settings.churn_keys,
        settings.tomb_keys,
        settings.clients
    ));

    let mut c = Cluster::builder(NODES).proxied().fsync("always").start();
    let ports: Vec<u16> = c.numbers().iter().map(|&n| c.node(n).port).collect();
    let owners: Vec<Vec<usize>> = keys.iter().map(|k| c.owners(1, &k.name)).collect();
    for (k, o) in keys.iter().zip(&owners) {
        assert_eq!(o.len(), REPLICAS, "owners of {}: {o:?}", k.name);
        if let Some(t) = k.retire_at {
            history.line(&format!(
                "key {} owners {o:?}, retired at {:.3}",
                k.name,
                t.as_secs_f64()
            ));
        }
    }
    history.line(&format!("cluster up: client ports {ports:?}"));
    // The history's clock starts with the workload.
    let history = History {
        start: Instant::now(),
        ..history
    };

    let key_count = keys.len();
    let shared = Arc::new(Shared {
        keys,
        ports,
        history,
        stop: AtomicBool::new(false),
        tombs: Mutex::new(BTreeMap::new()),
        tomb_idle: Condvar::new(),
        generation: (0..NODES).map(|_| AtomicU64::new(0)).collect(),
        retire_give_up_ms: AtomicU64::new(u64::MAX),
        acked: (0..key_count).map(|_| Mutex::new(Vec::new())).collect(),
    });
    let _stop = StopOnDrop(shared.clone());
    let clients: Vec<_> = (1..=settings.clients)
        .map(|number| {
            let client = Client {
                number,
                shared: shared.clone(),
                links: Links::new(&shared.ports, REPLY_TIMEOUT),
                rng: StdRng::seed_from_u64(
                    seed ^ (number as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                next_elem: 0,
            };
            thread::Builder::new()
                .name(format!("chaos-client-{number}"))
                .spawn(move || client.run())
                .expect("spawn a client")
        })
        .collect();
    let retirer_thread = {
        let (shared, owners) = (shared.clone(), owners.clone());
        thread::Builder::new()
            .name("chaos-retirer".into())
            .spawn(move || retirer(shared, owners, seed ^ 0x5eed))
            .expect("spawn the retirer")
    };

    // The fault phase; at its end the clients stop, and the faults of the
    // step in progress are undone: the heal.
    let history = &shared.history;
    let (steps, last_step, heal) = {
        let mut nemesis = Nemesis {
            c: &mut c,
            shared: &shared,
            owners: &owners,
            rng: StdRng::seed_from_u64(seed ^ 0x0e3e_5150),
            wiped: false,
            steps: 0,
        };
        let active = nemesis.run(settings.faults_for);
        shared.stop.store(true, Ordering::SeqCst);
        let last_step: Vec<String> = active
            .iter()
            .map(|(_, f)| format!("{} {}", f.kind().name(), f.describe()))
            .collect();
        history.line(&format!("HEAL: clients stop, undoing {last_step:?}"));
        nemesis.undo_step(active);
        (nemesis.steps, last_step, Instant::now())
    };
    let healed_at = history.at();
    history.line("HEAL done");
    for t in clients {
        t.join().expect("a client thread panicked");
    }
    shared.retire_give_up_ms.store(
        (healed_at + RETIRE_AFTER_HEAL).as_millis() as u64,
        Ordering::SeqCst,
    );
    let (retirements, not_retired) = retirer_thread.join().expect("the retirer panicked");
    let writes_done_after = heal.elapsed();
    history.line("retirer done");
    c.wait_all_up();

    // Settle: hints, anti-entropy, equal roots.
    let settle_report = settle(&c, &shared, &owners, heal, settings.settle_within);
    history.line(&format!("settled: {}", settle_report.describe()));

    // Read everything through everyone.
    let finals = read_everything(&shared);
    history.line("final reads done");
    let end_of_history = history.at();

    // ---- checks
    let ops = history.ops.lock().clone();
    let faults = history.faults.lock().clone();
    let mut failures: Vec<String> = Vec::new();

    // Final reads answered, and every node answered the same.
    let mut unread = Vec::new();
    let mut disagree = Vec::new();
    for (k, per_node) in finals.reads.iter().enumerate() {
        let name = &shared.keys[k].name;
        let mut answers = BTreeSet::new();
        for (i, r) in per_node.iter().enumerate() {
            match r {
                Ok(values) => {
                    let mut sorted = values.clone();
                    sorted.sort();
                    answers.insert(sorted);
                }
                Err(e) => unread.push(format!("{name} through node {}: {e}", i + 1)),
            }
        }
        if answers.len() > 1 {
            disagree.push(format!("{name}: {answers:?}"));
        }
    }
    if !unread.is_empty() {
        failures.push(format!(
            "{} final reads failed, e.g. {:?}",
            unread.len(),
            &unread[..unread.len().min(5)]
        ));
    }
    if !disagree.is_empty() {
        failures.push(format!(
            "{} keys read differently through different nodes after settling, e.g. {:?}",
            disagree.len(),
            &disagree[..disagree.len().min(3)]
        ));
    }

    // When each delete may have taken effect, per key.
    let mut deletes: Vec<Vec<Option<Duration>>> = vec![Vec::new(); shared.keys.len()];
    for op in ops.iter().filter(|o| o.kind.deletes()) {
        let effect_by = match &op.outcome {
            Outcome::NotSent(_) => None,
            Outcome::Acked | Outcome::Ended(_) => Some(op.end),
            Outcome::InDoubt(_) => {
                Some(history.quiet_after(op.end, end_of_history) + IN_DOUBT_MARGIN)
            }
        };
        deletes[op.key].push(effect_by);
    }

    // Acknowledged elements lost.
    let mut acked = 0;
    let mut required = 0;
    let mut lost = Vec::new();
    let mut survived_unacked = 0;
    let mut unacked = 0;
    let unions: Vec<BTreeSet<&str>> = (0..shared.keys.len()).map(|k| finals.union(k)).collect();
    for op in ops.iter().filter(|o| o.kind == OpKind::Rmw) {
        let Some(elem) = &op.elem else { continue };
        if !op.outcome.acked() {
            unacked += 1;
            if unions[op.key].contains(elem.as_str()) {
                survived_unacked += 1;
            }
            continue;
        }
        acked += 1;
        let maybe_deleted = deletes[op.key]
            .iter()
            .any(|d| d.is_some_and(|effect_by| effect_by >= op.sent));
        if maybe_deleted {
            continue;
        }
        required += 1;
        if !unions[op.key].contains(elem.as_str()) {
            history.line(&format!(
                "LOST {elem} of {}: final values {:?}",
                shared.keys[op.key].name,
                finals.values(op.key)
            ));
            lost.push(op.clone());
        }
    }
    if !lost.is_empty() {
        let shown: Vec<String> = lost
            .iter()
            .take(10)
            .map(|o| {
                format!(
                    "{} of {} (c{} via node {}, sent at {:.3} s, acked at {:.3} s)",
                    o.elem.as_deref().unwrap_or("?"),
                    shared.keys[o.key].name,
                    o.client,
                    o.node,
                    o.sent.as_secs_f64(),
                    o.end.as_secs_f64()
                )
            })
            .collect();
        failures.push(format!(
            "{} acknowledged elements lost: {shown:#?}",
            lost.len()
        ));
    }

    // Deleted keys resurrected.
    let mut resurrected = Vec::new();
    let mut survivors = 0;
    for r in &retirements {
        let values = finals.values(r.key);
        if !values.is_empty() {
            survivors += 1;
            history.line(&format!(
                "final {} reads {values:?} after its delete, whose read saw {:?}",
                shared.keys[r.key].name, r.seen
            ));
        }
        for v in values {
            if newest(v).is_some_and(|e| r.seen.contains(e)) {
                resurrected.push(format!(
                    "{}: {v:?} (its newest element was seen by the read before the delete)",
                    shared.keys[r.key].name
                ));
            }
        }
    }
    if !resurrected.is_empty() {
        failures.push(format!(
            "{} deleted values resurrected: {resurrected:#?}",
            resurrected.len()
        ));
    }
    if !not_retired.is_empty() {
        let names: Vec<&str> = not_retired
            .iter()
            .map(|&k| shared.keys[k].name.as_str())
            .collect();
        failures.push(format!(
            "the retirer could not delete {names:?} within {RETIRE_AFTER_HEAL:?} of the heal"
        ));
    }

    // Convergence.
    if !settle_report.settled() {
        failures.push(format!(
            "replicas did not settle within {:?} of the heal: {}",
            settings.settle_within,
            settle_report.describe()
        ));
    }

    let anomalies = history.anomalies.lock().clone();
    if !anomalies.is_empty() {
        failures.push(format!(
            "{} replies broke the wire contract, e.g. {:?}",
            anomalies.len(),
            &anomalies[..anomalies.len().min(5)]
        ));
    }

    // ---- the summary
    let mut by_kind: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for f in &faults {
        *by_kind.entry(f.kind).or_default() += 1;
    }
    let mut none = Tally::default();
    let mut per_kind: BTreeMap<FaultKind, Tally> = BTreeMap::new();
    let mut all = Tally::default();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.client != 0) {
        all.add(op);
        let kinds = history.kinds_active_at(op.start);
        if kinds.is_empty() {
            none.add(op);
        }
        for k in kinds {
            per_kind.entry(k).or_default().add(op);
        }
        if let Some(e) = op.outcome.error() {
            *errors.entry(error_class(e)).or_default() += 1;
        }
    }
    // Stale reads, and those through a node that had just restarted.
    let restarts: Vec<(usize, Duration)> = faults
        .iter()
        .filter(|f| matches!(f.kind, FaultKind::Kill | FaultKind::Wipe))
        .filter_map(|f| Some((*f.nodes.first()?, f.end?)))
        .collect();
    let checked_reads = ops.iter().filter(|o| o.stale.is_some()).count();
    let stale: Vec<&Op> = ops
        .iter()
        .filter(|o| o.stale.is_some_and(|(m, _)| m > 0))
        .collect();
    let stale_after_restart: Vec<String> = stale
        .iter()
        .filter_map(|o| {
            let (_, at) = restarts.iter().find(|(n, at)| {
                *n == o.node && *at <= o.start + RESTART_SLACK && o.start < *at + RESTART_WINDOW
            })?;
            Some(format!(
                "{} through node {} at {:.3} s, {:.3} s after its restart, missed {} of {} acknowledged elements",
                shared.keys[o.key].name,
                o.node,
                o.start.as_secs_f64(),
                o.start.as_secs_f64() - at.as_secs_f64(),
                o.stale.map_or(0, |s| s.0),
                o.stale.map_or(0, |s| s.1),
            ))
        })
        .collect();
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "chaos summary: seed {seed}, {} mode, {:.0} s of faults in {steps} steps ({}), {} clients, {} keys",
        settings.mode(),
        healed_at.as_secs_f64(),
        FaultKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), by_kind.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", "),
        settings.clients,
        shared.keys.len()
    );
    let _ = writeln!(
        summary,
        "client operations by the faults active when they started (availability = acked / ops; stale = reads of a set key that missed an element acknowledged before they began):"
    );
    let _ = writeln!(
        summary,
        "  {:<10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>12} {:>7}",
        "fault", "ops", "acked", "failed", "in-doubt", "not-sent", "availability", "stale"
    );
    let _ = writeln!(summary, "{}", none.row("none"));
    for k in FaultKind::ALL {
        let _ = writeln!(
            summary,
            "{}",
            per_kind.get(&k).unwrap_or(&Tally::default()).row(k.name())
        );
    }
    let _ = writeln!(summary, "{}", all.row("all"));
    let _ = writeln!(summary, "errors: {errors:?}");
    let _ = writeln!(
        summary,
        "stale reads: {} of {checked_reads} reads of set keys missed acknowledged elements (sloppy quorums allow it); {} of them went through a node less than {RESTART_WINDOW:?} after its restart{}",
        stale.len(),
        stale_after_restart.len(),
        stale_after_restart
            .first()
            .map(|e| format!(", e.g. {e}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        summary,
        "elements: {acked} acknowledged, {required} of them required at the end (the rest may have been deleted), LOST {}; {unacked} unacknowledged, {survived_unacked} of which survived",
        lost.len()
    );
    let _ = writeln!(
        summary,
        "deleted keys: {} retired and deleted, RESURRECTED {}, {survivors} read non-nil through values written concurrently with the delete",
        retirements.len(),
        resurrected.len()
    );
    let _ = writeln!(
        summary,
        "after the heal of {last_step:?}: the last write ended after {:.1} s; {} (times from the heal)",
        writes_done_after.as_secs_f64(),
        settle_report.describe(),
    );
    let _ = writeln!(
        summary,
        "final reads: {} GETs, {} failed, {} keys read differently through different nodes",
        finals.reads.len() * NODES,
        unread.len(),
        disagree.len()
    );
    let _ = write!(summary, "history: {}", history_path.display());
    println!("{summary}");
    history.line(&summary);

    if failures.is_empty() {
        if std::env::var_os("RINGKV_IT_KEEP").is_none() {
            *history.file.lock() = None;
            let _ = std::fs::remove_file(&history_path);
        }
        return;
    }
    for f in &failures {
        history.line(&format!("FAILED {f}"));
    }
    panic!(
        "chaos test failed (seed {seed}; replay with RINGKV_CHAOS_SEED={seed}; history in {}):\n{}",
        history_path.display(),
        failures.join("\n")
    );
}
