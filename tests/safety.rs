//! Safety end to end: detectors over what the agent and the LLM say (JSON and SSE), the block
//! action (403, or an error event that ends a stream), the kill switch (tripped by violations,
//! set by hand through the admin API, routing to a human queue), and incident webhooks received
//! by a real in-process HTTP receiver. Assertions are on what the client gets and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::{self, SimServer};
use sloguard::{Config, Sidecar};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// What the scripted upstream answers on a path.
#[derive(Clone)]
struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// Sent as separate frames, `gap` apart.
    chunks: Vec<Bytes>,
    gap: Duration,
}

fn json(body: &str) -> Reply {
    Reply {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        chunks: vec![Bytes::from(body.to_owned())],
        gap: Duration::ZERO,
    }
}

fn sse(events: &[&str]) -> Reply {
    Reply {
        status: 200,
        content_type: "text/event-stream",
        headers: Vec::new(),
        chunks: events.iter().map(|e| Bytes::from(e.to_string())).collect(),
        gap: Duration::from_millis(5),
    }
}

/// An OpenAI chat completion (not streamed) saying `text`.
fn chat_json(text: &str) -> Reply {
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
fn chat_sse(deltas: &[&str]) -> Reply {
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

type Script = Arc<Mutex<HashMap<String, Reply>>>;

/// An upstream answering each path as `script` says (404 otherwise).
async fn scripted() -> (SimServer, Script) {
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
            r.headers_mut()
                .insert(header::CONTENT_TYPE, reply.content_type.parse().unwrap());
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

fn set(script: &Script, path: &str, reply: Reply) {
    script.lock().unwrap().insert(path.to_owned(), reply);
}

const DETECTORS: &str = "
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
/// of an OpenAI-style `llm_url`), with `safety` as given (its detectors are [`DETECTORS`]).
async fn sidecar(agent_url: &str, llm_url: &str, safety: &str, extra: &str) -> Sidecar {
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0}}
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
{extra}"
    );
    let config = Config::parse("test", &yaml).unwrap_or_else(|e| panic!("{e}"));
    Sidecar::start(config).await.unwrap()
}

fn url(sidecar: &Sidecar, listener: &str, path: &str) -> String {
    format!("http://{}{path}", sidecar.listener_addr(listener).unwrap())
}

async fn post(listener_url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = client()
        .request(
            Request::post(listener_url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

fn violations(m: &str, listener: &str, detector: &str, action: &str) -> f64 {
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

/// Texts that each one detector finds.
const SAMPLES: [(&str, &str); 6] = [
    ("pii_email", "write to jane.doe@acme-corp.io today"),
    ("pii_credit_card", "card 4111 1111 1111 1111 on file"),
    ("pii_us_ssn", "ssn 123-45-6789 here"),
    ("secrets", "use sk-proj-abcdefghijklmnopqrstuvwxyz0123 now"),
    ("internal_hosts", "see http://billing.internal/x"),
    ("banned_terms", "about project falcon soon"),
];

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_detector_is_counted_in_both_roles_json_and_sse() {
    let (agent, a_script) = scripted().await;
    let (llm, l_script) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "  action: record\n", "").await;
    for (i, (detector, text)) in SAMPLES.iter().enumerate() {
        // Agent: a JSON answer (the text in a nested string value, escaped) and an SSE stream of
        // plain-text events split inside the match.
        let escaped = serde_json::json!({"answer": {"parts": ["ok", text]}}).to_string();
        set(&a_script, &format!("/json{i}"), json(&escaped));
        let (head, tail) = text.split_at(text.len() / 2);
        let events = [format!("data: {head}\n\n"), format!("data: {tail}\n\n")];
        set(
            &a_script,
            &format!("/sse{i}"),
            sse(&[&events[0], &events[1]]),
        );
        set(
            &l_script,
            &format!("/json{i}/chat/completions"),
            chat_json(text),
        );
        set(
            &l_script,
            &format!("/sse{i}/chat/completions"),
            chat_sse(&[head, tail]),
        );
        for (listener, path) in [
            ("inbound", format!("/json{i}")),
            ("inbound", format!("/sse{i}")),
            ("egress", format!("/json{i}/chat/completions")),
            ("egress", format!("/sse{i}/chat/completions")),
        ] {
            let (status, _, body) = post(&url(&s, listener, &path)).await;
            assert_eq!(status, StatusCode::OK, "{listener}{path}");
            // Record: the answer passes as it was.
            assert!(!body.is_empty());
        }
        let m = metrics_when(&s, |m| {
            violations(m, "inbound", detector, "record") >= 2.0
                && violations(m, "egress", detector, "record") >= 2.0
        })
        .await;
        assert_eq!(
            violations(&m, "inbound", detector, "record"),
            2.0,
            "{detector}"
        );
        assert_eq!(
            violations(&m, "egress", detector, "record"),
            2.0,
            "{detector}"
        );
    }
    let m = metrics(&s).await;
    for (detector, _) in SAMPLES {
        // Nothing else fired: each sample is found by its own detector only.
        let total = metric(
            &m,
            "agent_safety_violations_total",
            &[("detector", detector)],
        );
        assert_eq!(total, 4.0, "{detector}");
    }
    for listener in ["inbound", "egress"] {
        expect_metric(
            &m,
            "agent_responses_total",
            &[("listener", listener)],
            2.0 * SAMPLES.len() as f64,
        );
    }
    // A clean answer is inspected and counts nothing; ids and model names are not output text.
    set(&l_script, "/v1/chat/completions", chat_json("all good"));
    let (status, _, _) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    let m = metrics_when(&s, |m| {
        metric(m, "agent_responses_total", &[("listener", "egress")]) >= 13.0
    })
    .await;
    expect_metric(
        &m,
        "agent_safety_violations_total",
        &[("listener", "egress")],
        12.0,
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_match_split_across_two_sse_events_is_found_once() {
    let (agent, _a) = scripted().await;
    let (llm, script) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "", "").await;
    set(
        &script,
        "/v1/chat/completions",
        chat_sse(&[
            "Your key: sk-proj-abcdefghij",
            "klmnopqrstuvwxyz0123 keep it",
        ]),
    );
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let m = metrics_when(&s, |m| violations(m, "egress", "secrets", "record") >= 1.0).await;
    expect_metric(&m, "agent_safety_violations_total", &[], 1.0);
    expect_metric(&m, "agent_responses_total", &[("listener", "egress")], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn block_turns_a_json_answer_into_403_and_passes_clean_ones_untouched() {
    let (agent, script) = scripted().await;
    let (llm, _l) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "  action: block\n", "").await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    let clean = r#"{"answer":"nothing to see","n":[1,2,3]}"#;
    let mut clean_reply = json(clean);
    clean_reply.headers.push((
        "content-length",
        Box::leak(clean.len().to_string().into_boxed_str()),
    ));
    set(&script, "/clean", clean_reply);
    let (status, headers, body) = post(&url(&s, "inbound", "/leak")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sloguard-error"], "safety_blocked");
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["type"], "safety_blocked");
    assert!(
        !String::from_utf8_lossy(&body).contains("jane"),
        "the match never goes out"
    );
    let (status, _, body) = post(&url(&s, "inbound", "/clean")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, clean.as_bytes());
    // A HEAD answer has no body to read: it passes with its headers as they were.
    let head = client()
        .request(
            Request::head(url(&s, "inbound", "/clean"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        clean.len().to_string().as_str()
    );
    // A card number answered as a JSON number is text too.
    set(&script, "/number", json(r#"{"card": 4111111111111111}"#));
    let (status, _, body) = post(&url(&s, "inbound", "/number")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&body).contains("4111"));
    let m = metrics_when(&s, |m| {
        metric(m, "agent_responses_total", &[("listener", "inbound")]) >= 4.0
    })
    .await;
    assert_eq!(violations(&m, "inbound", "pii_email", "block"), 1.0);
    assert_eq!(violations(&m, "inbound", "pii_email", "record"), 0.0);
    assert_eq!(violations(&m, "inbound", "pii_credit_card", "block"), 1.0);
    expect_metric(
        &m,
        "agent_requests_total",
        &[("listener", "inbound"), ("status", "4xx")],
        2.0,
    );
    // The agent answered: its attempt counts as ok.
    expect_metric(
        &m,
        "sloguard_upstream_requests_total",
        &[("upstream", "agent"), ("outcome", "ok")],
        4.0,
    );
    // The sidecar's own time is recorded for each, blocked or not.
    expect_metric(
        &m,
        "sloguard_overhead_seconds_count",
        &[("listener", "inbound")],
        4.0,
    );
    s.shutdown().await;
}

#[tokio::test]
async fn block_ends_a_stream_with_an_error_event_and_sends_nothing_after() {
    let (agent, _a) = scripted().await;
    let (llm, script) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "  action: block\n", "").await;
    let filler = "lorem ipsum dolor sit amet ".repeat(40);
    set(
        &script,
        "/v1/chat/completions",
        chat_sse(&[
            &filler,
            "and the key is sk-ant-api03-ABCDEFGHIJ",
            "KLMNOPQRSTUVWXYZ0123456789",
            " AFTER-THE-MATCH",
        ]),
    );
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK, "the head went out before the match");
    let text = String::from_utf8_lossy(&body);
    // The clean text before the match went out; then the error event, and nothing after.
    assert!(text.contains("lorem ipsum"), "{text}");
    assert!(!text.contains("sk-ant"), "{text}");
    assert!(!text.contains("AFTER-THE-MATCH"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        text.ends_with("\n\n") && text.contains("event: error\ndata: {\"error\":{"),
        "{text}"
    );
    let last = text.rsplit("event: error\ndata: ").next().unwrap();
    let err: serde_json::Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(err["error"]["type"], "safety_blocked");
    let m = metrics_when(&s, |m| violations(m, "egress", "secrets", "block") >= 1.0).await;
    assert_eq!(violations(&m, "egress", "secrets", "block"), 1.0);
    expect_metric(&m, "agent_responses_total", &[("listener", "egress")], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn upstream_signals_count_flag_and_content_filter() {
    let (agent, a_script) = scripted().await;
    let (llm, l_script) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "", "").await;
    let mut flagged = json(r#"{"answer":"fine words"}"#);
    flagged.headers.push(("x-safety-flag", "pii"));
    set(&a_script, "/flagged", flagged);
    let filtered = json(
        r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}]}"#,
    );
    set(&l_script, "/v1/chat/completions", filtered);
    assert_eq!(
        post(&url(&s, "inbound", "/flagged")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        post(&url(&s, "egress", "/v1/chat/completions")).await.0,
        StatusCode::OK
    );
    let m = metrics_when(&s, |m| {
        violations(m, "egress", "content_filter", "record") >= 1.0
            && violations(m, "inbound", "safety_flag", "record") >= 1.0
    })
    .await;
    assert_eq!(violations(&m, "inbound", "safety_flag", "record"), 1.0);
    assert_eq!(violations(&m, "egress", "content_filter", "record"), 1.0);
    s.shutdown().await;

    // Under block, the agent's own flag blocks its answer.
    let s = sidecar(&agent.url(), &llm.url(), "  action: block\n", "").await;
    let (status, headers, _) = post(&url(&s, "inbound", "/flagged")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sloguard-error"], "safety_blocked");
    s.shutdown().await;
}

fn token_file(dir: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-safety-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "s3cret\n").unwrap();
    path
}

async fn admin_post(s: &Sidecar, path: &str, token: Option<&str>) -> (StatusCode, Bytes) {
    let mut req = Request::post(format!("http://{}{path}", s.admin_addr));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
    let status = resp.status();
    (status, body_bytes(resp).await)
}

#[tokio::test]
async fn the_kill_switch_trips_on_violations_within_the_window_only() {
    let (agent, script) = scripted().await;
    let (llm, _l) = scripted().await;
    let s = sidecar(
        &agent.url(),
        &llm.url(),
        "  kill_switch: {violations: 3, within: 2s}\n",
        "",
    )
    .await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    // Three violations spread over more than the window: the agent stays up.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(post(&url(&s, "inbound", "/leak")).await.0, StatusCode::OK);
        let want = f64::from(i + 1);
        metrics_when(&s, |m| {
            violations(m, "inbound", "pii_email", "record") >= want
        })
        .await;
    }
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    // Three within the window (after one's length of quiet, so that the last of the spread
    // ones are out of it): disabled.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 0..3 {
        assert_eq!(post(&url(&s, "inbound", "/leak")).await.0, StatusCode::OK);
        let want = f64::from(i + 4);
        metrics_when(&s, |m| {
            violations(m, "inbound", "pii_email", "record") >= want
        })
        .await;
    }
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    expect_metric(
        &m,
        "sloguard_incidents_total",
        &[("severity", "sev1"), ("kind", "kill_switch")],
        1.0,
    );
    // Silent: no fallback_url, so 503 `agent_disabled`, and the agent is not called; the LLM
    // listener refuses too.
    for (listener, path) in [("inbound", "/leak"), ("egress", "/v1/chat/completions")] {
        let (status, headers, _) = post(&url(&s, listener, path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["x-sloguard-error"], "agent_disabled");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_human_disables_and_enables_with_the_token_and_traffic_goes_to_the_queue() {
    let (agent, script) = scripted().await;
    let (llm, _l) = scripted().await;
    let (queue, q_script) = scripted().await;
    set(&script, "/ask", json(r#"{"answer":"from the agent"}"#));
    set(
        &q_script,
        "/ask",
        json(r#"{"answer":"a human will reply"}"#),
    );
    let token = token_file("switch");
    let s = sidecar_with_token(&agent.url(), &llm.url(), &queue.url(), &token).await;
    // Without a token, and with a wrong one: refused, nothing changes.
    assert_eq!(
        admin_post(&s, "/admin/agent/disable", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_post(&s, "/admin/agent/disable", Some("wrong"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &br#"{"answer":"from the agent"}"#[..])
    );
    let (status, body) = admin_post(&s, "/admin/agent/disable", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["disabled"].as_bool(), v["changed"].as_bool()),
        (Some(true), Some(true))
    );
    // Disabled: the human queue answers, named as the upstream.
    let (status, headers, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"{"answer":"a human will reply"}"#);
    assert_eq!(headers["x-sloguard-upstream"], "kill_switch_fallback");
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    let (status, _) = admin_post(&s, "/admin/agent/enable", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(&body[..], br#"{"answer":"from the agent"}"#);
    let m = metrics_when(&s, |m| {
        metric(m, "agent_requests_total", &[("upstream", "agent")]) >= 2.0
    })
    .await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    expect_metric(
        &m,
        "agent_requests_total",
        &[
            ("listener", "inbound"),
            ("upstream", "kill_switch_fallback"),
            ("status", "2xx"),
        ],
        1.0,
    );
    expect_metric(
        &m,
        "sloguard_incidents_total",
        &[("kind", "kill_switch")],
        2.0,
    );
    s.shutdown().await;

    // No token file configured: mutations are refused outright.
    let s = sidecar(&agent.url(), &llm.url(), "", "").await;
    assert_eq!(
        admin_post(&s, "/admin/agent/disable", Some("s3cret"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    s.shutdown().await;
}

async fn sidecar_with_token(
    agent_url: &str,
    llm_url: &str,
    queue_url: &str,
    token: &std::path::Path,
) -> Sidecar {
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
safety:{DETECTORS}  kill_switch: {{violations: 3, within: 10m, fallback_url: '{queue_url}'}}
",
        token.display()
    );
    Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap()
}

/// A receiver of webhook posts: each request's method, path and JSON body; answers `status`.
async fn receiver(
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

#[tokio::test]
async fn the_kill_switch_posts_an_alertmanager_alert() {
    let (agent, script) = scripted().await;
    let (llm, _l) = scripted().await;
    let (hook, mut posts) = receiver(200).await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    let s = sidecar(
        &agent.url(),
        &llm.url(),
        "  kill_switch: {violations: 1, within: 1m}\n",
        &format!("incidents: {{webhook: '{}/api/v2/alerts'}}\n", hook.url()),
    )
    .await;
    assert_eq!(post(&url(&s, "inbound", "/leak")).await.0, StatusCode::OK);
    let (method, path, body) = tokio::time::timeout(Duration::from_secs(5), posts.recv())
        .await
        .expect("an alert within 5 s")
        .unwrap();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v2/alerts"));
    let alert = &body[0];
    assert_eq!(alert["labels"]["alertname"], "SloguardKillSwitch");
    assert_eq!(alert["labels"]["agent"], "test-agent");
    assert_eq!(alert["labels"]["severity"], "sev1");
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    assert!(alert["annotations"]["runbook"]
        .as_str()
        .unwrap()
        .contains("Immediately disable affected agent"));
    assert!(alert["startsAt"].is_string());
    assert!(alert.get("endsAt").is_none_or(|e| e.is_null()));
    // The matched text is nowhere in the alert.
    assert!(!body.to_string().contains("jane"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_webhook_receiver_down_leaves_requests_alone_and_the_alert_is_counted_dropped() {
    let (agent, script) = scripted().await;
    set(&script, "/ask", json(r#"{"answer":"ok"}"#));
    let token = token_file("down");
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0, token_file: {}}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
routes:
  agent: {{upstreams: [agent]}}
upstreams:
  agent: {{url: {}}}
incidents: {{webhook: 'http://{}/api/v2/alerts'}}
",
        token.display(),
        agent.url(),
        closed_port()
    );
    let s = Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        admin_post(&s, "/admin/agent/disable", Some("s3cret"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        admin_post(&s, "/admin/agent/enable", Some("s3cret"))
            .await
            .0,
        StatusCode::OK
    );
    // Requests are served at once meanwhile.
    let (status, _, _) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    let m = metrics_when(&s, |m| {
        metric(
            m,
            "sloguard_incident_notifications_total",
            &[("result", "failed")],
        ) >= 2.0
    })
    .await;
    expect_metric(
        &m,
        "sloguard_incident_notifications_total",
        &[("result", "failed")],
        2.0,
    );
    expect_metric(
        &m,
        "sloguard_incident_notifications_total",
        &[("result", "sent")],
        0.0,
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_kill_switch_survives_a_rebuilt_snapshot() {
    let yaml = "agent: a
listeners:
  - {name: inbound, bind: 127.0.0.1:0, role: agent, route: r}
routes:
  r: {upstreams: [u]}
upstreams:
  u: {url: 'http://127.0.0.1:9'}
safety: {kill_switch: {violations: 2, within: 1m}}
";
    let config = Config::parse("test", yaml).unwrap();
    let telemetry = sloguard::telemetry::Telemetry::new();
    let shared = sloguard::proxy::Shared::new(&config, &telemetry, false);
    let first = sloguard::proxy::Snapshot::build(config.clone(), &telemetry, &shared).unwrap();
    let kill = first.listeners[0].kill.as_ref().unwrap();
    kill.set(true, "test", sloguard::incident::Severity::Sev1);
    // A reload builds a new snapshot from the same shared parts: still disabled.
    let second = sloguard::proxy::Snapshot::build(config, &telemetry, &shared).unwrap();
    assert!(second.listeners[0].kill.as_ref().unwrap().is_disabled());
    assert!(telemetry
        .render()
        .contains("sloguard_agent_disabled{agent=\"a\"} 1"));
}

#[tokio::test]
async fn a_circuit_opening_and_closing_are_incidents_with_the_availability_severity() {
    let (agent, _a) = scripted().await;
    let (hook, mut posts) = receiver(200).await;
    let token = token_file("breaker");
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0, token_file: {}}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
routes:
  agent: {{upstreams: [agent]}}
upstreams:
  agent: {{url: {}, circuit_breaker: {{}}}}
incidents: {{webhook: '{}/api/v2/alerts', severities: {{availability: sev3}}}}
",
        token.display(),
        agent.url(),
        hook.url()
    );
    let s = Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap();
    for action in ["open", "close"] {
        let (status, _) = admin_post(
            &s,
            &format!("/admin/circuits/agent/{action}"),
            Some("s3cret"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut alerts = Vec::new();
    while alerts.len() < 2 {
        let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), posts.recv())
            .await
            .expect("alerts within 5 s")
            .unwrap();
        alerts.extend(body.as_array().unwrap().iter().cloned());
    }
    for a in &alerts {
        assert_eq!(a["labels"]["upstream"], "agent");
        assert_eq!(a["labels"]["severity"], "sev3");
        assert_eq!(a["labels"]["kind"], "circuit_breaker");
    }
    // Opened, then resolved with the same start.
    assert!(alerts[0].get("endsAt").is_none_or(|e| e.is_null()));
    assert!(alerts[1]["endsAt"].is_string());
    assert_eq!(alerts[0]["startsAt"], alerts[1]["startsAt"]);
    let m = metrics(&s).await;
    expect_metric(
        &m,
        "sloguard_incidents_total",
        &[("severity", "sev3"), ("kind", "circuit_breaker")],
        2.0,
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_blocked_stream_is_never_cached() {
    let (primary, p_script) = scripted().await;
    let (spare, s_script) = scripted().await;
    let mut leaking = chat_sse(&[
        "fine so far ",
        "key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX ",
        "more",
    ]);
    // A content type in capitals: still a stream, held back and not cacheable.
    leaking.content_type = "Text/Event-Stream";
    set(&p_script, "/v1/chat/completions", leaking);
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: egress, bind: 127.0.0.1:0, role: llm, route: llm}}
routes:
  llm: {{upstreams: [openai, spare], cache: {{}}}}
upstreams:
  openai: {{url: {}, protocol: openai}}
  spare: {{url: {}, protocol: openai}}
safety: {{action: block}}
",
        primary.url(),
        spare.url()
    );
    let s = Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap();
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("event: error") && !text.contains("sk-proj"),
        "{text}"
    );
    // Both upstreams fail now: the cache has nothing to give (the blocked stream is not in it).
    let mut failing = json(r#"{"error":"down"}"#);
    failing.status = 500;
    set(&p_script, "/v1/chat/completions", failing.clone());
    set(&s_script, "/v1/chat/completions", failing);
    let (status, headers, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(headers.get("x-sloguard-cache").is_none());
    assert!(!String::from_utf8_lossy(&body).contains("sk-proj"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_compressed_json_answer_is_inspected_and_blocked() {
    use std::io::Write;
    let (agent, _a) = scripted().await;
    let (llm, script) = scripted().await;
    let body = serde_json::json!({
        "id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "mail jane@acme.io"}, "finish_reason": "stop"}]
    })
    .to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let mut reply = json("");
    reply.chunks = vec![Bytes::from(gz.finish().unwrap())];
    reply.headers.push(("content-encoding", "gzip"));
    set(&script, "/v1/chat/completions", reply);
    let s = sidecar(&agent.url(), &llm.url(), "  action: block\n", "").await;
    let (status, headers, _) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sloguard-error"], "safety_blocked");
    let m = metrics_when(&s, |m| violations(m, "egress", "pii_email", "block") >= 1.0).await;
    assert_eq!(violations(&m, "egress", "pii_email", "block"), 1.0);
    s.shutdown().await;
}
