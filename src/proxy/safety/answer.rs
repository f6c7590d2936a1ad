//! Safety's part of a request: the response head looked at before anything goes out (the agent's
//! own flag; whether the body is read whole first), each chunk shown to the check (and, under
//! `block`, held back until its text is known clean), and the response judged when it is counted.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::{ListenerSafety, SafetyCheck, Source};
use crate::config::Role;
use crate::inspect::text::NotText;
use crate::upstream::Upload;

/// What safety makes of a response head.
pub(crate) enum Inspect {
    /// Inspected as it passes (or not at all).
    Pass,
    /// Blocked by its head alone (the agent's own `x-safety-flag`).
    Block(Source),
    /// To be read whole and inspected before it is answered (`block`, not a stream).
    ReadWhole,
}

/// The request's safety inspection: where it came from (for the kill switch), what it said (its
/// upload, where the kill switch must tell echoes apart), and its response's check.
#[derive(Debug, Default)]
pub(crate) struct SafetyState {
    /// Where the request came from (see [`ListenerSafety::origin`]; 0 where there is none).
    origin: u64,
    request: Option<Arc<Upload>>,
    check: Option<Box<SafetyCheck>>,
    /// A violation was counted from the head alone (no text check).
    flagged: bool,
}

impl SafetyState {
    /// A request from `client_ip` with these headers arrived.
    pub(crate) fn begin(
        &mut self,
        ls: Option<&ListenerSafety>,
        headers: &HeaderMap,
        client_ip: &HeaderValue,
    ) {
        if let Some(ls) = ls {
            self.origin = ls.origin(headers, client_ip);
        }
    }

    /// An attempt's request goes out with this body.
    pub(crate) fn sending(&mut self, ls: Option<&ListenerSafety>, upload: &Option<Arc<Upload>>) {
        if ls.is_some_and(|ls| ls.kills()) {
            self.request = upload.clone();
        }
    }

    /// Sets up the response's inspection (`empty`: the response has no body; `llm_call`: the
    /// request is an LLM call, on the `llm` role).
    pub(crate) fn head(
        &mut self,
        ls: &ListenerSafety,
        role: Role,
        llm_call: bool,
        parts: &mut http::response::Parts,
        empty: bool,
        now: Instant,
    ) -> Inspect {
        // On the `llm` role, what a model generated: a successful LLM call's output.
        let applies = match role {
            Role::Llm => llm_call && parts.status.is_success(),
            Role::Agent | Role::Peer | Role::Mcp => true,
        };
        if !applies {
            return Inspect::Pass;
        }
        let flagged = ls.flagged(&parts.headers);
        let mut check =
            match SafetyCheck::new(ls, &mut parts.headers, self.origin, self.request.clone()) {
                Ok(check) => check,
                Err(not_text) => {
                    // Under `block`, text that cannot be read is not let through unseen.
                    let unreadable = not_text == NotText::Unreadable && ls.block && !empty;
                    let source = match (flagged, unreadable) {
                        (true, _) => Source::SafetyFlag,
                        (false, true) => Source::Uninspectable,
                        (false, false) => return Inspect::Pass,
                    };
                    ls.responses.increment(1);
                    let v = super::Violation {
                        source,
                        blocked: ls.block,
                        at: None,
                        origin: self.origin,
                        echo: false,
                    };
                    ls.violation(&v, now);
                    self.flagged = true;
                    return match ls.block {
                        true => Inspect::Block(source),
                        false => Inspect::Pass,
                    };
                }
            };
        let read_whole = ls.block && !check.holds();
        if read_whole {
            check.read_whole();
        }
        if flagged {
            check.count(ls, Source::SafetyFlag, None, now);
        }
        if check.holds() {
            // The stream may end early, with an event of the sidecar's.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let source = check.blocked();
        self.check = Some(Box::new(check));
        match source {
            Some(source) => Inspect::Block(source),
            None if read_whole => Inspect::ReadWhole,
            None => Inspect::Pass,
        }
    }

    /// A chunk of the response went by (or, held back, arrived): `true` when it is held.
    pub(crate) fn data(&mut self, ls: Option<&ListenerSafety>, data: &Bytes, now: Instant) -> bool {
        match (self.check.as_mut(), ls) {
            (Some(check), Some(ls)) => {
                check.feed(ls, data, now);
                check.holds()
            }
            _ => false,
        }
    }

    /// Whether this response is held back chunk by chunk (and may change).
    pub(crate) fn holds(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.holds())
    }

    /// What the inspection found that blocks the response.
    pub(crate) fn blocked(&self) -> Option<Source> {
        self.check.as_ref().and_then(|c| c.blocked())
    }

    /// Whether safety counted any violation in the response (blocked or only recorded).
    pub(crate) fn found(&self) -> bool {
        self.flagged || self.check.as_ref().is_some_and(|c| c.found())
    }

    /// From a stream held back: a chunk now known clean, else — blocked, once the clean ones
    /// went — the event that ends it. `None` when there is nothing to send from the hold now.
    pub(crate) fn next_held(&mut self, ls: Option<&ListenerSafety>) -> Option<Held> {
        let check = self.check.as_mut().filter(|c| c.holds())?;
        if let Some(bytes) = check.pop_ready() {
            return Some(Held::Clean(bytes));
        }
        let source = check.take_block()?;
        let name = ls.map_or("unknown", |ls| ls.name(source));
        Some(Held::Blocked(super::blocked_event(name)))
    }

    /// The upstream body of a stream held back ended: the rest of its text is judged.
    pub(crate) fn upstream_ended(&mut self, ls: Option<&ListenerSafety>, now: Instant) {
        if let (Some(check), Some(ls)) = (self.check.as_mut(), ls) {
            if check.holds() {
                check.finish(ls, true, now);
            }
        }
    }

    /// The body read whole ended: the rest of its text is judged; what blocks it.
    pub(crate) fn read_ended(
        &mut self,
        ls: Option<&ListenerSafety>,
        now: Instant,
    ) -> Option<Source> {
        let (check, ls) = (self.check.as_mut()?, ls?);
        check.finish(ls, true, now);
        check.blocked()
    }

    /// The body read whole is too large to be decided on in bounded memory; whether safety
    /// inspects it (and so blocks it).
    pub(crate) fn too_large(&mut self, ls: Option<&ListenerSafety>, now: Instant) -> bool {
        if let (Some(check), Some(ls)) = (self.check.as_mut(), ls) {
            check.count(ls, Source::Uninspectable, None, now);
            return true;
        }
        false
    }

    /// The response being inspected is not the one the client gets (an attempt that failed, a
    /// body that could not be read): nothing was said.
    pub(crate) fn discard(&mut self) {
        self.check = None;
    }

    /// The request is counted: the response's text is judged to its end (`complete`), and a
    /// provider's `content_filter` (`filtered`) counts as a violation.
    pub(crate) fn end(
        &mut self,
        ls: Option<&ListenerSafety>,
        complete: bool,
        filtered: bool,
        now: Instant,
    ) {
        let Some(ls) = ls else { return };
        if let Some(check) = self.check.as_mut() {
            check.finish(ls, complete, now);
            if filtered {
                check.count(ls, Source::ContentFilter, None, now);
            }
            ls.responses.increment(1);
        } else if filtered {
            // Not readable as text (compressed), but the provider said it filtered it.
            ls.responses.increment(1);
            let v = super::Violation {
                source: Source::ContentFilter,
                blocked: false,
                at: None,
                origin: self.origin,
                echo: false,
            };
            ls.violation(&v, now);
            self.flagged = true;
        }
    }
}

/// What a stream held back has to send now.
pub(crate) enum Held {
    /// A chunk known clean.
    Clean(Bytes),
    /// The event that ends a blocked stream.
    Blocked(Bytes),
}
