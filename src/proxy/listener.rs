//! Listeners: accept connections (a supervised loop: a panic restarts it rather than leave the
//! port deaf), serve HTTP/1.1 and h2c on them within the listener's [`Connections`] limits, and
//! drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use metrics::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::convert::Infallible;

use super::connections::{Conn, Connections, Plain};
use super::state::ListenerState;
use crate::background::supervise;

/// Serves one listener until `shutdown` turns true, then stops accepting and lets in-flight
/// requests finish for up to `grace`. Each request takes the listener's state from `slot` as it
/// arrives and keeps it to its end: a reload stores a new state there, which the requests that
/// come after it take.
pub(crate) async fn serve(
    tcp: Arc<TcpListener>,
    slot: Arc<ArcSwap<ListenerState>>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    restarts: Counter,
) {
    let name = slot.load().name.clone();
    let accepting = {
        let connections = connections.clone();
        supervise(format!("accept {name}"), restarts, move || {
            let slot = slot.clone();
            let service_for = move |peer: SocketAddr, conn: Arc<Conn>| {
                // Built once per connection, cloned (a reference count) per request.
                let client_ip = HeaderValue::from_str(&peer.ip().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
                let slot = slot.clone();
                Plain(move |req| {
                    let listener = slot.load_full();
                    let (ip, in_flight) = (client_ip.clone(), conn.request());
                    // The request's future is made in place, when this one is first polled.
                    async move { Ok::<_, Infallible>(super::handle(req, ip, listener, in_flight).await) }
                })
            };
            connections
                .clone()
                .accept(tcp.clone(), shutdown.clone(), service_for)
        })
    };
    // Done accepting: the supervisor is gone (and with it the socket, unless a reload handed it
    // to this listener's successor).
    let _ = accepting.await;
    tracing::info!(listener = %name, grace = ?grace, "draining in-flight requests");
    connections.drain(grace).await;
}
