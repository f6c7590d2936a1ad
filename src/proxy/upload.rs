//! The client's request body on its way to the upstream. It streams through untouched and notes
//! how the upload is going, so that a failed or slow exchange is charged to whoever caused it:
//! a client that hangs up mid-upload, or stalls, is not the upstream's failure.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

/// How the upload stands, shared between the body (polled by the upstream connection) and the
/// request's handler.
pub struct Upload {
    started: Instant,
    /// Microseconds after `started` of the client's last chunk.
    last_chunk_micros: AtomicU64,
    waiting_on_client: AtomicBool,
    complete: AtomicBool,
    failed: AtomicBool,
}

/// Who an exchange is waiting on when its response head is late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// The whole body went out, or the upstream stopped reading it: the upstream is late.
    UpstreamsTurn,
    /// The client is still sending, with its last chunk within `idle`.
    ClientSending,
    /// The client sent nothing for `idle` or longer.
    ClientStalled,
}

impl Upload {
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn state(&self, now: Instant, idle: Duration) -> UploadState {
        if self.complete.load(Ordering::Acquire) || !self.waiting_on_client.load(Ordering::Acquire)
        {
            return UploadState::UpstreamsTurn;
        }
        let last =
            self.started + Duration::from_micros(self.last_chunk_micros.load(Ordering::Acquire));
        if now.duration_since(last) >= idle {
            UploadState::ClientStalled
        } else {
            UploadState::ClientSending
        }
    }
}

pub struct RequestBody {
    inner: Incoming,
    /// `None` for a request without a body: nothing to watch.
    upload: Option<Arc<Upload>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, started: Instant) -> (RequestBody, Option<Arc<Upload>>) {
        let upload = (!inner.is_end_stream()).then(|| {
            Arc::new(Upload {
                started,
                last_chunk_micros: AtomicU64::new(0),
                waiting_on_client: AtomicBool::new(false),
                complete: AtomicBool::new(false),
                failed: AtomicBool::new(false),
            })
        });
        (
            RequestBody {
                inner,
                upload: upload.clone(),
            },
            upload,
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(u) = &self.upload {
            match &polled {
                Poll::Pending => u.waiting_on_client.store(true, Ordering::Release),
                Poll::Ready(Some(Ok(_))) => {
                    let micros = u.started.elapsed().as_micros() as u64;
                    u.last_chunk_micros.store(micros, Ordering::Release);
                    u.waiting_on_client.store(false, Ordering::Release);
                }
                Poll::Ready(Some(Err(_))) => {
                    u.failed.store(true, Ordering::Release);
                    u.waiting_on_client.store(false, Ordering::Release);
                }
                Poll::Ready(None) => {
                    u.complete.store(true, Ordering::Release);
                    u.waiting_on_client.store(false, Ordering::Release);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(at: Instant) -> Upload {
        Upload {
            started: at,
            last_chunk_micros: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn who_the_exchange_waits_on() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(1);
        let u = upload(t0);
        // The upstream is not reading (the body is not being polled for the client).
        assert_eq!(
            u.state(t0 + Duration::from_secs(5), idle),
            UploadState::UpstreamsTurn
        );
        u.waiting_on_client.store(true, Ordering::Release);
        u.last_chunk_micros.store(4_500_000, Ordering::Release);
        assert_eq!(
            u.state(t0 + Duration::from_secs(5), idle),
            UploadState::ClientSending
        );
        assert_eq!(
            u.state(t0 + Duration::from_secs(6), idle),
            UploadState::ClientStalled
        );
        u.complete.store(true, Ordering::Release);
        assert_eq!(
            u.state(t0 + Duration::from_secs(6), idle),
            UploadState::UpstreamsTurn
        );
    }
}
