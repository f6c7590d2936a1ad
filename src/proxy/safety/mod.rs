//! Safety on the data plane: each response's text goes through the detectors as it passes
//! ([`SafetyCheck`]), violations are counted per listener and detector ([`ListenerSafety`]),
//! and the agent's kill switch ([`KillSwitch`]) trips when they pile up.
//!
//! - `record`: the response passes as it is; each detector that fires counts once per response
//!   (the safety SLI is a ratio of responses).
//! - `block`, body not streamed: the sidecar reads the body whole (up to
//!   [`crate::inspect::MAX_INSPECTED_BODY`]) before it answers, and a violation turns it into a
//!   403 `safety_blocked`. A larger body goes on as it is, counted but not blocked.
//! - `block`, SSE stream: a chunk goes to the client only once no match can start in its text,
//!   whatever follows: at most the detectors' overlap window is held back (a few hundred bytes
//!   with the built-ins), in prose only the last word or so, because a lazy DFA of every
//!   pattern shows where one could still start. A violation ends the stream with an SSE
//!   `event: error` carrying the `safety_blocked` error; what was sent stays sent, the match
//!   and what follows never go out.
//! - Upstream signals count as violations too: `safety_flag` (an agent's response carrying an
//!   `x-safety-flag` header; blocked like any other under `block`) and `content_filter` (an
//!   LLM's `finish_reason: content_filter`, or Anthropic's `stop_reason: refusal`; the provider
//!   withheld the text already, so it is recorded).
//!
//! Matched text is never logged nor put in a label: a log line names the detector and the
//! match's byte offsets in the response's text.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use metrics::{Counter, Gauge, Label};
use tokio::time::Instant;

use crate::budget::BodyBudget;
use crate::config::{Role, SafetyAction, SafetyConfig, SeverityName};
use crate::incident::{Incident, Incidents, Kind, Severity};
use crate::inspect::safety::{Detectors, Match};
use crate::inspect::text::Keys;
use crate::telemetry::{
    label, LogLimiter, Telemetry, AGENT_DISABLED, AGENT_RESPONSES_TOTAL, SAFETY_VIOLATIONS_TOTAL,
};

/// The response header an agent sets on an answer it knows is unsafe.
pub const X_SAFETY_FLAG: &str = "x-safety-flag";
pub use crate::inspect::safety::MAX_DETECTORS;
/// Bytes of a stream held back at most. Past it (an SSE event that never ends, text that stays
/// undecided), a stream being blocked is ended: what cannot be inspected in bounded memory is
/// not let through (`detector="uninspectable"`).
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// New text between scans of a stream held back. What goes out is decided after every chunk
/// (by where a match could still start, a cheap check); the scan that reports a match, and so
/// ends the stream, runs this often: held text waits for it, none leaks meanwhile.
pub const HELD_SCAN_STEP: usize = 256;

pub fn severity(name: SeverityName) -> Severity {
    Severity::from(name)
}

/// The agent's kill switch. One per sidecar, kept across config reloads: only a human (or the
/// switch itself) changes it.
#[derive(Debug)]
pub struct KillSwitch {
    disabled: AtomicBool,
    gauge: Gauge,
    /// The last violation of each of the most recent origins (tasks, clients), at most the
    /// configured number of them.
    recent: Mutex<VecDeque<(Instant, u64)>>,
    incidents: Incidents,
    agent: String,
    /// When the agent was last enabled again (the liveness probe looks back past it).
    enabled_at: Mutex<Option<Instant>>,
}

impl KillSwitch {
    pub fn new(t: &Telemetry, agent: &str, incidents: Incidents) -> Arc<KillSwitch> {
        let gauge = t.gauge(AGENT_DISABLED, vec![label("agent", agent)]);
        gauge.set(0.0);
        Arc::new(KillSwitch {
            disabled: AtomicBool::new(false),
            gauge,
            recent: Mutex::new(VecDeque::new()),
            incidents,
            agent: agent.to_owned(),
            enabled_at: Mutex::new(None),
        })
    }

    /// When the agent was last enabled again after the switch held (`None`: never).
    pub fn enabled_at(&self) -> Option<Instant> {
        *self.enabled_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// A violation from `origin` (a task, or a client: see [`ListenerSafety::origin`]) happened
    /// now; trips the switch when `violations` distinct origins had one within `within`. One
    /// client (or task) repeating itself counts once, however often.
    pub fn violation(
        &self,
        now: Instant,
        origin: u64,
        rule: Option<(u32, Duration)>,
        severity: Severity,
    ) {
        let Some((violations, within)) = rule else {
            return;
        };
        let trip = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|(at, o)| *o != origin && now.saturating_duration_since(*at) <= within);
            recent.push_back((now, origin));
            while recent.len() > violations as usize {
                recent.pop_front();
            }
            let trip = recent.len() == violations as usize;
            if trip {
                recent.clear();
            }
            trip
        };
        if trip {
            self.set(
                true,
                &format!("{violations} safety violations within {within:?}"),
                severity,
            );
        }
    }

    /// Disables (`true`) or enables the agent; returns whether that changed anything. `why` is
    /// fixed wording, never response text.
    pub fn set(&self, disabled: bool, why: &str, severity: Severity) -> bool {
        if self.disabled.swap(disabled, Ordering::AcqRel) == disabled {
            return false;
        }
        self.gauge.set(if disabled { 1.0 } else { 0.0 });
        if !disabled {
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            *self.enabled_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let summary = if disabled {
            format!("agent {} disabled by its kill switch: {why}", self.agent)
        } else {
            format!("agent {} enabled again: {why}", self.agent)
        };
        self.incidents.raise(Incident {
            severity,
            kind: Kind::KillSwitch,
            firing: disabled,
            subject: self.agent.clone(),
            summary,
        });
        true
    }
}

/// Which detector a violation is from: a configured one, or an upstream signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Detector(usize),
    ContentFilter,
    SafetyFlag,
    /// Under `block`, text that could not be inspected (an SSE event over the parser's limit, or
    /// more held back than [`MAX_HELD_BYTES`]): blocked rather than let through unseen.
    Uninspectable,
}

/// The safety settings and handles of one listener.
#[derive(Debug)]
pub struct ListenerSafety {
    pub detectors: Arc<Detectors>,
    pub block: bool,
    pub keys: Keys,
    pub responses: Counter,
    /// Per detector, then `content_filter`, `safety_flag`, `uninspectable`: `[record, block]`.
    violations: Vec<[Counter; 2]>,
    pub kill: Arc<KillSwitch>,
    kill_rule: Option<(u32, Duration)>,
    pub severity: Severity,
    listener: String,
    log_limit: LogLimiter,
    /// Where a violation comes from, for the kill switch: the task id header, then the client.
    origins: Origins,
    /// What a response's check holds (an SSE event, a held stream, a body read whole).
    pub budget: BodyBudget,
    /// The codings the upstream is asked for.
    readable: coding::Readable,
}

/// Tells the kill switch's origins apart: tasks by their id, else clients by their address
/// (role `agent`), else each response on its own (role `llm`, whose one client is the agent).
#[derive(Debug)]
struct Origins {
    id_header: http::HeaderName,
    role: Role,
    hasher: std::collections::hash_map::RandomState,
    next: std::sync::atomic::AtomicU64,
}

impl ListenerSafety {
    /// The listener's safety, when `config` applies to its role.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of a listener's safety, each from a different section"
    )]
    pub fn new(
        config: &SafetyConfig,
        detectors: &Arc<Detectors>,
        l: &crate::config::ListenerConfig,
        agent: &str,
        kill: &Arc<KillSwitch>,
        severity: Severity,
        id_header: http::HeaderName,
        budget: &BodyBudget,
        t: &Telemetry,
    ) -> Option<ListenerSafety> {
        let (role, listener) = (l.role, l.name.as_str());
        if !config.apply_to.contains(&role) {
            return None;
        }
        let base = || vec![label("agent", agent), label("listener", listener)];
        let names = (0..detectors.len())
            .map(|i| detectors.name(i).to_owned())
            .chain(
                ["content_filter", "safety_flag", "uninspectable"]
                    .into_iter()
                    .map(str::to_owned),
            );
        let violations = names
            .map(|name| {
                [SafetyAction::Record, SafetyAction::Block].map(|action| {
                    let mut labels = base();
                    labels.push(label("detector", &name));
                    labels.push(Label::from_static_parts("action", action.as_str()));
                    t.counter(SAFETY_VIOLATIONS_TOTAL, labels)
                })
            })
            .collect();
        Some(ListenerSafety {
            detectors: detectors.clone(),
            block: config.action == SafetyAction::Block,
            keys: match role {
                // An agent's answer, this one's or another's, is read whole.
                Role::Agent | Role::Peer => Keys::All,
                // A tool's result: every string of its JSON-RPC message.
                Role::Mcp => Keys::All,
                Role::Llm => Keys::Output,
            },
            responses: t.counter(AGENT_RESPONSES_TOTAL, base()),
            violations,
            kill: kill.clone(),
            kill_rule: config
                .kill_switch
                .as_ref()
                .map(|k| (k.violations, k.within.0)),
            severity,
            listener: listener.to_owned(),
            log_limit: LogLimiter::new(),
            origins: Origins {
                id_header,
                role,
                hasher: Default::default(),
                next: Default::default(),
            },
            budget: budget.clone(),
            readable: coding::Readable::default(),
        })
    }

    /// Whether violations here can trip the kill switch (the config has one).
    pub fn kills(&self) -> bool {
        self.kill_rule.is_some()
    }

    /// The origin of a request's violations, for the kill switch (0 without one): its task id
    /// (`tasks.id_header`), else on the `agent` role its client's address, else (the `llm` and
    /// `peer` roles, whose one client is the agent) a number of its own. Seeded per process; ids are never
    /// kept.
    pub fn origin(&self, headers: &HeaderMap, client_ip: &http::HeaderValue) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        if !self.kills() {
            return 0;
        }
        let o = &self.origins;
        let id = headers
            .get(&o.id_header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty());
        let mut h = o.hasher.build_hasher();
        match (id, o.role) {
            (Some(id), _) => {
                h.write_u8(0);
                h.write(id);
            }
            (None, Role::Agent) => {
                h.write_u8(1);
                h.write(client_ip.as_bytes());
            }
            (None, Role::Llm | Role::Peer | Role::Mcp) => {
                h.write_u8(2);
                h.write_u64(o.next.fetch_add(1, Ordering::Relaxed));
            }
        }
        h.finish()
    }

    fn slot(&self, source: Source) -> usize {
        match source {
            Source::Detector(i) => i,
            Source::ContentFilter => self.detectors.len(),
            Source::SafetyFlag => self.detectors.len() + 1,
            Source::Uninspectable => self.detectors.len() + 2,
        }
    }

    /// The `detector` label of a source.
    pub fn name(&self, source: Source) -> &str {
        match source {
            Source::Detector(i) => self.detectors.name(i),
            Source::ContentFilter => "content_filter",
            Source::SafetyFlag => "safety_flag",
            Source::Uninspectable => "uninspectable",
        }
    }

    /// Counts a violation (its offsets in the response's text, for the log), and feeds the
    /// kill switch with it when it is one the switch acts on (see [`Violation::kills`]).
    pub fn violation(&self, v: &Violation<'_>, now: Instant) {
        self.count(v);
        self.feed_kill_switch(v, now);
    }

    /// Counts and logs a violation.
    pub fn count(&self, v: &Violation<'_>) {
        if let Some(c) = self.violations.get(self.slot(v.source)) {
            c[usize::from(v.blocked)].increment(1);
        }
        if let Some(suppressed) = self.log_limit.allow() {
            let action = if v.blocked { "block" } else { "record" };
            let (start, end) = v.at.map_or((None, None), |m| (Some(m.start), Some(m.end)));
            tracing::warn!(
                listener = %self.listener,
                detector = self.name(v.source),
                action,
                start,
                end,
                echo = v.echo,
                suppressed,
                "safety violation"
            );
        }
    }

    /// Feeds the kill switch with a violation it acts on; returns whether it did.
    pub fn feed_kill_switch(&self, v: &Violation<'_>, now: Instant) -> bool {
        let kills = v.kills() && self.kills();
        if kills {
            self.kill
                .violation(now, v.origin, self.kill_rule, self.severity);
        }
        kills
    }

    /// Asks the upstream only for content codings the detectors can read as the answer passes
    /// (`gzip`, `deflate`, none): the request's `Accept-Encoding` keeps those of them the client
    /// accepts, and is `identity` when none is left (or none was asked: without the header any
    /// coding would be acceptable). `llm_call`: on the `llm` role only an LLM call's answer is
    /// inspected, so only its request is changed.
    pub fn ask_for_readable(&self, headers: &mut HeaderMap, llm_call: bool) {
        if self.keys == Keys::Output && !llm_call {
            return;
        }
        self.readable.ask(headers);
    }

    /// Whether a response head carries the agent's own safety flag.
    pub fn flagged(&self, headers: &HeaderMap) -> bool {
        self.keys == Keys::All
            && headers.get(X_SAFETY_FLAG).is_some_and(|v| {
                let v = v.as_bytes().trim_ascii();
                !(v.is_empty()
                    || v == b"0"
                    || v.eq_ignore_ascii_case(b"false")
                    || v.eq_ignore_ascii_case(b"no"))
            })
    }
}

/// One violation, as the listener counts it.
#[derive(Debug)]
pub struct Violation<'a> {
    pub source: Source,
    /// Under `block` (the answer, or the rest of it, is stopped).
    pub blocked: bool,
    /// Where the match is in the response's text (a detector's).
    pub at: Option<&'a Match>,
    /// The request's origin ([`ListenerSafety::origin`]).
    pub origin: u64,
    /// The match repeats something the request said.
    pub echo: bool,
}

impl Violation<'_> {
    /// Whether the kill switch counts it: a blocked hit of a detector, or the agent's own flag,
    /// that is no echo of the request. A provider's `content_filter` (the provider withheld the
    /// text; a client can provoke it at will) and text that could not be inspected are no harm
    /// the agent did.
    pub fn kills(&self) -> bool {
        self.blocked
            && !self.echo
            && matches!(self.source, Source::Detector(_) | Source::SafetyFlag)
    }
}

/// The SSE event that ends a blocked stream.
pub fn blocked_event(detector: &str) -> Bytes {
    let error = serde_json::json!({"error": {
        "type": "safety_blocked",
        "message": format!("the response was blocked: the safety detector {detector} found a violation"),
    }});
    Bytes::from(format!("event: error\ndata: {error}\n\n"))
}

mod answer;
mod check;
mod coding;
#[cfg(test)]
mod tests;

pub(crate) use answer::{Held, Inspect, SafetyState};

pub use crate::inspect::echo::{EchoTap, Echoes};
pub use check::SafetyCheck;
