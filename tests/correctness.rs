//! Correctness verdicts end to end: the checks on LLM responses (a truncated answer, a refusal,
//! one that passes; JSON and streams, OpenAI and Anthropic), the agent's verdict header (counted,
//! and never reaching the client), `POST /admin/feedback`, and the `correctness` SLO's local view.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::scripted::{admin_post_body, token_file};
use common::*;
use http::{Request, Response, StatusCode};
use sloguard::sim::{self, full as sim_full, SimServer};
use sloguard::Sidecar;

/// A provider answering each request with the body the request's `x-answer` header names.
async fn provider() -> SimServer {
    sim::serve(LOOPBACK, |req| async move {
        let which = req.headers().get("x-answer").cloned();
        let which = which.as_ref().map_or("", |v| v.to_str().unwrap_or(""));
        let (content_type, body) = match which {
            "length" => ("application/json", CHAT.replace("\"stop\"", "\"length\"")),
            "refusal" => (
                "application/json",
                CHAT.replace(
                    "\"refusal\":null",
                    "\"refusal\":\"I can't help with that.\"",
                ),
            ),
            "stream-length" => (
                "text/event-stream",
                STREAM.replace("\"stop\"", "\"length\""),
            ),
            "anthropic-refusal" => ("application/json", MESSAGE.replace("end_turn", "refusal")),
            "anthropic" => ("application/json", MESSAGE.to_owned()),
            "schema-ok" => ("application/json", CHAT.replace("\"hello\"", CITY)),
            "schema-bad" => ("application/json", CHAT.replace("\"hello\"", TOWN)),
            "filtered" => (
                "application/json",
                CHAT.replace("\"stop\"", "\"content_filter\""),
            ),
            "stream-schema-ok" => (
                "text/event-stream",
                city_stream("{\\\"city\\\":", "\\\"Oslo\\\"}"),
            ),
            "stream-schema-bad" => ("text/event-stream", city_stream("{\\\"city\\\":", "12}")),
            "anthropic-schema-bad" => ("application/json", MESSAGE.replace("\"hello\"", TOWN)),
            "empty" => ("application/json", "{}".to_owned()),
            "fail" => {
                let mut r = Response::new(sim_full("{}"));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
            _ => ("application/json", CHAT.to_owned()),
        };
        let mut r = Response::new(sim_full(body));
        r.headers_mut()
            .insert("content-type", content_type.parse().unwrap());
        r
    })
    .await
    .unwrap()
}

const CHAT: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
const STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
const MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#;

/// Answers to a request for `{"city": string}`: one that follows the schema, one that does not.
const CITY: &str = r#""{\"city\":\"Oslo\"}""#;
const TOWN: &str = r#""{\"town\":\"Oslo\"}""#;

/// A Chat Completions stream whose text is `a` then `b` (JSON-escaped already).
fn city_stream(a: &str, b: &str) -> String {
    format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{a}\"}}}}]}}\n\n\
         data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{b}\"}}}}]}}\n\n\
         data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: [DONE]\n\n"
    )
}

fn llm_yaml(openai: &str, anthropic: &str, correctness: &str) -> String {
    llm_pair_yaml(
        &format!("{{url: {openai}, protocol: openai}}"),
        &format!("{{url: {anthropic}, protocol: anthropic}}"),
        correctness,
    )
}

/// A sidecar in front of `agent_url` (listener `proxy`), its admin API behind the token
/// `s3cret`, with the sections of `tail`.
async fn agent_with_token(agent_url: &str, test: &str, tail: &str) -> Sidecar {
    let token = token_file(test);
    let admin = format!(", token_file: {}", token.display());
    let head = config_head(&admin, "proxy", "agent", "agent: {upstreams: [agent]}");
    start_yaml(&(head + &format!("  agent: {{url: {agent_url}}}\n{tail}"))).await
}

async fn ask(s: &Sidecar, listener: &str, answer: &str) -> StatusCode {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    ask_with(s, listener, answer, body).await
}

/// Asks with this request body.
async fn ask_with(s: &Sidecar, listener: &str, answer: &str, body: &str) -> StatusCode {
    let path = match listener {
        "anthropic" => "/v1/messages",
        _ => "/v1/chat/completions",
    };
    let url = format!("http://{}{path}", s.listener_addr(listener).unwrap());
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("x-answer", answer)
        .body(full(body.to_owned()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let _ = body_bytes(resp).await;
    status
}

fn verdicts(m: &str, source: &str, verdict: &str, reason: &str) -> f64 {
    let labels = [("source", source), ("verdict", verdict), ("reason", reason)];
    metric(m, "agent_correctness_verdicts_total", &labels)
}

#[tokio::test]
async fn every_llm_response_gets_the_checks_verdict() {
    let p = provider().await;
    let s = start_yaml(&llm_yaml(&p.url(), &p.url(), "correctness: {}\n")).await;
    for answer in ["ok", "length", "refusal", "stream-length"] {
        assert_eq!(ask(&s, "openai", answer).await, StatusCode::OK, "{answer}");
    }
    for answer in ["anthropic", "anthropic-refusal"] {
        assert_eq!(
            ask(&s, "anthropic", answer).await,
            StatusCode::OK,
            "{answer}"
        );
    }
    // A failed call says nothing about correctness (availability counts it), nor does an
    // answer that says nothing of how it ended.
    let failed = ask(&s, "openai", "fail").await;
    assert_eq!(failed, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ask(&s, "openai", "empty").await, StatusCode::OK);
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 8.0).await;
    assert_eq!(verdicts(&m, "check", "correct", "checks"), 2.0, "{m}");
    assert_eq!(verdicts(&m, "check", "incorrect", "truncated"), 2.0);
    assert_eq!(verdicts(&m, "check", "incorrect", "refusal"), 2.0);
    let on = |l| [("listener", l), ("source", "check")];
    assert_eq!(
        metric(&m, "agent_correctness_verdicts_total", &on("anthropic")),
        2.0
    );

    // Only the checks configured run.
    let only = "correctness: {checks: [refusal]}\n";
    let s = start_yaml(&llm_yaml(&p.url(), &p.url(), only)).await;
    assert_eq!(ask(&s, "openai", "length").await, StatusCode::OK);
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 1.0).await;
    assert_eq!(verdicts(&m, "check", "correct", "checks"), 1.0, "{m}");
    assert_eq!(verdicts(&m, "check", "incorrect", "truncated"), 0.0);
}

#[tokio::test]
async fn a_structured_output_that_breaks_its_schema_is_incorrect() {
    let p = provider().await;
    let s = start_yaml(&llm_yaml(&p.url(), &p.url(), "correctness: {}\n")).await;
    let schema = r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;
    let chat = format!(
        r#"{{"model":"m","messages":[],"response_format":{{"type":"json_schema","json_schema":{{"name":"c","strict":true,"schema":{schema}}}}}}}"#
    );
    let anthropic = format!(
        r#"{{"model":"m","max_tokens":9,"messages":[],"output_config":{{"format":{{"type":"json_schema","schema":{schema}}}}}}}"#
    );
    let unreadable = "model=m".to_owned();
    let asks = [
        ("openai", "schema-ok", &chat),
        ("openai", "schema-bad", &chat),
        ("openai", "stream-schema-ok", &chat),
        ("openai", "stream-schema-bad", &chat),
        // Not JSON at all breaks it too.
        ("openai", "ok", &chat),
        // A filtered answer's JSON is cut for a reason of its own, which no check here names: no
        // verdict.
        ("openai", "filtered", &chat),
        ("anthropic", "anthropic-schema-bad", &anthropic),
        // A request that cannot be read may have asked for a schema: no verdict either.
        ("openai", "ok", &unreadable),
    ];
    for (listener, answer, body) in asks {
        let status = ask_with(&s, listener, answer, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Without a schema asked for, the same answer passes.
    assert_eq!(ask(&s, "openai", "schema-bad").await, StatusCode::OK);
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 9.0).await;
    assert_eq!(
        verdicts(&m, "check", "incorrect", "schema_invalid"),
        4.0,
        "{m}"
    );
    assert_eq!(verdicts(&m, "check", "correct", "checks"), 3.0, "{m}");
    assert_eq!(
        metric(&m, "agent_correctness_verdicts_total", &[]),
        7.0,
        "{m}"
    );

    // With only the schema check, an answer without a schema gets no verdict, nor does a
    // refusal or a cut answer (their JSON is not the model's own: the other checks name them).
    let only = "correctness: {checks: [structured_output]}\n";
    let s = start_yaml(&llm_yaml(&p.url(), &p.url(), only)).await;
    assert_eq!(ask(&s, "openai", "length").await, StatusCode::OK);
    for answer in ["schema-ok", "refusal", "length"] {
        let status = ask_with(&s, "openai", answer, &chat).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 4.0).await;
    assert_eq!(verdicts(&m, "check", "correct", "checks"), 1.0, "{m}");
    assert_eq!(metric(&m, "agent_correctness_verdicts_total", &[]), 1.0);
}

#[tokio::test]
async fn without_the_section_no_verdict_is_gathered() {
    let p = provider().await;
    let s = start_yaml(&llm_yaml(&p.url(), &p.url(), "")).await;
    assert_eq!(ask(&s, "openai", "length").await, StatusCode::OK);
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 1.0).await;
    assert!(!m.contains("agent_correctness_verdicts_total"), "{m}");
}

/// An agent answering with the verdict its request's `x-verdict` names, in its verdict header.
async fn judging_agent() -> SimServer {
    sim::serve(LOOPBACK, |req| async move {
        let verdict = req.headers().get("x-verdict").cloned();
        let mut r = Response::new(sim_full("an answer"));
        if let Some(v) = verdict {
            r.headers_mut().insert("x-agent-verdict", v);
        }
        r
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_agents_verdict_is_counted_and_never_reaches_the_client() {
    let agent = judging_agent().await;
    let slo = "correctness: {}
slos:
  - {name: correct, sli: correctness, target: 0.5, window: 30d}
";
    let s = agent_with_token(&agent.url(), "correctness", slo).await;
    let baseline = async || admin_json(&s, "/slo").await["slos"][0]["counting"] == true;
    wait_until("the SLO's baseline", 10, baseline).await;
    for verdict in ["correct", "incorrect", "INCORRECT", "maybe"] {
        let req = Request::get(proxy_url(&s, "/ask")).header("x-verdict", verdict);
        let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("x-agent-verdict").is_none(), "{verdict}");
        let _ = body_bytes(resp).await;
    }
    // Later verdicts, a user's: an unknown task id counts too.
    let thumbs_down = r#"{"task_id": "task-that-ended-long-ago", "verdict": "incorrect"}"#;
    let (status, body) = admin_post_body(&s, "/admin/feedback", Some("s3cret"), thumbs_down).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let thumbs_up = r#"{"task_id": "t-2", "verdict": "correct"}"#;
    let (status, _) = admin_post_body(&s, "/admin/feedback", Some("s3cret"), thumbs_up).await;
    assert_eq!(status, StatusCode::OK);
    for bad in [
        r#"{"task_id": "t"}"#,
        r#"{"task_id": "t", "verdict": "meh"}"#,
        "not json",
    ] {
        let (status, _) = admin_post_body(&s, "/admin/feedback", Some("s3cret"), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = admin_post_body(&s, "/admin/feedback", None, thumbs_up).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let m = metrics(&s).await;
    assert_eq!(verdicts(&m, "agent", "correct", "agent"), 1.0, "{m}");
    assert_eq!(verdicts(&m, "agent", "incorrect", "agent"), 2.0);
    let feedback = [("listener", "admin"), ("source", "feedback")];
    assert_eq!(
        metric(&m, "agent_correctness_verdicts_total", &feedback),
        2.0
    );
    // The SLO: 2 correct of 5 verdicts.
    let read =
        async || admin_json(&s, "/slo").await["slos"][0]["windows"]["since_start"]["total"] == 5;
    wait_until("the SLO reads the verdicts", 10, read).await;
    let v = admin_json(&s, "/slo").await;
    assert_eq!(v["slos"][0]["windows"]["since_start"]["good"], 2, "{v}");
    assert_eq!(v["slos"][0]["severity"], "sev2", "{v}");
}

#[tokio::test]
async fn feedback_without_the_section_is_refused() {
    let agent = judging_agent().await;
    let s = agent_with_token(&agent.url(), "correctness-off", "").await;
    let given = r#"{"task_id": "t", "verdict": "correct"}"#;
    let (status, body) = admin_post_body(&s, "/admin/feedback", Some("s3cret"), given).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(String::from_utf8_lossy(&body).contains("correctness"));
}

#[test]
fn correctness_settings_are_checked_naming_the_key() {
    let base = |tail: &str| {
        config_head("", "proxy", "agent", "agent: {upstreams: [agent]}")
            + "  agent: {url: http://127.0.0.1:1}\n"
            + tail
    };
    let cases = [
        (
            "slos: [{name: c, sli: correctness, target: 0.9}]\n",
            "slos[0].sli",
        ),
        (
            "correctness: {}\nslos: [{name: a, sli: availability, target: 0.9, sources: [agent]}]\n",
            "slos[0].sources",
        ),
        ("correctness: {verdict_header: 'a b'}\n", "correctness.verdict_header"),
        ("correctness: {checks: [refusal, refusal]}\n", "correctness.checks[1]"),
        ("correctness: {checks: [spelling]}\n", "correctness.checks"),
        (
            "slos: [{name: a, sli: availability, target: 0.9, listeners: [admin]}]\n",
            "slos[0].listeners[0]",
        ),
    ];
    for (tail, key) in cases {
        let err = sloguard::Config::parse("test", &base(tail))
            .expect_err(tail)
            .to_string();
        assert!(err.contains(key), "{tail}: {err}");
    }
    let ok = "correctness:\nslos: [{name: c, sli: correctness, target: 0.9, sources: [check, feedback]}]\n";
    sloguard::Config::parse("test", &base(ok)).unwrap();
    // The feedback endpoint's verdicts are on listener `admin`: a correctness SLO may pick it,
    // and no listener may take the name.
    let feedback =
        "correctness:\nslos: [{name: c, sli: correctness, target: 0.9, listeners: [admin]}]\n";
    sloguard::Config::parse("test", &base(feedback)).unwrap();
    let taken = base("").replace("name: proxy", "name: admin");
    let err = sloguard::Config::parse("test", &taken)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listeners[0].name"), "{err}");
}
