//! The data plane: listeners, the request pipeline, body streaming, proxy-made errors.
//!
//! # The request pipeline
//!
//! Each request on a listener goes through these steps, in this order. All it carries from step
//! to step is one owned context (`RequestCtx`, in `ctx.rs`), with one sub-state per feature: each
//! step below is one method of the context that hands every feature its hook (see
//! `ARCHITECTURE.md`). Steps 2–13 are `forward.rs`, the answer `head.rs`, step 15 `body.rs`.
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
//!    `tasks.id_header`, or a task of its own; it starts only with the agent's verdict). Then
//!    **calls between agents** ([`cascade`]): an inbound request too deep, in a cycle
//!    (`on_cycle: block`) or arriving with its deadline spent is answered 508 or 504 before the
//!    agent sees it, else entered in the correlation table; an egress call finds the inbound
//!    request it is made for (its deadline then bounds every attempt, step 10) and is answered
//!    504 at once if that request's time is spent. On an
//!    `llm` listener an LLM call (recognised as in step 5) carrying the task id is counted by the
//!    **loop guard** ([`tasks::Tasks::llm_call`]); under `loop_action: block` a call of a task
//!    found looping gets 429 `loop_detected` here, before a breaker or a provider is troubled.
//!    Then the route's **bulkhead** ([`bulkhead`], `max_in_flight`): a place among the route's
//!    requests in flight, held until the request is counted, or 503 `bulkhead_full` at once,
//!    without queueing.
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
//! 5. **Recognise an LLM call** ([`crate::inspect::Format::of`]): on the `llm` role, to an upstream with a
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
//!    `RequestCtx::sending`) and the upstream's `traceparent` names it; a peer call gets the
//!    milliseconds its inbound request has left, its depth + 1 and its path with this agent
//!    added (`cascade`), or 504 `deadline_exceeded` if no time is left.
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
//!     a 401 to an injected key moves the upstream to its next key; on an `agent` listener
//!     the agent's verdict header (`correctness`) is read and removed; an LLM call gets its
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
//!     finish reasons, tool-call checks and unparsed bodies, its correctness verdict (and the
//!     loop guard is told the tool calls a successful call returned); `agent_responses_total`
//!     and the
//!     safety violations (a provider's `content_filter` among them); the task's end, if the
//!     verdict (or the status) ends it; the circuit breaker is fed the
//!     attempt's outcome (a client that left gives a probe's slot back); a cached response that
//!     ended cleanly goes into the cache; the request's spans end, and go to the export queue
//!     if sampled or failed.

mod attempt;
pub(crate) mod body;
mod breaker;
pub(crate) mod bulkhead;
pub(crate) mod cache;
pub(crate) mod cascade;
pub(crate) mod connections;
pub(crate) mod correctness;
mod ctx;
pub(crate) mod error;
pub(crate) mod fallback;
mod forward;
mod head;
pub mod headers;
pub(crate) mod judge;
mod linger;
pub(crate) mod listener;
pub(crate) mod llm;
mod local;
pub mod mcp;
pub(crate) mod replay;
pub mod safety;
pub(crate) mod state;
pub(crate) mod tasks;
mod trace;

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

pub use body::{BodyError, ProxyBody};
pub use connections::fuzz_request;
pub use error::{error_response, ProxyError};
pub use forward::upstream_uri;
pub use state::{ListenerState, RouteState, Shared, Snapshot};

use crate::client_body::ClientBody;
pub use crate::upstream::{RequestBody, Upload, UploadState};
use ctx::RequestCtx;
use head::Answer;
use local::Stop;

/// Proxies one request: the pipeline above.
///
/// `in_flight` keeps the client's connection busy until the request is counted (its answer's last
/// byte out, or the client gone): it rides in the request's context.
pub async fn handle(
    req: Request<ClientBody>,
    client_ip: HeaderValue,
    listener: Arc<ListenerState>,
    in_flight: connections::InFlight,
) -> Response<ProxyBody> {
    let received = Instant::now();
    // The kill switch holds: the agent is silent. Its inbound traffic goes to the human queue
    // (counted on this listener under that upstream), or gets 503 `agent_disabled`.
    if listener.kill.as_ref().is_some_and(|k| k.is_disabled()) {
        if let Some(queue) = &listener.when_disabled {
            return Box::pin(handle(req, client_ip, queue.clone(), in_flight)).await;
        }
        let (parts, _) = req.into_parts();
        let ctx = RequestCtx::refused(listener, &parts, received, in_flight);
        return Stop::from(ProxyError::AgentDisabled).answer(ctx);
    }
    let (parts, body) = req.into_parts();
    // Counted even if the client leaves before any answer (hyper then drops this future, and
    // the context with it): as a 4xx with no cause, nginx's 499, with the time it waited.
    let mut ctx = RequestCtx::begin(listener, &parts, &client_ip, received, in_flight);
    match forward::forward(&mut ctx, parts, body, client_ip).await {
        Ok(head) => match head::answer(ctx, head) {
            Answer::Now(response) => response,
            // Boxed: only a body read whole for a safety decision waits here.
            Answer::ReadWhole(read) => Box::pin(read.answer()).await,
        },
        Err(stop) => stop.answer(ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream_url;
    use http::Uri;

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
