//! One attempt at an upstream: the request it sends, and the wait for its response head.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{ProxyError, RequestBody, Upload, UploadState};
use crate::upstream::{Lease, SendError, Upstream};

/// Sends one attempt and waits for its response head, bounded by `first_byte` (restarted while
/// the client is still uploading) and `total`.
pub(super) async fn exchange<F>(
    upstream: &Upstream,
    mut send: Pin<&mut F>,
    upload: Option<&Upload>,
    sent: Instant,
    total_deadline: Instant,
) -> Result<(Response<Incoming>, Option<Lease>), ProxyError>
where
    F: Future<Output = Result<(Response<Incoming>, Option<Lease>), SendError>>,
{
    let timeouts = upstream.timeouts;
    let mut head_deadline = (sent + timeouts.first_byte.0).min(total_deadline);
    let result = loop {
        match tokio::time::timeout_at(head_deadline, send.as_mut()).await {
            Ok(result) => break result,
            Err(_elapsed) => {
                // `first_byte` is the upstream's time to answer: while the client is still
                // uploading, the clock restarts; a client silent for `idle` is the client's fault.
                let now = Instant::now();
                match upload.map(|u| u.state(now, timeouts.idle.0)) {
                    Some(UploadState::ClientSending) if now < total_deadline => {
                        head_deadline = (now + timeouts.first_byte.0).min(total_deadline);
                    }
                    // Stalled, or still uploading when `total` ran out: the client's doing.
                    Some(UploadState::ClientStalled | UploadState::ClientSending) => {
                        return Err(ProxyError::ClientStalled)
                    }
                    _ => {
                        return Err(ProxyError::FirstByteTimeout {
                            upstream: upstream.name.clone(),
                            timeout: now.duration_since(sent),
                        })
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

/// A `Retry-After` in seconds (the form providers send; an HTTP date is not read), at most an
/// hour: a provider's typo must not hold a circuit open for days.
pub(super) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // "Retry now" is no reason to stop.
    (secs > 0).then(|| Duration::from_secs(secs.min(3600)))
}
