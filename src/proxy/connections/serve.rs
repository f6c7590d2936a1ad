//! How a connection is served: by hyper alone (the admin port), or by the sidecar's own HTTP/1.1
//! framing for plain requests, which hands the connection to hyper at the first request out of
//! the ordinary ([`super::plain`]).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::Settings;
use crate::client_body::ClientBody;
use crate::proxy::linger::Handback;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one client connection.
pub(crate) trait Protocol: Send + 'static {
    /// Serves `stream` until the connection ends, closing it gracefully once `closing` turns
    /// true. The socket goes to `back` at the end, unless it was dropped (a request body still
    /// held it).
    fn serve(
        self,
        stream: TcpStream,
        back: oneshot::Sender<TcpStream>,
        settings: Arc<Settings>,
        closing: &AtomicBool,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + '_;
}

/// A hyper service: every request is hyper's.
#[derive(Debug)]
pub(crate) struct Hyper<S>(pub(crate) S);

impl<S, B> Protocol for Hyper<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn serve(
        self,
        stream: TcpStream,
        back: oneshot::Sender<TcpStream>,
        settings: Arc<Settings>,
        closing: &AtomicBool,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        by_hyper(
            Handback::with(stream, back),
            Bytes::new(),
            self.0,
            settings,
            closing,
        )
    }
}

/// Serves the connection `io` with hyper, `read` being what was read from it already.
pub(super) async fn by_hyper<S, B>(
    io: Handback,
    read: Bytes,
    service: S,
    settings: Arc<Settings>,
    closing: &AtomicBool,
) -> Result<(), BoxError>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(Rewind { read, io });
    let conn = settings.builder.serve_connection(io, service).into_owned();
    drop(settings);
    let mut conn = std::pin::pin!(conn);
    let mut told = false;
    poll_fn(|cx| {
        if !told && closing.load(Ordering::Relaxed) {
            told = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// The sidecar's request handler as a hyper service, for the requests hyper serves.
#[derive(Debug)]
pub(super) struct ViaHyper<F>(pub(super) F);

impl<F, Fut, R> hyper::service::Service<Request<Incoming>> for ViaHyper<F>
where
    F: Fn(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Result<R, Infallible>>,
{
    type Response = R;
    type Error = Infallible;
    type Future = Fut;

    fn call(&self, req: Request<Incoming>) -> Fut {
        (self.0)(req.map(ClientBody::Hyper))
    }
}

/// A connection with bytes read from it already: those first.
struct Rewind {
    read: Bytes,
    io: Handback,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.has_remaining() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
