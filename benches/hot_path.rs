//! Per-request hot-path costs: header rewriting, upstream addressing, and the metric recording
//! that every request pays for.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use sloguard::config::parse_upstream_url;
use sloguard::proxy::{headers, upstream_uri};
use sloguard::sli::UpstreamOutcome;
use sloguard::sli::{Cause, StatusClass};
use sloguard::telemetry::{RequestMetrics, Telemetry, UpstreamMetrics};

/// The headers an OpenAI SDK sends with a chat completion.
fn sdk_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:7481"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        ("authorization", "Bearer sk-placeholder"),
        ("content-length", "312"),
        ("connection", "keep-alive"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn headers_bench(c: &mut Criterion) {
    let template = sdk_request_headers();
    let host = HeaderValue::from_static("api.openai.com");
    let ip = HeaderValue::from_static("127.0.0.1");
    c.bench_function("headers/prepare_request", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| headers::prepare_request(black_box(h), &host, &ip),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut response = HeaderMap::new();
    response.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    response.insert("x-request-id", HeaderValue::from_static("req_123"));
    response.insert("openai-processing-ms", HeaderValue::from_static("212"));
    let upstream = HeaderValue::from_static("openai");
    c.bench_function("headers/prepare_response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| headers::prepare_response(black_box(h), &upstream),
            criterion::BatchSize::SmallInput,
        )
    });
    let url = parse_upstream_url("https://api.openai.com").unwrap();
    let uri: Uri = "/v1/chat/completions".parse().unwrap();
    c.bench_function("uri/upstream_uri", |b| {
        b.iter(|| upstream_uri(black_box(&url), black_box(&uri)))
    });
}

/// The handles one request records with, on one registry.
struct OneRequest {
    m: RequestMetrics,
    u: UpstreamMetrics,
    overhead: metrics::Histogram,
}

impl OneRequest {
    fn new(t: &Telemetry) -> OneRequest {
        OneRequest {
            m: RequestMetrics::new(t, "bench-agent", "egress", "openai"),
            u: UpstreamMetrics::new(t, "bench-agent", "openai"),
            overhead: sloguard::telemetry::overhead(t, "bench-agent", "egress"),
        }
    }

    /// What one request records: overhead, time to first byte, duration, its status and its
    /// attempt.
    fn record(&self) {
        self.overhead.record(black_box(0.000_04));
        self.m.time_to_first_byte.record(black_box(0.21));
        self.m.response_seconds.record(black_box(1.7));
        self.m
            .count_request(black_box(StatusClass::Success), black_box(Cause::None));
        self.u.count(black_box(UpstreamOutcome::Ok));
    }
}

fn metrics_bench(c: &mut Criterion) {
    let t = Telemetry::new();
    let one = OneRequest::new(&t);
    let m = &one.m;
    c.bench_function("metrics/one_request", |b| b.iter(|| one.record()));
    // The same with OTLP export on: every handle also records into the mirror the exporter reads.
    {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "bench");
        let mirror = std::sync::Arc::new(sloguard::telemetry::otlp::Mirror::new(meter));
        let t = Telemetry::with_mirror(Some(mirror.clone()));
        let mirrored = OneRequest::new(&t);
        c.bench_function("metrics/one_request_otlp_mirror", |b| {
            b.iter(|| mirrored.record())
        });
        // The mirror's samples go to the SDK on the export thread: what that costs per request.
        c.bench_function("metrics/otlp_drain_per_request", |b| {
            b.iter_custom(|iters| {
                for _ in 0..iters {
                    mirrored.record();
                }
                let start = std::time::Instant::now();
                mirror.drain();
                start.elapsed()
            })
        });
        t.run_upkeep();
    }
    // Keeps the OTLP mirror's samples, if any, from piling up across benches.
    t.run_upkeep();
    let mut group = c.benchmark_group("metrics/contended");
    group.bench_function("one_request_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            m.response_seconds.record(black_box(1.7));
                            m.count_request(StatusClass::Success, Cause::None);
                        }
                    });
                }
            });
            t.run_upkeep();
            start.elapsed()
        })
    });
    group.finish();
}

/// The circuit breaker on every call: admission and the outcome fed back, alone and from two
/// threads at once on one upstream's breaker.
fn breaker_bench(c: &mut Criterion) {
    use sloguard::upstream::breaker::{BreakerConfig, CircuitBreaker, Outcome};
    let ok = Outcome::default();
    let b = CircuitBreaker::new(BreakerConfig::default(), 1);
    c.bench_function("breaker/admit_and_record", |bench| {
        bench.iter(|| {
            let now = tokio::time::Instant::now();
            let (ticket, _) = b.admit(black_box(now));
            if let Some(t) = ticket {
                black_box(b.record(t, ok, now));
            }
        })
    });
    let mut group = c.benchmark_group("breaker/contended");
    group.bench_function("admit_and_record_2_threads", |bench| {
        bench.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            let now = tokio::time::Instant::now();
                            let (ticket, _) = b.admit(black_box(now));
                            if let Some(t) = ticket {
                                black_box(b.record(t, ok, now));
                            }
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

/// `one(i)` (a step on the `i`-th of many keys) alone, as `{group}/{name}`, and from two threads
/// at once on different keys, as `{group}/contended/{name}_2_threads`.
fn alone_and_two_threads(c: &mut Criterion, group: &str, name: &str, one: impl Fn(u64) + Sync) {
    let mut i = 0u64;
    c.bench_function(&format!("{group}/{name}"), |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            one(i)
        })
    });
    let mut contended = c.benchmark_group(format!("{group}/contended"));
    contended.bench_function(format!("{name}_2_threads"), |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let one = &one;
                    s.spawn(move || {
                        for n in 0..iters {
                            one(n.wrapping_mul(7919).wrapping_add(t * 50_000));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    contended.finish();
}

/// The task table on every agent request: a request and its response (`in_progress`, so the
/// task stays live) of one of 100,000 live tasks, alone and from two threads at once.
fn tasks_bench(c: &mut Criterion) {
    use sloguard::sli::tasks::{TaskTable, Verdict};
    const LIVE: u64 = 100_000;
    let now = tokio::time::Instant::now();
    let table = TaskTable::new(LIVE as usize, std::time::Duration::from_secs(300));
    let keys: Vec<u64> = (0..LIVE)
        .map(|i| table.key(format!("task-{i}").as_bytes()))
        .collect();
    // Memory per task: `cargo run --release --example table_memory -- tasks`.
    for k in &keys {
        table.request(*k, now);
        table.response(*k, Some(Verdict::InProgress), now);
    }
    let one = |i: u64| {
        let k = keys[(i % LIVE) as usize];
        let now = tokio::time::Instant::now();
        black_box(table.request(black_box(k), now));
        black_box(table.response(k, Some(Verdict::InProgress), now));
    };
    alone_and_two_threads(c, "tasks", "request_and_response_100k_live", one);
    assert_eq!(table.len(), LIVE as usize);
}

/// The loop guard on every LLM call of a task: the call counted, then its response's one tool
/// call told (one of 100,000 live tasks), alone and from two threads; and a tool call's
/// canonical fingerprint, as each response's call is read.
fn loops_bench(c: &mut Criterion) {
    use sloguard::inspect::canon::{fingerprint, Arguments};
    use sloguard::sli::loops::{LoopLimits, LoopTable};
    const LIVE: u64 = 100_000;
    let limits = LoopLimits {
        max_llm_calls: u32::MAX,
        max_repeated_tool_calls: 3,
    };
    let table = LoopTable::new(LIVE as usize, limits, std::time::Duration::from_secs(300));
    let now = tokio::time::Instant::now();
    let keys: Vec<u64> = (0..LIVE)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    // Memory per task: `cargo run --release --example table_memory -- loops`.
    for k in &keys {
        table.call(*k, false, now);
    }
    let one = |i: u64| {
        let k = keys[(i % LIVE) as usize];
        let now = tokio::time::Instant::now();
        black_box(table.call(black_box(k), false, now));
        black_box(table.returned(k, Some(i & 0xff), now));
    };
    alone_and_two_threads(c, "loops", "call_and_returned_100k_live", one);
    assert_eq!(table.len(), LIVE as usize);
    let args = br#"{"query": "refund policy for order 1042", "filters": {"region": "EU", "limit": 5}, "include_archived": false}"#;
    c.bench_function("loops/fingerprint_tool_call_110B", |b| {
        b.iter(|| black_box(fingerprint("search_docs", Arguments::Json(black_box(args)))))
    });
    c.bench_function("loops/validate_only_110B_(before)", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(args)).is_ok())
        })
    });
}

/// The local SLO view's once-a-second read of its events from the exposition text: five SLOs
/// over the text of a busy sidecar (the demo's, ~1,000 lines, 127 KiB, built here from its
/// shape: several listeners, upstreams, models and histograms).
fn slo_bench(c: &mut Criterion) {
    use sloguard::config::{ConfigDuration, SliKind, SloConfig};
    use sloguard::metric_table::*;
    use sloguard::telemetry::Telemetry;
    // The series a busy sidecar has: three listeners, five upstreams, every status and cause.
    let t = Telemetry::new();
    let l = |k: &'static str, v: &str| metrics::Label::new(k, v.to_owned());
    let mut series = 0;
    for listener in ["inbound", "egress", "egress-anthropic"] {
        for upstream in ["agent", "openai", "openai-spare", "anthropic", "cache"] {
            for status in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                for cause in ["none", "upstream", "proxy", "agent"] {
                    let labels = vec![
                        l("agent", "demo"),
                        l("listener", listener),
                        l("upstream", upstream),
                        l("status", status),
                        l("cause", cause),
                    ];
                    t.counter(AGENT_REQUESTS_TOTAL, labels).increment(1234);
                    series += 1;
                }
            }
            let labels = vec![
                l("agent", "demo"),
                l("listener", listener),
                l("upstream", upstream),
            ];
            let h = t.histogram(AGENT_RESPONSE_SECONDS, labels);
            for v in [0.01, 0.3, 1.5, 4.0] {
                h.record(v);
            }
            series += 1;
        }
        let labels = vec![l("agent", "demo"), l("listener", listener)];
        t.counter(AGENT_RESPONSES_TOTAL, labels).increment(500);
        series += 1;
    }
    t.counter(AGENT_TASKS_STARTED, vec![l("agent", "demo")])
        .increment(100);
    t.counter(AGENT_TASKS_COMPLETED, vec![l("agent", "demo")])
        .increment(90);
    series += 2;
    let slo = |sli, threshold: Option<f64>| SloConfig {
        name: "s".into(),
        sli,
        target: 0.99,
        window: ConfigDuration(std::time::Duration::from_secs(30 * 86_400)),
        threshold: threshold.map(|t| ConfigDuration(std::time::Duration::from_secs_f64(t))),
        exclude_dependency_failures: true,
        listeners: None,
        sources: None,
        tool: None,
        severity: None,
    };
    let slos = [
        slo(SliKind::Availability, None),
        slo(SliKind::TaskCompletion, None),
        slo(SliKind::Latency, Some(2.0)),
        slo(SliKind::TimeToFirstToken, Some(1.0)),
        slo(SliKind::Safety, None),
    ];
    c.bench_function(&format!("slo/read_5_slos_from_{series}_series"), |b| {
        b.iter(|| {
            for s in &slos {
                black_box(sloguard::slo::source::counts(
                    black_box(t.tallies()),
                    "demo",
                    s,
                    None,
                ));
            }
        })
    });
}

/// What a request's trace costs it (`otlp.traces`): started from the client's headers, one attempt
/// (the upstream's `traceparent` written), ended; not sampled (only ids and instants), and sampled
/// (queued for export as it is: the queue is emptied here without building the spans, which the
/// export thread does, `trace/spans_built_on_the_export_thread`).
fn trace_bench(c: &mut Criterion) {
    use sloguard::telemetry::trace::{ListenerTracer, SpanNames, Tracer};
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let headers = sdk_request_headers();
    let tracer = |ratio: f64| {
        let wake = std::sync::Arc::default();
        let tracer = Tracer::new(ratio, tx.clone(), wake, 512, metrics::Counter::noop());
        let names = SpanNames {
            listener: "egress".into(),
            upstreams: vec!["openai".into()],
        };
        ListenerTracer::new(std::sync::Arc::new(tracer), names)
    };
    let one = |tracer: &ListenerTracer| {
        let now = tokio::time::Instant::now();
        let mut t = tracer.start(&http::Method::POST, "/v1/chat/completions", &headers, now);
        let mut out = HeaderMap::new();
        t.attempt(0, &mut out, now);
        t.attempt_answered(200);
        t.finish(0, Some("ok"), false, now);
    };
    for (name, ratio) in [("request_not_sampled", 0.0), ("request_sampled", 1.0)] {
        let tracer = tracer(ratio);
        c.bench_function(&format!("trace/{name}"), |b| {
            b.iter(|| {
                one(&tracer);
                while let Ok(trace) = rx.try_recv() {
                    black_box(trace);
                }
            })
        });
    }
    let sampled = tracer(1.0);
    c.bench_function("trace/spans_built_on_the_export_thread", |b| {
        b.iter_batched(
            || {
                one(&sampled);
                rx.try_recv().ok()
            },
            |trace| {
                let mut spans = Vec::new();
                if let Some(t) = trace {
                    t.into_spans(&mut spans);
                }
                assert_eq!(spans.len(), 2);
                spans
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    trace_bench,
    headers_bench,
    metrics_bench,
    breaker_bench,
    tasks_bench,
    loops_bench,
    slo_bench
);
criterion_main!(benches);
