//! The request context: what one request carries from its arrival until it is counted. It is
//! owned by the pipeline ([`super::handle`]) while the request is with an upstream, then by the
//! response body ([`super::ProxyBody`]); however the request ends — its last byte out, the client
//! gone, an error of the sidecar's — it is counted exactly once, when the context is settled or
//! dropped.
//!
//! The context holds the request's own facts (listener, arrival, its place in the route's chain,
//! what it will be counted as) and one sub-state per feature, each a type of the feature's own
//! module that only that module changes: the bulkhead's place ([`super::bulkhead`]), calls
//! between agents ([`super::cascade`]), the circuit breaker's ticket ([`super::breaker`]), the
//! LLM call ([`super::llm`]), the loop guard and the task ([`super::tasks`]), the MCP operations
//! ([`super::mcp`]), the safety check ([`super::safety`]), the correctness checks
//! ([`super::correctness`]), the cache fill ([`super::cache`]) and the trace ([`super::trace`]). Each
//! phase of the pipeline is one method here that hands each feature its hook; a new feature is a
//! new sub-state and one line in the phases it takes part in.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::breaker::{Admitted, BreakerTicket};
use super::bulkhead::Place;
use super::cache::{CacheKey, CacheState};
use super::cascade::CascadeState;
use super::connections::InFlight;
use super::correctness::CorrectnessState;
use super::error::{DeadlineWhen, ProxyError};
use super::llm::LlmState;
use super::mcp::{McpState, Refusal};
use super::safety::{Held, Inspect, SafetyState, Source};
use super::state::ListenerState;
use super::tasks::{LoopWatch, TaskState};
use super::trace::TraceState;
use crate::config::Role;
use crate::inspect::{Format, Unparsed};
use crate::sli::loops::LoopKind;
use crate::sli::{Cause, StatusClass, UpstreamOutcome};
use crate::upstream::{Lease, RequestBody, Upload, Upstream};

/// Where the request stands, for counting it if it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No response yet: dropped now, the client left before any answer.
    Unanswered,
    /// A response head was made: dropped before its end, the body was cut.
    Answered,
    Counted,
}

/// One request's context (see the module's documentation).
#[derive(Debug)]
pub(crate) struct RequestCtx {
    pub(super) listener: Arc<ListenerState>,
    pub(super) received: Instant,
    /// The place in the route's chain of the upstream the request is with (past its end: the
    /// cache).
    pub(super) hop: usize,
    status: StatusClass,
    cause: Cause,
    /// The upstream attempt's outcome so far; `None` when no attempt is to be counted.
    outcome: Option<UpstreamOutcome>,
    first_byte_sent: bool,
    stage: Stage,
    /// Keeps the client's connection busy until the request is counted.
    in_flight: Option<InFlight>,
    /// The request's place in its route's bulkhead, held until it is counted.
    bulkhead: Option<Place>,
    cascade: CascadeState,
    correctness: CorrectnessState,
    breaker: BreakerTicket,
    llm: LlmState,
    loops: LoopWatch,
    mcp: McpState,
    safety: SafetyState,
    task: TaskState,
    cache: CacheState,
    trace: TraceState,
}

impl RequestCtx {
    /// A request just received, counted as abandoned (4xx, no cause, nginx's 499) until it is
    /// answered; its span started (`otlp.traces`).
    fn new(
        listener: Arc<ListenerState>,
        parts: &http::request::Parts,
        received: Instant,
        in_flight: InFlight,
    ) -> RequestCtx {
        let mut trace = TraceState::default();
        trace.begin(listener.tracer.as_ref(), parts, received);
        RequestCtx {
            listener,
            received,
            hop: 0,
            status: StatusClass::ClientError,
            cause: Cause::None,
            outcome: None,
            first_byte_sent: false,
            stage: Stage::Unanswered,
            in_flight: Some(in_flight),
            bulkhead: None,
            cascade: CascadeState::default(),
            correctness: CorrectnessState::default(),
            breaker: BreakerTicket::default(),
            llm: LlmState::default(),
            loops: LoopWatch::default(),
            mcp: McpState::default(),
            safety: SafetyState::default(),
            task: TaskState::default(),
            cache: CacheState::default(),
            trace,
        }
    }

    /// A request refused before it is anyone's (the agent is disabled).
    pub(super) fn refused(
        listener: Arc<ListenerState>,
        parts: &http::request::Parts,
        received: Instant,
        in_flight: InFlight,
    ) -> Box<RequestCtx> {
        Box::new(RequestCtx::new(listener, parts, received, in_flight))
    }

    /// A request just received from `client_ip`: its task looked up (`agent` role) and its
    /// origin noted for the kill switch.
    pub(super) fn begin(
        listener: Arc<ListenerState>,
        parts: &http::request::Parts,
        client_ip: &HeaderValue,
        received: Instant,
        in_flight: InFlight,
    ) -> Box<RequestCtx> {
        // Boxed: the context goes with the answer's body, which moves a few times on its way.
        let mut ctx = Box::new(RequestCtx::new(listener, parts, received, in_flight));
        let l = &*ctx.listener;
        ctx.task.begin(l.tasks.as_deref(), &parts.headers, received);
        ctx.safety
            .begin(l.safety.as_ref(), &parts.headers, client_ip);
        ctx.correctness
            .begin(l.correctness.as_ref(), parts, received);
        ctx
    }

    /// The request is an LLM call to the route's first upstream (`format`): counted from now.
    /// The loop guard counts it for its task; under `block` a looping task's call is to be
    /// refused before any work is spent on it (no provider is asked, so it is no LLM call
    /// either): what the guard found.
    pub(super) fn llm_request(
        &mut self,
        format: Option<Format>,
        headers: &HeaderMap,
    ) -> Option<LoopKind> {
        let RequestCtx {
            listener,
            received,
            llm,
            loops,
            ..
        } = self;
        let metrics = listener.route.chain[0].llm.as_ref();
        format.zip(metrics)?;
        llm.begin(metrics, format, *received);
        let refused = loops.call(listener.loop_guard.as_deref(), headers, *received);
        if refused.is_some() {
            llm.cancel();
        }
        refused
    }

    /// An `mcp` listener's request, read ahead (`Err`: why it could not be read): its JSON-RPC
    /// operations begin, its tool calls go to the loop guard. Under `block`, a call the sidecar
    /// answers itself.
    pub(super) fn mcp_request(
        &mut self,
        headers: &http::HeaderMap,
        body: Result<&[u8], Unparsed>,
    ) -> Option<Refusal> {
        let (l, at) = (&self.listener, self.received);
        let guard = l.loop_guard.as_deref().filter(|g| g.counts_tool_calls());
        // The upstream it goes to first: its session's, set before the read.
        let first = (self.hop, guard.is_some());
        let refusal = self.mcp.request(l.mcp.as_ref(), headers, body, at, first);
        if let (Some(guard), Some(calls)) = (guard, self.mcp.tool_calls()) {
            guard.tool_calls(headers, calls, at);
        }
        refusal
    }

    /// Calls between agents: an inbound request's depth, path and deadline are checked and it is
    /// entered for its egress calls to find; an egress call finds the inbound request it is made
    /// for, and is refused if that request's time is spent.
    pub(super) fn cascade(&mut self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let lc = self.listener.cascade.as_ref();
        // Traced, the request's trace id is the one its upstream got (a new one when the client
        // sent none): the one the agent's calls carry.
        let trace = self.trace.trace_id();
        self.cascade.begin(lc, headers, trace, self.received)
    }

    /// When the request's attempts must end: the deadline of the inbound request it is made for.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.cascade.deadline()
    }

    /// The request takes a place in its route's bulkhead (`max_in_flight`), if it has one:
    /// `false` when the route is full.
    pub(super) fn enter_bulkhead(&mut self) -> bool {
        let Some(bulkhead) = &self.listener.route.bulkhead else {
            return true;
        };
        self.bulkhead = bulkhead.enter();
        self.bulkhead.is_some()
    }

    /// The request goes to the upstream that admitted it. Returns its place in the chain.
    pub(super) fn admitted(&mut self, admission: Admitted) -> usize {
        let throttling_fails = self.listener.role == Role::Llm;
        self.hop = self.breaker.admitted(admission, throttling_fails);
        self.hop
    }

    /// The upstream the request is with; `None` for the cache.
    pub(super) fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.listener.route.chain.get(self.hop)
    }

    /// An attempt is made with the upstream at `hop` (an LLM call of `format` there, if any).
    pub(super) fn attempt(&mut self, format: Option<Format>) {
        let metrics = self.listener.route.chain[self.hop].llm.as_ref();
        self.llm.attempt(self.hop, metrics, format, self.received);
    }

    /// The attempt's request goes out now with its body's `upload` and these `headers`: its span
    /// begins (the upstream gets the trace context), a peer call gets its deadline, depth and
    /// path (or is refused, its time spent), the LLM call reads the request's facts from the
    /// upload, and on an `agent` listener the request waits on the agent from when the upload is
    /// the agent's turn.
    pub(super) fn sending(
        &mut self,
        body: &mut RequestBody,
        upload: &Option<Arc<Upload>>,
        headers: &mut HeaderMap,
        now: Instant,
    ) -> Result<(), ProxyError> {
        let l = &*self.listener;
        self.cascade.sending(l.cascade.as_ref(), headers, now)?;
        self.correctness
            .sending(l.correctness.as_ref(), body, headers);
        self.trace.sending(self.hop, headers, now);
        self.llm.sending(upload);
        self.safety.sending(l.safety.as_ref(), upload);
        let turn = upload
            .clone()
            .map(|u| u as Arc<dyn crate::sli::liveness::AgentsTurn>);
        self.task.sending(l.tasks.as_deref(), now, turn);
        Ok(())
    }

    /// The attempt with the current upstream failed as `result` says, and the request moves on:
    /// the attempt is counted now, for that upstream (its LLM call, its breaker, its outcome, its
    /// span).
    pub(super) fn attempt_failed(
        &mut self,
        result: &Result<(http::Response<crate::upstream::UpstreamBody>, Option<Lease>), ProxyError>,
        now: Instant,
    ) {
        let listener = self.listener.clone();
        let Some(upstream) = listener.route.chain.get(self.hop) else {
            return;
        };
        let (outcome, status, headers) = match result {
            Ok((response, _)) => {
                let code = response.status();
                let outcome = UpstreamOutcome::of_status(code);
                (outcome, StatusClass::of(code), Some(response.headers()))
            }
            Err(err) => {
                err.log(&upstream.log_limit);
                let outcome = err.outcome().unwrap_or(UpstreamOutcome::Reset);
                (outcome, StatusClass::of(err.status()), None)
            }
        };
        let code = match result {
            Ok((response, _)) => Some(response.status().as_u16()),
            Err(_) => None,
        };
        self.llm
            .end(false, status, Some(outcome), now, self.trace.span());
        self.trace.attempt_failed(outcome.as_str(), code, now);
        // A failed attempt's body never reaches the client: nothing was said.
        self.safety.discard();
        self.breaker.attempt_failed(upstream, outcome, headers, now);
        upstream.metrics.count(outcome);
    }

    /// The response head from the current upstream arrived at `head_at` (for a request whose
    /// upload ended `from`): what it tells each feature — the status and cause, the agent's
    /// verdict on its task (and that the agent answered), the LLM call's reader, the breaker (a
    /// slow head, a 429's Retry-After; a probe is judged now), and the cache fill.
    pub(super) fn head(
        &mut self,
        parts: &mut http::response::Parts,
        from: Instant,
        head_at: Instant,
        cache_key: Option<CacheKey>,
    ) {
        let RequestCtx {
            listener,
            hop,
            breaker,
            llm,
            task,
            cache,
            trace,
            correctness,
            ..
        } = self;
        let status = parts.status;
        correctness.head(listener.correctness.as_ref(), parts);
        self.status = StatusClass::of(status);
        self.cause = Cause::of_response(listener.role, status);
        self.outcome = Some(UpstreamOutcome::of_status(status));
        self.cascade.answered(listener.cascade.as_ref(), self.cause);
        task.head(listener.tasks.as_deref(), &parts.headers);
        trace.head(status);
        let structured = correctness.keeps_output(listener.correctness.as_ref());
        llm.head(status, &parts.headers, &listener.budget, structured);
        if let Some(upstream) = listener.route.chain.get(*hop) {
            breaker.head(upstream, parts, from, head_at);
        }
        let key = cache_key.filter(|_| listener.route.cache.is_some());
        cache.head(key, status, &parts.headers, &listener.budget);
        let lm = listener.mcp.as_ref();
        self.mcp
            .head(lm, *hop, status, &parts.headers, &listener.budget);
    }

    /// Safety's look at the response head (`empty`: it has no body).
    pub(super) fn inspect_head(
        &mut self,
        parts: &mut http::response::Parts,
        empty: bool,
        now: Instant,
    ) -> Inspect {
        let (l, call) = (&self.listener, self.llm.is_call());
        let inspect = match &l.safety {
            Some(ls) => self.safety.head(ls, l.role, call, parts, empty, now),
            None => Inspect::Pass,
        };
        match inspect {
            Inspect::Pass | Inspect::ReadWhole if self.mcp.reads_whole(l.mcp.as_ref()) => {
                Inspect::ReadWhole
            }
            other => other,
        }
    }

    /// A body read whole, as the client gets it (an MCP tool list with changed tools taken out
    /// under `block`).
    pub(super) fn whole_body(&mut self, body: Bytes) -> Bytes {
        let lm = self.listener.mcp.as_ref();
        self.mcp.rewrite(lm, self.hop, body, Instant::now())
    }

    /// A chunk of the response body arrived at `now`: shown to the LLM reader, the cache and the
    /// safety check. `true` when safety holds it back.
    pub(super) fn data(&mut self, data: &Bytes, now: Instant) -> bool {
        self.llm.data(data, now);
        // What safety holds back reaches the MCP reader as it is let through (`next_held`); a
        // list held whole is read as it comes (nothing goes out before the decision).
        if !self.safety.holds() || self.mcp.held_whole() {
            self.mcp
                .data(self.listener.mcp.as_ref(), self.hop, data, now);
        }
        self.cache.data(data);
        self.correctness.data(data);
        let ls = self.listener.safety.as_ref();
        self.safety.data(ls, data, now)
    }

    /// Whether safety holds the response back chunk by chunk (and may change it).
    pub(super) fn holds(&self) -> bool {
        self.safety.holds()
    }

    /// What safety found that blocks the response.
    pub(super) fn blocked(&self) -> Option<Source> {
        self.safety.blocked()
    }

    /// What a stream held back has to send now. A blocked stream did not end as the upstream
    /// sent it: what was held back is in no one's cache.
    pub(super) fn next_held(&mut self) -> Option<Held> {
        let held = self.safety.next_held(self.listener.safety.as_ref())?;
        let now = Instant::now();
        match &held {
            Held::Clean(bytes) => {
                self.mcp
                    .data(self.listener.mcp.as_ref(), self.hop, bytes, now);
                self.first_byte(now);
            }
            Held::Blocked(_) => {
                self.cache.discard();
                self.mcp.local_answer(None, true);
            }
        }
        Some(held)
    }

    /// The upstream body ended; what safety holds back is judged to its end.
    pub(super) fn upstream_ended(&mut self, now: Instant) {
        self.safety
            .upstream_ended(self.listener.safety.as_ref(), now);
    }

    /// A body read whole ended: judged to its end; what blocks it.
    pub(super) fn read_ended(&mut self, now: Instant) -> Option<Source> {
        self.safety.read_ended(self.listener.safety.as_ref(), now)
    }

    /// A body read whole is too large to be decided on in bounded memory: whether safety blocks
    /// it (else an MCP tool list held for a check, which is refused).
    pub(super) fn read_too_large(&mut self, now: Instant) -> bool {
        let lm = self.listener.mcp.as_ref();
        self.mcp.too_large(lm, self.hop);
        self.safety.too_large(self.listener.safety.as_ref(), now)
    }

    /// A held MCP stream has every answer: the rest of it need not be read.
    pub(super) fn read_enough(&self) -> bool {
        self.mcp.read_enough()
    }

    /// Reading the body whole failed as `outcome` says: nothing of it was said.
    pub(super) fn read_failed(&mut self, outcome: Option<UpstreamOutcome>) {
        if outcome.is_some() {
            self.outcome = outcome;
        }
        self.safety.discard();
    }

    /// The sidecar answers `err` itself, with `status`, under the upstream the request was with.
    /// Returns that upstream.
    pub(super) fn local_answer(&mut self, err: &ProxyError, status: http::StatusCode) -> &Upstream {
        // The sidecar's answer is no upstream's: whatever of one was kept for the cache (a body
        // read whole that broke off, a blocked one) goes.
        self.cache.discard();
        self.status = StatusClass::of(status);
        self.cause = err.cause(self.listener.role);
        let lc = self.listener.cascade.as_ref();
        self.cascade.local_answer(lc, err);
        self.correctness.local_answer();
        let blocked = matches!(err, ProxyError::SafetyBlocked { .. });
        self.mcp.local_answer(err.outcome(), blocked);
        self.cascade.answered(lc, self.cause);
        if err.refused_before_agent() {
            // No task starts or fails on a request the agent never saw.
            let tasks = self.listener.tasks.clone();
            self.task.no_response(tasks.as_deref(), self.received);
        }
        if matches!(
            err,
            ProxyError::DeadlineExceeded(DeadlineWhen::Call | DeadlineWhen::Fallback)
        ) {
            // Refused at its deadline before reaching the upstream: no LLM call was made.
            self.llm.cancel();
        }
        self.trace.local_answer(status, Some(err.error_type()));
        // A blocked answer came from an upstream that answered: its attempt counts as it went.
        if !matches!(err, ProxyError::SafetyBlocked { .. }) {
            self.outcome = err.outcome();
        }
        let route = &self.listener.route;
        route.chain.get(self.hop).unwrap_or(&route.chain[0])
    }

    /// The sidecar answers `status` itself, no upstream asked: an MCP guard's JSON-RPC answer
    /// (`block`, with `error`), or the route's cache.
    pub(super) fn answered_here(&mut self, status: http::StatusCode, error: Option<&'static str>) {
        self.status = StatusClass::of(status);
        self.trace.local_answer(status, error);
        self.cause = Cause::None;
        self.outcome = None;
    }

    /// The route's cache answers `status`: no provider was called.
    pub(super) fn answered_by_cache(&mut self, status: http::StatusCode) {
        self.hop = self.listener.route.chain.len();
        self.llm.cancel();
        self.answered_here(status, None);
    }

    /// The stream failed after the head went out: the request is charged to whoever is behind
    /// the listener, the attempt to the upstream.
    pub(super) fn stream_failed(&mut self, outcome: UpstreamOutcome) {
        self.cause = Cause::upstream_failure(self.listener.role);
        self.outcome = Some(outcome);
    }

    /// A response (its head) is made: from now on, a request dropped before its end was cut.
    pub(super) fn answered(&mut self) {
        if self.stage == Stage::Unanswered {
            self.stage = Stage::Answered;
        }
    }

    pub(super) fn first_byte(&mut self, now: Instant) {
        if !self.first_byte_sent {
            self.first_byte_sent = true;
            self.listener
                .metrics(self.hop)
                .time_to_first_byte
                .record(now.duration_since(self.received).as_secs_f64());
        }
    }

    /// Whether the request has been counted already.
    pub(super) fn counted(&self) -> bool {
        self.stage == Stage::Counted
    }

    /// The body ended cleanly: an empty body's "first byte" is its end.
    pub(super) fn finish(&mut self, now: Instant) {
        if self.stage != Stage::Counted {
            self.first_byte(now);
            self.count(now, true);
        }
    }

    /// The body failed, or the client left, before its end: time to first byte only if a byte
    /// went out.
    pub(super) fn cut(&mut self, now: Instant) {
        if self.stage != Stage::Counted {
            self.count(now, false);
        }
    }
}

mod count;
