//! Bad input from either side: a clear response or a cleanly ended stream, counted under the
//! right cause, and the sidecar keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use proptest::prelude::*;
use sloguard::sim;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes to the listener and returns what came back until the connection closed.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A sidecar with a listener of `role` in front of the simulated provider (kept alive with it).
async fn provider_sidecar(role: &str) -> (sim::SimServer, sloguard::Sidecar) {
    let upstream = sim::spawn_provider(LOOPBACK, sim::ProviderSim::default())
        .await
        .unwrap();
    let sidecar = start_sidecar(role, &upstream.url(), "").await;
    (upstream, sidecar)
}

/// The `proxy` listener's client connection errors in `/metrics` text are `expected`.
fn expect_connection_errors(m: &str, expected: f64) {
    let proxy = [("listener", "proxy")];
    expect_metric(
        m,
        "sloguard_client_connection_errors_total",
        &proxy,
        expected,
    );
}

async fn still_serves(sidecar: &sloguard::Sidecar) {
    let resp = get(&client(), &proxy_url(sidecar, "/bytes/10")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await.len(), 10);
}

#[tokio::test]
async fn malformed_client_http_gets_400_and_is_counted() {
    let (_upstream, sidecar) = provider_sidecar("agent").await;
    let addr = sidecar.listener_addr("proxy").unwrap();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"\x00\x01\x02\xff\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, garbage).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    }
    still_serves(&sidecar).await;
    let m = metrics(&sidecar).await;
    expect_connection_errors(&m, 3.0);
    // Nothing was proxied for them.
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let (_upstream, sidecar) = provider_sidecar("llm").await;
    let addr = sidecar.listener_addr("proxy").unwrap();
    let big = "a".repeat(100 * 1024);
    let answer = raw_exchange(
        addr,
        format!("GET /bytes/1 HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "got {:?}",
        &answer[..answer.len().min(80)]
    );
    still_serves(&sidecar).await;
    let m = metrics(&sidecar).await;
    expect_connection_errors(&m, 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_invalid_upstream_response_is_a_502_counted_as_reset() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 2OO NOT A STATUS\r\n\r\nnonsense")
            .await;
    })
    .await;
    let sidecar = start_sidecar("llm", &format!("http://{addr}"), "").await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-sloguard-error"], "upstream_unavailable");
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "reset", 1.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_upstream_reset_mid_body_ends_the_stream_and_is_counted() {
    let addr = raw_upstream(|mut s| async move {
        let head = read_head(&mut s).await;
        if head.starts_with(b"GET /ok ") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Abortive close: RST instead of FIN.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let sidecar = start_sidecar("agent", &format!("http://{addr}"), "").await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/tasks")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "a cut body must not look complete");
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "reset", 1.0);
    expect_requests(&m, "2xx", "agent", 1.0);
    // The same sidecar goes on serving.
    let resp = get(&client(), &proxy_url(&sidecar, "/ok")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "ok");
    sidecar.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_config_text_gives_a_config_or_an_error_never_a_panic(text in ".{0,400}") {
        let _ = sloguard::Config::parse("fuzz", &text);
    }

    #[test]
    fn yaml_shaped_config_text_never_panics(
        lines in proptest::collection::vec("(agent|listeners|routes|upstreams|  - name|    bind|    role|  [a-z]{1,5}|    url|timeouts): ?[ -~]{0,20}", 0..12)
    ) {
        let _ = sloguard::Config::parse("fuzz", &lines.join("\n"));
    }
}

#[tokio::test]
async fn a_client_that_aborts_its_upload_is_not_charged_to_the_upstream() {
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let upstream = sim::serve(
        LOOPBACK,
        move |req: http::Request<hyper::body::Incoming>| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = req.into_body().collect().await;
                http::Response::new(sim::full("ok"))
            }
        },
    )
    .await
    .unwrap();
    let sidecar = start_sidecar("llm", &upstream.url(), "").await;
    // The client hangs up once its upload is under way to the upstream.
    let proxy = sidecar.listener_addr("proxy").unwrap();
    abort_upload(proxy, async || reached.load(Ordering::SeqCst) == 1).await;
    let m = metrics_when(&sidecar, |m| metric(m, "agent_requests_total", &[]) >= 1.0).await;
    expect_requests(&m, "4xx", "none", 1.0);
    expect_metric(&m, "agent_requests_total", &[("cause", "upstream")], 0.0);
    assert_eq!(
        metric(&m, "sloguard_upstream_requests_total", &[]),
        0.0,
        "the provider is not charged"
    );
    sidecar.shutdown().await;
}

/// An upstream that reads the whole request body, then answers with its length.
async fn body_reading_upstream() -> sim::SimServer {
    sim::serve(
        LOOPBACK,
        |req: http::Request<hyper::body::Incoming>| async move {
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            http::Response::new(sim::full(n.to_string()))
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_client_that_stalls_its_upload_gets_408_and_the_upstream_is_not_charged() {
    let upstream = body_reading_upstream().await;
    let sidecar = start_sidecar("llm", &upstream.url(), "first_byte: 300ms, idle: 500ms").await;
    let head = raw_request(
        sidecar.listener_addr("proxy").unwrap(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"model\":",
    )
    .await;
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("x-sloguard-error: request_timeout"), "{head}");
    let m = metrics(&sidecar).await;
    expect_requests(&m, "4xx", "none", 1.0);
    assert_eq!(
        metric(&m, "sloguard_upstream_requests_total", &[]),
        0.0,
        "the provider is not charged"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_cut_by_first_byte() {
    let upstream = body_reading_upstream().await;
    let sidecar = start_sidecar("llm", &upstream.url(), "first_byte: 300ms, idle: 500ms").await;
    let mut s = TcpStream::connect(sidecar.listener_addr("proxy").unwrap())
        .await
        .unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n")
        .await
        .unwrap();
    // 12 bytes over 1.2 s: four times first_byte, never idle for long.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n12"), "{answer}");
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "ok", 1.0);
    sidecar.shutdown().await;
}
