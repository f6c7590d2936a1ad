//! Failures the proxy answers itself, and the one place that maps each to the status the client
//! sees, its bounded `type` label, the upstream outcome, and its log level.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::headers::X_SLOGUARD_ERROR;
use crate::sli::UpstreamOutcome;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not connect to upstream {upstream}")]
    Connect {
        upstream: String,
        #[source]
        source: crate::upstream::pool::BoxError,
    },
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    FirstByteTimeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream} broke the connection or sent an invalid response")]
    Broken {
        upstream: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the request could not be addressed to upstream {upstream}: {reason}")]
    Internal { upstream: String, reason: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect { .. } | ProxyError::Broken { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::FirstByteTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's error `type`, also the `x-sloguard-error` header.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } | ProxyError::Broken { .. } => "upstream_unavailable",
            ProxyError::FirstByteTimeout { .. } => "upstream_timeout",
            ProxyError::Internal { .. } => "proxy_error",
        }
    }

    /// What the attempt counts as in `sloguard_upstream_requests_total`; `None` when no attempt was made.
    pub fn outcome(&self) -> Option<UpstreamOutcome> {
        match self {
            ProxyError::Connect { .. } => Some(UpstreamOutcome::ConnectError),
            ProxyError::FirstByteTimeout { .. } => Some(UpstreamOutcome::Timeout),
            ProxyError::Broken { .. } => Some(UpstreamOutcome::Reset),
            ProxyError::Internal { .. } => None,
        }
    }

    /// Whether the sidecar itself is at fault (`cause="proxy"`).
    pub fn is_proxy_fault(&self) -> bool {
        matches!(self, ProxyError::Internal { .. })
    }

    pub fn log(&self) {
        // The source chain says why (refused, reset, TLS); it never holds request data.
        let detail = error_chain(self);
        match self {
            ProxyError::Internal { .. } => tracing::error!(error = %detail, "proxy fault"),
            _ => tracing::warn!(error = %detail, "upstream attempt failed"),
        }
    }

    /// The JSON response the client gets.
    pub fn to_response(&self) -> Response<Bytes> {
        error_response(self.status(), self.error_type(), &self.to_string())
    }
}

/// `{"error": {"type": ..., "message": ...}}` with `x-sloguard-error: TYPE`.
pub fn error_response(
    status: StatusCode,
    error_type: &'static str,
    message: &str,
) -> Response<Bytes> {
    let body = serde_json::json!({"error": {"type": error_type, "message": message}});
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        X_SLOGUARD_ERROR.clone(),
        HeaderValue::from_static(error_type),
    );
    response
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
