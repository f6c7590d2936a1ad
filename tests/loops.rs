//! The loop guard end to end on the `llm` role: both kinds of loop (too many LLM calls in one
//! task, the same tool call returned again and again), under `loop_action: record` and `block`,
//! keyed by the task id the agent forwards on its LLM calls; under `block` the refused call's
//! task fails on the `agent` role.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::{self, SimServer};
use sloguard::{Config, Sidecar};

/// An OpenAI-style provider answering each chat completion as the request's headers say:
/// `x-args: JSON` a tool call of `search` with those arguments (as written), and `x-args2` a
/// second, parallel one; otherwise text; `x-stream: 1` as an SSE stream; `x-fail: 1` a 500.
/// Counts the completions it made (not the failures).
async fn provider(served: Arc<AtomicUsize>) -> SimServer {
    sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let served = served.clone();
        async move {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (args, stream) = (header("x-args"), header("x-stream").is_some());
            let (args2, fail) = (header("x-args2"), header("x-fail").is_some());
            let _ = req.into_body().collect().await;
            if fail {
                let mut r = Response::new(sim::full("{\"error\":{\"type\":\"server_error\"}}"));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
            served.fetch_add(1, Ordering::SeqCst);
            let (body, content_type) = match (args, stream) {
                (Some(args), false) => {
                    let call = |id: &str, args: &str| {
                        serde_json::json!({"id": id, "type": "function", "function": {"name": "search", "arguments": args}})
                    };
                    let mut calls = vec![call("call_1", &args)];
                    calls.extend(args2.map(|a| call("call_2", &a)));
                    let m = serde_json::json!({"role": "assistant", "content": null, "tool_calls": calls});
                    (completion(m, "tool_calls"), "application/json")
                }
                (None, false) => {
                    let m = serde_json::json!({"role": "assistant", "content": "Done."});
                    (completion(m, "stop"), "application/json")
                }
                (Some(args), true) => {
                    // The arguments in two fragments, as providers stream them.
                    let (a, b) = args.split_at(args.len() / 2);
                    let calls = |f: serde_json::Value| {
                        serde_json::json!({"tool_calls": [{"index": 0, "function": f}]})
                    };
                    let events = [
                        chunk(calls(serde_json::json!({"name": "search", "arguments": a})), None),
                        chunk(calls(serde_json::json!({"arguments": b})), None),
                        chunk(serde_json::json!({}), Some("tool_calls")),
                        "data: [DONE]\n\n".to_owned(),
                    ];
                    (events.concat(), "text/event-stream")
                }
                (None, true) => {
                    let events = [
                        chunk(serde_json::json!({"content": "Done."}), None),
                        chunk(serde_json::json!({}), Some("stop")),
                        "data: [DONE]\n\n".to_owned(),
                    ];
                    (events.concat(), "text/event-stream")
                }
            };
            let mut r = Response::new(sim::full(Bytes::from(body)));
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r
        }
    })
    .await
    .unwrap()
}

fn completion(message: serde_json::Value, finish: &str) -> String {
    serde_json::json!({"id": "c", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
    .to_string()
}

fn chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    let c = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// An agent behind the sidecar's `agent` listener: `POST /run/N` with a task id makes N LLM
/// calls through the sidecar's `llm` listener with that id (and the request's `x-args`, if
/// any), 100 ms apart (it runs the tool), then says its task is completed; the body lists the
/// statuses its calls got.
async fn agent(llm_url: Arc<OnceLock<String>>) -> SimServer {
    sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let llm_url = llm_url.clone();
        async move {
            let n: usize = req.uri().path()["/run/".len()..].parse().unwrap();
            let id = req.headers()["x-agent-task-id"].clone();
            let args = req.headers().get("x-args").cloned();
            let _ = req.into_body().collect().await;
            let mut statuses = Vec::new();
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                let mut req =
                    Request::post(format!("{}/v1/chat/completions", llm_url.get().unwrap()))
                        .header("x-agent-task-id", id.clone());
                if let Some(args) = &args {
                    req = req.header("x-args", args.clone());
                }
                let req = req.body(full(r#"{"model":"m","messages":[]}"#)).unwrap();
                let resp = client().request(req).await.unwrap();
                statuses.push(resp.status().as_u16().to_string());
                let _ = body_bytes(resp).await;
            }
            let mut r = Response::new(sim::full(statuses.join(",")));
            r.headers_mut()
                .insert("x-agent-task-status", "completed".parse().unwrap());
            r
        }
    })
    .await
    .unwrap()
}

/// A sidecar with an `llm` listener called `proxy` in front of `provider`, and, given an
/// agent, an `agent` listener called `inbound` in front of it.
async fn sidecar(provider: &SimServer, agent: Option<&SimServer>, tasks: &str) -> Sidecar {
    let (inbound, route, upstream) = match agent {
        Some(a) => (
            "  - {name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}\n",
            "  agent: {upstreams: [agent]}\n".to_owned(),
            format!("  agent: {{url: {}}}\n", a.url()),
        ),
        None => ("", String::new(), String::new()),
    };
    let yaml = format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: proxy, bind: 127.0.0.1:0, role: llm, route: llm}}
{inbound}routes:
  llm: {{upstreams: [openai]}}
{route}upstreams:
  openai: {{url: {}, protocol: openai}}
{upstream}tasks:
{tasks}",
        provider.url()
    );
    Sidecar::start(Config::parse("test", &yaml).unwrap())
        .await
        .unwrap()
}

/// One LLM call of task `id` (none: without a task id) with the given test headers.
async fn llm_call(s: &Sidecar, id: Option<&str>, headers: &[(&str, &str)]) -> (StatusCode, Bytes) {
    let mut req = Request::post(proxy_url(s, "/v1/chat/completions"));
    if let Some(id) = id {
        req = req.header("x-agent-task-id", id);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = full(
        r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"search"}}]}"#,
    );
    let before = answered(&metrics(s).await);
    let resp = client().request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let refused = resp.headers().get("x-sloguard-error").cloned();
    let dont_retry = resp.headers().get("x-should-retry").cloned();
    let body = body_bytes(resp).await;
    if status == StatusCode::TOO_MANY_REQUESTS {
        assert_eq!(refused.unwrap(), "loop_detected");
        assert_eq!(
            dont_retry.unwrap(),
            "false",
            "SDKs must not retry a cut task"
        );
    }
    // The client can hold the last byte a moment before the sidecar has counted the response
    // (and told the loop guard its tool calls); an agent runs the tool first. Wait as long.
    metrics_when(s, |m| answered(m) > before).await;
    (status, body)
}

/// Requests the `llm` listener has counted.
fn answered(m: &str) -> f64 {
    metric(m, "agent_requests_total", &[("listener", "proxy")])
}

fn loops(m: &str, kind: &str) -> f64 {
    metric(
        m,
        "agent_loops_detected_total",
        &[("agent", "test-agent"), ("kind", kind)],
    )
}

#[tokio::test]
async fn max_llm_calls_under_record_is_counted_once_and_calls_go_on() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let s = sidecar(&p, None, "  max_llm_calls: 3\n").await;
    for _ in 0..5 {
        assert_eq!(llm_call(&s, Some("T"), &[]).await.0, StatusCode::OK);
    }
    // Other tasks, and calls without a task id, have counts of their own, or none.
    for _ in 0..3 {
        assert_eq!(llm_call(&s, Some("U"), &[]).await.0, StatusCode::OK);
    }
    for _ in 0..6 {
        assert_eq!(llm_call(&s, None, &[]).await.0, StatusCode::OK);
    }
    assert_eq!(served.load(Ordering::SeqCst), 14);
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "max_llm_calls"), 1.0);
    assert_eq!(loops(&m, "repeated_tool_call"), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn max_llm_calls_under_block_refuses_the_next_calls_and_fails_the_agents_task() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let llm_url = Arc::new(OnceLock::new());
    let a = agent(llm_url.clone()).await;
    let s = sidecar(&p, Some(&a), "  max_llm_calls: 2\n  loop_action: block\n").await;
    llm_url.set(proxy_url(&s, "")).unwrap();
    let inbound = format!("http://{}/run/4", s.listener_addr("inbound").unwrap());
    let req = Request::post(inbound)
        .header("x-agent-task-id", "task-7")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Two calls allowed; the third crosses the limit and is refused, and so is the fourth.
    assert_eq!(body_bytes(resp).await, "200,200,429,429");
    assert_eq!(
        served.load(Ordering::SeqCst),
        2,
        "refused calls reach no provider"
    );
    let m = metrics_when(&s, |m| metric(m, "agent_tasks_failed_total", &[]) >= 1.0).await;
    assert_eq!(loops(&m, "max_llm_calls"), 1.0);
    // The agent said completed; the task it could not finish counts failed.
    expect_metric(&m, "agent_tasks_started", &[], 1.0);
    expect_metric(&m, "agent_tasks_completed", &[], 0.0);
    expect_metric(&m, "agent_tasks_failed_total", &[], 1.0);
    // The refusals are the agent's doing, on the llm listener, and no LLM call of a provider.
    expect_metric(
        &m,
        "agent_requests_total",
        &[("listener", "proxy"), ("status", "4xx"), ("cause", "agent")],
        2.0,
    );
    expect_metric(
        &m,
        "gen_ai_client_operation_duration_seconds_count",
        &[("upstream", "openai")],
        2.0,
    );
    // The task ended: a new task of the same id starts counting again.
    let resp = client()
        .request(
            Request::post(format!(
                "http://{}/run/2",
                s.listener_addr("inbound").unwrap()
            ))
            .header("x-agent-task-id", "task-7")
            .body(empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(body_bytes(resp).await, "200,200");
    s.shutdown().await;
}

#[tokio::test]
async fn the_same_tool_call_however_spelled_is_a_loop_under_record() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let s = sidecar(&p, None, "  max_repeated_tool_calls: 3\n").await;
    // One call, spelled three ways, streamed and not.
    let spellings = [
        r#"{"q":"weather in Paris","limit":5}"#,
        r#"{ "limit": 5.0, "q": "weather in Paris" }"#,
        r#"{"q":"weather in \u0050aris","limit":5}"#,
    ];
    let tool = |args| [("x-args", args)];
    assert_eq!(
        llm_call(&s, Some("T"), &tool(spellings[0])).await.0,
        StatusCode::OK
    );
    let stream = [("x-args", spellings[1]), ("x-stream", "1")];
    assert_eq!(llm_call(&s, Some("T"), &stream).await.0, StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 0.0, "two in a row");
    llm_call(&s, Some("T"), &tool(spellings[2])).await;
    let m = metrics_when(&s, |m| loops(m, "repeated_tool_call") >= 1.0).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 1.0, "the third in a row");
    // Record: the calls go on; the same run is not counted again.
    let (status, body) = llm_call(&s, Some("T"), &tool(spellings[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("tool_calls"));

    // Runs broken by another call, or by an answer without a tool call, are no loop.
    let other = r#"{"q":"weather in Lyon","limit":5}"#;
    for (i, breaker) in [&tool(other)[..], &[][..], &[("x-stream", "1")][..]]
        .into_iter()
        .enumerate()
    {
        let id = format!("V{i}");
        llm_call(&s, Some(&id), &tool(spellings[0])).await;
        llm_call(&s, Some(&id), &tool(spellings[0])).await;
        llm_call(&s, Some(&id), breaker).await;
        llm_call(&s, Some(&id), &tool(spellings[0])).await;
        llm_call(&s, Some(&id), &tool(spellings[0])).await;
    }
    // Calls without a task id are not watched.
    for _ in 0..4 {
        llm_call(&s, None, &tool(spellings[0])).await;
    }
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 1.0);
    assert_eq!(loops(&m, "max_llm_calls"), 0.0);
    assert_eq!(served.load(Ordering::SeqCst), 4 + 15 + 4);
    s.shutdown().await;
}

#[tokio::test]
async fn a_repeated_tool_call_under_block_refuses_the_tasks_next_call() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let s = sidecar(
        &p,
        None,
        "  max_repeated_tool_calls: 2\n  loop_action: block\n",
    )
    .await;
    let tool = [("x-args", r#"{"path":"/etc/hosts"}"#)];
    assert_eq!(llm_call(&s, Some("T"), &tool).await.0, StatusCode::OK);
    assert_eq!(llm_call(&s, Some("T"), &tool).await.0, StatusCode::OK);
    // The second identical call was returned: the task loops, whatever it asks next.
    let (status, body) = llm_call(&s, Some("T"), &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["type"], "loop_detected");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_repeated_tool_calls"), "{message}");
    assert_eq!(
        llm_call(&s, Some("T"), &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Other tasks go on.
    assert_eq!(llm_call(&s, Some("U"), &tool).await.0, StatusCode::OK);
    assert_eq!(served.load(Ordering::SeqCst), 3);
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn repeated_tool_calls_under_block_fail_the_agents_task() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let llm_url = Arc::new(OnceLock::new());
    let a = agent(llm_url.clone()).await;
    let tasks = "  max_repeated_tool_calls: 3\n  loop_action: block\n";
    let s = sidecar(&p, Some(&a), tasks).await;
    llm_url.set(proxy_url(&s, "")).unwrap();
    let req = Request::post(format!(
        "http://{}/run/5",
        s.listener_addr("inbound").unwrap()
    ))
    .header("x-agent-task-id", "task-9")
    .header("x-args", r#"{"q":"status of order 1042"}"#)
    .body(empty())
    .unwrap();
    let resp = client().request(req).await.unwrap();
    // The third identical call came back: the fourth and fifth are refused.
    assert_eq!(body_bytes(resp).await, "200,200,200,429,429");
    assert_eq!(served.load(Ordering::SeqCst), 3);
    let m = metrics_when(&s, |m| metric(m, "agent_tasks_failed_total", &[]) >= 1.0).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 1.0);
    assert_eq!(loops(&m, "max_llm_calls"), 0.0);
    expect_metric(&m, "agent_tasks_completed", &[], 0.0);
    expect_metric(&m, "agent_tasks_failed_total", &[], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn failed_calls_neither_count_nor_break_a_run() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let tasks = "  max_llm_calls: 2\n  max_repeated_tool_calls: 2\n";
    let s = sidecar(&p, None, tasks).await;
    let tool = ("x-args", r#"{"q":"a"}"#);
    assert_eq!(llm_call(&s, Some("T"), &[tool]).await.0, StatusCode::OK);
    // Two failures (an SDK retrying a provider's 500s): not reasoning steps.
    for _ in 0..2 {
        let (status, _) = llm_call(&s, Some("T"), &[tool, ("x-fail", "1")]).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "max_llm_calls"), 0.0, "one call answered so far");
    assert_eq!(llm_call(&s, Some("T"), &[tool]).await.0, StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(
        loops(&m, "repeated_tool_call"),
        1.0,
        "the failures broke no run"
    );
    assert_eq!(loops(&m, "max_llm_calls"), 0.0, "two calls answered");
    llm_call(&s, Some("T"), &[]).await;
    assert_eq!(loops(&metrics(&s).await, "max_llm_calls"), 1.0, "the third");
    s.shutdown().await;
}

#[tokio::test]
async fn a_call_that_falls_back_counts_once() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let yaml = config_head("", "proxy", "llm", "llm: {upstreams: [down, openai]}")
        + &format!(
            "  down: {{url: http://{}, protocol: openai}}
  openai: {{url: {}, protocol: openai}}
tasks:
  max_llm_calls: 2
  max_repeated_tool_calls: 2
",
            closed_port(),
            p.url()
        );
    let s = start_yaml(&yaml).await;
    let tool = [("x-args", r#"{"q":"a"}"#)];
    // Each call fails on `down` first, then is answered by `openai`: one call, one response.
    assert_eq!(llm_call(&s, Some("T"), &tool).await.0, StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 0.0);
    assert_eq!(llm_call(&s, Some("T"), &tool).await.0, StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(loops(&m, "repeated_tool_call"), 1.0, "the second in a row");
    assert_eq!(
        loops(&m, "max_llm_calls"),
        0.0,
        "two calls, not four attempts"
    );
    expect_metric(
        &m,
        "sloguard_upstream_requests_total",
        &[("upstream", "down")],
        2.0,
    );
    llm_call(&s, Some("T"), &[]).await;
    assert_eq!(loops(&metrics(&s).await, "max_llm_calls"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn parallel_tool_calls_are_judged_as_one_set_per_response() {
    let served = Arc::new(AtomicUsize::new(0));
    let p = provider(served.clone()).await;
    let s = sidecar(&p, None, "  max_repeated_tool_calls: 2\n").await;
    let (a, b) = (r#"{"q":"a"}"#, r#"{"q":"b"}"#);
    // The same two calls in one response: one response, not two in a row.
    llm_call(&s, Some("T"), &[("x-args", a), ("x-args2", a)]).await;
    assert_eq!(loops(&metrics(&s).await, "repeated_tool_call"), 0.0);
    // The same pair again, in the other order, on another task: a loop of parallel calls.
    llm_call(&s, Some("U"), &[("x-args", a), ("x-args2", b)]).await;
    llm_call(&s, Some("U"), &[("x-args", b), ("x-args2", a)]).await;
    assert_eq!(loops(&metrics(&s).await, "repeated_tool_call"), 1.0);
    // A different set (one call of the pair) is not the same response.
    llm_call(&s, Some("V"), &[("x-args", a), ("x-args2", b)]).await;
    llm_call(&s, Some("V"), &[("x-args", a)]).await;
    assert_eq!(loops(&metrics(&s).await, "repeated_tool_call"), 1.0);
    s.shutdown().await;
}
