//! Task tracking end to end on the `agent` role: tasks of several requests, the agent's verdict
//! from its status header or from the status code, abandoned tasks, and the article's
//! task-completion SLI computed from `/metrics` against the scripted outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use sloguard::Sidecar;

#[tokio::test]
async fn multi_request_tasks_and_verdicts_give_the_articles_completion_ratio() {
    let a = verdict_agent().await;
    let s = agent_sidecar(&a.url(), "").await;
    // Task A: two steps in progress, then completed by the agent's header.
    call_task(&s, "/200/in_progress", Some("A")).await;
    call_task(&s, "/200/in_progress", Some("A")).await;
    call_task(&s, "/200/completed", Some("A")).await;
    // Task B: in progress, then the agent says failed (on a 200).
    call_task(&s, "/200/in_progress", Some("B")).await;
    call_task(&s, "/200/failed", Some("B")).await;
    // Task C: no header: a 5xx fails it.
    call_task(&s, "/200/in_progress", Some("C")).await;
    assert_eq!(
        call_task(&s, "/503/none", Some("C")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Without an id: a task of one request each; a 2xx completes, a 5xx fails.
    call_task(&s, "/200/none", None).await;
    call_task(&s, "/200/none", None).await;
    call_task(&s, "/500/none", None).await;
    // Task D: still in progress (a 4xx leaves it so).
    call_task(&s, "/200/in_progress", Some("D")).await;
    call_task(&s, "/429/none", Some("D")).await;
    let m = metrics_when(&s, |m| {
        task_counts(m)[0] >= 7.0 && task_counts(m)[1] + task_counts(m)[2] >= 6.0
    })
    .await;
    // Started: A, B, C, D and three of one request. Completed: A and two. Failed: B, C, one.
    assert_eq!(task_counts(&m), [7.0, 3.0, 3.0, 0.0]);
    // The article's query, over these counters: completed / started.
    let ratio = task_counts(&m)[1] / task_counts(&m)[0];
    assert!((ratio - 3.0 / 7.0).abs() < 1e-9);
    // A task id never becomes a label.
    assert!(!m.contains("\"A\""));
    s.shutdown().await;
}

#[tokio::test]
async fn an_idle_in_progress_task_is_abandoned_after_stuck_after() {
    let a = verdict_agent().await;
    let s = agent_sidecar(&a.url(), "tasks: {stuck_after: 2s}\n").await;
    call_task(&s, "/200/in_progress", Some("idle")).await;
    call_task(&s, "/200/in_progress", Some("busy")).await;
    // `busy` keeps going (a request every 300 ms, far inside stuck_after), `idle` does not.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call_task(&s, "/200/in_progress", Some("busy")).await;
    }
    let m = metrics_when(&s, |m| task_counts(m)[3] >= 1.0).await;
    assert_eq!(task_counts(&m), [2.0, 0.0, 0.0, 1.0]);
    call_task(&s, "/200/completed", Some("busy")).await;
    let m = metrics_when(&s, |m| task_counts(m)[1] >= 1.0).await;
    assert_eq!(task_counts(&m), [2.0, 1.0, 0.0, 1.0]);
    s.shutdown().await;
}

#[tokio::test]
async fn a_full_table_evicts_the_stalest_task_as_abandoned() {
    let a = verdict_agent().await;
    let s = agent_sidecar(&a.url(), "tasks: {max_tasks: 2}\n").await;
    for id in ["t1", "t2", "t3", "t4"] {
        call_task(&s, "/200/in_progress", Some(id)).await;
    }
    let m = metrics_when(&s, |m| task_counts(m)[3] >= 2.0).await;
    assert_eq!(task_counts(&m), [4.0, 0.0, 0.0, 2.0]);
    expect_metric(&m, "sloguard_tasks_evicted_total", &[], 2.0);
    // t1 was evicted: its late verdict ends nothing; t4 is live.
    call_task(&s, "/200/completed", Some("t1")).await;
    call_task(&s, "/200/completed", Some("t4")).await;
    let m = metrics_when(&s, |m| task_counts(m)[0] >= 5.0).await;
    // t1 came back as a new task (pushing out t3, now the stalest) and completed; t4 completed.
    assert_eq!(task_counts(&m), [5.0, 2.0, 0.0, 3.0]);
    s.shutdown().await;
}

#[tokio::test]
async fn agent_healthz_is_503_while_a_request_waits_past_stuck_after_and_200_again() {
    let a = verdict_agent().await;
    let s = agent_sidecar(&a.url(), "tasks: {stuck_after: 1s}\n").await;
    assert_eq!(agent_health(&s).await.0, StatusCode::OK);
    let url = proxy_url(&s, "/slow/200/completed");
    let waiting = tokio::spawn(async move {
        let resp = client()
            .request(Request::post(url).body(empty()).unwrap())
            .await
            .unwrap();
        resp.status()
    });
    let stuck = async || agent_health(&s).await.0 == StatusCode::SERVICE_UNAVAILABLE;
    wait_until("the agent is reported stuck", 5, stuck).await;
    let (status, body) = agent_health(&s).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "stuck");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("without an answer"),
        "{body}"
    );
    expect_metric(&metrics(&s).await, "sloguard_agent_stuck", &[], 1.0);
    // The agent answers (and completes the task): healthy again.
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    let (status, body) = agent_health(&s).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_metric(&metrics(&s).await, "sloguard_agent_stuck", &[], 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn agent_healthz_is_503_after_tasks_are_abandoned_with_none_completed() {
    let a = verdict_agent().await;
    let s = agent_sidecar(&a.url(), "tasks: {stuck_after: 1s}\n").await;
    call_task(&s, "/200/in_progress", Some("left")).await;
    // Abandoned by the sweep once idle past 1 s; then stuck, since nothing completed.
    let stuck = async || agent_health(&s).await.0 == StatusCode::SERVICE_UNAVAILABLE;
    wait_until("the agent is reported stuck", 5, stuck).await;
    let body = agent_health(&s).await.1;
    assert!(
        body["reason"].as_str().unwrap().contains("abandoned"),
        "{body}"
    );
    // A completed task clears it.
    call_task(&s, "/200/completed", None).await;
    let m = metrics_when(&s, |m| metric(m, "agent_tasks_completed", &[]) >= 1.0).await;
    assert_eq!(metric(&m, "agent_tasks_abandoned_total", &[]), 1.0);
    assert_eq!(agent_health(&s).await.0, StatusCode::OK);
    s.shutdown().await;
}

/// A sidecar whose agent a human can disable (admin token `s3cret`, in a directory of its own,
/// returned for removal), with `stuck_after`.
async fn switchable(
    agent_url: &str,
    tag: &str,
    stuck_after: &str,
) -> (Sidecar, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sloguard-tasks-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let admin = format!(", token_file: {}", token.display());
    let yaml = config_head(&admin, "proxy", "agent", "agent: {upstreams: [agent]}")
        + &format!(
            "  agent: {{url: {agent_url}}}
safety: {{action: block, kill_switch: {{violations: 100, within: 1m}}}}
tasks: {{stuck_after: {stuck_after}}}
"
        );
    let s = start_yaml(&yaml).await;
    (s, dir)
}

/// `POST` to the admin port with the token.
async fn admin(s: &Sidecar, path: &str) -> StatusCode {
    let req = Request::post(format!("http://{}{path}", s.admin_addr))
        .header("authorization", "Bearer s3cret")
        .body(empty())
        .unwrap();
    client().request(req).await.unwrap().status()
}

#[tokio::test]
async fn tasks_left_while_the_kill_switch_holds_do_not_make_the_agent_stuck() {
    let a = verdict_agent().await;
    let (s, dir) = switchable(&a.url(), "kill", "1s").await;
    call_task(&s, "/200/in_progress", Some("cut-off")).await;
    // A human silences the agent: the task's next request would go nowhere near it.
    assert_eq!(admin(&s, "/admin/agent/disable").await, StatusCode::OK);
    // Abandoned by the sweep, with none completed: yet the agent is disabled, not stuck.
    let m = metrics_when(&s, |m| task_counts(m)[3] >= 1.0).await;
    assert_eq!(task_counts(&m), [1.0, 0.0, 0.0, 1.0]);
    let (status, body) = agent_health(&s).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tasks_cut_off_by_the_kill_switch_do_not_make_the_agent_stuck_after_it_is_lifted() {
    let a = verdict_agent().await;
    let (s, dir) = switchable(&a.url(), "lift", "2s").await;
    call_task(&s, "/200/in_progress", Some("cut-off")).await;
    assert_eq!(admin(&s, "/admin/agent/disable").await, StatusCode::OK);
    // A human lifts the switch soon after (their pause is the behaviour under test, not a wait);
    // the task — cut off while the switch held — is abandoned only after that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin(&s, "/admin/agent/enable").await, StatusCode::OK);
    let m = metrics_when(&s, |m| task_counts(m)[3] >= 1.0).await;
    assert_eq!(task_counts(&m), [1.0, 0.0, 0.0, 1.0]);
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    let (status, body) = agent_health(&s).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
