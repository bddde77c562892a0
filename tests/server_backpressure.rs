//! Backpressure: a client that sends commands but never reads the replies
//! must not make the server buffer them. In its own test binary so that the
//! process's resident memory, which the test measures, is this test's alone.

mod server_support;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use server_support::{multibulk, Raw, Resp, TestServer};

/// Resident memory of the server process (the test process), from INFO.
fn used_memory(raw: &mut Raw) -> u64 {
    let Resp::Bulk(info) = raw.call(&["INFO", "memory"]) else {
        panic!("INFO memory")
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.parse().ok())
        .expect("used_memory")
}

#[test]
fn a_client_that_never_reads_cannot_grow_server_memory() {
    let server = TestServer::start();
    let mut observer = server.raw();
    let before = used_memory(&mut observer);

    // 64 KiB replies, 4096 of them: 256 MiB the server would buffer if it
    // executed everything without waiting for the client to read.
    let flood = server.raw();
    let mut writer = flood.stream().try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let payload = vec![b'x'; 64 * 1024];
    let one = multibulk(&[b"ECHO", &payload]);
    let sender = thread::spawn(move || {
        let mut sent = 0usize;
        for _ in 0..4096 {
            if writer.write_all(&one).is_err() {
                break;
            }
            sent += one.len();
        }
        sent
    });
    let sent = sender.join().unwrap();
    assert!(
        sent < 200 * 1024 * 1024,
        "the server kept reading ({sent} bytes) from a client that never reads"
    );
    let after = used_memory(&mut observer);
    assert!(
        after < before + 64 * 1024 * 1024,
        "server memory grew from {before} to {after} bytes"
    );
    // Other clients are unaffected.
    assert_eq!(observer.call(&["PING"]), Resp::Simple("PONG".into()));
    drop(observer);

    // Nor can it hold up a graceful shutdown for long.
    let started = Instant::now();
    server.stop().expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(flood);
}
