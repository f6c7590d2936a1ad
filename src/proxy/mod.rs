//! The data plane: listeners, the request pipeline, body streaming, proxy-made errors.
//!
//! # The request pipeline
//!
//! Each request on a listener goes through these steps, in this order:
//!
//! 1. **Take the snapshot's listener state** (one reference count): the request finishes on the
//!    config it started with, whatever a reload does meanwhile.
//! 2. **Note the arrival time**: every latency the SLIs report starts here.
//! 3. **Ask the circuit breaker** ([`crate::upstream::UpstreamBreaker`]): an upstream whose
//!    circuit is open gets no request at all — 503 `circuit_open` at once, before any work is
//!    spent; an admitted call carries its ticket to the end, where its outcome is fed back.
//! 4. **Recognise an LLM call** ([`Format::of`]): on the `llm` role, to an upstream with a
//!    protocol, a `POST` to a chat-completions, responses or messages path. Decided before
//!    anything is sent, so that the call is counted (duration, finish reason) even when it fails
//!    before an answer.
//! 5. **Address the upstream**: its path prefix, then the client's path and query (origin
//!    form; the connection pool adds scheme and authority where h2 needs them). Nothing else of
//!    the client's URI is trusted.
//! 6. **Rewrite headers** ([`headers::prepare_request`]): hop-by-hop headers go, `Host` becomes
//!    the upstream's, `x-forwarded-for`/`-proto` are added. Done before sending because the
//!    upstream must never see this hop's connection headers.
//! 7. **Inject the provider key** ([`crate::upstream::KeyRing::inject`]): the client's key
//!    headers go, the sidecar's key goes in. After step 6 so that nothing later re-adds a key.
//! 8. **Rewrite the model, or tap the body** ([`llm::rewrite_request`],
//!    [`llm::streamed_body`]): with
//!    `model` configured the body must be read ahead to change it; otherwise it streams, and the
//!    request facts (model, stream, tools) are read from reference counts of its chunks when the
//!    upload ends — the provider answers only after that, so the facts are there for step 13.
//! 9. **Send, bounded by `first_byte`** (and `total`): the body streams from the client to the
//!    upstream as the upstream reads it — backpressure, no buffering — through a
//!    [`RequestBody`] that notes how the upload goes, so that a late head is charged to the
//!    upstream only when the upstream is the one being waited on. `connect` bounds TCP and TLS
//!    set-up inside the connection pool.
//! 10. **Classify a failure before the head** ([`ProxyError`]): connect error → 502
//!     `upstream_unavailable`, no head in time → 504 `upstream_timeout`; the attempt is counted
//!     with its outcome.
//! 11. **Read the response head**: the breaker notes a slow head and a 429's `Retry-After`;
//!     a 401 to an injected key moves the upstream to its next key; an LLM call gets its
//!     response reader (by content type). Then hop-by-hop headers go and
//!     `x-sloguard-upstream` is added ([`headers::prepare_response`]).
//! 12. **Record the sidecar's overhead** (steps 3–8 plus 11, less any wait for the client's body
//!     while reading it ahead): its own time, apart from the upstream's.
//! 13. **Stream the body back** ([`ProxyBody`]): frame by frame as the upstream sends it (SSE
//!     events reach the client as they are produced), each data frame shown to the LLM reader
//!     on its way (output-chunk timings recorded as they happen); `idle` and `total` end a
//!     stalled stream; when the last byte is out (or the client leaves) the request is counted
//!     once: `agent_requests_total`, `agent_response_seconds`,
//!     `agent_time_to_first_byte_seconds`, `sloguard_upstream_requests_total`, and for an LLM
//!     call the GenAI duration, tokens, finish reasons, tool-call checks and unparsed bodies;
//!     the circuit breaker is fed the attempt's outcome (a client that left gives a probe's
//!     slot back).

pub mod body;
pub mod error;
pub mod headers;
pub mod listener;
pub mod llm;
pub mod state;
pub mod upload;

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::{Accounting, BodyError, BreakerTicket, ProxyBody};
pub use error::{error_response, ProxyError};
pub use state::{ListenerState, Snapshot};
pub use upload::{RequestBody, Upload, UploadState};

use crate::config::{Role, UpstreamUrl};
use crate::inspect::Format;
use crate::sli::{Cause, StatusClass, UpstreamOutcome};
use crate::upstream::SendError;
use llm::LlmCall;

/// The request target for the upstream, in origin form: the upstream's path prefix, then the
/// client's path and query. An absolute-form client URI does not choose the upstream.
pub fn upstream_uri(url: &UpstreamUrl, uri: &Uri) -> Result<Uri, http::uri::InvalidUri> {
    let client_pq = uri.path_and_query();
    // `OPTIONS *` names the server, not a resource: no prefix applies.
    let pq = if url.path_prefix.is_empty() || uri.path() == "*" {
        client_pq
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    } else {
        let rest = client_pq.map_or("/", |pq| pq.as_str());
        PathAndQuery::try_from(format!("{}{}", url.path_prefix, rest))?
    };
    Ok(Uri::from(pq))
}

/// Proxies one request: the pipeline above.
pub async fn handle(
    req: Request<Incoming>,
    client_ip: HeaderValue,
    listener: Arc<ListenerState>,
) -> Response<ProxyBody> {
    let received = Instant::now();
    let upstream = &listener.upstream;
    let timeouts = upstream.timeouts;
    let total_deadline = received + timeouts.total.0;

    // Counted even if the client leaves before any answer (hyper then drops this future): as a
    // 4xx with no cause, nginx's 499, with the time it waited.
    let mut unanswered = Unanswered(Some(Accounting {
        received,
        status: StatusClass::ClientError,
        cause: Cause::None,
        outcome: None,
        first_byte_sent: false,
        listener: listener.clone(),
        llm: None,
        breaker: None,
    }));

    let (mut parts, body) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        let err = ProxyError::Method {
            method: parts.method,
        };
        return local_error(err, &listener, unanswered.0.take());
    }
    // An LLM call (a known operation to a provider, on the `llm` role) is inspected on its way.
    let format = match (&upstream.llm, listener.role) {
        (Some(_), Role::Llm) => Format::of(&parts.method, parts.uri.path(), upstream.protocol),
        _ => None,
    };
    if let (Some(format), Some(metrics), Some(a)) = (format, &upstream.llm, unanswered.0.as_mut()) {
        a.llm = Some(Box::new(LlmCall::new(metrics.clone(), format, received)));
    }
    // An upstream whose circuit is open is skipped before any work is spent on the request.
    if let Some(b) = &upstream.breaker {
        match b.admit(received) {
            Some(ticket) => {
                if let Some(a) = unanswered.0.as_mut() {
                    a.breaker = Some(BreakerTicket {
                        ticket,
                        slow: false,
                        retry_after: None,
                    });
                }
            }
            None => {
                let err = ProxyError::CircuitOpen {
                    upstream: upstream.name.clone(),
                };
                return local_error(err, &listener, unanswered.0.take());
            }
        }
    }
    parts.uri = match upstream_uri(&upstream.url, &parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            let err = ProxyError::Internal {
                upstream: upstream.name.clone(),
                reason: e.to_string(),
            };
            return local_error(err, &listener, unanswered.0.take());
        }
    };
    headers::prepare_request(&mut parts.headers, &upstream.host_header, &client_ip);
    let key_used = upstream.keys.as_ref().map(|k| k.inject(&mut parts.headers));
    // `client_wait`: time spent waiting for the client's body while reading it ahead, not the
    // sidecar's own.
    let (body, upload, client_wait) = match (format, upstream.model.as_deref()) {
        (Some(format), Some(model)) => {
            let start = Instant::now();
            let read = llm::rewrite_request(
                body,
                &mut parts.headers,
                format,
                model,
                received,
                timeouts.idle.0,
                total_deadline,
            )
            .await;
            match read {
                Ok((body, upload, last)) => (body, upload, last.saturating_duration_since(start)),
                Err(err) => return local_error(err, &listener, unanswered.0.take()),
            }
        }
        _ => {
            let (body, upload) = llm::streamed_body(body, &parts.headers, format, received);
            (body, upload, std::time::Duration::ZERO)
        }
    };
    if let Some(call) = unanswered.0.as_mut().and_then(|a| a.llm.as_mut()) {
        call.set_upload(upload.clone());
    }
    let request = Request::from_parts(parts, body);

    let sent = Instant::now();
    let send = upstream.pool.send(request);
    tokio::pin!(send);
    let mut head_deadline = (sent + timeouts.first_byte.0).min(total_deadline);
    let result = loop {
        match tokio::time::timeout_at(head_deadline, &mut send).await {
            Ok(result) => break Ok(result),
            Err(_elapsed) => {
                // `first_byte` is the upstream's time to answer: while the client is still
                // uploading, the clock restarts; a client silent for `idle` is the client's fault.
                let now = Instant::now();
                match upload.as_deref().map(|u| u.state(now, timeouts.idle.0)) {
                    Some(UploadState::ClientSending) if now < total_deadline => {
                        head_deadline = (now + timeouts.first_byte.0).min(total_deadline);
                    }
                    // Stalled, or still uploading when `total` ran out: the client's doing.
                    Some(UploadState::ClientStalled | UploadState::ClientSending) => {
                        break Err(ProxyError::ClientStalled)
                    }
                    _ => {
                        break Err(ProxyError::FirstByteTimeout {
                            upstream: upstream.name.clone(),
                            timeout: now.duration_since(sent),
                        })
                    }
                }
            }
        }
    };
    let head_at = Instant::now();

    let (response, lease) = match result {
        Ok(Ok(exchange)) => exchange,
        Ok(Err(SendError::Connect(source))) => {
            let err = ProxyError::Connect {
                upstream: upstream.name.clone(),
                source,
            };
            return local_error(err, &listener, unanswered.0.take());
        }
        Ok(Err(SendError::Exchange(source))) => {
            let client_failed = upload.as_deref().is_some_and(Upload::failed);
            let err = ProxyError::from_exchange(&upstream.name, source, client_failed);
            return local_error(err, &listener, unanswered.0.take());
        }
        Err(err) => return local_error(err, &listener, unanswered.0.take()),
    };

    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    if let (http::StatusCode::UNAUTHORIZED, Some(keys), Some(used)) =
        (status, &upstream.keys, key_used)
    {
        keys.rejected(used, &upstream.log_limit);
    }
    let mut account = unanswered.0.take();
    if let Some(a) = account.as_mut() {
        a.status = StatusClass::of(status);
        a.cause = Cause::of_response(listener.role, status);
        a.outcome = Some(UpstreamOutcome::of_status(status));
        if let Some(call) = a.llm.as_mut() {
            call.response(status, &parts.headers);
        }
        if let (Some(t), Some(b)) = (a.breaker.as_mut(), &upstream.breaker) {
            // The upstream's time to answer: from the end of the upload, not the client's
            // time to send it.
            let from = upload
                .as_deref()
                .map_or(sent, |u| u.last_chunk_at().max(sent));
            t.slow = b
                .slow_after
                .is_some_and(|s| head_at.saturating_duration_since(from) > s);
            t.retry_after = retry_after(&parts.headers);
            // A probe is judged by its head: a stream can take minutes, and the circuit must
            // not stay half-open (refusing everyone else) for as long.
            if t.ticket.is_probe() {
                if let Some(t) = a.breaker.take() {
                    b.record(
                        t.ticket,
                        t.outcome(UpstreamOutcome::of_status(status)),
                        head_at,
                    );
                }
            }
        }
    }
    headers::prepare_response(&mut parts.headers, &upstream.header_value);
    let body = ProxyBody::upstream(body, lease, account, timeouts.idle.0, total_deadline);
    let done = Instant::now();
    listener.metrics.overhead.record(
        (sent.duration_since(received).saturating_sub(client_wait) + done.duration_since(head_at))
            .as_secs_f64(),
    );
    Response::from_parts(parts, body)
}

/// A `Retry-After` in seconds (the form providers send; an HTTP date is not read), at most an
/// hour: a provider's typo must not hold a circuit open for days.
fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // "Retry now" is no reason to stop.
    (secs > 0).then(|| std::time::Duration::from_secs(secs.min(3600)))
}

/// Answers with a proxy-made error, counted like any other response.
fn local_error(
    err: ProxyError,
    listener: &ListenerState,
    mut account: Option<Accounting>,
) -> Response<ProxyBody> {
    err.log(&listener.upstream.log_limit);
    let (mut parts, bytes) = err.to_response().into_parts();
    parts.headers.insert(
        headers::X_SLOGUARD_UPSTREAM.clone(),
        listener.upstream.header_value.clone(),
    );
    if let Some(a) = account.as_mut() {
        a.status = StatusClass::of(parts.status);
        a.cause = err.cause(listener.role);
        a.outcome = err.outcome();
    }
    Response::from_parts(parts, ProxyBody::local(bytes, account))
}

/// The request's accounting until a response is made; settles it as abandoned if the client
/// leaves first.
struct Unanswered(Option<Accounting>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abandoned(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream_url;

    #[test]
    fn uri_keeps_path_and_query_and_adds_prefix() {
        let plain = parse_upstream_url("http://127.0.0.1:8000").unwrap();
        let uri: Uri = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &uri).unwrap(),
            "/v1/chat/completions?x=1"
        );
        let prefixed = parse_upstream_url("https://example.com/openai/").unwrap();
        assert_eq!(
            upstream_uri(&prefixed, &uri).unwrap(),
            "/openai/v1/chat/completions?x=1"
        );
        let star: Uri = "*".parse().unwrap();
        assert_eq!(upstream_uri(&prefixed, &star).unwrap(), "*");
        // An absolute-form request URI (proxy style, or h2) does not choose the upstream.
        let absolute: Uri = "http://evil.example/x".parse().unwrap();
        assert_eq!(upstream_uri(&plain, &absolute).unwrap(), "/x");
    }
}
