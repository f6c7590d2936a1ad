//! Where safety changes the answer: the response head looked at before anything goes out (the
//! agent's own flag; whether the body is read whole first), the whole-body read under `block`,
//! and the 403 that replaces a blocked answer.

use std::time::Duration;

use hyper::body::Incoming;
use tokio::time::Instant;

use super::{ListenerSafety, SafetyCheck, Source};
use crate::config::Role;
use crate::inspect::text::NotText;
use crate::inspect::MAX_INSPECTED_BODY;
use crate::proxy::{Accounting, ProxyError};
use crate::sli::UpstreamOutcome;

/// What safety makes of a response head.
pub(crate) enum Inspect {
    /// Inspected as it passes (or not at all).
    Pass,
    /// Blocked by its head alone (the agent's own `x-safety-flag`).
    Block(Source),
    /// To be read whole and inspected before it is answered (`block`, not a stream).
    ReadWhole,
}

/// Sets up the response's safety inspection (`empty`: the response has no body).
pub(crate) fn inspect_head(
    ls: &ListenerSafety,
    a: &mut Accounting,
    parts: &mut http::response::Parts,
    empty: bool,
    now: Instant,
) -> Inspect {
    // On the `llm` role, what a model generated: a successful LLM call's output.
    let applies = match a.listener.role {
        Role::Llm => a.llm.is_some() && parts.status.is_success(),
        Role::Agent => true,
    };
    if !applies {
        return Inspect::Pass;
    }
    let flagged = ls.flagged(&parts.headers);
    let mut check = match SafetyCheck::new(ls, &mut parts.headers, a.origin, a.request.clone()) {
        Ok(check) => check,
        Err(not_text) => {
            // Under `block`, text that cannot be read is not let through unseen.
            let unreadable = not_text == NotText::Unreadable && ls.block && !empty;
            let source = match (flagged, unreadable) {
                (true, _) => Source::SafetyFlag,
                (false, true) => Source::Uninspectable,
                (false, false) => return Inspect::Pass,
            };
            ls.responses.increment(1);
            let v = super::Violation {
                source,
                blocked: ls.block,
                at: None,
                origin: a.origin,
                echo: false,
            };
            ls.violation(&v, now);
            return match ls.block {
                true => Inspect::Block(source),
                false => Inspect::Pass,
            };
        }
    };
    let read_whole = ls.block && !check.holds();
    if read_whole {
        check.read_whole();
    }
    if flagged {
        check.count(ls, Source::SafetyFlag, None, now);
    }
    if check.holds() {
        // The stream may end early, with an event of the sidecar's.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let source = check.blocked();
    a.safety = Some(Box::new(check));
    match source {
        Some(source) => Inspect::Block(source),
        None if read_whole => Inspect::ReadWhole,
        None => Inspect::Pass,
    }
}

/// A response read whole for a safety decision.
pub(crate) enum Whole {
    Clean(bytes::Bytes),
    Blocked(Source),
}

/// Reads a response body whole (up to [`MAX_INSPECTED_BODY`]), each chunk shown to the LLM
/// reader, the cache and the safety check as it would be while streaming. A larger body cannot
/// be decided on in bounded memory: it is blocked as uninspectable (by its `Content-Length`
/// before a byte is read, or once it grows past the limit).
pub(crate) async fn read_whole(
    mut body: Incoming,
    a: &mut Accounting,
    idle: Duration,
    deadline: Instant,
) -> Result<Whole, ProxyError> {
    use http_body_util::BodyExt;
    let upstream = a.upstream().map_or_else(String::new, |u| u.name.clone());
    let too_large = |a: &mut Accounting| {
        if let (Some(check), Some(ls)) = (a.safety.as_mut(), a.listener.safety.as_ref()) {
            check.count(ls, Source::Uninspectable, None, Instant::now());
        }
        Ok(Whole::Blocked(Source::Uninspectable))
    };
    if http_body::Body::size_hint(&body).lower() > MAX_INSPECTED_BODY as u64 {
        return too_large(a);
    }
    let reservation = a.listener.budget.reserve(crate::budget::Held::ResponseRead);
    let mut kept =
        crate::inspect::Collected::with_limit(MAX_INSPECTED_BODY).reserve_from(reservation);
    if let Some(declared) = http_body::Body::size_hint(&body).exact() {
        if !kept.reserve_ahead(declared as usize) {
            return Err(ProxyError::Overloaded);
        }
    }
    loop {
        let now = Instant::now();
        let frame = match tokio::time::timeout_at((now + idle).min(deadline), body.frame()).await {
            Err(_) => {
                // `idle` between chunks, or `total` for the whole exchange, ran out.
                a.outcome = Some(UpstreamOutcome::Timeout);
                return Err(ProxyError::FirstByteTimeout {
                    upstream,
                    timeout: Instant::now().duration_since(now),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(source))) => {
                a.outcome = Some(UpstreamOutcome::Reset);
                return Err(ProxyError::Broken { upstream, source });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        if let Some(call) = a.llm.as_mut() {
            call.chunk(&data, now);
        }
        if a.cache_fill.as_mut().is_some_and(|f| !f.push(&data)) {
            a.cache_fill = None;
        }
        if let (Some(check), Some(ls)) = (a.safety.as_mut(), a.listener.safety.as_ref()) {
            check.feed(ls, &data, now);
            if let Some(source) = check.blocked() {
                return Ok(Whole::Blocked(source));
            }
        }
        if !kept.push(&data) {
            if kept.starved() {
                // Nothing went out yet: the client is told to come back, nothing is let through.
                return Err(ProxyError::Overloaded);
            }
            return too_large(a);
        }
    }
    let now = Instant::now();
    if let (Some(check), Some(ls)) = (a.safety.as_mut(), a.listener.safety.as_ref()) {
        check.finish(ls, true, now);
        if let Some(source) = check.blocked() {
            return Ok(Whole::Blocked(source));
        }
    }
    Ok(Whole::Clean(kept.into_bytes()))
}
