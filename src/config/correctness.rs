//! `correctness:`: where verdicts on the agent's answers come from — deterministic checks on
//! every LLM response, the agent's own verdict header, and later feedback — for the
//! `correctness` SLI. Without the section, none is gathered.

use serde::Deserialize;

/// A deterministic check run on every LLM response (role `llm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectnessCheck {
    /// The generation ended on its token limit (`length`, `max_tokens`): a cut answer.
    Truncated,
    /// The model refused (OpenAI's `refusal`, Anthropic's `stop_reason: "refusal"`).
    Refusal,
}

impl CorrectnessCheck {
    pub const ALL: [CorrectnessCheck; 2] = [CorrectnessCheck::Truncated, CorrectnessCheck::Refusal];
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectnessConfig {
    /// The checks run on every LLM response (default: every one this build has).
    #[serde(default = "default_checks")]
    pub checks: Vec<CorrectnessCheck>,
    /// The agent's own verdict on its answer (`correct` | `incorrect`), on its responses; removed
    /// before the client sees them.
    #[serde(default = "default_verdict_header")]
    pub verdict_header: String,
}

impl Default for CorrectnessConfig {
    fn default() -> Self {
        CorrectnessConfig {
            checks: default_checks(),
            verdict_header: default_verdict_header(),
        }
    }
}

fn default_checks() -> Vec<CorrectnessCheck> {
    CorrectnessCheck::ALL.to_vec()
}

fn default_verdict_header() -> String {
    "x-agent-verdict".into()
}

impl CorrectnessConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if http::HeaderName::from_bytes(self.verdict_header.as_bytes()).is_err() {
            return Err((
                "correctness.verdict_header".into(),
                format!("{:?} is not a valid HTTP header name", self.verdict_header),
            ));
        }
        for (i, c) in self.checks.iter().enumerate() {
            if self.checks[..i].contains(c) {
                return Err((format!("correctness.checks[{i}]"), "is listed twice".into()));
            }
        }
        Ok(())
    }

    pub fn runs(&self, check: CorrectnessCheck) -> bool {
        self.checks.contains(&check)
    }
}
