//! The body of a client's request, whichever server framed it: hyper's (`Incoming`: HTTP/2, and
//! HTTP/1.1 requests out of the ordinary) or the sidecar's own HTTP/1.1 connection
//! (`proxy::connections::plain`), which gives a body already read with its head as one chunk and
//! streams any other from the socket's read half, which it hands back to the connection after.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The most one read of a streamed body asks the socket for.
const READ_CHUNK: usize = 16 * 1024;

/// A client's request body.
#[derive(Debug)]
pub enum ClientBody {
    /// Framed by hyper.
    Hyper(Incoming),
    /// Read whole with its head (`None` once given out, or for a request without a body).
    Whole(Option<Bytes>),
    /// Still coming on the client's connection.
    Stream(Streamed),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> ClientBody {
        ClientBody::Hyper(body)
    }
}

/// Why a client's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
    #[error("the client closed its connection before the request body ended")]
    Incomplete,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
            ClientBody::Whole(whole) => Poll::Ready(whole.take().map(|b| Ok(Frame::data(b)))),
            ClientBody::Stream(s) => s.poll_chunk(cx).map(|c| c.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(inner) => inner.is_end_stream(),
            ClientBody::Whole(whole) => whole.is_none(),
            ClientBody::Stream(s) => s.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(inner) => inner.size_hint(),
            ClientBody::Whole(whole) => {
                SizeHint::with_exact(whole.as_ref().map_or(0, |b| b.len() as u64))
            }
            ClientBody::Stream(s) => SizeHint::with_exact(s.remaining),
        }
    }
}

/// What a streamed body and its connection share: where the body hands the socket's read half
/// back, and where a connection that ended first leaves the rest of the socket for it.
pub type Handback = Arc<Mutex<Lent>>;

/// See [`Handback`].
#[derive(Debug, Default)]
pub struct Lent {
    /// The read half, the read buffer (what the body did not give out: the next request's
    /// bytes, if the client sent them already) and how much of the body was left unread.
    pub(crate) back: Option<(OwnedReadHalf, BytesMut, u64)>,
    /// The write half and where the whole socket goes (its lingering close), left by a
    /// connection that ended while the body was still held (an upload an upstream's early
    /// answer left to a task of its own): the body sends the socket on when it goes.
    pub(crate) ended: Option<(OwnedWriteHalf, oneshot::Sender<TcpStream>)>,
}

/// A body of a known length still coming on the client's connection: it takes the socket's read
/// half (the connection only writes while the body is out) and hands it back, with the read
/// buffer, when it is dropped.
pub struct Streamed {
    /// `None` only once dropped.
    io: Option<OwnedReadHalf>,
    buf: BytesMut,
    remaining: u64,
    back: Handback,
}

/// Sizes only: the bytes are the client's.
impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("buffered", &self.buf.len())
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Streamed {
    /// A body of `length` bytes, the first of them (and perhaps more: the next request's) in
    /// `buf`, the rest to come on `io`.
    pub(crate) fn new(io: OwnedReadHalf, buf: BytesMut, length: u64, back: Handback) -> Streamed {
        Streamed {
            io: Some(io),
            buf,
            remaining: length,
            back,
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ClientBodyError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.buf.is_empty() {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Some(Err(ClientBodyError::Incomplete)));
            };
            let want = (self.remaining as usize).clamp(1, READ_CHUNK);
            self.buf.reserve(want);
            match ready!(poll_read_buf(io, &mut self.buf, cx)) {
                Ok(0) => return Poll::Ready(Some(Err(ClientBodyError::Incomplete))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
        let take = (self.buf.len() as u64).min(self.remaining) as usize;
        self.remaining -= take as u64;
        Poll::Ready(Some(Ok(self.buf.split_to(take).freeze())))
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let (Some(io), Ok(mut lent)) = (self.io.take(), self.back.lock()) else {
            return;
        };
        match lent.ended.take() {
            Some((writer, socket)) => {
                if let Ok(stream) = io.reunite(writer) {
                    let _ = socket.send(stream);
                }
            }
            None => lent.back = Some((io, buf, self.remaining)),
        }
    }
}

/// Reads what `io` has into `buf`'s spare room (at least one byte of it): the count, 0 at the end
/// of the stream. Through `AsyncRead`, which takes a read that did not fill the room as the end
/// of what the socket had: the next read waits for readiness instead of trying (a system call
/// that would fail).
pub(crate) fn poll_read_buf(
    io: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}
