//! Lingering close: a connection the sidecar closes while its client is still sending (an answer
//! made before the request body was read: `overloaded`, `circuit_open`, a kill switch's 503, a
//! refused loop) is drained before its socket goes. Closing a socket with unread data sends a
//! reset, and a reset destroys the answer on its way: the client still uploading sees its
//! connection fail instead of reading the answer. nginx's `lingering_close` is the model: the
//! sidecar's side is shut (the client reads the answer, then end of stream), and what the client
//! still sends is read and thrown away — for at most [`LINGER_TIME`] and [`LINGER_BYTES`], and no
//! longer than [`LINGER_GAP`] without a byte — until the client closes its side too.
//!
//! hyper owns the socket while it serves the connection and drops it when it is done; the socket
//! comes back through [`Handback`], so the connection's task can linger on it after hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The longest a closed connection is drained.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(10);
/// The longest a client may send nothing before the drain gives up on it.
pub(super) const LINGER_GAP: Duration = Duration::from_secs(2);
/// The most a drain reads (the largest body a route may replay).
pub(super) const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// What one read of a drain takes at most.
const LINGER_CHUNK: usize = 16 * 1024;

/// A client socket lent to hyper: handed back, through the sender it was made with,
/// when hyper drops it.
pub(super) struct Handback {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Handback {
    /// `stream`, to go to `back` when dropped.
    pub(super) fn with(stream: TcpStream, back: oneshot::Sender<TcpStream>) -> Handback {
        Handback {
            stream: Some(stream),
            back: Some(back),
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            // Only `drop` takes it.
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Handback {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // The connection's task may have gone (cut at shutdown): the socket then closes.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Handback {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Handback {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Shuts the sidecar's side of `stream` and reads what the client still sends until it closes
/// its side, within the bounds above; returns early when `stop` completes (the connection is
/// told to go: displaced, drained, cut). Then the socket can close without a reset.
pub(super) async fn linger(mut stream: TcpStream, stop: impl std::future::Future<Output = ()>) {
    // The answer is out (hyper has flushed it): end of stream to the client. (hyper may have
    // shut it already; a second shutdown changes nothing.)
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIME;
    let mut stop = std::pin::pin!(stop);
    // Most clients have closed already, or close at the end of stream: a small buffer reads
    // that; one still uploading gets a larger one.
    let mut buf = [0u8; 64].to_vec();
    let mut read: u64 = 0;
    loop {
        let wait = (Instant::now() + LINGER_GAP).min(deadline);
        tokio::select! {
            biased;
            _ = stop.as_mut() => return,
            ready = tokio::time::timeout_at(wait, stream.readable()) => {
                if !matches!(ready, Ok(Ok(()))) {
                    return;
                }
            }
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if n == buf.len() && buf.len() < LINGER_CHUNK {
                    buf.resize(LINGER_CHUNK, 0);
                }
                read += n as u64;
                if read >= LINGER_BYTES {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
