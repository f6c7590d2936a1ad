//! Under `action: block`, what the detectors cannot read is not let through unseen: sloguard
//! asks upstreams only for codings it decodes, decodes a compressed stream (and sends it on
//! decoded, so that the event that ends a blocked stream can follow), reads a body without a
//! type as text, and blocks what stays unreadable (`detector="uninspectable"`) — an unknown or
//! chained coding, a body too large to decide on.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::scripted::*;
use common::*;
use http::{header, Request, Response, StatusCode};

/// `events`, gzip-compressed as a streaming server does: one chunk per event (a sync flush
/// after each), so that each decodes as it arrives.
fn gzip_stream(events: &[&str]) -> Vec<Bytes> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut chunks = Vec::new();
    let mut sent = 0;
    for ev in events {
        e.write_all(ev.as_bytes()).unwrap();
        e.flush().unwrap();
        chunks.push(Bytes::copy_from_slice(&e.get_ref()[sent..]));
        sent = e.get_ref().len();
    }
    let all = e.finish().unwrap();
    chunks.push(Bytes::copy_from_slice(&all[sent..]));
    chunks
}

const BLOCK: &str = "  action: block\n";

#[tokio::test]
async fn a_gzip_stream_is_read_and_a_leak_in_it_blocked() {
    let (s, script, _, _servers) = scene(BLOCK, "").await;
    let mut leak = sse(&[]);
    leak.chunks = gzip_stream(&[
        "data: {\"answer\":\"all fine so far\"}\n\n",
        "data: {\"answer\":\"write to jane.doe@acme-corp.io\"}\n\n",
        "data: {\"answer\":\"and more\"}\n\n",
    ]);
    leak.headers.push(("content-encoding", "gzip"));
    set(&script, "/leak", leak);
    let mut clean = sse(&[]);
    clean.chunks = gzip_stream(&["data: {\"answer\":\"hello\"}\n\n", "data: [DONE]\n\n"]);
    clean.headers.push(("content-encoding", "gzip"));
    set(&script, "/clean", clean);
    // The client gets the stream decoded: the text before the leak, then the error event.
    let (status, headers, body) = post(&url(&s, "inbound", "/leak")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with("data: {\"answer\":\"all fine so far\"}"),
        "{text}"
    );
    assert!(
        text.contains("event: error") && !text.contains("jane.doe"),
        "{text}"
    );
    // A clean one arrives whole, decoded.
    let (status, _, body) = post(&url(&s, "inbound", "/clean")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &body[..],
        b"data: {\"answer\":\"hello\"}\n\ndata: [DONE]\n\n"
    );
    expect_violations(&s, "inbound", "pii_email", "block", 1.0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn unreadable_codings_and_untyped_leaks_are_blocked() {
    let (s, script, _, _servers) = scene(BLOCK, "").await;
    for (path, coding) in [
        ("/zstd", "zstd"),
        ("/chained", "gzip, br"),
        ("/br-stream", "br"),
    ] {
        let mut r = json(r#"{"answer":"cannot be read"}"#);
        if path == "/br-stream" {
            r.content_type = "text/event-stream";
        }
        r.headers.push(("content-encoding", coding));
        set(&script, path, r);
    }
    // No content type at all: read as text.
    let mut untyped = json("card 4111 1111 1111 1111");
    untyped.content_type = "";
    set(&script, "/untyped", untyped);
    // An image carries no text: it passes.
    let mut png = json("\u{89}PNG jane.doe@acme-corp.io");
    png.content_type = "image/png";
    set(&script, "/png", png);
    for path in ["/zstd", "/chained", "/br-stream", "/untyped"] {
        expect_refused(&url(&s, "inbound", path), BLOCKED).await;
    }
    let (status, _, _) = post(&url(&s, "inbound", "/png")).await;
    assert_eq!(status, StatusCode::OK);
    let m = metrics(&s).await;
    assert_eq!(violations(&m, "inbound", "uninspectable", "block"), 3.0);
    assert_eq!(violations(&m, "inbound", "pii_credit_card", "block"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_too_large_to_decide_on_is_blocked() {
    let (s, script, _, _servers) = scene(BLOCK, "").await;
    // 5 MiB of clean JSON text, in 64 KiB chunks, and the same with its length declared.
    let piece = Bytes::from(vec![b'a'; 64 * 1024]);
    let mut big = json("");
    big.chunks = std::iter::once(Bytes::from_static(b"{\"answer\":\""))
        .chain(std::iter::repeat_n(piece, 80))
        .chain(std::iter::once(Bytes::from_static(b"\"}")))
        .collect();
    set(&script, "/big", big);
    expect_refused(&url(&s, "inbound", "/big"), BLOCKED).await;
    let m = metrics(&s).await;
    assert_eq!(violations(&m, "inbound", "uninspectable", "block"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn upstreams_are_asked_only_for_codings_sloguard_reads() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s2 = seen.clone();
    let agent = sloguard::sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let ae = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned());
        s2.lock().unwrap().push(ae);
        async move { Response::new(sloguard::sim::full("{}")) }
    })
    .await
    .unwrap();
    let (llm, _l) = scripted().await;
    let s = sidecar(&agent.url(), &llm.url(), "", "").await;
    for asked in [
        Some("gzip, deflate"),
        Some("gzip, deflate, br, zstd"),
        Some("br;q=1.0, gzip;q=0.5"),
        Some("br"),
        Some("gzip;q=0, br"),
        None,
    ] {
        let mut req = Request::get(url(&s, "inbound", "/"));
        if let Some(a) = asked {
            req = req.header(header::ACCEPT_ENCODING, a);
        }
        let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
        let _ = body_bytes(resp).await;
    }
    let seen = seen.lock().unwrap().clone();
    let want = [
        "gzip, deflate",
        "gzip, deflate",
        "gzip;q=0.5",
        "identity",
        "identity",
        "identity",
    ];
    assert_eq!(
        seen,
        want.map(|w| Some(w.to_owned())).to_vec(),
        "what the agent was asked for"
    );
    s.shutdown().await;
}
