//! What starting a sidecar (or binding a listener on reload) can fail on.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::upstream::UpstreamBuildError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] UpstreamBuildError),
    #[error("admin.token_file: {0}")]
    AdminToken(String),
    #[error(transparent)]
    Otlp(#[from] crate::telemetry::otlp::OtlpError),
    #[error("correctness.judge: cannot start the judge's thread: {0}")]
    Judge(std::io::Error),
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` for the config key `key` (named in the error).
pub(super) async fn bind(key: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}
