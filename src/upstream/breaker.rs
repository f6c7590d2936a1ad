//! A circuit breaker per upstream: a plain state machine fed classified outcomes.
//!
//! - **Closed**: calls go through. It opens after `consecutive_failures` failures in a row, or
//!   when the sliding `window` holds at least `min_requests` calls and the failure ratio reaches
//!   `failure_rate` (or the slow-call ratio reaches `slow_call.rate`); at once on a 429 with
//!   `Retry-After`, for at least that long.
//! - **Open**: calls are refused without touching the upstream, for `open_for`, doubled on each
//!   re-open (a failed probe) up to `max_open_for`, with jitter so that sidecars do not probe in
//!   step.
//! - **Half-open**: once the open period is over, exactly `half_open_probes` calls are let
//!   through, whatever the concurrency; all succeeding closes the circuit, any failing re-opens
//!   it.
//! - **Forced**: an operator can hold it open or closed, and hand it back (`auto`).
//!
//! Time comes in as `tokio::time::Instant` values, so tests run on paused time. The state sits
//! behind a mutex held for a few instructions, never across an await; admission while closed
//! reads one atomic and takes no lock.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's settings (`upstreams.*.circuit_breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
    /// `(threshold, rate)`: calls slower than `threshold` to their first byte count as slow;
    /// a slow ratio of `rate` over the window opens the circuit.
    pub slow_call: Option<(Duration, f64)>,
    /// Open periods vary by up to this fraction either way.
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
            half_open_probes: 3,
            slow_call: None,
            jitter: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// Why the state changed (`sloguard_circuit_transitions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReason {
    Consecutive,
    Rate,
    SlowCall,
    RetryAfter,
    Forced,
    /// The open period ran out: probing starts.
    Elapsed,
    ProbeOk,
    ProbeFailed,
}

impl TransitionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::Consecutive => "consecutive",
            TransitionReason::Rate => "rate",
            TransitionReason::SlowCall => "slow_call",
            TransitionReason::RetryAfter => "retry_after",
            TransitionReason::Forced => "forced",
            TransitionReason::Elapsed => "elapsed",
            TransitionReason::ProbeOk => "probe_ok",
            TransitionReason::ProbeFailed => "probe_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: CircuitState,
    pub reason: TransitionReason,
}

/// How one call went, as the breaker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub failed: bool,
    /// Its first byte came later than `slow_call.threshold`.
    pub slow: bool,
    /// A 429's `Retry-After`.
    pub retry_after: Option<Duration>,
}

/// A call let through; hand it back with its outcome (or to [`CircuitBreaker::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// An operator's hold (`POST /admin/circuits/{upstream}/open|close|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    Open,
    Closed,
    Auto,
}

/// What `/circuits` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerView {
    pub state: CircuitState,
    pub forced: bool,
    pub consecutive_failures: u32,
    pub last_trip_reason: Option<TransitionReason>,
    /// Until probing starts, while open.
    pub half_open_in: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

/// The window as `BUCKETS` slices: memory is fixed, old slices are reused.
const BUCKETS: usize = 10;

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition: outcomes of calls let through before it are not probes.
    epoch: u64,
    forced: Option<Force>,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    /// Opens since the circuit last closed: the open period doubles with each.
    reopens: u32,
    last_trip: Option<TransitionReason>,
    rng: u64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    /// `CircuitState` as u8, for lock-free admission while closed.
    fast: AtomicU8,
    /// The current epoch, for tickets handed out without the lock.
    fast_epoch: AtomicU64,
    inner: Mutex<Inner>,
    origin: Instant,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, seed: u64) -> CircuitBreaker {
        CircuitBreaker {
            config,
            fast: AtomicU8::new(CircuitState::Closed as u8),
            fast_epoch: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state: State::Closed,
                epoch: 0,
                forced: None,
                consecutive: 0,
                buckets: [Bucket::default(); BUCKETS],
                reopens: 0,
                last_trip: None,
                rng: seed | 1,
            }),
            origin: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent state (every update is a few
        // assignments); keep serving with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let width = (self.config.window.as_nanos() / BUCKETS as u128).max(1);
        (now.saturating_duration_since(self.origin).as_nanos() / width) as u64
    }

    /// Lets a call through, or refuses it (`None`) while the circuit is open or its probes are
    /// all out. Moves an open circuit whose time is up to half-open.
    pub fn admit(&self, now: Instant) -> (Option<Ticket>, Option<Transition>) {
        // Closed (and not forced): the common case, no lock. The epoch read first: a transition
        // in between leaves the ticket with an older epoch, whose outcome is then ignored.
        let epoch = self.fast_epoch.load(Ordering::Acquire);
        if self.fast.load(Ordering::Acquire) == CircuitState::Closed as u8 {
            return (
                Some(Ticket {
                    epoch,
                    probe: false,
                }),
                None,
            );
        }
        let mut inner = self.lock();
        match inner.forced {
            Some(Force::Open) => return (None, None),
            Some(Force::Closed) => {
                return (
                    Some(Ticket {
                        epoch: inner.epoch,
                        probe: false,
                    }),
                    None,
                )
            }
            _ => {}
        }
        let mut transition = None;
        if let State::Open { until } = inner.state {
            if now < until {
                return (None, None);
            }
            transition = Some(self.enter(
                &mut inner,
                State::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                },
                TransitionReason::Elapsed,
            ));
        }
        let epoch = inner.epoch;
        let ticket = match &mut inner.state {
            State::HalfOpen { admitted, .. } if *admitted < self.config.half_open_probes => {
                *admitted += 1;
                Some(Ticket { epoch, probe: true })
            }
            State::HalfOpen { .. } | State::Open { .. } => None,
            State::Closed => Some(Ticket {
                epoch,
                probe: false,
            }),
        };
        (ticket, transition)
    }

    /// Whether the circuit is closed (and so admits every call without a probe slot): one
    /// atomic load.
    pub fn is_closed(&self) -> bool {
        self.fast.load(Ordering::Acquire) == CircuitState::Closed as u8
    }

    /// Whether a call now would surely be refused: open with time left, or forced open. (A
    /// half-open circuit may still have a probe slot: `false`.) Takes no ticket.
    pub fn refuses(&self, now: Instant) -> bool {
        if self.fast.load(Ordering::Acquire) == CircuitState::Closed as u8 {
            return false;
        }
        let inner = self.lock();
        match inner.forced {
            Some(Force::Open) => true,
            Some(Force::Closed) => false,
            _ => matches!(inner.state, State::Open { until } if now < until),
        }
    }

    /// A call let through ended without an outcome to judge (the client left): a probe's slot
    /// is given back.
    pub fn cancel(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut inner = self.lock();
        if inner.epoch == ticket.epoch {
            if let State::HalfOpen { admitted, .. } = &mut inner.state {
                *admitted = admitted.saturating_sub(1);
            }
        }
    }

    /// Feeds a call's outcome; returns the transition it caused, if any.
    pub fn record(&self, ticket: Ticket, outcome: Outcome, now: Instant) -> Option<Transition> {
        let mut inner = self.lock();
        if inner.forced.is_some() {
            return None;
        }
        let current = ticket.epoch == inner.epoch;
        if ticket.probe && current && matches!(inner.state, State::HalfOpen { .. }) {
            return self.record_probe(&mut inner, outcome, now);
        }
        match inner.state {
            // A call let through before the circuit last opened: its news is from then.
            State::Closed if !current => return None,
            State::Closed => {}
            State::Open { until } => {
                // A call let through before the circuit opened, answered 429 with a later
                // Retry-After: the provider asked for longer.
                if let Some(later) = outcome.retry_after.map(|r| now + r) {
                    if later > until {
                        inner.state = State::Open { until: later };
                    }
                }
                return None;
            }
            // Calls from before the probes: their news is old.
            State::HalfOpen { .. } => return None,
        }
        self.record_closed(&mut inner, outcome, now)
    }

    /// A probe's outcome while half-open: any failing re-opens the circuit, the last of
    /// `half_open_probes` succeeding closes it.
    #[inline]
    fn record_probe(
        &self,
        inner: &mut Inner,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        // A slow probe is no sign of recovery from slowness.
        if outcome.failed || outcome.slow {
            let reason = if outcome.retry_after.is_some() {
                TransitionReason::RetryAfter
            } else {
                TransitionReason::ProbeFailed
            };
            return Some(self.open(inner, now, reason, outcome.retry_after));
        }
        if let State::HalfOpen { succeeded, .. } = &mut inner.state {
            *succeeded += 1;
            if *succeeded >= self.config.half_open_probes {
                inner.reopens = 0;
                inner.consecutive = 0;
                inner.buckets = [Bucket::default(); BUCKETS];
                return Some(self.enter(inner, State::Closed, TransitionReason::ProbeOk));
            }
        }
        None
    }

    /// A call's outcome while closed: counted, then the circuit opens if a 429's Retry-After,
    /// the failures in a row, or the window's failure or slow-call ratio say so.
    #[inline]
    fn record_closed(
        &self,
        inner: &mut Inner,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        let index = self.bucket_index(now);
        let slot = &mut inner.buckets[(index % BUCKETS as u64) as usize];
        if slot.index != index {
            *slot = Bucket {
                index,
                ..Bucket::default()
            };
        }
        slot.total += 1;
        slot.failures += u32::from(outcome.failed);
        slot.slow += u32::from(outcome.slow);
        inner.consecutive = if outcome.failed {
            inner.consecutive.saturating_add(1)
        } else {
            0
        };
        if outcome.failed && outcome.retry_after.is_some() {
            return Some(self.open(
                inner,
                now,
                TransitionReason::RetryAfter,
                outcome.retry_after,
            ));
        }
        if outcome.failed && inner.consecutive >= self.config.consecutive_failures {
            return Some(self.open(inner, now, TransitionReason::Consecutive, None));
        }
        let (total, failures, slow) = window_totals(&inner.buckets, index);
        if total >= self.config.min_requests && total > 0 {
            if outcome.failed && f64::from(failures) / f64::from(total) >= self.config.failure_rate
            {
                return Some(self.open(inner, now, TransitionReason::Rate, None));
            }
            if let Some((_, rate)) = self.config.slow_call {
                if outcome.slow && f64::from(slow) / f64::from(total) >= rate {
                    return Some(self.open(inner, now, TransitionReason::SlowCall, None));
                }
            }
        }
        None
    }

    /// An operator's hold, or its release.
    pub fn force(&self, force: Force, now: Instant) -> Option<Transition> {
        let mut inner = self.lock();
        inner.forced = match force {
            Force::Auto => None,
            f => Some(f),
        };
        let (state, to) = match force {
            Force::Open => (
                State::Open {
                    until: now + self.config.max_open_for,
                },
                CircuitState::Open,
            ),
            Force::Closed | Force::Auto => (State::Closed, CircuitState::Closed),
        };
        if force != Force::Open {
            inner.consecutive = 0;
            inner.reopens = 0;
            inner.buckets = [Bucket::default(); BUCKETS];
        }
        let t = self.enter(&mut inner, state, TransitionReason::Forced);
        // Forced closed still takes the lock on admission (it must not be mistaken for a
        // breaker that can trip).
        if force == Force::Closed {
            self.fast
                .store(CircuitState::HalfOpen as u8, Ordering::Release);
        }
        debug_assert_eq!(t.to, to);
        Some(t)
    }

    pub fn view(&self, now: Instant) -> BreakerView {
        let inner = self.lock();
        let (state, half_open_in) = match inner.state {
            State::Closed => (CircuitState::Closed, None),
            State::HalfOpen { .. } => (CircuitState::HalfOpen, None),
            State::Open { until } => (
                CircuitState::Open,
                Some(until.saturating_duration_since(now)),
            ),
        };
        BreakerView {
            state,
            forced: inner.forced.is_some(),
            consecutive_failures: inner.consecutive,
            last_trip_reason: inner.last_trip,
            half_open_in: half_open_in.filter(|_| inner.forced.is_none()),
        }
    }

    fn open(
        &self,
        inner: &mut Inner,
        now: Instant,
        reason: TransitionReason,
        at_least: Option<Duration>,
    ) -> Transition {
        let doubled = self
            .config
            .open_for
            .saturating_mul(1u32 << inner.reopens.min(20))
            .min(self.config.max_open_for);
        let jittered = jitter(doubled, self.config.jitter, &mut inner.rng);
        let period = at_least.map_or(jittered, |a| jittered.max(a));
        inner.reopens = inner.reopens.saturating_add(1);
        inner.last_trip = Some(reason);
        self.enter(
            inner,
            State::Open {
                until: now + period,
            },
            reason,
        )
    }

    fn enter(&self, inner: &mut Inner, state: State, reason: TransitionReason) -> Transition {
        let to = match state {
            State::Closed => CircuitState::Closed,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
        };
        inner.state = state;
        inner.epoch += 1;
        self.fast_epoch.store(inner.epoch, Ordering::Release);
        self.fast.store(to as u8, Ordering::Release);
        Transition { to, reason }
    }
}

/// Calls, failures and slow calls in the window that ends with bucket `index`.
#[inline]
fn window_totals(buckets: &[Bucket; BUCKETS], index: u64) -> (u32, u32, u32) {
    buckets
        .iter()
        .filter(|b| b.index + (BUCKETS as u64) > index && b.index <= index)
        .fold((0u32, 0u32, 0u32), |(t, f, s), b| {
            (t + b.total, f + b.failures, s + b.slow)
        })
}

/// `d` varied by up to `ratio` either way (xorshift: cheap, and seeded per breaker so that
/// sidecars started together still spread out).
fn jitter(d: Duration, ratio: f64, rng: &mut u64) -> Duration {
    if ratio <= 0.0 {
        return d;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let unit = (*rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    d.mul_f64((1.0 + ratio * (2.0 * unit - 1.0)).max(0.0))
}

#[cfg(test)]
mod tests;
