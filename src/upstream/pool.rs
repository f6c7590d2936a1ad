//! The connection pool of one upstream: sloguard's own HTTP/1.1 connections ([`super::h1`]), and
//! hyper's connection-level h2 client.
//!
//! Why not hyper-util's legacy `Client`: measured here with callgrind it cost about 8,500
//! instructions per proxied request (a fifth of the sidecar's user-space work): a keyed,
//! SipHash-ed pool map, boxed futures moved around a dozen times, and retry machinery sloguard
//! does not want (the fallback chain decides what is retried). One upstream needs one list:
//!
//! - HTTP/1.1: idle connections in a FIFO (the longest idle first). Under load every connection
//!   the last burst needed is kept in use, so the next burst finds them open, not connecting
//!   anew (a LIFO let the deepest pass their idle limit between bursts, and each burst paid for
//!   new connections); under light load they pass their limit and go all the same. A connection
//!   leaves the list for one exchange and comes back when its response body has ended cleanly
//!   ([`Lease::release`]);
//!   a body cut short closes it. An idle connection the upstream closed meanwhile is found
//!   before a request is written to it (its socket turned readable) and dropped.
//! - h2 (when TLS ALPN picks it): up to `h2.connections` shared multiplexed connections, taken
//!   in turn. Each is PINGed (`h2.keepalive_interval`, also while idle) and closed when a PING
//!   goes unanswered (`h2.keepalive_timeout`): a connection a middlebox silently dropped is found
//!   within seconds, not at the next request's timeout. One that is closed, or that will take no
//!   new stream (the upstream sent GOAWAY), is left for a new one; a request no stream was opened
//!   for goes on the next. After a response head that never came (`first_byte`), the shared
//!   connections are given up for new requests (their streams in flight go on): a connection
//!   that stopped answering must not take every request with it.
//!
//! A request that a shared h2 connection could not take (GOAWAY) is moved to the next one, or to
//! a new connection: it was never written, so this is no retry.
//! No lock is held across an `.await`.
//!
//! An idle HTTP/1.1 connection is let go before the upstream closes it: a request written just as
//! the upstream closes its end fails ("connection closed before message completed"), and having
//! been written it cannot be sent again. So a connection is reused only within the pool's idle
//! limit (`pool.idle_timeout`; by default 1 s on loopback, below every common server's), and
//! within what the upstream's `Keep-Alive: timeout=N` says it keeps one, less a margin for the
//! time the response took to come back.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Uri;
use http::{header, Request, Response, Version};
use hyper::body::Incoming;

use super::h1::Conn;
use super::response::{ExchangeError, UpstreamBody};
use super::RequestBody;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::either::Either;
use tower_service::Service;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, TLS handshake failed, or `connect` ran out.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection broke, or the upstream answered something that is not HTTP.
    #[error("exchange: {0}")]
    Exchange(#[source] ExchangeError),
}

#[derive(Debug)]
struct IdleConnection {
    conn: Conn,
    /// Not reused from then on.
    expires: Instant,
}

/// How the shared h2 connections of an upstream are kept.
#[derive(Debug, Clone, Copy)]
pub struct H2Settings {
    pub connections: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

#[derive(Debug)]
pub struct ConnectionPool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    target: Uri,
    /// One list per runtime that serves connections (see `crate::runtime`): a request takes
    /// and gives back connections whose tasks run on its own thread.
    idle: Box<[Mutex<VecDeque<IdleConnection>>]>,
    /// The shared h2 connections, each with a number of its own.
    h2: Mutex<Vec<(u64, http2::SendRequest<RequestBody>)>>,
    h2_next_id: std::sync::atomic::AtomicU64,
    h2_settings: H2Settings,
    /// Which shared h2 connection the next request takes.
    h2_turn: std::sync::atomic::AtomicUsize,
    /// Of each idle list.
    max_idle: usize,
    idle_timeout: Duration,
    /// Bounds TCP and TLS set-up together (the TCP connector's own timeout covers TCP only).
    connect_timeout: Duration,
    /// Set once the upstream is known to speak HTTP/1.1 (plain http, or ALPN chose it). Until
    /// then a TLS upstream may offer h2, and connections are made one at a time through
    /// `h2_gate`, so that a burst of first requests shares one h2 connection instead of each
    /// opening its own.
    speaks_h1: AtomicBool,
    h2_gate: tokio::sync::Mutex<()>,
}

/// Where the HTTP/1.1 connection a response body is read on goes back to once the body ends.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<ConnectionPool>,
    /// How long it may wait idle for the next request.
    idle_limit: Duration,
}

impl Lease {
    /// The response body has ended at `now`: its connection, when the exchange ended cleanly,
    /// can serve the next request. The body is left ended.
    pub fn release(self, body: &mut UpstreamBody, now: Instant) {
        if let Some(conn) = body.take_reusable() {
            self.pool.put(conn, self.idle_limit, now);
        }
    }
}

/// How long an idle connection may be kept, by the response head that came on it: the pool's
/// limit, or less when the upstream says it keeps idle connections a shorter time
/// (`Keep-Alive: timeout=N`, as Node.js and Apache send): `N` less half of it, at most a second,
/// for the time since the upstream started counting (the answer's way back, the client reading
/// it). `timeout=0`: not kept.
fn idle_limit(pool_limit: Duration, headers: &http::HeaderMap) -> Duration {
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    // One pass of cheap name comparisons, not a hashed lookup: most responses carry none, and
    // this runs on every one.
    let said = headers
        .iter()
        .find_map(|(name, value)| (*name == KEEP_ALIVE).then_some(value))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|param| {
                let (key, secs) = param.split_once('=')?;
                let key = key.trim();
                if !key.eq_ignore_ascii_case("timeout") {
                    return None;
                }
                secs.trim().trim_matches('"').parse::<u64>().ok()
            })
        });
    match said {
        Some(secs) => {
            let kept = Duration::from_secs(secs.min(86_400));
            pool_limit.min(kept - (kept / 2).min(Duration::from_secs(1)))
        }
        None => pool_limit,
    }
}

enum Fresh {
    H1(Conn),
    H2(http2::SendRequest<RequestBody>),
}

/// What [`ConnectionPool::send`] gives: the response head with the lease of its HTTP/1.1
/// connection, or why it failed.
pub type SendResult = Result<(Response<UpstreamBody>, Option<Lease>), SendError>;

impl ConnectionPool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        h2_settings: H2Settings,
    ) -> ConnectionPool {
        let plain = target.scheme() == Some(&http::uri::Scheme::HTTP);
        // One idle list per runtime, sharing the pool's bound.
        let lists = crate::runtime::count();
        ConnectionPool {
            connector,
            target,
            idle: (0..lists).map(|_| Mutex::new(VecDeque::new())).collect(),
            h2: Mutex::new(Vec::new()),
            h2_next_id: std::sync::atomic::AtomicU64::new(0),
            h2_settings,
            h2_turn: std::sync::atomic::AtomicUsize::new(0),
            max_idle: max_idle.div_ceil(lists),
            idle_timeout,
            connect_timeout,
            speaks_h1: AtomicBool::new(plain),
            h2_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` (its URI in origin form, `Host` set) at `now` (a time its caller has read; an
    /// idle connection is reused only within its limit at that time) and returns the response
    /// head, with the lease of its HTTP/1.1 connection.
    ///
    /// The connection is chosen when this is called. The common case, an idle HTTP/1.1
    /// connection, is the exchange's own future and nothing more; every other (a shared h2
    /// connection, a new connection) is boxed, so that it does not make every request's future
    /// larger and costlier to move.
    pub fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        now: Instant,
    ) -> impl Future<Output = SendResult> + Send + '_ {
        let shared = self.shared_h2();
        if shared.is_none() {
            if let Some(conn) = self.take_idle(now) {
                *req.version_mut() = Version::HTTP_11;
                return Either::Left(self.send_h1(conn, req));
            }
        }
        Either::Right(Box::pin(self.send_other(shared, req, now)))
    }

    /// Sends `req` on `shared` (or the next shared h2 connection), else on an idle HTTP/1.1
    /// connection, else on a new one.
    async fn send_other(
        self: &Arc<Self>,
        mut shared: Option<(u64, http2::SendRequest<RequestBody>)>,
        mut req: Request<RequestBody>,
        now: Instant,
    ) -> SendResult {
        // A shared connection that turns out to take no new stream (GOAWAY, closing) is left
        // for the next, or a new one: the request was never sent on it.
        while let Some((id, sender)) = shared.take() {
            *req.uri_mut() = self.absolute(req.uri());
            match send_h2(sender, req).await {
                Ok(response) => return Ok((response.map(UpstreamBody::H2), None)),
                Err(H2Failure::NotReady(unsent)) => {
                    self.forget_h2(id);
                    req = *unsent;
                    shared = self.shared_h2();
                }
                Err(H2Failure::Exchange(e)) => return Err(e),
            }
        }
        *req.version_mut() = Version::HTTP_11;
        if let Some(conn) = self.take_idle(now) {
            return self.send_h1(conn, req).await;
        }
        // Boxed: connecting is rare and its future is large (TCP, TLS).
        match Box::pin(self.connect_once()).await? {
            Fresh::H1(conn) => self.send_h1(conn, req).await,
            Fresh::H2(sender) => {
                // h2 carries scheme and authority as pseudo-headers: the URI must be absolute.
                *req.uri_mut() = self.absolute(req.uri());
                match send_h2(sender, req).await {
                    Ok(response) => Ok((response.map(UpstreamBody::H2), None)),
                    Err(H2Failure::NotReady(_)) => Err(SendError::Connect(
                        "a new h2 connection took no stream".into(),
                    )),
                    Err(H2Failure::Exchange(e)) => Err(e),
                }
            }
        }
    }

    async fn send_h1(self: &Arc<Self>, conn: Conn, req: Request<RequestBody>) -> SendResult {
        let response = conn
            .send(req)
            .await
            .map_err(|e| SendError::Exchange(e.into()))?;
        let lease = Lease {
            pool: self.clone(),
            idle_limit: idle_limit(self.idle_timeout, response.headers()),
        };
        Ok((response.map(UpstreamBody::H1), Some(lease)))
    }

    /// A shared h2 connection to send on, in turn; `None` while fewer than `h2.connections` are
    /// open (a new one is made), or none is (the upstream speaks HTTP/1.1, or none yet).
    fn shared_h2(&self) -> Option<(u64, http2::SendRequest<RequestBody>)> {
        let mut shared = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|(_, s)| !s.is_closed());
        if shared.is_empty() || shared.len() < self.h2_settings.connections {
            return None;
        }
        let turn = self.h2_turn.fetch_add(1, Ordering::Relaxed);
        let (id, sender) = &shared[turn % shared.len()];
        Some((*id, sender.clone()))
    }

    /// Leaves the shared h2 connection `id` out of the turn (it takes no new stream).
    fn forget_h2(&self, id: u64) {
        let mut shared = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|(i, _)| *i != id);
    }

    /// The response head of a request did not come in time: the shared h2 connections are given
    /// up for new requests (streams in flight on them go on).
    pub fn give_up_h2(&self) {
        self.h2.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The idle connections of the calling thread's runtime.
    fn idle_here(&self) -> std::sync::MutexGuard<'_, VecDeque<IdleConnection>> {
        let list = &self.idle[crate::runtime::current() % self.idle.len()];
        list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection still open; those closed meanwhile or past their limit go.
    fn take_idle(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.idle_here();
        while let Some(mut c) = idle.pop_front() {
            if now < c.expires && c.conn.is_open() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly, for up to `idle_limit`.
    fn put(&self, conn: Conn, idle_limit: Duration, now: Instant) {
        if idle_limit.is_zero() {
            return;
        }
        let mut idle = self.idle_here();
        // Those past their limit at the front go (their drop closes them): most share the pool's
        // limit, so the oldest expire first. One shortened by `Keep-Alive` behind a later one is
        // skipped by `take_idle` and closed by `close_expired`: no scan of the list per request.
        let expired = idle.iter().take_while(|c| now >= c.expires).count();
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.len() < self.max_idle {
            idle.push_back(IdleConnection {
                conn,
                expires: now + idle_limit,
            });
        }
    }

    /// Closes the idle connections past their limit (from the sidecar's upkeep: a pool no
    /// request touches lets its connections go too).
    pub fn close_expired(&self) {
        let now = Instant::now();
        for list in &self.idle {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| now < c.expires);
        }
    }

    /// Connects, or, while the upstream may speak h2, waits for the connection in progress and
    /// shares it when it turned out to be h2.
    async fn connect_once(&self) -> Result<Fresh, SendError> {
        if self.speaks_h1.load(Ordering::Acquire) {
            return self.connect().await;
        }
        let gate = self.h2_gate.lock().await;
        if let Some((_, sender)) = self.shared_h2() {
            return Ok(Fresh::H2(sender));
        }
        if self.speaks_h1.load(Ordering::Acquire) {
            // Learnt while waiting: HTTP/1.1 connections need no sharing, make them side by side.
            drop(gate);
            return self.connect().await;
        }
        let fresh = self.connect().await?;
        if matches!(fresh, Fresh::H1(_)) {
            self.speaks_h1.store(true, Ordering::Release);
        }
        Ok(fresh)
    }

    async fn connect(&self) -> Result<Fresh, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = tokio::time::timeout(self.connect_timeout, connector.call(self.target.clone()))
            .await
            .map_err(|_| SendError::Connect("connection and TLS handshake timed out".into()))?
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let settings = self.h2_settings;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(settings.keepalive_interval)
                .keep_alive_timeout(settings.keepalive_timeout)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            let id = self.h2_next_id.fetch_add(1, Ordering::Relaxed);
            let mut shared = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            shared.retain(|(_, s)| !s.is_closed());
            if shared.len() < settings.connections {
                shared.push((id, sender.clone()));
            }
            Ok(Fresh::H2(sender))
        } else {
            Ok(Fresh::H1(Conn::new(TokioIo::new(io))))
        }
    }

    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = self.target.clone().into_parts();
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }
}

/// Why a request did not get its answer on a shared h2 connection.
enum H2Failure {
    /// The connection takes no new stream (GOAWAY, closing): the request, never sent, goes on
    /// another.
    /// (Boxed: it is the rare case, and the request is large.)
    NotReady(Box<Request<RequestBody>>),
    Exchange(SendError),
}

async fn send_h2(
    mut sender: http2::SendRequest<RequestBody>,
    mut req: Request<RequestBody>,
) -> Result<Response<Incoming>, H2Failure> {
    if sender.ready().await.is_err() {
        return Err(H2Failure::NotReady(Box::new(req)));
    }
    // :authority comes from the URI; a Host header beside it is redundant at best.
    req.headers_mut().remove(header::HOST);
    *req.version_mut() = Version::HTTP_2;
    sender
        .send_request(req)
        .await
        .map_err(|e| H2Failure::Exchange(SendError::Exchange(e.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(keep_alive: Option<&str>) -> Duration {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = keep_alive {
            headers.insert("keep-alive", v.parse().unwrap_or_else(|_| unreachable!()));
        }
        idle_limit(Duration::from_secs(50), &headers)
    }

    #[test]
    fn the_upstreams_keep_alive_timeout_shortens_the_idle_limit() {
        let secs = Duration::from_secs;
        assert_eq!(limit(None), secs(50));
        // Node.js sends `timeout=5`; Apache `timeout=5, max=100`.
        assert_eq!(limit(Some("timeout=5")), secs(4));
        assert_eq!(limit(Some("timeout=5, max=100")), secs(4));
        assert_eq!(limit(Some("max=100, Timeout=2")), secs(1));
        assert_eq!(limit(Some("timeout=1")), Duration::from_millis(500));
        assert_eq!(limit(Some("timeout=0")), Duration::ZERO);
        // Longer than the pool keeps them: the pool's limit.
        assert_eq!(limit(Some("timeout=300")), secs(50));
        // Nothing readable: the pool's limit.
        assert_eq!(limit(Some("timeout=soon")), secs(50));
        assert_eq!(limit(Some("max=100")), secs(50));
    }
}
