//! Answers the proxy makes itself — its errors, the cache's entries — counted like any other
//! response; and the accounting of a request the client leaves before any answer.

use http::{HeaderValue, Response};
use tokio::time::Instant;

use super::cache::Cached;
use super::fallback::{FallbackReason, X_SLOGUARD_CACHE, X_SLOGUARD_FALLBACK};
use super::{headers, Accounting, ProxyBody, ProxyError, RouteState};
use crate::sli::{Cause, StatusClass};

/// 503 `circuit_open`: every upstream of the route is open, and the cache had nothing.
pub(super) fn circuit_open(route: &RouteState, account: Option<Accounting>) -> Response<ProxyBody> {
    let err = ProxyError::CircuitOpen {
        route: route.name.clone(),
    };
    let first = route.chain.len() > 1;
    local_error(err, account, first.then_some(FallbackReason::CircuitOpen))
}

/// 429 `loop_detected`: the loop guard stopped the call's task.
pub(super) fn loop_refused(
    kind: crate::sli::loops::LoopKind,
    account: Option<Accounting>,
) -> Response<ProxyBody> {
    let mut refused = local_error(ProxyError::LoopDetected { kind }, account, None);
    // The OpenAI and Anthropic SDKs retry a 429 unless told not to: retrying a cut task only
    // repeats the refusal.
    refused
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    refused
}

/// Answers from the route's cache: every upstream is open or has failed.
pub(super) fn serve_cached(
    hit: Cached,
    mut account: Option<Accounting>,
    reason: FallbackReason,
) -> Response<ProxyBody> {
    if let Some(a) = account.as_mut() {
        a.hop = a.listener.route.chain.len();
        // No provider was called.
        a.llm = None;
        a.status = StatusClass::of(hit.status);
        if let Some(trace) = a.trace.as_mut() {
            trace.local_answer(hit.status.as_u16(), None);
        }
        a.cause = Cause::None;
        a.outcome = None;
    }
    let mut response = Response::new(ProxyBody::local(hit.body, account));
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
pub(crate) fn local_error(
    err: ProxyError,
    mut account: Option<Accounting>,
    fallback: Option<FallbackReason>,
) -> Response<ProxyBody> {
    let (mut parts, bytes) = err.to_response().into_parts();
    if let Some(a) = account.as_mut() {
        // The sidecar's answer is no upstream's: whatever of one was kept for the cache (a body
        // read whole that broke off, a blocked one) goes.
        a.cache_fill = None;
        let route = &a.listener.route;
        let upstream = route.chain.get(a.hop).unwrap_or(&route.chain[0]);
        err.log(&upstream.log_limit);
        parts.headers.insert(
            headers::X_SLOGUARD_UPSTREAM.clone(),
            upstream.header_value.clone(),
        );
        a.status = StatusClass::of(parts.status);
        a.cause = err.cause(a.listener.role);
        if let Some(trace) = a.trace.as_mut() {
            trace.local_answer(parts.status.as_u16(), Some(err.error_type()));
        }
        // A blocked answer came from an upstream that answered: its attempt counts as it went.
        if !matches!(err, ProxyError::SafetyBlocked { .. }) {
            a.outcome = err.outcome();
        }
    }
    if let Some(reason) = fallback {
        parts
            .headers
            .insert(X_SLOGUARD_FALLBACK.clone(), reason.header_value());
    }
    Response::from_parts(parts, ProxyBody::local(bytes, account))
}

/// The request's accounting until a response is made; settles it as abandoned if the client
/// leaves first.
pub(super) struct Unanswered(pub(super) Option<Accounting>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abandoned(Instant::now());
        }
    }
}
