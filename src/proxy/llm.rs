//! One LLM call on the `llm` role, as the data plane sees it: the request's facts (read by the
//! request body on its way out), the response reader (fed each chunk on its way back), and the
//! GenAI metrics recorded from both — output-chunk timings as they happen, the rest once, when
//! the call is counted.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::budget::BodyBudget;
use crate::client_body::ClientBody;
use crate::inspect::{hallucinations, Format, ResponseReader, Unparsed};
use crate::sli::{StatusClass, UpstreamOutcome};
use crate::telemetry::trace::{GenAiFacts, RequestTrace};
use crate::telemetry::{ErrorType, LlmMetrics, ModelMetrics};
use crate::upstream::{RequestBody, Upload};

/// What an ended call said that others act on.
#[derive(Debug)]
pub struct CallEnd {
    /// The provider filtered the output (`content_filter`, Anthropic's `refusal`): a safety
    /// signal.
    pub filtered: bool,
    /// A provider answered the call with a success (a 2xx head, and no error inside).
    pub answered: bool,
    /// The provider reported a failure inside its 2xx answer (an error event in the stream, an
    /// error object): the request failed, as a 5xx would have.
    pub provider_error: bool,
    /// The tool calls of a call that succeeded and was read whole (none: an empty list); `None`
    /// for a call that failed, was cut, or could not be read — it says nothing about them.
    pub tool_calls: Option<Vec<crate::inspect::ToolCall>>,
    /// A generation ended on its token limit (`length`, `max_tokens`).
    pub truncated: bool,
    /// The model refused.
    pub refused: bool,
    /// The answer was read whole and said how the generation ended: the checks apply to it.
    pub checkable: bool,
    /// An answer read whole to a request that asked for a JSON schema: the schema, and the
    /// output when it was kept.
    pub structured: Option<Structured>,
    /// The request's body was read: whether it asked for a schema is known.
    pub request_read: bool,
}

/// A structured output to check: the request's schema and what the model wrote (`None`: not
/// kept, as when the request was not read before its answer came).
#[derive(Debug)]
pub struct Structured {
    pub schema: crate::inspect::Schema,
    pub output: Option<crate::inspect::OutputText>,
}

/// The most output text kept for the `structured_output` check; a longer answer is not checked.
const MAX_STRUCTURED_OUTPUT: usize = 1 << 20;

impl CallEnd {
    /// A call whose response was read (`read`: whole, with a success status) into `facts`.
    fn of(
        mut facts: crate::inspect::ResponseFacts,
        read: bool,
        answered: bool,
        schema: Option<crate::inspect::Schema>,
    ) -> CallEnd {
        use crate::inspect::FinishReason;
        let reasons = &facts.finish_reasons;
        let read = read && facts.unparsed.is_none() && !reasons.contains(&FinishReason::Error);
        let output = facts.output.take();
        let structured = schema
            .filter(|_| read)
            .map(|schema| Structured { schema, output });
        CallEnd {
            structured,
            request_read: false,
            filtered: reasons.contains(&FinishReason::ContentFilter),
            answered,
            provider_error: facts.provider_error,
            truncated: reasons.contains(&FinishReason::Length),
            refused: facts.refused,
            checkable: read && !reasons.is_empty(),
            tool_calls: read.then_some(facts.tool_calls),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LlmCall {
    metrics: Arc<LlmMetrics>,
    format: Format,
    received: Instant,
    upload: Option<Arc<Upload>>,
    reader: Option<ResponseReader>,
    model: Option<Arc<ModelMetrics>>,
    last_output: Option<Instant>,
    /// The response head was a success.
    succeeded: bool,
}

impl LlmCall {
    pub(crate) fn new(metrics: Arc<LlmMetrics>, format: Format, received: Instant) -> LlmCall {
        LlmCall {
            metrics,
            format,
            received,
            upload: None,
            reader: None,
            model: None,
            last_output: None,
            succeeded: false,
        }
    }

    /// The request body that will hold the request's facts once read.
    pub(crate) fn set_upload(&mut self, upload: Option<Arc<Upload>>) {
        self.upload = upload;
    }

    /// The model's handles, looked up once (by the first output chunk, or at the end).
    fn model(&mut self) -> Arc<ModelMetrics> {
        self.model
            .get_or_insert_with(|| {
                let name = self
                    .upload
                    .as_ref()
                    .and_then(|u| u.request.get())
                    .and_then(|r| r.as_ref().ok())
                    .and_then(|r| r.model.as_deref());
                self.metrics.model(name)
            })
            .clone()
    }

    /// The schema the request asked its output to follow, once its body was read.
    fn schema(&self) -> Option<&crate::inspect::Schema> {
        let request = self.upload.as_ref()?.request.get()?.as_ref().ok()?;
        request.schema.as_ref()
    }

    /// The response head arrived; what the reader keeps counts against `budget`. `structured`:
    /// the output is kept for the `structured_output` check when the request asked for a schema.
    pub(crate) fn response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        budget: &BodyBudget,
        structured: bool,
    ) {
        self.succeeded = status.is_success();
        let value = |name| headers.get(name).map(HeaderValue::as_bytes);
        let mut reader = ResponseReader::new(
            self.format,
            status,
            value(CONTENT_TYPE),
            value(CONTENT_ENCODING),
        );
        reader.reserve_from(budget);
        if structured && self.schema().is_some_and(|s| s.text().is_some()) {
            reader.keep_output(MAX_STRUCTURED_OUTPUT, budget);
        }
        self.reader = Some(reader);
    }

    /// A chunk of the response body went by.
    pub(crate) fn chunk(&mut self, data: &Bytes, now: Instant) {
        let Some(reader) = &mut self.reader else {
            return;
        };
        let outputs = reader.feed(data);
        if outputs == 0 {
            return;
        }
        let model = self.model();
        for _ in 0..outputs {
            match self.last_output {
                None => model.time_to_first_chunk(now.duration_since(self.received).as_secs_f64()),
                // Events that arrived together are zero apart, as a client reading them sees it.
                Some(prev) => model.time_per_output_chunk(now.duration_since(prev).as_secs_f64()),
            }
            self.last_output = Some(now);
        }
    }

    /// The call is over (`complete`: its body ended cleanly); records everything else (and tells
    /// the request's `trace`, when it has one).
    pub(crate) fn finish(
        mut self,
        complete: bool,
        status: StatusClass,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
        trace: Option<&mut RequestTrace>,
    ) -> CallEnd {
        let model = self.model();
        let request = self.upload.as_ref().and_then(|u| u.request.get());
        let mut genai = trace.map(|t| {
            let name = request
                .and_then(|r| r.as_ref().ok())
                .and_then(|r| r.model.as_deref());
            let facts =
                GenAiFacts::new(self.format.operation_name(), self.metrics.provider(), name);
            (t, facts)
        });
        if let Some(Err(why)) = request {
            self.metrics.unparsed(*why);
        }
        let facts = self.reader.take().map(|reader| reader.finish(complete));
        let provider_error = facts.as_ref().is_some_and(|f| f.provider_error);
        // A body cut while the upstream was fine: the client left mid-stream.
        let error = match (complete, outcome) {
            _ if provider_error => ErrorType::ServerError,
            (false, Some(UpstreamOutcome::Ok)) if facts.is_some() => ErrorType::Cancelled,
            _ => error_type(status, outcome),
        };
        model.duration(
            self.format.operation_name(),
            error,
            now.duration_since(self.received).as_secs_f64(),
        );
        if let (Some((_, span)), Some(f)) = (genai.as_mut(), &facts) {
            span.input_tokens = f.input_tokens;
            span.output_tokens = f.output_tokens;
            span.finish_reasons = f.finish_reasons.iter().map(|r| r.as_str()).collect();
        }
        if let Some((t, span)) = genai {
            t.llm_call(span);
        }
        let Some(facts) = facts else {
            // No response came (the proxy answered, or the client left): the call failed.
            self.metrics
                .finish_reason(crate::inspect::FinishReason::Error);
            return CallEnd {
                filtered: false,
                answered: false,
                provider_error: false,
                tool_calls: None,
                truncated: false,
                refused: false,
                checkable: false,
                structured: None,
                request_read: false,
            };
        };
        model.tokens(facts.input_tokens, facts.output_tokens);
        for reason in &facts.finish_reasons {
            self.metrics.finish_reason(*reason);
        }
        let request = request.and_then(|r| r.as_ref().ok());
        let (unknown, invalid) = hallucinations(request, &facts.tool_calls);
        self.metrics.hallucinated[0].increment(unknown);
        self.metrics.hallucinated[1].increment(invalid);
        if let Some(why) = facts.unparsed {
            self.metrics.unparsed(why);
        }
        let read = complete && status == StatusClass::Success;
        let schema = self.schema().cloned();
        let mut end = CallEnd::of(facts, read, self.succeeded && !provider_error, schema);
        end.request_read = request.is_some();
        end
    }
}

/// The request's LLM call on the `llm` role, with the upstream it is with: a new call for each
/// upstream the request goes to (the one before counted when it failed, or never made when its
/// upstream was skipped), each timed from the request's arrival — the agent waited for the failed
/// attempts too.
#[derive(Debug, Default)]
pub(super) struct LlmState {
    call: Option<Box<LlmCall>>,
    hop: usize,
}

impl LlmState {
    /// An LLM call to the route's first upstream is one from the start: refused or failed before
    /// an answer, it is still counted (duration, error type, finish reason).
    pub(super) fn begin(
        &mut self,
        metrics: Option<&Arc<LlmMetrics>>,
        format: Option<Format>,
        received: Instant,
    ) {
        if let (Some(metrics), Some(format)) = (metrics, format) {
            self.call = Some(Box::new(LlmCall::new(metrics.clone(), format, received)));
        }
    }

    /// No call after all (the loop guard refused it, or the cache answered): nothing to count.
    pub(super) fn cancel(&mut self) {
        self.call = None;
    }

    /// Whether the request is an LLM call.
    pub(super) fn is_call(&self) -> bool {
        self.call.is_some()
    }

    /// An attempt goes to `chain[hop]` (`metrics` and `format` its own, when it is an LLM call).
    pub(super) fn attempt(
        &mut self,
        hop: usize,
        metrics: Option<&Arc<LlmMetrics>>,
        format: Option<Format>,
        received: Instant,
    ) {
        if hop != self.hop || self.call.is_none() {
            self.hop = hop;
            self.call = None;
            self.begin(metrics, format, received);
        }
    }

    /// The attempt's request goes out with this body.
    pub(super) fn sending(&mut self, upload: &Option<Arc<Upload>>) {
        if let Some(call) = self.call.as_mut() {
            call.set_upload(upload.clone());
        }
    }

    /// The response head arrived (`structured`: the output is kept for the schema check).
    pub(super) fn head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        budget: &BodyBudget,
        structured: bool,
    ) {
        if let Some(call) = self.call.as_mut() {
            call.response(status, headers, budget, structured);
        }
    }

    pub(super) fn data(&mut self, data: &Bytes, now: Instant) {
        if let Some(call) = self.call.as_mut() {
            call.chunk(data, now);
        }
    }

    /// The call ends (an attempt failed, or the request is counted): what it said.
    pub(super) fn end(
        &mut self,
        complete: bool,
        status: StatusClass,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
        trace: Option<&mut RequestTrace>,
    ) -> Option<CallEnd> {
        let call = self.call.take()?;
        Some(call.finish(complete, status, outcome, now, trace))
    }
}

fn error_type(status: StatusClass, outcome: Option<UpstreamOutcome>) -> ErrorType {
    match outcome {
        Some(UpstreamOutcome::Ok) if status == StatusClass::ClientError => ErrorType::ClientError,
        Some(UpstreamOutcome::Ok) => ErrorType::None,
        Some(UpstreamOutcome::ServerError) => ErrorType::ServerError,
        Some(UpstreamOutcome::TooManyRequests) => ErrorType::TooManyRequests,
        Some(UpstreamOutcome::Timeout) => ErrorType::Timeout,
        Some(UpstreamOutcome::ConnectError) => ErrorType::ConnectError,
        Some(UpstreamOutcome::Reset) => ErrorType::Reset,
        None => ErrorType::Cancelled,
    }
}

/// The client's body, streamed to the upstream; for an LLM call, tapped on its way for the
/// request facts (unless it is compressed: then counted as unparsed).
pub(crate) fn streamed_body(
    body: ClientBody,
    headers: &HeaderMap,
    format: Option<Format>,
    received: Instant,
) -> (RequestBody, Option<Arc<Upload>>) {
    let encoded = format.is_some()
        && headers
            .get(CONTENT_ENCODING)
            .is_some_and(|e| e.as_bytes() != b"identity");
    let (body, upload) = RequestBody::new(body, received, format.filter(|_| !encoded));
    if let (true, Some(u)) = (encoded, &upload) {
        let _ = u.request.set(Err(Unparsed::RequestContentEncoding));
    }
    (body, upload)
}
