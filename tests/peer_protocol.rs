//! Misbehaving peers on the peer port: garbage, oversized frames, a wrong
//! magic or version, a silent connection. Each is closed with a warning that
//! names its address, and a well-behaved peer keeps being served throughout.

mod peer_support;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use ringkv::server::peer::frame::{preamble, Frame, RequestId, PROTOCOL_VERSION};
use ringkv::server::peer::{PeerClient, PeerListener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use peer_support::{config, echo_listener, raw_handshake, read_until_closed, LogCapture};

const SECOND: Duration = Duration::from_secs(1);

/// A listener with a small maximum frame, and a well-behaved client already
/// talking to it.
async fn served() -> (PeerListener, PeerClient) {
    let mut server = config("server");
    server.max_frame_bytes = 64 * 1024;
    server.handshake_timeout = Duration::from_millis(300);
    let listener = echo_listener(server).await;
    let client = PeerClient::new(config("good")).expect("valid config");
    assert_still_served(&listener, &client).await;
    (listener, client)
}

async fn assert_still_served(listener: &PeerListener, client: &PeerClient) {
    let reply = client
        .request(listener.local_addr(), Bytes::from_static(b"ping"), SECOND)
        .await
        .expect("the well-behaved peer is still served");
    assert_eq!(reply, Bytes::from_static(b"echo:ping"));
}

#[tokio::test]
async fn garbage_on_the_peer_port_is_closed_with_a_warning_naming_the_sender() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut stray = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let stray_addr = stray.local_addr().expect("local addr");
    stray
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answered = read_until_closed(&mut stray, 2 * SECOND).await;

    assert!(answered.is_empty(), "a stranger gets no bytes back");
    assert!(log.warned(stray_addr, "bad magic"), "log:\n{}", log.text());
    assert_still_served(&listener, &client).await;
    assert_eq!(listener.stats().snapshot().handshake_failures, 1);
}

#[tokio::test]
async fn a_wrong_protocol_version_is_answered_with_ours_then_closed() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut newer = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let newer_addr = newer.local_addr().expect("local addr");
    newer
        .write_all(&[b'R', b'K', b'V', b'P', PROTOCOL_VERSION + 1])
        .await
        .expect("write");
    let answered = read_until_closed(&mut newer, 2 * SECOND).await;

    assert_eq!(answered, preamble(), "the listener names its own version");
    assert!(
        log.warned(newer_addr, "protocol version 2"),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn a_wrong_magic_is_closed_without_an_answer() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut other = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let other_addr = other.local_addr().expect("local addr");
    other.write_all(b"RKVX\x01").await.expect("write");
    let answered = read_until_closed(&mut other, 2 * SECOND).await;

    assert!(answered.is_empty());
    assert!(log.warned(other_addr, "bad magic"), "log:\n{}", log.text());
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn an_oversized_frame_after_the_handshake_closes_that_connection() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut framed = raw_handshake(listener.local_addr(), "test").await;
    let raw_addr = framed.get_ref().local_addr().expect("local addr");
    // A well-formed request first: the raw peer is a real peer until it isn't.
    framed
        .send(Frame::Request {
            id: RequestId(1),
            budget: SECOND,
            payload: Bytes::from_static(b"ok"),
        })
        .await
        .expect("send request");
    let mut oversized = BytesMut::new();
    oversized.put_u32(64 * 1024 + 1);
    oversized.put_u8(0x13);
    oversized.put_bytes(0, 1024);
    framed
        .get_mut()
        .write_all(&oversized)
        .await
        .expect("write oversized prefix");
    let _ = read_until_closed(framed.get_mut(), 2 * SECOND).await;

    let warnings = log.warnings_mentioning(&raw_addr.to_string());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("65537 bytes exceeds the maximum of 65536")),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
    assert_eq!(listener.stats().snapshot().protocol_errors, 1);
}

#[tokio::test]
async fn a_large_length_prefix_during_the_handshake_is_refused_without_buffering_it() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut stream = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let addr = stream.local_addr().expect("local addr");
    let mut bytes = preamble().to_vec();
    // 8 KiB is within the data-phase limit (64 KiB here) but over the
    // handshake's 4 KiB: nobody may send big frames before proving anything.
    bytes.extend_from_slice(&(8 * 1024u32).to_be_bytes());
    stream.write_all(&bytes).await.expect("write");
    let _ = read_until_closed(&mut stream, 2 * SECOND).await;

    assert!(
        log.warned(addr, "8192 bytes exceeds the maximum of 4096"),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn an_unknown_frame_kind_after_the_handshake_closes_that_connection() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut framed = raw_handshake(listener.local_addr(), "test").await;
    let raw_addr = framed.get_ref().local_addr().expect("local addr");
    framed
        .get_mut()
        .write_all(&[0, 0, 0, 3, 0x7f, 1, 2])
        .await
        .expect("write");
    let _ = read_until_closed(framed.get_mut(), 2 * SECOND).await;

    let warnings = log.warnings_mentioning(&raw_addr.to_string());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("unknown frame kind 0x7f")),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn a_response_frame_sent_to_the_acceptor_is_a_protocol_error() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut framed = raw_handshake(listener.local_addr(), "test").await;
    let raw_addr = framed.get_ref().local_addr().expect("local addr");
    framed
        .send(Frame::Response {
            id: RequestId(7),
            payload: Bytes::new(),
        })
        .await
        .expect("send");
    let _ = read_until_closed(framed.get_mut(), 2 * SECOND).await;

    assert!(
        log.warned(raw_addr, "unexpected frame from the dialer"),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn a_connection_that_never_completes_the_handshake_is_closed_at_its_deadline() {
    let log = LogCapture::global();
    let (listener, client) = served().await;

    let mut silent = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let silent_addr = silent.local_addr().expect("local addr");
    let started = std::time::Instant::now();
    let _ = read_until_closed(&mut silent, 3 * SECOND).await;

    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        log.warned(silent_addr, "handshake timed out"),
        "log:\n{}",
        log.text()
    );
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_refused_with_the_reason() {
    let log = LogCapture::global();
    let (listener, client) = served().await;
    let mut stranger = config("stranger");
    stranger.cluster_name = "other".into();
    let stranger = PeerClient::new(stranger).expect("valid config");

    let outcome = stranger
        .request(listener.local_addr(), Bytes::from_static(b"hi"), SECOND)
        .await;

    let err = outcome.expect_err("refused");
    assert!(err.to_string().contains("cluster"), "{err}");
    // The acceptor names the stranger's cluster; the stranger's own log names
    // the address it could not join.
    assert!(log.warned("refused peer connection", "\"other\""));
    assert!(log.warned(listener.local_addr(), "cannot reach peer"));
    assert_still_served(&listener, &client).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_until_a_slot_frees() {
    let log = LogCapture::global();
    let mut server = config("server");
    server.max_connections = 1;
    server.handshake_timeout = Duration::from_millis(300);
    let listener = echo_listener(server).await;

    // A silent stranger takes the only slot until its handshake times out.
    let mut squatter = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut extra = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let extra_addr = extra.local_addr().expect("addr");
    let started = std::time::Instant::now();
    let _ = read_until_closed(&mut extra, SECOND).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "closed at once"
    );
    assert!(
        log.warned(extra_addr, "too many connections"),
        "log:\n{}",
        log.text()
    );

    // Once the squatter is gone, a real peer gets in.
    let _ = read_until_closed(&mut squatter, 2 * SECOND).await;
    let client = PeerClient::new(config("good")).expect("valid config");
    assert_still_served(&listener, &client).await;
}
