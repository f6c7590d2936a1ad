use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

async fn conn(addr: SocketAddr) -> Conn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Conn::new(TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(tcp))))
}

fn request(method: &str, headers: &[(&str, &str)], chunks: Vec<Bytes>) -> Request<RequestBody> {
    let (body, _) = RequestBody::replay(Arc::from(chunks), tokio::time::Instant::now(), None, None);
    let mut req = Request::new(body);
    *req.method_mut() = method.parse().unwrap();
    *req.uri_mut() = "/p?q=1".parse().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

/// Reads from `socket` until what was read holds `end`.
async fn read_until(socket: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !buf.windows(end.len()).any(|w| w == end) {
        let n = socket.read(&mut piece).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&piece[..n]);
    }
    buf
}

async fn body_of(response: Response<Body>) -> (Vec<u8>, Option<Conn>) {
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    (got, body.into_reusable())
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn a_clean_exchange_leaves_the_connection_for_the_next() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let first = read_until(&mut socket, b"\r\n\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
            .await
            .unwrap();
        let second = read_until(&mut socket, b"hello").await;
        socket
            .write_all(
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        (first, second)
    });
    let c = conn(addr).await;
    let response = c
        .send(request("GET", &[("host", "up")], vec![]))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "3");
    let (got, c) = body_of(response).await;
    assert_eq!(got, b"one");
    let mut c = c.expect("a clean exchange keeps its connection");
    assert!(c.is_open());
    let post = request(
        "POST",
        &[("host", "up")],
        vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo")],
    );
    let response = c.send(post).await.unwrap();
    assert_eq!(response.status(), 201);
    let (got, c) = body_of(response).await;
    assert_eq!(got, b"two");
    assert!(c.is_some());
    let (first, second) = server.await.unwrap();
    assert_eq!(first, b"GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
    assert_eq!(
        second,
        b"POST /p?q=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[tokio::test]
async fn a_chunked_upload_with_a_large_chunk() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let got = read_until(&mut socket, b"0\r\n\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        got
    });
    let large = Bytes::from(vec![b'x'; 3 * super::write::COPY_UP_TO]);
    let chunks = vec![
        Bytes::from_static(b"abc"),
        large.clone(),
        Bytes::from_static(b"z"),
    ];
    let req = request("PUT", &[("transfer-encoding", "chunked")], chunks);
    let response = conn(addr).await.send(req).await.unwrap();
    let (got, c) = body_of(response).await;
    assert!(got.is_empty());
    assert!(c.is_some());
    let sent = server.await.unwrap();
    let mut want =
        b"PUT /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n6000\r\n".to_vec();
    want.extend_from_slice(&large);
    want.extend_from_slice(b"\r\n1\r\nz\r\n0\r\n\r\n");
    assert_eq!(sent, want);
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_leaves_the_connection_unused() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_until(&mut socket, b"\r\n\r\n").await;
        socket
            .write_all(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")
            .await
            .unwrap();
        // Reads nothing more, and keeps the socket until the test ends.
        socket
    });
    // More than the socket buffers take: the upload is still going when the answer comes.
    let body = vec![Bytes::from(vec![b'x'; 32 << 20])];
    let response = conn(addr)
        .await
        .send(request("POST", &[], body))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let (got, c) = body_of(response).await;
    assert_eq!(got, b"no");
    assert!(
        c.is_none(),
        "a connection whose request was not all sent is not reused"
    );
    drop(server.await.unwrap());
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_taken() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_until(&mut socket, b"\r\n\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    let response = conn(addr)
        .await
        .send(request("GET", &[], vec![]))
        .await
        .unwrap();
    let (_, c) = body_of(response).await;
    let mut c = c.unwrap();
    server.await.unwrap();
    // The close reaches the runtime's view of the socket within a turn or two of its driver.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.is_open() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close was never seen"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_broken_response_is_an_error_not_a_panic() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
        b"garbage\r\n\r\n",
        b"",
    ] {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_until(&mut socket, b"\r\n\r\n").await;
            socket.write_all(reply).await.unwrap();
        });
        let sent = conn(addr).await.send(request("GET", &[], vec![])).await;
        server.await.unwrap();
        match sent {
            Err(e) => assert!(matches!(e, H1Error::Decode(_)), "{e}"),
            Ok(response) => {
                let mut body = response.into_body();
                let mut failed = false;
                while let Some(frame) = body.frame().await {
                    failed |= frame.is_err();
                }
                assert!(failed, "a short body ends in an error");
                assert!(body.into_reusable().is_none());
            }
        }
    }
}

/// A client's body as the sidecar gets it: `hyper`'s, from a request `head` a loopback client
/// wrote. The client's socket comes back with it, to send more of the body or break it off.
async fn client_body(head: &'static [u8]) -> (hyper::body::Incoming, TcpStream) {
    let (listener, addr) = listener().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let tx = std::sync::Mutex::new(Some(tx));
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(req.into_body());
            }
            // Never answers: the test reads the body it was handed.
            std::future::pending::<Result<Response<String>, std::convert::Infallible>>()
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(socket), service)
            .await;
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(head).await.unwrap();
    (rx.await.unwrap(), client)
}

#[tokio::test]
async fn an_upload_that_breaks_off_after_the_answer_began_is_the_bodys_error() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_until(&mut socket, b"\r\n\r\n").await;
        // Half the answer: the rest would come once the upload is read.
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = socket.read_to_end(&mut sink).await;
    });
    let (incoming, mut client) =
        client_body(b"POST / HTTP/1.1\r\nhost: up\r\ncontent-length: 1000000\r\n\r\nabc").await;
    let (body, _) = RequestBody::new(incoming.into(), tokio::time::Instant::now(), None);
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = "/".parse().unwrap();
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, "1000000".parse().unwrap());
    let response = conn(addr).await.send(req).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "01234");
    // The client goes away in the middle of its upload; nobody reads the answer meanwhile.
    client.shutdown().await.unwrap();
    drop(client);
    let next = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the broken upload ends the answer's wait");
    let err = next.unwrap().unwrap_err();
    assert!(matches!(err, H1Error::RequestBody(_)), "{err:?}");
    assert!(body.into_reusable().is_none());
    server.abort();
}

#[tokio::test]
async fn a_response_has_its_own_headers_only_not_the_requests() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_until(&mut socket, b"\r\n\r\n").await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nx-answer: 1\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    });
    let asked = request("GET", &[("host", "up"), ("x-asked", "1")], vec![]);
    let response = conn(addr).await.send(asked).await.unwrap();
    let names: Vec<&str> = response.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-answer", "content-length"]);
}
