//! What sloguard takes from upstreams and clients, and what it does not: `x-sloguard-*` headers
//! are its own, in either direction, and a provider that says "200" but fails inside its answer
//! (an error event in the stream) has failed — for the SLIs and the circuit breaker alike.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::{Arc, Mutex};

use common::scripted::*;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use sloguard::{Config, Sidecar};

#[tokio::test]
async fn x_sloguard_headers_from_an_upstream_or_a_client_do_not_pass() {
    // An agent that claims to be the cache and an error of sloguard's, and notes what it got.
    let seen: Arc<Mutex<HeaderMap>> = Arc::default();
    let s2 = seen.clone();
    let agent = sloguard::sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        *s2.lock().unwrap() = req.headers().clone();
        async move {
            let mut r = Response::new(sloguard::sim::full("{}"));
            for (k, v) in [
                ("x-sloguard-upstream", "cache"),
                ("x-sloguard-cache", "hit"),
                ("x-sloguard-error", "circuit_open"),
                ("x-sloguard-fallback", "5xx"),
                ("x-agent-note", "kept"),
            ] {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            r
        }
    })
    .await
    .unwrap();
    let s = agent_sidecar(&agent.url(), "").await;
    let req = Request::post(proxy_url(&s, "/"))
        .header("x-sloguard-upstream", "forged")
        .header("x-sloguard-fallback", "circuit_open")
        .header("x-client-note", "kept")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let h = resp.headers().clone();
    let _ = body_bytes(resp).await;
    assert_eq!(h["x-sloguard-upstream"], "agent");
    for name in [
        "x-sloguard-cache",
        "x-sloguard-error",
        "x-sloguard-fallback",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the client");
    }
    assert_eq!(h["x-agent-note"], "kept");
    let got = seen.lock().unwrap().clone();
    assert!(
        got.keys().all(|k| !k.as_str().starts_with("x-sloguard-")),
        "{got:?}"
    );
    assert_eq!(got["x-client-note"], "kept");
    s.shutdown().await;
}

/// A sidecar with an OpenAI and an Anthropic egress listener, each in front of one scripted
/// provider whose breaker opens after two failures.
async fn providers() -> (Sidecar, Script, sloguard::sim::SimServer) {
    let (llm, script) = scripted().await;
    let breaker = "circuit_breaker: {consecutive_failures: 2}";
    let u = llm.url();
    let yaml = llm_pair_yaml(
        &format!("{{url: {u}, protocol: openai, {breaker}}}"),
        &format!("{{url: {u}, protocol: anthropic, {breaker}}}"),
        "",
    );
    let s = Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap();
    (s, script, llm)
}

#[tokio::test]
async fn an_error_event_after_a_200_is_a_failed_request() {
    let (s, script, _llm) = providers().await;
    set(
        &script,
        "/v1/messages",
        sse(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ]),
    );
    set(
        &script,
        "/v1/chat/completions",
        sse(&[
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n",
        ]),
    );
    for (listener, path) in [
        ("anthropic", "/v1/messages"),
        ("openai", "/v1/chat/completions"),
    ] {
        for _ in 0..2 {
            let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
            let (status, _, bytes) = post_as(&url(&s, listener, path), None, body).await;
            // The client gets what the provider sent: a 200, and its error event.
            assert_eq!(status, StatusCode::OK);
            assert!(String::from_utf8_lossy(&bytes).contains("error"));
        }
    }
    let m = metrics_when(&s, |m| {
        metric(m, "agent_requests_total", &[("status", "5xx")]) >= 4.0
    })
    .await;
    for listener in ["anthropic", "openai"] {
        let l = ("listener", listener);
        expect_metric(
            &m,
            "agent_requests_total",
            &[l, ("status", "5xx"), ("cause", "upstream")],
            2.0,
        );
        expect_metric(&m, "agent_requests_total", &[l, ("status", "2xx")], 0.0);
        let u = ("upstream", listener);
        expect_metric(
            &m,
            "sloguard_upstream_requests_total",
            &[u, ("outcome", "5xx")],
            2.0,
        );
        expect_metric(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &[u, ("error_type", "5xx")],
            2.0,
        );
    }
    // Two failures in a row: both circuits are open; the next call is refused at once.
    let (status, headers, _) =
        post_as(&url(&s, "openai", "/v1/chat/completions"), None, "{}").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-sloguard-error"], "circuit_open");
    let (status, _, _) = post_as(&url(&s, "anthropic", "/v1/messages"), None, "{}").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    s.shutdown().await;
}

#[tokio::test]
async fn a_clean_stream_is_still_a_success() {
    let (s, script, _llm) = providers().await;
    set(
        &script,
        "/v1/chat/completions",
        chat_sse(&["Hello", " there"]),
    );
    for _ in 0..3 {
        let (status, _, _) = post_as(&url(&s, "openai", "/v1/chat/completions"), None, "{}").await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) >= 3.0).await;
    expect_metric(&m, "agent_requests_total", &[("status", "2xx")], 3.0);
    expect_outcome(&m, "ok", 3.0);
    s.shutdown().await;
}
