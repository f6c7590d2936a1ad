//! `slos:`: the service level objectives, each on one of the article's SLIs (or time to first
//! token), with its target, window and severity.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, Severities, SeverityName};
use crate::metric_table::{GEN_AI_SECONDS_BUCKETS, LATENCY_BUCKETS};

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
}

impl SliKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SliKind::Availability => "availability",
            SliKind::TaskCompletion => "task_completion",
            SliKind::Latency => "latency",
            SliKind::TimeToFirstToken => "time_to_first_token",
            SliKind::Safety => "safety",
        }
    }

    /// The histogram boundaries a threshold must be one of (threshold SLIs only).
    pub fn buckets(self) -> Option<&'static [f64]> {
        match self {
            SliKind::Latency => Some(LATENCY_BUCKETS),
            SliKind::TimeToFirstToken => Some(GEN_AI_SECONDS_BUCKETS),
            _ => None,
        }
    }

    /// The severity of its incidents unless the SLO says otherwise.
    pub fn default_severity(self, s: &Severities) -> SeverityName {
        match self {
            SliKind::Availability => s.availability,
            SliKind::TaskCompletion => s.task_completion,
            SliKind::Latency => s.latency,
            SliKind::TimeToFirstToken => s.time_to_first_token,
            SliKind::Safety => s.safety,
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
    /// `availability`: requests failed by a provider (`cause="upstream"`) are left out, so
    /// that the agent's budget measures the agent (each provider has its own SLO).
    #[serde(default)]
    pub exclude_dependency_failures: bool,
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
}

/// Checks the SLOs; errors name `slos[i].key`.
pub(super) fn validate(slos: &[SloConfig]) -> Result<(), (String, String)> {
    for (i, slo) in slos.iter().enumerate() {
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
        if slo.exclude_dependency_failures && slo.sli != SliKind::Availability {
            return Err((
                key("exclude_dependency_failures"),
                "applies to availability SLOs only (only requests carry a cause)".into(),
            ));
        }
    }
    Ok(())
}
