//! The cluster data path between real `ringkv` processes: quorum writes and
//! reads through any node, forwarding, node failures, a real network
//! partition (through the fault-injecting proxies of `support::proxy`) that
//! leaves siblings which `RESOLVE` replaces, and garbage on the peer port.
//!
//! Defaults are the cluster's: N=3, R=2, W=2 (one test runs N=3, R=1, W=1 so
//! both sides of a partition can write). Gossip runs every 100 ms with
//! suspect/down after 1 s/2 s, and a request inside the cluster has 1 s.
//! Every wait is bounded, so a broken cluster fails a test instead of
//! hanging it; no assertion measures performance.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rand::RngCore;

use support::proxy::{hello_bytes, CutMode};
use support::{eventually, values, Cluster};

/// A quorum failure must come back as an error well before a client would
/// give up: the request deadline is 1 s, plus slack for a loaded CI box.
const FAIL_FAST: Duration = Duration::from_secs(3);

/// How long replicas may take to agree after a failure or a heal (read
/// repair, redials after back-off).
const CONVERGE: Duration = Duration::from_secs(15);

/// Waits until `GET key` through node `via` answers exactly `want` (sorted
/// values; empty for nil).
fn eventually_reads(c: &Cluster, via: usize, key: &str, want: &[&str]) {
    eventually(
        &format!("GET {key} through node {via} answers {want:?}"),
        CONVERGE,
        || match c.try_get(via, key) {
            Ok(v) if v == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// Runs a command that must fail its quorum: an `UNAVAILABLE` or `TIMEOUT`
/// error, promptly.
fn assert_quorum_error(c: &Cluster, via: usize, args: &[&str]) {
    let started = Instant::now();
    let reply = c.cmd(via, args);
    let took = started.elapsed();
    match &reply {
        Err(e) if e.starts_with("UNAVAILABLE") || e.starts_with("TIMEOUT") => {}
        other => panic!("{args:?} through node {via}: want UNAVAILABLE/TIMEOUT, got {other:?}"),
    }
    assert!(
        took < FAIL_FAST,
        "{args:?} through node {via} took {took:?} to fail ({reply:?})"
    );
}

/// `VCLOCK key WITHVALUES` through the node: the context token and the
/// sorted values it covers.
fn vclock_with_values(c: &Cluster, via: usize, key: &str) -> Result<(String, Vec<String>), String> {
    match c.cmd(via, &["VCLOCK", key, "WITHVALUES"])? {
        redis::Value::Array(parts) if parts.len() == 2 => {
            let token = support::text_of(&parts[0])
                .ok_or_else(|| format!("VCLOCK token {:?}", parts[0]))?;
            Ok((token, values(&parts[1])?))
        }
        other => Err(format!("VCLOCK WITHVALUES answered {other:?}")),
    }
}

/// The D3/D4 siblings are merged into D5 by a `RESOLVE` with the context of
/// a read that saw both; then every node reads exactly `D5`, a plain bulk
/// string. `strict` reads once per node (R + W > N guarantees it);
/// otherwise each node is polled (R = W = 1 converges in the background).
fn resolve_siblings_to_d5(c: &Cluster, key: &str, strict: bool) {
    let (token, seen) = eventually(
        "VCLOCK WITHVALUES through node 1 covers both siblings",
        CONVERGE,
        || match vclock_with_values(c, 1, key) {
            Ok((t, v)) if v == ["D3", "D4"] => Ok((t, v)),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(seen, ["D3", "D4"]);
    match c.cmd(1, &["RESOLVE", key, &token, "D5"]) {
        Ok(redis::Value::Okay) => {}
        other => panic!("RESOLVE {key} <context> D5 through node 1: {other:?}"),
    }
    for i in c.numbers() {
        let read = |c: &Cluster| match c.cmd(i, &["GET", key]) {
            Ok(redis::Value::BulkString(b)) if b == b"D5" => Ok(()),
            other => Err(format!("{other:?}")),
        };
        if strict {
            if let Err(e) = read(c) {
                panic!("after RESOLVE, GET {key} through node {i}: want \"D5\", got {e}");
            }
        } else {
            eventually(
                &format!("GET {key} through node {i} answers just \"D5\""),
                CONVERGE,
                || read(c),
            );
        }
    }
}

#[test]
fn a_write_through_one_node_is_read_and_deleted_through_the_others() {
    let c = Cluster::start(3);
    c.set(1, "greeting", "hello");
    assert_eq!(c.get(2, "greeting"), ["hello"]);
    assert_eq!(c.get(3, "greeting"), ["hello"]);

    // A later write through another node supersedes it everywhere.
    c.set(2, "greeting", "bonjour");
    for i in c.numbers() {
        assert_eq!(c.get(i, "greeting"), ["bonjour"], "through node {i}");
    }

    assert_eq!(c.del(3, "greeting"), 1);
    assert!(
        c.get(1, "greeting").is_empty(),
        "deleted through 3, still read through 1"
    );
    assert!(c.get(2, "greeting").is_empty());
    assert!(c.get(1, "never-written").is_empty());
}

#[test]
fn a_pipeline_through_a_cluster_node_answers_in_order_and_keeps_per_key_order() {
    // Pipelined data commands on different keys run at once on a cluster
    // node; those on one key must still apply in the order they were sent,
    // and every reply must come back in request order.
    let c = Cluster::start(3);
    let mut con = c.con(1);
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i);
    }
    pipe.cmd("SET").arg("counter").arg(0);
    for _ in 0..50 {
        pipe.cmd("INCR").arg("counter");
    }
    pipe.cmd("GET").arg("counter");
    pipe.cmd("APPEND").arg("log").arg("a");
    pipe.cmd("APPEND").arg("log").arg("b");
    pipe.cmd("GET").arg("log");
    for i in 0..200 {
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    pipe.cmd("MGET").arg("p0").arg("counter").arg("nokey");
    pipe.cmd("DEL").arg("p1").arg("p2").arg("nokey");
    let replies: Vec<redis::Value> = pipe.query(&mut con).expect("pipeline");
    assert_eq!(replies.len(), 200 + 1 + 50 + 1 + 3 + 200 + 2);
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => *n,
        other => panic!("want an integer, got {other:?}"),
    };
    for (n, v) in replies[201..251].iter().enumerate() {
        assert_eq!(int(v), n as i64 + 1, "INCR #{n} answered out of order");
    }
    assert_eq!(support::text_of(&replies[251]).as_deref(), Some("50"));
    assert_eq!(int(&replies[252]), 1);
    assert_eq!(int(&replies[253]), 2);
    assert_eq!(support::text_of(&replies[254]).as_deref(), Some("ab"));
    for i in 0..200 {
        assert_eq!(
            support::text_of(&replies[255 + i]).as_deref(),
            Some(i.to_string().as_str()),
            "GET p{i}"
        );
    }
    match &replies[455] {
        redis::Value::Array(items) => {
            assert_eq!(support::text_of(&items[0]).as_deref(), Some("0"));
            assert_eq!(support::text_of(&items[1]).as_deref(), Some("50"));
            assert_eq!(items[2], redis::Value::Nil);
        }
        other => panic!("MGET answered {other:?}"),
    }
    assert_eq!(int(&replies[456]), 2, "DEL of two keys and a missing one");
    assert_eq!(c.get(3, "counter"), ["50"]);
}

#[test]
fn with_two_owners_down_writes_and_reads_go_to_fallbacks_and_hints_reach_the_owners() {
    // Sloppy quorum both ways: with two of a key's three owners down, W=2
    // and R=2 are met by the surviving owner and a fallback (which keeps the
    // write as a durable hint and answers reads from it). The hint survives
    // a SIGKILL of the fallback holding it and reaches the owners once they
    // are back.
    let mut c = Cluster::start(5);
    let key = "sloppy";
    let owners = c.owners(1, key);
    let (alive, down) = (owners[0], [owners[1], owners[2]]);
    let others: Vec<usize> = c
        .numbers()
        .into_iter()
        .filter(|n| !owners.contains(n))
        .collect();
    for n in down {
        c.kill(n);
    }
    let survivors: Vec<usize> = c
        .numbers()
        .into_iter()
        .filter(|n| !down.contains(n))
        .collect();
    c.wait_status(&survivors, &down, "down");
    c.set(alive, key, "kept-by-hints");
    assert_eq!(
        c.get(alive, key),
        ["kept-by-hints"],
        "an R=2 read with two owners down"
    );
    for &n in &others {
        assert_eq!(c.get(n, key), ["kept-by-hints"], "through node {n}");
    }
    // The hints are on the fallbacks, durable: SIGKILL them and bring them back.
    let held: Vec<usize> = others
        .iter()
        .copied()
        .filter(|&n| match c.cmd(n, &["CLUSTER", "HINTS"]) {
            Ok(redis::Value::Array(rows)) => !rows.is_empty(),
            _ => false,
        })
        .collect();
    assert!(!held.is_empty(), "no fallback holds a hint");
    // INFO names the targets too, one line each.
    let info = match c.cmd(held[0], &["INFO", "cluster"]) {
        Ok(v) => support::text_of(&v).unwrap_or_default(),
        Err(e) => panic!("INFO cluster: {e}"),
    };
    assert!(
        down.iter()
            .any(|&n| info.contains(&format!("hints_for_{}:hints=", c.id(n)))),
        "{info}"
    );
    for &n in &held {
        c.kill(n);
        c.restart(n);
    }
    for n in down {
        c.restart(n);
    }
    c.wait_all_up();
    // Every hint is handed off and deleted...
    for &n in &held {
        eventually(
            &format!("node {n} hands its hints off"),
            CONVERGE,
            || match c.cmd(n, &["CLUSTER", "HINTS"]) {
                Ok(redis::Value::Array(rows)) if rows.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    // ... and the two owners that were down have the value on their own:
    // without the third owner, an R=2 read asks exactly them.
    c.kill(alive);
    c.wait_status(&[down[0]], &[alive], "down");
    assert_eq!(c.get(down[0], key), ["kept-by-hints"]);
}

#[test]
fn five_nodes_serve_every_key_through_every_node() {
    let c = Cluster::start(5);
    let key = |i: usize| format!("key-{i}");
    let value = |i: usize| format!("value-{i}");
    for writer in c.numbers() {
        c.set(writer, &key(writer), &value(writer));
    }
    // With N=3 of 5, some readers are not replicas of a key and must
    // forward; R + W > N means every read meets the write.
    for reader in c.numbers() {
        for writer in c.numbers() {
            assert_eq!(
                c.get(reader, &key(writer)),
                [value(writer)],
                "{} written through node {writer}, read through node {reader}",
                key(writer)
            );
        }
    }
    c.set(4, &key(1), "overwritten");
    assert_eq!(c.del(5, &key(2)), 1);
    for reader in c.numbers() {
        assert_eq!(c.get(reader, &key(1)), ["overwritten"], "node {reader}");
        assert!(c.get(reader, &key(2)).is_empty(), "node {reader}");
    }
}

#[test]
fn writes_survive_one_dead_node_fail_fast_without_a_quorum_and_all_nodes_read_them_after_restart() {
    let mut c = Cluster::start(3);
    c.set(1, "before", "b0");

    // Right after the kill, before gossip notices: node 3 refuses
    // connections, so nodes 1 and 2 make R=2 and W=2 between themselves.
    c.kill(3);
    c.set(1, "k1", "v1");
    c.set(2, "k2", "v2");
    assert_eq!(c.get(2, "k1"), ["v1"]);
    assert_eq!(c.get(1, "k2"), ["v2"]);
    assert_eq!(c.get(1, "before"), ["b0"]);

    // And once node 3 is known down.
    c.wait_status(&[1, 2], &[3], "down");
    c.set(2, "k3", "v3");
    assert_eq!(c.get(1, "k3"), ["v3"]);

    // One node left of three: neither quorum can be met, and the client
    // hears so at once instead of waiting.
    c.kill(2);
    assert_quorum_error(&c, 1, &["SET", "k4", "v4"]);
    assert_quorum_error(&c, 1, &["GET", "k1"]);

    // Both come back: membership converges, and what was written while
    // node 3 was down is read through every node.
    c.restart(2);
    c.restart(3);
    c.wait_all_up();
    for i in c.numbers() {
        for (k, v) in [("before", "b0"), ("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
            eventually_reads(&c, i, k, &[v]);
        }
    }
    c.set(3, "after", "a");
    assert_eq!(c.get(1, "after"), ["a"]);
}

#[test]
fn a_paused_replica_does_not_stall_quorum_reads_or_writes() {
    let mut c = Cluster::start(3);
    c.set(1, "k", "v0");

    // SIGSTOP: node 3's sockets stay open and nothing answers, the case a
    // refused connection does not cover. W=2 and R=2 are met by 1 and 2.
    c.pause(3);
    c.set(1, "k", "v1");
    assert_eq!(c.get(2, "k"), ["v1"]);
    c.set(2, "k2", "w");
    assert_eq!(c.get(1, "k2"), ["w"]);

    c.resume(3);
    c.wait_all_up();
    eventually_reads(&c, 3, "k", &["v1"]);
    eventually_reads(&c, 3, "k2", &["w"]);
}

#[test]
fn a_node_restarted_with_a_wiped_disk_reads_the_quorum_and_keeps_its_new_writes() {
    let mut c = Cluster::start(3);
    c.set(1, "w", "x");
    c.kill(3);
    c.wipe(3);
    c.restart(3);
    c.wait_all_up();
    // Nodes 1 and 2 still hold the value, so a quorum read through the
    // empty node finds it.
    eventually_reads(&c, 3, "w", &["x"]);
    // The wiped node writes as a new actor: its write must never look older
    // than what its earlier life wrote (Riak's kv679), so it is read back.
    c.set(3, "w", "y");
    for i in c.numbers() {
        let got = c.get(i, "w");
        assert!(
            got.contains(&"y".to_string()),
            "node {i} lost the write: {got:?}"
        );
    }
}

#[test]
fn concurrent_writes_on_both_sides_of_a_partition_become_siblings_that_resolve_replaces() {
    let c = Cluster::builder(5).proxied().start();
    // The proxies recognise the real binary's HELLO: each has seen every
    // other node dial in (gossip reaches everyone within a few rounds).
    for i in c.numbers() {
        let others: Vec<usize> = c.numbers().into_iter().filter(|&n| n != i).collect();
        eventually(
            &format!("node {i}'s proxy has seen HELLOs from {others:?}"),
            CONVERGE,
            || {
                let seen = c.net().dialers_seen(i);
                if seen == support::set_of(&others) {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        );
    }

    // Split the key's owners 1 | 2 and give each side one non-owner: with
    // the sloppy quorum each side still reaches W=2 nodes, and each side's
    // write lands on at least one owner, so no hint replay is needed to see
    // both after the heal.
    let key = "k";
    let owners = c.owners(1, key);
    assert_eq!(owners.len(), 3, "N=3 owners of {key}: {owners:?}");
    let spare: Vec<usize> = c
        .numbers()
        .into_iter()
        .filter(|n| !owners.contains(n))
        .collect();
    let side_a = [owners[0], spare[0]];
    let side_b = [owners[1], owners[2], spare[1]];
    let (a, b) = (owners[0], owners[1]);

    c.set(1, key, "D1");
    c.set(1, key, "D2");
    for i in c.numbers() {
        assert_eq!(c.get(i, key), ["D2"], "through node {i}");
    }

    c.net().partition(&[&side_a, &side_b]);
    c.wait_status(&side_a, &side_b, "down");
    c.wait_status(&side_b, &side_a, "down");
    c.set(a, key, "D3");
    c.set(b, key, "D4");

    c.net().heal();
    c.wait_all_up();
    // D3 and D4 were written concurrently; both descend from D2, which is
    // gone. Reads and read repair bring both to every replica.
    for i in c.numbers() {
        eventually_reads(&c, i, key, &["D3", "D4"]);
    }
    resolve_siblings_to_d5(&c, key, true);
}

#[test]
fn a_write_right_after_a_partition_reaches_its_quorum_through_a_fallback() {
    let c = Cluster::builder(5).proxied().start();
    let key = "hedged";
    let owners = c.owners(1, key);
    assert_eq!(owners.len(), 3, "N=3 owners of {key}: {owners:?}");
    let cut_off = [owners[1], owners[2]];
    let rest: Vec<usize> = c
        .numbers()
        .into_iter()
        .filter(|n| !cut_off.contains(n))
        .collect();

    // Blackhole two of the three owners and write at once, before gossip
    // can call them down: their requests hang, so the coordinator's second
    // acknowledgement has to come from a fallback it asks in their place.
    c.net().partition(&[&rest, &cut_off]);
    c.set(owners[0], key, "v");

    c.net().heal();
    c.wait_all_up();
    // The owner that coordinated holds the value; reads through it repair
    // the other two, so every node ends up reading it.
    for i in c.numbers() {
        eventually_reads(&c, i, key, &["v"]);
    }
}

#[test]
fn read_after_partition_heal_returns_both_siblings() {
    // W=1 lets each side of {1} | {2, 3} write; R=1 means only read repair
    // and the background make every replica agree, so reads are polled.
    let c = Cluster::builder(3)
        .proxied()
        .args(&[
            "--replicas",
            "3",
            "--read-quorum",
            "1",
            "--write-quorum",
            "1",
        ])
        .start();
    let key = "k";
    c.set(1, key, "D1");
    c.set(1, key, "D2");
    for i in c.numbers() {
        eventually_reads(&c, i, key, &["D2"]);
    }

    c.net().partition_with(CutMode::Close, &[&[1], &[2, 3]]);
    c.set(1, key, "D3");
    c.set(2, key, "D4");
    assert_eq!(c.get(1, key), ["D3"], "node 1 alone reads its own write");
    // The cut is real: gossip on each side calls the other side down.
    c.wait_status(&[1], &[2, 3], "down");
    c.wait_status(&[2, 3], &[1], "down");

    c.net().heal();
    c.wait_all_up();
    for i in c.numbers() {
        eventually_reads(&c, i, key, &["D3", "D4"]);
    }
    resolve_siblings_to_d5(&c, key, false);
}

#[test]
fn garbage_on_the_peer_port_does_not_disturb_serving() {
    let c = Cluster::start(3);
    let peer = |i: usize| ("127.0.0.1", c.node(i).peer_port);

    let mut random = vec![0u8; 4096];
    rand::thread_rng().fill_bytes(&mut random);
    // A HELLO claiming to be node 2 (there is no secret to refuse it), then
    // a REQUEST and a ONEWAY whose payloads decode as no message at all.
    let mut forged = hello_bytes(1, c.id(2));
    for body in [
        [
            &[0x10u8][..],
            &7u64.to_be_bytes(),
            &1000u32.to_be_bytes(),
            b"\xff\xfe junk",
        ]
        .concat(),
        [&[0x13u8][..], b"\xff\xfe more junk"].concat(),
    ] {
        forged.extend_from_slice(&(body.len() as u32).to_be_bytes());
        forged.extend_from_slice(&body);
    }
    let junk: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: ringkv\r\n\r\n".to_vec(),
        ),
        ("a Redis command", b"*1\r\n$4\r\nPING\r\n".to_vec()),
        ("protocol version 2", hello_bytes(2, c.id(3))),
        (
            "a 4 GiB frame length",
            b"RKVP\x01\xff\xff\xff\xff\x01".to_vec(),
        ),
        ("a forged HELLO then undecodable frames", forged),
    ];

    // A connection that sent half a preamble and then nothing, held open
    // for the whole test.
    let mut idle = TcpStream::connect(peer(1)).expect("connect to node 1's peer port");
    idle.write_all(b"RKV").expect("write half a preamble");

    for (round, (what, bytes)) in junk.iter().enumerate() {
        let mut held = Vec::new();
        for target in c.numbers() {
            let mut s = TcpStream::connect(peer(target)).expect("connect to a peer port");
            let _ = s.write_all(bytes);
            held.push(s);
        }
        let k = format!("after-{round}");
        c.set(1 + round % 3, &k, what);
        for i in c.numbers() {
            assert_eq!(c.get(i, &k), [*what], "after {what}, through node {i}");
        }
    }
    c.wait_all_up();
    for i in c.numbers() {
        assert_eq!(c.get(i, "after-0"), ["random bytes"], "through node {i}");
    }
    drop(idle);
}
