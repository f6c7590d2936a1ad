//! Open-loop load of streamed LLM calls, for the end-to-end bench:
//! `llm_load URL[,URL..] RATE SECONDS` POSTs a streamed Chat Completion request to each URL RATE
//! times a second for SECONDS (each on its own schedule, whatever the earlier ones are doing; with
//! several URLs the requests alternate between them, so that every target meets the same moments
//! of a noisy machine), and prints one line per URL:
//! `{"url":..,"n":..,"errors":..,"p50_ms":..,"p99_ms":..,"p999_ms":..,"end_p50_ms":..,"end_p99_ms":..}`:
//! the time from sending to the first chunk carrying content (time to first token, as the agent
//! sees it), and to the stream's end.
//! With RATE 0 it runs closed-loop instead (`CONCURRENCY` env, default 64) against the first URL
//! and reports streams/s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"You are a support agent."},{"role":"user","content":"Summarise ticket T-1042 for the on-call engineer."}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{"type":"object","properties":{"ticket":{"type":"string"}}}}}]}"#;

/// One target's (time to first token, time to the end) samples (ms) and failed calls.
type Tally = (Arc<Mutex<Vec<(f64, f64)>>>, Arc<AtomicU64>);

type LoadClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One streamed call: time to the first content chunk and to the end, or `None` if it failed.
async fn call(client: &LoadClient, url: &hyper::Uri) -> Option<(Duration, Duration)> {
    let start = Instant::now();
    let req = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let (None, Some(data)) = (first, frame.data_ref()) {
            // The role-only chunk carries `"content":""`; the first word is what counts.
            if data.windows(12).any(|w| w == b"\"content\":\"T") {
                first = Some(start.elapsed());
            }
        }
    }
    Some((first?, start.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let urls = args
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::parse::<hyper::Uri>)
        .collect::<Result<Vec<_>, _>>()?;
    let rate: u64 = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let seconds: f64 = args.next().unwrap_or_else(|| "5".into()).parse()?;
    let client: LoadClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    let targets: Vec<Tally> = urls.iter().map(|_| Default::default()).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    let started = Instant::now();
    let record = |samples: &Arc<Mutex<Vec<(f64, f64)>>>,
                  errors: &AtomicU64,
                  r: Option<(Duration, Duration)>| match r {
        Some((t, end)) => samples
            .lock()
            .map(|mut s| s.push((t.as_secs_f64() * 1000.0, end.as_secs_f64() * 1000.0)))
            .unwrap_or(()),
        None => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    if rate == 0 {
        let concurrency: usize = std::env::var("CONCURRENCY")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(64);
        for _ in 0..concurrency {
            let (samples, errors) = targets[0].clone();
            let (client, url) = (client.clone(), urls[0].clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    record(&samples, &errors, call(&client, &url).await);
                }
            }));
        }
    } else {
        let n = urls.len();
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(1.0 / (rate * n as u64) as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let total = (rate as f64 * seconds) as usize * n;
        for i in 0..total {
            tick.tick().await;
            let (samples, errors) = targets[i % n].clone();
            let (client, url) = (client.clone(), urls[i % n].clone());
            tasks.push(tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(30), call(&client, &url))
                    .await
                    .ok()
                    .flatten();
                record(&samples, &errors, r);
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (url, (samples, errors)) in urls.iter().zip(&targets) {
        let both = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let sorted = |pick: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = both.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (s, ends) = (sorted(|x| x.0), sorted(|x| x.1));
        let q = |s: &[f64], p: f64| {
            if s.is_empty() {
                f64::NAN
            } else {
                s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1]
            }
        };
        println!(
            "{{\"url\":\"{url}\",\"n\":{},\"errors\":{},\"streams_per_s\":{:.1},\"p50_ms\":{:.4},\"p99_ms\":{:.4},\"p999_ms\":{:.4},\"end_p50_ms\":{:.4},\"end_p99_ms\":{:.4}}}",
            s.len(),
            errors.load(Ordering::Relaxed),
            s.len() as f64 / elapsed,
            q(&s, 0.5),
            q(&s, 0.99),
            q(&s, 0.999),
            q(&ends, 0.5),
            q(&ends, 0.99)
        );
    }
    Ok(())
}
