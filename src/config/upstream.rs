//! `upstreams.*`: where requests go — the URL and protocol, timeouts, TLS, keys, the model
//! rewrite, the circuit breaker, the shared h2 connections and the idle connection pool.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

pub use crate::inspect::Protocol;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Provider API keys, one a line, injected into every request (the client's own key headers
    /// removed); re-read when the file changes.
    #[serde(default)]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Rewrites the request body's `model` for this upstream.
    #[serde(default)]
    pub model: Option<String>,
    /// Skips this upstream while it fails (see `upstream::breaker`). An empty
    /// `circuit_breaker:` means the defaults, not no breaker.
    #[serde(default, deserialize_with = "breaker_or_defaults")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The shared HTTP/2 connections to an `https://` upstream that offers h2.
    #[serde(default)]
    pub h2: H2Config,
    /// The idle HTTP/1.1 connections kept for the next request.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// `upstreams.*.pool`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// An idle connection is closed, never reused, once it has been idle this long: it must go
    /// before the upstream closes it, or a request written as the upstream closes it fails.
    /// Absent: [`LOOPBACK_POOL_IDLE`] for an upstream on this host, [`REMOTE_POOL_IDLE`] for
    /// others. `0s`: no connection is reused.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
}

/// The idle limit of connections to an upstream on this host (the agent in the pod): below the
/// shortest common server default (gunicorn closes idle connections after 2 s; uvicorn and
/// Node.js after 5 s), since a new connection over loopback costs microseconds.
pub(super) const LOOPBACK_POOL_IDLE: Duration = Duration::from_secs(1);
/// The idle limit of connections to other upstreams (providers, over TLS, where a new
/// connection costs round trips): below the usual one-minute limits of load balancers and
/// reverse proxies (AWS ALB 60 s, nginx 75 s).
pub(super) const REMOTE_POOL_IDLE: Duration = Duration::from_secs(50);

/// `upstreams.*.h2`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct H2Config {
    /// Connections requests are spread over, in turn (each multiplexes many).
    #[serde(default = "default_h2_connections")]
    pub connections: usize,
    /// PINGs, also while idle: a connection whose PING goes unanswered for `keepalive_timeout`
    /// is closed, and the next request makes a new one.
    #[serde(default = "default_h2_keepalive_interval")]
    pub keepalive_interval: ConfigDuration,
    #[serde(default = "default_h2_keepalive_timeout")]
    pub keepalive_timeout: ConfigDuration,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            connections: default_h2_connections(),
            keepalive_interval: default_h2_keepalive_interval(),
            keepalive_timeout: default_h2_keepalive_timeout(),
        }
    }
}

/// Most connections an upstream's requests may be spread over.
pub const MAX_H2_CONNECTIONS: usize = 64;

/// One: providers' stream limits (100 and more) are rarely the bound, and each connection is a
/// TLS handshake. More spread the requests in flight, so that a connection lost takes fewer
/// with it.
fn default_h2_connections() -> usize {
    1
}
fn default_h2_keepalive_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(20))
}
fn default_h2_keepalive_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn breaker_or_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<CircuitBreakerConfig>, D::Error> {
    let given = Option::<CircuitBreakerConfig>::deserialize(d)?;
    Ok(Some(given.unwrap_or_else(|| CircuitBreakerConfig {
        consecutive_failures: default_consecutive(),
        failure_rate: default_failure_rate(),
        min_requests: default_min_requests(),
        window: default_window(),
        open_for: default_open_for(),
        max_open_for: None,
        half_open_probes: default_probes(),
        slow_call: None,
    })))
}

/// `upstreams.*.circuit_breaker`; defaults as in the contract.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    #[serde(default = "default_open_for")]
    pub open_for: ConfigDuration,
    /// Absent: see [`CircuitBreakerConfig::max_open_for`].
    #[serde(default)]
    pub max_open_for: Option<ConfigDuration>,
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    #[serde(default)]
    pub slow_call: Option<SlowCallConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowCallConfig {
    /// A call whose response head comes later than this is slow.
    pub threshold: ConfigDuration,
    /// The slow share of the window that opens the circuit.
    #[serde(default = "default_slow_rate")]
    pub rate: f64,
}

fn default_consecutive() -> u32 {
    5
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_open_for() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
/// The default cap of the open period, unless `open_for` is longer.
const DEFAULT_MAX_OPEN_FOR: Duration = Duration::from_secs(300);
fn default_probes() -> u32 {
    3
}
fn default_slow_rate() -> f64 {
    0.8
}

impl CircuitBreakerConfig {
    /// The longest open period: as set, or 5m but never shorter than `open_for` (a default
    /// never makes a sensible config invalid).
    pub fn max_open_for(&self) -> Duration {
        self.max_open_for
            .map_or(DEFAULT_MAX_OPEN_FOR.max(self.open_for.0), |d| d.0)
    }

    /// Checks the values; the error is `(key under circuit_breaker, message)`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let ratio = |v: f64| v > 0.0 && v <= 1.0;
        if self.consecutive_failures == 0 {
            return Err(("consecutive_failures", "must be at least 1".into()));
        }
        if !ratio(self.failure_rate) {
            return Err(("failure_rate", "must be above 0 and at most 1".into()));
        }
        if self.half_open_probes == 0 {
            return Err(("half_open_probes", "must be at least 1".into()));
        }
        for (key, d) in [("window", self.window), ("open_for", self.open_for)] {
            if d.0.is_zero() {
                return Err((key, "must be greater than zero".into()));
            }
        }
        if self.max_open_for() < self.open_for.0 {
            return Err(("max_open_for", "must be at least open_for".into()));
        }
        if let Some(slow) = &self.slow_call {
            if slow.threshold.0.is_zero() {
                return Err(("slow_call.threshold", "must be greater than zero".into()));
            }
            if !ratio(slow.rate) {
                return Err(("slow_call.rate", "must be above 0 and at most 1".into()));
            }
        }
        Ok(())
    }
}

/// TLS settings of an `https://` upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of CA certificates to trust besides the public (webpki) roots: for a model
    /// gateway behind a private CA.
    pub ca_file: std::path::PathBuf,
}

/// Per-upstream timeouts. Defaults suit LLM providers: a slow first token is normal, a
/// connection that takes seconds is not.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    #[serde(default = "default_connect")]
    pub connect: ConfigDuration,
    /// Request sent → response head received.
    #[serde(default = "default_first_byte")]
    pub first_byte: ConfigDuration,
    /// Longest gap between two response body chunks; a stalled stream is ended.
    #[serde(default = "default_idle")]
    pub idle: ConfigDuration,
    /// Whole exchange, body included.
    #[serde(default = "default_total")]
    pub total: ConfigDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            first_byte: default_first_byte(),
            idle: default_idle(),
            total: default_total(),
        }
    }
}

fn default_connect() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn default_first_byte() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_total() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(600))
}

/// A parsed upstream URL: what the data plane needs to address requests.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash; empty when the URL has no path.
    pub path_prefix: String,
}

pub fn parse_upstream_url(url: &str) -> Result<UpstreamUrl, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => return Err(format!("URL {url:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("URL must not carry credentials (user:password@); use api_keys_file".into());
    }
    if uri.query().is_some() {
        return Err(format!("URL {url:?} must not have a query string"));
    }
    let path_prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(UpstreamUrl {
        scheme,
        authority,
        path_prefix,
    })
}

impl UpstreamConfig {
    /// How long a connection to this upstream may sit idle in the pool (see [`PoolConfig`]).
    pub fn pool_idle_timeout(&self) -> Duration {
        let on_this_host = || parse_upstream_url(&self.url).is_ok_and(|u| is_loopback(&u));
        match self.pool.idle_timeout {
            Some(d) => d.0,
            None if on_this_host() => LOOPBACK_POOL_IDLE,
            None => REMOTE_POOL_IDLE,
        }
    }

    /// Checks the values; `base` is the key path of the upstream (`upstreams.NAME`).
    pub fn validate(&self, base: &str) -> Result<(), (String, String)> {
        let up = self;
        match parse_upstream_url(&up.url) {
            Err(msg) => return Err((format!("{base}.url"), msg)),
            Ok(url) if up.tls.is_some() && url.scheme != http::uri::Scheme::HTTPS => {
                return Err((
                    format!("{base}.tls"),
                    "applies to https:// upstreams only".into(),
                ));
            }
            Ok(_) => {}
        }
        if let Some(cb) = &up.circuit_breaker {
            cb.check()
                .map_err(|(key, msg)| (format!("{base}.circuit_breaker.{key}"), msg))?;
        }
        if up.api_keys_file.is_some()
            && parse_upstream_url(&up.url)
                .is_ok_and(|u| u.scheme == http::uri::Scheme::HTTP && !is_loopback(&u))
        {
            return Err((
                format!("{base}.api_keys_file"),
                "keys are sent in clear over http:// to a host other than this one (loopback); use https://".into(),
            ));
        }
        if up.protocol == Protocol::None && up.api_keys_file.is_some() {
            return Err((
                format!("{base}.api_keys_file"),
                "needs `protocol: openai`, `anthropic` or `mcp` (the protocol decides the key header)".into(),
            ));
        }
        if !up.protocol.is_llm() && up.model.is_some() {
            return Err((
                format!("{base}.model"),
                "needs `protocol: openai` or `protocol: anthropic` (only LLM request bodies have a model)".into(),
            ));
        }
        if up.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err((format!("{base}.model"), "must not be empty".into()));
        }
        if up.h2.connections == 0 || up.h2.connections > MAX_H2_CONNECTIONS {
            return Err((
                format!("{base}.h2.connections"),
                format!("must be between 1 and {MAX_H2_CONNECTIONS}"),
            ));
        }
        for (key, d) in [
            ("keepalive_interval", up.h2.keepalive_interval),
            ("keepalive_timeout", up.h2.keepalive_timeout),
        ] {
            if d.0 < Duration::from_millis(100) {
                return Err((format!("{base}.h2.{key}"), "must be at least 100ms".into()));
            }
        }
        let t = &up.timeouts;
        for (key, d) in [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("idle", t.idle),
            ("total", t.total),
        ] {
            if d.0.is_zero() {
                return Err((
                    format!("{base}.timeouts.{key}"),
                    "must be greater than zero".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether an upstream is on this host: `localhost`, or a loopback address (127.0.0.0/8, ::1).
fn is_loopback(url: &UpstreamUrl) -> bool {
    let host = url.authority.host();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
