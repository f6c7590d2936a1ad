//! A span per request (`sloguard.request`, kind server) with a child per upstream attempt
//! (`sloguard.attempt`, kind client), continuing the client's W3C trace context and handing it
//! on to the upstream.
//!
//! The request path keeps only plain facts (ids, instants, which upstream, the outcome); the
//! spans and their attributes are built when the request is counted, and only for a request
//! that is exported: sampled, or failed. Export is the background's work: a finished span goes
//! into a bounded queue with a non-blocking `try_send`, and a full queue drops it (counted in
//! `sloguard_otlp_dropped_total{signal="traces"}`), never waits.
//!
//! Sampling is parent-based: a client's `traceparent` decides (its `sampled` flag); a request
//! without one is sampled at `traces.sample_ratio`, by its trace id (so every sidecar of a trace
//! decides alike). A request that failed (a 5xx, a proxy error, a provider error inside a 200)
//! is exported even when not sampled: the trace of a failure is the one an SRE looks for.

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
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const REQUEST_SPAN: &str = "sloguard.request";
pub const ATTEMPT_SPAN: &str = "sloguard.attempt";
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest model name put on a span (the request said it; spans are not metrics, but a
/// megabyte of "model" is nobody's name).
const MAX_MODEL: usize = 256;
/// Longest `url.path` put on a span.
const MAX_PATH: usize = 1024;

/// What starts and sends request spans: one per sidecar, shared by every listener.
pub struct Tracer {
    /// A trace id whose last 8 bytes, as a number, fall below this is sampled.
    threshold: u64,
    always: bool,
    queue: mpsc::Sender<SpanData>,
    dropped: Counter,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
}

impl Tracer {
    /// `queue`: where finished spans go for export; `dropped`: counts those it had no room for.
    pub fn new(sample_ratio: f64, queue: mpsc::Sender<SpanData>, dropped: Counter) -> Tracer {
        let ratio = sample_ratio.clamp(0.0, 1.0);
        Tracer {
            // The same arithmetic as OpenTelemetry's TraceIdRatioBased sampler.
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
            queue,
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

    /// The trace of a request just received: the client's context continued, or a new one.
    pub fn start(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        received: Instant,
    ) -> Box<RequestTrace> {
        let parent = single(headers, &TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, parent_span, sampled) = match parent {
            Some(p) => (p.trace_id, p.span_id, p.sampled),
            None => {
                let id = self.ids.new_trace_id();
                (id, SpanId::INVALID, self.sampled(id))
            }
        };
        let mut path = path.to_owned();
        truncate(&mut path, MAX_PATH);
        Box::new(RequestTrace {
            tracer: self.clone(),
            trace_id,
            span_id: self.ids.new_span_id(),
            parent: parent_span,
            sampled,
            start: SystemTime::now(),
            received,
            method: method.clone(),
            path,
            status_code: None,
            error: None,
            genai: None,
            attempts: Vec::new(),
        })
    }

    fn send(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// The value of `name` when the request has exactly one (two `traceparent`s are no context).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// A W3C trace context's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

fn hex(bytes: &[u8]) -> Option<u128> {
    if bytes.is_empty()
        || bytes.len() > 32
        || !bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    // Checked above: ASCII hex digits only.
    u128::from_str_radix(std::str::from_utf8(bytes).ok()?, 16).ok()
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
    let text = format!(
        "00-{trace_id}-{span_id}-{}",
        if sampled { "01" } else { "00" }
    );
    // Hex digits and dashes only.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
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
            truncate(&mut m, MAX_MODEL);
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

/// The trace of one request, from arrival to its count.
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    span_id: SpanId,
    /// The client's span; invalid for a new trace.
    parent: SpanId,
    sampled: bool,
    start: SystemTime,
    received: Instant,
    method: Method,
    path: String,
    status_code: Option<u16>,
    error: Option<Cow<'static, str>>,
    genai: Option<Box<GenAiFacts>>,
    attempts: Vec<AttemptTrace>,
}

/// How a request ended, as its span says it.
pub struct Ended<'a> {
    pub listener: &'a str,
    /// Name of each upstream of the route's chain, by hop.
    pub upstreams: &'a [&'a str],
    /// Where the request was answered (past the chain: the cache).
    pub hop: usize,
    pub attempt_outcome: Option<&'static str>,
    pub failed: bool,
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
        let facts = Box::new(facts);
        if let Some(a) = self.attempts.last_mut() {
            a.genai = Some(facts.clone());
        }
        self.genai = Some(facts);
    }

    /// The client got `status` from the sidecar itself (an error of type `error`).
    pub fn local_answer(&mut self, status: u16, error: Option<&'static str>) {
        self.status_code = Some(status);
        if let Some(e) = error {
            self.error = Some(Cow::Borrowed(e));
        }
    }

    /// Whether the request will be exported when it ends this way.
    pub fn exports(&self, failed: bool) -> bool {
        self.sampled || failed || self.error.is_some()
    }

    /// The request was counted: its spans go to the export queue, if sampled or failed.
    pub fn finish(mut self, ended: Ended<'_>, now: Instant) {
        self.close_attempt(ended.attempt_outcome.filter(|o| *o != "ok"), None, now);
        if ended.failed && self.error.is_none() {
            self.error = Some(match self.status_code {
                Some(code) if code >= 500 => Cow::Owned(code.to_string()),
                _ => Cow::Borrowed(ended.attempt_outcome.unwrap_or("error")),
            });
        }
        if !self.exports(ended.failed) {
            return;
        }
        let at = |i: Instant| self.start + i.saturating_duration_since(self.received);
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context =
            |span_id| SpanContext::new(self.trace_id, span_id, flags, false, TraceState::NONE);
        let upstream = |hop: usize| ended.upstreams.get(hop).copied().unwrap_or("cache");

        let mut attrs = Vec::with_capacity(12);
        attrs.push(KeyValue::new(
            "http.request.method",
            self.method.as_str().to_owned(),
        ));
        attrs.push(KeyValue::new("url.path", std::mem::take(&mut self.path)));
        attrs.push(KeyValue::new(
            "sloguard.listener",
            ended.listener.to_owned(),
        ));
        attrs.push(KeyValue::new(
            "sloguard.upstream",
            upstream(ended.hop).to_owned(),
        ));
        if let Some(code) = self.status_code {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        if let Some(e) = &self.error {
            attrs.push(KeyValue::new("error.type", e.clone()));
        }
        if let Some(g) = &self.genai {
            g.attributes(&mut attrs);
        }
        let status = match &self.error {
            Some(e) => Status::error(e.clone()),
            None => Status::Unset,
        };
        let request = SpanData {
            span_context: context(self.span_id),
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent != SpanId::INVALID,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(REQUEST_SPAN),
            start_time: self.start,
            end_time: at(now),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.tracer.scope.clone(),
        };
        for a in &self.attempts {
            let mut attrs = Vec::with_capacity(10);
            attrs.push(KeyValue::new(
                "sloguard.upstream",
                upstream(a.hop).to_owned(),
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
            self.tracer.send(SpanData {
                span_context: context(a.span_id),
                parent_span_id: self.span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Borrowed(ATTEMPT_SPAN),
                start_time: at(a.start),
                end_time: at(a.end.unwrap_or(now)),
                attributes: attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: match a.error {
                    Some(e) => Status::error(e),
                    None => Status::Unset,
                },
                instrumentation_scope: self.tracer.scope.clone(),
            });
        }
        self.tracer.send(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_writes_it() {
        let ok = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let p = parse_traceparent(ok).unwrap();
        assert_eq!(
            p.trace_id,
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(p.span_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert!(p.sampled);
        let unsampled = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert!(!parse_traceparent(unsampled).unwrap().sampled);
        // A later version may add fields after a dash.
        let future = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra";
        assert!(parse_traceparent(future).is_some());
        for bad in [
            &b"00-00000000000000000000000000000000-b7ad6b7169203331-01"[..],
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
            b"",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033é-01".as_bytes(),
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn traceparent_written_for_the_upstream_round_trips() {
        let t = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let v = traceparent(t, s, true);
        assert_eq!(v, "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
        let p = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!((p.trace_id, p.span_id, p.sampled), (t, s, true));
        assert_eq!(
            traceparent(t, s, false),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn ratio_sampling_keeps_about_the_ratio() {
        let (tx, _rx) = mpsc::channel(1);
        let ids = RandomIdGenerator::default();
        for (ratio, low, high) in [
            (0.0, 0, 0),
            (0.1, 800, 1200),
            (0.5, 4500, 5500),
            (1.0, 10_000, 10_000),
        ] {
            let t = Tracer::new(ratio, tx.clone(), Counter::noop());
            let kept = (0..10_000)
                .filter(|_| t.sampled(ids.new_trace_id()))
                .count();
            assert!(
                (low..=high).contains(&kept),
                "ratio {ratio}: {kept} of 10000"
            );
        }
    }
}
