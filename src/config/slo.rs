//! `slos:`: the service level objectives, each on one of the article's SLIs (or time to first
//! token), with its target, window and severity.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, ListenerConfig, Role, Severities, SeverityName};
use crate::metric_table::{GEN_AI_SECONDS_BUCKETS, LATENCY_BUCKETS, MCP_SECONDS_BUCKETS};

/// The shortest SLO window: the slow-burn ticket looks back 3 days.
pub const MIN_WINDOW: Duration = Duration::from_secs(3 * 86_400);
pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

/// What an SLO measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliKind {
    /// Requests not answered 5xx, of all requests (`agent_requests_total`).
    Availability,
    /// Tasks completed, of tasks started.
    TaskCompletion,
    /// Requests answered (last byte) within `threshold` (`agent_response_seconds`).
    Latency,
    /// Streamed LLM calls whose first output chunk came within `threshold`.
    TimeToFirstToken,
    /// Inspected responses without a safety violation.
    Safety,
    /// Verdicts `correct`, of all verdicts on the agent's answers (`correctness:`).
    Correctness,
    /// MCP `tools/call`s ended `ok`, of all ended (`agent_tool_calls_total`).
    ToolSuccess,
    /// MCP `tools/call`s ended within `threshold` (`mcp_client_operation_duration_seconds`).
    ToolLatency,
}

/// Where a verdict on an answer came from (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictSource {
    /// The deterministic checks on an LLM response.
    Check,
    /// The agent's own verdict header.
    Agent,
    /// `POST /admin/feedback`.
    Feedback,
    /// The judge model's grade of a sampled answer (`correctness.judge`).
    Judge,
}

impl VerdictSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictSource::Check => "check",
            VerdictSource::Agent => "agent",
            VerdictSource::Feedback => "feedback",
            VerdictSource::Judge => "judge",
        }
    }
}

impl SliKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SliKind::Availability => "availability",
            SliKind::TaskCompletion => "task_completion",
            SliKind::Latency => "latency",
            SliKind::TimeToFirstToken => "time_to_first_token",
            SliKind::Safety => "safety",
            SliKind::Correctness => "correctness",
            SliKind::ToolSuccess => "tool_success",
            SliKind::ToolLatency => "tool_latency",
        }
    }

    /// The histogram boundaries a threshold must be one of (threshold SLIs only).
    pub fn buckets(self) -> Option<&'static [f64]> {
        match self {
            SliKind::Latency => Some(LATENCY_BUCKETS),
            SliKind::TimeToFirstToken => Some(GEN_AI_SECONDS_BUCKETS),
            SliKind::ToolLatency => Some(MCP_SECONDS_BUCKETS),
            _ => None,
        }
    }

    /// Whether it counts the tool calls of `mcp` listeners (and takes `tool:`).
    pub fn is_tool(self) -> bool {
        matches!(self, SliKind::ToolSuccess | SliKind::ToolLatency)
    }

    /// The severity of its incidents unless the SLO says otherwise: a tool's success as the
    /// agent's availability, its latency as the agent's.
    pub fn default_severity(self, s: &Severities) -> SeverityName {
        match self {
            SliKind::Availability | SliKind::ToolSuccess => s.availability,
            SliKind::TaskCompletion => s.task_completion,
            SliKind::Latency | SliKind::ToolLatency => s.latency,
            SliKind::TimeToFirstToken => s.time_to_first_token,
            SliKind::Safety => s.safety,
            SliKind::Correctness => s.correctness,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Unique; the `slo` label of its series and alerts.
    pub name: String,
    pub sli: SliKind,
    /// The share of good events to reach, e.g. `0.995`.
    pub target: f64,
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    /// `latency` and `time_to_first_token`: a good event is one within this long; it must be
    /// a boundary of the histogram's buckets.
    #[serde(default)]
    pub threshold: Option<ConfigDuration>,
    /// `availability`: requests failed by a dependency — a provider, a tool server or another
    /// agent (`cause="upstream"` or `"dependency"`) — are left out, so that the agent's budget
    /// measures the agent (each dependency has its own SLO).
    #[serde(default)]
    pub exclude_dependency_failures: bool,
    /// `availability`, `latency`, `safety`: the listeners whose requests count. Unset: the
    /// `agent`-role listeners (the agent as its clients see it), or every listener in a sidecar
    /// without one; for safety, every listener it inspects.
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// `correctness`: the verdicts' sources that count (default: every one).
    #[serde(default)]
    pub sources: Option<Vec<VerdictSource>>,
    /// `tool_success`, `tool_latency`: only the calls of this tool (its `gen_ai_tool_name`);
    /// unset, every tool's.
    #[serde(default)]
    pub tool: Option<String>,
    /// Overrides `incidents.severities` for this SLO.
    #[serde(default)]
    pub severity: Option<SeverityName>,
}

fn default_window() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30 * 86_400))
}

impl SloConfig {
    /// The allowed share of bad events: `1 - target`.
    pub fn budget(&self) -> f64 {
        1.0 - self.target
    }

    pub fn severity(&self, defaults: &Severities) -> SeverityName {
        self.severity
            .unwrap_or_else(|| self.sli.default_severity(defaults))
    }

    /// The listeners whose requests the SLO counts, of the config's `listeners`; `None`: every
    /// listener (an SLI without a listener label, safety unscoped, or a sidecar without an
    /// `agent` listener).
    pub fn scope<'a>(&'a self, listeners: &'a [ListenerConfig]) -> Option<Vec<&'a str>> {
        if let Some(named) = &self.listeners {
            return Some(named.iter().map(String::as_str).collect());
        }
        if !matches!(self.sli, SliKind::Availability | SliKind::Latency) {
            return None;
        }
        let agents: Vec<&str> = listeners
            .iter()
            .filter(|l| l.role == Role::Agent)
            .map(|l| l.name.as_str())
            .collect();
        (!agents.is_empty()).then_some(agents)
    }
}

/// `slos[i].listeners`: on SLIs whose series carry a listener, naming listeners that exist.
fn validate_listeners(
    i: usize,
    slo: &SloConfig,
    listeners: &[ListenerConfig],
) -> Result<(), (String, String)> {
    let Some(named) = &slo.listeners else {
        return Ok(());
    };
    let key = format!("slos[{i}].listeners");
    if !matches!(
        slo.sli,
        SliKind::Availability | SliKind::Latency | SliKind::Safety | SliKind::Correctness
    ) {
        return Err((
            key,
            format!(
                "a {} SLO counts the agent's own events, not a listener's",
                slo.sli.as_str()
            ),
        ));
    }
    if named.is_empty() {
        return Err((
            key,
            "must name at least one listener (leave it out for the default)".into(),
        ));
    }
    for (j, name) in named.iter().enumerate() {
        // Feedback verdicts are counted on the admin port's label.
        let feedback = slo.sli == SliKind::Correctness && name == "admin";
        if !feedback && !listeners.iter().any(|l| l.name == *name) {
            return Err((
                format!("{key}[{j}]"),
                format!("no listener named {name:?} under `listeners`"),
            ));
        }
    }
    Ok(())
}

/// Checks the SLOs; errors name `slos[i].key`.
pub(super) fn validate(
    slos: &[SloConfig],
    listeners: &[ListenerConfig],
) -> Result<(), (String, String)> {
    for (i, slo) in slos.iter().enumerate() {
        validate_listeners(i, slo, listeners)?;
        let key = |k: &str| format!("slos[{i}].{k}");
        let valid_name = !slo.name.is_empty()
            && slo.name.len() <= 64
            && slo
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err((
                key("name"),
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-' or '_' (it is a label value and part of alert names)",
                    slo.name
                ),
            ));
        }
        if let Some(j) = slos[..i].iter().position(|s| s.name == slo.name) {
            return Err((
                key("name"),
                format!("{:?} is the name of slos[{j}] too", slo.name),
            ));
        }
        if !(slo.target > 0.0 && slo.target < 1.0) {
            return Err((
                key("target"),
                format!(
                    "{} must be between 0 and 1, exclusive (0.995 is 99.5%)",
                    slo.target
                ),
            ));
        }
        let w = slo.window.0;
        if w < MIN_WINDOW || w > MAX_WINDOW {
            return Err((
                key("window"),
                "must be from 3d (the slow-burn alert looks back 3 days) to 365d".into(),
            ));
        }
        if w.as_secs() % 60 != 0 || w.subsec_nanos() != 0 {
            return Err((key("window"), "must be whole minutes".into()));
        }
        validate_threshold(i, slo)?;
        match (&slo.sources, slo.sli) {
            (Some(_), sli) if sli != SliKind::Correctness => {
                return Err((key("sources"), "applies to correctness SLOs only".into()))
            }
            (Some(s), _) if s.is_empty() => {
                return Err((
                    key("sources"),
                    "must name at least one source (leave it out for every one)".into(),
                ))
            }
            _ => {}
        }
        validate_tool(i, slo, listeners)?;
        if slo.exclude_dependency_failures && slo.sli != SliKind::Availability {
            return Err((
                key("exclude_dependency_failures"),
                "applies to availability SLOs only (only requests carry a cause)".into(),
            ));
        }
    }
    Ok(())
}

/// `slos[i].tool` on tool SLIs only; a tool SLI needs an `mcp` listener whose calls it counts.
fn validate_tool(
    i: usize,
    slo: &SloConfig,
    listeners: &[ListenerConfig],
) -> Result<(), (String, String)> {
    match (&slo.tool, slo.sli.is_tool()) {
        (Some(_), false) => {
            return Err((
                format!("slos[{i}].tool"),
                "applies to tool_success and tool_latency SLOs only".into(),
            ))
        }
        (Some(t), true) if t.is_empty() || t.len() > 128 => {
            return Err((
                format!("slos[{i}].tool"),
                "must be a tool's name, 1 to 128 bytes (leave it out for every tool)".into(),
            ))
        }
        _ => {}
    }
    if slo.sli.is_tool() && !listeners.iter().any(|l| l.role == Role::Mcp) {
        return Err((
            format!("slos[{i}].sli"),
            format!(
                "a {} SLO counts the tool calls of an `mcp` listener, and there is none",
                slo.sli.as_str()
            ),
        ));
    }
    Ok(())
}

/// `slos[i].threshold`: on threshold SLIs only, a bucket boundary of their histogram.
fn validate_threshold(i: usize, slo: &SloConfig) -> Result<(), (String, String)> {
    let key = |k: &str| format!("slos[{i}].{k}");
    match (slo.sli.buckets(), slo.threshold) {
        (Some(_), None) => {
            return Err((
                key("threshold"),
                format!("a {} SLO needs a threshold", slo.sli.as_str()),
            ))
        }
        (None, Some(_)) => {
            return Err((
                key("threshold"),
                format!("a {} SLO takes no threshold", slo.sli.as_str()),
            ))
        }
        (Some(buckets), Some(t)) => {
            let secs = t.0.as_secs_f64();
            if !buckets.iter().any(|b| (b - secs).abs() < 1e-9) {
                let list: Vec<String> = buckets.iter().map(|b| format!("{b}s")).collect();
                return Err((
                    key("threshold"),
                    format!(
                        "{secs}s is not a bucket boundary of the histogram, so the SLI could not be computed exactly; pick one of {}",
                        list.join(", ")
                    ),
                ));
            }
        }
        (None, None) => {}
    }
    Ok(())
}
