//! Fixtures for the end-to-end tests: a sidecar on ephemeral loopback ports in front of real
//! in-process upstreams, a client, and `/metrics` reading.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the fixtures"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sloguard::{Config, Sidecar};
use tokio::net::{TcpListener, TcpStream};

pub mod mcp;
pub mod otlp;
pub mod process;
pub mod scripted;
pub mod tls;
pub mod tools;

pub type TestBody = BoxBody<Bytes, Infallible>;
pub type TestClient = Client<HttpConnector, TestBody>;

pub const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The start of a test config, up to the `upstreams:` key: agent `test-agent`, an admin port
/// with the keys `admin` adds (`""`, or `", token_file: …"`), listener `listener` of `role`,
/// and the one route it serves, `route` (`name: {upstreams: […]}`).
pub fn config_head(admin: &str, listener: &str, role: &str, route: &str) -> String {
    let route_name = route.split(':').next().expect("a route name");
    format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0{admin}}}
listeners:
  - {{name: {listener}, bind: 127.0.0.1:0, role: {role}, route: {route_name}}}
routes:
  {route}
upstreams:
"
    )
}

/// A config with two egress listeners, `openai` and `anthropic`, each in front of the upstream of
/// its name, whose settings (`{url: …, protocol: …}`) are `openai` and `anthropic`; `tail` adds
/// sections.
pub fn llm_pair_yaml(openai: &str, anthropic: &str, tail: &str) -> String {
    format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: openai, bind: 127.0.0.1:0, role: llm, route: openai}}
  - {{name: anthropic, bind: 127.0.0.1:0, role: llm, route: anthropic}}
routes:
  openai: {{upstreams: [openai]}}
  anthropic: {{upstreams: [anthropic]}}
upstreams:
  openai: {openai}
  anthropic: {anthropic}
{tail}"
    )
}

/// A config with one listener called `proxy` of `role`, in front of `upstream_url`.
pub fn config_yaml(role: &str, upstream_url: &str, timeouts: &str) -> String {
    config_head("", "proxy", role, "main: {upstreams: [backend]}")
        + &format!(
            "  backend:
    url: {upstream_url}
    timeouts: {{{timeouts}}}
shutdown: {{grace_period: 5s}}
"
        )
}

pub async fn start_sidecar(role: &str, upstream_url: &str, timeouts: &str) -> Sidecar {
    let config = Config::parse("test", &config_yaml(role, upstream_url, timeouts))
        .expect("valid test config");
    Sidecar::start(config).await.expect("sidecar starts")
}

/// A sidecar started on `yaml`; a config refused names the error and shows the config.
pub async fn start_yaml(yaml: &str) -> Sidecar {
    let config = match Config::parse("test", yaml) {
        Ok(c) => c,
        Err(e) => panic!("config refused: {e}\n{yaml}"),
    };
    Sidecar::start(config).await.expect("sidecar starts")
}

/// A config with one `agent` listener called `proxy` in front of `agent_url` (upstream `agent`),
/// followed by the sections in `extra`.
pub fn agent_config(agent_url: &str, extra: &str) -> Config {
    let yaml = config_head("", "proxy", "agent", "agent: {upstreams: [agent]}")
        + &format!("  agent: {{url: {agent_url}}}\n{extra}");
    Config::parse("test", &yaml).expect("valid test config")
}

pub async fn agent_sidecar(agent_url: &str, extra: &str) -> Sidecar {
    Sidecar::start(agent_config(agent_url, extra))
        .await
        .expect("sidecar starts")
}

/// `n` empty POSTs of `path` through the `proxy` listener, one after another, each body read.
pub async fn send(sidecar: &Sidecar, path: &str, n: usize) {
    for _ in 0..n {
        let resp = client()
            .request(
                Request::post(proxy_url(sidecar, path))
                    .body(empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let _ = body_bytes(resp).await;
    }
}

/// 90 successes and 10 failures of a [`verdict_agent`]'s own, in ten rounds of one `503` and
/// nine `200`s.
pub async fn ninety_good_ten_bad(sidecar: &Sidecar) {
    for _ in 0..10 {
        send(sidecar, "/503", 1).await;
        send(sidecar, "/200", 9).await;
    }
}

/// A JSON document of the admin port (`/slo`, `/circuits`).
pub async fn admin_json(s: &impl Admin, path: &str) -> serde_json::Value {
    let url = format!("http://{}{path}", s.admin());
    serde_json::from_slice(&body_bytes(get(&client(), &url).await).await).expect("JSON")
}

pub fn proxy_url(sidecar: &Sidecar, path: &str) -> String {
    format!(
        "http://{}{path}",
        sidecar.listener_addr("proxy").expect("proxy listener")
    )
}

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

pub async fn get(client: &TestClient, url: &str) -> Response<hyper::body::Incoming> {
    client
        .request(Request::get(url).body(empty()).expect("request"))
        .await
        .expect("response")
}

pub async fn body_bytes(resp: Response<hyper::body::Incoming>) -> Bytes {
    resp.into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes()
}

/// All of `body`, or nothing where it broke off.
pub async fn bytes_or_empty<B: Body>(body: B) -> Bytes {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// The sidecar's `/metrics` text.
/// A sidecar with an admin port: in this process, or the binary as a child process.
pub trait Admin {
    fn admin(&self) -> SocketAddr;
}

impl<T: Admin> Admin for &T {
    fn admin(&self) -> SocketAddr {
        (**self).admin()
    }
}

impl Admin for Sidecar {
    fn admin(&self) -> SocketAddr {
        self.admin_addr
    }
}

impl Admin for process::Process {
    fn admin(&self) -> SocketAddr {
        self.admin
    }
}

pub async fn metrics(sidecar: &impl Admin) -> String {
    let resp = get(&client(), &format!("http://{}/metrics", sidecar.admin())).await;
    String::from_utf8(body_bytes(resp).await.to_vec()).expect("utf-8 metrics")
}

/// Sum of the samples of `name` whose labels include every `(key, value)` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .expect("sample value")
        })
        .sum()
}

/// Asserts one sample sum of `/metrics` text, naming it when it differs.
#[track_caller]
pub fn expect_metric(text: &str, name: &str, labels: &[(&str, &str)], expected: f64) {
    let got = metric(text, name, labels);
    assert_eq!(got, expected, "{name}{labels:?}");
}

/// `agent_requests_total` of the requests answered with `status` (its class, `5xx`) charged to
/// `cause` is `expected`, summed over every other label.
pub fn expect_requests(text: &str, status: &str, cause: &str, expected: f64) {
    let labels = [("status", status), ("cause", cause)];
    expect_metric(text, "agent_requests_total", &labels, expected);
}

/// Like [`expect_requests`], of the requests `upstream` answered.
pub fn expect_requests_from(text: &str, upstream: &str, status: &str, cause: &str, expected: f64) {
    let labels = [("upstream", upstream), ("status", status), ("cause", cause)];
    expect_metric(text, "agent_requests_total", &labels, expected);
}

/// `sloguard_upstream_requests_total` of the attempts at `upstream` that ended as `outcome` is
/// `expected`.
pub fn expect_attempts(text: &str, upstream: &str, outcome: &str, expected: f64) {
    let labels = [("upstream", upstream), ("outcome", outcome)];
    expect_metric(text, "sloguard_upstream_requests_total", &labels, expected);
}

/// `sloguard_upstream_requests_total` of the attempts that ended as `outcome`, at any upstream,
/// is `expected`.
pub fn expect_outcome(text: &str, outcome: &str, expected: f64) {
    let labels = [("outcome", outcome)];
    expect_metric(text, "sloguard_upstream_requests_total", &labels, expected);
}

/// `sloguard_fallbacks_total` of the moves from `from` to `to` for `reason` is `expected`.
pub fn expect_fallbacks(text: &str, from: &str, to: &str, reason: &str, expected: f64) {
    let labels = [("from", from), ("to", to), ("reason", reason)];
    expect_metric(text, "sloguard_fallbacks_total", &labels, expected);
}

/// Waits until `ready` holds, asking every 20 ms for at most `secs` seconds; past them, fails
/// with `what` (what did not happen). The one way a test waits for a condition.
pub async fn wait_until(what: &str, secs: u64, ready: impl AsyncFnMut() -> bool) {
    assert!(holds_within(secs, ready).await, "{what} (within {secs} s)");
}

/// [`wait_until`] for a caller whose failure message needs what it can read only once the
/// deadline has passed: whether `ready` held within `secs` seconds.
pub async fn holds_within(secs: u64, ready: impl AsyncFnMut() -> bool) -> bool {
    comes_within(std::time::Duration::from_secs(secs), ready).await
}

/// Whether `ok` held at every look, every 20 ms, until `span` has passed: for what must stay
/// true while the wall clock passes (a deadline of the product's own that must not fire).
pub async fn holds_throughout(
    span: std::time::Duration,
    mut ok: impl AsyncFnMut() -> bool,
) -> bool {
    !comes_within(span, async || !ok().await).await
}

/// Whether `ready` held at one of the looks, every 20 ms, until `span` had passed.
async fn comes_within(span: std::time::Duration, mut ready: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + span;
    while !ready().await {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// `/metrics` once `ready` holds for it, or after 5 s (requests settle when their connection
/// closes, which the test cannot await directly).
pub async fn metrics_when(sidecar: &impl Admin, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = metrics(sidecar).await;
        if ready(&m) || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes raw bytes to `addr` and returns the first answer read back (lower-cased), waiting
/// up to 5 s.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).to_lowercase()
}

/// A client that starts a 1000-byte chat upload to `addr`, sends its first bytes and hangs up
/// once `reached` says the request is through to the upstream.
pub async fn abort_upload(addr: SocketAddr, reached: impl AsyncFnMut() -> bool) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"model\":",
    )
    .await
    .expect("write");
    wait_until("the upload reaches the upstream", 5, reached).await;
}

/// A body of `total` bytes made of `chunk` repeated: a large stream without a large allocation.
pub struct RepeatBody {
    pub chunk: Bytes,
    pub remaining: u64,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }
}

/// A raw TCP upstream that runs `behave` on every connection: for upstreams that break HTTP.
pub async fn raw_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tcp = TcpListener::bind(LOOPBACK).await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            tokio::spawn(behave(stream));
        }
    });
    addr
}

/// An upstream that reads the request head, writes `prefix` (nothing, a response head, part of a
/// body) and then hangs.
pub async fn stalling_upstream(prefix: &'static [u8]) -> SocketAddr {
    raw_upstream(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        read_head(&mut s).await;
        let _ = s.write_all(prefix).await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    })
    .await
}

/// Reads a request head off a raw connection (up to the blank line).
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(LOOPBACK).expect("bind");
    l.local_addr().expect("addr")
}

/// An agent answering `/{status}/{verdict}` (or `/{status}`): that status and `{}`, and that
/// `x-agent-task-status` unless the verdict is `none` or absent; `/slow/...` after 2.5 s.
pub async fn verdict_agent() -> sloguard::sim::SimServer {
    sloguard::sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let mut path = req.uri().path().to_owned();
        let _ = req.into_body().collect().await;
        // `/slow/...`: the agent takes 2.5 s to answer.
        if let Some(rest) = path.strip_prefix("/slow") {
            path = rest.to_owned();
            tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        }
        let mut parts = path.trim_start_matches('/').split('/');
        let status: u16 = parts.next().expect("a status").parse().expect("a status");
        let verdict = parts.next().unwrap_or("none").to_owned();
        let mut r = Response::new(sloguard::sim::full("{}"));
        *r.status_mut() = http::StatusCode::from_u16(status).expect("a status");
        if verdict != "none" {
            r.headers_mut()
                .insert("x-agent-task-status", verdict.parse().expect("a verdict"));
        }
        r
    })
    .await
    .expect("the agent starts")
}

/// `GET /agent/healthz`: its status and JSON body.
pub async fn agent_health(s: &Sidecar) -> (http::StatusCode, serde_json::Value) {
    let resp = get(&client(), &format!("http://{}/agent/healthz", s.admin_addr)).await;
    let status = resp.status();
    let body = body_bytes(resp).await;
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// One request of task `id` (none: a task of its own) to `path` on the `proxy` listener; its
/// status.
pub async fn call_task(s: &Sidecar, path: &str, id: Option<&str>) -> http::StatusCode {
    let mut req = Request::post(proxy_url(s, path));
    if let Some(id) = id {
        req = req.header("x-agent-task-id", id);
    }
    send_empty(req).await
}

/// Sends `req` with an empty body; its status, once the answer's body is read.
pub async fn send_empty(req: http::request::Builder) -> http::StatusCode {
    let resp = client()
        .request(req.body(empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let _ = body_bytes(resp).await;
    status
}

/// Tasks started, completed, failed and abandoned, from `/metrics` text.
pub fn task_counts(m: &str) -> [f64; 4] {
    [
        "agent_tasks_started",
        "agent_tasks_completed",
        "agent_tasks_failed_total",
        "agent_tasks_abandoned_total",
    ]
    .map(|n| metric(m, n, &[("agent", "test-agent")]))
}
