//! `ringkv-cli` prints what `redis-cli` prints: both run the same commands
//! against one real `redis-server`, in RESP2 and RESP3, in human (`--no-raw`)
//! and raw (`--raw`) output, and their stdout must be byte for byte equal.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (the README's setup
//! installs them); where they are missing the test says so on stderr and
//! passes, since it compares against them rather than testing them.

mod redis_reference;

use std::process::{Command, Stdio};

fn run(program: &str, port: u16, args: &[&str]) -> (String, Option<i32>) {
    let output = Command::new(program)
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run the client");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status.code(),
    )
}

fn redis_cli(port: u16, args: &[&str]) -> (String, Option<i32>) {
    run("redis-cli", port, args)
}

fn ringkv_cli(port: u16, args: &[&str]) -> (String, Option<i32>) {
    run(env!("CARGO_BIN_EXE_ringkv-cli"), port, args)
}

#[test]
fn every_reply_type_prints_as_redis_cli_prints_it() {
    if redis_reference::missing(&["redis-server", "redis-cli"]).is_some() {
        return;
    }
    let Some(redis) = redis_reference::start_redis() else {
        return;
    };
    let port = redis.port;
    let seed: &[&[&str]] = &[
        &["SET", "text", "a\"b\nc \\ \t"],
        &["SET", "bin", "\u{1}\u{7f}é"],
        &[
            "RPUSH", "list", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k",
        ],
        &["HSET", "hash", "f1", "v1", "f2", "v2"],
        &["SADD", "set", "x"],
        &["ZADD", "zset", "1.5", "m", "2", "n"],
    ];
    for command in seed {
        redis_cli(port, command);
    }
    let cases: &[&[&str]] = &[
        &["PING"],
        &["GET", "text"],
        &["GET", "bin"],
        &["GET", "missing"],
        &["STRLEN", "text"],
        &["LRANGE", "list", "0", "-1"],
        &["LRANGE", "missing", "0", "-1"],
        &["HGETALL", "hash"],
        &["SMEMBERS", "set"],
        &["ZRANGE", "zset", "0", "-1", "WITHSCORES"],
        &["ZSCORE", "zset", "m"],
        &["CONFIG", "GET", "maxmemory-policy"],
        &["COMMAND", "DOCS", "GET", "SET"],
        &["NOSUCHCOMMAND", "x"],
        &["GET"],
        &["EVAL", "return {1,{2,{3,'x'}},'y'}", "0"],
        &["EVAL", "redis.setresp(3); return {map={a={1,2},b={}}}", "0"],
        &["EVAL", "redis.setresp(3); return {double=3.25}", "0"],
        &["EVAL", "redis.setresp(3); return true", "0"],
    ];
    for protocol in [None, Some("-3")] {
        for output in ["--no-raw", "--raw"] {
            for case in cases {
                let mut args: Vec<&str> = protocol.into_iter().collect();
                args.push(output);
                args.extend_from_slice(case);
                assert_eq!(
                    ringkv_cli(port, &args),
                    redis_cli(port, &args),
                    "ringkv-cli {args:?}"
                );
            }
        }
    }
}
