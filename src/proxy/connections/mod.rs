//! Client connections of one listener (or of the admin port): how many may be open, and how long
//! each may hold the sidecar without a request, so that no client can pin its sockets, tasks and
//! buffers — nor keep the kubelet's probe out of the admin port.
//!
//! - **A deadline to the first request.** A new connection must have sent a whole request head
//!   within `header_timeout`: a socket that sends nothing, half an HTTP/2 preface, or an h2c
//!   connection that opens no stream is closed. (hyper-util's version detection alone would
//!   wait forever.)
//! - **Idle connections close.** A connection with no request in flight for `idle_timeout` is
//!   closed gracefully (HTTP/2 gets a GOAWAY); HTTP/1.1's next request head must come within it.
//! - **HTTP/2 keepalive and streams.** PINGs every `h2_keepalive_interval`; a peer that does not
//!   answer within `h2_keepalive_timeout` is gone. At most `max_concurrent_streams` streams.
//! - **A cap that new connections can pass.** At `max_connections`, a new connection takes the
//!   place of the one idle longest (a socket that never sent a request is idle since it came); a
//!   flood of idle sockets cannot keep a probe out. Only when every connection has a request in
//!   flight is the new one closed at once (`reason="refused"`). A request is in flight until its
//!   answer's last byte is out — on the admin port, whose answers are made at once, until it is
//!   made: a client slow to read one holds an idle connection, which a newcomer can displace.
//!
//! Each connection's task watches its own deadlines with one timer, re-armed only when a deadline
//! passes or the connection changes state; a request costs two atomic updates.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge, Label};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use super::linger::linger;
use crate::config::Limits;
use crate::telemetry::{
    connection_errors, label, Telemetry, CLIENT_CONNECTIONS, CLIENT_CONNECTIONS_CLOSED_TOTAL,
};
use wake::{Event, Wake};

/// Largest request head accepted; past it HTTP/1.1 clients get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a connection the sidecar closes may take to finish closing before it is dropped: an
/// HTTP/2 peer acknowledges the GOAWAY's PING within a round trip (one that never does would
/// hold it open), and nothing is in flight on an idle connection.
const LINGER: Duration = Duration::from_secs(1);

/// Why the sidecar closed a client connection (`reason` of
/// `sloguard_client_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// No whole request head within `header_timeout` of the connection's start.
    HeaderTimeout,
    /// No request in flight for `idle_timeout`.
    Idle,
    /// Closed to make room for a new connection at `max_connections`.
    Displaced,
    /// A new connection at `max_connections` with every connection busy.
    Refused,
}

impl CloseReason {
    const COUNT: usize = 4;
    const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::HeaderTimeout,
        CloseReason::Idle,
        CloseReason::Displaced,
        CloseReason::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle",
            CloseReason::Displaced => "displaced",
            CloseReason::Refused => "refused",
        }
    }
}

/// One client connection's state, shared by its task and its requests.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    /// Milliseconds after the set's epoch.
    accepted_ms: u64,
    in_flight: AtomicU32,
    /// When the last request ended (`accepted_ms` before any): idle since.
    changed_ms: AtomicU64,
    seen_request: AtomicBool,
    /// Told to close (displaced, drained, cut): `told` says which.
    close: Notify,
    told: std::sync::atomic::AtomicU8,
    epoch: Instant,
}

impl Conn {
    fn tell(&self, what: u8) {
        // Only news is signalled: the watch looks at the signal again only once `told` moved, so
        // a repeated tell must not spend the signal the next one needs.
        if self.told.fetch_max(what, Ordering::AcqRel) < what {
            self.close.notify_one();
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A request began on the connection; it is in flight until the guard goes (the proxy keeps
    /// it with the request's accounting, until its answer's last byte is out).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.seen_request.store(true, Ordering::Relaxed);
        // Only when it goes idle matters (a busy connection is never closed for idling): no
        // clock read here.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Some(self.clone()))
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Option<Arc<Conn>>);

impl InFlight {
    /// The request ends at `now`, a time its caller has read already (no clock read of its own).
    pub(crate) fn end(mut self, now: Instant) {
        if let Some(c) = self.0.take() {
            c.leave(now);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.leave(Instant::now());
        }
    }
}

impl Conn {
    /// A request in flight on the connection ended at `now`.
    fn leave(&self, now: Instant) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed_ms.store(self.now_ms(now), Ordering::Relaxed);
        }
    }
}

/// What a connection's watch decided.
enum Watch {
    /// Look again then.
    Until(Instant),
    Close(CloseReason),
}

/// What a connection is told, through its [`Conn::close`] (one signal for every reason, so
/// that its task watches one thing besides the connection at each of its wakes).
const TOLD_NOTHING: u8 = 0;
/// Make room for a new connection: close gracefully.
const TOLD_DISPLACED: u8 = 1;
/// The port drains: finish what is in flight, take no more.
const TOLD_DRAIN: u8 = 2;
/// The drain's grace is over: drop it now.
const TOLD_CUT: u8 = 3;

/// What a port's limits make of its connections.
#[derive(Debug)]
pub(crate) struct Settings {
    builder: auto::Builder<TokioExecutor>,
    max: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Settings {
    fn new(limits: &Limits) -> Settings {
        Settings {
            builder: server_builder(limits),
            max: limits.max_connections,
            header_timeout: limits.header_timeout.0,
            idle_timeout: limits.idle_timeout.0,
        }
    }
}

/// The client connections of one port.
#[derive(Debug)]
pub(crate) struct Connections {
    name: String,
    /// The limits: a reload may change them (see [`Connections::set_limits`]).
    settings: arc_swap::ArcSwap<Settings>,
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    epoch: Instant,
    emptied: Notify,
    open: Gauge,
    closed: [Counter; CloseReason::COUNT],
    errors: Counter,
    /// Connections go to the per-core runtimes in turn.
    handoff: bool,
}

impl Connections {
    /// The connections of the port `name` (a listener's name, or `admin`), with `limits`.
    /// `handoff`: served on the per-core runtimes in turn, when there are (see `crate::runtime`);
    /// else where accepted (the admin port: its probes and reloads stay on the first runtime,
    /// whatever a request on another core is doing).
    pub(crate) fn new(
        name: &str,
        limits: &Limits,
        agent: &str,
        t: &Telemetry,
        handoff: bool,
    ) -> Arc<Connections> {
        let labels = || vec![label("agent", agent), label("listener", name)];
        // Counted up and down, not set: a reload that moves the listener has two sets of its
        // connections for a while (the old one draining), under one series.
        let open = t.gauge(CLIENT_CONNECTIONS, labels());
        open.increment(0.0);
        Arc::new(Connections {
            name: name.to_owned(),
            settings: arc_swap::ArcSwap::from_pointee(Settings::new(limits)),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            emptied: Notify::new(),
            open,
            closed: CloseReason::ALL.map(|r| {
                let mut l = labels();
                l.push(Label::from_static_parts("reason", r.as_str()));
                t.counter(CLIENT_CONNECTIONS_CLOSED_TOTAL, l)
            }),
            errors: connection_errors(t, agent, name),
            handoff,
        })
    }

    /// New limits (a reload): the cap and the deadlines apply to every connection from their
    /// next check, the HTTP settings to the connections accepted from now on. No connection is
    /// closed for it (unless the cap went down and a newcomer displaces one).
    pub(crate) fn set_limits(&self, limits: &Limits) {
        self.settings.store(Arc::new(Settings::new(limits)));
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn count(&self, reason: CloseReason) {
        self.closed[reason as usize].increment(1);
    }

    /// Open connections now.
    pub(crate) fn len(&self) -> usize {
        self.live().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A connection was accepted now: its state, or `None` when it must be closed at once (the
    /// cap reached and every connection busy).
    fn admit(&self, now: Instant) -> Option<Arc<Conn>> {
        let now_ms = self.ms(now);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            accepted_ms: now_ms,
            in_flight: AtomicU32::new(0),
            changed_ms: AtomicU64::new(now_ms),
            seen_request: AtomicBool::new(false),
            close: Notify::new(),
            told: std::sync::atomic::AtomicU8::new(TOLD_NOTHING),
            epoch: self.epoch,
        });
        let max = self.settings.load().max;
        let mut live = self.live();
        if live.len() >= max {
            // The one idle longest makes room; a socket that never sent a request has been idle
            // since it came.
            let idle_since = |c: &Conn| {
                let idle = c.in_flight.load(Ordering::Acquire) == 0;
                idle.then(|| c.changed_ms.load(Ordering::Relaxed))
            };
            let stalest = live
                .values()
                .filter_map(|c| Some((idle_since(c)?, c.id)))
                .min();
            let Some((_, id)) = stalest else {
                drop(live);
                self.count(CloseReason::Refused);
                return None;
            };
            if let Some(old) = live.remove(&id) {
                self.open.decrement(1.0);
                old.tell(TOLD_DISPLACED);
            }
        }
        live.insert(conn.id, conn.clone());
        self.open.increment(1.0);
        Some(conn)
    }

    fn remove(&self, id: u64) {
        let mut live = self.live();
        if live.remove(&id).is_some() {
            self.open.decrement(1.0);
        }
        if live.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// What a connection's deadlines say now.
    fn watch(&self, c: &Conn, now: Instant) -> Watch {
        let now_ms = self.ms(now);
        let at = |ms: u64| self.epoch + Duration::from_millis(ms);
        let ms = |d: Duration| d.as_millis() as u64;
        let (header_timeout, idle_timeout) = {
            let s = self.settings.load();
            (s.header_timeout, s.idle_timeout)
        };
        if !c.seen_request.load(Ordering::Relaxed) {
            let deadline = c.accepted_ms + ms(header_timeout);
            return match now_ms >= deadline {
                true => Watch::Close(CloseReason::HeaderTimeout),
                false => Watch::Until(at(deadline)),
            };
        }
        let since = c.changed_ms.load(Ordering::Relaxed);
        if c.in_flight.load(Ordering::Acquire) > 0 {
            // Streams may take minutes: looked at again an idle timeout from now.
            return Watch::Until(now + idle_timeout);
        }
        let deadline = since + ms(idle_timeout);
        match now_ms >= deadline {
            true => Watch::Close(CloseReason::Idle),
            false => Watch::Until(at(deadline)),
        }
    }

    /// Accepts connections on `tcp` until `stop` turns true: each is admitted (or closed at once),
    /// served by the service `service_for` makes for its peer and its [`Conn`] (whose
    /// [`Conn::request`] guard each request keeps until it is done), and watched until it ends.
    pub(crate) async fn accept<H, P>(
        self: Arc<Self>,
        tcp: Arc<TcpListener>,
        mut stop: watch::Receiver<bool>,
        service_for: H,
    ) where
        H: Fn(SocketAddr, Arc<Conn>) -> P,
        P: Protocol,
    {
        loop {
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(conn) = self.admit(Instant::now()) else {
                // Every connection busy: this one closes (its socket drops) without a word.
                continue;
            };
            let _ = stream.set_nodelay(true);
            // The service is the caller's, not a wrapper of a handler: a request future made
            // inside a wrapper and moved in costs a copy of its whole state (kilobytes) per
            // request.
            let svc = service_for(peer, conn.clone());
            let set = self.clone();
            let runtime = self
                .handoff
                .then(crate::runtime::next_for_connection)
                .flatten();
            match runtime {
                None => {
                    tokio::spawn(set.serve(stream, svc, conn, peer));
                }
                // Served on another per-core runtime: its socket moves there, to be registered
                // with that runtime's I/O driver.
                Some(runtime) => match stream.into_std() {
                    Ok(stream) => {
                        runtime.spawn(async move {
                            match TcpStream::from_std(stream) {
                                Ok(stream) => set.serve(stream, svc, conn, peer).await,
                                Err(_) => set.remove(conn.id),
                            }
                        });
                    }
                    Err(_) => set.remove(conn.id),
                },
            }
        }
    }

    /// Serves one admitted connection to its end, then lets its socket linger.
    async fn serve<P: Protocol>(
        self: Arc<Self>,
        stream: TcpStream,
        protocol: P,
        conn: Arc<Conn>,
        peer: SocketAddr,
    ) {
        // The socket comes back when the connection is done with it: see `linger`.
        let (back, handback) = oneshot::channel();
        let closing = AtomicBool::new(false);
        let http = protocol.serve(stream, back, self.settings.load_full(), &closing);
        let graceful = || closing.store(true, Ordering::Relaxed);
        if self.watch_over(http, graceful, &conn, peer).await {
            if let Ok(stream) = handback.await {
                linger(stream, conn.close.notified()).await;
            }
        }
        self.remove(conn.id);
    }

    /// Drives one connection until it ends, closing it when a deadline passes, when it is
    /// displaced, or when the port drains (then dropping it if it takes too long). `true` when
    /// hyper ended it: its client may still be sending, and the socket is to linger.
    async fn watch_over<C>(
        &self,
        http: C,
        graceful: impl Fn(),
        conn: &Conn,
        peer: SocketAddr,
    ) -> bool
    where
        C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    {
        let mut http = std::pin::pin!(http);
        let mut closing = false;
        let mut check_at = Instant::now();
        let mut wake = Wake::new(conn, check_at);
        loop {
            match wake.next(http.as_mut()).await {
                Event::Ended(ended) => {
                    if let Err(e) = ended {
                        if is_protocol_error(e.as_ref()) {
                            self.errors.increment(1);
                        }
                        tracing::debug!(listener = %self.name, %peer, error = %e, "client connection ended with an error");
                    }
                    return true;
                }
                Event::Told(told) => match told {
                    TOLD_CUT => return false,
                    TOLD_DRAIN if !closing => {
                        closing = true;
                        graceful();
                        // The drain's grace decides when it is cut, not the linger.
                        check_at = Instant::now() + Duration::from_secs(86_400 * 365);
                    }
                    TOLD_DISPLACED if !closing => {
                        self.count(CloseReason::Displaced);
                        closing = true;
                        graceful();
                        check_at = Instant::now() + LINGER;
                    }
                    _ => {}
                },
                Event::Deadline => {
                    if closing {
                        // It did not finish closing in time.
                        return false;
                    }
                    match self.watch(conn, Instant::now()) {
                        Watch::Until(at) => check_at = at,
                        Watch::Close(reason) => {
                            tracing::debug!(listener = %self.name, %peer, reason = reason.as_str(), "closing a client connection");
                            self.count(reason);
                            if reason == CloseReason::HeaderTimeout {
                                // Nothing was asked: nothing to finish.
                                return false;
                            }
                            closing = true;
                            graceful();
                            check_at = Instant::now() + LINGER;
                        }
                    }
                }
            }
            wake.set_deadline(check_at);
        }
    }

    /// Stops taking requests: every connection is closed gracefully, and those still open after
    /// `grace` are cut.
    pub(crate) async fn drain(&self, grace: Duration) {
        self.tell_all(TOLD_DRAIN);
        let emptied = async {
            loop {
                let notified = self.emptied.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.is_empty() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, emptied).await.is_err() {
            tracing::warn!(listener = %self.name, "grace period over; cutting the connections still open");
        }
        self.tell_all(TOLD_CUT);
    }

    fn tell_all(&self, what: u8) {
        for conn in self.live().values() {
            conn.tell(what);
        }
    }
}

/// The HTTP server settings of a port with `limits`.
pub(crate) fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        // The watch above bounds the time to every request head (the first within
        // `header_timeout`, each next within `idle_timeout` of the last answer). hyper's own
        // head timer would arm, box and cancel a timer for every request (about 1,500
        // instructions of a proxied GET, measured with callgrind) to repeat it.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.h2_keepalive_interval.0)
        .keep_alive_timeout(limits.h2_keepalive_timeout.0);
    builder
}

/// A client that broke HTTP (malformed request, oversized head), as opposed to one that simply
/// went away. A head that never finishes is the watch's to close (`header_timeout`, `idle`).
fn is_protocol_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_too_large();
        }
        cur = err.source();
    }
    false
}

mod plain;
mod serve;
#[cfg(test)]
mod tests;
mod wake;

pub use plain::fuzz_request;
pub(crate) use plain::Plain;
pub(crate) use serve::{Hyper, Protocol};
