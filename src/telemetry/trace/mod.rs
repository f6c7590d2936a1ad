//! A span per request (`sloguard.request`, kind server) with a child per upstream attempt
//! (`sloguard.attempt`, kind client), continuing the client's W3C trace context and handing it
//! on to the upstream.
//!
//! The request path keeps only plain facts (ids, instants, which upstream, the outcome) in one
//! allocation, the [`RequestTrace`]; when the request is counted, a trace that is exported
//! (sampled, or failed) goes as it is into a bounded queue with a non-blocking `try_send` — a
//! full queue drops it (its spans counted in `sloguard_otlp_dropped_total{signal="traces"}`),
//! never waits — and the spans and their attributes are built from it on the export thread
//! ([`RequestTrace::into_spans`]). The exporter is woken only when a batch is ready (or by its
//! own timer), not for each request: waking another thread costs a system call. Sampling is
//! parent-based: a client's `traceparent` decides (its `sampled` flag); a request without one is
//! sampled at `traces.sample_ratio`, by its trace id (so every sidecar of a trace decides alike).
//! A failed request (a 5xx, a proxy error, a provider error inside a 200) is exported even when
//! not sampled: the trace of a failure is the one an SRE looks for.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use metrics::Counter;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

pub const REQUEST_SPAN: &str = "sloguard.request";
pub const ATTEMPT_SPAN: &str = "sloguard.attempt";
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest model name put on a span (the request said it; spans are not metrics, but a
/// megabyte of "model" is nobody's name).
const MAX_MODEL: usize = 256;
/// Longest `url.path` put on a span.
const MAX_PATH: usize = 1024;

/// What starts request traces and queues them for export: one per sidecar.
#[derive(Debug)]
pub struct Tracer {
    /// A trace id whose last 8 bytes, as a number, fall below this is sampled.
    threshold: u64,
    always: bool,
    queue: mpsc::Sender<Box<RequestTrace>>,
    /// Wakes the exporter once `batch` traces are queued.
    wake: Arc<Notify>,
    batch: usize,
    dropped: Counter,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
}

impl Tracer {
    /// `queue`: where finished traces go for export, `wake` told when `batch` of them wait;
    /// `dropped`: counts the spans it had no room for.
    pub fn new(
        sample_ratio: f64,
        queue: mpsc::Sender<Box<RequestTrace>>,
        wake: Arc<Notify>,
        batch: usize,
        dropped: Counter,
    ) -> Tracer {
        let ratio = sample_ratio.clamp(0.0, 1.0);
        Tracer {
            // The same arithmetic as OpenTelemetry's TraceIdRatioBased sampler.
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
            queue,
            wake,
            batch,
            dropped,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("sloguard")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    fn sampled(&self, trace_id: TraceId) -> bool {
        let bytes = trace_id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        self.always || (u64::from_be_bytes(low) >> 1) < self.threshold
    }

    fn send(&self, trace: Box<RequestTrace>) {
        let spans = 1 + trace.attempts.len() as u64;
        if self.queue.try_send(trace).is_err() {
            self.dropped.increment(spans);
        } else if self.queue.max_capacity() - self.queue.capacity() >= self.batch {
            self.wake.notify_one();
        }
    }
}

/// The names a listener's spans carry: the listener's, and its route's upstreams' by hop.
#[derive(Debug)]
pub struct SpanNames {
    pub listener: String,
    pub upstreams: Vec<String>,
}

/// What a listener starts its requests' traces with.
#[derive(Debug, Clone)]
pub struct ListenerTracer {
    tracer: Arc<Tracer>,
    names: Arc<SpanNames>,
}

impl ListenerTracer {
    pub fn new(tracer: Arc<Tracer>, names: SpanNames) -> ListenerTracer {
        ListenerTracer {
            tracer,
            names: Arc::new(names),
        }
    }

    /// The trace of a request just received: the client's context continued, or a new one.
    pub fn start(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        received: Instant,
    ) -> Box<RequestTrace> {
        let tracer = &self.tracer;
        let parent = single(headers, &TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, parent_span, sampled) = match parent {
            Some(p) => (p.trace_id, p.span_id, p.sampled),
            None => {
                let id = tracer.ids.new_trace_id();
                (id, SpanId::INVALID, tracer.sampled(id))
            }
        };
        let mut path = path.to_owned();
        crate::truncate_at_char(&mut path, MAX_PATH);
        Box::new(RequestTrace {
            tracer: tracer.clone(),
            names: self.names.clone(),
            trace_id,
            span_id: tracer.ids.new_span_id(),
            parent: parent_span,
            sampled,
            start: SystemTime::now(),
            received,
            end: received,
            method: method.clone(),
            path,
            status_code: None,
            error: None,
            hop: 0,
            attempts: Vec::new(),
            mcp: Vec::new(),
            mcp_version: None,
        })
    }
}

/// The value of `name` when the request has exactly one (two `traceparent`s are no context).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    all.next().filter(|_| all.next().is_none())
}

/// A W3C trace context's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Lowercase hex digits (1 to 32) as a number, else `None`; byte by byte (`from_str_radix` on a
/// `u128` costs ten times as much, on every request with a `traceparent`).
fn hex(bytes: &[u8]) -> Option<u128> {
    if bytes.is_empty() || bytes.len() > 32 {
        return None;
    }
    bytes.iter().try_fold(0u128, |value, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(digit))
    })
}

/// Parses a `traceparent` as W3C Trace Context level 1 reads it: `00-` 32 hex trace id `-` 16 hex
/// parent id `-` 2 hex flags, lowercase, neither id all zeros; a later version may carry more
/// after a `-`; version `ff` is invalid. `None` for anything else: the request starts a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = hex(&v[3..35])?;
    let span = u64::try_from(hex(&v[36..52])?).ok()?;
    let flags = hex(&v[53..55])?;
    if trace == 0 || span == 0 {
        return None;
    }
    Some(Parent {
        trace_id: TraceId::from(trace),
        span_id: SpanId::from(span),
        sampled: flags & 1 == 1,
    })
}

/// The `traceparent` an upstream gets: this trace, the attempt's span as its parent.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 55];
    let flags = if sampled { "01" } else { "00" };
    // 2 + 1 + 32 + 1 + 16 + 1 + 2 bytes: exactly the buffer.
    let _ = write!(&mut buf[..], "00-{trace_id}-{span_id}-{flags}");
    // Hex digits and dashes only.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What an LLM call said, as its span carries it (GenAI semantic conventions).
#[derive(Debug, Clone, Default)]
pub struct GenAiFacts {
    pub operation: &'static str,
    pub provider: &'static str,
    pub model: Option<String>,
    pub finish_reasons: Vec<&'static str>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl GenAiFacts {
    pub fn new(operation: &'static str, provider: &'static str, model: Option<&str>) -> Self {
        let model = model.map(|m| {
            let mut m = m.to_owned();
            crate::truncate_at_char(&mut m, MAX_MODEL);
            m
        });
        GenAiFacts {
            operation,
            provider,
            model,
            ..GenAiFacts::default()
        }
    }

    fn attributes(&self, out: &mut Vec<KeyValue>) {
        out.push(KeyValue::new("gen_ai.operation.name", self.operation));
        out.push(KeyValue::new("gen_ai.provider.name", self.provider));
        if let Some(m) = &self.model {
            out.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if !self.finish_reasons.is_empty() {
            let reasons = self
                .finish_reasons
                .iter()
                .map(|r| opentelemetry::StringValue::from(*r))
                .collect();
            out.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(opentelemetry::Array::String(reasons)),
            ));
        }
        if let Some(n) = self.input_tokens {
            out.push(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
        }
        if let Some(n) = self.output_tokens {
            out.push(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
        }
    }
}

/// One attempt with one upstream.
#[derive(Debug)]
struct AttemptTrace {
    span_id: SpanId,
    /// Its place in the route's chain.
    hop: usize,
    start: Instant,
    end: Option<Instant>,
    status_code: Option<u16>,
    /// The attempt's outcome when it was not `ok` (`timeout`, `connect_error`, `5xx`, ...).
    error: Option<&'static str>,
    genai: Option<Box<GenAiFacts>>,
}

/// The trace of one request, from arrival to its count; turned into spans on the export thread.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    names: Arc<SpanNames>,
    trace_id: TraceId,
    span_id: SpanId,
    /// The client's span; invalid for a new trace.
    parent: SpanId,
    sampled: bool,
    start: SystemTime,
    received: Instant,
    end: Instant,
    method: Method,
    path: String,
    status_code: Option<u16>,
    error: Option<Cow<'static, str>>,
    /// Where the request was answered (past the chain: the cache).
    hop: usize,
    attempts: Vec<AttemptTrace>,
    /// The MCP operations the request carried (`mcp` listeners).
    mcp: Vec<McpFacts>,
    mcp_version: Option<Box<str>>,
}

impl RequestTrace {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// An attempt with the upstream at `hop` goes out now with `headers`: its span begins, and
    /// the upstream gets this trace with the attempt as parent.
    pub fn attempt(&mut self, hop: usize, headers: &mut HeaderMap, now: Instant) {
        self.close_attempt(None, None, now);
        let span_id = self.tracer.ids.new_span_id();
        headers.insert(
            TRACEPARENT.clone(),
            traceparent(self.trace_id, span_id, self.sampled),
        );
        self.attempts.push(AttemptTrace {
            span_id,
            hop,
            start: now,
            end: None,
            status_code: None,
            error: None,
            genai: None,
        });
    }

    /// The open attempt got a response head with `status`.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.status_code = Some(status);
        }
        self.status_code = Some(status);
    }

    /// The open attempt ended (`error`: its outcome, when it failed).
    pub fn close_attempt(
        &mut self,
        error: Option<&'static str>,
        status: Option<u16>,
        now: Instant,
    ) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.end = Some(now);
            a.error = a.error.or(error);
            a.status_code = a.status_code.or(status);
        }
    }

    /// The LLM call of the open (or last) attempt ended with these facts.
    pub fn llm_call(&mut self, facts: GenAiFacts) {
        if let Some(a) = self.attempts.last_mut() {
            a.genai = Some(Box::new(facts));
        }
    }

    /// The client got `status` from the sidecar itself (an error of type `error`).
    pub fn local_answer(&mut self, status: u16, error: Option<&'static str>) {
        self.status_code = Some(status);
        if let Some(e) = error {
            self.error = Some(Cow::Borrowed(e));
        }
    }

    /// The request was counted, answered at `hop` (the attempt's outcome `attempt_outcome`;
    /// `failed`: a failure for the SLIs): its trace goes to the export queue if sampled or failed.
    pub fn finish(
        mut self: Box<Self>,
        hop: usize,
        attempt_outcome: Option<&'static str>,
        failed: bool,
        now: Instant,
    ) {
        self.close_attempt(attempt_outcome.filter(|o| *o != "ok"), None, now);
        if failed && self.error.is_none() {
            self.error = Some(match self.status_code {
                Some(code) if code >= 500 => Cow::Owned(code.to_string()),
                _ => Cow::Borrowed(attempt_outcome.unwrap_or("error")),
            });
        }
        if !(self.sampled || self.error.is_some()) {
            return;
        }
        self.hop = hop;
        self.end = now;
        let tracer = self.tracer.clone();
        tracer.send(self);
    }

    /// The request span and one span per attempt (the request's last, for the GenAI attributes
    /// of the call that answered), appended to `out`. Run on the export thread.
    pub fn into_spans(self: Box<Self>, out: &mut Vec<SpanData>) {
        for a in &self.attempts {
            out.push(self.attempt_span(a));
        }
        for m in &self.mcp {
            out.push(self.mcp_span(m));
        }
        out.push(self.request_span());
    }

    /// An attempt's client span, a child of the request's.
    fn attempt_span(&self, a: &AttemptTrace) -> SpanData {
        let mut attrs = Vec::with_capacity(10);
        attrs.push(KeyValue::new(
            "sloguard.upstream",
            self.upstream_name(a.hop),
        ));
        if let Some(code) = a.status_code {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        if let Some(e) = a.error {
            attrs.push(KeyValue::new("error.type", e));
        }
        if let Some(g) = &a.genai {
            g.attributes(&mut attrs);
        }
        SpanData {
            span_context: self.span_context(a.span_id),
            parent_span_id: self.span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed(ATTEMPT_SPAN),
            start_time: self.wall_time(a.start),
            end_time: self.wall_time(a.end.unwrap_or(self.end)),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match a.error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }

    /// The request's server span, a child of the client's when it sent one.
    fn request_span(&self) -> SpanData {
        let mut attrs = Vec::with_capacity(14);
        attrs.push(KeyValue::new(
            "http.request.method",
            self.method.as_str().to_owned(),
        ));
        attrs.push(KeyValue::new("url.path", self.path.clone()));
        attrs.push(KeyValue::new(
            "sloguard.listener",
            self.names.listener.clone(),
        ));
        attrs.push(KeyValue::new(
            "sloguard.upstream",
            self.upstream_name(self.hop),
        ));
        if let Some(code) = self.status_code {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        if let Some(e) = &self.error {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        // The answering attempt's call (the request's last), unless the cache answered.
        if let Some(g) = self
            .attempts
            .last()
            .filter(|a| a.hop == self.hop)
            .and_then(|a| a.genai.as_ref())
        {
            g.attributes(&mut attrs);
        }
        SpanData {
            span_context: self.span_context(self.span_id),
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent != SpanId::INVALID,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(REQUEST_SPAN),
            start_time: self.start,
            end_time: self.wall_time(self.end),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match &self.error {
                Some(e) => Status::error(e.clone()),
                None => Status::Unset,
            },
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }

    /// The wall-clock time of `i`, from the request's arrival.
    fn wall_time(&self, i: Instant) -> SystemTime {
        self.start + i.saturating_duration_since(self.received)
    }

    /// The context of a span of this trace.
    fn span_context(&self, span_id: SpanId) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(self.trace_id, span_id, flags, false, TraceState::NONE)
    }

    /// The `sloguard.upstream` of the hop at `hop` (past the chain: the cache).
    fn upstream_name(&self, hop: usize) -> String {
        self.names
            .upstreams
            .get(hop)
            .map_or("cache", String::as_str)
            .to_owned()
    }

    /// Spans this trace turns into.
    pub fn span_count(&self) -> usize {
        1 + self.attempts.len() + self.mcp.len()
    }
}

mod mcp;
pub use mcp::McpFacts;

#[cfg(test)]
mod tests;
