//! Calls between agents: what keeps one agent's failure from cascading through the agents that
//! call it (with the bulkheads of [`super::bulkhead`]).
//!
//! - **Correlation** ([`table`]): an egress call (`llm`, `peer`) belongs to the inbound (`agent`)
//!   request in flight with the same task id, else the same W3C trace id. Kept while a sidecar
//!   has listeners of both kinds, `cascade` or not: attribution needs it.
//! - **Attribution**: an inbound 5xx the agent answered while one of its correlated egress calls
//!   had failed (after every fallback: the egress call's own cause is `upstream`) is charged to
//!   the dependency (`cause="dependency"`), not the agent.
//! - With `cascade:` — **deadlines**: an inbound request's deadline is its arrival plus
//!   `deadline_header` milliseconds (else `default_deadline`); its egress calls are timed out at
//!   it, and its peer calls carry what is left. **Depth and path**: an inbound request deeper
//!   than `max_depth`, or whose path already holds this agent (`on_cycle: block`), is answered
//!   508 before the agent sees it; its peer calls carry depth + 1 and the path with this agent
//!   added. A malformed header is ignored and counted, never a 5xx.

mod table;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use tokio::time::Instant;

pub(crate) use table::Correlations;

use super::error::{DeadlineWhen, ProxyError};
use crate::config::{CascadeConfig, CycleAction, Role, MAX_CALL_PATH, MAX_DEADLINE};
use crate::sli::{Cause, StatusClass};
use crate::telemetry::{
    label, Telemetry, CALL_CYCLES_TOTAL, CALL_DEPTH_EXCEEDED_TOTAL, CASCADE_BAD_HEADERS_TOTAL,
    DEADLINE_EXCEEDED_TOTAL,
};
use table::Inbound;

/// The `cascade` section, ready for requests: one per config snapshot.
#[derive(Debug)]
pub struct CascadeRules {
    deadline_header: HeaderName,
    default_deadline: Option<Duration>,
    depth_header: HeaderName,
    path_header: HeaderName,
    max_depth: u32,
    on_cycle: CycleAction,
    /// This agent's name, as the path carries it.
    agent: String,
    cycles: Counter,
    depth_exceeded: Counter,
    /// `sloguard_cascade_bad_headers_total`, by header: deadline, depth, path.
    bad: [Counter; 3],
}

impl CascadeRules {
    pub fn new(config: &CascadeConfig, agent: &str, t: &Telemetry) -> Option<CascadeRules> {
        let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).ok();
        let base = || vec![label("agent", agent)];
        let with = |k: &'static str, v: &'static str| {
            let mut l = base();
            l.push(metrics::Label::from_static_parts(k, v));
            l
        };
        Some(CascadeRules {
            deadline_header: name(&config.deadline_header)?,
            default_deadline: Some(config.default_deadline.0).filter(|d| !d.is_zero()),
            depth_header: name(&config.depth_header)?,
            path_header: name(&config.path_header)?,
            max_depth: config.max_depth,
            on_cycle: config.on_cycle,
            agent: agent.to_owned(),
            cycles: t.counter(CALL_CYCLES_TOTAL, with("action", config.on_cycle.as_str())),
            depth_exceeded: t.counter(CALL_DEPTH_EXCEEDED_TOTAL, base()),
            bad: ["deadline", "depth", "path"]
                .map(|h| t.counter(CASCADE_BAD_HEADERS_TOTAL, with("header", h))),
        })
    }

    /// The deadline a request arriving `now` carries (else `default` from now); `Err` when its
    /// time is spent already.
    fn deadline(
        &self,
        headers: &HeaderMap,
        now: Instant,
        default: Option<Duration>,
    ) -> Result<Option<Instant>, ()> {
        let Some(value) = headers.get(&self.deadline_header) else {
            return Ok(default.and_then(|d| now.checked_add(d)));
        };
        match parse_int(value.as_bytes()) {
            Some(ms) if ms <= 0 => Err(()),
            Some(ms) => {
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                let left = Duration::from_millis(ms).min(MAX_DEADLINE);
                Ok(now.checked_add(left))
            }
            None => {
                self.bad[0].increment(1);
                Ok(default.and_then(|d| now.checked_add(d)))
            }
        }
    }

    /// The depth a request carries (absent or malformed: 0).
    fn depth(&self, headers: &HeaderMap) -> u32 {
        let Some(value) = headers.get(&self.depth_header) else {
            return 0;
        };
        match parse_int(value.as_bytes()).and_then(|d| u32::try_from(d).ok()) {
            Some(depth) => depth,
            None => {
                self.bad[1].increment(1);
                0
            }
        }
    }

    /// The path a request carries, when it is one (printable ASCII within the cap).
    fn path(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let value = headers.get(&self.path_header)?;
        let b = value.as_bytes();
        if b.len() > MAX_CALL_PATH || !b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            self.bad[2].increment(1);
            return None;
        }
        Some(value.clone())
    }

    /// Whether a path holds this agent.
    fn holds_me(&self, path: &HeaderValue) -> bool {
        let me = self.agent.as_bytes();
        path.as_bytes()
            .split(|b| *b == b',')
            .any(|name| name.trim_ascii() == me)
    }

    /// The path a peer call carries: `path` with this agent added, its oldest names dropped
    /// past the cap.
    fn path_on(&self, path: Option<&HeaderValue>) -> HeaderValue {
        let me = self.agent.as_bytes();
        let mut out = Vec::with_capacity(path.map_or(0, |p| p.len() + 1) + me.len());
        if let Some(p) = path {
            let mut before = p.as_bytes();
            while before.len() + 1 + me.len() > MAX_CALL_PATH {
                match before.iter().position(|b| *b == b',') {
                    Some(i) => before = &before[i + 1..],
                    None => before = &[],
                }
            }
            if !before.is_empty() {
                out.extend_from_slice(before);
                out.push(b',');
            }
        }
        out.extend_from_slice(me);
        // Printable ASCII only (checked on the way in, and the name by the config).
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// `[+-]digits`, surrounding blanks allowed; `None` otherwise (or past `i64`).
fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b.trim_ascii()).ok()?.parse().ok()
}

/// What one listener does about calls between agents.
#[derive(Debug)]
pub struct ListenerCascade {
    role: Role,
    /// While the sidecar has listeners of both kinds.
    table: Option<Arc<Correlations>>,
    id_header: HeaderName,
    rules: Option<Arc<CascadeRules>>,
    /// `agent_deadline_exceeded_total` of the listener.
    deadline_exceeded: Counter,
}

impl ListenerCascade {
    pub fn new(
        role: Role,
        table: Option<Arc<Correlations>>,
        id_header: HeaderName,
        rules: Option<Arc<CascadeRules>>,
        deadline_exceeded: Counter,
    ) -> Option<ListenerCascade> {
        (table.is_some() || rules.is_some()).then_some(ListenerCascade {
            role,
            table,
            id_header,
            rules,
            deadline_exceeded,
        })
    }

    /// `agent_deadline_exceeded_total` for a listener.
    pub fn deadline_counter(t: &Telemetry, agent: &str, listener: &str) -> Counter {
        t.counter(
            DEADLINE_EXCEEDED_TOTAL,
            vec![label("agent", agent), label("listener", listener)],
        )
    }
}

/// A request's part in calls between agents: on an `agent` listener, its entry in the
/// correlation table; on an egress listener, the inbound request it is made for.
#[derive(Debug, Default)]
pub(crate) struct CascadeState {
    inbound: Option<Arc<Inbound>>,
    /// On an egress listener with `cascade`: the deadline, depth and path it was made under
    /// (boxed: every request's context carries the field, few use it).
    egress: Option<Box<Egress>>,
}

/// An egress call's deadline, depth and path: its inbound request's, or, for a peer call made
/// for no inbound request known here, what the agent's own headers say.
#[derive(Debug)]
struct Egress {
    deadline: Option<Instant>,
    /// An attempt went out already: time spent since is an upstream's.
    attempted: bool,
    depth: u32,
    path: Option<HeaderValue>,
}

impl CascadeState {
    /// The request arrived at `now`: an inbound one is checked (depth, cycle, deadline) and
    /// entered in the table; an egress one finds its inbound request, and is refused when that
    /// request's time is spent.
    ///
    /// `traced`: the request's trace id, when the sidecar traces it; else it is read from the
    /// request's `traceparent`.
    pub(super) fn begin(
        &mut self,
        lc: Option<&ListenerCascade>,
        headers: &HeaderMap,
        traced: Option<[u8; 16]>,
        now: Instant,
    ) -> Result<(), ProxyError> {
        let Some(lc) = lc else {
            return Ok(());
        };
        let keys = lc.table.as_ref().map(|table| {
            let trace = traced.or_else(|| table::trace_id_of(headers));
            (table, table.keys(headers, &lc.id_header, trace))
        });
        match lc.role {
            Role::Agent => self.begin_inbound(lc, keys, headers, now),
            _ => self.begin_egress(lc, keys, headers, now),
        }
    }

    fn begin_inbound(
        &mut self,
        lc: &ListenerCascade,
        keys: Option<(&Arc<Correlations>, table::Keys<'_>)>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<(), ProxyError> {
        let (mut deadline, mut depth, mut path) = (None, 0, None);
        if let Some(rules) = &lc.rules {
            path = rules.path(headers);
            if let Some(p) = path.as_ref().filter(|p| rules.holds_me(p)) {
                rules.cycles.increment(1);
                if rules.on_cycle == CycleAction::Block {
                    return Err(ProxyError::CallCycle {
                        path: String::from_utf8_lossy(p.as_bytes()).into_owned(),
                    });
                }
            }
            depth = rules.depth(headers);
            if depth > rules.max_depth {
                rules.depth_exceeded.increment(1);
                let max = rules.max_depth;
                return Err(ProxyError::CallDepthExceeded { depth, max });
            }
            deadline = rules
                .deadline(headers, now, rules.default_deadline)
                .map_err(|()| ProxyError::DeadlineExceeded(DeadlineWhen::Arrival))?;
        }
        if let Some((table, keys)) = keys {
            self.inbound = table.enter(keys, now, deadline, depth, path);
        }
        Ok(())
    }

    fn begin_egress(
        &mut self,
        lc: &ListenerCascade,
        keys: Option<(&Arc<Correlations>, table::Keys<'_>)>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<(), ProxyError> {
        if let Some((table, keys)) = keys.filter(|(_, k)| !k.is_empty()) {
            self.inbound = table.find(keys);
        }
        let Some(rules) = &lc.rules else {
            return Ok(());
        };
        let egress = match &self.inbound {
            Some(i) => Egress {
                deadline: i.deadline,
                attempted: false,
                depth: i.depth,
                path: i.path.clone(),
            },
            // Made for no inbound request known here: the agent may have passed its own
            // inbound's headers on; what it did not pass, it does not get.
            None if lc.role == Role::Peer => Egress {
                deadline: rules
                    .deadline(headers, now, None)
                    .map_err(|()| ProxyError::DeadlineExceeded(DeadlineWhen::Call))?,
                attempted: false,
                depth: rules.depth(headers),
                path: rules.path(headers),
            },
            None => return Ok(()),
        };
        if egress.deadline.is_some_and(|d| d <= now) {
            return Err(ProxyError::DeadlineExceeded(DeadlineWhen::Call));
        }
        self.egress = Some(Box::new(egress));
        Ok(())
    }

    /// When the request's egress attempts must end, if its inbound request has a deadline.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.egress.as_ref().and_then(|e| e.deadline)
    }

    /// An attempt goes out at `now` with `headers`: a peer call carries the time left, its depth
    /// and its path. `Err` when the time is spent (before the first attempt: the call came too
    /// late; before a fallback's: the failed attempts took it).
    pub(super) fn sending(
        &mut self,
        lc: Option<&ListenerCascade>,
        headers: &mut HeaderMap,
        now: Instant,
    ) -> Result<(), ProxyError> {
        let (Some(lc), Some(egress)) = (lc, self.egress.as_deref_mut()) else {
            return Ok(());
        };
        // Spent before the first attempt: the agent's time; after one (a fallback's turn): the
        // upstreams'.
        let when = match std::mem::replace(&mut egress.attempted, true) {
            false => DeadlineWhen::Call,
            true => DeadlineWhen::Fallback,
        };
        let left = match egress.deadline {
            Some(d) if d <= now => return Err(ProxyError::DeadlineExceeded(when)),
            Some(d) => Some(d - now),
            None => None,
        };
        let Some(rules) = lc.rules.as_deref().filter(|_| lc.role == Role::Peer) else {
            return Ok(());
        };
        match left {
            // Rounded up: a call with time left never reads as spent.
            Some(left) => {
                let ms = left.as_nanos().div_ceil(1_000_000);
                headers.insert(rules.deadline_header.clone(), HeaderValue::from(ms as u64));
            }
            None => {
                headers.remove(&rules.deadline_header);
            }
        }
        let depth = egress.depth.saturating_add(1);
        headers.insert(rules.depth_header.clone(), HeaderValue::from(depth));
        headers.insert(
            rules.path_header.clone(),
            rules.path_on(egress.path.as_ref()),
        );
        Ok(())
    }

    /// The sidecar answers `err` itself.
    pub(super) fn local_answer(&self, lc: Option<&ListenerCascade>, err: &ProxyError) {
        if let (Some(lc), ProxyError::DeadlineExceeded(_)) = (lc, err) {
            lc.deadline_exceeded.increment(1);
        }
    }

    /// The answer's cause is known (its head, or the sidecar's own): an egress call that failed
    /// after every fallback tells its inbound request now, before the agent, reading the status,
    /// can answer it.
    pub(super) fn answered(&self, lc: Option<&ListenerCascade>, cause: Cause) {
        if let (Some(lc), Some(inbound), Cause::Upstream) = (lc, &self.inbound, cause) {
            if lc.role.is_egress() {
                inbound.note_dependency_failed();
            }
        }
    }

    /// The request is counted with `status` and `cause`: an egress call that failed notes it on
    /// its inbound request; an inbound request leaves the table, and a 5xx of the agent's
    /// while a dependency had failed it is the dependency's. Returns the cause to count.
    pub(super) fn end(
        &mut self,
        lc: Option<&ListenerCascade>,
        status: StatusClass,
        cause: Cause,
    ) -> Cause {
        let (Some(lc), Some(inbound)) = (lc, self.inbound.take()) else {
            return cause;
        };
        if lc.role.is_egress() {
            if cause == Cause::Upstream {
                inbound.note_dependency_failed();
            }
            return cause;
        }
        if let Some(table) = &lc.table {
            table.leave(&inbound);
        }
        match (status, cause) {
            (StatusClass::ServerError, Cause::Agent) if inbound.dependency_failed() => {
                Cause::Dependency
            }
            _ => cause,
        }
    }
}

#[cfg(test)]
mod tests;
