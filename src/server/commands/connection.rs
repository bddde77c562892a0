//! Connection commands: PING, HELLO, AUTH, SELECT and CLIENT's subcommands
//! (ECHO and QUIT are one-liners in `commands::run`).
//!
//! Texts follow Redis 7. One departure: `HELLO` reports `server: ringkv` (so a
//! human can tell what answered) but `version: 7.2.0` (see
//! [`REDIS_COMPAT_VERSION`]) because client libraries gate features on it.
//! Authentication knows one user, `default`, whose password is
//! `requirepass`; with no `requirepass` the default user needs no password,
//! exactly as in Redis.

use std::time::Instant;

use bytes::Bytes;

use super::parse_i64;
use crate::protocol::ProtocolVersion;
use crate::protocol::Reply;
use crate::server::dispatch::Ctx;
use crate::server::REDIS_COMPAT_VERSION;

/// `CLIENT HELP`.
pub const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "    * ID <id> [<id> ...]",
    "      Return clients with the given ids.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "HELP",
    "    Print this help.",
];

/// `PING [message]`.
pub fn ping(args: &[Bytes]) -> Reply {
    match args.len() {
        1 => Reply::Simple("PONG"),
        2 => Reply::Bulk(args[1].clone()),
        _ => Reply::err("wrong number of arguments for 'ping' command"),
    }
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Checks `user`/`password` against the one user, `default`.
fn authenticate(ctx: &mut Ctx<'_>, user: &[u8], password: &[u8]) -> Result<(), Reply> {
    let ok = user == b"default"
        && match ctx.shared.live.requirepass() {
            None => true,
            Some(expected) => constant_time_eq(expected.as_bytes(), password),
        };
    if ok {
        ctx.session.authenticated = true;
        Ok(())
    } else {
        Err(Reply::Error(WRONGPASS.into()))
    }
}

/// Compares without leaking, through timing, how long a prefix matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `AUTH [username] password`.
pub fn auth(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    let (user, password): (&[u8], &[u8]) = match args.len() {
        2 => {
            if ctx.shared.live.requirepass().is_none() {
                return Reply::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                );
            }
            (b"default", &args[1])
        }
        3 => (&args[1], &args[2]),
        _ => return Reply::err("syntax error"),
    };
    match authenticate(ctx, user, password) {
        Ok(()) => Reply::OK,
        Err(e) => e,
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
pub fn hello(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    let mut protocol = ctx.session.protocol;
    if args.len() >= 2 {
        protocol = match parse_i64(&args[1]) {
            None => return Reply::err("Protocol version is not an integer or out of range"),
            Some(2) => ProtocolVersion::Resp2,
            Some(3) => ProtocolVersion::Resp3,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
        };
    }
    let mut credentials = None;
    let mut name = None;
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            credentials = Some((&args[j + 1], &args[j + 2]));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            name = Some(&args[j + 1]);
            j += 2;
        } else {
            return Reply::err(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    if let Some((user, password)) = credentials {
        if let Err(e) = authenticate(ctx, user, password) {
            return e;
        }
    }
    if !ctx.session.authenticated {
        return Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
        );
    }
    if let Some(name) = name {
        if let Err(e) = set_name(ctx, name) {
            return e;
        }
    }
    ctx.session.protocol = protocol;
    let proto = match protocol {
        ProtocolVersion::Resp2 => 2,
        ProtocolVersion::Resp3 => 3,
    };
    ctx.client.set_resp(proto as u8);
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("ringkv")),
        (Reply::bulk("version"), Reply::bulk(REDIS_COMPAT_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(proto)),
        (Reply::bulk("id"), Reply::Integer(ctx.session.id.0 as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

/// `SELECT index`: ringkv has one database, 0.
pub fn select(args: &[Bytes]) -> Reply {
    match parse_i64(&args[1]) {
        None => Reply::err("value is not an integer or out of range"),
        Some(0) => Reply::OK,
        Some(_) => Reply::err("DB index is out of range"),
    }
}

/// Redis allows names and library info made of printable ASCII without spaces.
fn is_printable_token(v: &[u8]) -> bool {
    v.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn set_name(ctx: &mut Ctx<'_>, name: &[u8]) -> Result<(), Reply> {
    if !is_printable_token(name) {
        return Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    let name = String::from_utf8_lossy(name).into_owned();
    ctx.client.with_meta(|m| m.name = name);
    Ok(())
}

/// `CLIENT SETNAME name` (an empty name clears it).
pub fn client_setname(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    match set_name(ctx, &args[2]) {
        Ok(()) => Reply::OK,
        Err(e) => e,
    }
}

/// `CLIENT GETNAME`.
pub fn client_getname(ctx: &mut Ctx<'_>) -> Reply {
    let name = ctx.client.with_meta(|m| m.name.clone());
    if name.is_empty() {
        Reply::Null
    } else {
        Reply::bulk(name)
    }
}

/// `CLIENT SETINFO LIB-NAME|LIB-VER value`.
pub fn client_setinfo(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    let attr = &args[2];
    let is_name = attr.eq_ignore_ascii_case(b"LIB-NAME");
    if !is_name && !attr.eq_ignore_ascii_case(b"LIB-VER") {
        return Reply::err(format!(
            "Unrecognized option '{}'",
            String::from_utf8_lossy(attr)
        ));
    }
    if !is_printable_token(&args[3]) {
        return Reply::err(format!(
            "{} cannot contain spaces, newlines or special characters.",
            if is_name { "lib-name" } else { "lib-ver" }
        ));
    }
    let value = String::from_utf8_lossy(&args[3]).into_owned();
    ctx.client.with_meta(|m| {
        if is_name {
            m.lib_name = value;
        } else {
            m.lib_ver = value;
        }
    });
    Reply::OK
}

/// `CLIENT LIST [TYPE type] [ID id ...]`.
pub fn client_list(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    let mut ids: Option<Vec<u64>> = None;
    if args.len() == 4 && args[2].eq_ignore_ascii_case(b"TYPE") {
        let t = &args[3];
        if t.eq_ignore_ascii_case(b"normal") {
            // Every ringkv client is a normal client.
        } else if ["master", "replica", "slave", "pubsub"]
            .iter()
            .any(|k| t.eq_ignore_ascii_case(k.as_bytes()))
        {
            return Reply::Verbatim(String::new());
        } else {
            return Reply::err(format!(
                "Unknown client type '{}'",
                String::from_utf8_lossy(t)
            ));
        }
    } else if args.len() > 3 && args[2].eq_ignore_ascii_case(b"ID") {
        let mut wanted = Vec::with_capacity(args.len() - 3);
        for a in &args[3..] {
            match parse_i64(a) {
                Some(id) if id > 0 => wanted.push(id as u64),
                _ => return Reply::err("Invalid client ID"),
            }
        }
        ids = Some(wanted);
    } else if args.len() != 2 {
        return Reply::err("syntax error");
    }
    let now = Instant::now();
    ctx.client.touch(now, "client|list");
    let mut out = String::new();
    for c in ctx.shared.clients.snapshot() {
        if ids.as_ref().is_none_or(|w| w.contains(&c.id.0)) {
            out.push_str(&c.describe(now));
        }
    }
    Reply::Verbatim(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }

    #[test]
    fn select_accepts_only_database_zero() {
        let a = |s: &str| {
            vec![
                Bytes::from_static(b"select"),
                Bytes::copy_from_slice(s.as_bytes()),
            ]
        };
        assert_eq!(select(&a("0")), Reply::OK);
        assert_eq!(select(&a("1")), Reply::err("DB index is out of range"));
        assert_eq!(
            select(&a("x")),
            Reply::err("value is not an integer or out of range")
        );
    }
}
