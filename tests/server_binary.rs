//! The built `ringkv` binary: clean stop on SIGTERM and SHUTDOWN (exit 0, data
//! kept), no acknowledged write lost to SIGKILL under `--fsync always`, and
//! real Redis clients (redis-cli, redis-py) against it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `ringkv` child process, killed on drop.
struct Node {
    child: Child,
    port: u16,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Node {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringkv");
        let node = Node { child, port };
        node.wait_ready();
        node
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to ringkv")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "ringkv did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits for the process to exit; returns its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "ringkv did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free client port whose default peer port (port + 10000) is free too:
/// the node refuses to start when it cannot bind its peer port, and ports
/// above 55535 have none.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn set(c: &mut redis::Connection, k: &str, v: &str) {
    let ok: String = redis::cmd("SET").arg(k).arg(v).query(c).expect("SET");
    assert_eq!(ok, "OK");
}

fn get(c: &mut redis::Connection, k: &str) -> Option<String> {
    redis::cmd("GET").arg(k).query(c).expect("GET")
}

#[test]
fn sigterm_stops_cleanly_with_exit_0_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    set(&mut c, "greeting", "hello");
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(20)), Some(0));

    let node = Node::start(dir.path(), &[]);
    assert_eq!(
        get(&mut node.client(), "greeting").as_deref(),
        Some("hello")
    );
}

#[test]
fn shutdown_command_exits_0_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    set(&mut c, "k", "v");
    let _ = redis::cmd("SHUTDOWN").query::<redis::Value>(&mut c);
    assert_eq!(node.wait_exit(Duration::from_secs(20)), Some(0));

    let node = Node::start(dir.path(), &[]);
    assert_eq!(get(&mut node.client(), "k").as_deref(), Some("v"));
}

#[test]
fn sigkill_under_fsync_always_loses_no_acknowledged_write() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let node = Node::start(dir.path(), &["--fsync", "always"]);
        let mut c = node.client();
        // Half one by one, half in pipelines (one durability wait per batch).
        for i in 0..N / 2 {
            set(&mut c, &format!("r{round}:k{i}"), &format!("v{i}"));
        }
        for chunk in (N / 2..N).collect::<Vec<_>>().chunks(100) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("SET")
                    .arg(format!("r{round}:k{i}"))
                    .arg(format!("v{i}"));
            }
            let acks: Vec<String> = pipe.query(&mut c).expect("pipelined SETs");
            assert!(acks.iter().all(|a| a == "OK"));
        }
        node.signal(libc::SIGKILL);
        drop(node);

        let node = Node::start(dir.path(), &["--fsync", "always"]);
        let mut c = node.client();
        for r in 0..=round {
            for i in 0..N {
                assert_eq!(
                    get(&mut c, &format!("r{r}:k{i}")).as_deref(),
                    Some(format!("v{i}").as_str()),
                    "acknowledged key r{r}:k{i} lost after SIGKILL"
                );
            }
        }
    }
}

#[test]
fn bad_flags_are_reported_with_a_nonzero_exit() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["--fsync", "sometimes"])
        .output()
        .expect("run ringkv");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid fsync policy"));
}

/// Runs a program if it is installed; CI installs redis-tools and redis-py.
fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed by this test (apt-get install redis-tools / pip install redis): {e}"))
}

#[test]
fn redis_cli_talks_to_ringkv() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let port = node.port.to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["-p", port.as_str()];
        all.extend_from_slice(args);
        let out = run_tool("redis-cli", &all);
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "name", "ringkv"]), "OK");
    assert_eq!(cli(&["GET", "name"]), "ringkv");
    assert_eq!(cli(&["INCR", "n"]), "1");
    assert_eq!(cli(&["DEL", "name"]), "1");
    assert_eq!(cli(&["GET", "name"]), "");
    assert!(cli(&["NOSUCHCMD"]).starts_with("ERR unknown command 'NOSUCHCMD'"));
    assert!(cli(&["INFO", "server"]).contains("redis_version:"));
    assert!(cli(&["-3", "HELLO", "3"]).contains("proto"));
}

/// redis-benchmark aborts on any error reply to a benchmarked command, so a
/// clean run of every test that applies to a string store, pipelined and not,
/// is a compatibility check (figures are for tools/bench_vs_redis.py).
#[test]
fn redis_benchmark_runs_every_string_test_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let port = node.port.to_string();
    let tests = [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "MSET (10 keys)",
    ];
    for pipeline in ["1", "16"] {
        let out = run_tool(
            "redis-benchmark",
            &[
                "-p",
                &port,
                "-t",
                "ping_inline,ping_mbulk,set,get,incr,mset",
                "-n",
                "2000",
                "-c",
                "10",
                "-r",
                "1000",
                "-d",
                "100",
                "-P",
                pipeline,
                "--csv",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "redis-benchmark -P {pipeline} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for test in tests {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("\"{test}\",")))
                .unwrap_or_else(|| panic!("no {test} row at -P {pipeline}:\n{stdout}"));
            let rps: f64 = row
                .split(',')
                .nth(1)
                .unwrap()
                .trim_matches('"')
                .parse()
                .unwrap();
            assert!(rps > 0.0, "{test} at -P {pipeline}: {row}");
        }
    }
    // The benchmark's writes really landed: its SETs use keys key:000000000NNN.
    let mut c = node.client();
    let size: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert!(size > 100, "DBSIZE after redis-benchmark: {size}");
}

#[test]
fn redis_py_talks_to_ringkv_over_resp2_and_resp3() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/redis_py_smoke.py");
    let out = run_tool("python3", &[script, &node.port.to_string()]);
    assert!(
        out.status.success(),
        "redis-py smoke test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
