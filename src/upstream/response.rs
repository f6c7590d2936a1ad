//! What an upstream answers with: the body of a response read by sloguard's own HTTP/1.1
//! connection or by hyper's h2 client, and why an exchange failed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::{self, H1Error};

/// Why an exchange failed, on either client.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    H1(#[from] H1Error),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl ExchangeError {
    /// The client's request body broke off while it was sent: the client's doing, not the
    /// upstream's.
    pub fn is_client_body(&self) -> bool {
        match self {
            ExchangeError::H1(e) => matches!(e, H1Error::RequestBody(_)),
            // hyper reports the body's error as a "user" error carrying it.
            ExchangeError::H2(e) => e.is_user() && std::error::Error::source(e).is_some(),
        }
    }

    /// The request could not be sent as given (hyper's "user" errors without a cause; a body
    /// that did not match its `Content-Length`: the client's length is checked as it arrives, so
    /// that is the sidecar's own bookkeeping).
    pub fn is_request_unsendable(&self) -> bool {
        match self {
            ExchangeError::H1(e) => matches!(e, H1Error::RequestBodyLength { .. }),
            ExchangeError::H2(e) => e.is_user() && std::error::Error::source(e).is_none(),
        }
    }
}

/// The body of an upstream's response.
#[derive(Debug)]
pub enum UpstreamBody {
    H1(h1::Body),
    H2(Incoming),
    /// Its connection went back to the pool ([`super::Lease::release`]): ended.
    Released,
}

impl UpstreamBody {
    /// The HTTP/1.1 connection the body was read on, when its exchange ended cleanly; the body is
    /// left ended.
    pub(crate) fn take_reusable(&mut self) -> Option<h1::Conn> {
        match std::mem::replace(self, UpstreamBody::Released) {
            UpstreamBody::H1(body) => body.into_reusable(),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(ExchangeError::H1),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(ExchangeError::H2),
            UpstreamBody::Released => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
            UpstreamBody::Released => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
            UpstreamBody::Released => SizeHint::with_exact(0),
        }
    }
}
