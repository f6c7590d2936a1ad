//! Typed running totals of the series the local SLO view reads: every handle registered for one
//! of [`TALLIED`] records here too, so that the SLO engine sums numbers, not the exposition text.
//!
//! A recording costs one more atomic add (and for a histogram, finding its bucket among a few
//! dozen boundaries); reading walks only the tallied series, once a second, without touching the
//! Prometheus recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, CounterFn, Histogram, HistogramFn, Key};

use crate::metric_table::{
    AGENT_REQUESTS_TOTAL, AGENT_RESPONSES_TOTAL, AGENT_RESPONSE_SECONDS, AGENT_TASKS_COMPLETED,
    AGENT_TASKS_STARTED, BUCKETS, GEN_AI_TIME_TO_FIRST_CHUNK, SAFETY_VIOLATIONS_TOTAL,
};

/// The metrics an SLO can be computed from (see the `slos:` SLI kinds).
pub(super) const TALLIED: &[&str] = &[
    AGENT_REQUESTS_TOTAL,
    AGENT_TASKS_STARTED,
    AGENT_TASKS_COMPLETED,
    AGENT_RESPONSES_TOTAL,
    SAFETY_VIOLATIONS_TOTAL,
    AGENT_RESPONSE_SECONDS,
    GEN_AI_TIME_TO_FIRST_CHUNK,
];

/// One series' running total: a counter's value, or a histogram's observations by bucket.
#[derive(Debug)]
struct Series {
    /// A counter's value (a histogram's is the sum of its buckets).
    count: AtomicU64,
    /// Per bucket boundary (a histogram), the observations at most that boundary and above the
    /// one before it; the last slot holds those above every boundary.
    buckets: Box<[AtomicU64]>,
    bounds: &'static [f64],
}

impl Series {
    fn new(bounds: &'static [f64]) -> Series {
        let slots = if bounds.is_empty() {
            0
        } else {
            bounds.len() + 1
        };
        Series {
            count: AtomicU64::new(0),
            buckets: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            bounds,
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

/// The tallied series of one registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tallies(Arc<Mutex<HashMap<Key, Arc<Series>>>>);

impl Tallies {
    fn series(&self, key: &Key, bounds: &'static [f64]) -> Arc<Series> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Series::new(bounds)))
            .clone()
    }

    /// `prom`, also counted here when its metric is tallied.
    pub fn counter(&self, key: &Key, prom: Counter) -> Counter {
        if !TALLIED.contains(&key.name()) {
            return prom;
        }
        let series = self.series(key, &[]);
        Counter::from_arc(Arc::new(Tallied { prom, series }))
    }

    /// `prom`, also counted here by bucket when its metric is tallied.
    pub fn histogram(&self, key: &Key, prom: Histogram) -> Histogram {
        if !TALLIED.contains(&key.name()) {
            return prom;
        }
        let bounds = BUCKETS
            .iter()
            .find(|(name, _)| *name == key.name())
            .map_or(&[][..], |(_, b)| *b);
        let series = self.series(key, bounds);
        Histogram::from_arc(Arc::new(Tallied { prom, series }))
    }

    /// The sum of the counters called `name` whose labels `matching` accepts.
    pub fn sum(&self, name: &str, matching: impl Fn(&Key) -> bool) -> u64 {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(k, _)| k.name() == name && matching(k))
            .map(|(_, s)| s.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Over the histograms called `name` whose labels `matching` accepts: the observations at
    /// most `le` (one of its bucket boundaries), and all of them.
    pub fn below(&self, name: &str, le: f64, matching: impl Fn(&Key) -> bool) -> (u64, u64) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(k, _)| k.name() == name && matching(k))
            .filter_map(|(_, s)| s.below(le))
            .fold((0, 0), |(b, t), (sb, st)| (b + sb, t + st))
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
    fn other_metrics_are_not_tallied() {
        let t = Tallies::default();
        let c = t.counter(&key("sloguard_fallbacks_total", "a"), Counter::noop());
        c.increment(1);
        assert_eq!(t.sum("sloguard_fallbacks_total", |_| true), 0);
    }
}
