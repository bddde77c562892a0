//! The versioned keyspace: every data command of ringkv (strings, keys,
//! expiry, `VCLOCK`/`RESOLVE`) over this node's store of sibling sets.
//!
//! # How it fits
//!
//! The connection layer (`server`) parses a request, checks its arity and
//! calls [`Keyspace::execute`] with the arguments; the answer is a protocol-
//! independent [`Reply`]. Underneath, [`replica::Replica`] keeps one
//! [sibling set](crate::version) per key in the storage engine and runs every
//! change as a read-modify-write under a per-key lock. The key layout on disk
//! (partition id in front of each key, a separate expiry index) is in
//! [`layout`], and [`layout::key_hash`] is also the ring's hash.
//!
//! # Semantics (DESIGN.md §2-§3), single node
//!
//! - Every stored value is a sibling set with vector clocks, even on one
//!   node, with the node's incarnation id ([`identity`]) as clock actor. A
//!   write without a context (`SET`, `DEL`, `INCR`, ...) supersedes every
//!   version the node holds; `RESOLVE key context value` supersedes exactly the
//!   versions its context covers, so a stale context makes siblings.
//! - `GET` answers nil, one bulk string, or an array of the siblings in the
//!   set's deterministic order. Commands that need one current value
//!   (`INCR`, `APPEND`, `SET NX|XX|GET|KEEPTTL`, `GETSET`, `GETDEL`, `GETEX`,
//!   `SETNX`, `MSETNX`, `STRLEN`, the `EXPIRE` family, `PERSIST`) fail on a key
//!   with siblings with `-CONFLICT ...`, naming `VCLOCK` and `RESOLVE`.
//! - `DEL` writes a tombstone version (only for a key that has a live value,
//!   so `DEL` of a missing key writes nothing); tombstone-only sets are purged
//!   by compaction after a grace period ([`expiry::TombstoneGc`]). A key is
//!   never simply erased: that would forget its clock, and the next write
//!   would reuse dots an old context token still covers (see the module doc
//!   of [`crate::version`]).
//! - Expiry is an absolute deadline (ms since the Unix epoch) inside each
//!   version. Expired versions read as absent at once; the active expiry task
//!   ([`Keyspace::spawn_background`]) turns fully expired keys into
//!   tombstones within about 100 ms of their deadline, so they leave
//!   `DBSIZE`/`KEYS`/`SCAN` and their values' space is reclaimed by the next
//!   compactions. Clocks of nodes are assumed NTP-synced (a deadline is
//!   compared with local time).
//! - `DBSIZE` is exact and O(1): a counter maintained by every write (see
//!   [`replica`]). At open it is restored from the counts a clean close saved
//!   ([`counts`]), or rebuilt by one scan of the data after a crash (about
//!   3 s per million keys). Like Redis it counts an expired key until active
//!   expiry reclaims it.
//! - `KEYS` reads the whole data space (seeking to each partition's part of a
//!   pattern's literal prefix); `SCAN`'s cursor is described in [`cursor`].
//! - `FLUSHALL`/`FLUSHDB` delete (tombstone) every key present when they
//!   start, key by key under each key's lock, so they cost a write per key;
//!   writes that race with a flush may survive it. `ASYNC` is accepted and
//!   runs the same way (the reply comes when done).
//!
//! - `MSET`, `MSETNX` and multi-key `DEL` hold all their keys' locks and
//!   write one engine batch, so they are atomic on this node. Nothing here is
//!   linearizable across a cluster; the cluster layer says what it adds.
//!
//! # Departures from Redis
//!
//! - A key with siblings: `GET` and each `MGET` element answer an array;
//!   the commands listed above answer `-CONFLICT`, including `SET ... KEEPTTL`
//!   (whose TTL would be ambiguous).
//! - `SCAN` cursors are not Redis' reverse-binary bucket indexes but a
//!   partition and a resume slot ([`cursor`]); the guarantee is the same.
//!   An unknown `SCAN ... TYPE` answers Redis 7.2's `unknown type name` error.
//! - `INCRBYFLOAT` emulates the x87 `long double` ([`extended`]) and matches
//!   Redis' output, except that results below about `3.4e-4932` are refused
//!   rather than kept as subnormal numbers.
//! - Deleted and expired keys leave a small tombstone (their clock) for the
//!   tombstone grace period, so `FLUSHALL` frees space only after it.
//!
//! # Durability
//!
//! Each write is appended to the engine under the key's lock; with `fsync
//! always` the reply waits, after the lock is released and on a blocking
//! thread, until the engine has synced that write (group commit). With
//! `everysec` and `no` the reply does not wait. A caller that answers a
//! pipeline at once can use [`Keyspace::execute_unsynced`] and one
//! [`Keyspace::wait_durable`] for the whole batch.
//!
//! # Files
//!
//! [`replica`] (the store and its locks and counters), [`merkle_index`]
//! (the per-partition Merkle trees every write keeps current), [`layout`] (engine
//! keys, the ring hash), [`identity`] (the clock actor on disk), [`counts`]
//! (counts saved at close), [`expiry`] (active expiry, tombstone GC),
//! [`cursor`] (`SCAN`), [`glob`] (`KEYS`/`MATCH` patterns), [`number`] and
//! [`extended`] (Redis' number parsing and printing); the commands are in
//! `strings.rs`, `keys.rs`, `ttl.rs` and `versions.rs`, their shared argument
//! parsing in `args.rs`.

mod args;
pub mod counts;
pub mod cursor;
mod deps;
pub mod expiry;
pub mod extended;
pub mod glob;
pub mod identity;
mod keys;
pub mod layout;
pub mod merkle_index;
pub mod number;
pub mod replica;
mod strings;
mod ttl;
mod versions;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

pub use deps::{ActorId, EngineStats, StorageOptions};

use crate::config::FsyncPolicy;
use crate::error::{Error, Result};
use crate::protocol::Reply;
use crate::storage::SeqNo;
use counts::Counts;
use cursor::CursorTable;
use deps::{Engine, SiblingLimits};
use identity::Identity;
use replica::Replica;

/// Everything [`Keyspace::open`] can be tuned with.
#[derive(Clone, Debug)]
pub struct KeyspaceOptions {
    /// Options of the storage engine under `<data_dir>/db`. The keyspace sets
    /// `compaction_filter` to its tombstone GC unless one is given.
    /// Default: the engine's defaults.
    pub storage: StorageOptions,
    /// Versions per key (tombstones included) from which a write logs a
    /// warning. Default: 25.
    pub sibling_warn: usize,
    /// Versions per key above which a client write is refused with
    /// `-CONFLICT too many siblings`; must be `>= sibling_warn`. Default: 100.
    pub sibling_max: usize,
    /// Number of ring partitions Q (`1..=65280`); fixed for a data directory.
    /// Default: 256.
    pub partitions: u32,
    /// Age after which a key that holds only tombstones may be purged by
    /// compaction. Default: 10 days.
    pub tombstone_grace: Duration,
    /// Period of the active expiry task. Default: 100 ms.
    pub expiry_interval: Duration,
    /// Expiry-index entries handled per batch (a tick runs batches for at
    /// most 25 ms). Default: 512.
    pub expiry_batch: usize,
    /// `SCAN` resume positions kept in memory (see [`cursor`]). Default: 16384.
    pub scan_cursor_slots: usize,
    /// When set, tombstones are purged only before their partition's
    /// horizon as well as after the grace period (a cluster node; see
    /// [`expiry::GcHorizon`]). Default: none (the grace period alone).
    pub gc_horizon: Option<Arc<expiry::GcHorizon>>,
}

impl Default for KeyspaceOptions {
    fn default() -> Self {
        KeyspaceOptions {
            storage: StorageOptions::default(),
            sibling_warn: 25,
            sibling_max: 100,
            partitions: 256,
            tombstone_grace: expiry::DEFAULT_TOMBSTONE_GRACE,
            expiry_interval: expiry::DEFAULT_INTERVAL,
            expiry_batch: expiry::DEFAULT_BATCH,
            scan_cursor_slots: cursor::DEFAULT_SLOTS,
            gc_horizon: None,
        }
    }
}

/// Keyspace figures for `INFO`.
#[derive(Clone, Debug)]
pub struct KeyspaceInfo {
    /// Keys holding at least one value version (what `DBSIZE` answers).
    pub keys: u64,
    /// Keys whose every value version has an expiry.
    pub expires: u64,
    /// Keys with more than one value version (siblings).
    pub keys_with_siblings: u64,
    /// Reads that found a value.
    pub keyspace_hits: u64,
    /// Reads that found nothing.
    pub keyspace_misses: u64,
    /// Keys active expiry turned into tombstones (Redis' `expired_keys`).
    pub expired_keys: u64,
    /// This node's clock actor.
    pub actor: ActorId,
    /// Ring partitions Q.
    pub partitions: u32,
    /// The storage engine's own figures.
    pub engine: EngineStats,
}

/// The versioned keyspace of this node. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Keyspace {
    shared: Arc<Shared>,
}

/// State shared by the command handlers and the background task.
pub(crate) struct Shared {
    replica: Replica,
    data_dir: PathBuf,
    cursors: CursorTable,
    fsync: FsyncPolicy,
    expiry_interval: Duration,
    expiry_batch: usize,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    gc_horizon: Option<Arc<expiry::GcHorizon>>,
}

/// A command's answer and the write it made, if any (to wait for under
/// `fsync always`).
pub(crate) struct Done {
    reply: Reply,
    wrote: Option<SeqNo>,
}

impl Done {
    fn reply(reply: Reply) -> Result<Done> {
        Ok(Done { reply, wrote: None })
    }

    fn wrote(reply: Reply, wrote: Option<SeqNo>) -> Result<Done> {
        Ok(Done { reply, wrote })
    }
}

impl Keyspace {
    /// Opens (or creates) the keyspace in `data_dir`: the identity file there
    /// and the storage engine in `data_dir/db`.
    pub fn open(data_dir: &Path, mut opts: KeyspaceOptions) -> Result<Keyspace> {
        if !(1..=layout::MAX_PARTITIONS).contains(&opts.partitions) {
            return Err(Error::invalid(format!(
                "partitions must be between 1 and {}, got {}",
                layout::MAX_PARTITIONS,
                opts.partitions
            )));
        }
        let limits = SiblingLimits {
            warn: opts.sibling_warn,
            max: opts.sibling_max,
        };
        limits.validate()?;
        std::fs::create_dir_all(data_dir)?;
        let identity = Identity::load_or_create(data_dir, opts.partitions)?;
        if opts.storage.compaction_filter.is_none() {
            opts.storage.compaction_filter = Some(expiry::TombstoneGc::with_horizon(
                opts.tombstone_grace,
                opts.gc_horizon.clone(),
            ));
        }
        let fsync = opts.storage.fsync;
        let engine = Arc::new(Engine::open(&data_dir.join("db"), opts.storage.clone())?);
        let known = Counts::take(data_dir, SeqNo(engine.stats().last_seq))?;
        let replica = Replica::open(engine, identity.actor, opts.partitions, limits, known)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Keyspace {
            shared: Arc::new(Shared {
                replica,
                data_dir: data_dir.to_path_buf(),
                cursors: CursorTable::new(opts.scan_cursor_slots),
                fsync,
                expiry_interval: opts.expiry_interval,
                expiry_batch: opts.expiry_batch.max(1),
                closed: AtomicBool::new(false),
                shutdown,
                gc_horizon: opts.gc_horizon.clone(),
            }),
        })
    }

    /// The tombstone GC horizon this keyspace was opened with, if any: what
    /// anti-entropy moves when every replica of a partition compared equal.
    pub fn gc_horizon(&self) -> Option<&Arc<expiry::GcHorizon>> {
        self.shared.gc_horizon.as_ref()
    }

    /// Runs one data command. `args[0]` is the command name in any case; the
    /// caller has checked the arity. Unknown names get Redis' error. Under
    /// `fsync always` the reply comes once the command's write is on disk.
    pub async fn execute(&self, args: &[Bytes]) -> Reply {
        match self.execute_unsynced(args).await {
            (reply, None) => reply,
            (reply, Some(seq)) => match self.wait_durable(seq).await {
                Ok(()) => reply,
                Err(e) => e.into(),
            },
        }
    }

    /// [`execute`](Self::execute) without the durability wait, for a caller
    /// that answers a pipeline after one wait: the reply, and under `fsync
    /// always` the write that must be durable (see
    /// [`wait_durable`](Self::wait_durable)) before the reply may be sent.
    /// Under `everysec` and `no` the second part is always `None`.
    pub async fn execute_unsynced(&self, args: &[Bytes]) -> (Reply, Option<SeqNo>) {
        match self.run(args).await {
            Ok(done) if self.shared.fsync == FsyncPolicy::Always => (done.reply, done.wrote),
            Ok(done) => (done.reply, None),
            Err(e) => (e.into(), None),
        }
    }

    /// Runs one data command and returns the engine sequence of its write,
    /// if it wrote, whatever the fsync policy: what the cluster's data path
    /// replicates after running a command on this replica. No durability
    /// wait (see [`wait_durable`](Self::wait_durable)).
    pub async fn execute_tracked(&self, args: &[Bytes]) -> (Reply, Option<SeqNo>) {
        match self.run(args).await {
            Ok(done) => (done.reply, done.wrote),
            Err(e) => (e.into(), None),
        }
    }

    /// `GET`'s answer for a sibling set read elsewhere (the cluster's quorum
    /// read): nil, the one live value, or the live siblings in the set's
    /// order, exactly as `GET` answers from this replica. Counts a hit or a
    /// miss.
    pub fn get_reply(&self, set: &crate::version::SiblingSet) -> Reply {
        let mut values: Vec<Bytes> = set.live_values(now_ms()).cloned().collect();
        strings::count_lookup(&self.shared, !values.is_empty());
        match values.len() {
            0 => Reply::Null,
            1 => Reply::Bulk(values.remove(0)),
            _ => Reply::Array(values.into_iter().map(Reply::Bulk).collect()),
        }
    }

    /// Waits until every write up to `seq` is on disk (group commit: one
    /// fsync serves all writers waiting meanwhile). Runs on a blocking thread.
    pub async fn wait_durable(&self, seq: SeqNo) -> Result<()> {
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || shared.replica.wait_durable(seq)).await {
            Ok(result) => result,
            Err(e) => Err(Error::invalid(format!("durability wait failed: {e}"))),
        }
    }

    /// The fsync policy the engine was opened with.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.shared.fsync
    }

    /// `CONFIG SET appendfsync`: the engine fixes its policy when it opens,
    /// so only the current policy is accepted; another one is refused with
    /// an error saying to restart with `--fsync`.
    pub fn set_fsync(&self, policy: FsyncPolicy) -> Result<()> {
        if policy == self.shared.fsync {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "the fsync policy is fixed while the node runs (now '{}'); restart with --fsync {policy}",
            self.shared.fsync
        )))
    }

    async fn run(&self, args: &[Bytes]) -> Result<Done> {
        let Some(name) = args.first() else {
            return Err(Error::invalid("empty command"));
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("keyspace"));
        }
        let mut lower = [0u8; 16];
        let name_lower = match lowercase(name, &mut lower) {
            Some(n) => n,
            None => return Err(unknown_command(name, args)),
        };
        check_arity(name_lower, name, args)?;
        match name_lower {
            // These may read or rewrite every key: keep them off the async
            // threads. (`SCAN` stays inline: its work is bounded by `COUNT`.)
            "keys" | "randomkey" | "flushall" | "flushdb" => {
                let shared = self.shared.clone();
                let owned: Vec<Bytes> = args.to_vec();
                let name = name_lower.to_string();
                match tokio::task::spawn_blocking(move || dispatch(&shared, &name, &owned)).await {
                    Ok(result) => result,
                    Err(e) => Err(Error::invalid(format!("command failed: {e}"))),
                }
            }
            _ => dispatch(&self.shared, name_lower, args),
        }
    }

    /// Starts the active expiry task; it ends when [`Keyspace::close`] is
    /// called. Must be called from inside a tokio runtime.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(shared.expiry_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = shutdown.changed() => {}
                }
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                let worker = shared.clone();
                let tick = tokio::task::spawn_blocking(move || {
                    expiry::expire_due(&worker.replica, now_ms(), worker.expiry_batch)
                })
                .await;
                match tick {
                    Ok(Ok(_)) => {}
                    // A tick that raced with close() finds the engine closed.
                    Ok(Err(_)) if shared.closed.load(Ordering::Acquire) => return,
                    Ok(Err(e)) => tracing::warn!(error = %e, "active expiry failed; retrying"),
                    Err(e) => tracing::error!(error = %e, "active expiry task panicked"),
                }
            }
        })
    }

    /// Figures for `INFO`.
    pub fn info(&self) -> KeyspaceInfo {
        let replica = &self.shared.replica;
        let c = &replica.counters;
        let counts = replica.counts();
        KeyspaceInfo {
            keys: counts.keys,
            expires: counts.expires,
            keys_with_siblings: counts.siblings,
            keyspace_hits: c.hits.load(Ordering::Relaxed),
            keyspace_misses: c.misses.load(Ordering::Relaxed),
            expired_keys: c.expired_keys.load(Ordering::Relaxed),
            actor: replica.actor(),
            partitions: replica.partitions(),
            engine: replica.engine().stats(),
        }
    }

    /// The store of sibling sets underneath, for the cluster layer
    /// (replication, read repair, handoff and anti-entropy go through
    /// [`Replica::merge_remote`] and [`Replica::scan_partition`]).
    pub fn replica(&self) -> &Replica {
        &self.shared.replica
    }

    /// This node's clock actor (incarnation id).
    pub fn actor(&self) -> ActorId {
        self.shared.replica.actor()
    }

    /// Stops the background task, closes the engine (which syncs it) and
    /// saves the key counts for the next open (see [`counts`]). Later
    /// commands answer an error. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.shutdown.send_replace(true);
        let (counts, last_seq) = self.shared.replica.close()?;
        counts.save(&self.shared.data_dir, last_seq)
    }
}

/// Routes a lower-case command name to its handler.
fn dispatch(shared: &Shared, name: &str, args: &[Bytes]) -> Result<Done> {
    let now = now_ms();
    match name {
        "get" => strings::get(shared, args, now),
        "set" => strings::set(shared, args, now),
        "setnx" => strings::setnx(shared, args, now),
        "setex" => strings::setex(shared, args, now, args::ExpireKind::Ex),
        "psetex" => strings::setex(shared, args, now, args::ExpireKind::Px),
        "getset" => strings::getset(shared, args, now),
        "getdel" => strings::getdel(shared, args, now),
        "getex" => strings::getex(shared, args, now),
        "mget" => strings::mget(shared, args, now),
        "mset" => strings::mset(shared, args, now),
        "msetnx" => strings::msetnx(shared, args, now),
        "append" => strings::append(shared, args, now),
        "strlen" => strings::strlen(shared, args, now),
        "incr" => strings::incr_by(shared, args, now, Some(1)),
        "decr" => strings::incr_by(shared, args, now, Some(-1)),
        "incrby" => strings::incr_by(shared, args, now, None),
        "decrby" => strings::decr_by(shared, args, now),
        "incrbyfloat" => strings::incr_by_float(shared, args, now),
        "del" | "unlink" => keys::del(shared, args, now),
        "exists" => keys::exists(shared, args, now),
        "type" => keys::type_of(shared, args, now),
        "keys" => keys::keys(shared, args, now),
        "scan" => keys::scan(shared, args, now),
        "randomkey" => keys::random_key(shared, now),
        "dbsize" => keys::dbsize(shared),
        "flushall" | "flushdb" => keys::flush(shared, args, now),
        "expire" => ttl::expire(shared, args, now, ttl::Base::Relative, 1000),
        "pexpire" => ttl::expire(shared, args, now, ttl::Base::Relative, 1),
        "expireat" => ttl::expire(shared, args, now, ttl::Base::Absolute, 1000),
        "pexpireat" => ttl::expire(shared, args, now, ttl::Base::Absolute, 1),
        "ttl" => ttl::ttl(shared, args, now, ttl::Show::Remaining, 1000),
        "pttl" => ttl::ttl(shared, args, now, ttl::Show::Remaining, 1),
        "expiretime" => ttl::ttl(shared, args, now, ttl::Show::Deadline, 1000),
        "pexpiretime" => ttl::ttl(shared, args, now, ttl::Show::Deadline, 1),
        "persist" => ttl::persist(shared, args, now),
        "vclock" => versions::vclock(shared, args, now),
        "resolve" => versions::resolve(shared, args, now),
        _ => Err(unknown_command(&args[0], args)),
    }
}

/// The names [`Keyspace::execute`] answers (lower case).
pub const COMMANDS: &[&str] = &[
    "get",
    "set",
    "setnx",
    "setex",
    "psetex",
    "getset",
    "getdel",
    "getex",
    "mget",
    "mset",
    "msetnx",
    "append",
    "strlen",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "del",
    "unlink",
    "exists",
    "type",
    "keys",
    "scan",
    "randomkey",
    "dbsize",
    "flushall",
    "flushdb",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "persist",
    "vclock",
    "resolve",
];

/// The arity of a keyspace command in Redis' convention (`n` = exactly `n`
/// words with the name, `-n` = at least `n`); `None` for other names. The
/// connection layer checks arity first; `execute` checks it again so that no
/// argument count can make a handler index past the end.
pub fn arity(name: &str) -> Option<i32> {
    Some(match name {
        "get" => 2,
        "set" => -3,
        "setnx" => 3,
        "setex" => 4,
        "psetex" => 4,
        "getset" => 3,
        "getdel" => 2,
        "getex" => -2,
        "mget" => -2,
        "mset" => -3,
        "msetnx" => -3,
        "append" => 3,
        "strlen" => 2,
        "incr" => 2,
        "decr" => 2,
        "incrby" => 3,
        "decrby" => 3,
        "incrbyfloat" => 3,
        "del" => -2,
        "unlink" => -2,
        "exists" => -2,
        "type" => 2,
        "keys" => 2,
        "scan" => -2,
        "randomkey" => 1,
        "dbsize" => 1,
        "flushall" => -1,
        "flushdb" => -1,
        "expire" => -3,
        "pexpire" => -3,
        "expireat" => -3,
        "pexpireat" => -3,
        "ttl" => 2,
        "pttl" => 2,
        "expiretime" => 2,
        "pexpiretime" => 2,
        "persist" => 2,
        "vclock" => -2,
        "resolve" => 4,
        _ => return None,
    })
}

/// Redis' arity check for a known command; `Err` for an unknown one.
fn check_arity(name: &str, raw_name: &[u8], args: &[Bytes]) -> Result<()> {
    let Some(arity) = arity(name) else {
        return Err(unknown_command(raw_name, args));
    };
    let n = args.len() as i64;
    let arity = i64::from(arity);
    if (arity >= 0 && n != arity) || (arity < 0 && n < -arity) {
        return Err(Error::invalid(format!(
            "wrong number of arguments for '{name}' command"
        )));
    }
    Ok(())
}

/// Redis' unknown-command error, arguments quoted as Redis quotes them.
fn unknown_command(name: &[u8], args: &[Bytes]) -> Error {
    let mut shown = String::new();
    for arg in args.iter().skip(1) {
        shown.push('\'');
        shown.push_str(&String::from_utf8_lossy(&arg[..arg.len().min(128)]));
        shown.push_str("' ");
    }
    Error::invalid(format!(
        "unknown command '{}', with args beginning with: {shown}",
        String::from_utf8_lossy(&name[..name.len().min(128)])
    ))
}

/// ASCII-lowercases a command name into `buf`; `None` if it is too long or
/// not ASCII (no data command is).
pub(crate) fn lowercase<'a>(name: &[u8], buf: &'a mut [u8; 16]) -> Option<&'a str> {
    if name.len() > buf.len() || !name.is_ascii() {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Wall-clock milliseconds since the Unix epoch (the unit of every deadline).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_has_an_arity() {
        for name in COMMANDS {
            assert!(arity(name).is_some(), "{name} has no arity");
        }
        assert_eq!(arity("nosuch"), None);
    }
}
