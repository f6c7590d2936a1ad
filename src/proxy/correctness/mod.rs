//! Correctness verdicts on the agent's answers (`correctness:`), for the `correctness` SLI:
//! the deterministic checks on every LLM response (`llm` role: a structured output that breaks
//! its schema, a truncated answer, a refusal), the agent's own verdict header on its answers
//! (`agent` role; removed before the client sees it), later feedback (`POST /admin/feedback`,
//! see [`Feedback`]), and the judge's grade of a sample of the agent's answers
//! ([`super::judge`]). Each is counted in
//! `agent_correctness_verdicts_total{listener, source, verdict, reason}` when its request is (the
//! judge's when it has graded).

mod schemas;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderName;
use metrics::{Counter, Label};
use tokio::time::Instant;

use super::judge::{JudgeQueue, JudgeVerdicts, Kept};
use super::llm::CallEnd;
use crate::config::{CorrectnessCheck, CorrectnessConfig, Role};
use crate::telemetry::{label, Telemetry, CORRECTNESS_VERDICTS_TOTAL};
use crate::upstream::{BodySample, RequestBody};

pub(crate) use schemas::Schemas;

/// What a verdict says, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Passed every check that applied.
    Checked,
    Truncated,
    Refused,
    /// The output does not follow the schema its request asked for.
    SchemaInvalid,
    /// The agent's (or a user's) own verdict.
    Correct,
    Incorrect,
}

impl Verdict {
    /// The `verdict` and `reason` labels, for a verdict of `source`.
    fn labels(self, source: &'static str) -> (&'static str, &'static str) {
        match self {
            Verdict::Checked => ("correct", "checks"),
            Verdict::Truncated => ("incorrect", "truncated"),
            Verdict::Refused => ("incorrect", "refusal"),
            Verdict::SchemaInvalid => ("incorrect", "schema_invalid"),
            Verdict::Correct => ("correct", source),
            Verdict::Incorrect => ("incorrect", source),
        }
    }
}

/// The counters of one listener (or of the feedback endpoint): one per verdict its source gives.
#[derive(Debug)]
struct Verdicts(Vec<(Verdict, Counter)>);

impl Verdicts {
    fn new(t: &Telemetry, agent: &str, listener: &str, source: &'static str) -> Verdicts {
        let kinds: &[Verdict] = match source {
            "check" => &[
                Verdict::Checked,
                Verdict::Truncated,
                Verdict::Refused,
                Verdict::SchemaInvalid,
            ],
            _ => &[Verdict::Correct, Verdict::Incorrect],
        };
        Verdicts(
            kinds
                .iter()
                .map(|v| {
                    let (verdict, reason) = v.labels(source);
                    let labels = vec![
                        label("agent", agent),
                        label("listener", listener),
                        Label::from_static_parts("source", source),
                        Label::from_static_parts("verdict", verdict),
                        Label::from_static_parts("reason", reason),
                    ];
                    (*v, t.counter(CORRECTNESS_VERDICTS_TOTAL, labels))
                })
                .collect(),
        )
    }

    fn count(&self, v: Verdict) {
        if let Some(c) = self.counter(v) {
            c.increment(1);
        }
    }

    fn counter(&self, v: Verdict) -> Option<&Counter> {
        self.0.iter().find(|(k, _)| *k == v).map(|(_, c)| c)
    }
}

/// An `agent` listener's part in the judge: its samples and where their verdicts count.
#[derive(Debug)]
struct Judging {
    queue: Arc<JudgeQueue>,
    /// `sample_ratio` as a fraction of `u64::MAX`.
    threshold: u64,
    max_per_minute: u32,
    /// `max_chars` as bytes: the most of each text kept (UTF-8 is at most 4 bytes a char).
    keep: usize,
    verdicts: Arc<JudgeVerdicts>,
}

/// What one listener does about correctness.
#[derive(Debug)]
pub struct ListenerCorrectness {
    /// `llm` role: the checks run, and the compiled schemas (`structured_output`).
    truncated: bool,
    refusal: bool,
    schemas: Option<Arc<Schemas>>,
    /// `agent` role: the agent's verdict header.
    verdict_header: Option<HeaderName>,
    verdicts: Verdicts,
    /// `agent` role, with `correctness.judge`.
    judge: Option<Judging>,
}

impl ListenerCorrectness {
    /// `schemas`: the process's compiled schemas; `judge`: the queue to the judge, when the
    /// sidecar has one.
    pub(crate) fn new(
        config: &CorrectnessConfig,
        role: Role,
        t: &Telemetry,
        agent: &str,
        listener: &str,
        schemas: &Arc<Schemas>,
        judge: Option<&Arc<JudgeQueue>>,
    ) -> Option<ListenerCorrectness> {
        let (source, header) = match role {
            Role::Llm => ("check", None),
            Role::Agent => (
                "agent",
                HeaderName::from_bytes(config.verdict_header.as_bytes()).ok(),
            ),
            _ => return None,
        };
        let llm = role == Role::Llm;
        let judge = match (&config.judge, judge) {
            (Some(c), Some(queue)) if role == Role::Agent => {
                let v = Verdicts::new(t, agent, listener, "judge");
                let counter = |k| v.counter(k).cloned().unwrap_or_else(Counter::noop);
                Some(Judging {
                    queue: queue.clone(),
                    threshold: (c.sample_ratio * u64::MAX as f64) as u64,
                    max_per_minute: c.max_per_minute,
                    keep: c.max_chars.saturating_mul(4),
                    verdicts: Arc::new(JudgeVerdicts {
                        correct: counter(Verdict::Correct),
                        incorrect: counter(Verdict::Incorrect),
                    }),
                })
            }
            _ => None,
        };
        Some(ListenerCorrectness {
            truncated: llm && config.runs(CorrectnessCheck::Truncated),
            refusal: llm && config.runs(CorrectnessCheck::Refusal),
            schemas: (llm && config.runs(CorrectnessCheck::StructuredOutput))
                .then(|| schemas.clone()),
            verdict_header: header,
            verdicts: Verdicts::new(t, agent, listener, source),
            judge,
        })
    }
}

/// A request's verdict, counted with the request, and its sample for the judge.
#[derive(Debug, Default)]
pub(crate) struct CorrectnessState {
    verdict: Option<Verdict>,
    /// A sampled request's texts, kept as they pass (boxed: most requests have none).
    sample: Option<Box<Kept>>,
}

impl CorrectnessState {
    /// A request arrived at `now`: on an `agent` listener with a judge, it may be sampled.
    pub(super) fn begin(
        &mut self,
        lc: Option<&ListenerCorrectness>,
        parts: &http::request::Parts,
        now: Instant,
    ) {
        let Some(j) = lc.and_then(|lc| lc.judge.as_ref()) else {
            return;
        };
        let line = || {
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            format!("{} {target}", parts.method)
        };
        self.sample = j
            .queue
            .sample(j.threshold, j.max_per_minute, now, line)
            .map(Box::new);
    }

    /// The attempt's request goes out with `body` and `headers`: a sampled request keeps the
    /// first bytes of its text (one without text to read is no sample).
    pub(super) fn sending(
        &mut self,
        lc: Option<&ListenerCorrectness>,
        body: &mut RequestBody,
        headers: &http::HeaderMap,
    ) {
        let (Some(sample), Some(j)) = (&mut self.sample, lc.and_then(|lc| lc.judge.as_ref()))
        else {
            return;
        };
        // Each attempt's body is the whole request again: the last one sent is kept.
        sample.request = Arc::new(BodySample::default());
        match j.queue.text(headers, j.keep) {
            Some(text) => body.keep_sample(text, sample.request.clone()),
            None => self.sample = None,
        }
    }

    /// Whether an LLM call's output is kept, for the `structured_output` check.
    pub(super) fn keeps_output(&self, lc: Option<&ListenerCorrectness>) -> bool {
        lc.is_some_and(|lc| lc.schemas.is_some())
    }

    /// The response head: on an `agent` listener, the agent's verdict header is read and removed
    /// (a value other than `correct` or `incorrect` says nothing); a sampled request keeps the
    /// first bytes of its answer's text when it is a 2xx with text to read (not binary, not
    /// compressed).
    pub(super) fn head(
        &mut self,
        lc: Option<&ListenerCorrectness>,
        parts: &mut http::response::Parts,
    ) {
        if let (Some(sample), Some(j)) = (&mut self.sample, lc.and_then(|lc| lc.judge.as_ref())) {
            let text = j.queue.text(&parts.headers, j.keep);
            match text.filter(|_| parts.status.is_success()) {
                Some(text) => sample.response = Some(text),
                None => self.sample = None,
            }
        }
        let Some(name) = lc.and_then(|lc| lc.verdict_header.as_ref()) else {
            return;
        };
        let Some(value) = parts.headers.remove(name) else {
            return;
        };
        let v = value.as_bytes().trim_ascii();
        self.verdict = if v.eq_ignore_ascii_case(b"correct") {
            Some(Verdict::Correct)
        } else if v.eq_ignore_ascii_case(b"incorrect") {
            Some(Verdict::Incorrect)
        } else {
            None
        };
    }

    /// A chunk of the answer went by: a sampled one keeps its text, up to its limit.
    pub(super) fn data(&mut self, data: &Bytes) {
        if let Some(prefix) = self.sample.as_mut().and_then(|s| s.response.as_mut()) {
            prefix.push(data);
        }
    }

    /// The sidecar answers itself (a safety block, an error): the agent's verdict was on an
    /// answer the client does not get, and there is nothing to judge.
    pub(super) fn local_answer(&mut self) {
        self.verdict = None;
        self.sample = None;
    }

    /// The request is counted (`complete`: its answer's last byte went out; `flagged`: safety
    /// found something in it): its verdict too. An LLM call that succeeded, was read whole and
    /// said how it ended gets the checks' verdict: refused, truncated, breaking its schema, or
    /// correct when none. The agent's verdict counts for an answer the client got whole, and so
    /// goes a sampled answer to the judge — unless safety found anything in it: what safety
    /// blocked or flagged is never sent.
    pub(super) fn end(
        &mut self,
        lc: Option<&ListenerCorrectness>,
        call: Option<&CallEnd>,
        complete: bool,
        flagged: bool,
    ) {
        let Some(lc) = lc else {
            return;
        };
        let checked = call.filter(|c| c.answered && c.checkable);
        if let Some(c) = checked {
            if let Some(verdict) = lc.check(c) {
                lc.verdicts.count(verdict);
            }
        }
        if let Some(v) = self.verdict.take().filter(|_| complete) {
            lc.verdicts.count(v);
        }
        let sample = self.sample.take().filter(|_| complete && !flagged);
        if let (Some(sample), Some(j)) = (sample, &lc.judge) {
            j.queue.offer(*sample, &j.verdicts);
        }
    }
}

impl ListenerCorrectness {
    /// The checks' verdict on a call read whole; `None` when no check applies, or when the
    /// schema check applies but cannot be run. A refusal comes first, then a cut answer, then
    /// the schema.
    fn check(&self, c: &CallEnd) -> Option<Verdict> {
        if self.refusal && c.refused {
            return Some(Verdict::Refused);
        }
        if self.truncated && c.truncated {
            return Some(Verdict::Truncated);
        }
        match self.schema_check(c) {
            SchemaCheck::Breaks => Some(Verdict::SchemaInvalid),
            SchemaCheck::Follows => Some(Verdict::Checked),
            SchemaCheck::Unknown => None,
            SchemaCheck::NotApplicable => {
                (self.truncated || self.refusal).then_some(Verdict::Checked)
            }
        }
    }

    /// The `structured_output` check. It applies to an answer whose request asked for a schema,
    /// unless the model called a tool instead. A refusal, a filtered or a cut answer ends its
    /// JSON short for a reason of its own: where no configured check names it (a refusal or a cut
    /// answer with their check on returned before this), it gets no verdict.
    fn schema_check(&self, c: &CallEnd) -> SchemaCheck {
        let Some(schemas) = &self.schemas else {
            return SchemaCheck::NotApplicable;
        };
        let Some(s) = &c.structured else {
            // A request that could not be read may have asked for one.
            return match c.request_read {
                true => SchemaCheck::NotApplicable,
                false => SchemaCheck::Unknown,
            };
        };
        if !c.tool_calls.as_ref().is_some_and(Vec::is_empty) {
            return SchemaCheck::NotApplicable;
        }
        if c.refused || c.filtered || c.truncated {
            return SchemaCheck::Unknown;
        }
        let output = s.output.as_ref().and_then(|o| o.whole());
        match output.zip(s.schema.text()) {
            Some((text, schema)) => match schemas.follows(schema, text) {
                Some(true) => SchemaCheck::Follows,
                Some(false) => SchemaCheck::Breaks,
                None => SchemaCheck::Unknown,
            },
            None => SchemaCheck::Unknown,
        }
    }
}

/// What the `structured_output` check makes of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaCheck {
    NotApplicable,
    Follows,
    Breaks,
    /// It applies (or may: the request could not be read), but cannot be run: the output was not
    /// kept whole (past 1 MiB, not text), the schema is too long or does not compile, or the
    /// answer was refused, filtered or cut without a configured check to name it.
    Unknown,
}

/// `POST /admin/feedback`: verdicts that come later (a user's thumbs-down), counted on listener
/// `admin`.
#[derive(Debug)]
pub struct Feedback(Verdicts);

impl Feedback {
    pub fn new(t: &Telemetry, agent: &str) -> Feedback {
        Feedback(Verdicts::new(t, agent, "admin", "feedback"))
    }

    pub fn count(&self, correct: bool) {
        self.0.count(match correct {
            true => Verdict::Correct,
            false => Verdict::Incorrect,
        });
    }
}
