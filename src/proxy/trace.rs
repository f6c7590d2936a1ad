//! The request's trace (`otlp.traces`): its span from arrival to the moment it is counted, one
//! span per attempt (the upstream gets the attempt as its parent), the LLM call's facts on its
//! attempt. Only ids and instants are kept on the request path; the spans are built when the
//! export takes them (see [`crate::telemetry::trace`]).

use http::HeaderMap;
use tokio::time::Instant;

use crate::telemetry::trace::{ListenerTracer, RequestTrace};

/// The request's trace, when the listener traces.
#[derive(Debug, Default)]
pub(super) struct TraceState(Option<Box<RequestTrace>>);

impl TraceState {
    /// The request's span starts at `received`: the client's `traceparent` continued, or a new
    /// trace.
    pub(super) fn begin(
        &mut self,
        tracer: Option<&ListenerTracer>,
        parts: &http::request::Parts,
        received: Instant,
    ) {
        if let Some(tracer) = tracer {
            let (method, path) = (&parts.method, parts.uri.path());
            self.0 = Some(tracer.start(method, path, &parts.headers, received));
        }
    }

    /// An attempt with the upstream at `hop` goes out now with `headers`: its span begins.
    pub(super) fn sending(&mut self, hop: usize, headers: &mut HeaderMap, now: Instant) {
        if let Some(t) = self.0.as_mut() {
            t.attempt(hop, headers, now);
        }
    }

    pub(super) fn head(&mut self, status: http::StatusCode) {
        if let Some(t) = self.0.as_mut() {
            t.attempt_answered(status.as_u16());
        }
    }

    /// The attempt failed as `outcome` says (`status`: what the upstream answered, if it did).
    pub(super) fn attempt_failed(
        &mut self,
        outcome: &'static str,
        status: Option<u16>,
        now: Instant,
    ) {
        if let Some(t) = self.0.as_mut() {
            t.close_attempt(Some(outcome), status, now);
        }
    }

    /// The sidecar answered `status` itself (an error of type `error`).
    pub(super) fn local_answer(&mut self, status: http::StatusCode, error: Option<&'static str>) {
        if let Some(t) = self.0.as_mut() {
            t.local_answer(status.as_u16(), error);
        }
    }

    /// Where the LLM call puts its facts.
    /// The request's trace id, when it is traced: the client's, or the new one the upstream got.
    pub(super) fn trace_id(&self) -> Option<[u8; 16]> {
        self.0.as_ref().map(|t| t.trace_id().to_bytes())
    }

    pub(super) fn span(&mut self) -> Option<&mut RequestTrace> {
        self.0.as_deref_mut()
    }

    /// The request is counted, answered at `hop`: its spans end (and go to export, if sampled or
    /// failed).
    pub(super) fn end(
        &mut self,
        hop: usize,
        outcome: Option<&'static str>,
        failed: bool,
        now: Instant,
    ) {
        if let Some(t) = self.0.take() {
            t.finish(hop, outcome, failed, now);
        }
    }
}
