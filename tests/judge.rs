//! The judge (`correctness.judge`) end to end, with a real in-process agent and a real
//! in-process judge model: sampled answers of an `agent` listener graded by an OpenAI or an
//! Anthropic judge (what the judge is sent, the verdict read from plain JSON, prose or a code
//! fence, a reply without one), judge failures and stalls (counted `failed`, never incorrect, and
//! off the client's path), answers safety blocked or flagged (never sent), the per-minute limit,
//! unsampled and non-2xx answers (never sent), and the config errors naming their key.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;

/// The agent listener's name: the `listener` label of the judge's verdicts.
const LISTENER: &str = "inbound";
const SAMPLES: &str = "sloguard_judge_samples_total";
const VERDICTS: &str = "agent_correctness_verdicts_total";
const CALLS: &str = "gen_ai_client_operation_duration_seconds_count";
const ATTEMPTS: &str = "sloguard_upstream_requests_total";
const RUBRIC: &str = "RUBRIC-7f3: grade the agent. Question: {request} Answer: {response}";

// ---------------------------------------------------------------------------------------------
// The agent and the judge
// ---------------------------------------------------------------------------------------------

/// The body the agent answers a request whose `x-answer` header is `text` with.
fn agent_answer(text: &str) -> String {
    serde_json::json!({ "answer": text }).to_string()
}

/// An agent answering `{"answer": <x-answer>}` with the status `x-status` names (200), as the
/// type `x-type` names (JSON).
async fn agent() -> SimServer {
    sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let text = header("x-answer").unwrap_or_default();
        let status = header("x-status").map_or(200, |s| s.parse().unwrap());
        let kind = header("x-type").unwrap_or_else(|| "application/json".into());
        let _ = req.into_body().collect().await;
        let mut r = Response::new(sim::full(agent_answer(&text)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", kind.parse().unwrap());
        r
    })
    .await
    .unwrap()
}

/// One request the judge received.
#[derive(Debug, Clone)]
struct Seen {
    method: http::Method,
    path: String,
    headers: HeaderMap,
    body: serde_json::Value,
    at: Instant,
}

impl Seen {
    /// The prompt: the one user message's text.
    fn prompt(&self) -> &str {
        let messages = self.body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "{}", self.body);
        assert_eq!(messages[0]["role"], "user", "{}", self.body);
        messages[0]["content"].as_str().expect("a text prompt")
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A judge model that records every request and answers by the marker its prompt holds (the
/// agent's answer is in the prompt, so the agent's text scripts the verdict):
///
/// - `MARK-OK`: `{"correct": true, ...}` as the whole text;
/// - `MARK-PROSE`: `{"correct": false, ...}` inside prose;
/// - `MARK-FENCE`: `{"correct": true}` in a ```` ```json ```` fence;
/// - `MARK-NONE`: prose with no verdict;
/// - `MARK-FAIL`: a 500;
/// - `MARK-CUT`: a 200 whose body breaks off (shorter than its `content-length`);
/// - `MARK-STALL`: never answers.
///
/// The reply is in the shape the path asks for: Messages on `/v1/messages`, else Chat
/// Completions.
async fn judge() -> (SimServer, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let prompt = body["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let path = parts.uri.path().to_owned();
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                path: path.clone(),
                headers: parts.headers,
                body,
                at: Instant::now(),
            });
            let marked = |m: &str| prompt.contains(m);
            if marked("MARK-STALL") {
                return std::future::pending().await;
            }
            if marked("MARK-FAIL") {
                let mut r = Response::new(sim::full(r#"{"error":{"message":"overloaded"}}"#));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
            if marked("MARK-CUT") {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(Bytes::from_static(b"{\"choices\":[")).await.unwrap();
                drop(tx);
                let mut r = Response::new(sim::ChannelBody(rx).boxed());
                r.headers_mut()
                    .insert("content-length", "1000".parse().unwrap());
                return r;
            }
            let text = if marked("MARK-OK") {
                r#"{"correct": true, "reason": "Paris is right"}"#
            } else if marked("MARK-PROSE") {
                r#"Let me think. The capital is wrong. {"correct": false, "reason": "wrong city"} That is my verdict."#
            } else if marked("MARK-FENCE") {
                "Here is my verdict:\n```json\n{\"correct\": true, \"reason\": \"fine\"}\n```\n"
            } else if marked("MARK-NONE") {
                "The answer looks plausible to me, but I would not say."
            } else {
                r#"{"correct": true}"#
            };
            let reply = match path.as_str() {
                "/v1/messages" => serde_json::json!({
                    "id": "msg_j", "type": "message", "role": "assistant", "model": "judge-model",
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn", "usage": {"input_tokens": 40, "output_tokens": 9}
                }),
                _ => serde_json::json!({
                    "id": "chatcmpl-j", "object": "chat.completion", "model": "judge-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 9}
                }),
            };
            let mut r = Response::new(sim::full(reply.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
    .await
    .unwrap();
    (server, log)
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// The sidecar and its client
// ---------------------------------------------------------------------------------------------

/// A sidecar with the `agent` listener [`LISTENER`] in front of `agent_url`, the upstream `judge`
/// set as `judge_upstream` (`{url: …, protocol: …}`), `correctness.judge` with the keys of
/// `judge_keys` (one `key: value` a line, no indent), and the sections of `tail`.
async fn sidecar(agent_url: &str, judge_upstream: &str, judge_keys: &str, tail: &str) -> Sidecar {
    start_yaml(&yaml(agent_url, judge_upstream, judge_keys, tail)).await
}

fn yaml(agent_url: &str, judge_upstream: &str, judge_keys: &str, tail: &str) -> String {
    let keys: String = judge_keys
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {}\n", l.trim()))
        .collect();
    config_head("", LISTENER, "agent", "agent: {upstreams: [agent]}")
        + &format!(
            "  agent: {{url: {agent_url}}}\n  judge: {judge_upstream}\ncorrectness:\n  judge:\n{keys}{tail}"
        )
}

/// The judge settings every test starts from: all answers sampled, the rubric [`RUBRIC`].
fn judge_keys(extra: &str) -> String {
    format!("upstream: judge\nmodel: judge-model\nsample_ratio: 1.0\nrubric: \"{RUBRIC}\"\n{extra}")
}

/// The client's question of request `n`.
fn question(n: usize) -> String {
    format!(r#"{{"question":"What is the capital of France? (ask {n})"}}"#)
}

/// What the client got from the agent listener for question `n`, the agent told to answer
/// `answer` with `status`: the status, the headers and the body.
async fn ask(s: &Sidecar, n: usize, answer: &str, status: u16) -> (StatusCode, HeaderMap, Bytes) {
    let url = format!("http://{}/ask", s.listener_addr(LISTENER).unwrap());
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("x-answer", answer)
        .header("x-status", status.to_string())
        .body(full(question(n)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// [`ask`] of a 2xx answer that must reach the client exactly as the agent sent it.
async fn ask_ok(s: &Sidecar, n: usize, answer: &str) {
    let (status, _, body) = ask(s, n, answer, 200).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(body, agent_answer(answer).as_bytes(), "{answer}");
}

fn samples(m: &str, result: &str) -> f64 {
    metric(m, SAMPLES, &[("agent", "test-agent"), ("result", result)])
}

/// Samples the judge is done with (judged, failed or unreadable).
fn done(m: &str) -> f64 {
    samples(m, "judged") + samples(m, "failed") + samples(m, "unreadable")
}

fn judge_verdicts(m: &str, verdict: &str) -> f64 {
    let labels = [
        ("agent", "test-agent"),
        ("listener", LISTENER),
        ("source", "judge"),
        ("verdict", verdict),
        ("reason", "judge"),
    ];
    metric(m, VERDICTS, &labels)
}

fn requests(m: &str) -> f64 {
    metric(m, "agent_requests_total", &[("listener", LISTENER)])
}

/// `/metrics` once `ready` holds for it (or after 5 s), read once more: one read is no instant (a
/// counter written out early can miss an increment made before one written out later), the next
/// read shows all that came before what `ready` saw.
async fn settled(s: &Sidecar, ready: impl Fn(&str) -> bool) -> String {
    metrics_when(s, ready).await;
    metrics(s).await
}

/// `/metrics` once `n` requests are counted on the agent listener; fails if they are not.
async fn counted(s: &Sidecar, n: f64) -> String {
    let m = settled(s, |m| requests(m) >= n).await;
    assert_eq!(requests(&m), n, "{m}");
    m
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sampled_answers_are_graded_by_an_openai_judge() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let keys = common::scripted::own_file("judge", "keys", "sk-judge-key\n");
    let upstream = format!(
        "{{url: {}, protocol: openai, api_keys_file: '{}'}}",
        judge.url(),
        keys.display()
    );
    let s = sidecar(&agent.url(), &upstream, &judge_keys(""), "").await;
    let answers = [
        "Paris is the capital. MARK-OK",
        "Lyon is the capital. MARK-PROSE",
        "It is Paris. MARK-FENCE",
        "Probably Paris. MARK-NONE",
    ];
    for (n, answer) in answers.iter().enumerate() {
        ask_ok(&s, n, answer).await;
    }
    let m = settled(&s, |m| done(m) >= 4.0).await;
    assert_eq!(samples(&m, "judged"), 3.0, "{m}");
    assert_eq!(samples(&m, "unreadable"), 1.0, "{m}");
    assert_eq!(samples(&m, "failed"), 0.0, "{m}");
    assert_eq!(samples(&m, "dropped"), 0.0, "{m}");
    // Plain JSON and the fence: correct; the prose: incorrect; no verdict: neither.
    assert_eq!(judge_verdicts(&m, "correct"), 2.0, "{m}");
    assert_eq!(judge_verdicts(&m, "incorrect"), 1.0, "{m}");
    let by_source = [("source", "judge")];
    assert_eq!(metric(&m, VERDICTS, &by_source), 3.0, "{m}");
    // The judge calls are LLM calls of the upstream `judge`, counted as its attempts,
    let judge_upstream = [("upstream", "judge")];
    assert_eq!(metric(&m, CALLS, &judge_upstream), 4.0, "{m}");
    let ok = [("upstream", "judge"), ("outcome", "ok")];
    assert_eq!(metric(&m, ATTEMPTS, &ok), 4.0, "{m}");
    // with the judge's model and the tokens it reported (40 in each reply).
    let input = [
        ("upstream", "judge"),
        ("gen_ai_request_model", "judge-model"),
        ("gen_ai_token_type", "input"),
    ];
    let tokens = "gen_ai_client_token_usage_sum";
    assert_eq!(metric(&m, tokens, &input), 160.0, "{m}");

    let got = seen(&log);
    assert_eq!(got.len(), 4, "{got:?}");
    for (n, answer) in answers.iter().enumerate() {
        let call = got
            .iter()
            .find(|c| c.prompt().contains(answer))
            .unwrap_or_else(|| panic!("no judge call for {answer}: {got:?}"));
        assert_eq!(call.method, http::Method::POST);
        assert_eq!(call.path, "/v1/chat/completions");
        assert_eq!(call.headers["authorization"], "Bearer sk-judge-key");
        assert_eq!(call.headers["content-type"], "application/json");
        assert!(call.headers.get("anthropic-version").is_none());
        assert_eq!(call.body["model"], "judge-model", "{}", call.body);
        // OpenAI's reasoning models refuse both.
        assert!(call.body.get("temperature").is_none(), "{}", call.body);
        assert!(call.body.get("max_tokens").is_none(), "{}", call.body);
        let prompt = call.prompt();
        // The rubric, filled in with the client's request (its method and target, then its
        // body's text: the JSON's strings, one a line) and the agent's answer's text, then the
        // instruction to answer with a verdict.
        let request = format!("POST /ask\nquestion\nWhat is the capital of France? (ask {n})");
        let filled = RUBRIC
            .replace("{request}", &request)
            .replace("{response}", &format!("answer\n{answer}"));
        assert!(prompt.starts_with(&filled), "{prompt}");
        assert!(prompt[filled.len()..].contains("\"correct\""), "{prompt}");
    }
    // What each call carried is that exchange's and no other's.
    for call in &got {
        let marks = answers
            .iter()
            .filter(|a| call.prompt().contains(*a))
            .count();
        assert_eq!(marks, 1, "{}", call.prompt());
    }
}

#[tokio::test]
async fn an_anthropic_judge_is_asked_in_its_own_protocol() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let keys = common::scripted::own_file("judge", "keys", "ant-judge-key\n");
    let upstream = format!(
        "{{url: {}, protocol: anthropic, api_keys_file: '{}'}}",
        judge.url(),
        keys.display()
    );
    let s = sidecar(&agent.url(), &upstream, &judge_keys(""), "").await;
    ask_ok(&s, 0, "Lyon, surely. MARK-PROSE").await;
    ask_ok(&s, 1, "Paris. MARK-OK").await;
    let m = settled(&s, |m| done(m) >= 2.0).await;
    assert_eq!(samples(&m, "judged"), 2.0, "{m}");
    assert_eq!(judge_verdicts(&m, "incorrect"), 1.0, "{m}");
    assert_eq!(judge_verdicts(&m, "correct"), 1.0, "{m}");
    let judge_upstream = [("upstream", "judge")];
    assert_eq!(metric(&m, CALLS, &judge_upstream), 2.0, "{m}");

    let got = seen(&log);
    assert_eq!(got.len(), 2, "{got:?}");
    for call in &got {
        assert_eq!(call.method, http::Method::POST);
        assert_eq!(call.path, "/v1/messages");
        assert_eq!(call.headers["anthropic-version"], "2023-06-01");
        assert_eq!(call.headers["x-api-key"], "ant-judge-key");
        assert!(call.headers.get("authorization").is_none());
        assert_eq!(call.body["model"], "judge-model", "{}", call.body);
        assert_eq!(call.body["max_tokens"], 512, "{}", call.body);
        assert_eq!(call.body["temperature"], 0, "{}", call.body);
        assert!(call.prompt().starts_with("RUBRIC-7f3"), "{}", call.prompt());
    }
}

#[tokio::test]
async fn judge_failures_and_stalls_count_as_failed_never_incorrect() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let upstream = format!("{{url: {}, protocol: openai}}", judge.url());
    // Long enough that a loaded machine does not reach it before the client has its answers.
    let s = sidecar(&agent.url(), &upstream, &judge_keys("timeout: 3s"), "").await;

    // The judge stalls on the first sample: the client has its answer all the same.
    ask_ok(&s, 0, "Paris. MARK-STALL").await;
    let stall = async || seen(&log).iter().any(|c| c.prompt().contains("MARK-STALL"));
    wait_until("the judge is asked about the first answer", 5, stall).await;
    let stalled_at = seen(&log)[0].at;
    // While the judge holds that call, the next requests are answered: the stalled call is still
    // pending when the client has its answers.
    ask_ok(&s, 1, "Paris. MARK-FAIL").await;
    ask_ok(&s, 2, "Paris. MARK-CUT").await;
    let answered = stalled_at.elapsed();
    let m = metrics(&s).await;
    let timeouts = [("upstream", "judge"), ("outcome", "timeout")];
    assert_eq!(
        metric(&m, ATTEMPTS, &timeouts),
        0.0,
        "the stalled judge call ended before the client had its answers ({answered:?})"
    );

    // The 500, the broken body and the stall past `timeout`: failed, no verdict.
    let m = settled(&s, |m| samples(m, "failed") >= 3.0).await;
    assert_eq!(samples(&m, "failed"), 3.0, "{m}");
    assert_eq!(samples(&m, "judged"), 0.0, "{m}");
    assert_eq!(samples(&m, "unreadable"), 0.0, "{m}");
    assert_eq!(judge_verdicts(&m, "incorrect"), 0.0, "{m}");
    assert_eq!(judge_verdicts(&m, "correct"), 0.0, "{m}");
    assert_eq!(metric(&m, ATTEMPTS, &timeouts), 1.0, "{m}");
    let server_errors = [("upstream", "judge"), ("outcome", "5xx")];
    assert_eq!(metric(&m, ATTEMPTS, &server_errors), 1.0, "{m}");
    let reset = [("upstream", "judge"), ("outcome", "reset")];
    assert_eq!(metric(&m, ATTEMPTS, &reset), 1.0, "{m}");
    // Recorded as LLM calls of the judge upstream, each one failed.
    let judge_upstream = [("upstream", "judge")];
    assert_eq!(metric(&m, CALLS, &judge_upstream), 3.0, "{m}");
    // The agent's own requests are untouched by the judge's failures.
    let agent_ok = [("listener", LISTENER), ("status", "2xx")];
    assert_eq!(metric(&m, "agent_requests_total", &agent_ok), 3.0, "{m}");
    assert_eq!(seen(&log).len(), 3);
}

#[tokio::test]
async fn blocked_or_flagged_answers_are_never_sent() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let upstream = format!("{{url: {}, protocol: openai}}", judge.url());
    for action in ["block", "record"] {
        log.lock().unwrap().clear();
        let safety = format!(
            "safety:\n  apply_to: [agent]\n  detectors:\n    - {{name: banned_terms, keywords: [falconry]}}\n  action: {action}\n"
        );
        let s = sidecar(&agent.url(), &upstream, &judge_keys(""), &safety).await;
        let secret = format!("We discuss falconry here. MARK-OK {action}");
        let (status, headers, body) = ask(&s, 0, &secret, 200).await;
        match action {
            "block" => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
                assert_eq!(headers["x-sloguard-error"], "safety_blocked");
            }
            _ => {
                // Recorded only: the client gets the answer, the judge does not.
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body, agent_answer(&secret).as_bytes());
            }
        }
        let v = [("listener", LISTENER), ("action", action)];
        let m = settled(&s, |m| {
            requests(m) >= 1.0 && metric(m, "agent_safety_violations_total", &v) >= 1.0
        })
        .await;
        assert_eq!(metric(&m, "agent_safety_violations_total", &v), 1.0, "{m}");
        counted(&s, 1.0).await;
        // A clean answer after it is sent: once the judge has graded it, the flagged one (offered
        // first, if at all) would have been sent before.
        ask_ok(&s, 1, "Paris. MARK-OK clean").await;
        let m = settled(&s, |m| samples(m, "judged") >= 1.0).await;
        assert_eq!(samples(&m, "judged"), 1.0, "{action}: {m}");
        assert_eq!(done(&m) + samples(&m, "dropped"), 1.0, "{action}: {m}");
        let got = seen(&log);
        assert_eq!(got.len(), 1, "{action}: {got:?}");
        assert!(got[0].prompt().contains("MARK-OK clean"), "{action}");
        assert!(
            got.iter().all(|c| !c.prompt().contains("falconry")),
            "{action}: {got:?}"
        );
    }
}

#[tokio::test]
async fn past_max_per_minute_samples_are_dropped() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let upstream = format!("{{url: {}, protocol: openai}}", judge.url());
    let s = sidecar(
        &agent.url(),
        &upstream,
        &judge_keys("max_per_minute: 2"),
        "",
    )
    .await;
    for n in 0..5 {
        ask_ok(&s, n, &format!("Paris. MARK-OK {n}")).await;
    }
    let m = settled(&s, |m| samples(m, "judged") + samples(m, "dropped") >= 5.0).await;
    assert_eq!(samples(&m, "judged"), 2.0, "{m}");
    assert_eq!(samples(&m, "dropped"), 3.0, "{m}");
    assert_eq!(judge_verdicts(&m, "correct"), 2.0, "{m}");
    // The first two of the minute were sent; the client got every answer all the same.
    let got = seen(&log);
    assert_eq!(got.len(), 2, "{got:?}");
    for n in 0..2 {
        let mark = format!("MARK-OK {n}");
        assert!(got.iter().any(|c| c.prompt().contains(&mark)), "{mark}");
    }
    counted(&s, 5.0).await;

    // A sample takes its place when its request arrives, and gives it back when it goes nowhere:
    // with one a minute, the agent's 500 does not cost the answer after it its sample.
    let one = sidecar(
        &agent.url(),
        &upstream,
        &judge_keys("max_per_minute: 1"),
        "",
    )
    .await;
    let (status, _, _) = ask(&one, 0, "Oops. MARK-OK GONE", 500).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    ask_ok(&one, 1, "Paris. MARK-OK AFTER").await;
    let m = settled(&one, |m| samples(m, "judged") >= 1.0).await;
    assert_eq!(samples(&m, "judged"), 1.0, "{m}");
    assert_eq!(samples(&m, "dropped"), 0.0, "{m}");
    // With the minute's one place spent, the next request's sample is dropped on arrival.
    ask_ok(&one, 2, "Paris. MARK-OK LATE").await;
    let m = settled(&one, |m| samples(m, "dropped") >= 1.0).await;
    assert_eq!(samples(&m, "dropped"), 1.0, "{m}");
    assert!(seen(&log).iter().all(|c| !c.prompt().contains("LATE")));
}

#[tokio::test]
async fn non_2xx_and_unsampled_answers_are_not_sent() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let upstream = format!("{{url: {}, protocol: openai}}", judge.url());

    // `sample_ratio: 0`: none sampled. An offer is made before its request is counted, and past
    // `max_per_minute: 1` an offer is counted `dropped` then and there: a sampled answer would
    // show by the time the six are counted.
    let none = judge_keys("max_per_minute: 1").replace("sample_ratio: 1.0", "sample_ratio: 0");
    let unsampled = sidecar(&agent.url(), &upstream, &none, "").await;
    for n in 0..6 {
        ask_ok(&unsampled, n, &format!("Paris. MARK-OK UNSAMPLED {n}")).await;
    }
    let m = counted(&unsampled, 6.0).await;
    assert_eq!(metric(&m, SAMPLES, &[]), 0.0, "{m}");

    // All sampled: a 500 of the agent's is not sent, the 2xx after it is.
    let s = sidecar(&agent.url(), &upstream, &judge_keys(""), "").await;
    let (status, _, body) = ask(&s, 0, "Oops. MARK-OK FAILED", 500).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, agent_answer("Oops. MARK-OK FAILED").as_bytes());
    counted(&s, 1.0).await;
    ask_ok(&s, 1, "Paris. MARK-OK FINE").await;
    let m = settled(&s, |m| samples(m, "judged") >= 1.0).await;
    assert_eq!(samples(&m, "judged"), 1.0, "{m}");
    assert_eq!(metric(&m, SAMPLES, &[]), 1.0, "{m}");
    // By the time the 2xx is judged, neither the 500 (offered before it, if at all) nor any of
    // the unsampled answers (offered long before) has reached the judge.
    let m = metrics(&unsampled).await;
    assert_eq!(metric(&m, SAMPLES, &[]), 0.0, "{m}");
    let got = seen(&log);
    let sent = |mark: &str| got.iter().filter(|c| c.prompt().contains(mark)).count();
    assert_eq!(sent("UNSAMPLED"), 0, "{got:?}");
    assert_eq!(sent("FAILED"), 0, "{got:?}");
    assert_eq!(sent("FINE"), 1, "{got:?}");
    assert_eq!(got.len(), 1, "{got:?}");
}

#[tokio::test]
async fn answers_without_text_are_not_sent_and_long_texts_are_cut() {
    let agent = agent().await;
    let (judge, log) = judge().await;
    let upstream = format!("{{url: {}, protocol: openai}}", judge.url());
    let s = sidecar(&agent.url(), &upstream, &judge_keys("max_chars: 40"), "").await;
    // An image, and an answer with no body: nothing to grade.
    let url = format!("http://{}/ask", s.listener_addr(LISTENER).unwrap());
    for (kind, status) in [("image/png", "200"), ("application/json", "204")] {
        let req = Request::post(&url)
            .header("x-answer", "MARK-OK BINARY")
            .header("x-type", kind)
            .header("x-status", status)
            .body(full(question(0)))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        assert!(resp.status().is_success(), "{kind}");
        let _ = resp.into_body().collect().await;
    }
    counted(&s, 2.0).await;
    // A long answer: the judge sees its first 40 characters, and is told the rest is not shown.
    let long = format!("MARK-OK LONG {}THE-END", "Paris. ".repeat(40));
    ask_ok(&s, 1, &long).await;
    let m = settled(&s, |m| done(m) >= 1.0).await;
    assert_eq!(samples(&m, "judged"), 1.0, "{m}");
    assert_eq!(metric(&m, SAMPLES, &[]), 1.0, "{m}");
    let got = seen(&log);
    assert_eq!(got.len(), 1, "{got:?}");
    let prompt = got[0].prompt();
    assert!(prompt.contains("answer\nMARK-OK LONG Paris."), "{prompt}");
    assert!(!prompt.contains("THE-END"), "{prompt}");
    assert!(!prompt.contains("BINARY"), "{prompt}");
    // Both the request (its line and question past 40 characters) and the answer were cut.
    let note = "[... the rest of this text is not shown]";
    assert_eq!(prompt.matches(note).count(), 2, "{prompt}");
}

#[test]
fn bad_judge_settings_name_their_key() {
    let judge_up = "{url: http://127.0.0.1:1, protocol: openai}";
    let parse = |upstream: &str, keys: &str| {
        sloguard::Config::parse("test", &yaml("http://127.0.0.1:2", upstream, keys, ""))
    };
    parse(judge_up, &judge_keys("")).unwrap();
    let cases = [
        (
            judge_up,
            judge_keys("").replace("upstream: judge", "upstream: nowhere"),
            "correctness.judge.upstream",
        ),
        (
            "{url: http://127.0.0.1:1}",
            judge_keys(""),
            "correctness.judge.upstream",
        ),
        (
            "{url: http://127.0.0.1:1, protocol: none}",
            judge_keys(""),
            "correctness.judge.upstream",
        ),
        (
            judge_up,
            judge_keys("").replace("sample_ratio: 1.0", "sample_ratio: 1.5"),
            "correctness.judge.sample_ratio",
        ),
        (
            judge_up,
            judge_keys("").replace("sample_ratio: 1.0", "sample_ratio: -0.1"),
            "correctness.judge.sample_ratio",
        ),
    ];
    for (upstream, keys, key) in cases {
        let err = parse(upstream, &keys).expect_err(&keys).to_string();
        assert!(err.contains(key), "{upstream} / {keys}: {err}");
    }
}
