//! sloguard's own HTTP/1.1 client connection: one exchange at a time, run by the task of the
//! request that owns it. hyper's client runs each connection as a task of its own and hands the
//! request, the response head and every body chunk across channels between the two tasks;
//! measured here with callgrind, that connection task cost about 12,300 instructions per proxied
//! request, a third of the sidecar's work. Here the request's task writes the head and body
//! itself and reads the response straight into the body the client is sent, with no task, no
//! channel and no wake-up between.
//!
//! The framing is in [`decode`] (the response) and [`encode`] (the request); this module moves
//! bytes, and [`write`] the request's. An upstream may start answering before the upload ends:
//! the rest of the upload then goes on in a task of its own until the answer ends, whether or
//! not the answer is read meanwhile. A connection goes back to the pool only after an exchange
//! that ended cleanly, both ways, with nothing unread. h2 stays on hyper's client.

pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod names;
mod write;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::ReadHalf;
use tokio::net::TcpStream;

use super::RequestBody;
#[doc(hidden)]
pub use decode::fuzz_response;
use decode::{BodyDecoder, DecodeError, Step};
use write::{Outgoing, Pump, Writer};

/// The byte stream of a connection, in tokio's I/O traits.
pub(crate) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// What is read at a time.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The client's request body broke off: the client's doing.
    #[error("request body: {0}")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request body did not match the `Content-Length` it was sent with.
    #[error("request body of {sent} bytes where its Content-Length said {said}")]
    RequestBodyLength { said: u64, sent: u64 },
}

/// An HTTP/1.1 connection to an upstream, between exchanges. Boxed: its TLS state is large, and
/// it moves with every response.
#[derive(Debug)]
pub struct Conn(Box<Inner>);

struct Inner {
    io: Stream,
    /// Read but not yet taken.
    rbuf: BytesMut,
    /// The request, as far as it is not written yet.
    writer: Writer,
    /// The body of the response being read.
    decoder: BodyDecoder,
    /// The upstream closed its end.
    eof: bool,
    /// Fit for another exchange once this one ends cleanly (as the upstream's answer says).
    reusable: bool,
    /// Writes the rest of an upload the response head came before.
    pump: Option<Pump>,
}

/// The connection's byte stream: whole, or its read half while a [`Pump`] writes.
#[allow(
    clippy::large_enum_variant,
    reason = "it lives in the boxed `Inner`; boxing the stream would add a pointer to every read"
)]
enum Stream {
    Whole(Io),
    Read(ReadHalf<Io>),
    /// Only while it is being split.
    Gone,
}

impl Stream {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            // A plain socket read straight: the wrappers cost 100 or so instructions a read.
            Stream::Whole(io) => match io.inner_mut() {
                MaybeHttpsStream::Http(tcp) => {
                    tokio_util::io::poll_read_buf(Pin::new(tcp.inner_mut()), cx, buf)
                }
                MaybeHttpsStream::Https(_) => tokio_util::io::poll_read_buf(Pin::new(io), cx, buf),
            },
            Stream::Read(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// Sizes only: nothing the request or the response carries.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("unread", &self.rbuf.len())
            .field("unwritten", &self.writer.unwritten())
            .field("decoder", &self.decoder)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(io: Io) -> Conn {
        Conn(Box::new(Inner {
            io: Stream::Whole(io),
            rbuf: BytesMut::new(),
            writer: Writer::new(),
            decoder: BodyDecoder::Done,
            eof: false,
            reusable: true,
            pump: None,
        }))
    }

    /// Whether an idle connection is still open with nothing unread, so a request can go on it.
    /// Looks at what the runtime knows of the socket; reads nothing from the network unless the
    /// socket turned readable (the upstream closed it, or sent what nobody asked for).
    pub(crate) fn is_open(&mut self) -> bool {
        let inner = &mut *self.0;
        if !inner.rbuf.is_empty() || inner.eof {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        // A plain socket the runtime does not know readable: open, nothing to read (what a read
        // would find out too, through four layers of wrappers).
        if let Stream::Whole(io) = &inner.io {
            if let MaybeHttpsStream::Http(tcp) = io.inner() {
                if tcp.inner().poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
            }
        }
        inner.rbuf.reserve(64);
        let polled = inner.io.poll_read_buf(&mut cx, &mut inner.rbuf);
        matches!(polled, Poll::Pending)
    }

    /// Sends `req` (its URI in origin form, `Host` set) and waits for the final response head.
    /// The response body reads the rest of the exchange from this connection, which it keeps
    /// until [`Body::into_reusable`] gives it back.
    pub(crate) async fn send(
        mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, H1Error> {
        let (mut parts, body) = req.into_parts();
        let inner = &mut *self.0;
        let framing = encode::head(
            &mut inner.writer.wbuf,
            &parts.method,
            &parts.uri,
            &mut parts.headers,
            body.is_end_stream(),
            body.size_hint().exact(),
        );
        inner.writer.upload = match framing {
            encode::Framing::Length(0) => Outgoing::Done,
            encode::Framing::Length(n) => Outgoing::Sending {
                body,
                chunked: false,
                left: n,
                said: n,
            },
            encode::Framing::Chunked => Outgoing::Sending {
                body,
                chunked: true,
                left: 0,
                said: 0,
            },
        };
        let head_request = parts.method == Method::HEAD;
        // The request's header map, written out, takes the response's headers.
        let mut spare = std::mem::take(&mut parts.headers);
        spare.clear();
        let head = std::future::poll_fn(|cx| inner.poll_head(cx, head_request, &mut spare)).await?;
        inner.decoder = BodyDecoder::new(head.framing);
        inner.reusable &= head.keep_alive;
        if inner.writer.has_bytes_left() {
            inner.pump_the_rest();
        }
        let mut response = Response::new(Body { conn: self });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }
}

impl Inner {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        spare: &mut HeaderMap,
    ) -> Poll<Result<decode::Head, H1Error>> {
        self.poll_upload(cx);
        loop {
            if let Some(head) = decode::take_head(&mut self.rbuf, head_request, spare)? {
                return Poll::Ready(Ok(head));
            }
            if let Some(e) = self.writer.upload_error.take() {
                return Poll::Ready(Err(e));
            }
            if self.eof {
                return Poll::Ready(Err(match self.writer.write_error.take() {
                    Some(e) => H1Error::Io(e),
                    None => DecodeError::Incomplete.into(),
                }));
            }
            std::task::ready!(self.poll_read(cx))?;
        }
    }

    /// Reads what the upstream sent into `rbuf` (`eof` set when it closed).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 4 {
            self.rbuf.reserve(READ_SIZE);
        }
        let n = std::task::ready!(self.io.poll_read_buf(cx, &mut self.rbuf))?;
        if n == 0 {
            self.eof = true;
            self.reusable = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what it can of the request, unless a [`Pump`] does.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        match &mut self.io {
            // A plain socket written straight: the wrappers cost 100 or so instructions a write.
            Stream::Whole(io) => match io.inner_mut() {
                MaybeHttpsStream::Http(tcp) => self.writer.poll_upload(tcp.inner_mut(), cx),
                MaybeHttpsStream::Https(_) => self.writer.poll_upload(io, cx),
            },
            Stream::Read(_) | Stream::Gone => {}
        }
    }

    /// Hands the rest of the request to a [`Pump`]: the response head has come before it all
    /// went. The connection is not reused after it.
    fn pump_the_rest(&mut self) {
        let Stream::Whole(io) = std::mem::replace(&mut self.io, Stream::Gone) else {
            return;
        };
        let (read, write) = tokio::io::split(io);
        self.io = Stream::Read(read);
        let mut writer = std::mem::replace(&mut self.writer, Writer::new());
        // An error the client's body already gave stays here, for the response to return.
        self.writer.upload_error = writer.upload_error.take();
        self.reusable = false;
        self.pump = Some(Pump::spawn(writer, write));
    }

    /// The request body's error, once there is one to return.
    fn take_upload_error(&mut self, cx: &mut Context<'_>) -> Option<H1Error> {
        if let Some(e) = self.writer.upload_error.take() {
            return Some(e);
        }
        self.pump.as_mut()?.poll_upload_error(cx)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.poll_upload(cx);
        loop {
            match self.decoder.decode(&mut self.rbuf, self.eof) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {
                    if let Some(e) = self.take_upload_error(cx) {
                        self.decoder = BodyDecoder::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Err(e) => {
                    self.reusable = false;
                    self.decoder = BodyDecoder::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if let Err(e) = std::task::ready!(self.poll_read(cx)) {
                self.reusable = false;
                self.decoder = BodyDecoder::Done;
                return Poll::Ready(Some(Err(e.into())));
            }
        }
    }
}

/// The body of a response read on a [`Conn`], which it holds until the exchange ends.
#[derive(Debug)]
pub struct Body {
    conn: Conn,
}

impl Body {
    /// The connection, when the exchange ended cleanly both ways and it may carry another.
    pub(crate) fn into_reusable(self) -> Option<Conn> {
        let inner = &*self.conn.0;
        let clean = inner.reusable
            && !inner.writer.broken
            && inner.writer.is_idle()
            && matches!(inner.io, Stream::Whole(_))
            && inner.decoder.is_done()
            && inner.rbuf.is_empty();
        clean.then_some(self.conn)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.get_mut().conn.0.poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.conn.0.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.conn
            .0
            .decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests;
