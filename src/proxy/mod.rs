//! The data plane: listeners, the request pipeline, body streaming, proxy-made errors.
//!
//! # The request pipeline
//!
//! Each request on a listener goes through these steps, in this order:
//!
//! 1. **Take the snapshot's listener state** (one reference count): the request finishes on the
//!    config it started with, whatever a reload does meanwhile.
//! 2. **Note the arrival time**: every latency the SLIs report starts here; with `otlp.traces`
//!    the request's trace starts here too (the client's `traceparent` continued, or a new trace;
//!    only ids and instants: see [`crate::telemetry::trace`]). Then **the kill
//!    switch** ([`safety::KillSwitch`], one atomic load): while it holds, an `agent` listener's
//!    request goes to the `kill_switch.fallback_url` (the human queue, through this same
//!    pipeline) or gets 503 `agent_disabled`, and an `llm` listener's gets 503: a silent agent is
//!    safer than a harmful one. First, so that a disabled agent costs nothing more. On an
//!    `agent` listener the request's **task** is looked up ([`tasks::Tasks`]: by
//!    `tasks.id_header`, or a task of its own; it starts only with the agent's verdict). On an
//!    `llm` listener an LLM call (recognised as in step 5) carrying the task id is counted by the
//!    **loop guard** ([`tasks::Tasks::llm_call`]); under `loop_action: block` a call of a task
//!    found looping gets 429 `loop_detected` here, before a breaker or a provider is troubled.
//! 3. **Ask the circuit breakers along the route's chain** ([`crate::upstream::UpstreamBreaker`]):
//!    an upstream whose circuit is open gets no request at all; the first that admits the
//!    request takes it. None admits and no cache: 503 `circuit_open` at once, before any work is
//!    spent. An admitted call carries its ticket to the end, where its outcome is fed back. On a
//!    route that reads bodies ahead (step 4) the breakers are asked after the read — a slow
//!    upload must not hold a probe slot, nor act on a circuit state from before it — and before
//!    it only whether every circuit is surely open. A route whose circuits are not all plainly
//!    closed reads bodies ahead for this reason alone.
//! 4. **Read the body ahead** ([`replay::read_ahead`]), only on a route that needs it: a chain
//!    of more than one upstream or a cache (within `max_replay_body`: the body is kept so that a
//!    fallback can replay it and the cache can key the request by it), or an upstream that
//!    rewrites the model (within [`crate::inspect::MAX_INSPECTED_BODY`]). A larger body streams
//!    to the first upstream that admits it and cannot fall back
//!    (`sloguard_replay_skipped_total`). Every other route streams the body as it arrives.
//!    Attempts are timed from the end of the read: the upload is the client's time.
//! 5. **Recognise an LLM call** ([`Format::of`]): on the `llm` role, to an upstream with a
//!    protocol, a `POST` to a chat-completions, responses or messages path. Decided before
//!    anything is sent, so that the call is counted (duration, finish reason) even when it fails
//!    before an answer.
//! 6. **Address the upstream**: its path prefix, then the client's path and query (origin
//!    form; the connection pool adds scheme and authority where h2 needs them). Nothing else of
//!    the client's URI is trusted.
//! 7. **Rewrite headers** ([`headers::prepare_request`]): hop-by-hop headers go, `Host` becomes
//!    the upstream's, `x-forwarded-for`/`-proto` are added. Done before sending because the
//!    upstream must never see this hop's connection headers. A copy of the client's headers is
//!    kept only while a later attempt is possible.
//! 8. **Inject the provider key** ([`crate::upstream::KeyRing::inject`]): the client's key
//!    headers go, the sidecar's key goes in. After step 7 so that nothing later re-adds a key.
//!    With `otlp.traces`, the attempt's span begins when it is sent (step 9's
//!    [`Accounting::sending`]) and the upstream's `traceparent` names it.
//! 9. **Give the attempt its body** ([`replay::Payload::body_for`]): a body read ahead is
//!    replayed from reference counts of its chunks, with this upstream's model rewrite applied;
//!    a streamed LLM request is tapped, its facts (model, stream, tools) read from reference
//!    counts of its chunks when the upload ends — the provider answers only after that, so the
//!    facts are there for step 14. On an `agent` listener the request now waits on the agent
//!    (liveness), from when its upload is the agent's turn: a slow upload is the client's time.
//! 10. **Send, bounded by `first_byte`** (and `total`; the client's upload by
//!     `limits.body_timeout`, 408 past it): the body streams from the client to the
//!     upstream as the upstream reads it — backpressure, no buffering — through a
//!     [`RequestBody`] that notes how the upload goes, so that a late head is charged to the
//!     upstream only when the upstream is the one being waited on. `connect` bounds TCP and TLS
//!     set-up inside the connection pool.
//! 11. **Fall back** ([`fallback`]): a connect error (or a connection broken before the head),
//!     no head within `first_byte`, a 5xx or a 429 — as `fallback_on` says, and only with the
//!     body kept — moves the request on to the next upstream whose circuit admits it (back to
//!     step 5), or, when none does, to the route's cache. The failed attempt is counted for its
//!     upstream at once. Before the next upstream (or the cache entry) is found, nothing is
//!     given up: with nowhere to go, the failure goes to the client as it is.
//! 12. **Classify a failure before the head** ([`ProxyError`]): connect error → 502
//!     `upstream_unavailable`, no head in time → 504 `upstream_timeout`; the attempt is counted
//!     with its outcome.
//! 13. **Read the response head**: on an `agent` listener the request waits no more and the
//!     agent's verdict on its task (`tasks.status_header`) is noted; the breaker notes a slow
//!     head and a 429's `Retry-After`;
//!     a 401 to an injected key moves the upstream to its next key; an LLM call gets its
//!     response reader (by content type); a success not streamed, on a route with a cache, is
//!     kept as it passes. Then hop-by-hop headers go and `x-sloguard-upstream` (and
//!     `x-sloguard-fallback` after a fallback) is added ([`headers::prepare_response`]).
//!     **Safety** ([`safety`], where `safety.apply_to` names the listener's role; on the `llm`
//!     role only a successful LLM call's output): the agent's own `x-safety-flag` counts (and
//!     under `block` is answered 403 `safety_blocked` at once); a text body gets its check. Under
//!     `block`, a body that is not a stream is read whole here and inspected before anything is
//!     answered (a violation: 403 `safety_blocked`); a stream is held back chunk by chunk in
//!     step 15.
//! 14. **Record the sidecar's overhead** (steps 3–9 of every attempt plus 13, less any wait for
//!     the client's body while reading it ahead): its own time, apart from the upstreams'.
//!     Recorded before a body is read whole for a safety decision: that read waits on the
//!     upstream. (Under `block`, the time a stream's text is held back is not in it either: it
//!     shows in `agent_time_to_first_byte_seconds`.)
//! 15. **Stream the body back** ([`ProxyBody`]): frame by frame as the upstream sends it (SSE
//!     events reach the client as they are produced), each data frame shown to the LLM reader
//!     on its way (output-chunk timings recorded as they happen) and to the safety check (which
//!     under `block` lets a chunk of a stream out only once its text is known clean, and ends
//!     the stream with an `event: error` at a violation); `idle` and `total` end a
//!     stalled stream; nothing is retried once a byte went out; when the last byte is out (or
//!     the client leaves) the request is counted once, under the upstream that answered:
//!     `agent_requests_total`, `agent_response_seconds`, `agent_time_to_first_byte_seconds`,
//!     `sloguard_upstream_requests_total`, and for an LLM call the GenAI duration, tokens,
//!     finish reasons, tool-call checks and unparsed bodies (and the loop guard is told the
//!     tool calls a successful call returned); `agent_responses_total` and the
//!     safety violations (a provider's `content_filter` among them); the task's end, if the
//!     verdict (or the status) ends it; the circuit breaker is fed the
//!     attempt's outcome (a client that left gives a probe's slot back); a cached response that
//!     ended cleanly goes into the cache; the request's spans end, and go to the export queue
//!     if sampled or failed.

mod attempt;
pub mod body;
pub mod cache;
pub mod connections;
pub mod error;
pub mod fallback;
mod head;
pub mod headers;
mod linger;
pub mod listener;
pub mod llm;
mod local;
pub mod replay;
pub mod safety;
pub mod state;
pub mod tasks;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::{Accounting, BodyError, BreakerTicket, ProxyBody};
pub use error::{error_response, ProxyError};
pub use state::{ListenerState, RouteState, Shared, Snapshot};
pub use upload::{RequestBody, Upload, UploadState};

use crate::config::{Role, UpstreamUrl};
use crate::inspect::{Format, MAX_INSPECTED_BODY};
use crate::upstream::Upstream;
use attempt::{exchange, internal, outgoing, Deadlines};
use cache::cache_key_hasher;
use connections::InFlight;
use fallback::{FallbackReason, X_SLOGUARD_FALLBACK};
use head::{answer, note_head, Answered};
use llm::{begin_llm_call, LlmCall};
pub(crate) use local::local_error;
use local::{circuit_open, loop_refused, serve_cached, Unanswered};
use replay::Payload;
use safety::EchoTap;

/// The request target for the upstream, in origin form: the upstream's path prefix, then the
/// client's path and query. An absolute-form client URI does not choose the upstream.
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

/// Proxies one request: the pipeline above.
///
/// `in_flight` keeps the client's connection busy until the request is counted (its answer's last
/// byte out, or the client gone): it rides in the request's accounting.
pub async fn handle(
    req: Request<Incoming>,
    client_ip: HeaderValue,
    listener: Arc<ListenerState>,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let received = Instant::now();
    // The kill switch holds: the agent is silent. Its inbound traffic goes to the human queue
    // (counted on this listener under that upstream), or gets 503 `agent_disabled`.
    if listener.kill.as_ref().is_some_and(|k| k.is_disabled()) {
        if let Some(queue) = &listener.when_disabled {
            return Box::pin(handle(req, client_ip, queue.clone(), in_flight)).await;
        }
        let account = Accounting::refused(listener.clone(), &req, received, in_flight);
        return local_error(ProxyError::AgentDisabled, Some(account), None);
    }
    let route = &*listener.route;
    // Counted even if the client leaves before any answer (hyper then drops this future): as a
    // 4xx with no cause, nginx's 499, with the time it waited.
    let account = Accounting::begin(listener.clone(), &req, &client_ip, received, in_flight);
    let mut unanswered = Unanswered(Some(account));

    let (
        http::request::Parts {
            method,
            uri,
            version,
            headers: mut client_headers,
            ..
        },
        body,
    ) = req.into_parts();
    if method == http::Method::CONNECT {
        return local_error(ProxyError::Method { method }, unanswered.0.take(), None);
    }
    let llm_role = listener.role == Role::Llm;
    let format_for = |u: &Upstream| match (&u.llm, llm_role) {
        (Some(_), true) => Format::of(&method, uri.path(), u.protocol),
        _ => None,
    };
    let primary = &route.chain[0];
    let looping = unanswered.0.as_mut();
    if let Some(kind) =
        looping.and_then(|a| begin_llm_call(a, format_for(primary), &client_headers))
    {
        return loop_refused(kind, unanswered.0.take());
    }
    let rewrite = route.rewrites_model
        && route
            .chain
            .iter()
            .any(|u| u.model.is_some() && format_for(u).is_some());
    let replays = route.replays();
    // A circuit that may give out probe slots: the body is read first (within the route's
    // replay limit), so that a slow upload does not hold a slot that others could probe with.
    let probing = route.probing() && !http_body::Body::is_end_stream(&body);
    let reads_ahead = replays || rewrite || probing;

    // An upstream whose circuit is open is skipped before any work is spent on the request. A
    // route that reads the body ahead asks its breakers after the read, so that a slow upload
    // neither holds a probe slot nor acts on a circuit state from before it; before the read it
    // only checks whether every circuit is surely open. An admission goes into the request's
    // accounting at once: whatever happens next (the client leaving included), its ticket is
    // settled.
    let mut admitted = None;
    if !reads_ahead {
        admitted = match (route.admit_from(0, received), unanswered.0.as_mut()) {
            (Some(admission), Some(a)) => Some(a.admitted(admission)),
            _ => None,
        };
        if admitted.is_none() && route.cache.is_none() {
            return circuit_open(route, unanswered.0.take());
        }
    } else if route.cache.is_none() && route.all_refuse(received) {
        return circuit_open(route, unanswered.0.take());
    }

    // `client_wait`: time spent waiting for the client's body while reading it ahead, not the
    // sidecar's own.
    let (mut payload, client_wait) = if reads_ahead {
        let limit = match (replays || probing, rewrite) {
            (true, true) => route.max_replay_body.max(MAX_INSPECTED_BODY),
            (true, false) => route.max_replay_body,
            _ => MAX_INSPECTED_BODY,
        };
        let mut read = if http_body::Body::is_end_stream(&body) {
            (Payload::empty(), Duration::ZERO)
        } else {
            let timeouts = primary.timeouts;
            let start = Instant::now();
            let deadline = received + timeouts.total.0.min(listener.body_timeout);
            // Boxed: its state would otherwise make every request's future larger, on every
            // route.
            let reservation = listener.budget.reserve(crate::budget::Held::Replay);
            let ahead = Box::pin(replay::read_ahead(
                body,
                limit,
                timeouts.idle.0,
                deadline,
                reservation,
            ));
            match ahead.await {
                Ok((payload, last)) => (payload, last.saturating_duration_since(start)),
                Err(err) => return local_error(err, unanswered.0.take(), None),
            }
        };
        if let Some(cache) = &route.cache {
            read.0
                .set_key(cache_key_hasher(cache.seed, &method, &uri, &client_headers));
        }
        read
    } else {
        (Payload::streamed(body), Duration::ZERO)
    };
    let replayable = payload.replayable(route.max_replay_body);
    if replays && !replayable {
        listener.replay_skipped.increment(1);
    }
    // Attempts are timed from here: the upload read ahead is the client's time, not an
    // upstream's (`total` starts when the upstream is first asked).
    let read_done = if reads_ahead {
        Instant::now()
    } else {
        received
    };
    if reads_ahead {
        admitted = match (route.admit_from(0, read_done), unanswered.0.as_mut()) {
            (Some(admission), Some(a)) => Some(a.admitted(admission)),
            _ => None,
        };
    }

    let mut first_reason = None;
    let mut hop = match admitted {
        Some(hop) => hop,
        // Every upstream is open: the cache is the last resort.
        None => {
            let hit = route
                .cache
                .as_ref()
                .zip(payload.cache_key())
                .and_then(|(c, key)| c.get(key, read_done));
            return match hit {
                Some(hit) => {
                    route.count_moves(0, FallbackReason::CircuitOpen, route.chain.len());
                    serve_cached(hit, unanswered.0.take(), FallbackReason::CircuitOpen)
                }
                None => circuit_open(route, unanswered.0.take()),
            };
        }
    };
    if hop > 0 {
        route.count_moves(0, FallbackReason::CircuitOpen, hop);
        first_reason = Some(FallbackReason::CircuitOpen);
    }

    // The sidecar's own time before each attempt was sent.
    let mut own = read_done
        .saturating_duration_since(received)
        .saturating_sub(client_wait);
    let mut attempt_start = read_done;
    // Which upstream the request's LLM call (if any) is with.
    let mut llm_hop = 0;
    loop {
        let upstream = &route.chain[hop];
        let timeouts = upstream.timeouts;
        let format = format_for(upstream);
        let Some(account) = unanswered.0.as_mut() else {
            // Taken only by a return.
            return local_error(internal(upstream, "request accounting lost"), None, None);
        };
        // A new LLM call for another upstream (the one before it was counted when it failed,
        // or never made when that upstream was skipped). Timed from the request's arrival: the
        // agent waited for the failed attempts too.
        if hop != llm_hop || account.llm.is_none() {
            llm_hop = hop;
            account.llm = match (format, &upstream.llm) {
                (Some(format), Some(metrics)) => {
                    Some(Box::new(LlmCall::new(metrics.clone(), format, received)))
                }
                _ => None,
            };
        }
        let target = match upstream_uri(&upstream.url, &uri) {
            Ok(target) => target,
            Err(e) => {
                let err = internal(upstream, &e.to_string());
                return local_error(err, unanswered.0.take(), first_reason);
            }
        };
        // The client's headers are kept only while another attempt may need them.
        let mut headers = if replayable && hop + 1 < route.chain.len() {
            client_headers.clone()
        } else {
            std::mem::take(&mut client_headers)
        };
        headers::prepare_request(&mut headers, &upstream.host_header, &client_ip);
        if let Some(ls) = &listener.safety {
            ls.ask_for_readable(&mut headers, format.is_some());
        }
        let key_used = upstream.keys.as_ref().map(|k| k.inject(&mut headers));
        let model = upstream.model.as_deref();
        let Some((mut body, upload)) = payload.body_for(&mut headers, format, model, attempt_start)
        else {
            // A streamed body goes to one attempt only: `replayable` stops a second.
            let err = internal(upstream, "request body already sent");
            return local_error(err, unanswered.0.take(), first_reason);
        };
        body.reserve_from(&listener.budget);
        if let Some(ls) = listener.safety.as_ref().filter(|ls| ls.kills()) {
            body.tap_echoes(EchoTap::new(ls, &headers));
        }
        if let Some(a) = unanswered.0.as_mut() {
            a.sending(&upload, &mut headers, attempt_start);
        }
        // The request is built straight into the pool's future: a named local would keep its
        // own slot in this function's future, next to the copy the pool holds.
        let send = upstream
            .pool
            .send(outgoing(body, &method, target, version, headers));
        tokio::pin!(send);
        let sent = Instant::now();
        own += sent.saturating_duration_since(attempt_start);
        let total_deadline = attempt_start + timeouts.total.0;
        let deadlines = Deadlines {
            total: total_deadline,
            body: received + listener.body_timeout,
        };
        let result = exchange(upstream, send, upload.as_deref(), sent, deadlines).await;
        let head_at = Instant::now();

        // Fall back: the failure is one `fallback_on` names, the body can be sent again, and
        // there is somewhere to send it.
        let reason = match &result {
            Ok((response, _)) => FallbackReason::of_status(response.status()),
            Err(err) => FallbackReason::of_error(err),
        }
        .filter(|r| replayable && route.fallback_on.contains(*r));
        if let Some(reason) = reason {
            let following = route.admit_from(hop + 1, head_at);
            let cached = match following {
                Some(_) => None,
                None => route
                    .cache
                    .as_ref()
                    .zip(payload.cache_key())
                    .and_then(|(c, key)| c.get(key, head_at)),
            };
            if following.is_some() || cached.is_some() {
                let Some(a) = unanswered.0.as_mut() else {
                    return local_error(internal(upstream, "request accounting lost"), None, None);
                };
                a.attempt_failed(&result, upstream, head_at);
                first_reason.get_or_insert(reason);
                match following {
                    Some(following) => {
                        route.count_moves(hop, reason, following.hop);
                        hop = a.admitted(following);
                        attempt_start = Instant::now();
                        continue;
                    }
                    None => {
                        route.count_moves(hop, reason, route.chain.len());
                        if let Some(hit) = cached {
                            return serve_cached(hit, unanswered.0.take(), reason);
                        }
                    }
                }
            }
        }

        let (response, lease) = match result {
            Ok(exchange) => exchange,
            Err(err) => return local_error(err, unanswered.0.take(), first_reason),
        };
        let (mut parts, body) = response.into_parts();
        let status = parts.status;
        if let (http::StatusCode::UNAUTHORIZED, Some(keys), Some(used)) =
            (status, &upstream.keys, key_used)
        {
            keys.rejected(used, &upstream.log_limit);
        }
        headers::prepare_response(&mut parts.headers, &upstream.header_value);
        let mut account = unanswered.0.take();
        if let Some(a) = account.as_mut() {
            // The upstream's time to answer: from the end of the upload, not the client's time
            // to send it.
            let from = upload
                .as_deref()
                .map_or(sent, |u| u.last_chunk_at().max(sent));
            let cache_key = payload.cache_key().filter(|_| route.cache.is_some());
            note_head(a, upstream, &parts, from, head_at, cache_key);
        }
        if let Some(reason) = first_reason {
            parts
                .headers
                .insert(X_SLOGUARD_FALLBACK.clone(), reason.header_value());
        }
        let head = Answered {
            parts,
            body,
            lease,
            at: head_at,
        };
        let own = own.saturating_sub(client_wait);
        return answer(
            &listener,
            upstream,
            account,
            head,
            own,
            total_deadline,
            first_reason,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream_url;

    #[test]
    fn uri_keeps_path_and_query_and_adds_prefix() {
        let plain = parse_upstream_url("http://127.0.0.1:8000").unwrap();
        let uri: Uri = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri).unwrap(),
            "/v1/chat/completions?x=1"
        );
        let prefixed = parse_upstream_url("https://example.com/openai/").unwrap();
        assert_eq!(
            upstream_uri(&prefixed, &uri).unwrap(),
            "/openai/v1/chat/completions?x=1"
        );
        let star: Uri = "*".parse().unwrap();
        assert_eq!(upstream_uri(&prefixed, &star).unwrap(), "*");
        // An absolute-form request URI (proxy style, or h2) does not choose the upstream.
        let absolute: Uri = "http://evil.example/x".parse().unwrap();
        assert_eq!(upstream_uri(&plain, &absolute).unwrap(), "/x");
    }
}
