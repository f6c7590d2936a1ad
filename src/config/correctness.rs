//! `correctness:`: where verdicts on the agent's answers come from — deterministic checks on
//! every LLM response, the agent's own verdict header, later feedback, and a judge model grading
//! a sample — for the `correctness` SLI. Without the section, none is gathered.

use serde::Deserialize;

use super::ConfigDuration;

/// A deterministic check run on every LLM response (role `llm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectnessCheck {
    /// The request asked for a JSON schema and the output does not parse or does not validate.
    StructuredOutput,
    /// The generation ended on its token limit (`length`, `max_tokens`): a cut answer.
    Truncated,
    /// The model refused (OpenAI's `refusal`, Anthropic's `stop_reason: "refusal"`).
    Refusal,
}

impl CorrectnessCheck {
    pub const ALL: [CorrectnessCheck; 3] = [
        CorrectnessCheck::StructuredOutput,
        CorrectnessCheck::Truncated,
        CorrectnessCheck::Refusal,
    ];
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
    /// Sampled online evaluation by a judge model, off the request path (none without it).
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
}

impl Default for CorrectnessConfig {
    fn default() -> Self {
        CorrectnessConfig {
            checks: default_checks(),
            verdict_header: default_verdict_header(),
            judge: None,
        }
    }
}

/// `correctness.judge`: a sample of the agent's answers graded by a model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// An `upstreams:` entry speaking `openai` or `anthropic`: what is sent goes there.
    pub upstream: String,
    pub model: String,
    /// The share of the agent's 2xx answers (on `agent` listeners) graded.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Samples sent per minute at most; past it they are dropped (and counted).
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// The request's and the answer's text are each cut to this many characters.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// The question put to the judge; `{request}` and `{response}` are filled in.
    #[serde(default = "default_rubric")]
    pub rubric: String,
    /// How long one judge call may take, from sending to the verdict's last byte.
    #[serde(default = "default_judge_timeout")]
    pub timeout: ConfigDuration,
}

/// The most `max_chars` may be: 1 MiB of text per side (4 MiB of UTF-8 at most).
const MAX_JUDGE_CHARS: usize = 1 << 20;

fn default_sample_ratio() -> f64 {
    0.05
}

fn default_max_per_minute() -> u32 {
    60
}

fn default_max_chars() -> usize {
    16_000
}

fn default_judge_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30))
}

/// The default rubric.
const DEFAULT_RUBRIC: &str = "You grade an AI agent's answer. Is the response a correct and complete answer to the request? Judge facts, not style.\n\nRequest:\n{request}\n\nResponse:\n{response}";

fn default_rubric() -> String {
    DEFAULT_RUBRIC.into()
}

impl JudgeConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("correctness.judge.{k}");
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err((key("sample_ratio"), "must be between 0 and 1".into()));
        }
        if self.max_per_minute == 0 {
            return Err((
                key("max_per_minute"),
                "must be at least 1 (set sample_ratio: 0 to send none)".into(),
            ));
        }
        if self.max_chars == 0 || self.max_chars > MAX_JUDGE_CHARS {
            return Err((
                key("max_chars"),
                format!("must be between 1 and {MAX_JUDGE_CHARS}"),
            ));
        }
        if self.model.trim().is_empty() {
            return Err((key("model"), "must name the judge's model".into()));
        }
        if self.timeout.0.is_zero() {
            return Err((key("timeout"), "must be more than 0s".into()));
        }
        Ok(())
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
        if let Some(judge) = &self.judge {
            judge.validate()?;
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
