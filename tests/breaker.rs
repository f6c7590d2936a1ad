//! The circuit breaker end to end: a real upstream that fails on command, the sidecar in front,
//! assertions on what the client gets, on how many requests reached the upstream, on `/circuits`
//! and on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{header, HeaderValue, Request, Response, StatusCode};
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;

/// An upstream answering with the status `status` holds (429s with `Retry-After: 5`; 299 means
/// a 200 whose body streams for two seconds) once it has read the request, counting the
/// requests that reach it.
async fn switchable() -> (SimServer, Arc<AtomicU16>, Arc<AtomicU32>) {
    let status = Arc::new(AtomicU16::new(500));
    let hits = Arc::new(AtomicU32::new(0));
    let (s, h) = (status.clone(), hits.clone());
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let (s, h) = (s.clone(), h.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            // It answers once it has the whole request, as an API does.
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            if s.load(Ordering::SeqCst) == 299 {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    let _ = tx.send(bytes::Bytes::from_static(b"data: a\n\n")).await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = tx.send(bytes::Bytes::from_static(b"data: b\n\n")).await;
                });
                return Response::new(http_body_util::BodyExt::boxed(sim::ChannelBody(rx)));
            }
            let code = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
            let mut r: Response<sim::SimBody> = Response::new(sim::full("{}"));
            *r.status_mut() = code;
            if code == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            r
        }
    })
    .await
    .unwrap();
    (server, status, hits)
}

async fn sidecar(url: &str) -> Sidecar {
    sidecar_probing(url, 1).await
}

/// In front of `url`, a breaker opening after 3 failures, for 1s, with `probes` trial calls.
async fn sidecar_probing(url: &str, probes: u32) -> Sidecar {
    sidecar_of(url, probes, "llm").await
}

/// As [`sidecar_probing`], on a listener of `role`.
async fn sidecar_of(url: &str, probes: u32, role: &str) -> Sidecar {
    let upstream = format!(
        "  provider:
    url: {url}
    circuit_breaker: {{consecutive_failures: 3, open_for: 1s, max_open_for: 4s, half_open_probes: {probes}}}
"
    );
    start_yaml(&(config_head("", "proxy", role, "main: {upstreams: [provider]}") + &upstream)).await
}

async fn status_of(sidecar: &Sidecar) -> (StatusCode, Option<HeaderValue>) {
    status_at(&client(), proxy_url(sidecar, "/v1/chat/completions")).await
}

/// A POST of `{}` to `url`: its status and `x-sloguard-error`, once its body is read.
async fn status_at(client: &TestClient, url: String) -> (StatusCode, Option<HeaderValue>) {
    let resp = client
        .request(Request::post(url).body(full("{}")).unwrap())
        .await
        .unwrap();
    let err = resp.headers().get("x-sloguard-error").cloned();
    let status = resp.status();
    let _ = body_bytes(resp).await;
    (status, err)
}

async fn circuits(sidecar: &Sidecar) -> serde_json::Value {
    let resp = get(
        &client(),
        &format!("http://{}/circuits", sidecar.admin_addr),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    v["upstreams"][0].clone()
}

/// Waits out the circuit's open period, as `/circuits` counts it down: the wall clock has to
/// pass here, end to end (the breaker's own tests run on paused time).
async fn open_period_over(sidecar: &Sidecar) {
    let over = async || circuits(sidecar).await["half_open_in_seconds"] == 0.0;
    wait_until("the open period ends", 5, over).await;
}

#[tokio::test]
async fn failures_open_the_circuit_a_probe_closes_it() {
    let (up, status, hits) = switchable().await;
    let sidecar = sidecar(&up.url()).await;
    for _ in 0..3 {
        assert_eq!(
            status_of(&sidecar).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    // Open: answered by the sidecar, the upstream not reached.
    for _ in 0..5 {
        let (code, err) = status_of(&sidecar).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.unwrap(), "circuit_open");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let c = circuits(&sidecar).await;
    assert_eq!(c["name"], "provider");
    assert_eq!(c["state"], "open");
    assert_eq!(c["consecutive_failures"], 3);
    assert_eq!(c["last_trip_reason"], "consecutive");
    let wait = c["half_open_in_seconds"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.1, "{wait}");

    // The provider recovers; after the open period one probe goes through and closes it.
    status.store(200, Ordering::SeqCst);
    open_period_over(&sidecar).await;
    assert_eq!(status_of(&sidecar).await.0, StatusCode::OK);
    assert_eq!(circuits(&sidecar).await["state"], "closed");
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    let m = metrics_when(&sidecar, |m| {
        metric(m, "sloguard_circuit_transitions_total", &[("to", "closed")]) >= 1.0
    })
    .await;
    let t = "sloguard_circuit_transitions_total";
    expect_metric(&m, t, &[("to", "open"), ("reason", "consecutive")], 1.0);
    expect_metric(&m, t, &[("to", "half_open"), ("reason", "elapsed")], 1.0);
    expect_metric(&m, t, &[("to", "closed"), ("reason", "probe_ok")], 1.0);
    let provider = [("upstream", "provider")];
    expect_metric(&m, "sloguard_circuit_state", &provider, 0.0);
    // The refused calls are the provider's failures for the agent, and no attempts.
    expect_requests(&m, "5xx", "upstream", 8.0);
    expect_metric(&m, "sloguard_upstream_requests_total", &[], 4.0);
}

#[tokio::test]
async fn a_probe_is_judged_by_its_head_not_its_whole_stream() {
    let (up, status, _) = switchable().await;
    let sidecar = sidecar(&up.url()).await;
    for _ in 0..3 {
        status_of(&sidecar).await;
    }
    let c = circuits(&sidecar).await;
    assert!(c["half_open_in_seconds"].as_f64().is_some(), "open: {c}");
    open_period_over(&sidecar).await;
    status.store(299, Ordering::SeqCst);
    // The probe: its head is 200, its body still streaming.
    let probe = client()
        .request(
            Request::post(proxy_url(&sidecar, "/v1/chat/completions"))
                .body(full("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    // The circuit closed at that head: the next call goes through while the probe streams.
    status.store(200, Ordering::SeqCst);
    assert_eq!(circuits(&sidecar).await["state"], "closed");
    assert_eq!(status_of(&sidecar).await.0, StatusCode::OK);
    drop(probe);
}

#[tokio::test]
async fn a_429_with_retry_after_opens_the_circuit_at_once_for_that_long() {
    let (up, status, hits) = switchable().await;
    let sidecar = sidecar(&up.url()).await;
    status.store(429, Ordering::SeqCst);
    assert_eq!(status_of(&sidecar).await.0, StatusCode::TOO_MANY_REQUESTS);
    let c = circuits(&sidecar).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["last_trip_reason"], "retry_after");
    // At least the five seconds the provider asked for, though open_for is 1 s.
    assert!(c["half_open_in_seconds"].as_f64().unwrap() > 4.5);
    assert_eq!(status_of(&sidecar).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

async fn admin_post(sidecar: &Sidecar, path: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::post(format!("http://{}{path}", sidecar.admin_addr));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send_empty(req).await
}

#[tokio::test]
async fn an_operator_forces_a_circuit_with_the_admin_token() {
    let (up, status, hits) = switchable().await;
    status.store(200, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("sloguard-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let admin = format!(", token_file: '{}'", token.display());
    let route = "main: {upstreams: [provider]}";
    let upstream = format!(
        "  provider:\n    url: {}\n    circuit_breaker: {{}}\n",
        up.url()
    );
    let sidecar = start_yaml(&(config_head(&admin, "proxy", "llm", route) + &upstream)).await;
    let open = "/admin/circuits/provider/open";
    assert_eq!(
        admin_post(&sidecar, open, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_post(&sidecar, open, Some("s3cret-tokem")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&sidecar).await.0,
        StatusCode::OK,
        "wrong tokens changed nothing"
    );
    assert_eq!(
        admin_post(&sidecar, open, Some("s3cret-token")).await,
        StatusCode::OK
    );
    let c = circuits(&sidecar).await;
    assert_eq!(
        (c["state"].as_str(), c["forced"].as_bool()),
        (Some("open"), Some(true))
    );
    assert_eq!(status_of(&sidecar).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let auto = "/admin/circuits/provider/auto";
    assert_eq!(
        admin_post(&sidecar, auto, Some("s3cret-token")).await,
        StatusCode::OK
    );
    assert_eq!(status_of(&sidecar).await.0, StatusCode::OK);
    let nobody = "/admin/circuits/nobody/open";
    let status = admin_post(&sidecar, nobody, Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _ = std::fs::remove_dir_all(&dir);
    let m = metrics(&sidecar).await;
    let forced = [("reason", "forced")];
    expect_metric(&m, "sloguard_circuit_transitions_total", &forced, 2.0);
}

#[tokio::test]
async fn without_a_token_file_admin_mutations_are_refused() {
    let (up, _, _) = switchable().await;
    let sidecar = sidecar(&up.url()).await;
    assert_eq!(
        admin_post(&sidecar, "/admin/circuits/provider/open", Some("anything")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(circuits(&sidecar).await["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_while_half_open_admit_exactly_the_probes() {
    // An upstream failing on command whose answers can be slowed, so that the probes are in
    // flight together while the other requests arrive.
    let status = Arc::new(AtomicU16::new(500));
    let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hits = Arc::new(AtomicU32::new(0));
    let (s, d, h) = (status.clone(), delay_ms.clone(), hits.clone());
    let up = sim::serve(LOOPBACK, move |_req| {
        let (s, d, h) = (s.clone(), d.clone(), h.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let delay = d.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut r: Response<sim::SimBody> = Response::new(sim::full("{}"));
            *r.status_mut() = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
            r
        }
    })
    .await
    .unwrap();
    let sidecar = sidecar_probing(&up.url(), 3).await;
    for _ in 0..3 {
        assert_eq!(
            status_of(&sidecar).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let c = circuits(&sidecar).await;
    assert_eq!(c["state"], "open", "{c}");
    // Healthy again, but slow: a probe's head comes a second after it arrives.
    status.store(200, Ordering::SeqCst);
    delay_ms.store(1000, Ordering::SeqCst);
    open_period_over(&sidecar).await;
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(before, 3);

    // The open period is over; the first admission moves the circuit to half-open.
    let client = client();
    let url = proxy_url(&sidecar, "/v1/chat/completions");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move { status_at(&client, url).await });
    }
    let (mut ok, mut refused, mut other) = (0, 0, Vec::new());
    let all = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(done) = requests.join_next().await {
            match done.unwrap() {
                (StatusCode::OK, None) => ok += 1,
                (StatusCode::SERVICE_UNAVAILABLE, Some(e)) if e == "circuit_open" => refused += 1,
                unexpected => other.push(unexpected),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "the 200 requests did not finish within 15 s");
    assert_eq!(
        hits.load(Ordering::SeqCst) - before,
        3,
        "exactly half_open_probes requests may reach the upstream"
    );
    assert_eq!((ok, refused), (3, 197), "unexpected answers: {other:?}");
    assert_eq!(circuits(&sidecar).await["state"], "closed");
}

#[tokio::test]
async fn on_the_agent_role_a_clients_429_does_not_open_the_circuit() {
    let (up, status, hits) = switchable().await;
    // The agent rate-limits one client (429, Retry-After: 5): its answer to that client, not
    // a failing agent.
    status.store(429, Ordering::SeqCst);
    let sidecar = sidecar_of(&up.url(), 1, "agent").await;
    for _ in 0..5 {
        assert_eq!(status_of(&sidecar).await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(circuits(&sidecar).await["state"], "closed");
    // Everyone else still reaches the agent.
    status.store(200, Ordering::SeqCst);
    assert_eq!(status_of(&sidecar).await.0, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "429", 5.0);
    // Its 5xx still count: three open the circuit.
    status.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        status_of(&sidecar).await;
    }
    assert_eq!(circuits(&sidecar).await["state"], "open");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_does_not_hold_the_probe_slot() {
    let (up, status, hits) = switchable().await;
    let sidecar = sidecar_of(&up.url(), 1, "agent").await;
    for _ in 0..3 {
        status_of(&sidecar).await;
    }
    assert_eq!(circuits(&sidecar).await["state"], "open");
    status.store(200, Ordering::SeqCst);
    open_period_over(&sidecar).await;
    // Half-open, one probe: a client starts an upload it takes 2 s to finish...
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let url = proxy_url(&sidecar, "/slow-upload");
    let slow = tokio::spawn(async move {
        let req = Request::post(url)
            .body(http_body_util::BodyExt::boxed(sim::ChannelBody(rx)))
            .unwrap();
        client().request(req).await.unwrap().status()
    });
    tokio::spawn(async move {
        for _ in 0..10 {
            if tx.send(bytes::Bytes::from_static(b"x")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let arrived = async || hits.load(Ordering::SeqCst) == 4;
    wait_until("the upload reaches the upstream", 5, arrived).await;
    // ... while another's request is the probe that closes the circuit.
    assert_eq!(status_of(&sidecar).await.0, StatusCode::OK);
    assert_eq!(circuits(&sidecar).await["state"], "closed");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    sidecar.shutdown().await;
}
