//! The fixtures of the fallback-chain tests (`tests/fallback.rs`, `tests/fallback_cache.rs`):
//! recording upstreams, chain configs, and the assertions on where an answer came from.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rand::{RngCore, SeedableRng};
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;

use super::common::*;

/// 64-bit FNV-1a: a cheap fingerprint of a body, to compare what each side saw.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn fingerprint(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// `len` random bytes (seeded: a failure can be reproduced).
pub fn random_body(len: usize, seed: u64) -> Bytes {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    Bytes::from(buf)
}

/// `bytes` as a request body: with a `content-length`, or chunked in 16 KiB frames (a body of
/// known frames and unknown length, sent with `transfer-encoding: chunked`).
pub fn body_of(bytes: &Bytes, chunked: bool) -> TestBody {
    if !chunked {
        return full(bytes.clone());
    }
    let frames = bytes.len().div_ceil(16 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(frames.max(1));
    for i in (0..bytes.len()).step_by(16 * 1024) {
        let frame = bytes.slice(i..(i + 16 * 1024).min(bytes.len()));
        tx.try_send(frame).expect("room for every frame");
    }
    sim::ChannelBody(rx).boxed()
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What an upstream does, changeable while it runs.
#[derive(Default)]
pub struct Knobs {
    /// The status it answers with.
    pub status: AtomicU16,
    /// `Retry-After` seconds on a 429; 0: no header.
    pub retry_after: AtomicU32,
    /// Delay before the response head, after the whole request body was read.
    pub delay_ms: AtomicU64,
    /// A 2xx is an SSE stream (`text/event-stream`) instead of JSON.
    pub sse: AtomicBool,
    /// Requests whose head reached it.
    pub hits: AtomicU32,
    pub seen: Mutex<Vec<Seen>>,
}

/// A recording upstream. A 2xx is JSON `{"upstream": NAME, "len": N, "fnv": HEX}` describing the
/// request body it read (the same bytes for the same request, so a cached copy is recognisable
/// only by the cache header); any other status is a JSON error.
pub struct Upstream {
    pub server: SimServer,
    pub knobs: Arc<Knobs>,
}

impl Upstream {
    pub fn url(&self) -> String {
        self.server.url()
    }
    pub fn set_status(&self, status: u16) {
        self.knobs.status.store(status, Ordering::SeqCst);
    }
    pub fn hits(&self) -> u32 {
        self.knobs.hits.load(Ordering::SeqCst)
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.knobs.seen.lock().unwrap().clone()
    }
}

pub async fn upstream(name: &'static str, status: u16) -> Upstream {
    let knobs = Arc::new(Knobs::default());
    knobs.status.store(status, Ordering::SeqCst);
    let k = knobs.clone();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let k = k.clone();
        async move {
            k.hits.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = bytes_or_empty(body).await;
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

pub fn comma(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    }
}

/// A sidecar config with one `llm` listener `proxy` on route `main`, whose chain is `upstreams`
/// in order: `(name, url, extra keys of the upstream)`. `admin` and `route` add keys to those
/// mappings (flow style, without braces: `"fallback_on: [5xx]"`).
pub fn chain_yaml(admin: &str, route: &str, upstreams: &[(&str, &str, &str)]) -> String {
    let names: Vec<&str> = upstreams.iter().map(|u| u.0).collect();
    let route = format!(
        "main: {{upstreams: [{}]{}}}",
        names.join(", "),
        comma(route)
    );
    let mut yaml = crate::common::config_head(&comma(admin), "proxy", "llm", &route);
    for (name, url, extra) in upstreams {
        yaml.push_str(&format!("  {name}: {{url: '{url}'{}}}\n", comma(extra)));
    }
    yaml
}

/// `chain_yaml` for the usual chain: `primary` (at `url`, with `extra` keys), then `backup`.
pub fn with_backup(url: &str, extra: &str, backup: &str) -> String {
    chain_yaml("", "", &[("primary", url, extra), ("backup", backup, "")])
}

/// A whole answer from the proxy.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

pub async fn send(
    sidecar: &Sidecar,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Answer {
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

pub const CHAT: &str = "/v1/chat/completions";
pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// A small JSON POST to the chat path.
pub async fn chat(sidecar: &Sidecar, body: &'static str) -> Answer {
    send(sidecar, CHAT, JSON, full(body)).await
}

/// `/circuits`' entry for `name`.
pub async fn circuit(sidecar: &Sidecar, name: &str) -> serde_json::Value {
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

/// Waits out the open period of `name`'s circuit, as `/circuits` counts it down: the wall clock
/// has to pass here, end to end (the breaker's own tests run on paused time).
pub async fn open_period_over(sidecar: &Sidecar, name: &str) {
    let over = async || circuit(sidecar, name).await["half_open_in_seconds"] == 0.0;
    wait_until("the open period never ended", 5, over).await;
}

/// Waits for `name`'s circuit to close (after its probe's answer is settled).
pub async fn circuit_closes(sidecar: &Sidecar, name: &str) {
    let closed = async || circuit(sidecar, name).await["state"] == "closed";
    wait_until("the circuit did not close", 5, closed).await;
}

/// A file holding `content` in a directory of this test's own.
pub fn temp_file(test: &str, name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-fallback-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

pub const TOKEN: &str = "fallback-admin-token";

/// `admin` keys of `chain_yaml` for an admin API with a token.
pub fn admin_with_token(test: &str) -> String {
    let path = temp_file(test, "token", &format!("{TOKEN}\n"));
    format!("token_file: '{}'", path.display())
}

/// Forces `upstream`'s circuit open with the admin API.
pub async fn force_open(sidecar: &Sidecar, upstream: &str) {
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
pub async fn metrics_after(sidecar: &Sidecar, n: f64) -> String {
    metrics_when(sidecar, |m| metric(m, "agent_requests_total", &[]) >= n).await
}

/// Asserts a proxied answer came from `upstream`, with `x-sloguard-fallback` as `fallback` says.
#[track_caller]
pub fn assert_from(a: &Answer, status: StatusCode, upstream: &str, fallback: Option<&str>) {
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
pub fn assert_circuit_open(a: &Answer) {
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("x-sloguard-error"), Some("circuit_open"));
    assert_eq!(a.json()["error"]["type"], "circuit_open");
    assert_eq!(a.header("x-sloguard-cache"), None);
}
