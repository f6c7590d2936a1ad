//! The Prometheus histograms, bucketed when recorded.
//!
//! The exporter's own histograms keep every observation as a raw sample until an upkeep or a
//! scrape drains them into buckets. On the hot path that cost a push into a lock-free sample
//! list, and off it a burst: every five seconds the upkeep sorted five seconds of samples into
//! their buckets on the thread that serves requests (measured with callgrind on a chat
//! completion: about 2,100 instructions a request, paid in one stall). Here a recording finds its
//! bucket among the metric's boundaries and adds to three atomics (bucket, count by bucket, sum);
//! a scrape reads them; there is nothing to drain.
//!
//! The exposition is the exporter's own (its `formatting` functions): `_bucket` lines with `le`
//! cumulative, then `+Inf`, `_sum` and `_count`, labels in the order they were registered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Histogram, HistogramFn, Key};
use metrics_exporter_prometheus::formatting::{
    key_to_parts, write_help_line, write_metric_line, write_type_line,
};

/// One series: its observations by bucket and their sum.
#[derive(Debug)]
struct Series {
    bounds: &'static [f64],
    /// Per boundary, the observations at most that boundary and above the one before; the last
    /// slot: those above every boundary (and NaN).
    counts: Box<[AtomicU64]>,
    /// The bits of an `f64`.
    sum: AtomicU64,
}

impl Series {
    fn new(bounds: &'static [f64]) -> Series {
        Series {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            // `0.0`'s bits are all zero.
            sum: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        // The first boundary at or above `value` (`le` is "less or equal"); NaN is above all.
        let slot = if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|b| *b < value)
        };
        if let Some(count) = self.counts.get(slot) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// A registered series with its label pairs formatted once.
#[derive(Debug, Clone)]
struct Registered {
    labels: Arc<[String]>,
    series: Arc<Series>,
}

/// The histograms of one registry, by metric name (rendered in name order) and key.
#[derive(Debug, Default)]
pub(super) struct Histograms {
    by_name: Mutex<BTreeMap<String, Family>>,
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    /// In the order registered; `index` finds a key's.
    series: Vec<Registered>,
    index: HashMap<Key, usize>,
}

impl Histograms {
    /// The series of `key` (the same one each time the key is registered again, as a reload
    /// does), with these boundaries.
    pub(super) fn register(
        &self,
        key: &Key,
        bounds: &'static [f64],
        help: &'static str,
    ) -> Histogram {
        let (name, labels) = key_to_parts(key, None);
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let family = by_name.entry(name).or_default();
        family.help = help;
        if let Some(&i) = family.index.get(key) {
            return Histogram::from_arc(family.series[i].series.clone());
        }
        let series = Arc::new(Series::new(bounds));
        family.index.insert(key.clone(), family.series.len());
        family.series.push(Registered {
            labels: labels.into(),
            series: series.clone(),
        });
        Histogram::from_arc(series)
    }

    /// Appends every histogram's exposition to `out`. The registry is locked only to copy its
    /// handles: a request registering a new series (a model seen the first time) does not wait
    /// for the text to be written.
    pub(super) fn render(&self, out: &mut String) {
        let families: Vec<(String, &'static str, Vec<Registered>)> = {
            let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
            by_name
                .iter()
                .map(|(name, f)| (name.clone(), f.help, f.series.clone()))
                .collect()
        };
        for (name, help, series) in &families {
            if !help.is_empty() {
                write_help_line(out, name, help);
            }
            write_type_line(out, name, "histogram");
            for r in series {
                write_series(out, name, &r.labels, &r.series);
            }
            out.push('\n');
        }
    }
}

/// One series' `_bucket` lines (cumulative, then `+Inf`), `_sum` and `_count`.
fn write_series(out: &mut String, name: &str, labels: &[String], s: &Series) {
    let mut cumulative = 0u64;
    for (bound, count) in s.bounds.iter().zip(s.counts.iter()) {
        cumulative += count.load(Ordering::Relaxed);
        write_metric_line(
            out,
            name,
            Some("bucket"),
            labels,
            Some(("le", *bound)),
            cumulative,
            None,
        );
    }
    let over = s.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
    let total = cumulative + over;
    write_metric_line(
        out,
        name,
        Some("bucket"),
        labels,
        Some(("le", "+Inf")),
        total,
        None,
    );
    let sum = f64::from_bits(s.sum.load(Ordering::Relaxed));
    write_metric_line::<&str, f64>(out, name, Some("sum"), labels, None, sum, None);
    write_metric_line::<&str, u64>(out, name, Some("count"), labels, None, total, None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use metrics::Label;

    const BOUNDS: &[f64] = &[0.1, 0.5, 1.0];

    fn key(route: &str) -> Key {
        Key::from_parts("req_seconds", vec![Label::new("route", route.to_owned())])
    }

    #[test]
    fn observations_land_in_their_bucket_cumulated_when_rendered() {
        let h = Histograms::default();
        let a = h.register(&key("a"), BOUNDS, "Request time.");
        // On a boundary counts in that bucket (`le`); above every boundary only in +Inf.
        for v in [0.05, 0.1, 0.3, 1.0, 7.0, f64::NAN] {
            a.record(v);
        }
        let mut out = String::new();
        h.render(&mut out);
        let expected = "# HELP req_seconds Request time.\n\
            # TYPE req_seconds histogram\n\
            req_seconds_bucket{route=\"a\",le=\"0.1\"} 2\n\
            req_seconds_bucket{route=\"a\",le=\"0.5\"} 3\n\
            req_seconds_bucket{route=\"a\",le=\"1\"} 4\n\
            req_seconds_bucket{route=\"a\",le=\"+Inf\"} 6\n\
            req_seconds_sum{route=\"a\"} NaN\n\
            req_seconds_count{route=\"a\"} 6\n\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn a_key_registered_again_keeps_its_series() {
        let h = Histograms::default();
        h.register(&key("a"), BOUNDS, "").record(0.2);
        h.register(&key("b"), BOUNDS, "").record(0.2);
        h.register(&key("a"), BOUNDS, "").record(0.7);
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("req_seconds_count{route=\"a\"} 2\n"), "{out}");
        assert!(
            out.contains("req_seconds_sum{route=\"a\"} 0.8999999999999999\n"),
            "{out}"
        );
        assert!(out.contains("req_seconds_count{route=\"b\"} 1\n"), "{out}");
        // One family: its TYPE line once.
        assert_eq!(out.matches("# TYPE req_seconds histogram").count(), 1);
    }

    /// The same observations give the same text as the exporter's own histograms.
    #[test]
    fn the_exposition_is_the_exporters() {
        use metrics::Recorder;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("req_seconds".into()),
                BOUNDS,
            )
            .unwrap()
            .build_recorder();
        static META: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        let theirs = recorder.register_histogram(&key("x\"y"), &META);
        let h = Histograms::default();
        let ours = h.register(&key("x\"y"), BOUNDS, "");
        for v in [0.01, 0.5, 0.75, 2.0, 1e9] {
            theirs.record(v);
            ours.record(v);
        }
        let mut out = String::new();
        h.render(&mut out);
        assert_eq!(out, recorder.handle().render());
    }
}
