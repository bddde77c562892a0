//! A fault-injecting TCP proxy in front of each node's peer port, driven by
//! the test: `partition(&[&[1, 2], &[3, 4, 5]])` cuts every connection
//! between the groups, `heal()` restores them.
//!
//! A node started with `--peer-port X --peer-advertise-port P` listens on X
//! but tells everyone to dial P, where its [`Proxy`] listens and forwards to
//! X. So every connection *to* node B passes B's proxy, and the proxy knows
//! both ends: the owner (B) by construction, the dialer from the first frame
//! the dialer sends. Version 1 of the peer protocol (src/server/peer/mod.rs)
//! opens with a 5-byte preamble (`RKVP`, version 1) and then a HELLO frame:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "RKVP"
//! 4       1     protocol version (1)
//! 5       4     frame body length L, big-endian
//! 9       1     kind (0x01 HELLO)
//! 10      1     flags
//! 11      32    nonce
//! 43      1     node id length n
//! 44      n     node id, UTF-8 (the hex id `CLUSTER MYID` prints)
//! ...           cluster name (not needed here)
//! ```
//!
//! The proxy reads those bytes, forwards them untouched, and from then on
//! only pipes bytes both ways. Whatever does not parse as a HELLO (garbage, an
//! HTTP probe, another protocol version) is piped as it is, from an unknown
//! dialer that no partition cuts: the node's own checks are what is under
//! test there.
//!
//! Two ways to cut a connection ([`CutMode`]):
//!
//! - **Blackhole** (the realistic one, the default): the connection stays
//!   open but nothing crosses it; the proxy stops reading, so the sender's
//!   socket buffers fill as they would with a network that drops packets.
//!   New connections are accepted and silently held the same way. On heal
//!   the held bytes go through in order, as TCP retransmission would deliver
//!   them, unless an end gave up and closed meanwhile.
//! - **Close**: connections between the groups are closed at once, and new
//!   ones are closed as soon as their HELLO names the dialer.
//!
//! The proxy is test code only: nothing in the server can reach its switch.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The peer protocol's preamble magic.
const MAGIC: &[u8; 4] = b"RKVP";
/// The only peer protocol version whose HELLO this proxy reads.
const VERSION: u8 = 1;
/// Frame kind of HELLO.
const KIND_HELLO: u8 = 0x01;
/// Offset of the node id length byte (preamble 5, length 4, kind 1, flags 1,
/// nonce 32).
const ID_LEN_AT: usize = 43;
/// The largest handshake frame a node accepts (4 KiB); a longer "HELLO" is
/// not one.
const HANDSHAKE_MAX_FRAME: u32 = 4096;
/// How long a new connection may take to send its HELLO before the proxy
/// stops waiting and pipes it as an unknown dialer.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How often a held pump re-checks whether its connection died.
const RECHECK: Duration = Duration::from_millis(100);

/// What the first bytes of a connection say about its dialer.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// A version 1 preamble and HELLO from the node with this id.
    Dialer(String),
    /// Anything else: garbage, another protocol, another version.
    NotPeer,
}

/// Reads the dialer's node id from the first bytes of a peer connection (the
/// layout is in the module doc).
pub fn parse_hello(buf: &[u8]) -> Hello {
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Hello::NotPeer;
    }
    match buf.get(4) {
        None => return Hello::Incomplete,
        Some(&v) if v != VERSION => return Hello::NotPeer,
        Some(_) => {}
    }
    let Some(len) = buf.get(5..9) else {
        return Hello::Incomplete;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    // kind, flags, nonce, id length: the least a HELLO body can hold.
    let fixed = (ID_LEN_AT + 1 - 9) as u32;
    if !(fixed..=HANDSHAKE_MAX_FRAME).contains(&len) {
        return Hello::NotPeer;
    }
    match buf.get(9) {
        None => return Hello::Incomplete,
        Some(&k) if k != KIND_HELLO => return Hello::NotPeer,
        Some(_) => {}
    }
    let Some(&id_len) = buf.get(ID_LEN_AT) else {
        return Hello::Incomplete;
    };
    if fixed + u32::from(id_len) > len {
        return Hello::NotPeer;
    }
    let start = ID_LEN_AT + 1;
    let Some(id) = buf.get(start..start + usize::from(id_len)) else {
        return Hello::Incomplete;
    };
    match std::str::from_utf8(id) {
        Ok(id) => Hello::Dialer(id.to_string()),
        Err(_) => Hello::NotPeer,
    }
}

/// How [`Network::partition_with`] cuts a connection (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutMode {
    /// Keep the connection open, let nothing through.
    #[default]
    Blackhole,
    /// Close the connection.
    Close,
}

/// The switchboard shared by every node's proxy. Dropping it stops every
/// proxied connection.
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Node id (as sent in HELLO) -> node number.
    ids: HashMap<String, usize>,
    /// The current partition: node numbers per group; `None` when healed.
    groups: Option<Vec<Vec<usize>>>,
    mode: CutMode,
    conns: Vec<Arc<Conn>>,
    /// (owner, dialer id) of every connection whose HELLO was read.
    seen: BTreeSet<(usize, String)>,
    stopped: bool,
}

impl State {
    /// Whether the current partition separates `dialer` from `owner`. A
    /// dialer that is unknown (garbage, an unregistered id) is never cut; a
    /// node listed in no group is cut off from everyone.
    fn separates(&self, dialer: Option<&str>, owner: usize) -> bool {
        let Some(groups) = &self.groups else {
            return false;
        };
        let Some(&dialer) = dialer.and_then(|id| self.ids.get(id)) else {
            return false;
        };
        let group_of = |n: usize| groups.iter().position(|g| g.contains(&n));
        match (group_of(dialer), group_of(owner)) {
            (Some(a), Some(b)) => a != b,
            _ => dialer != owner,
        }
    }
}

/// One proxied connection: the dialer's socket and the one to the node.
struct Conn {
    owner: usize,
    dialer: Option<String>,
    sockets: [TcpStream; 2],
    dead: AtomicBool,
}

impl Conn {
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    pub fn new() -> Network {
        Network {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    /// Tells the proxies that the node whose HELLO carries `id` is node
    /// `number`.
    pub fn register(&self, id: &str, number: usize) {
        self.inner.state.lock().ids.insert(id.to_string(), number);
    }

    /// Starts a proxy for node `owner` on a free 127.0.0.1 port, forwarding
    /// to `upstream` (the node's real peer port).
    pub fn proxy(&self, owner: usize, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(upstream));
        let inner = self.inner.clone();
        let stop2 = stop.clone();
        let upstream2 = upstream.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{owner}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let inner = inner.clone();
                    let upstream = *upstream2.lock();
                    let _ = std::thread::Builder::new()
                        .name(format!("proxy-{owner}-conn"))
                        .spawn(move || serve(&inner, owner, stream, upstream));
                }
            })
            .expect("spawn the proxy thread");
        Proxy {
            port,
            upstream,
            stop,
            thread: Some(thread),
        }
    }

    /// Cuts every connection between nodes of different groups, blackhole
    /// style. Node numbers listed in no group are cut off from everyone.
    pub fn partition(&self, groups: &[&[usize]]) {
        self.partition_with(CutMode::Blackhole, groups);
    }

    /// Like [`Network::partition`], choosing how connections are cut.
    pub fn partition_with(&self, mode: CutMode, groups: &[&[usize]]) {
        let mut st = self.inner.state.lock();
        st.groups = Some(groups.iter().map(|g| g.to_vec()).collect());
        st.mode = mode;
        if mode == CutMode::Close {
            for c in &st.conns {
                if st.separates(c.dialer.as_deref(), c.owner) {
                    c.kill();
                }
            }
        }
        self.inner.changed.notify_all();
    }

    /// Ends the partition: held bytes flow again, new connections go through.
    pub fn heal(&self) {
        self.inner.state.lock().groups = None;
        self.inner.changed.notify_all();
    }

    /// The node numbers whose HELLO node `owner`'s proxy has read, so a test
    /// can check that the proxy recognises the real binary's handshake.
    pub fn dialers_seen(&self, owner: usize) -> BTreeSet<usize> {
        let st = self.inner.state.lock();
        st.seen
            .iter()
            .filter(|(o, _)| *o == owner)
            .filter_map(|(_, id)| st.ids.get(id).copied())
            .collect()
    }

    /// Open proxied connections, for diagnostics.
    pub fn open_connections(&self) -> usize {
        let st = self.inner.state.lock();
        st.conns.iter().filter(|c| !c.is_dead()).count()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        st.stopped = true;
        for c in &st.conns {
            c.kill();
        }
        st.conns.clear();
        self.inner.changed.notify_all();
    }
}

/// One node's proxy: its listening port and accept thread, stopped on drop.
pub struct Proxy {
    port: u16,
    upstream: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// The port the proxy listens on: the node's advertised peer port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Points new connections at another address (the node moved to a new
    /// peer port after its first one turned out to be taken).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock() = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handles one accepted connection: learns the dialer, connects to the node,
/// and pipes both ways under the partition rules.
fn serve(inner: &Arc<Inner>, owner: usize, client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let (first, dialer) = read_hello(&client);
    let _ = client.set_read_timeout(None);
    let Ok(node) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
        // The node is down: the dialer sees its connection close.
        return;
    };
    let _ = node.set_nodelay(true);
    let (Ok(client2), Ok(node2)) = (client.try_clone(), node.try_clone()) else {
        return;
    };
    let conn = Arc::new(Conn {
        owner,
        dialer,
        sockets: [client2, node2],
        dead: AtomicBool::new(false),
    });
    {
        let mut st = inner.state.lock();
        if st.stopped {
            return;
        }
        if let Some(id) = &conn.dialer {
            st.seen.insert((owner, id.clone()));
        }
        st.conns.retain(|c| !c.is_dead());
        st.conns.push(conn.clone());
    }
    let back = {
        let (inner, conn) = (inner.clone(), conn.clone());
        let (Ok(from), Ok(to)) = (node.try_clone(), client.try_clone()) else {
            conn.kill();
            return;
        };
        std::thread::Builder::new()
            .name(format!("proxy-{owner}-back"))
            .spawn(move || pump(&inner, &conn, from, to, Vec::new()))
    };
    if back.is_err() {
        conn.kill();
        return;
    }
    pump(inner, &conn, client, node, first);
}

/// Reads from a new connection until its HELLO names the dialer, it turns
/// out not to be one, or [`HELLO_WAIT`] passes. Returns the bytes read (to be
/// forwarded) and the dialer's id if there was a HELLO.
fn read_hello(mut client: &TcpStream) -> (Vec<u8>, Option<String>) {
    let _ = client.set_read_timeout(Some(HELLO_WAIT));
    let mut first = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match parse_hello(&first) {
            Hello::Dialer(id) => return (first, Some(id)),
            Hello::NotPeer => return (first, None),
            Hello::Incomplete => {}
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return (first, None),
            Ok(n) => first.extend_from_slice(&buf[..n]),
        }
    }
}

/// Copies `from` to `to` while the partition lets the connection through;
/// when either end closes, closes both.
fn pump(inner: &Inner, conn: &Conn, mut from: TcpStream, mut to: TcpStream, first: Vec<u8>) {
    let mut pending = first;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if pending.is_empty() {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        if !wait_until_passable(inner, conn) || to.write_all(&pending).is_err() {
            break;
        }
        pending.clear();
    }
    conn.kill();
}

/// Blocks while the partition cuts `conn` (blackhole), or kills it (close).
/// Returns whether bytes may flow; false once the connection is dead.
fn wait_until_passable(inner: &Inner, conn: &Conn) -> bool {
    let mut st = inner.state.lock();
    loop {
        if st.stopped || conn.is_dead() {
            return false;
        }
        if !st.separates(conn.dialer.as_deref(), conn.owner) {
            return true;
        }
        if st.mode == CutMode::Close {
            conn.kill();
            return false;
        }
        inner.changed.wait_for(&mut st, RECHECK);
    }
}

/// A dialer's opening bytes: the preamble with `version`, then a HELLO
/// naming `node_id` in cluster `ringkv`, without a secret. For tests that
/// speak to a peer port themselves.
pub fn hello_bytes(version: u8, node_id: &str) -> Vec<u8> {
    let cluster = b"ringkv";
    let id_len = u8::try_from(node_id.len()).expect("a node id is at most 255 bytes");
    let mut body = vec![KIND_HELLO, 0];
    body.extend_from_slice(&[7u8; 32]);
    body.push(id_len);
    body.extend_from_slice(node_id.as_bytes());
    body.push(cluster.len() as u8);
    body.extend_from_slice(cluster);
    let mut out = MAGIC.to_vec();
    out.push(version);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u8, id: &str) -> Vec<u8> {
        hello_bytes(version, id)
    }

    #[test]
    fn proxy_reads_the_dialer_id_from_a_hello_arriving_byte_by_byte() {
        let id = "0123456789abcdef0123456789abcdef";
        let bytes = hello(1, id);
        let id_end = ID_LEN_AT + 1 + id.len();
        for cut in 0..id_end {
            assert_eq!(parse_hello(&bytes[..cut]), Hello::Incomplete, "{cut}");
        }
        for cut in id_end..=bytes.len() {
            assert_eq!(parse_hello(&bytes[..cut]), Hello::Dialer(id.into()));
        }
    }

    #[test]
    fn proxy_takes_garbage_and_other_versions_for_unknown_dialers() {
        assert_eq!(parse_hello(&hello(2, "ab")), Hello::NotPeer);
        assert_eq!(parse_hello(b"GET / HTTP/1.1\r\n"), Hello::NotPeer);
        assert_eq!(parse_hello(b"RK"), Hello::Incomplete);
        assert_eq!(parse_hello(b"RKVX"), Hello::NotPeer);
        // A length beyond the handshake maximum, and a frame of another kind.
        assert_eq!(parse_hello(b"RKVP\x01\xff\xff\xff\xff\x01"), Hello::NotPeer);
        let mut wrong_kind = hello(1, "ab");
        wrong_kind[9] = 0x10;
        assert_eq!(parse_hello(&wrong_kind), Hello::NotPeer);
        // An id length that runs past the frame body.
        let mut overlong = hello(1, "ab");
        overlong[ID_LEN_AT] = 200;
        assert_eq!(parse_hello(&overlong), Hello::NotPeer);
    }

    #[test]
    fn partition_separates_groups_and_isolates_unlisted_nodes() {
        let mut st = State::default();
        for n in 1..=4 {
            st.ids.insert(format!("id{n}"), n);
        }
        assert!(!st.separates(Some("id1"), 3), "no partition yet");
        st.groups = Some(vec![vec![1, 2], vec![3]]);
        assert!(!st.separates(Some("id1"), 2));
        assert!(st.separates(Some("id1"), 3));
        assert!(st.separates(Some("id3"), 2));
        assert!(st.separates(Some("id4"), 1), "4 is in no group");
        assert!(!st.separates(None, 3), "unknown dialers are never cut");
        assert!(!st.separates(Some("stranger"), 3));
    }
}
