//! OTLP export end to end, against real receivers in the test process (gRPC: tonic with the
//! services of `opentelemetry-proto`; HTTP/protobuf: hyper): the metrics pushed are the metrics
//! scraped, value for value; a fallback request is one trace (the request span and an attempt
//! span per upstream, the client's trace continued and handed to each upstream); sampling
//! follows the client and keeps failures; a collector that is down or silent costs requests
//! nothing and its drops are counted; SIGTERM flushes (the real binary).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::otlp::*;
use common::process::Process;
use common::*;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use sloguard::sim::{self, SimServer};
use sloguard::telemetry::{Kind, METRICS};
use sloguard::Sidecar;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An upstream that answers every request `status` with `body` (JSON), keeping the
/// `traceparent` of each request it got (`-` for none).
async fn recording(status: u16, body: &'static str) -> (SimServer, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let server = sim::serve(LOOPBACK, move |req: Request<hyper::body::Incoming>| {
        let tp = req
            .headers()
            .get("traceparent")
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        s.lock().unwrap().push(tp);
        async move {
            let _ = req.into_body().collect().await;
            let mut r = Response::new(sim::full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
    })
    .await
    .unwrap();
    (server, seen)
}

const CHAT: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
const REQUEST: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hello"}]}"#;

/// A sidecar with one `llm` listener `proxy` whose route falls back from `primary` to `fallback`
/// (both OpenAI-style), exporting as `otlp` says.
fn llm_chain(primary: &str, fallback: &str, otlp: &str) -> String {
    let head = config_head("", "proxy", "llm", "main: {upstreams: [primary, fallback]}");
    let upstreams = format!(
        "  primary: {{url: '{primary}', protocol: openai}}
  fallback: {{url: '{fallback}', protocol: openai}}
otlp:
{otlp}"
    );
    (head + &upstreams).replacen("test-agent", "otlp-test", 1)
}

async fn chat(s: &Sidecar, traceparent: Option<&str>) -> (StatusCode, http::HeaderMap) {
    let mut req = Request::post(proxy_url(s, "/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = client()
        .request(req.body(full(REQUEST)).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let _ = body_bytes(resp).await;
    (status, headers)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The base metric of a Prometheus series name, and whether the series is a histogram's.
fn kind_of(series: &str) -> Option<(Kind, &'static str)> {
    if let Some(d) = METRICS.iter().find(|d| d.name == series) {
        return Some((d.kind, d.name));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        METRICS
            .iter()
            .find(|d| d.name == base && d.kind == Kind::Histogram)
            .map(|d| (Kind::Histogram, d.name))
    })
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Every counter and histogram series of the scrape is in `pushed` with the same value, and
/// every series pushed is in the scrape with the same value (gauges that change by themselves —
/// connections open, bytes held — are left out).
fn assert_same(pushed: &BTreeMap<Series, f64>, scraped: &BTreeMap<Series, f64>) {
    let moving = [
        "sloguard_client_connections",
        "sloguard_body_budget_used_bytes",
    ];
    let mut compared = 0;
    for ((name, labels), v) in pushed {
        if moving.contains(&name.as_str()) {
            continue;
        }
        let got = scraped.get(&(name.clone(), labels.clone()));
        assert!(
            got.is_some_and(|g| close(*g, *v)),
            "{name}{labels:?}: pushed {v}, scraped {got:?}"
        );
        compared += 1;
    }
    for ((name, labels), v) in scraped {
        let Some((kind, base)) = kind_of(name) else {
            continue;
        };
        let histogram_with_samples = kind == Kind::Histogram && {
            let mut l: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            l.sort();
            scraped
                .get(&(format!("{base}_count"), l))
                .is_some_and(|c| *c > 0.0)
        };
        if kind == Kind::Counter || histogram_with_samples {
            assert!(
                pushed
                    .get(&(name.clone(), labels.clone()))
                    .is_some_and(|p| close(*p, *v)),
                "{name}{labels:?}: scraped {v}, not pushed alike"
            );
        }
    }
    assert!(compared > 50, "only {compared} series compared");
}

/// Waits for an export that arrived after `after` exports, and returns it.
async fn next_export(r: &Receiver, after: usize) -> ExportMetricsServiceRequest {
    assert!(
        r.until(Duration::from_secs(10), |r| r.metric_exports().len()
            > after)
            .await,
        "no metrics export after the scrape"
    );
    r.metric_exports().pop().unwrap()
}

#[tokio::test]
async fn grpc_metrics_match_the_scrape_and_a_fallback_is_one_trace() {
    let receiver = grpc_receiver().await;
    let (primary, primary_saw) = recording(503, r#"{"error":{"message":"down"}}"#).await;
    let (fallback, fallback_saw) = recording(200, CHAT).await;
    let s = start_yaml(&llm_chain(
        &primary.url(),
        &fallback.url(),
        &format!(
            "  endpoint: {}\n  protocol: grpc\n  interval: 1s\n  timeout: 1s\n  traces: {{sample_ratio: 0.0}}\n",
            receiver.url()
        ),
    ))
    .await;

    let client_tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, headers) = chat(&s, Some(&client_tp)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-sloguard-fallback"], "5xx");
    // More traffic for the metrics: not sampled (ratio 0, no parent), and successful after
    // their fallback, so no spans of their own.
    for _ in 0..4 {
        assert_eq!(chat(&s, None).await.0, StatusCode::OK);
    }

    // One trace: the request span (the client's span its parent) and one attempt per upstream.
    assert!(
        receiver
            .until(Duration::from_secs(10), |r| r.spans().len() >= 3)
            .await,
        "spans of the fallback request"
    );
    let spans = receiver.spans();
    assert_eq!(
        spans.len(),
        3,
        "only the sampled request is exported: {spans:#?}"
    );
    assert!(spans.iter().all(|s| hex(&s.trace_id) == CLIENT_TRACE));
    let request = named(&spans, "sloguard.request")[0];
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(request.kind, SpanKind::Server as i32);
    let attrs = &request.attributes;
    assert_eq!(attr_int(attrs, "http.response.status_code"), Some(200));
    assert_eq!(attr_str(attrs, "http.request.method"), Some("POST"));
    assert_eq!(attr_str(attrs, "url.path"), Some("/v1/chat/completions"));
    assert_eq!(attr_str(attrs, "sloguard.upstream"), Some("fallback"));
    assert_eq!(attr_str(attrs, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(attr_str(attrs, "gen_ai.provider.name"), Some("openai"));
    assert_eq!(attr_str(attrs, "gen_ai.request.model"), Some("gpt-test"));
    assert_eq!(attr_int(attrs, "gen_ai.usage.input_tokens"), Some(3));
    assert_eq!(attr_int(attrs, "gen_ai.usage.output_tokens"), Some(5));
    match attr(attrs, "gen_ai.response.finish_reasons") {
        Some(Value::ArrayValue(a)) => assert_eq!(
            a.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
            vec![Some(Value::StringValue("stop".into()))]
        ),
        other => panic!("finish reasons: {other:?}"),
    }
    assert_eq!(attr_str(attrs, "error.type"), None);
    let mut attempts = named(&spans, "sloguard.attempt");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a.parent_span_id, request.span_id);
        assert_eq!(a.kind, SpanKind::Client as i32);
        assert!(a.start_time_unix_nano >= request.start_time_unix_nano);
        assert!(a.end_time_unix_nano <= request.end_time_unix_nano);
    }
    assert_eq!(
        attr_str(&attempts[0].attributes, "sloguard.upstream"),
        Some("primary")
    );
    assert_eq!(
        attr_int(&attempts[0].attributes, "http.response.status_code"),
        Some(503)
    );
    assert_eq!(attr_str(&attempts[0].attributes, "error.type"), Some("5xx"));
    assert_eq!(
        attr_str(&attempts[1].attributes, "sloguard.upstream"),
        Some("fallback")
    );
    assert_eq!(attr_str(&attempts[1].attributes, "error.type"), None);
    assert_eq!(
        attr_str(&attempts[1].attributes, "gen_ai.request.model"),
        Some("gpt-test")
    );
    // Each upstream got the client's trace, with its attempt's span as parent, still sampled.
    let tp = |span: &Span| format!("00-{CLIENT_TRACE}-{}-01", hex(&span.span_id));
    assert_eq!(primary_saw.lock().unwrap()[0], tp(attempts[0]));
    assert_eq!(fallback_saw.lock().unwrap()[0], tp(attempts[1]));
    // Requests without a client trace still carry one on to the upstream (not sampled).
    let later = fallback_saw.lock().unwrap()[1].clone();
    assert!(later.starts_with("00-") && later.ends_with("-00") && !later.contains(CLIENT_TRACE));

    // The resource says who sent it.
    assert!(
        receiver
            .until(Duration::from_secs(10), |r| !r.metric_exports().is_empty())
            .await
    );
    let exports = receiver.metric_exports();
    let resource = exports[0].resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        attr_str(&resource.attributes, "service.name"),
        Some("sloguard")
    );
    assert_eq!(
        attr_str(&resource.attributes, "sloguard.agent"),
        Some("otlp-test")
    );

    // The metrics pushed are the metrics scraped: once the traffic is counted, a push collected
    // after the scrape (the second to arrive after it: the first may have been collected before)
    // carries the same values (cumulative).
    let scrape = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 5.0).await;
    let pushed = next_export(&receiver, receiver.metric_exports().len() + 1).await;
    for m in pushed.resource_metrics[0].scope_metrics[0].metrics.iter() {
        if let Some(Data::Sum(sum)) = &m.data {
            assert_eq!(sum.aggregation_temporality, 2, "{} is cumulative", m.name);
        }
    }
    assert_same(&samples_of_export(&pushed), &samples_of_text(&scrape));
    assert_eq!(samples_of_export(&pushed)[&answered_by("fallback")], 5.0);
    s.shutdown().await;
}

/// The series of the requests of agent `otlp-test` on listener `proxy` that `upstream` answered
/// with a 2xx.
fn answered_by(upstream: &str) -> Series {
    let labels = labels(&[
        ("agent", "otlp-test"),
        ("cause", "none"),
        ("listener", "proxy"),
        ("status", "2xx"),
        ("upstream", upstream),
    ]);
    ("agent_requests_total".to_owned(), labels)
}

fn labels(l: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = l
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// An `agent` listener `proxy` in front of `agent_url`, exporting as `otlp` says.
fn agent_yaml(agent_url: &str, otlp: &str) -> String {
    named_agent_yaml("otlp-test", agent_url, otlp)
}

fn named_agent_yaml(agent: &str, agent_url: &str, otlp: &str) -> String {
    let head = config_head("", "proxy", "agent", "agent: {upstreams: [agent]}");
    let upstream = format!("  agent: {{url: '{agent_url}'}}\notlp:\n{otlp}");
    (head + &upstream).replacen("test-agent", agent, 1)
}

async fn get_with(s: &Sidecar, path: &str, traceparent: Option<&str>) -> StatusCode {
    let mut req = Request::get(proxy_url(s, path));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    send_empty(req).await
}

#[tokio::test]
async fn http_protobuf_sampling_follows_the_client_keeps_failures_and_delta_sums_to_the_scrape() {
    let receiver = http_receiver().await;
    let (ok_agent, ok_saw) = recording(200, "{}").await;
    let (failing_agent, _) = recording(500, "{}").await;
    let otlp = format!(
        "  endpoint: {}\n  protocol: http/protobuf\n  temporality: delta\n  interval: 1s\n  timeout: 1s\n  traces: {{sample_ratio: 0.0}}\n",
        receiver.url()
    );
    let ok = start_yaml(&agent_yaml(&ok_agent.url(), &otlp)).await;
    let failing = start_yaml(&named_agent_yaml(
        "otlp-failing",
        &failing_agent.url(),
        &otlp,
    ))
    .await;

    // Not sampled (no parent, ratio 0) and fine: no span.
    assert_eq!(get_with(&ok, "/quiet", None).await, StatusCode::OK);
    // The client said "not sampled": no span, but the upstream still gets the trace, unsampled.
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    assert_eq!(
        get_with(&ok, "/unsampled", Some(&unsampled)).await,
        StatusCode::OK
    );
    let seen = ok_saw.lock().unwrap()[1].clone();
    assert!(
        seen.starts_with(&format!("00-{CLIENT_TRACE}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // The client said "sampled": exported.
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(
        get_with(&ok, "/sampled", Some(sampled)).await,
        StatusCode::OK
    );
    // Failed (the agent's 500), not sampled: exported all the same.
    assert_eq!(
        get_with(&failing, "/broken", Some(&unsampled)).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    assert!(
        receiver
            .until(Duration::from_secs(10), |r| named(
                &r.spans(),
                "sloguard.request"
            )
            .len()
                >= 2)
            .await
    );
    let spans = receiver.spans();
    let requests = named(&spans, "sloguard.request");
    let path = |s: &Span| attr_str(&s.attributes, "url.path").unwrap().to_owned();
    let mut paths: Vec<String> = requests.iter().map(|s| path(s)).collect();
    paths.sort();
    assert_eq!(paths, ["/broken", "/sampled"]);
    let broken = requests.iter().find(|s| path(s) == "/broken").unwrap();
    assert_eq!(hex(&broken.trace_id), CLIENT_TRACE);
    assert_eq!(attr_str(&broken.attributes, "error.type"), Some("500"));
    assert_eq!(broken.status.as_ref().unwrap().code, 2, "status error");
    let sampled_span = requests.iter().find(|s| path(s) == "/sampled").unwrap();
    assert_eq!(
        hex(&sampled_span.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(named(&spans, "sloguard.attempt").len(), 2);

    // Delta: each push carries what happened since the last; their sum is the scrape.
    let scrape = metrics_when(&ok, |m| metric(m, "agent_requests_total", &[]) == 3.0).await;
    // Both sidecars push here: the `ok` one's pushes are told by their resource. Two more of
    // them after the scrape: the second was collected after it.
    let of_ok = |r: &Receiver| -> Vec<ExportMetricsServiceRequest> {
        r.metric_exports()
            .into_iter()
            .filter(|e| {
                let res = e.resource_metrics[0].resource.as_ref().unwrap();
                attr_str(&res.attributes, "sloguard.agent") == Some("otlp-test")
            })
            .collect()
    };
    let before = of_ok(&receiver).len();
    assert!(
        receiver
            .until(Duration::from_secs(10), |r| of_ok(r).len() >= before + 2)
            .await
    );
    let mut summed: BTreeMap<Series, f64> = BTreeMap::new();
    for export in of_ok(&receiver) {
        for m in export.resource_metrics[0].scope_metrics[0].metrics.iter() {
            if let Some(Data::Sum(sum)) = &m.data {
                assert_eq!(sum.aggregation_temporality, 1, "{} is delta", m.name);
            }
        }
        for (series, v) in samples_of_export(&export) {
            if series.0 == "agent_requests_total" {
                *summed.entry(series).or_default() += v;
            }
        }
    }
    let scraped = samples_of_text(&scrape);
    let ok_series = answered_by("agent");
    assert_eq!(scraped[&ok_series], 3.0);
    assert_eq!(summed[&ok_series], 3.0);
    ok.shutdown().await;
    failing.shutdown().await;
    // No span of the unsampled successes came later.
    assert_eq!(named(&receiver.spans(), "sloguard.request").len(), 2);
}

#[tokio::test]
async fn a_collector_down_or_silent_costs_requests_nothing_and_drops_are_counted() {
    let (agent, _) = recording(200, "{}").await;
    // Down: nothing listens. Silent: accepts connections and never answers.
    let down = closed_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            open.push(c);
        }
    });
    for (name, endpoint, queue) in [("down", down, 4096), ("silent", silent_addr, 8)] {
        let s = start_yaml(&agent_yaml(
            &agent.url(),
            &format!(
                "  endpoint: http://{endpoint}\n  interval: 1s\n  timeout: 200ms\n  traces: {{sample_ratio: 1.0, max_queue: {queue}}}\n"
            ),
        ))
        .await;
        const N: usize = 200;
        let started = std::time::Instant::now();
        for i in 0..N {
            assert_eq!(
                get_with(&s, "/", None).await,
                StatusCode::OK,
                "{name}: request {i}"
            );
        }
        let took = started.elapsed();
        // Every span (a request span and an attempt span per request) is dropped: at the queue
        // or with its failed export; the metrics pushes fail and are counted too.
        let want = (2 * N) as f64;
        let m = metrics_when(&s, |m| {
            metric(m, "sloguard_otlp_dropped_total", &[("signal", "traces")]) == want
                && metric(m, "sloguard_otlp_dropped_total", &[("signal", "metrics")]) > 0.0
        })
        .await;
        assert_eq!(
            metric(&m, "sloguard_otlp_dropped_total", &[("signal", "traces")]),
            want,
            "{name}"
        );
        assert!(
            metric(&m, "sloguard_otlp_dropped_total", &[("signal", "metrics")]) > 0.0,
            "{name}"
        );
        expect_metric(&m, "agent_requests_total", &[("status", "2xx")], N as f64);
        // Bounded, not a timing target: 200 loopback requests in well under the time one
        // export waits for per request, had any request waited on the collector.
        assert!(
            took < Duration::from_millis(200) * N as u32 / 4,
            "{name}: {took:?}"
        );
        s.shutdown().await;
    }
}

#[tokio::test]
async fn sigterm_flushes_metrics_and_spans_with_the_pods_resource() {
    let receiver = grpc_receiver().await;
    let (agent, _) = recording(200, "{}").await;
    // A minute between pushes: only the flush at shutdown can deliver the metrics in time.
    let yaml = agent_yaml(
        &agent.url(),
        &format!(
            "  endpoint: {}\n  interval: 60s\n  timeout: 2s\n  traces: {{sample_ratio: 1.0}}\n",
            receiver.url()
        ),
    );
    let mut p = Process::start_with_env(
        &yaml,
        "otlp-flush",
        &[
            ("OTEL_SERVICE_NAME", "support-sidecar"),
            ("K8S_POD_NAME", "support-7d9f-x2"),
            ("K8S_NAMESPACE_NAME", "agents"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
        ],
    )
    .await;
    for _ in 0..3 {
        let resp = get(&client(), &format!("http://{}/task", p.listener)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = body_bytes(resp).await;
    }
    assert!(
        receiver.metric_exports().is_empty(),
        "pushed before the interval"
    );
    // Export runs on a thread of its own, in the idle scheduling class (SCHED_IDLE, 5): it never
    // takes the CPU from a worker with a request to serve.
    let policies: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{}/task", p.pid()))
        .unwrap()
        .map(|t| {
            let dir = t.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the command's closing parenthesis start at field 3; policy is 41.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let policy = rest.split(' ').nth(41 - 3).unwrap().to_owned();
            (comm.trim().to_owned(), policy)
        })
        .collect();
    let export: Vec<_> = policies
        .iter()
        .filter(|(c, _)| c == "sloguard-otlp")
        .collect();
    assert_eq!(export.len(), 1, "{policies:?}");
    assert_eq!(export[0].1, "5", "{policies:?}");
    assert!(
        policies
            .iter()
            .filter(|(c, _)| c != "sloguard-otlp")
            .all(|(_, p)| p == "0"),
        "{policies:?}"
    );
    p.terminate();
    let exit = tokio::time::timeout(Duration::from_secs(15), p.child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let exports = receiver.metric_exports();
    assert_eq!(exports.len(), 1, "one push, at shutdown");
    let pushed = samples_of_export(&exports[0]);
    let requests: f64 = pushed
        .iter()
        .filter(|((n, l), _)| {
            n == "agent_requests_total" && l.contains(&("status".to_owned(), "2xx".to_owned()))
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests, 3.0);
    let resource = &exports[0].resource_metrics[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(attr_str(resource, "service.name"), Some("support-sidecar"));
    assert_eq!(attr_str(resource, "k8s.pod.name"), Some("support-7d9f-x2"));
    assert_eq!(attr_str(resource, "k8s.namespace.name"), Some("agents"));
    assert_eq!(
        attr_str(resource, "deployment.environment.name"),
        Some("test")
    );
    assert_eq!(attr_str(resource, "sloguard.agent"), Some("otlp-test"));
    let spans = receiver.spans();
    assert_eq!(named(&spans, "sloguard.request").len(), 3);
    assert_eq!(named(&spans, "sloguard.attempt").len(), 3);
    let traces = receiver.got.traces.lock().unwrap().clone();
    let span_resource = &traces[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(
        attr_str(span_resource, "k8s.pod.name"),
        Some("support-7d9f-x2")
    );
}

#[tokio::test]
async fn a_sidecar_dropped_without_a_shutdown_still_pushes_once_and_ends_its_export() {
    let receiver = grpc_receiver().await;
    let (agent, _) = recording(200, "{}").await;
    let s = start_yaml(&agent_yaml(
        &agent.url(),
        &format!(
            "  endpoint: {}\n  interval: 60s\n  timeout: 2s\n",
            receiver.url()
        ),
    ))
    .await;
    assert_eq!(get_with(&s, "/", None).await, StatusCode::OK);
    // Counted once its connection settles.
    let _ = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) == 1.0).await;
    assert!(
        receiver.metric_exports().is_empty(),
        "pushed before the interval"
    );
    drop(s);
    assert!(
        receiver
            .until(Duration::from_secs(10), |r| !r.metric_exports().is_empty())
            .await,
        "no last push after the sidecar was dropped"
    );
    let pushed = samples_of_export(&receiver.metric_exports()[0]);
    let requests: f64 = pushed
        .iter()
        .filter(|((n, _), _)| n == "agent_requests_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests, 1.0);
}
