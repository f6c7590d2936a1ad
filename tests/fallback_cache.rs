//! The fallback chain's last resort and its limits end to end: the cache that answers when every
//! upstream is open or has failed, and what can no longer fall back (a body too large to replay,
//! a failure after the first byte). Fixtures shared with `tests/fallback.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "common/chain.rs"]
mod chain;
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sloguard::Sidecar;
use tokio::io::AsyncWriteExt;

// The chain's `send` (an answer read whole), not common's.
use chain::send;
use chain::*;

// ---------------------------------------------------------------------------------------------
// The last-resort cache
// ---------------------------------------------------------------------------------------------

const CACHE: &str = "cache: {max_entries: 100, ttl: 10m}";
const CACHED_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"cache me"}]}"#;

/// A sidecar whose route tries `primary`, then `backup` (each with a circuit breaker), then the
/// cache; `test` names its admin token file.
async fn cached_chain(test: &str, primary: &str, backup: &str) -> Sidecar {
    let upstreams = [
        ("primary", primary, "circuit_breaker: {}"),
        ("backup", backup, "circuit_breaker: {}"),
    ];
    start_yaml(&chain_yaml(&admin_with_token(test), CACHE, &upstreams)).await
}
const OTHER_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"not seen"}]}"#;

#[tokio::test]
async fn with_every_circuit_open_the_cache_answers_a_request_it_has_seen() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = cached_chain("cache-open", &primary.url(), &backup.url()).await;
    let fresh = chat(&sidecar, CACHED_BODY).await;
    assert_from(&fresh, StatusCode::OK, "primary", None);
    assert_eq!(fresh.header("x-sloguard-cache"), None);
    // While an upstream can answer, it does: the cache is a last resort, not a shortcut.
    let again = chat(&sidecar, CACHED_BODY).await;
    assert_from(&again, StatusCode::OK, "primary", None);
    assert_eq!(again.header("x-sloguard-cache"), None);
    assert_eq!(primary.hits(), 2);

    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    let cached = chat(&sidecar, CACHED_BODY).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.header("x-sloguard-cache"), Some("hit"));
    assert_eq!(cached.header("x-sloguard-fallback"), Some("circuit_open"));
    assert_eq!(cached.body, fresh.body);
    assert_eq!((primary.hits(), backup.hits()), (2, 0));

    // A request the cache has not seen (same method and path, another body).
    let other = chat(&sidecar, OTHER_BODY).await;
    assert_circuit_open(&other);
    assert_eq!((primary.hits(), backup.hits()), (2, 0));

    let m = metrics_after(&sidecar, 4.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(&m, f, &[("to", "cache")], 1.0);
    expect_metric(
        &m,
        f,
        &[
            ("from", "backup"),
            ("to", "cache"),
            ("reason", "circuit_open"),
        ],
        1.0,
    );
    expect_requests_from(&m, "cache", "2xx", "none", 1.0);
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 2.0);
}

#[tokio::test]
async fn when_every_upstream_fails_the_request_the_cache_answers() {
    let primary = upstream("primary", 200).await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&chain_yaml(
        "",
        CACHE,
        &[
            ("primary", &primary.url(), ""),
            ("backup", &backup.url(), ""),
        ],
    ))
    .await;
    let fresh = chat(&sidecar, CACHED_BODY).await;
    assert_from(&fresh, StatusCode::OK, "primary", None);
    primary.set_status(500);
    backup.set_status(503);
    // No circuit is open: both are tried, both fail, then the cache answers.
    let cached = chat(&sidecar, CACHED_BODY).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(cached.header("x-sloguard-cache"), Some("hit"));
    assert_eq!(cached.header("x-sloguard-fallback"), Some("5xx"));
    assert_eq!(cached.body, fresh.body);
    assert_eq!((primary.hits(), backup.hits()), (2, 1));
    // Nothing cached for another body: the failure reaches the client.
    let other = chat(&sidecar, OTHER_BODY).await;
    assert!(other.status.is_server_error(), "{}", other.status);
    assert_eq!(other.header("x-sloguard-cache"), None);
    let m = metrics_after(&sidecar, 3.0).await;
    let f = "sloguard_fallbacks_total";
    expect_metric(
        &m,
        f,
        &[("from", "primary"), ("to", "backup"), ("reason", "5xx")],
        2.0,
    );
    expect_metric(
        &m,
        f,
        &[("from", "backup"), ("to", "cache"), ("reason", "5xx")],
        1.0,
    );
    // The cache hit is a success for the agent; both providers failed it.
    expect_requests_from(&m, "cache", "2xx", "none", 1.0);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "5xx")], 2.0);
    expect_metric(&m, u, &[("upstream", "backup"), ("outcome", "5xx")], 2.0);
}

#[tokio::test]
async fn streamed_responses_are_not_cached() {
    let primary = upstream("primary", 200).await;
    primary.knobs.sse.store(true, Ordering::SeqCst);
    let backup = upstream("backup", 200).await;
    let sidecar = cached_chain("sse-not-cached", &primary.url(), &backup.url()).await;
    let streamed = chat(&sidecar, CACHED_BODY).await;
    assert_from(&streamed, StatusCode::OK, "primary", None);
    assert_eq!(
        streamed.header("content-type"),
        Some("text/event-stream"),
        "the fixture must stream"
    );
    force_open(&sidecar, "primary").await;
    force_open(&sidecar, "backup").await;
    assert_circuit_open(&chat(&sidecar, CACHED_BODY).await);
}

// ---------------------------------------------------------------------------------------------
// What cannot fall back
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_over_max_replay_body_streams_through_without_fallback() {
    let sent = random_body(200 * 1024, 0xb16_b0d7);
    for chunked in [false, true] {
        let primary = upstream("primary", 503).await;
        let backup = upstream("backup", 200).await;
        let sidecar = start_yaml(&chain_yaml(
            "",
            "max_replay_body: 64KiB",
            &[
                ("primary", &primary.url(), ""),
                ("backup", &backup.url(), ""),
            ],
        ))
        .await;
        let answer = send(
            &sidecar,
            "/v1/upload",
            &[("content-type", "application/octet-stream")],
            body_of(&sent, chunked),
        )
        .await;
        // The primary's 503 as it is: the body cannot be sent again.
        assert_from(&answer, StatusCode::SERVICE_UNAVAILABLE, "primary", None);
        assert_eq!(
            answer.json()["error"]["message"],
            "primary says 503",
            "chunked: {chunked}"
        );
        let seen = primary.seen();
        assert_eq!(seen.len(), 1, "chunked: {chunked}");
        assert!(
            seen[0].body == sent,
            "chunked: {chunked}: the primary got {} bytes, fnv {}; sent {} bytes, fnv {}",
            seen[0].body.len(),
            fingerprint(&seen[0].body),
            sent.len(),
            fingerprint(&sent)
        );
        let m = metrics_after(&sidecar, 1.0).await;
        assert_eq!(backup.hits(), 0, "chunked: {chunked}");
        expect_metric(
            &m,
            "sloguard_replay_skipped_total",
            &[("agent", "test-agent"), ("listener", "proxy")],
            1.0,
        );
        expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
        expect_attempts(&m, "primary", "5xx", 1.0);
        expect_requests_from(&m, "primary", "5xx", "upstream", 1.0);
    }
}

#[tokio::test]
async fn a_failure_after_the_first_byte_is_not_retried() {
    let release = Arc::new(tokio::sync::Notify::new());
    let conns = Arc::new(AtomicU32::new(0));
    let (r, c) = (release.clone(), conns.clone());
    let breaking = raw_upstream(move |mut s| {
        let (r, c) = (r.clone(), c.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            read_head(&mut s).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n",
                )
                .await;
            // Break the stream once the client has the first chunk.
            let _ = tokio::time::timeout(Duration::from_secs(5), r.notified()).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    })
    .await;
    let backup = upstream("backup", 200).await;
    let sidecar = start_yaml(&with_backup(
        &format!("http://{breaking}"),
        "",
        &backup.url(),
    ))
    .await;
    let resp = client()
        .request(
            Request::post(proxy_url(&sidecar, CHAT))
                .header("content-type", "application/json")
                .body(full(r#"{"stream":true}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-sloguard-upstream"], "primary");
    assert!(resp.headers().get("x-sloguard-fallback").is_none());
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk within 5 s")
        .expect("a frame")
        .expect("not an error")
        .into_data()
        .unwrap();
    assert_eq!(first, Bytes::from_static(b"data: {\"n\":1}\n\n"));
    release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the stream ends within 5 s");
    assert!(rest.is_err(), "a cut stream must not look complete");

    // The request is counted once it has ended: a (wrong) retry would have reached the backup
    // before that.
    let m = metrics_when(&sidecar, |m| {
        metric(m, "agent_requests_total", &[]) >= 1.0
            && metric(
                m,
                "sloguard_upstream_requests_total",
                &[("outcome", "reset")],
            ) >= 1.0
    })
    .await;
    assert_eq!(metric(&m, "agent_requests_total", &[]), 1.0);
    assert_eq!(
        backup.hits(),
        0,
        "the backup got a retry after the first byte"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let u = "sloguard_upstream_requests_total";
    expect_metric(&m, u, &[("upstream", "primary"), ("outcome", "reset")], 1.0);
    expect_metric(&m, u, &[("upstream", "backup")], 0.0);
    expect_metric(&m, "sloguard_fallbacks_total", &[], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Each upstream's own rewrites
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_fallback_upstreams_own_model_and_key_apply_to_the_replay() {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let primary_keys = temp_file("rewrite", "primary-keys", "sk-primary-key\n");
    let backup_keys = temp_file("rewrite", "backup-keys", "sk-backup-key\n");
    let sidecar = start_yaml(&chain_yaml(
        "",
        "",
        &[
            (
                "primary",
                &primary.url(),
                &format!(
                    "protocol: openai, api_keys_file: '{}'",
                    primary_keys.display()
                ),
            ),
            (
                "backup",
                &backup.url(),
                &format!(
                    "protocol: openai, model: other-model, api_keys_file: '{}'",
                    backup_keys.display()
                ),
            ),
        ],
    ))
    .await;
    let sent = r#"{"model":"gpt-4o","messages":[]}"#;
    let answer = send(
        &sidecar,
        CHAT,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-agent-own"),
            ("x-trace-id", "trace-11"),
        ],
        full(sent),
    )
    .await;
    assert_from(&answer, StatusCode::OK, "backup", Some("5xx"));

    let p = &primary.seen()[0];
    assert_eq!(p.body, sent.as_bytes(), "no rewrite configured for primary");
    assert_eq!(p.headers["authorization"], "Bearer sk-primary-key");

    let b = &backup.seen()[0];
    let got: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    let mut want: serde_json::Value = serde_json::from_str(sent).unwrap();
    want["model"] = "other-model".into();
    assert_eq!(got, want);
    assert_eq!(
        b.headers["content-length"],
        b.body.len().to_string().as_str()
    );
    assert_eq!(b.headers["authorization"], "Bearer sk-backup-key");
    assert_eq!(b.headers["x-trace-id"], "trace-11");
    for (name, s) in [("primary", p), ("backup", b)] {
        assert!(
            !s.headers
                .values()
                .any(|v| v.as_bytes().windows(12).any(|w| w == b"sk-agent-own")),
            "the agent's key reached {name}: {:?}",
            s.headers
        );
    }
}

/// A primary that failed until its circuit opened, is healthy now but answers after `delay_ms`,
/// and whose open period is over: the next request to reach it is the one probe.
async fn half_open_primary(delay_ms: u64) -> (Upstream, Upstream, Sidecar) {
    let primary = upstream("primary", 500).await;
    let backup = upstream("backup", 200).await;
    let breaker = "circuit_breaker: {consecutive_failures: 2, open_for: 1s, max_open_for: 4s, half_open_probes: 1}";
    let sidecar = start_yaml(&with_backup(&primary.url(), breaker, &backup.url())).await;
    for _ in 0..2 {
        chat(&sidecar, r#"{"n":1}"#).await;
    }
    let c = circuit(&sidecar, "primary").await;
    assert_eq!(c["state"], "open", "{c}");
    primary.set_status(200);
    primary.knobs.delay_ms.store(delay_ms, Ordering::SeqCst);
    open_period_over(&sidecar, "primary").await;
    (primary, backup, sidecar)
}

#[tokio::test]
async fn a_slow_upload_does_not_hold_the_probe_slot() {
    let (primary, _backup, sidecar) = half_open_primary(0).await;
    // A client sends half its body, then stalls: its body is being read ahead for replay. The
    // breaker is asked only once the body is in, so the probe slot is not this client's.
    let addr = sidecar.listener_addr("proxy").unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"half\":")
        .await
        .unwrap();
    // The stalled client stays stalled for the rest of the test. Its body is being read ahead
    // once the sidecar holds budget for it (its declared 100 bytes): then the other request.
    let reading = async || sidecar.state.load().listeners[0].budget.used() >= 100;
    wait_until("the stalled upload is read ahead", 5, reading).await;
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "primary", None);
    assert_eq!(primary.hits(), 3, "two failures, then the probe");
    drop(stalled);
    circuit_closes(&sidecar, "primary").await;
}

#[tokio::test]
async fn a_client_that_leaves_while_its_probe_waits_gives_the_slot_back() {
    let (primary, _backup, sidecar) = half_open_primary(800).await;
    // The probe: a whole request, whose answer the primary takes 800 ms to give.
    let addr = sidecar.listener_addr("proxy").unwrap();
    let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    wait_until("the probe never reached the primary", 5, async || {
        primary.hits() >= 3
    })
    .await;
    // Meanwhile the primary is skipped: its only probe is out.
    let a = chat(&sidecar, r#"{"n":2}"#).await;
    assert_from(&a, StatusCode::OK, "backup", Some("circuit_open"));

    // The client leaves before the answer: its slot goes back, and the next request probes.
    drop(waiting);
    primary.knobs.delay_ms.store(0, Ordering::SeqCst);
    wait_until("the probe slot was never given back", 5, async || {
        let a = chat(&sidecar, r#"{"n":3}"#).await;
        let primary = a.header("x-sloguard-upstream") == Some("primary");
        if primary {
            assert_from(&a, StatusCode::OK, "primary", None);
        }
        primary
    })
    .await;
    circuit_closes(&sidecar, "primary").await;
}
