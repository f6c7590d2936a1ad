//! The request on its way to an upstream's answer (steps 2–13 of the pipeline in [`super`]): the
//! request filter, the plan for its body, the breakers' admission, the read ahead, and the
//! attempts along the route's chain with their fallbacks, up to the response head that goes to
//! the client. Whatever stops the request on the way is a [`Stop`] the sidecar answers itself.

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use tokio::time::Instant;

use super::attempt::{exchange, internal, outgoing, Deadlines, Exchange};
use super::breaker::Admitted;
use super::cache::cache_key_hasher;
use super::ctx::RequestCtx;
use super::fallback::{FallbackReason, X_SLOGUARD_FALLBACK};
use super::head::Answered;
use super::headers;
use super::local::Stop;
use super::replay::{self, Payload};
use super::state::{ListenerState, RouteState};
use super::ProxyError;
use crate::client_body::ClientBody;
use crate::config::{Role, UpstreamUrl};
use crate::inspect::echo::EchoTap;
use crate::inspect::{Format, MAX_INSPECTED_BODY};
use crate::upstream::{RequestBody, Upload, Upstream};

/// Takes the request from its filter to the response head the client gets (see the module's
/// documentation).
pub(super) async fn forward(
    ctx: &mut RequestCtx,
    parts: http::request::Parts,
    body: ClientBody,
    client_ip: HeaderValue,
) -> Result<Answered, Stop> {
    let listener = ctx.listener.clone();
    let client = request_filter(ctx, &listener, parts, client_ip)?;
    if !ctx.enter_bulkhead() {
        return Err(Stop::BulkheadFull);
    }
    let plan = Plan::new(&listener.route, &client, &body);
    let admitted = plan.admit_before_read(ctx, &listener.route)?;
    let (mut payload, client_wait) = match plan.reads_ahead() {
        false => (Payload::streamed(body), Duration::ZERO),
        true if http_body::Body::is_end_stream(&body) => (Payload::empty(), Duration::ZERO),
        // Boxed: its state would otherwise make every request's future larger, on every route.
        true => Box::pin(read_ahead(ctx, &listener, &plan, body)).await?,
    };
    // A session's request is with its upstream from the start: what the sidecar answers itself
    // is counted there. (Any other keeps what its admission before the read said.)
    if let Some(hop) = client.session {
        ctx.hop = hop;
    }
    if plan.mcp {
        mcp_request(ctx, &client, &mut payload)?;
    }
    let mut attempts = Attempts::new(ctx, &listener, client, &plan, payload, client_wait);
    attempts.first_hop(ctx, admitted, &plan)?;
    let route = &*listener.route;
    loop {
        let upstream = &route.chain[ctx.hop];
        let (request, sent) = match attempts.prepare(ctx, upstream) {
            Ok(prepared) => prepared,
            Err(err) => return Err(Stop::Error(err, attempts.first_reason)),
        };
        // Made where it is pinned: the send's state (a kilobyte and more) is not moved there.
        let send = std::pin::pin!(upstream.pool.send(request, sent.at));
        let upload = sent.upload.as_deref();
        let result = exchange(upstream, send, upload, sent.at, sent.deadlines).await;
        if let Some(head) = attempts.settle(ctx, result, sent)? {
            return Ok(head);
        }
    }
}

/// The client's request, as the attempts send it.
struct Client {
    method: Method,
    uri: Uri,
    version: Version,
    /// Kept whole only while a later attempt may need them.
    headers: HeaderMap,
    ip: HeaderValue,
    llm_role: bool,
    /// An MCP request of a session (`Mcp-Session-Id`): the upstream the session lives on (the
    /// first one, for a session the sidecar did not see made). The request goes there only: it
    /// never falls back.
    session: Option<usize>,
    /// A `POST` on an `mcp` listener: JSON-RPC to read.
    mcp_post: bool,
}

impl Client {
    /// The LLM operation the request is with `u`: on the `llm` role, to an upstream with a
    /// protocol, a `POST` to a chat-completions, responses or messages path.
    fn format_for(&self, u: &Upstream) -> Option<Format> {
        match (&u.llm, self.llm_role) {
            (Some(_), true) => Format::of(&self.method, self.uri.path(), u.protocol),
            _ => None,
        }
    }
}

/// What is refused before any work is spent on it: a `CONNECT`, and under the loop guard's
/// `block` a looping task's LLM call. The LLM call (to the first upstream) is counted from here,
/// so that it is counted even when it fails before an answer.
fn request_filter(
    ctx: &mut RequestCtx,
    listener: &ListenerState,
    parts: http::request::Parts,
    ip: HeaderValue,
) -> Result<Client, Stop> {
    let http::request::Parts {
        method,
        uri,
        version,
        headers,
        ..
    } = parts;
    if method == Method::CONNECT {
        return Err(ProxyError::Method { method }.into());
    }
    ctx.cascade(&headers)?;
    let llm_role = listener.role == Role::Llm;
    let mcp = listener.role == Role::Mcp;
    // A session's request goes to the upstream the session lives on, and nowhere else.
    let session = listener
        .mcp
        .as_ref()
        .and_then(|lm| lm.session_hop(&headers));
    let mcp_post = mcp && method == Method::POST;
    let client = Client {
        method,
        uri,
        version,
        headers,
        ip,
        llm_role,
        session,
        mcp_post,
    };
    let format = client.format_for(&listener.route.chain[0]);
    match ctx.llm_request(format, &client.headers) {
        Some(kind) => Err(Stop::Loop(kind)),
        None => Ok(client),
    }
}

/// An `mcp` listener's POST, read ahead: its operations begin, and under `block` a call may be
/// answered by the sidecar.
fn mcp_request(ctx: &mut RequestCtx, client: &Client, payload: &mut Payload) -> Result<(), Stop> {
    let encoded = client
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let body = match payload.whole_bytes() {
        _ if encoded => Err(crate::inspect::Unparsed::RequestContentEncoding),
        Some(bytes) => Ok(bytes),
        None => Err(crate::inspect::Unparsed::RequestTooLarge),
    };
    match ctx.mcp_request(&client.headers, body.as_deref().map_err(|e| *e)) {
        Some(refusal) => Err(Stop::Mcp(refusal)),
        None => Ok(()),
    }
}

/// Whether the body is read before the first attempt, and why.
struct Plan {
    /// A fallback or the cache needs the body kept.
    replays: bool,
    /// An upstream rewrites the model of this LLM request.
    rewrite: bool,
    /// A circuit may give out probe slots: the body is read first (within the route's replay
    /// limit), so that a slow upload does not hold a slot that others could probe with.
    probing: bool,
    /// An MCP request (a `POST` on an `mcp` listener): its JSON-RPC is read before it goes.
    mcp: bool,
    /// An MCP session's request: the upstream the session lives on, its only one.
    session: Option<usize>,
}

impl Plan {
    fn new(route: &RouteState, client: &Client, body: &ClientBody) -> Plan {
        let rewrite = route.rewrites_model
            && route
                .chain
                .iter()
                .any(|u| u.model.is_some() && client.format_for(u).is_some());
        Plan {
            replays: route.replays(),
            rewrite,
            probing: route.probing() && !http_body::Body::is_end_stream(body),
            mcp: client.mcp_post,
            session: client.session,
        }
    }

    fn reads_ahead(&self) -> bool {
        self.replays || self.rewrite || self.probing || self.mcp
    }

    /// An upstream whose circuit is open is skipped before any work is spent on the request. A
    /// route that reads the body ahead asks its breakers after the read, so that a slow upload
    /// neither holds a probe slot nor acts on a circuit state from before it; before the read it
    /// only checks whether every circuit is surely open. An admission goes into the request's
    /// context at once: whatever happens next (the client leaving included), its ticket is
    /// settled. Returns the admitting upstream's place in the chain.
    fn admit_before_read(
        &self,
        ctx: &mut RequestCtx,
        route: &RouteState,
    ) -> Result<Option<usize>, Stop> {
        let now = ctx.received;
        if self.reads_ahead() {
            let refused = match self.session {
                Some(hop) => route.refuses_at(hop, now),
                None => route.cache.is_none() && route.all_refuse(now),
            };
            return if refused {
                Err(Stop::CircuitOpen)
            } else {
                Ok(None)
            };
        }
        match route.admit(self.session, now) {
            Some(admission) => Ok(Some(ctx.admitted(admission))),
            None if route.cache.is_none() || self.session.is_some() => Err(Stop::CircuitOpen),
            None => Ok(None),
        }
    }

    /// How much of the body is read ahead at most.
    fn limit(&self, route: &RouteState) -> usize {
        match (self.replays || self.probing, self.rewrite || self.mcp) {
            (true, true) => route.max_replay_body.max(MAX_INSPECTED_BODY),
            (true, false) => route.max_replay_body,
            _ => MAX_INSPECTED_BODY,
        }
    }
}

/// The request upstream the `url` is: its path prefix, then the client's path and query (origin
/// form). An absolute-form client URI does not choose the upstream.
pub fn upstream_uri(url: &UpstreamUrl, uri: &Uri) -> Result<Uri, http::uri::InvalidUri> {
    let client_pq = uri.path_and_query();
    // `OPTIONS *` names the server, not a resource: no prefix applies.
    let pq = if url.path_prefix.is_empty() || uri.path() == "*" {
        client_pq
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    } else {
        let rest = client_pq.map_or("/", |pq| pq.as_str());
        PathAndQuery::try_from(format!("{}{}", url.path_prefix, rest))?
    };
    Ok(Uri::from(pq))
}

/// Reads the body ahead ([`replay::read_ahead`]), within the plan's limit and the first
/// upstream's `idle` and `total` (or `limits.body_timeout`): the body, and the time spent waiting
/// for the client.
async fn read_ahead(
    ctx: &RequestCtx,
    listener: &ListenerState,
    plan: &Plan,
    body: ClientBody,
) -> Result<(Payload, Duration), Stop> {
    let route = &*listener.route;
    let timeouts = route.chain[0].timeouts;
    let start = Instant::now();
    let deadline = ctx.received + timeouts.total.0.min(listener.body_timeout);
    let reservation = listener.budget.reserve(crate::budget::Held::Replay);
    let limit = plan.limit(route);
    let (payload, last) =
        replay::read_ahead(body, limit, timeouts.idle.0, deadline, reservation).await?;
    Ok((payload, last.saturating_duration_since(start)))
}

/// The attempts of one request along its route's chain.
struct Attempts<'a> {
    listener: &'a ListenerState,
    client: Client,
    payload: Payload,
    /// A failed attempt can be followed by another: the body is kept whole.
    replayable: bool,
    /// Why the request first left an upstream, for `x-sloguard-fallback`.
    first_reason: Option<FallbackReason>,
    /// The sidecar's own time before each attempt was sent, the client's upload read ahead left
    /// out.
    own: Duration,
    /// When the current attempt started being prepared.
    start: Instant,
}

/// What an attempt that went out keeps for its answer.
struct Sent {
    at: Instant,
    upload: Option<Arc<Upload>>,
    key_used: Option<usize>,
    deadlines: Deadlines,
}

impl<'a> Attempts<'a> {
    /// The attempts of a request whose body is `payload` (`client_wait`: the time spent waiting
    /// for the client's body while reading it ahead, not the sidecar's own). Attempts are timed
    /// from the end of the read: the upload is the client's time.
    fn new(
        ctx: &RequestCtx,
        listener: &'a ListenerState,
        client: Client,
        plan: &Plan,
        mut payload: Payload,
        client_wait: Duration,
    ) -> Attempts<'a> {
        let route = &*listener.route;
        if let (true, Some(cache)) = (plan.reads_ahead(), &route.cache) {
            let c = &client;
            payload.set_key(cache_key_hasher(cache.seed, &c.method, &c.uri, &c.headers));
        }
        let replayable = payload.replayable(route.max_replay_body);
        if plan.replays && !replayable {
            listener.replay_skipped.increment(1);
        }
        let (start, own) = match plan.reads_ahead() {
            true => {
                let now = Instant::now();
                let own = now.saturating_duration_since(ctx.received);
                (now, own.saturating_sub(client_wait))
            }
            // Nothing read yet: none of the sidecar's time spent.
            false => (ctx.received, Duration::ZERO),
        };
        Attempts {
            listener,
            client,
            payload,
            replayable,
            first_reason: None,
            own,
            start,
        }
    }

    /// The first upstream the request goes to: the one admitted before the read, else the first
    /// that admits it now; with every circuit open, the cache is the last resort.
    fn first_hop(
        &mut self,
        ctx: &mut RequestCtx,
        admitted: Option<usize>,
        plan: &Plan,
    ) -> Result<(), Stop> {
        let route = &*self.listener.route;
        let admitted = match plan.reads_ahead() {
            true => route
                .admit(plan.session, self.start)
                .map(|a| ctx.admitted(a)),
            false => admitted,
        };
        let Some(hop) = admitted else {
            if plan.session.is_some() {
                return Err(Stop::CircuitOpen);
            }
            let hit = self.cached(self.start);
            let to = route.chain.len();
            return Err(match hit {
                Some(hit) => {
                    route
                        .fallbacks
                        .count_moves(0, FallbackReason::CircuitOpen, to);
                    Stop::Cached(Box::new(hit), FallbackReason::CircuitOpen)
                }
                None => Stop::CircuitOpen,
            });
        };
        if hop > 0 && plan.session.is_none() {
            route
                .fallbacks
                .count_moves(0, FallbackReason::CircuitOpen, hop);
            self.first_reason = Some(FallbackReason::CircuitOpen);
        }
        Ok(())
    }

    fn cached(&self, now: Instant) -> Option<super::cache::Cached> {
        let route = &*self.listener.route;
        let key = self.payload.cache_key()?;
        route.cache.as_ref()?.get(key, now)
    }

    /// Prepares the attempt to `upstream`, the one the request is with (steps 5–9): the LLM
    /// call, the target, the headers and key, the body; returns the request to send and what the
    /// answer is judged by. An error before anything is sent goes to the client as it is.
    fn prepare(
        &mut self,
        ctx: &mut RequestCtx,
        upstream: &Upstream,
    ) -> Result<(Request<RequestBody>, Sent), ProxyError> {
        let listener = self.listener;
        let hop = ctx.hop;
        let format = self.client.format_for(upstream);
        ctx.attempt(format);
        let target = upstream_uri(&upstream.url, &self.client.uri)
            .map_err(|e| internal(upstream, &e.to_string()))?;
        let mut headers = if self.replayable && hop + 1 < listener.route.chain.len() {
            self.client.headers.clone()
        } else {
            std::mem::take(&mut self.client.headers)
        };
        headers::prepare_request(&mut headers, &upstream.host_header, &self.client.ip);
        if let Some(ls) = &listener.safety {
            ls.ask_for_readable(&mut headers, format.is_some());
        }
        let key_used = upstream.keys.as_ref().map(|k| k.inject(&mut headers));
        let model = upstream.model.as_deref();
        let Some((mut body, upload)) =
            self.payload
                .body_for(&mut headers, format, model, self.start)
        else {
            // A streamed body goes to one attempt only: `replayable` stops a second.
            return Err(internal(upstream, "request body already sent"));
        };
        body.reserve_from(&listener.budget);
        if let Some(ls) = listener.safety.as_ref().filter(|ls| ls.kills()) {
            body.tap_echoes(EchoTap::new(&ls.detectors, &headers));
        }
        ctx.sending(&mut body, &upload, &mut headers, self.start)?;
        let c = &self.client;
        let request = outgoing(body, &c.method, target, c.version, headers);
        let at = Instant::now();
        self.own += at.saturating_duration_since(self.start);
        let cascade = ctx.deadline();
        let total = self.start + upstream.timeouts.total.0;
        let sent = Sent {
            at,
            upload,
            key_used,
            deadlines: Deadlines {
                total: cascade.map_or(total, |d| d.min(total)),
                body: ctx.received + listener.body_timeout,
                cascade,
            },
        };
        Ok((request, sent))
    }

    /// The attempt's result (steps 11–13): a failure `fallback_on` names moves the request on
    /// to the next upstream whose circuit admits it, or to the route's cache (`Ok(None)`: send
    /// again); with nowhere to go, the failure goes to the client as it is; a response head is
    /// the answer.
    fn settle(
        &mut self,
        ctx: &mut RequestCtx,
        result: Result<Exchange, ProxyError>,
        sent: Sent,
    ) -> Result<Option<Answered>, Stop> {
        let head_at = Instant::now();
        let route = &*self.listener.route;
        let hop = ctx.hop;
        let reason = match &result {
            Ok((response, _)) => FallbackReason::of_status(response.status()),
            Err(err) => FallbackReason::of_error(err),
        }
        .filter(|r| self.replayable && route.fallback_on.contains(*r))
        .filter(|_| self.client.session.is_none())
        // With the request's time spent, no fallback would be answered in time.
        .filter(|_| ctx.deadline().is_none_or(|d| head_at < d));
        if let Some(reason) = reason {
            // Before the next upstream (or the cache entry) is found, nothing is given up.
            let next = match route.admit_from(hop + 1, head_at) {
                Some(following) => Some(Next::Upstream(following)),
                None => self.cached(head_at).map(Next::Cache),
            };
            if let Some(next) = next {
                ctx.attempt_failed(&result, head_at);
                self.first_reason.get_or_insert(reason);
                return self.move_on(ctx, hop, reason, next);
            }
        }
        let (response, lease) = result.map_err(|err| Stop::Error(err, self.first_reason))?;
        let (mut parts, body) = response.into_parts();
        let upstream = &route.chain[hop];
        if let (http::StatusCode::UNAUTHORIZED, Some(keys), Some(used)) =
            (parts.status, &upstream.keys, sent.key_used)
        {
            keys.rejected(used, &upstream.log_limit);
        }
        headers::prepare_response(&mut parts.headers, &upstream.header_value);
        // The upstream's time to answer: from the end of the upload, not the client's time to
        // send it.
        let from = sent
            .upload
            .as_deref()
            .map_or(sent.at, |u| u.last_chunk_at().max(sent.at));
        ctx.head(&mut parts, from, head_at, self.payload.cache_key());
        if let Some(reason) = self.first_reason {
            parts
                .headers
                .insert(X_SLOGUARD_FALLBACK.clone(), reason.header_value());
        }
        Ok(Some(Answered {
            parts,
            body,
            lease,
            at: head_at,
            own: self.own,
            total_deadline: sent.deadlines.total,
            first_reason: self.first_reason,
        }))
    }

    /// The request leaves the upstream at `hop` for `reason`: to the next that admitted it, or
    /// to the cache's entry.
    fn move_on(
        &mut self,
        ctx: &mut RequestCtx,
        hop: usize,
        reason: FallbackReason,
        next: Next,
    ) -> Result<Option<Answered>, Stop> {
        let route = &*self.listener.route;
        match next {
            Next::Upstream(following) => {
                route.fallbacks.count_moves(hop, reason, following.hop);
                ctx.admitted(following);
                self.start = Instant::now();
                Ok(None)
            }
            Next::Cache(hit) => {
                route.fallbacks.count_moves(hop, reason, route.chain.len());
                Err(Stop::Cached(Box::new(hit), reason))
            }
        }
    }
}

/// Where a request that failed at one upstream goes next.
enum Next {
    Upstream(Admitted),
    Cache(super::cache::Cached),
}
