//! The local SLO view end to end: `GET /slo` and the `sloguard_slo_*` gauges after known
//! traffic through a real sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use http::StatusCode;
use sloguard::Sidecar;

async fn sidecar(agent_url: &str) -> Sidecar {
    agent_sidecar(
        agent_url,
        "slos:
  - {name: availability, sli: availability, target: 0.95, window: 30d}
  - {name: latency, sli: latency, threshold: 5s, target: 0.99, window: 7d, severity: sev1}
  - {name: tasks, sli: task_completion, target: 0.5}
",
    )
    .await
}

async fn slo_json(s: &Sidecar) -> serde_json::Value {
    let resp = get(&client(), &format!("http://{}/slo", s.admin_addr)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    serde_json::from_slice(&body_bytes(resp).await).unwrap()
}

#[tokio::test]
async fn slo_reports_each_slos_windows_budget_and_state() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url()).await;
    // Let the engine take its baseline, then 90 successes and 10 failures of the agent's own.
    let baseline = async || {
        let r = slo_json(&s).await;
        (0..3).all(|i| r["slos"][i]["counting"] == true)
    };
    wait_until("every SLO's baseline", 5, baseline).await;
    ninety_good_ten_bad(&s).await;
    // Counted once the engine's next tick reads them.
    // Each request is counted, then its latency recorded: a tick can fall between them.
    let counted = async || {
        let r = slo_json(&s).await;
        (0..3).all(|i| r["slos"][i]["windows"]["5m"]["total"] == 100)
    };
    // Past the deadline, the assertions below say which count is off.
    holds_within(5, counted).await;
    let report = slo_json(&s).await;
    let avail = &report["slos"][0];
    assert_eq!(avail["name"], "availability");
    assert_eq!(avail["sli"], "availability");
    assert_eq!(avail["target"], 0.95);
    assert_eq!(avail["window"], "30d");
    assert_eq!(avail["severity"], "sev2", "the article's default");
    // The agent listener's requests, by default; tasks count no listener's.
    assert_eq!(avail["listeners"], serde_json::json!(["proxy"]));
    assert_eq!(report["slos"][2]["listeners"], serde_json::Value::Null);
    for w in ["5m", "1h", "6h", "since_start"] {
        let win = &avail["windows"][w];
        assert_eq!(win["good"], 90, "{w}");
        assert_eq!(win["total"], 100, "{w}");
        assert!((win["sli"].as_f64().unwrap() - 0.9).abs() < 1e-9, "{w}");
        // 10% errors on a 5% budget: burning twice as fast as the window allows.
        assert!(
            (win["burn_rate"].as_f64().unwrap() - 2.0).abs() < 1e-9,
            "{w}"
        );
    }
    // 10 bad where 5 were allowed: the budget is overspent, by 100%.
    assert!((avail["budget_remaining"].as_f64().unwrap() + 1.0).abs() < 1e-9);
    assert_eq!(avail["state"], "breach");
    // Every request took far less than 5s: the latency SLO is fine, at its own severity.
    let latency = &report["slos"][1];
    assert_eq!(latency["windows"]["5m"]["good"], 100);
    assert_eq!(latency["budget_remaining"], 1.0);
    assert_eq!(latency["state"], "ok");
    assert_eq!(latency["severity"], "sev1");
    assert_eq!(latency["window"], "7d");
    // Each request is a task of its own here (no task id): 90 completed of 100.
    let tasks = &report["slos"][2];
    assert_eq!(tasks["windows"]["5m"]["total"], 100);
    assert_eq!(tasks["windows"]["5m"]["good"], 90);
    // The gauges say the same.
    let m = metrics(&s).await;
    let gauge = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    let remaining = "sloguard_slo_error_budget_remaining";
    assert!((gauge(remaining, &[("slo", "availability")]) + 1.0).abs() < 1e-9);
    assert_eq!(gauge(remaining, &[("slo", "latency")]), 1.0);
    let burn = gauge(
        "sloguard_slo_burn_rate",
        &[("slo", "availability"), ("window", "1h")],
    );
    assert!((burn - 2.0).abs() < 1e-9, "{burn}");
    s.shutdown().await;
}

#[tokio::test]
async fn slo_without_slos_is_an_empty_list() {
    let s = start_sidecar("agent", "http://127.0.0.1:9", "").await;
    let r = slo_json(&s).await;
    assert_eq!(r["slos"], serde_json::json!([]));
    s.shutdown().await;
}
