//! The response body the client reads: upstream bytes passed through frame by frame (never
//! buffered), or a body the proxy made. It carries the request's accounting, so the request is
//! counted exactly once — when the last byte has gone out, or when the client goes away — and it
//! enforces the `idle` and `total` timeouts while the upstream streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::cache::CacheFill;
use super::llm::LlmCall;
use super::safety::{SafetyCheck, Source};
use super::state::ListenerState;
use crate::sli::{Cause, StatusClass, UpstreamOutcome};
use crate::telemetry::trace::RequestTrace;
use crate::upstream::{Lease, Outcome, Ticket, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream body stalled longer than the idle timeout")]
    Idle,
    #[error("upstream exchange ran past the total timeout")]
    Total,
}

/// What one request will be counted as, settled when its body ends.
pub struct Accounting {
    pub listener: Arc<ListenerState>,
    /// The place in the route's chain of the upstream the request is with (past its end: the
    /// cache).
    pub hop: usize,
    pub received: Instant,
    pub status: StatusClass,
    pub cause: Cause,
    /// The upstream attempt's outcome so far; `None` when no attempt is to be counted.
    pub outcome: Option<UpstreamOutcome>,
    pub first_byte_sent: bool,
    /// The LLM call this request is, on the `llm` role.
    pub llm: Option<Box<LlmCall>>,
    /// The circuit breaker's admission of the attempt: fed its outcome when it is counted.
    pub breaker: Option<BreakerTicket>,
    /// The response, kept for the route's cache until it ends cleanly.
    pub cache_fill: Option<Box<CacheFill>>,
    /// The response's safety inspection.
    pub safety: Option<Box<SafetyCheck>>,
    /// The task the request belongs to (`agent` role), and the agent's verdict on it in the
    /// response head.
    pub task: Option<super::tasks::TaskRef>,
    pub task_verdict: Option<crate::sli::tasks::Verdict>,
    /// The task of an LLM call the loop guard counted (`llm` role): told how the call ended.
    pub loop_key: Option<u64>,
    /// Where the request came from, for the kill switch (see
    /// [`super::safety::ListenerSafety::origin`]; 0 where there is none).
    pub origin: u64,
    /// The attempt's upload, where the kill switch must tell echoes of the request apart.
    pub request: Option<Arc<super::Upload>>,
    /// Keeps the client's connection busy until the request is counted.
    pub in_flight: Option<super::connections::InFlight>,
    /// The request's span and its attempts' (`otlp.traces`).
    pub trace: Option<Box<RequestTrace>>,
}

/// A breaker admission and what the response head said about the call.
pub struct BreakerTicket {
    pub ticket: Ticket,
    pub slow: bool,
    pub retry_after: Option<std::time::Duration>,
    /// A 429 is the upstream failing (a provider out of capacity), not its answer to one client
    /// (an agent rate-limiting a user): `false` on the `agent` role, where one client's 429 must
    /// not open the circuit for everyone.
    pub throttling_fails: bool,
}

impl BreakerTicket {
    /// The call as the breaker judges it, given the attempt's outcome.
    pub fn outcome(&self, attempt: UpstreamOutcome) -> Outcome {
        let throttled = attempt == UpstreamOutcome::TooManyRequests;
        Outcome {
            failed: attempt != UpstreamOutcome::Ok && (self.throttling_fails || !throttled),
            slow: self.slow,
            // Only a 429's Retry-After opens the circuit for that long.
            retry_after: self
                .retry_after
                .filter(|_| throttled && self.throttling_fails),
        }
    }
}

impl Accounting {
    /// A request just received, counted as abandoned (4xx, no cause) until it is answered.
    pub fn new(listener: Arc<ListenerState>, received: Instant) -> Accounting {
        Accounting {
            listener,
            hop: 0,
            received,
            status: StatusClass::ClientError,
            cause: Cause::None,
            outcome: None,
            first_byte_sent: false,
            llm: None,
            breaker: None,
            cache_fill: None,
            safety: None,
            task: None,
            task_verdict: None,
            loop_key: None,
            origin: 0,
            request: None,
            in_flight: None,
            trace: None,
        }
    }

    /// A request refused before it is anyone's (the agent is disabled), keeping its connection
    /// busy (`in_flight`) until it is counted; its span started (`otlp.traces`).
    pub fn refused<B>(
        listener: Arc<ListenerState>,
        req: &http::Request<B>,
        received: Instant,
        in_flight: super::connections::InFlight,
    ) -> Accounting {
        let mut a = Accounting::new(listener, received);
        a.in_flight = Some(in_flight);
        a.start_trace(req);
        a
    }

    fn start_trace<B>(&mut self, req: &http::Request<B>) {
        if let Some(tracer) = &self.listener.tracer {
            let (method, path) = (req.method(), req.uri().path());
            self.trace = Some(tracer.start(method, path, req.headers(), self.received));
        }
    }

    /// A request just received from `client_ip`, keeping its connection busy (`in_flight`) until
    /// it is counted: its span started (`otlp.traces`), its task looked up (`agent` role), and its
    /// origin noted for the kill switch.
    pub fn begin<B>(
        listener: Arc<ListenerState>,
        req: &http::Request<B>,
        client_ip: &http::HeaderValue,
        received: Instant,
        in_flight: super::connections::InFlight,
    ) -> Accounting {
        let headers = req.headers();
        let mut a = Accounting::new(listener, received);
        a.in_flight = Some(in_flight);
        a.start_trace(req);
        if let Some(tasks) = &a.listener.tasks {
            a.task = Some(tasks.begin(headers, received));
        }
        if let Some(ls) = &a.listener.safety {
            a.origin = ls.origin(headers, client_ip);
        }
        a
    }

    /// The request goes to the upstream that admitted it; its breaker ticket is settled with
    /// the request from now on. Returns its place in the chain.
    pub fn admitted(&mut self, admission: super::fallback::Admitted) -> usize {
        self.hop = admission.hop;
        let throttling_fails = self.listener.role == crate::config::Role::Llm;
        self.breaker = admission.ticket.map(|ticket| BreakerTicket {
            ticket,
            slow: false,
            retry_after: None,
            throttling_fails,
        });
        self.hop
    }

    /// An attempt's request goes out now with its body's `upload` and these `headers`: its span
    /// begins (the upstream gets the trace context), the LLM call reads the request's facts from
    /// the upload, and on an `agent` listener the request waits on the agent from when the
    /// upload is the agent's turn.
    pub fn sending(
        &mut self,
        upload: &Option<Arc<super::Upload>>,
        headers: &mut http::HeaderMap,
        now: Instant,
    ) {
        if let Some(trace) = self.trace.as_mut() {
            trace.attempt(self.hop, headers, now);
        }
        if let Some(call) = self.llm.as_mut() {
            call.set_upload(upload.clone());
        }
        if self.listener.safety.as_ref().is_some_and(|ls| ls.kills()) {
            self.request = upload.clone();
        }
        if let (Some(tasks), Some(task)) = (&self.listener.tasks, self.task.as_mut()) {
            let turn = upload
                .clone()
                .map(|u| u as Arc<dyn crate::sli::liveness::AgentsTurn>);
            tasks.sending(task, now, turn);
        }
    }

    /// The upstream the request is with; `None` for the cache.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.listener.route.chain.get(self.hop)
    }

    /// The attempt with the current upstream (`upstream`) failed as `result` says, and the
    /// request moves on: the attempt is counted now, for that upstream (its LLM call, its
    /// breaker, its outcome, its span).
    pub fn attempt_failed(
        &mut self,
        result: &Result<(http::Response<Incoming>, Option<Lease>), super::ProxyError>,
        upstream: &Upstream,
        now: Instant,
    ) {
        let (outcome, status, code) = match result {
            Ok((response, _)) => {
                if let Some(t) = self.breaker.as_mut() {
                    t.retry_after = super::attempt::retry_after(response.headers());
                }
                let code = response.status();
                let outcome = UpstreamOutcome::of_status(code);
                (outcome, StatusClass::of(code), Some(code.as_u16()))
            }
            Err(err) => {
                err.log(&upstream.log_limit);
                let outcome = err.outcome().unwrap_or(UpstreamOutcome::Reset);
                (outcome, StatusClass::of(err.status()), None)
            }
        };
        if let Some(call) = self.llm.take() {
            call.finish(false, status, Some(outcome), now, self.trace.as_deref_mut());
        }
        if let Some(trace) = self.trace.as_mut() {
            trace.close_attempt(Some(outcome.as_str()), code, now);
        }
        // A failed attempt's body never reaches the client: nothing was said.
        self.safety = None;
        let Some(upstream) = self.listener.route.chain.get(self.hop) else {
            return;
        };
        if let (Some(t), Some(b)) = (self.breaker.take(), &upstream.breaker) {
            b.record(t.ticket, t.outcome(outcome), now);
        }
        upstream.metrics.count(outcome);
    }

    fn first_byte(&mut self, now: Instant) {
        if !self.first_byte_sent {
            self.first_byte_sent = true;
            self.listener
                .metrics(self.hop)
                .time_to_first_byte
                .record(now.duration_since(self.received).as_secs_f64());
        }
    }

    /// The body ended cleanly: an empty body's "first byte" is its end.
    fn finish(mut self, now: Instant) {
        self.first_byte(now);
        self.count(now, true);
    }

    /// The body failed, or the client left, before its end: time to first byte only if a byte
    /// went out.
    fn cut(self, now: Instant) {
        self.count(now, false);
    }

    /// The client went away before any response: nothing was sent, so no time to first byte.
    pub fn abandoned(mut self, now: Instant) {
        if let (Some(task), Some(tasks)) = (self.task.take(), &self.listener.tasks) {
            tasks.no_response(task, now);
        }
        self.count(now, false);
    }

    fn count(mut self, now: Instant, complete: bool) {
        let end = self.llm.take().map(|call| {
            let trace = self.trace.as_deref_mut();
            call.finish(complete, self.status, self.outcome, now, trace)
        });
        if end.as_ref().is_some_and(|e| e.provider_error) {
            // A 200 whose stream (or body) says the provider failed: a failed request, for the
            // SLIs and the breaker alike, as a 5xx would have been. (The client got the status
            // and the provider's error event as they were.)
            self.status = StatusClass::ServerError;
            self.cause = Cause::upstream_failure(self.listener.role);
            self.outcome = Some(UpstreamOutcome::ServerError);
        } else if complete {
            // What ended cleanly, and said no error, is worth keeping.
            if let (Some(fill), Some(cache)) = (self.cache_fill.take(), &self.listener.route.cache)
            {
                fill.store(cache, now);
            }
        }
        if let (Some(key), Some(guard)) = (self.loop_key, &self.listener.loop_guard) {
            guard.llm_ended(key, end.as_ref(), now);
        }
        let filtered = end.is_some_and(|e| e.filtered);
        if let Some(ls) = &self.listener.safety {
            if let Some(check) = self.safety.as_mut() {
                check.finish(ls, complete, now);
                if filtered {
                    check.count(ls, Source::ContentFilter, None, now);
                }
                ls.responses.increment(1);
            } else if filtered {
                // Not readable as text (compressed), but the provider said it filtered it.
                ls.responses.increment(1);
                let v = super::safety::Violation {
                    source: Source::ContentFilter,
                    blocked: false,
                    at: None,
                    origin: self.origin,
                    echo: false,
                };
                ls.violation(&v, now);
            }
        }
        if let (Some(task), Some(tasks)) = (self.task.take(), &self.listener.tasks) {
            tasks.end(task, self.status, self.task_verdict, now);
        }
        let l = &self.listener;
        let upstream = l.route.chain.get(self.hop);
        if let (Some(t), Some(b)) = (
            self.breaker.take(),
            upstream.and_then(|u| u.breaker.as_ref()),
        ) {
            match self.outcome {
                // No attempt to judge (the client left or broke its request): a probe's slot
                // goes back.
                None => b.cancel(t.ticket),
                Some(o) => b.record(t.ticket, t.outcome(o), now),
            }
        }
        let metrics = l.metrics(self.hop);
        metrics.count_request(self.status, self.cause);
        metrics
            .response_seconds
            .record(now.duration_since(self.received).as_secs_f64());
        if let (Some(outcome), Some(u)) = (self.outcome, upstream) {
            u.metrics.count(outcome);
        }
        if let Some(trace) = self.trace.take() {
            self.end_trace(trace, now);
        }
    }

    /// The request's spans end with it (and go to export, if sampled or failed).
    fn end_trace(&self, trace: Box<RequestTrace>, now: Instant) {
        let failed = self.status == StatusClass::ServerError || self.cause != Cause::None;
        let outcome = self.outcome.map(UpstreamOutcome::as_str);
        trace.finish(self.hop, outcome, failed, now);
    }
}

/// Deadlines of a streaming upstream body.
struct Stream {
    body: Incoming,
    /// The HTTP/1.1 connection the body arrives on: back to the pool once the body ended cleanly.
    lease: Option<Lease>,
    idle: std::time::Duration,
    total_deadline: Instant,
    /// When the body started waiting for the upstream's next chunk; `None` while chunks flow.
    /// Measured from the first wait, not from the last chunk, so that a client slow to read
    /// (hyper not polling) is never taken for a stalled upstream.
    waiting_since: Option<Instant>,
    /// Created the first time the body has to wait, then re-armed only when it fires: a busy
    /// stream does not touch the timer wheel per chunk.
    timer: Option<Pin<Box<Sleep>>>,
    /// The upstream body has ended; what safety held back is still going out.
    ended: bool,
}

enum Inner {
    Upstream(Stream),
    Local(Option<Bytes>),
}

pub struct ProxyBody {
    inner: Inner,
    account: Option<Accounting>,
}

impl ProxyBody {
    /// The upstream's body.
    pub fn upstream(
        body: Incoming,
        lease: Option<Lease>,
        account: Option<Accounting>,
        idle: std::time::Duration,
        total_deadline: Instant,
    ) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream(Stream {
                body,
                lease,
                idle,
                total_deadline,
                waiting_since: None,
                timer: None,
                ended: false,
            }),
            account,
        }
    }

    /// A chunk safety let through, or the event that ends a blocked stream: `None` when there
    /// is nothing to send from the hold now.
    fn next_held(&mut self) -> Option<Bytes> {
        let a = self.account.as_mut()?;
        let check = a.safety.as_mut()?;
        if !check.holds() {
            return None;
        }
        if let Some(bytes) = check.pop_ready() {
            a.first_byte(Instant::now());
            return Some(bytes);
        }
        let source = check.take_block()?;
        // Blocked: the error event once, then the end; the rest of the upstream body is not
        // read (its connection goes).
        let event = super::safety::blocked_event(
            a.listener
                .safety
                .as_ref()
                .map_or("unknown", |ls| ls.name(source)),
        );
        // A blocked stream did not end as the upstream sent it: counted as cut, and never
        // cached (what was held back is in no one's cache).
        a.cache_fill = None;
        self.inner = Inner::Local(None);
        self.settle_cut();
        Some(event)
    }

    /// Whether safety holds this response back chunk by chunk (and may change it).
    fn holds(&self) -> bool {
        self.account
            .as_ref()
            .is_some_and(|a| a.safety.as_ref().is_some_and(|c| c.holds()))
    }

    pub fn local(bytes: Bytes, account: Option<Accounting>) -> ProxyBody {
        ProxyBody {
            inner: Inner::Local(Some(bytes).filter(|b| !b.is_empty())),
            account,
        }
    }

    fn settle(&mut self) {
        if let Some(a) = self.account.take() {
            a.finish(Instant::now());
        }
    }

    fn settle_cut(&mut self) {
        if let Some(a) = self.account.take() {
            a.cut(Instant::now());
        }
    }

    /// The stream failed after the head went out: the client sees a cut body, the request is
    /// charged to whoever is behind the listener, the attempt to the upstream.
    fn fail(&mut self, outcome: UpstreamOutcome) {
        if let Some(a) = self.account.as_mut() {
            a.cause = Cause::upstream_failure(a.listener.role);
            a.outcome = Some(outcome);
        }
        self.settle_cut();
    }
}

impl Stream {
    /// `Ready` when a deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let waiting_since = *self.waiting_since.get_or_insert_with(Instant::now);
        loop {
            let idle_deadline = waiting_since + self.idle;
            let deadline = idle_deadline.min(self.total_deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(if deadline == self.total_deadline {
                    BodyError::Total
                } else {
                    BodyError::Idle
                });
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Local(bytes) => {
                let frame = bytes.take().map(|b| Ok(Frame::data(b)));
                if frame.is_none() {
                    this.settle();
                } else if let Some(a) = this.account.as_mut() {
                    a.first_byte(Instant::now());
                }
                Poll::Ready(frame)
            }
            Inner::Upstream(_) => loop {
                // What safety let through (or the event that ends a blocked stream) first.
                if let Some(bytes) = this.next_held() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                let Inner::Upstream(stream) = &mut this.inner else {
                    return Poll::Ready(None);
                };
                if stream.ended {
                    this.settle();
                    return Poll::Ready(None);
                }
                match Pin::new(&mut stream.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        stream.waiting_since = None;
                        let mut held = false;
                        if frame.is_data() {
                            let now = Instant::now();
                            if now >= stream.total_deadline {
                                log_stream_failure(&this.account, &BodyError::Total);
                                this.fail(UpstreamOutcome::Timeout);
                                this.inner = Inner::Local(None);
                                return Poll::Ready(Some(Err(BodyError::Total)));
                            }
                            if let Some(a) = this.account.as_mut() {
                                if let Some(data) = frame.data_ref() {
                                    if let Some(call) = a.llm.as_mut() {
                                        call.chunk(data, now);
                                    }
                                    if a.cache_fill.as_mut().is_some_and(|f| !f.push(data)) {
                                        a.cache_fill = None;
                                    }
                                    if let (Some(check), Some(ls)) =
                                        (a.safety.as_mut(), a.listener.safety.as_ref())
                                    {
                                        check.feed(ls, data, now);
                                        held = check.holds();
                                    }
                                }
                                if !held {
                                    a.first_byte(now);
                                }
                            }
                        }
                        if held {
                            continue;
                        }
                        if this.holds() && !frame.is_data() {
                            // Trailers of a stream held back would overtake its held chunks:
                            // they are dropped (SSE streams carry none in practice).
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        log_stream_failure(&this.account, &e);
                        this.fail(UpstreamOutcome::Reset);
                        return Poll::Ready(Some(Err(BodyError::Upstream(e))));
                    }
                    Poll::Ready(None) => {
                        if let Some(lease) = stream.lease.take() {
                            lease.release();
                        }
                        stream.ended = true;
                        if let Some(a) = this.account.as_mut() {
                            if let (Some(check), Some(ls)) =
                                (a.safety.as_mut(), a.listener.safety.as_ref())
                            {
                                if check.holds() {
                                    check.finish(ls, true, Instant::now());
                                }
                            }
                        }
                        continue;
                    }
                    Poll::Pending => {
                        let err = ready!(stream.poll_deadline(cx));
                        log_stream_failure(&this.account, &err);
                        this.fail(UpstreamOutcome::Timeout);
                        // The body is finished: later polls must not touch the upstream again.
                        this.inner = Inner::Local(None);
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(_) if self.holds() => false,
            Inner::Upstream(s) => s.body.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // A stream safety holds back may come out decoded, or end early with the sidecar's
            // error event: its length is not the upstream's. hyper frames a response by this
            // hint where no `Content-Length` says otherwise, so it must not claim the upstream's.
            Inner::Upstream(_) if self.holds() => SizeHint::default(),
            Inner::Upstream(s) => s.body.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

fn log_stream_failure(account: &Option<Accounting>, error: &dyn std::fmt::Display) {
    if let Some(upstream) = account.as_ref().and_then(Accounting::upstream) {
        if let Some(suppressed) = upstream.log_limit.allow() {
            tracing::warn!(upstream = %upstream.name, %error, suppressed, "upstream stream ended early");
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the last poll may never come:
        // a connection whose body is complete still goes back to the pool.
        if let Inner::Upstream(stream) = &mut self.inner {
            if stream.body.is_end_stream() {
                if let Some(lease) = stream.lease.take() {
                    lease.release();
                }
            }
        }
        // A body dropped before its end: the client went away (or hyper, having seen the end,
        // stopped polling). The request is still counted, once.
        if self.is_end_stream() {
            self.settle();
        } else {
            self.settle_cut();
        }
    }
}
