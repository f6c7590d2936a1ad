//! The circuit breakers on the request's path, the whole life of one admission in one place:
//! which upstream of the chain admits the request (an open circuit gets no request at all), the
//! ticket the request carries while the upstream has it, what the response head says of the call
//! (a slow head, a 429's `Retry-After`; a probe is judged by its head), and the outcome fed back
//! when the attempt fails or the request is counted (a client that left gives a probe's slot back).

use std::time::Duration;

use tokio::time::Instant;

use super::state::RouteState;
use crate::sli::UpstreamOutcome;
use crate::upstream::{Outcome, Ticket, Upstream};

/// An upstream of the chain that admitted the request: its place and its breaker ticket.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) hop: usize,
    ticket: Option<Ticket>,
}

impl RouteState {
    /// The first upstream from `from` on whose circuit lets the request through.
    pub(super) fn admit_from(&self, from: usize, now: Instant) -> Option<Admitted> {
        (from..self.chain.len()).find_map(|hop| self.admit_at(hop, now))
    }

    /// The upstream at `hop`, if its circuit lets the request through (an MCP session's
    /// request: its server or none).
    pub(super) fn admit_at(&self, hop: usize, now: Instant) -> Option<Admitted> {
        match &self.chain.get(hop)?.breaker {
            None => Some(Admitted { hop, ticket: None }),
            Some(b) => b.admit(now).map(|t| Admitted {
                hop,
                ticket: Some(t),
            }),
        }
    }

    /// Where a request may go first: the upstream its MCP session lives on (`session`), else
    /// the first of the chain that admits it.
    pub(super) fn admit(&self, session: Option<usize>, now: Instant) -> Option<Admitted> {
        match session {
            Some(hop) => self.admit_at(hop, now),
            None => self.admit_from(0, now),
        }
    }

    /// Whether some upstream of the chain is not plainly closed: it may give out probe slots,
    /// which a request should take only once its body is in.
    pub(super) fn probing(&self) -> bool {
        self.chain
            .iter()
            .any(|u| u.breaker.as_ref().is_some_and(|b| !b.breaker.is_closed()))
    }

    /// Whether every upstream of the chain would surely refuse a call now (see
    /// [`crate::upstream::CircuitBreaker::refuses`]). Takes no ticket.
    pub(super) fn all_refuse(&self, now: Instant) -> bool {
        self.chain
            .iter()
            .all(|u| u.breaker.as_ref().is_some_and(|b| b.breaker.refuses(now)))
    }

    /// Whether the upstream at `hop` would surely refuse a call now. Takes no ticket.
    pub(super) fn refuses_at(&self, hop: usize, now: Instant) -> bool {
        let breaker = self.chain.get(hop).and_then(|u| u.breaker.as_ref());
        breaker.is_some_and(|b| b.breaker.refuses(now))
    }
}

/// The request's breaker ticket, from its admission until its outcome is fed back.
#[derive(Debug, Default)]
pub(super) struct BreakerTicket(Option<Held>);

#[derive(Debug)]
struct Held {
    ticket: Ticket,
    slow: bool,
    retry_after: Option<Duration>,
    /// A 429 is the upstream failing (a provider out of capacity), not its answer to one client
    /// (an agent rate-limiting a user): `false` on the `agent` role, where one client's 429 must
    /// not open the circuit for everyone.
    throttling_fails: bool,
}

impl Held {
    /// The call as the breaker judges it, given the attempt's outcome.
    fn outcome(&self, attempt: UpstreamOutcome) -> Outcome {
        let throttled = attempt == UpstreamOutcome::TooManyRequests;
        Outcome {
            failed: attempt != UpstreamOutcome::Ok && (self.throttling_fails || !throttled),
            slow: self.slow,
            // Only a 429's Retry-After opens the circuit for that long.
            retry_after: self
                .retry_after
                .filter(|_| throttled && self.throttling_fails),
        }
    }

    fn record(self, upstream: &Upstream, attempt: UpstreamOutcome, now: Instant) {
        if let Some(b) = &upstream.breaker {
            let outcome = self.outcome(attempt);
            b.record(self.ticket, outcome, now);
        }
    }
}

impl BreakerTicket {
    /// The request goes to the upstream that admitted it; the ticket is settled with the request
    /// from now on. Returns the upstream's place in the chain.
    pub(super) fn admitted(&mut self, admission: Admitted, throttling_fails: bool) -> usize {
        self.0 = admission.ticket.map(|ticket| Held {
            ticket,
            slow: false,
            retry_after: None,
            throttling_fails,
        });
        admission.hop
    }

    /// The response head of `upstream` arrived at `head_at`, for an upload that ended `from`:
    /// a slow head and a 429's `Retry-After` are noted, and a probe is judged now — a stream can
    /// take minutes, and the circuit must not stay half-open (refusing everyone else) as long.
    pub(super) fn head(
        &mut self,
        upstream: &Upstream,
        parts: &http::response::Parts,
        from: Instant,
        head_at: Instant,
    ) {
        let (Some(t), Some(b)) = (self.0.as_mut(), &upstream.breaker) else {
            return;
        };
        t.slow = b
            .slow_after
            .is_some_and(|s| head_at.saturating_duration_since(from) > s);
        t.retry_after = retry_after(&parts.headers);
        if t.ticket.is_probe() {
            if let Some(t) = self.0.take() {
                t.record(upstream, UpstreamOutcome::of_status(parts.status), head_at);
            }
        }
    }

    /// The attempt with `upstream` failed (`headers`: its response's, when it answered) and the
    /// request moves on: its outcome is fed back now.
    pub(super) fn attempt_failed(
        &mut self,
        upstream: &Upstream,
        outcome: UpstreamOutcome,
        headers: Option<&http::HeaderMap>,
        now: Instant,
    ) {
        if let Some(mut t) = self.0.take() {
            if let Some(headers) = headers {
                t.retry_after = retry_after(headers);
            }
            t.record(upstream, outcome, now);
        }
    }

    /// The request is counted: the attempt's outcome is fed back; with none to judge (the client
    /// left or broke its request), a probe's slot goes back.
    pub(super) fn end(
        &mut self,
        upstream: Option<&Upstream>,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
    ) {
        let (Some(t), Some(upstream)) = (self.0.take(), upstream) else {
            return;
        };
        match (outcome, &upstream.breaker) {
            (None, Some(b)) => b.cancel(t.ticket),
            (Some(o), _) => t.record(upstream, o, now),
            (None, None) => {}
        }
    }
}

/// A `Retry-After` in seconds (the form providers send; an HTTP date is not read), at most an
/// hour: a provider's typo must not hold a circuit open for days.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // "Retry now" is no reason to stop.
    (secs > 0).then(|| Duration::from_secs(secs.min(3600)))
}
