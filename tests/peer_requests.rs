//! Requests, answers, deadlines and one-way messages over real sockets.

mod peer_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv::server::peer::{PeerClient, PeerError, PeerListener};

use peer_support::{config, echo_listener, localhost, recording_handler};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_request_gets_its_answer() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");

    let reply = client
        .request(listener.local_addr(), Bytes::from_static(b"hello"), SECOND)
        .await
        .expect("answer");

    assert_eq!(reply, Bytes::from_static(b"echo:hello"));
    let sent = client.stats().snapshot();
    assert_eq!(sent.messages_sent, 1);
    assert_eq!(sent.messages_received, 1);
    assert_eq!(sent.connections_opened, 1);
    assert!(sent.bytes_sent > 5 && sent.bytes_received > 10);
    let served = listener.stats().snapshot();
    assert_eq!(served.connections_accepted, 1);
    assert_eq!(served.messages_received, 1);
    assert_eq!(served.bytes_received, sent.bytes_sent);
    assert_eq!(served.bytes_sent, sent.bytes_received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_share_one_connection_and_get_their_own_answers() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();

    let requests = (0..1000).map(|i| {
        let client = client.clone();
        async move {
            let payload = Bytes::from(format!("req-{i}"));
            let reply = client.request(addr, payload, 10 * SECOND).await;
            (i, reply)
        }
    });
    let replies = futures::future::join_all(requests).await;

    for (i, reply) in replies {
        assert_eq!(
            reply.expect("every request is answered"),
            Bytes::from(format!("echo:req-{i}")),
            "request {i} got someone else's answer"
        );
    }
    let stats = client.stats().snapshot();
    assert_eq!(stats.connections_opened, 1, "one multiplexed connection");
    assert_eq!(stats.messages_sent, 1000);
    assert!(
        stats.write_batches < stats.messages_sent,
        "queued frames are coalesced into fewer writes: {} writes for {} frames",
        stats.write_batches,
        stats.messages_sent
    );
    assert_eq!(listener.stats().snapshot().connections_accepted, 1);
}

#[tokio::test]
async fn a_request_whose_handler_is_too_slow_times_out_at_its_deadline() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();
    // Connect first so the measurement is the handler's delay only.
    client
        .request(addr, Bytes::from_static(b"warm-up"), SECOND)
        .await
        .expect("warm-up");

    let started = Instant::now();
    let outcome = client
        .request(
            addr,
            Bytes::from_static(b"sleep:3000"),
            Duration::from_millis(200),
        )
        .await;
    let elapsed = started.elapsed();

    assert!(
        matches!(outcome, Err(PeerError::Timeout { .. })),
        "{outcome:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1000),
        "timed out after {elapsed:?}"
    );
    assert_eq!(client.stats().snapshot().timeouts, 1);
    // The connection is still good for other requests.
    let reply = client
        .request(addr, Bytes::from_static(b"after"), SECOND)
        .await
        .expect("answer after a timeout");
    assert_eq!(reply, Bytes::from_static(b"echo:after"));
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_a_fast_one_on_the_same_connection() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();

    let slow = client.request(addr, Bytes::from_static(b"sleep:1500"), 5 * SECOND);
    let fast = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let reply = client
            .request(addr, Bytes::from_static(b"quick"), 5 * SECOND)
            .await;
        (reply, started.elapsed())
    };
    let (slow, (fast, fast_took)) = tokio::join!(slow, fast);

    assert_eq!(
        fast.expect("fast answer"),
        Bytes::from_static(b"echo:quick")
    );
    assert!(fast_took < Duration::from_millis(500), "took {fast_took:?}");
    assert_eq!(
        slow.expect("slow answer"),
        Bytes::from_static(b"echo:sleep:1500")
    );
    assert_eq!(client.stats().snapshot().connections_opened, 1);
}

#[tokio::test]
async fn a_handler_that_gives_no_reply_fails_the_request_at_once() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");

    let started = Instant::now();
    let outcome = client
        .request(
            listener.local_addr(),
            Bytes::from_static(b"none"),
            5 * SECOND,
        )
        .await;

    assert!(
        matches!(&outcome, Err(PeerError::Remote { reason, .. }) if reason.contains("no reply")),
        "{outcome:?}"
    );
    assert!(started.elapsed() < SECOND, "did not wait for the deadline");
}

#[tokio::test]
async fn one_way_messages_arrive_in_order_with_the_senders_identity() {
    let (handler, seen) = recording_handler();
    let listener = PeerListener::bind(localhost(), config("server"), handler)
        .await
        .expect("bind");
    let client = PeerClient::new(config("gossiper")).expect("valid config");

    for i in 0..100 {
        client
            .send(listener.local_addr(), Bytes::from(format!("g{i}")))
            .expect("queued");
    }
    // A request after the messages on the same connection is handled after
    // them, so once it is answered they have all been handed to the handler.
    client
        .request(
            listener.local_addr(),
            Bytes::from_static(b"barrier"),
            SECOND,
        )
        .await
        .expect("barrier");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 101);
    for (i, (from, payload)) in seen.iter().take(100).enumerate() {
        assert_eq!(payload, &Bytes::from(format!("g{i}")));
        assert_eq!(from.node_id, "gossiper");
        assert!(!from.authenticated);
    }
}

#[tokio::test]
async fn a_payload_over_the_maximum_frame_size_is_refused_before_sending() {
    let listener = echo_listener(config("server")).await;
    let mut small = config("client");
    small.max_frame_bytes = 64 * 1024;
    let client = PeerClient::new(small).expect("valid config");

    let outcome = client
        .request(
            listener.local_addr(),
            Bytes::from(vec![0u8; 64 * 1024]),
            SECOND,
        )
        .await;

    assert!(
        matches!(outcome, Err(PeerError::TooLarge { .. })),
        "{outcome:?}"
    );
    assert_eq!(client.stats().snapshot().messages_sent, 0);
}

#[tokio::test]
async fn large_payloads_within_the_limit_round_trip() {
    let listener = echo_listener(config("server")).await;
    let client = PeerClient::new(config("client")).expect("valid config");
    let payload = Bytes::from((0..4_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());

    let reply = client
        .request(listener.local_addr(), payload.clone(), 10 * SECOND)
        .await
        .expect("answer");

    assert_eq!(&reply[..5], b"echo:");
    assert_eq!(reply.slice(5..), payload);
}

#[tokio::test]
async fn a_request_that_expires_while_waiting_for_a_handler_slot_is_never_handled() {
    let (handler, seen) = peer_support::recording_handler();
    let slow = ringkv::server::peer::handler_fn(move |from, payload: Bytes| {
        let record = handler.handle(from, payload.clone());
        Box::pin(async move {
            if payload.as_ref() == b"slow" {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            record.await
        })
    });
    let mut server = config("server");
    server.max_inflight = 1;
    let listener = PeerListener::bind(localhost(), server, slow)
        .await
        .expect("bind");
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();

    let occupy = client.request(addr, Bytes::from_static(b"slow"), 5 * SECOND);
    let starved = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .request(
                addr,
                Bytes::from_static(b"starved"),
                Duration::from_millis(100),
            )
            .await
    };
    let (occupied, starved) = tokio::join!(occupy, starved);

    assert_eq!(occupied, Ok(Bytes::from_static(b"slow")));
    assert!(
        matches!(starved, Err(PeerError::Timeout { .. })),
        "{starved:?}"
    );
    // The slot frees after 500 ms; by then the starved request's budget is
    // spent, so the listener drops it instead of running the handler.
    client
        .request(addr, Bytes::from_static(b"next"), SECOND)
        .await
        .expect("later requests are served");
    let handled: Vec<Bytes> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        handled,
        vec![Bytes::from_static(b"slow"), Bytes::from_static(b"next")]
    );
    assert_eq!(listener.stats().snapshot().expired_before_handling, 1);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_request_but_not_the_connection() {
    let handler = ringkv::server::peer::handler_fn(|_from, payload: Bytes| {
        if payload.as_ref() == b"panic now" {
            panic!("handler bug (expected by this test)");
        }
        Box::pin(async move {
            if payload.as_ref() == b"panic later" {
                panic!("handler bug (expected by this test)");
            }
            Some(payload)
        })
    });
    let listener = PeerListener::bind(localhost(), config("server"), handler)
        .await
        .expect("bind");
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();

    for payload in [&b"panic now"[..], &b"panic later"[..]] {
        let outcome = client
            .request(addr, Bytes::copy_from_slice(payload), SECOND)
            .await;
        assert!(
            matches!(&outcome, Err(PeerError::Remote { reason, .. }) if reason.contains("panicked")),
            "{outcome:?}"
        );
    }
    let reply = client
        .request(addr, Bytes::from_static(b"fine"), SECOND)
        .await;
    assert_eq!(reply, Ok(Bytes::from_static(b"fine")));
    assert_eq!(client.stats().snapshot().connections_opened, 1);
}
