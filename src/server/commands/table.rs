//! The command table: every command ringkv answers, with what Redis clients
//! read about it (`COMMAND INFO`, `COMMAND DOCS`) and what dispatch needs.
//!
//! One static slice, [`COMMANDS`], is the only list of commands in the server:
//! dispatch looks a name up here to check it exists and its arity, `COMMAND`
//! and `COMMAND COUNT/INFO/DOCS/LIST` render it, and `ringkv-cli` can take its
//! hints from `COMMAND DOCS`. A command that is not in the table gets Redis'
//! unknown-command error, so the table lists only commands that really exist.
//!
//! Conventions are Redis 7's: `arity` counts the command name, negative means
//! "at least |arity|"; `first_key`/`last_key`/`step` locate key arguments
//! (`last_key = -1` means "to the end"); flags and groups use Redis' words.
//! ACL categories and key specs are derived from the flags and key positions
//! rather than written out per command, so they cannot disagree with them.
//!
//! Lookup ([`lookup`]) is case-insensitive without allocating: the name is
//! lowercased into a stack buffer and found in a map built once. Container
//! commands (`CLIENT`, `COMMAND`, `CONFIG`) carry their subcommands, found by
//! a short linear scan.

use std::sync::OnceLock;

use ahash::AHashMap;

/// Who executes a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// A data command: executed by the keyspace (`Keyspace::execute`).
    Data,
    /// A connection or server command: executed by the connection itself.
    Server(ServerCmd),
    /// A container whose subcommand decides (`CLIENT`, `COMMAND`, `CONFIG`).
    Container,
}

/// The connection and server commands the server executes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCmd {
    Ping,
    Echo,
    Quit,
    Hello,
    Auth,
    Select,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientSetInfo,
    ClientList,
    ClientInfo,
    ClientHelp,
    Command,
    CommandCount,
    CommandDocs,
    CommandInfo,
    CommandList,
    CommandHelp,
    Info,
    ConfigGet,
    ConfigSet,
    ConfigResetStat,
    ConfigHelp,
    Time,
    Shutdown,
    /// `CLUSTER ...`, run by the cluster node.
    Cluster(crate::server::cluster_node::ClusterCmd),
}

/// Command flags, as `COMMAND INFO` names them.
pub mod flag {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const DENYOOM: u32 = 1 << 2;
    pub const ADMIN: u32 = 1 << 3;
    pub const NOSCRIPT: u32 = 1 << 4;
    pub const LOADING: u32 = 1 << 5;
    pub const STALE: u32 = 1 << 6;
    pub const FAST: u32 = 1 << 7;
    pub const NO_AUTH: u32 = 1 << 8;
    pub const ALLOW_BUSY: u32 = 1 << 9;
    pub const NO_MULTI: u32 = 1 << 10;

    /// Every flag with its Redis name, in Redis' order.
    pub const NAMES: &[(u32, &str)] = &[
        (WRITE, "write"),
        (READONLY, "readonly"),
        (DENYOOM, "denyoom"),
        (ADMIN, "admin"),
        (NOSCRIPT, "noscript"),
        (LOADING, "loading"),
        (STALE, "stale"),
        (FAST, "fast"),
        (NO_AUTH, "no_auth"),
        (ALLOW_BUSY, "allow_busy"),
        (NO_MULTI, "no_multi"),
    ];
}

/// The type of a documented argument (`COMMAND DOCS`' `type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    String,
    Integer,
    Double,
    Key,
    Pattern,
    UnixTime,
    PureToken,
    OneOf,
    Block,
}

impl ArgType {
    /// The name `COMMAND DOCS` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Integer => "integer",
            ArgType::Double => "double",
            ArgType::Key => "key",
            ArgType::Pattern => "pattern",
            ArgType::UnixTime => "unix-time",
            ArgType::PureToken => "pure-token",
            ArgType::OneOf => "oneof",
            ArgType::Block => "block",
        }
    }
}

/// One documented argument: what redis-cli and `ringkv-cli` show as hints.
#[derive(Clone, Copy, Debug)]
pub struct ArgDoc {
    pub name: &'static str,
    pub kind: ArgType,
    /// The literal word that introduces it (`EX`, `MATCH`), if any.
    pub token: Option<&'static str>,
    pub optional: bool,
    pub multiple: bool,
    /// The members of a `oneof` or `block`.
    pub args: &'static [ArgDoc],
}

impl ArgDoc {
    const fn new(name: &'static str, kind: ArgType) -> ArgDoc {
        ArgDoc {
            name,
            kind,
            token: None,
            optional: false,
            multiple: false,
            args: &[],
        }
    }

    /// A key argument.
    pub const fn key(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::Key)
    }

    /// A string argument.
    pub const fn string(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::String)
    }

    /// An integer argument.
    pub const fn integer(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::Integer)
    }

    /// A floating-point argument.
    pub const fn double(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::Double)
    }

    /// A glob-style pattern.
    pub const fn pattern(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::Pattern)
    }

    /// A Unix time.
    pub const fn unix_time(name: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::UnixTime)
    }

    /// A literal word standing alone (`NX`, `KEEPTTL`); named as Redis does,
    /// in lowercase.
    pub const fn flag(name: &'static str, token: &'static str) -> ArgDoc {
        ArgDoc::new(name, ArgType::PureToken).token(token)
    }

    /// Exactly one of `args`.
    pub const fn one_of(name: &'static str, args: &'static [ArgDoc]) -> ArgDoc {
        let mut a = ArgDoc::new(name, ArgType::OneOf);
        a.args = args;
        a
    }

    /// All of `args`, in order.
    pub const fn block(name: &'static str, args: &'static [ArgDoc]) -> ArgDoc {
        let mut a = ArgDoc::new(name, ArgType::Block);
        a.args = args;
        a
    }

    /// Introduced by the literal `token`.
    pub const fn token(mut self, token: &'static str) -> ArgDoc {
        self.token = Some(token);
        self
    }

    /// May be left out.
    pub const fn optional(mut self) -> ArgDoc {
        self.optional = true;
        self
    }

    /// May repeat.
    pub const fn multiple(mut self) -> ArgDoc {
        self.multiple = true;
        self
    }
}

/// One command (or subcommand) of the table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lowercase name; subcommands carry their container's: `client|setname`.
    pub name: &'static str,
    pub arity: i32,
    pub flags: u32,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    /// Redis' group (`string`, `generic`, `connection`, `server`) or `ringkv`.
    pub group: &'static str,
    pub summary: &'static str,
    pub since: &'static str,
    pub complexity: &'static str,
    pub args: &'static [ArgDoc],
    pub subcommands: &'static [CommandSpec],
    pub handler: Handler,
}

impl CommandSpec {
    /// Whether `argc` arguments (the name included) satisfy the arity.
    #[inline]
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.arity;
        if arity >= 0 {
            argc == arity as usize
        } else {
            argc >= arity.unsigned_abs() as usize
        }
    }

    /// Whether the command has `flag` (see [`flag`]).
    #[inline]
    pub fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// The flag names for `COMMAND INFO`.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        flag::NAMES
            .iter()
            .filter(|(f, _)| self.has(*f))
            .map(|(_, n)| *n)
    }

    /// ACL categories, derived from the flags and group as Redis assigns them.
    pub fn acl_categories(&self) -> Vec<&'static str> {
        let mut cats = Vec::with_capacity(5);
        if self.has(flag::WRITE) {
            cats.push("@write");
        }
        if self.has(flag::READONLY) {
            cats.push("@read");
        }
        match self.group {
            "string" => cats.push("@string"),
            "generic" => cats.push("@keyspace"),
            "connection" => cats.push("@connection"),
            _ => {}
        }
        if self.has(flag::ADMIN) {
            cats.push("@admin");
        }
        cats.push(if self.has(flag::FAST) {
            "@fast"
        } else {
            "@slow"
        });
        if self.has(flag::ADMIN) || self.name == "flushall" || self.name == "flushdb" {
            cats.push("@dangerous");
        }
        cats
    }

    /// The subcommand named `name` (any case), e.g. `setname` of `client`.
    pub fn subcommand(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        let prefix = self.name.len() + 1;
        self.subcommands
            .iter()
            .find(|s| s.name.as_bytes()[prefix..].eq_ignore_ascii_case(name))
    }
}

/// Longest command name the lookup considers; longer names are unknown.
const MAX_NAME_LEN: usize = 32;

fn index() -> &'static AHashMap<&'static [u8], &'static CommandSpec> {
    static INDEX: OnceLock<AHashMap<&'static [u8], &'static CommandSpec>> = OnceLock::new();
    INDEX.get_or_init(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect())
}

/// Finds a command by name in any case, without allocating.
#[inline]
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    let mut buf = [0u8; MAX_NAME_LEN];
    let lower = &mut buf[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    index().get(&*lower).copied()
}

use flag::*;

const fn cmd(
    name: &'static str,
    arity: i32,
    flags: u32,
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
        group,
        summary,
        since,
        complexity: "O(1)",
        args: &[],
        subcommands: &[],
        handler: Handler::Data,
    }
}

impl CommandSpec {
    const fn keys(mut self, first: i32, last: i32, step: i32) -> Self {
        self.first_key = first;
        self.last_key = last;
        self.step = step;
        self
    }
    const fn key1(self) -> Self {
        self.keys(1, 1, 1)
    }
    const fn args(mut self, args: &'static [ArgDoc]) -> Self {
        self.args = args;
        self
    }
    const fn complexity(mut self, c: &'static str) -> Self {
        self.complexity = c;
        self
    }
    const fn server(mut self, c: ServerCmd) -> Self {
        self.handler = Handler::Server(c);
        self
    }
    const fn container(mut self, subs: &'static [CommandSpec]) -> Self {
        self.handler = Handler::Container;
        self.subcommands = subs;
        self
    }
}

const KEY: ArgDoc = ArgDoc::key("key");
const KEYS: ArgDoc = ArgDoc::key("key").multiple();
const VALUE: ArgDoc = ArgDoc::string("value");
const EXPIRE_CONDITION: ArgDoc = ArgDoc::one_of(
    "condition",
    &[
        ArgDoc::flag("nx", "NX"),
        ArgDoc::flag("xx", "XX"),
        ArgDoc::flag("gt", "GT"),
        ArgDoc::flag("lt", "LT"),
    ],
)
.optional();
const HELP_SUMMARY: &str = "Returns helpful text about the different subcommands.";
const STRING: &str = "string";
const GENERIC: &str = "generic";
const CONNECTION: &str = "connection";
const SERVER: &str = "server";
const RINGKV: &str = "ringkv";
const CLUSTER: &str = "cluster";

const CLIENT_SUBCOMMANDS: &[CommandSpec] = &[
    cmd(
        "client|setname",
        3,
        NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "2.6.9",
        "Sets the connection name.",
    )
    .args(&[ArgDoc::string("connection-name")])
    .server(ServerCmd::ClientSetName),
    cmd(
        "client|getname",
        2,
        NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "2.6.9",
        "Returns the name of the connection.",
    )
    .server(ServerCmd::ClientGetName),
    cmd(
        "client|id",
        2,
        NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "5.0.0",
        "Returns the unique client ID of the connection.",
    )
    .server(ServerCmd::ClientId),
    cmd(
        "client|setinfo",
        4,
        NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "7.2.0",
        "Sets information specific to the client or connection.",
    )
    .args(&[ArgDoc::one_of(
        "attr",
        &[
            ArgDoc::string("libname").token("LIB-NAME"),
            ArgDoc::string("libver").token("LIB-VER"),
        ],
    )])
    .server(ServerCmd::ClientSetInfo),
    cmd(
        "client|list",
        -2,
        ADMIN | NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "2.4.0",
        "Lists open connections.",
    )
    .args(&[
        ArgDoc::one_of("client-type", &[ArgDoc::flag("normal", "NORMAL")])
            .token("TYPE")
            .optional(),
        ArgDoc::integer("client-id")
            .token("ID")
            .optional()
            .multiple(),
    ])
    .complexity("O(N) where N is the number of client connections")
    .server(ServerCmd::ClientList),
    cmd(
        "client|info",
        2,
        NOSCRIPT | LOADING | STALE,
        CONNECTION,
        "6.2.0",
        "Returns information about the connection.",
    )
    .server(ServerCmd::ClientInfo),
    cmd(
        "client|help",
        2,
        LOADING | STALE,
        CONNECTION,
        "5.0.0",
        HELP_SUMMARY,
    )
    .server(ServerCmd::ClientHelp),
];

const COMMAND_SUBCOMMANDS: &[CommandSpec] = &[
    cmd(
        "command|count",
        2,
        LOADING | STALE,
        SERVER,
        "2.8.13",
        "Returns a count of commands.",
    )
    .server(ServerCmd::CommandCount),
    cmd(
        "command|docs",
        -2,
        LOADING | STALE,
        SERVER,
        "7.0.0",
        "Returns documentary information about one, multiple or all commands.",
    )
    .args(&[ArgDoc::string("command-name").optional().multiple()])
    .complexity("O(N) where N is the number of commands to look up")
    .server(ServerCmd::CommandDocs),
    cmd(
        "command|info",
        -2,
        LOADING | STALE,
        SERVER,
        "2.8.13",
        "Returns information about one, multiple or all commands.",
    )
    .args(&[ArgDoc::string("command-name").optional().multiple()])
    .complexity("O(N) where N is the number of commands to look up")
    .server(ServerCmd::CommandInfo),
    cmd(
        "command|list",
        -2,
        LOADING | STALE,
        SERVER,
        "7.0.0",
        "Returns a list of command names.",
    )
    .args(&[ArgDoc::one_of(
        "filterby",
        &[
            ArgDoc::string("aclcat").token("ACLCAT"),
            ArgDoc::pattern("pattern").token("PATTERN"),
        ],
    )
    .token("FILTERBY")
    .optional()])
    .complexity("O(N) where N is the total number of commands")
    .server(ServerCmd::CommandList),
    cmd(
        "command|help",
        2,
        LOADING | STALE,
        SERVER,
        "5.0.0",
        HELP_SUMMARY,
    )
    .server(ServerCmd::CommandHelp),
];

const CONFIG_SUBCOMMANDS: &[CommandSpec] = &[
    cmd(
        "config|get",
        -3,
        ADMIN | NOSCRIPT | LOADING | STALE,
        SERVER,
        "2.0.0",
        "Returns the effective values of configuration parameters.",
    )
    .args(&[ArgDoc::string("parameter").multiple()])
    .complexity("O(N) when N is the number of configuration parameters provided")
    .server(ServerCmd::ConfigGet),
    cmd(
        "config|set",
        -4,
        ADMIN | NOSCRIPT | LOADING | STALE,
        SERVER,
        "2.0.0",
        "Sets configuration parameters in-flight.",
    )
    .args(&[ArgDoc::block(
        "data",
        &[ArgDoc::string("parameter"), ArgDoc::string("value")],
    )
    .multiple()])
    .complexity("O(N) when N is the number of configuration parameters provided")
    .server(ServerCmd::ConfigSet),
    cmd(
        "config|resetstat",
        2,
        ADMIN | NOSCRIPT | LOADING | STALE,
        SERVER,
        "2.0.0",
        "Resets the server's statistics.",
    )
    .server(ServerCmd::ConfigResetStat),
    cmd(
        "config|help",
        2,
        LOADING | STALE,
        SERVER,
        "5.0.0",
        HELP_SUMMARY,
    )
    .server(ServerCmd::ConfigHelp),
];

const CLUSTER_SUBCOMMANDS: &[CommandSpec] = {
    use crate::server::cluster_node::ClusterCmd as C;
    &[
        cmd("cluster|nodes", 2, LOADING | STALE, CLUSTER, "3.0.0", "Returns the cluster's members as this node sees them: id, addresses, status, heartbeat, incarnation, partitions owned.")
            .complexity("O(N) where N is the number of members")
            .server(ServerCmd::Cluster(C::Nodes)),
        cmd("cluster|info", 2, LOADING | STALE, CLUSTER, "3.0.0", "Returns N/R/W, Q, member counts and this node's state.")
            .server(ServerCmd::Cluster(C::Info)),
        cmd("cluster|meet", 4, ADMIN | NOSCRIPT | STALE, CLUSTER, "3.0.0", "Joins the cluster of the node listening for clients at host:port.")
            .args(&[ArgDoc::string("ip"), ArgDoc::integer("port")])
            .server(ServerCmd::Cluster(C::Meet)),
        cmd("cluster|forget", 3, ADMIN | NOSCRIPT | STALE, CLUSTER, "3.0.0", "Removes a member from the cluster (until it restarts).")
            .args(&[ArgDoc::string("node-id")])
            .server(ServerCmd::Cluster(C::Forget)),
        cmd("cluster|leave", 2, ADMIN | NOSCRIPT | STALE, CLUSTER, "0.1.0", "Makes this node leave the cluster.")
            .server(ServerCmd::Cluster(C::Leave)),
        cmd("cluster|preflist", 3, LOADING | STALE, CLUSTER, "0.1.0", "Returns the nodes that own a key (then its fallbacks), with their addresses.")
            .args(&[ArgDoc::string("key")])
            .complexity("O(N) where N is the number of members")
            .server(ServerCmd::Cluster(C::Preflist)),
        cmd("cluster|partitions", 2, LOADING | STALE, CLUSTER, "0.1.0", "Returns partition ranges and their owners.")
            .complexity("O(Q) where Q is the number of partitions")
            .server(ServerCmd::Cluster(C::Partitions)),
        cmd("cluster|hints", 2, LOADING | STALE, CLUSTER, "0.1.0", "Returns the hints this node holds for replicas that were down: target id, hints, bytes, status.")
            .complexity("O(N) where N is the number of targets")
            .server(ServerCmd::Cluster(C::Hints)),
        cmd("cluster|repair", -2, ADMIN | NOSCRIPT | STALE, CLUSTER, "0.1.0", "Runs anti-entropy now for one partition (or every partition this node owns) with every other live owner; answers a summary when done.")
            .args(&[ArgDoc::integer("partition").optional()])
            .complexity("O(D) where D is the number of keys that differ, plus one scan per partition that differs")
            .server(ServerCmd::Cluster(C::Repair)),
        cmd("cluster|merkle", -2, LOADING | STALE, CLUSTER, "0.1.0", "Returns the Merkle root of a partition on this node, or of every partition it owns.")
            .args(&[ArgDoc::integer("partition").optional()])
            .complexity("O(Q) where Q is the number of partitions")
            .server(ServerCmd::Cluster(C::Merkle)),
        cmd("cluster|myid", 2, LOADING | STALE, CLUSTER, "3.0.0", "Returns this node's id.")
            .server(ServerCmd::Cluster(C::MyId)),
        cmd("cluster|mypeeraddr", 2, LOADING | STALE | NO_AUTH, CLUSTER, "0.1.0", "Returns this node's internode address (what --join asks a seed for).")
            .server(ServerCmd::Cluster(C::MyPeerAddr)),
        cmd("cluster|help", 2, LOADING | STALE, CLUSTER, "5.0.0", HELP_SUMMARY)
            .server(ServerCmd::Cluster(C::Help)),
    ]
};

/// Every command ringkv answers.
pub static COMMANDS: &[CommandSpec] = &[
    // ---- connection ----
    cmd("ping", -1, FAST, CONNECTION, "1.0.0", "Returns the server's liveness response.")
        .args(&[ArgDoc::string("message").optional()])
        .server(ServerCmd::Ping),
    cmd("echo", 2, FAST, CONNECTION, "1.0.0", "Returns the given string.")
        .args(&[ArgDoc::string("message")])
        .server(ServerCmd::Echo),
    cmd("quit", -1, ALLOW_BUSY | NOSCRIPT | LOADING | STALE | FAST | NO_AUTH, CONNECTION, "1.0.0", "Closes the connection.")
        .server(ServerCmd::Quit),
    cmd("hello", -1, NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY, CONNECTION, "6.0.0", "Handshakes with the server.")
        .args(&[ArgDoc::block(
            "arguments",
            &[
                ArgDoc::integer("protover"),
                ArgDoc::block(
                    "username-password",
                    &[ArgDoc::string("username"), ArgDoc::string("password")],
                )
                .token("AUTH")
                .optional(),
                ArgDoc::string("clientname").token("SETNAME").optional(),
            ],
        )
        .optional()])
        .server(ServerCmd::Hello),
    cmd("auth", -2, NOSCRIPT | LOADING | STALE | FAST | NO_AUTH | ALLOW_BUSY, CONNECTION, "1.0.0", "Authenticates the connection.")
        .args(&[ArgDoc::string("username").optional(), ArgDoc::string("password")])
        .complexity("O(N) where N is the number of passwords defined for the user")
        .server(ServerCmd::Auth),
    cmd("select", 2, LOADING | STALE | FAST, CONNECTION, "1.0.0", "Changes the selected database (only database 0 exists).")
        .args(&[ArgDoc::integer("index")])
        .server(ServerCmd::Select),
    cmd("client", -2, 0, CONNECTION, "2.4.0", "A container for client connection commands.")
        .complexity("Depends on subcommand.")
        .container(CLIENT_SUBCOMMANDS),
    // ---- server ----
    cmd("command", -1, LOADING | STALE, SERVER, "2.8.13", "Returns detailed information about all commands.")
        .complexity("O(N) where N is the total number of commands")
        .container(COMMAND_SUBCOMMANDS)
        .server(ServerCmd::Command),
    cmd("info", -1, LOADING | STALE, SERVER, "1.0.0", "Returns information and statistics about the server.")
        .args(&[ArgDoc::string("section").optional().multiple()])
        .server(ServerCmd::Info),
    cmd("config", -2, 0, SERVER, "2.0.0", "A container for server configuration commands.")
        .complexity("Depends on subcommand.")
        .container(CONFIG_SUBCOMMANDS),
    cmd("cluster", -2, 0, CLUSTER, "3.0.0", "A container for cluster commands.")
        .complexity("Depends on subcommand.")
        .container(CLUSTER_SUBCOMMANDS),
    cmd("time", 1, LOADING | STALE | FAST, SERVER, "2.6.0", "Returns the server time.")
        .server(ServerCmd::Time),
    cmd("shutdown", -1, ADMIN | NOSCRIPT | LOADING | STALE | NO_MULTI | ALLOW_BUSY, SERVER, "1.0.0", "Syncs the data to disk and shuts down the server.")
        .args(&[ArgDoc::one_of(
            "save-selector",
            &[ArgDoc::flag("nosave", "NOSAVE"), ArgDoc::flag("save", "SAVE")],
        )
        .optional()])
        .complexity("O(N) when saving, where N is the total number of keys in all databases")
        .server(ServerCmd::Shutdown),
    cmd("dbsize", 1, READONLY | FAST, SERVER, "1.0.0", "Returns the number of keys in the database."),
    cmd("flushall", -1, WRITE, SERVER, "1.0.0", "Removes all keys from all databases.")
        .args(&[ArgDoc::one_of(
            "flush-type",
            &[ArgDoc::flag("async", "ASYNC"), ArgDoc::flag("sync", "SYNC")],
        )
        .optional()])
        .complexity("O(N) where N is the total number of keys in all databases"),
    cmd("flushdb", -1, WRITE, SERVER, "1.0.0", "Remove all keys from the current database.")
        .args(&[ArgDoc::one_of(
            "flush-type",
            &[ArgDoc::flag("async", "ASYNC"), ArgDoc::flag("sync", "SYNC")],
        )
        .optional()])
        .complexity("O(N) where N is the number of keys in the selected database"),
    // ---- string ----
    cmd("get", 2, READONLY | FAST, STRING, "1.0.0", "Returns the string value of a key (an array of values when it has siblings).")
        .key1()
        .args(&[KEY]),
    cmd("set", -3, WRITE | DENYOOM, STRING, "1.0.0", "Sets the string value of a key, superseding every version this node knows.")
        .key1()
        .args(&[
            KEY,
            VALUE,
            ArgDoc::one_of(
                "condition",
                &[ArgDoc::flag("nx", "NX"), ArgDoc::flag("xx", "XX")],
            )
            .optional(),
            ArgDoc::flag("get", "GET").optional(),
            ArgDoc::one_of(
                "expiration",
                &[
                    ArgDoc::integer("seconds").token("EX"),
                    ArgDoc::integer("milliseconds").token("PX"),
                    ArgDoc::unix_time("unix-time-seconds").token("EXAT"),
                    ArgDoc::unix_time("unix-time-milliseconds").token("PXAT"),
                    ArgDoc::flag("keepttl", "KEEPTTL"),
                ],
            )
            .optional(),
        ]),
    cmd("setnx", 3, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Set the string value of a key only when the key doesn't exist.")
        .key1()
        .args(&[KEY, VALUE]),
    cmd("setex", 4, WRITE | DENYOOM, STRING, "2.0.0", "Sets the string value and expiration time of a key.")
        .key1()
        .args(&[KEY, ArgDoc::integer("seconds"), VALUE]),
    cmd("psetex", 4, WRITE | DENYOOM, STRING, "2.6.0", "Sets both string value and expiration time in milliseconds of a key.")
        .key1()
        .args(&[KEY, ArgDoc::integer("milliseconds"), VALUE]),
    cmd("getset", 3, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Returns the previous string value of a key after setting it to a new value.")
        .key1()
        .args(&[KEY, VALUE]),
    cmd("getdel", 2, WRITE | FAST, STRING, "6.2.0", "Returns the string value of a key after deleting the key.")
        .key1()
        .args(&[KEY]),
    cmd("getex", -2, WRITE | FAST, STRING, "6.2.0", "Returns the string value of a key after setting its expiration time.")
        .key1()
        .args(&[
            KEY,
            ArgDoc::one_of(
                "expiration",
                &[
                    ArgDoc::integer("seconds").token("EX"),
                    ArgDoc::integer("milliseconds").token("PX"),
                    ArgDoc::unix_time("unix-time-seconds").token("EXAT"),
                    ArgDoc::unix_time("unix-time-milliseconds").token("PXAT"),
                    ArgDoc::flag("persist", "PERSIST"),
                ],
            )
            .optional(),
        ]),
    cmd("mget", -2, READONLY | FAST, STRING, "1.0.0", "Atomically returns the string values of one or more keys.")
        .keys(1, -1, 1)
        .args(&[KEYS])
        .complexity("O(N) where N is the number of keys to retrieve."),
    cmd("mset", -3, WRITE | DENYOOM, STRING, "1.0.1", "Atomically creates or modifies the string values of one or more keys.")
        .keys(1, -1, 2)
        .args(&[ArgDoc::block("data", &[KEY, VALUE]).multiple()])
        .complexity("O(N) where N is the number of keys to set."),
    cmd("msetnx", -3, WRITE | DENYOOM, STRING, "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist.")
        .keys(1, -1, 2)
        .args(&[ArgDoc::block("data", &[KEY, VALUE]).multiple()])
        .complexity("O(N) where N is the number of keys to set."),
    cmd("append", 3, WRITE | DENYOOM | FAST, STRING, "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist.")
        .key1()
        .args(&[KEY, VALUE]),
    cmd("strlen", 2, READONLY | FAST, STRING, "2.2.0", "Returns the length of a string value.")
        .key1()
        .args(&[KEY]),
    cmd("incr", 2, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.")
        .key1()
        .args(&[KEY]),
    cmd("decr", 2, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.")
        .key1()
        .args(&[KEY]),
    cmd("incrby", 3, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.")
        .key1()
        .args(&[KEY, ArgDoc::integer("increment")]),
    cmd("decrby", 3, WRITE | DENYOOM | FAST, STRING, "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.")
        .key1()
        .args(&[KEY, ArgDoc::integer("decrement")]),
    cmd("incrbyfloat", 3, WRITE | DENYOOM | FAST, STRING, "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.")
        .key1()
        .args(&[KEY, ArgDoc::double("increment")]),
    // ---- generic (keyspace) ----
    cmd("del", -2, WRITE, GENERIC, "1.0.0", "Deletes one or more keys (writes a versioned tombstone).")
        .keys(1, -1, 1)
        .args(&[KEYS])
        .complexity("O(N) where N is the number of keys that will be removed."),
    cmd("unlink", -2, WRITE | FAST, GENERIC, "4.0.0", "Deletes one or more keys (same as DEL in ringkv).")
        .keys(1, -1, 1)
        .args(&[KEYS])
        .complexity("O(N) where N is the number of keys that will be removed."),
    cmd("exists", -2, READONLY | FAST, GENERIC, "1.0.0", "Determines whether one or more keys exist.")
        .keys(1, -1, 1)
        .args(&[KEYS])
        .complexity("O(N) where N is the number of keys to check."),
    cmd("expire", -3, WRITE | FAST, GENERIC, "1.0.0", "Sets the expiration time of a key in seconds.")
        .key1()
        .args(&[KEY, ArgDoc::integer("seconds"), EXPIRE_CONDITION]),
    cmd("pexpire", -3, WRITE | FAST, GENERIC, "2.6.0", "Sets the expiration time of a key in milliseconds.")
        .key1()
        .args(&[KEY, ArgDoc::integer("milliseconds"), EXPIRE_CONDITION]),
    cmd("expireat", -3, WRITE | FAST, GENERIC, "1.2.0", "Sets the expiration time of a key to a Unix timestamp.")
        .key1()
        .args(&[KEY, ArgDoc::unix_time("unix-time-seconds"), EXPIRE_CONDITION]),
    cmd("pexpireat", -3, WRITE | FAST, GENERIC, "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp.")
        .key1()
        .args(&[KEY, ArgDoc::unix_time("unix-time-milliseconds"), EXPIRE_CONDITION]),
    cmd("ttl", 2, READONLY | FAST, GENERIC, "1.0.0", "Returns the expiration time in seconds of a key.")
        .key1()
        .args(&[KEY]),
    cmd("pttl", 2, READONLY | FAST, GENERIC, "2.6.0", "Returns the expiration time in milliseconds of a key.")
        .key1()
        .args(&[KEY]),
    cmd("expiretime", 2, READONLY | FAST, GENERIC, "7.0.0", "Returns the expiration time of a key as a Unix timestamp.")
        .key1()
        .args(&[KEY]),
    cmd("pexpiretime", 2, READONLY | FAST, GENERIC, "7.0.0", "Returns the expiration time of a key as a Unix milliseconds timestamp.")
        .key1()
        .args(&[KEY]),
    cmd("persist", 2, WRITE | FAST, GENERIC, "2.2.0", "Removes the expiration time of a key.")
        .key1()
        .args(&[KEY]),
    cmd("type", 2, READONLY | FAST, GENERIC, "1.0.0", "Determines the type of value stored at a key.")
        .key1()
        .args(&[KEY]),
    cmd("keys", 2, READONLY, GENERIC, "1.0.0", "Returns all key names that match a pattern.")
        .args(&[ArgDoc::pattern("pattern")])
        .complexity("O(N) with N being the number of keys in the database"),
    cmd("scan", -2, READONLY, GENERIC, "2.8.0", "Iterates over the key names in the database.")
        .args(&[
            ArgDoc::integer("cursor"),
            ArgDoc::pattern("pattern").token("MATCH").optional(),
            ArgDoc::integer("count").token("COUNT").optional(),
        ])
        .complexity("O(1) for every call. O(N) for a complete iteration."),
    cmd("randomkey", 1, READONLY, GENERIC, "1.0.0", "Returns a random key name from the database."),
    // ---- ringkv: versions ----
    cmd("vclock", -2, READONLY, RINGKV, "0.1.0", "Returns the causal context of a key's current versions (TEXT: human-readable; WITHVALUES: with their values, from one read).")
        .key1()
        .args(&[
            KEY,
            ArgDoc::one_of(
                "form",
                &[
                    ArgDoc::flag("text", "TEXT"),
                    ArgDoc::flag("withvalues", "WITHVALUES"),
                ],
            )
            .optional(),
        ]),
    cmd("resolve", 4, WRITE | DENYOOM, RINGKV, "0.1.0", "Writes a value that supersedes exactly the versions a causal context covers.")
        .key1()
        .args(&[KEY, ArgDoc::string("context"), VALUE]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_rejects_unknown_names() {
        assert_eq!(lookup(b"GeT").map(|c| c.name), Some("get"));
        assert_eq!(lookup(b"INCRBYFLOAT").map(|c| c.name), Some("incrbyfloat"));
        assert!(lookup(b"hset").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert!(lookup(b"").is_none());
    }

    #[test]
    fn arity_follows_the_redis_convention() {
        let get = lookup(b"get").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let set = lookup(b"set").unwrap();
        assert!(set.arity_ok(3) && set.arity_ok(9) && !set.arity_ok(2));
    }

    #[test]
    fn names_are_unique_lowercase_and_subcommands_carry_their_container() {
        let mut seen = std::collections::HashSet::new();
        for c in COMMANDS {
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert!(seen.insert(c.name), "duplicate {}", c.name);
            assert!(c.arity != 0, "{} has arity 0", c.name);
            for s in c.subcommands {
                assert!(s.name.starts_with(&format!("{}|", c.name)));
                assert!(matches!(s.handler, Handler::Server(_)));
            }
        }
        let client = lookup(b"client").unwrap();
        assert_eq!(
            client.subcommand(b"SETNAME").map(|s| s.name),
            Some("client|setname")
        );
        assert!(client.subcommand(b"kill").is_none());
    }

    #[test]
    fn data_commands_are_exactly_the_ones_the_keyspace_answers() {
        let keyspace = crate::server::keyspace::COMMANDS;
        for name in keyspace {
            let c = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(c.handler, Handler::Data, "{name}");
            assert_eq!(
                Some(c.arity),
                crate::server::keyspace::arity(name),
                "{name}: the table and the keyspace disagree on the arity"
            );
        }
        for c in COMMANDS.iter().filter(|c| c.handler == Handler::Data) {
            assert!(
                keyspace.contains(&c.name),
                "{} is not a keyspace command",
                c.name
            );
        }
    }
}
