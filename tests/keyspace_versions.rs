//! Versioned values through `Keyspace::execute`: VCLOCK, RESOLVE, siblings
//! and the CONFLICT rule (DESIGN.md §3).

use bytes::Bytes;
use ringkv::protocol::Reply;
use ringkv::server::keyspace::{Keyspace, KeyspaceOptions};

struct Node {
    ks: Keyspace,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node::with(KeyspaceOptions::default())
    }

    fn with(opts: KeyspaceOptions) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keyspace::open(dir.path(), opts).expect("open");
        Node { ks, _dir: dir }
    }

    async fn run(&self, args: &[&[u8]]) -> Reply {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        self.ks.execute(&args).await
    }

    async fn token(&self, key: &str) -> Bytes {
        match self.run(&[b"VCLOCK", key.as_bytes()]).await {
            Reply::Bulk(token) => token,
            other => panic!("VCLOCK answered {other:?}"),
        }
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn is_error_starting(reply: &Reply, prefix: &str) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(prefix))
}

/// Makes `key` hold two siblings, "from-set" and "from-resolve": a client
/// reads the context, another client SETs, then the first RESOLVEs with its
/// now-stale context.
async fn make_siblings(n: &Node, key: &str) {
    n.run(&[b"SET", key.as_bytes(), b"v1"]).await;
    let stale = n.token(key).await;
    n.run(&[b"SET", key.as_bytes(), b"from-set"]).await;
    assert_eq!(
        n.run(&[b"RESOLVE", key.as_bytes(), &stale, b"from-resolve"])
            .await,
        Reply::OK
    );
}

#[tokio::test]
async fn vclock_is_nil_for_a_key_never_seen_and_a_token_otherwise() {
    let n = Node::new();
    assert_eq!(n.run(&[b"VCLOCK", b"k"]).await, Reply::Null);
    assert_eq!(n.run(&[b"VCLOCK", b"k", b"TEXT"]).await, Reply::Null);
    n.run(&[b"SET", b"k", b"v"]).await;
    let token = n.token("k").await;
    assert!(!token.is_empty());
    n.run(&[b"DEL", b"k"]).await;
    assert!(
        matches!(n.run(&[b"VCLOCK", b"k"]).await, Reply::Bulk(t) if t != token),
        "a deleted key was seen: its tombstone has a newer context"
    );
    let Reply::Bulk(text) = n.run(&[b"VCLOCK", b"k", b"text"]).await else {
        panic!("TEXT answers a bulk string");
    };
    assert!(
        String::from_utf8_lossy(&text).contains(':'),
        "actor:counter pairs"
    );
    assert!(is_error_starting(
        &n.run(&[b"VCLOCK", b"k", b"BOGUS"]).await,
        "ERR syntax error"
    ));
}

#[tokio::test]
async fn resolve_with_the_current_context_replaces_the_value() {
    let n = Node::new();
    n.run(&[b"SET", b"k", b"v1"]).await;
    let token = n.token("k").await;
    assert_eq!(n.run(&[b"RESOLVE", b"k", &token, b"v2"]).await, Reply::OK);
    assert_eq!(n.run(&[b"GET", b"k"]).await, bulk("v2"));
}

#[tokio::test]
async fn a_stale_resolve_racing_a_set_makes_siblings_and_resolve_collapses_them() {
    let n = Node::new();
    make_siblings(&n, "k").await;
    let Reply::Array(values) = n.run(&[b"GET", b"k"]).await else {
        panic!("GET of a key with siblings answers an array");
    };
    let mut values: Vec<Reply> = values;
    values.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(values, vec![bulk("from-resolve"), bulk("from-set")]);
    assert_eq!(n.ks.info().keys_with_siblings, 1);
    assert_eq!(
        n.run(&[b"GET", b"k"]).await,
        n.run(&[b"GET", b"k"]).await,
        "sibling order is deterministic"
    );

    let Reply::Array(parts) = n.run(&[b"VCLOCK", b"k", b"WITHVALUES"]).await else {
        panic!("WITHVALUES answers [token, values]");
    };
    let [Reply::Bulk(token), Reply::Array(seen)] = parts.as_slice() else {
        panic!("WITHVALUES answers [token, values]");
    };
    assert_eq!(seen.len(), 2);
    assert_eq!(
        n.run(&[b"RESOLVE", b"k", token, b"merged"]).await,
        Reply::OK
    );
    assert_eq!(n.run(&[b"GET", b"k"]).await, bulk("merged"));
    assert_eq!(n.ks.info().keys_with_siblings, 0);
}

#[tokio::test]
async fn rmw_commands_on_siblings_answer_conflict_naming_vclock_and_resolve() {
    let n = Node::new();
    make_siblings(&n, "k").await;
    for cmd in [
        &[&b"INCR"[..], b"k"][..],
        &[b"INCRBY", b"k", b"2"],
        &[b"INCRBYFLOAT", b"k", b"1.5"],
        &[b"APPEND", b"k", b"x"],
        &[b"SETNX", b"k", b"x"],
        &[b"SET", b"k", b"x", b"NX"],
        &[b"SET", b"k", b"x", b"GET"],
        &[b"GETSET", b"k", b"x"],
        &[b"GETDEL", b"k"],
        &[b"GETEX", b"k", b"EX", b"10"],
        &[b"MSETNX", b"k", b"x"],
        &[b"EXPIRE", b"k", b"10"],
        &[b"PERSIST", b"k"],
        &[b"STRLEN", b"k"],
    ] {
        let reply = n.run(cmd).await;
        let Reply::Error(text) = &reply else {
            panic!("{cmd:?} answered {reply:?}");
        };
        assert!(text.starts_with("CONFLICT k has 2 siblings"), "{text}");
        assert!(
            text.contains("VCLOCK") && text.contains("RESOLVE"),
            "{text}"
        );
    }
    assert!(matches!(n.run(&[b"GET", b"k"]).await, Reply::Array(v) if v.len() == 2));
    // A context-free SET supersedes everything this node holds.
    assert_eq!(n.run(&[b"SET", b"k", b"plain"]).await, Reply::OK);
    assert_eq!(
        n.run(&[b"INCR", b"k"]).await,
        Reply::Error("ERR value is not an integer or out of range".to_string())
    );
}

#[tokio::test]
async fn del_of_siblings_deletes_them_all() {
    let n = Node::new();
    make_siblings(&n, "k").await;
    assert_eq!(n.run(&[b"DEL", b"k"]).await, Reply::Integer(1));
    assert_eq!(n.run(&[b"GET", b"k"]).await, Reply::Null);
    assert_eq!(n.run(&[b"DBSIZE"]).await, Reply::Integer(0));
}

#[tokio::test]
async fn garbled_and_forged_contexts_are_refused_and_write_nothing() {
    let n = Node::new();
    n.run(&[b"SET", b"k", b"v1"]).await;
    let garbled = n.run(&[b"RESOLVE", b"k", b"not-a-token", b"x"]).await;
    assert!(
        is_error_starting(&garbled, "ERR invalid context"),
        "{garbled:?}"
    );

    // A context from a busier key claims counters this key never reached.
    for _ in 0..5 {
        n.run(&[b"SET", b"busy", b"x"]).await;
    }
    let forged = n.token("busy").await;
    let reply = n.run(&[b"RESOLVE", b"k", &forged, b"x"]).await;
    assert!(
        is_error_starting(&reply, "ERR invalid context"),
        "{reply:?}"
    );
    let fresh = n.run(&[b"RESOLVE", b"never-seen", &forged, b"x"]).await;
    assert!(
        is_error_starting(&fresh, "ERR invalid context"),
        "{fresh:?}"
    );
    assert_eq!(n.run(&[b"GET", b"k"]).await, bulk("v1"));
    assert_eq!(n.run(&[b"GET", b"never-seen"]).await, Reply::Null);
}

#[tokio::test]
async fn withvalues_on_a_new_key_gives_a_context_resolve_accepts() {
    let n = Node::new();
    let Reply::Array(parts) = n.run(&[b"VCLOCK", b"new", b"WITHVALUES"]).await else {
        panic!("array");
    };
    let [Reply::Bulk(token), Reply::Array(values)] = parts.as_slice() else {
        panic!("[token, values]");
    };
    assert!(values.is_empty());
    assert_eq!(
        n.run(&[b"RESOLVE", b"new", token, b"first"]).await,
        Reply::OK
    );
    assert_eq!(n.run(&[b"GET", b"new"]).await, bulk("first"));
}

#[tokio::test]
async fn writes_past_the_sibling_bound_are_refused() {
    let n = Node::with(KeyspaceOptions {
        sibling_warn: 2,
        sibling_max: 3,
        ..KeyspaceOptions::default()
    });
    n.run(&[b"SET", b"k", b"v0"]).await;
    let stale = n.token("k").await;
    // Each RESOLVE with the same stale context adds one sibling.
    let mut replies = Vec::new();
    for i in 0..4 {
        let value = format!("v{}", i + 1);
        replies.push(n.run(&[b"RESOLVE", b"k", &stale, value.as_bytes()]).await);
    }
    assert_eq!(replies[..2], [Reply::OK, Reply::OK]);
    let refused = replies.iter().find(|r| matches!(r, Reply::Error(_)));
    let Some(Reply::Error(text)) = refused else {
        panic!("no write was refused: {replies:?}");
    };
    assert!(text.contains("sibling"), "{text}");
    let Reply::Array(values) = n.run(&[b"GET", b"k"]).await else {
        panic!("siblings");
    };
    assert!(values.len() <= 3);
}
