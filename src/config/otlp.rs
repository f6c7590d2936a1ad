//! `otlp:`: where the sidecar pushes its metrics and request spans (an OpenTelemetry Collector,
//! or anything that speaks OTLP), how often, and how many requests are traced.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// The most request traces the export queue may be set to hold (each under 1 KiB).
pub const MAX_TRACE_QUEUE: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://host:port` of the collector's OTLP receiver (gRPC: usually 4317; HTTP: 4318,
    /// to which `/v1/metrics` and `/v1/traces` are added).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Metrics are pushed this often.
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// One export (a metrics push, a batch of spans) may take this long; past it, it is given
    /// up and what it carried counted as dropped. Absent: see [`OtlpConfig::timeout`].
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// `cumulative` (the OpenTelemetry default, what Prometheus-style backends want) or `delta`.
    #[serde(default)]
    pub temporality: OtlpTemporality,
    /// Push the metrics (`false`: traces only).
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// A span per request; without the section, no spans.
    #[serde(default)]
    pub traces: Option<TracesConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpTemporality {
    #[default]
    Cumulative,
    Delta,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// Share of requests without a sampled parent that are traced (0 to 1). A request whose
    /// client sent a `traceparent` follows the client's decision; a request that failed is
    /// exported whatever was decided.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Finished request traces (a request span and its attempts' spans) waiting for export; past
    /// it new ones are dropped (their spans counted).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            sample_ratio: default_sample_ratio(),
            max_queue: default_max_queue(),
        }
    }
}

fn default_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15))
}

/// The longest default export: an export must end before the next starts, so a shorter
/// `interval` shortens it (a default never makes a sensible config invalid).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_true() -> bool {
    true
}

fn default_sample_ratio() -> f64 {
    0.1
}

fn default_max_queue() -> usize {
    4096
}

impl OtlpConfig {
    /// How long one export may take: as set, or 10 s but no longer than `interval`.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .map_or(DEFAULT_TIMEOUT.min(self.interval.0), |t| t.0)
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        let uri: http::Uri = self.endpoint.parse().map_err(|e| {
            (
                "otlp.endpoint".to_owned(),
                format!("{:?} is not a URL: {e}", self.endpoint),
            )
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err((
                    "otlp.endpoint".into(),
                    "https is not supported by this build: point it at a collector (or its agent) in the cluster over http://".into(),
                ))
            }
            _ => {
                return Err((
                    "otlp.endpoint".into(),
                    format!("{:?}: expected http://host:port", self.endpoint),
                ))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(("otlp.endpoint".into(), "has no host".into()));
        }
        if self.interval.0 < Duration::from_secs(1) {
            return Err(("otlp.interval".into(), "must be at least 1s".into()));
        }
        let timeout = self.timeout();
        if timeout < Duration::from_millis(100) || timeout > self.interval.0 {
            return Err((
                "otlp.timeout".into(),
                "must be at least 100ms and at most otlp.interval (an export must end before the next starts)".into(),
            ));
        }
        if let Some(t) = &self.traces {
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                return Err((
                    "otlp.traces.sample_ratio".into(),
                    "must be between 0 and 1".into(),
                ));
            }
            if t.max_queue == 0 || t.max_queue > MAX_TRACE_QUEUE {
                return Err((
                    "otlp.traces.max_queue".into(),
                    format!("must be between 1 and {MAX_TRACE_QUEUE}"),
                ));
            }
        }
        if !self.metrics && self.traces.is_none() {
            return Err((
                "otlp".into(),
                "exports nothing: metrics is false and there is no traces section".into(),
            ));
        }
        Ok(())
    }
}
