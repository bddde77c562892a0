//! `COMMAND` and its subcommands, rendered from the command table in Redis 7's
//! reply shapes.
//!
//! `COMMAND INFO` gives each command as Redis' 10-element array: name, arity,
//! flags, first key, last key, step, ACL categories, tips, key specs and
//! subcommands. `COMMAND DOCS` gives a map per command with summary, since,
//! group, complexity and the argument tree that redis-cli turns into hints.

use bytes::Bytes;

use super::table::{lookup, ArgDoc, CommandSpec, COMMANDS};
use crate::protocol::Reply;
use crate::server::keyspace::glob;

/// `COMMAND HELP`.
pub const COMMAND_HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "LIST",
    "    Return a list of all commands in this server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "LIST [FILTERBY (ACLCAT <cat> | PATTERN <pattern>)]",
    "    Return a list of all commands in this server, optionally filtered.",
    "HELP",
    "    Print this help.",
];

fn simple_set(items: impl IntoIterator<Item = &'static str>) -> Reply {
    Reply::Set(items.into_iter().map(Reply::Simple).collect())
}

/// One command as `COMMAND INFO` shows it.
fn info_entry(c: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(c.name),
        Reply::Integer(c.arity as i64),
        simple_set(c.flag_names()),
        Reply::Integer(c.first_key as i64),
        Reply::Integer(c.last_key as i64),
        Reply::Integer(c.step as i64),
        simple_set(c.acl_categories()),
        Reply::Set(Vec::new()),
        key_specs(c),
        Reply::Array(c.subcommands.iter().map(info_entry).collect()),
    ])
}

/// Key specs derived from the key positions: one "index, then range" spec.
fn key_specs(c: &CommandSpec) -> Reply {
    if c.first_key == 0 {
        return Reply::Set(Vec::new());
    }
    let flags = if c.has(super::table::flag::WRITE) {
        ["RW", "UPDATE"]
    } else {
        ["RO", "ACCESS"]
    };
    let lastkey = if c.last_key < 0 {
        c.last_key
    } else {
        c.last_key - c.first_key
    };
    let m = |pairs: Vec<(&'static str, Reply)>| {
        Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Reply::bulk(k), v))
                .collect(),
        )
    };
    Reply::Set(vec![m(vec![
        ("flags", simple_set(flags)),
        (
            "begin_search",
            m(vec![
                ("type", Reply::bulk("index")),
                (
                    "spec",
                    m(vec![("index", Reply::Integer(c.first_key as i64))]),
                ),
            ]),
        ),
        (
            "find_keys",
            m(vec![
                ("type", Reply::bulk("range")),
                (
                    "spec",
                    m(vec![
                        ("lastkey", Reply::Integer(lastkey as i64)),
                        ("keystep", Reply::Integer(c.step as i64)),
                        ("limit", Reply::Integer(0)),
                    ]),
                ),
            ]),
        ),
    ])])
}

/// Bare `COMMAND`: every command's info.
pub fn command_all() -> Reply {
    Reply::Array(COMMANDS.iter().map(info_entry).collect())
}

/// `COMMAND INFO [name ...]`: null for names that are not commands.
pub fn command_info(args: &[Bytes]) -> Reply {
    if args.len() == 2 {
        return command_all();
    }
    Reply::Array(
        args[2..]
            .iter()
            .map(|name| find(name).map_or(Reply::NullArray, info_entry))
            .collect(),
    )
}

/// A command or `container|sub` subcommand by name.
fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    match name.iter().position(|&b| b == b'|') {
        None => lookup(name),
        Some(bar) => lookup(&name[..bar])?.subcommand(&name[bar + 1..]),
    }
}

fn arg_doc(a: &ArgDoc) -> Reply {
    let mut m = vec![
        (Reply::bulk("name"), Reply::bulk(a.name)),
        (Reply::bulk("type"), Reply::bulk(a.kind.as_str())),
    ];
    if a.kind == super::table::ArgType::Key {
        m.push((Reply::bulk("key_spec_index"), Reply::Integer(0)));
    }
    if let Some(t) = a.token {
        m.push((Reply::bulk("token"), Reply::bulk(t)));
    }
    let flags: Vec<&'static str> = [(a.optional, "optional"), (a.multiple, "multiple")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect();
    if !flags.is_empty() {
        m.push((Reply::bulk("flags"), simple_set(flags)));
    }
    if !a.args.is_empty() {
        m.push((
            Reply::bulk("arguments"),
            Reply::Array(a.args.iter().map(arg_doc).collect()),
        ));
    }
    Reply::Map(m)
}

fn doc_entry(c: &CommandSpec) -> Reply {
    let mut m = vec![
        (Reply::bulk("summary"), Reply::bulk(c.summary)),
        (Reply::bulk("since"), Reply::bulk(c.since)),
        (Reply::bulk("group"), Reply::bulk(c.group)),
        (Reply::bulk("complexity"), Reply::bulk(c.complexity)),
    ];
    if !c.args.is_empty() {
        m.push((
            Reply::bulk("arguments"),
            Reply::Array(c.args.iter().map(arg_doc).collect()),
        ));
    }
    if !c.subcommands.is_empty() {
        m.push((
            Reply::bulk("subcommands"),
            Reply::Map(
                c.subcommands
                    .iter()
                    .map(|s| (Reply::bulk(s.name), doc_entry(s)))
                    .collect(),
            ),
        ));
    }
    Reply::Map(m)
}

/// `COMMAND DOCS [name ...]`: a map from name to docs; unknown names are
/// left out, as in Redis.
pub fn command_docs(args: &[Bytes]) -> Reply {
    let specs: Vec<&CommandSpec> = if args.len() == 2 {
        COMMANDS.iter().collect()
    } else {
        args[2..].iter().filter_map(|n| find(n)).collect()
    };
    Reply::Map(
        specs
            .into_iter()
            .map(|c| (Reply::bulk(c.name), doc_entry(c)))
            .collect(),
    )
}

/// Every command name, subcommands included (`config|get`).
fn all_names() -> impl Iterator<Item = &'static CommandSpec> {
    COMMANDS
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
}

/// `COMMAND LIST [FILTERBY ACLCAT cat | PATTERN pattern]`.
pub fn command_list(args: &[Bytes]) -> Reply {
    let names: Vec<Reply> = match args.len() {
        2 => all_names().map(|c| Reply::bulk(c.name)).collect(),
        5 if args[2].eq_ignore_ascii_case(b"FILTERBY") => {
            let value = &args[4];
            if args[3].eq_ignore_ascii_case(b"PATTERN") {
                // Names are lowercase and Redis matches them ignoring case.
                let pattern = value.to_ascii_lowercase();
                all_names()
                    .filter(|c| glob::matches(&pattern, c.name.as_bytes()))
                    .map(|c| Reply::bulk(c.name))
                    .collect()
            } else if args[3].eq_ignore_ascii_case(b"ACLCAT") {
                all_names()
                    .filter(|c| {
                        c.acl_categories()
                            .iter()
                            .any(|cat| cat.as_bytes()[1..].eq_ignore_ascii_case(value))
                    })
                    .map(|c| Reply::bulk(c.name))
                    .collect()
            } else {
                return Reply::err("syntax error");
            }
        }
        _ => return Reply::err("syntax error"),
    };
    Reply::Array(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn command_info_has_ten_elements_and_null_for_unknown() {
        let Reply::Array(items) = command_info(&args(&["command", "info", "get", "nope"])) else {
            panic!("not an array")
        };
        let Reply::Array(get) = &items[0] else {
            panic!("not an array")
        };
        assert_eq!(get.len(), 10);
        assert_eq!(get[0], Reply::bulk("get"));
        assert_eq!(get[1], Reply::Integer(2));
        assert_eq!(items[1], Reply::NullArray);
    }

    #[test]
    fn command_docs_describes_set_arguments_and_is_never_empty() {
        let Reply::Map(docs) = command_docs(&args(&["command", "docs", "set"])) else {
            panic!("not a map")
        };
        assert_eq!(docs.len(), 1);
        let text = format!("{:?}", docs[0].1);
        assert!(text.contains("KEEPTTL") && text.contains("arguments"));
        let Reply::Map(all) = command_docs(&args(&["command", "docs"])) else {
            panic!("not a map")
        };
        assert_eq!(all.len(), COMMANDS.len());
    }

    #[test]
    fn command_list_filters_by_pattern_and_category() {
        let Reply::Array(names) = command_list(&args(&[
            "command", "list", "filterby", "pattern", "config|*",
        ])) else {
            panic!("not an array")
        };
        assert!(names.contains(&Reply::bulk("config|get")));
        let Reply::Array(names) =
            command_list(&args(&["command", "list", "FILTERBY", "ACLCAT", "string"]))
        else {
            panic!("not an array")
        };
        assert!(names.contains(&Reply::bulk("incr")));
        assert!(!names.contains(&Reply::bulk("del")));
    }
}
