//! Answers the proxy makes itself — its errors, the cache's entries — counted like any other
//! response.

use http::{HeaderValue, Response};

use super::cache::Cached;
use super::ctx::RequestCtx;
use super::fallback::{FallbackReason, X_SLOGUARD_CACHE, X_SLOGUARD_FALLBACK};
use super::mcp::Refusal;
use super::{headers, ProxyBody, ProxyError};
use crate::sli::loops::LoopKind;

/// Why the pipeline stopped before an upstream's answer could go to the client: each is answered
/// by the sidecar itself ([`Stop::answer`]).
pub(super) enum Stop {
    /// A proxy-made error (after a fallback for this reason, if any).
    Error(ProxyError, Option<FallbackReason>),
    /// Every upstream of the route is open, and the cache had nothing.
    CircuitOpen,
    /// The route has `max_in_flight` requests in flight already.
    BulkheadFull,
    /// The loop guard stopped the call's task.
    Loop(LoopKind),
    /// The route's cache answers: every upstream is open or has failed (for this reason).
    Cached(Box<Cached>, FallbackReason),
    /// An MCP guard under `block` answers the call itself.
    Mcp(Refusal),
}

impl From<ProxyError> for Stop {
    fn from(err: ProxyError) -> Stop {
        Stop::Error(err, None)
    }
}

impl Stop {
    pub(super) fn answer(self, ctx: Box<RequestCtx>) -> Response<ProxyBody> {
        match self {
            Stop::Error(err, reason) => local_error(err, ctx, reason),
            Stop::CircuitOpen => circuit_open(ctx),
            Stop::BulkheadFull => {
                let route = ctx.listener.route.name.clone();
                local_error(ProxyError::BulkheadFull { route }, ctx, None)
            }
            Stop::Loop(kind) => loop_refused(kind, ctx),
            Stop::Cached(hit, reason) => serve_cached(*hit, ctx, reason),
            Stop::Mcp(refusal) => mcp_refused(refusal, ctx),
        }
    }
}

/// 503 `circuit_open`: every upstream of the route is open, and the cache had nothing.
fn circuit_open(ctx: Box<RequestCtx>) -> Response<ProxyBody> {
    let route = &ctx.listener.route;
    let err = ProxyError::CircuitOpen {
        route: route.name.clone(),
    };
    let first = route.chain.len() > 1;
    local_error(err, ctx, first.then_some(FallbackReason::CircuitOpen))
}

/// 429 `loop_detected`: the loop guard stopped the call's task.
fn loop_refused(kind: LoopKind, ctx: Box<RequestCtx>) -> Response<ProxyBody> {
    let mut refused = local_error(ProxyError::LoopDetected { kind }, ctx, None);
    // The OpenAI and Anthropic SDKs retry a 429 unless told not to: retrying a cut task only
    // repeats the refusal.
    refused
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    refused
}

/// 200 with a JSON-RPC tool result (`isError: true`) saying why the call was not made, and
/// `x-sloguard-error` naming the guard: the model reads the reason and can correct its call.
fn mcp_refused(refusal: Refusal, mut ctx: Box<RequestCtx>) -> Response<ProxyBody> {
    let status = http::StatusCode::OK;
    ctx.answered_here(status, Some(refusal.error));
    let upstream = ctx.listener.route.chain[0].header_value.clone();
    let mut response = Response::new(ProxyBody::local(refusal.body, ctx));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        headers::X_SLOGUARD_ERROR.clone(),
        HeaderValue::from_static(refusal.error),
    );
    headers.insert(headers::X_SLOGUARD_UPSTREAM.clone(), upstream);
    response
}

/// Answers from the route's cache: every upstream is open or has failed.
fn serve_cached(
    hit: Cached,
    mut ctx: Box<RequestCtx>,
    reason: FallbackReason,
) -> Response<ProxyBody> {
    ctx.answered_by_cache(hit.status);
    let mut response = Response::new(ProxyBody::local(hit.body, ctx));
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers;
    let headers = response.headers_mut();
    headers.insert(X_SLOGUARD_CACHE.clone(), HeaderValue::from_static("hit"));
    headers.insert(
        headers::X_SLOGUARD_UPSTREAM.clone(),
        HeaderValue::from_static("cache"),
    );
    headers.insert(X_SLOGUARD_FALLBACK.clone(), reason.header_value());
    response
}

/// Answers with a proxy-made error, counted like any other response, under the upstream the
/// request was with.
pub(super) fn local_error(
    err: ProxyError,
    mut ctx: Box<RequestCtx>,
    fallback: Option<FallbackReason>,
) -> Response<ProxyBody> {
    let (mut parts, bytes) = err.to_response().into_parts();
    let upstream = ctx.local_answer(&err, parts.status);
    err.log(&upstream.log_limit);
    parts.headers.insert(
        headers::X_SLOGUARD_UPSTREAM.clone(),
        upstream.header_value.clone(),
    );
    if let Some(reason) = fallback {
        parts
            .headers
            .insert(X_SLOGUARD_FALLBACK.clone(), reason.header_value());
    }
    Response::from_parts(parts, ProxyBody::local(bytes, ctx))
}
