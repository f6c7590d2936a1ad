//! Bulkheads end to end: `max_in_flight` on a route, with an upstream that holds its requests
//! until the test lets them go.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Response, StatusCode};
use sloguard::sim::{self, full as sim_full};
use sloguard::Config;
use tokio::sync::watch;

/// An upstream that counts the requests that reach it and answers none until `release` says so.
async fn held_upstream(
    arrived: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
) -> sim::SimServer {
    sim::serve(LOOPBACK, move |_req| {
        arrived.fetch_add(1, Ordering::SeqCst);
        let mut release = release.clone();
        async move {
            let _ = release.wait_for(|go| *go).await;
            Response::new(sim_full("done"))
        }
    })
    .await
    .expect("upstream binds")
}

fn bulkhead_config(upstream_url: &str, limit: u32) -> String {
    config_head(
        "",
        "proxy",
        "llm",
        &format!("main: {{upstreams: [backend], max_in_flight: {limit}}}"),
    ) + &format!("  backend: {{url: {upstream_url}}}\n")
}

#[tokio::test]
async fn past_max_in_flight_a_request_is_refused_at_once_and_charged_to_the_upstream() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, held) = watch::channel(false);
    let upstream = held_upstream(arrived.clone(), held).await;
    let s = start_yaml(&bulkhead_config(&upstream.url(), 2)).await;
    let url = proxy_url(&s, "/work");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = get(&client(), &url).await;
                (resp.status(), body_bytes(resp).await)
            })
        })
        .collect();
    let both_in = async || arrived.load(Ordering::SeqCst) == 2;
    wait_until("both requests reach the upstream", 5, both_in).await;

    // A third while two are in flight: 503 at once, and the upstream never sees it.
    let c = client();
    let third = tokio::time::timeout(Duration::from_secs(5), get(&c, &url));
    let resp = third.await.expect("answered at once, not held");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-sloguard-error"], "bulkhead_full");
    let body = String::from_utf8_lossy(&body_bytes(resp).await).into_owned();
    assert!(body.contains("\"type\":\"bulkhead_full\""), "{body}");
    assert!(body.contains("max_in_flight"), "{body}");
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        2,
        "the refused request went nowhere"
    );
    let m = metrics(&s).await;
    let route = [("route", "main")];
    expect_metric(&m, "sloguard_bulkhead_rejections_total", &route, 1.0);
    let refused = [("status", "5xx"), ("cause", "upstream")];
    expect_metric(&m, "agent_requests_total", &refused, 1.0);

    // The two held ones finish as they would have; their places are given back.
    release.send(true).unwrap();
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"done"[..]));
    }
    let after = get(&client(), &url).await;
    assert_eq!(
        after.status(),
        StatusCode::OK,
        "a place given back is taken again"
    );
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_bulkhead_rejections_total", &route, 1.0);
    expect_metric(&m, "agent_requests_total", &[("status", "2xx")], 3.0);
}

#[test]
fn a_zero_max_in_flight_is_refused_naming_the_key() {
    let err = Config::parse("test", &bulkhead_config("http://127.0.0.1:1", 0))
        .expect_err("max_in_flight: 0 is refused");
    let text = err.to_string();
    assert!(text.contains("routes.main.max_in_flight"), "{text}");
    assert!(text.contains("at least 1"), "{text}");
}
