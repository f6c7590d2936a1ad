//! The data plane end to end: real upstreams on loopback, the sidecar in front, assertions on
//! what the client sees and on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use rand::RngCore;
use sloguard::sim::{self, full as sim_full, ChannelBody};
use tokio::sync::{mpsc, oneshot, Semaphore};

fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// What the upstream saw of one request.
#[derive(Default, Clone)]
struct Seen {
    body: Bytes,
    host: String,
    forwarded_for: String,
    forwarded_proto: String,
    path: String,
    hop_header: bool,
}

async fn byte_exact_passthrough(role: &str) {
    let request_body = random_bytes(1 << 20);
    let response_body = random_bytes(1 << 20);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (seen2, reply) = (seen.clone(), response_body.clone());
    let upstream = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let (seen, reply) = (seen2.clone(), reply.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let h = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            *seen.lock().unwrap() = Seen {
                body,
                host: h("host"),
                forwarded_for: h("x-forwarded-for"),
                forwarded_proto: h("x-forwarded-proto"),
                path: parts.uri.to_string(),
                hop_header: parts.headers.contains_key("x-hop"),
            };
            Response::new(sim_full(reply))
        }
    })
    .await
    .unwrap();
    let sidecar = start_sidecar(role, &upstream.url(), "").await;

    let req = Request::post(proxy_url(&sidecar, "/v1/echo?q=1"))
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .body(full(request_body.clone()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-sloguard-upstream"], "backend");
    let got = body_bytes(resp).await;
    assert!(
        got == response_body,
        "response body changed on the way ({role})"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.body == request_body,
        "request body changed on the way ({role})"
    );
    assert_eq!(seen.host, upstream.addr.to_string());
    assert_eq!(seen.forwarded_for, "127.0.0.1");
    assert_eq!(seen.forwarded_proto, "http");
    assert_eq!(seen.path, "/v1/echo?q=1");
    assert!(
        !seen.hop_header,
        "a header named in Connection reached the upstream"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn random_1mib_passes_byte_exact_on_the_agent_role() {
    byte_exact_passthrough("agent").await;
}

#[tokio::test]
async fn random_1mib_passes_byte_exact_on_the_llm_role() {
    byte_exact_passthrough("llm").await;
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let upstream = sim::spawn_provider(LOOPBACK, sim::ProviderSim::default())
        .await
        .unwrap();
    let sidecar = start_sidecar("llm", &upstream.url(), "").await;
    let h2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = get(&h2, &proxy_url(&sidecar, "/bytes/1024")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(body_bytes(resp).await.len(), 1024);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn sse_chunks_reach_the_client_before_the_upstream_finishes() {
    // The upstream sends one event, then waits for the test's word before the second and the end.
    let release = Arc::new(Mutex::new(None::<oneshot::Receiver<()>>));
    let (go, wait) = oneshot::channel();
    *release.lock().unwrap() = Some(wait);
    let upstream = sim::serve(LOOPBACK, move |_req| {
        let wait = release.lock().unwrap().take();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
                    .await
                    .unwrap();
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n"))
                    .await
                    .unwrap();
            });
            let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody(rx)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    })
    .await
    .unwrap();
    let sidecar = start_sidecar("llm", &upstream.url(), "").await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event arrived while the upstream was still open")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"data: {\"n\":1}\n\n")
    );
    go.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"data: {\"n\":2}\n\n"));
    sidecar.shutdown().await;
}

/// An upstream answering `/status/NNN` with that status.
async fn status_upstream() -> sim::SimServer {
    sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let code: u16 = req
            .uri()
            .path()
            .trim_start_matches("/status/")
            .parse()
            .unwrap_or(200);
        // A little latency so that requests overlap: the load under test, not a wait.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut r = Response::new(sim_full("x"));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r
    })
    .await
    .unwrap()
}

async fn scripted_mix(role: &str, statuses: &[(u16, usize)]) -> (sloguard::Sidecar, Vec<u16>) {
    let upstream = status_upstream().await;
    let sidecar = start_sidecar(role, &upstream.url(), "").await;
    let mut script: Vec<u16> = statuses
        .iter()
        .flat_map(|(s, n)| std::iter::repeat_n(*s, *n))
        .collect();
    // Interleave the classes deterministically.
    script.sort_by_key(|s| (*s as usize * 7919) % 13);
    let gate = Arc::new(Semaphore::new(100));
    let client = client();
    let mut tasks = Vec::new();
    for code in script.clone() {
        let (gate, client, url) = (
            gate.clone(),
            client.clone(),
            proxy_url(&sidecar, &format!("/status/{code}")),
        );
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let resp = get(&client, &url).await;
            let got = resp.status().as_u16();
            body_bytes(resp).await;
            got
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    drop(upstream);
    (sidecar, got)
}

#[tokio::test]
async fn status_classes_are_counted_exactly_under_100_concurrent_requests() {
    let (sidecar, got) = scripted_mix(
        "agent",
        &[(200, 300), (201, 20), (404, 80), (503, 60), (500, 40)],
    )
    .await;
    assert_eq!(got.len(), 500);
    let m = metrics(&sidecar).await;
    let class = |c: &str| {
        metric(
            &m,
            "agent_requests_total",
            &[
                ("status", c),
                ("listener", "proxy"),
                ("upstream", "backend"),
                ("agent", "test-agent"),
            ],
        )
    };
    assert_eq!(class("2xx"), 320.0);
    assert_eq!(class("4xx"), 80.0);
    assert_eq!(class("5xx"), 100.0);
    // On the agent role a 5xx is the agent's own failure.
    expect_requests(&m, "5xx", "agent", 100.0);
    expect_metric(&m, "agent_requests_total", &[("cause", "none")], 400.0);
    expect_metric(&m, "agent_response_seconds_count", &[], 500.0);
    expect_metric(&m, "agent_time_to_first_byte_seconds_count", &[], 500.0);
    expect_metric(&m, "sloguard_overhead_seconds_count", &[], 500.0);
    expect_outcome(&m, "ok", 400.0);
    expect_outcome(&m, "5xx", 100.0);
    // The article's p99 query needs buckets, and the +Inf bucket holds every request.
    expect_metric(
        &m,
        "agent_response_seconds_bucket",
        &[("le", "+Inf")],
        500.0,
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn on_the_llm_role_provider_5xx_and_429_are_charged_upstream() {
    let (sidecar, _) = scripted_mix("llm", &[(200, 50), (429, 30), (502, 20)]).await;
    let m = metrics(&sidecar).await;
    expect_requests(&m, "4xx", "upstream", 30.0);
    expect_requests(&m, "5xx", "upstream", 20.0);
    expect_requests(&m, "2xx", "none", 50.0);
    expect_outcome(&m, "429", 30.0);
    expect_outcome(&m, "5xx", 20.0);
    sidecar.shutdown().await;
}

async fn error_json(
    resp: Response<hyper::body::Incoming>,
) -> (StatusCode, String, serde_json::Value) {
    let status = resp.status();
    let header = resp.headers()["x-sloguard-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    (status, header, body)
}

#[tokio::test]
async fn connect_refused_is_a_502_upstream_unavailable() {
    let sidecar = start_sidecar("llm", &format!("http://{}", closed_port()), "").await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.headers()["x-sloguard-upstream"], "backend");
    let (status, header, body) = error_json(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(header, "upstream_unavailable");
    assert_eq!(body["error"]["type"], "upstream_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("backend"));
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "connect_error", 1.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_upstream_timeout() {
    let addr = stalling_upstream(b"").await;
    let sidecar = start_sidecar("agent", &format!("http://{addr}"), "first_byte: 300ms").await;
    let started = std::time::Instant::now();
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/tasks")).await;
    let (status, header, body) = error_json(resp).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(header, "upstream_timeout");
    assert_eq!(body["error"]["type"], "upstream_timeout");
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "timeout", 1.0);
    expect_requests(&m, "5xx", "agent", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_stalled_stream_is_ended_after_idle() {
    let addr = stalling_upstream(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n").await;
    let sidecar = start_sidecar("llm", &format!("http://{addr}"), "idle: 300ms").await;
    let started = std::time::Instant::now();
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"data: {\"n\":1}\n\n"));
    // The stream then ends (as an error: the client must not take a cut stream for a whole one).
    let end = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("stream ended");
    assert!(
        end.is_err(),
        "a stalled stream must end as an error, not as a complete body"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "timeout", 1.0);
    expect_requests(&m, "2xx", "upstream", 1.0);
    sidecar.shutdown().await;
}

/// An HTTP/1.1 upstream that counts the connections it accepted and those it has closed; with
/// `keep_alive` off it closes each connection after one response.
async fn counting_upstream(
    keep_alive: bool,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    let addr = raw_upstream(move |stream| {
        a.fetch_add(1, Ordering::SeqCst);
        let c = c.clone();
        async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(sim_full("pooled")))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            c.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (addr, accepted, closed)
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (addr, accepted, _) = counting_upstream(true).await;
    let sidecar = start_sidecar("llm", &format!("http://{addr}"), "").await;
    let client = client();
    for _ in 0..20 {
        let resp = get(&client, &proxy_url(&sidecar, "/x")).await;
        assert_eq!(body_bytes(resp).await, "pooled");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection serves sequential requests"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    let (addr, accepted, closed) = counting_upstream(false).await;
    let sidecar = start_sidecar("llm", &format!("http://{addr}"), "").await;
    let client = client();
    for i in 0..10 {
        let resp = get(&client, &proxy_url(&sidecar, "/x")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_bytes(resp).await, "pooled");
        // The upstream has closed the connection before the next request, as between real
        // requests.
        let gone = async || closed.load(Ordering::SeqCst) > i;
        wait_until("the upstream closes its connection", 5, gone).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "ok", 10.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_counted_as_a_4xx_with_its_wait() {
    let addr = stalling_upstream(b"").await;
    let sidecar = start_sidecar("agent", &format!("http://{addr}"), "first_byte: 20s").await;
    let url = proxy_url(&sidecar, "/v1/tasks");
    let gave_up = tokio::time::timeout(Duration::from_millis(300), get(&client(), &url)).await;
    assert!(
        gave_up.is_err(),
        "the upstream hangs, so the client gives up"
    );
    // The sidecar notices the closed connection and settles the request.
    let m = metrics_when(&sidecar, |m| metric(m, "agent_requests_total", &[]) > 0.0).await;
    expect_requests(&m, "4xx", "none", 1.0);
    expect_metric(&m, "agent_response_seconds_count", &[], 1.0);
    assert!(
        metric(&m, "agent_response_seconds_sum", &[]) >= 0.25,
        "the wait is recorded"
    );
    assert_eq!(
        metric(&m, "agent_time_to_first_byte_seconds_count", &[]),
        0.0,
        "no byte was sent"
    );
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 0.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_stream_past_the_total_timeout_is_ended() {
    // A healthy-looking stream (a chunk every 50 ms, never idle) that would go on for 30 s.
    let upstream = sim::serve(LOOPBACK, |_req| async {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for i in 0..600 {
                if tx
                    .send(Bytes::from(format!("data: {i}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Response::new(http_body_util::BodyExt::boxed(ChannelBody(rx)))
    })
    .await
    .unwrap();
    let sidecar = start_sidecar("llm", &upstream.url(), "idle: 5s, total: 600ms").await;
    let started = std::time::Instant::now();
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let end = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("ended");
    assert!(
        end.is_err(),
        "a stream cut by `total` must not look complete"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "ended after {took:?}"
    );
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "timeout", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_cannot_be_made_in_time_is_a_502_connect_error() {
    // A listener whose accept queue is full and never drained: further SYNs go unanswered, so
    // connecting hangs (on loopback, as a black-holed host would).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(LOOPBACK).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let sidecar = start_sidecar(
        "llm",
        &format!("http://{addr}"),
        "connect: 300ms, first_byte: 10s",
    )
    .await;
    let started = std::time::Instant::now();
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-sloguard-error"], "upstream_unavailable");
    assert!(
        took < Duration::from_secs(3),
        "the connect timeout, not first_byte, ended it ({took:?})"
    );
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "connect_error", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_stalls_before_its_first_byte_records_no_time_to_first_byte() {
    let addr = stalling_upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
    let sidecar = start_sidecar("llm", &format!("http://{addr}"), "idle: 300ms").await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/chat/completions")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.into_body().collect().await.is_err());
    let m = metrics(&sidecar).await;
    expect_requests(&m, "2xx", "upstream", 1.0);
    expect_metric(&m, "agent_time_to_first_byte_seconds_count", &[], 0.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused_not_tunnelled() {
    let upstream = status_upstream().await;
    let sidecar = start_sidecar("agent", &upstream.url(), "").await;
    let head = raw_request(
        sidecar.listener_addr("proxy").unwrap(),
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    assert!(
        head.contains("x-sloguard-error: method_not_allowed"),
        "{head}"
    );
    let m = metrics(&sidecar).await;
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 0.0);
    expect_requests(&m, "4xx", "none", 1.0);
    sidecar.shutdown().await;
}
