//! The request side of an exchange: what is left of the request to write, written as the
//! connection can take it. Normally the request's own task writes it, between reads of the
//! response. When the response head comes before the upload has all gone, the rest moves to a
//! task of its own (the [`Pump`]), so that the upload goes on whether or not anyone reads the
//! answer meanwhile: a client may read nothing until its upload is done.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::task::JoinHandle;

use super::{encode, H1Error, Io};
use crate::upstream::RequestBody;

/// Body chunks up to this size are copied behind the head (one write for both); larger ones are
/// written from their own buffer.
pub(super) const COPY_UP_TO: usize = 8 * 1024;

/// What is left of the request body to send (not `upstream::Upload`, which tracks the client's
/// side of it for the SLIs).
pub(super) enum Outgoing {
    /// Everything is taken into the write buffers (or the write side broke).
    Done,
    Sending {
        body: RequestBody,
        chunked: bool,
        /// Of a body with a `Content-Length`: bytes still to send.
        left: u64,
        said: u64,
    },
}

/// The write side of a connection's exchange.
pub(super) struct Writer {
    /// To write: a head, chunk framing, small chunks.
    pub(super) wbuf: BytesMut,
    /// A large chunk, written after `wbuf`.
    big: Bytes,
    /// `big` is a chunk of a chunked body: its closing CRLF goes once it has.
    crlf_after_big: bool,
    pub(super) upload: Outgoing,
    /// Written since the last flush (TLS keeps records until flushed).
    unflushed: bool,
    /// The request did not all go as it should: the connection carries no other.
    pub(super) broken: bool,
    /// A write failed: the upstream may still have answered (and closed); reading goes on.
    pub(super) write_error: Option<io::Error>,
    /// The client's body broke off: what the upstream sent already is still read; the error is
    /// returned when the response needs more than that (the upstream may wait for the rest).
    pub(super) upload_error: Option<H1Error>,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
            wbuf: BytesMut::new(),
            big: Bytes::new(),
            crlf_after_big: false,
            upload: Outgoing::Done,
            unflushed: false,
            broken: false,
            write_error: None,
            upload_error: None,
        }
    }

    /// Bytes taken but not yet written.
    pub(super) fn unwritten(&self) -> usize {
        self.wbuf.len() + self.big.len()
    }

    /// Bytes of the request are still to be taken from the body or written (a flush alone is
    /// not: it goes on as the response is read).
    pub(super) fn has_bytes_left(&self) -> bool {
        !matches!(self.upload, Outgoing::Done) || self.unwritten() > 0
    }

    /// Everything of the request is written and flushed (or the write side broke).
    #[inline]
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.upload, Outgoing::Done)
            && self.wbuf.is_empty()
            && self.big.is_empty()
            && !self.unflushed
    }

    /// Writes what there is to write of the request, whether or not all of it can go now (the
    /// response is read meanwhile). A broken client body is kept in `upload_error`.
    #[inline]
    pub(super) fn poll_upload<W: AsyncWrite + Unpin>(&mut self, io: &mut W, cx: &mut Context<'_>) {
        loop {
            if let Err(e) = self.gather(cx) {
                self.upload_error = Some(e);
            }
            if self.wbuf.is_empty() && self.big.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(e)) => self.write_failed(e),
                        Poll::Pending => {}
                    }
                }
                return;
            }
            let io = Pin::new(&mut *io);
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
    #[inline]
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
                    self.broken = true;
                    return Err(H1Error::RequestBody(Box::new(e)));
                }
                None => {
                    if *chunked {
                        self.wbuf.extend_from_slice(encode::LAST_CHUNK);
                    } else if *left > 0 {
                        let (said, sent) = (*said, *said - *left);
                        self.upload = Outgoing::Done;
                        self.broken = true;
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
                    self.broken = true;
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
        self.broken = true;
        self.write_error.get_or_insert(e);
    }
}

/// The task that writes the rest of an upload once the response head has come. It ends when
/// the upload has all gone or broke off, and is stopped when the response's body is dropped
/// (its exchange is over: an answer read to its end, an error, or a client that left), so it
/// never outlives the exchange it belongs to. The connection is not reused after it.
pub(super) struct Pump(Option<JoinHandle<Result<(), H1Error>>>);

impl Pump {
    pub(super) fn spawn(mut writer: Writer, mut io: WriteHalf<Io>) -> Pump {
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            writer.poll_upload(&mut io, cx);
            if let Some(e) = writer.upload_error.take() {
                return Poll::Ready(Err(e));
            }
            if let Some(e) = writer.write_error.take() {
                return Poll::Ready(Err(H1Error::Io(e)));
            }
            if writer.is_idle() {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        }));
        Pump(Some(task))
    }

    /// The request body broke off (or did not match its length), once the pump has found so;
    /// any other outcome is `None` (a failed write leaves the response to be read: the upstream
    /// may have answered and closed).
    pub(super) fn poll_upload_error(&mut self, cx: &mut Context<'_>) -> Option<H1Error> {
        let task = self.0.as_mut()?;
        let Poll::Ready(outcome) = Pin::new(task).poll(cx) else {
            return None;
        };
        self.0 = None;
        match outcome {
            Ok(Err(e @ H1Error::RequestBody(_))) => Some(e),
            Ok(Err(e @ H1Error::RequestBodyLength { .. })) => Some(e),
            // A panic in the body's code goes on where the body was read before the pump took
            // it, not lost with the pump.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => None,
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
