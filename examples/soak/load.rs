//! The soak's clients: open-loop traffic on every listener (the agent's JSON and SSE answers;
//! OpenAI and Anthropic calls, streamed and not; a fallback chain with a cache), over HTTP/1.1
//! and h2c, some asking for gzip. Each request is tallied by what its client saw: the status
//! class of its head (or that it got none), whether its body arrived whole, and whether a clean
//! answer arrived intact.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sloguard::sim::SimRng;

/// Longer than anything the sidecar lets a request take (`timeouts.total` 10 s): a request
/// without an answer by then is lost.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The soak's listeners, in the order the report lists them.
pub const LISTENERS: [&str; 4] = ["inbound", "openai", "anthropic", "chain"];

/// Prompts of the chain's requests: few, so that the cache has answers for them.
const PROMPTS: usize = 16;

/// What the clients saw, per listener.
#[derive(Default)]
pub struct Tally {
    pub sent: BTreeMap<&'static str, u64>,
    /// By the status class the sidecar must have counted: the head's, but `5xx` for a 200
    /// stream in which the provider reported an error (`x-soak-fault: error_event`).
    pub expected: BTreeMap<(&'static str, &'static str), u64>,
    /// Requests that got no answer (a connection error, or nothing within [`CLIENT_TIMEOUT`]).
    pub lost: Vec<String>,
    /// Bodies cut after the head (faults the sidecar passes on as a cut body).
    pub cut: u64,
    /// Clean answers (`x-soak-fault: none`) that did not arrive whole and intact.
    pub damaged: Vec<String>,
    pub clean: u64,
    /// Answers served from the chain's cache.
    pub cache_hits: u64,
    /// Answers the sidecar made itself, by `x-sloguard-error`.
    pub sidecar_errors: BTreeMap<String, u64>,
    /// Answers of `agent_disabled`: the kill switch, which faults alone must never trip.
    pub disabled: u64,
}

pub struct Load {
    addrs: BTreeMap<&'static str, SocketAddr>,
    h1: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
    pub tally: Arc<Mutex<Tally>>,
}

fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Load {
    pub fn new(addrs: BTreeMap<&'static str, SocketAddr>) -> Load {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Load {
            addrs,
            h1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(20))
                .build(http.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(http),
            tally: Arc::default(),
        }
    }

    /// Sends `rate` requests a second for `secs`, each on its own task (open loop: a slow answer
    /// delays no other request), then waits for every one to end.
    pub async fn run(self: Arc<Self>, rate: u64, secs: u64, seed: u64) {
        let rng = SimRng::new(seed);
        let total = rate * secs;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..total {
            tick.tick().await;
            let pick = [
                rng.next_f64(),
                rng.next_f64(),
                rng.next_f64(),
                rng.next_f64(),
            ];
            let load = self.clone();
            tasks.spawn(async move { load.one(pick).await });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One request, its kind chosen by `pick`, and its tally.
    async fn one(&self, pick: [f64; 4]) {
        let listener = match pick[0] {
            p if p < 0.25 => "inbound",
            p if p < 0.50 => "openai",
            p if p < 0.70 => "anthropic",
            _ => "chain",
        };
        let stream = pick[1] < 0.5;
        let gzip = pick[2] < 0.4;
        let h2 = pick[3]
            < std::env::var("SOAK_H2")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.15);
        let addr = self.addrs[listener];
        let (path, body) = match listener {
            "inbound" => (
                "/ask".to_owned(),
                r#"{"question":"what is the answer?"}"#.to_owned(),
            ),
            "anthropic" => (
                "/v1/messages".to_owned(),
                format!(
                    r#"{{"model":"claude-3-5-haiku","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"what is the answer?"}}]}}"#
                ),
            ),
            _ => {
                let prompt = (pick[3] * 1e6) as usize % PROMPTS;
                (
                    "/v1/chat/completions".to_owned(),
                    format!(
                        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"question {prompt}"}}]}}"#
                    ),
                )
            }
        };
        let mut req = Request::post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if gzip {
            req = req.header(header::ACCEPT_ENCODING, "gzip");
        }
        if listener == "inbound" && stream {
            req = req.header("x-soak-want", "sse");
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
            return;
        };
        let client = if h2 { &self.h2 } else { &self.h1 };
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent
            .entry(listener)
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let outcome = tokio::time::timeout(CLIENT_TIMEOUT, async {
            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes());
            Ok::<_, String>((parts, body))
        })
        .await;
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let (parts, body) = match outcome {
            Err(_) => {
                t.lost.push(format!(
                    "{listener} {path}: no answer within {CLIENT_TIMEOUT:?}"
                ));
                return;
            }
            Ok(Err(e)) => {
                t.lost.push(format!("{listener} {path}: {e}"));
                return;
            }
            Ok(Ok(answer)) => answer,
        };
        let status = parts.status.as_u16();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let fault = header("x-soak-fault");
        let llm = listener != "inbound";
        let expected = if llm && class(status) == "2xx" && fault == "error_event" {
            "5xx"
        } else {
            class(status)
        };
        *t.expected.entry((listener, expected)).or_insert(0) += 1;
        if header("x-sloguard-cache") == "hit" {
            t.cache_hits += 1;
        }
        let error = header("x-sloguard-error");
        if !error.is_empty() {
            if error == "agent_disabled" {
                t.disabled += 1;
            }
            *t.sidecar_errors.entry(error).or_insert(0) += 1;
        }
        let bytes = match body {
            Ok(bytes) => bytes,
            Err(e) => {
                t.cut += 1;
                if fault == "none" && class(status) == "2xx" {
                    t.damaged.push(format!(
                        "{listener} {path} (stream {stream}, gzip {gzip}, h2 {h2}; upstream {:?}, fallback {:?}, cache {:?}, length {:?}): a clean answer cut: {e:?}",
                        header("x-sloguard-upstream"),
                        header("x-sloguard-fallback"),
                        header("x-sloguard-cache"),
                        header("content-length"),
                    ));
                }
                return;
            }
        };
        if fault == "none" && status == 200 {
            t.clean += 1;
            if let Err(why) = intact(&header("content-encoding"), &header("content-type"), &bytes) {
                t.damaged.push(format!(
                    "{listener} {path} (stream {stream}, gzip {gzip}, h2 {h2}): {why}"
                ));
            }
        }
    }
}

/// Whether a clean answer arrived whole: a JSON body parses, a stream ends with its last event.
fn intact(coding: &str, content_type: &str, bytes: &[u8]) -> Result<(), String> {
    let text = match coding {
        "" => String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?,
        "gzip" => {
            let mut s = String::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_string(&mut s)
                .map_err(|e| format!("gzip does not decode: {e}"))?;
            s
        }
        other => return Err(format!("content-encoding {other}")),
    };
    if content_type.starts_with("text/event-stream") {
        let ends = text.ends_with("data: [DONE]\n\n")
            || text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        return match ends {
            true => Ok(()),
            false => Err(format!(
                "a stream that does not end with its last event: {:?}",
                tail(&text)
            )),
        };
    }
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|_| ())
        .map_err(|e| format!("JSON that does not parse ({e}): {:?}", tail(&text)))
}

fn tail(text: &str) -> &str {
    let mut from = text.len().saturating_sub(120);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}
