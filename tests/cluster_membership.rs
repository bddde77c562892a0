//! Gossip membership between real `ringkv` processes: three nodes started with
//! `--join` find each other, a SIGKILLed node is marked down and comes back
//! with a higher incarnation, garbage on the peer port changes nothing, and a
//! node with the wrong cluster secret is refused.
//!
//! Gossip runs every 100 ms with suspect/down timeouts of 1 s/2 s here (the
//! defaults are 1 s, 5 s, 10 s), so the whole file runs in about 15 s.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GOSSIP: &[&str] = &[
    "--gossip-interval-ms",
    "100",
    "--gossip-suspect-ms",
    "1000",
    "--gossip-down-ms",
    "2000",
];

/// A `ringkv` child process, SIGKILLed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
}

impl Node {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["--port", &port.to_string(), "--fsync", "no", "--dir"])
            .arg(dir)
            .args(GOSSIP)
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringkv");
        let node = Node {
            child: Some(child),
            port,
        };
        node.wait_ready();
        node
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .expect("url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to ringkv")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
                .ok()
                .and_then(|c| {
                    c.get_connection_with_timeout(Duration::from_millis(200))
                        .ok()
                })
                .is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ringkv on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cluster(&self, args: &[&str]) -> String {
        let mut cmd = redis::cmd("CLUSTER");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query(&mut self.client()).expect("CLUSTER command")
    }

    /// This node's view: one entry per member.
    fn nodes(&self) -> Vec<Member> {
        self.cluster(&["NODES"])
            .lines()
            .map(Member::parse)
            .collect()
    }

    fn info_field(&self, section: &str, field: &str) -> String {
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.client())
            .expect("INFO");
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
            .trim()
            .to_string()
    }

    fn myid(&self) -> String {
        self.cluster(&["MYID"])
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct Member {
    id: String,
    addr: String,
    status: String,
    incarnation: u64,
    partitions: u32,
    myself: bool,
}

impl Member {
    fn parse(line: &str) -> Member {
        let words: Vec<&str> = line.split(' ').collect();
        let field = |name: &str| -> u64 {
            words
                .iter()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        Member {
            id: words[0].to_string(),
            addr: words[1].to_string(),
            status: words[3].to_string(),
            incarnation: field("incarnation="),
            partitions: field("partitions=") as u32,
            myself: words.last() == Some(&"myself"),
        }
    }
}

/// A client port whose default peer port (+10000) is free too.
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port > 55_535 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it holds, at most `within`.
fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_up(node: &Node, count: usize) -> bool {
    let nodes = node.nodes();
    nodes.len() == count && nodes.iter().all(|m| m.status == "up")
}

#[test]
fn three_nodes_join_detect_a_kill_and_welcome_the_restart() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port_pair()).collect();
    let seed = format!("127.0.0.1:{}", ports[0]);
    let secret = ["--cluster-secret", "s3cret"];
    let join = ["--join", seed.as_str()];
    let with_join: Vec<&str> = secret.iter().chain(join.iter()).copied().collect();
    let a = Node::start(ports[0], dirs[0].path(), &secret);
    let b = Node::start(ports[1], dirs[1].path(), &with_join);
    let mut c = Node::start(ports[2], dirs[2].path(), &with_join);

    for n in [&a, &b, &c] {
        eventually(
            "every node sees 3 members up",
            Duration::from_secs(20),
            || all_up(n, 3),
        );
    }
    // Every view agrees, marks itself, and the ring gives each member some of
    // the 256 partitions, 3 x 256 replicas in all.
    let view = a.nodes();
    assert_eq!(view.iter().filter(|m| m.myself).count(), 1);
    assert_eq!(view.iter().map(|m| m.partitions).sum::<u32>(), 3 * 256);
    assert!(view.iter().all(|m| m.partitions > 0));
    assert!(view
        .iter()
        .any(|m| m.addr == format!("127.0.0.1:{}", ports[2])));
    let info = a.cluster(&["INFO"]);
    assert!(info.contains("cluster_data_replication:on"), "{info}");
    assert!(info.contains("cluster_members_up:3"), "{info}");
    let preflist: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("PREFLIST")
        .arg("some-key")
        .query(&mut b.client())
        .expect("PREFLIST");
    assert_eq!(preflist.len(), 3, "3 owners, no fallback left over");

    // SIGKILL C: A and B mark it down once the 2 s timeout passes.
    let c_id = c.myid();
    let c_before = view
        .iter()
        .find(|m| m.id == c_id)
        .expect("C in A's view")
        .incarnation;
    c.sigkill();
    for n in [&a, &b] {
        eventually("the killed node is down", Duration::from_secs(8), || {
            n.nodes().iter().any(|m| m.id == c_id && m.status == "down")
        });
    }
    assert_eq!(a.info_field("cluster", "cluster_members_down"), "1");

    // Restart C on the same address: same id, higher incarnation, up again.
    let c = Node::start(ports[2], dirs[2].path(), &with_join);
    assert_eq!(c.myid(), c_id, "the id follows the address");
    for n in [&a, &b, &c] {
        eventually(
            "the restarted node is up everywhere",
            Duration::from_secs(10),
            || all_up(n, 3),
        );
    }
    let c_after = a
        .nodes()
        .into_iter()
        .find(|m| m.id == c_id)
        .expect("C in A's view")
        .incarnation;
    assert!(c_after > c_before, "incarnation {c_after} <= {c_before}");

    // Garbage on A's peer port: a wrong preamble, then a right preamble
    // followed by nonsense. Both connections are dropped; nothing changes.
    let peer_port = ports[0] + 10_000;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"RKVP\x01\x00\x00\x00\x05\x01garbage",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", peer_port)).expect("peer port");
        let _ = s.write_all(junk);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        all_up(&a, 3),
        "garbage disturbed membership: {:?}",
        a.nodes()
    );
    assert!(
        a.info_field("cluster", "peer_handshake_failures")
            .parse::<u64>()
            .expect("n")
            >= 2
    );

    // A node with another secret is refused by the handshake: neither side
    // lists the other.
    let d_dir = tempfile::tempdir().expect("dir");
    let d = Node::start(
        free_port_pair(),
        d_dir.path(),
        &["--cluster-secret", "wrong", "--join", seed.as_str()],
    );
    let d_id = d.myid();
    let failures_before: u64 = a
        .info_field("cluster", "peer_handshake_failures")
        .parse()
        .expect("n");
    eventually("A refuses D's handshake", Duration::from_secs(10), || {
        a.info_field("cluster", "peer_handshake_failures")
            .parse::<u64>()
            .expect("n")
            > failures_before
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.nodes().iter().all(|m| m.id != d_id), "A admitted D");
    assert_eq!(d.nodes().len(), 1, "D learned members without the secret");
    assert!(all_up(&a, 3));
}

#[test]
fn cluster_subcommand_errors_read_like_redis() {
    let dir = tempfile::tempdir().expect("dir");
    let node = Node::start(free_port_pair(), dir.path(), &[]);
    let err = |args: &[&str]| -> String {
        let mut cmd = redis::cmd("CLUSTER");
        for a in args {
            cmd.arg(*a);
        }
        match cmd.query::<redis::Value>(&mut node.client()) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("CLUSTER {args:?} succeeded: {v:?}"),
        }
    };
    assert!(err(&["BOGUS"]).contains("unknown subcommand 'BOGUS'. Try CLUSTER HELP."));
    assert!(err(&["MEET", "127.0.0.1"]).contains("wrong number of arguments for 'cluster|meet'"));
    assert!(err(&["MEET", "127.0.0.1", "notaport"]).contains("Invalid base port"));
    assert!(err(&["FORGET", "nope"]).contains("Unknown node"));
    let me = node.myid();
    assert!(err(&["FORGET", &me]).contains("can't forget myself"));
    let mut con = node.client();
    let help: Vec<String> = redis::cmd("CLUSTER")
        .arg("HELP")
        .query(&mut con)
        .expect("HELP");
    assert!(help.iter().any(|l| l.starts_with("PREFLIST")));
    // A cluster of one owns every partition; PARTITIONS folds them into one range.
    let parts: Vec<String> = redis::cmd("CLUSTER")
        .arg("PARTITIONS")
        .query(&mut con)
        .expect("PARTITIONS");
    assert_eq!(parts, vec![format!("0-255 {}", &me[..8])]);
}

#[test]
fn meet_at_run_time_then_forget_and_leave() {
    let (d1, d2, d3) = (
        tempfile::tempdir().expect("d1"),
        tempfile::tempdir().expect("d2"),
        tempfile::tempdir().expect("d3"),
    );
    let a = Node::start(free_port_pair(), d1.path(), &[]);
    let b = Node::start(free_port_pair(), d2.path(), &[]);
    let c = Node::start(free_port_pair(), d3.path(), &[]);
    assert_eq!(
        b.nodes().len(),
        1,
        "a node without --join is a cluster of one"
    );
    // MEET names the other node's client port, like --join.
    for n in [&b, &c] {
        assert_eq!(n.cluster(&["MEET", "127.0.0.1", &a.port.to_string()]), "OK");
    }
    for n in [&a, &b, &c] {
        eventually("MEET joins the three", Duration::from_secs(10), || {
            all_up(n, 3)
        });
    }

    // FORGET C on A: everyone, C included, ends up seeing it as left, and
    // the ring shrinks to two owners per partition.
    let c_id = c.myid();
    assert_eq!(a.cluster(&["FORGET", &c_id]), "OK");
    for n in [&a, &b, &c] {
        eventually("C is forgotten everywhere", Duration::from_secs(10), || {
            n.nodes().iter().any(|m| m.id == c_id && m.status == "left")
        });
    }
    assert!(a.cluster(&["INFO"]).contains("cluster_effective_n:2\r\n"));
    assert!(c.cluster(&["INFO"]).contains("cluster_state:left\r\n"));

    // B leaves: A is alone in the ring and owns every partition.
    assert_eq!(b.cluster(&["LEAVE"]), "OK");
    let b_id = b.myid();
    eventually("A sees B leave", Duration::from_secs(10), || {
        a.nodes().iter().any(|m| m.id == b_id && m.status == "left")
    });
    let me = a.nodes().into_iter().find(|m| m.myself).expect("myself");
    assert_eq!(me.partitions, 256);
}

#[test]
fn a_node_met_at_run_time_is_found_again_after_a_restart_without_join() {
    let (d1, d2) = (
        tempfile::tempdir().expect("d1"),
        tempfile::tempdir().expect("d2"),
    );
    let a = Node::start(free_port_pair(), d1.path(), &[]);
    let b_port = free_port_pair();
    let mut b = Node::start(b_port, d2.path(), &[]);
    assert_eq!(b.cluster(&["MEET", "127.0.0.1", &a.port.to_string()]), "OK");
    for n in [&a, &b] {
        eventually("the two meet", Duration::from_secs(10), || all_up(n, 2));
    }
    // B restarts knowing nobody (no --join, nothing persisted but its
    // incarnation); A still lists it as down and probes it now and then, so
    // the two find each other again.
    let b_id = b.myid();
    b.sigkill();
    eventually("A marks B down", Duration::from_secs(8), || {
        a.nodes().iter().any(|m| m.id == b_id && m.status == "down")
    });
    let b = Node::start(b_port, d2.path(), &[]);
    for n in [&a, &b] {
        eventually(
            "the two find each other again",
            Duration::from_secs(15),
            || all_up(n, 2),
        );
    }
}
