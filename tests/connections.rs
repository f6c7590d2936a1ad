//! Client connections cannot pin the sidecar: a socket that sends nothing, half an HTTP/2
//! preface, an h2c connection without a stream, an idle keep-alive connection and an HTTP/2 peer
//! that stops answering PINGs are all closed; at `max_connections` a new connection takes the
//! place of the idlest (so a flood of idle sockets cannot keep the kubelet's probe out of the
//! admin port), and is closed at once only when every connection is busy. Each test does the
//! client's part with raw bytes on a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use sloguard::{sim, Config, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A sidecar whose `proxy` listener (in front of `agent_url`) and admin port have `limits`.
async fn sidecar(agent_url: &str, limits: &str, admin_limits: &str) -> Sidecar {
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0, limits: {{{admin_limits}}}}}
listeners:
  - {{name: proxy, bind: 127.0.0.1:0, role: agent, route: agent, limits: {{{limits}}}}}
routes:
  agent: {{upstreams: [agent]}}
upstreams:
  agent: {{url: {agent_url}}}
shutdown: {{grace_period: 1s}}
"
    );
    Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap()
}

fn proxy(s: &Sidecar) -> SocketAddr {
    s.listener_addr("proxy").unwrap()
}

/// Reads until the peer closes; returns everything read, or `None` if it was still open after
/// `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(got)
}

/// `sloguard_client_connections` of `listener`.
fn open(m: &str, listener: &str) -> f64 {
    metric(m, "sloguard_client_connections", &[("listener", listener)])
}

fn closed(m: &str, listener: &str, reason: &str) -> f64 {
    metric(
        m,
        "sloguard_client_connections_closed_total",
        &[("listener", listener), ("reason", reason)],
    )
}

#[tokio::test]
async fn sockets_that_never_send_a_request_are_closed_after_header_timeout() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "header_timeout: 500ms", "").await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(proxy(&s)).await.unwrap();
    let mut half_preface = TcpStream::connect(proxy(&s)).await.unwrap();
    half_preface.write_all(&PREFACE[..16]).await.unwrap();
    // A whole h2c preface and settings, and then no stream.
    let mut no_stream = TcpStream::connect(proxy(&s)).await.unwrap();
    no_stream.write_all(PREFACE).await.unwrap();
    no_stream.write_all(EMPTY_SETTINGS).await.unwrap();
    let mut half_head = TcpStream::connect(proxy(&s)).await.unwrap();
    half_head
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for (what, stream) in [
        ("silent", &mut silent),
        ("half a preface", &mut half_preface),
        ("h2c without a stream", &mut no_stream),
        ("half a head", &mut half_head),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(3))
                .await
                .is_some(),
            "{what} still open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(450));
    let m = metrics_when(&s, |m| closed(m, "proxy", "header_timeout") >= 4.0).await;
    assert_eq!(closed(&m, "proxy", "header_timeout"), 4.0);
    expect_metric(
        &m,
        "sloguard_client_connections",
        &[("listener", "proxy")],
        0.0,
    );
    // The port still serves.
    assert_eq!(
        get(&client(), &proxy_url(&s, "/200")).await.status(),
        StatusCode::OK
    );
    s.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "idle_timeout: 700ms", "").await;
    // HTTP/1.1 keep-alive: one request, then nothing.
    let mut h1 = TcpStream::connect(proxy(&s)).await.unwrap();
    h1.write_all(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut h1, Duration::from_secs(3)).await;
    let got = String::from_utf8_lossy(&got.expect("closed")).to_lowercase();
    assert!(got.starts_with("http/1.1 200"), "{got}");
    // h2c: one request on stream 1, then nothing: a GOAWAY, then the close.
    let mut h2 = TcpStream::connect(proxy(&s)).await.unwrap();
    h2.write_all(PREFACE).await.unwrap();
    h2.write_all(EMPTY_SETTINGS).await.unwrap();
    h2.write_all(&h2_get(1)).await.unwrap();
    let got = closed_within(&mut h2, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(
        frames(&got).contains(&7),
        "a GOAWAY frame: {:?}",
        frames(&got)
    );
    let m = metrics_when(&s, |m| closed(m, "proxy", "idle") >= 2.0).await;
    assert_eq!(closed(&m, "proxy", "idle"), 2.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_next_request_head_that_never_finishes_is_closed_after_idle_timeout() {
    // A slow-loris on a kept-alive connection: one whole request, then half of the next head,
    // and nothing more. The time to the next head is the idle timeout's, whatever came of it.
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "idle_timeout: 700ms", "").await;
    let mut h1 = TcpStream::connect(proxy(&s)).await.unwrap();
    assert_eq!(ask(&mut h1, "/200").await, Some(200));
    h1.write_all(b"GET /200 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let got = closed_within(&mut h1, Duration::from_secs(5)).await;
    assert_eq!(got.expect("closed"), b"", "no answer to half a head");
    // The socket is let go once its linger is over.
    let m = metrics_when(&s, |m| open(m, "proxy") == 0.0).await;
    assert_eq!(closed(&m, "proxy", "idle"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_drain_cuts_a_stream_still_open_when_its_grace_is_over() {
    // An answer that never ends: the drain tells the connection to finish, then, once the
    // grace (1 s) is over, to close whatever it is doing.
    let upstream = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
        if s.write_all(head).await.is_ok() {
            std::future::pending::<()>().await;
        }
    })
    .await;
    let s = sidecar(&format!("'http://{upstream}'"), "", "").await;
    let mut h1 = TcpStream::connect(proxy(&s)).await.unwrap();
    h1.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(5).any(|w| w == b"hello") {
        let n = h1.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), s.shutdown())
        .await
        .expect("the drain ends once its grace is over");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the stream had its grace"
    );
    let rest = closed_within(&mut h1, Duration::from_secs(5)).await;
    assert!(rest.is_some(), "the stream's connection is closed");
}

/// Sends one HTTP/1.1 request for `path` on a kept-alive connection and reads its answer (head
/// and `Content-Length` body): the status code, or `None` if the connection closed first.
async fn ask(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut got = read_head(stream).await;
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut buf = [0u8; 4096];
    while got.len() < end + length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    head.get(9..12)?.parse().ok()
}

#[tokio::test]
async fn a_kept_alive_connection_that_keeps_asking_outlives_header_timeout() {
    // A Prometheus or a dashboard polling over one connection, past the first head's deadline:
    // the deadline is for a connection that has asked nothing, on the admin port as on a
    // listener.
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "header_timeout: 400ms", "header_timeout: 400ms").await;
    for (port, addr, path) in [
        ("admin", s.admin_addr, "/healthz"),
        ("admin", s.admin_addr, "/metrics"),
        ("proxy", proxy(&s), "/200"),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        for i in 0..8 {
            let status = ask(&mut stream, path).await;
            assert_eq!(
                status,
                Some(200),
                "{port} {path}: request {i} at {:?} on the same connection",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(1000));
    }
    let m = metrics(&s).await;
    for port in ["admin", "proxy"] {
        assert_eq!(closed(&m, port, "header_timeout"), 0.0, "{port}: {m}");
    }
    s.shutdown().await;
}

/// A HEADERS frame for `GET /200` on `stream` (HPACK: indexed :method GET, :scheme http, a
/// literal :path and :authority), ending the stream.
fn h2_get(stream: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    // :path (static index 4), literal without indexing, value "/200".
    block.extend_from_slice(&[0x04, 4]);
    block.extend_from_slice(b"/200");
    // :authority (static index 1), literal without indexing, value "x".
    block.extend_from_slice(&[0x01, 1, b'x']);
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend(block);
    frame
}

/// The types of the HTTP/2 frames in what a server sent.
fn frames(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn an_h2_peer_that_stops_answering_pings_is_closed() {
    let a = verdict_agent().await;
    let s = sidecar(
        &a.url(),
        "h2_keepalive_interval: 200ms, h2_keepalive_timeout: 300ms, max_concurrent_streams: 7",
        "",
    )
    .await;
    let mut h2 = TcpStream::connect(proxy(&s)).await.unwrap();
    h2.write_all(PREFACE).await.unwrap();
    h2.write_all(EMPTY_SETTINGS).await.unwrap();
    h2.write_all(&h2_get(1)).await.unwrap();
    // Read everything, answer nothing (no PING ack): gone within interval + timeout.
    let got = closed_within(&mut h2, Duration::from_secs(3))
        .await
        .expect("closed for its unanswered PINGs");
    assert!(frames(&got).contains(&6), "a PING: {:?}", frames(&got));
    // The server's SETTINGS carry the stream limit (id 3) as configured.
    assert_eq!(got[3], 4, "SETTINGS first");
    let len = usize::from(got[2]);
    let settings: Vec<(u16, u32)> = got[9..9 + len]
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_limit_a_new_connection_takes_the_place_of_the_idlest() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "max_connections: 4", "").await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(proxy(&s)).await.unwrap());
    }
    // The accept loop admits them in order.
    wait_until("the idle sockets are admitted", 5, async || {
        open(&metrics(&s).await, "proxy") == 4.0
    })
    .await;
    // A real client gets through, twice (each time one idle socket goes).
    for _ in 0..2 {
        assert_eq!(
            get(&client(), &proxy_url(&s, "/200")).await.status(),
            StatusCode::OK
        );
    }
    let m = metrics(&s).await;
    assert_eq!(closed(&m, "proxy", "displaced"), 2.0);
    // The first two sockets, the oldest, were the ones closed.
    for (i, stream) in idle.iter_mut().enumerate().take(2) {
        assert!(
            closed_within(stream, Duration::from_secs(2))
                .await
                .is_some(),
            "idle socket {i} still open"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_limit_with_every_connection_busy_a_new_one_is_refused() {
    // An agent that holds each request until the test lets it go.
    let (reached, go) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let (r, g) = (reached.clone(), go.clone());
    let a = sim::serve(LOOPBACK, move |_req: Request<hyper::body::Incoming>| {
        let (r, g) = (r.clone(), g.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let _held = g.acquire().await;
            Response::new(sim::full("{}"))
        }
    })
    .await
    .unwrap();
    let s = sidecar(&a.url(), "max_connections: 2", "").await;
    // Two requests in flight: both have reached the agent.
    let slow = (0..2)
        .map(|_| {
            let url = proxy_url(&s, "/200");
            tokio::spawn(async move { get(&client(), &url).await.status() })
        })
        .collect::<Vec<_>>();
    let both_in = async || reached.load(Ordering::SeqCst) == 2;
    wait_until("both requests reach the agent", 5, both_in).await;
    let mut third = TcpStream::connect(proxy(&s)).await.unwrap();
    third
        .write_all(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut third, Duration::from_secs(1))
        .await
        .expect("closed at once");
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    go.add_permits(2);
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    let m = metrics(&s).await;
    assert_eq!(closed(&m, "proxy", "refused"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_idle_sockets_does_not_keep_the_probe_out_of_the_admin_port() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "", "max_connections: 8").await;
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(TcpStream::connect(s.admin_addr).await.unwrap());
    }
    // The whole flood is in: all but 8 of it displaced.
    wait_until("the flood is admitted", 5, async || {
        closed(&metrics(&s).await, "admin", "displaced") >= 42.0
    })
    .await;
    for _ in 0..5 {
        let (status, body) = agent_health(&s).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let m = metrics(&s).await;
    assert!(closed(&m, "admin", "displaced") >= 42.0, "{m}");
    assert!(open(&m, "admin") <= 8.0);
    s.shutdown().await;
}

#[test]
fn limits_are_checked_by_key() {
    let config = |listener: &str, admin: &str| {
        format!(
            "agent: a
admin: {{limits: {{{admin}}}}}
listeners:
  - {{name: p, bind: 127.0.0.1:0, role: agent, route: r, limits: {{{listener}}}}}
routes:
  r: {{upstreams: [u]}}
upstreams:
  u: {{url: 'http://127.0.0.1:9'}}
"
        )
    };
    for (listener, admin, want) in [
        (
            "max_connections: 0",
            "",
            "listeners[0].limits.max_connections: must be between 1",
        ),
        (
            "header_timeout: 1ms",
            "",
            "listeners[0].limits.header_timeout: must be at least 100ms",
        ),
        (
            "max_concurrent_streams: 0",
            "",
            "listeners[0].limits.max_concurrent_streams: must be at least 1",
        ),
        (
            "",
            "body_timeout: 5s",
            "admin.limits.body_timeout: admin requests carry no body",
        ),
        (
            "",
            "idle_timeout: 0s",
            "admin.limits.idle_timeout: must be at least 100ms",
        ),
        ("colour: blue", "", "unknown field `colour`"),
    ] {
        let err = Config::parse("l.yaml", &config(listener, admin))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let c = Config::parse("l.yaml", &config("", "")).unwrap();
    let l = &c.listeners[0].limits;
    assert_eq!(
        (
            l.max_connections,
            l.header_timeout.0,
            l.idle_timeout.0,
            l.body_timeout()
        ),
        (
            1024,
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60)
        )
    );
}
