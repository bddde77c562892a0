//! Anti-entropy benchmark: two replicas of `--keys` keys that differ in
//! `--differing` of them; how long one repair takes and how many bytes it
//! moves, next to the size of the data.
//!
//! ```text
//! cargo run --release --example anti_entropy_bench -- [--keys N] [--differing D] ...
//! ```
//!
//! Both replicas are real keyspaces (storage engines in directories under
//! `--dir`, deleted afterwards) driven by the server's own anti-entropy code
//! ([`LocalSide`]); only the network is replaced by handing each encoded
//! request to the other side in memory, so the byte counts are the real
//! frame payloads but no time is spent on sockets.
//!
//! 1. `load`: the same keys (`key:NNNNNNNNNN`, `--value-bytes` values, one
//!    version each, identical encodings) written straight into both engines.
//! 2. `build`: every partition's Merkle tree built from a scan, as at
//!    start-up (per replica).
//! 3. `diverge`: half of the differing keys are new keys written to replica
//!    A only; the other half get a concurrent version on replica B (they
//!    will end with two siblings). Both through the replica's write path, so
//!    the trees follow incrementally.
//! 4. `repair`: one session per partition from A to B (what `CLUSTER REPAIR`
//!    does with one peer); then the roots are compared.
//! 5. `idle`: the same again between the now equal replicas: the cost of a
//!    round that finds nothing.
//!
//! A benchmark is a tool, not a test: it prints a table and never fails on a
//! number (it does fail if the replicas do not converge).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Parser;
use ringkv::cluster::messages::Message;
use ringkv::cluster::ring::NodeId;
use ringkv::server::anti_entropy::{AntiEntropyConfig, LocalSide, RoundSummary};
use ringkv::server::keyspace::layout::{self, PartitionId};
use ringkv::server::keyspace::replica::Key;
use ringkv::server::keyspace::{Keyspace, KeyspaceOptions};
use ringkv::storage::WriteBatch;
use ringkv::version::{ActorId, Payload, SiblingSet};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(about = "ringkv anti-entropy benchmark")]
struct Args {
    /// Working directory (deleted afterwards).
    #[arg(long, default_value = "target/anti-entropy-bench")]
    dir: PathBuf,
    /// Keys on each replica.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Keys that differ between the replicas.
    #[arg(long, default_value_t = 100)]
    differing: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Anti-entropy rate limit in bytes per second (0 = unlimited; the
    /// server's default is 8388608).
    #[arg(long, default_value_t = 0)]
    bytes_per_sec: u64,
    /// Also write the table (markdown) to this file, e.g.
    /// `docs/anti-entropy-bench-latest.md`.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Replica {
    keyspace: Keyspace,
    side: LocalSide,
    id: NodeId,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&args));
    let _ = std::fs::remove_dir_all(&args.dir);
    result
}

async fn run(args: &Args) -> Result<()> {
    let _ = std::fs::remove_dir_all(&args.dir);
    let config = AntiEntropyConfig {
        interval: Duration::ZERO,
        bytes_per_sec: args.bytes_per_sec,
        limits: Default::default(),
    };
    let open = |name: &str| -> Result<Replica> {
        let keyspace = Keyspace::open(&args.dir.join(name), KeyspaceOptions::default())?;
        let side = LocalSide::new(keyspace.clone(), &config);
        Ok(Replica {
            keyspace,
            side,
            id: NodeId::from_peer_addr(name),
        })
    };
    let (a, b) = (open("a")?, open("b")?);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        println!("{k:<34} {v}");
        rows.push((k.to_string(), v));
    };
    row("keys per replica", args.keys.to_string());
    row("differing keys", args.differing.to_string());
    row("value bytes", args.value_bytes.to_string());
    row(
        "rate limit",
        match args.bytes_per_sec {
            0 => "none".to_string(),
            n => format!("{n} B/s"),
        },
    );

    let started = Instant::now();
    let data_bytes = load(&a, args)?;
    load(&b, args)?;
    row(
        "load (both replicas)",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    row(
        "data per replica (keys + sets)",
        format!("{:.1} MB", data_bytes as f64 / 1e6),
    );

    for (name, r) in [("a", &a), ("b", &b)] {
        let started = Instant::now();
        r.side.build_all(&CancellationToken::new()).await;
        row(
            &format!("tree build, replica {name}"),
            format!("{:.2} s", started.elapsed().as_secs_f64()),
        );
    }

    diverge(&a, &b, args)?;
    let partitions = a.keyspace.replica().partitions();
    let differing_partitions = (0..partitions)
        .filter(|&p| root(&a, p) != root(&b, p))
        .count();
    row(
        "partitions with differing roots",
        format!("{differing_partitions} of {partitions}"),
    );

    let started = Instant::now();
    let repair = round(&a, &b).await;
    let took = started.elapsed();
    let still = (0..partitions)
        .filter(|&p| root(&a, p) != root(&b, p))
        .count();
    if still > 0 || repair.aborted > 0 {
        bail!("replicas did not converge: {still} partitions differ; {repair:?}");
    }
    let moved = repair.bytes_sent + repair.bytes_received;
    row("repair round: time to converge", millis(took));
    row(
        "repair round: sessions",
        format!(
            "{} ({} repaired, {} in sync)",
            repair.sessions, repair.repaired, repair.in_sync
        ),
    );
    row(
        "repair round: keys exchanged",
        repair.keys_exchanged.to_string(),
    );
    row(
        "repair round: bytes sent + received",
        format!(
            "{} + {} = {:.1} KB",
            repair.bytes_sent,
            repair.bytes_received,
            moved as f64 / 1e3
        ),
    );
    row(
        "repair round: bytes / data",
        format!("{:.4} %", moved as f64 * 100.0 / data_bytes.max(1) as f64),
    );

    let started = Instant::now();
    let idle = round(&a, &b).await;
    row("idle round: time", millis(started.elapsed()));
    row(
        "idle round: bytes sent + received",
        format!(
            "{:.1} KB ({} sessions, {} in sync)",
            (idle.bytes_sent + idle.bytes_received) as f64 / 1e3,
            idle.sessions,
            idle.in_sync
        ),
    );
    let mut table = String::from("| measure | value |\n|---|---|\n");
    for (k, v) in rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    println!("\n{table}");
    if let Some(out) = &args.out {
        let text = format!(
            "# Anti-entropy benchmark\n\n`cargo run --release --example anti_entropy_bench -- --keys {} --differing {} --value-bytes {} --bytes-per-sec {}`\n\n{table}",
            args.keys, args.differing, args.value_bytes, args.bytes_per_sec
        );
        std::fs::write(out, text)?;
    }
    Ok(())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One version of `value` for `key`, the same bytes on every replica.
fn encoded_set(value: &[u8]) -> Vec<u8> {
    let mut set = SiblingSet::new();
    set.overwrite(
        ActorId(1),
        Payload::Value(Bytes::copy_from_slice(value)),
        None,
        1_700_000_000_000,
    );
    let mut out = Vec::new();
    set.encode(&mut out);
    out
}

fn key_of(i: u64) -> Vec<u8> {
    format!("key:{i:010}").into_bytes()
}

fn value_of(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(len, b'x');
    v
}

/// Writes the common keys straight into the engine (the trees are built
/// from a scan afterwards, as at start-up). Returns the bytes stored.
fn load(r: &Replica, args: &Args) -> Result<u64> {
    let replica = r.keyspace.replica();
    let engine = replica.engine();
    let mut batch = WriteBatch::new();
    let mut bytes = 0u64;
    for i in 0..args.keys {
        let key = key_of(i);
        let set = encoded_set(&value_of(i, args.value_bytes));
        let partition = replica.partition(Key::new(&key));
        bytes += (key.len() + set.len()) as u64;
        batch.put(&layout::data_key(partition, &key), &set);
        if batch.len() >= 1000 {
            engine.write(&batch)?;
            batch = WriteBatch::new();
        }
    }
    if !batch.is_empty() {
        engine.write(&batch)?;
    }
    Ok(bytes)
}

/// Half the differing keys only on `a`, half with a concurrent version on `b`.
fn diverge(a: &Replica, b: &Replica, args: &Args) -> Result<()> {
    let only_a = args.differing / 2;
    for i in 0..only_a {
        let key = format!("extra:{i}").into_bytes();
        let set = SiblingSet::decode(&encoded_set(b"only on a"))?;
        a.keyspace.replica().merge_remote(Key::new(&key), set)?;
    }
    let step = (args.keys / (args.differing - only_a).max(1)).max(1);
    for j in 0..(args.differing - only_a) {
        let i = (j * step) % args.keys.max(1);
        let key = key_of(i);
        let mut set = SiblingSet::new();
        set.overwrite(
            ActorId(2),
            Payload::Value(Bytes::from_static(b"changed on b")),
            None,
            1_700_000_000_001,
        );
        b.keyspace.replica().merge_remote(Key::new(&key), set)?;
    }
    Ok(())
}

fn root(r: &Replica, p: u32) -> Option<ringkv::cluster::merkle::NodeHash> {
    r.keyspace.replica().merkle().root(PartitionId(p as u16))
}

/// One session per partition, `a` initiating.
async fn round(a: &Replica, b: &Replica) -> RoundSummary {
    let mut summary = RoundSummary::default();
    let from = a.id;
    let responder = &b.side;
    for p in 0..a.keyspace.replica().partitions() {
        let report = a
            .side
            .initiate(PartitionId(p as u16), |request| async move {
                match Message::decode(&request) {
                    Ok(Message::AntiEntropy(msg)) => {
                        Ok(responder.serve(from, msg, request.len()).await)
                    }
                    other => Err(format!("not an anti-entropy request: {other:?}")),
                }
            })
            .await;
        summary.add(&report);
    }
    summary.partitions = a.keyspace.replica().partitions() as usize;
    summary
}
