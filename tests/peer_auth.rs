//! The cluster secret: mutual HMAC challenge-response in the handshake.

mod peer_support;

use std::time::Duration;

use bytes::Bytes;
use ringkv::server::peer::{ClusterSecret, PeerClient, PeerConfig, PeerError, PeerListener};

use peer_support::{config, localhost, recording_handler, LogCapture, Seen};

const SECOND: Duration = Duration::from_secs(1);

fn with_secret(node: &str, secret: Option<&str>) -> PeerConfig {
    let mut config = config(node);
    config.secret = secret.map(|s| ClusterSecret::new(s).expect("non-empty secret"));
    config
}

async fn guarded(secret: Option<&str>) -> (PeerListener, Seen) {
    let (handler, seen) = recording_handler();
    let listener = PeerListener::bind(localhost(), with_secret("server", secret), handler)
        .await
        .expect("bind");
    (listener, seen)
}

async fn ask(client_secret: Option<&str>, listener: &PeerListener) -> Result<Bytes, PeerError> {
    let client = PeerClient::new(with_secret("client", client_secret)).expect("valid config");
    client
        .request(listener.local_addr(), Bytes::from_static(b"hi"), SECOND)
        .await
}

#[tokio::test]
async fn a_peer_with_the_right_secret_is_admitted_and_marked_authenticated() {
    let (listener, seen) = guarded(Some("correct horse")).await;

    let reply = ask(Some("correct horse"), &listener).await;

    assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.node_id, "client");
    assert!(seen[0].0.authenticated);
}

#[tokio::test]
async fn a_peer_with_a_wrong_secret_is_refused_and_logged() {
    let log = LogCapture::global();
    let (listener, seen) = guarded(Some("correct horse")).await;

    let refused = ask(Some("battery staple"), &listener).await;

    // The acceptor proves itself first, so the dialer already notices that
    // the secrets differ and refuses to go on.
    let err = refused.expect_err("refused");
    assert!(
        matches!(&err, PeerError::Unavailable { reason, .. } if reason.contains("wrong cluster secret")),
        "{err}"
    );
    assert!(seen.lock().expect("lock").is_empty(), "handler never ran");
    wait_for_handshake_failures(&listener, 1).await;
    assert!(
        log.warned(listener.local_addr(), "wrong cluster secret"),
        "log:\n{}",
        log.text()
    );
    assert_eq!(listener.stats().snapshot().connections_accepted, 0);
}

#[tokio::test]
async fn a_peer_without_a_secret_is_refused_by_a_node_that_has_one() {
    let log = LogCapture::global();
    let (listener, seen) = guarded(Some("correct horse")).await;

    let refused = ask(None, &listener).await;

    let err = refused.expect_err("refused");
    assert!(err.to_string().contains("requires"), "{err}");
    assert!(seen.lock().expect("lock").is_empty());
    wait_for_handshake_failures(&listener, 1).await;
    assert!(log.warned(listener.local_addr(), "peer has no cluster secret"));
}

#[tokio::test]
async fn a_node_with_a_secret_refuses_to_join_one_without() {
    let (listener, seen) = guarded(None).await;

    let refused = ask(Some("correct horse"), &listener).await;

    assert!(refused.is_err(), "{refused:?}");
    assert!(seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn without_secrets_on_either_side_peers_talk_unauthenticated() {
    let (listener, seen) = guarded(None).await;

    let reply = ask(None, &listener).await;

    assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
    assert!(!seen.lock().expect("lock")[0].0.authenticated);
}

/// The dialer may give up before the acceptor's task has logged; wait for it.
async fn wait_for_handshake_failures(listener: &PeerListener, n: u64) {
    let give_up = std::time::Instant::now() + SECOND;
    while listener.stats().snapshot().handshake_failures < n {
        assert!(
            std::time::Instant::now() < give_up,
            "the listener never counted the failed handshake"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_forged_proof_is_refused_by_the_acceptor() {
    use futures::{SinkExt, StreamExt};
    use ringkv::server::peer::frame::{preamble, Frame, Hello, PeerCodec, PREAMBLE_LEN};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let log = LogCapture::global();
    let (listener, seen) = guarded(Some("correct horse")).await;

    // A dialer that claims to have the secret, ignores the acceptor's proof
    // and answers with a made-up one.
    let mut stream = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let forger_addr = stream.local_addr().expect("addr");
    stream.write_all(&preamble()).await.expect("preamble");
    let mut framed = tokio_util::codec::Framed::new(stream, PeerCodec::new(4096));
    framed
        .send(Frame::Hello(Hello {
            node_id: "forger".into(),
            cluster: "test".into(),
            wants_auth: true,
            nonce: [9; 32],
        }))
        .await
        .expect("hello");
    let mut theirs = [0u8; PREAMBLE_LEN];
    framed
        .get_mut()
        .read_exact(&mut theirs)
        .await
        .expect("preamble");
    assert!(matches!(framed.next().await, Some(Ok(Frame::Hello(_)))));
    assert!(matches!(framed.next().await, Some(Ok(Frame::Proof(_)))));
    framed
        .send(Frame::Proof([0x42; 32]))
        .await
        .expect("forged proof");
    let answer = framed.next().await;

    assert!(
        matches!(&answer, Some(Ok(Frame::Refuse(reason))) if reason.contains("wrong cluster secret")),
        "{answer:?}"
    );
    assert!(framed.next().await.is_none(), "closed after the refusal");
    assert!(seen.lock().expect("lock").is_empty());
    assert!(
        log.warned(forger_addr, "wrong cluster secret"),
        "log:\n{}",
        log.text()
    );
}
