//! The maintained counters (`DBSIZE`, keys with an expiry, keys with
//! siblings) stay exact: after any sequence of commands they equal what a
//! fresh count of the stored data gives (reopening recounts from disk).

use bytes::Bytes;
use proptest::prelude::*;
use ringkv::protocol::Reply;
use ringkv::server::keyspace::{Keyspace, KeyspaceOptions};

#[derive(Clone, Debug)]
enum Op {
    Set(u8),
    SetEx(u8),
    Del(u8),
    Expire(u8),
    ExpirePast(u8),
    Persist(u8),
    Incr(u8),
    StaleResolve(u8),
    MSet(u8, u8),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    prop_oneof![
        4 => key.clone().prop_map(Op::Set),
        2 => key.clone().prop_map(Op::SetEx),
        2 => key.clone().prop_map(Op::Del),
        2 => key.clone().prop_map(Op::Expire),
        1 => key.clone().prop_map(Op::ExpirePast),
        1 => key.clone().prop_map(Op::Persist),
        2 => key.clone().prop_map(Op::Incr),
        2 => key.clone().prop_map(Op::StaleResolve),
        1 => (key.clone(), key).prop_map(|(a, b)| Op::MSet(a, b)),
        1 => Just(Op::Flush),
    ]
}

fn args(list: &[&[u8]]) -> Vec<Bytes> {
    list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

async fn apply(ks: &Keyspace, op: &Op) {
    let k = |i: &u8| format!("key{i}").into_bytes();
    let cmd: Vec<Bytes> = match op {
        Op::Set(i) => args(&[b"SET", &k(i), b"1"]),
        Op::SetEx(i) => args(&[b"SET", &k(i), b"1", b"EX", b"1000"]),
        Op::Del(i) => args(&[b"DEL", &k(i)]),
        Op::Expire(i) => args(&[b"EXPIRE", &k(i), b"500"]),
        Op::ExpirePast(i) => args(&[b"PEXPIREAT", &k(i), b"1"]),
        Op::Persist(i) => args(&[b"PERSIST", &k(i)]),
        Op::Incr(i) => args(&[b"INCR", &k(i)]),
        Op::MSet(a, b) => args(&[b"MSET", &k(a), b"2", &k(b), b"3"]),
        Op::Flush => args(&[b"FLUSHALL"]),
        Op::StaleResolve(i) => {
            // Read a context, let a SET race it, then resolve with it.
            let token = match ks.execute(&args(&[b"VCLOCK", &k(i), b"WITHVALUES"])).await {
                Reply::Array(parts) => match parts.first() {
                    Some(Reply::Bulk(token)) => token.clone(),
                    other => panic!("token expected, got {other:?}"),
                },
                other => panic!("array expected, got {other:?}"),
            };
            ks.execute(&args(&[b"SET", &k(i), b"raced"])).await;
            args(&[b"RESOLVE", &k(i), &token, b"resolved"])
        }
    };
    // Errors (CONFLICT on INCR of siblings, non-integers) are fine here.
    ks.execute(&cmd).await;
}

fn counts(ks: &Keyspace) -> (u64, u64, u64) {
    let info = ks.info();
    (info.keys, info.expires, info.keys_with_siblings)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn counters_equal_a_recount_after_any_commands(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let ks = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("open");
            for op in &ops {
                apply(&ks, op).await;
            }
            let live = counts(&ks);
            let dbsize = ks.execute(&args(&[b"DBSIZE"])).await;
            let keys = match ks.execute(&args(&[b"KEYS", b"*"])).await {
                Reply::Array(keys) => keys.len() as u64,
                other => panic!("KEYS answered {other:?}"),
            };
            ks.close().expect("close");
            // A clean close saved the counts: the next open takes them.
            let reopened = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("reopen");
            let saved = counts(&reopened);
            reopened.close().expect("close");
            // Without the saved counts the open recounts from the data.
            std::fs::remove_file(dir.path().join("COUNTS")).expect("saved counts exist");
            let reopened = Keyspace::open(dir.path(), KeyspaceOptions::default()).expect("reopen");
            let recount = counts(&reopened);
            reopened.close().expect("close");
            assert_eq!(live, recount, "maintained counters drifted from the data");
            assert_eq!(live, saved, "saved counters differ");
            assert_eq!(dbsize, Reply::Integer(live.0 as i64));
            // No key here expires during the test, so DBSIZE equals KEYS *.
            assert_eq!(keys, live.0);
        });
    }
}
