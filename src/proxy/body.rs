//! The response body the client reads: upstream bytes passed through frame by frame (never
//! buffered), or a body the proxy made. It carries the request's context, so the request is
//! counted exactly once — when the last byte has gone out, or when the client goes away — and it
//! enforces the `idle` and `total` timeouts while the upstream streams.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ctx::RequestCtx;
use super::safety::Held;
use crate::sli::UpstreamOutcome;
use crate::upstream::{ExchangeError, Lease, UpstreamBody};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body failed: {0}")]
    Upstream(#[source] ExchangeError),
    #[error("upstream body stalled longer than the idle timeout")]
    Idle,
    #[error("upstream exchange ran past the total timeout")]
    Total,
}

/// Deadlines of a streaming upstream body.
#[derive(Debug)]
struct Stream {
    body: UpstreamBody,
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

/// Sizes only: a body the proxy made is still a response.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Upstream(s) => f.debug_tuple("Upstream").field(s).finish(),
            Inner::Local(b) => f
                .debug_tuple("Local")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
        }
    }
}

#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    ctx: Box<RequestCtx>,
}

impl ProxyBody {
    /// The upstream's body.
    pub(super) fn upstream(
        body: UpstreamBody,
        lease: Option<Lease>,
        mut ctx: Box<RequestCtx>,
        idle: std::time::Duration,
        total_deadline: Instant,
    ) -> ProxyBody {
        ctx.answered();
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
            ctx,
        }
    }

    /// A body the proxy made.
    pub(super) fn local(bytes: Bytes, mut ctx: Box<RequestCtx>) -> ProxyBody {
        ctx.answered();
        ProxyBody {
            inner: Inner::Local(Some(bytes).filter(|b| !b.is_empty())),
            ctx,
        }
    }

    /// A chunk safety let through, or the event that ends a blocked stream: `None` when there
    /// is nothing to send from the hold now.
    fn next_held(&mut self) -> Option<Bytes> {
        match self.ctx.next_held()? {
            Held::Clean(bytes) => Some(bytes),
            Held::Blocked(event) => {
                // Blocked: the error event once, then the end; the rest of the upstream body is
                // not read (its connection goes). Counted as cut.
                self.inner = Inner::Local(None);
                self.ctx.cut(Instant::now());
                Some(event)
            }
        }
    }

    /// A frame from the upstream, shown to the features on its way: what goes to the client, or
    /// `None` when safety holds it back (or drops it) and the next is to be read.
    fn upstream_frame(&mut self, frame: Frame<Bytes>) -> Option<Result<Frame<Bytes>, BodyError>> {
        let Inner::Upstream(stream) = &mut self.inner else {
            return Some(Ok(frame));
        };
        let Some(data) = frame.data_ref() else {
            // Trailers of a stream held back would overtake its held chunks: they are dropped
            // (SSE streams carry none in practice).
            return (!self.ctx.holds()).then_some(Ok(frame));
        };
        let now = Instant::now();
        if now >= stream.total_deadline {
            self.log_stream_failure(&BodyError::Total);
            self.fail(UpstreamOutcome::Timeout);
            self.inner = Inner::Local(None);
            return Some(Err(BodyError::Total));
        }
        if self.ctx.data(data, now) {
            return None;
        }
        self.ctx.first_byte(now);
        if !self.ctx.holds() && stream.body.is_end_stream() {
            // The last frame (a body of known length): hyper polls no more, so the request ends
            // now, with the time already read.
            if let Some(lease) = stream.lease.take() {
                lease.release(&mut stream.body, now);
            }
            stream.ended = true;
            self.ctx.finish(now);
        }
        Some(Ok(frame))
    }

    /// The stream failed after the head went out: the client sees a cut body, the request is
    /// charged to whoever is behind the listener, the attempt to the upstream.
    fn fail(&mut self, outcome: UpstreamOutcome) {
        self.ctx.stream_failed(outcome);
        self.ctx.cut(Instant::now());
    }

    fn log_stream_failure(&self, error: &dyn std::fmt::Display) {
        if let Some(upstream) = self.ctx.upstream() {
            if let Some(suppressed) = upstream.log_limit.allow() {
                tracing::warn!(upstream = %upstream.name, %error, suppressed, "upstream stream ended early");
            }
        }
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
                // Its one frame is its last: the request ends as it is handed over, as a known
                // length upstream body's does, so the client never reads an end not yet counted.
                let frame = bytes.take().map(|b| Ok(Frame::data(b)));
                this.ctx.finish(Instant::now());
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
                    this.ctx.finish(Instant::now());
                    return Poll::Ready(None);
                }
                match Pin::new(&mut stream.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        stream.waiting_since = None;
                        if let Some(out) = this.upstream_frame(frame) {
                            return Poll::Ready(Some(out));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if e.is_client_body() {
                            // The client's upload broke off and the upstream waits for the rest:
                            // the client's doing, not the upstream's.
                            this.ctx.cut(Instant::now());
                        } else {
                            this.log_stream_failure(&e);
                            this.fail(UpstreamOutcome::Reset);
                        }
                        return Poll::Ready(Some(Err(BodyError::Upstream(e))));
                    }
                    Poll::Ready(None) => {
                        let now = Instant::now();
                        if let Some(lease) = stream.lease.take() {
                            lease.release(&mut stream.body, now);
                        }
                        stream.ended = true;
                        if this.ctx.holds() {
                            this.ctx.upstream_ended(now);
                        }
                        continue;
                    }
                    Poll::Pending => {
                        let err = ready!(stream.poll_deadline(cx));
                        this.log_stream_failure(&err);
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
            Inner::Upstream(_) if self.ctx.holds() => false,
            Inner::Upstream(s) => s.body.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // A stream safety holds back may come out decoded, or end early with the sidecar's
            // error event: its length is not the upstream's. hyper frames a response by this
            // hint where no `Content-Length` says otherwise, so it must not claim the upstream's.
            Inner::Upstream(_) if self.ctx.holds() => SizeHint::default(),
            Inner::Upstream(s) => s.body.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the last poll may never come:
        // a connection whose body is complete still goes back to the pool.
        let mut now = None;
        if let Inner::Upstream(stream) = &mut self.inner {
            if stream.body.is_end_stream() {
                if let Some(lease) = stream.lease.take() {
                    lease.release(&mut stream.body, *now.insert(Instant::now()));
                }
            }
        }
        // A body dropped before its end: the client went away (or hyper, having seen the end,
        // stopped polling). The request is still counted, once (a cut body by the context's
        // own drop).
        if !self.ctx.counted() && self.is_end_stream() {
            self.ctx.finish(now.unwrap_or_else(Instant::now));
        }
    }
}
