//! An upstream whose answers a test scripts per path (JSON, SSE, status, headers, pacing), a
//! sidecar with an `agent` and an `llm` listener in front of two of them with the safety
//! detectors on, and the helpers the safety and kill-switch tests share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::{self, SimServer};
use sloguard::{Config, Sidecar};
use tokio::sync::mpsc;

use super::*;

/// What the scripted upstream answers on a path.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
    /// Sent as separate frames, `gap` apart.
    pub chunks: Vec<Bytes>,
    pub gap: Duration,
}

pub fn json(body: &str) -> Reply {
    Reply {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        chunks: vec![Bytes::from(body.to_owned())],
        gap: Duration::ZERO,
    }
}

pub fn sse(events: &[&str]) -> Reply {
    Reply {
        status: 200,
        content_type: "text/event-stream",
        headers: Vec::new(),
        chunks: events.iter().map(|e| Bytes::from(e.to_string())).collect(),
        gap: Duration::from_millis(5),
    }
}

/// An OpenAI chat completion (not streamed) saying `text`.
pub fn chat_json(text: &str) -> Reply {
    json(
        &serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5}
        })
        .to_string(),
    )
}

/// An OpenAI chat stream, one event per delta.
pub fn chat_sse(deltas: &[&str]) -> Reply {
    let mut events: Vec<String> = deltas
        .iter()
        .map(|d| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]})
            )
        })
        .collect();
    events.push(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
            .into(),
    );
    events.push("data: [DONE]\n\n".into());
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    sse(&refs)
}

pub type Script = Arc<Mutex<HashMap<String, Reply>>>;

/// An upstream answering each path as `script` says (404 otherwise).
pub async fn scripted() -> (SimServer, Script) {
    let script: Script = Arc::default();
    let s = script.clone();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let reply = s.lock().unwrap().get(req.uri().path()).cloned();
        async move {
            let _ = req.into_body().collect().await;
            let Some(reply) = reply else {
                let mut r = Response::new(sim::full("no script"));
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            };
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                for (i, c) in reply.chunks.into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(reply.gap).await;
                    }
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(sim::ChannelBody(rx).boxed());
            *r.status_mut() = StatusCode::from_u16(reply.status).unwrap();
            // An empty type: no Content-Type header at all.
            if !reply.content_type.is_empty() {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, reply.content_type.parse().unwrap());
            }
            for (k, v) in reply.headers {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            r
        }
    })
    .await
    .unwrap();
    (server, script)
}

pub fn set(script: &Script, path: &str, reply: Reply) {
    script.lock().unwrap().insert(path.to_owned(), reply);
}

pub const DETECTORS: &str = "
  detectors:
    - builtin: pii_email
    - builtin: pii_credit_card
    - builtin: pii_us_ssn
    - builtin: secrets
    - name: internal_hosts
      regex: 'https?://[a-z0-9.-]+\\.internal\\b'
    - name: banned_terms
      keywords: [Project Falcon, falconry]
";

/// A sidecar with an `agent` listener (in front of `agent_url`) and an `llm` listener (in front
/// of an OpenAI-style `llm_url`), with `safety` as given (its detectors are [`DETECTORS`]), and
/// the admin token `s3cret`.
pub async fn sidecar(agent_url: &str, llm_url: &str, safety: &str, extra: &str) -> Sidecar {
    let token = token_file("sidecar");
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0, token_file: {}}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
  - {{name: egress, bind: 127.0.0.1:0, role: llm, route: llm}}
routes:
  agent: {{upstreams: [agent]}}
  llm: {{upstreams: [openai]}}
upstreams:
  agent: {{url: {agent_url}}}
  openai: {{url: {llm_url}, protocol: openai}}
safety:{DETECTORS}{safety}
{extra}",
        token.display()
    );
    let config = Config::parse("test", &yaml).unwrap_or_else(|e| panic!("{e}"));
    Sidecar::start(config).await.unwrap()
}

/// Two scripted upstreams, an agent and an LLM, and a [`sidecar`] in front of them with `safety`
/// and `extra`: the sidecar, the agent's script, the LLM's script, and the two servers (agent,
/// LLM), which serve as long as they are held.
pub async fn scene(safety: &str, extra: &str) -> (Sidecar, Script, Script, [SimServer; 2]) {
    let (agent, agent_script) = scripted().await;
    let (llm, llm_script) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), safety, extra).await;
    (s, agent_script, llm_script, [agent, llm])
}

pub fn url(sidecar: &Sidecar, listener: &str, path: &str) -> String {
    format!("http://{}{path}", sidecar.listener_addr(listener).unwrap())
}

pub async fn post(listener_url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    post_as(listener_url, None, body).await
}

/// POSTs JSON `body`, in task `task` (`x-agent-task-id`) if given.
pub async fn post_as(
    listener_url: &str,
    task: Option<&str>,
    body: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::post(listener_url).header(header::CONTENT_TYPE, "application/json");
    if let Some(task) = task {
        req = req.header("x-agent-task-id", task);
    }
    let resp = client()
        .request(req.body(full(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, bytes_or_empty(body).await)
}

/// The refusal of an answer the safety block action stopped.
pub const BLOCKED: (StatusCode, &str) = (StatusCode::FORBIDDEN, "safety_blocked");

/// POSTs to `listener_url` and checks the sidecar refused it: `status`, and `error` in
/// `x-sloguard-error`.
pub async fn expect_refused(listener_url: &str, (status, error): (StatusCode, &str)) {
    let (got, headers, body) = post(listener_url).await;
    let said = headers.get("x-sloguard-error");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        (got, said),
        (status, Some(&error.parse().unwrap())),
        "{listener_url}: {body}"
    );
}

pub fn violations(m: &str, listener: &str, detector: &str, action: &str) -> f64 {
    metric(
        m,
        "agent_safety_violations_total",
        &[
            ("listener", listener),
            ("detector", detector),
            ("action", action),
        ],
    )
}

/// `/metrics` once `listener` has counted `n` violations of `detector` under `action` (or after
/// 5 s); fails, naming them, if it counted another number.
pub async fn expect_violations(
    s: &Sidecar,
    listener: &str,
    detector: &str,
    action: &str,
    n: f64,
) -> String {
    let m = metrics_when(s, |m| violations(m, listener, detector, action) >= n).await;
    let got = violations(&m, listener, detector, action);
    assert_eq!(got, n, "{detector} violations under {action} on {listener}");
    m
}

/// A file of its own holding the admin token `s3cret`.
pub fn token_file(dir: &str) -> std::path::PathBuf {
    own_file(dir, "token", "s3cret\n")
}

/// A file named `file` holding `content`, in a directory of its own (one per call: tests starting
/// sidecars at once must not read a file another is writing).
pub fn own_file(dir: &str, file: &str, content: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sloguard-{dir}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, content).unwrap();
    path
}

pub async fn admin_post(s: &Sidecar, path: &str, token: Option<&str>) -> (StatusCode, Bytes) {
    admin_post_body(s, path, token, "").await
}

/// `admin_post` with a body.
pub async fn admin_post_body(
    s: &Sidecar,
    path: &str,
    token: Option<&str>,
    body: &'static str,
) -> (StatusCode, Bytes) {
    let mut req = Request::post(format!("http://{}{path}", s.admin_addr));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = client()
        .request(req.body(full(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, body_bytes(resp).await)
}

/// A receiver of webhook posts: each request's method, path and JSON body; answers `status`.
pub async fn receiver(
    status: u16,
) -> (
    SimServer,
    mpsc::UnboundedReceiver<(String, String, serde_json::Value)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let _ = tx.send((method, path, json));
            let mut r = Response::new(sim::full(""));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await
    .unwrap();
    (server, rx)
}
