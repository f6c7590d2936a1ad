use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: 0.5,
        min_requests: 10,
        window: Duration::from_secs(10),
        open_for: Duration::from_secs(5),
        max_open_for: Duration::from_secs(30),
        half_open_probes: 2,
        slow_call: Some((Duration::from_secs(1), 0.8)),
        jitter: 0.0,
    }
}

const FAIL: Outcome = Outcome {
    failed: true,
    slow: false,
    retry_after: None,
};
const OK: Outcome = Outcome {
    failed: false,
    slow: false,
    retry_after: None,
};

/// Lets one call through and feeds its outcome; `None` when refused.
fn call(b: &CircuitBreaker, o: Outcome, now: Instant) -> Option<Option<Transition>> {
    let (ticket, _) = b.admit(now);
    ticket.map(|t| b.record(t, o, now))
}

fn to(to: CircuitState, reason: TransitionReason) -> Option<Transition> {
    Some(Transition { to, reason })
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_then_probes_close() {
    let b = CircuitBreaker::new(config(), 7);
    let t0 = Instant::now();
    assert_eq!(call(&b, FAIL, t0), Some(None));
    assert_eq!(call(&b, FAIL, t0), Some(None));
    assert_eq!(
        call(&b, FAIL, t0),
        Some(to(CircuitState::Open, TransitionReason::Consecutive))
    );
    // Open: refused without reaching the upstream.
    assert_eq!(call(&b, OK, t0), None);
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.admit(Instant::now()).0, None);
    assert_eq!(
        b.view(Instant::now()).half_open_in,
        Some(Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let now = Instant::now();
    // Exactly two probes, however many calls arrive at once.
    let (first, t) = b.admit(now);
    assert_eq!(t, to(CircuitState::HalfOpen, TransitionReason::Elapsed));
    let second = b.admit(now).0;
    assert!(first.is_some_and(|t| t.is_probe()) && second.is_some());
    for _ in 0..10 {
        assert_eq!(b.admit(now).0, None);
    }
    assert_eq!(b.record(first.unwrap(), OK, now), None);
    assert_eq!(
        b.record(second.unwrap(), OK, now),
        to(CircuitState::Closed, TransitionReason::ProbeOk)
    );
    assert_eq!(b.view(now).state, CircuitState::Closed);
    assert_eq!(
        b.view(now).last_trip_reason,
        Some(TransitionReason::Consecutive)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
    let b = CircuitBreaker::new(config(), 7);
    for _ in 0..3 {
        let _ = call(&b, FAIL, Instant::now());
    }
    let mut expected = 5;
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(expected)).await;
        assert_eq!(
            call(&b, FAIL, Instant::now()),
            Some(to(CircuitState::Open, TransitionReason::ProbeFailed))
        );
        expected = (expected * 2).min(30);
        assert_eq!(
            b.view(Instant::now()).half_open_in,
            Some(Duration::from_secs(expected))
        );
    }
    // Closing resets the doubling.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(call(&b, OK, Instant::now()), Some(None));
    assert_eq!(
        call(&b, OK, Instant::now()),
        Some(to(CircuitState::Closed, TransitionReason::ProbeOk))
    );
    for _ in 0..3 {
        let _ = call(&b, FAIL, Instant::now());
    }
    assert_eq!(
        b.view(Instant::now()).half_open_in,
        Some(Duration::from_secs(5))
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_needs_min_requests_and_forgets_old_calls() {
    let b = CircuitBreaker::new(config(), 7);
    let now = Instant::now();
    // 4 failures among 9 calls, never 3 in a row: under min_requests.
    for o in [OK, FAIL, FAIL, OK, FAIL, FAIL, OK, OK, OK] {
        assert_eq!(call(&b, o, now), Some(None));
    }
    // Ten seconds later the window has forgotten them.
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    for o in [OK, FAIL, FAIL, OK, FAIL, FAIL, OK, OK, FAIL] {
        assert_eq!(call(&b, o, now), Some(None));
    }
    // The tenth call in the window: 5 of 10 failed.
    assert_eq!(
        call(&b, FAIL, now),
        Some(to(CircuitState::Open, TransitionReason::Rate))
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_and_retry_after_open_too() {
    let b = CircuitBreaker::new(config(), 7);
    let now = Instant::now();
    let slow = Outcome { slow: true, ..OK };
    for _ in 0..9 {
        assert_eq!(call(&b, slow, now), Some(None));
    }
    assert_eq!(
        call(&b, slow, now),
        Some(to(CircuitState::Open, TransitionReason::SlowCall))
    );

    let b = CircuitBreaker::new(config(), 7);
    let limited = Outcome {
        failed: true,
        slow: false,
        retry_after: Some(Duration::from_secs(20)),
    };
    assert_eq!(
        call(&b, limited, now),
        Some(to(CircuitState::Open, TransitionReason::RetryAfter))
    );
    // At least the Retry-After, though open_for is 5 s.
    assert_eq!(b.view(now).half_open_in, Some(Duration::from_secs(20)));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let b = CircuitBreaker::new(config(), 7);
    for _ in 0..3 {
        let _ = call(&b, FAIL, Instant::now());
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let now = Instant::now();
    let (a, _) = b.admit(now);
    let (c, _) = b.admit(now);
    assert_eq!(b.admit(now).0, None);
    b.cancel(a.unwrap());
    assert!(b.admit(now).0.is_some());
    let _ = c;
}

#[tokio::test(start_paused = true)]
async fn an_operator_holds_it_open_or_closed_and_hands_it_back() {
    let b = CircuitBreaker::new(config(), 7);
    let now = Instant::now();
    assert_eq!(
        b.force(Force::Open, now),
        to(CircuitState::Open, TransitionReason::Forced)
    );
    assert_eq!(call(&b, OK, now), None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        call(&b, OK, Instant::now()),
        None,
        "a forced open never probes"
    );
    b.force(Force::Closed, Instant::now());
    for _ in 0..10 {
        assert_eq!(
            call(&b, FAIL, Instant::now()),
            Some(None),
            "forced closed never trips"
        );
    }
    assert_eq!(
        b.force(Force::Auto, Instant::now()),
        to(CircuitState::Closed, TransitionReason::Forced)
    );
    for _ in 0..2 {
        let _ = call(&b, FAIL, Instant::now());
    }
    assert_eq!(
        call(&b, FAIL, Instant::now()),
        Some(to(CircuitState::Open, TransitionReason::Consecutive))
    );
}

#[test]
fn jitter_spreads_open_periods_within_the_ratio() {
    let mut rng = 42;
    let d = Duration::from_secs(10);
    let all: Vec<Duration> = (0..1000).map(|_| jitter(d, 0.1, &mut rng)).collect();
    assert!(all
        .iter()
        .all(|x| *x >= Duration::from_secs(9) && *x <= Duration::from_secs(11)));
    assert!(all.iter().any(|x| *x < Duration::from_millis(9_500)));
    assert!(all.iter().any(|x| *x > Duration::from_millis(10_500)));
}

/// The same rules, written as plainly as possible: every outcome kept with its slice of the
/// window, no atomics, no epochs (calls are admitted and answered one at a time).
struct Model {
    c: BreakerConfig,
    state: (CircuitState, u64, u32, u32), // state, open until (ms), probes admitted, succeeded
    consecutive: u32,
    calls: Vec<(u64, bool, bool)>,
    reopens: u32,
}

impl Model {
    fn step(&mut self, ms: u64, o: Outcome) -> (bool, Vec<Transition>) {
        let mut out = Vec::new();
        let slice = self.c.window.as_millis() as u64 / BUCKETS as u64;
        if self.state.0 == CircuitState::Open {
            if ms < self.state.1 {
                return (false, out);
            }
            self.state = (CircuitState::HalfOpen, 0, 0, 0);
            out.push(Transition {
                to: CircuitState::HalfOpen,
                reason: TransitionReason::Elapsed,
            });
        }
        let open = |m: &mut Model, reason, at_least: Option<Duration>| {
            let base =
                m.c.open_for
                    .saturating_mul(1 << m.reopens.min(20))
                    .min(m.c.max_open_for);
            let period = at_least.map_or(base, |a| base.max(a));
            m.reopens += 1;
            m.state = (CircuitState::Open, ms + period.as_millis() as u64, 0, 0);
            Transition {
                to: CircuitState::Open,
                reason,
            }
        };
        if self.state.0 == CircuitState::HalfOpen {
            if self.state.2 >= self.c.half_open_probes {
                return (false, out);
            }
            self.state.2 += 1;
            if o.failed || o.slow {
                let reason = if o.retry_after.is_some() {
                    TransitionReason::RetryAfter
                } else {
                    TransitionReason::ProbeFailed
                };
                out.push(open(self, reason, o.retry_after));
            } else {
                self.state.3 += 1;
                if self.state.3 >= self.c.half_open_probes {
                    self.reopens = 0;
                    self.consecutive = 0;
                    self.calls.clear();
                    self.state = (CircuitState::Closed, 0, 0, 0);
                    out.push(Transition {
                        to: CircuitState::Closed,
                        reason: TransitionReason::ProbeOk,
                    });
                }
            }
            return (true, out);
        }
        let index = ms / slice;
        self.calls.push((index, o.failed, o.slow));
        self.consecutive = if o.failed { self.consecutive + 1 } else { 0 };
        if o.failed && o.retry_after.is_some() {
            out.push(open(self, TransitionReason::RetryAfter, o.retry_after));
            return (true, out);
        }
        if o.failed && self.consecutive >= self.c.consecutive_failures {
            out.push(open(self, TransitionReason::Consecutive, None));
            return (true, out);
        }
        let recent: Vec<_> = self
            .calls
            .iter()
            .filter(|(i, _, _)| i + BUCKETS as u64 > index)
            .collect();
        let total = recent.len() as f64;
        let failures = recent.iter().filter(|c| c.1).count() as f64;
        let slow = recent.iter().filter(|c| c.2).count() as f64;
        if recent.len() as u32 >= self.c.min_requests {
            if o.failed && failures / total >= self.c.failure_rate {
                out.push(open(self, TransitionReason::Rate, None));
            } else if let Some((_, rate)) = self.c.slow_call {
                if o.slow && slow / total >= rate {
                    out.push(open(self, TransitionReason::SlowCall, None));
                }
            }
        }
        (true, out)
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(OK),
        4 => Just(FAIL),
        2 => Just(Outcome { slow: true, ..OK }),
        1 => (1u64..40).prop_map(|s| Outcome {
            failed: true,
            slow: false,
            retry_after: Some(Duration::from_secs(s)),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(
        steps in prop::collection::vec((0u64..3_000, outcome()), 1..300),
        consecutive in 2u32..6,
        min_requests in 3u32..15,
        probes in 1u32..4,
    ) {
        let c = BreakerConfig {
            consecutive_failures: consecutive,
            min_requests,
            half_open_probes: probes,
            ..config()
        };
        let b = CircuitBreaker::new(c.clone(), 1);
        let t0 = b.origin;
        let mut m = Model { c, state: (CircuitState::Closed, 0, 0, 0), consecutive: 0, calls: Vec::new(), reopens: 0 };
        let mut ms = 0;
        for (gap, o) in steps {
            ms += gap;
            let now = t0 + Duration::from_millis(ms);
            let (ticket, t1) = b.admit(now);
            let mut got = Vec::from_iter(t1);
            if let Some(t) = ticket {
                got.extend(b.record(t, o, now));
            }
            let (admitted, want) = m.step(ms, o);
            prop_assert_eq!(ticket.is_some(), admitted, "at {} ms", ms);
            prop_assert_eq!(got, want, "at {} ms", ms);
            prop_assert_eq!(b.view(now).state, m.state.0);
        }
    }
}

#[test]
fn exactly_the_probes_are_let_through_from_many_threads() {
    for _ in 0..50 {
        let b = std::sync::Arc::new(CircuitBreaker::new(config(), 7));
        let t0 = b.origin;
        for _ in 0..3 {
            let _ = call(&b, FAIL, t0);
        }
        let later = t0 + Duration::from_secs(5);
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (b, admitted) = (b.clone(), admitted.clone());
                s.spawn(move || {
                    for _ in 0..100 {
                        if b.admit(later).0.is_some() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn calls_from_before_a_trip_do_not_count_after_it() {
    let b = CircuitBreaker::new(config(), 7);
    let now = Instant::now();
    // Long calls let through while closed, still running when the circuit trips.
    let old: Vec<Ticket> = (0..5).map(|_| b.admit(now).0.unwrap()).collect();
    for _ in 0..3 {
        let _ = call(&b, FAIL, now);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..2 {
        let _ = call(&b, OK, Instant::now());
    }
    assert_eq!(b.view(Instant::now()).state, CircuitState::Closed);
    // They end, failing: old news, the circuit stays closed.
    for t in old {
        assert_eq!(b.record(t, FAIL, Instant::now()), None);
    }
    assert_eq!(b.view(Instant::now()).consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_is_a_failed_probe() {
    let b = CircuitBreaker::new(config(), 7);
    for _ in 0..3 {
        let _ = call(&b, FAIL, Instant::now());
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        call(&b, Outcome { slow: true, ..OK }, Instant::now()),
        Some(to(CircuitState::Open, TransitionReason::ProbeFailed))
    );
}
