//! The local SLO engine: each SLO's good and total events in fixed time buckets, giving its SLI,
//! error budget remaining and burn rates over 5m, 1h, 6h and since the start — the sidecar's own
//! view of what the Prometheus rules compute, for `/slo` and the `sloguard_slo_*` gauges.
//!
//! A plain type fed cumulative counts with their time (`tokio::time::Instant`, so tests run on
//! paused time). Memory is fixed per SLO: 360 one-minute buckets (the last 6 hours) and one
//! bucket per hour of the SLO window (720 for 30 days), 24 bytes each.
//!
//! - SLI = good / total over the window (none without events).
//! - Burn rate = error ratio / (1 − target): 1 spends the budget exactly over the SLO window.
//! - Budget remaining = 1 − bad / ((1 − target) × total) over the SLO window (the hourly
//!   buckets that cover it); negative once the budget is overspent, 1 without events.
//! - State: `breach` once the budget is spent (remaining ≤ 0); `warning` while the last hour
//!   burns faster than 1 (the budget would not last the window) or less than a quarter of the
//!   budget is left; `ok` otherwise.

use std::time::Duration;

use tokio::time::Instant;

/// Minutes kept at one-minute resolution: the 5m, 1h and 6h windows.
const MINUTES: usize = 360;

/// The windows of `/slo` and of `sloguard_slo_burn_rate`.
pub(crate) const WINDOWS: [(&str, u64); 3] = [("5m", 5), ("1h", 60), ("6h", 360)];

/// What the source's first counter counts: good events (requests not 5xx, tasks completed,
/// calls within the threshold) or bad ones (safety violations). Each counter is taken as it is
/// — both only ever grow — and the good events of a window are worked out from the window's
/// sums: a violation counted before its response, or a response with two violations, cannot
/// make a good event out of a bad one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Good,
    Bad,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Which minute (or hour) since the start it holds; slots are reused round the ring.
    at: u64,
    /// The first counter's events (good or bad, as the tally says), and all events.
    first: u64,
    total: u64,
}

/// Good and total events over a window, and what they say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    /// Good events of all; `None` without events.
    pub(crate) fn sli(self) -> Option<f64> {
        (self.total > 0).then(|| (self.good.min(self.total)) as f64 / self.total as f64)
    }

    /// The error ratio over the budget's ratio; `None` without events.
    pub(crate) fn burn_rate(self, target: f64) -> Option<f64> {
        self.sli().map(|sli| (1.0 - sli) / (1.0 - target))
    }

    fn bad(self) -> u64 {
        self.total - self.good.min(self.total)
    }
}

/// `ok`, `warning` or `breach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Ok,
    Warning,
    Breach,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "warning",
            State::Breach => "breach",
        }
    }
}

/// One SLO's events over time.
#[derive(Debug)]
pub(crate) struct Tracker {
    tally: Tally,
    target: f64,
    start: Instant,
    minutes: Vec<Bucket>,
    hours: Vec<Bucket>,
    /// The cumulative counts last fed, and all events since the start.
    last: Option<(u64, u64)>,
    since_start: (u64, u64),
}

impl Tracker {
    pub(crate) fn new(tally: Tally, target: f64, window: Duration, start: Instant) -> Tracker {
        let hours = (window.as_secs().div_ceil(3600)).max(1) as usize;
        Tracker {
            tally,
            target,
            start,
            minutes: vec![Bucket::default(); MINUTES],
            hours: vec![Bucket::default(); hours],
            last: None,
            since_start: (0, 0),
        }
    }

    /// Good and total events of a window's sums.
    fn counts(&self, (first, total): (u64, u64)) -> Counts {
        let good = match self.tally {
            Tally::Good => first.min(total),
            Tally::Bad => total - first.min(total),
        };
        Counts { good, total }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / 60
    }

    /// Whether events are counted yet: from the first reading on (its baseline; what came before
    /// it is not this SLO's).
    pub(crate) fn counting(&self) -> bool {
        self.last.is_some()
    }

    /// The source's cumulative counts at `now`: its first counter (as the tally says) and all
    /// events. The first reading is the baseline; a counter that went down (a restart of what
    /// counts) is a new baseline for that counter.
    pub(crate) fn feed(&mut self, first: u64, total: u64, now: Instant) {
        let Some((f0, t0)) = self.last.replace((first, total)) else {
            return;
        };
        let df = first.saturating_sub(f0);
        let dt = total.saturating_sub(t0);
        if dt == 0 && df == 0 {
            return;
        }
        self.since_start.0 += df;
        self.since_start.1 += dt;
        let m = self.minute(now);
        for (ring, at) in [(&mut self.minutes, m), (&mut self.hours, m / 60)] {
            let len = ring.len() as u64;
            let slot = &mut ring[(at % len) as usize];
            if slot.at != at || (slot.total == 0 && slot.first == 0) {
                *slot = Bucket {
                    at,
                    first: 0,
                    total: 0,
                };
            }
            slot.first += df;
            slot.total += dt;
        }
    }

    /// Events over the last `minutes` minutes (the current one included).
    pub(crate) fn window(&self, minutes: u64, now: Instant) -> Counts {
        let m = self.minute(now);
        self.counts(sum(&self.minutes, m, minutes.min(MINUTES as u64)))
    }

    /// Events over the SLO window (its hourly buckets; the current hour included).
    pub(crate) fn slo_window(&self, now: Instant) -> Counts {
        let h = self.minute(now) / 60;
        self.counts(sum(&self.hours, h, self.hours.len() as u64))
    }

    pub(crate) fn since_start(&self) -> Counts {
        self.counts(self.since_start)
    }

    /// The share of the SLO window's error budget left (negative: overspent).
    pub(crate) fn budget_remaining(&self, now: Instant) -> f64 {
        let c = self.slo_window(now);
        let allowed = (1.0 - self.target) * c.total as f64;
        if c.total == 0 {
            return 1.0;
        }
        1.0 - c.bad() as f64 / allowed
    }

    pub(crate) fn state(&self, now: Instant) -> State {
        let remaining = self.budget_remaining(now);
        let hour = self.window(60, now).burn_rate(self.target).unwrap_or(0.0);
        if remaining <= 0.0 {
            State::Breach
        } else if hour > 1.0 || remaining < 0.25 {
            State::Warning
        } else {
            State::Ok
        }
    }

    /// The SLI of each of the last `n` periods of `period` minutes, oldest first (for charts;
    /// `None` for a period without events). Periods reach back at most 6 hours.
    pub(crate) fn history(&self, period: u64, n: u64, now: Instant) -> Vec<Option<f64>> {
        let m = self.minute(now);
        let period = period.max(1);
        let n = n.min(MINUTES as u64 / period);
        (0..n)
            .rev()
            .map(|i| {
                let end = m.saturating_sub(i * period);
                if m < i * period {
                    return None;
                }
                self.counts(sum(&self.minutes, end, period)).sli()
            })
            .collect()
    }

    /// The budget remaining at the end of each hour of the SLO window so far, oldest first:
    /// the burn-down (cumulative over the hours the window holds).
    pub(crate) fn burn_down(&self, now: Instant) -> Vec<f64> {
        let h = self.minute(now) / 60;
        let len = self.hours.len() as u64;
        let first = h.saturating_sub(len - 1);
        let (mut bad, mut total) = (0u64, 0u64);
        let mut out = Vec::with_capacity((h - first + 1) as usize);
        for at in first..=h {
            let b = self.hours[(at % len) as usize];
            if b.at == at {
                let c = self.counts((b.first, b.total));
                total += c.total;
                bad += c.bad();
            }
            let allowed = (1.0 - self.target) * total as f64;
            out.push(if total == 0 {
                1.0
            } else {
                1.0 - bad as f64 / allowed
            });
        }
        out
    }
}

/// The sums of the buckets of the `n` periods ending at `at` (inclusive) that still hold them.
fn sum(ring: &[Bucket], at: u64, n: u64) -> (u64, u64) {
    let len = ring.len() as u64;
    let from = at.saturating_sub(n.saturating_sub(1));
    let (mut first, mut total) = (0, 0);
    for t in from..=at {
        let b = ring[(t % len) as usize];
        if b.at == t {
            first += b.first;
            total += b.total;
        }
    }
    (first, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn advance(minutes: u64) -> impl std::future::Future<Output = ()> {
        tokio::time::advance(Duration::from_secs(minutes * 60))
    }

    #[tokio::test(start_paused = true)]
    async fn windows_roll_over_as_time_passes() {
        let start = Instant::now();
        let mut t = Tracker::new(Tally::Good, 0.99, 30 * DAY, start);
        t.feed(0, 0, Instant::now());
        // 100 events a minute, 2 bad, for 10 minutes.
        for i in 1..=10 {
            advance(1).await;
            t.feed(98 * i, 100 * i, Instant::now());
        }
        let now = Instant::now();
        assert_eq!(
            t.window(5, now),
            Counts {
                good: 490,
                total: 500
            }
        );
        assert_eq!(
            t.window(60, now),
            Counts {
                good: 980,
                total: 1000
            }
        );
        assert_eq!(
            t.since_start(),
            Counts {
                good: 980,
                total: 1000
            }
        );
        // An hour of nothing: the 5m and 1h windows empty, 6h and the SLO window keep them.
        advance(61).await;
        let now = Instant::now();
        assert_eq!(t.window(5, now), Counts::default());
        assert_eq!(t.window(60, now), Counts::default());
        assert_eq!(
            t.window(360, now),
            Counts {
                good: 980,
                total: 1000
            }
        );
        assert_eq!(
            t.slo_window(now),
            Counts {
                good: 980,
                total: 1000
            }
        );
        // Past 6 hours only the hourly buckets hold them; past the window, nothing does.
        advance(6 * 60).await;
        assert_eq!(t.window(360, Instant::now()), Counts::default());
        assert_eq!(t.slo_window(Instant::now()).total, 1000);
        tokio::time::advance(30 * DAY).await;
        assert_eq!(t.slo_window(Instant::now()), Counts::default());
        assert_eq!(t.since_start().total, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_and_burn_rate_against_hand_computed_values() {
        let start = Instant::now();
        let mut t = Tracker::new(Tally::Good, 0.995, 30 * DAY, start);
        t.feed(0, 0, start);
        // 10,000 requests, 20 failed: error ratio 0.2%, budget 0.5%.
        advance(1).await;
        t.feed(9_980, 10_000, Instant::now());
        let now = Instant::now();
        let c = t.window(60, now);
        assert_eq!(c.sli(), Some(0.998));
        // Burn rate = 0.002 / 0.005 = 0.4; remaining = 1 - 20 / (0.005 * 10000) = 0.6.
        assert!((c.burn_rate(0.995).unwrap() - 0.4).abs() < 1e-9);
        assert!((t.budget_remaining(now) - 0.6).abs() < 1e-9);
        assert_eq!(t.state(now), State::Ok);
        // 80 more failures of 1,000: 100 bad of 11,000; allowed 55: remaining 1 - 100/55 < 0.
        advance(1).await;
        t.feed(10_900, 11_000, Instant::now());
        let now = Instant::now();
        assert!((t.budget_remaining(now) - (1.0 - 100.0 / 55.0)).abs() < 1e-9);
        assert_eq!(t.state(now), State::Breach);
        // Burning fast but with budget left: a warning. Good hours first, then a bad minute.
        let mut w = Tracker::new(Tally::Good, 0.9, 30 * DAY, start);
        w.feed(0, 0, Instant::now());
        advance(1).await;
        w.feed(10_000, 10_000, Instant::now());
        advance(120).await;
        w.feed(10_085, 10_100, Instant::now());
        let now = Instant::now();
        // The hour: 15 bad of 100, burn 1.5; the window: 15 bad of 1,010 allowed.
        assert!((w.window(60, now).burn_rate(0.9).unwrap() - 1.5).abs() < 1e-9);
        assert!((w.budget_remaining(now) - (1.0 - 15.0 / 1010.0)).abs() < 1e-9);
        assert_eq!(w.state(now), State::Warning);
    }

    #[tokio::test(start_paused = true)]
    async fn no_events_is_no_sli_and_a_whole_budget() {
        let start = Instant::now();
        let mut t = Tracker::new(Tally::Good, 0.99, 30 * DAY, start);
        assert!(!t.counting(), "no baseline before the first reading");
        t.feed(5, 5, start);
        assert!(t.counting());
        let now = Instant::now();
        assert_eq!(
            t.window(60, now).sli(),
            None,
            "the first reading is the baseline"
        );
        assert_eq!(t.budget_remaining(now), 1.0);
        assert_eq!(t.state(now), State::Ok);
        // A counter that went back (its source restarted) is a new baseline, not a negative.
        t.feed(1, 2, now);
        t.feed(3, 4, now);
        assert_eq!(t.since_start(), Counts { good: 2, total: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn bad_events_counted_before_their_total_stay_bad() {
        let start = Instant::now();
        let mut t = Tracker::new(Tally::Bad, 0.99, 30 * DAY, start);
        t.feed(0, 0, start);
        // A violation is counted mid-stream, its response only when the stream ends.
        advance(1).await;
        t.feed(1, 0, Instant::now());
        advance(1).await;
        t.feed(1, 1, Instant::now());
        // 100 more responses, one with two violations.
        t.feed(3, 101, Instant::now());
        let now = Instant::now();
        assert_eq!(
            t.window(5, now),
            Counts {
                good: 98,
                total: 101
            }
        );
        assert_eq!(
            t.since_start(),
            Counts {
                good: 98,
                total: 101
            }
        );
        // More violations than responses in a window: every response bad, never fewer than 0.
        let mut u = Tracker::new(Tally::Bad, 0.99, 30 * DAY, start);
        u.feed(0, 0, now);
        u.feed(5, 2, now);
        assert_eq!(u.window(5, now), Counts { good: 0, total: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn history_and_burn_down_for_the_charts() {
        let start = Instant::now();
        let mut t = Tracker::new(Tally::Good, 0.9, 3 * DAY, start);
        t.feed(0, 0, start);
        advance(1).await;
        t.feed(10, 10, Instant::now());
        advance(5).await;
        t.feed(15, 20, Instant::now());
        let h = t.history(5, 3, Instant::now());
        assert_eq!(h, vec![None, Some(1.0), Some(0.5)]);
        // Hours: 5 bad of 20 with 2 allowed: 1 - 5/2.
        let b = t.burn_down(Instant::now());
        assert_eq!(b.len(), 1);
        assert!((b[0] - (1.0 - 5.0 / 2.0)).abs() < 1e-9);
        assert_eq!(std::mem::size_of::<Bucket>(), 24);
    }
}
