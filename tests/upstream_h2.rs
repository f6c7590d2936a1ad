//! The shared HTTP/2 connections to a provider: a connection that stopped answering (a middlebox
//! dropped it without a word) is found by its PINGs and replaced, given up after a response head
//! that never came, and left when the provider says GOAWAY; requests can be spread over several.
//! The dead connection is made by a relay between the sidecar and a real TLS upstream that stops
//! forwarding the connections it carries, keeping their sockets open.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::*;
use common::*;
use http::StatusCode;
use sloguard::Sidecar;
use tokio::sync::watch;

/// A TCP relay to `backend`; `freeze()` turns every connection it carries now into a black hole
/// (nothing forwarded either way, sockets kept open). Later connections are relayed.
struct Relay {
    addr: SocketAddr,
    generation: watch::Sender<u64>,
}

impl Relay {
    async fn to(backend: SocketAddr) -> Relay {
        let tcp = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (generation, _) = watch::channel(0u64);
        let gen = generation.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = tcp.accept().await {
                let mut frozen = gen.subscribe();
                let born = *frozen.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let hole = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = frozen.wait_for(|g| *g > born) => true,
                    };
                    if hole {
                        // A black hole: both sockets open, nothing moves.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Relay { addr, generation }
    }

    fn freeze(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A sidecar in front of `https://{addr}` (trusting `ca_file`) with `h2` and `timeouts`.
async fn sidecar(addr: SocketAddr, ca_file: &std::path::Path, h2: &str, timeouts: &str) -> Sidecar {
    let upstream = format!(
        "  provider:
    url: https://{addr}
    tls: {{ca_file: {}}}
    timeouts: {{{timeouts}}}
    h2: {{{h2}}}
shutdown: {{grace_period: 1s}}
",
        ca_file.display()
    );
    start_yaml(&(config_head("", "proxy", "llm", "main: {upstreams: [provider]}") + &upstream))
        .await
}

async fn version_of(s: &Sidecar) -> (StatusCode, String) {
    let resp = get(&client(), &proxy_url(s, "/v1/models")).await;
    let status = resp.status();
    (
        status,
        String::from_utf8_lossy(&body_bytes(resp).await).into_owned(),
    )
}

#[tokio::test]
async fn a_connection_that_stopped_answering_is_found_by_its_pings_and_replaced() {
    let ca = test_ca();
    let (backend, seen) = tls_upstream(&ca, &[b"h2"]).await;
    let relay = Relay::to(backend).await;
    let ca_file = write_ca(&ca, "h2-ping");
    let s = sidecar(
        relay.addr,
        &ca_file,
        "keepalive_interval: 200ms, keepalive_timeout: 300ms",
        "first_byte: 5s",
    )
    .await;
    assert_eq!(version_of(&s).await, (StatusCode::OK, "HTTP/2.0".into()));
    relay.freeze();
    // The PINGs go unanswered: the connection is closed within interval + timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    assert_eq!(version_of(&s).await, (StatusCode::OK, "HTTP/2.0".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.handshakes(), 2, "a new connection");
    s.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn after_a_response_head_that_never_came_new_requests_get_a_new_connection() {
    let ca = test_ca();
    let (backend, seen) = tls_upstream(&ca, &[b"h2"]).await;
    let relay = Relay::to(backend).await;
    let ca_file = write_ca(&ca, "h2-timeout");
    // PINGs too rare to find it first.
    let s = sidecar(
        relay.addr,
        &ca_file,
        "keepalive_interval: 60s",
        "first_byte: 700ms",
    )
    .await;
    assert_eq!(version_of(&s).await.0, StatusCode::OK);
    relay.freeze();
    assert_eq!(version_of(&s).await.0, StatusCode::GATEWAY_TIMEOUT);
    // The next request does not wait on the dead connection too.
    assert_eq!(version_of(&s).await, (StatusCode::OK, "HTTP/2.0".into()));
    assert_eq!(seen.handshakes(), 2);
    s.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn a_connection_the_provider_closes_with_goaway_is_left_for_a_new_one() {
    let ca = test_ca();
    // Each connection says GOAWAY after its second answer.
    let (backend, seen) = tls_upstream_closing(&ca, &[b"h2"], Some(2)).await;
    let ca_file = write_ca(&ca, "h2-goaway");
    let s = sidecar(backend, &ca_file, "", "").await;
    for i in 0..6 {
        assert_eq!(
            version_of(&s).await,
            (StatusCode::OK, "HTTP/2.0".into()),
            "{i}"
        );
        // Each second answer is its connection's last: the provider is done with that connection
        // once the sidecar has acknowledged its GOAWAY, before the next request.
        let answered = i + 1;
        let gone = answered / 2;
        let said_goaway = async || seen.closed() >= gone;
        wait_until("the provider finishes its GOAWAY", 5, said_goaway).await;
    }
    assert_eq!(seen.handshakes(), 3);
    let m = metrics(&s).await;
    expect_outcome(&m, "ok", 6.0);
    s.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn requests_are_spread_over_h2_connections() {
    let ca = test_ca();
    let (backend, seen) = tls_upstream(&ca, &[b"h2"]).await;
    let ca_file = write_ca(&ca, "h2-spread");
    let s = sidecar(backend, &ca_file, "connections: 3", "").await;
    for _ in 0..9 {
        assert_eq!(version_of(&s).await.0, StatusCode::OK);
    }
    assert_eq!(seen.handshakes(), 3);
    s.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}
