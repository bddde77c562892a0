//! Configuration: defaults <- TOML file (`--config`) <- environment
//! (`RINGKV_*`) <- command-line flags.
//!
//! [`Config`] is the one settled configuration of a node. It is built in three
//! steps: [`Config::default`] gives the documented defaults, a TOML file
//! ([`FileConfig`], every key optional, unknown keys refused so that a typo
//! never goes unnoticed) overrides them, and then [`CliArgs`] (clap; each flag
//! also reads its `RINGKV_*` environment variable, and a flag given on the
//! command line beats its variable) overrides the result. [`Config::validate`]
//! checks the combination once, before anything opens a file or a socket.
//!
//! Names follow Redis where Redis has the setting (`requirepass`, `maxclients`,
//! `proto-max-bulk-len`, `timeout`), so `CONFIG GET`/`CONFIG SET` and the TOML
//! file use the same spelling; the fsync policy is `fsync` on the command line
//! (DESIGN.md §6) and answers to Redis' `appendfsync` in `CONFIG`.
//!
//! Sizes accept Redis' units: a bare number of bytes, `k`/`m`/`g` (powers of
//! 1000) or `kb`/`mb`/`gb` (powers of 1024), case-insensitive, e.g. `512mb`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// When the commit log is fsynced, named as Redis names `appendfsync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// A write is acknowledged only after its record is on disk (group commit
    /// lets concurrent writers share one fsync).
    Always,
    /// The log is fsynced about once a second (default): a crash loses at most
    /// about one second of acknowledged writes.
    #[default]
    Everysec,
    /// Never fsync explicitly; the operating system decides.
    No,
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::Everysec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(Error::invalid(format!(
                "invalid fsync policy '{s}' (expected always, everysec or no)"
            ))),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Everysec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

/// A size in bytes, written as Redis writes sizes (`512mb`, `64kb`, `1g`,
/// `1048576`). `k`, `m`, `g` are powers of 1000; `kb`, `mb`, `gb` powers of
/// 1024, exactly as in `redis.conf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n * 1024)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim().to_ascii_lowercase();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let bad = || Error::invalid(format!("invalid size '{s}' (e.g. 1048576, 64kb, 512mb)"));
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit {
            "" | "b" => 1,
            "k" => 1000,
            "kb" => 1024,
            "m" => 1000 * 1000,
            "mb" => 1024 * 1024,
            "g" => 1000 * 1000 * 1000,
            "gb" => 1024 * 1024 * 1024,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    /// Plain bytes, as Redis' `CONFIG GET` prints sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The settled configuration of one node. Every field says its default and unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// TCP port for clients. Default `7000`. `0` picks a free port (tests).
    pub port: u16,
    /// Address the client listener binds. Default `127.0.0.1` (loopback only,
    /// as DESIGN.md §6 asks).
    pub bind: IpAddr,
    /// Data directory (commit log, SSTables, manifest, the node's actor id).
    /// Default `./data`; created if missing.
    pub dir: PathBuf,
    /// Commit-log fsync policy. Default `everysec`. `CONFIG` name: `appendfsync`.
    pub fsync: FsyncPolicy,
    /// Password every client must give with `AUTH`/`HELLO ... AUTH` before any
    /// other command. Default: none (no authentication).
    pub requirepass: Option<String>,
    /// Most client connections served at once; the next one is told
    /// `ERR max number of clients reached` and closed. Default `10000`.
    pub maxclients: u32,
    /// Largest bulk string a request may carry, in bytes. Default `512mb`.
    pub proto_max_bulk_len: ByteSize,
    /// Reply bytes a connection may hold before it stops executing (and so
    /// stops reading) the client's further commands until the client has read
    /// them: the backpressure that keeps a client that does not read its
    /// replies from growing server memory. Default `1mb`.
    pub client_output_buffer_limit: ByteSize,
    /// Close a client idle for this many seconds; `0` (default) never does.
    pub timeout: u64,
    /// Size at which the storage engine freezes its memtable and flushes it to
    /// an SSTable, in bytes. Default `64mb`.
    pub memtable_size: ByteSize,
    /// Size of the storage engine's block cache, in bytes. Default `64mb`.
    pub block_cache_size: ByteSize,
    /// Threads that run client connections (tokio workers); `0` (default)
    /// means one per CPU core. Storage flushes and compactions have threads
    /// of their own.
    pub threads: usize,
    /// Log filter used when `RUST_LOG` is not set (tracing `EnvFilter`
    /// syntax, e.g. `info` or `ringkv=debug`). Default `info`.
    pub log_level: String,
    /// Client addresses (`host:port`) of existing cluster nodes to join
    /// through. Default: none (a cluster of one). Used by the cluster layer.
    pub join: Vec<String>,
    /// Host other nodes reach this node at. Default: the bind address.
    pub advertise: Option<String>,
    /// Port for internode traffic. Default: `port + 10000`.
    pub peer_port: Option<u16>,
    /// Shared secret peers must prove they know (HMAC challenge). Default: none.
    pub cluster_secret: Option<String>,
    /// Milliseconds between gossip rounds. Default: none (the membership
    /// default, 1000). Shorter values are for tests and local trials.
    pub gossip_interval_ms: Option<u64>,
    /// Milliseconds of silence before a member is suspected. Default: none
    /// (the membership default, 5000).
    pub gossip_suspect_ms: Option<u64>,
    /// Milliseconds of silence before a member is down. Default: none (the
    /// membership default, 10000).
    pub gossip_down_ms: Option<u64>,
    /// Peer port other nodes dial to reach this one, when it differs from the
    /// port the peer listener binds (port forwarding, NAT, a test's
    /// fault-injecting proxy). Default: none (the peer port).
    pub peer_advertise_port: Option<u16>,
    /// Replicas per key, `N`. A cluster-wide setting carried in gossip: nodes
    /// with different values refuse each other. Default: none (3).
    pub replicas: Option<u32>,
    /// Replica answers a read waits for, `R`. Cluster-wide. Default: none (2).
    pub read_quorum: Option<u32>,
    /// Replica acknowledgements a write waits for, `W`. Cluster-wide.
    /// Default: none (2).
    pub write_quorum: Option<u32>,
    /// Deadline of one client request inside the cluster (quorum reads and
    /// writes, forwards), in milliseconds. Default `1000`.
    pub request_timeout_ms: u64,
    /// Age after which a hint held for a down replica is dropped (anti-entropy
    /// repairs that replica instead), in milliseconds. Default `10800000` (3 h).
    pub hint_window_ms: u64,
    /// Bytes per second of hints a node replays to replicas that came back,
    /// all of them together; `0` means unlimited. Default `4194304` (4 MiB/s).
    pub handoff_bytes_per_sec: u64,
    /// Milliseconds between the periodic anti-entropy rounds, in which this
    /// node compares the Merkle tree of every partition it owns with another
    /// owner's; `0` turns the periodic rounds off (`CLUSTER REPAIR` still
    /// runs one). Default `10000` (10 s).
    pub anti_entropy_interval_ms: u64,
    /// Bytes per second anti-entropy may move (sent and received, plus what
    /// its scans read from storage), for this node as a whole; `0` means
    /// unlimited. Default `8388608` (8 MiB/s).
    pub anti_entropy_bytes_per_sec: u64,
    /// Bytes per second this node streams to other nodes when a join or a
    /// leave moves partitions (all streams together, counted once per
    /// target); `0` means unlimited. Default `33554432` (32 MiB/s).
    pub stream_bytes_per_sec: u64,
    /// Age after which a deleted key's tombstone may be purged by compaction
    /// (and only once every replica of its partition is known to have it),
    /// in milliseconds. Default `864000000` (10 days, like Cassandra's
    /// `gc_grace_seconds`).
    pub tombstone_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 7000,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dir: PathBuf::from("./data"),
            fsync: FsyncPolicy::Everysec,
            requirepass: None,
            maxclients: 10_000,
            proto_max_bulk_len: ByteSize::mib(512),
            client_output_buffer_limit: ByteSize::mib(1),
            timeout: 0,
            memtable_size: ByteSize::mib(64),
            block_cache_size: ByteSize::mib(64),
            threads: 0,
            log_level: "info".to_string(),
            join: Vec::new(),
            advertise: None,
            peer_port: None,
            cluster_secret: None,
            gossip_interval_ms: None,
            gossip_suspect_ms: None,
            gossip_down_ms: None,
            peer_advertise_port: None,
            replicas: None,
            read_quorum: None,
            write_quorum: None,
            request_timeout_ms: 1000,
            hint_window_ms: 3 * 3600 * 1000,
            handoff_bytes_per_sec: 4 << 20,
            anti_entropy_interval_ms: 10_000,
            anti_entropy_bytes_per_sec: 8 << 20,
            stream_bytes_per_sec: 32 << 20,
            tombstone_grace_ms: 10 * 24 * 3600 * 1000,
        }
    }
}

/// The distance between a node's client port and its default peer port.
pub const PEER_PORT_OFFSET: u16 = 10_000;

/// Smallest accepted `proto-max-bulk-len`: Redis refuses less than 1 MiB too.
const MIN_PROTO_MAX_BULK_LEN: u64 = 1024 * 1024;

impl Config {
    /// Defaults, then the TOML file named by `--config` (if any), then the
    /// environment and flags in `cli`; validated.
    pub fn load(cli: &CliArgs) -> Result<Config> {
        let mut config = Config::default();
        if let Some(path) = &cli.config {
            config.apply_file(&FileConfig::read(path)?);
        }
        config.apply_cli(cli)?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides the fields the file sets.
    pub fn apply_file(&mut self, f: &FileConfig) {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &f.$field { self.$field = v.clone(); } )* };
        }
        take!(
            port,
            bind,
            dir,
            fsync,
            maxclients,
            proto_max_bulk_len,
            client_output_buffer_limit,
            timeout,
            memtable_size,
            block_cache_size,
            threads,
            log_level,
            join,
            request_timeout_ms,
            hint_window_ms,
            handoff_bytes_per_sec,
            anti_entropy_interval_ms,
            anti_entropy_bytes_per_sec,
            stream_bytes_per_sec,
            tombstone_grace_ms
        );
        macro_rules! take_opt {
            ($($field:ident),*) => { $( if f.$field.is_some() { self.$field = f.$field.clone(); } )* };
        }
        take_opt!(
            requirepass,
            advertise,
            peer_port,
            cluster_secret,
            gossip_interval_ms,
            gossip_suspect_ms,
            gossip_down_ms,
            peer_advertise_port,
            replicas,
            read_quorum,
            write_quorum
        );
    }

    /// Overrides the fields given as flags or `RINGKV_*` variables.
    pub fn apply_cli(&mut self, c: &CliArgs) -> Result<()> {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &c.$field { self.$field = v.clone(); } )* };
        }
        take!(
            port,
            bind,
            dir,
            maxclients,
            timeout,
            threads,
            log_level,
            request_timeout_ms,
            hint_window_ms,
            handoff_bytes_per_sec,
            anti_entropy_interval_ms,
            anti_entropy_bytes_per_sec,
            stream_bytes_per_sec,
            tombstone_grace_ms
        );
        if let Some(v) = &c.fsync {
            self.fsync = v.parse()?;
        }
        macro_rules! take_size {
            ($($field:ident),*) => { $( if let Some(v) = &c.$field { self.$field = v.parse()?; } )* };
        }
        take_size!(
            proto_max_bulk_len,
            client_output_buffer_limit,
            memtable_size,
            block_cache_size
        );
        if !c.join.is_empty() {
            self.join = c.join.clone();
        }
        macro_rules! take_opt {
            ($($field:ident),*) => { $( if c.$field.is_some() { self.$field = c.$field.clone(); } )* };
        }
        take_opt!(
            requirepass,
            advertise,
            peer_port,
            cluster_secret,
            gossip_interval_ms,
            gossip_suspect_ms,
            gossip_down_ms,
            peer_advertise_port,
            replicas,
            read_quorum,
            write_quorum
        );
        Ok(())
    }

    /// Checks the settings together; the message names the offending setting.
    pub fn validate(&self) -> Result<()> {
        if self.maxclients == 0 {
            return Err(Error::invalid("maxclients must be at least 1"));
        }
        if self.proto_max_bulk_len.bytes() < MIN_PROTO_MAX_BULK_LEN {
            return Err(Error::invalid(
                "proto-max-bulk-len must be at least 1mb (1048576 bytes)",
            ));
        }
        if self.client_output_buffer_limit.bytes() < 1024 {
            return Err(Error::invalid(
                "client-output-buffer-limit must be at least 1kb",
            ));
        }
        if self.threads > 1024 {
            return Err(Error::invalid(
                "threads must be at most 1024 (0 = one per core)",
            ));
        }
        if self.memtable_size.bytes() < 64 * 1024 {
            return Err(Error::invalid("memtable-size must be at least 64kb"));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(Error::invalid("dir must not be empty"));
        }
        if matches!(&self.requirepass, Some(p) if p.is_empty()) {
            return Err(Error::invalid(
                "requirepass must not be empty (leave it unset to disable AUTH)",
            ));
        }
        if matches!(&self.cluster_secret, Some(s) if s.is_empty()) {
            return Err(Error::invalid("cluster-secret must not be empty"));
        }
        if let Some(host) = &self.advertise {
            if host.is_empty()
                || host.contains(char::is_whitespace)
                || host.contains(':') && host.parse::<IpAddr>().is_err()
            {
                return Err(Error::invalid(format!(
                    "advertise '{host}' must be a host name or IP address, without a port"
                )));
            }
        }
        for seed in &self.join {
            parse_host_port(seed).map_err(|e| Error::invalid(format!("join: {e}")))?;
        }
        match self.peer_port {
            Some(0) if self.port != 0 => {
                return Err(Error::invalid("peer-port must not be 0"));
            }
            Some(p) if p == self.port && p != 0 => {
                return Err(Error::invalid("peer-port must differ from port"));
            }
            None if self.port > u16::MAX - PEER_PORT_OFFSET => {
                return Err(Error::invalid(format!(
                    "port {} leaves no default peer port (port + {PEER_PORT_OFFSET}); set peer-port",
                    self.port
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The internode port: `peer_port`, or `port + 10000`.
    pub fn effective_peer_port(&self) -> u16 {
        self.peer_port
            .unwrap_or_else(|| self.port.saturating_add(PEER_PORT_OFFSET))
    }

    /// The host other nodes reach this node at: `advertise`, or the bind address.
    pub fn effective_advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.bind.to_string())
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6) and checks the port.
pub fn parse_host_port(s: &str) -> Result<(String, u16)> {
    let bad = || Error::invalid(format!("'{s}' is not host:port"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The TOML configuration file: the same names as `CONFIG GET` (kebab-case),
/// every key optional.
///
/// ```toml
/// port = 7000
/// bind = "127.0.0.1"
/// dir = "./data"
/// fsync = "everysec"          # always | everysec | no
/// maxclients = 10000
/// proto-max-bulk-len = "512mb"
/// client-output-buffer-limit = "1mb"
/// timeout = 0                 # seconds; 0 = never close idle clients
/// memtable-size = "64mb"
/// block-cache-size = "64mb"
/// threads = 0                 # 0 = one per CPU core
/// log-level = "info"
/// # requirepass = "secret"
/// # join = ["127.0.0.1:7000"]
/// # advertise = "10.0.0.5"
/// # peer-port = 17000
/// # cluster-secret = "..."
/// # gossip-interval-ms = 1000
/// # gossip-suspect-ms = 5000
/// # gossip-down-ms = 10000
/// # peer-advertise-port = 17000
/// # replicas = 3
/// # read-quorum = 2
/// # write-quorum = 2
/// request-timeout-ms = 1000
/// hint-window-ms = 10800000
/// handoff-bytes-per-sec = 4194304
/// tombstone-grace-ms = 864000000
/// anti-entropy-interval-ms = 10000
/// anti-entropy-bytes-per-sec = 8388608
/// stream-bytes-per-sec = 33554432
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub dir: Option<PathBuf>,
    pub fsync: Option<FsyncPolicy>,
    pub requirepass: Option<String>,
    pub maxclients: Option<u32>,
    pub proto_max_bulk_len: Option<ByteSize>,
    pub client_output_buffer_limit: Option<ByteSize>,
    pub timeout: Option<u64>,
    pub memtable_size: Option<ByteSize>,
    pub block_cache_size: Option<ByteSize>,
    pub threads: Option<usize>,
    pub log_level: Option<String>,
    pub join: Option<Vec<String>>,
    pub advertise: Option<String>,
    pub peer_port: Option<u16>,
    pub cluster_secret: Option<String>,
    pub gossip_interval_ms: Option<u64>,
    pub gossip_suspect_ms: Option<u64>,
    pub gossip_down_ms: Option<u64>,
    pub peer_advertise_port: Option<u16>,
    pub replicas: Option<u32>,
    pub read_quorum: Option<u32>,
    pub write_quorum: Option<u32>,
    pub request_timeout_ms: Option<u64>,
    pub hint_window_ms: Option<u64>,
    pub handoff_bytes_per_sec: Option<u64>,
    pub anti_entropy_interval_ms: Option<u64>,
    pub anti_entropy_bytes_per_sec: Option<u64>,
    pub stream_bytes_per_sec: Option<u64>,
    pub tombstone_grace_ms: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a TOML file; errors name the file.
    pub fn read(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| Error::invalid(format!("invalid config: {e}")))
    }
}

/// Command-line flags of `ringkv`. Each also reads the environment variable
/// `RINGKV_<NAME>` (e.g. `RINGKV_PORT`); a flag on the command line wins.
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A Dynamo-style, leaderless, replicated key-value store that speaks the Redis protocol"
)]
pub struct CliArgs {
    /// TOML configuration file (read before the environment and the flags).
    #[arg(long, env = "RINGKV_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Client TCP port [default: 7000].
    #[arg(long, env = "RINGKV_PORT")]
    pub port: Option<u16>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "RINGKV_BIND")]
    pub bind: Option<IpAddr>,
    /// Data directory [default: ./data].
    #[arg(long, env = "RINGKV_DIR", value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Commit-log fsync policy: always, everysec or no [default: everysec].
    #[arg(long, env = "RINGKV_FSYNC", value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Password clients must give with AUTH [default: none].
    #[arg(long, env = "RINGKV_REQUIREPASS", value_name = "PASSWORD")]
    pub requirepass: Option<String>,
    /// Most simultaneous clients [default: 10000].
    #[arg(long, env = "RINGKV_MAXCLIENTS")]
    pub maxclients: Option<u32>,
    /// Largest bulk string in a request, e.g. 512mb [default: 512mb].
    #[arg(long, env = "RINGKV_PROTO_MAX_BULK_LEN", value_name = "SIZE")]
    pub proto_max_bulk_len: Option<String>,
    /// Reply bytes buffered per client before its input is paused [default: 1mb].
    #[arg(long, env = "RINGKV_CLIENT_OUTPUT_BUFFER_LIMIT", value_name = "SIZE")]
    pub client_output_buffer_limit: Option<String>,
    /// Close clients idle for this many seconds; 0 = never [default: 0].
    #[arg(long, env = "RINGKV_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Memtable size before a flush to an SSTable [default: 64mb].
    #[arg(long, env = "RINGKV_MEMTABLE_SIZE", value_name = "SIZE")]
    pub memtable_size: Option<String>,
    /// Block cache size [default: 64mb].
    #[arg(long, env = "RINGKV_BLOCK_CACHE_SIZE", value_name = "SIZE")]
    pub block_cache_size: Option<String>,
    /// Threads serving clients; 0 = one per CPU core [default: 0].
    #[arg(long, env = "RINGKV_THREADS")]
    pub threads: Option<usize>,
    /// Log filter when RUST_LOG is unset, e.g. info, debug [default: info].
    #[arg(long, env = "RINGKV_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// A cluster node's client address (host:port) to join through; repeatable.
    #[arg(
        long,
        env = "RINGKV_JOIN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// Host other nodes reach this node at [default: the bind address].
    #[arg(long, env = "RINGKV_ADVERTISE", value_name = "HOST")]
    pub advertise: Option<String>,
    /// Internode port [default: port + 10000].
    #[arg(long, env = "RINGKV_PEER_PORT")]
    pub peer_port: Option<u16>,
    /// Secret peers must share to join [default: none].
    #[arg(long, env = "RINGKV_CLUSTER_SECRET", value_name = "SECRET")]
    pub cluster_secret: Option<String>,
    /// Milliseconds between gossip rounds [default: 1000].
    #[arg(long, env = "RINGKV_GOSSIP_INTERVAL_MS", value_name = "MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Milliseconds of silence before a peer is suspected [default: 5000].
    #[arg(long, env = "RINGKV_GOSSIP_SUSPECT_MS", value_name = "MS")]
    pub gossip_suspect_ms: Option<u64>,
    /// Milliseconds of silence before a peer is marked down [default: 10000].
    #[arg(long, env = "RINGKV_GOSSIP_DOWN_MS", value_name = "MS")]
    pub gossip_down_ms: Option<u64>,
    /// Peer port other nodes dial, if not the one listened on (NAT, proxies)
    /// [default: the peer port].
    #[arg(long, env = "RINGKV_PEER_ADVERTISE_PORT", value_name = "PORT")]
    pub peer_advertise_port: Option<u16>,
    /// Replicas per key N, cluster-wide [default: 3].
    #[arg(long, env = "RINGKV_REPLICAS", value_name = "N")]
    pub replicas: Option<u32>,
    /// Replica answers per read R, cluster-wide [default: 2].
    #[arg(long, env = "RINGKV_READ_QUORUM", value_name = "R")]
    pub read_quorum: Option<u32>,
    /// Replica acknowledgements per write W, cluster-wide [default: 2].
    #[arg(long, env = "RINGKV_WRITE_QUORUM", value_name = "W")]
    pub write_quorum: Option<u32>,
    /// Deadline of a request inside the cluster, in ms [default: 1000].
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Age after which a hint is dropped, in ms [default: 10800000 (3 h)].
    #[arg(long, env = "RINGKV_HINT_WINDOW_MS", value_name = "MS")]
    pub hint_window_ms: Option<u64>,
    /// Hint replay rate, bytes per second; 0 = unlimited [default: 4194304].
    #[arg(long, env = "RINGKV_HANDOFF_BYTES_PER_SEC", value_name = "BYTES")]
    pub handoff_bytes_per_sec: Option<u64>,
    /// Age before a tombstone may be purged, in ms [default: 864000000 (10 days)].
    #[arg(long, env = "RINGKV_TOMBSTONE_GRACE_MS", value_name = "MS")]
    pub tombstone_grace_ms: Option<u64>,
    /// Milliseconds between anti-entropy rounds; 0 = only on
    /// `CLUSTER REPAIR` [default: 10000].
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_INTERVAL_MS", value_name = "MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Anti-entropy rate, bytes per second; 0 = unlimited [default: 8388608].
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_BYTES_PER_SEC", value_name = "BYTES")]
    pub anti_entropy_bytes_per_sec: Option<u64>,
    /// Join/leave partition streaming rate, bytes per second; 0 = unlimited
    /// [default: 33554432].
    #[arg(long, env = "RINGKV_STREAM_BYTES_PER_SEC", value_name = "BYTES")]
    pub stream_bytes_per_sec: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> CliArgs {
        let mut all = vec!["ringkv"];
        all.extend_from_slice(args);
        CliArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn no_arguments_serve_loopback_7000_with_data_in_dot_data() {
        let c = Config::default();
        assert_eq!(c.port, 7000);
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.dir, PathBuf::from("./data"));
        assert_eq!(c.fsync, FsyncPolicy::Everysec);
        assert_eq!(c.proto_max_bulk_len.bytes(), 512 * 1024 * 1024);
        assert_eq!(c.effective_peer_port(), 17000);
        c.validate().unwrap();
    }

    #[test]
    fn sizes_use_redis_units() {
        assert_eq!("1k".parse::<ByteSize>().unwrap().bytes(), 1000);
        assert_eq!("1kb".parse::<ByteSize>().unwrap().bytes(), 1024);
        assert_eq!("512MB".parse::<ByteSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("2g".parse::<ByteSize>().unwrap().bytes(), 2_000_000_000);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().bytes(), 1 << 20);
        assert!("12xb".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999999gb".parse::<ByteSize>().is_err());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = FileConfig::parse(
            "port = 7100\nfsync = \"always\"\nproto-max-bulk-len = \"2mb\"\nmaxclients = 5\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.apply_file(&file);
        c.apply_cli(&cli(&["--port", "7200", "--join", "127.0.0.1:7000,h:7001"]))
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.port, 7200);
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.proto_max_bulk_len.bytes(), 2 << 20);
        assert_eq!(c.maxclients, 5);
        assert_eq!(c.join, vec!["127.0.0.1:7000", "h:7001"]);
    }

    #[test]
    fn the_example_config_file_parses_to_the_defaults() {
        let text = include_str!("../config/ringkv.example.toml");
        let mut c = Config::default();
        c.apply_file(&FileConfig::parse(text).unwrap());
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(FileConfig::parse("prot = 1\n").is_err());
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut c = Config::default();
        c.apply_cli(&cli(&["--join", "nohostport"])).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("join"));

        let mut c = Config::default();
        c.apply_cli(&cli(&["--proto-max-bulk-len", "10"])).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("proto-max-bulk-len"));

        let mut c = Config {
            port: 60000,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.peer_port = Some(60001);
        c.validate().unwrap();

        let mut c = Config::default();
        assert!(c.apply_cli(&cli(&["--fsync", "sometimes"])).is_err());
        c.advertise = Some("host:1".into());
        assert!(c.validate().is_err());
    }
}
