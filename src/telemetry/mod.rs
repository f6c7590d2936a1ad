//! Metric names, help texts and bucket boundaries (all of them, in this one place), and the
//! Prometheus recorder they are registered with.
//!
//! Handles are registered once, when the running state is built from the config, and passed to
//! the data plane: recording on the hot path is an atomic add, never a label lookup. Each
//! [`Telemetry`] owns its own recorder (no global), so tests running side by side do not mix.

pub(crate) mod genai;
mod histograms;
mod log_limit;
mod logging;
pub mod mcp;
pub mod otlp;
mod tally;
pub mod trace;

use std::sync::Arc;

use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub use genai::{ErrorType, KeyMetrics, LlmMetrics, ModelLabels, ModelMetrics};
pub use log_limit::LogLimiter;
pub use logging::init_logging;
pub use tally::{has_label, Tallies};

use crate::sli::{Cause, StatusClass, UpstreamOutcome};

pub use crate::metric_table::*;

/// How stale the OTLP mirror's histogram samples may get before the upkeep drains them itself.
const UPKEEP_DRAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide metrics registry of one sidecar.
#[derive(Debug, Clone)]
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// The histograms (every one has its buckets in [`BUCKETS`]): bucketed when recorded.
    histograms: Arc<histograms::Histograms>,
    /// Every handle is registered here too when OTLP exports metrics.
    mirror: Option<Arc<otlp::Mirror>>,
    /// The series the local SLO view reads, as numbers.
    tallies: Tallies,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry::with_mirror(None)
    }

    /// A registry whose handles also record into `mirror` (OTLP export), when there is one.
    pub fn with_mirror(mirror: Option<Arc<otlp::Mirror>>) -> Telemetry {
        Telemetry::with(mirror, Tallies::default())
    }

    /// A registry whose handles also record into `mirror` (OTLP export), when there is one, and
    /// into `tallies` (see [`Tallies::every_metric`]).
    pub fn with(mirror: Option<Arc<otlp::Mirror>>, tallies: Tallies) -> Telemetry {
        let builder = PrometheusBuilder::new();
        let builder = BUCKETS.iter().fold(builder, |b, (name, buckets)| {
            // Only fails for an empty bucket list, which the constants above are not.
            b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let t = Telemetry {
            recorder: Arc::new(recorder),
            handle,
            histograms: Arc::default(),
            mirror,
            tallies,
        };
        t.describe();
        t
    }

    fn describe(&self) {
        let r = &self.recorder;
        for def in METRICS {
            let (k, h) = (def.name.into(), SharedString::const_str(def.help));
            match def.kind {
                Kind::Counter => r.describe_counter(k, def.unit, h),
                Kind::Histogram => r.describe_histogram(k, def.unit, h),
                Kind::Gauge => r.describe_gauge(k, def.unit, h),
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.histograms.render(&mut text);
        text
    }

    /// The exporter's upkeep (its own histograms are none: ours are bucketed when recorded),
    /// and the OTLP mirror's samples drained should its thread have fallen behind; run it
    /// periodically.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
        // The OTLP export thread drains its samples every second; should it be kept from the CPU,
        // they are drained here instead, so that they do not pile up.
        if let Some(m) = &self.mirror {
            m.drain_if_stale(UPKEEP_DRAIN_AFTER);
        }
    }

    /// The running totals of the series an SLO can be computed from (of every metric, for a
    /// registry made so).
    pub fn tallies(&self) -> &Tallies {
        &self.tallies
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        let key = Key::from_parts(name, labels);
        let prom = self.recorder.register_counter(&key, &METADATA);
        let prom = self.tallies.counter(&key, prom);
        match &self.mirror {
            Some(m) => m.counter(&key, prom),
            None => prom,
        }
    }

    pub fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        let key = Key::from_parts(name, labels);
        let bounds = BUCKETS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
        let help = METRICS
            .iter()
            .find(|m| m.name == name)
            .map_or("", |m| m.help);
        let prom = match bounds {
            Some(bounds) => self.histograms.register(&key, bounds, help),
            // Every histogram has its buckets; one without would be the exporter's summary.
            None => self.recorder.register_histogram(&key, &METADATA),
        };
        let prom = self.tallies.histogram(&key, prom);
        match &self.mirror {
            Some(m) => m.histogram(&key, prom),
            None => prom,
        }
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        let key = Key::from_parts(name, labels);
        let prom = self.recorder.register_gauge(&key, &METADATA);
        let prom = self.tallies.gauge(&key, prom);
        match &self.mirror {
            Some(m) => m.gauge(&key, prom),
            None => prom,
        }
    }
}

impl Telemetry {
    /// The body budget of `memory.max_held` (`capacity` bytes), its refusals and bytes in use
    /// registered here.
    pub fn body_budget(&self, capacity: usize, agent: &str) -> crate::budget::BodyBudget {
        use crate::budget::Held;
        let refused = Held::ALL.map(|h| {
            self.counter(
                BODY_BUDGET_REFUSALS_TOTAL,
                vec![
                    label("agent", agent),
                    Label::from_static_parts("held", h.as_str()),
                ],
            )
        });
        let used = self.gauge(BODY_BUDGET_USED_BYTES, vec![label("agent", agent)]);
        crate::budget::BodyBudget::new(capacity, refused, used)
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

pub(crate) fn label(key: &'static str, value: &str) -> Label {
    Label::new(key, value.to_owned())
}

/// The handles a request answered on one listener by one upstream (or the cache) is recorded
/// with.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    /// Indexed by `[StatusClass][Cause]`.
    requests: [[Counter; Cause::COUNT]; StatusClass::COUNT],
    pub response_seconds: Histogram,
    pub time_to_first_byte: Histogram,
}

/// `sloguard_overhead_seconds` of one listener.
pub fn overhead(t: &Telemetry, agent: &str, listener: &str) -> Histogram {
    t.histogram(
        OVERHEAD_SECONDS,
        vec![label("agent", agent), label("listener", listener)],
    )
}

/// `sloguard_replay_skipped_total` of one listener.
pub fn replay_skipped(t: &Telemetry, agent: &str, listener: &str) -> Counter {
    t.counter(
        REPLAY_SKIPPED_TOTAL,
        vec![label("agent", agent), label("listener", listener)],
    )
}

impl RequestMetrics {
    /// `upstream`: the upstream that answered, or `cache`.
    pub fn new(t: &Telemetry, agent: &str, listener: &str, upstream: &str) -> RequestMetrics {
        let base = || {
            vec![
                label("agent", agent),
                label("listener", listener),
                label("upstream", upstream),
            ]
        };
        let requests = StatusClass::ALL.map(|status| {
            Cause::ALL.map(|cause| {
                let mut labels = base();
                labels.push(Label::from_static_parts("status", status.as_str()));
                labels.push(Label::from_static_parts("cause", cause.as_str()));
                t.counter(AGENT_REQUESTS_TOTAL, labels)
            })
        });
        RequestMetrics {
            requests,
            response_seconds: t.histogram(AGENT_RESPONSE_SECONDS, base()),
            time_to_first_byte: t.histogram(AGENT_TIME_TO_FIRST_BYTE_SECONDS, base()),
        }
    }

    #[inline]
    pub fn count_request(&self, status: StatusClass, cause: Cause) {
        self.requests[status as usize][cause as usize].increment(1);
    }
}

/// The handles an upstream's attempts are counted with.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    requests: [Counter; UpstreamOutcome::COUNT],
}

impl UpstreamMetrics {
    pub fn new(t: &Telemetry, agent: &str, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            requests: UpstreamOutcome::ALL.map(|o| {
                t.counter(
                    UPSTREAM_REQUESTS_TOTAL,
                    vec![
                        label("agent", agent),
                        label("upstream", upstream),
                        Label::from_static_parts("outcome", o.as_str()),
                    ],
                )
            }),
        }
    }

    #[inline]
    pub fn count(&self, outcome: UpstreamOutcome) {
        self.requests[outcome as usize].increment(1);
    }
}

/// Per-listener counter of client connections that broke the protocol.
pub fn connection_errors(t: &Telemetry, agent: &str, listener: &str) -> Counter {
    t.counter(
        CONNECTION_ERRORS_TOTAL,
        vec![label("agent", agent), label("listener", listener)],
    )
}

pub fn record_build_info(t: &Telemetry, agent: &str) {
    t.gauge(
        BUILD_INFO,
        vec![
            label("agent", agent),
            Label::from_static_parts("version", env!("CARGO_PKG_VERSION")),
        ],
    )
    .set(1.0);
}
