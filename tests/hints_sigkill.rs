//! SIGKILL test of the hint store: a child process stores hints from several
//! threads (many merging into the same keys) and prints each one after
//! `store` returned; the parent kills it with SIGKILL at random moments and
//! checks that every acknowledged hint is there after reopening, and that the
//! pending counters rebuilt at open match the records. The child is this
//! test binary re-executed with an environment variable naming the directory.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use ringkv::cluster::hints::HintStore;
use ringkv::cluster::{NodeId, PartitionId};
use ringkv::version::{ActorId, Payload, SiblingSet};

const CHILD_DIR_ENV: &str = "RINGKV_HINTS_SIGKILL_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "RINGKV_HINTS_SIGKILL_CHILD_ROUND";
const WRITER_THREADS: u64 = 4;
const KEYS: u64 = 40;

fn target() -> NodeId {
    NodeId::from_bytes([0xab; 16])
}

/// Each round's threads are new actors: a restarted writer that reused an
/// actor would issue dots the store already holds (kv679).
fn actor(round: u64, thread: u64) -> ActorId {
    ActorId(round * 100 + thread + 1)
}

/// The child's body: runs only when re-executed by the parent.
#[test]
fn sigkill_child_hint_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // Not a child: nothing to do in a normal test run.
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let store = std::sync::Arc::new(HintStore::open(Path::new(&dir)).expect("child open"));
    let (tx, rx) = mpsc::channel::<String>();
    for thread in 0..WRITER_THREADS {
        let store = store.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let me = actor(round, thread);
            // This thread's view of each key: its writes supersede its own
            // earlier ones, and stay siblings of the other threads'.
            let mut mine: HashMap<u64, SiblingSet> = HashMap::new();
            for i in 0u64.. {
                let k = (i * 7 + thread) % KEYS;
                let set = mine.entry(k).or_default();
                let ctx = set.causal_context();
                let dot = set.write(
                    me,
                    &ctx,
                    Payload::Value(Bytes::from(format!("r{round}-t{thread}-{i}"))),
                    None,
                    1_000 + i,
                );
                let key = format!("key-{k}");
                store
                    .store(
                        target(),
                        PartitionId(k as u32 % 8),
                        key.as_bytes(),
                        set,
                        1_000 + i,
                    )
                    .expect("child store");
                if tx.send(format!("{key} {} {}", me.0, dot.counter)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for ack in rx {
        // Acknowledged: printed only after store() returned.
        writeln!(out, "ACK {ack}").expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn every_acknowledged_hint_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    // (key, actor) -> highest acknowledged counter.
    let mut acknowledged: HashMap<(String, u64), u64> = HashMap::new();
    let mut acks = 0usize;
    let rounds = 8;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_hint_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ack) = line.strip_prefix("ACK ") {
                    lines.push(ack.to_string());
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill failed");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child must die by the signal");
        for line in reader.join().unwrap() {
            let mut parts = line.split(' ');
            let (Some(key), Some(actor), Some(counter)) =
                (parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed ack line {line:?}");
            };
            let counter: u64 = counter.parse().unwrap();
            let slot = acknowledged
                .entry((key.to_string(), actor.parse().unwrap()))
                .or_default();
            *slot = (*slot).max(counter);
            acks += 1;
        }

        let store = HintStore::open(dir.path()).expect("reopen after SIGKILL");
        let hints: Vec<_> = store
            .hints_for(target())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .expect("no corrupt hints after SIGKILL");
        let by_key: HashMap<String, &SiblingSet> = hints
            .iter()
            .map(|h| (String::from_utf8_lossy(&h.key).into_owned(), &h.siblings))
            .collect();
        for ((key, actor), counter) in &acknowledged {
            let held = by_key
                .get(key)
                .map_or(0, |set| set.causal_context().get(ActorId(*actor)));
            assert!(
                held >= *counter,
                "round {round}: acknowledged write {key} by {actor} #{counter} lost (hint holds #{held})"
            );
        }
        let keys: HashSet<&String> = by_key.keys().collect();
        let pending = store.pending_for(target());
        assert_eq!(pending.count, keys.len() as u64, "one hint per key");
        assert_eq!(
            pending.bytes,
            hints.iter().map(|h| h.stored_bytes).sum::<u64>()
        );
        store.close().unwrap();
    }
    assert!(
        acks > rounds,
        "the children acknowledged too few hints to mean anything"
    );
    eprintln!(
        "{acks} acknowledged hints over {rounds} SIGKILLs, all present ({:?})",
        started.elapsed()
    );
}
