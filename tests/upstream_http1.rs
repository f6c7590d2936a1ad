//! sloguard's own HTTP/1.1 client against an upstream's answers that carry no body or frame it
//! their own way: a `HEAD` answered with a `Content-Length` and no body, a 204, a `100 Continue`
//! before the answer, a chunked answer with a trailer, one to the close. Each reaches the client
//! whole, and every exchange that ended cleanly leaves its upstream connection for the next: the
//! upstream sees all but the last on one connection.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::{Request, StatusCode};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn answers_without_a_body_or_with_their_own_framing_keep_the_connection() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let upstream = raw_upstream(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                let head = read_head(&mut s).await;
                let line = String::from_utf8_lossy(&head);
                let Some(target) = line.split(' ').nth(1) else {
                    return;
                };
                let answer: &[u8] = match target {
                    "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n",
                    "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
                    "/continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                    "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
                    "/to-the-close" => b"HTTP/1.1 200 OK\r\n\r\nall of it",
                    _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                };
                if s.write_all(answer).await.is_err() || target == "/to-the-close" {
                    return;
                }
            }
        }
    })
    .await;
    let sidecar = agent_sidecar(&format!("'http://{upstream}'"), "").await;
    // A body waited for that never comes would hang until the sidecar's timeouts: fail sooner.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        exchanges(&sidecar, &accepted),
    )
    .await
    .expect("every answer came");
}

async fn exchanges(sidecar: &sloguard::Sidecar, accepted: &AtomicUsize) {
    let client = client();

    let head = client
        .request(
            Request::head(proxy_url(sidecar, "/head"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "1000");
    assert!(body_bytes(head).await.is_empty());

    let no_content = get(&client, &proxy_url(sidecar, "/no-content")).await;
    assert_eq!(no_content.status(), StatusCode::NO_CONTENT);
    assert!(body_bytes(no_content).await.is_empty());

    let after_continue = get(&client, &proxy_url(sidecar, "/continue")).await;
    assert_eq!(after_continue.status(), StatusCode::OK);
    assert_eq!(body_bytes(after_continue).await, "ok");

    let chunked = get(&client, &proxy_url(sidecar, "/chunked")).await;
    assert_eq!(chunked.status(), StatusCode::OK);
    assert_eq!(body_bytes(chunked).await, "hello world");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "each exchange left the connection clean"
    );

    // To the close: whole, and that connection is not kept.
    let to_the_close = get(&client, &proxy_url(sidecar, "/to-the-close")).await;
    assert_eq!(body_bytes(to_the_close).await, "all of it");
    let again = get(&client, &proxy_url(sidecar, "/continue")).await;
    assert_eq!(body_bytes(again).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An upstream that answers at once, streaming a large answer while it still reads a large
/// upload, to a client that (as Python's `requests` and curl do) reads nothing until its upload
/// is done: the upload goes on while nobody reads the answer, so both ends get all of it.
#[tokio::test]
async fn an_upload_goes_on_while_an_early_answer_is_not_read() {
    // More than the sidecar's receive buffer takes (Linux grows it up to 32 MiB): the client
    // can only finish its upload if the sidecar reads it on.
    const UPLOAD: usize = 48 << 20;
    const ANSWER: usize = 16 << 20;
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let upstream = raw_upstream(move |mut s| {
        let got_tx = got_tx.clone();
        async move {
            let head = read_head(&mut s).await;
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let mut received = head.len() - end - 4;
            let (mut read, mut write) = s.into_split();
            tokio::spawn(async move {
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\n\r\n");
                write.write_all(answer.as_bytes()).await?;
                let chunk = vec![b'a'; 64 * 1024];
                for _ in 0..ANSWER / chunk.len() {
                    write.write_all(&chunk).await?;
                }
                std::io::Result::Ok(())
            });
            let mut buf = vec![0u8; 64 * 1024];
            while received < UPLOAD {
                match tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received += n,
                }
            }
            let _ = got_tx.send(received);
        }
    })
    .await;
    let sidecar = agent_sidecar(&format!("'http://{upstream}'"), "").await;
    let addr = sidecar.listener_addr("proxy").unwrap();
    let client = tokio::spawn(tokio::time::timeout(
        std::time::Duration::from_secs(30),
        async move {
            // A small receive buffer, so that an unread answer stops the sidecar's writes soon.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(64 * 1024).unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            let head =
                format!("POST /up HTTP/1.1\r\nhost: sidecar\r\ncontent-length: {UPLOAD}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..UPLOAD / chunk.len() {
                s.write_all(&chunk).await.unwrap();
            }
            // The head, then the body to its length (the connection stays open after it).
            let mut answer = Vec::with_capacity(ANSWER + 1024);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let end = answer.windows(4).position(|w| w == b"\r\n\r\n");
                if end.is_some_and(|end| answer.len() - end - 4 >= ANSWER) {
                    break;
                }
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            answer
        },
    ));
    let received = tokio::time::timeout(std::time::Duration::from_secs(30), got_rx.recv())
        .await
        .expect("the upstream got the upload in time")
        .unwrap();
    assert_eq!(received, UPLOAD, "the upstream got the whole upload");
    let answer = client
        .await
        .unwrap()
        .expect("the client got its answer in time");
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        answer.len() - end - 4,
        ANSWER,
        "the client got the whole answer"
    );
}
