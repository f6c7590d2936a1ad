//! A simulated OpenAI-style provider.
//!
//! - `POST /v1/chat/completions`: a chat completion, as JSON or, with `"stream": true`, as SSE
//!   chunks (`data: {...}` events, then `data: [DONE]`), after a first-token delay, with a gap
//!   between chunks; a share of requests fail with 500 or 429 as configured.
//! - `GET /bytes/N`: N bytes at once (load benches).
//! - `GET /sse/N?gap_ms=G`: N SSE events, G ms apart (streaming benches and tests).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::{full, serve, ChannelBody, SimBody, SimRng, SimServer};

#[derive(Debug, Clone)]
pub struct ProviderSim {
    /// Before the response head (JSON) or the first chunk (SSE): the model "thinking".
    pub first_chunk_delay: Duration,
    /// Between SSE chunks.
    pub chunk_delay: Duration,
    /// Content chunks per streamed completion.
    pub chunks: usize,
    /// Share of completions answered 500.
    pub error_rate: f64,
    /// Share of completions answered 429 (with `retry-after: 1`).
    pub rate_limit_rate: f64,
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
            seed: 0x5eed,
        }
    }
}

const WORDS: &[&str] = &[
    "The ", "agent ", "kept ", "its ", "error ", "budget ", "intact ", "today. ",
];

fn payload() -> &'static Bytes {
    static PAYLOAD: OnceLock<Bytes> = OnceLock::new();
    PAYLOAD.get_or_init(|| Bytes::from(vec![b'x'; 1 << 20]))
}

pub async fn spawn_provider(bind: SocketAddr, sim: ProviderSim) -> std::io::Result<SimServer> {
    let rng = Arc::new(SimRng::new(sim.seed));
    let sim = Arc::new(sim);
    serve(bind, move |req| {
        let (sim, rng) = (sim.clone(), rng.clone());
        async move { respond(&sim, &rng, req).await }
    })
    .await
}

async fn respond(sim: &ProviderSim, rng: &SimRng, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
            };
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let model = request["model"].as_str().unwrap_or("sim-gpt").to_owned();
            let stream = request["stream"].as_bool().unwrap_or(false);
            let roll = rng.next_f64();
            if roll < sim.error_rate {
                tokio::time::sleep(sim.first_chunk_delay / 2).await;
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "simulated provider failure",
                );
            }
            if roll < sim.error_rate + sim.rate_limit_rate {
                let mut r = status(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            if stream {
                sse_completion(sim, model)
            } else {
                tokio::time::sleep(sim.first_chunk_delay + sim.chunk_delay * sim.chunks as u32)
                    .await;
                json_completion(sim, &model)
            }
        }
        (&Method::GET, p) if p.starts_with("/bytes/") => {
            let n: usize = p["/bytes/".len()..].parse().unwrap_or(1024);
            let mut r = Response::new(full(payload().slice(..n.min(payload().len()))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (&Method::GET, p) if p.starts_with("/sse/") => {
            let n: usize = p["/sse/".len()..].parse().unwrap_or(50);
            let gap = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("gap_ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0u64);
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
        _ => status(StatusCode::NOT_FOUND, "no such simulated endpoint"),
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

fn sse_completion(sim: &ProviderSim, model: String) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(4);
    let (first, gap, chunks) = (sim.first_chunk_delay, sim.chunk_delay, sim.chunks);
    tokio::spawn(async move {
        let event = |delta: serde_json::Value, finish: Option<&str>| {
            let chunk = serde_json::json!({
                "id": "chatcmpl-sim", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        // The role-only chunk comes at once, as real providers send it; the content waits.
        let mut events = vec![event(serde_json::json!({"role": "assistant"}), None)];
        events.extend(
            (0..chunks)
                .map(|i| event(serde_json::json!({"content": WORDS[i % WORDS.len()]}), None)),
        );
        events.push(event(serde_json::json!({}), Some("stop")));
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
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

fn json_completion(sim: &ProviderSim, model: &str) -> Response<SimBody> {
    let text: String = (0..sim.chunks).map(|i| WORDS[i % WORDS.len()]).collect();
    let body = serde_json::json!({
        "id": "chatcmpl-sim", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": sim.chunks, "total_tokens": 12 + sim.chunks},
    });
    let mut r = Response::new(full(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
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
