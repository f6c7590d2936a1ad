//! Once the response head is in: what it tells the request's accounting, and how the response
//! goes to the client (as it streams, read whole for a safety decision first, or replaced).

use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{internal, retry_after};
use super::cache::{CacheFill, CacheKey};
use super::fallback::FallbackReason;
use super::safety::{inspect_head, read_whole, Inspect, Whole};
use super::{local_error, Accounting, ListenerState, ProxyBody, ProxyError};
use crate::sli::{Cause, StatusClass, UpstreamOutcome};
use crate::upstream::{Lease, Upstream};

/// The response head from `upstream` arrived at `head_at` (for a request whose upload ended
/// `from`): what it tells the request's accounting — status and cause, the agent's verdict on
/// its task (and that the agent answered), the LLM call's reader, the breaker (a slow head, a
/// 429's Retry-After; a probe is judged now), and the cache fill.
pub(super) fn note_head(
    a: &mut Accounting,
    upstream: &Upstream,
    parts: &http::response::Parts,
    from: Instant,
    head_at: Instant,
    cache_key: Option<CacheKey>,
) {
    let status = parts.status;
    let listener = a.listener.clone();
    a.status = StatusClass::of(status);
    a.cause = Cause::of_response(listener.role, status);
    if let (Some(tasks), Some(task)) = (&listener.tasks, a.task) {
        a.task_verdict = tasks.verdict(&parts.headers);
        // The agent answered: whatever the body does, it is not stuck on this request.
        tasks.answered(task);
    }
    a.outcome = Some(UpstreamOutcome::of_status(status));
    if let Some(trace) = a.trace.as_mut() {
        trace.attempt_answered(status.as_u16());
    }
    if let Some(call) = a.llm.as_mut() {
        call.response(status, &parts.headers, &listener.budget);
    }
    if let (Some(t), Some(b)) = (a.breaker.as_mut(), &upstream.breaker) {
        t.slow = b
            .slow_after
            .is_some_and(|s| head_at.saturating_duration_since(from) > s);
        t.retry_after = retry_after(&parts.headers);
        // A probe is judged by its head: a stream can take minutes, and the circuit must not stay
        // half-open (refusing everyone else) for as long.
        if t.ticket.is_probe() {
            if let Some(t) = a.breaker.take() {
                let outcome = t.outcome(UpstreamOutcome::of_status(status));
                b.record(t.ticket, outcome, head_at);
            }
        }
    }
    if let Some(key) = cache_key {
        a.cache_fill = CacheFill::new(key, status, &parts.headers, &listener.budget).map(Box::new);
    }
}

/// A response head, with the body and connection behind it.
pub(super) struct Answered {
    pub parts: http::response::Parts,
    pub body: Incoming,
    pub lease: Option<Lease>,
    pub at: Instant,
}

/// The response goes to the client (steps 13's safety, 14 and 15): as it streams, read whole for
/// a safety decision first, or replaced by the proxy's 403. `own`: the sidecar's own time before
/// the attempt was sent.
pub(super) async fn answer(
    listener: &ListenerState,
    upstream: &Upstream,
    mut account: Option<Accounting>,
    head: Answered,
    own: Duration,
    total_deadline: Instant,
    first_reason: Option<FallbackReason>,
) -> Response<ProxyBody> {
    let Answered {
        mut parts,
        body,
        lease,
        at: head_at,
    } = head;
    let idle = upstream.timeouts.idle.0;
    let inspect = match (&listener.safety, account.as_mut()) {
        (Some(ls), Some(a)) => {
            let empty = http_body::Body::is_end_stream(&body);
            inspect_head(ls, a, &mut parts, empty, head_at)
        }
        _ => Inspect::Pass,
    };
    // The sidecar's own time, recorded now: reading a body whole for a safety decision below is
    // waiting on the upstream, not the sidecar's work.
    listener
        .overhead
        .record((own + Instant::now().duration_since(head_at)).as_secs_f64());
    let detector = |source| {
        listener
            .safety
            .as_ref()
            .map_or("unknown", |ls| ls.name(source))
            .to_owned()
    };
    match inspect {
        Inspect::Pass => {}
        Inspect::Block(source) => {
            let err = ProxyError::SafetyBlocked {
                detector: detector(source),
            };
            // 403 in place of the upstream's answer (its attempt counts as it went).
            return local_error(err, account, first_reason);
        }
        // Nothing to read (a HEAD answer, a 204): it passes as it is, headers untouched.
        Inspect::ReadWhole if http_body::Body::is_end_stream(&body) => {}
        Inspect::ReadWhole => {
            let Some(a) = account.as_mut() else {
                return local_error(internal(upstream, "accounting lost"), account, None);
            };
            return match read_whole(body, a, idle, total_deadline).await {
                Ok(Whole::Clean(bytes)) => {
                    if let Some(lease) = lease {
                        lease.release();
                    }
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    Response::from_parts(parts, ProxyBody::local(bytes, account))
                }
                Ok(Whole::Blocked(source)) => {
                    let err = ProxyError::SafetyBlocked {
                        detector: detector(source),
                    };
                    local_error(err, account, first_reason)
                }
                Err(err) => {
                    a.safety = None;
                    local_error(err, account, first_reason)
                }
            };
        }
    }
    let body = ProxyBody::upstream(body, lease, account, idle, total_deadline);
    Response::from_parts(parts, body)
}
