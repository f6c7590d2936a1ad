//! Real OTLP receivers in the test process: a gRPC one (tonic, with the services generated in
//! `opentelemetry-proto`) and an HTTP/protobuf one (hyper, `POST /v1/metrics` and `/v1/traces`).
//! Both keep every export request they get; helpers read them back as the tests compare them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sloguard::sim;

/// What a receiver got, in arrival order.
#[derive(Clone, Default)]
pub struct Received {
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Received,
    /// The gRPC server's task (aborted on drop), or the HTTP server (which stops on drop).
    task: Option<tokio::task::JoinHandle<()>>,
    _http: Option<sim::SimServer>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Receiver {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metric_exports(&self) -> Vec<ExportMetricsServiceRequest> {
        self.got.metrics.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.got
            .traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    /// Waits (up to `within`) until `ready` holds for what was received.
    pub async fn until(&self, within: Duration, ready: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if ready(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ready(self)
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a loopback port.
pub async fn grpc_receiver() -> Receiver {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let got = Received::default();
    let server = tonic::transport::Server::builder()
        .add_service(MetricsServiceServer::new(got.clone()))
        .add_service(TraceServiceServer::new(got.clone()));
    let task = tokio::spawn(async move {
        let _ = server
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(tcp))
            .await;
    });
    Receiver {
        addr,
        got,
        task: Some(task),
        _http: None,
    }
}

/// An OTLP/HTTP receiver (binary protobuf) on a loopback port.
pub async fn http_receiver() -> Receiver {
    let got = Received::default();
    let g = got.clone();
    let server = sim::serve(
        super::LOOPBACK,
        move |req: Request<hyper::body::Incoming>| {
            let g = g.clone();
            async move {
                let path = req.uri().path().to_owned();
                let ok = req.headers().get("content-type").map(|v| v.as_bytes())
                    == Some(b"application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let decoded = match (ok, path.as_str()) {
                    (true, "/v1/metrics") => ExportMetricsServiceRequest::decode(body)
                        .map(|m| g.metrics.lock().unwrap().push(m))
                        .is_ok(),
                    (true, "/v1/traces") => ExportTraceServiceRequest::decode(body)
                        .map(|t| g.traces.lock().unwrap().push(t))
                        .is_ok(),
                    _ => false,
                };
                let mut r = Response::new(sim::full(Bytes::new()));
                r.headers_mut()
                    .insert("content-type", "application/x-protobuf".parse().unwrap());
                if !decoded {
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                }
                r
            }
        },
    )
    .await
    .unwrap();
    Receiver {
        addr: server.addr,
        got,
        task: None,
        _http: Some(server),
    }
}

pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

/// One series as the comparison sees it: its Prometheus name and sorted labels.
pub type Series = (String, Vec<(String, String)>);

/// The samples of one export request (or of `/metrics`), as Prometheus would show them:
/// a counter or gauge as its value; a histogram as `_count`, `_sum` and cumulative `_bucket`
/// samples (with `le`). Names and attribute keys are turned back into Prometheus's with the
/// sidecar's own table (`sloguard::telemetry::METRICS`).
pub fn samples_of_export(req: &ExportMetricsServiceRequest) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    let labels = |attrs: &[KeyValue]| -> Vec<(String, String)> {
        let mut l: Vec<(String, String)> = attrs
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.replace('.', "_"), v)
            })
            .collect();
        l.sort();
        l
    };
    for m in req
        .resource_metrics
        .iter()
        .flat_map(|r| r.scope_metrics.iter())
        .flat_map(|s| s.metrics.iter())
    {
        let def = sloguard::telemetry::METRICS
            .iter()
            .find(|d| d.otel == m.name)
            .unwrap_or_else(|| panic!("OTLP metric {} is not in the table", m.name));
        let name = def.name.to_owned();
        let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => v,
            Some(number_data_point::Value::AsInt(v)) => v as f64,
            None => f64::NAN,
        };
        match &m.data {
            Some(Data::Sum(s)) => {
                for p in &s.data_points {
                    *out.entry((name.clone(), labels(&p.attributes)))
                        .or_default() += number(p);
                }
            }
            Some(Data::Gauge(g)) => {
                for p in &g.data_points {
                    out.insert((name.clone(), labels(&p.attributes)), number(p));
                }
            }
            Some(Data::Histogram(h)) => {
                for p in &h.data_points {
                    let base = labels(&p.attributes);
                    out.insert((format!("{name}_count"), base.clone()), p.count as f64);
                    out.insert((format!("{name}_sum"), base.clone()), p.sum.unwrap_or(0.0));
                    let mut cumulative = 0u64;
                    for (i, c) in p.bucket_counts.iter().enumerate() {
                        cumulative += c;
                        let le = p
                            .explicit_bounds
                            .get(i)
                            .map_or("+Inf".to_owned(), |b| le(*b));
                        let mut l = base.clone();
                        l.push(("le".to_owned(), le));
                        l.sort();
                        out.insert((format!("{name}_bucket"), l), cumulative as f64);
                    }
                }
            }
            other => panic!("unexpected OTLP data for {}: {other:?}", m.name),
        }
    }
    out
}

/// A bucket boundary as both sides are compared: Rust's shortest form of the number.
fn le(v: f64) -> String {
    format!("{v}")
}

/// The samples of a `/metrics` text.
pub fn samples_of_text(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap();
                let mut labels = Vec::new();
                let mut chars = rest.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'));
                    let mut v = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => v.push(chars.next().unwrap()),
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    if key == "le" && v != "+Inf" {
                        v = le(v.parse().unwrap());
                    }
                    labels.push((key, v));
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                labels.sort();
                (name.to_owned(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}
