//! Data survives a graceful restart of the in-process server: values, deletes,
//! expiry deadlines and the key count.

mod server_support;

use server_support::{test_config, TestServer};

fn q<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

#[test]
fn writes_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(test_config(dir.path()));
    let mut c = server.client();
    for i in 0..500 {
        let _: () = q(&mut c, &["SET", &format!("key:{i}"), &format!("value:{i}")]);
    }
    let _: i64 = q(&mut c, &["DEL", "key:7"]);
    let _: i64 = q(&mut c, &["EXPIRE", "key:8", "1000"]);
    let _: i64 = q(&mut c, &["INCRBY", "counter", "41"]);
    drop(c);
    server.stop().expect("clean stop");

    let server = TestServer::start_with(test_config(dir.path()));
    let mut c = server.client();
    assert_eq!(
        q::<Option<String>>(&mut c, &["GET", "key:0"]).as_deref(),
        Some("value:0")
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["GET", "key:499"]).as_deref(),
        Some("value:499")
    );
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "key:7"]), None);
    let ttl: i64 = q(&mut c, &["TTL", "key:8"]);
    assert!((990..=1000).contains(&ttl), "ttl {ttl}");
    assert_eq!(q::<i64>(&mut c, &["INCR", "counter"]), 42);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 500);
}
