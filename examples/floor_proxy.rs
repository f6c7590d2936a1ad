//! The floor for the hot path's benchmarks: a bare hyper 1.x reverse proxy with nothing of
//! sloguard's — HTTP/1.1 in, a pooled HTTP/1.1 client out, bodies streamed both ways, no metrics,
//! no parsing. What hyper and tokio alone cost per request, so the gap to sloguard is a number.
//! `cargo run --release --example floor_proxy -- 127.0.0.1:18183 http://127.0.0.1:18180`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind: SocketAddr = args.next().unwrap_or("127.0.0.1:18183".into()).parse()?;
    let upstream: Uri = args
        .next()
        .unwrap_or("http://127.0.0.1:18180".into())
        .parse()?;
    let authority = upstream
        .authority()
        .cloned()
        .ok_or(anyhow::anyhow!("no host"))?;
    // FLOOR_RUNTIME: `current` (default: one thread, as sloguard runs on one core), `multi`
    // (tokio's work-stealing scheduler), `per-core` (a one-thread runtime on each of
    // TOKIO_WORKER_THREADS threads, each accepting on its own SO_REUSEPORT socket).
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match std::env::var("FLOOR_RUNTIME").as_deref() {
        Ok("multi") => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(bind, authority, false)),
        Ok("per-core") => {
            let threads = std::env::var("TOKIO_WORKER_THREADS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2);
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let authority = authority.clone();
                    std::thread::spawn(move || current()?.block_on(serve(bind, authority, true)))
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
            }
            Ok(())
        }
        _ => current()?.block_on(serve(bind, authority, false)),
    }
}

async fn serve(bind: SocketAddr, authority: Authority, reuse_port: bool) -> anyhow::Result<()> {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(bind)?;
    let listener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, authority) = (client.clone(), authority.clone());
        let service = service_fn(move |req| forward(client.clone(), authority.clone(), req));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new();
            let _ = conn.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The upstream's body, or none (the proxy's own 502): no allocation per request.
type Body = Either<Incoming, Empty<Bytes>>;

/// The request to the upstream (its path and query kept), the upstream's response back.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    Ok(
        match client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response.map(Either::Left),
            Err(_) => {
                let mut r = Response::new(Either::Right(Empty::new()));
                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                r
            }
        },
    )
}
