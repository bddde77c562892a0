//! A reference `redis-server` for the differential tests: started on a free
//! loopback port with no persistence, killed on drop.
//!
//! The differential tests compare ringkv with Redis itself, so without
//! `redis-server` they have nothing to compare against. Outside CI they then
//! say so and pass; under CI (`CI` set, as `.ci/run` runs) a missing
//! `redis-server` fails the test, because `.ci/run` installs it and a silent
//! skip there would hide a broken install step.

#![allow(dead_code)] // each test binary uses part of this module

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `program --version` runs.
pub fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tools a differential test needs are installed. `None` means
/// "go ahead"; `Some(reason)` means skip, which only happens outside CI.
pub fn missing(programs: &[&str]) -> Option<String> {
    let absent: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if absent.is_empty() {
        return None;
    }
    let reason = format!(
        "{} not installed: comparison with Redis not run",
        absent.join(", ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}; .ci/run installs them (apt-get install -y redis-server redis-tools)"
    );
    eprintln!("{reason}");
    Some(reason)
}

/// Starts a reference `redis-server`, or `None` when it is not installed
/// outside CI (see the module doc). Panics if an installed server does not
/// come up within 10 s.
pub fn start_redis() -> Option<RedisServer> {
    if missing(&["redis-server"]).is_some() {
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let server = RedisServer {
        child,
        port,
        _dir: dir,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not listen on port {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}
