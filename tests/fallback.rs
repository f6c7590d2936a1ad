//! The fallback chain end to end: a route of several upstreams tried in order, the request body
//! replayed byte for byte to the next one, circuits that skip an upstream, the last-resort cache,
//! and what can no longer fall back (a body too large to replay, a failure after the first byte).
//! Real in-process upstreams on loopback record what they receive; the assertions are on what the
//! client gets, what each upstream got, `/circuits` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "common/chain.rs"]
mod chain;
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

// The chain's `send` (an answer read whole), not common's.
use chain::send;
use chain::*;

// ---------------------------------------------------------------------------------------------
// Falling back on each class
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_503_falls_back_and_the_next_upstream_gets_the_same_bytes() {
    let sent = random_body(500 * 1024, 0x0f00_ba11);
    let path = "/v1/upload?x=1&y=two%20words";
    // With a content-length and chunked: the replay must not depend on how the body came.
    for chunked in [false, true] {
        let primary = upstream("primary", 503).await;
        let backup = upstream("backup", 200).await;
        let sidecar = start_yaml(&with_backup(&primary.url(), "", &backup.url())).await;
        let answer = send(
            &sidecar,
            path,
            &[
                ("content-type", "application/octet-stream"),
                ("x-trace-id", "trace-7"),
            ],
            body_of(&sent, chunked),
        )
        .await;
        assert_from(&answer, StatusCode::OK, "backup", Some("5xx"));
        // The backup describes the bytes it read; that description reached the client intact.
        let echo = answer.json();
        assert_eq!(echo["upstream"], "backup", "chunked: {chunked}");
        assert_eq!(echo["len"], sent.len(), "chunked: {chunked}");
        assert_eq!(echo["fnv"], fingerprint(&sent), "chunked: {chunked}");
        for (name, up) in [("primary", &primary), ("backup", &backup)] {
            let seen = up.seen();
            assert_eq!(seen.len(), 1, "{name} (chunked: {chunked})");
            let s = &seen[0];
            assert!(
                s.body == sent,
                "{name} (chunked: {chunked}) got {} bytes, fnv {}; the client sent {} bytes, fnv {}",
                s.body.len(),
                fingerprint(&s.body),
                sent.len(),
                fingerprint(&sent)
            );
            assert_eq!(s.method, Method::POST, "{name}");
            assert_eq!(s.uri, path, "{name}");
            assert_eq!(s.headers["x-trace-id"], "trace-7", "{name}");
            assert_eq!(
                s.headers["content-type"], "application/octet-stream",
                "{name}"
            );
            // Host is each upstream's own, not the client's nor the previous upstream's.
            assert_eq!(
                s.headers["host"],
                up.server.addr.to_string().as_str(),
                "{name}"
            );
        }
        let m = metrics_after(&sidecar, 1.0).await;
        let u = "sloguard_upstream_requests_total";
        expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 1.0);
        expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 1.0);
        expect_metric(&m, u, &[], 2.0);
        let f = "sloguard_fallbacks_total";
        expect_metric(
            &m,
            f,
            &[("from", "primary"), ("to", "backup"), ("reason", "5xx")],
            1.0,
        );
        expect_metric(&m, f, &[], 1.0);
        let a = "agent_requests_total";
        expect_metric(
            &m,
            a,
            &[
                ("listener", "proxy"),
                ("upstream", "backup"),
                ("status", "2xx"),
                ("cause", "none"),
            ],
            1.0,
        );
        expect_metric(&m, a, &[], 1.0);
        expect_metric(&m, "sloguard_replay_skipped_total", &[], 0.0);
    }
}

#[tokio::test]
async fn a_429_with_retry_after_falls_back_and_opens_the_primarys_circuit() {
    let primary = upstream("primary", 429).await;
    primary.knobs.retry_after.store(5, Ordering::SeqCst);
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 3, open_for: 1s, max_open_for: 10s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    let first = chat(&sidecar, r#"{"n":1}"#).await;
    assert_from(&first, StatusCode::OK, "backup", Some("429"));
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["last_trip_reason"], "retry_after", "{c}");
    // Open for at least the five seconds asked for, though open_for is 1 s.
    assert!(c["half_open_in_seconds"].as_f64().unwrap() > 4.0, "{c}");

    // The primary is now skipped without an attempt.
    let second = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&second, StatusCode::OK, "backup", Some("circuit_open"));
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 2);

    let m = metrics_after(&sidecar, 2.0).await;
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "429")], 1.0);
    expect_metric(&m, u, &[("upstream", "primary")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 2.0);
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "backup"), ("reason", "429")],
        1.0,
    );
    expect_metric(
        &m,
        f,
        &[
            ("from", "primary"),
            ("to", "backup"),
            ("reason", "circuit_open"),
        ],
        1.0,
    );
    expect_requests(&m, "2xx", "none", 2.0);
}

#[tokio::test]
async fn a_429_without_retry_after_falls_back_but_does_not_open_the_circuit_by_itself() {
    let primary = upstream("primary", 429).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 3, open_for: 30s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    let first = chat(&sidecar, r#"{"n":1}"#).await;
    assert_from(&first, StatusCode::OK, "backup", Some("429"));
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "closed", "{c}");
    // Still tried: the next request reaches the primary again, and falls back again.
    let second = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&second, StatusCode::OK, "backup", Some("429"));
    assert_eq!(primary.hits(), 2);
    assert_eq!(circuit(&sidecar, "primary").await["state"], "closed");
    let m = metrics_after(&sidecar, 2.0).await;
    expect_fallbacks(&m, "primary", "backup", "429", 2.0);
    expect_attempts(&m, "primary", "429", 2.0);
}

#[tokio::test]
async fn a_primary_silent_past_first_byte_falls_back_as_timeout() {
    // Reads the request head, then never answers.
    let silent = stalling_upstream(b"").await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            (
                "primary",
                &format!("http://{silent}"),
                "timeouts: {first_byte: 300ms}",
            ),
            ("backup", &backup.url(), "timeouts: {first_byte: 5s}"),
        ],
    ))
    .await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"slow?"}]}"#;
    let started = Instant::now();
    let answer = chat(&sidecar, body).await;
    let took = started.elapsed();
    assert_from(&answer, StatusCode::OK, "backup", Some("timeout"));
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    expect_attempts(&m, "primary", "timeout", 1.0);
    expect_fallbacks(&m, "primary", "backup", "timeout", 1.0);
    expect_requests_from(&m, "backup", "2xx", "none", 1.0);
}

#[tokio::test]
async fn a_refused_connection_falls_back_as_connect_error() {
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{}", closed_port()),
        "",
        &backup.url(),
    ))
    .await;
    let body = r#"{"refused":true}"#;
    let answer = chat(&sidecar, body).await;
    assert_from(&answer, StatusCode::OK, "backup", Some("connect_error"));
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    expect_attempts(&m, "primary", "connect_error", 1.0);
    expect_fallbacks(&m, "primary", "backup", "connect_error", 1.0);
}

#[tokio::test]
async fn a_reset_before_the_response_head_falls_back_as_connect_error() {
    let conns = Arc::new(AtomicU32::new(0));
    let c = conns.clone();
    let resetting = raw_upstream(move |mut s| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            read_head(&mut s).await;
            // Abortive close: RST, no response head.
            let _ = s.set_zero_linger();
            drop(s);
        }
    })
    .await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{resetting}"),
        "",
        &backup.url(),
    ))
    .await;
    let body = r#"{"reset":"before the head"}"#;
    let answer = chat(&sidecar, body).await;
    assert_from(&answer, StatusCode::OK, "backup", Some("connect_error"));
    assert_eq!(backup.seen()[0].body, body.as_bytes());
    assert!(conns.load(Ordering::SeqCst) >= 1);
    let m = metrics_after(&sidecar, 1.0).await;
    expect_fallbacks(&m, "primary", "backup", "connect_error", 1.0);
    // One attempt at the primary, and not a success (`connect_error` or `reset`).
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary")], 1.0);
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "ok")], 0.0);
}

#[tokio::test]
async fn down_a_chain_of_three_the_header_names_why_the_first_was_left() {
    let primary = upstream("primary", 503).await;
    let third = upstream("third", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            ("primary", &primary.url(), ""),
            ("second", &format!("http://{}", closed_port()), ""),
            ("third", &third.url(), ""),
        ],
    ))
    .await;
    let body = r#"{"hops":2}"#;
    let answer = chat(&sidecar, body).await;
    // The primary was left for a 5xx; the second for a refused connection; the header names the
    // first reason, the metrics every hop.
    assert_from(&answer, StatusCode::OK, "third", Some("5xx"));
    assert_eq!(primary.seen()[0].body, body.as_bytes());
    assert_eq!(third.seen()[0].body, body.as_bytes());
    let m = metrics_after(&sidecar, 1.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "second"), ("reason", "5xx")],
        1.0,
    );
    expect_metric(
        &m,
        f,
        &[
            ("from", "second"),
            ("to", "third"),
            ("reason", "connect_error"),
        ],
        1.0,
    );
    expect_metric(&m, f, &[], 2.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(
        &m,
        u,
        &[("upstream", "second"), ("outcome", "connect_error")],
        1.0,
    );
    expect_metric(&m, u, &[("upstream", "third"), ("outcome", "ok")], 1.0);
    expect_requests_from(&m, "third", "2xx", "none", 1.0);
}

#[tokio::test]
async fn fallback_on_decides_which_failures_move_a_request_on() {
    let primary = upstream("primary", 503).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        "fallback_on: [connect_error, timeout]",
        &[
            ("primary", &primary.url(), ""),
            ("backup", &backup.url(), ""),
        ],
    ))
    .await;
    let answer = chat(&sidecar, r#"{"n":1}"#).await;
    // A 5xx is not listed: the primary's own answer reaches the client.
    assert_from(&answer, StatusCode::SERVICE_UNAVAILABLE, "primary", None);
    assert_eq!(answer.json()["error"]["message"], "primary says 503");
    assert_eq!(backup.hits(), 0);
    let m = metrics_after(&sidecar, 1.0).await;
    expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
    expect_requests_from(&m, "primary", "5xx", "upstream", 1.0);
}

#[tokio::test]
async fn when_every_upstream_fails_the_failure_is_charged_upstream() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 502).await;
    let sidecar = start_yaml(&with_backup(&primary.url(), "", &backup.url())).await;
    let answer = chat(&sidecar, r#"{"n":1}"#).await;
    assert!(answer.status.is_server_error(), "{}", answer.status);
    assert_eq!(answer.header("x-sloguard-cache"), None);
    assert_eq!((primary.hits(), backup.hits()), (1, 1));
    let m = metrics_after(&sidecar, 1.0).await;
    expect_fallbacks(&m, "primary", "backup", "5xx", 1.0);
    expect_metric(&m, "sloguard_fallbacks_total", &[], 1.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
    expect_metric(&m, "agent_requests_total", &[], 1.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "5xx")], 1.0);
}

// ---------------------------------------------------------------------------------------------
// Circuits in the chain
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_open_circuit_is_skipped_without_an_attempt() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 30s}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        let a = chat(&sidecar, r#"{"n":1}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("5xx"));
    }
    assert_eq!(circuit(&sidecar, "primary").await["state"], "open");
    let m = metrics_after(&sidecar, 2.0).await;
    let u = "sloguard_upstream_requests_total";
    let attempts = metric(&m, u, &[("upstream", "primary")]);
    assert_eq!(attempts, 2.0);
    let hits = primary.hits();
    assert_eq!(hits, 2);

    for _ in 0..10 {
        let a = chat(&sidecar, r#"{"n":2}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));
    }
    assert_eq!(
        primary.hits(),
        hits,
        "an open circuit let a request through"
    );
    let m = metrics_after(&sidecar, 12.0).await;
    expect_metric(&m, u, &[("upstream", "primary")], attempts);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "ok")], 12.0);
    expect_fallbacks(&m, "primary", "backup", "circuit_open", 10.0);
    expect_requests_from(&m, "backup", "2xx", "none", 12.0);
}

#[tokio::test]
async fn a_recovered_primary_is_probed_its_circuit_closes_and_it_answers_again() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 1s, max_open_for: 4s, half_open_probes: 1}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        let a = chat(&sidecar, r#"{"n":1}"#).await;
        assert_from(&a, StatusCode::OK, "backup", Some("5xx"));
    }
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    primary.set_status(200);
    // Healthy again, but still open: skipped.
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));
    assert_eq!(primary.hits(), 2);

    let wait = c["half_open_in_seconds"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.1, "{c}");
    open_period_over(&sidecar, "primary").await;
    // The first request after the open period is the probe: the primary answers it.
    let probe = chat(&sidecar, r#"{"n":3}"#).await;
    assert_from(&probe, StatusCode::OK, "primary", None);
    assert_eq!(primary.hits(), 3);
    circuit_closes(&sidecar, "primary").await;
    for _ in 0..3 {
        let a = chat(&sidecar, r#"{"n":4}"#).await;
        assert_from(&a, StatusCode::OK, "primary", None);
    }
    assert_eq!(primary.hits(), 6);
    assert_eq!(backup.hits(), 3);
    let m = metrics_after(&sidecar, 7.0).await;
    expect_metric(
        &m,
        "sloguard_circuit_transitions_total",
        &[
            ("upstream", "primary"),
            ("to", "closed"),
            ("reason", "probe_ok"),
        ],
        1.0,
    );
    expect_metric(
        &m,
        "agent_requests_total",
        &[("upstream", "primary"), ("status", "2xx")],
        4.0,
    );
}

#[tokio::test]
async fn with_every_circuit_open_and_no_cache_the_answer_is_503_circuit_open() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        &admin_with_token("no-cache"),
        "",
        &[
            ("primary", &primary.url(), "circuit_breaker: {}"),
            ("backup", &backup.url(), "circuit_breaker: {}"),
        ],
    ))
    .await;
    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    let a = chat(&sidecar, r#"{"n":1}"#).await;
    assert_circuit_open(&a);
    assert_eq!((primary.hits(), backup.hits()), (0, 0));
    let m = metrics_after(&sidecar, 1.0).await;
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 0.0);
    expect_requests(&m, "5xx", "upstream", 1.0);
}
