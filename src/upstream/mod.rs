//! Upstreams: where a route sends requests, the pooled client that reaches them, and the
//! timeouts that bound an attempt.

pub mod breaker;
mod client;
pub mod keys;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Uri};

pub use client::{build_connector, load_ca_file};
pub use keys::{KeyFileError, KeyRing};
pub use pool::{ConnectionPool, Lease, SendError};

use crate::config::{parse_upstream_url, Protocol, Timeouts, UpstreamConfig, UpstreamUrl};
use crate::telemetry::{
    KeyMetrics, LlmMetrics, LogLimiter, ModelLabels, Telemetry, UpstreamMetrics,
};

/// Idle HTTP/1.1 connections kept per upstream: enough for a busy agent's concurrency, bounded so
/// that a burst does not pin thousands of sockets.
pub const MAX_IDLE_CONNECTIONS: usize = 256;
/// An idle connection older than this is closed rather than reused (providers close theirs
/// after a minute or two; reusing one they are closing costs a failed request).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(50);

/// One upstream as the data plane uses it; built once per config snapshot.
pub struct Upstream {
    pub name: String,
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    pub pool: Arc<ConnectionPool>,
    /// The `x-sloguard-upstream` value, built once: cloning a `HeaderValue` is a reference count.
    pub header_value: HeaderValue,
    /// The `Host` the upstream gets, built once from the URL's authority.
    pub host_header: HeaderValue,
    pub metrics: UpstreamMetrics,
    /// Bounds the warnings this upstream's failures log.
    pub log_limit: LogLimiter,
    /// LLM-call metrics; `None` for `protocol: none`.
    pub llm: Option<Arc<LlmMetrics>>,
    /// Keys injected into every request (`api_keys_file`).
    pub keys: Option<Arc<KeyRing>>,
    /// The model requests to this upstream ask for (`model`), rewritten into the body.
    pub model: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstreams.{name}.url: {message}")]
    Url { name: String, message: String },
    #[error("upstream name {0:?} cannot be a header value")]
    Name(String),
    #[error("upstreams.{name}.tls.ca_file: {message}")]
    Tls { name: String, message: String },
    #[error("upstreams.{name}.api_keys_file: {source}")]
    Keys {
        name: String,
        #[source]
        source: KeyFileError,
    },
}

impl Upstream {
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        agent: &str,
        telemetry: &Telemetry,
        models: &Arc<ModelLabels>,
    ) -> Result<Upstream, UpstreamBuildError> {
        let url = parse_upstream_url(&config.url).map_err(|message| UpstreamBuildError::Url {
            name: name.to_owned(),
            message,
        })?;
        let header_value =
            HeaderValue::from_str(name).map_err(|_| UpstreamBuildError::Name(name.to_owned()))?;
        let host_header =
            HeaderValue::from_str(url.authority.as_str()).map_err(|_| UpstreamBuildError::Url {
                name: name.to_owned(),
                message: "host is not a valid header value".into(),
            })?;
        let target = Uri::builder()
            .scheme(url.scheme.clone())
            .authority(url.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamBuildError::Url {
                name: name.to_owned(),
                message: e.to_string(),
            })?;
        let extra_roots = match &config.tls {
            Some(tls) => load_ca_file(&tls.ca_file),
            None => Ok(Vec::new()),
        };
        let connector = extra_roots
            .and_then(|roots| build_connector(config.timeouts.connect.0, roots))
            .map_err(|message| UpstreamBuildError::Tls {
                name: name.to_owned(),
                message,
            })?;
        let keys = match &config.api_keys_file {
            Some(path) => Some(Arc::new(
                KeyRing::load(
                    path,
                    config.protocol,
                    KeyMetrics::new(telemetry, agent, name),
                )
                .map_err(|source| UpstreamBuildError::Keys {
                    name: name.to_owned(),
                    source,
                })?,
            )),
            None => None,
        };
        let llm = (config.protocol != Protocol::None).then(|| {
            Arc::new(LlmMetrics::new(
                telemetry,
                agent,
                name,
                config.protocol.provider_name(),
                models.clone(),
            ))
        });
        Ok(Upstream {
            llm,
            keys,
            model: config.model.as_deref().map(Arc::from),
            host_header,
            name: name.to_owned(),
            url,
            protocol: config.protocol,
            timeouts: config.timeouts,
            pool: Arc::new(ConnectionPool::new(
                connector,
                target,
                MAX_IDLE_CONNECTIONS,
                IDLE_CONNECTION_TIMEOUT,
                config.timeouts.connect.0,
            )),
            header_value,
            metrics: UpstreamMetrics::new(telemetry, agent, name),
            log_limit: LogLimiter::new(),
        })
    }
}
