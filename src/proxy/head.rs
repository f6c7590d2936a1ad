//! Once the response head is in: how the response goes to the client — as it streams, read whole
//! for a safety decision first, or replaced by the proxy's 403.

use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::ctx::RequestCtx;
use super::fallback::FallbackReason;
use super::local::local_error;
use super::safety::{Inspect, Source};
use super::{ProxyBody, ProxyError};
use crate::inspect::MAX_INSPECTED_BODY;
use crate::sli::UpstreamOutcome;
use crate::upstream::{Lease, UpstreamBody};

/// A response head, with the body and connection behind it, and what the pipeline knows of the
/// request so far.
pub(super) struct Answered {
    pub(super) parts: http::response::Parts,
    pub(super) body: UpstreamBody,
    pub(super) lease: Option<Lease>,
    pub(super) at: Instant,
    /// The sidecar's own time before the attempt was sent.
    pub(super) own: Duration,
    pub(super) total_deadline: Instant,
    pub(super) first_reason: Option<FallbackReason>,
}

/// How the response goes to the client: now, or once its body is read whole for a safety
/// decision (`block`, a body that is not a stream) or an MCP tool list checked under `block`.
#[expect(
    clippy::large_enum_variant,
    reason = "the response goes to hyper by value either way; boxing it would cost every request an allocation"
)]
pub(super) enum Answer {
    Now(Response<ProxyBody>),
    ReadWhole(Box<ReadWhole>),
}

/// The response goes to the client (the pipeline's safety step, then the overhead, then the
/// stream): as it streams, replaced by the proxy's 403, or — the one case that waits — read whole
/// for a safety decision first. Not `async`: the common case costs no future of its own.
pub(super) fn answer(mut ctx: Box<RequestCtx>, head: Answered) -> Answer {
    let Answered {
        mut parts,
        body,
        lease,
        at: head_at,
        own,
        total_deadline,
        first_reason,
    } = head;
    let idle = ctx.listener.route.chain[ctx.hop].timeouts.idle.0;
    let empty = http_body::Body::is_end_stream(&body);
    let inspect = ctx.inspect_head(&mut parts, empty, head_at);
    // The sidecar's own time, recorded now: reading a body whole for a safety decision below is
    // waiting on the upstream, not the sidecar's work.
    ctx.listener
        .overhead
        .record((own + Instant::now().duration_since(head_at)).as_secs_f64());
    match inspect {
        Inspect::Pass => {}
        // 403 in place of the upstream's answer (its attempt counts as it went).
        Inspect::Block(source) => {
            return Answer::Now(local_error(blocked(&ctx, source), ctx, first_reason))
        }
        // Nothing to read (a HEAD answer, a 204): it passes as it is, headers untouched.
        Inspect::ReadWhole if empty => {}
        Inspect::ReadWhole => {
            return Answer::ReadWhole(Box::new(ReadWhole {
                ctx,
                parts,
                body,
                lease,
                idle,
                total_deadline,
                first_reason,
            }))
        }
    }
    let body = ProxyBody::upstream(body, lease, ctx, idle, total_deadline);
    Answer::Now(Response::from_parts(parts, body))
}

/// 403 `safety_blocked`, naming the detector of `source`.
fn blocked(ctx: &RequestCtx, source: Source) -> ProxyError {
    let name = ctx
        .listener
        .safety
        .as_ref()
        .map_or("unknown", |ls| ls.name(source));
    ProxyError::SafetyBlocked {
        detector: name.to_owned(),
    }
}

/// A response to read whole before it is answered.
pub(super) struct ReadWhole {
    ctx: Box<RequestCtx>,
    parts: http::response::Parts,
    body: UpstreamBody,
    lease: Option<Lease>,
    idle: Duration,
    total_deadline: Instant,
    first_reason: Option<FallbackReason>,
}

impl ReadWhole {
    /// Reads the body and answers: the body as it was if clean, else the proxy's 403 (or the
    /// error that cut the read).
    pub(super) async fn answer(self: Box<Self>) -> Response<ProxyBody> {
        let ReadWhole {
            mut ctx,
            mut parts,
            mut body,
            lease,
            idle,
            total_deadline,
            first_reason,
        } = *self;
        match read_whole(&mut body, &mut ctx, idle, total_deadline).await {
            Ok(Whole::Clean(bytes, read_to_end)) => {
                // A body not read to its end leaves its connection unusable: it goes.
                if let Some(lease) = lease.filter(|_| read_to_end) {
                    lease.release(&mut body, Instant::now());
                }
                parts.headers.remove(http::header::CONTENT_LENGTH);
                let bytes = ctx.whole_body(bytes);
                Response::from_parts(parts, ProxyBody::local(bytes, ctx))
            }
            Ok(Whole::Blocked(source)) => local_error(blocked(&ctx, source), ctx, first_reason),
            Err((err, outcome)) => {
                ctx.read_failed(outcome);
                local_error(err, ctx, first_reason)
            }
        }
    }
}

/// A response read whole for a safety decision (or an MCP list check).
enum Whole {
    /// Let through; whether it was read to its end (an MCP stream with every answer need not
    /// be, and a list too large to check is not).
    Clean(bytes::Bytes, bool),
    Blocked(Source),
}

/// Reads a response body whole (up to [`MAX_INSPECTED_BODY`]), each chunk shown to the request's
/// features (the LLM reader, the cache, the safety check) as it would be while streaming. A larger
/// body cannot be decided on in bounded memory: it is blocked as uninspectable (by its
/// `Content-Length` before a byte is read, or once it grows past the limit). A failure comes with
/// the attempt's outcome, when the upstream is the one that failed.
async fn read_whole(
    body: &mut UpstreamBody,
    ctx: &mut RequestCtx,
    idle: Duration,
    deadline: Instant,
) -> Result<Whole, (ProxyError, Option<UpstreamOutcome>)> {
    use http_body_util::BodyExt;
    let upstream = ctx.upstream().map_or_else(String::new, |u| u.name.clone());
    let too_large = |ctx: &mut RequestCtx| match ctx.read_too_large(Instant::now()) {
        true => Ok(Whole::Blocked(Source::Uninspectable)),
        // Only an MCP list check wanted it: the list is refused, not the answer.
        false => Ok(Whole::Clean(bytes::Bytes::new(), false)),
    };
    if http_body::Body::size_hint(&body).lower() > MAX_INSPECTED_BODY as u64 {
        return too_large(ctx);
    }
    let reservation = ctx
        .listener
        .budget
        .reserve(crate::budget::Held::ResponseRead);
    let mut kept =
        crate::inspect::Collected::with_limit(MAX_INSPECTED_BODY).reserve_from(reservation);
    if let Some(declared) = http_body::Body::size_hint(&body).exact() {
        if !kept.reserve_ahead(declared as usize) {
            return Err((ProxyError::Overloaded, None));
        }
    }
    let mut to_end = false;
    loop {
        let now = Instant::now();
        let frame = match tokio::time::timeout_at((now + idle).min(deadline), body.frame()).await {
            Err(_) => {
                // `idle` between chunks, or `total` for the whole exchange, ran out.
                let err = ProxyError::FirstByteTimeout {
                    upstream,
                    timeout: Instant::now().duration_since(now),
                };
                return Err((err, Some(UpstreamOutcome::Timeout)));
            }
            Ok(None) => {
                to_end = true;
                break;
            }
            Ok(Some(Err(source))) if source.is_client_body() => {
                // The client's upload broke off while the upstream waited for it.
                return Err((ProxyError::from_exchange(&upstream, source, true), None));
            }
            Ok(Some(Err(source))) => {
                let err = ProxyError::Broken { upstream, source };
                return Err((err, Some(UpstreamOutcome::Reset)));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        ctx.data(&data, Instant::now());
        if let Some(source) = ctx.blocked() {
            return Ok(Whole::Blocked(source));
        }
        if !kept.push(&data) {
            if kept.starved() {
                // Nothing went out yet: the client is told to come back, nothing is let through.
                return Err((ProxyError::Overloaded, None));
            }
            return too_large(ctx);
        }
        if ctx.read_enough() {
            break;
        }
    }
    match ctx.read_ended(Instant::now()) {
        Some(source) => Ok(Whole::Blocked(source)),
        None => Ok(Whole::Clean(kept.into_bytes(), to_end)),
    }
}
