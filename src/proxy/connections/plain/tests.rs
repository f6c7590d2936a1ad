//! The plain HTTP/1.1 framing on real loopback connections: pipelining, streamed bodies, bodies
//! left unread, chunked answers, and the hand-over to hyper in the middle of a connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::config::Limits;
use crate::proxy::connections::Connections;
use crate::telemetry::Telemetry;

/// Serves `handler` on a loopback port with the plain framing; the port stays open for the test.
async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<ClientBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let tcp = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = tcp.local_addr().unwrap();
    // The handlers here take no in-flight guard, so the connection's watch would close a
    // connection `header_timeout` after it came: far past every wait of these tests, so that
    // only the framing can end one.
    let limits = Limits {
        header_timeout: crate::config::ConfigDuration(Duration::from_secs(600)),
        ..Limits::default()
    };
    let set = Connections::new("p", &limits, "a", &Telemetry::new(), true);
    let (stop, stopped) = watch::channel(false);
    // Never told to stop: the port lives as long as the test's runtime.
    std::mem::forget(stop);
    tokio::spawn(set.accept(tcp, stopped, move |_, _| Plain(handler.clone())));
    addr
}

/// Answers with the method, the path and the body it read.
async fn echo(req: Request<ClientBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let line = format!("{} {} ", req.method(), req.uri());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let text = [line.as_bytes(), &body].concat();
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Reads one answer with a `Content-Length` body: its head and its body.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end + 4].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole answer; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes the connection: what came meanwhile.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed within 10 s")
        .unwrap();
    rest
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let addr = serve(echo).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nPOST /two HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc\
          GET /three HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for expected in ["GET /one ", "POST /two abc", "GET /three "] {
        let (head, body) = read_answer(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_streamed_and_the_connection_goes_on() {
    let addr = serve(echo).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = vec![b'x'; 300_000];
    s.write_all(
        format!(
            "POST /up HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The body in pieces, after the head has surely been read on its own.
    for piece in body.chunks(64 * 1024) {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
    }
    s.write_all(b"GET /after HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let (_, answer) = read_answer(&mut s, &mut buf).await;
    assert_eq!(answer.len(), "POST /up ".len() + body.len());
    assert!(answer.starts_with(b"POST /up xxx"));
    let (_, answer) = read_answer(&mut s, &mut buf).await;
    assert_eq!(answer, b"GET /after ");
}

#[tokio::test]
async fn a_body_left_unread_closes_the_connection_after_its_answer() {
    let addr = serve(|_req: Request<ClientBody>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"early"))))
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\ncontent-length: 1000000\r\n\r\nstart of it")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_answer(&mut s, &mut buf).await;
    assert_eq!(body, b"early");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    // The rest of that body cannot be told from a next request: no other answer, the end.
    s.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
    let rest = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn connection_close_is_answered_and_honoured() {
    let addr = serve(echo).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /bye HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_answer(&mut s, &mut buf).await;
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(read_to_close(&mut s).await.is_empty());
}

/// A body that sends what its test gives it, of no known length.
struct Fed(mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// Serves one request, answered with a [`Fed`] body: the port, and what feeds that body.
async fn serve_fed() -> (SocketAddr, mpsc::Sender<Bytes>) {
    let (feed, fed) = mpsc::channel::<Bytes>(4);
    let fed = Arc::new(std::sync::Mutex::new(Some(fed)));
    let addr = serve(move |_req: Request<ClientBody>| {
        let fed = fed.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(Response::new(Fed(fed))) }
    })
    .await;
    (addr, feed)
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_and_its_head_goes_before_its_first_chunk() {
    let (addr, feed) = serve_fed().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\n\r\n").await.unwrap();
    // The head comes while the body has nothing yet.
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the head before any chunk")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8(got.clone()).unwrap();
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    feed.send(Bytes::from_static(b"hello ")).await.unwrap();
    feed.send(Bytes::new()).await.unwrap();
    feed.send(Bytes::from_static(b"world, this is sixteen+"))
        .await
        .unwrap();
    drop(feed);
    let mut rest = Vec::new();
    while !rest.ends_with(b"0\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the chunks")
            .unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    // An empty chunk of the body is not sent: it would end the body.
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "6\r\nhello \r\n17\r\nworld, this is sixteen+\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn requests_out_of_the_ordinary_go_to_hyper_for_the_rest_of_the_connection() {
    let addr = serve(echo).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /plain HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"GET /plain ");
    // `Expect: 100-continue`: hyper says continue, reads the body, answers.
    s.write_all(b"POST /expect HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{got:?}");
    buf.extend_from_slice(&got["HTTP/1.1 100 Continue\r\n\r\n".len()..]);
    s.write_all(b"ok").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"POST /expect ok");
    // A chunked upload and then a plain request, both hyper's now.
    s.write_all(
        b"POST /chunked HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"POST /chunked abc");
    s.write_all(b"GET /last HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"GET /last ");
}

#[tokio::test]
async fn an_h2c_connection_is_hyper_s() {
    let addr = serve(echo).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://a/h2")
        .body(Full::new(Bytes::from_static(b"body")))
        .unwrap();
    let answer = send.send_request(req).await.unwrap();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST http://a/h2 body");
}

/// Says when it is dropped.
struct Tell(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Tell {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_client_that_leaves_has_its_request_dropped() {
    let (tx, dropped) = tokio::sync::oneshot::channel();
    let tell = Arc::new(std::sync::Mutex::new(Some(Tell(Some(tx)))));
    let addr = serve(move |_req: Request<ClientBody>| {
        let tell = tell.lock().unwrap().take();
        // The request's future holds it and never answers: it goes only when the future does.
        async move {
            let _tell = tell;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /forever HTTP/1.1\r\n\r\n").await.unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the request's future dropped once its client left")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_past_a_streamed_body_and_while_its_answer_waits_stay_in_order() {
    // The body's last read takes the start of the next request too; the rest of that request
    // comes while the body's answer waits for the test's word. What the body read past its end
    // must come first, what the connection read while waiting after it.
    let (read_most, mut most_read) = mpsc::channel::<()>(1);
    let (body_done, mut done) = mpsc::channel::<()>(1);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = Arc::new(std::sync::Mutex::new(Some(wait)));
    let addr = serve(move |req: Request<ClientBody>| {
        let wait = wait.lock().unwrap().take();
        let (read_most, body_done) = (read_most.clone(), body_done.clone());
        async move {
            let path = req.uri().path().to_owned();
            let mut body = req.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                len += frame.unwrap().into_data().unwrap().len();
                if len == 99_990 {
                    read_most.send(()).await.unwrap();
                }
            }
            drop(body);
            if let Some(wait) = wait {
                body_done.send(()).await.unwrap();
                let _ = wait.await;
            }
            let text = format!("{path} {len}");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        }
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 99_990]).await.unwrap();
    most_read.recv().await.unwrap();
    // The last 10 bytes of the body and the start of the next request, in one write.
    s.write_all(b"0123456789GET /ne").await.unwrap();
    done.recv().await.unwrap();
    s.write_all(b"xt HTTP/1.1\r\n\r\n").await.unwrap();
    // Time for the connection to read that while the answer waits (the answers are right
    // either way; only in this order could the bytes be lost).
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    go.send(()).unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"/up 100000");
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"/next 0");
}

#[tokio::test]
async fn pipelined_requests_sent_before_the_client_closes_its_side_are_answered() {
    // Each answer waits a little (the connection watches the client meanwhile, and sees its
    // end): the requests it sent before that end are still answered.
    let addr = serve(|req: Request<ClientBody>| async move {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        echo(req).await
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"GET /one ");
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"GET /two ");
    assert!(read_to_close(&mut s).await.is_empty());
}

#[tokio::test]
async fn a_client_that_leaves_during_a_paused_answer_has_its_body_dropped() {
    let (addr, feed) = serve_fed().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\n\r\n").await.unwrap();
    feed.send(Bytes::from_static(b"first")).await.unwrap();
    let mut chunk = [0u8; 1024];
    let n = s.read(&mut chunk).await.unwrap();
    assert!(n > 0);
    drop(s);
    // The answer's body goes with the connection, though it never ends on its own.
    tokio::time::timeout(Duration::from_secs(10), feed.closed())
        .await
        .expect("the answer's body dropped once its client left");
}

#[tokio::test]
async fn a_body_still_held_after_its_answer_hands_the_socket_to_the_lingering_close() {
    // The handler gives the body to a task that keeps it (as the upstream client's upload task
    // does after an early answer) and answers at once.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let pair = Arc::new(std::sync::Mutex::new(Some((released, dropped_tx))));
    let addr = serve(move |req: Request<ClientBody>| {
        let pair = pair.lock().unwrap().take();
        async move {
            let body = req.into_body();
            tokio::spawn(async move {
                if let Some((released, dropped)) = pair {
                    let _ = released.await;
                    drop(body);
                    let _ = dropped.send(());
                }
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"early"))))
        }
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\ncontent-length: 1000000\r\n\r\nstart")
        .await
        .unwrap();
    // More of the upload, that nobody reads; then the body goes, with the answer still unread
    // here. Dropped with unread bytes, the socket would send a reset, and a reset destroys the
    // answer on its way: it must linger (read the rest away, then close cleanly).
    s.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    release.send(()).unwrap();
    dropped.await.unwrap();
    // A client still uploading (as many do before they read) is not cut off: what it sends is
    // read away.
    for _ in 0..4 {
        s.write_all(&[b'y'; 64 * 1024])
            .await
            .expect("the upload goes on until the client is done");
    }
    let mut buf = Vec::new();
    assert_eq!(read_answer(&mut s, &mut buf).await.1, b"early");
    s.shutdown().await.unwrap();
    let rest = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// Answers with the request's header lines, and with headers of its own.
async fn headers_seen(req: Request<ClientBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut lines: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
        .collect();
    lines.sort();
    let mut response = Response::new(Full::new(Bytes::from(lines.join(";"))));
    for (name, value) in [("x-answer", "only-the-answer"), ("host", "answer-host")] {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    Ok(response)
}

#[tokio::test]
async fn a_request_sees_its_own_headers_only_not_the_last_answers() {
    let addr = serve(headers_seen).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let asked = [
        (
            "GET /one HTTP/1.1\r\nhost: a\r\nx-one: 1\r\n\r\n",
            "host=a;x-one=1",
        ),
        ("GET /two HTTP/1.1\r\nx-two: 2\r\n\r\n", "x-two=2"),
        ("GET /three HTTP/1.1\r\nhost: c\r\n\r\n", "host=c"),
    ];
    for (request, seen) in asked {
        s.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_answer(&mut s, &mut buf).await;
        assert!(head.contains("\r\nx-answer: only-the-answer\r\n"), "{head}");
        assert_eq!(String::from_utf8(body).unwrap(), seen, "{request:?}");
    }
}

/// Answers with how its body came: whole with the head, or streamed after it.
async fn body_kind(req: Request<ClientBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let kind = match req.body() {
        ClientBody::Whole(_) => "whole",
        ClientBody::Stream(_) => "streamed",
        ClientBody::Hyper(_) => "hyper",
    };
    let _ = req.into_body().collect().await.unwrap();
    Ok(Response::new(Full::new(Bytes::from(kind))))
}

#[tokio::test]
async fn bodies_that_come_with_their_heads_are_given_whole_request_after_request() {
    let addr = serve(body_kind).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // Each request in one write, after the last answer: the read buffer's room is taken back
    // for it, not only what the last request left.
    let body = vec![b'x'; 5000];
    for i in 0..6 {
        let head = format!(
            "POST /{i} HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(&[head.as_bytes(), &body].concat())
            .await
            .unwrap();
        let (_, kind) = read_answer(&mut s, &mut buf).await;
        assert_eq!(String::from_utf8(kind).unwrap(), "whole", "request {i}");
    }
}
