//! `https://` upstreams: TLS with rustls, ALPN choosing h2 or HTTP/1.1, a private CA from
//! `tls.ca_file`, and an untrusted certificate refused as a connect error.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::tls::*;
use common::*;
use http::StatusCode;
use sloguard::{Config, Sidecar};

async fn sidecar_for(addr: SocketAddr, ca_file: Option<&PathBuf>) -> Sidecar {
    let mut yaml = config_yaml("llm", &format!("https://{addr}"), "");
    if let Some(path) = ca_file {
        let tls = format!(
            "    timeouts: {{}}\n    tls: {{ca_file: {}}}\n",
            path.display()
        );
        yaml = yaml.replace("    timeouts: {}\n", &tls);
    }
    Sidecar::start(Config::parse("tls-test", &yaml).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_https_upstream_offering_h2_is_spoken_to_in_h2_over_one_connection() {
    let ca = test_ca();
    let (addr, seen) = tls_upstream(&ca, &[b"h2", b"http/1.1"]).await;
    let ca_file = write_ca(&ca, "h2");
    let sidecar = sidecar_for(addr, Some(&ca_file)).await;
    let client = client();
    for _ in 0..5 {
        let resp = get(&client, &proxy_url(&sidecar, "/v1/models")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-authority"], addr.to_string().as_str());
        assert_eq!(body_bytes(resp).await, "HTTP/2.0");
    }
    assert_eq!(seen.handshakes(), 1, "requests share one h2 connection");
    sidecar.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn an_https_upstream_offering_only_http_1_1_is_spoken_to_in_http_1_1() {
    let ca = test_ca();
    let (addr, seen) = tls_upstream(&ca, &[b"http/1.1"]).await;
    let ca_file = write_ca(&ca, "h1");
    let sidecar = sidecar_for(addr, Some(&ca_file)).await;
    let client = client();
    for _ in 0..5 {
        let resp = get(&client, &proxy_url(&sidecar, "/v1/models")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_bytes(resp).await, "HTTP/1.1");
    }
    assert_eq!(seen.handshakes(), 1, "the TLS connection is reused");
    sidecar.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let ca = test_ca();
    let (addr, seen) = tls_upstream(&ca, &[b"h2", b"http/1.1"]).await;
    let sidecar = sidecar_for(addr, None).await;
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/models")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-sloguard-error"], "upstream_unavailable");
    assert_eq!(seen.handshakes(), 0);
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "connect_error", 1.0);
    sidecar.shutdown().await;
}

#[test]
fn a_missing_ca_file_is_named_by_check() {
    let dir = std::env::temp_dir().join(format!("sloguard-tls-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        "agent: a\nlisteners: [{name: e, bind: 127.0.0.1:7481, role: llm, route: llm}]\nroutes: {llm: {upstreams: [p]}}\nupstreams:\n  p:\n    url: https://127.0.0.1:9\n    tls: {ca_file: /nonexistent/ca.pem}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "upstreams.p.tls.ca_file: cannot read CA certificates from /nonexistent/ca.pem"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_bounded_by_connect() {
    // Accepts TCP, then says nothing: the TLS handshake hangs.
    let addr = raw_upstream(|s| async move {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let yaml = config_yaml(
        "llm",
        &format!("https://{addr}"),
        "connect: 300ms, first_byte: 10s",
    );
    let sidecar = Sidecar::start(Config::parse("tls-test", &yaml).unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let resp = get(&client(), &proxy_url(&sidecar, "/v1/models")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let m = metrics(&sidecar).await;
    expect_outcome(&m, "connect_error", 1.0);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_client_that_aborts_its_upload_to_an_h2_upstream_is_not_charged_to_it() {
    let ca = test_ca();
    let (addr, seen) = tls_upstream(&ca, &[b"h2"]).await;
    let ca_file = write_ca(&ca, "abort");
    let sidecar = sidecar_for(addr, Some(&ca_file)).await;
    // Warm the h2 connection, so that the abort happens on an established stream.
    assert_eq!(
        get(&client(), &proxy_url(&sidecar, "/v1/models"))
            .await
            .status(),
        StatusCode::OK
    );
    // The client hangs up once its upload is under way on an h2 stream to the provider.
    let proxy = sidecar.listener_addr("proxy").unwrap();
    abort_upload(proxy, async || seen.requests() == 2).await;
    let m = metrics_when(&sidecar, |m| metric(m, "agent_requests_total", &[]) >= 2.0).await;
    expect_requests(&m, "4xx", "none", 1.0);
    expect_metric(&m, "agent_requests_total", &[("cause", "upstream")], 0.0);
    assert_eq!(
        metric(&m, "sloguard_upstream_requests_total", &[]),
        1.0,
        "only the warm-up attempt"
    );
    sidecar.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn a_burst_of_first_requests_shares_one_h2_connection() {
    let ca = test_ca();
    let (addr, seen) = tls_upstream(&ca, &[b"h2", b"http/1.1"]).await;
    let ca_file = write_ca(&ca, "burst");
    let sidecar = sidecar_for(addr, Some(&ca_file)).await;
    let client = client();
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (client.clone(), proxy_url(&sidecar, "/v1/models"));
            tokio::spawn(async move { body_bytes(get(&client, &url).await).await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), "HTTP/2.0");
    }
    assert_eq!(
        seen.handshakes(),
        1,
        "50 concurrent first requests, one h2 connection"
    );
    sidecar.shutdown().await;
    let _ = std::fs::remove_file(ca_file);
}
