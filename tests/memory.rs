//! One byte budget for every body the sidecar holds (`memory.max_held`): past it, requests that
//! would be held are refused with 503 `overloaded` (counted) instead of growing memory, and the
//! budget is given back as requests end. (The proof at scale — a thousand concurrent large
//! requests under the deployment's memory limit — is `benches/memory_load.sh`.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::{Config, Sidecar};

/// An upstream that reads the request, then answers 200 after `delay`.
async fn slow_upstream(delay: Duration) -> sloguard::sim::SimServer {
    sloguard::sim::serve(
        LOOPBACK,
        move |req: Request<hyper::body::Incoming>| async move {
            let _ = req.into_body().collect().await;
            tokio::time::sleep(delay).await;
            Response::new(sloguard::sim::full("{}"))
        },
    )
    .await
    .unwrap()
}

/// A sidecar whose `proxy` listener replays bodies up to 2 MiB (two upstreams), with a budget of
/// `max_held`.
async fn sidecar(a: &str, b: &str, max_held: &str) -> Sidecar {
    let route = "main: {upstreams: [a, b], max_replay_body: 2MiB}";
    let yaml = config_head("", "proxy", "llm", route)
        + &format!("  a: {{url: {a}}}\n  b: {{url: {b}}}\nmemory: {{max_held: {max_held}}}\n");
    start_yaml(&yaml).await
}

async fn upload(url: String, bytes: usize) -> (StatusCode, Option<String>) {
    let req = Request::post(url)
        .body(full(Bytes::from(vec![b'x'; bytes])))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let err = resp
        .headers()
        .get("x-sloguard-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = body_bytes(resp).await;
    (status, err)
}

#[tokio::test]
async fn past_the_budget_requests_are_refused_503_overloaded_and_the_budget_comes_back() {
    let a = slow_upstream(Duration::from_millis(800)).await;
    let b = slow_upstream(Duration::ZERO).await;
    let s = sidecar(&a.url(), &b.url(), "4MiB").await;
    // Eight 1 MiB bodies at once, each kept for replay while the upstream thinks: four fit.
    let uploads: Vec<_> = (0..8)
        .map(|_| tokio::spawn(upload(proxy_url(&s, "/"), 1024 * 1024)))
        .collect();
    let mut results = Vec::new();
    for u in uploads {
        results.push(u.await.unwrap());
    }
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let overloaded: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok, 4, "{results:?}");
    assert_eq!(overloaded.len(), 4, "{results:?}");
    assert!(overloaded
        .iter()
        .all(|r| r.1.as_deref() == Some("overloaded")));
    let m = metrics(&s).await;
    let replay = [("held", "replay")];
    expect_metric(&m, "sloguard_body_budget_refusals_total", &replay, 4.0);
    expect_requests(&m, "5xx", "proxy", 4.0);
    // No attempt was made for them: no upstream is charged.
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 4.0);
    // All ended: the budget is whole again.
    for _ in 0..4 {
        assert_eq!(
            upload(proxy_url(&s, "/"), 1024 * 1024).await.0,
            StatusCode::OK
        );
    }
    s.shutdown().await;
}

#[test]
fn the_budget_must_hold_one_requests_body() {
    let yaml = |held: &str| {
        format!(
            "agent: a
listeners:
  - {{name: p, bind: 127.0.0.1:0, role: llm, route: r}}
routes:
  r: {{upstreams: [u], max_replay_body: 8MiB}}
upstreams:
  u: {{url: 'http://127.0.0.1:9'}}
memory: {{max_held: {held}}}
"
        )
    };
    let err = Config::parse("m.yaml", &yaml("4MiB"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("memory.max_held: must be at least 8192 KiB"),
        "{err}"
    );
    assert!(Config::parse("m.yaml", &yaml("8MiB")).is_ok());
}
