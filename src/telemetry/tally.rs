//! Typed running totals of the series the local SLO view reads: every handle registered for one
//! of [`TALLIED`] records here too, so that the SLO engine sums numbers, not the exposition text.
//! A registry made with [`Tallies::every_metric`] keeps every metric so (gauges and histogram sums
//! too), for a reader in the same process that wants more than the SLOs do: the demo's summary.
//!
//! A recording costs one more atomic add (and for a histogram, finding its bucket among a few
//! dozen boundaries); reading walks only the tallied series, once a second, without touching the
//! Prometheus recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key};

use crate::metric_table::{
    AGENT_REQUESTS_TOTAL, AGENT_RESPONSES_TOTAL, AGENT_RESPONSE_SECONDS, AGENT_TASKS_COMPLETED,
    AGENT_TASKS_STARTED, AGENT_TOOL_CALLS_TOTAL, BUCKETS, CORRECTNESS_VERDICTS_TOTAL,
    GEN_AI_TIME_TO_FIRST_CHUNK, MCP_OPERATION_DURATION, METRICS, SAFETY_VIOLATIONS_TOTAL,
    UPSTREAM_REQUESTS_TOTAL,
};

/// The metrics an SLO can be computed from (see the `slos:` SLI kinds, and the dependency SLOs).
pub(super) const TALLIED: &[&str] = &[
    UPSTREAM_REQUESTS_TOTAL,
    CORRECTNESS_VERDICTS_TOTAL,
    AGENT_REQUESTS_TOTAL,
    AGENT_TASKS_STARTED,
    AGENT_TASKS_COMPLETED,
    AGENT_RESPONSES_TOTAL,
    SAFETY_VIOLATIONS_TOTAL,
    AGENT_RESPONSE_SECONDS,
    GEN_AI_TIME_TO_FIRST_CHUNK,
    AGENT_TOOL_CALLS_TOTAL,
    MCP_OPERATION_DURATION,
];

/// One series' running total: a counter's value, a gauge's, or a histogram's observations by
/// bucket (and their sum, where every metric is kept).
#[derive(Debug)]
struct Series {
    /// A counter's value; a gauge's, as the bits of an `f64`.
    count: AtomicU64,
    /// Per bucket boundary (a histogram), the observations at most that boundary and above the
    /// one before it; the last slot holds those above every boundary.
    buckets: Box<[AtomicU64]>,
    bounds: &'static [f64],
    /// A histogram's sum of observations (the bits of an `f64`), kept only by a registry of
    /// every metric: the SLOs need none, and it costs a compare-and-swap a recording.
    sum: Option<AtomicU64>,
}

impl Series {
    fn new(bounds: &'static [f64], sums: bool) -> Series {
        let slots = if bounds.is_empty() {
            0
        } else {
            bounds.len() + 1
        };
        Series {
            count: AtomicU64::new(0),
            buckets: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            // `0.0`'s bits are all zero.
            sum: sums.then(|| AtomicU64::new(0)),
        }
    }

    /// Observations at most `le` (a bucket boundary), and all of them (every bucket's, the one
    /// past the last boundary included: a histogram records one atomic add, not two).
    fn below(&self, le: f64) -> Option<(u64, u64)> {
        let last = self.bounds.iter().position(|b| (b - le).abs() < 1e-9)?;
        let count = |c: &[AtomicU64]| c.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
        Some((count(&self.buckets[..=last]), count(&self.buckets)))
    }
}

/// Adds `delta` to the `f64` whose bits `cell` holds.
fn add_f64(cell: &AtomicU64, delta: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + delta).to_bits())
    });
}

fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Ordering::Relaxed))
}

/// The tallied series of one registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tallies {
    series: Arc<Mutex<HashMap<Key, Arc<Series>>>>,
    /// Every metric is kept, not only [`TALLIED`].
    every: bool,
}

impl Default for Tallies {
    /// The series the SLOs are computed from.
    fn default() -> Tallies {
        Tallies {
            series: Arc::default(),
            every: false,
        }
    }
}

impl Tallies {
    /// Every metric kept, gauges and histogram sums too: for a reader in the process that shows
    /// more than the SLOs (the demo's summary). Each recording of every handle costs its atomic
    /// add here.
    pub fn every_metric() -> Tallies {
        Tallies {
            series: Arc::default(),
            every: true,
        }
    }

    fn kept(&self, name: &str) -> bool {
        TALLIED.contains(&name) || (self.every && METRICS.iter().any(|m| m.name == name))
    }

    fn series(&self, key: &Key, bounds: &'static [f64]) -> Arc<Series> {
        let mut map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Series::new(bounds, self.every)))
            .clone()
    }

    /// `prom`, also counted here when its metric is tallied.
    pub fn counter(&self, key: &Key, prom: Counter) -> Counter {
        if !self.kept(key.name()) {
            return prom;
        }
        let series = self.series(key, &[]);
        Counter::from_arc(Arc::new(Tallied { prom, series }))
    }

    /// `prom`, also counted here by bucket when its metric is tallied.
    pub fn histogram(&self, key: &Key, prom: Histogram) -> Histogram {
        if !self.kept(key.name()) {
            return prom;
        }
        let bounds = BUCKETS
            .iter()
            .find(|(name, _)| *name == key.name())
            .map_or(&[][..], |(_, b)| *b);
        let series = self.series(key, bounds);
        Histogram::from_arc(Arc::new(Tallied { prom, series }))
    }

    /// `prom`, also kept here where every metric is.
    pub fn gauge(&self, key: &Key, prom: Gauge) -> Gauge {
        if !self.every || !self.kept(key.name()) {
            return prom;
        }
        let series = self.series(key, &[]);
        Gauge::from_arc(Arc::new(Tallied { prom, series }))
    }

    /// Folds `f` over the series called `name` whose labels `matching` accepts.
    fn fold<T>(
        &self,
        name: &str,
        matching: impl Fn(&Key) -> bool,
        init: T,
        mut f: impl FnMut(T, &Series) -> T,
    ) -> T {
        let map = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(k, _)| k.name() == name && matching(k))
            .fold(init, |acc, (_, s)| f(acc, s))
    }

    /// The sum of the counters called `name` whose labels `matching` accepts.
    pub fn sum(&self, name: &str, matching: impl Fn(&Key) -> bool) -> u64 {
        self.fold(name, matching, 0, |n, s| {
            n + s.count.load(Ordering::Relaxed)
        })
    }

    /// The sum of the gauges called `name` whose labels `matching` accepts (kept only by a
    /// registry of every metric).
    pub fn gauge_sum(&self, name: &str, matching: impl Fn(&Key) -> bool) -> f64 {
        self.fold(name, matching, 0.0, |n, s| n + load_f64(&s.count))
    }

    /// Over the histograms called `name` whose labels `matching` accepts: the sum of their
    /// observations (kept only by a registry of every metric).
    pub fn observed_sum(&self, name: &str, matching: impl Fn(&Key) -> bool) -> f64 {
        self.fold(name, matching, 0.0, |n, s| {
            n + s.sum.as_ref().map_or(0.0, load_f64)
        })
    }

    /// Over the histograms called `name` whose labels `matching` accepts: the observations at
    /// most `le` (one of its bucket boundaries), and all of them.
    pub fn below(&self, name: &str, le: f64, matching: impl Fn(&Key) -> bool) -> (u64, u64) {
        self.fold(name, matching, (0, 0), |(b, t), s| match s.below(le) {
            Some((sb, st)) => (b + sb, t + st),
            None => (b, t),
        })
    }

    /// Over the histograms called `name` whose labels `matching` accepts: the observations at
    /// most each bucket boundary, as Prometheus' cumulative `le` buckets (`+Inf` last).
    pub fn cumulative(&self, name: &str, matching: impl Fn(&Key) -> bool) -> Vec<(f64, u64)> {
        let bounds = BUCKETS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, b)| *b);
        let les = bounds.iter().copied().chain([f64::INFINITY]);
        let mut counts = vec![0u64; bounds.len() + 1];
        self.fold(name, matching, (), |(), s| {
            for (c, b) in counts.iter_mut().zip(s.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
        });
        let mut total = 0;
        les.zip(counts)
            .map(|(le, c)| {
                total += c;
                (le, total)
            })
            .collect()
    }
}

/// Whether `key` has the label `name` with `value`.
pub fn has_label(key: &Key, name: &str, value: &str) -> bool {
    key.labels().any(|l| l.key() == name && l.value() == value)
}

/// A handle recording into the Prometheus recorder and into its tallied series.
struct Tallied<P> {
    prom: P,
    series: Arc<Series>,
}

impl CounterFn for Tallied<Counter> {
    fn increment(&self, value: u64) {
        self.prom.increment(value);
        self.series.count.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.prom.absolute(value);
        self.series.count.fetch_max(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Tallied<Histogram> {
    fn record(&self, value: f64) {
        self.prom.record(value);
        let s = &*self.series;
        let slot = s.bounds.partition_point(|b| *b < value);
        if let Some(c) = s.buckets.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sum) = &s.sum {
            add_f64(sum, value);
        }
    }
}

impl GaugeFn for Tallied<Gauge> {
    fn increment(&self, value: f64) {
        self.prom.increment(value);
        add_f64(&self.series.count, value);
    }

    fn decrement(&self, value: f64) {
        self.prom.decrement(value);
        add_f64(&self.series.count, -value);
    }

    fn set(&self, value: f64) {
        self.prom.set(value);
        self.series.count.store(value.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Label;

    fn key(name: &'static str, agent: &'static str) -> Key {
        Key::from_parts(name, vec![Label::new("agent", agent)])
    }

    #[test]
    fn counters_and_histograms_are_summed_by_label() {
        let t = Tallies::default();
        let a = t.counter(&key(AGENT_REQUESTS_TOTAL, "a"), Counter::noop());
        let b = t.counter(&key(AGENT_REQUESTS_TOTAL, "b"), Counter::noop());
        a.increment(3);
        b.increment(5);
        // The same series registered again shares its total.
        t.counter(&key(AGENT_REQUESTS_TOTAL, "a"), Counter::noop())
            .increment(1);
        assert_eq!(
            t.sum(AGENT_REQUESTS_TOTAL, |k| has_label(k, "agent", "a")),
            4
        );
        assert_eq!(t.sum(AGENT_REQUESTS_TOTAL, |_| true), 9);
        let h = t.histogram(&key(AGENT_RESPONSE_SECONDS, "a"), Histogram::noop());
        for v in [0.001, 0.25, 0.3, 1.0, 999.0] {
            h.record(v);
        }
        let all = |_: &Key| true;
        // `le` is inclusive, as in Prometheus.
        assert_eq!(t.below(AGENT_RESPONSE_SECONDS, 0.25, all), (2, 5));
        assert_eq!(t.below(AGENT_RESPONSE_SECONDS, 1.0, all), (4, 5));
        // Not a boundary: nothing to say.
        assert_eq!(t.below(AGENT_RESPONSE_SECONDS, 0.3, all), (0, 0));
    }

    #[test]
    fn every_metric_keeps_gauges_sums_and_buckets() {
        use crate::metric_table::{CIRCUIT_STATE, FALLBACKS_TOTAL, GEN_AI_TOKEN_USAGE};
        let t = Tallies::every_metric();
        t.counter(&key(FALLBACKS_TOTAL, "a"), Counter::noop())
            .increment(2);
        assert_eq!(t.sum(FALLBACKS_TOTAL, |_| true), 2);
        let g = t.gauge(&key(CIRCUIT_STATE, "a"), Gauge::noop());
        g.set(2.0);
        g.increment(0.5);
        g.decrement(1.0);
        assert_eq!(t.gauge_sum(CIRCUIT_STATE, |_| true), 1.5);
        let h = t.histogram(&key(GEN_AI_TOKEN_USAGE, "a"), Histogram::noop());
        for v in [3.0, 40.0, 1e12] {
            h.record(v);
        }
        assert_eq!(
            t.observed_sum(GEN_AI_TOKEN_USAGE, |_| true),
            3.0 + 40.0 + 1e12
        );
        let cumulative = t.cumulative(GEN_AI_TOKEN_USAGE, |_| true);
        // Cumulative and ending at `+Inf` with every observation; the largest is past every
        // boundary.
        assert_eq!(cumulative.last(), Some(&(f64::INFINITY, 3)));
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(cumulative[cumulative.len() - 2].1, 2);
        // The SLOs' registry keeps no gauge, and no sum.
        let slo = Tallies::default();
        slo.gauge(&key(CIRCUIT_STATE, "a"), Gauge::noop()).set(1.0);
        assert_eq!(slo.gauge_sum(CIRCUIT_STATE, |_| true), 0.0);
        slo.histogram(&key(GEN_AI_TIME_TO_FIRST_CHUNK, "a"), Histogram::noop())
            .record(0.5);
        assert_eq!(slo.observed_sum(GEN_AI_TIME_TO_FIRST_CHUNK, |_| true), 0.0);
        assert_eq!(
            slo.cumulative(GEN_AI_TIME_TO_FIRST_CHUNK, |_| true).last(),
            Some(&(f64::INFINITY, 1))
        );
    }

    #[test]
    fn other_metrics_are_not_tallied() {
        let t = Tallies::default();
        let c = t.counter(&key("sloguard_fallbacks_total", "a"), Counter::noop());
        c.increment(1);
        assert_eq!(t.sum("sloguard_fallbacks_total", |_| true), 0);
    }
}
