//! The fallback chain end to end: a route of several upstreams tried in order, the request body
//! replayed byte for byte to the next one, circuits that skip an upstream, the last-resort cache,
//! and what can no longer fall back (a body too large to replay, a failure after the first byte).
//! Real in-process upstreams on loopback record what they receive; the assertions are on what the
//! client gets, what each upstream got, `/circuits` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rand::{RngCore, SeedableRng};
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// 64-bit FNV-1a: a cheap fingerprint of a body, to compare what each side saw.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn fingerprint(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// `len` random bytes (seeded: a failure can be reproduced).
fn random_body(len: usize, seed: u64) -> Bytes {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    Bytes::from(buf)
}

/// A request body of known frames and unknown length: sent with `transfer-encoding: chunked`.
struct ChunkedBody(VecDeque<Bytes>);

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// `bytes` as a request body: with a `content-length`, or chunked in 16 KiB frames.
fn body_of(bytes: &Bytes, chunked: bool) -> TestBody {
    if !chunked {
        return full(bytes.clone());
    }
    let frames = (0..bytes.len())
        .step_by(16 * 1024)
        .map(|i| bytes.slice(i..(i + 16 * 1024).min(bytes.len())))
        .collect();
    ChunkedBody(frames).boxed()
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What an upstream does, changeable while it runs.
#[derive(Default)]
struct Knobs {
    /// The status it answers with.
    status: AtomicU16,
    /// `Retry-After` seconds on a 429; 0: no header.
    retry_after: AtomicU32,
    /// Delay before the response head, after the whole request body was read.
    delay_ms: AtomicU64,
    /// A 2xx is an SSE stream (`text/event-stream`) instead of JSON.
    sse: AtomicBool,
    /// Requests whose head reached it.
    hits: AtomicU32,
    seen: Mutex<Vec<Seen>>,
}

/// A recording upstream. A 2xx is JSON `{"upstream": NAME, "len": N, "fnv": HEX}` describing the
/// request body it read (the same bytes for the same request, so a cached copy is recognisable
/// only by the cache header); any other status is a JSON error.
struct Upstream {
    server: SimServer,
    knobs: Arc<Knobs>,
}

impl Upstream {
    fn url(&self) -> String {
        self.server.url()
    }
    fn set_status(&self, status: u16) {
        self.knobs.status.store(status, Ordering::SeqCst);
    }
    fn hits(&self) -> u32 {
        self.knobs.hits.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<Seen> {
        self.knobs.seen.lock().unwrap().clone()
    }
}

async fn upstream(name: &'static str, status: u16) -> Upstream {
    let knobs = Arc::new(Knobs::default());
    knobs.status.store(status, Ordering::SeqCst);
    let k = knobs.clone();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let k = k.clone();
        async move {
            k.hits.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let description = serde_json::json!({
                "upstream": name,
                "len": body.len(),
                "fnv": fingerprint(&body),
            })
            .to_string();
            k.seen.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            let delay = k.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let status = StatusCode::from_u16(k.status.load(Ordering::SeqCst)).unwrap();
            let sse = status.is_success() && k.sse.load(Ordering::SeqCst);
            let mut r: Response<sim::SimBody> = if sse {
                Response::new(sim::full("data: {\"n\":1}\n\ndata: [DONE]\n\n"))
            } else if status.is_success() {
                Response::new(sim::full(description))
            } else {
                Response::new(sim::full(format!(
                    r#"{{"error":{{"message":"{name} says {}"}}}}"#,
                    status.as_u16()
                )))
            };
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if sse {
                    "text/event-stream"
                } else {
                    "application/json"
                }),
            );
            let retry_after = k.retry_after.load(Ordering::SeqCst);
            if status == StatusCode::TOO_MANY_REQUESTS && retry_after > 0 {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            r
        }
    })
    .await
    .unwrap();
    Upstream { server, knobs }
}

fn comma(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    }
}

/// A sidecar config with one `llm` listener `proxy` on route `main`, whose chain is `upstreams`
/// in order: `(name, url, extra keys of the upstream)`. `admin` and `route` add keys to those
/// mappings (flow style, without braces: `"fallback_on: [5xx]"`).
fn chain_yaml(admin: &str, route: &str, upstreams: &[(&str, &str, &str)]) -> String {
    let names: Vec<&str> = upstreams.iter().map(|u| u.0).collect();
    let mut yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0{}}}
listeners:
  - {{name: proxy, bind: 127.0.0.1:0, role: llm, route: main}}
routes:
  main: {{upstreams: [{}]{}}}
upstreams:
",
        comma(admin),
        names.join(", "),
        comma(route)
    );
    for (name, url, extra) in upstreams {
        yaml.push_str(&format!("  {name}: {{url: '{url}'{}}}\n", comma(extra)));
    }
    yaml
}

/// `chain_yaml` for the usual chain: `primary` (at `url`, with `extra` keys), then `backup`.
fn with_backup(url: &str, extra: &str, backup: &str) -> String {
    chain_yaml("", "", &[("primary", url, extra), ("backup", backup, "")])
}

/// A whole answer from the proxy.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

async fn send(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)], body: TestBody) -> Answer {
    let mut req = Request::post(proxy_url(sidecar, path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body_bytes(Response::from_parts(parts.clone(), body)).await;
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

const CHAT: &str = "/v1/chat/completions";
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// A small JSON POST to the chat path.
async fn chat(sidecar: &Sidecar, body: &'static str) -> Answer {
    send(sidecar, CHAT, JSON, full(body)).await
}

/// `/circuits`' entry for `name`.
async fn circuit(sidecar: &Sidecar, name: &str) -> serde_json::Value {
    let resp = get(
        &client(),
        &format!("http://{}/circuits", sidecar.admin_addr),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no circuit named {name} in {v}"))
        .clone()
}

/// A file holding `content` in a directory of this test's own.
fn temp_file(test: &str, name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-fallback-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

const TOKEN: &str = "fallback-admin-token";

/// `admin` keys of `chain_yaml` for an admin API with a token.
fn admin_with_token(test: &str) -> String {
    let path = temp_file(test, "token", &format!("{TOKEN}\n"));
    format!("token_file: '{}'", path.display())
}

/// Forces `upstream`'s circuit open with the admin API.
async fn force_open(sidecar: &Sidecar, upstream: &str) {
    let req = Request::post(format!(
        "http://{}/admin/circuits/{upstream}/open",
        sidecar.admin_addr
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(empty())
    .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = body_bytes(resp).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "forcing {upstream} open: {}",
        String::from_utf8_lossy(&body)
    );
}

/// `/metrics` once `agent_requests_total` has counted `n` requests (or after 5 s).
async fn metrics_after(sidecar: &Sidecar, n: f64) -> String {
    metrics_when(sidecar, |m| metric(m, "agent_requests_total", &[]) >= n).await
}

/// Asserts a proxied answer came from `upstream`, with `x-sloguard-fallback` as `fallback` says.
#[track_caller]
fn assert_from(a: &Answer, status: StatusCode, upstream: &str, fallback: Option<&str>) {
    assert_eq!(
        (
            a.status,
            a.header("x-sloguard-upstream"),
            a.header("x-sloguard-fallback")
        ),
        (status, Some(upstream), fallback),
        "body: {}",
        String::from_utf8_lossy(&a.body[..a.body.len().min(400)])
    );
}

/// Asserts the sidecar's own `circuit_open` answer.
#[track_caller]
fn assert_circuit_open(a: &Answer) {
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("x-sloguard-error"), Some("circuit_open"));
    assert_eq!(a.json()["error"]["type"], "circuit_open");
    assert_eq!(a.header("x-sloguard-cache"), None);
}

// ---------------------------------------------------------------------------------------------
// Falling back on each class
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_503_falls_back_and_the_next_upstream_gets_the_same_bytes() {
    let sent = random_body(500 * 1024, 0x0f00_ba11);
    let path = "/v1/upload?x=1&y=two%20words";
    // With a content-length and chunked: the replay must not depend on how the body came.
    for chunked in [false, true] {
        let primary = upstream("primary", 503).await;
        let backup = upstream("backup", 200).await;
        let sidecar = start_yaml(&with_backup(&primary.url(), "", &backup.url())).await;
        let answer = send(
            &sidecar,
            path,
            &[
                ("content-type", "application/octet-stream"),
                ("x-trace-id", "trace-7"),
            ],
            body_of(&sent, chunked),
        )
        .await;
        assert_from(&answer, StatusCode::OK, "backup", Some("5xx"));
        // The backup describes the bytes it read; that description reached the client intact.
        let echo = answer.json();
        assert_eq!(echo["upstream"], "backup", "chunked: {chunked}");
        assert_eq!(echo["len"], sent.len(), "chunked: {chunked}");
        assert_eq!(echo["fnv"], fingerprint(&sent), "chunked: {chunked}");
        for (name, up) in [("primary", &primary), ("backup", &backup)] {
            let seen = up.seen();
            assert_eq!(seen.len(), 1, "{name} (chunked: {chunked})");
            let s = &seen[0];
            assert!(
                s.body == sent,
                "{name} (chunked: {chunked}) got {} bytes, fnv {}; the client sent {} bytes, fnv {}",
                s.body.len(),
                fingerprint(&s.body),
                sent.len(),
                fingerprint(&sent)
            );
            assert_eq!(s.method, Method::POST, "{name}");
            assert_eq!(s.uri, path, "{name}");
            assert_eq!(s.headers["x-trace-id"], "trace-7", "{name}");
            assert_eq!(
                s.headers["content-type"], "application/octet-stream",
                "{name}"
            );
            // Host is each upstream's own, not the client's nor the previous upstream's.
            assert_eq!(
                s.headers["host"],
                up.server.addr.to_string().as_str(),
                "{name}"
            );
        }
        let m = metrics_after(&sidecar, 1.0).await;
        let u = "sloguard_upstream_requests_total";
        expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 1.0);
        expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 1.0);
        expect_metric(&m, u, &[], 2.0);
        let f = "sloguard_fallbacks_total";
        expect_metric(
            &m,
            f,
            &[("from", "primary"), ("to", "backup"), ("reason", "5xx")],
            1.0,
        );
        expect_metric(&m, f, &[], 1.0);
        let a = "agent_requests_total";
        expect_metric(
            &m,
            a,
            &[
                ("listener", "proxy"),
                ("upstream", "backup"),
                ("status", "2xx"),
                ("cause", "none"),
            ],
            1.0,
        );
        expect_metric(&m, a, &[], 1.0);
        expect_metric(&m, "sloguard_replay_skipped_total", &[], 0.0);
    }
}

#[tokio::test]
async fn a_429_with_retry_after_falls_back_and_opens_the_primarys_circuit() {
    let primary = upstream("primary", 429).await;
    primary.knobs.retry_after.store(5, Ordering::SeqCst);
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 3, open_for: 1s, max_open_for: 10s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    let first = chat(&sidecar, r#"{"n":1}"#).await;
    assert_from(&first, StatusCode::OK, "backup", Some("429"));
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["last_trip_reason"], "retry_after", "{c}");
    // Open for at least the five seconds asked for, though open_for is 1 s.
    assert!(c["half_open_in_seconds"].as_f64().unwrap() > 4.0, "{c}");

    // The primary is now skipped without an attempt.
    let second = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&second, StatusCode::OK, "backup", Some("circuit_open"));
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 2);

    let m = metrics_after(&sidecar, 2.0).await;
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "429")], 1.0);
    expect_metric(&m, u, &[("upstream", "primary")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 2.0);
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "backup"), ("reason", "429")],
        1.0,
    );
    expect_metric(
        &m,
        f,
        &[
            ("from", "primary"),
            ("to", "backup"),
            ("reason", "circuit_open"),
        ],
        1.0,
    );
    expect_requests(&m, "2xx", "none", 2.0);
}

#[tokio::test]
async fn a_429_without_retry_after_falls_back_but_does_not_open_the_circuit_by_itself() {
    let primary = upstream("primary", 429).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 3, open_for: 30s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    let first = chat(&sidecar, r#"{"n":1}"#).await;
    assert_from(&first, StatusCode::OK, "backup", Some("429"));
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "closed", "{c}");
    // Still tried: the next request reaches the primary again, and falls back again.
    let second = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&second, StatusCode::OK, "backup", Some("429"));
    assert_eq!(primary.hits(), 2);
    assert_eq!(circuit(&sidecar, "primary").await["state"], "closed");
    let m = metrics_after(&sidecar, 2.0).await;
    expect_fallbacks(&m, "primary", "backup", "429", 2.0);
    expect_attempts(&m, "primary", "429", 2.0);
}

#[tokio::test]
async fn a_primary_silent_past_first_byte_falls_back_as_timeout() {
    // Reads the request head, then never answers.
    let silent = stalling_upstream(b"").await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            (
                "primary",
                &format!("http://{silent}"),
                "timeouts: {first_byte: 300ms}",
            ),
            ("backup", &backup.url(), "timeouts: {first_byte: 5s}"),
        ],
    ))
    .await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"slow?"}]}"#;
    let started = Instant::now();
    let answer = chat(&sidecar, body).await;
    let took = started.elapsed();
    assert_from(&answer, StatusCode::OK, "backup", Some("timeout"));
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    expect_attempts(&m, "primary", "timeout", 1.0);
    expect_fallbacks(&m, "primary", "backup", "timeout", 1.0);
    expect_requests_from(&m, "backup", "2xx", "none", 1.0);
}

#[tokio::test]
async fn a_refused_connection_falls_back_as_connect_error() {
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{}", closed_port()),
        "",
        &backup.url(),
    ))
    .await;
    let body = r#"{"refused":true}"#;
    let answer = chat(&sidecar, body).await;
    assert_from(&answer, StatusCode::OK, "backup", Some("connect_error"));
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    expect_attempts(&m, "primary", "connect_error", 1.0);
    expect_fallbacks(&m, "primary", "backup", "connect_error", 1.0);
}

#[tokio::test]
async fn a_reset_before_the_response_head_falls_back_as_connect_error() {
    let conns = Arc::new(AtomicU32::new(0));
    let c = conns.clone();
    let resetting = raw_upstream(move |mut s| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            read_head(&mut s).await;
            // Abortive close: RST, no response head.
            let _ = s.set_zero_linger();
            drop(s);
        }
    })
    .await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{resetting}"),
        "",
        &backup.url(),
    ))
    .await;
    let body = r#"{"reset":"before the head"}"#;
    let answer = chat(&sidecar, body).await;
    assert_from(&answer, StatusCode::OK, "backup", Some("connect_error"));
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    assert!(conns.load(Ordering::SeqCst) >= 1);
    let m = metrics_after(&sidecar, 1.0).await;
    expect_fallbacks(&m, "primary", "backup", "connect_error", 1.0);
    // One attempt at the primary, and not a success (`connect_error` or `reset`).
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary")], 1.0);
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "ok")], 0.0);
}

#[tokio::test]
async fn down_a_chain_of_three_the_header_names_why_the_first_was_left() {
    let primary = upstream("primary", 503).await;
    let third = upstream("third", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            ("primary", &primary.url(), ""),
            ("second", &format!("http://{}", closed_port()), ""),
            ("third", &third.url(), ""),
        ],
    ))
    .await;
    let body = r#"{"hops":2}"#;
    let answer = chat(&sidecar, body).await;
    // The primary was left for a 5xx; the second for a refused connection; the header names the
    // first reason, the metrics every hop.
    assert_from(&answer, StatusCode::OK, "third", Some("5xx"));
    assert_eq!(primary.seen()[0].body, body.as_bytes());
    assert_eq!(third.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "second"), ("reason", "5xx")],
        1.0,
    );
    expect_metric(
        &m,
        f,
        &[
            ("from", "second"),
            ("to", "third"),
            ("reason", "connect_error"),
        ],
        1.0,
    );
    expect_metric(&m, f, &[], 2.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(
        &m,
        u,
        &[("upstream", "second"), ("outcome", "connect_error")],
        1.0,
    );
    expect_metric(&m, u, &[("upstream", "third"), ("outcome", "ok")], 1.0);
    expect_requests_from(&m, "third", "2xx", "none", 1.0);
}

#[tokio::test]
async fn fallback_on_decides_which_failures_move_a_request_on() {
    let primary = upstream("primary", 503).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "fallback_on: [connect_error, timeout]",
        &[
            ("primary", &primary.url(), ""),
            ("backup", &backup.url(), ""),
        ],
    ))
    .await;
    let answer = chat(&sidecar, r#"{"n":1}"#).await;
    // A 5xx is not listed: the primary's own answer reaches the client.
    assert_from(&answer, StatusCode::SERVICE_UNAVAILABLE, "primary", None);
    assert_eq!(answer.json()["error"]["message"], "primary says 503");
    assert_eq!(backup.hits(), 0);
    let m = metrics_after(&sidecar, 1.0).await;
    expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
    expect_requests_from(&m, "primary", "5xx", "upstream", 1.0);
}

#[tokio::test]
async fn when_every_upstream_fails_the_failure_is_charged_upstream() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 502).await;
    let sidecar = start_yaml(&with_backup(&primary.url(), "", &backup.url())).await;
    let answer = chat(&sidecar, r#"{"n":1}"#).await;
    assert!(answer.status.is_server_error(), "{}", answer.status);
    assert_eq!(answer.header("x-sloguard-cache"), None);
    assert_eq!((primary.hits(), backup.hits()), (1, 1));
    let m = metrics_after(&sidecar, 1.0).await;
    expect_fallbacks(&m, "primary", "backup", "5xx", 1.0);
    expect_metric(&m, "sloguard_fallbacks_total", &[], 1.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
    expect_metric(&m, "agent_requests_total", &[], 1.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "5xx")], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Circuits in the chain
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_open_circuit_is_skipped_without_an_attempt() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 30s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        let a = chat(&sidecar, r#"{"n":1}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("5xx"));
    }
    assert_eq!(circuit(&sidecar, "primary").await["state"], "open");
    let m = metrics_after(&sidecar, 2.0).await;
    let u = "sloguard_upstream_requests_total";
    let attempts = metric(&m, u, &[("upstream", "primary")]);
    assert_eq!(attempts, 2.0);
    let hits = primary.hits();
    assert_eq!(hits, 2);

    for _ in 0..10 {
        let a = chat(&sidecar, r#"{"n":2}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));
    }
    assert_eq!(
        primary.hits(),
        hits,
        "an open circuit let a request through"
    );
    let m = metrics_after(&sidecar, 12.0).await;
    expect_metric(&m, u, &[("upstream", "primary")], attempts);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 12.0);
    expect_fallbacks(&m, "primary", "backup", "circuit_open", 10.0);
    expect_requests_from(&m, "backup", "2xx", "none", 12.0);
}

#[tokio::test]
async fn a_recovered_primary_is_probed_its_circuit_closes_and_it_answers_again() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 1s, max_open_for: 4s, half_open_probes: 1}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        let a = chat(&sidecar, r#"{"n":1}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("5xx"));
    }
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    primary.set_status(200);
    // Healthy again, but still open: skipped.
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));
    assert_eq!(primary.hits(), 2);

    let wait = c["half_open_in_seconds"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.1, "{c}");
    tokio::time::sleep(Duration::from_secs_f64(wait + 0.05)).await;
    // The first request after the open period is the probe: the primary answers it.
    let probe = chat(&sidecar, r#"{"n":3}"#).await;
    assert_from(&probe, StatusCode::OK, "primary", None);
    assert_eq!(primary.hits(), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = circuit(&sidecar, "primary").await["state"].clone();
        if state == "closed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the circuit did not close: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let a = chat(&sidecar, r#"{"n":4}"#).await;
        assert_from(&a, StatusCode::OK, "primary", None);
    }
    assert_eq!(primary.hits(), 6);
    assert_eq!(backup.hits(), 3);
    let m = metrics_after(&sidecar, 7.0).await;
    expect_metric(
        &m,
        "sloguard_circuit_transitions_total",
        &[
            ("upstream", "primary"),
            ("to", "closed"),
            ("reason", "probe_ok"),
        ],
        1.0,
    );
    expect_metric(
        &m,
        "agent_requests_total",
        &[("upstream", "primary"), ("status", "2xx")],
        4.0,
    );
}

#[tokio::test]
async fn with_every_circuit_open_and_no_cache_the_answer_is_503_circuit_open() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        &admin_with_token("no-cache"),
        "",
        &[
            ("primary", &primary.url(), "circuit_breaker: {}"),
            ("backup", &backup.url(), "circuit_breaker: {}"),
        ],
    ))
    .await;
    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    let a = chat(&sidecar, r#"{"n":1}"#).await;
    assert_circuit_open(&a);
    assert_eq!((primary.hits(), backup.hits()), (0, 0));
    let m = metrics_after(&sidecar, 1.0).await;
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 0.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
}

// ---------------------------------------------------------------------------------------------
// The last-resort cache
// ---------------------------------------------------------------------------------------------

const CACHE: &str = "cache: {max_entries: 100, ttl: 10m}";
const CACHED_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"cache me"}]}"#;
const OTHER_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"not seen"}]}"#;

#[tokio::test]
async fn with_every_circuit_open_the_cache_answers_a_request_it_has_seen() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        &admin_with_token("cache-open"),
        CACHE,
        &[
            ("primary", &primary.url(), "circuit_breaker: {}"),
            ("backup", &backup.url(), "circuit_breaker: {}"),
        ],
    ))
    .await;
    let fresh = chat(&sidecar, CACHED_BODY).await;
    assert_from(&fresh, StatusCode::OK, "primary", None);
    assert_eq!(fresh.header("x-sloguard-cache"), None);
    // While an upstream can answer, it does: the cache is a last resort, not a shortcut.
    let again = chat(&sidecar, CACHED_BODY).await;
    assert_from(&again, StatusCode::OK, "primary", None);
    assert_eq!(again.header("x-sloguard-cache"), None);
    assert_eq!(primary.hits(), 2);

    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    let cached = chat(&sidecar, CACHED_BODY).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.header("x-sloguard-cache"), Some("hit"));
    assert_eq!(cached.header("x-sloguard-fallback"), Some("circuit_open"));
    assert_eq!(cached.body, fresh.body);
    assert_eq!((primary.hits(), backup.hits()), (2, 0));

    // A request the cache has not seen (same method and path, another body).
    let other = chat(&sidecar, OTHER_BODY).await;
    assert_circuit_open(&other);
    assert_eq!((primary.hits(), backup.hits()), (2, 0));

    let m = metrics_after(&sidecar, 4.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(&m, f, &[("to", "cache")], 1.0);
    expect_metric(
        &m,
        f,
        &[
            ("from", "backup"),
            ("to", "cache"),
            ("reason", "circuit_open"),
        ],
        1.0,
    );
    expect_requests_from(&m, "cache", "2xx", "none", 1.0);
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 2.0);
}

#[tokio::test]
async fn when_every_upstream_fails_the_request_the_cache_answers() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        CACHE,
        &[
            ("primary", &primary.url(), ""),
            ("backup", &backup.url(), ""),
        ],
    ))
    .await;
    let fresh = chat(&sidecar, CACHED_BODY).await;
    assert_from(&fresh, StatusCode::OK, "primary", None);
    primary.set_status(500);
    backup.set_status(503);
    // No circuit is open: both are tried, both fail, then the cache answers.
    let cached = chat(&sidecar, CACHED_BODY).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.header("x-sloguard-cache"), Some("hit"));
    assert_eq!(cached.header("x-sloguard-fallback"), Some("5xx"));
    assert_eq!(cached.body, fresh.body);
    assert_eq!((primary.hits(), backup.hits()), (2, 1));
    // Nothing cached for another body: the failure reaches the client.
    let other = chat(&sidecar, OTHER_BODY).await;
    assert!(other.status.is_server_error(), "{}", other.status);
    assert_eq!(other.header("x-sloguard-cache"), None);
    let m = metrics_after(&sidecar, 3.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "backup"), ("reason", "5xx")],
        2.0,
    );
    expect_metric(
        &m,
        f,
        &[("from", "backup"), ("to", "cache"), ("reason", "5xx")],
        1.0,
    );
    // The cache hit is a success for the agent; both providers failed it.
    expect_requests_from(&m, "cache", "2xx", "none", 1.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 2.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "5xx")], 2.0);
}

#[tokio::test]
async fn streamed_responses_are_not_cached() {
    let primary = upstream("primary", 200).await;
    primary.knobs.sse.store(true, Ordering::SeqCst);
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        &admin_with_token("sse-not-cached"),
        CACHE,
        &[
            ("primary", &primary.url(), "circuit_breaker: {}"),
            ("backup", &backup.url(), "circuit_breaker: {}"),
        ],
    ))
    .await;
    let streamed = chat(&sidecar, CACHED_BODY).await;
    assert_from(&streamed, StatusCode::OK, "primary", None);
    assert_eq!(
        streamed.header("content-type"),
        Some("text/event-stream"),
        "the fixture must stream"
    );
    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    assert_circuit_open(&chat(&sidecar, CACHED_BODY).await);
}

// ---------------------------------------------------------------------------------------------
// What cannot fall back
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_over_max_replay_body_streams_through_without_fallback() {
    let sent = random_body(200 * 1024, 0xb16_b0d7);
    for chunked in [false, true] {
        let primary = upstream("primary", 503).await;
        let backup = upstream("backup", 200).await;
        let sidecar = start_yaml(&chain_yaml(
            "",
            "max_replay_body: 64KiB",
            &[
                ("primary", &primary.url(), ""),
                ("backup", &backup.url(), ""),
            ],
        ))
        .await;
        let answer = send(
            &sidecar,
            "/v1/upload",
            &[("content-type", "application/octet-stream")],
            body_of(&sent, chunked),
        )
        .await;
        // The primary's 503 as it is: the body cannot be sent again.
        assert_from(&answer, StatusCode::SERVICE_UNAVAILABLE, "primary", None);
        assert_eq!(
            answer.json()["error"]["message"],
            "primary says 503",
            "chunked: {chunked}"
        );
        let seen = primary.seen();
        assert_eq!(seen.len(), 1, "chunked: {chunked}");
        assert!(
            seen[0].body == sent,
            "chunked: {chunked}: the primary got {} bytes, fnv {}; sent {} bytes, fnv {}",
            seen[0].body.len(),
            fingerprint(&seen[0].body),
            sent.len(),
            fingerprint(&sent)
        );
        let m = metrics_after(&sidecar, 1.0).await;
        assert_eq!(backup.hits(), 0, "chunked: {chunked}");
        expect_metric(
            &m,
            "sloguard_replay_skipped_total",
            &[("agent", "test-agent"), ("listener", "proxy")],
            1.0,
        );
        expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
        expect_attempts(&m, "primary", "5xx", 1.0);
        expect_requests_from(&m, "primary", "5xx", "upstream", 1.0);
    }
}

#[tokio::test]
async fn a_failure_after_the_first_byte_is_not_retried() {
    let release = Arc::new(tokio::sync::Notify::new());
    let conns = Arc::new(AtomicU32::new(0));
    let (r, c) = (release.clone(), conns.clone());
    let breaking = raw_upstream(move |mut s| {
        let (r, c) = (r.clone(), c.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            read_head(&mut s).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n",
                )
                .await;
            // Break the stream once the client has the first chunk.
            let _ = tokio::time::timeout(Duration::from_secs(5), r.notified()).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    })
    .await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{breaking}"),
        "",
        &backup.url(),
    ))
    .await;
    let resp = client()
        .request(
            Request::post(proxy_url(&sidecar, CHAT))
                .header("content-type", "application/json")
                .body(full(r#"{"stream":true}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-sloguard-upstream"], "primary");
    assert!(resp.headers().get("x-sloguard-fallback").is_none());
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk within 5 s")
        .expect("a frame")
        .expect("not an error")
        .into_data()
        .unwrap();
    assert_eq!(first, Bytes::from_static(b"data: {\"n\":1}\n\n"));
    release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the stream ends within 5 s");
    assert!(rest.is_err(), "a cut stream must not look complete");

    let m = metrics_when(&sidecar, |m| {
        metric(
            m,
            "sloguard_upstream_requests_total",
            &[("outcome", "reset")],
        ) >= 1.0
    })
    .await;
    // Give a (wrong) retry time to reach the backup.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backup.hits(),
        0,
        "the backup got a retry after the first byte"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "reset")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup")], 0.0);
    expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Each upstream's own rewrites
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_fallback_upstreams_own_model_and_key_apply_to_the_replay() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let primary_keys = temp_file("rewrite", "primary-keys", "sk-primary-key\n");
    let backup_keys = temp_file("rewrite", "backup-keys", "sk-backup-key\n");
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            (
                "primary",
                &primary.url(),
                &format!(
                    "protocol: openai, api_keys_file: '{}'",
                    primary_keys.display()
                ),
            ),
            (
                "backup",
                &backup.url(),
                &format!(
                    "protocol: openai, model: other-model, api_keys_file: '{}'",
                    backup_keys.display()
                ),
            ),
        ],
    ))
    .await;
    let sent = r#"{"model":"gpt-4o","messages":[]}"#;
    let answer = send(
        &sidecar,
        CHAT,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-agent-own"),
            ("x-trace-id", "trace-11"),
        ],
        full(sent),
    )
    .await;
    assert_from(&answer, StatusCode::OK, "backup", Some("5xx"));

    let p = &primary.seen()[0];
    assert_eq!(p.body, sent.as_bytes(), "no rewrite configured for primary");
    assert_eq!(p.headers["authorization"], "Bearer sk-primary-key");

    let b = &backup.seen()[0];
    let got: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    let mut want: serde_json::Value = serde_json::from_str(sent).unwrap();
    want["model"] = "other-model".into();
    assert_eq!(got, want);
    assert_eq!(
        b.headers["content-length"],
        b.body.len().to_string().as_str()
    );
    assert_eq!(b.headers["authorization"], "Bearer sk-backup-key");
    assert_eq!(b.headers["x-trace-id"], "trace-11");
    for (name, s) in [("primary", p), ("backup", b)] {
        assert!(
            !s.headers
                .values()
                .any(|v| v.as_bytes().windows(12).any(|w| w == b"sk-agent-own")),
            "the agent's key reached {name}: {:?}",
            s.headers
        );
    }
}

/// A primary that failed until its circuit opened, is healthy now but answers after `delay_ms`,
/// and whose open period is over: the next request to reach it is the one probe.
async fn half_open_primary(delay_ms: u64) -> (Upstream, Upstream, Sidecar) {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 1s, max_open_for: 4s, half_open_probes: 1}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        chat(&sidecar, r#"{"n":1}"#).await;
    }
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    primary.set_status(200);
    primary.knobs.delay_ms.store(delay_ms, Ordering::SeqCst);
    let wait = c["half_open_in_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_secs_f64(wait + 0.05)).await;
    (primary, backup, sidecar)
}

#[tokio::test]
async fn a_slow_upload_does_not_hold_the_probe_slot() {
    let (primary, _backup, sidecar) = half_open_primary(0).await;
    // A client sends half its body, then stalls: its body is being read ahead for replay. The
    // breaker is asked only once the body is in, so the probe slot is not this client's.
    let addr = sidecar.listener_addr("proxy").unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"half\":")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "primary", None);
    assert_eq!(primary.hits(), 3, "two failures, then the probe");
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(5);
    while circuit(&sidecar, "primary").await["state"] != "closed" {
        assert!(Instant::now() < deadline, "the circuit did not close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_while_its_probe_waits_gives_the_slot_back() {
    let (primary, _backup, sidecar) = half_open_primary(800).await;
    // The probe: a whole request, whose answer the primary takes 800 ms to give.
    let addr = sidecar.listener_addr("proxy").unwrap();
    let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while primary.hits() < 3 {
        assert!(
            Instant::now() < deadline,
            "the probe never reached the primary"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile the primary is skipped: its only probe is out.
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));

    // The client leaves before the answer: its slot goes back, and the next request probes.
    drop(waiting);
    primary.knobs.delay_ms.store(0, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = chat(&sidecar, r#"{"n":3}"#).await;
        if a.header("x-sloguard-upstream") == Some("primary") {
            assert_from(&a, StatusCode::OK, "primary", None);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the probe slot was never given back: {:?}",
            circuit(&sidecar, "primary").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while circuit(&sidecar, "primary").await["state"] != "closed" {
        assert!(Instant::now() < deadline, "the circuit did not close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
