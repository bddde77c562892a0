//! SIGKILL test: a child process writes with `fsync always` from several
//! threads and prints every acknowledged key; the parent kills it with SIGKILL
//! at random moments and checks that every acknowledged write is present after
//! reopening. The child is this test binary re-executed with an environment
//! variable naming the directory.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use ringkv::config::FsyncPolicy;
use ringkv::storage::{Engine, Options};

const CHILD_DIR_ENV: &str = "RINGKV_SIGKILL_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "RINGKV_SIGKILL_CHILD_ROUND";
const WRITER_THREADS: usize = 4;

fn options() -> Options {
    Options {
        fsync: FsyncPolicy::Always,
        // Small, so flushes, manifest rewrites and compactions happen while
        // the child is being killed.
        memtable_bytes: 64 << 10,
        wal_segment_bytes: 32 << 10,
        ..Options::default()
    }
}

fn value_for(key: &str) -> Vec<u8> {
    format!("value-of-{key}-{}", "v".repeat(key.len() * 3)).into_bytes()
}

/// The child's body: runs only when re-executed by the parent.
#[test]
fn sigkill_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // Not a child: nothing to do in a normal test run.
    };
    let round: u32 = std::env::var(CHILD_ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let engine = Engine::open(Path::new(&dir), options()).expect("child open");
    let (tx, rx) = mpsc::channel::<String>();
    for thread in 0..WRITER_THREADS {
        let engine = engine.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for i in 0u64.. {
                let key = format!("r{round}-t{thread}-{i}");
                engine
                    .put(key.as_bytes(), &value_for(&key))
                    .expect("child put");
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for key in rx {
        // Acknowledged: printed only after put() returned.
        writeln!(out, "ACK {key}").expect("stdout");
        out.flush().expect("stdout");
    }
}

#[test]
fn every_write_acknowledged_under_fsync_always_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    let mut acknowledged: Vec<String> = Vec::new();
    let rounds = 20;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_writer",
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
            let mut keys = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("ACK ") {
                    keys.push(key.to_string());
                }
            }
            keys
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill failed");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child must die by the signal");
        let keys = reader.join().unwrap();
        acknowledged.extend(keys);

        let engine = Engine::open(dir.path(), options()).expect("reopen after SIGKILL");
        for key in &acknowledged {
            let got = engine.get(key.as_bytes()).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(value_for(key).as_slice()),
                "round {round}: acknowledged key {key} lost or wrong"
            );
        }
        engine.close().unwrap();
    }
    assert!(
        acknowledged.len() > rounds,
        "the children acknowledged too few writes to mean anything"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    eprintln!(
        "{} acknowledged writes over {rounds} SIGKILLs, all present ({:?})",
        acknowledged.len(),
        started.elapsed()
    );
}
