//! Upstreams: where a route sends requests, the pooled client that reaches them, and the
//! timeouts that bound an attempt.

pub mod breaker;
pub mod h1;
pub(crate) mod keys;
pub(crate) mod pool;
mod response;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

pub use breaker::{BreakerConfig, CircuitBreaker, Force, Outcome, Ticket, Transition};
mod body;
pub use crate::connect::{build_connector, load_ca_file};
pub(crate) use body::BodySample;
pub use body::{RequestBody, Upload, UploadState};
pub use keys::{KeyFileError, KeyRing};
pub use pool::{ConnectionPool, Lease, SendError, SendResult};
pub use response::{ExchangeError, UpstreamBody};

use crate::incident::{Incident, Incidents, Severity};
use tokio::time::Instant;

use crate::config::{
    parse_upstream_url, CircuitBreakerConfig, Protocol, Timeouts, UpstreamConfig, UpstreamUrl,
};
use crate::telemetry::{
    KeyMetrics, LlmMetrics, LogLimiter, ModelLabels, Telemetry, UpstreamMetrics,
};

/// Idle HTTP/1.1 connections kept per upstream: enough for a busy agent's concurrency, bounded so
/// that a burst does not pin thousands of sockets.
pub const MAX_IDLE_CONNECTIONS: usize = 256;

/// One upstream as the data plane uses it; built once per config snapshot.
#[derive(Debug)]
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
    /// Skips this upstream while it fails (`circuit_breaker`). Shared with the upstream of the
    /// same name in the next config snapshot when its `circuit_breaker` settings stay the same,
    /// so that a reload neither closes an open circuit nor forgets the failures counted.
    pub breaker: Option<Arc<UpstreamBreaker>>,
}

/// An upstream's circuit breaker with the handles its transitions are counted with.
#[derive(Debug)]
pub struct UpstreamBreaker {
    pub breaker: CircuitBreaker,
    /// `slow_call.threshold`: a response head later than this makes the call slow.
    pub slow_after: Option<Duration>,
    name: String,
    state: metrics::Gauge,
    transitions: Vec<(Transition, metrics::Counter)>,
    /// Openings and closings are incident events, of this severity (a reload may change it).
    incidents: Incidents,
    severity: std::sync::Mutex<Severity>,
}

impl UpstreamBreaker {
    fn new(
        name: &str,
        config: &CircuitBreakerConfig,
        agent: &str,
        t: &Telemetry,
        incidents: &Incidents,
        severity: Severity,
    ) -> UpstreamBreaker {
        use crate::telemetry::{label, CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL};
        use breaker::{CircuitState as S, TransitionReason as R};
        let slow = config.slow_call.as_ref().map(|s| (s.threshold.0, s.rate));
        let settings = BreakerConfig {
            consecutive_failures: config.consecutive_failures,
            failure_rate: config.failure_rate,
            min_requests: config.min_requests,
            window: config.window.0,
            open_for: config.open_for.0,
            max_open_for: config.max_open_for(),
            half_open_probes: config.half_open_probes,
            slow_call: slow,
            jitter: 0.1,
        };
        // Seeded per process and upstream, so that sidecars started together open for
        // different lengths.
        let seed = std::process::id() as u64
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        let base = || vec![label("agent", agent), label("upstream", name)];
        let transitions = [
            (S::Open, R::Consecutive),
            (S::Open, R::Rate),
            (S::Open, R::SlowCall),
            (S::Open, R::RetryAfter),
            (S::Open, R::ProbeFailed),
            (S::Open, R::Forced),
            (S::HalfOpen, R::Elapsed),
            (S::Closed, R::ProbeOk),
            (S::Closed, R::Forced),
        ]
        .into_iter()
        .map(|(to, reason)| {
            let mut labels = base();
            labels.push(metrics::Label::from_static_parts("to", to.as_str()));
            labels.push(metrics::Label::from_static_parts("reason", reason.as_str()));
            (
                Transition { to, reason },
                t.counter(CIRCUIT_TRANSITIONS_TOTAL, labels),
            )
        })
        .collect();
        let state = t.gauge(CIRCUIT_STATE, base());
        state.set(0.0);
        UpstreamBreaker {
            breaker: CircuitBreaker::new(settings, seed),
            slow_after: slow.map(|(threshold, _)| threshold),
            name: name.to_owned(),
            state,
            transitions,
            incidents: incidents.clone(),
            severity: std::sync::Mutex::new(severity),
        }
    }

    /// The severity of the incidents its transitions raise from now on
    /// (`incidents.severities.availability`, which a reload may change).
    pub fn set_severity(&self, severity: Severity) {
        *self.severity.lock().unwrap_or_else(|p| p.into_inner()) = severity;
    }

    /// Lets a call through, or `None` while the circuit is open.
    pub fn admit(&self, now: Instant) -> Option<Ticket> {
        let (ticket, transition) = self.breaker.admit(now);
        self.note(transition);
        ticket
    }

    pub fn record(&self, ticket: Ticket, outcome: Outcome, now: Instant) {
        self.note(self.breaker.record(ticket, outcome, now));
    }

    pub fn cancel(&self, ticket: Ticket) {
        self.breaker.cancel(ticket);
    }

    pub fn force(&self, force: Force, now: Instant) {
        self.note(self.breaker.force(force, now));
    }

    fn note(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        self.state.set(t.to as u8 as f64);
        if let Some((_, c)) = self.transitions.iter().find(|(k, _)| *k == t) {
            c.increment(1);
        }
        tracing::warn!(upstream = %self.name, to = t.to.as_str(), reason = t.reason.as_str(), "circuit breaker changed state");
        let firing = match t.to {
            breaker::CircuitState::Open => true,
            breaker::CircuitState::Closed => false,
            // A trial, not a change anyone acts on.
            breaker::CircuitState::HalfOpen => return,
        };
        let summary = if firing {
            format!(
                "circuit of upstream {} opened ({}): requests skip it",
                self.name,
                t.reason.as_str()
            )
        } else {
            format!(
                "circuit of upstream {} closed ({})",
                self.name,
                t.reason.as_str()
            )
        };
        self.incidents.raise(Incident::circuit_breaker(
            *self.severity.lock().unwrap_or_else(|p| p.into_inner()),
            &self.name,
            firing,
            summary,
        ));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("upstreams.{name}.url: {message}")]
    Url { name: String, message: String },
    #[error("{path}: {message}")]
    Safety { path: String, message: String },
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
    /// `breaker`: the circuit breaker to go on with (a reload's, for an upstream that keeps its
    /// name and breaker settings); `None` builds one from `config` when it has a `circuit_breaker`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        agent: &str,
        telemetry: &Telemetry,
        models: &Arc<ModelLabels>,
        incidents: &Incidents,
        severity: Severity,
        breaker: Option<Arc<UpstreamBreaker>>,
    ) -> Result<Upstream, UpstreamBuildError> {
        let url = parse_upstream_url(&config.url).map_err(|message| UpstreamBuildError::Url {
            name: name.to_owned(),
            message,
        })?;
        let header_value =
            HeaderValue::from_str(name).map_err(|_| UpstreamBuildError::Name(name.to_owned()))?;
        let (host_header, target) = host_and_target(name, &url)?;
        let connector = connector(name, config)?;
        let keys = key_ring(name, config, agent, telemetry)?;
        let llm = config.protocol.is_llm().then(|| {
            Arc::new(LlmMetrics::new(
                telemetry,
                agent,
                name,
                config.protocol.provider_name(),
                models.clone(),
            ))
        });
        let breaker = match breaker {
            Some(kept) => Some(kept),
            None => config.circuit_breaker.as_ref().map(|c| {
                Arc::new(UpstreamBreaker::new(
                    name, c, agent, telemetry, incidents, severity,
                ))
            }),
        };
        Ok(Upstream {
            breaker,
            llm,
            keys,
            model: config.model.as_deref().map(Arc::from),
            host_header,
            name: name.to_owned(),
            url,
            protocol: config.protocol,
            timeouts: config.timeouts,
            pool: Arc::new(connection_pool(config, connector, target)),
            header_value,
            metrics: UpstreamMetrics::new(telemetry, agent, name),
            log_limit: LogLimiter::new(),
        })
    }
}

/// A connection pool of its own for upstream `name` (the judge's, on a thread of its own: its
/// connections are driven there, never on the workers).
pub(crate) fn private_pool(
    name: &str,
    config: &UpstreamConfig,
) -> Result<ConnectionPool, UpstreamBuildError> {
    let url = parse_upstream_url(&config.url).map_err(|message| UpstreamBuildError::Url {
        name: name.to_owned(),
        message,
    })?;
    let (_, target) = host_and_target(name, &url)?;
    Ok(connection_pool(config, connector(name, config)?, target))
}

/// The `Host` an upstream gets (the URL's authority), and the URI its connections go to.
fn host_and_target(
    name: &str,
    url: &UpstreamUrl,
) -> Result<(HeaderValue, Uri), UpstreamBuildError> {
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
    Ok((host_header, target))
}

/// The upstream's connector: the system roots and `tls.ca_file`'s, bounded by `timeouts.connect`.
fn connector(
    name: &str,
    config: &UpstreamConfig,
) -> Result<HttpsConnector<HttpConnector>, UpstreamBuildError> {
    let extra_roots = match &config.tls {
        Some(tls) => load_ca_file(&tls.ca_file),
        None => Ok(Vec::new()),
    };
    extra_roots
        .and_then(|roots| build_connector(config.timeouts.connect.0, roots))
        .map_err(|message| UpstreamBuildError::Tls {
            name: name.to_owned(),
            message,
        })
}

/// The keys of `api_keys_file`, when there is one.
fn key_ring(
    name: &str,
    config: &UpstreamConfig,
    agent: &str,
    telemetry: &Telemetry,
) -> Result<Option<Arc<KeyRing>>, UpstreamBuildError> {
    let Some(path) = &config.api_keys_file else {
        return Ok(None);
    };
    let ring = KeyRing::load(
        path,
        config.protocol,
        KeyMetrics::new(telemetry, agent, name),
    )
    .map_err(|source| UpstreamBuildError::Keys {
        name: name.to_owned(),
        source,
    })?;
    Ok(Some(Arc::new(ring)))
}

/// The pooled client for the upstream at `target`, with the config's idle, connect and HTTP/2
/// settings.
fn connection_pool(
    config: &UpstreamConfig,
    connector: HttpsConnector<HttpConnector>,
    target: Uri,
) -> ConnectionPool {
    ConnectionPool::new(
        connector,
        target,
        MAX_IDLE_CONNECTIONS,
        config.pool_idle_timeout(),
        config.timeouts.connect.0,
        pool::H2Settings {
            connections: config.h2.connections,
            keepalive_interval: config.h2.keepalive_interval.0,
            keepalive_timeout: config.h2.keepalive_timeout.0,
        },
    )
}
