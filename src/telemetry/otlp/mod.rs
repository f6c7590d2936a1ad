//! OTLP export (`otlp:`): the metrics every `interval`, and request spans in batches, to an
//! OpenTelemetry Collector over gRPC or HTTP/protobuf (`opentelemetry-otlp`'s exporters).
//!
//! Nothing here is on the request path, nor on the workers that serve requests: the exporters,
//! their connections and both loops live on a thread of their own with a single-threaded
//! runtime, at the idle scheduling class, so that collecting, encoding and sending a batch
//! (a millisecond or more for a batch of spans) never holds up a request waiting for the CPU. Metrics are read from the [`Mirror`] when the export
//! loop collects; spans arrive through a bounded queue that a request only ever `try_send`s to
//! (see [`crate::telemetry::trace`]). Each export is bounded by `otlp.timeout`; one that fails or
//! times out is given up (no retry queue to grow while a collector is down) and what it carried
//! is counted in `sloguard_otlp_dropped_total{signal}`: metric points (cumulative values come
//! back whole with the next push; delta ones are lost) or spans. At shutdown both loops export
//! once more, within [`FLUSH`].

pub mod mirror;
mod resource;

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
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Notify};

pub use mirror::Mirror;
pub use resource::{resource_attributes, DOWNWARD_API};

use super::trace::{RequestTrace, Tracer};
use super::{label, LogLimiter, Telemetry, OTLP_DROPPED_TOTAL};
use crate::config::{OtlpConfig, OtlpProtocol, OtlpTemporality, TracesConfig};

/// How long the last export of each signal may take at shutdown.
pub const FLUSH: Duration = Duration::from_secs(5);
/// Request traces turned into spans and sent in one export (a request span and its attempts
/// each: some 512 spans).
const TRACE_BATCH: usize = 256;
/// A span waits at most this long in the queue before its batch goes, however small.
const SPAN_BATCH_WAIT: Duration = Duration::from_secs(2);
/// Histogram samples go from the mirror to the SDK this often (and before each push).
const DRAIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("otlp: {0}")]
pub struct OtlpError(String);

/// The manual reader, shared between the meter provider (which registers with it) and the
/// export loop (which collects from it).
#[derive(Debug, Clone)]
pub(super) struct SharedReader(pub(super) Arc<ManualReader>);

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
    queue: SpanQueue,
}

/// The exporter's end of the trace queue: the finished request traces, and what wakes it when
/// a batch is ready.
struct SpanQueue {
    rx: mpsc::Receiver<Box<RequestTrace>>,
    wake: Arc<Notify>,
}

/// What the export thread needs to build the metrics side.
#[derive(Debug)]
struct MetricsParts {
    provider: SdkMeterProvider,
    reader: SharedReader,
    mirror: Arc<Mirror>,
}

/// The export pipelines built from `otlp:`, before they run.
#[derive(Debug)]
pub struct Otlp {
    config: OtlpConfig,
    resource: Resource,
    metrics: Option<MetricsParts>,
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

fn temporality(config: &OtlpConfig) -> Temporality {
    match config.temporality {
        OtlpTemporality::Cumulative => Temporality::Cumulative,
        OtlpTemporality::Delta => Temporality::Delta,
    }
}

fn metric_exporter(config: &OtlpConfig) -> Result<MetricExporter, OtlpError> {
    let builder = MetricExporter::builder().with_temporality(temporality(config));
    let (url, timeout) = (endpoint(config, "metrics"), config.timeout());
    match config.protocol {
        OtlpProtocol::Grpc => builder
            .with_tonic()
            .with_endpoint(url)
            .with_timeout(timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_endpoint(url)
            .with_timeout(timeout)
            .build(),
    }
    .map_err(|e| build_error("metrics", e))
}

fn span_exporter(config: &OtlpConfig, resource: &Resource) -> Result<SpanExporter, OtlpError> {
    let (url, timeout) = (endpoint(config, "traces"), config.timeout());
    let mut exporter = match config.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .with_timeout(timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(timeout)
            .build(),
    }
    .map_err(|e| build_error("traces", e))?;
    exporter.set_resource(resource);
    Ok(exporter)
}

impl Otlp {
    /// The resource and, with metrics, the meter provider and the mirror the [`Telemetry`]
    /// registers with. The exporters are built by [`Otlp::start`], on the export thread.
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
        let metrics = config.metrics.then(|| {
            let reader = SharedReader(Arc::new(
                ManualReader::builder()
                    .with_temporality(temporality(config))
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
            MetricsParts {
                provider,
                reader,
                mirror: Arc::new(Mirror::new(meter)),
            }
        });
        Ok(Otlp {
            config: config.clone(),
            resource,
            metrics,
        })
    }

    /// What the [`Telemetry`] registers every handle with, besides Prometheus.
    pub fn mirror(&self) -> Option<Arc<Mirror>> {
        self.metrics.as_ref().map(|m| m.mirror.clone())
    }

    /// Starts the export on a thread of its own (a single-threaded runtime: building, encoding
    /// and sending a batch never takes a turn from the workers that serve requests); returns the
    /// tracer requests start their spans with (with `otlp.traces`), and the running exports.
    pub async fn start(
        self,
        telemetry: &Telemetry,
        agent: &str,
        restarts: &dyn Fn(&str) -> Counter,
    ) -> Result<(Option<Arc<Tracer>>, Exports), OtlpError> {
        let dropped = |signal: &str| {
            telemetry.counter(
                OTLP_DROPPED_TOTAL,
                vec![label("agent", agent), label("signal", signal)],
            )
        };
        let (stop, _) = watch::channel(false);
        let traces = self.config.traces.as_ref().map(|t| {
            let dropped = dropped("traces");
            let (tracer, queue) = trace_queue(t, dropped.clone());
            (tracer, (queue, dropped, restarts("otlp_traces")))
        });
        let (tracer, traces) = traces.unzip();
        let metrics = self
            .metrics
            .map(|m| (m, dropped("metrics"), restarts("otlp_metrics")));
        let (ready_tx, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let export = ExportThread {
            config: self.config,
            resource: self.resource,
            metrics,
            traces,
            // The loops hold receivers only: when the one sender goes (the sidecar dropped
            // without a shutdown), they take it as the stop, export once more and end with the
            // thread.
            stops: stop.subscribe(),
        };
        let thread = std::thread::Builder::new()
            .name("sloguard-otlp".into())
            .spawn(move || export.run(ready_tx, done_tx))
            .map_err(|e| OtlpError(format!("cannot start the export thread: {e}")))?;
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let _ = thread.join();
                return Err(OtlpError("the export thread ended at start".into()));
            }
        }
        Ok((tracer, Exports { stop, done }))
    }
}

/// The tracer requests start their spans with, and the exporter's end of its queue.
fn trace_queue(t: &TracesConfig, dropped: Counter) -> (Arc<Tracer>, SpanQueue) {
    let (tx, rx) = mpsc::channel(t.max_queue);
    let wake = Arc::new(Notify::new());
    let batch = TRACE_BATCH.min(t.max_queue);
    let tracer = Tracer::new(t.sample_ratio, tx, wake.clone(), batch, dropped);
    (Arc::new(tracer), SpanQueue { rx, wake })
}

/// What the export thread runs, moved to it: each signal's parts with its `dropped` and
/// `restarts` counters.
struct ExportThread {
    config: OtlpConfig,
    resource: Resource,
    metrics: Option<(MetricsParts, Counter, Counter)>,
    traces: Option<(SpanQueue, Counter, Counter)>,
    stops: watch::Receiver<bool>,
}

impl ExportThread {
    /// On the export thread: builds the exporters and runs both loops until they end. `ready`
    /// gets the outcome of the start; `done` fires when the loops have ended.
    fn run(self, ready: oneshot::Sender<Result<(), OtlpError>>, done: oneshot::Sender<()>) {
        lower_priority("otlp");
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(OtlpError(format!(
                    "cannot start the export thread: {e}"
                ))));
                return;
            }
        };
        rt.block_on(async move {
            let mut loops = tokio::task::JoinSet::new();
            if let Err(e) = self.spawn_loops(&mut loops) {
                let _ = ready.send(Err(e));
                return;
            }
            let _ = ready.send(Ok(()));
            while loops.join_next().await.is_some() {}
            let _ = done.send(());
        });
    }

    /// Builds each signal's exporter and spawns its supervised loop on `loops`.
    fn spawn_loops(self, loops: &mut tokio::task::JoinSet<()>) -> Result<(), OtlpError> {
        let timeout = self.config.timeout();
        if let Some((parts, dropped, restarts)) = self.metrics {
            let exporter = metric_exporter(&self.config)?;
            let m = Arc::new(MetricsExport {
                _provider: parts.provider,
                reader: parts.reader,
                exporter,
                mirror: parts.mirror,
            });
            let interval = self.config.interval.0;
            let stop = self.stops.clone();
            let run = crate::background::supervise("otlp_metrics", restarts, move || {
                export_metrics(m.clone(), interval, timeout, dropped.clone(), stop.clone())
            });
            loops.spawn(async move {
                let _ = run.await;
            });
        }
        if let Some((queue, dropped, restarts)) = self.traces {
            let exporter = span_exporter(&self.config, &self.resource)?;
            let t = Arc::new(Mutex::new(TracesExport { exporter, queue }));
            let stop = self.stops.clone();
            let run = crate::background::supervise("otlp_traces", restarts, move || {
                export_spans(t.clone(), timeout, dropped.clone(), stop.clone())
            });
            loops.spawn(async move {
                let _ = run.await;
            });
        }
        Ok(())
    }
}

/// Makes the calling thread (the export thread, the judge's) an idle-class thread (Linux `SCHED_IDLE`): it
/// runs whenever the sidecar's workers leave the CPU free, and yields it to a worker the moment
/// one wakes with a request to serve. The workers never wait on it (the span queue is lock-free;
/// the mirror's locks are taken by a worker only to register a new series). Under a sidecar that
/// keeps its CPU busy, export slows down: spans past the queue are dropped and counted, metric
/// pushes come late; requests do not. A failure (a platform without the call) is logged; export
/// then runs at the workers' priority.
pub(crate) fn lower_priority(thread: &str) {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let set = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = set {
        tracing::warn!(error = ?e, thread, "could not lower a background thread's priority; it runs at the workers' priority");
    }
}

/// The running export thread.
#[derive(Debug)]
pub struct Exports {
    stop: watch::Sender<bool>,
    /// Fires when both loops have exported what was left and ended.
    done: oneshot::Receiver<()>,
}

impl Exports {
    /// Exports what is left (the metrics once more, the queued spans) and stops, within `within`.
    pub async fn flush(self, within: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, self.done).await.is_err() {
            tracing::warn!("otlp: the last export did not finish in time at shutdown; given up");
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

/// Runs one export, bounded by `timeout`; when it fails or times out, the `n` items it carried
/// (`what`) are counted as dropped and the failure logged (at most once a second).
async fn settle(
    export: impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult>,
    timeout: Duration,
    n: u64,
    what: &'static str,
    dropped: &Counter,
    log: &LogLimiter,
) {
    let why = match tokio::time::timeout(timeout, export).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    dropped.increment(n);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(error = %why, dropped = n, what, suppressed, "otlp: export failed; dropped");
    }
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
    // Histogram samples wait in the mirror until drained: every second, so that memory stays
    // bounded whatever the interval.
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = stopped(&stop)
            || loop {
                tokio::select! {
                    _ = tick.tick() => break false,
                    _ = stop.changed() => break true,
                    _ = drain.tick() => m.mirror.drain(),
                }
            };
        // Samples recorded since the last drain reach the SDK's histograms, then everything is
        // read at once.
        m.mirror.drain();
        let mut rm = ResourceMetrics::default();
        if let Err(e) = m.reader.collect(&mut rm) {
            tracing::warn!(error = %e, "otlp: could not collect the metrics");
        } else {
            let n = points(&rm);
            let export = m.exporter.export(&rm);
            settle(export, timeout, n, "metric points", &dropped, &log).await;
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
    loop {
        // Woken when a batch is queued, or every SPAN_BATCH_WAIT for what is there; never per
        // span (the queue is only ever read with `try_recv`, so a send wakes no one).
        let last = stopped(&stop)
            || tokio::select! {
                _ = queue.wake.notified() => false,
                _ = tokio::time::sleep(SPAN_BATCH_WAIT) => false,
                _ = stop.changed() => true,
            };
        // What is queued now goes, in batches, its spans built here.
        loop {
            let mut batch = Vec::with_capacity(2 * TRACE_BATCH);
            let mut traces = 0;
            while traces < TRACE_BATCH {
                match queue.rx.try_recv() {
                    Ok(trace) => {
                        trace.into_spans(&mut batch);
                        traces += 1;
                    }
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let full = traces == TRACE_BATCH;
            let n = batch.len() as u64;
            settle(exporter.export(batch), timeout, n, "spans", &dropped, &log).await;
            if !full {
                break;
            }
        }
        if last {
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
