//! Listeners: accept connections, serve HTTP/1.1 and h2c on them, and drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::state::Snapshot;

/// Largest request head accepted; past it HTTP/1.1 clients get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The HTTP server settings shared by every listener.
pub fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        // A client that never finishes its request head must not hold a connection forever.
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// Serves one listener until `shutdown` turns true, then stops accepting and lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    tcp: TcpListener,
    index: usize,
    state: Arc<ArcSwap<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let builder = server_builder();
    let graceful = GracefulShutdown::new();
    let name = state.load().listeners[index].name.clone();
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        serve_connection(&builder, &graceful, stream, peer, index, &state, &name);
    }
    drop(tcp);
    tracing::info!(listener = %name, grace = ?grace, "draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "grace period over; cutting the connections still open");
    }
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    index: usize,
    state: &Arc<ArcSwap<Snapshot>>,
    name: &str,
) {
    // Built once per connection, cloned (a reference count) per request.
    let client_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let errors = state.load().listeners[index].connection_errors.clone();
    let state = state.clone();
    let svc = service_fn(move |req| {
        let listener = state.load().listeners[index].clone();
        let ip = client_ip.clone();
        async move { Ok::<_, Infallible>(super::handle(req, ip, listener).await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    let name = name.to_owned();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            if is_protocol_error(e.as_ref()) {
                errors.increment(1);
            }
            tracing::debug!(listener = %name, %peer, error = %e, "client connection ended with an error");
        }
    });
}

/// A client that broke HTTP (malformed request, oversized head, head never finished), as opposed
/// to one that simply went away.
fn is_protocol_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_too_large() || h.is_timeout();
        }
        cur = err.source();
    }
    false
}

/// Resolves once `flag` is true (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
