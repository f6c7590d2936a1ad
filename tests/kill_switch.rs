//! The kill switch end to end: what trips it (blocked violations of distinct tasks or clients
//! within its window — not one client repeating itself, not an echo of what the client sent,
//! not a provider's content filter), the human who lifts it (the admin API, which a kill switch
//! requires), the human queue it sends traffic to, and its incident alert.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::{Duration, Instant};

use common::scripted::*;
use common::*;
use http::StatusCode;
use sloguard::{Config, Sidecar};

#[tokio::test]
async fn the_kill_switch_trips_on_violations_of_distinct_tasks_within_the_window_only() {
    let safety = "  action: block\n  kill_switch: {violations: 3, within: 2s}\n";
    const WITHIN: Duration = Duration::from_secs(2);
    let (s, script, _, _servers) = scene(safety, "").await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    let leak = |task: String| {
        let url = url(&s, "inbound", "/leak");
        async move { post_as(&url, Some(&task), "{}").await.0 }
    };
    // Three tasks' violations spread over more than the window: the agent stays up. (The gaps
    // between them are the behaviour under test.)
    let mut last_spread = Instant::now();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(leak(format!("spread-{i}")).await, StatusCode::FORBIDDEN);
        last_spread = Instant::now();
        expect_violations(&s, "inbound", "pii_email", "block", f64::from(i + 1)).await;
    }
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    // Three within the window, once the last of the spread ones is out of it: disabled. The
    // wall clock has to pass here: the switch's window is wall-clock time (its own tests run on
    // paused time), and nothing shows what is left in it.
    let out_of_window = async || last_spread.elapsed() > WITHIN;
    wait_until("the spread violations leave the window", 5, out_of_window).await;
    for i in 0..3 {
        assert_eq!(leak(format!("burst-{i}")).await, StatusCode::FORBIDDEN);
        expect_violations(&s, "inbound", "pii_email", "block", f64::from(i + 4)).await;
    }
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    let tripped = [("severity", "sev1"), ("kind", "kill_switch")];
    expect_metric(&m, "sloguard_incidents_total", &tripped, 1.0);
    // Silent: no fallback_url, so 503 `agent_disabled`, and the agent is not called; the LLM
    // listener refuses too.
    for (listener, path) in [("inbound", "/leak"), ("egress", "/v1/chat/completions")] {
        let refused = (StatusCode::SERVICE_UNAVAILABLE, "agent_disabled");
        expect_refused(&url(&s, listener, path), refused).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_human_disables_and_enables_with_the_token_and_traffic_goes_to_the_queue() {
    let (agent, script) = scripted().await;
    let (llm, _l) = scripted().await;
    let (queue, q_script) = scripted().await;
    set(&script, "/ask", json(r#"{"answer":"from the agent"}"#));
    set(
        &q_script,
        "/ask",
        json(r#"{"answer":"a human will reply"}"#),
    );
    let kill_switch = format!(
        "  action: block\n  kill_switch: {{violations: 3, within: 10m, fallback_url: '{}'}}\n",
        queue.url()
    );
    let s = sidecar(&agent.url(), &llm.url(), &kill_switch, "").await;
    // Without a token, and with a wrong one: refused, nothing changes.
    for token in [None, Some("wrong")] {
        let (status, _) = admin_post(&s, "/admin/agent/disable", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
    }
    let (status, _, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &br#"{"answer":"from the agent"}"#[..])
    );
    let (status, body) = admin_post(&s, "/admin/agent/disable", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["disabled"].as_bool(), v["changed"].as_bool()),
        (Some(true), Some(true))
    );
    // Disabled: the human queue answers, named as the upstream.
    let (status, headers, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"{"answer":"a human will reply"}"#);
    assert_eq!(headers["x-sloguard-upstream"], "kill_switch_fallback");
    let m = metrics(&s).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    let (status, _) = admin_post(&s, "/admin/agent/enable", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(&body[..], br#"{"answer":"from the agent"}"#);
    let m = metrics_when(&s, |m| {
        metric(m, "agent_requests_total", &[("upstream", "agent")]) >= 2.0
    })
    .await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    let from_queue = ("upstream", "kill_switch_fallback");
    let answered = [("listener", "inbound"), from_queue, ("status", "2xx")];
    expect_metric(&m, "agent_requests_total", &answered, 1.0);
    let switched = [("kind", "kill_switch")];
    expect_metric(&m, "sloguard_incidents_total", &switched, 2.0);
    s.shutdown().await;

    // No token file configured: mutations are refused outright.
    let yaml = config_head("", "inbound", "agent", "agent: {upstreams: [agent]}")
        + &format!("  agent: {{url: {}}}\n", agent.url());
    let s = start_yaml(&yaml).await;
    let (status, _) = admin_post(&s, "/admin/agent/disable", Some("s3cret")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    s.shutdown().await;
}

#[tokio::test]
async fn the_kill_switch_posts_an_alertmanager_alert() {
    let (hook, mut posts) = receiver(200).await;
    let safety = "  action: block\n  kill_switch: {violations: 1, within: 1m}\n";
    let incidents = format!("incidents: {{webhook: '{}/api/v2/alerts'}}\n", hook.url());
    let (s, script, _, _servers) = scene(safety, &incidents).await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    let (status, _, _) = post(&url(&s, "inbound", "/leak")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (method, path, body) = tokio::time::timeout(Duration::from_secs(5), posts.recv())
        .await
        .expect("an alert within 5 s")
        .unwrap();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v2/alerts"));
    let alert = &body[0];
    assert_eq!(alert["labels"]["alertname"], "SloguardKillSwitch");
    assert_eq!(alert["labels"]["agent"], "test-agent");
    assert_eq!(alert["labels"]["severity"], "sev1");
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    assert!(alert["annotations"]["runbook"]
        .as_str()
        .unwrap()
        .contains("Immediately disable affected agent"));
    assert!(alert["startsAt"].is_string());
    assert!(alert.get("endsAt").is_none_or(|e| e.is_null()));
    // The matched text is nowhere in the alert.
    assert!(!body.to_string().contains("jane"));
    s.shutdown().await;
}

#[tokio::test]
async fn the_kill_switch_survives_a_rebuilt_snapshot() {
    let yaml = "agent: a
admin: {token_file: /run/sloguard-test/token}
listeners:
  - {name: inbound, bind: 127.0.0.1:0, role: agent, route: r}
routes:
  r: {upstreams: [u]}
upstreams:
  u: {url: 'http://127.0.0.1:9'}
safety: {action: block, kill_switch: {violations: 2, within: 1m}}
";
    let config = Config::parse("test", yaml).unwrap();
    let telemetry = sloguard::telemetry::Telemetry::new();
    let shared = sloguard::proxy::Shared::new(&config, &telemetry, false);
    let first = sloguard::proxy::Snapshot::build(config.clone(), &telemetry, &shared).unwrap();
    let kill = first.listeners[0].kill.as_ref().unwrap();
    kill.set(true, "test", sloguard::incident::Severity::Sev1);
    // A reload builds a new snapshot from the same shared parts: still disabled.
    let second = sloguard::proxy::Snapshot::build(config, &telemetry, &shared).unwrap();
    assert!(second.listeners[0].kill.as_ref().unwrap().is_disabled());
    assert!(telemetry
        .render()
        .contains("sloguard_agent_disabled{agent=\"a\"} 1"));
}

/// An agent that answers `/echo` with the request's body inside its answer (as a support bot
/// quoting its user does), and `/leak` with a card number of its own; a scripted LLM beside it.
async fn echoing_sidecar(
    kill_switch: &str,
) -> (Sidecar, sloguard::sim::SimServer, sloguard::sim::SimServer) {
    use http_body_util::BodyExt;
    let agent = sloguard::sim::serve(
        LOOPBACK,
        |req: http::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_owned();
            let asked = req.into_body().collect().await.unwrap().to_bytes();
            let said = match path.as_str() {
                "/echo" => String::from_utf8_lossy(&asked).into_owned(),
                _ => "your card 5555 5555 5555 4444 is on file".to_owned(),
            };
            let mut r = http::Response::new(sloguard::sim::full(
                serde_json::json!({"answer": format!("You said: {said}")}).to_string(),
            ));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().unwrap(),
            );
            r
        },
    )
    .await
    .unwrap();
    let (llm, _) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), kill_switch, "").await;
    (s, agent, llm)
}

const BLOCK_AT_3: &str = "  action: block\n  kill_switch: {violations: 3, within: 10m}\n";

#[tokio::test]
async fn what_a_client_asked_the_agent_to_repeat_does_not_trip_the_kill_switch() {
    let (s, _agent, _llm) = echoing_sidecar(BLOCK_AT_3).await;
    // Three tasks each ask the agent to repeat a card number (spelled three ways): blocked and
    // counted, for the agent did say it, but an echo is no leak of the agent's.
    for (i, card) in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
    ]
    .iter()
    .enumerate()
    {
        let body = serde_json::json!({"message": format!("please repeat {card}")}).to_string();
        let task = format!("echo-{i}");
        let (status, headers, _) = post_as(&url(&s, "inbound", "/echo"), Some(&task), &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["x-sloguard-error"], "safety_blocked");
    }
    let m = expect_violations(&s, "inbound", "pii_credit_card", "block", 3.0).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    // The agent's own leak, in three tasks: that trips it.
    for i in 0..3 {
        let task = format!("leak-{i}");
        let (status, _, _) = post_as(&url(&s, "inbound", "/leak"), Some(&task), "{}").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{task}");
    }
    let m = metrics_when(&s, |m| metric(m, "sloguard_agent_disabled", &[]) >= 1.0).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn one_client_repeating_itself_counts_once() {
    let (s, _agent, _llm) = echoing_sidecar(BLOCK_AT_3).await;
    // One client, no task id, ten leaks: one origin; then one task, ten leaks, from the same
    // client: one more origin (the task).
    for task in [None, Some("one-task")] {
        for _ in 0..10 {
            let (status, _, _) = post_as(&url(&s, "inbound", "/leak"), task, "{}").await;
            assert_eq!(status, StatusCode::FORBIDDEN, "task {task:?}");
        }
    }
    let m = expect_violations(&s, "inbound", "pii_credit_card", "block", 20.0).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    // A third origin within the window: the switch trips.
    post_as(&url(&s, "inbound", "/leak"), Some("another-task"), "{}").await;
    let m = metrics_when(&s, |m| metric(m, "sloguard_agent_disabled", &[]) >= 1.0).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_providers_content_filter_does_not_trip_the_kill_switch() {
    let safety = "  action: block\n  kill_switch: {violations: 2, within: 10m}\n";
    let (s, _, script, _servers) = scene(safety, "").await;
    let filtered = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}]}"#;
    set(&script, "/v1/chat/completions", json(filtered));
    // Anyone can ask a model for what its provider filters: recorded, never the agent's harm.
    let chat = url(&s, "egress", "/v1/chat/completions");
    let asked = r#"{"model":"gpt-test","messages":[]}"#;
    for i in 0..5 {
        let task = format!("t{i}");
        let (status, _, _) = post_as(&chat, Some(&task), asked).await;
        assert_eq!(status, StatusCode::OK, "{task}");
    }
    let m = expect_violations(&s, "egress", "content_filter", "record", 5.0).await;
    expect_metric(&m, "sloguard_agent_disabled", &[], 0.0);
    s.shutdown().await;
}

#[test]
fn a_kill_switch_needs_an_admin_token_and_the_block_action() {
    let config = |admin: &str, safety: &str| {
        config_head(admin, "inbound", "agent", "r: {upstreams: [u]}")
            + &format!("  u: {{url: 'http://127.0.0.1:9'}}\nsafety:\n{safety}")
    };
    let token = ", token_file: /run/secrets/token";
    let switch = "  kill_switch: {violations: 3, within: 10m}\n";
    // No token: nothing but a restart could lift a tripped switch.
    let err = Config::parse("k.yaml", &config("", &format!("  action: block\n{switch}")))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("k.yaml:11: safety.kill_switch: needs admin.token_file"),
        "{err}"
    );
    // Record: the detectors are still being tuned; the switch acts on what block acts on.
    let err = Config::parse("k.yaml", &config(token, switch))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("safety.kill_switch: acts on the violations `action: block` acts on"),
        "{err}"
    );
    assert!(Config::parse(
        "k.yaml",
        &config(token, &format!("  action: block\n{switch}"))
    )
    .is_ok());
}

#[tokio::test]
async fn alerts_still_queued_at_shutdown_are_sent_before_it_ends() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // An Alertmanager that takes 300 ms to answer each post (the behaviour under test: the
    // alerts queue behind it).
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let hook = sloguard::sim::serve(
        LOOPBACK,
        move |req: http::Request<hyper::body::Incoming>| {
            let r = r.clone();
            async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let alerts: serde_json::Value = serde_json::from_slice(&body).unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                r.fetch_add(alerts.as_array().unwrap().len(), Ordering::SeqCst);
                http::Response::new(sloguard::sim::full(""))
            }
        },
    )
    .await
    .unwrap();
    let incidents = format!("incidents: {{webhook: '{}/api/v2/alerts'}}\n", hook.url());
    let (s, _, _, _servers) = scene("", &incidents).await;
    // Six incident events (the kill switch by hand, three times on and off) in quick succession:
    // the first post is under way, the rest queued, when the sidecar is told to stop.
    for _ in 0..3 {
        for action in ["disable", "enable"] {
            let (status, _) =
                admin_post(&s, &format!("/admin/agent/{action}"), Some("s3cret")).await;
            assert_eq!(status, StatusCode::OK, "{action}");
        }
    }
    s.shutdown().await;
    assert_eq!(received.load(Ordering::SeqCst), 6, "every alert went out");
}
