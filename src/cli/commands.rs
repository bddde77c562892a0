//! The command table behind tab completion, argument hints and `help`.
//!
//! At start the REPL asks the server for `COMMAND DOCS` (Redis 7's format:
//! per command a summary, a group, an argument tree and subcommands) and
//! renders each command's arguments as redis-cli does (`key value [NX|XX]
//! [GET] [EX seconds|PX milliseconds|...]`). A built-in table covers ringkv's
//! own commands (`VCLOCK`, `RESOLVE`, `CLUSTER ...`) and the common string and
//! server commands, so completion works against a server that does not
//! answer `COMMAND DOCS` (or answers it partly); the server's docs win where
//! both have a command.

use std::collections::BTreeMap;

use crate::client::Value;

/// One command (or subcommand) as the REPL knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDoc {
    /// Upper-case name; a subcommand's is its second word (`MEET`).
    pub name: String,
    /// Arguments rendered as redis-cli renders them.
    pub params: String,
    /// One-line summary.
    pub summary: String,
    /// Group (`string`, `server`, `cluster`, ...).
    pub group: String,
    /// Subcommands by upper-case name (`CLUSTER MEET` is under `CLUSTER`).
    pub subcommands: BTreeMap<String, CommandDoc>,
}

/// ringkv's own commands and the usual ones: (name, params, summary, group).
/// Subcommands are written `PARENT SUB`.
const BUILTIN: &[(&str, &str, &str, &str)] = &[
    ("VCLOCK", "key [WITHVALUES|TEXT]", "Causal context of a key (opaque), with its values, or human-readable", "ringkv"),
    ("RESOLVE", "key context value", "Write a value that supersedes exactly the versions covered by context", "ringkv"),
    ("CLUSTER", "subcommand [arg ...]", "Cluster membership and placement", "cluster"),
    ("CLUSTER NODES", "", "Members as gossip sees them: id, address, status, heartbeat, incarnation", "cluster"),
    ("CLUSTER INFO", "", "N/R/W, partitions, members up/down, this node's state", "cluster"),
    ("CLUSTER MEET", "host port", "Join the cluster that host:port belongs to", "cluster"),
    ("CLUSTER FORGET", "node-id", "Remove a node from the cluster", "cluster"),
    ("CLUSTER LEAVE", "", "Hand this node's partitions away and leave", "cluster"),
    ("CLUSTER PARTITIONS", "", "Who owns each partition", "cluster"),
    ("CLUSTER RING", "", "The ring: tokens and owners", "cluster"),
    ("CLUSTER PREFLIST", "key", "The N replicas of a key, then its fallbacks", "cluster"),
    ("CLUSTER HINTS", "", "Hinted-handoff writes pending, per target", "cluster"),
    ("CLUSTER REPAIR", "[partition]", "Run an anti-entropy round now", "cluster"),
    ("GET", "key", "Get the value of a key (an array when it has siblings)", "string"),
    ("SET", "key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]", "Set the string value of a key", "string"),
    ("DEL", "key [key ...]", "Delete keys", "generic"),
    ("EXISTS", "key [key ...]", "Count the keys that exist", "generic"),
    ("MGET", "key [key ...]", "Get the values of keys", "string"),
    ("MSET", "key value [key value ...]", "Set several keys", "string"),
    ("INCR", "key", "Increment an integer value by one", "string"),
    ("INCRBY", "key increment", "Increment an integer value", "string"),
    ("DECR", "key", "Decrement an integer value by one", "string"),
    ("APPEND", "key value", "Append to a string value", "string"),
    ("EXPIRE", "key seconds [NX|XX|GT|LT]", "Set a key's time to live in seconds", "generic"),
    ("TTL", "key", "Time to live of a key in seconds", "generic"),
    ("PERSIST", "key", "Remove a key's expiry", "generic"),
    ("TYPE", "key", "Type of a key's value", "generic"),
    ("KEYS", "pattern", "Keys matching a pattern", "generic"),
    ("SCAN", "cursor [MATCH pattern] [COUNT count] [TYPE type]", "Iterate over keys", "generic"),
    ("DBSIZE", "", "Number of keys", "server"),
    ("PING", "[message]", "Ping the server", "connection"),
    ("ECHO", "message", "Echo a message", "connection"),
    ("HELLO", "[protover [AUTH username password] [SETNAME clientname]]", "Handshake, choose RESP2 or RESP3", "connection"),
    ("AUTH", "[username] password", "Authenticate", "connection"),
    ("INFO", "[section [section ...]]", "Server information and statistics", "server"),
    ("CONFIG", "subcommand [arg ...]", "Read or change settings", "server"),
    ("CONFIG GET", "parameter [parameter ...]", "Read settings", "server"),
    ("CONFIG SET", "parameter value [parameter value ...]", "Change settings", "server"),
    ("COMMAND", "[subcommand]", "Command table", "server"),
    ("COMMAND DOCS", "[command-name [command-name ...]]", "Command documentation", "server"),
    ("FLUSHALL", "[ASYNC|SYNC]", "Delete every key", "server"),
    ("QUIT", "", "Close the connection", "connection"),
    ("SHUTDOWN", "[NOSAVE|SAVE] [NOW] [FORCE] [ABORT]", "Stop the server", "server"),
];

/// Every command the REPL can complete and hint.
#[derive(Clone, Debug, Default)]
pub struct CommandTable {
    commands: BTreeMap<String, CommandDoc>,
}

impl CommandTable {
    /// The built-in table alone.
    pub fn builtin() -> CommandTable {
        let mut table = CommandTable::default();
        for &(name, params, summary, group) in BUILTIN {
            let doc = |name: &str| CommandDoc {
                name: name.to_string(),
                params: params.to_string(),
                summary: summary.to_string(),
                group: group.to_string(),
                subcommands: BTreeMap::new(),
            };
            match name.split_once(' ') {
                Some((parent, sub)) => {
                    if let Some(parent) = table.commands.get_mut(parent) {
                        parent.subcommands.insert(sub.to_string(), doc(sub));
                    }
                }
                None => {
                    table.commands.insert(name.to_string(), doc(name));
                }
            }
        }
        table
    }

    /// The server's `COMMAND DOCS` reply (RESP2 or RESP3) over the built-in
    /// table. An unreadable reply leaves the built-in table.
    pub fn with_server_docs(docs: &Value) -> CommandTable {
        let mut table = CommandTable::builtin();
        for (name, doc) in parse_docs(docs) {
            table.commands.insert(name, doc);
        }
        table
    }

    /// Number of top-level commands.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The command, or subcommand, named by the first words of `words`,
    /// and how many words named it.
    pub fn lookup(&self, words: &[String]) -> Option<(&CommandDoc, usize)> {
        let doc = self.commands.get(&words.first()?.to_ascii_uppercase())?;
        if let Some(sub) = words
            .get(1)
            .and_then(|w| doc.subcommands.get(&w.to_ascii_uppercase()))
        {
            return Some((sub, 2));
        }
        Some((doc, 1))
    }

    /// The argument hint for the line typed so far (cursor at its end), as
    /// redis-cli shows it greyed after the cursor: the arguments still to
    /// type. `None` when the command is unknown or nothing is left.
    pub fn hint(&self, line: &str) -> Option<String> {
        let words = crate::protocol::split_args(line.as_bytes()).ok()?;
        let words: Vec<String> = words
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let (doc, named_by) = self.lookup(&words)?;
        let ends_in_space = line.ends_with([' ', '\t']);
        let params = if named_by == 1 && !doc.subcommands.is_empty() {
            let names: Vec<&str> = doc.subcommands.keys().map(String::as_str).collect();
            names.join("|")
        } else {
            doc.params.clone()
        };
        if !ends_in_space {
            // Still typing a word: hint only right after a complete name.
            return (words.len() == named_by && !params.is_empty()).then(|| format!(" {params}"));
        }
        let typed = words.len() - named_by;
        let rest = remaining_params(&params, typed);
        (!rest.is_empty()).then_some(rest)
    }

    /// Completion candidates for the word that ends at the cursor: command
    /// names for the first word, subcommand names for the second. Returns
    /// the byte offset where that word starts. Candidates keep the case the
    /// user typed in (lower case when the word is lower case, as redis-cli).
    pub fn complete(&self, line: &str) -> (usize, Vec<String>) {
        let start = line.rfind([' ', '\t']).map_or(0, |i| i + 1);
        let word = &line[start..];
        let before: Vec<&str> = line[..start].split_whitespace().collect();
        let lower = !word.is_empty() && word.chars().all(|c| !c.is_ascii_uppercase());
        let matching = |names: &mut dyn Iterator<Item = &String>| -> Vec<String> {
            names
                .filter(|n| n.starts_with(&word.to_ascii_uppercase()))
                .map(|n| {
                    if lower {
                        n.to_ascii_lowercase()
                    } else {
                        n.clone()
                    }
                })
                .collect()
        };
        let candidates = match before.as_slice() {
            [] if word.starts_with(':') => super::repl::HELPERS
                .iter()
                .map(|(name, _, _)| name.to_string())
                .filter(|name| name.starts_with(word))
                .collect(),
            [] => matching(&mut self.commands.keys()),
            [parent] => match self.commands.get(&parent.to_ascii_uppercase()) {
                Some(doc) => matching(&mut doc.subcommands.keys()),
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        (start, candidates)
    }

    /// `help <command>` text: usage line, summary and group.
    pub fn help(&self, words: &[String]) -> Option<String> {
        let (doc, named_by) = self.lookup(words)?;
        let name: Vec<String> = words[..named_by]
            .iter()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let mut text = format!(
            "\n  {} {}\n  summary: {}\n  group: {}\n",
            name.join(" "),
            doc.params,
            doc.summary,
            doc.group
        );
        if named_by == 1 && !doc.subcommands.is_empty() {
            let subs: Vec<&str> = doc.subcommands.keys().map(String::as_str).collect();
            text.push_str(&format!("  subcommands: {}\n", subs.join(", ")));
        }
        Some(text)
    }
}

/// The parameters still to type after `typed` arguments: required,
/// single arguments are consumed one each; at the first optional or repeated
/// one we can no longer tell which the user is typing, so the rest is shown.
fn remaining_params(params: &str, typed: usize) -> String {
    let items = top_level_items(params);
    let mut skip = 0;
    for item in items.iter().take(typed) {
        if item.starts_with('[') || item.contains("...") {
            break;
        }
        skip += 1;
    }
    items[skip..].join(" ")
}

/// `key value [NX|XX] [EX seconds|PX ms]` -> `key`, `value`, `[NX|XX]`,
/// `[EX seconds|PX ms]`: split on spaces outside brackets.
fn top_level_items(params: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in params.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ' ' if depth == 0 => {
                if i > start {
                    items.push(&params[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < params.len() {
        items.push(&params[start..]);
    }
    items
}

/// Field `name` of a RESP3 map or RESP2 flat array.
fn field<'a>(map: &'a Value, name: &str) -> Option<&'a Value> {
    map.to_pairs()?
        .into_iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

fn text_field(map: &Value, name: &str) -> String {
    field(map, name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn parse_docs(docs: &Value) -> Vec<(String, CommandDoc)> {
    let Some(pairs) = docs.to_pairs() else {
        return Vec::new();
    };
    pairs
        .into_iter()
        .filter_map(|(name, doc)| {
            let full = name.as_str()?.to_ascii_uppercase();
            // Subcommands are named `parent|sub`.
            let short = full.rsplit('|').next().unwrap_or(&full).to_string();
            Some((short.clone(), parse_doc(short, doc)))
        })
        .collect()
}

fn parse_doc(name: String, doc: &Value) -> CommandDoc {
    let params = field(doc, "arguments")
        .and_then(Value::as_array)
        .map(|args| render_args(args, " "))
        .unwrap_or_default();
    let subcommands = field(doc, "subcommands")
        .map(parse_docs)
        .unwrap_or_default()
        .into_iter()
        .collect();
    CommandDoc {
        name,
        params,
        summary: text_field(doc, "summary"),
        group: text_field(doc, "group"),
        subcommands,
    }
}

fn render_args(args: &[Value], separator: &str) -> String {
    args.iter()
        .map(render_arg)
        .collect::<Vec<_>>()
        .join(separator)
}

/// One argument as redis-cli renders it: `[TOKEN name]` when optional,
/// `name [name ...]` when repeated, `a|b` for a choice, `a b` for a block.
fn render_arg(arg: &Value) -> String {
    let kind = text_field(arg, "type");
    let token = field(arg, "token").and_then(Value::as_str);
    let flags: Vec<String> = field(arg, "flags")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let has = |flag: &str| flags.iter().any(|f| f == flag);
    let children = field(arg, "arguments")
        .and_then(Value::as_array)
        .unwrap_or(&[]);
    let body = match kind.as_str() {
        "oneof" => render_args(children, "|"),
        "block" => render_args(children, " "),
        "pure-token" => String::new(),
        _ => {
            let display = text_field(arg, "display_text");
            if display.is_empty() {
                text_field(arg, "name")
            } else {
                display
            }
        }
    };
    let with_token = match token {
        Some(token) if body.is_empty() => token.to_string(),
        Some(token) => format!("{token} {body}"),
        None => body.clone(),
    };
    let mut out = with_token.clone();
    if has("multiple") {
        let repeated = if has("multiple_token") {
            &with_token
        } else {
            &body
        };
        out = format!("{out} [{repeated} ...]");
    }
    if has("optional") {
        out = format!("[{out}]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(text: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    fn flags(names: &[&str]) -> Value {
        Value::Set(names.iter().map(|n| Value::Status(n.to_string())).collect())
    }

    /// `SET`'s docs as Redis 7 sends them (abridged to the parts rendered).
    fn set_docs() -> Value {
        map(vec![(
            "set",
            map(vec![
                ("summary", s("Set the string value of a key")),
                ("group", s("string")),
                (
                    "arguments",
                    Value::Array(vec![
                        map(vec![("name", s("key")), ("type", s("key"))]),
                        map(vec![("name", s("value")), ("type", s("string"))]),
                        map(vec![
                            ("name", s("condition")),
                            ("type", s("oneof")),
                            ("flags", flags(&["optional"])),
                            (
                                "arguments",
                                Value::Array(vec![
                                    map(vec![
                                        ("name", s("nx")),
                                        ("type", s("pure-token")),
                                        ("token", s("NX")),
                                    ]),
                                    map(vec![
                                        ("name", s("xx")),
                                        ("type", s("pure-token")),
                                        ("token", s("XX")),
                                    ]),
                                ]),
                            ),
                        ]),
                        map(vec![
                            ("name", s("expiration")),
                            ("type", s("oneof")),
                            ("flags", flags(&["optional"])),
                            (
                                "arguments",
                                Value::Array(vec![
                                    map(vec![
                                        ("name", s("seconds")),
                                        ("type", s("integer")),
                                        ("token", s("EX")),
                                    ]),
                                    map(vec![
                                        ("name", s("unix-time-seconds")),
                                        ("type", s("unix-time")),
                                        ("token", s("EXAT")),
                                    ]),
                                ]),
                            ),
                        ]),
                    ]),
                ),
            ]),
        )])
    }

    #[test]
    fn server_docs_render_as_redis_cli_hints() {
        let table = CommandTable::with_server_docs(&set_docs());
        let (doc, _) = table.lookup(&["set".to_string()]).unwrap();
        assert_eq!(
            doc.params,
            "key value [NX|XX] [EX seconds|EXAT unix-time-seconds]"
        );
        assert_eq!(doc.summary, "Set the string value of a key");
    }

    #[test]
    fn repeated_arguments_render_with_an_ellipsis() {
        let arg = map(vec![
            ("name", s("key")),
            ("type", s("key")),
            ("flags", flags(&["multiple"])),
        ]);
        assert_eq!(render_arg(&arg), "key [key ...]");
        let block = map(vec![
            ("name", s("data")),
            ("type", s("block")),
            ("flags", flags(&["multiple"])),
            (
                "arguments",
                Value::Array(vec![
                    map(vec![("name", s("key")), ("type", s("key"))]),
                    map(vec![("name", s("value")), ("type", s("string"))]),
                ]),
            ),
        ]);
        assert_eq!(render_arg(&block), "key value [key value ...]");
        let tokened = map(vec![
            ("name", s("pattern")),
            ("type", s("pattern")),
            ("token", s("MATCH")),
            ("flags", flags(&["optional"])),
        ]);
        assert_eq!(render_arg(&tokened), "[MATCH pattern]");
    }

    #[test]
    fn resp2_flat_array_docs_are_read_too() {
        let flat = Value::Array(vec![
            s("get"),
            Value::Array(vec![
                s("summary"),
                s("Get the value of a key"),
                s("arguments"),
                Value::Array(vec![Value::Array(vec![
                    s("name"),
                    s("key"),
                    s("type"),
                    s("key"),
                ])]),
            ]),
        ]);
        let table = CommandTable::with_server_docs(&flat);
        assert_eq!(table.lookup(&["GET".into()]).unwrap().0.params, "key");
    }

    #[test]
    fn hints_show_the_arguments_still_to_type() {
        let table = CommandTable::builtin();
        assert_eq!(table.hint("set").as_deref(), Some(" key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]"));
        assert_eq!(table.hint("SET k ").as_deref(), Some("value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]"));
        assert_eq!(table.hint("SET k v NX ").as_deref(), Some("[NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]"));
        assert_eq!(table.hint("resolve k ").as_deref(), Some("context value"));
        assert_eq!(table.hint("GET k "), None);
        assert_eq!(table.hint("GE"), None);
        assert_eq!(table.hint("nosuch "), None);
        assert_eq!(table.hint("CLUSTER MEET ").as_deref(), Some("host port"));
        assert!(table.hint("cluster ").unwrap().contains("MEET|NODES"));
    }

    #[test]
    fn completion_offers_commands_then_subcommands_in_the_typed_case() {
        let table = CommandTable::builtin();
        assert_eq!(table.complete("vc"), (0, vec!["vclock".to_string()]));
        assert_eq!(table.complete("RES"), (0, vec!["RESOLVE".to_string()]));
        let (start, subs) = table.complete("cluster pre");
        assert_eq!((start, subs), (8, vec!["preflist".to_string()]));
        assert_eq!(table.complete("GET k"), (4, vec![]));
        assert_eq!(table.complete(":re").1, vec![":resolve".to_string()]);
    }

    #[test]
    fn server_docs_keep_builtin_ringkv_commands() {
        let table = CommandTable::with_server_docs(&set_docs());
        assert!(table.lookup(&["VCLOCK".into()]).is_some());
        assert!(table
            .help(&["cluster".into(), "preflist".into()])
            .unwrap()
            .contains("CLUSTER PREFLIST key"));
    }
}
