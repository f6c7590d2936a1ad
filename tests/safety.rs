//! Safety end to end: detectors over what the agent and the LLM say (JSON and SSE), the block
//! action (403, or an error event that ends a stream), and incident webhooks received by a real
//! in-process HTTP receiver. Assertions are on what the client gets and `/metrics`. The kill
//! switch has its own file, `tests/kill_switch.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::scripted::*;
use common::*;
use http::{header, Request, StatusCode};

/// Texts that each one detector finds.
const SAMPLES: [(&str, &str); 6] = [
    ("pii_email", "write to jane.doe@acme-corp.io today"),
    ("pii_credit_card", "card 4111 1111 1111 1111 on file"),
    ("pii_us_ssn", "ssn 123-45-6789 here"),
    ("secrets", "use sk-proj-abcdefghijklmnopqrstuvwxyz0123 now"),
    ("internal_hosts", "see http://billing.internal/x"),
    ("banned_terms", "about project falcon soon"),
];

const VIOLATIONS: &str = "agent_safety_violations_total";
const RESPONSES: &str = "agent_responses_total";
const NOTIFICATIONS: &str = "sloguard_incident_notifications_total";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_detector_is_counted_in_both_roles_json_and_sse() {
    let (s, a_script, l_script, _servers) = scene("  action: record\n", "").await;
    for (i, (detector, text)) in SAMPLES.iter().enumerate() {
        // Agent: a JSON answer (the text in a nested string value, escaped) and an SSE stream of
        // plain-text events split inside the match.
        let escaped = serde_json::json!({"answer": {"parts": ["ok", text]}}).to_string();
        set(&a_script, &format!("/json{i}"), json(&escaped));
        let (head, tail) = text.split_at(text.len() / 2);
        let events = [format!("data: {head}\n\n"), format!("data: {tail}\n\n")];
        set(
            &a_script,
            &format!("/sse{i}"),
            sse(&[&events[0], &events[1]]),
        );
        set(
            &l_script,
            &format!("/json{i}/chat/completions"),
            chat_json(text),
        );
        set(
            &l_script,
            &format!("/sse{i}/chat/completions"),
            chat_sse(&[head, tail]),
        );
        for (listener, path) in [
            ("inbound", format!("/json{i}")),
            ("inbound", format!("/sse{i}")),
            ("egress", format!("/json{i}/chat/completions")),
            ("egress", format!("/sse{i}/chat/completions")),
        ] {
            let (status, _, body) = post(&url(&s, listener, &path)).await;
            assert_eq!(status, StatusCode::OK, "{listener}{path}");
            // Record: the answer passes as it was.
            assert!(!body.is_empty());
        }
        let m = metrics_when(&s, |m| {
            violations(m, "inbound", detector, "record") >= 2.0
                && violations(m, "egress", detector, "record") >= 2.0
        })
        .await;
        for listener in ["inbound", "egress"] {
            let got = violations(&m, listener, detector, "record");
            assert_eq!(got, 2.0, "{detector} on {listener}");
        }
    }
    let m = metrics(&s).await;
    for (detector, _) in SAMPLES {
        // Nothing else fired: each sample is found by its own detector only.
        expect_metric(&m, VIOLATIONS, &[("detector", detector)], 4.0);
    }
    for listener in ["inbound", "egress"] {
        let answered = 2.0 * SAMPLES.len() as f64;
        expect_metric(&m, RESPONSES, &[("listener", listener)], answered);
    }
    // A clean answer is inspected and counts nothing; ids and model names are not output text.
    set(&l_script, "/v1/chat/completions", chat_json("all good"));
    let (status, _, _) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    let m = metrics_when(&s, |m| {
        metric(m, RESPONSES, &[("listener", "egress")]) >= 13.0
    })
    .await;
    expect_metric(&m, VIOLATIONS, &[("listener", "egress")], 12.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_match_split_across_two_sse_events_is_found_once() {
    let (s, _, script, _servers) = scene("", "").await;
    set(
        &script,
        "/v1/chat/completions",
        chat_sse(&[
            "Your key: sk-proj-abcdefghij",
            "klmnopqrstuvwxyz0123 keep it",
        ]),
    );
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let m = metrics_when(&s, |m| violations(m, "egress", "secrets", "record") >= 1.0).await;
    expect_metric(&m, VIOLATIONS, &[], 1.0);
    expect_metric(&m, RESPONSES, &[("listener", "egress")], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn block_turns_a_json_answer_into_403_and_passes_clean_ones_untouched() {
    let (s, script, _, _servers) = scene("  action: block\n", "").await;
    set(&script, "/leak", json(r#"{"answer":"mail jane@acme.io"}"#));
    let clean = r#"{"answer":"nothing to see","n":[1,2,3]}"#;
    let mut clean_reply = json(clean);
    clean_reply.headers.push((
        "content-length",
        Box::leak(clean.len().to_string().into_boxed_str()),
    ));
    set(&script, "/clean", clean_reply);
    let (status, headers, body) = post(&url(&s, "inbound", "/leak")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sloguard-error"], "safety_blocked");
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["type"], "safety_blocked");
    assert!(
        !String::from_utf8_lossy(&body).contains("jane"),
        "the match never goes out"
    );
    let (status, _, body) = post(&url(&s, "inbound", "/clean")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, clean.as_bytes());
    // A HEAD answer has no body to read: it passes with its headers as they were.
    let head = client()
        .request(
            Request::head(url(&s, "inbound", "/clean"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        clean.len().to_string().as_str()
    );
    // A card number answered as a JSON number is text too.
    set(&script, "/number", json(r#"{"card": 4111111111111111}"#));
    let (status, _, body) = post(&url(&s, "inbound", "/number")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&body).contains("4111"));
    let m = metrics_when(&s, |m| {
        metric(m, RESPONSES, &[("listener", "inbound")]) >= 4.0
    })
    .await;
    assert_eq!(violations(&m, "inbound", "pii_email", "block"), 1.0);
    assert_eq!(violations(&m, "inbound", "pii_email", "record"), 0.0);
    assert_eq!(violations(&m, "inbound", "pii_credit_card", "block"), 1.0);
    let refused = [("listener", "inbound"), ("status", "4xx")];
    expect_metric(&m, "agent_requests_total", &refused, 2.0);
    // The agent answered: its attempt counts as ok.
    expect_attempts(&m, "agent", "ok", 4.0);
    // The sidecar's own time is recorded for each, blocked or not.
    let inbound = [("listener", "inbound")];
    expect_metric(&m, "sloguard_overhead_seconds_count", &inbound, 4.0);
    s.shutdown().await;
}

#[tokio::test]
async fn block_ends_a_stream_with_an_error_event_and_sends_nothing_after() {
    let (s, _, script, _servers) = scene("  action: block\n", "").await;
    let filler = "lorem ipsum dolor sit amet ".repeat(40);
    set(
        &script,
        "/v1/chat/completions",
        chat_sse(&[
            &filler,
            "and the key is sk-ant-api03-ABCDEFGHIJ",
            "KLMNOPQRSTUVWXYZ0123456789",
            " AFTER-THE-MATCH",
        ]),
    );
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK, "the head went out before the match");
    let text = String::from_utf8_lossy(&body);
    // The clean text before the match went out; then the error event, and nothing after.
    assert!(text.contains("lorem ipsum"), "{text}");
    assert!(!text.contains("sk-ant"), "{text}");
    assert!(!text.contains("AFTER-THE-MATCH"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        text.ends_with("\n\n") && text.contains("event: error\ndata: {\"error\":{"),
        "{text}"
    );
    let last = text.rsplit("event: error\ndata: ").next().unwrap();
    let err: serde_json::Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(err["error"]["type"], "safety_blocked");
    let m = expect_violations(&s, "egress", "secrets", "block", 1.0).await;
    expect_metric(&m, RESPONSES, &[("listener", "egress")], 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn upstream_signals_count_flag_and_content_filter() {
    let (s, a_script, l_script, [agent, llm]) = scene("", "").await;
    let mut flagged = json(r#"{"answer":"fine words"}"#);
    flagged.headers.push(("x-safety-flag", "pii"));
    set(&a_script, "/flagged", flagged);
    let filtered = json(
        r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}]}"#,
    );
    set(&l_script, "/v1/chat/completions", filtered);
    for (listener, path) in [("inbound", "/flagged"), ("egress", "/v1/chat/completions")] {
        let (status, _, _) = post(&url(&s, listener, path)).await;
        assert_eq!(status, StatusCode::OK, "{listener}{path}");
    }
    let m = metrics_when(&s, |m| {
        violations(m, "egress", "content_filter", "record") >= 1.0
            && violations(m, "inbound", "safety_flag", "record") >= 1.0
    })
    .await;
    assert_eq!(violations(&m, "inbound", "safety_flag", "record"), 1.0);
    assert_eq!(violations(&m, "egress", "content_filter", "record"), 1.0);
    s.shutdown().await;

    // Under block, the agent's own flag blocks its answer.
    let s = sidecar(&agent.url(), &llm.url(), "  action: block\n", "").await;
    expect_refused(&url(&s, "inbound", "/flagged"), BLOCKED).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_webhook_receiver_down_leaves_requests_alone_and_the_alert_is_counted_dropped() {
    let (agent, script) = scripted().await;
    set(&script, "/ask", json(r#"{"answer":"ok"}"#));
    let token = token_file("down");
    let admin = format!(", token_file: {}", token.display());
    let yaml = config_head(&admin, "inbound", "agent", "agent: {upstreams: [agent]}")
        + &format!(
            "  agent: {{url: {}}}\nincidents: {{webhook: 'http://{}/api/v2/alerts'}}\n",
            agent.url(),
            closed_port()
        );
    let s = start_yaml(&yaml).await;
    let started = std::time::Instant::now();
    for action in ["disable", "enable"] {
        let (status, _) = admin_post(&s, &format!("/admin/agent/{action}"), Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{action}");
    }
    // Requests are served at once meanwhile.
    let (status, _, _) = post(&url(&s, "inbound", "/ask")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    let m = metrics_when(&s, |m| {
        metric(m, NOTIFICATIONS, &[("result", "failed")]) >= 2.0
    })
    .await;
    expect_metric(&m, NOTIFICATIONS, &[("result", "failed")], 2.0);
    expect_metric(&m, NOTIFICATIONS, &[("result", "sent")], 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_circuit_opening_and_closing_are_incidents_with_the_availability_severity() {
    let (agent, _a) = scripted().await;
    let (hook, mut posts) = receiver(200).await;
    let token = token_file("breaker");
    let admin = format!(", token_file: {}", token.display());
    let yaml = config_head(&admin, "inbound", "agent", "agent: {upstreams: [agent]}")
        + &format!(
            "  agent: {{url: {}, circuit_breaker: {{}}}}
incidents: {{webhook: '{}/api/v2/alerts', severities: {{availability: sev3}}}}
",
            agent.url(),
            hook.url()
        );
    let s = start_yaml(&yaml).await;
    for action in ["open", "close"] {
        let (status, _) = admin_post(
            &s,
            &format!("/admin/circuits/agent/{action}"),
            Some("s3cret"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut alerts = Vec::new();
    while alerts.len() < 2 {
        let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), posts.recv())
            .await
            .expect("alerts within 5 s")
            .unwrap();
        alerts.extend(body.as_array().unwrap().iter().cloned());
    }
    for a in &alerts {
        assert_eq!(a["labels"]["upstream"], "agent");
        assert_eq!(a["labels"]["severity"], "sev3");
        assert_eq!(a["labels"]["kind"], "circuit_breaker");
    }
    // Opened, then resolved with the same start.
    assert!(alerts[0].get("endsAt").is_none_or(|e| e.is_null()));
    assert!(alerts[1]["endsAt"].is_string());
    assert_eq!(alerts[0]["startsAt"], alerts[1]["startsAt"]);
    let m = metrics(&s).await;
    let opened_and_closed = [("severity", "sev3"), ("kind", "circuit_breaker")];
    expect_metric(&m, "sloguard_incidents_total", &opened_and_closed, 2.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_blocked_stream_is_never_cached() {
    let (primary, p_script) = scripted().await;
    let (spare, s_script) = scripted().await;
    let mut leaking = chat_sse(&[
        "fine so far ",
        "key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX ",
        "more",
    ]);
    // A content type in capitals: still a stream, held back and not cacheable.
    leaking.content_type = "Text/Event-Stream";
    set(&p_script, "/v1/chat/completions", leaking);
    let route = "llm: {upstreams: [openai, spare], cache: {}}";
    let yaml = config_head("", "egress", "llm", route)
        + &format!(
            "  openai: {{url: {}, protocol: openai}}
  spare: {{url: {}, protocol: openai}}
safety: {{action: block}}
",
            primary.url(),
            spare.url()
        );
    let s = start_yaml(&yaml).await;
    let (status, _, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("event: error") && !text.contains("sk-proj"),
        "{text}"
    );
    // Both upstreams fail now: the cache has nothing to give (the blocked stream is not in it).
    let mut failing = json(r#"{"error":"down"}"#);
    failing.status = 500;
    set(&p_script, "/v1/chat/completions", failing.clone());
    set(&s_script, "/v1/chat/completions", failing);
    let (status, headers, body) = post(&url(&s, "egress", "/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(headers.get("x-sloguard-cache").is_none());
    assert!(!String::from_utf8_lossy(&body).contains("sk-proj"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_compressed_json_answer_is_inspected_and_blocked() {
    use std::io::Write;
    let (s, _, script, _servers) = scene("  action: block\n", "").await;
    let body = serde_json::json!({
        "id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "mail jane@acme.io"}, "finish_reason": "stop"}]
    })
    .to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let mut reply = json("");
    reply.chunks = vec![Bytes::from(gz.finish().unwrap())];
    reply.headers.push(("content-encoding", "gzip"));
    set(&script, "/v1/chat/completions", reply);
    expect_refused(&url(&s, "egress", "/v1/chat/completions"), BLOCKED).await;
    expect_violations(&s, "egress", "pii_email", "block", 1.0).await;
    s.shutdown().await;
}
