//! Peers that are down, come back, vanish mid-request or cannot keep up, and
//! both ends shutting down.

mod peer_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv::server::peer::{LinkStatus, PeerClient, PeerError, PeerListener};
use tokio::net::TcpListener;

use peer_support::{config, echo_handler, echo_listener, localhost};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_down_peer_fails_fast_and_is_reconnected_when_it_comes_back() {
    // Find a free port, then leave it unbound: the peer is "down".
    let port_holder = echo_listener(config("server")).await;
    let addr = port_holder.local_addr();
    port_holder.shutdown().await;
    drop(port_holder);

    let mut client_config = config("client");
    client_config.backoff_initial = Duration::from_millis(200);
    client_config.backoff_max = Duration::from_millis(400);
    let client = PeerClient::new(client_config).expect("valid config");

    // The first request tries to connect and learns the peer is down, well
    // before its 5 s deadline.
    let started = Instant::now();
    let first = client
        .request(addr, Bytes::from_static(b"a"), 5 * SECOND)
        .await;
    assert!(
        matches!(&first, Err(PeerError::Unavailable { reason, .. }) if reason.contains("connect")),
        "{first:?}"
    );
    assert!(started.elapsed() < SECOND, "took {:?}", started.elapsed());

    // During the back-off, requests and messages fail at once, without a
    // connection attempt.
    let started = Instant::now();
    let second = client
        .request(addr, Bytes::from_static(b"b"), 5 * SECOND)
        .await;
    assert!(
        matches!(&second, Err(PeerError::Unavailable { reason, .. }) if reason.contains("retrying in")),
        "{second:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(client.send(addr, Bytes::from_static(b"gossip")).is_err());
    let links = client.links();
    assert_eq!(links.len(), 1);
    assert!(
        matches!(&links[0], (a, LinkStatus::BackingOff { reason, .. }) if *a == addr && reason.contains("connect")),
        "{links:?}"
    );
    let stats = client.stats().snapshot();
    assert_eq!(stats.connect_failures, 1);
    assert_eq!(stats.failed_fast, 2);

    // The peer comes back on the same address; once the back-off has passed
    // the next request reconnects.
    let revived = PeerListener::bind(addr, config("server"), echo_handler())
        .await
        .expect("rebind the same port");
    let reply = retry_until_answered(&client, addr).await;
    assert_eq!(reply, Bytes::from_static(b"echo:again"));
    assert_eq!(client.links(), vec![(addr, LinkStatus::Up)]);
    let stats = client.stats().snapshot();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.reconnects, 1);
    assert_eq!(revived.stats().snapshot().connections_accepted, 1);
}

async fn retry_until_answered(client: &PeerClient, addr: std::net::SocketAddr) -> Bytes {
    let give_up = Instant::now() + 5 * SECOND;
    loop {
        match client
            .request(addr, Bytes::from_static(b"again"), SECOND)
            .await
        {
            Ok(reply) => return reply,
            Err(e) if Instant::now() < give_up => {
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("peer never came back: {e}"),
        }
    }
}

#[tokio::test]
async fn requests_in_flight_fail_at_once_when_the_connection_drops() {
    let mut server = config("server");
    // No grace: the listener closes connections without waiting for handlers.
    server.shutdown_grace = Duration::ZERO;
    let listener = echo_listener(server).await;
    let client = PeerClient::new(config("client")).expect("valid config");
    let addr = listener.local_addr();

    let started = Instant::now();
    let in_flight = client.request(addr, Bytes::from_static(b"sleep:5000"), 10 * SECOND);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        listener.shutdown().await;
    };
    let (outcome, ()) = tokio::join!(in_flight, kill);

    assert!(
        matches!(&outcome, Err(PeerError::Unavailable { reason, .. }) if reason.contains("connection lost")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < 2 * SECOND,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_peer_that_restarts_is_reached_again_without_waiting_for_a_back_off() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");
    client
        .request(addr, Bytes::from_static(b"before"), SECOND)
        .await
        .expect("answer before the restart");

    listener.shutdown().await;
    drop(listener);
    let restarted = PeerListener::bind(addr, config("server"), echo_handler())
        .await
        .expect("rebind");
    // Give the client's reader a moment to notice the closed connection.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let reply = client
        .request(addr, Bytes::from_static(b"after"), SECOND)
        .await
        .expect("the first request after the restart reconnects");
    assert_eq!(reply, Bytes::from_static(b"echo:after"));
    assert_eq!(client.stats().snapshot().reconnects, 1);
    assert_eq!(restarted.stats().snapshot().connections_accepted, 1);
}

#[tokio::test]
async fn a_full_queue_drops_one_way_messages_and_makes_requests_wait_until_their_deadline() {
    // A "peer" that accepts TCP connections but never answers the handshake,
    // so the client's queue cannot drain.
    let stuck = TcpListener::bind(localhost()).await.expect("bind");
    let addr = stuck.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stuck.accept().await {
            held.push(stream);
        }
    });
    let mut client_config = config("client");
    client_config.queue_depth = 2;
    client_config.handshake_timeout = Duration::from_secs(3);
    let client = PeerClient::new(client_config).expect("valid config");

    // The link task takes the first message and starts connecting; two more
    // fill the queue.
    for i in 0..3 {
        client
            .send(addr, Bytes::from(format!("m{i}")))
            .expect("room in the queue");
        tokio::task::yield_now().await;
    }
    let dropped = client.send(addr, Bytes::from_static(b"one too many"));
    assert_eq!(dropped, Err(PeerError::QueueFull { addr }));
    assert_eq!(client.stats().snapshot().queue_full, 1);

    let started = Instant::now();
    let waited = client
        .request(addr, Bytes::from_static(b"r"), Duration::from_millis(300))
        .await;
    assert!(
        matches!(waited, Err(PeerError::Timeout { .. })),
        "{waited:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    holder.abort();
}

#[tokio::test]
async fn listener_shutdown_lets_running_handlers_answer_then_refuses_new_connections() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");
    client
        .request(addr, Bytes::from_static(b"warm-up"), SECOND)
        .await
        .expect("warm-up");

    let in_flight = client.request(addr, Bytes::from_static(b"sleep:300"), 5 * SECOND);
    let shutdown = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        listener.shutdown().await;
        Instant::now()
    };
    let (answer, shut_at) = tokio::join!(in_flight, shutdown);

    assert_eq!(
        answer.expect("the running handler's answer is delivered"),
        Bytes::from_static(b"echo:sleep:300")
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(shut_at.elapsed() < SECOND);
}

#[tokio::test]
async fn client_shutdown_fails_waiting_and_later_requests_as_closed() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");

    let waiting = client.request(addr, Bytes::from_static(b"sleep:2000"), 5 * SECOND);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.shutdown();
    };
    let started = Instant::now();
    let (outcome, ()) = tokio::join!(waiting, stop);

    assert_eq!(outcome, Err(PeerError::Closed));
    assert!(started.elapsed() < SECOND);
    let later = client.request(addr, Bytes::from_static(b"x"), SECOND).await;
    assert_eq!(later, Err(PeerError::Closed));
}

#[tokio::test]
async fn a_connection_on_which_requests_keep_timing_out_in_silence_is_replaced() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");
    client
        .request(addr, Bytes::from_static(b"warm-up"), SECOND)
        .await
        .expect("warm-up");

    // Three requests in a row get no frame back at all (the default limit).
    for _ in 0..3 {
        let outcome = client
            .request(
                addr,
                Bytes::from_static(b"sleep:60000"),
                Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(outcome, Err(PeerError::Timeout { .. })),
            "{outcome:?}"
        );
    }

    let reply = client
        .request(addr, Bytes::from_static(b"fresh"), SECOND)
        .await
        .expect("answered on a new connection");
    assert_eq!(reply, Bytes::from_static(b"echo:fresh"));
    let stats = client.stats().snapshot();
    assert_eq!(
        stats.connections_opened, 2,
        "the silent connection was replaced"
    );
    assert_eq!(stats.reconnects, 1);
}

#[tokio::test]
async fn timeouts_interleaved_with_answers_keep_the_connection() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");

    for _ in 0..5 {
        let slow = client
            .request(
                addr,
                Bytes::from_static(b"sleep:60000"),
                Duration::from_millis(50),
            )
            .await;
        assert!(matches!(slow, Err(PeerError::Timeout { .. })), "{slow:?}");
        client
            .request(addr, Bytes::from_static(b"alive"), SECOND)
            .await
            .expect("answer");
    }

    assert_eq!(client.stats().snapshot().connections_opened, 1);
}

#[tokio::test]
async fn forgetting_a_peer_closes_its_connection() {
    let listener = echo_listener(config("server")).await;
    let addr = listener.local_addr();
    let client = PeerClient::new(config("client")).expect("valid config");
    client
        .request(addr, Bytes::from_static(b"hi"), SECOND)
        .await
        .expect("answer");
    assert_eq!(listener.stats().snapshot().connections_active, 1);

    client.forget(addr);

    let give_up = Instant::now() + SECOND;
    while listener.stats().snapshot().connections_active > 0 {
        assert!(Instant::now() < give_up, "the connection stayed open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.stats().snapshot().connections_active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_peer_restart_fail_cleanly_within_their_deadline_and_then_recover() {
    let mut server = config("server");
    server.shutdown_grace = Duration::ZERO;
    let listener = echo_listener(server.clone()).await;
    let addr = listener.local_addr();
    let mut client_config = config("client");
    client_config.backoff_initial = Duration::from_millis(20);
    client_config.backoff_max = Duration::from_millis(100);
    let client = PeerClient::new(client_config).expect("valid config");
    let deadline = Duration::from_millis(500);
    let stop_at = Instant::now() + Duration::from_millis(1500);

    let workers: Vec<_> = (0..50)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while Instant::now() < stop_at {
                    let started = Instant::now();
                    let payload = Bytes::from(format!("w{w}-{i}"));
                    let outcome = client.request(addr, payload.clone(), deadline).await;
                    outcomes.push((payload, outcome, started.elapsed()));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    listener.shutdown().await;
    drop(listener);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _revived = PeerListener::bind(addr, server, echo_handler())
        .await
        .expect("rebind");

    let mut failures = 0;
    for worker in workers {
        let outcomes = worker.await.expect("worker");
        for (payload, outcome, took) in &outcomes {
            assert!(
                *took < deadline + Duration::from_millis(250),
                "a request took {took:?}"
            );
            match outcome {
                Ok(reply) => assert_eq!(&reply[5..], &payload[..], "wrong answer"),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    failures += 1;
                }
            }
        }
        let (_, last, _) = outcomes.last().expect("at least one request");
        assert!(last.is_ok(), "the peer is back, yet: {last:?}");
    }
    assert!(failures > 0, "the restart should have failed some requests");
}
