//! sloguard's own HTTP/1.1 client connection: one exchange at a time, run by the task of the
//! request that owns it. hyper's client runs each connection as a task of its own and hands the
//! request, the response head and every body chunk across channels between the two tasks;
//! measured here with callgrind, that connection task cost about 12,300 instructions per proxied
//! request, a third of the sidecar's work. Here the request's task writes the head and body
//! itself and reads the response straight into the body the client is sent, with no task, no
//! channel and no wake-up between.
//!
//! The framing is in [`decode`] (the response) and [`encode`] (the request); this module moves
//! bytes. While the response is read, what is left of the request body is still written (an
//! upstream may start answering before the upload ends). A connection goes back to the pool
//! only after an exchange that ended cleanly, both ways, with nothing unread. h2 stays on
//! hyper's client.

pub(crate) mod decode;
pub(crate) mod encode;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::RequestBody;
#[doc(hidden)]
pub use decode::fuzz_response;
use decode::{BodyDecoder, DecodeError, Step};

/// The byte stream of a connection, in tokio's I/O traits.
pub(crate) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Body chunks up to this size are copied behind the head (one write for both); larger ones are
/// written from their own buffer.
const COPY_UP_TO: usize = 8 * 1024;
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
    io: Io,
    /// Read but not yet taken.
    rbuf: BytesMut,
    /// To write: a head, chunk framing, small chunks.
    wbuf: BytesMut,
    /// A large chunk, written after `wbuf`.
    big: Bytes,
    /// `big` is a chunk of a chunked body: its closing CRLF goes once it has.
    crlf_after_big: bool,
    upload: Outgoing,
    /// The body of the response being read.
    decoder: BodyDecoder,
    /// The upstream closed its end.
    eof: bool,
    /// Written since the last flush (TLS keeps records until flushed).
    unflushed: bool,
    /// Fit for another exchange once this one ends cleanly.
    reusable: bool,
    /// A write failed: the upstream may still have answered (and closed); reading goes on.
    write_error: Option<io::Error>,
    /// The client's body broke off: what the upstream sent already is still read; the error is
    /// returned when the response needs more than that (the upstream may wait for the rest).
    upload_error: Option<H1Error>,
}

/// Sizes only: nothing the request or the response carries.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("unread", &self.rbuf.len())
            .field("unwritten", &(self.wbuf.len() + self.big.len()))
            .field("decoder", &self.decoder)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

/// What is left of the request body to send (not `upstream::Upload`, which tracks the client's
/// side of it for the SLIs).
enum Outgoing {
    /// Everything is written (or the write side broke).
    Done,
    Sending {
        body: RequestBody,
        chunked: bool,
        /// Of a body with a `Content-Length`: bytes still to send.
        left: u64,
        said: u64,
    },
}

impl Conn {
    pub(crate) fn new(io: Io) -> Conn {
        Conn(Box::new(Inner {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            big: Bytes::new(),
            crlf_after_big: false,
            upload: Outgoing::Done,
            decoder: BodyDecoder::Done,
            eof: false,
            unflushed: false,
            reusable: true,
            write_error: None,
            upload_error: None,
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
        inner.rbuf.reserve(64);
        let mut cx = Context::from_waker(Waker::noop());
        let polled =
            tokio_util::io::poll_read_buf(Pin::new(&mut inner.io), &mut cx, &mut inner.rbuf);
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
            &mut inner.wbuf,
            &parts.method,
            &parts.uri,
            &mut parts.headers,
            body.is_end_stream(),
            body.size_hint().exact(),
        );
        inner.upload = match framing {
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
        let head = std::future::poll_fn(|cx| inner.poll_head(cx, head_request)).await?;
        inner.decoder = BodyDecoder::new(head.framing);
        inner.reusable &= head.keep_alive;
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
    ) -> Poll<Result<decode::Head, H1Error>> {
        self.poll_upload(cx);
        loop {
            if let Some(head) = decode::take_head(&mut self.rbuf, head_request)? {
                return Poll::Ready(Ok(head));
            }
            if let Some(e) = self.upload_error.take() {
                return Poll::Ready(Err(e));
            }
            if self.eof {
                return Poll::Ready(Err(match self.write_error.take() {
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
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == 0 {
            self.eof = true;
            self.reusable = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what there is to write of the request, whether or not all of it can go now (the
    /// response is read meanwhile). A broken client body is kept in `upload_error`.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Err(e) = self.gather(cx) {
                self.upload_error = Some(e);
            }
            if self.wbuf.is_empty() && self.big.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(e)) => self.write_failed(e),
                        Poll::Pending => {}
                    }
                }
                return;
            }
            let io = Pin::new(&mut self.io);
            let written = if self.wbuf.is_empty() {
                io.poll_write(cx, &self.big)
            } else if self.big.is_empty() {
                io.poll_write(cx, &self.wbuf)
            } else {
                let bufs = [io::IoSlice::new(&self.wbuf), io::IoSlice::new(&self.big)];
                io.poll_write_vectored(cx, &bufs)
            };
            match written {
                Poll::Pending => return,
                Poll::Ready(Ok(0)) => self.write_failed(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.unflushed = true;
                    let from_wbuf = n.min(self.wbuf.len());
                    self.wbuf.advance(from_wbuf);
                    self.big.advance(n - from_wbuf);
                    if self.big.is_empty() && self.crlf_after_big {
                        // The chunk in `big` has gone: its closing CRLF follows.
                        self.crlf_after_big = false;
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                }
                Poll::Ready(Err(e)) => self.write_failed(e),
            }
        }
    }

    /// Takes what the request body has ready into the write buffers, up to a bound.
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        while self.big.is_empty() && self.wbuf.len() < COPY_UP_TO {
            let Outgoing::Sending {
                body,
                chunked,
                left,
                said,
            } = &mut self.upload
            else {
                return Ok(());
            };
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(frame) => frame,
            };
            let data = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not sent (hyper sends only those the `Trailer` header names).
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    self.upload = Outgoing::Done;
                    self.reusable = false;
                    return Err(H1Error::RequestBody(Box::new(e)));
                }
                None => {
                    if *chunked {
                        self.wbuf.extend_from_slice(encode::LAST_CHUNK);
                    } else if *left > 0 {
                        let (said, sent) = (*said, *said - *left);
                        self.upload = Outgoing::Done;
                        self.reusable = false;
                        return Err(H1Error::RequestBodyLength { said, sent });
                    }
                    self.upload = Outgoing::Done;
                    return Ok(());
                }
            };
            if data.is_empty() {
                continue;
            }
            if *chunked {
                encode::chunk_start(&mut self.wbuf, data.len());
            } else {
                let len = data.len() as u64;
                if len > *left {
                    let (said, sent) = (*said, *said - *left + len);
                    self.upload = Outgoing::Done;
                    self.reusable = false;
                    return Err(H1Error::RequestBodyLength { said, sent });
                }
                *left -= len;
            }
            if data.len() <= COPY_UP_TO {
                self.wbuf.extend_from_slice(&data);
            } else {
                // Behind what `wbuf` holds; a chunk's closing CRLF follows with the next write.
                self.big = data;
            }
            if *chunked {
                if self.big.is_empty() {
                    self.wbuf.extend_from_slice(b"\r\n");
                } else {
                    self.crlf_after_big = true;
                }
            }
        }
        Ok(())
    }

    fn write_failed(&mut self, e: io::Error) {
        self.upload = Outgoing::Done;
        self.wbuf.clear();
        self.big = Bytes::new();
        self.crlf_after_big = false;
        self.unflushed = false;
        self.reusable = false;
        self.write_error.get_or_insert(e);
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.poll_upload(cx);
        loop {
            match self.decoder.decode(&mut self.rbuf, self.eof) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {
                    if let Some(e) = self.upload_error.take() {
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
            && inner.decoder.is_done()
            && matches!(inner.upload, Outgoing::Done)
            && inner.wbuf.is_empty()
            && inner.big.is_empty()
            && !inner.unflushed
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
