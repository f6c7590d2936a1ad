//! `safety:` and `incidents:`: what the detectors look for, what happens on a hit, when the
//! kill switch trips, and where incident events go.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::{parse_upstream_url, ConfigDuration, Role, UpstreamUrl};
use crate::inspect::safety::{Builtin, DetectorSpec, Detectors, MAX_DETECTORS};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// The roles whose responses are inspected; both by default.
    #[serde(default = "default_apply_to")]
    pub apply_to: Vec<Role>,
    /// Every built-in detector when absent.
    #[serde(default = "default_detectors")]
    pub detectors: Vec<DetectorConfig>,
    #[serde(default)]
    pub action: SafetyAction,
    #[serde(default)]
    pub kill_switch: Option<KillSwitchConfig>,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            apply_to: default_apply_to(),
            detectors: default_detectors(),
            action: SafetyAction::Record,
            kill_switch: None,
        }
    }
}

fn default_apply_to() -> Vec<Role> {
    vec![Role::Agent, Role::Llm]
}

fn default_detectors() -> Vec<DetectorConfig> {
    ["pii_email", "pii_credit_card", "pii_us_ssn", "secrets"]
        .into_iter()
        .map(|b| DetectorConfig {
            builtin: Some(b.to_owned()),
            ..DetectorConfig::default()
        })
        .collect()
}

/// One detector: `{builtin: NAME}`, `{name, regex}` or `{name, keywords: [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    #[serde(default)]
    pub builtin: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyAction {
    /// Count the violation; the response passes.
    #[default]
    Record,
    /// Count it and stop the response: 403 `safety_blocked`, or an SSE error event that ends
    /// a stream.
    Block,
}

impl SafetyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyAction::Record => "record",
            SafetyAction::Block => "block",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchConfig {
    /// Violations within `within` that disable the agent: blocked detector hits (and the agent's
    /// own `x-safety-flag`), not echoes of the request, from this many distinct tasks (or
    /// clients, for requests without a task id).
    pub violations: u32,
    pub within: ConfigDuration,
    /// Where inbound (agent role) traffic goes while the agent is disabled; 503
    /// `agent_disabled` without it.
    #[serde(default)]
    pub fallback_url: Option<String>,
}

/// Incident severities of the article's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeverityName {
    Sev1,
    Sev2,
    Sev3,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    /// Alertmanager v2 `POST /api/v2/alerts` URL (the whole URL).
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub severities: Severities,
}

/// The severity of an incident about each SLI; the article's defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Severities {
    #[serde(default = "sev1")]
    pub safety: SeverityName,
    #[serde(default = "sev2")]
    pub availability: SeverityName,
    #[serde(default = "sev2")]
    pub task_completion: SeverityName,
    #[serde(default = "sev3")]
    pub latency: SeverityName,
    #[serde(default = "sev3")]
    pub time_to_first_token: SeverityName,
    #[serde(default = "sev2")]
    pub correctness: SeverityName,
    /// An MCP server changed a pinned tool definition (`mcp.tool_changes`).
    #[serde(default = "sev2")]
    pub tool_change: SeverityName,
}

fn sev1() -> SeverityName {
    SeverityName::Sev1
}
fn sev2() -> SeverityName {
    SeverityName::Sev2
}
fn sev3() -> SeverityName {
    SeverityName::Sev3
}

impl Default for Severities {
    fn default() -> Self {
        Severities {
            safety: sev1(),
            availability: sev2(),
            task_completion: sev2(),
            latency: sev3(),
            time_to_first_token: sev3(),
            correctness: sev2(),
            tool_change: sev2(),
        }
    }
}

/// The most `kill_switch.violations`: the switch keeps the time of each of the last that many.
pub(super) const MAX_KILL_SWITCH_VIOLATIONS: u32 = 10_000;

impl SafetyConfig {
    /// The detectors as the scanner takes them; the error is `(key path, message)`.
    pub fn detector_specs(&self) -> Result<Vec<DetectorSpec>, (String, String)> {
        let mut names = HashSet::new();
        let mut specs = Vec::with_capacity(self.detectors.len());
        for (i, d) in self.detectors.iter().enumerate() {
            let base = format!("safety.detectors[{i}]");
            let kinds = [d.builtin.is_some(), d.regex.is_some(), d.keywords.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err((
                    base,
                    "give exactly one of `builtin`, `regex` (with `name`) or `keywords` (with `name`)".into(),
                ));
            }
            let spec = if let Some(b) = &d.builtin {
                if d.name.is_some() {
                    return Err((
                        format!("{base}.name"),
                        "a built-in detector is named by `builtin`".into(),
                    ));
                }
                let builtin = Builtin::from_name(b).ok_or_else(|| {
                    (
                        format!("{base}.builtin"),
                        format!("unknown built-in detector {b:?}; one of pii_email, pii_credit_card, pii_us_ssn, secrets"),
                    )
                })?;
                DetectorSpec::Builtin(builtin)
            } else {
                let name =
                    d.name
                        .clone()
                        .filter(|n| !n.trim().is_empty())
                        .ok_or_else(|| {
                            (
                        format!("{base}.name"),
                        "a regex or keywords detector needs a `name` (its `detector` label)".into(),
                    )
                        })?;
                if Builtin::from_name(&name).is_some()
                    || ["content_filter", "safety_flag", "uninspectable"].contains(&name.as_str())
                {
                    return Err((
                        format!("{base}.name"),
                        format!("{name:?} is the name of a built-in detector or signal"),
                    ));
                }
                match (&d.regex, &d.keywords) {
                    (Some(pattern), _) => DetectorSpec::Regex {
                        name,
                        pattern: pattern.clone(),
                    },
                    (_, Some(words)) if words.is_empty() => {
                        return Err((format!("{base}.keywords"), "must not be empty".into()))
                    }
                    (_, Some(words)) => DetectorSpec::Keywords {
                        name,
                        words: words.clone(),
                    },
                    // Ruled out by the count above; said plainly all the same.
                    (None, None) => {
                        return Err((
                            base,
                            "give exactly one of `builtin`, `regex` or `keywords`".into(),
                        ))
                    }
                }
            };
            let label = match &spec {
                DetectorSpec::Builtin(b) => b.as_str().to_owned(),
                DetectorSpec::Regex { name, .. } | DetectorSpec::Keywords { name, .. } => {
                    name.clone()
                }
            };
            if !names.insert(label.clone()) {
                return Err((base, format!("detector {label:?} is listed twice")));
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// Checks the section; builds the detectors once to prove they compile.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.apply_to.is_empty() {
            return Err((
                "safety.apply_to".into(),
                "name at least one role (agent, llm); remove `safety` to inspect nothing".into(),
            ));
        }
        if self.detectors.len() > MAX_DETECTORS {
            return Err((
                "safety.detectors".into(),
                format!(
                    "at most {} detectors (a `keywords` detector takes any number of words)",
                    MAX_DETECTORS
                ),
            ));
        }
        let specs = self.detector_specs()?;
        if specs.is_empty() {
            return Err((
                "safety.detectors".into(),
                "at least one detector is required (absent: every built-in)".into(),
            ));
        }
        Detectors::new(&specs).map_err(|e| {
            let (index, message) = (e.index, e.message);
            let key = match &self.detectors.get(index) {
                Some(d) if d.regex.is_some() => "regex",
                Some(d) if d.keywords.is_some() => "keywords",
                _ => "builtin",
            };
            (format!("safety.detectors[{index}].{key}"), message)
        })?;
        if let Some(k) = &self.kill_switch {
            if k.violations == 0 || k.violations > MAX_KILL_SWITCH_VIOLATIONS {
                return Err((
                    "safety.kill_switch.violations".into(),
                    format!("must be between 1 and {MAX_KILL_SWITCH_VIOLATIONS}"),
                ));
            }
            if k.within.0 < Duration::from_secs(1) {
                return Err((
                    "safety.kill_switch.within".into(),
                    "must be at least 1s".into(),
                ));
            }
            if let Some(url) = &k.fallback_url {
                parse_upstream_url(url)
                    .map_err(|m| ("safety.kill_switch.fallback_url".to_owned(), m))?;
            }
            // The switch acts on what `block` acts on: detectors trusted enough to stop an
            // answer. Under `record` they are still being tuned, and a false positive a client
            // can provoke must not silence the agent.
            if self.action != SafetyAction::Block {
                return Err((
                    "safety.kill_switch".into(),
                    "acts on the violations `action: block` acts on; set `safety.action: block`, or remove kill_switch while detectors only record".into(),
                ));
            }
        }
        Ok(())
    }

    /// The kill switch's `fallback_url`, parsed (validated already).
    pub fn fallback_url(&self) -> Option<UpstreamUrl> {
        let url = self.kill_switch.as_ref()?.fallback_url.as_deref()?;
        parse_upstream_url(url).ok()
    }
}

impl IncidentsConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(url) = &self.webhook {
            parse_upstream_url(url).map_err(|m| ("incidents.webhook".to_owned(), m))?;
        }
        Ok(())
    }
}
