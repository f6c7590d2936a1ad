//! Correctness verdicts on the agent's answers (`correctness:`), for the `correctness` SLI:
//! the deterministic checks on every LLM response (`llm` role), the agent's own verdict header
//! on its answers (`agent` role; removed before the client sees it), and later feedback
//! (`POST /admin/feedback`, see [`Feedback`]). Each is counted in
//! `agent_correctness_verdicts_total{listener, source, verdict, reason}` when its request is.

use http::{HeaderMap, HeaderName};
use metrics::{Counter, Label};

use super::llm::CallEnd;
use crate::config::{CorrectnessCheck, CorrectnessConfig, Role};
use crate::telemetry::{label, Telemetry, CORRECTNESS_VERDICTS_TOTAL};

/// What a verdict says, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Passed every check that applied.
    Checked,
    Truncated,
    Refused,
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
            "check" => &[Verdict::Checked, Verdict::Truncated, Verdict::Refused],
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
        if let Some((_, c)) = self.0.iter().find(|(k, _)| *k == v) {
            c.increment(1);
        }
    }
}

/// What one listener does about correctness.
#[derive(Debug)]
pub struct ListenerCorrectness {
    /// `llm` role: the checks run.
    truncated: bool,
    refusal: bool,
    /// `agent` role: the agent's verdict header.
    verdict_header: Option<HeaderName>,
    verdicts: Verdicts,
}

impl ListenerCorrectness {
    pub fn new(
        config: &CorrectnessConfig,
        role: Role,
        t: &Telemetry,
        agent: &str,
        listener: &str,
    ) -> Option<ListenerCorrectness> {
        let (source, header) = match role {
            Role::Llm => ("check", None),
            Role::Agent => (
                "agent",
                HeaderName::from_bytes(config.verdict_header.as_bytes()).ok(),
            ),
            _ => return None,
        };
        Some(ListenerCorrectness {
            truncated: role == Role::Llm && config.runs(CorrectnessCheck::Truncated),
            refusal: role == Role::Llm && config.runs(CorrectnessCheck::Refusal),
            verdict_header: header,
            verdicts: Verdicts::new(t, agent, listener, source),
        })
    }
}

/// A request's verdict, counted with the request.
#[derive(Debug, Default)]
pub(crate) struct CorrectnessState(Option<Verdict>);

impl CorrectnessState {
    /// The response head: on an `agent` listener, the agent's verdict header is read and removed
    /// (a value other than `correct` or `incorrect` says nothing).
    pub(super) fn head(&mut self, lc: Option<&ListenerCorrectness>, headers: &mut HeaderMap) {
        let Some(name) = lc.and_then(|lc| lc.verdict_header.as_ref()) else {
            return;
        };
        let Some(value) = headers.remove(name) else {
            return;
        };
        let v = value.as_bytes().trim_ascii();
        self.0 = if v.eq_ignore_ascii_case(b"correct") {
            Some(Verdict::Correct)
        } else if v.eq_ignore_ascii_case(b"incorrect") {
            Some(Verdict::Incorrect)
        } else {
            None
        };
    }

    /// The sidecar answers itself (a safety block, an error): the agent's verdict was on an
    /// answer the client does not get.
    pub(super) fn local_answer(&mut self) {
        self.0 = None;
    }

    /// The request is counted (`complete`: its answer's last byte went out): its verdict too.
    /// An LLM call that succeeded, was read whole and said how it ended gets the checks'
    /// verdict: refused, truncated, or correct when neither. The agent's verdict counts for an
    /// answer the client got whole.
    pub(super) fn end(
        &mut self,
        lc: Option<&ListenerCorrectness>,
        call: Option<&CallEnd>,
        complete: bool,
    ) {
        let Some(lc) = lc else {
            return;
        };
        let checked = call.filter(|c| c.answered && c.checkable);
        if let Some(c) = checked.filter(|_| lc.truncated || lc.refusal) {
            let verdict = if lc.refusal && c.refused {
                Verdict::Refused
            } else if lc.truncated && c.truncated {
                Verdict::Truncated
            } else {
                Verdict::Checked
            };
            lc.verdicts.count(verdict);
        }
        if let Some(v) = self.0.take().filter(|_| complete) {
            lc.verdicts.count(v);
        }
    }
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
