//! Upstreams: where a route sends requests, the pooled client that reaches them, and the
//! timeouts that bound an attempt.

mod client;

use http::HeaderValue;

pub use client::{build_client, UpstreamClient};

use crate::config::{parse_upstream_url, Protocol, Timeouts, UpstreamConfig, UpstreamUrl};
use crate::telemetry::{Telemetry, UpstreamMetrics};

/// One upstream as the data plane uses it; built once per config snapshot.
pub struct Upstream {
    pub name: String,
    pub url: UpstreamUrl,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    pub client: UpstreamClient,
    /// The `x-sloguard-upstream` value, built once: cloning a `HeaderValue` is a reference count.
    pub header_value: HeaderValue,
    /// The `Host` the upstream gets, built once from the URL's authority.
    pub host_header: HeaderValue,
    pub metrics: UpstreamMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstreams.{name}.url: {message}")]
    Url { name: String, message: String },
    #[error("upstream name {0:?} cannot be a header value")]
    Name(String),
}

impl Upstream {
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        agent: &str,
        telemetry: &Telemetry,
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
        Ok(Upstream {
            host_header,
            name: name.to_owned(),
            url,
            protocol: config.protocol,
            timeouts: config.timeouts,
            client: build_client(config.timeouts.connect.0),
            header_value,
            metrics: UpstreamMetrics::new(telemetry, agent, name),
        })
    }
}
