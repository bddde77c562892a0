//! Merkle-tree anti-entropy between real `ringkv` processes: a replica that
//! was down while writes and deletes went on is repaired by `CLUSTER REPAIR`
//! (and, in the second test, by the periodic rounds alone) until every
//! replica of every partition has the same Merkle root, the same keys and
//! values, and the deleted key stays deleted.
//!
//! Three nodes with the default N=3, R=2, W=2, so each node owns every
//! partition and `CLUSTER MERKLE` (one `partition root` line per owned
//! partition) must read the same on all of them. With three nodes there is
//! no fallback to hold hints for the dead node, so nothing but anti-entropy
//! can bring it the writes it missed; the tests never read through the
//! stale node before checking, so read repair cannot help either. What is
//! checked per node uses node-local commands (`DBSIZE`, `KEYS`,
//! `CLUSTER MERKLE`).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{eventually, text_of, Cluster};

/// How long the periodic rounds may take to converge.
const CONVERGE: Duration = Duration::from_secs(20);

/// The node's `CLUSTER MERKLE` lines (`partition root`), in order.
fn merkle(c: &Cluster, node: usize) -> Result<Vec<String>, String> {
    match c.cmd(node, &["CLUSTER", "MERKLE"])? {
        redis::Value::Array(rows) => rows
            .iter()
            .map(|r| text_of(r).ok_or_else(|| format!("MERKLE row {r:?}")))
            .collect(),
        other => Err(format!("CLUSTER MERKLE answered {other:?}")),
    }
}

/// Every node's roots, once every tree is built.
fn built_roots(c: &Cluster, node: usize) -> Result<Vec<String>, String> {
    let rows = merkle(c, node)?;
    if rows.len() != 256 {
        return Err(format!("node {node} lists {} partitions", rows.len()));
    }
    if let Some(building) = rows.iter().find(|r| r.ends_with("building")) {
        return Err(format!("node {node}: {building}"));
    }
    Ok(rows)
}

/// Partitions whose root on `a` differs from `b`'s.
fn differing(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn dbsize(c: &Cluster, node: usize) -> i64 {
    match c.cmd(node, &["DBSIZE"]) {
        Ok(redis::Value::Int(n)) => n,
        other => panic!("DBSIZE on node {node}: {other:?}"),
    }
}

fn keys(c: &Cluster, node: usize) -> BTreeSet<String> {
    match c.cmd(node, &["KEYS", "*"]) {
        Ok(redis::Value::Array(keys)) => keys.iter().filter_map(text_of).collect(),
        other => panic!("KEYS on node {node}: {other:?}"),
    }
}

/// `INFO cluster` field `name` of the node.
fn info_field(c: &Cluster, node: usize, name: &str) -> u64 {
    let text = match c.cmd(node, &["INFO", "cluster"]) {
        Ok(v) => text_of(&v).unwrap_or_default(),
        Err(e) => panic!("INFO cluster on node {node}: {e}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO cluster of node {node}:\n{text}"))
}

/// The `field:value` lines of a `CLUSTER REPAIR` answer.
fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the REPAIR summary:\n{summary}"))
}

/// Writes a base on all three, kills node 3, then writes, overwrites and
/// deletes through node 1; restarts node 3, which now lacks all that.
fn cluster_with_a_stale_replica(extra: &[&str]) -> Cluster {
    let mut c = Cluster::builder(3).fsync("always").args(extra).start();
    for i in 0..40 {
        c.set(1, &format!("base{i}"), "v1");
    }
    c.set(1, "doomed", "here");
    // The third replica gets each write shortly after the quorum answered.
    eventually("node 3 holds the base", CONVERGE, || match dbsize(&c, 3) {
        41 => Ok(()),
        n => Err(format!("DBSIZE {n}")),
    });
    // Seen is not yet durable: a write node 3 coordinates is acknowledged
    // once its own log is synced through it, and so through everything
    // before it, which the SIGKILL below must not lose.
    c.set(3, "marker", "synced");
    c.kill(3);
    for i in 0..100 {
        c.set(1, &format!("new{i}"), "fresh");
    }
    for i in 0..10 {
        c.set(1, &format!("base{i}"), "v2");
    }
    assert_eq!(c.del(1, "doomed"), 1);
    c.restart(3);
    c.wait_all_up();
    c
}

#[test]
fn cluster_repair_makes_a_replica_that_missed_writes_equal_and_keeps_deletes() {
    // No periodic rounds: only CLUSTER REPAIR can repair node 3.
    let c = cluster_with_a_stale_replica(&["--anti-entropy-interval-ms", "0"]);
    let roots1 = eventually("node 1's trees are built", CONVERGE, || built_roots(&c, 1));
    let roots3 = eventually("node 3's trees are built", CONVERGE, || built_roots(&c, 3));
    assert!(differing(&roots1, &roots3) > 0, "node 3 should lag");
    assert_eq!(dbsize(&c, 1), 141);
    assert_eq!(
        dbsize(&c, 3),
        42,
        "node 3 missed the new keys and the delete"
    );

    let summary = match c.cmd(3, &["CLUSTER", "REPAIR"]) {
        Ok(v) => text_of(&v).unwrap_or_default(),
        Err(e) => panic!("CLUSTER REPAIR on node 3: {e}"),
    };
    assert_eq!(summary_field(&summary, "partitions"), 256, "{summary}");
    assert_eq!(summary_field(&summary, "aborted"), 0, "{summary}");
    assert!(summary_field(&summary, "repaired") > 0, "{summary}");
    // 100 new keys, 10 overwritten, 1 deleted. Nodes 1 and 2 both took
    // every write (W=2 of the two that were up), so the first session of
    // each partition brings node 3 everything and the second finds it equal.
    assert_eq!(summary_field(&summary, "keys_exchanged"), 111, "{summary}");
    assert_eq!(summary_field(&summary, "sessions"), 512, "{summary}");

    // Every replica of every partition has the same root, the same keys.
    let roots: Vec<Vec<String>> = (1..=3)
        .map(|n| built_roots(&c, n).expect("roots"))
        .collect();
    for n in 2..=3 {
        assert_eq!(differing(&roots[0], &roots[n - 1]), 0, "node {n}");
    }
    let expected = keys(&c, 1);
    assert_eq!(expected.len(), 141);
    for n in 2..=3 {
        assert_eq!(keys(&c, n), expected, "node {n}");
        assert_eq!(dbsize(&c, n), 141, "node {n}");
    }
    assert!(!expected.contains("doomed"));
    for n in 1..=3 {
        assert!(
            c.get(n, "doomed").is_empty(),
            "doomed came back via node {n}"
        );
        assert_eq!(c.get(n, "base3"), vec!["v2"]);
        assert_eq!(c.get(n, "new99"), vec!["fresh"]);
    }

    // A second repair finds nothing to do.
    let again = match c.cmd(3, &["CLUSTER", "REPAIR", "7"]) {
        Ok(v) => text_of(&v).unwrap_or_default(),
        Err(e) => panic!("CLUSTER REPAIR 7 on node 3: {e}"),
    };
    assert_eq!(summary_field(&again, "partitions"), 1, "{again}");
    assert_eq!(summary_field(&again, "sessions"), 2, "{again}");
    assert_eq!(summary_field(&again, "in_sync"), 2, "{again}");
    assert_eq!(summary_field(&again, "keys_exchanged"), 0, "{again}");

    assert!(info_field(&c, 3, "anti_entropy_keys_exchanged") >= 111);
    assert!(info_field(&c, 3, "anti_entropy_bytes_sent") > 0);
    assert!(info_field(&c, 1, "anti_entropy_sessions_served") > 0);
    assert_eq!(info_field(&c, 3, "anti_entropy_trees_ready"), 256);
    assert_eq!(info_field(&c, 3, "anti_entropy_foreign_keys_dropped"), 0);

    // One root can be asked for; bad partitions are refused.
    let one = c.cmd(2, &["CLUSTER", "MERKLE", "7"]).map(|v| text_of(&v));
    assert_eq!(
        one,
        Ok(roots[1][7].split_whitespace().nth(1).map(str::to_string))
    );
    for bad in ["256", "x", "-1"] {
        let reply = c.cmd(2, &["CLUSTER", "MERKLE", bad]);
        assert!(
            matches!(&reply, Err(e) if e.contains("partition")),
            "{bad}: {reply:?}"
        );
        let reply = c.cmd(2, &["CLUSTER", "REPAIR", bad]);
        assert!(
            matches!(&reply, Err(e) if e.contains("partition")),
            "{bad}: {reply:?}"
        );
    }
}

#[test]
fn periodic_rounds_repair_a_stale_replica_without_being_asked() {
    let c = cluster_with_a_stale_replica(&["--anti-entropy-interval-ms", "300"]);
    eventually(
        "every replica of every partition has the same Merkle root",
        CONVERGE,
        || {
            let roots: Vec<Vec<String>> = (1..=3)
                .map(|n| built_roots(&c, n))
                .collect::<Result<_, _>>()?;
            let lagging: Vec<usize> = (2..=3)
                .map(|n| differing(&roots[0], &roots[n - 1]))
                .collect();
            if lagging.iter().all(|&d| d == 0) {
                Ok(())
            } else {
                Err(format!("partitions differing from node 1: {lagging:?}"))
            }
        },
    );
    assert_eq!(dbsize(&c, 3), 141);
    assert!(!keys(&c, 3).contains("doomed"));
    assert!(info_field(&c, 3, "anti_entropy_rounds") > 0);
    assert!(
        info_field(&c, 1, "anti_entropy_sessions_repaired")
            + info_field(&c, 2, "anti_entropy_sessions_repaired")
            + info_field(&c, 3, "anti_entropy_sessions_repaired")
            > 0
    );
}
