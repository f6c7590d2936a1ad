//! The LLM-call metrics of the `llm` role: OpenTelemetry GenAI client instruments, finish
//! reasons, hallucinated tool calls, unparsed bodies, API key rejections.
//!
//! Model names come from outside, so the model label is bounded ([`ModelLabels`]); handles per
//! (upstream, model) are registered the first time a model is seen and cached, so a call costs
//! one uncontended map lookup, not a registration.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram, Label};

use super::{label, Telemetry};
use crate::inspect::{FinishReason, Unparsed};
use crate::metric_table::*;

/// The model names used as label values: the first `max` distinct ones as they are, later ones
/// (and names longer than [`MAX_MODEL_NAME`]) as `other`, so a client sending random or huge
/// model names cannot blow up the series count or the exposition. `unknown` (no model named)
/// takes no slot.
#[derive(Debug)]
pub struct ModelLabels {
    max: usize,
    seen: RwLock<HashMap<String, Arc<str>>>,
    other: Arc<str>,
    unknown: Arc<str>,
}

/// Longest model name used as a label value; real ones are well under 100 bytes.
pub(crate) const MAX_MODEL_NAME: usize = 128;

impl ModelLabels {
    pub fn new(max: usize) -> ModelLabels {
        ModelLabels {
            max,
            seen: RwLock::new(HashMap::new()),
            other: Arc::from("other"),
            unknown: Arc::from("unknown"),
        }
    }

    /// The label for a request's model (`None`: it named none, or could not be read).
    pub fn label(&self, model: Option<&str>) -> Arc<str> {
        let Some(model) = model else {
            return self.unknown.clone();
        };
        if model.len() > MAX_MODEL_NAME {
            return self.other.clone();
        }
        if let Ok(seen) = self.seen.read() {
            if let Some(l) = seen.get(model) {
                return l.clone();
            }
            if seen.len() >= self.max {
                return self.other.clone();
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return self.other.clone();
        };
        if seen.len() >= self.max && !seen.contains_key(model) {
            return self.other.clone();
        }
        seen.entry(model.to_owned())
            .or_insert_with(|| Arc::from(model))
            .clone()
    }
}

/// Why an LLM call failed, as `error_type` on the duration histogram; empty for a call that
/// succeeded (Prometheus reads an empty label as absent, like OpenTelemetry's unset
/// `error.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    None = 0,
    /// The provider answered 4xx (other than 429): a bad request, a rejected key.
    ClientError = 1,
    ServerError = 2,
    TooManyRequests = 3,
    Timeout = 4,
    ConnectError = 5,
    Reset = 6,
    /// The sidecar or the client ended the call (client left, client stalled, proxy fault).
    Cancelled = 7,
}

impl ErrorType {
    pub const COUNT: usize = 8;

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::None => "",
            ErrorType::ClientError => "4xx",
            ErrorType::ServerError => "5xx",
            ErrorType::TooManyRequests => "429",
            ErrorType::Timeout => "timeout",
            ErrorType::ConnectError => "connect_error",
            ErrorType::Reset => "reset",
            ErrorType::Cancelled => "cancelled",
        }
    }
}

/// One upstream's LLM-call handles.
#[derive(Debug)]
pub struct LlmMetrics {
    telemetry: Telemetry,
    agent: String,
    upstream: String,
    provider: &'static str,
    models: Arc<ModelLabels>,
    by_model: RwLock<HashMap<Arc<str>, Arc<ModelMetrics>>>,
    finish_reasons: [Counter; FinishReason::COUNT],
    /// `[unknown_tool, invalid_arguments]`.
    pub hallucinated: [Counter; 2],
    unparsed: [Counter; Unparsed::COUNT],
}

/// The handles of one (upstream, model), registered on first use so that the exposition only
/// shows series that have samples.
#[derive(Debug)]
pub struct ModelMetrics {
    labels: Vec<Label>,
    telemetry: Telemetry,
    duration: [OnceLock<Histogram>; ErrorType::COUNT],
    time_to_first_chunk: OnceLock<Histogram>,
    time_per_output_chunk: OnceLock<Histogram>,
    /// `[input, output]`.
    tokens: [OnceLock<Histogram>; 2],
}

impl LlmMetrics {
    /// `gen_ai.provider.name` of the upstream's calls.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    pub fn new(
        t: &Telemetry,
        agent: &str,
        upstream: &str,
        provider: &'static str,
        models: Arc<ModelLabels>,
    ) -> LlmMetrics {
        let base = || vec![label("agent", agent), label("upstream", upstream)];
        let with = |name: &'static str, key: &'static str, value: &'static str| {
            let mut labels = base();
            labels.push(Label::from_static_parts(key, value));
            t.counter(name, labels)
        };
        LlmMetrics {
            telemetry: t.clone(),
            agent: agent.to_owned(),
            upstream: upstream.to_owned(),
            provider,
            models,
            by_model: RwLock::new(HashMap::new()),
            finish_reasons: FinishReason::ALL
                .map(|r| with(FINISH_REASONS_TOTAL, "reason", r.as_str())),
            hallucinated: ["unknown_tool", "invalid_arguments"]
                .map(|k| with(HALLUCINATED_TOOL_CALLS_TOTAL, "kind", k)),
            unparsed: Unparsed::ALL.map(|u| with(UNPARSED_BODIES_TOTAL, "reason", u.as_str())),
        }
    }

    pub fn finish_reason(&self, reason: FinishReason) {
        self.finish_reasons[reason as usize].increment(1);
    }

    pub fn unparsed(&self, why: Unparsed) {
        self.unparsed[why as usize].increment(1);
    }

    /// The handles for a model (`None`: the request named none, or could not be read).
    pub fn model(&self, model: Option<&str>) -> Arc<ModelMetrics> {
        // A model named before is its own label: one lookup by its name. (Not the two reserved
        // labels: a model named `unknown` or `other` may be labelled `other`.)
        if let Some(name) = model.filter(|n| *n != "unknown" && *n != "other") {
            if let Some(m) = self.by_model.read().ok().and_then(|m| m.get(name).cloned()) {
                return m;
            }
        }
        let model = self.models.label(model);
        if let Some(m) = self
            .by_model
            .read()
            .ok()
            .and_then(|m| m.get(&model).cloned())
        {
            return m;
        }
        let made = Arc::new(ModelMetrics {
            labels: vec![
                label("agent", &self.agent),
                label("upstream", &self.upstream),
                Label::from_static_parts("gen_ai_provider_name", self.provider),
                Label::new("gen_ai_request_model", model.to_string()),
            ],
            telemetry: self.telemetry.clone(),
            duration: Default::default(),
            time_to_first_chunk: OnceLock::new(),
            time_per_output_chunk: OnceLock::new(),
            tokens: Default::default(),
        });
        match self.by_model.write() {
            Ok(mut m) => m.entry(model).or_insert(made).clone(),
            Err(_) => made,
        }
    }
}

impl ModelMetrics {
    fn get<'a>(
        &'a self,
        cell: &'a OnceLock<Histogram>,
        name: &'static str,
        extra: Option<Label>,
    ) -> &'a Histogram {
        cell.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.extend(extra);
            self.telemetry.histogram(name, labels)
        })
    }

    pub fn duration(&self, operation: &'static str, error: ErrorType, seconds: f64) {
        self.duration[error as usize]
            .get_or_init(|| {
                let mut labels = self.labels.clone();
                labels.push(Label::from_static_parts("gen_ai_operation_name", operation));
                labels.push(Label::from_static_parts("error_type", error.as_str()));
                self.telemetry.histogram(GEN_AI_OPERATION_DURATION, labels)
            })
            .record(seconds);
    }

    pub fn time_to_first_chunk(&self, seconds: f64) {
        self.get(&self.time_to_first_chunk, GEN_AI_TIME_TO_FIRST_CHUNK, None)
            .record(seconds);
    }

    pub fn time_per_output_chunk(&self, seconds: f64) {
        self.get(
            &self.time_per_output_chunk,
            GEN_AI_TIME_PER_OUTPUT_CHUNK,
            None,
        )
        .record(seconds);
    }

    pub fn tokens(&self, input: Option<u64>, output: Option<u64>) {
        for (i, (count, kind)) in [(input, "input"), (output, "output")]
            .into_iter()
            .enumerate()
        {
            if let Some(n) = count {
                let kind = Label::from_static_parts("gen_ai_token_type", kind);
                self.get(&self.tokens[i], GEN_AI_TOKEN_USAGE, Some(kind))
                    .record(n as f64);
            }
        }
    }
}

/// An upstream's API key handles: rejections (401s) and file reloads.
#[derive(Debug)]
pub struct KeyMetrics {
    pub rejections: Counter,
    pub reload_ok: Counter,
    pub reload_error: Counter,
}

impl KeyMetrics {
    pub fn new(t: &Telemetry, agent: &str, upstream: &str) -> KeyMetrics {
        let base = || vec![label("agent", agent), label("upstream", upstream)];
        let reload = |result: &'static str| {
            let mut labels = base();
            labels.push(Label::from_static_parts("result", result));
            t.counter(API_KEY_RELOADS_TOTAL, labels)
        };
        KeyMetrics {
            rejections: t.counter(API_KEY_REJECTIONS_TOTAL, base()),
            reload_ok: reload("ok"),
            reload_error: reload("error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_handles_carry_its_bounded_label() {
        let t = Telemetry::new();
        let m = LlmMetrics::new(&t, "a", "up", "openai", Arc::new(ModelLabels::new(1)));
        let of = |model| {
            let h = m.model(model);
            let l = h.labels.iter().find(|l| l.key() == "gen_ai_request_model");
            l.map(|l| l.value().to_owned()).unwrap_or_default()
        };
        assert_eq!(of(Some("a")), "a");
        // Looked up by name the second time: the same handles.
        assert!(Arc::ptr_eq(&m.model(Some("a")), &m.model(Some("a"))));
        assert_eq!(of(Some("b")), "other");
        assert_eq!(of(Some("b")), "other");
        assert_eq!(of(Some("a")), "a");
        // The reserved names are labels of their own only as the labels say.
        assert_eq!(of(None), "unknown");
        assert_eq!(of(Some("unknown")), "other");
        assert_eq!(of(Some("other")), "other");
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = ModelLabels::new(2);
        assert_eq!(&*m.label(None), "unknown");
        assert_eq!(&*m.label(Some("a")), "a");
        assert_eq!(&*m.label(Some(&"x".repeat(MAX_MODEL_NAME + 1))), "other");
        assert_eq!(&*m.label(Some("b")), "b");
        assert_eq!(&*m.label(Some("c")), "other");
        assert_eq!(&*m.label(Some("a")), "a");
    }
}
