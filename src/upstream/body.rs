//! The client's request body on its way to the upstream. It streams through untouched and notes
//! how the upload is going, so that a failed or slow exchange is charged to whoever caused it:
//! a client that hangs up mid-upload, or stalls, is not the upstream's failure.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::budget::{BodyBudget, Held, Reservation};
use crate::client_body::{ClientBody, ClientBodyError};
use crate::inspect::echo::{EchoTap, Echoes};
use crate::inspect::text::TextPrefix;
use crate::inspect::{parse_request, Collected, Format, RequestFacts, Unparsed};

/// How the upload stands, shared between the body (polled by the upstream connection) and the
/// request's handler.
#[derive(Debug)]
pub struct Upload {
    started: Instant,
    /// Microseconds after `started` of the client's last chunk.
    last_chunk_micros: AtomicU64,
    waiting_on_client: AtomicBool,
    complete: AtomicBool,
    failed: AtomicBool,
    /// What an LLM request said, once its body has been read (`Err`: it could not be).
    pub request: OnceLock<Result<RequestFacts, Unparsed>>,
    /// What the safety detectors found in the request, once its body has been read (where a
    /// kill switch needs to tell echoes apart).
    pub echoes: OnceLock<Echoes>,
}

/// The first bytes of a request body's text, kept for a sample (the judge's): handed over when
/// the upload ends, with the reservation that counts them and whether some went by unkept.
#[derive(Default)]
pub(crate) struct BodySample(Mutex<Option<(Bytes, Reservation, bool)>>);

/// Sizes only: what is kept is what a client said.
impl std::fmt::Debug for BodySample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self
            .0
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|k| k.0.len()));
        f.debug_struct("BodySample").field("kept", &len).finish()
    }
}

impl BodySample {
    /// What was kept, once: `None` before the upload ended (one that never did).
    pub(crate) fn take(&self) -> Option<(Bytes, Reservation, bool)> {
        self.0.lock().ok()?.take()
    }

    fn put(&self, prefix: TextPrefix) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(prefix.finish());
        }
    }
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

impl crate::sli::liveness::AgentsTurn for Upload {
    /// The body is whole, or the upstream (the agent) stopped reading it: since the last chunk.
    fn agents_turn_since(&self) -> Option<Instant> {
        let client_sending = !self.complete.load(Ordering::Acquire)
            && self.waiting_on_client.load(Ordering::Acquire);
        (!client_sending && !self.failed()).then(|| self.last_chunk_at())
    }
}

impl Upload {
    /// When the client's last chunk arrived (the start, before any).
    pub fn last_chunk_at(&self) -> Instant {
        self.started + Duration::from_micros(self.last_chunk_micros.load(Ordering::Acquire))
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The whole body went out.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
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

/// Where the body's bytes come from.
enum Source {
    /// Straight from the client, as the upstream reads them.
    Client(ClientBody),
    /// Read ahead, found too large to keep whole: these chunks first, then whatever the client
    /// still sends.
    Buffered {
        chunks: VecDeque<Bytes>,
        rest: Option<ClientBody>,
    },
    /// Read whole, shared by every attempt: each sends the same chunks (reference counts), from
    /// `next` on.
    Replay { chunks: Arc<[Bytes]>, next: usize },
}

/// Sizes only: the chunks are the client's request.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Client(_) => f.write_str("Client"),
            Source::Buffered { chunks, rest } => f
                .debug_struct("Buffered")
                .field("chunks", &chunks.len())
                .field("rest", &rest.is_some())
                .finish(),
            Source::Replay { chunks, next } => f
                .debug_struct("Replay")
                .field("chunks", &chunks.len())
                .field("next", next)
                .finish(),
        }
    }
}

/// An LLM request's chunks, kept to be parsed when the upload ends.
#[derive(Debug)]
struct Tap {
    format: Format,
    body: Collected,
    too_large: bool,
}

impl Tap {
    fn new(format: Format) -> Box<Tap> {
        Box::new(Tap {
            format,
            body: Collected::default(),
            too_large: false,
        })
    }
}

#[derive(Debug)]
pub struct RequestBody {
    source: Source,
    /// `None` for a request without a body: nothing to watch.
    upload: Option<Arc<Upload>>,
    /// Boxed: only a streamed LLM request has one, and a smaller body is a smaller request to
    /// move on every attempt.
    tap: Option<Box<Tap>>,
    /// The request's text through the safety detectors (boxed: only where a kill switch
    /// counts, and its scanner is large).
    echo: Option<Box<EchoTap>>,
    /// The first bytes kept for a sampled request (boxed: only a sampled one has it).
    sample: Option<Box<(TextPrefix, Arc<BodySample>)>>,
}

fn new_upload(started: Instant) -> Arc<Upload> {
    Arc::new(Upload::starting(started))
}

impl Upload {
    /// An upload that starts at `started`, nothing received yet.
    fn starting(started: Instant) -> Upload {
        Upload {
            started,
            last_chunk_micros: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            request: OnceLock::new(),
            echoes: OnceLock::new(),
        }
    }
}

impl RequestBody {
    /// The client's body, streamed; with `tap`, its LLM request facts are read on the way.
    pub fn new(
        inner: ClientBody,
        started: Instant,
        tap: Option<Format>,
    ) -> (RequestBody, Option<Arc<Upload>>) {
        let upload = (!inner.is_end_stream()).then(|| new_upload(started));
        let tap = tap.filter(|_| upload.is_some()).map(Tap::new);
        (
            RequestBody {
                source: Source::Client(inner),
                upload: upload.clone(),
                tap,
                echo: None,
                sample: None,
            },
            upload,
        )
    }

    /// A body read ahead: `chunks`, then `rest` (what the client has not sent yet, if anything).
    /// `request` is what was learned from it already; without it, `tap` reads the LLM request's
    /// facts on the way, as [`RequestBody::new`] does.
    pub fn buffered(
        chunks: VecDeque<Bytes>,
        rest: Option<ClientBody>,
        started: Instant,
        request: Option<Result<RequestFacts, Unparsed>>,
        tap: Option<Format>,
    ) -> (RequestBody, Option<Arc<Upload>>) {
        let complete = rest.is_none();
        let empty = chunks.is_empty() && rest.as_ref().is_none_or(ClientBody::is_end_stream);
        let source = Source::Buffered { chunks, rest };
        RequestBody::ahead(source, empty, complete, started, request, tap)
    }

    /// A whole body kept for replay: one attempt's copy of it (reference counts, no bytes).
    pub fn replay(
        chunks: Arc<[Bytes]>,
        started: Instant,
        request: Option<Result<RequestFacts, Unparsed>>,
        tap: Option<Format>,
    ) -> (RequestBody, Option<Arc<Upload>>) {
        let empty = chunks.iter().all(Bytes::is_empty);
        let source = Source::Replay { chunks, next: 0 };
        RequestBody::ahead(source, empty, true, started, request, tap)
    }

    fn ahead(
        source: Source,
        empty: bool,
        complete: bool,
        started: Instant,
        request: Option<Result<RequestFacts, Unparsed>>,
        tap: Option<Format>,
    ) -> (RequestBody, Option<Arc<Upload>>) {
        // An empty body with nothing learned from it has nothing to watch (and may never be
        // polled): no upload, as for [`RequestBody::new`].
        if empty && request.is_none() {
            let body = RequestBody {
                source,
                upload: None,
                tap: None,
                echo: None,
                sample: None,
            };
            return (body, None);
        }
        let upload = new_upload(started);
        let tap = match request {
            Some(facts) => {
                let _ = upload.request.set(facts);
                None
            }
            None => tap.map(Tap::new),
        };
        if complete {
            upload.complete.store(true, Ordering::Release);
        }
        (
            RequestBody {
                source,
                upload: Some(upload.clone()),
                tap,
                echo: None,
                sample: None,
            },
            Some(upload),
        )
    }

    /// Counts the LLM request's bytes kept for reading against `budget` (a request the budget
    /// has no room for goes on unread, counted as unparsed).
    pub fn reserve_from(&mut self, budget: &BodyBudget) {
        if let Some(tap) = &mut self.tap {
            let body = std::mem::take(&mut tap.body);
            tap.body = body.reserve_from(budget.reserve(Held::RequestTap));
        }
    }

    /// Reads the request's text through the safety detectors on its way (a body without an
    /// upload to report to has none).
    pub fn tap_echoes(&mut self, tap: Option<EchoTap>) {
        if self.upload.is_some() {
            self.echo = tap.map(Box::new);
        }
    }

    /// Keeps the first bytes of the body's text in `prefix`, handed to `slot` when the upload
    /// ends.
    pub(crate) fn keep_sample(&mut self, prefix: TextPrefix, slot: Arc<BodySample>) {
        if self.is_end_stream() {
            slot.put(prefix);
        } else {
            self.sample = Some(Box::new((prefix, slot)));
        }
    }

    /// Hands the sample over (the body ended).
    fn give_sample(&mut self) {
        if let Some(sample) = self.sample.take() {
            let (prefix, slot) = *sample;
            slot.put(prefix);
        }
    }

    /// What the detectors found, once, when the upload has ended.
    fn read_echoes(&mut self) {
        if let (Some(tap), Some(upload)) = (self.echo.take(), &self.upload) {
            let _ = upload.echoes.set(tap.finish());
        }
    }

    /// Parses what the tap holds, once, when the upload has ended.
    fn read_tap(&mut self) {
        let (Some(tap), Some(upload)) = (self.tap.take(), &self.upload) else {
            return;
        };
        let tap = *tap;
        let facts = if tap.too_large {
            Err(Unparsed::RequestTooLarge)
        } else {
            parse_request(tap.format, &tap.body.into_bytes())
        };
        let _ = upload.request.set(facts);
    }
}

/// Polls the client's body and notes how the upload goes.
fn poll_client(
    inner: &mut ClientBody,
    upload: Option<&Upload>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
    let polled = Pin::new(inner).poll_frame(cx);
    if let Some(u) = upload {
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

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Client(inner) => poll_client(inner, this.upload.as_deref(), cx),
            Source::Buffered { chunks, rest } => match chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => match rest {
                    Some(inner) => poll_client(inner, this.upload.as_deref(), cx),
                    None => Poll::Ready(None),
                },
            },
            Source::Replay { chunks, next } => {
                let chunk = chunks.get(*next).cloned();
                *next += 1;
                Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
            }
        };
        if let Some(echo) = &mut this.echo {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        echo.feed(data);
                    }
                    if this.is_end_stream() {
                        this.read_echoes();
                    }
                }
                Poll::Ready(None) => this.read_echoes(),
                Poll::Ready(Some(Err(_))) => this.echo = None,
                Poll::Pending => {}
            }
        }
        if let Some(sample) = &mut this.sample {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        sample.0.push(data);
                    }
                    if this.is_end_stream() {
                        this.give_sample();
                    }
                }
                Poll::Ready(None) => this.give_sample(),
                Poll::Ready(Some(Err(_))) => this.sample = None,
                Poll::Pending => {}
            }
        }
        if let Some(tap) = &mut this.tap {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if !tap.too_large && !tap.body.push(data) {
                            tap.too_large = true;
                            tap.body = Collected::default();
                        }
                    }
                    // hyper stops polling a body that says it has ended: this may be the last call.
                    if this.is_end_stream() {
                        this.read_tap();
                    }
                }
                Poll::Ready(None) => this.read_tap(),
                Poll::Ready(Some(Err(_))) => this.tap = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Client(inner) => inner.is_end_stream(),
            Source::Buffered { chunks, rest } => {
                chunks.is_empty() && rest.as_ref().is_none_or(ClientBody::is_end_stream)
            }
            Source::Replay { chunks, next } => *next >= chunks.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Client(inner) => inner.size_hint(),
            Source::Buffered { chunks, rest } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                let rest = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), ClientBody::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered + upper);
                }
                hint
            }
            Source::Replay { chunks, next } => SizeHint::with_exact(
                chunks
                    .get(*next..)
                    .map_or(0, |rest| rest.iter().map(|c| c.len() as u64).sum()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(at: Instant) -> Upload {
        Upload::starting(at)
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
