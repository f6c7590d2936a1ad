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

use crate::config::{Role, SafetyAction, SafetyConfig, SeverityName};
use crate::incident::{Incident, Incidents, Kind, Severity};
use crate::inspect::safety::{Detectors, Match, Scanner};
use crate::inspect::text::{BodyText, Keys};
use crate::telemetry::{
    label, LogLimiter, Telemetry, AGENT_DISABLED, AGENT_RESPONSES_TOTAL, SAFETY_VIOLATIONS_TOTAL,
};

/// The response header an agent sets on an answer it knows is unsafe.
pub const X_SAFETY_FLAG: &str = "x-safety-flag";
/// Detectors a config may list: each response keeps one bit per detector and signal.
pub const MAX_DETECTORS: usize = 61;
/// Bytes of a stream held back at most. Past it (an SSE event that never ends, text that stays
/// undecided), a stream being blocked is ended: what cannot be inspected in bounded memory is
/// not let through (`detector="uninspectable"`).
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// New text between scans of a stream held back. What goes out is decided after every chunk
/// (by where a match could still start, a cheap check); the scan that reports a match, and so
/// ends the stream, runs this often: held text waits for it, none leaks meanwhile.
pub const HELD_SCAN_STEP: usize = 256;

pub fn severity(name: SeverityName) -> Severity {
    match name {
        SeverityName::Sev1 => Severity::Sev1,
        SeverityName::Sev2 => Severity::Sev2,
        SeverityName::Sev3 => Severity::Sev3,
    }
}

/// The agent's kill switch. One per sidecar, kept across config reloads: only a human (or the
/// switch itself) changes it.
pub struct KillSwitch {
    disabled: AtomicBool,
    gauge: Gauge,
    /// When the last violations happened, at most the configured number of them.
    recent: Mutex<VecDeque<Instant>>,
    incidents: Incidents,
    agent: String,
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
        })
    }

    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// A violation happened now; trips the switch when `violations` happened within `within`.
    pub fn violation(&self, now: Instant, rule: Option<(u32, Duration)>, severity: Severity) {
        let Some((violations, within)) = rule else {
            return;
        };
        let trip = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_back(now);
            while recent.len() > violations as usize {
                recent.pop_front();
            }
            let trip = recent.len() == violations as usize
                && recent
                    .front()
                    .is_some_and(|first| now.saturating_duration_since(*first) <= within);
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
}

impl ListenerSafety {
    /// The listener's safety, when `config` applies to its role.
    pub fn new(
        config: &SafetyConfig,
        detectors: &Arc<Detectors>,
        l: &crate::config::ListenerConfig,
        agent: &str,
        kill: &Arc<KillSwitch>,
        severity: Severity,
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
                Role::Agent => Keys::All,
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
        })
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
    /// kill switch.
    pub fn violation(&self, source: Source, blocked: bool, at: Option<&Match>, now: Instant) {
        if let Some(c) = self.violations.get(self.slot(source)) {
            c[usize::from(blocked)].increment(1);
        }
        if let Some(suppressed) = self.log_limit.allow() {
            let action = if blocked { "block" } else { "record" };
            let (start, end) = at.map_or((None, None), |m| (Some(m.start), Some(m.end)));
            tracing::warn!(
                listener = %self.listener,
                detector = self.name(source),
                action,
                start,
                end,
                suppressed,
                "safety violation"
            );
        }
        self.kill.violation(now, self.kill_rule, self.severity);
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

/// The SSE event that ends a blocked stream.
pub fn blocked_event(detector: &str) -> Bytes {
    let error = serde_json::json!({"error": {
        "type": "safety_blocked",
        "message": format!("the response was blocked: the safety detector {detector} found a violation"),
    }});
    Bytes::from(format!("event: error\ndata: {error}\n\n"))
}

/// A stream held back until its text is known clean.
struct Hold {
    /// Chunks not yet let through, each with the text offset its text ends at (`None` while an
    /// SSE event in it is still incomplete).
    held: VecDeque<(Bytes, Option<u64>)>,
    /// Chunks let through, waiting for the client to take them.
    ready: VecDeque<Bytes>,
    /// Bytes in `held`.
    bytes: usize,
}

/// One response's inspection.
pub struct SafetyCheck {
    text: BodyText,
    scanner: Scanner,
    /// Bit per detector slot: counted already in this response.
    counted: u64,
    /// Some while a stream is being held back (`block` on an SSE response).
    hold: Option<Hold>,
    /// The first violation found while blocking: the response ends there.
    blocked: Option<(Source, u64)>,
    /// A body read whole for a `block` decision: every match is to be blocked.
    blocking: bool,
    finished: bool,
    block_sent: bool,
}

impl SafetyCheck {
    /// The check of a response with these headers; `None` when its text cannot be read as it
    /// passes (compressed, binary).
    pub fn new(ls: &ListenerSafety, headers: &HeaderMap) -> Option<SafetyCheck> {
        let value = |name| headers.get(name).map(http::HeaderValue::as_bytes);
        let text = BodyText::for_body(
            ls.keys,
            value(http::header::CONTENT_TYPE),
            value(http::header::CONTENT_ENCODING),
        )?;
        let hold = (ls.block && text.is_stream()).then(|| Hold {
            held: VecDeque::new(),
            ready: VecDeque::new(),
            bytes: 0,
        });
        Some(SafetyCheck {
            text,
            scanner: ls.detectors.scanner(),
            counted: 0,
            hold,
            blocked: None,
            blocking: false,
            finished: false,
            block_sent: false,
        })
    }

    /// The body will be read whole before the answer: a match blocks it.
    pub fn read_whole(&mut self) {
        self.blocking = true;
    }

    /// Matches found from here on are recorded, not blocked (the body outgrew what can be held).
    pub fn record_only(&mut self) {
        self.blocking = false;
    }

    /// Whether this response is held back chunk by chunk.
    pub fn holds(&self) -> bool {
        self.hold.is_some()
    }

    pub fn blocked(&self) -> Option<Source> {
        self.blocked.map(|(s, _)| s)
    }

    /// A held stream was blocked and its clean chunks have gone: the source, once, for the
    /// event that ends it.
    pub fn take_block(&mut self) -> Option<Source> {
        let hold = self.hold.as_ref()?;
        if self.block_sent || !hold.ready.is_empty() {
            return None;
        }
        let source = self.blocked()?;
        self.block_sent = true;
        Some(source)
    }

    /// Counts one violation of `source` (once per response).
    pub fn count(&mut self, ls: &ListenerSafety, source: Source, at: Option<&Match>, now: Instant) {
        let bit = 1u64 << ls.slot(source).min(63);
        // The provider withheld the text itself: nothing left to block.
        let blocking = (self.blocking || self.hold.is_some()) && source != Source::ContentFilter;
        if blocking && self.blocked.is_none() {
            self.blocked = Some((source, at.map_or(0, |m| m.start)));
        }
        if self.counted & bit == 0 {
            self.counted |= bit;
            ls.violation(source, blocking, at, now);
        }
    }

    /// A chunk of the body went by (or, when holding, arrived and is kept).
    pub fn feed(&mut self, ls: &ListenerSafety, chunk: &Bytes, now: Instant) {
        if self.blocked.is_some() {
            return;
        }
        let mut found: Vec<Match> = Vec::new();
        {
            let scanner = &mut self.scanner;
            let mut on_match = |m: Match| found.push(m);
            self.text
                .feed(chunk, &mut |t| scanner.feed(t, &mut on_match));
            if self.hold.is_some() {
                scanner.flush(HELD_SCAN_STEP, &mut on_match);
            }
        }
        for m in &found {
            self.count(ls, Source::Detector(m.detector), Some(m), now);
        }
        let blocking = self.blocking || self.hold.is_some();
        if blocking && self.text.lost() {
            self.count(ls, Source::Uninspectable, None, now);
        }
        if let Some(hold) = &mut self.hold {
            hold.bytes += chunk.len();
            hold.held.push_back((chunk.clone(), None));
            if hold.bytes > MAX_HELD_BYTES && self.blocked.is_none() {
                self.count(ls, Source::Uninspectable, None, now);
                self.release();
                return;
            }
            let Some(hold) = &mut self.hold else { return };
            if self.text.settled() {
                let end = self.scanner.len();
                for (_, mark) in hold.held.iter_mut().rev() {
                    if mark.is_some() {
                        break;
                    }
                    *mark = Some(end);
                }
            }
            self.release();
        }
    }

    /// The body ended (`complete`) or was cut: the rest of the text is scanned.
    pub fn finish(&mut self, ls: &ListenerSafety, complete: bool, now: Instant) {
        if self.blocked.is_some() || self.finished {
            return;
        }
        self.finished = true;
        let mut found: Vec<Match> = Vec::new();
        self.scanner.finish(&mut |m| found.push(m));
        for m in &found {
            self.count(ls, Source::Detector(m.detector), Some(m), now);
        }
        if let Some(hold) = &mut self.hold {
            if complete {
                // Every byte has been looked at: an event left incomplete says nothing more.
                let end = self.scanner.len();
                for (_, mark) in hold.held.iter_mut() {
                    mark.get_or_insert(end);
                }
            }
            self.release();
        }
    }

    /// Moves the chunks known clean to the ready queue; once blocked, those before the match,
    /// then the error event, and nothing after.
    fn release(&mut self) {
        let Some(hold) = &mut self.hold else { return };
        let clean = match self.blocked {
            // Text that was never seen: nothing held goes out, whatever its marks say.
            Some((Source::Uninspectable, _)) => {
                hold.bytes = 0;
                hold.held.clear();
                return;
            }
            Some((_, start)) => start,
            None => self.scanner.settled_upto(),
        };
        while let Some((_, Some(end))) = hold.held.front() {
            if *end > clean {
                break;
            }
            if let Some((bytes, _)) = hold.held.pop_front() {
                hold.bytes -= bytes.len();
                hold.ready.push_back(bytes);
            }
        }
        if self.blocked.is_some() {
            hold.held.clear();
        }
    }

    /// The next chunk that may go to the client.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
        self.hold.as_mut()?.ready.pop_front()
    }

    /// Chunks still held back (not yet known clean).
    pub fn holding(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| !h.held.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn listener_safety(block: bool) -> ListenerSafety {
        let t = Telemetry::new();
        let config = SafetyConfig {
            action: if block {
                SafetyAction::Block
            } else {
                SafetyAction::Record
            },
            ..SafetyConfig::default()
        };
        let detectors = Arc::new(Detectors::new(&config.detector_specs().unwrap()).unwrap());
        let l = crate::config::ListenerConfig {
            name: "egress".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            role: Role::Llm,
            route: "r".into(),
        };
        let kill = KillSwitch::new(&t, "a", Incidents::new(&t, "a", None));
        ListenerSafety::new(&config, &detectors, &l, "a", &kill, Severity::Sev1, &t).unwrap()
    }

    fn sse_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        h
    }

    /// A chat stream of `deltas`, as bytes.
    fn stream(deltas: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in deltas {
            let e = serde_json::json!({"choices": [{"index": 0, "delta": {"content": d}}]});
            out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    /// Feeds `body` cut at `cuts`, taking out what is let through after each chunk; returns what
    /// went out and whether the stream was blocked.
    fn run(ls: &ListenerSafety, body: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut check = SafetyCheck::new(ls, &sse_headers()).unwrap();
        assert!(check.holds());
        let now = Instant::now();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([body.len()].iter()) {
            let cut = cut.clamp(from, body.len());
            check.feed(ls, &Bytes::copy_from_slice(&body[from..cut]), now);
            from = cut;
            while let Some(b) = check.pop_ready() {
                out.extend_from_slice(&b);
            }
        }
        check.finish(ls, true, now);
        while let Some(b) = check.pop_ready() {
            out.extend_from_slice(&b);
        }
        let blocked = check.take_block().is_some();
        (out, blocked)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Held back, then let through: a clean stream goes out whole and in order, however it
        /// is cut; a stream with a secret goes out only up to before the event that starts it.
        #[test]
        fn a_held_stream_lets_out_exactly_the_clean_prefix(
            words in prop::collection::vec(prop::sample::select(vec![
                "lorem ", "ipsum ", "dolor ", "sit ", "amet, ", "the ", "key ", "is ", "\n",
            ]), 1..120),
            secret_at in prop::option::of(0usize..120),
            mut cuts in prop::collection::vec(0usize..6000, 0..30),
            split in 1usize..20,
        ) {
            let ls = listener_safety(true);
            let secret = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX";
            let mut text: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            if let Some(at) = secret_at {
                let at = at.min(text.len());
                // Split inside the secret: two deltas.
                let split = split.min(secret.len() - 1);
                text.insert(at, secret[split..].to_owned() + " ");
                text.insert(at, " ".to_owned() + &secret[..split]);
            }
            let body = stream(&text);
            cuts.sort_unstable();
            let (out, blocked) = run(&ls, &body, &cuts);
            prop_assert!(body.starts_with(&out), "what went out is a prefix of the stream");
            match secret_at {
                None => {
                    prop_assert!(!blocked);
                    prop_assert_eq!(out.len(), body.len());
                }
                Some(_) => {
                    prop_assert!(blocked);
                    let split = split.min(secret.len() - 1);
                    let head = format!(" {}\"", &secret[..split]);
                    let first = body
                        .windows(head.len())
                        .position(|w| w == head.as_bytes())
                        .unwrap();
                    // Not a byte of the event that starts the secret went out.
                    let event_start = body[..first]
                        .windows(2)
                        .rposition(|w| w == b"\n\n")
                        .map_or(0, |p| p + 2);
                    prop_assert!(out.len() <= event_start, "{} > {}", out.len(), event_start);
                    let text_out = String::from_utf8_lossy(&out);
                    prop_assert!(!text_out.contains("sk-proj"));
                }
            }
        }
    }

    #[test]
    fn what_cannot_be_inspected_in_bounded_memory_is_blocked_not_let_through() {
        let ls = listener_safety(true);
        // An event that never ends: its text is never seen.
        let mut check = SafetyCheck::new(&ls, &sse_headers()).unwrap();
        let now = Instant::now();
        check.feed(
            &ls,
            &Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\""),
            now,
        );
        let chunk = Bytes::from(vec![b'a'; 16 * 1024]);
        let mut out = 0;
        for _ in 0..64 {
            check.feed(&ls, &chunk, now);
            while let Some(b) = check.pop_ready() {
                out += b.len();
            }
            assert!(check.hold.as_ref().unwrap().bytes <= MAX_HELD_BYTES + chunk.len());
        }
        assert_eq!(out, 0, "nothing of it went out");
        assert_eq!(check.take_block(), Some(Source::Uninspectable));
        // An event past the parser's limit (4 MiB) is blocked too, even when it ends.
        let mut check = SafetyCheck::new(&ls, &sse_headers()).unwrap();
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(
            b'a',
            crate::inspect::MAX_INSPECTED_BODY + 10,
        ));
        big.extend_from_slice(b" sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX\n\n");
        check.feed(&ls, &Bytes::from(big), now);
        check.finish(&ls, true, now);
        assert!(check.pop_ready().is_none());
        assert_eq!(check.take_block(), Some(Source::Uninspectable));
    }

    #[test]
    fn a_held_stream_holds_back_only_what_may_still_start_a_match() {
        let ls = listener_safety(true);
        let long: Vec<String> = (0..200).map(|i| format!("word{i} ")).collect();
        let body = stream(&long);
        let mut check = SafetyCheck::new(&ls, &sse_headers()).unwrap();
        let now = Instant::now();
        let mut out = 0usize;
        // One event per chunk, as providers send them.
        for event in body
            .split_inclusive(|b| *b == b'\n')
            .collect::<Vec<_>>()
            .chunks(2)
        {
            let chunk: Vec<u8> = event.concat();
            check.feed(&ls, &Bytes::from(chunk), now);
            while let Some(b) = check.pop_ready() {
                out += b.len();
            }
        }
        // Before the end, only the last event is held: its word ("word199 " may yet become
        // an address) — not the overlap window's worth of events.
        let held = body.len() - out;
        let last_two = stream(&["word198 ".into(), "word199 ".into()]).len();
        assert!(held < last_two, "held {held} of {}", body.len());
        check.finish(&ls, true, now);
        while let Some(b) = check.pop_ready() {
            out += b.len();
        }
        assert_eq!(out, body.len());
    }
}
