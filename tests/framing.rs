//! Every body the sidecar changes carries its own framing. Under `safety.action: block` a
//! compressed stream reaches the client decoded (and a blocked one ends with the sidecar's error
//! event), a JSON body is read whole and answered by the sidecar: whatever the upstream's framing
//! was (`Content-Length` or chunked), the client must get a whole, well-framed body — on both
//! roles, over HTTP/1.1 and HTTP/2, for gzip and deflate, clean and blocked. So must a body served
//! from a fallback or from the cache.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::io::{Read, Write};

use bytes::Bytes;
use common::scripted::{admin_post, token_file};
use common::*;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;
use tokio::sync::mpsc;

const LEAK: &str = "jane.doe@acme-corp.io";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Json,
    Sse,
}

#[derive(Clone, Copy, Debug)]
enum Coding {
    Gzip,
    Deflate,
}

/// The plain body the upstream means for `kind`, clean or with a leak in the middle.
fn plain(kind: Kind, leak: bool) -> Vec<String> {
    let words = [
        "Here", " is", " the", " answer", " you", " asked", " for,", " in", " a", " few", " words",
    ];
    let mut parts: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    if leak {
        parts.insert(6, format!(" mail {LEAK}"));
    }
    match kind {
        Kind::Json => vec![serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": parts.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 11}
        })
        .to_string()],
        Kind::Sse => {
            let mut events: Vec<String> = parts
                .iter()
                .map(|p| {
                    let chunk = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
                    format!("data: {chunk}\n\n")
                })
                .collect();
            events.push("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into());
            events.push("data: [DONE]\n\n".into());
            events
        }
    }
}

/// `parts` compressed as a streaming server does: a sync flush after each, so that each chunk
/// decodes as it arrives.
fn compress(coding: Coding, parts: &[String]) -> Vec<Bytes> {
    fn flushed<W: Write>(
        mut w: W,
        parts: &[String],
        bytes: impl Fn(&W) -> usize,
    ) -> (W, Vec<usize>) {
        let mut ends = Vec::new();
        for p in parts {
            w.write_all(p.as_bytes()).unwrap();
            w.flush().unwrap();
            ends.push(bytes(&w));
        }
        (w, ends)
    }
    let (all, ends) = match coding {
        Coding::Gzip => {
            let e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let (e, ends) = flushed(e, parts, |e| e.get_ref().len());
            (e.finish().unwrap(), ends)
        }
        Coding::Deflate => {
            let e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            let (e, ends) = flushed(e, parts, |e| e.get_ref().len());
            (e.finish().unwrap(), ends)
        }
    };
    let mut chunks = Vec::new();
    let mut from = 0;
    for end in ends.into_iter().chain(std::iter::once(all.len())) {
        chunks.push(Bytes::copy_from_slice(&all[from..end]));
        from = end;
    }
    chunks
}

fn decode(coding: Option<&str>, body: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    let read = match coding {
        None => return String::from_utf8(body.to_vec()).map_err(|e| e.to_string()),
        Some("gzip") => flate2::read::GzDecoder::new(body).read_to_string(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(body).read_to_string(&mut out),
        Some(other) => return Err(format!("unexpected content-encoding {other}")),
    };
    read.map(|_| out)
        .map_err(|e| format!("does not decode: {e}"))
}

/// An upstream answering the case its request's query names
/// (`?case={json|sse}/{gzip|deflate}/{chunked|length}/{clean|leak}`) with that body, compressed,
/// in several frames.
async fn upstream() -> SimServer {
    sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let case = req
            .uri()
            .query()
            .unwrap()
            .trim_start_matches("case=")
            .to_owned();
        let _ = req.into_body().collect().await;
        let seg: Vec<&str> = case.split('/').collect();
        let (kind, coding, framing, leak) = (seg[0], seg[1], seg[2], seg[3] == "leak");
        let kind = if kind == "sse" { Kind::Sse } else { Kind::Json };
        let coding = if coding == "gzip" {
            Coding::Gzip
        } else {
            Coding::Deflate
        };
        let chunks = compress(coding, &plain(kind, leak));
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for c in chunks {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(sim::ChannelBody(rx).boxed());
        let h = r.headers_mut();
        let ct = if kind == Kind::Sse {
            "text/event-stream"
        } else {
            "application/json"
        };
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        let ce = if matches!(coding, Coding::Gzip) {
            "gzip"
        } else {
            "deflate"
        };
        h.insert(header::CONTENT_ENCODING, ce.parse().unwrap());
        if framing == "length" {
            h.insert(header::CONTENT_LENGTH, len.into());
        }
        r
    })
    .await
    .unwrap()
}

/// An upstream that answers every request 503.
async fn failing() -> SimServer {
    sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut r = Response::new(sim::full("down"));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await
    .unwrap()
}

/// A sidecar under `block` with an `agent` listener, an `llm` listener, and a `chain` listener
/// (an `llm` route that falls back from a failing upstream to the good one, with a cache).
async fn sidecar(good: &str, bad: &str) -> Sidecar {
    let token = token_file("framing");
    start_yaml(&format!(
        "agent: test-agent
admin: {{bind: 127.0.0.1:0, token_file: {}}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
  - {{name: egress, bind: 127.0.0.1:0, role: llm, route: llm}}
  - {{name: chain, bind: 127.0.0.1:0, role: llm, route: chain}}
routes:
  agent: {{upstreams: [agent]}}
  llm: {{upstreams: [openai]}}
  chain: {{upstreams: [down, spare], cache: {{}}}}
upstreams:
  agent: {{url: {good}}}
  openai: {{url: {good}, protocol: openai}}
  down: {{url: {bad}, protocol: openai, circuit_breaker: {{}}}}
  spare: {{url: {good}, protocol: openai, circuit_breaker: {{}}}}
safety:
  detectors: [{{builtin: pii_email}}]
  action: block
",
        token.display()
    ))
    .await
}

/// What the client got: status, headers, and the body, or the error that cut it.
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

async fn fetch(client: &TestClient, url: &str, case: &str) -> Got {
    let req = Request::post(format!("{url}?case={case}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT_ENCODING, "gzip, deflate")
        .body(full(REQUEST))
        .unwrap();
    let resp = client.request(req).await.expect("an answer");
    let (parts, body) = resp.into_parts();
    let body = match tokio::time::timeout(std::time::Duration::from_secs(10), body.collect()).await
    {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(format!("body cut: {e:?}")),
        Err(_) => Err("body never ended".into()),
    };
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// What is wrong with `got` for a request of this case; `None` when it is right.
fn judge(got: &Got, kind: Kind, leak: bool) -> Option<String> {
    let body = match &got.body {
        Ok(b) => b,
        Err(e) => return Some(e.clone()),
    };
    if let Some(len) = got.headers.get(header::CONTENT_LENGTH) {
        let len: usize = len.to_str().unwrap().parse().unwrap();
        if len != body.len() {
            return Some(format!("content-length {len}, body {} bytes", body.len()));
        }
    }
    let coding = got
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = match decode(coding.as_deref(), body) {
        Ok(t) => t,
        Err(e) => return Some(e),
    };
    let expected = plain(kind, leak).concat();
    match (kind, leak) {
        (_, false) if got.status != StatusCode::OK || text != expected => Some(format!(
            "{}: {text:?}, expected the upstream's text {expected:?}",
            got.status
        )),
        (Kind::Json, true)
            if got.status != StatusCode::FORBIDDEN
                || got
                    .headers
                    .get("x-sloguard-error")
                    .is_none_or(|v| v != "safety_blocked")
                || !text.contains("\"safety_blocked\"") =>
        {
            Some(format!(
                "{}: {text:?}, expected 403 safety_blocked",
                got.status
            ))
        }
        (Kind::Sse, true) => {
            // Safety holds a stream back chunk by chunk: the clean events that came in chunks of
            // their own go out, then the error event; nothing of the leak's chunk or after it.
            let events = plain(kind, leak);
            let before = events[..6].concat();
            let sent = text.find("event: error\n").map(|at| &text[..at]);
            let ok = got.status == StatusCode::OK
                && sent.is_some_and(|s| {
                    before.starts_with(s) && (s.is_empty() || s.ends_with("\n\n"))
                })
                && text.ends_with("\n\n")
                && !text.contains(LEAK);
            (!ok).then(|| {
                format!(
                    "{}: {text:?}, expected whole events before the leak, then the error event",
                    got.status
                )
            })
        }
        _ => None,
    }
}

const REQUEST: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

/// Every case on `listener` (`path` is the request path before the case's own segments) with
/// `client`; the failures, one line each.
async fn every_case(s: &Sidecar, client: &TestClient, listener: &str, path: &str) -> Vec<String> {
    let addr = s.listener_addr(listener).unwrap();
    let mut failures = Vec::new();
    for kind in [Kind::Json, Kind::Sse] {
        for coding in ["gzip", "deflate"] {
            for framing in ["chunked", "length"] {
                for leak in [false, true] {
                    let case = format!(
                        "{}/{coding}/{framing}/{}",
                        if kind == Kind::Sse { "sse" } else { "json" },
                        if leak { "leak" } else { "clean" }
                    );
                    let got = fetch(client, &format!("http://{addr}{path}"), &case).await;
                    if let Some(why) = judge(&got, kind, leak) {
                        failures.push(format!("{listener} {case}: {why}"));
                    }
                }
            }
        }
    }
    failures
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn both_roles(client: TestClient) {
    let (good, bad) = (upstream().await, failing().await);
    let s = sidecar(&good.url(), &bad.url()).await;
    let mut failures = every_case(&s, &client, "inbound", "/ask").await;
    // On the `llm` role, an LLM call (a chat completion) is what safety reads.
    failures.extend(every_case(&s, &client, "egress", "/v1/chat/completions").await);
    s.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn changed_bodies_are_framed_right_over_http1() {
    both_roles(client()).await;
}

#[tokio::test]
async fn changed_bodies_are_framed_right_over_http2() {
    both_roles(h2_client()).await;
}

/// A body from a fallback, and one from the cache, with their upstream's `Content-Length` and
/// coding, arrive whole over both protocols.
#[tokio::test]
async fn bodies_from_a_fallback_or_the_cache_are_framed_right() {
    let (good, bad) = (upstream().await, failing().await);
    let s = sidecar(&good.url(), &bad.url()).await;
    let mut failures = Vec::new();
    for client in [client(), h2_client()] {
        failures.extend(every_case(&s, &client, "chain", "/v1/chat/completions").await);
    }
    // Every circuit open: the clean JSON answers come from the cache.
    for name in ["down", "spare"] {
        let path = format!("/admin/circuits/{name}/open");
        assert_eq!(
            admin_post(&s, &path, Some("s3cret")).await.0,
            StatusCode::OK
        );
    }
    let addr = s.listener_addr("chain").unwrap();
    for client in [client(), h2_client()] {
        for case in ["json/gzip/length/clean", "json/deflate/chunked/clean"] {
            let url = format!("http://{addr}/v1/chat/completions");
            let got = fetch(&client, &url, case).await;
            if got
                .headers
                .get("x-sloguard-cache")
                .is_none_or(|v| v != "hit")
            {
                failures.push(format!(
                    "cache {case}: not served from the cache ({})",
                    got.status
                ));
            } else if let Some(why) = judge(&got, Kind::Json, false) {
                failures.push(format!("cache {case}: {why}"));
            }
        }
    }
    s.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An upstream whose 200 JSON answers declare their length and break off halfway.
async fn breaking() -> std::net::SocketAddr {
    raw_upstream(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = read_head(&mut s).await;
        let text = String::from_utf8_lossy(&head).to_lowercase();
        let end = text.find("\r\n\r\n").unwrap() + 4;
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len.saturating_sub(head.len() - end)];
        s.read_exact(&mut body).await.unwrap();
        let whole = plain(Kind::Json, false).concat();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            whole.len(),
            &whole[..whole.len() / 2]
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        // Then the connection closes: the body breaks off.
    })
    .await
}

/// A JSON answer read whole for a safety decision that breaks off is an error for the client,
/// and nothing of it goes into the cache: with every circuit open later, the cache has no entry
/// (it once served the half body as a 200).
#[tokio::test]
async fn a_broken_answer_read_whole_is_not_cached() {
    let (good, bad) = (breaking().await, failing().await);
    let s = sidecar(&format!("http://{good}"), &bad.url()).await;
    let url = format!(
        "http://{}/v1/chat/completions",
        s.listener_addr("chain").unwrap()
    );
    let got = fetch(&client(), &url, "json/plain/length/clean").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.body);
    for name in ["down", "spare"] {
        let path = format!("/admin/circuits/{name}/open");
        assert_eq!(
            admin_post(&s, &path, Some("s3cret")).await.0,
            StatusCode::OK
        );
    }
    let got = fetch(&client(), &url, "json/plain/length/clean").await;
    assert_eq!(
        (got.status, got.headers.get("x-sloguard-error").cloned()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("circuit_open".parse().unwrap())
        ),
        "{:?}",
        got.body
    );
    s.shutdown().await;
}
