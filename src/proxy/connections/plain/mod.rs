//! The sidecar's own HTTP/1.1 server framing, for plain requests: a `GET`, `POST`, `PUT`,
//! `DELETE`, `PATCH` or `OPTIONS` of HTTP/1.1 with no body or a `Content-Length` one, and no
//! `Expect` or upgrade. It reads the head with `httparse` into the request the pipeline takes,
//! gives the body as it comes (one chunk when it came with the head), and writes the answer's
//! head and body with one vectored write where it can. hyper's HTTP/1.1 server does the same for
//! every request, at a cost (its dispatcher, body channel and buffers) a proxied `GET` paid
//! about a fifth of its instructions for.
//!
//! Anything else — a malformed or oversized head, HTTP/1.0, HTTP/2's preface (h2c), `HEAD`,
//! `CONNECT`, `Expect: 100-continue`, `Transfer-Encoding`, an upgrade — comes at a request's start:
//! the bytes read so far and the rest of the connection go to hyper, which serves (or rejects)
//! it as it always did.
//!
//! A request whose body is not read to its end leaves the connection closed after its answer
//! (the socket lingers, as with hyper); so does `Connection: close`, and a graceful close
//! (displaced, idle, drained) asked for meanwhile.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::serve::{by_hyper, BoxError, Protocol, ViaHyper};
use super::{Settings, MAX_HEADER_BYTES};
use crate::client_body::{self, poll_read_buf, ClientBody, Streamed};
use crate::proxy::linger::Handback;
use crate::upstream::h1::encode::{chunk_start, LAST_CHUNK};
pub use frame::fuzz_request;
use frame::{Framing, Parsed};

mod frame;

/// The read buffer's size.
const READ_RESERVE: usize = 8 * 1024;
/// While the front of the read buffer is still lent out (the request's head and body), reads go
/// into the room left behind it down to this much; below it, a new buffer. Making room at once
/// would allocate a new buffer every request.
const READ_MIN: usize = 2 * 1024;
/// The most values (and room for them) a header map kept for the next request may have: an idle
/// connection holds it.
const SPARE_MAX: usize = 24;

/// The listener's request handler, served on the sidecar's own HTTP/1.1 framing.
#[derive(Debug)]
pub(crate) struct Plain<F>(pub(crate) F);

impl<F, Fut, B> Protocol for Plain<F>
where
    F: Fn(Request<ClientBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    fn serve(
        self,
        stream: TcpStream,
        back: oneshot::Sender<TcpStream>,
        settings: Arc<Settings>,
        closing: &AtomicBool,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        serve(self.0, stream, back, settings, closing)
    }
}

/// One connection's state between its exchanges.
struct Connection {
    /// The socket's read half: `None` while a streamed body has it.
    reader: Option<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// What was read and not yet taken: the start of the next request, perhaps more.
    read: BytesMut,
    /// Where a streamed body hands `read` back (made for the first one).
    lent: Option<client_body::Handback>,
    /// The response head being written, and chunk size lines.
    out: BytesMut,
    /// The last answer's header map, emptied: the next request's headers go in it.
    spare: HeaderMap,
    /// The client closed its side after sending what `read` holds (pipelined requests): those
    /// are still answered.
    read_closed: bool,
}

/// How an exchange left the connection.
enum Next {
    /// Ready for the next request.
    Again,
    /// To be closed: the socket goes back for its lingering close.
    Close,
    /// A request out of the ordinary: hyper takes the connection.
    Hyper,
}

async fn serve<F, Fut, B>(
    handler: F,
    stream: TcpStream,
    back: oneshot::Sender<TcpStream>,
    settings: Arc<Settings>,
    closing: &AtomicBool,
) -> Result<(), BoxError>
where
    F: Fn(Request<ClientBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let (reader, writer) = stream.into_split();
    let mut c = Connection {
        reader: Some(reader),
        writer,
        read: BytesMut::with_capacity(READ_RESERVE),
        lent: None,
        out: BytesMut::with_capacity(512),
        spare: HeaderMap::new(),
        read_closed: false,
    };
    let next = loop {
        let head = match c.next_head(closing).await {
            Ok(Some(Parsed::Plain(head))) => head,
            Ok(Some(_)) => break Next::Hyper,
            Ok(None) => break Next::Close,
            Err(e) => {
                c.give_back(back);
                return Err(e.into());
            }
        };
        let close = head.close;
        let req = c.request(head);
        let Some(Ok(response)) = c.answer_of(std::pin::pin!(handler(req))).await else {
            // The client left: its request's future is gone, and counted so.
            c.give_back(back);
            return Ok(());
        };
        let close = close || closing.load(Ordering::Relaxed);
        let written = {
            // Taken apart and written here: the answer (hundreds of bytes) is not moved again.
            let (mut parts, body) = response.into_parts();
            let written = c.answer(&mut parts, std::pin::pin!(body), close).await;
            c.keep_spare(parts.headers);
            written
            // The body goes here, and with it what it held (an upload still going on).
        };
        if let Err(e) = written {
            c.give_back(back);
            return Err(e);
        }
        match c.after(close) {
            Next::Again => {}
            next => break next,
        }
    };
    match next {
        Next::Hyper => match c.reader.take().map(|r| r.reunite(c.writer)) {
            Some(Ok(stream)) => {
                let read = c.read.freeze();
                let io = Handback::with(stream, back);
                by_hyper(io, read, ViaHyper(handler), settings, closing).await
            }
            _ => Ok(()),
        },
        _ => {
            c.give_back(back);
            Ok(())
        }
    }
}

/// Room to read into: `READ_RESERVE`, taken back from the front of the buffer when nothing holds
/// it any more; while the last request still holds it, what is left if that is `READ_MIN` or
/// more (no allocation then), else a new buffer.
fn make_room(read: &mut BytesMut) {
    let room = read.capacity() - read.len();
    if room < READ_RESERVE && !read.try_reclaim(READ_RESERVE) && room < READ_MIN {
        read.reserve(READ_RESERVE);
    }
}

impl Connection {
    /// Keeps an answer's header map, emptied, for the next request's headers (two allocations
    /// spared a request); not one past [`SPARE_MAX`] values.
    fn keep_spare(&mut self, mut headers: HeaderMap) {
        // `len` too: the room of a name's repeated values is not in `capacity`.
        if headers.len() <= SPARE_MAX && headers.capacity() <= SPARE_MAX {
            headers.clear();
            self.spare = headers;
        }
    }

    /// Reads until the buffer holds a whole head (or one hyper is to read). `None` when the
    /// client closed the connection, or the connection is closing, before a request began.
    async fn next_head(&mut self, closing: &AtomicBool) -> io::Result<Option<Parsed>> {
        loop {
            if !self.read.is_empty() {
                match frame::parse(&mut self.read, &mut self.spare) {
                    Parsed::Partial if self.read.len() < MAX_HEADER_BYTES => {}
                    // Too large: hyper answers it 431.
                    Parsed::Partial => return Ok(Some(Parsed::Unusual)),
                    parsed => return Ok(Some(parsed)),
                }
            }
            if self.read_closed {
                return Ok(None);
            }
            make_room(&mut self.read);
            let (Some(io), read) = (self.reader.as_mut(), &mut self.read) else {
                // Not reached: the read half is back before a next head is read.
                return Ok(None);
            };
            // No whole head in the buffer: a graceful close ends the connection here, whatever
            // part of one (or stray line ends) came.
            let n = poll_fn(|cx| {
                if closing.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                poll_read_buf(io, read, cx)
            })
            .await?;
            if n == 0 {
                // A head cut short is no request: the client is gone.
                return Ok(None);
            }
        }
    }

    /// The request the handler takes, its body as much as came with the head (all of it,
    /// usually), then the rest as it comes.
    fn request(&mut self, head: frame::Head) -> Request<ClientBody> {
        let body = match head.length {
            0 => ClientBody::Whole(None),
            n if n <= self.read.len() as u64 => {
                ClientBody::Whole(Some(self.read.split_to(n as usize).freeze()))
            }
            n => match self.reader.take() {
                Some(io) => {
                    let back = self.lent.get_or_insert_with(Default::default).clone();
                    let read = std::mem::take(&mut self.read);
                    ClientBody::Stream(Streamed::new(io, read, n, back))
                }
                // Not reached: the read half is back before a next head is read.
                None => ClientBody::Whole(None),
            },
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.headers_mut() = head.headers;
        req
    }

    /// Awaits the answer to a request, watching meanwhile for the client to leave, as hyper does:
    /// then `None`, and the request's future is dropped (counted as a client that left).
    /// Bytes the client sends meanwhile (its next request) are kept. Not while a streamed body
    /// has the read half: its own reads see the end.
    async fn answer_of<Fut: Future>(
        &mut self,
        mut fut: std::pin::Pin<&mut Fut>,
    ) -> Option<Fut::Output> {
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.poll_gone(cx).map(|()| None)
        })
        .await
    }

    /// Ready when the client is gone: its connection ended (or broke) with no request of its
    /// own left in the buffer. What it sends meanwhile (pipelined requests) is kept; a client
    /// that closes its side after them still gets their answers, as with hyper. Never ready
    /// while a streamed body has the read half: its own reads see the end.
    fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.read_closed || !self.reclaim() {
            return Poll::Pending;
        }
        let Some(io) = self.reader.as_mut() else {
            return Poll::Pending;
        };
        while self.read.len() < MAX_HEADER_BYTES {
            make_room(&mut self.read);
            match poll_read_buf(io, &mut self.read, cx) {
                Poll::Ready(Ok(0)) if !self.read.is_empty() => {
                    self.read_closed = true;
                    break;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Writes an answer (closing the connection after it if `close`): what is to come next.
    async fn answer<B>(
        &mut self,
        parts: &mut http::response::Parts,
        mut body: std::pin::Pin<&mut B>,
        close: bool,
    ) -> Result<(), BoxError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let exact = body.size_hint().exact();
        // A body dropped with part of it unread closes the connection: the answer says so.
        let close = close || self.left_unread();
        let framing = frame::encode_head(&mut self.out, parts, exact, close);
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // The head goes out with the first chunk of the body, or alone once there is none. A
        // body is read to its end even where none may be sent (204, 304): its end is what
        // counts the request.
        let mut ended = body.is_end_stream();
        while !ended {
            let frame = self.next_frame(body.as_mut()).await?;
            let data = match frame {
                None => {
                    ended = true;
                    Bytes::new()
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers are not passed on over HTTP/1.1.
                    Err(_) => continue,
                },
            };
            ended = ended || body.is_end_stream();
            match framing {
                Framing::None => {}
                Framing::Length(_) => {
                    if data.len() as u64 > left || (ended && data.len() as u64 != left) {
                        return Err("the answer's body differs from its Content-Length".into());
                    }
                    left -= data.len() as u64;
                    self.write(&data, &[]).await?;
                }
                Framing::Chunked => {
                    let mut tail: &[u8] = if ended { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                    if data.is_empty() {
                        tail = if ended { LAST_CHUNK } else { b"" };
                    } else {
                        chunk_start(&mut self.out, data.len());
                    }
                    self.write(&data, tail).await?;
                }
            }
        }
        if !self.out.is_empty() {
            // A head alone; a chunked body that ended with no data has its last chunk to send.
            let tail: &[u8] = if framing == Framing::Chunked {
                LAST_CHUNK
            } else {
                b""
            };
            self.write(&[], tail).await?;
        }
        if left > 0 {
            return Err("the answer's body ended short of its Content-Length".into());
        }
        Ok(())
    }

    /// The answer body's next frame. While it has none yet, what is written so far (the head)
    /// goes out, and the client is watched (a stream may pause for minutes): an error once it
    /// has left.
    async fn next_frame<B: Body>(
        &mut self,
        mut body: std::pin::Pin<&mut B>,
    ) -> Result<Option<Result<http_body::Frame<B::Data>, B::Error>>, BoxError> {
        if let Poll::Ready(frame) = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            return Ok(frame);
        }
        if !self.out.is_empty() {
            self.write(&[], &[]).await?;
        }
        let polled = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => self.poll_gone(cx).map(|()| None),
        });
        polled
            .await
            .ok_or_else(|| "the client left during the answer".into())
    }

    /// Whether the connection can take another request once an answer is out.
    fn after(&mut self, close: bool) -> Next {
        match close || !self.reclaim() {
            true => Next::Close,
            false => Next::Again,
        }
    }

    /// Whether the connection's reads are its own: no streamed body holds the socket, and none
    /// was left unread (its rest cannot be told from a next request). The read buffer a body
    /// gave back is taken back first: what it read past the body comes before anything read
    /// after.
    fn reclaim(&mut self) -> bool {
        if self.reader.is_some() {
            return true;
        }
        let Some(Ok(mut lent)) = self.lent.as_ref().map(|l| l.lock()) else {
            return false;
        };
        match lent.back.take() {
            // The body is still held (an upload still going to the upstream).
            None => false,
            Some((reader, read, 0)) => {
                // Nothing is read into `self.read` while a body has the read half.
                self.reader = Some(reader);
                self.read = read;
                true
            }
            Some(unread) => {
                lent.back = Some(unread);
                false
            }
        }
    }

    /// A streamed body was dropped with part of it unread.
    fn left_unread(&self) -> bool {
        let Some(Ok(lent)) = self.lent.as_ref().map(|l| l.lock()) else {
            return false;
        };
        lent.back.as_ref().is_some_and(|(_, _, unread)| *unread > 0)
    }

    /// Writes what `out` holds, then `data`, then `tail`, all of it.
    async fn write(&mut self, data: &[u8], tail: &[u8]) -> io::Result<()> {
        let mut slices = [
            IoSlice::new(&self.out),
            IoSlice::new(data),
            IoSlice::new(tail),
        ];
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let writer = &mut self.writer;
            let n = poll_fn(|cx| Pin::new(&mut *writer).poll_write_vectored(cx, slices)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        self.out.clear();
        Ok(())
    }

    /// The socket goes back for its lingering close; if a body still holds its read half, the
    /// body sends it back when it goes.
    fn give_back(self, back: oneshot::Sender<TcpStream>) {
        if let Some(reader) = self.reader {
            if let Ok(stream) = reader.reunite(self.writer) {
                let _ = back.send(stream);
            }
            return;
        }
        let Some(Ok(mut lent)) = self.lent.as_ref().map(|l| l.lock()) else {
            return;
        };
        // A body dropped with part of it unread has handed the read half back: the lingering
        // close reads that part away.
        match lent.back.take() {
            Some((reader, _, _)) => {
                if let Ok(stream) = reader.reunite(self.writer) {
                    let _ = back.send(stream);
                }
            }
            None => lent.ended = Some((self.writer, back)),
        }
    }
}

#[cfg(test)]
mod tests;
