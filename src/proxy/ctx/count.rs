//! The request counted, once: each feature's end in turn, then the request's own series and its
//! trace; and a context dropped before it was counted (the client gone, a body cut) counted
//! then.

use tokio::time::Instant;

use super::{RequestCtx, Stage};
use crate::sli::{Cause, StatusClass, UpstreamOutcome};

impl RequestCtx {
    /// Counts the request, once: one call per feature.
    pub(super) fn count(&mut self, now: Instant, complete: bool) {
        let RequestCtx {
            listener: l,
            received,
            hop,
            status,
            cause,
            outcome,
            stage,
            in_flight,
            bulkhead,
            cascade,
            correctness,
            breaker,
            llm,
            loops,
            mcp,
            safety,
            task,
            cache,
            trace,
            ..
        } = self;
        *stage = Stage::Counted;
        mcp.end(l.mcp.as_ref(), *hop, complete, *outcome, now, trace.span());
        let end = llm.end(complete, *status, *outcome, now, trace.span());
        if end.as_ref().is_some_and(|e| e.provider_error) {
            // A 200 whose stream (or body) says the provider failed: a failed request, for the
            // SLIs and the breaker alike, as a 5xx would have been. (The client got the status
            // and the provider's error event as they were.)
            *status = StatusClass::ServerError;
            *cause = Cause::upstream_failure(l.role);
            *outcome = Some(UpstreamOutcome::ServerError);
        } else {
            // What ended cleanly, and said no error, is worth keeping.
            cache.end(l.route.cache.as_ref(), complete, now);
        }
        loops.end(l.loop_guard.as_deref(), end.as_ref(), now);
        let filtered = end.as_ref().is_some_and(|e| e.filtered);
        safety.end(l.safety.as_ref(), complete, filtered, now);
        correctness.end(
            l.correctness.as_ref(),
            end.as_ref(),
            complete,
            safety.found(),
        );
        task.end(l.tasks.as_deref(), *status, now);
        let upstream = l.route.chain.get(*hop);
        breaker.end(upstream.map(|u| &**u), *outcome, now);
        *cause = cascade.end(l.cascade.as_ref(), *status, *cause);
        let metrics = l.metrics(*hop);
        metrics.count_request(*status, *cause);
        metrics
            .response_seconds
            .record(now.duration_since(*received).as_secs_f64());
        if let (Some(o), Some(u)) = (*outcome, upstream) {
            u.metrics.count(o);
        }
        let failed = *status == StatusClass::ServerError || *cause != Cause::None;
        trace.end(*hop, outcome.map(UpstreamOutcome::as_str), failed, now);
        if let Some(f) = in_flight.take() {
            f.end(now);
        }
        *bulkhead = None;
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if self.stage == Stage::Counted {
            return;
        }
        let now = Instant::now();
        match self.stage {
            // The client went away before any response: nothing was sent, so no time to first
            // byte.
            Stage::Unanswered => {
                let tasks = self.listener.tasks.clone();
                self.task.no_response(tasks.as_deref(), now);
                self.count(now, false);
            }
            Stage::Answered => self.count(now, false),
            Stage::Counted => {}
        }
    }
}
