//! One judge call: the rubric with the sample's texts, sent to the judge upstream as Chat
//! Completions (`openai`) or Messages (`anthropic`) with the sidecar's key, read back within
//! `timeout`, and recorded like any LLM call of that upstream.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::time::{timeout_at, Instant};

use super::verdict::{self, Judged};
use super::{Graded, Sample, Target};
use crate::budget::{BodyBudget, Held};
use crate::inspect::{Format, Protocol, RequestFacts};
use crate::proxy::llm::LlmCall;
use crate::sli::{StatusClass, UpstreamOutcome};
use crate::upstream::{ConnectionPool, RequestBody};

/// The most of a judge's answer read: a verdict is a sentence.
const MAX_ANSWER: usize = 256 << 10;

/// Said after a text the judge sees only the start of.
const CUT: &str = "\n[... the rest of this text is not shown]";

/// A sampled text, cut to `max_chars` characters, with a note when it is not whole.
fn shown(text: &str, cut: bool, max_chars: usize) -> std::borrow::Cow<'_, str> {
    let kept = verdict::cut(text, max_chars);
    match cut || kept.len() < text.len() {
        true => format!("{kept}{CUT}").into(),
        false => kept.into(),
    }
}

/// Asks the judge about `sample`. What the call holds (the prompt, the body sent, the answer
/// read) counts against the body budget, as the sample did: with no room, it is dropped.
pub(super) async fn judge(
    target: &Target,
    pool: &Arc<ConnectionPool>,
    sample: Sample,
    budget: &BodyBudget,
) -> Graded {
    let c = &target.config;
    let upstream = &target.upstream;
    let protocol = upstream.protocol;
    let body = {
        let response = String::from_utf8_lossy(&sample.response);
        let prompt = verdict::prompt(
            &c.rubric,
            &shown(&sample.request, sample.request_cut, c.max_chars),
            &shown(&response, sample.response_cut, c.max_chars),
        );
        Bytes::from(verdict::request_body(protocol, &c.model, &prompt))
    };
    let mut held = budget.reserve(Held::JudgeSample);
    if !held.grow(body.len()) {
        return Graded::Dropped;
    }
    // The texts are in the body now (reserved before the sample's room was given back): the
    // sample's own bytes go.
    drop(sample);
    let (format, path) = match protocol {
        Protocol::Anthropic => (Format::Messages, "/v1/messages"),
        _ => (Format::ChatCompletions, "/v1/chat/completions"),
    };
    let now = Instant::now();
    let deadline = now + c.timeout.0;
    let facts = RequestFacts {
        model: Some(c.model.clone()),
        ..RequestFacts::default()
    };
    let (body, upload) = RequestBody::replay(Arc::from([body]), now, Some(Ok(facts)), None);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", upstream.url.path_prefix))
        .header(HOST, upstream.host_header.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    let Ok(mut request) = request else {
        return Graded::Failed;
    };
    if protocol == Protocol::Anthropic {
        let version = HeaderValue::from_static("2023-06-01");
        request.headers_mut().insert("anthropic-version", version);
    }
    let key = upstream
        .keys
        .as_ref()
        .map(|k| k.inject(request.headers_mut()));
    let mut call = upstream
        .llm
        .as_ref()
        .map(|m| LlmCall::new(m.clone(), format, now));
    if let Some(call) = call.as_mut() {
        call.set_upload(upload);
    }
    let sent = timeout_at(deadline, pool.send(request, now)).await;
    let (response, lease) = match sent {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            let outcome = match e {
                crate::upstream::SendError::Connect(_) => UpstreamOutcome::ConnectError,
                crate::upstream::SendError::Exchange(_) => UpstreamOutcome::Reset,
            };
            tracing::debug!(error = %e, "judge: call failed");
            return failed(target, call, outcome);
        }
        Err(_) => return failed(target, call, UpstreamOutcome::Timeout),
    };
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        if let (Some(keys), Some(index)) = (&upstream.keys, key) {
            keys.rejected(index, &upstream.log_limit);
        }
    }
    if let Some(call) = call.as_mut() {
        call.response(status, response.headers(), budget, false);
    }
    let mut body = response.into_body();
    let mut answer = BytesMut::new();
    let (mut too_large, mut no_room) = (false, false);
    let complete = loop {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(call) = call.as_mut() {
                        call.chunk(data, Instant::now());
                    }
                    if answer.len() + data.len() > MAX_ANSWER {
                        too_large = true;
                        break false;
                    }
                    if !held.grow(data.len()) {
                        no_room = true;
                        break false;
                    }
                    answer.extend_from_slice(data);
                }
            }
            Ok(None) => break true,
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    let end = Instant::now();
    let outcome = match complete || too_large || no_room {
        // An answer too long to be a verdict: the upstream itself was fine.
        true => UpstreamOutcome::of_status(status),
        false if end >= deadline => UpstreamOutcome::Timeout,
        false => UpstreamOutcome::Reset,
    };
    if let (true, Some(lease)) = (complete, lease) {
        lease.release(&mut body, end);
    }
    let class = StatusClass::of(status);
    if let Some(call) = call {
        call.finish(complete, class, Some(outcome), end, None);
    }
    upstream.metrics.count(outcome);
    if no_room {
        return Graded::Dropped;
    }
    if !status.is_success() || !(complete || too_large) {
        return Graded::Failed;
    }
    // An answer too long to be a verdict holds none.
    let judged = match complete {
        true => verdict::read(protocol, &answer),
        false => Judged::Unreadable,
    };
    match judged {
        Judged::Verdict { correct } => Graded::Verdict(correct),
        Judged::Unreadable => Graded::Unreadable,
    }
}

/// A call that got no response: recorded as the failure it was.
fn failed(target: &Target, call: Option<LlmCall>, outcome: UpstreamOutcome) -> Graded {
    if let Some(call) = call {
        let class = StatusClass::ServerError;
        call.finish(false, class, Some(outcome), Instant::now(), None);
    }
    target.upstream.metrics.count(outcome);
    Graded::Failed
}
