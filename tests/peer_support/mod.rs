//! Helpers shared by the peer transport tests: handlers, configs, a raw
//! handshake for hand-made misbehaving peers, and a log capture.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use ringkv::server::peer::frame::{preamble, Frame, Hello, PeerCodec, PREAMBLE_LEN};
use ringkv::server::peer::{handler_fn, Handler, PeerConfig, PeerInfo, PeerListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// Answers `echo:<payload>`; a payload `sleep:<ms>` sleeps that long first;
/// `none` answers nothing.
pub fn echo_handler() -> Arc<dyn Handler> {
    handler_fn(|_from: &PeerInfo, payload: Bytes| {
        async move {
            if payload.as_ref() == b"none" {
                return None;
            }
            if let Some(ms) = payload.strip_prefix(b"sleep:") {
                let ms: u64 = std::str::from_utf8(ms).ok()?.parse().ok()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&payload);
            Some(Bytes::from(reply))
        }
        .boxed()
    })
}

/// Messages with their senders, in the order `handle` was called.
pub type Seen = Arc<Mutex<Vec<(PeerInfo, Bytes)>>>;

/// Records every message with its sender and answers it unchanged.
pub fn recording_handler() -> (Arc<dyn Handler>, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = handler_fn(move |from: &PeerInfo, payload: Bytes| {
        log.lock()
            .expect("no panics while holding the lock")
            .push((from.clone(), payload.clone()));
        async move { Some(payload) }.boxed()
    });
    (handler, seen)
}

pub fn config(node: &str) -> PeerConfig {
    let mut config = PeerConfig::new(node);
    config.cluster_name = "test".into();
    config
}

pub async fn echo_listener(config: PeerConfig) -> PeerListener {
    PeerListener::bind(localhost(), config, echo_handler())
        .await
        .expect("bind on 127.0.0.1:0")
}

/// Does the dialer's half of an unauthenticated handshake by hand and returns
/// the framed stream, ready for data frames (or deliberate garbage).
pub async fn raw_handshake(addr: SocketAddr, cluster: &str) -> Framed<TcpStream, PeerCodec> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&preamble()).await.expect("write preamble");
    let mut framed = Framed::new(stream, PeerCodec::new(1 << 20));
    framed
        .send(Frame::Hello(Hello {
            node_id: "raw".into(),
            cluster: cluster.into(),
            wants_auth: false,
            nonce: [0; 32],
        }))
        .await
        .expect("send hello");
    let mut theirs = [0u8; PREAMBLE_LEN];
    framed
        .get_mut()
        .read_exact(&mut theirs)
        .await
        .expect("read preamble");
    assert_eq!(theirs, preamble());
    let hello = framed.next().await.expect("hello").expect("valid hello");
    assert!(matches!(hello, Frame::Hello(_)), "got {hello:?}");
    let ready = framed.next().await.expect("ready").expect("valid ready");
    assert_eq!(ready, Frame::Ready);
    framed
}

/// Reads until the other side closes; returns what it sent. Panics if the
/// connection stays open for `within`.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the listener should close the connection");
    got
}

/// Captures the `tracing` output of the whole test binary.
///
/// One global subscriber rather than a thread-local one per test: tracing
/// caches per-callsite interest globally, and with scoped subscribers on
/// parallel test threads an event can be lost to that cache. Tests look for
/// lines that name their own (unique, ephemeral) socket addresses, so they do
/// not see each other's lines.
pub struct LogCapture(Mutex<Vec<u8>>);

static LOGS: std::sync::OnceLock<&'static LogCapture> = std::sync::OnceLock::new();

impl LogCapture {
    /// The capture, installed as the global subscriber on first use.
    pub fn global() -> &'static LogCapture {
        LOGS.get_or_init(|| {
            let capture: &'static LogCapture =
                Box::leak(Box::new(LogCapture(Mutex::new(Vec::new()))));
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || LogWriter(capture))
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in the peer tests");
            capture
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }

    /// The WARN lines that mention `needle`.
    pub fn warnings_mentioning(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains("WARN") && line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Whether a WARN line mentions both `who` and `what`.
    pub fn warned(&self, who: impl std::fmt::Display, what: &str) -> bool {
        self.warnings_mentioning(&who.to_string())
            .iter()
            .any(|line| line.contains(what))
    }
}

struct LogWriter(&'static LogCapture);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 .0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
