//! OTLP export (`otlp:`): the metrics every `interval`, and request spans in batches, to an
//! OpenTelemetry Collector over gRPC or HTTP/protobuf (`opentelemetry-otlp`'s exporters).
//!
//! Nothing here is on the request path. Metrics are read from the [`Mirror`] when the export
//! loop collects; spans arrive through a bounded queue that a request only ever `try_send`s to
//! (see [`crate::telemetry::trace`]). Each export is bounded by `otlp.timeout`; one that fails or
//! times out is given up (no retry queue to grow while a collector is down) and what it carried
//! is counted in `sloguard_otlp_dropped_total{signal}`: metric points (cumulative values come
//! back whole with the next push; delta ones are lost) or spans. At shutdown both loops export
//! once more, within [`FLUSH`].

pub mod mirror;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::resource::{Resource, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

pub use mirror::Mirror;

use super::trace::Tracer;
use super::{label, LogLimiter, Telemetry, OTLP_DROPPED_TOTAL};
use crate::config::{OtlpConfig, OtlpProtocol, OtlpTemporality};

/// How long the last export of each signal may take at shutdown.
pub const FLUSH: Duration = Duration::from_secs(5);
/// Spans sent in one export.
const SPAN_BATCH: usize = 512;
/// A span waits at most this long in the queue before its batch goes, however small.
const SPAN_BATCH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("otlp: {0}")]
pub struct OtlpError(String);

/// The Kubernetes Downward API variables read into resource attributes (set them in the pod spec
/// with `fieldRef`; `deploy/` does).
pub const DOWNWARD_API: &[(&str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_NODE_NAME", "k8s.node.name"),
];

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource attributes of this sidecar, from the pod's environment (never from requests):
/// `service.name` `sloguard`, `service.version`, `sloguard.agent`; then the Downward API
/// variables of [`DOWNWARD_API`]; then `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`,
/// percent-encoded values); then `OTEL_SERVICE_NAME` — each overriding what came before.
pub fn resource_attributes(
    agent: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    attrs.insert("service.name".to_owned(), "sloguard".to_owned());
    attrs.insert(
        "service.version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    attrs.insert("sloguard.agent".to_owned(), agent.to_owned());
    for (var, key) in DOWNWARD_API {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            attrs.insert((*key).to_owned(), v);
        }
    }
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in list.split(',') {
            // A pair without `=` or with an empty key is skipped, as the specification says.
            if let Some((k, v)) = pair.split_once('=') {
                let k = percent_decode(k.trim());
                if !k.is_empty() {
                    attrs.insert(k, percent_decode(v.trim()));
                }
            }
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()) {
        attrs.insert("service.name".to_owned(), name);
    }
    attrs
}

/// The manual reader, shared between the meter provider (which registers with it) and the
/// export loop (which collects from it).
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

struct MetricsExport {
    /// Keeps the instruments' pipeline alive.
    _provider: SdkMeterProvider,
    reader: SharedReader,
    exporter: MetricExporter,
    mirror: Arc<Mirror>,
}

struct TracesExport {
    exporter: SpanExporter,
    queue: mpsc::Receiver<SpanData>,
}

/// The export pipelines built from `otlp:`, before they run.
pub struct Otlp {
    config: OtlpConfig,
    metrics: Option<MetricsExport>,
    traces: Option<(TracesExport, mpsc::Sender<SpanData>)>,
}

fn endpoint(config: &OtlpConfig, signal: &str) -> String {
    let base = config.endpoint.trim_end_matches('/');
    match config.protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        // The HTTP exporter takes the signal's full URL.
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/{signal}"),
    }
}

fn build_error(what: &str, e: impl std::fmt::Display) -> OtlpError {
    OtlpError(format!("cannot build the {what} exporter: {e}"))
}

impl Otlp {
    /// Builds the exporters (no connection is made until the first export). Within a runtime.
    pub fn build(
        config: &OtlpConfig,
        agent: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Otlp, OtlpError> {
        let attrs = resource_attributes(agent, env);
        let resource = Resource::builder_empty()
            .with_detectors(&[Box::new(TelemetryResourceDetector)])
            .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
            .build();
        let timeout = config.timeout.0;
        let temporality = match config.temporality {
            OtlpTemporality::Cumulative => Temporality::Cumulative,
            OtlpTemporality::Delta => Temporality::Delta,
        };
        let metrics = if config.metrics {
            let builder = MetricExporter::builder().with_temporality(temporality);
            let exporter = match config.protocol {
                OtlpProtocol::Grpc => builder
                    .with_tonic()
                    .with_endpoint(endpoint(config, "metrics"))
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::HttpProtobuf => builder
                    .with_http()
                    .with_endpoint(endpoint(config, "metrics"))
                    .with_timeout(timeout)
                    .build(),
            }
            .map_err(|e| build_error("metrics", e))?;
            let reader = SharedReader(Arc::new(
                ManualReader::builder()
                    .with_temporality(temporality)
                    .build(),
            ));
            let provider = SdkMeterProvider::builder()
                .with_reader(reader.clone())
                .with_resource(resource.clone())
                .build();
            let meter = opentelemetry::metrics::MeterProvider::meter_with_scope(
                &provider,
                opentelemetry::InstrumentationScope::builder("sloguard")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            );
            Some(MetricsExport {
                _provider: provider,
                reader,
                exporter,
                mirror: Arc::new(Mirror::new(meter)),
            })
        } else {
            None
        };
        let traces = match &config.traces {
            Some(t) => {
                let mut exporter = match config.protocol {
                    OtlpProtocol::Grpc => SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint(config, "traces"))
                        .with_timeout(timeout)
                        .build(),
                    OtlpProtocol::HttpProtobuf => SpanExporter::builder()
                        .with_http()
                        .with_endpoint(endpoint(config, "traces"))
                        .with_timeout(timeout)
                        .build(),
                }
                .map_err(|e| build_error("traces", e))?;
                exporter.set_resource(&resource);
                let (tx, rx) = mpsc::channel(t.max_queue);
                Some((
                    TracesExport {
                        exporter,
                        queue: rx,
                    },
                    tx,
                ))
            }
            None => None,
        };
        Ok(Otlp {
            config: config.clone(),
            metrics,
            traces,
        })
    }

    /// What the [`Telemetry`] registers every handle with, besides Prometheus.
    pub fn mirror(&self) -> Option<Arc<Mirror>> {
        self.metrics.as_ref().map(|m| m.mirror.clone())
    }

    /// Starts the export loops; returns the tracer requests start their spans with (with
    /// `otlp.traces`), and the running exports.
    pub fn start(
        self,
        telemetry: &Telemetry,
        agent: &str,
        restarts: &dyn Fn(&str) -> Counter,
    ) -> (Option<Arc<Tracer>>, Exports) {
        let dropped = |signal: &str| {
            telemetry.counter(
                OTLP_DROPPED_TOTAL,
                vec![label("agent", agent), label("signal", signal)],
            )
        };
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let timeout = self.config.timeout.0;
        if let Some(m) = self.metrics {
            let m = Arc::new(m);
            let dropped = dropped("metrics");
            let interval = self.config.interval.0;
            let stop = stop.clone();
            tasks.push(crate::background::supervise(
                "otlp_metrics",
                restarts("otlp_metrics"),
                move || {
                    export_metrics(
                        m.clone(),
                        interval,
                        timeout,
                        dropped.clone(),
                        stop.subscribe(),
                    )
                },
            ));
        }
        let mut tracer = None;
        if let (Some((t, tx)), Some(traces)) = (self.traces, &self.config.traces) {
            let dropped = dropped("traces");
            tracer = Some(Arc::new(Tracer::new(
                traces.sample_ratio,
                tx,
                dropped.clone(),
            )));
            let t = Arc::new(Mutex::new(t));
            let stop = stop.clone();
            tasks.push(crate::background::supervise(
                "otlp_traces",
                restarts("otlp_traces"),
                move || export_spans(t.clone(), timeout, dropped.clone(), stop.subscribe()),
            ));
        }
        (tracer, Exports { stop, tasks })
    }
}

/// The running export loops.
pub struct Exports {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Exports {
    /// Exports what is left (the metrics once more, the queued spans) and stops, within `within`.
    pub async fn flush(self, within: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + within;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    "otlp: the last export did not finish in time at shutdown; given up"
                );
                task.abort();
            }
        }
    }
}

fn points(rm: &ResourceMetrics) -> u64 {
    fn of<T>(d: &MetricData<T>) -> usize {
        match d {
            MetricData::Gauge(g) => g.data_points().count(),
            MetricData::Sum(s) => s.data_points().count(),
            MetricData::Histogram(h) => h.data_points().count(),
            MetricData::ExponentialHistogram(h) => h.data_points().count(),
        }
    }
    rm.scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => of(d),
            AggregatedMetrics::U64(d) => of(d),
            AggregatedMetrics::I64(d) => of(d),
        } as u64)
        .sum()
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn export_metrics(
    m: Arc<MetricsExport>,
    interval: Duration,
    timeout: Duration,
    dropped: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let log = LogLimiter::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = stopped(&stop)
            || tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
        // Samples recorded since the last drain reach the SDK's histograms, then everything is
        // read at once.
        m.mirror.drain();
        let mut rm = ResourceMetrics::default();
        if let Err(e) = m.reader.collect(&mut rm) {
            tracing::warn!(error = %e, "otlp: could not collect the metrics");
        } else {
            let n = points(&rm);
            let sent = tokio::time::timeout(timeout, m.exporter.export(&rm)).await;
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            if let Some(why) = failure {
                dropped.increment(n);
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(error = %why, points = n, suppressed, "otlp: metrics export failed; dropped");
                }
            }
        }
        if last {
            return;
        }
    }
}

async fn export_spans(
    t: Arc<Mutex<TracesExport>>,
    timeout: Duration,
    dropped: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let log = LogLimiter::new();
    let mut t = t.lock().await;
    let TracesExport { exporter, queue } = &mut *t;
    let mut batch = Vec::with_capacity(SPAN_BATCH);
    loop {
        let mut last = stopped(&stop);
        if !last {
            // Wait for a first span, then up to SPAN_BATCH_WAIT for the batch to fill.
            tokio::select! {
                got = queue.recv_many(&mut batch, SPAN_BATCH) => last = got == 0,
                _ = stop.changed() => last = true,
            }
            if !last && batch.len() < SPAN_BATCH {
                let until = tokio::time::Instant::now() + SPAN_BATCH_WAIT;
                while batch.len() < SPAN_BATCH {
                    let room = SPAN_BATCH - batch.len();
                    tokio::select! {
                        got = queue.recv_many(&mut batch, room) => if got == 0 { break },
                        _ = tokio::time::sleep_until(until) => break,
                        _ = stop.changed() => { last = true; break },
                    }
                }
            }
        }
        if last {
            // What is queued now goes, in batches; nothing waits for more.
            while batch.len() < SPAN_BATCH {
                match queue.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(SPAN_BATCH));
            let failure = match tokio::time::timeout(timeout, exporter.export(spans)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            if let Some(why) = failure {
                dropped.increment(n);
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(error = %why, spans = n, suppressed, "otlp: span export failed; dropped");
                }
            }
            if last {
                continue;
            }
        } else if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn resource_attributes_come_from_the_pod_environment_in_order() {
        let a = resource_attributes("support", &env(&[]));
        assert_eq!(a["service.name"], "sloguard");
        assert_eq!(a["sloguard.agent"], "support");
        let a = resource_attributes(
            "support",
            &env(&[
                ("K8S_POD_NAME", "support-7d9f-x2"),
                ("K8S_NAMESPACE_NAME", "agents"),
                ("K8S_NODE_NAME", "node-1"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=prod, k8s.node.name=override,team=a%2Cb,=x,novalue",
                ),
                ("OTEL_SERVICE_NAME", "support-sidecar"),
            ]),
        );
        assert_eq!(a["k8s.pod.name"], "support-7d9f-x2");
        assert_eq!(a["k8s.namespace.name"], "agents");
        // OTEL_RESOURCE_ATTRIBUTES overrides the Downward API variables; OTEL_SERVICE_NAME wins.
        assert_eq!(a["k8s.node.name"], "override");
        assert_eq!(a["deployment.environment.name"], "prod");
        assert_eq!(a["team"], "a,b");
        assert_eq!(a["service.name"], "support-sidecar");
        assert!(!a.contains_key(""));
        assert!(!a.contains_key("novalue"));
    }
}
