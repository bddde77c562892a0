//! Join and leave between real `ringkv` processes: a node that joins gets
//! the partitions it now owns streamed to it, the old owners drop exactly
//! what they lost, and a node that leaves (`CLUSTER LEAVE`, or `CLUSTER
//! FORGET` of it while it runs) hands everything back before it is
//! stopped; every key reads right through every node throughout.
//!
//! Three nodes with `--replicas 2` (R = W = 2), so that a fourth node takes
//! partitions away from the others (with N = 3 and three nodes every node
//! would own everything). What a node holds is checked with node-local
//! commands (`KEYS`, `DBSIZE`) against the owners `CLUSTER PREFLIST` names,
//! so "the old owners dropped what they lost" is exact: every node holds
//! exactly the keys it owns.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::{eventually, text_of, values, Cluster};

/// Keys written before the join.
const KEYS: usize = 2000;

/// How long a rebalance may take to settle.
const SETTLE: Duration = Duration::from_secs(20);

fn key(i: usize) -> String {
    format!("key:{i}")
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

/// `INFO cluster` of the node as `field -> value`.
fn info(c: &Cluster, node: usize) -> Result<BTreeMap<String, String>, String> {
    let text = text_of(&c.cmd(node, &["INFO", "cluster"])?).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

fn field(info: &BTreeMap<String, String>, name: &str) -> u64 {
    info.get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in INFO cluster: {info:?}"))
}

/// Waits until every node in `nodes` reports its rebalancing settled for
/// its current view with nothing pending.
fn wait_settled(c: &Cluster, nodes: &[usize]) {
    for &n in nodes {
        eventually(&format!("node {n} settles"), SETTLE, || {
            let i = info(c, n)?;
            if field(&i, "rebalance_settled") == 1 && field(&i, "rebalance_partitions_pending") == 0
            {
                Ok(())
            } else {
                Err(format!(
                    "settled={} pending={} held={} last_error={}",
                    i["rebalance_settled"],
                    i["rebalance_partitions_pending"],
                    i["rebalance_partitions_held"],
                    i["rebalance_last_error"]
                ))
            }
        });
    }
}

/// Writes every key through the nodes in turn, pipelined.
fn write_all(c: &Cluster, nodes: &[usize]) {
    for (turn, &node) in nodes.iter().enumerate() {
        let mut con = c.con(node);
        let mine: Vec<usize> = (turn..KEYS).step_by(nodes.len()).collect();
        // Pipelines of 100: a batch's replies come back together, and a
        // loaded machine under `fsync always` must answer well within the
        // client's read timeout.
        for batch in mine.chunks(100) {
            let mut pipe = redis::pipe();
            for &i in batch {
                pipe.cmd("SET").arg(key(i)).arg(value(i)).ignore();
            }
            pipe.query::<()>(&mut con)
                .unwrap_or_else(|e| panic!("SETs through node {node}: {e}"));
        }
    }
}

/// What a key may read as.
#[derive(Clone, Debug)]
struct Expected {
    /// The value of the last acknowledged write (`None` if the last write
    /// failed: a write that failed its quorum may still be stored somewhere).
    must: Option<String>,
    /// Every value the key may show.
    may: BTreeSet<String>,
}

fn initial() -> Vec<Expected> {
    (0..KEYS)
        .map(|i| Expected {
            must: Some(value(i)),
            may: BTreeSet::from([value(i)]),
        })
        .collect()
}

/// Overwrites every key once, one `SET` at a time through `ports` in turn,
/// on a thread of its own (so the writes span what the test does
/// meanwhile); the thread returns what each key may read as after.
///
/// A plain `SET` supersedes the versions its *coordinator's* replica knows
/// (DESIGN.md §3). A new owner that coordinates it before the stream
/// brought it the key does not know the old value, so the two become
/// siblings: allowed here (the old value may stay as a sibling of the
/// acknowledged one), and counted by [`check_all`].
fn overwrite_in_background(ports: Vec<u16>) -> std::thread::JoinHandle<Vec<Expected>> {
    std::thread::spawn(move || {
        let mut cons: Vec<redis::Connection> = ports
            .iter()
            .map(|p| {
                let con = redis::Client::open(format!("redis://127.0.0.1:{p}/"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
                    .expect("connect");
                con.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                con
            })
            .collect();
        let mut expected = initial();
        for (i, e) in expected.iter_mut().enumerate() {
            let newer = format!("{}-again", value(i));
            let con = &mut cons[i % ports.len()];
            e.may.insert(newer.clone());
            match redis::cmd("SET").arg(key(i)).arg(&newer).query::<()>(con) {
                Ok(()) => e.must = Some(newer),
                Err(err) => {
                    eprintln!("SET {} during the rebalance failed: {err}", key(i));
                    e.must = None;
                }
            }
        }
        expected
    })
}

/// Reads every key through `node`, pipelined, and checks it: the last
/// acknowledged value is there, nothing else but values it was written
/// with. Returns how many keys read as siblings.
fn check_all(c: &Cluster, node: usize, expected: &[Expected]) -> usize {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("GET").arg(key(i));
    }
    let replies: Vec<redis::Value> = pipe
        .query(&mut c.con(node))
        .unwrap_or_else(|e| panic!("GETs through node {node}: {e}"));
    assert_eq!(replies.len(), KEYS);
    let mut siblings = 0;
    for (i, reply) in replies.iter().enumerate() {
        let got = values(reply).unwrap_or_else(|e| panic!("GET {}: {e}", key(i)));
        let e = &expected[i];
        let ok = !got.is_empty()
            && got.iter().all(|v| e.may.contains(v))
            && e.must.as_ref().is_none_or(|m| got.contains(m));
        assert!(
            ok,
            "GET {} through node {node} read {got:?}, expected {e:?}",
            key(i)
        );
        siblings += usize::from(got.len() > 1);
    }
    siblings
}

/// Each key's owners (node numbers), as `observer` sees the ring.
fn owners_of_all(c: &Cluster, observer: usize) -> Vec<BTreeSet<usize>> {
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("CLUSTER").arg("PREFLIST").arg(key(i));
    }
    let rows: Vec<redis::Value> = pipe
        .query(&mut c.con(observer))
        .unwrap_or_else(|e| panic!("PREFLISTs on node {observer}: {e}"));
    rows.iter()
        .map(|list| {
            let redis::Value::Array(entries) = list else {
                panic!("PREFLIST answered {list:?}");
            };
            entries
                .iter()
                .filter_map(|e| {
                    let redis::Value::Array(fields) = e else {
                        panic!("PREFLIST row {e:?}");
                    };
                    let text = |i: usize| fields.get(i).and_then(text_of).unwrap_or_default();
                    (text(3) == "owner").then(|| c.number_of(&text(0)))
                })
                .collect()
        })
        .collect()
}

/// The keys stored on `node` (node-local).
fn stored_keys(c: &Cluster, node: usize) -> BTreeSet<String> {
    match c.cmd(node, &["KEYS", "*"]) {
        Ok(redis::Value::Array(keys)) => keys.iter().filter_map(text_of).collect(),
        other => panic!("KEYS on node {node}: {other:?}"),
    }
}

/// Every node in `nodes` stores exactly the keys it owns, as `observer`'s
/// ring says; every key has two owners among `nodes`.
fn check_placement(c: &Cluster, nodes: &[usize], observer: usize) {
    let owners = owners_of_all(c, observer);
    for (i, o) in owners.iter().enumerate() {
        assert_eq!(o.len(), 2, "{} has owners {o:?}", key(i));
        assert!(
            o.iter().all(|n| nodes.contains(n)),
            "{} owners {o:?}",
            key(i)
        );
    }
    for &n in nodes {
        let expected: BTreeSet<String> = owners
            .iter()
            .enumerate()
            .filter(|(_, o)| o.contains(&n))
            .map(|(i, _)| key(i))
            .collect();
        let stored = stored_keys(c, n);
        let missing: Vec<&String> = expected.difference(&stored).take(5).collect();
        let extra: Vec<&String> = stored.difference(&expected).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "node {n} stores {} keys, owns {}; missing e.g. {missing:?}, not owned but kept e.g. {extra:?}",
            stored.len(),
            expected.len()
        );
    }
}

#[test]
fn a_join_streams_partitions_to_the_new_node_and_a_leave_or_forget_streams_them_back() {
    let started = Instant::now();
    let mut c = Cluster::builder(3)
        .args(&["--replicas", "2", "--anti-entropy-interval-ms", "0"])
        .start();
    write_all(&c, &[1, 2, 3]);
    check_placement(&c, &[1, 2, 3], 1);
    let before = started.elapsed();

    // Join: node 4 takes its share; the others hand it over and drop it,
    // while a client overwrites every key through every node.
    let joiner = c.add_node();
    let writer = overwrite_in_background((1..=4).map(|n| c.node(n).port).collect());
    c.wait_all_up();
    let join_at = Instant::now();
    wait_settled(&c, &[1, 2, 3, 4]);
    let join_took = join_at.elapsed();
    let expected = writer.join().expect("the writer thread");
    // Its last writes may have come after the last round: settle again.
    wait_settled(&c, &[1, 2, 3, 4]);
    check_placement(&c, &[1, 2, 3, 4], 1);
    let joined = info(&c, joiner).expect("INFO of the joiner");
    assert!(field(&joined, "rebalance_keys_received") > 0, "{joined:?}");
    let dropped: u64 = [1, 2, 3]
        .iter()
        .map(|&n| field(&info(&c, n).expect("INFO"), "rebalance_partitions_dropped"))
        .sum();
    assert!(dropped > 0, "no old owner dropped a partition");
    let mut siblings = 0;
    for n in 1..=4 {
        siblings = check_all(&c, n, &expected);
    }

    // Leave: node 2 hands everything to the others, then is stopped.
    let leaver = 2;
    match c.cmd(leaver, &["CLUSTER", "LEAVE"]) {
        Ok(redis::Value::Okay) => {}
        other => panic!("CLUSTER LEAVE answered {other:?}"),
    }
    let leave_at = Instant::now();
    c.wait_status(&[1, 3, 4], &[leaver], "left");
    eventually("the leaver holds nothing", SETTLE, || {
        let i = info(&c, leaver)?;
        match field(&i, "rebalance_partitions_held") {
            0 if field(&i, "rebalance_settled") == 1 => Ok(()),
            held => Err(format!(
                "held={held} last_error={}",
                i["rebalance_last_error"]
            )),
        }
    });
    assert_eq!(stored_keys(&c, leaver).len(), 0, "the leaver kept keys");
    c.kill(leaver);
    let rest = [1, 3, 4];
    wait_settled(&c, &rest);
    let leave_took = leave_at.elapsed();
    check_placement(&c, &rest, 1);
    for n in rest {
        check_all(&c, n, &expected);
    }

    // FORGET of a live node: node 4 learns its tombstone from gossip and
    // hands its partitions away like a leaver.
    let forgotten = 4;
    let id = c.id(forgotten).to_string();
    match c.cmd(1, &["CLUSTER", "FORGET", &id]) {
        Ok(redis::Value::Okay) => {}
        other => panic!("CLUSTER FORGET answered {other:?}"),
    }
    let forget_at = Instant::now();
    eventually("the forgotten node holds nothing", SETTLE, || {
        let i = info(&c, forgotten)?;
        match field(&i, "rebalance_partitions_held") {
            0 if field(&i, "rebalance_settled") == 1 => Ok(()),
            held => Err(format!(
                "held={held} state={} last_error={}",
                text_of(&c.cmd(forgotten, &["CLUSTER", "INFO"])?).unwrap_or_default(),
                i["rebalance_last_error"]
            )),
        }
    });
    c.kill(forgotten);
    let rest = [1, 3];
    wait_settled(&c, &rest);
    let forget_took = forget_at.elapsed();
    check_placement(&c, &rest, 1);
    for n in rest {
        check_all(&c, n, &expected);
    }
    eprintln!(
        "{KEYS} keys: cluster up and written in {before:?}; join settled in {join_took:?}; \
         leave settled in {leave_took:?}; forget settled in {forget_took:?}; total {:?}; \
         {siblings} keys overwritten during the join read as siblings",
        started.elapsed()
    );
}

/// Regression: a restarted node is alone in its ring until gossip finds
/// the others; planning with that ring would make it push every partition
/// it holds to every co-owner. It must stream nothing, and every node must
/// still hold exactly what it owns.
#[test]
fn a_restarted_node_streams_nothing_and_placement_stays_exact() {
    // fsync always: the SIGKILL below must not lose the node's keys (under
    // `no`, the placement check would see the loss, not rebalancing).
    let mut c = Cluster::builder(3)
        .fsync("always")
        .args(&["--replicas", "2", "--anti-entropy-interval-ms", "0"])
        .start();
    write_all(&c, &[1, 2, 3]);
    c.kill(3);
    // Keep the restarted node alone for a while: its seed does not answer.
    c.pause(1);
    c.pause(2);
    c.restart(3);
    std::thread::sleep(Duration::from_millis(1500));
    c.resume(1);
    c.resume(2);
    c.wait_all_up();
    wait_settled(&c, &[1, 2, 3]);
    // A few more rounds' worth of time, in case a late plan streams.
    std::thread::sleep(Duration::from_secs(1));
    for n in 1..=3 {
        let i = info(&c, n).expect("INFO");
        assert_eq!(
            field(&i, "rebalance_partitions_sent"),
            0,
            "node {n} streamed partitions after a restart: {i:?}"
        );
    }
    check_placement(&c, &[1, 2, 3], 1);
    assert_eq!(check_all(&c, 3, &initial()), 0);
}
