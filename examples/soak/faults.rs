//! Upstreams that fail in every way the soak knows: an agent API and OpenAI- and Anthropic-style
//! providers (JSON and SSE) that, at random, reset mid-body, hang, stall mid-stream, answer
//! malformed JSON or SSE, put an error event in a 200 stream, storm with 429s (Retry-After) and
//! burst with 5xx, refuse connections for a while, and close idle keep-alive connections early;
//! and that answer clean bodies gzip-compressed or with a Content-Length as often as not. Each
//! answer says its fault in `x-soak-fault`, so that the client can tell what the sidecar should
//! have counted.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sloguard::sim::SimRng;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The fault classes, as counted and as `x-soak-fault` says them.
pub const FAULTS: [&str; 8] = [
    "reset",
    "hang",
    "stall",
    "malformed",
    "error_event",
    "429",
    "5xx",
    "refused",
];
/// How clean answers were framed and coded (not faults: variety the sidecar must pass intact).
pub const VARIANTS: [&str; 2] = ["gzip", "content_length"];

const RESET: usize = 0;
const HANG: usize = 1;
const STALL: usize = 2;
const MALFORMED: usize = 3;
const ERROR_EVENT: usize = 4;
const STORM: usize = 5;
const BURST: usize = 6;
const REFUSED: usize = 7;

/// How long a hung answer or a stalled stream waits: far past the sidecar's timeouts.
const HANG_FOR: Duration = Duration::from_secs(30);

/// What an upstream speaks.
#[derive(Clone, Copy, PartialEq)]
pub enum Speaks {
    Agent,
    OpenAi,
    Anthropic,
}

/// Counts of what an upstream did.
#[derive(Default)]
pub struct Injected {
    pub faults: [AtomicU64; FAULTS.len()],
    pub variants: [AtomicU64; VARIANTS.len()],
    pub clean: AtomicU64,
}

impl Injected {
    fn fault(&self, i: usize) {
        self.faults[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// One fault-injecting upstream.
pub struct FaultServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub injected: Arc<Injected>,
    tasks: JoinSet<()>,
}

impl FaultServer {
    /// Stops serving (its connections close).
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Time windows during which every answer is a 429 (a storm) or a 503 (a burst), and, when
/// `refusing`, during which the listener is closed.
struct Windows {
    storm: AtomicBool,
    burst: AtomicBool,
    refusing: AtomicBool,
}

/// Starts `name`, speaking `speaks`, on a port of its own; it closes a connection idle for
/// `idle_close` (and, with `advertise`, says so in `Keep-Alive: timeout=N`); with `refuses`, it
/// closes its listener from time to time. `seed` makes its choices repeatable.
pub async fn start(
    name: &'static str,
    speaks: Speaks,
    idle_close: Duration,
    advertise: bool,
    refuses: bool,
    seed: u64,
) -> std::io::Result<FaultServer> {
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    let injected = Arc::new(Injected::default());
    let windows = Arc::new(Windows {
        storm: AtomicBool::new(false),
        burst: AtomicBool::new(false),
        refusing: AtomicBool::new(false),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(weather(
        windows.clone(),
        injected.clone(),
        refuses,
        seed ^ 0x5eed,
    ));
    let rng = Arc::new(SimRng::new(seed));
    let state = (injected.clone(), windows.clone(), rng);
    tasks.spawn(accept(tcp, addr, idle_close, advertise, speaks, state));
    Ok(FaultServer {
        name,
        addr,
        injected,
        tasks,
    })
}

type State = (Arc<Injected>, Arc<Windows>, Arc<SimRng>);

/// Turns storms, bursts and refusals on and off at random: each second, a storm (2–4 s) starts
/// with a chance of 1 in 40, a burst (1–3 s) 1 in 30, a refusal (2–4 s) 1 in 30.
async fn weather(w: Arc<Windows>, injected: Arc<Injected>, refuses: bool, seed: u64) {
    let rng = SimRng::new(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut until = [0u64; 3];
    let mut now = 0u64;
    loop {
        tick.tick().await;
        now += 1;
        let flags = [&w.storm, &w.burst, &w.refusing];
        let odds = [
            1.0 / 40.0,
            1.0 / 30.0,
            if refuses { 1.0 / 30.0 } else { 0.0 },
        ];
        // Seconds each lasts: at least this, and up to two more.
        let least = [2, 1, 2];
        for i in 0..3 {
            if flags[i].load(Ordering::Relaxed) {
                if now >= until[i] {
                    flags[i].store(false, Ordering::Relaxed);
                }
            } else if rng.next_f64() < odds[i] {
                until[i] = now + least[i] + (rng.next_f64() * 3.0) as u64;
                flags[i].store(true, Ordering::Relaxed);
                if i == 2 {
                    injected.fault(REFUSED);
                }
            }
        }
    }
}

/// Accepts connections and serves them; while refusing, the listener is closed: new connections
/// are refused (those open go on).
async fn accept(
    mut tcp: TcpListener,
    addr: SocketAddr,
    idle_close: Duration,
    advertise: bool,
    speaks: Speaks,
    state: State,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's head timer runs from when it starts waiting for a request head: on a kept-alive
        // connection, the idle time. Past it the connection closes, as gunicorn and uvicorn do.
        .header_read_timeout(idle_close);
    let mut conns = JoinSet::new();
    loop {
        if state.1.refusing.load(Ordering::Relaxed) {
            drop(tcp);
            while state.1.refusing.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tcp = loop {
                match TcpListener::bind(addr).await {
                    Ok(t) => break t,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
        }
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(req, speaks, advertise, idle_close, state).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        conns.spawn(async move {
            let _ = conn.await;
        });
        // Reap what has ended.
        while conns.try_join_next().is_some() {}
    }
}

/// A body sent frame by frame from a channel; an `Err` frame cuts the connection (a reset).
struct Frames(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(|r| r.map(Frame::data)))
    }
}

type Reply = Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>;

/// What the client asked for.
struct Asked {
    stream: bool,
    gzip: bool,
}

async fn answer(
    req: Request<Incoming>,
    speaks: Speaks,
    advertise: bool,
    idle_close: Duration,
    (injected, windows, rng): State,
) -> Reply {
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let want_sse = req.headers().get("x-soak-want").is_some_and(|v| v == "sse");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let stream = match speaks {
        Speaks::Agent => want_sse,
        _ => memchr::memmem::find(&body, b"\"stream\":true").is_some(),
    };
    let asked = Asked { stream, gzip };
    let mut reply = if windows.storm.load(Ordering::Relaxed) {
        injected.fault(STORM);
        status(
            StatusCode::TOO_MANY_REQUESTS,
            "429",
            &[("retry-after", "1")],
        )
    } else if windows.burst.load(Ordering::Relaxed) {
        injected.fault(BURST);
        status(StatusCode::SERVICE_UNAVAILABLE, "5xx", &[])
    } else {
        let roll = rng.next_f64();
        // reset 4%, hang 2%, stall 3% (streams; else a reset), malformed 5%, error event 4%
        // (LLM streams; else clean), the rest clean.
        let fault = match roll {
            r if r < 0.04 => Some(RESET),
            r if r < 0.06 => Some(HANG),
            r if r < 0.09 => Some(if asked.stream { STALL } else { RESET }),
            r if r < 0.14 => Some(MALFORMED),
            r if r < 0.18 && asked.stream && speaks != Speaks::Agent => Some(ERROR_EVENT),
            _ => None,
        };
        respond(fault, speaks, &asked, &injected, &rng).await
    };
    if advertise {
        let v = format!("timeout={}", idle_close.as_secs());
        if let Ok(v) = v.parse() {
            reply.headers_mut().insert("keep-alive", v);
        }
    }
    reply
}

fn status(code: StatusCode, fault: &'static str, extra: &[(&'static str, &'static str)]) -> Reply {
    let body = format!("{{\"error\":{{\"message\":\"soak {fault}\",\"type\":\"soak\"}}}}");
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert("x-soak-fault", header::HeaderValue::from_static(fault));
    for (k, v) in extra {
        h.insert(*k, header::HeaderValue::from_static(v));
    }
    r
}

/// The body parts of a clean answer (events of a stream; one part for JSON).
fn clean_parts(speaks: Speaks, stream: bool) -> Vec<String> {
    let words = [
        "The", " answer", " is", " forty", "-two", ",", " as", " always", ".",
    ];
    match (speaks, stream) {
        (Speaks::Agent, false) => vec![r#"{"answer":"The answer is forty-two, as always."}"#.into()],
        (Speaks::Agent, true) => {
            let mut parts: Vec<String> = words
                .iter()
                .map(|w| format!("data: {}\n\n", serde_json::json!({"delta": w})))
                .collect();
            parts.push("data: [DONE]\n\n".into());
            parts
        }
        (Speaks::OpenAi, false) => vec![serde_json::json!({
            "id": "chatcmpl-soak", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9}
        })
        .to_string()],
        (Speaks::OpenAi, true) => {
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                format!(
                    "data: {}\n\n",
                    serde_json::json!({"id": "chatcmpl-soak", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                )
            };
            let mut parts = vec![chunk(serde_json::json!({"role": "assistant"}), None)];
            parts.extend(words.iter().map(|w| chunk(serde_json::json!({"content": w}), None)));
            parts.push(chunk(serde_json::json!({}), Some("stop")));
            parts.push("data: [DONE]\n\n".into());
            parts
        }
        (Speaks::Anthropic, false) => vec![serde_json::json!({
            "id": "msg_soak", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
            "content": [{"type": "text", "text": words.concat()}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 9}
        })
        .to_string()],
        (Speaks::Anthropic, true) => {
            let event = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
            let mut parts = vec![
                event("message_start", serde_json::json!({"type": "message_start", "message": {"id": "msg_soak", "type": "message", "role": "assistant", "model": "claude-3-5-haiku", "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}})),
                event("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ];
            parts.extend(words.iter().map(|w| {
                event("content_block_delta", serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}))
            }));
            parts.push(event("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0})));
            parts.push(event("message_delta", serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}})));
            parts.push(event("message_stop", serde_json::json!({"type": "message_stop"})));
            parts
        }
    }
}

/// The parts of a malformed answer: JSON that breaks off, SSE with broken events.
fn malformed_parts(speaks: Speaks, stream: bool) -> Vec<String> {
    match (speaks, stream) {
        (_, false) => vec![r#"{"id":"soak","choices":[{"message":{"content":"cut sho"#.into()],
        (Speaks::Anthropic, true) => vec![
            "event: message_start\ndata: {\"type\":\"message_st\n\n".into(),
            "event: content_block_delta\ndata: not json at all\n\n".into(),
            ": a comment\n\nbogus-field: 1\n\n".into(),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into(),
        ],
        (_, true) => vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n".into(),
            "data: {broken\n\n".into(),
            ": a comment\n\nbogus-field: 1\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
    }
}

/// The parts of a 200 stream whose provider fails inside it.
fn error_event_parts(speaks: Speaks) -> Vec<String> {
    let mut parts = clean_parts(speaks, true);
    parts.truncate(3);
    match speaks {
        Speaks::Anthropic => parts.push(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into(),
        ),
        _ => parts.push(
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n".into(),
        ),
    }
    parts
}

fn gzip(parts: &[String]) -> Vec<Bytes> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut out = Vec::new();
    let mut sent = 0;
    for p in parts {
        let _ = e.write_all(p.as_bytes());
        let _ = e.flush();
        out.push(Bytes::copy_from_slice(&e.get_ref()[sent..]));
        sent = e.get_ref().len();
    }
    if let Ok(all) = e.finish() {
        out.push(Bytes::copy_from_slice(&all[sent..]));
    }
    out
}

async fn respond(
    fault: Option<usize>,
    speaks: Speaks,
    asked: &Asked,
    injected: &Injected,
    rng: &SimRng,
) -> Reply {
    let name = match fault {
        Some(f) => {
            injected.fault(f);
            FAULTS[f]
        }
        None => {
            injected.clean.fetch_add(1, Ordering::Relaxed);
            "none"
        }
    };
    if fault == Some(HANG) {
        tokio::time::sleep(HANG_FOR).await;
    }
    let mut parts = match fault {
        Some(MALFORMED) => malformed_parts(speaks, asked.stream),
        Some(ERROR_EVENT) => error_event_parts(speaks),
        _ => clean_parts(speaks, asked.stream),
    };
    // Clean answers and malformed ones vary in coding and framing; an error event stays plain
    // (the sidecar reads only plain streams for the provider's errors).
    let varies = matches!(fault, None | Some(MALFORMED) | Some(HANG));
    let gzipped = varies && asked.gzip && rng.next_f64() < 0.5;
    let mut chunks: Vec<Bytes> = if gzipped {
        injected.variants[0].fetch_add(1, Ordering::Relaxed);
        gzip(&parts)
    } else {
        parts.drain(..).map(Bytes::from).collect()
    };
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let reset = fault == Some(RESET);
    let with_length = (varies || reset) && rng.next_f64() < 0.5;
    if with_length {
        injected.variants[1].fetch_add(1, Ordering::Relaxed);
    }
    // A reset cuts the body after its first chunks; a stall stops sending after them.
    let cut_after = match fault {
        Some(RESET) => Some(chunks.len().div_ceil(2).min(2)),
        Some(STALL) => Some(3.min(chunks.len())),
        _ => None,
    };
    let stall = fault == Some(STALL);
    if let Some(n) = cut_after {
        if fault == Some(RESET) && chunks.len() == 1 {
            // A single chunk: half of it.
            let c = chunks[0].clone();
            chunks = vec![c.slice(..c.len() / 2)];
        } else {
            chunks.truncate(n);
        }
    }
    let gap = if asked.stream {
        Duration::from_millis(4)
    } else {
        Duration::ZERO
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (i, c) in chunks.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
        }
        if stall {
            tokio::time::sleep(HANG_FOR).await;
        }
        if reset {
            let _ = tx.send(Err(std::io::Error::other("soak reset"))).await;
        }
    });
    let mut r = Response::new(Frames(rx).boxed());
    let h = r.headers_mut();
    let ct = if asked.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    if gzipped {
        h.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    if with_length {
        // A reset's whole length declared: the body ends short of it.
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    }
    h.insert("x-soak-fault", header::HeaderValue::from_static(name));
    r
}
