//! An answer the sidecar makes before it has read the request body (`overloaded`,
//! `circuit_open`, and any other refusal) reaches the client, however much it is still uploading:
//! a socket closed with unread data sends a reset, which destroys the answer before the client
//! reads it. The sidecar drains what the client still sends, for a bounded time and size, before
//! it closes (nginx's lingering close).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::scripted::{admin_post, token_file};
use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Uploads `len` bytes to `path` the way many clients do (Python's `requests`, curl without
/// `Expect`): the whole body first, then the answer is read. The answer's status and error type,
/// or what went wrong.
async fn upload_then_read(
    addr: SocketAddr,
    path: &str,
    len: usize,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: sidecar\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .await
            .map_err(|e| format!("upload cut after {} bytes: {e}", len - left))?;
        left -= n;
    }
    // The answer: its head, then as many bytes as its Content-Length says (the connection may
    // stay open after it).
    let mut answer = Vec::new();
    let read_answer = async {
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&answer).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if answer.len() >= end + 4 + len {
                    return Ok(());
                }
            }
            match s.read(&mut buf).await {
                Ok(0) => return Err("the connection closed before the whole answer".to_owned()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("answer lost: {e}")),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), read_answer).await {
        Err(_) => return Err("no whole answer within 10 s".into()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let status = text
        .strip_prefix("http/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let error = text
        .lines()
        .find_map(|l| l.strip_prefix("x-sloguard-error: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((status, error))
}

const UPLOAD: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn a_refusal_before_the_upload_is_read_reaches_the_client() {
    let agent = verdict_agent().await;
    let token = token_file("early");
    let admin = format!(", token_file: {}", token.display());
    let head = config_head(&admin, "proxy", "agent", "agent: {upstreams: [agent]}");
    let upstream = format!("  agent: {{url: {}, circuit_breaker: {{}}}}\n", agent.url());
    let s = start_yaml(&(head + &upstream)).await;
    let (status, _) = admin_post(&s, "/admin/circuits/agent/open", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let addr = s.listener_addr("proxy").unwrap();
    // Three in a row, and three at once.
    for _ in 0..3 {
        assert_eq!(
            upload_then_read(addr, "/200", UPLOAD).await,
            Ok((503, "circuit_open".into()))
        );
    }
    let at_once: Vec<_> = (0..3)
        .map(|_| tokio::spawn(upload_then_read(addr, "/200", UPLOAD)))
        .collect();
    for t in at_once {
        assert_eq!(t.await.unwrap(), Ok((503, "circuit_open".into())));
    }
    // A client that reads as it uploads (hyper's) gets it too.
    let resp = client()
        .request(
            Request::post(proxy_url(&s, "/200"))
                .body(http_body_util::BodyExt::boxed(RepeatBody {
                    chunk: Bytes::from(vec![b'x'; 64 * 1024]),
                    remaining: UPLOAD as u64,
                }))
                .unwrap(),
        )
        .await
        .expect("an answer, not a reset");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    s.shutdown().await;
}

#[tokio::test]
async fn an_upload_refused_as_overloaded_reads_its_answer() {
    // The upstream tells when it has a request, and answers it when the test lets it: meanwhile
    // that request's body is held for replay, and the budget has no room for a second.
    let (got, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let answer = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = answer.clone();
    let slow = sloguard::sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let (got, go) = (got.clone(), go.clone());
        async move {
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            let _ = got.send(());
            go.notified().await;
            http::Response::new(sloguard::sim::full("{}"))
        }
    })
    .await
    .unwrap();
    let route = "llm: {upstreams: [a, b], max_replay_body: 16MiB}";
    let upstreams = format!(
        "  a: {{url: {0}}}\n  b: {{url: {0}}}\nmemory: {{max_held: 16MiB}}\n",
        slow.url()
    );
    let s = start_yaml(&(config_head("", "proxy", "llm", route) + &upstreams)).await;
    let addr = s.listener_addr("proxy").unwrap();
    let first = tokio::spawn(upload_then_read(addr, "/v1/x", 12 * 1024 * 1024));
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the first upload reaches the upstream");
    for _ in 0..3 {
        let refused = upload_then_read(addr, "/v1/x", 12 * 1024 * 1024).await;
        assert_eq!(refused, Ok((503, "overloaded".into())));
    }
    answer.notify_one();
    assert_eq!(first.await.unwrap(), Ok((200, String::new())));
    s.shutdown().await;
}
