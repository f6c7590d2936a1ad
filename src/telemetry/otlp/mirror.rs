//! The metrics as the OTLP exporter reads them: every handle the data plane records with is
//! registered twice, with the Prometheus recorder and here, and a recording goes to both.
//!
//! What a recording costs here is what it costs in the Prometheus recorder: a counter or gauge
//! is one more atomic, a histogram sample one more push onto a lock-free bucket. The
//! OpenTelemetry SDK sees none of it on the request path: counters and gauges are observable
//! instruments read when the exporter collects, and histogram samples are handed to the SDK's
//! histograms (its buckets, the same boundaries as Prometheus's) by [`Mirror::drain`], on the
//! export thread, every second and before each collection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key};
use metrics_util::storage::AtomicBucket;
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use crate::metric_table::{metric_def, Kind, BUCKETS};

/// A Prometheus label key as an OpenTelemetry attribute key: the GenAI and error attributes take
/// their dotted semantic-convention names (`gen_ai_request_model` → `gen_ai.request.model`),
/// every other label is its own attribute.
pub fn attribute_key(label: &str) -> &str {
    match label {
        "gen_ai_provider_name" => "gen_ai.provider.name",
        "gen_ai_operation_name" => "gen_ai.operation.name",
        "gen_ai_request_model" => "gen_ai.request.model",
        "gen_ai_token_type" => "gen_ai.token.type",
        "error_type" => "error.type",
        "mcp_method_name" => "mcp.method.name",
        "gen_ai_tool_name" => "gen_ai.tool.name",
        other => other,
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(attribute_key(l.key()).to_owned(), l.value().to_owned()))
        .collect()
}

/// The series of one metric: its attribute sets and their values, shared with the SDK's
/// callback.
#[derive(Debug)]
struct Series<T> {
    by_key: HashMap<Key, Arc<T>>,
    entries: Vec<(Vec<KeyValue>, Arc<T>)>,
}

impl<T: Default> Series<T> {
    fn new() -> Series<T> {
        Series {
            by_key: HashMap::new(),
            entries: Vec::new(),
        }
    }

    fn get(&mut self, key: &Key) -> Arc<T> {
        if let Some(v) = self.by_key.get(key) {
            return v.clone();
        }
        let v = Arc::new(T::default());
        self.by_key.insert(key.clone(), v.clone());
        self.entries.push((attributes(key), v.clone()));
        v
    }
}

type Shared<T> = Arc<Mutex<Series<T>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves nothing half-written that matters here.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
enum Instrument {
    Counter(Shared<AtomicU64>),
    /// `f64` bits.
    Gauge(Shared<AtomicU64>),
    Histogram {
        series: Shared<AtomicBucket<f64>>,
        sdk: opentelemetry::metrics::Histogram<f64>,
    },
}

/// The second reader of every metric; see the module doc.
#[derive(Debug)]
pub struct Mirror {
    meter: Meter,
    /// By Prometheus name.
    instruments: Mutex<HashMap<&'static str, Instrument>>,
    /// When the samples were last drained, in milliseconds since `epoch`.
    drained_at: AtomicU64,
    epoch: std::time::Instant,
}

impl Mirror {
    pub fn new(meter: Meter) -> Mirror {
        Mirror {
            meter,
            instruments: Mutex::new(HashMap::new()),
            drained_at: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Drains if nobody has for `max_age`: the export thread drains every second, but it runs in
    /// the idle scheduling class and a busy sidecar may keep it waiting; the samples must not
    /// pile up meanwhile. Called by the metrics upkeep.
    pub fn drain_if_stale(&self, max_age: std::time::Duration) {
        let age = self
            .now_ms()
            .saturating_sub(self.drained_at.load(Ordering::Relaxed));
        if u128::from(age) >= max_age.as_millis() {
            self.drain();
        }
    }

    /// The OpenTelemetry instrument of a metric, created on its first series.
    fn instrument(&self, name: &str, kind: Kind) -> Option<InstrumentRef> {
        let def = metric_def(name).filter(|d| d.kind == kind)?;
        let mut all = lock(&self.instruments);
        let entry = all.entry(def.name).or_insert_with(|| {
            let (otel, help, unit) = (def.otel, def.help, def.otel_unit);
            match def.kind {
                Kind::Counter => {
                    let series: Shared<AtomicU64> = Arc::new(Mutex::new(Series::new()));
                    let read = series.clone();
                    // Registered with the meter provider, which keeps it.
                    let _ = self
                        .meter
                        .u64_observable_counter(otel)
                        .with_description(help)
                        .with_unit(unit)
                        .with_callback(move |o| {
                            for (attrs, v) in &lock(&read).entries {
                                o.observe(v.load(Ordering::Relaxed), attrs);
                            }
                        })
                        .build();
                    Instrument::Counter(series)
                }
                Kind::Gauge => {
                    let series: Shared<AtomicU64> = Arc::new(Mutex::new(Series::new()));
                    let read = series.clone();
                    let _ = self
                        .meter
                        .f64_observable_gauge(otel)
                        .with_description(help)
                        .with_unit(unit)
                        .with_callback(move |o| {
                            for (attrs, v) in &lock(&read).entries {
                                o.observe(f64::from_bits(v.load(Ordering::Relaxed)), attrs);
                            }
                        })
                        .build();
                    Instrument::Gauge(series)
                }
                Kind::Histogram => {
                    let boundaries = BUCKETS
                        .iter()
                        .find(|(n, _)| *n == def.name)
                        .map(|(_, b)| b.to_vec())
                        .unwrap_or_default();
                    Instrument::Histogram {
                        series: Arc::new(Mutex::new(Series::new())),
                        sdk: self
                            .meter
                            .f64_histogram(otel)
                            .with_description(help)
                            .with_unit(unit)
                            .with_boundaries(boundaries)
                            .build(),
                    }
                }
            }
        });
        Some(match entry {
            Instrument::Counter(s) => InstrumentRef::Atomic(s.clone()),
            Instrument::Gauge(s) => InstrumentRef::Atomic(s.clone()),
            Instrument::Histogram { series, .. } => InstrumentRef::Bucket(series.clone()),
        })
    }

    /// `prom`, and this series' counter, incremented together.
    pub fn counter(&self, key: &Key, prom: Counter) -> Counter {
        match self.instrument(key.name(), Kind::Counter) {
            Some(InstrumentRef::Atomic(s)) => {
                let mirror = lock(&s).get(key);
                Counter::from_arc(Arc::new(Both { prom, mirror }))
            }
            _ => prom,
        }
    }

    pub fn gauge(&self, key: &Key, prom: Gauge) -> Gauge {
        match self.instrument(key.name(), Kind::Gauge) {
            Some(InstrumentRef::Atomic(s)) => {
                let mirror = lock(&s).get(key);
                Gauge::from_arc(Arc::new(Both { prom, mirror }))
            }
            _ => prom,
        }
    }

    pub fn histogram(&self, key: &Key, prom: Histogram) -> Histogram {
        match self.instrument(key.name(), Kind::Histogram) {
            Some(InstrumentRef::Bucket(s)) => {
                let mirror = lock(&s).get(key);
                Histogram::from_arc(Arc::new(Both { prom, mirror }))
            }
            _ => prom,
        }
    }

    /// Hands the histogram samples recorded since the last call to the SDK's histograms. Run
    /// every second (the samples wait in memory until then) and before each collection.
    pub fn drain(&self) {
        self.drained_at.store(self.now_ms(), Ordering::Relaxed);
        let all = lock(&self.instruments);
        for instrument in all.values() {
            if let Instrument::Histogram { series, sdk } = instrument {
                for (attrs, bucket) in &lock(series).entries {
                    bucket.clear_with(|samples| {
                        for v in samples {
                            sdk.record(*v, attrs);
                        }
                    });
                }
            }
        }
    }
}

enum InstrumentRef {
    Atomic(Shared<AtomicU64>),
    Bucket(Shared<AtomicBucket<f64>>),
}

/// A handle that records into the Prometheus recorder's handle and the mirror's.
struct Both<P, M> {
    prom: P,
    mirror: Arc<M>,
}

impl CounterFn for Both<Counter, AtomicU64> {
    fn increment(&self, value: u64) {
        self.prom.increment(value);
        self.mirror.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.prom.absolute(value);
        self.mirror.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Both<Gauge, AtomicU64> {
    fn increment(&self, value: f64) {
        self.prom.increment(value);
        add(&self.mirror, value);
    }

    fn decrement(&self, value: f64) {
        self.prom.decrement(value);
        add(&self.mirror, -value);
    }

    fn set(&self, value: f64) {
        self.prom.set(value);
        self.mirror.store(value.to_bits(), Ordering::Relaxed);
    }
}

fn add(bits: &AtomicU64, delta: f64) {
    let _ = bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some((f64::from_bits(b) + delta).to_bits())
    });
}

impl HistogramFn for Both<Histogram, AtomicBucket<f64>> {
    fn record(&self, value: f64) {
        self.prom.record(value);
        self.mirror.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{label, Telemetry, AGENT_REQUESTS_TOTAL, AGENT_RESPONSE_SECONDS};
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::reader::MetricReader;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

    use crate::telemetry::otlp::SharedReader;

    /// `(counter value, histogram sample count)` as the SDK would export them now.
    fn collected(reader: &SharedReader) -> (Option<u64>, Option<u64>) {
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).unwrap();
        let (mut counter, mut samples) = (None, None);
        for m in rm.scope_metrics().flat_map(|s| s.metrics()) {
            match (m.name(), m.data()) {
                ("agent.requests", AggregatedMetrics::U64(MetricData::Sum(s))) => {
                    counter = s.data_points().map(|p| p.value()).max();
                }
                ("agent.response", AggregatedMetrics::F64(MetricData::Histogram(h))) => {
                    samples = h.data_points().map(|p| p.count()).max();
                }
                _ => {}
            }
        }
        (counter, samples)
    }

    #[test]
    fn handles_record_into_both_and_samples_wait_for_a_drain() {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
        let mirror = Arc::new(Mirror::new(meter));
        let t = Telemetry::with_mirror(Some(mirror.clone()));
        let labels = || vec![label("agent", "a")];
        let c = t.counter(AGENT_REQUESTS_TOTAL, labels());
        // The same series registered twice is one series, on both sides.
        let again = t.counter(AGENT_REQUESTS_TOTAL, labels());
        let h = t.histogram(AGENT_RESPONSE_SECONDS, labels());
        c.increment(2);
        again.increment(1);
        for v in [0.1, 0.2, 0.3] {
            h.record(v);
        }
        assert!(t.render().contains("agent_requests_total{agent=\"a\"} 3"));
        // Counters are read when collected; histogram samples only once drained.
        assert_eq!(collected(&reader), (Some(3), None));
        mirror.drain_if_stale(std::time::Duration::from_secs(3600));
        assert_eq!(collected(&reader), (Some(3), None), "drained, yet fresh");
        mirror.drain_if_stale(std::time::Duration::ZERO);
        assert_eq!(collected(&reader), (Some(3), Some(3)));
        // Drained once: nothing counted twice.
        mirror.drain();
        assert_eq!(collected(&reader), (Some(3), Some(3)));
    }
}
