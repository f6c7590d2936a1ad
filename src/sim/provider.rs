//! A simulated LLM provider that speaks OpenAI's and Anthropic's formats.
//!
//! - `POST /v1/chat/completions` (OpenAI Chat Completions) and `POST /v1/messages` (Anthropic
//!   Messages): a completion as JSON or, with `"stream": true`, as that format's SSE stream, after
//!   a first-chunk delay, with a gap between chunks; usage reported (OpenAI streams: when
//!   `stream_options.include_usage` asks). When the request declares tools, a share of
//!   completions are tool calls, some naming an undeclared tool or carrying arguments that are
//!   not JSON. A share of requests fail with 500 or 429 as configured.
//! - The header `x-sim-scenario: text | tool_call | unknown_tool | invalid_arguments` picks the
//!   completion instead of the dice (tests).
//! - With `accepted_keys`, a request without one of them (`authorization: Bearer K` or
//!   `x-api-key: K`) gets 401.
//! - `GET /bytes/N` (or `POST`, its body read and dropped): N bytes at once (load benches).
//! - `GET /sse/N?gap_ms=G`: N SSE events, G ms apart (streaming benches and tests).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{full, serve, ChannelBody, Dice, SimBody, SimRng, SimServer};

/// A request the provider received, for tests to look at.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct ProviderSim {
    /// Before the response head (JSON) or the first content chunk (SSE): the model "thinking".
    pub first_chunk_delay: Duration,
    /// Between SSE chunks.
    pub chunk_delay: Duration,
    /// Content chunks per streamed completion (and output tokens reported).
    pub chunks: usize,
    /// Share of completions answered 500.
    pub error_rate: f64,
    /// Share of completions answered 429 (with `retry-after: 1`).
    pub rate_limit_rate: f64,
    /// Share of completions, when the request declares tools, that are tool calls.
    pub tool_call_rate: f64,
    /// Share of those tool calls that are hallucinated (half an undeclared tool, half arguments
    /// that are not JSON).
    pub hallucination_rate: f64,
    /// Share of text completions cut at the token limit (`length`, `max_tokens`).
    pub truncate_rate: f64,
    /// Share of answers to a request for a JSON schema that break it (whole answers only,
    /// spread evenly: one in every `1 / rate`).
    pub schema_break_rate: f64,
    /// Keys the provider accepts; empty: any request is accepted.
    pub accepted_keys: Vec<String>,
    /// Every request received, when set.
    pub seen: Option<Arc<Mutex<Vec<SeenRequest>>>>,
    /// An outage: from this long after the start, for that long, every completion is a 503.
    pub outage: Option<(Duration, Duration)>,
    pub seed: u64,
}

impl Default for ProviderSim {
    fn default() -> Self {
        ProviderSim {
            first_chunk_delay: Duration::from_millis(50),
            chunk_delay: Duration::from_millis(10),
            chunks: 20,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            tool_call_rate: 0.0,
            hallucination_rate: 0.0,
            truncate_rate: 0.0,
            schema_break_rate: 0.0,
            accepted_keys: Vec::new(),
            seen: None,
            outage: None,
            seed: 0x5eed,
        }
    }
}

fn payload() -> &'static Bytes {
    static PAYLOAD: OnceLock<Bytes> = OnceLock::new();
    PAYLOAD.get_or_init(|| Bytes::from(vec![b'x'; 1 << 20]))
}

pub async fn spawn_provider(bind: SocketAddr, sim: ProviderSim) -> std::io::Result<SimServer> {
    let dice = Arc::new(Dice::new(sim.seed));
    let sim = Arc::new(sim);
    let started = tokio::time::Instant::now();
    serve(bind, move |req| {
        let (sim, dice) = (sim.clone(), dice.clone());
        async move { respond(&sim, &dice, started, req).await }
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// What one completion will be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Completion {
    Text,
    /// A call of this tool, with arguments that are JSON or not.
    ToolCall {
        name: String,
        valid_arguments: bool,
        /// The ticket the call is about: chosen calls are about T-1042, dice-rolled ones about
        /// tickets of their own (a model working through a queue does not repeat itself).
        ticket: u32,
    },
}

fn key_of(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn respond(
    sim: &ProviderSim,
    dice: &Dice,
    started: tokio::time::Instant,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let api = match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => Some(Api::OpenAi),
        (&Method::POST, "/v1/messages") => Some(Api::Anthropic),
        _ => None,
    };
    if let Some(api) = api {
        return complete(sim, dice, started, api, path, req).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::POST, p) if p.starts_with("/bytes/") => {
            let n: usize = p["/bytes/".len()..].parse().unwrap_or(1024);
            fixed_bytes(n, req).await
        }
        (&Method::GET, p) if p.starts_with("/sse/") => {
            let n: usize = p["/sse/".len()..].parse().unwrap_or(50);
            let gap = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("gap_ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0u64);
            numbered_events(n, gap)
        }
        _ => status(StatusCode::NOT_FOUND, "no such simulated endpoint"),
    }
}

/// A completion request (to `path`) in the `api`'s format: recorded, its key checked, failed as
/// configured, else answered as JSON or as a stream.
async fn complete(
    sim: &ProviderSim,
    dice: &Dice,
    started: tokio::time::Instant,
    api: Api,
    path: String,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    if let Some(seen) = &sim.seen {
        if let Ok(mut seen) = seen.lock() {
            seen.push(SeenRequest {
                path,
                headers: parts.headers.clone(),
                body: body.clone(),
            });
        }
    }
    if !sim.accepted_keys.is_empty()
        && !key_of(&parts.headers).is_some_and(|k| sim.accepted_keys.iter().any(|a| a == k))
    {
        return status(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("sim-model").to_owned();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let include_usage = api == Api::Anthropic
        || request["stream_options"]["include_usage"].as_bool() == Some(true)
        || !stream;
    let rng = &dice.rng;
    if let Some(failure) = simulated_failure(sim, rng, started).await {
        return failure;
    }
    let completion = choose(sim, rng, &parts.headers, &request, api);
    let text = matches!(completion, Completion::Text);
    let truncated = text && rng.next_f64() < sim.truncate_rate;
    let structured = (text && super::text::asks_for_schema(&request))
        .then(|| truncated || !dice.breaks.hit(sim.schema_break_rate));
    let usage = (((body.len() / 4).max(1)) as u64, sim.chunks as u64);
    let c = Call {
        api,
        model,
        completion,
        usage,
        include_usage,
        truncated,
        structured,
    };
    if stream {
        c.stream(sim)
    } else {
        tokio::time::sleep(sim.first_chunk_delay + sim.chunk_delay * sim.chunks as u32).await;
        c.json(sim)
    }
}

/// The failure a completion gets, if any: a 503 during the outage, else by the dice a 500
/// (`error_rate`) or a 429 (`rate_limit_rate`).
async fn simulated_failure(
    sim: &ProviderSim,
    rng: &SimRng,
    started: tokio::time::Instant,
) -> Option<Response<SimBody>> {
    if let Some((from, length)) = sim.outage {
        let now = started.elapsed();
        if now >= from && now < from + length {
            tokio::time::sleep(sim.first_chunk_delay / 4).await;
            return Some(status(StatusCode::SERVICE_UNAVAILABLE, "simulated outage"));
        }
    }
    let roll = rng.next_f64();
    if roll < sim.error_rate {
        tokio::time::sleep(sim.first_chunk_delay / 2).await;
        return Some(status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated provider failure",
        ));
    }
    if roll < sim.error_rate + sim.rate_limit_rate {
        let mut r = status(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(r);
    }
    None
}

/// `GET /bytes/N` (or `POST`): `n` bytes at once.
async fn fixed_bytes(n: usize, req: Request<Incoming>) -> Response<SimBody> {
    // A POST's body is read and dropped (the replay benches send one).
    if req.method() == Method::POST && req.into_body().collect().await.is_err() {
        return status(StatusCode::BAD_REQUEST, "unreadable body");
    }
    let mut r = Response::new(full(payload().slice(..n.min(payload().len()))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// `GET /sse/N?gap_ms=G`: `n` SSE events, `gap` ms apart.
fn numbered_events(n: usize, gap: u64) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 && gap > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            if tx
                .send(Bytes::from(format!("data: {{\"i\":{i}}}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    event_stream(rx)
}

/// The request's declared tool names.
fn declared_tools(request: &Value, api: Api) -> Vec<String> {
    let tools = request["tools"].as_array().cloned().unwrap_or_default();
    tools
        .iter()
        .filter_map(|t| match api {
            Api::OpenAi => t["function"]["name"].as_str(),
            Api::Anthropic => t["name"].as_str(),
        })
        .map(str::to_owned)
        .collect()
}

fn choose(
    sim: &ProviderSim,
    rng: &SimRng,
    headers: &HeaderMap,
    request: &Value,
    api: Api,
) -> Completion {
    let tools = declared_tools(request, api);
    let first = tools
        .first()
        .cloned()
        .unwrap_or_else(|| "lookup".to_owned());
    let call = |name: String, valid_arguments, ticket| Completion::ToolCall {
        name,
        valid_arguments,
        ticket,
    };
    match headers.get("x-sim-scenario").and_then(|v| v.to_str().ok()) {
        Some("text") => return Completion::Text,
        Some("tool_call") => return call(first, true, 1042),
        Some("unknown_tool") => return call("delete_everything".into(), true, 1042),
        Some("invalid_arguments") => return call(first, false, 1042),
        _ => {}
    }
    if tools.is_empty() || rng.next_f64() >= sim.tool_call_rate {
        return Completion::Text;
    }
    let ticket = 1000 + (rng.next_f64() * 9000.0) as u32;
    let call = |name, valid| call(name, valid, ticket);
    let h = rng.next_f64();
    if h < sim.hallucination_rate / 2.0 {
        call("delete_everything".into(), true)
    } else if h < sim.hallucination_rate {
        call(first, false)
    } else {
        call(first, true)
    }
}

/// One completion to answer.
struct Call {
    api: Api,
    model: String,
    completion: Completion,
    /// `(input, output)` tokens reported.
    usage: (u64, u64),
    include_usage: bool,
    /// A text completion cut at the token limit.
    truncated: bool,
    /// Asked for a JSON schema: `Some(whether the answer follows it)`.
    structured: Option<bool>,
}

/// Tool-call arguments, in the fragments a stream sends them in.
fn argument_fragments(valid: bool, ticket: u32) -> [String; 3] {
    let end = if valid { ": \"high\"}" } else { ": \"hi" };
    [
        "{\"ticket\": ".to_owned(),
        format!("\"T-{ticket}\", \"priority\""),
        end.to_owned(),
    ]
}

impl Call {
    /// Why a text completion ended, in the API's words.
    fn text_end(&self) -> &'static str {
        match (self.api, self.truncated) {
            (Api::OpenAi, false) => "stop",
            (Api::OpenAi, true) => "length",
            (Api::Anthropic, false) => "end_turn",
            (Api::Anthropic, true) => "max_tokens",
        }
    }

    fn text(&self, sim: &ProviderSim) -> String {
        super::text::text(sim.chunks, self.structured)
    }

    fn word(&self, sim: &ProviderSim, i: usize) -> String {
        super::text::word(i, sim.chunks, self.structured)
    }

    fn json(&self, sim: &ProviderSim) -> Response<SimBody> {
        let (input, output) = self.usage;
        let body = match (self.api, &self.completion) {
            (Api::OpenAi, c) => {
                let (message, finish) = match c {
                    Completion::Text => (
                        json!({"role": "assistant", "content": self.text(sim)}),
                        self.text_end(),
                    ),
                    Completion::ToolCall {
                        name,
                        valid_arguments,
                        ticket,
                    } => (
                        json!({"role": "assistant", "content": null, "tool_calls": [{
                            "id": "call_sim1", "type": "function",
                            "function": {"name": name, "arguments": argument_fragments(*valid_arguments, *ticket).concat()},
                        }]}),
                        "tool_calls",
                    ),
                };
                json!({
                    "id": "chatcmpl-sim", "object": "chat.completion", "model": self.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
                })
            }
            (Api::Anthropic, c) => {
                let (content, stop) = match c {
                    Completion::Text => (
                        json!([{"type": "text", "text": self.text(sim)}]),
                        self.text_end(),
                    ),
                    Completion::ToolCall { name, ticket, .. } => (
                        json!([{"type": "tool_use", "id": "toolu_sim1", "name": name, "input": {"ticket": format!("T-{ticket}")}}]),
                        "tool_use",
                    ),
                };
                json!({
                    "id": "msg_sim", "type": "message", "role": "assistant", "model": self.model,
                    "content": content, "stop_reason": stop, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": output},
                })
            }
        };
        let mut r = Response::new(full(body.to_string()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    /// The stream's events; the first is sent at once, the second after the first-chunk delay.
    fn events(&self, sim: &ProviderSim) -> Vec<Bytes> {
        match self.api {
            Api::OpenAi => self.openai_events(sim),
            Api::Anthropic => self.anthropic_events(sim),
        }
    }

    fn openai_events(&self, sim: &ProviderSim) -> Vec<Bytes> {
        let model = &self.model;
        let chunk = |delta: Value, finish: Option<&str>| {
            let c = json!({
                "id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            Bytes::from(format!("data: {c}\n\n"))
        };
        // The role-only chunk comes at once, as real providers send it; the content waits.
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        let finish = match &self.completion {
            Completion::Text => {
                events.extend(
                    (0..sim.chunks).map(|i| chunk(json!({"content": self.word(sim, i)}), None)),
                );
                self.text_end()
            }
            Completion::ToolCall {
                name,
                valid_arguments,
                ticket,
            } => {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_sim1", "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                for part in argument_fragments(*valid_arguments, *ticket) {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                        None,
                    ));
                }
                "tool_calls"
            }
        };
        events.push(chunk(json!({}), Some(finish)));
        if self.include_usage {
            let (input, output) = self.usage;
            let u = json!({
                "id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
            });
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    fn anthropic_events(&self, sim: &ProviderSim) -> Vec<Bytes> {
        let event =
            |kind: &str, data: Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
        let (input, output) = self.usage;
        let mut events = vec![event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_sim", "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1},
            }}),
        )];
        let stop = match &self.completion {
            Completion::Text => {
                events.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                events.extend((0..sim.chunks).map(|i| {
                    event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": self.word(sim, i)}}),
                    )
                }));
                self.text_end()
            }
            Completion::ToolCall {
                name,
                valid_arguments,
                ticket,
            } => {
                events.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_sim1", "name": name, "input": {}}}),
                ));
                for part in argument_fragments(*valid_arguments, *ticket) {
                    events.push(event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}}),
                    ));
                }
                "tool_use"
            }
        };
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        events
    }

    fn stream(self, sim: &ProviderSim) -> Response<SimBody> {
        let (tx, rx) = mpsc::channel(4);
        let (first, gap) = (sim.first_chunk_delay, sim.chunk_delay);
        let events = self.events(sim);
        tokio::spawn(async move {
            for (i, e) in events.into_iter().enumerate() {
                match i {
                    0 => {}
                    1 => tokio::time::sleep(first).await,
                    _ => tokio::time::sleep(gap).await,
                }
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        });
        event_stream(rx)
    }
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody(rx)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn status(code: StatusCode, message: &str) -> Response<SimBody> {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error"}});
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
