//! One attempt at an upstream: the request it sends, and the wait for its response head.

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response, Uri};
use tokio::time::Instant;

use super::error::DeadlineWhen;
use super::ProxyError;
use crate::upstream::{Lease, RequestBody, SendError, Upload, UploadState, Upstream, UpstreamBody};

/// An attempt's response head, and the HTTP/1.1 connection it came on.
pub(super) type Exchange = (Response<UpstreamBody>, Option<Lease>);

/// When an attempt must have its answer: its response head by `head` (`first_byte`, restarted
/// while the client is still uploading, and `total`, which is at the latest `cascade`), the
/// client's body by `body` (`limits.body_timeout` after the request's head).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    pub total: Instant,
    pub body: Instant,
    /// The deadline of the inbound request the call is made for (`cascade`).
    pub cascade: Option<Instant>,
}

/// Sends one attempt and waits for its response head, bounded by `first_byte` (restarted while
/// the client is still uploading) and `total`; a client still uploading at its body deadline
/// gets 408.
pub(super) async fn exchange<F>(
    upstream: &Upstream,
    mut send: Pin<&mut F>,
    upload: Option<&Upload>,
    sent: Instant,
    deadlines: Deadlines,
) -> Result<Exchange, ProxyError>
where
    F: Future<Output = Result<(Response<UpstreamBody>, Option<Lease>), SendError>>,
{
    let timeouts = upstream.timeouts;
    let total_deadline = deadlines.total;
    let mut head_deadline = (sent + timeouts.first_byte.0).min(total_deadline);
    let result = loop {
        // While the upload is under way, also wake at the body's deadline.
        let wake = match upload {
            Some(u) if !u.is_complete() => head_deadline.min(deadlines.body),
            _ => head_deadline,
        };
        match tokio::time::timeout_at(wake, send.as_mut()).await {
            Ok(result) => break result,
            Err(_elapsed) => {
                // `first_byte` is the upstream's time to answer: while the client is still
                // uploading, the clock restarts; a client silent for `idle`, or still sending at
                // its body deadline, is the client's fault.
                let now = Instant::now();
                let state = upload.map(|u| u.state(now, timeouts.idle.0));
                let client_turn = matches!(
                    state,
                    Some(UploadState::ClientSending | UploadState::ClientStalled)
                );
                if client_turn && now >= deadlines.body {
                    return Err(ProxyError::ClientStalled);
                }
                if now < head_deadline {
                    continue;
                }
                if deadlines.cascade.is_some_and(|d| now >= d) {
                    // The request's time ran out: the agent's if it was still uploading, else
                    // the upstream's that had not answered.
                    return Err(ProxyError::DeadlineExceeded(match client_turn {
                        true => DeadlineWhen::Call,
                        false => DeadlineWhen::Attempt,
                    }));
                }
                match state {
                    Some(UploadState::ClientSending) if now < total_deadline => {
                        head_deadline = (now + timeouts.first_byte.0).min(total_deadline);
                    }
                    // Stalled, or still uploading when `total` ran out: the client's doing.
                    Some(UploadState::ClientStalled | UploadState::ClientSending) => {
                        return Err(ProxyError::ClientStalled)
                    }
                    _ => {
                        // The connection may be the one that stopped answering: new requests
                        // get a fresh one.
                        upstream.pool.give_up_h2();
                        return Err(ProxyError::FirstByteTimeout {
                            upstream: upstream.name.clone(),
                            timeout: now.duration_since(sent),
                        });
                    }
                }
            }
        }
    };
    result.map_err(|e| match e {
        SendError::Connect(source) => ProxyError::Connect {
            upstream: upstream.name.clone(),
            source,
        },
        SendError::Exchange(source) => {
            let client_failed = upload.is_some_and(Upload::failed);
            ProxyError::from_exchange(&upstream.name, source, client_failed)
        }
    })
}

/// The request one attempt sends.
pub(super) fn outgoing(
    body: RequestBody,
    method: &http::Method,
    target: Uri,
    version: http::Version,
    headers: http::HeaderMap,
) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = target;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    request
}

pub(super) fn internal(upstream: &Upstream, reason: &str) -> ProxyError {
    ProxyError::Internal {
        upstream: upstream.name.clone(),
        reason: reason.to_owned(),
    }
}
