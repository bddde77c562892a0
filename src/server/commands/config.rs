//! `CONFIG GET/SET/RESETSTAT`, and [`LiveConfig`]: the settings that can
//! change while the server runs.
//!
//! Parameters use Redis' names where Redis has the setting, so tools that
//! probe a server (`redis-benchmark` asks for `save` and `appendonly`) get a
//! sensible answer. The fsync policy is `appendfsync` here and `fsync` in the
//! config file and flags (DESIGN.md §6); both names work in `CONFIG`.
//!
//! `CONFIG SET` takes several `parameter value` pairs and applies all of them
//! or none, as Redis 7 does: every value is checked before any is applied.
//! Settable: `maxclients`, `requirepass`, `proto-max-bulk-len`, `timeout`,
//! `client-output-buffer-limit`; `appendfsync` only to its current value,
//! because the storage engine fixes its fsync policy when it opens (the error
//! says to restart with `--fsync`). The rest are read-only; setting one is
//! refused with Redis' "immutable config" error. `CONFIG SET` does not
//! rewrite the config file.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::{ByteSize, Config, FsyncPolicy};
use crate::protocol::Reply;
use crate::server::dispatch::Ctx;
use crate::server::keyspace::glob;

/// `CONFIG HELP`.
pub const CONFIG_HELP: &[&str] = &[
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET <directive> <value>",
    "    Set the configuration <directive> to <value>.",
    "RESETSTAT",
    "    Reset statistics reported by the INFO command.",
    "HELP",
    "    Print this help.",
];

/// Settings `CONFIG SET` can change, read by connections without a lock
/// (atomics) except the password and policy, which are read rarely.
#[derive(Debug)]
pub struct LiveConfig {
    maxclients: AtomicU32,
    proto_max_bulk_len: AtomicU64,
    output_buffer_limit: AtomicU64,
    timeout: AtomicU64,
    requirepass: RwLock<Option<String>>,
    fsync: FsyncPolicy,
}

impl LiveConfig {
    /// The live settings as `config` starts them.
    pub fn new(config: &Config) -> Self {
        LiveConfig {
            maxclients: AtomicU32::new(config.maxclients),
            proto_max_bulk_len: AtomicU64::new(config.proto_max_bulk_len.bytes()),
            output_buffer_limit: AtomicU64::new(config.client_output_buffer_limit.bytes()),
            timeout: AtomicU64::new(config.timeout),
            requirepass: RwLock::new(config.requirepass.clone()),
            fsync: config.fsync,
        }
    }

    pub fn maxclients(&self) -> u32 {
        self.maxclients.load(Relaxed)
    }

    pub fn proto_max_bulk_len(&self) -> u64 {
        self.proto_max_bulk_len.load(Relaxed)
    }

    /// In bytes, as a buffer length.
    pub fn output_buffer_limit(&self) -> usize {
        self.output_buffer_limit.load(Relaxed) as usize
    }

    /// Idle timeout in seconds; 0 = none.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout.load(Relaxed)
    }

    pub fn requirepass(&self) -> Option<String> {
        self.requirepass.read().clone()
    }

    pub fn requirepass_is_set(&self) -> bool {
        self.requirepass.read().is_some()
    }

    pub fn fsync(&self) -> FsyncPolicy {
        self.fsync
    }
}

/// Checks a `CONFIG SET` value without applying it.
type Check = fn(&[u8]) -> Result<Setting, String>;

/// A parameter `CONFIG GET` knows.
struct Param {
    name: &'static str,
    get: fn(&Ctx<'_>) -> String,
    /// Checks a new value; None for read-only parameters.
    set: Option<Check>,
}

/// A checked new value, applied only when every pair of a `CONFIG SET` passed.
enum Setting {
    MaxClients(u32),
    ProtoMaxBulkLen(u64),
    OutputBufferLimit(u64),
    Timeout(u64),
    RequirePass(Option<String>),
    /// Checked against the keyspace before anything is applied.
    Fsync(FsyncPolicy),
}

fn text(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| "argument must be valid UTF-8".to_string())
}

fn integer(v: &[u8]) -> Result<u64, String> {
    text(v)?
        .parse()
        .map_err(|_| "argument couldn't be parsed into an integer".to_string())
}

fn size(v: &[u8], min: u64, what: &str) -> Result<u64, String> {
    let n = text(v)?
        .parse::<ByteSize>()
        .map_err(|_| "argument must be a memory value".to_string())?
        .bytes();
    if n < min {
        return Err(format!("{what} must be at least {min} bytes"));
    }
    Ok(n)
}

fn fsync_setting(v: &[u8]) -> Result<Setting, String> {
    text(v)?
        .parse()
        .map(Setting::Fsync)
        .map_err(|_| "argument(s) must be one of the following: always, everysec, no".to_string())
}

static PARAMS: &[Param] = &[
    Param {
        name: "port",
        get: |c| c.shared.local_addr.port().to_string(),
        set: None,
    },
    Param {
        name: "bind",
        get: |c| c.shared.config.bind.to_string(),
        set: None,
    },
    Param {
        name: "dir",
        get: |c| {
            std::fs::canonicalize(&c.shared.config.dir)
                .unwrap_or_else(|_| c.shared.config.dir.clone())
                .display()
                .to_string()
        },
        set: None,
    },
    // The storage engine takes its fsync policy when it opens: setting the
    // current policy succeeds, another one is refused by the keyspace.
    Param {
        name: "appendfsync",
        get: |c| c.shared.live.fsync().to_string(),
        set: Some(fsync_setting),
    },
    Param {
        name: "fsync",
        get: |c| c.shared.live.fsync().to_string(),
        set: Some(fsync_setting),
    },
    Param {
        name: "appendonly",
        // The commit log is always on: it is where writes become durable.
        get: |_| "yes".into(),
        set: None,
    },
    Param {
        name: "save",
        // No snapshots: data lives in the engine's log and SSTables.
        get: |_| String::new(),
        set: None,
    },
    Param {
        name: "databases",
        get: |_| "1".into(),
        set: None,
    },
    Param {
        name: "requirepass",
        get: |c| c.shared.live.requirepass().unwrap_or_default(),
        set: Some(|v| {
            let p = text(v)?;
            Ok(Setting::RequirePass((!p.is_empty()).then(|| p.to_string())))
        }),
    },
    Param {
        name: "maxclients",
        get: |c| c.shared.live.maxclients().to_string(),
        set: Some(|v| match integer(v)? {
            0 => Err("argument must be between 1 and 4294967295 inclusive".into()),
            n => u32::try_from(n)
                .map(Setting::MaxClients)
                .map_err(|_| "argument must be between 1 and 4294967295 inclusive".into()),
        }),
    },
    Param {
        name: "proto-max-bulk-len",
        get: |c| c.shared.live.proto_max_bulk_len().to_string(),
        set: Some(|v| size(v, 1024 * 1024, "proto-max-bulk-len").map(Setting::ProtoMaxBulkLen)),
    },
    Param {
        name: "client-output-buffer-limit",
        get: |c| c.shared.live.output_buffer_limit().to_string(),
        set: Some(|v| size(v, 1024, "client-output-buffer-limit").map(Setting::OutputBufferLimit)),
    },
    Param {
        name: "timeout",
        get: |c| c.shared.live.timeout_secs().to_string(),
        set: Some(|v| integer(v).map(Setting::Timeout)),
    },
    Param {
        name: "memtable-size",
        get: |c| c.shared.config.memtable_size.to_string(),
        set: None,
    },
    Param {
        name: "block-cache-size",
        get: |c| c.shared.config.block_cache_size.to_string(),
        set: None,
    },
    Param {
        name: "threads",
        get: |c| c.shared.config.threads.to_string(),
        set: None,
    },
    Param {
        name: "loglevel",
        get: |c| c.shared.config.log_level.clone(),
        set: None,
    },
    Param {
        name: "advertise",
        get: |c| c.shared.config.effective_advertise(),
        set: None,
    },
    Param {
        name: "peer-port",
        get: |c| c.shared.config.effective_peer_port().to_string(),
        set: None,
    },
    Param {
        name: "join",
        get: |c| c.shared.config.join.join(","),
        set: None,
    },
];

/// `CONFIG GET pattern [pattern ...]`: a map of every matching parameter.
pub fn config_get(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    // Names are lowercase and Redis matches them ignoring case.
    let patterns: Vec<Vec<u8>> = args[2..].iter().map(|p| p.to_ascii_lowercase()).collect();
    let pairs = PARAMS
        .iter()
        .filter(|p| {
            patterns
                .iter()
                .any(|pat| glob::matches(pat, p.name.as_bytes()))
        })
        .map(|p| (Reply::bulk(p.name), Reply::bulk((p.get)(ctx))))
        .collect();
    Reply::Map(pairs)
}

/// `CONFIG SET parameter value [parameter value ...]`, all or nothing.
pub fn config_set(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    if args.len() % 2 != 0 {
        return Reply::err("wrong number of arguments for 'config|set' command");
    }
    let mut settings = Vec::with_capacity((args.len() - 2) / 2);
    let mut seen: Vec<&'static str> = Vec::new();
    for pair in args[2..].chunks_exact(2) {
        let (name, value) = (&pair[0], &pair[1]);
        let shown = String::from_utf8_lossy(name);
        let Some(param) = PARAMS
            .iter()
            .find(|p| name.eq_ignore_ascii_case(p.name.as_bytes()))
        else {
            return Reply::err(format!(
                "Unknown option or number of arguments for CONFIG SET - '{shown}'"
            ));
        };
        let canonical = if param.name == "fsync" {
            "appendfsync"
        } else {
            param.name
        };
        if seen.contains(&canonical) {
            return Reply::err(format!(
                "CONFIG SET failed (possibly related to argument '{shown}') - duplicate parameter"
            ));
        }
        seen.push(canonical);
        let Some(check) = param.set else {
            return Reply::err(format!(
                "CONFIG SET failed (possibly related to argument '{shown}') - can't set immutable config"
            ));
        };
        match check(value) {
            Ok(Setting::Fsync(policy)) => {
                if let Err(e) = ctx.shared.keyspace.set_fsync(policy) {
                    return Reply::err(format!(
                        "CONFIG SET failed (possibly related to argument '{shown}') - {e}"
                    ));
                }
            }
            Ok(s) => settings.push(s),
            Err(why) => {
                return Reply::err(format!(
                    "CONFIG SET failed (possibly related to argument '{shown}') - {why}"
                ))
            }
        }
    }
    let live = &ctx.shared.live;
    for s in settings {
        match s {
            Setting::MaxClients(n) => live.maxclients.store(n, Relaxed),
            Setting::ProtoMaxBulkLen(n) => live.proto_max_bulk_len.store(n, Relaxed),
            Setting::OutputBufferLimit(n) => live.output_buffer_limit.store(n, Relaxed),
            Setting::Timeout(n) => live.timeout.store(n, Relaxed),
            Setting::RequirePass(p) => *live.requirepass.write() = p,
            Setting::Fsync(_) => {}
        }
    }
    Reply::OK
}
