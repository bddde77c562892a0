//! Connection and server commands through the Rust `redis` crate, over RESP2
//! and RESP3, against an in-process server.

mod server_support;

use redis::{RedisError, Value};
use server_support::TestServer;

/// The full error line a client sees: `CODE detail`.
fn err_line(e: RedisError) -> String {
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or(""))
}

fn query<T: redis::FromRedisValue>(
    c: &mut redis::Connection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

fn error_of(c: &mut redis::Connection, args: &[&str]) -> String {
    err_line(query::<Value>(c, args).expect_err("expected an error reply"))
}

#[test]
fn ping_echo_time_and_select_answer_like_redis() {
    let server = TestServer::start();
    let mut c = server.client();
    assert_eq!(query::<String>(&mut c, &["PING"]).unwrap(), "PONG");
    assert_eq!(query::<String>(&mut c, &["PING", "hi"]).unwrap(), "hi");
    assert_eq!(
        query::<Vec<u8>>(&mut c, &["ECHO", "a\r\nb"]).unwrap(),
        b"a\r\nb"
    );
    let time: Vec<u64> = query(&mut c, &["TIME"]).unwrap();
    assert!(time[0] > 1_700_000_000 && time[1] < 1_000_000);
    assert_eq!(query::<String>(&mut c, &["SELECT", "0"]).unwrap(), "OK");
    assert_eq!(
        error_of(&mut c, &["SELECT", "1"]),
        "ERR DB index is out of range"
    );
    assert_eq!(
        error_of(&mut c, &["SELECT", "x"]),
        "ERR value is not an integer or out of range"
    );
}

#[test]
fn unknown_commands_and_wrong_arity_use_redis_7_wording() {
    let server = TestServer::start();
    let mut c = server.client();
    assert_eq!(
        error_of(&mut c, &["HSET", "h", "f", "v"]),
        "ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "
    );
    assert_eq!(
        error_of(&mut c, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error_of(&mut c, &["client", "setname"]),
        "ERR wrong number of arguments for 'client|setname' command"
    );
    assert_eq!(
        error_of(&mut c, &["CLIENT", "kill", "x"]),
        "ERR unknown subcommand 'kill'. Try CLIENT HELP."
    );
    // The connection is still usable after errors.
    assert_eq!(query::<String>(&mut c, &["PING"]).unwrap(), "PONG");
}

#[test]
fn hello_switches_protocols_and_rejects_version_4() {
    let server = TestServer::start();
    let mut c = server.client();
    let reply: Value = query(&mut c, &["HELLO", "2"]).unwrap();
    let Value::Array(fields) = reply else {
        panic!("HELLO 2 must answer a flat array, got {reply:?}")
    };
    assert_eq!(fields.len(), 14);
    assert_eq!(fields[0], Value::BulkString(b"server".to_vec()));
    assert_eq!(fields[1], Value::BulkString(b"ringkv".to_vec()));
    assert_eq!(fields[5], Value::Int(2));
    assert_eq!(
        error_of(&mut c, &["HELLO", "4"]),
        "NOPROTO unsupported protocol version"
    );

    let mut c3 = server.client3();
    let reply: Value = query(&mut c3, &["HELLO", "3"]).unwrap();
    let Value::Map(pairs) = reply else {
        panic!("HELLO 3 must answer a map, got {reply:?}")
    };
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == Value::BulkString(k.as_bytes().to_vec()))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("proto"), Some(Value::Int(3)));
    assert_eq!(get("version"), Some(Value::BulkString(b"7.2.0".to_vec())));
    assert_eq!(get("mode"), Some(Value::BulkString(b"standalone".to_vec())));
    assert_eq!(get("role"), Some(Value::BulkString(b"master".to_vec())));
    assert_eq!(get("modules"), Some(Value::Array(vec![])));
    assert!(matches!(get("id"), Some(Value::Int(id)) if id > 0));
}

#[test]
fn requirepass_makes_every_command_but_auth_hello_quit_answer_noauth() {
    let server = TestServer::with_config(|c| c.requirepass = Some("s3cret".into()));
    let mut raw = server.raw();
    use server_support::Resp;
    assert_eq!(
        raw.call(&["GET", "k"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        raw.call(&["PING"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        raw.call(&["AUTH", "wrong"]),
        Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert!(
        matches!(raw.call(&["HELLO", "3"]), Resp::Error(e) if e.starts_with("NOAUTH HELLO must be called"))
    );
    assert_eq!(raw.call(&["AUTH", "s3cret"]), Resp::Simple("OK".into()));
    assert_eq!(raw.call(&["PING"]), Resp::Simple("PONG".into()));

    // HELLO 3 AUTH authenticates and switches protocol at once.
    let mut raw = server.raw();
    let Resp::Map(_) = raw.call(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me"])
    else {
        panic!("HELLO 3 AUTH must answer a RESP3 map")
    };
    assert_eq!(raw.call(&["CLIENT", "GETNAME"]), Resp::bulk("me"));
    let mut raw = server.raw();
    assert_eq!(raw.call(&["QUIT"]), Resp::Simple("OK".into()));
    assert!(raw.is_closed());

    // The redis crate authenticates through the URL.
    let url = format!("redis://:s3cret@{}/", server.addr);
    let mut c = server.client_url(&url);
    assert_eq!(query::<String>(&mut c, &["PING"]).unwrap(), "PONG");
}

#[test]
fn auth_without_a_configured_password_is_an_error() {
    let server = TestServer::start();
    let mut c = server.client();
    assert_eq!(
        error_of(&mut c, &["AUTH", "x"]),
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
    );
}

#[test]
fn client_subcommands_report_this_connection() {
    let server = TestServer::start();
    let mut c = server.client();
    let id: i64 = query(&mut c, &["CLIENT", "ID"]).unwrap();
    assert!(id > 0);
    assert_eq!(
        query::<Option<String>>(&mut c, &["CLIENT", "GETNAME"]).unwrap(),
        None
    );
    assert_eq!(
        query::<String>(&mut c, &["CLIENT", "SETNAME", "worker-1"]).unwrap(),
        "OK"
    );
    assert_eq!(
        query::<String>(&mut c, &["CLIENT", "GETNAME"]).unwrap(),
        "worker-1"
    );
    assert_eq!(
        error_of(&mut c, &["CLIENT", "SETNAME", "has space"]),
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(
        query::<String>(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]).unwrap(),
        "OK"
    );
    let info: String = query(&mut c, &["CLIENT", "INFO"]).unwrap();
    assert!(info.starts_with(&format!("id={id} ")), "{info}");
    assert!(
        info.contains(" name=worker-1 ") && info.contains(" lib-name=mylib "),
        "{info}"
    );
    assert!(info.contains(" cmd=client|info "), "{info}");

    let mut other = server.client();
    query::<String>(&mut other, &["CLIENT", "SETNAME", "other"]).unwrap();
    let list: String = query(&mut c, &["CLIENT", "LIST"]).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("name=worker-1") && list.contains("name=other"));
    let mine: String = query(&mut c, &["CLIENT", "LIST", "ID", &id.to_string()]).unwrap();
    assert_eq!(mine.lines().count(), 1);
}

#[test]
fn command_introspection_is_answered_for_real() {
    let server = TestServer::start();
    let mut c = server.client();
    let count: i64 = query(&mut c, &["COMMAND", "COUNT"]).unwrap();
    assert!(count >= 50, "{count}");
    let all: Vec<Value> = query(&mut c, &["COMMAND"]).unwrap();
    assert_eq!(all.len() as i64, count);

    let info: Vec<Value> = query(&mut c, &["COMMAND", "INFO", "get", "nosuch"]).unwrap();
    let Value::Array(get) = &info[0] else {
        panic!("{info:?}")
    };
    assert_eq!(get.len(), 10);
    assert_eq!(get[0], Value::BulkString(b"get".to_vec()));
    assert_eq!(get[1], Value::Int(2));
    assert_eq!(info[1], Value::Nil);

    let docs: Value = query(&mut c, &["COMMAND", "DOCS", "set"]).unwrap();
    let text = format!("{docs:?}");
    assert!(
        text.contains("arguments") && text.contains("KEEPTTL"),
        "{text}"
    );

    let names: Vec<String> = query(&mut c, &["COMMAND", "LIST"]).unwrap();
    assert!(names.contains(&"config|get".to_string()) && names.contains(&"vclock".to_string()));
}

#[test]
fn config_get_and_set_cover_the_settings_that_exist() {
    let server = TestServer::start();
    let mut c = server.client();
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "maxclients"]).unwrap();
    assert_eq!(got, vec!["maxclients", "10000"]);
    assert_eq!(
        query::<String>(
            &mut c,
            &["CONFIG", "SET", "maxclients", "50", "timeout", "300"]
        )
        .unwrap(),
        "OK"
    );
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "max*", "timeout"]).unwrap();
    assert_eq!(got, vec!["maxclients", "50", "timeout", "300"]);
    // The engine fixes its fsync policy at open: only the current one is accepted.
    assert_eq!(
        query::<String>(&mut c, &["CONFIG", "SET", "appendfsync", "everysec"]).unwrap(),
        "OK"
    );
    assert!(
        error_of(&mut c, &["CONFIG", "SET", "appendfsync", "always"])
            .contains("restart with --fsync always")
    );
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "appendfsync"]).unwrap();
    assert_eq!(got, vec!["appendfsync", "everysec"]);
    assert_eq!(
        error_of(&mut c, &["CONFIG", "SET", "nosuch", "1"]),
        "ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"
    );
    assert!(
        error_of(&mut c, &["CONFIG", "SET", "port", "1"]).contains("can't set immutable config")
    );
    // All or nothing: a bad second pair leaves the first unapplied.
    assert!(error_of(
        &mut c,
        &["CONFIG", "SET", "maxclients", "7", "timeout", "x"]
    )
    .contains("'timeout'"));
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "maxclients"]).unwrap();
    assert_eq!(got, vec!["maxclients", "50"]);

    // RESP3: a map.
    let mut c3 = server.client3();
    let v: Value = query(&mut c3, &["CONFIG", "GET", "timeout"]).unwrap();
    assert!(matches!(v, Value::Map(ref m) if m.len() == 1), "{v:?}");
}

#[test]
fn config_set_requirepass_applies_to_new_connections() {
    let server = TestServer::start();
    let mut c = server.client();
    query::<String>(&mut c, &["CONFIG", "SET", "requirepass", "pw"]).unwrap();
    // The connection that set it stays authenticated, as in Redis.
    assert_eq!(query::<String>(&mut c, &["PING"]).unwrap(), "PONG");
    let mut raw = server.raw();
    assert!(
        matches!(raw.call(&["PING"]), server_support::Resp::Error(e) if e.starts_with("NOAUTH"))
    );
    query::<String>(&mut c, &["CONFIG", "SET", "requirepass", ""]).unwrap();
    let mut raw = server.raw();
    assert_eq!(
        raw.call(&["PING"]),
        server_support::Resp::Simple("PONG".into())
    );
}

#[test]
fn info_has_redis_sections_and_counts_commands() {
    let server = TestServer::start();
    let mut c = server.client();
    for _ in 0..10 {
        query::<String>(&mut c, &["PING"]).unwrap();
    }
    let info: String = query(&mut c, &["INFO"]).unwrap();
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Keyspace",
        "# Ringkv",
    ] {
        assert!(info.contains(section), "missing {section}");
    }
    assert!(info.contains("\r\nconnected_clients:1\r\n"), "{info}");
    let processed: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.parse().ok())
        .expect("total_commands_processed");
    assert!(processed >= 10, "{processed}");
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.parse().ok())
        .expect("used_memory");
    assert!(used > 0);

    let stats: String = query(&mut c, &["INFO", "stats"]).unwrap();
    assert!(stats.starts_with("# Stats\r\n") && !stats.contains("# Server"));
    let none: String = query(&mut c, &["INFO", "nosuchsection"]).unwrap();
    assert!(none.is_empty());

    query::<String>(&mut c, &["CONFIG", "RESETSTAT"]).unwrap();
    let stats: String = query(&mut c, &["INFO", "stats"]).unwrap();
    assert!(
        stats.contains("\r\ntotal_commands_processed:0\r\n")
            || stats.contains("\r\ntotal_commands_processed:1\r\n"),
        "{stats}"
    );
}

#[test]
fn shutdown_command_stops_the_server_cleanly() {
    let mut server = TestServer::start();
    let mut raw = server.raw();
    raw.cmd(&[b"SHUTDOWN"]).unwrap();
    assert!(
        raw.is_closed(),
        "SHUTDOWN closes the connection without a reply"
    );
    server.join().expect("clean stop");
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "no longer accepting"
    );
}
