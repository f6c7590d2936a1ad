//! The agent's liveness probe (`GET /agent/healthz`, which the agent's livenessProbe asks) can be
//! turned by nothing but the agent's own silence: not by a client's 404 or 429, a client that
//! leaves, a slow upload, nor a flood of task ids. Each test first does what a hostile (or just
//! clumsy) client can do, then checks that the probe still says the agent is fine — and the
//! last ones that an agent that really is silent is still found stuck.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::ChannelBody;
use sloguard::{Config, Sidecar};

/// A sidecar in front of `agent_url` whose `proxy` listener has `limits`, with `extra` sections.
async fn sidecar(agent_url: &str, limits: &str, extra: &str) -> Sidecar {
    let limits = if limits.is_empty() {
        String::new()
    } else {
        format!(", limits: {{{limits}}}")
    };
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: proxy, bind: 127.0.0.1:0, role: agent, route: agent{limits}}}
routes:
  agent: {{upstreams: [agent]}}
upstreams:
  agent: {{url: {agent_url}}}
shutdown: {{grace_period: 1s}}
{extra}"
    );
    Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap()
}

/// Asserts that `/agent/healthz` answers 200 now and at every look for `span` (the sweep runs
/// every second, so a span past a second sees it too): the wall clock has to pass here, for the
/// product's own `stuck_after` to have had its chance.
async fn healthy_throughout(s: &Sidecar, span: Duration, what: &str) {
    let mut last = serde_json::Value::Null;
    let healthy = holds_throughout(span, async || {
        let (status, body) = agent_health(s).await;
        last = body;
        status == StatusCode::OK
    })
    .await;
    assert!(healthy, "{what}: {last}");
}

/// Waits up to 5 s for `/agent/healthz` to answer 503, and checks that it is for a request
/// without an answer.
async fn stuck_without_an_answer(s: &Sidecar) {
    let body = becomes_stuck(s).await;
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("without an answer"), "{body}");
}

/// Waits up to 5 s for `/agent/healthz` to answer 503; its body.
async fn becomes_stuck(s: &Sidecar) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let stuck = holds_within(5, async || {
        let (status, body) = agent_health(s).await;
        last = body;
        status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(stuck, "never stuck: {last}");
    last
}

#[tokio::test]
async fn a_clients_404_or_429_on_a_request_without_a_task_id_does_not_make_the_agent_stuck() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "", "tasks: {stuck_after: 1s}\n").await;
    assert_eq!(call_task(&s, "/404", None).await, StatusCode::NOT_FOUND);
    assert_eq!(
        call_task(&s, "/429", None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    healthy_throughout(&s, Duration::from_millis(1500), "after a 404 and a 429").await;
    // The agent took neither on as a task: nothing started, nothing abandoned.
    let m = metrics(&s).await;
    assert_eq!(task_counts(&m), [0.0; 4]);
    expect_metric(&m, "agent_requests_total", &[("status", "4xx")], 2.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_does_not_make_the_agent_stuck() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "", "tasks: {stuck_after: 1s}\n").await;
    for id in [None, Some("walked-away")] {
        let mut req = Request::post(proxy_url(&s, "/slow/200/completed"));
        if let Some(id) = id {
            req = req.header("x-agent-task-id", id);
        }
        let pending = client().request(req.body(empty()).unwrap());
        // The client gives up after 200 ms (its connection closes with the dropped future).
        assert!(tokio::time::timeout(Duration::from_millis(200), pending)
            .await
            .is_err());
    }
    let m = metrics_when(&s, |m| {
        metric(m, "agent_requests_total", &[("status", "4xx")]) >= 2.0
    })
    .await;
    expect_metric(&m, "agent_requests_total", &[("status", "4xx")], 2.0);
    healthy_throughout(&s, Duration::from_millis(1500), "after two clients left").await;
    assert_eq!(task_counts(&metrics(&s).await), [0.0; 4]);
    s.shutdown().await;
}

/// Sends a POST whose body comes as `chunks` pieces, `gap` apart; returns the status and when the
/// upload began.
async fn slow_upload(
    s: &Sidecar,
    path: &str,
    chunks: usize,
    gap: Duration,
) -> tokio::task::JoinHandle<StatusCode> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = Request::post(proxy_url(s, path))
        .body(ChannelBody(rx).boxed())
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..chunks {
            if tx.send(Bytes::from_static(b"{\"x\":1}\n")).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    tokio::spawn(async move {
        let resp = client().request(req).await.unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    })
}

#[tokio::test]
async fn a_slow_upload_is_the_clients_time_not_the_agent_waiting() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "", "tasks: {stuck_after: 1s}\n").await;
    // 2 s of upload, a chunk every 250 ms: longer than stuck_after, yet the agent has nothing to
    // answer until the body is whole.
    let upload = slow_upload(&s, "/200/completed", 8, Duration::from_millis(250)).await;
    healthy_throughout(&s, Duration::from_millis(1800), "during a slow upload").await;
    assert_eq!(upload.await.unwrap(), StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn an_upload_longer_than_body_timeout_gets_408() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "body_timeout: 1s", "tasks: {stuck_after: 1s}\n").await;
    let started = std::time::Instant::now();
    // A chunk every 300 ms (never idle for long) for 3 s: only the body's own deadline ends it.
    let upload = slow_upload(&s, "/200/completed", 10, Duration::from_millis(300)).await;
    assert_eq!(upload.await.unwrap(), StatusCode::REQUEST_TIMEOUT);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let m = metrics(&s).await;
    expect_requests(&m, "4xx", "none", 1.0);
    // The client's slowness is no attempt against the agent.
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 0.0);
    assert_eq!(agent_health(&s).await.0, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_task_ids_that_evicts_live_tasks_does_not_make_the_agent_stuck() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url(), "", "tasks: {stuck_after: 2s, max_tasks: 4}\n").await;
    assert_eq!(
        call_task(&s, "/200/in_progress", Some("real")).await,
        StatusCode::OK
    );
    // Requests the agent refuses are no tasks: they take no room from the real one.
    for i in 0..20 {
        call_task(&s, "/404", Some(&format!("junk-{i}"))).await;
    }
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_tasks_evicted_total", &[], 0.0);
    // Ids the agent takes on fill the table and push the real task out...
    for i in 0..20 {
        call_task(&s, "/200/in_progress", Some(&format!("flood-{i}"))).await;
    }
    let m = metrics(&s).await;
    assert!(
        metric(&m, "sloguard_tasks_evicted_total", &[]) >= 17.0,
        "{m}"
    );
    // ... which is counted, but is no sign of the agent being stuck.
    healthy_throughout(&s, Duration::from_millis(1200), "after the flood").await;
    s.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_does_not_answer_after_the_upload_is_still_stuck() {
    // The agent reads the request head and then says nothing.
    let agent = stalling_upstream(b"").await;
    let s = sidecar(&format!("http://{agent}"), "", "tasks: {stuck_after: 1s}\n").await;
    let upload = slow_upload(&s, "/", 2, Duration::from_millis(100)).await;
    stuck_without_an_answer(&s).await;
    upload.abort();
    s.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_stops_reading_the_upload_is_stuck() {
    // The agent reads the head and then neither reads the body nor answers: a large upload fills
    // the socket buffers and stops — the agent's doing, not the client's.
    let agent = stalling_upstream(b"").await;
    let s = sidecar(&format!("http://{agent}"), "", "tasks: {stuck_after: 1s}\n").await;
    let url = proxy_url(&s, "/");
    let upload = tokio::spawn(async move {
        let body = RepeatBody {
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            remaining: 64 << 20,
        };
        let _ = client()
            .request(Request::post(url).body(body.boxed()).unwrap())
            .await;
    });
    stuck_without_an_answer(&s).await;
    upload.abort();
    s.shutdown().await;
}
