//! Black-box tests of the keyspace's data commands through
//! `Keyspace::execute`, on a real engine in a temporary directory. Expected
//! error texts are the ones redis-server 7 answers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv::protocol::Reply;
use ringkv::server::keyspace::{Keyspace, KeyspaceOptions};

struct Node {
    ks: Keyspace,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
        Node { ks, _dir: dir }
    }

    async fn run(&self, args: &[&str]) -> Reply {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        self.ks.execute(&args).await
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn err(s: &str) -> Reply {
    Reply::Error(s.to_string())
}

fn int(n: i64) -> Reply {
    Reply::Integer(n)
}

fn array(items: &[&str]) -> Reply {
    Reply::Array(items.iter().map(|s| bulk(s)).collect())
}

#[tokio::test]
async fn set_and_get_round_trip_and_missing_keys_are_nil() {
    let n = Node::new();
    assert_eq!(n.run(&["GET", "k"]).await, Reply::Null);
    assert_eq!(n.run(&["SET", "k", "v"]).await, Reply::OK);
    assert_eq!(n.run(&["get", "k"]).await, bulk("v"));
    assert_eq!(n.run(&["SET", "k", "w"]).await, Reply::OK);
    assert_eq!(n.run(&["GET", "k"]).await, bulk("w"));
    assert_eq!(n.run(&["TYPE", "k"]).await, Reply::Simple("string"));
    assert_eq!(n.run(&["TYPE", "nope"]).await, Reply::Simple("none"));
}

#[tokio::test]
async fn set_conditions_and_get_option_behave_as_redis() {
    let n = Node::new();
    assert_eq!(n.run(&["SET", "k", "1", "XX"]).await, Reply::Null);
    assert_eq!(n.run(&["SET", "k", "1", "NX"]).await, Reply::OK);
    assert_eq!(n.run(&["SET", "k", "2", "NX"]).await, Reply::Null);
    assert_eq!(n.run(&["SET", "k", "3", "XX", "GET"]).await, bulk("1"));
    assert_eq!(n.run(&["SET", "k", "4", "NX", "GET"]).await, bulk("3"));
    assert_eq!(n.run(&["GET", "k"]).await, bulk("3"));
    assert_eq!(n.run(&["SET", "new", "x", "GET"]).await, Reply::Null);
    assert_eq!(n.run(&["SETNX", "k", "9"]).await, int(0));
    assert_eq!(n.run(&["SETNX", "fresh", "9"]).await, int(1));
}

#[tokio::test]
async fn set_rejects_bad_options_with_redis_errors() {
    let n = Node::new();
    let syntax = err("ERR syntax error");
    assert_eq!(n.run(&["SET", "k", "v", "NX", "XX"]).await, syntax);
    assert_eq!(
        n.run(&["SET", "k", "v", "EX", "10", "PX", "10"]).await,
        syntax
    );
    assert_eq!(n.run(&["SET", "k", "v", "EX"]).await, syntax);
    assert_eq!(
        n.run(&["SET", "k", "v", "KEEPTTL", "EX", "1"]).await,
        syntax
    );
    assert_eq!(n.run(&["SET", "k", "v", "BOGUS"]).await, syntax);
    assert_eq!(
        n.run(&["SET", "k", "v", "EX", "0"]).await,
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        n.run(&["SET", "k", "v", "PX", "abc"]).await,
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        n.run(&["SETEX", "k", "-1", "v"]).await,
        err("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        n.run(&["PSETEX", "k", "0", "v"]).await,
        err("ERR invalid expire time in 'psetex' command")
    );
    assert_eq!(
        n.run(&["GET", "k"]).await,
        Reply::Null,
        "nothing was written"
    );
}

#[tokio::test]
async fn getset_getdel_and_getex() {
    let n = Node::new();
    assert_eq!(n.run(&["GETSET", "k", "a"]).await, Reply::Null);
    assert_eq!(n.run(&["GETSET", "k", "b"]).await, bulk("a"));
    assert_eq!(n.run(&["GETEX", "k", "EX", "100"]).await, bulk("b"));
    assert_eq!(n.run(&["TTL", "k"]).await, int(100));
    assert_eq!(n.run(&["GETEX", "k", "PERSIST"]).await, bulk("b"));
    assert_eq!(n.run(&["TTL", "k"]).await, int(-1));
    assert_eq!(n.run(&["GETEX", "missing", "EX", "0"]).await, Reply::Null);
    assert_eq!(
        n.run(&["GETEX", "k", "EX", "0"]).await,
        err("ERR invalid expire time in 'getex' command")
    );
    assert_eq!(
        n.run(&["GETEX", "k", "PERSIST", "EX", "1"]).await,
        err("ERR syntax error")
    );
    assert_eq!(n.run(&["GETDEL", "k"]).await, bulk("b"));
    assert_eq!(n.run(&["GETDEL", "k"]).await, Reply::Null);
    assert_eq!(n.run(&["EXISTS", "k"]).await, int(0));
}

#[tokio::test]
async fn multi_key_commands() {
    let n = Node::new();
    assert_eq!(
        n.run(&["MSET", "a", "1", "b", "2", "a", "3"]).await,
        Reply::OK
    );
    assert_eq!(
        n.run(&["MGET", "a", "b", "c"]).await,
        Reply::Array(vec![bulk("3"), bulk("2"), Reply::Null])
    );
    assert_eq!(
        n.run(&["MSET", "a", "1", "b"]).await,
        err("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(n.run(&["MSETNX", "c", "1", "a", "9"]).await, int(0));
    assert_eq!(
        n.run(&["EXISTS", "c"]).await,
        int(0),
        "MSETNX is all or nothing"
    );
    assert_eq!(n.run(&["MSETNX", "c", "1", "d", "2"]).await, int(1));
    assert_eq!(n.run(&["EXISTS", "a", "a", "c", "zz"]).await, int(3));
    assert_eq!(n.run(&["DEL", "a", "a", "zz", "c"]).await, int(2));
    assert_eq!(n.run(&["UNLINK", "b"]).await, int(1));
    assert_eq!(n.run(&["DEL", "b"]).await, int(0));
    assert_eq!(n.run(&["DBSIZE"]).await, int(1));
}

#[tokio::test]
async fn append_and_strlen() {
    let n = Node::new();
    assert_eq!(n.run(&["APPEND", "k", "Hello"]).await, int(5));
    assert_eq!(n.run(&["APPEND", "k", " World"]).await, int(11));
    assert_eq!(n.run(&["GET", "k"]).await, bulk("Hello World"));
    assert_eq!(n.run(&["STRLEN", "k"]).await, int(11));
    assert_eq!(n.run(&["STRLEN", "nope"]).await, int(0));
}

#[tokio::test]
async fn counters_and_their_errors() {
    let n = Node::new();
    assert_eq!(n.run(&["INCR", "c"]).await, int(1));
    assert_eq!(n.run(&["INCRBY", "c", "10"]).await, int(11));
    assert_eq!(n.run(&["DECR", "c"]).await, int(10));
    assert_eq!(n.run(&["DECRBY", "c", "20"]).await, int(-10));
    assert_eq!(n.run(&["GET", "c"]).await, bulk("-10"));
    let not_int = err("ERR value is not an integer or out of range");
    assert_eq!(n.run(&["INCRBY", "c", "1.5"]).await, not_int);
    n.run(&["SET", "s", "abc"]).await;
    assert_eq!(n.run(&["INCR", "s"]).await, not_int);
    n.run(&["SET", "s", " 1"]).await;
    assert_eq!(n.run(&["INCR", "s"]).await, not_int);
    n.run(&["SET", "max", "9223372036854775807"]).await;
    assert_eq!(
        n.run(&["INCR", "max"]).await,
        err("ERR increment or decrement would overflow")
    );
    assert_eq!(
        n.run(&["DECRBY", "max", "-9223372036854775808"]).await,
        err("ERR decrement would overflow")
    );
}

#[tokio::test]
async fn incrbyfloat_formats_like_redis() {
    let n = Node::new();
    n.run(&["SET", "f", "10.50"]).await;
    assert_eq!(n.run(&["INCRBYFLOAT", "f", "0.1"]).await, bulk("10.6"));
    assert_eq!(n.run(&["INCRBYFLOAT", "f", "-5"]).await, bulk("5.6"));
    n.run(&["SET", "f", "5.0e3"]).await;
    assert_eq!(n.run(&["INCRBYFLOAT", "f", "2.0e2"]).await, bulk("5200"));
    assert_eq!(n.run(&["INCRBYFLOAT", "g", "0.1"]).await, bulk("0.1"));
    assert_eq!(n.run(&["INCRBYFLOAT", "g", "0.2"]).await, bulk("0.3"));
    let not_float = err("ERR value is not a valid float");
    assert_eq!(n.run(&["INCRBYFLOAT", "g", "abc"]).await, not_float);
    n.run(&["SET", "s", "abc"]).await;
    assert_eq!(n.run(&["INCRBYFLOAT", "s", "1"]).await, not_float);
    assert_eq!(
        n.run(&["INCRBYFLOAT", "g", "inf"]).await,
        err("ERR increment would produce NaN or Infinity")
    );
}

#[tokio::test]
async fn expire_family_with_options_and_ttl_reports() {
    let n = Node::new();
    assert_eq!(n.run(&["TTL", "k"]).await, int(-2));
    assert_eq!(n.run(&["EXPIRE", "k", "10"]).await, int(0), "missing key");
    n.run(&["SET", "k", "v"]).await;
    assert_eq!(n.run(&["TTL", "k"]).await, int(-1));
    assert_eq!(n.run(&["PEXPIRETIME", "k"]).await, int(-1));
    assert_eq!(n.run(&["EXPIRE", "k", "100", "XX"]).await, int(0));
    assert_eq!(n.run(&["EXPIRE", "k", "100", "GT"]).await, int(0));
    assert_eq!(n.run(&["EXPIRE", "k", "100", "NX"]).await, int(1));
    assert_eq!(n.run(&["EXPIRE", "k", "200", "NX"]).await, int(0));
    assert_eq!(n.run(&["EXPIRE", "k", "50", "GT"]).await, int(0));
    assert_eq!(n.run(&["EXPIRE", "k", "200", "GT"]).await, int(1));
    assert_eq!(n.run(&["EXPIRE", "k", "300", "LT"]).await, int(0));
    assert_eq!(n.run(&["PEXPIRE", "k", "150000", "LT"]).await, int(1));
    assert_eq!(n.run(&["TTL", "k"]).await, int(150));
    let Reply::Integer(pttl) = n.run(&["PTTL", "k"]).await else {
        panic!("PTTL answers an integer");
    };
    assert!((149_000..=150_000).contains(&pttl), "{pttl}");
    assert_eq!(n.run(&["EXPIREAT", "k", "4000000000"]).await, int(1));
    assert_eq!(n.run(&["EXPIRETIME", "k"]).await, int(4_000_000_000));
    assert_eq!(n.run(&["PEXPIREAT", "k", "4000000000123"]).await, int(1));
    assert_eq!(n.run(&["PEXPIRETIME", "k"]).await, int(4_000_000_000_123));
    assert_eq!(n.run(&["PERSIST", "k"]).await, int(1));
    assert_eq!(n.run(&["PERSIST", "k"]).await, int(0));
    assert_eq!(n.run(&["TTL", "k"]).await, int(-1));
    assert_eq!(
        n.run(&["EXPIRE", "k", "-1"]).await,
        int(1),
        "past deadline deletes"
    );
    assert_eq!(n.run(&["EXISTS", "k"]).await, int(0));
}

#[tokio::test]
async fn expire_option_errors_match_redis() {
    let n = Node::new();
    n.run(&["SET", "k", "v"]).await;
    assert_eq!(
        n.run(&["EXPIRE", "k", "10", "NX", "XX"]).await,
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        n.run(&["EXPIRE", "k", "10", "GT", "LT"]).await,
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(
        n.run(&["EXPIRE", "k", "abc", "foo"]).await,
        err("ERR Unsupported option foo")
    );
    assert_eq!(
        n.run(&["EXPIRE", "k", "9223372036854775807"]).await,
        err("ERR invalid expire time in 'expire' command")
    );
}

#[tokio::test]
async fn set_keepttl_and_rmw_commands_keep_or_reset_the_ttl_like_redis() {
    let n = Node::new();
    n.run(&["SET", "k", "1", "EX", "100"]).await;
    n.run(&["INCR", "k"]).await;
    assert_eq!(n.run(&["TTL", "k"]).await, int(100), "INCR keeps the TTL");
    n.run(&["APPEND", "k", "0"]).await;
    assert_eq!(n.run(&["TTL", "k"]).await, int(100), "APPEND keeps the TTL");
    n.run(&["SET", "k", "x", "KEEPTTL"]).await;
    assert_eq!(n.run(&["TTL", "k"]).await, int(100), "KEEPTTL keeps it");
    n.run(&["SET", "k", "y"]).await;
    assert_eq!(n.run(&["TTL", "k"]).await, int(-1), "plain SET clears it");
}

#[tokio::test]
async fn expired_keys_read_as_absent_at_once_and_leave_dbsize_within_two_seconds() {
    let n = Node::new();
    let task = n.ks.spawn_background();
    n.run(&["SET", "short", "v", "PX", "50"]).await;
    n.run(&["SET", "long", "v", "EX", "100"]).await;
    n.run(&["SET", "plain", "v"]).await;
    assert_eq!(n.run(&["DBSIZE"]).await, int(3));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(n.run(&["GET", "short"]).await, Reply::Null);
    assert_eq!(n.run(&["TTL", "short"]).await, int(-2));
    let start = Instant::now();
    while n.run(&["DBSIZE"]).await != int(2) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "active expiry too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(keys_sorted(&n, "*").await, array(&["long", "plain"]));
    assert_eq!(n.ks.info().expired_keys, 1);
    n.ks.close().expect("close");
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("background task ends on close")
        .expect("task did not panic");
}

async fn keys_sorted(n: &Node, pattern: &str) -> Reply {
    match n.run(&["KEYS", pattern]).await {
        Reply::Array(mut items) => {
            items.sort_by_key(|r| format!("{r:?}"));
            Reply::Array(items)
        }
        other => other,
    }
}

#[tokio::test]
async fn a_key_whose_ttl_was_extended_is_not_expired_at_the_old_deadline() {
    let n = Node::new();
    let _task = n.ks.spawn_background();
    n.run(&["SET", "k", "v", "PX", "300"]).await;
    assert_eq!(n.run(&["PEXPIRE", "k", "100000"]).await, int(1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(n.run(&["GET", "k"]).await, bulk("v"));
    assert_eq!(n.run(&["DBSIZE"]).await, int(1));
    n.ks.close().expect("close");
}

#[tokio::test]
async fn keys_patterns_follow_redis_globs() {
    let n = Node::new();
    for k in [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "user:1", "user:2",
    ] {
        n.run(&["SET", k, "v"]).await;
    }
    assert_eq!(
        keys_sorted(&n, "h?llo").await,
        array(&["h*llo", "hallo", "hello", "hxllo"])
    );
    assert_eq!(
        keys_sorted(&n, "h[ae]llo").await,
        array(&["hallo", "hello"])
    );
    assert_eq!(
        keys_sorted(&n, "h[^e]llo").await,
        array(&["h*llo", "hallo", "hxllo"])
    );
    assert_eq!(keys_sorted(&n, "h[a-b]llo").await, array(&["hallo"]));
    assert_eq!(keys_sorted(&n, "h\\*llo").await, array(&["h*llo"]));
    assert_eq!(
        keys_sorted(&n, "user:*").await,
        array(&["user:1", "user:2"])
    );
    assert_eq!(keys_sorted(&n, "hello").await, array(&["hello"]));
    let Reply::Array(all) = n.run(&["KEYS", "*"]).await else {
        panic!("array");
    };
    assert_eq!(all.len(), 8);
}

#[tokio::test]
async fn randomkey_dbsize_and_flushall() {
    let n = Node::new();
    assert_eq!(n.run(&["RANDOMKEY"]).await, Reply::Null);
    for i in 0..50 {
        n.run(&["SET", &format!("k{i}"), "v"]).await;
    }
    assert_eq!(n.run(&["DBSIZE"]).await, int(50));
    let Reply::Bulk(key) = n.run(&["RANDOMKEY"]).await else {
        panic!("RANDOMKEY answers a key");
    };
    assert!(key.starts_with(b"k"));
    assert_eq!(n.run(&["FLUSHALL", "BOGUS"]).await, err("ERR syntax error"));
    assert_eq!(n.run(&["FLUSHALL", "ASYNC"]).await, Reply::OK);
    assert_eq!(n.run(&["DBSIZE"]).await, int(0));
    assert_eq!(n.run(&["KEYS", "*"]).await, Reply::Array(vec![]));
    assert_eq!(n.run(&["RANDOMKEY"]).await, Reply::Null);
    n.run(&["SET", "again", "v"]).await;
    assert_eq!(n.run(&["FLUSHDB"]).await, Reply::OK);
    assert_eq!(n.run(&["GET", "again"]).await, Reply::Null);
}

#[tokio::test]
async fn scan_options_and_errors() {
    let n = Node::new();
    assert_eq!(n.run(&["SCAN", "abc"]).await, err("ERR invalid cursor"));
    assert_eq!(
        n.run(&["SCAN", "0", "COUNT", "0"]).await,
        err("ERR syntax error")
    );
    assert_eq!(
        n.run(&["SCAN", "0", "COUNT"]).await,
        err("ERR syntax error")
    );
    assert_eq!(
        n.run(&["SCAN", "0", "COUNT", "x"]).await,
        err("ERR value is not an integer or out of range")
    );
    for k in ["a1", "a2", "b1"] {
        n.run(&["SET", k, "v"]).await;
    }
    let found = scan_all(&n, &["MATCH", "a*", "COUNT", "1000"]).await;
    assert_eq!(found, vec!["a1".to_string(), "a2".to_string()]);
    assert!(scan_all(&n, &["TYPE", "hash"]).await.is_empty());
    assert_eq!(scan_all(&n, &["TYPE", "string"]).await.len(), 3);
}

/// Runs a full SCAN iteration with `options`; returns the sorted keys.
async fn scan_all(n: &Node, options: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(options);
        let Reply::Array(parts) = n.run(&args).await else {
            panic!("SCAN answers an array");
        };
        let [Reply::Bulk(next), Reply::Array(batch)] = parts.as_slice() else {
            panic!("SCAN answers [cursor, keys]");
        };
        for key in batch {
            let Reply::Bulk(k) = key else {
                panic!("keys are bulks")
            };
            keys.push(String::from_utf8_lossy(k).into_owned());
        }
        cursor = String::from_utf8_lossy(next).into_owned();
        assert!(cursor.parse::<u64>().is_ok(), "cursor {cursor} is a u64");
        if cursor == "0" {
            break;
        }
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn scan_returns_every_key_present_throughout_while_keys_are_added() {
    let n = Node::new();
    for i in 0..500 {
        n.run(&["SET", &format!("old{i}"), "v"]).await;
    }
    let mut cursor = "0".to_string();
    let mut seen = std::collections::HashSet::new();
    let mut added = 0;
    loop {
        let Reply::Array(parts) = n.run(&["SCAN", &cursor, "COUNT", "7"]).await else {
            panic!("array");
        };
        let [Reply::Bulk(next), Reply::Array(batch)] = parts.as_slice() else {
            panic!("[cursor, keys]");
        };
        for key in batch {
            if let Reply::Bulk(k) = key {
                seen.insert(String::from_utf8_lossy(k).into_owned());
            }
        }
        // Keys arriving during the iteration may or may not be returned.
        for _ in 0..3 {
            n.run(&["SET", &format!("new{added}"), "v"]).await;
            added += 1;
        }
        cursor = String::from_utf8_lossy(next).into_owned();
        if cursor == "0" {
            break;
        }
    }
    for i in 0..500 {
        assert!(seen.contains(&format!("old{i}")), "old{i} missed by SCAN");
    }
}

#[tokio::test]
async fn data_and_the_clock_actor_survive_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = |list: &[&str]| -> Vec<Bytes> {
        list.iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    };
    let (actor, token) = {
        let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
        ks.execute(&args(&["SET", "k", "v"])).await;
        ks.execute(&args(&["SET", "gone", "v"])).await;
        ks.execute(&args(&["DEL", "gone"])).await;
        ks.execute(&args(&["SET", "t", "v", "EX", "1000"])).await;
        let token = ks.execute(&args(&["VCLOCK", "k"])).await;
        let actor = ks.actor();
        ks.close().expect("close");
        (actor, token)
    };
    let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("reopen");
    assert_eq!(ks.actor(), actor);
    assert_eq!(ks.execute(&args(&["GET", "k"])).await, bulk("v"));
    assert_eq!(ks.execute(&args(&["GET", "gone"])).await, Reply::Null);
    assert_eq!(ks.execute(&args(&["VCLOCK", "k"])).await, token);
    assert_eq!(ks.execute(&args(&["TTL", "t"])).await, int(1000));
    assert_eq!(ks.execute(&args(&["DBSIZE"])).await, int(2));
    let info = ks.info();
    assert_eq!((info.keys, info.expires), (2, 1));
    ks.close().expect("close");
}

#[tokio::test]
async fn commands_after_close_are_refused() {
    let n = Node::new();
    n.ks.close().expect("close");
    assert!(matches!(n.run(&["GET", "k"]).await, Reply::Error(_)));
}

#[tokio::test]
async fn a_deadline_already_passed_deletes_the_key_at_once() {
    let n = Node::new();
    n.run(&["SET", "k", "v"]).await;
    assert_eq!(
        n.run(&["SET", "k", "v2", "EXAT", "1", "GET"]).await,
        bulk("v")
    );
    assert_eq!(n.run(&["EXISTS", "k"]).await, int(0));
    assert_eq!(n.run(&["DBSIZE"]).await, int(0), "not even briefly counted");
    n.run(&["SET", "j", "v"]).await;
    assert_eq!(n.run(&["PEXPIREAT", "j", "1"]).await, int(1));
    assert_eq!(n.run(&["DBSIZE"]).await, int(0));
}

#[tokio::test]
async fn lookups_count_keyspace_hits_and_misses() {
    let n = Node::new();
    n.run(&["SET", "k", "v"]).await;
    n.run(&["GET", "k"]).await;
    n.run(&["MGET", "k", "nope"]).await;
    n.run(&["EXISTS", "nope"]).await;
    let info = n.ks.info();
    assert_eq!((info.keyspace_hits, info.keyspace_misses), (2, 2));
}

#[tokio::test]
async fn unknown_commands_get_the_redis_error() {
    let n = Node::new();
    assert_eq!(
        n.run(&["FOOBAR", "a", "b"]).await,
        err("ERR unknown command 'FOOBAR', with args beginning with: 'a' 'b' ")
    );
}

#[tokio::test]
async fn scan_misses_nothing_even_when_its_resume_slot_was_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = KeyspaceOptions {
        scan_cursor_slots: 1,
        partitions: 4,
        ..KeyspaceOptions::default()
    };
    let n = Node {
        ks: Keyspace::open(dir.path(), opts).expect("open"),
        _dir: dir,
    };
    for i in 0..100 {
        n.run(&["SET", &format!("k{i}"), "v"]).await;
    }
    // Two interleaved scans evict each other's only slot at every step.
    let mut cursors = ["0".to_string(), "0".to_string()];
    let mut seen = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    let mut done = [false, false];
    let mut calls = 0;
    while !(done[0] && done[1]) {
        for s in 0..2 {
            if done[s] {
                continue;
            }
            let Reply::Array(parts) = n.run(&["SCAN", &cursors[s], "COUNT", "5"]).await else {
                panic!("array");
            };
            let [Reply::Bulk(next), Reply::Array(batch)] = parts.as_slice() else {
                panic!("[cursor, keys]");
            };
            for key in batch {
                if let Reply::Bulk(k) = key {
                    seen[s].insert(k.clone());
                }
            }
            cursors[s] = String::from_utf8_lossy(next).into_owned();
            done[s] = cursors[s] == "0";
            calls += 1;
            assert!(calls < 10_000, "a forgotten slot must not stop progress");
        }
    }
    assert_eq!(seen[0].len(), 100);
    assert_eq!(seen[1].len(), 100);
}

#[tokio::test]
async fn wrong_argument_counts_are_refused_not_indexed_past() {
    let n = Node::new();
    assert_eq!(
        n.run(&["GET"]).await,
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        n.run(&["SETEX", "k", "10"]).await,
        err("ERR wrong number of arguments for 'setex' command")
    );
    assert_eq!(
        n.run(&["RESOLVE", "k", "c"]).await,
        err("ERR wrong number of arguments for 'resolve' command")
    );
    assert_eq!(
        n.run(&["DBSIZE", "x"]).await,
        err("ERR wrong number of arguments for 'dbsize' command")
    );
    assert_eq!(
        n.run(&["MGET", "a", "b"]).await,
        Reply::Array(vec![Reply::Null, Reply::Null])
    );
}

#[tokio::test]
async fn every_listed_command_is_dispatched() {
    let n = Node::new();
    for name in ringkv::server::keyspace::COMMANDS {
        let arity = ringkv::server::keyspace::arity(name).expect("listed commands have an arity");
        let mut args = vec![name.to_string()];
        args.resize(arity.unsigned_abs() as usize, "1".to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = n.run(&args).await;
        if let Reply::Error(text) = &reply {
            assert!(
                !text.contains("unknown command") && !text.contains("wrong number"),
                "{name}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn scan_with_deletions_and_a_forgotten_slot_still_returns_the_survivors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = KeyspaceOptions {
        scan_cursor_slots: 1,
        partitions: 2,
        ..KeyspaceOptions::default()
    };
    let n = Node {
        ks: Keyspace::open(dir.path(), opts).expect("open"),
        _dir: dir,
    };
    for i in 0..60 {
        n.run(&["SET", &format!("k{i:02}"), "v"]).await;
    }
    let mut cursor = "0".to_string();
    let mut seen = std::collections::HashSet::new();
    let mut deleted = 0;
    loop {
        let Reply::Array(parts) = n.run(&["SCAN", &cursor, "COUNT", "4"]).await else {
            panic!("array");
        };
        let [Reply::Bulk(next), Reply::Array(batch)] = parts.as_slice() else {
            panic!("[cursor, keys]");
        };
        for key in batch {
            if let Reply::Bulk(k) = key {
                seen.insert(String::from_utf8_lossy(k).into_owned());
            }
        }
        // Delete an odd key and evict the scan's slot (another scan's cursor
        // takes the only one) between every two calls.
        if deleted < 30 {
            n.run(&["DEL", &format!("k{:02}", 2 * deleted + 1)]).await;
            deleted += 1;
        }
        n.run(&["SCAN", "0", "COUNT", "1"]).await;
        cursor = String::from_utf8_lossy(next).into_owned();
        if cursor == "0" {
            break;
        }
    }
    for i in (0..60).step_by(2) {
        assert!(
            seen.contains(&format!("k{i:02}")),
            "k{i:02} was present throughout"
        );
    }
}

#[tokio::test]
async fn randomkey_is_nil_when_every_key_has_expired() {
    let n = Node::new();
    n.run(&["SET", "a", "v", "PX", "20"]).await;
    n.run(&["SET", "b", "v", "PX", "20"]).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    // No active expiry running: the keys are still stored, and still counted.
    assert_eq!(n.run(&["DBSIZE"]).await, int(2));
    assert_eq!(n.run(&["RANDOMKEY"]).await, Reply::Null);
    assert_eq!(n.run(&["KEYS", "*"]).await, Reply::Array(vec![]));
}
