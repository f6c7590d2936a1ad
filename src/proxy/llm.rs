//! One LLM call on the `llm` role, as the data plane sees it: the request's facts (read by the
//! request body on its way out), the response reader (fed each chunk on its way back), and the
//! GenAI metrics recorded from both — output-chunk timings as they happen, the rest once, when
//! the call is counted.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ProxyError;
use super::upload::{RequestBody, Upload};
use crate::inspect::{
    hallucinations, parse_request, rewrite::rewrite_model, Collected, Format, ResponseReader,
    Unparsed,
};
use crate::sli::{StatusClass, UpstreamOutcome};
use crate::telemetry::{ErrorType, LlmMetrics, ModelMetrics};

pub struct LlmCall {
    metrics: Arc<LlmMetrics>,
    format: Format,
    received: Instant,
    upload: Option<Arc<Upload>>,
    reader: Option<ResponseReader>,
    model: Option<Arc<ModelMetrics>>,
    last_output: Option<Instant>,
}

impl LlmCall {
    pub fn new(metrics: Arc<LlmMetrics>, format: Format, received: Instant) -> LlmCall {
        LlmCall {
            metrics,
            format,
            received,
            upload: None,
            reader: None,
            model: None,
            last_output: None,
        }
    }

    /// The request body that will hold the request's facts once read.
    pub fn set_upload(&mut self, upload: Option<Arc<Upload>>) {
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

    /// The response head arrived.
    pub fn response(&mut self, status: StatusCode, headers: &HeaderMap) {
        let value = |name| headers.get(name).map(HeaderValue::as_bytes);
        self.reader = Some(ResponseReader::new(
            self.format,
            status,
            value(CONTENT_TYPE),
            value(CONTENT_ENCODING),
        ));
    }

    /// A chunk of the response body went by.
    pub fn chunk(&mut self, data: &Bytes, now: Instant) {
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

    /// The call is over (`complete`: its body ended cleanly); records everything else.
    pub fn finish(
        mut self,
        complete: bool,
        status: StatusClass,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
    ) {
        let model = self.model();
        // A body cut while the upstream was fine: the client left mid-stream.
        let error = match (complete, outcome) {
            (false, Some(UpstreamOutcome::Ok)) if self.reader.is_some() => ErrorType::Cancelled,
            _ => error_type(status, outcome),
        };
        model.duration(
            self.format.operation_name(),
            error,
            now.duration_since(self.received).as_secs_f64(),
        );
        let request = self.upload.as_ref().and_then(|u| u.request.get());
        if let Some(Err(why)) = request {
            self.metrics.unparsed(*why);
        }
        let Some(reader) = self.reader.take() else {
            // No response came (the proxy answered, or the client left): the call failed.
            self.metrics
                .finish_reason(crate::inspect::FinishReason::Error);
            return;
        };
        let facts = reader.finish(complete);
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
pub fn streamed_body(
    body: Incoming,
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

/// Reads a request body ahead (up to [`crate::inspect::MAX_INSPECTED_BODY`]) to rewrite its `model`. A body too
/// large, not JSON, or content-encoded goes on untouched (and is counted as unparsed). The
/// client's pauses are bounded by `idle`, the whole read by `deadline`. Also returns when the
/// last chunk read ahead arrived (the sidecar's overhead does not count the wait for it).
pub async fn rewrite_request(
    mut body: Incoming,
    headers: &mut HeaderMap,
    format: Format,
    model: &str,
    received: Instant,
    idle: std::time::Duration,
    deadline: Instant,
) -> Result<(RequestBody, Option<Arc<Upload>>, Instant), ProxyError> {
    if headers
        .get(CONTENT_ENCODING)
        .is_some_and(|e| e.as_bytes() != b"identity")
    {
        let (body, upload) = RequestBody::buffered(
            VecDeque::new(),
            Some(body),
            received,
            Err(Unparsed::RequestContentEncoding),
        );
        return Ok((body, upload, Instant::now()));
    }
    let mut kept = Collected::default();
    // A chunk past the limit: the body goes on untouched, this chunk after what was kept.
    let mut overflow = None;
    loop {
        let next = (Instant::now() + idle).min(deadline);
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Err(_) => return Err(ProxyError::ClientStalled),
            Ok(None) => break,
            Ok(Some(Err(source))) => return Err(ProxyError::ClientBody { source }),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers on an LLM request have no meaning to the provider; they are dropped.
        if let Ok(data) = frame.into_data() {
            if !kept.push(&data) {
                overflow = Some(data);
                break;
            }
        }
        if http_body::Body::is_end_stream(&body) {
            break;
        }
    }
    let last_chunk = Instant::now();
    if let Some(next) = overflow {
        let mut chunks = kept.into_chunks();
        chunks.push_back(next);
        let facts = Err(Unparsed::RequestTooLarge);
        let (body, upload) = RequestBody::buffered(chunks, Some(body), received, facts);
        return Ok((body, upload, last_chunk));
    }
    let whole = kept.into_bytes();
    let (bytes, facts) = match rewrite_model(&whole, model) {
        Ok(rewritten) => {
            let facts = parse_request(format, &rewritten);
            (Bytes::from(rewritten), facts)
        }
        Err(why) => (whole, Err(why)),
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let (body, upload) = RequestBody::buffered(VecDeque::from([bytes]), None, received, facts);
    Ok((body, upload, last_chunk))
}
