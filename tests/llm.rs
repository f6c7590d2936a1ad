//! The `llm` role end to end: the simulated provider (OpenAI and Anthropic formats, JSON and
//! SSE) behind the sidecar, asserting on what the agent gets, what the provider got, and the
//! GenAI metrics on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use sloguard::sim::{spawn_provider, ProviderSim, SeenRequest};
use sloguard::{Config, Sidecar};

const OPENAI_STREAM: &str = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{}}}]}"#;
const OPENAI_JSON: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{}}}]}"#;
const ANTHROPIC_STREAM: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"open_ticket","input_schema":{}}]}"#;
const ANTHROPIC_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"a longer question"}],"tools":[{"name":"open_ticket","input_schema":{}}]}"#;

/// A sidecar with one `llm` listener `proxy` in front of `url`; `extra` adds upstream keys.
async fn llm_sidecar(url: &str, protocol: &str, extra: &str) -> Sidecar {
    let upstream = format!(
        "  provider:
    url: {url}
    protocol: {protocol}
    timeouts: {{first_byte: 5s, idle: 5s}}
{extra}"
    );
    start_yaml(&(config_head("", "proxy", "llm", "main: {upstreams: [provider]}") + &upstream))
        .await
}

/// [`llm_sidecar`] whose upstream takes its API keys from the file at `keys`.
async fn keyed_sidecar(url: &str, protocol: &str, keys: &std::path::Path) -> Sidecar {
    let extra = format!("    api_keys_file: {}\n", keys.display());
    llm_sidecar(url, protocol, &extra).await
}

async fn provider(sim: ProviderSim) -> (sloguard::sim::SimServer, Arc<Mutex<Vec<SeenRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sim = ProviderSim {
        seen: Some(seen.clone()),
        ..sim
    };
    (spawn_provider(LOOPBACK, sim).await.unwrap(), seen)
}

fn quick() -> ProviderSim {
    paced(5, 1, 5)
}

/// A provider streaming `chunks` chunks, the first after `first_ms`, the others `gap_ms` apart.
fn paced(first_ms: u64, gap_ms: u64, chunks: usize) -> ProviderSim {
    ProviderSim {
        first_chunk_delay: Duration::from_millis(first_ms),
        chunk_delay: Duration::from_millis(gap_ms),
        chunks,
        ..ProviderSim::default()
    }
}

/// A quick provider that accepts only the API key `key`, and what it was sent.
async fn keyed_provider(key: &str) -> (sloguard::sim::SimServer, Arc<Mutex<Vec<SeenRequest>>>) {
    provider(ProviderSim {
        accepted_keys: vec![key.into()],
        ..quick()
    })
    .await
}

/// `/metrics` once `n` calls have a finish reason.
async fn finished(sidecar: &Sidecar, n: f64) -> String {
    metrics_when(sidecar, |m| metric(m, FINISHES, &[]) >= n).await
}

const FINISHES: &str = "agent_llm_finish_reasons_total";
/// The OpenAI path, and the header that has the provider simulation answer with text.
const CHAT: &str = "/v1/chat/completions";
const TEXT: &[(&str, &str)] = &[("x-sim-scenario", "text")];
const CALLS: &str = "gen_ai_client_operation_duration_seconds_count";
const FIRST_CHUNKS: &str = "gen_ai_client_operation_time_to_first_chunk_seconds_count";

async fn post(
    sidecar: &Sidecar,
    path: &str,
    body: &'static str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req =
        Request::post(proxy_url(sidecar, path)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(full(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body_bytes(http::Response::from_parts(parts.clone(), body)).await;
    (parts.status, parts.headers, bytes)
}

/// `(input, output)` tokens the provider reported in a body it sent (JSON or SSE, either API).
fn reported_usage(body: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(body).unwrap();
    let docs: Vec<serde_json::Value> = if text.starts_with('{') {
        vec![serde_json::from_str(text).unwrap()]
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    };
    let (mut input, mut output) = (0, 0);
    for d in docs {
        let usage = if d["message"]["usage"].is_object() {
            &d["message"]["usage"]
        } else {
            &d["usage"]
        };
        let field = |a: &str, b: &str| usage[a].as_u64().or(usage[b].as_u64());
        if let Some(i) = field("prompt_tokens", "input_tokens") {
            input = i;
        }
        if let Some(o) = field("completion_tokens", "output_tokens") {
            output = o;
        }
    }
    (input, output)
}

#[tokio::test]
async fn time_to_first_chunk_reflects_the_providers_first_chunk_delay() {
    let (p, _) = provider(paced(300, 2, 6)).await;
    let sidecar = llm_sidecar(&p.url(), "openai", "").await;
    for _ in 0..3 {
        let (status, _, _) = post(&sidecar, CHAT, OPENAI_STREAM, TEXT).await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = metrics_when(&sidecar, |m| metric(m, CALLS, &[]) >= 3.0).await;
    let ttft = "gen_ai_client_operation_time_to_first_chunk_seconds_bucket";
    let labels = |le| {
        [
            ("upstream", "provider"),
            ("gen_ai_provider_name", "openai"),
            ("gen_ai_request_model", "gpt-4o"),
            ("le", le),
        ]
    };
    // The role-only chunk comes at once; the first content 300 ms later is what counts.
    expect_metric(&m, ttft, &labels("0.25"), 0.0);
    expect_metric(&m, ttft, &labels("0.5"), 3.0);
    // Six content chunks each: five gaps after the first, each well under the first delay.
    let gaps = "gen_ai_client_operation_time_per_output_chunk_seconds_bucket";
    expect_metric(&m, gaps, &labels("0.16"), 15.0);
    expect_metric(&m, gaps, &labels("+Inf"), 15.0);
    let chat = [("gen_ai_operation_name", "chat"), ("error_type", "")];
    expect_metric(&m, CALLS, &chat, 3.0);
}

#[tokio::test]
async fn tokens_and_finish_reasons_are_what_the_provider_reported() {
    let (p, _) = provider(quick()).await;
    let openai = llm_sidecar(&p.url(), "openai", "").await;
    let anthropic = llm_sidecar(&p.url(), "anthropic", "").await;
    let mut expected = [(0u64, 0u64); 2];
    let calls: [(&Sidecar, usize, &str, &'static str, &str); 8] = [
        (&openai, 0, CHAT, OPENAI_STREAM, "text"),
        (&openai, 0, CHAT, OPENAI_JSON, "text"),
        (&openai, 0, CHAT, OPENAI_STREAM, "tool_call"),
        (&openai, 0, CHAT, OPENAI_JSON, "tool_call"),
        (&anthropic, 1, "/v1/messages", ANTHROPIC_STREAM, "text"),
        (&anthropic, 1, "/v1/messages", ANTHROPIC_JSON, "text"),
        (&anthropic, 1, "/v1/messages", ANTHROPIC_STREAM, "tool_call"),
        (&anthropic, 1, "/v1/messages", ANTHROPIC_JSON, "tool_call"),
    ];
    for (sidecar, i, path, body, scenario) in calls {
        let (status, _, bytes) = post(sidecar, path, body, &[("x-sim-scenario", scenario)]).await;
        assert_eq!(status, StatusCode::OK);
        let (input, output) = reported_usage(&bytes);
        assert!(
            input > 0 && output > 0,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        expected[i].0 += input;
        expected[i].1 += output;
    }
    for (i, (sidecar, provider_name)) in [(&openai, "openai"), (&anthropic, "anthropic")]
        .into_iter()
        .enumerate()
    {
        let m = finished(sidecar, 4.0).await;
        let usage = |kind| {
            metric(
                &m,
                "gen_ai_client_token_usage_sum",
                &[
                    ("gen_ai_provider_name", provider_name),
                    ("gen_ai_token_type", kind),
                ],
            ) as u64
        };
        assert_eq!(
            (usage("input"), usage("output")),
            expected[i],
            "{provider_name}"
        );
        expect_metric(
            &m,
            "gen_ai_client_token_usage_count",
            &[("gen_ai_token_type", "input")],
            4.0,
        );
        expect_metric(&m, FINISHES, &[("reason", "stop")], 2.0);
        expect_metric(&m, FINISHES, &[("reason", "tool_calls")], 2.0);
        expect_metric(&m, FINISHES, &[("reason", "error")], 0.0);
        expect_metric(&m, "agent_hallucinated_tool_calls_total", &[], 0.0);
        expect_metric(&m, "sloguard_unparsed_bodies_total", &[], 0.0);
    }
}

#[tokio::test]
async fn provider_errors_count_as_error_finishes_with_their_error_type() {
    let (p, _) = provider(ProviderSim {
        error_rate: 1.0,
        ..quick()
    })
    .await;
    let sidecar = llm_sidecar(&p.url(), "openai", "").await;
    let (status, _, _) = post(&sidecar, CHAT, OPENAI_STREAM, &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let m = finished(&sidecar, 1.0).await;
    expect_metric(&m, FINISHES, &[("reason", "error")], 1.0);
    let model = [("error_type", "5xx"), ("gen_ai_request_model", "gpt-4o")];
    expect_metric(&m, CALLS, &model, 1.0);
    // No stream, no time to first chunk.
    expect_metric(&m, FIRST_CHUNKS, &[], 0.0);
}

#[tokio::test]
async fn both_kinds_of_hallucinated_tool_calls_are_counted_in_both_formats() {
    let (p, _) = provider(quick()).await;
    for (protocol, path, stream, json) in [
        ("openai", CHAT, OPENAI_STREAM, OPENAI_JSON),
        (
            "anthropic",
            "/v1/messages",
            ANTHROPIC_STREAM,
            ANTHROPIC_JSON,
        ),
    ] {
        let sidecar = llm_sidecar(&p.url(), protocol, "").await;
        for scenario in ["unknown_tool", "invalid_arguments", "tool_call"] {
            for body in [stream, json] {
                let (status, _, _) =
                    post(&sidecar, path, body, &[("x-sim-scenario", scenario)]).await;
                assert_eq!(status, StatusCode::OK);
            }
        }
        let m = finished(&sidecar, 6.0).await;
        let kind = |k| metric(&m, "agent_hallucinated_tool_calls_total", &[("kind", k)]);
        expect_metric(&m, FINISHES, &[("reason", "tool_calls")], 6.0);
        assert_eq!(kind("unknown_tool"), 2.0, "{protocol}");
        // Anthropic's JSON tool input is an object by construction: only the stream can be broken.
        let invalid = if protocol == "openai" { 2.0 } else { 1.0 };
        assert_eq!(kind("invalid_arguments"), invalid, "{protocol}");
    }
}

/// A key file in a directory of its own.
fn key_file(name: &str, content: &str) -> PathBuf {
    common::scripted::own_file(&format!("llm-{name}"), "keys", content)
}

#[tokio::test]
async fn the_sidecars_key_replaces_the_agents_for_each_protocol() {
    for (protocol, path, body, header) in [
        ("openai", CHAT, OPENAI_JSON, "authorization"),
        ("anthropic", "/v1/messages", ANTHROPIC_JSON, "x-api-key"),
    ] {
        let (p, seen) = keyed_provider("sk-sidecar-1").await;
        let keys = key_file(protocol, "sk-sidecar-1\n");
        let sidecar = keyed_sidecar(&p.url(), protocol, &keys).await;
        let (status, _, _) = post(
            &sidecar,
            path,
            body,
            &[
                ("authorization", "Bearer sk-agent-own"),
                ("x-api-key", "sk-agent-own"),
                ("api-key", "sk-agent-own"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{protocol}");
        let seen = seen.lock().unwrap();
        let h = &seen[0].headers;
        let expected = if protocol == "openai" {
            "Bearer sk-sidecar-1"
        } else {
            "sk-sidecar-1"
        };
        assert_eq!(h.get(header).unwrap(), expected);
        assert!(
            !h.values()
                .any(|v| v.as_bytes().windows(12).any(|w| w == b"sk-agent-own")),
            "{protocol}: the agent's key reached the provider: {h:?}"
        );
        assert!(!h.contains_key("api-key"));
        assert_eq!(h.contains_key("x-api-key"), protocol == "anthropic");
        assert_eq!(h.contains_key("authorization"), protocol == "openai");
    }
}

#[tokio::test]
async fn a_401_rotates_to_the_next_key() {
    let (p, seen) = keyed_provider("sk-good").await;
    let keys = key_file("rotate", "sk-revoked\nsk-good\n");
    let sidecar = keyed_sidecar(&p.url(), "openai", &keys).await;
    let (first, _, _) = post(&sidecar, CHAT, OPENAI_JSON, &[]).await;
    assert_eq!(first, StatusCode::UNAUTHORIZED);
    for _ in 0..3 {
        let (status, _, _) = post(&sidecar, CHAT, OPENAI_JSON, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let used: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        used,
        [
            "Bearer sk-revoked",
            "Bearer sk-good",
            "Bearer sk-good",
            "Bearer sk-good"
        ]
    );
    let m = metrics(&sidecar).await;
    let provider = [("upstream", "provider")];
    expect_metric(&m, "sloguard_api_key_rejections_total", &provider, 1.0);
    expect_metric(&m, CALLS, &[("error_type", "4xx")], 1.0);
}

#[tokio::test]
async fn a_swapped_key_file_is_picked_up_without_restart() {
    let (p, seen) = keyed_provider("sk-new").await;
    // Kubernetes' layout: `keys` -> `..data/keys`, `..data` a symlink swapped atomically.
    let dir = std::env::temp_dir().join(format!("sloguard-llm-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (version, key) in [("v1", "sk-old\n"), ("v2", "sk-new\n")] {
        std::fs::create_dir_all(dir.join(version)).unwrap();
        std::fs::write(dir.join(version).join("keys"), key).unwrap();
    }
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
    let sidecar = keyed_sidecar(&p.url(), "openai", &dir.join("keys")).await;
    let (status, _, _) = post(&sidecar, CHAT, OPENAI_JSON, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_until("the new key is picked up", 10, async || {
        let (status, _, _) = post(&sidecar, CHAT, OPENAI_JSON, &[]).await;
        status == StatusCode::OK
    })
    .await;
    let last = seen.lock().unwrap().last().unwrap().headers["authorization"].clone();
    assert_eq!(last, "Bearer sk-new");
    let m = metrics(&sidecar).await;
    let ok = [("result", "ok")];
    expect_metric(&m, "sloguard_api_key_reloads_total", &ok, 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_or_empty_key_file_stops_the_start_and_names_the_key() {
    let empty = key_file("empty", "\n# nothing yet\n");
    for (path, want) in [
        (empty.display().to_string(), "holds no key"),
        (
            "/nonexistent/sloguard/keys".to_owned(),
            "cannot read /nonexistent/sloguard/keys",
        ),
    ] {
        let yaml = format!(
            "agent: a
admin: {{bind: 127.0.0.1:0}}
listeners: [{{name: proxy, bind: 127.0.0.1:0, role: llm, route: main}}]
routes: {{main: {{upstreams: [p]}}}}
upstreams:
  p: {{url: 'http://127.0.0.1:9', protocol: openai, api_keys_file: '{path}'}}
"
        );
        let err = Sidecar::start(Config::parse("t", &yaml).unwrap())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("upstreams.p.api_keys_file: "), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn the_model_is_rewritten_for_the_upstream_and_labels_the_metrics() {
    let (p, seen) = provider(quick()).await;
    let sidecar = llm_sidecar(&p.url(), "openai", "    model: gpt-4o-mini\n").await;
    let (status, _, bytes) = post(&sidecar, CHAT, OPENAI_STREAM, TEXT).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&bytes).contains(r#""model":"gpt-4o-mini""#));
    let got = seen.lock().unwrap()[0].clone();
    let sent: serde_json::Value = serde_json::from_str(OPENAI_STREAM).unwrap();
    let mut want = sent.clone();
    want["model"] = "gpt-4o-mini".into();
    let received: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(received, want);
    assert_eq!(
        got.headers["content-length"],
        got.body.len().to_string().as_str()
    );
    let m = finished(&sidecar, 1.0).await;
    expect_metric(&m, CALLS, &[("gen_ai_request_model", "gpt-4o-mini")], 1.0);
}

#[tokio::test]
async fn without_a_rewrite_the_request_bytes_are_untouched() {
    let (p, seen) = provider(quick()).await;
    let sidecar = llm_sidecar(&p.url(), "openai", "").await;
    let odd = r#"{ "messages" : [ ], "model"  :  "gpt-4o" , "stream":false }"#;
    let (status, _, _) = post(&sidecar, CHAT, odd, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap()[0].body, odd.as_bytes());
}

/// An upstream that answers every request with `response` (a whole raw HTTP response).
async fn canned_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    raw_upstream(move |mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = read_head(&mut s).await;
        // Read the body (content-length) so the client is not reset.
        let text = String::from_utf8_lossy(&head).to_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let body_start = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut have = head.len() - body_start;
        let mut buf = vec![0u8; 4096];
        while have < len {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
        let _ = s.write_all(response).await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn unreadable_bodies_pass_through_byte_exact_and_are_counted() {
    const HTML: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 30\r\nconnection: close\r\n\r\n<html>upstream says hi</html>\n";
    const BAD_SSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: {\"choices\": [ not json\n\ndata: [DONE]\n\n";
    const BAD_JSON: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\nconnection: close\r\n\r\n{\"choices\": [1";
    for (raw, reason) in [
        (HTML, "response_content_type"),
        (BAD_SSE, "response_invalid_json"),
        (BAD_JSON, "response_invalid_json"),
    ] {
        let addr = canned_upstream(raw).await;
        let sidecar = llm_sidecar(&format!("http://{addr}"), "openai", "").await;
        let (status, _, bytes) = post(&sidecar, CHAT, "this is not JSON {", &[]).await;
        assert_eq!(status, StatusCode::OK);
        let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(bytes, &raw[body_start..], "{reason}: bytes changed");
        let m = metrics_when(&sidecar, |m| {
            metric(m, "sloguard_unparsed_bodies_total", &[]) >= 2.0
        })
        .await;
        let unparsed = "sloguard_unparsed_bodies_total";
        expect_metric(&m, unparsed, &[("reason", reason)], 1.0);
        expect_metric(&m, unparsed, &[("reason", "request_invalid_json")], 1.0);
        expect_metric(&m, unparsed, &[], 2.0);
    }
}

/// The real binary with `RUST_LOG=trace`, its whole log kept.
#[tokio::test]
async fn keys_never_reach_logs_metrics_or_error_bodies() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    const KEYS: [&str; 2] = ["sk-SECRET-revoked-0001", "sk-SECRET-good-0002"];
    let (p, _) = keyed_provider(KEYS[1]).await;
    let keys = key_file("secret", &format!("{}\n{}\n", KEYS[0], KEYS[1]));
    let dir = keys.parent().unwrap().to_owned();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "agent: a
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: ok, bind: 127.0.0.1:0, role: llm, route: ok}}
  - {{name: down, bind: 127.0.0.1:0, role: llm, route: down}}
routes: {{ok: {{upstreams: [p]}}, down: {{upstreams: [gone]}}}}
upstreams:
  p: {{url: '{}', protocol: openai, api_keys_file: '{}'}}
  gone: {{url: 'http://{}', protocol: anthropic, api_keys_file: '{}'}}
",
            p.url(),
            keys.display(),
            closed_port(),
            keys.display()
        ),
    )
    .unwrap();
    let mut child = common::process::spawn(&config, &[("RUST_LOG", "trace")], &[]);
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let keep = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let (Some("listening"), Some(bind)) = (v["message"].as_str(), v["bind"].as_str()) {
                let _ = tx.send((
                    "listener",
                    v["listener"].as_str().unwrap_or("").to_owned(),
                    bind.to_owned(),
                ));
            }
            if let (Some("ready"), Some(admin)) = (v["message"].as_str(), v["admin"].as_str()) {
                let _ = tx.send(("admin", String::new(), admin.to_owned()));
            }
            let mut l = keep.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (mut ok, mut down, mut admin) = (None, None, None);
    while admin.is_none() {
        let (kind, name, addr) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("sloguard became ready")
            .unwrap();
        match (kind, name.as_str()) {
            ("admin", _) => admin = Some(addr),
            (_, "ok") => ok = Some(addr),
            _ => down = Some(addr),
        }
    }
    let mut bodies = Vec::new();
    for (addr, path) in [(&ok, CHAT), (&ok, CHAT), (&down, "/v1/messages")] {
        let req = Request::post(format!("http://{}{path}", addr.as_ref().unwrap()))
            .header("authorization", "Bearer agent-key")
            .body(full(OPENAI_JSON))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        bodies.push(body_bytes(resp).await);
    }
    assert!(String::from_utf8_lossy(&bodies[2]).contains("upstream_unavailable"));
    // A botched rotation: the file goes empty (logged as an error, keys kept).
    std::fs::write(&keys, "").unwrap();
    let unusable = async || log.lock().unwrap().contains("API key file unusable");
    wait_until("the empty key file is logged", 10, unusable).await;
    let metrics =
        body_bytes(get(&client(), &format!("http://{}/metrics", admin.unwrap())).await).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let _ = child.kill().await;
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("provider rejected an API key"),
        "the 401 was not logged"
    );
    assert!(
        log.contains("API key file unusable"),
        "the empty file was not logged"
    );
    assert!(metrics.contains("sloguard_api_key_rejections_total"));
    for key in KEYS {
        assert!(!log.contains(key), "a key is in the log");
        assert!(!metrics.contains(key), "a key is in /metrics");
        for b in &bodies {
            assert!(
                !String::from_utf8_lossy(b).contains(key),
                "a key is in a response body"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_one_cancelled_call() {
    use http_body_util::BodyExt;
    let (p, _) = provider(paced(5, 200, 10)).await;
    let sidecar = llm_sidecar(&p.url(), "openai", "").await;
    let req = Request::post(proxy_url(&sidecar, CHAT))
        .header("x-sim-scenario", "text")
        .body(full(OPENAI_STREAM))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    // Read until the first content chunk, then hang up.
    loop {
        let frame = body.frame().await.unwrap().unwrap();
        if frame.data_ref().is_some_and(|d| {
            d.windows(10).any(|w| w == b"\"content\":")
                && !d.windows(12).any(|w| w == b"\"content\":\"\"")
        }) {
            break;
        }
    }
    drop(body);
    // The call is settled once it is counted and its attempt too; then nothing more comes.
    let m2 = metrics_when(&sidecar, |m| {
        metric(m, CALLS, &[]) >= 1.0
            && metric(m, FINISHES, &[]) >= 1.0
            && metric(m, "sloguard_upstream_requests_total", &[]) >= 1.0
    })
    .await;
    expect_metric(&m2, CALLS, &[], 1.0);
    expect_metric(&m2, CALLS, &[("error_type", "cancelled")], 1.0);
    expect_metric(&m2, FINISHES, &[("reason", "error")], 1.0);
    expect_metric(&m2, FINISHES, &[], 1.0);
    expect_metric(&m2, FIRST_CHUNKS, &[], 1.0);
    // The provider was fine: its attempt is no failure.
    expect_outcome(&m2, "ok", 1.0);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_is_a_failed_call() {
    let sidecar = llm_sidecar(&format!("http://{}", closed_port()), "anthropic", "").await;
    let (status, headers, _) = post(&sidecar, "/v1/messages", ANTHROPIC_STREAM, &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sloguard-error"], "upstream_unavailable");
    let m = finished(&sidecar, 1.0).await;
    let refused = [
        ("error_type", "connect_error"),
        ("gen_ai_provider_name", "anthropic"),
        ("gen_ai_operation_name", "chat"),
    ];
    expect_metric(&m, CALLS, &refused, 1.0);
    expect_metric(&m, FINISHES, &[("reason", "error")], 1.0);
    expect_metric(&m, "gen_ai_client_token_usage_count", &[], 0.0);
}
