//! Listeners: accept connections, serve HTTP/1.1 and h2c on them (within the listener's
//! [`Connections`] limits), and drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::Connections;
use super::state::Snapshot;

/// Serves one listener until `shutdown` turns true, then stops accepting and lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    tcp: TcpListener,
    index: usize,
    state: Arc<ArcSwap<Snapshot>>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
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
        // Built once per connection, cloned (a reference count) per request.
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let state = state.clone();
        connections.serve(stream, peer, move |req| {
            let listener = state.load().listeners[index].clone();
            super::handle(req, client_ip.clone(), listener)
        });
    }
    drop(tcp);
    tracing::info!(listener = %name, grace = ?grace, "draining in-flight requests");
    connections.drain(grace).await;
}

/// Resolves once `flag` is true (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
