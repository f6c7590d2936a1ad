//! The metric table: every metric's name, help text, unit and bucket boundaries, in this one
//! place, with why each bucket set was chosen. Plain data at the bottom of the crate: the config
//! checks SLO thresholds against these boundaries, telemetry registers and exports by them, the
//! SLO engine and rule generator name the series by them.

use metrics::Unit;

pub const GEN_AI_OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
pub const GEN_AI_TIME_TO_FIRST_CHUNK: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
pub const GEN_AI_TIME_PER_OUTPUT_CHUNK: &str =
    "gen_ai_client_operation_time_per_output_chunk_seconds";
pub const GEN_AI_TOKEN_USAGE: &str = "gen_ai_client_token_usage";
pub const FINISH_REASONS_TOTAL: &str = "agent_llm_finish_reasons_total";
pub const HALLUCINATED_TOOL_CALLS_TOTAL: &str = "agent_hallucinated_tool_calls_total";
pub const UNPARSED_BODIES_TOTAL: &str = "sloguard_unparsed_bodies_total";
pub const API_KEY_REJECTIONS_TOTAL: &str = "sloguard_api_key_rejections_total";
pub const API_KEY_RELOADS_TOTAL: &str = "sloguard_api_key_reloads_total";

/// Operation duration, time to first chunk and time per output chunk. The OpenTelemetry GenAI
/// semantic conventions advise 0.01 s doubling to 81.92 s for all three; those boundaries are all
/// here, plus 0.25, 0.5, 1, 2, 5 and 10 s, because a latency or time-to-first-token SLO can only
/// be computed exactly at a bucket boundary and those are the thresholds people set.
pub const GEN_AI_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.32, 0.5, 0.64, 1.0, 1.28, 2.0, 2.56, 5.0, 5.12, 10.0,
    10.24, 20.48, 40.96, 81.92,
];

/// Tokens per call: the GenAI conventions' advice, powers of 4 from 1 to 67,108,864.
pub const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

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
pub const BULKHEAD_REJECTIONS_TOTAL: &str = "sloguard_bulkhead_rejections_total";
pub const DEADLINE_EXCEEDED_TOTAL: &str = "agent_deadline_exceeded_total";
pub const CORRECTNESS_VERDICTS_TOTAL: &str = "agent_correctness_verdicts_total";
pub const JUDGE_SAMPLES_TOTAL: &str = "sloguard_judge_samples_total";
pub const CALL_CYCLES_TOTAL: &str = "agent_call_cycles_total";
pub const CALL_DEPTH_EXCEEDED_TOTAL: &str = "agent_call_depth_exceeded_total";
pub const CASCADE_BAD_HEADERS_TOTAL: &str = "sloguard_cascade_bad_headers_total";
pub const CORRELATION_EVICTIONS_TOTAL: &str = "sloguard_correlation_evictions_total";
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
pub const MCP_OPERATION_DURATION: &str = "mcp_client_operation_duration_seconds";
pub const AGENT_TOOL_CALLS_TOTAL: &str = "agent_tool_calls_total";
pub const MCP_TOOL_CHANGES_TOTAL: &str = "sloguard_mcp_tool_changes_total";

/// MCP operations: the OpenTelemetry MCP semantic conventions' advice, from 10 ms (a ping, a
/// cached lookup) to 5 minutes (a long-running tool).
pub const MCP_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

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
        name: GEN_AI_OPERATION_DURATION,
        otel: "gen_ai.client.operation.duration",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Whole LLM call: request received to last response byte (OpenTelemetry gen_ai.client.operation.duration).",
    },
    MetricDef {
        name: GEN_AI_TIME_TO_FIRST_CHUNK,
        otel: "gen_ai.client.operation.time_to_first_chunk",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Streamed LLM calls: request received to the first chunk carrying output text or a tool call.",
    },
    MetricDef {
        name: GEN_AI_TIME_PER_OUTPUT_CHUNK,
        otel: "gen_ai.client.operation.time_per_output_chunk",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "Streamed LLM calls: time between output chunks after the first.",
    },
    MetricDef {
        name: GEN_AI_TOKEN_USAGE,
        otel: "gen_ai.client.token.usage",
        kind: Kind::Histogram,
        unit: None,
        otel_unit: "{token}",
        help: "Tokens per LLM call as the provider reported them, by gen_ai_token_type (input, output).",
    },
    MetricDef {
        name: FINISH_REASONS_TOTAL,
        otel: "agent.llm.finish_reasons",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Why generations ended, normalised: stop, length, tool_calls, content_filter, error, other.",
    },
    MetricDef {
        name: HALLUCINATED_TOOL_CALLS_TOTAL,
        otel: "agent.hallucinated_tool_calls",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Tool calls naming a tool the request did not declare (unknown_tool) or with arguments that are not JSON (invalid_arguments).",
    },
    MetricDef {
        name: UNPARSED_BODIES_TOTAL,
        otel: "sloguard.unparsed_bodies",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "LLM request or response bodies the sidecar could not read; they passed through untouched.",
    },
    MetricDef {
        name: API_KEY_REJECTIONS_TOTAL,
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
        name: API_KEY_RELOADS_TOTAL,
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
        name: BULKHEAD_REJECTIONS_TOTAL,
        otel: "sloguard.bulkhead.rejections",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Requests answered bulkhead_full: their route already had max_in_flight requests in flight.",
    },
    MetricDef {
        name: CORRECTNESS_VERDICTS_TOTAL,
        otel: "agent.correctness.verdicts",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Verdicts on the agent's answers, by source (check, agent, feedback, judge), verdict and reason.",
    },
    MetricDef {
        name: MCP_OPERATION_DURATION,
        otel: "mcp.client.operation.duration",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        otel_unit: "s",
        help: "MCP operations (JSON-RPC requests to an MCP server), from the request to its response passed on, by mcp_method_name, gen_ai_tool_name (tools/call) and error_type (the JSON-RPC code, tool_error, timeout, transport_error; empty on success).",
    },
    MetricDef {
        name: AGENT_TOOL_CALLS_TOTAL,
        otel: "agent.tool_calls",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "MCP tools/call operations ended, by gen_ai_tool_name and outcome (ok, tool_error, protocol_error, unknown_tool, invalid_arguments, timeout, transport_error).",
    },
    MetricDef {
        name: MCP_TOOL_CHANGES_TOTAL,
        otel: "sloguard.mcp.tool_changes",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Pinned MCP tool definitions that moved in a later tools/list, by change (changed, added, removed).",
    },
    MetricDef {
        name: JUDGE_SAMPLES_TOTAL,
        otel: "sloguard.judge.samples",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Answers sampled for the judge, by result (judged, dropped, failed, unreadable).",
    },
    MetricDef {
        name: DEADLINE_EXCEEDED_TOTAL,
        otel: "agent.deadline_exceeded",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Requests answered deadline_exceeded: arrived with their deadline spent, made after it, or cut at it.",
    },
    MetricDef {
        name: CALL_CYCLES_TOTAL,
        otel: "agent.call_cycles",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Inbound requests whose call path already held this agent (a cycle), by what was done.",
    },
    MetricDef {
        name: CALL_DEPTH_EXCEEDED_TOTAL,
        otel: "agent.call_depth_exceeded",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Inbound requests deeper than cascade.max_depth, answered call_depth_exceeded.",
    },
    MetricDef {
        name: CASCADE_BAD_HEADERS_TOTAL,
        otel: "sloguard.cascade.bad_headers",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Malformed or oversized deadline, depth or path headers, ignored.",
    },
    MetricDef {
        name: CORRELATION_EVICTIONS_TOTAL,
        otel: "sloguard.correlation.evictions",
        kind: Kind::Counter,
        unit: None,
        otel_unit: "",
        help: "Inbound requests in flight dropped from the correlation table, full, to make room for newer ones.",
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

#[derive(Debug)]
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
    (GEN_AI_OPERATION_DURATION, GEN_AI_SECONDS_BUCKETS),
    (GEN_AI_TIME_TO_FIRST_CHUNK, GEN_AI_SECONDS_BUCKETS),
    (GEN_AI_TIME_PER_OUTPUT_CHUNK, GEN_AI_SECONDS_BUCKETS),
    (GEN_AI_TOKEN_USAGE, GEN_AI_TOKEN_BUCKETS),
    (MCP_OPERATION_DURATION, MCP_SECONDS_BUCKETS),
];
