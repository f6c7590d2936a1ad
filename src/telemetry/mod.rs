//! Metric names, help texts and bucket boundaries (all of them, in this one place), and the
//! Prometheus recorder they are registered with.
//!
//! Handles are registered once, when the running state is built from the config, and passed to
//! the data plane: recording on the hot path is an atomic add, never a label lookup. Each
//! [`Telemetry`] owns its own recorder (no global), so tests running side by side do not mix.

pub mod genai;
mod log_limit;
mod logging;
pub mod otlp;
pub mod trace;

use std::sync::Arc;

use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub use genai::{ErrorType, KeyMetrics, LlmMetrics, ModelLabels, ModelMetrics};
pub use log_limit::LogLimiter;
pub use logging::init_logging;

use crate::sli::{Cause, StatusClass, UpstreamOutcome};

pub const AGENT_REQUESTS_TOTAL: &str = "agent_requests_total";
pub const AGENT_RESPONSE_SECONDS: &str = "agent_response_seconds";
pub const AGENT_TIME_TO_FIRST_BYTE_SECONDS: &str = "agent_time_to_first_byte_seconds";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "sloguard_upstream_requests_total";
pub const OVERHEAD_SECONDS: &str = "sloguard_overhead_seconds";
pub const CONNECTION_ERRORS_TOTAL: &str = "sloguard_client_connection_errors_total";
pub const CLIENT_CONNECTIONS: &str = "sloguard_client_connections";
pub const CONFIG_RELOADS_TOTAL: &str = "sloguard_config_reloads_total";
pub const BACKGROUND_RESTARTS_TOTAL: &str = "sloguard_background_restarts_total";
pub const BODY_BUDGET_REFUSALS_TOTAL: &str = "sloguard_body_budget_refusals_total";
pub const BODY_BUDGET_USED_BYTES: &str = "sloguard_body_budget_used_bytes";
pub const CLIENT_CONNECTIONS_CLOSED_TOTAL: &str = "sloguard_client_connections_closed_total";
pub const BUILD_INFO: &str = "sloguard_build_info";
pub const CIRCUIT_STATE: &str = "sloguard_circuit_state";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "sloguard_circuit_transitions_total";
pub const FALLBACKS_TOTAL: &str = "sloguard_fallbacks_total";
pub const REPLAY_SKIPPED_TOTAL: &str = "sloguard_replay_skipped_total";
pub const AGENT_RESPONSES_TOTAL: &str = "agent_responses_total";
pub const SAFETY_VIOLATIONS_TOTAL: &str = "agent_safety_violations_total";
pub const AGENT_DISABLED: &str = "sloguard_agent_disabled";
pub const INCIDENTS_TOTAL: &str = "sloguard_incidents_total";
pub const INCIDENT_NOTIFICATIONS_TOTAL: &str = "sloguard_incident_notifications_total";
pub const AGENT_TASKS_STARTED: &str = "agent_tasks_started";
pub const AGENT_TASKS_COMPLETED: &str = "agent_tasks_completed";
pub const AGENT_TASKS_FAILED: &str = "agent_tasks_failed_total";
pub const AGENT_TASKS_ABANDONED: &str = "agent_tasks_abandoned_total";
pub const TASKS_EVICTED: &str = "sloguard_tasks_evicted_total";
pub const AGENT_STUCK: &str = "sloguard_agent_stuck";
pub const AGENT_LOOPS_DETECTED: &str = "agent_loops_detected_total";
pub const LOOP_TASKS_EVICTED: &str = "sloguard_loop_tasks_evicted_total";
pub const SLO_BUDGET_REMAINING: &str = "sloguard_slo_error_budget_remaining";
pub const SLO_BURN_RATE: &str = "sloguard_slo_burn_rate";
pub const OTLP_DROPPED_TOTAL: &str = "sloguard_otlp_dropped_total";

/// Request latency of an agent or an LLM call: from a few milliseconds (a cached or failed call)
/// to minutes (a long generation). Denser around 0.1–10 s, where agent latency SLOs sit; every
/// SLO threshold a user is likely to pick (250ms, 500ms, 1s, 2s, 5s, 10s) is a boundary, because
/// a latency SLO can only be computed exactly at a bucket boundary.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0,
];

/// The sidecar's own added time: tens of microseconds normally, a millisecond or more is a problem
/// worth seeing. Boundaries from 25 µs to 100 ms.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// What each metric is: its Prometheus name, its OpenTelemetry name (OTLP export), kind, unit and
/// help text. The OpenTelemetry name is chosen so that a Collector's Prometheus exporter (dots to
/// underscores, the unit's suffix, `_total` on a counter) gives back the Prometheus name; only
/// `agent_tasks_started` and `agent_tasks_completed`, which the reference article names without
/// `_total`, come back with it.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: AGENT_REQUESTS_TOTAL,
        otel: "agent.requests",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Requests answered, by the status class the client got and the cause of a failure.",
    },
    MetricDef {
        name: AGENT_RESPONSE_SECONDS,
        otel: "agent.response",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Request received to last response byte sent.",
    },
    MetricDef {
        name: AGENT_TIME_TO_FIRST_BYTE_SECONDS,
        otel: "agent.time_to_first_byte",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Request received to first response body byte sent.",
    },
    MetricDef {
        name: UPSTREAM_REQUESTS_TOTAL,
        otel: "sloguard.upstream.requests",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Attempts sent to an upstream, by outcome.",
    },
    MetricDef {
        name: OVERHEAD_SECONDS,
        otel: "sloguard.overhead",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Time the sidecar itself added to a request.",
    },
    MetricDef {
        name: CONNECTION_ERRORS_TOTAL,
        otel: "sloguard.client.connection_errors",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Client connections that ended in a protocol error (malformed HTTP, oversized headers).",
    },
    MetricDef {
        name: BODY_BUDGET_REFUSALS_TOTAL,
        otel: "sloguard.body_budget.refusals",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Bytes a holder could not keep: memory.max_held was spent (replay and whole reads then answer 503 overloaded; readers skip the body).",
    },
    MetricDef {
        name: BODY_BUDGET_USED_BYTES,
        otel: "sloguard.body_budget.used",
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        otel_unit: "By",
        help: "Body bytes held now against memory.max_held (every 5 s).",
    },
    MetricDef {
        name: BACKGROUND_RESTARTS_TOTAL,
        otel: "sloguard.background.restarts",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Background tasks (sweeps, reloads, the webhook, accept loops) restarted after a panic.",
    },
    MetricDef {
        name: CLIENT_CONNECTIONS,
        otel: "sloguard.client.connections",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "Client connections open now, per listener (and the admin port).",
    },
    MetricDef {
        name: CLIENT_CONNECTIONS_CLOSED_TOTAL,
        otel: "sloguard.client.connections_closed",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Client connections the sidecar closed: header_timeout, idle, displaced (room for a new one), refused (at the limit, all busy).",
    },
    MetricDef {
        name: genai::GEN_AI_OPERATION_DURATION,
        otel: "gen_ai.client.operation.duration",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Whole LLM call: request received to last response byte (OpenTelemetry gen_ai.client.operation.duration).",
    },
    MetricDef {
        name: genai::GEN_AI_TIME_TO_FIRST_CHUNK,
        otel: "gen_ai.client.operation.time_to_first_chunk",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Streamed LLM calls: request received to the first chunk carrying output text or a tool call.",
    },
    MetricDef {
        name: genai::GEN_AI_TIME_PER_OUTPUT_CHUNK,
        otel: "gen_ai.client.operation.time_per_output_chunk",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Streamed LLM calls: time between output chunks after the first.",
    },
    MetricDef {
        name: genai::GEN_AI_TOKEN_USAGE,
        otel: "gen_ai.client.token.usage",
        kind: Kind::Histogram,
        unit: None,
        otel_unit: "{token}",
        help: "Tokens per LLM call as the provider reported them, by gen_ai_token_type (input, output).",
    },
    MetricDef {
        name: genai::FINISH_REASONS_TOTAL,
        otel: "agent.llm.finish_reasons",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Why generations ended, normalised: stop, length, tool_calls, content_filter, error, other.",
    },
    MetricDef {
        name: genai::HALLUCINATED_TOOL_CALLS_TOTAL,
        otel: "agent.hallucinated_tool_calls",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Tool calls naming a tool the request did not declare (unknown_tool) or with arguments that are not JSON (invalid_arguments).",
    },
    MetricDef {
        name: genai::UNPARSED_BODIES_TOTAL,
        otel: "sloguard.unparsed_bodies",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "LLM request or response bodies the sidecar could not read; they passed through untouched.",
    },
    MetricDef {
        name: genai::API_KEY_REJECTIONS_TOTAL,
        otel: "sloguard.api_key.rejections",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "401 answers to a request carrying an injected API key; each moves the upstream to its next key.",
    },
    MetricDef {
        name: CONFIG_RELOADS_TOTAL,
        otel: "sloguard.config.reloads",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Config reloads (POST /admin/reload, SIGHUP, a change of the file), by result: error when the new config was refused and the running one kept.",
    },
    MetricDef {
        name: genai::API_KEY_RELOADS_TOTAL,
        otel: "sloguard.api_key.reloads",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Re-reads of an upstream's api_keys_file after it changed, by result.",
    },
    MetricDef {
        name: CIRCUIT_STATE,
        otel: "sloguard.circuit.state",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "An upstream's circuit breaker: 0 closed, 1 half-open, 2 open.",
    },
    MetricDef {
        name: CIRCUIT_TRANSITIONS_TOTAL,
        otel: "sloguard.circuit.transitions",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Circuit breaker state changes, by the state entered and why.",
    },
    MetricDef {
        name: FALLBACKS_TOTAL,
        otel: "sloguard.fallbacks",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Requests moved on from one upstream of a route to the next (to=\"cache\": to the last-resort cache), by the reason.",
    },
    MetricDef {
        name: REPLAY_SKIPPED_TOTAL,
        otel: "sloguard.replay.skipped",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Requests whose body was larger than max_replay_body: streamed to one upstream, with no fallback.",
    },
    MetricDef {
        name: AGENT_RESPONSES_TOTAL,
        otel: "agent.responses",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Responses whose content the safety detectors inspected.",
    },
    MetricDef {
        name: SAFETY_VIOLATIONS_TOTAL,
        otel: "agent.safety.violations",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Safety detector hits (and upstream safety signals), by detector and the action taken.",
    },
    MetricDef {
        name: AGENT_DISABLED,
        otel: "sloguard.agent.disabled",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "1 while the kill switch holds the agent disabled.",
    },
    MetricDef {
        name: INCIDENTS_TOTAL,
        otel: "sloguard.incidents",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Incident events (kill switch on/off, circuit breaker open/close), by severity and kind.",
    },
    MetricDef {
        name: INCIDENT_NOTIFICATIONS_TOTAL,
        otel: "sloguard.incident.notifications",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Incident webhook notifications, by result: sent, failed (dropped after bounded retries), queue_full (dropped at once).",
    },
    MetricDef {
        name: AGENT_TASKS_STARTED,
        otel: "agent.tasks.started",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Agent tasks seen for the first time (a request without a task id is a task of its own).",
    },
    MetricDef {
        name: AGENT_TASKS_COMPLETED,
        otel: "agent.tasks.completed",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Agent tasks that ended completed (the agent's status header, or a 2xx without it).",
    },
    MetricDef {
        name: AGENT_TASKS_FAILED,
        otel: "agent.tasks.failed",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Agent tasks that ended failed (the agent's status header, or a 5xx without it; or cut by the loop guard).",
    },
    MetricDef {
        name: AGENT_TASKS_ABANDONED,
        otel: "agent.tasks.abandoned",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Agent tasks left in progress: idle past tasks.stuck_after, or evicted from a full task table.",
    },
    MetricDef {
        name: TASKS_EVICTED,
        otel: "sloguard.tasks.evicted",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Tasks pushed out of a full task table (tasks.max_tasks); also counted abandoned.",
    },
    MetricDef {
        name: AGENT_STUCK,
        otel: "sloguard.agent.stuck",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "1 while the agent is stuck (GET /agent/healthz answers 503): a request unanswered, or tasks abandoned with none completed, within tasks.stuck_after.",
    },
    MetricDef {
        name: AGENT_LOOPS_DETECTED,
        otel: "agent.loops.detected",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Loop guard hits: a task made more than tasks.max_llm_calls LLM calls, or got the same tool call back tasks.max_repeated_tool_calls times in a row.",
    },
    MetricDef {
        name: LOOP_TASKS_EVICTED,
        otel: "sloguard.loop.tasks_evicted",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Tasks the loop guard forgot to make room in its full table (tasks.max_tasks): their counts start again.",
    },
    MetricDef {
        name: SLO_BUDGET_REMAINING,
        otel: "sloguard.slo.error_budget.remaining",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "Share of the SLO window's error budget left, local view (1: untouched; negative: overspent).",
    },
    MetricDef {
        name: SLO_BURN_RATE,
        otel: "sloguard.slo.burn_rate",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "Error ratio over the window divided by the SLO's budget ratio, local view (1 spends the budget exactly over the SLO window; 0 without events).",
    },
    MetricDef {
        name: BUILD_INFO,
        otel: "sloguard.build_info",
        kind: Kind::Gauge,
        unit: None,
        otel_unit: "",
        help: "Always 1; the version label says which sloguard runs.",
    },
    MetricDef {
        name: OTLP_DROPPED_TOTAL,
        otel: "sloguard.otlp.dropped",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Metric points and spans the OTLP export gave up on, by signal: the span queue was full, or an export failed or timed out (the collector down or slow).",
    },
];

/// How a metric records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
    Gauge,
}

pub struct MetricDef {
    pub name: &'static str,
    pub otel: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// The unit as OpenTelemetry writes it (UCUM): `s`, `By`, `{token}`; empty for a count.
    pub otel_unit: &'static str,
    pub help: &'static str,
}

/// The definition of the metric called `name` (its Prometheus name).
pub fn metric_def(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|d| d.name == name)
}

/// Histogram bucket boundaries by metric (those not listed use the exporter's default, which no
/// histogram here does).
pub const BUCKETS: &[(&str, &[f64])] = &[
    (AGENT_RESPONSE_SECONDS, LATENCY_BUCKETS),
    (AGENT_TIME_TO_FIRST_BYTE_SECONDS, LATENCY_BUCKETS),
    (OVERHEAD_SECONDS, OVERHEAD_BUCKETS),
    (
        genai::GEN_AI_OPERATION_DURATION,
        genai::GEN_AI_SECONDS_BUCKETS,
    ),
    (
        genai::GEN_AI_TIME_TO_FIRST_CHUNK,
        genai::GEN_AI_SECONDS_BUCKETS,
    ),
    (
        genai::GEN_AI_TIME_PER_OUTPUT_CHUNK,
        genai::GEN_AI_SECONDS_BUCKETS,
    ),
    (genai::GEN_AI_TOKEN_USAGE, genai::GEN_AI_TOKEN_BUCKETS),
];

/// How stale the OTLP mirror's histogram samples may get before the upkeep drains them itself.
const UPKEEP_DRAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide metrics registry of one sidecar.
#[derive(Clone)]
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Every handle is registered here too when OTLP exports metrics.
    mirror: Option<Arc<otlp::Mirror>>,
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry::with_mirror(None)
    }

    /// A registry whose handles also record into `mirror` (OTLP export), when there is one.
    pub fn with_mirror(mirror: Option<Arc<otlp::Mirror>>) -> Telemetry {
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
            mirror,
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
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; run it periodically so memory stays
    /// bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
        // The OTLP export thread drains its samples every second; should it be kept from the CPU,
        // they are drained here instead, so that they do not pile up.
        if let Some(m) = &self.mirror {
            m.drain_if_stale(UPKEEP_DRAIN_AFTER);
        }
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        let key = Key::from_parts(name, labels);
        let prom = self.recorder.register_counter(&key, &METADATA);
        match &self.mirror {
            Some(m) => m.counter(&key, prom),
            None => prom,
        }
    }

    pub fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        let key = Key::from_parts(name, labels);
        let prom = self.recorder.register_histogram(&key, &METADATA);
        match &self.mirror {
            Some(m) => m.histogram(&key, prom),
            None => prom,
        }
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        let key = Key::from_parts(name, labels);
        let prom = self.recorder.register_gauge(&key, &METADATA);
        match &self.mirror {
            Some(m) => m.gauge(&key, prom),
            None => prom,
        }
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
#[derive(Clone)]
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
#[derive(Clone)]
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
