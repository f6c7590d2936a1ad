//! `sloguard demo`: simulated provider and agent, the sidecar in front of both, synthetic traffic,
//! and a live summary once a second. Needs no config and no network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{parse_duration, Config};
use crate::sidecar::Sidecar;
use crate::sim::{spawn_agent, spawn_provider, AgentSim, ProviderSim};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address of the admin port (/metrics, /healthz, /readyz); a free port is used if it is taken.
    #[arg(long, default_value = "127.0.0.1:7490")]
    pub admin: SocketAddr,
    /// Stop after this long (e.g. `30s`); without it the demo runs until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second sent to each listener.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// When the primary OpenAI-style provider's outage starts (every completion a 503).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub outage_at: Duration,
    /// How long the outage lasts (`0s`: none).
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub outage_for: Duration,
    /// When the simulated agent goes bad: from then on a third of its answers leak an email
    /// address or an API key, and the kill switch trips (before that, one in 400 does).
    #[arg(long, value_parser = parse_duration, default_value = "35s")]
    pub leak_at: Duration,
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// Client-side latencies of the last second, per listener.
#[derive(Default)]
struct Samples {
    /// inbound, egress, egress-anthropic
    listeners: [Vec<f64>; 3],
}

/// The demo's admin token: the demo is local, the token is printed for the curl commands.
const DEMO_TOKEN: &str = "demo-token";

fn demo_config(
    admin: SocketAddr,
    token_file: &std::path::Path,
    agent_url: &str,
    provider_url: &str,
    spare_url: &str,
    queue_url: &str,
) -> String {
    format!(
        "agent: demo-agent
admin:
  bind: {admin}
  token_file: {token}
safety:
  apply_to: [agent, llm]
  action: record
  kill_switch: {{violations: 5, within: 10s, fallback_url: '{queue_url}'}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
  - {{name: egress, bind: 127.0.0.1:0, role: llm, route: llm}}
  - {{name: egress-anthropic, bind: 127.0.0.1:0, role: llm, route: anthropic}}
routes:
  agent: {{upstreams: [agent]}}
  llm:
    upstreams: [openai, openai-spare]
    fallback_on: [connect_error, timeout, 5xx, 429]
    max_replay_body: 1MiB
  anthropic: {{upstreams: [anthropic]}}
upstreams:
  agent:
    url: {agent_url}
    timeouts: {{first_byte: 5s}}
  openai:
    url: {provider_url}
    protocol: openai
    timeouts: {{connect: 1s, first_byte: 5s, idle: 2s, total: 30s}}
    circuit_breaker: {{consecutive_failures: 5, open_for: 2s, max_open_for: 10s, half_open_probes: 1}}
  openai-spare:
    url: {spare_url}
    protocol: openai
    model: gpt-4.1-mini
    timeouts: {{connect: 1s, first_byte: 5s, idle: 2s, total: 30s}}
  anthropic:
    url: {provider_url}
    protocol: anthropic
    timeouts: {{connect: 1s, first_byte: 5s, idle: 2s, total: 30s}}
shutdown:
  grace_period: 5s
",
        token = token_file.display()
    )
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        crate::telemetry::init_logging();
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let provider = spawn_provider(
        loopback,
        ProviderSim {
            first_chunk_delay: Duration::from_millis(120),
            chunk_delay: Duration::from_millis(15),
            chunks: 20,
            error_rate: 0.03,
            // Each 429 carries `Retry-After: 1`, which opens the primary's circuit: rare enough
            // here that the outage is the story.
            rate_limit_rate: 0.005,
            tool_call_rate: 0.3,
            hallucination_rate: 0.2,
            outage: Some((args.outage_at, args.outage_for)),
            seed: clock_seed(),
            ..ProviderSim::default()
        },
    )
    .await
    .context("starting the simulated provider")?;
    // The fallback: a second provider, slower but healthy.
    let spare = spawn_provider(
        loopback,
        ProviderSim {
            first_chunk_delay: Duration::from_millis(180),
            chunk_delay: Duration::from_millis(15),
            chunks: 20,
            tool_call_rate: 0.3,
            seed: clock_seed() ^ 0x5a5e,
            ..ProviderSim::default()
        },
    )
    .await
    .context("starting the simulated spare provider")?;
    let agent_sim = AgentSim {
        error_rate: 0.01,
        leak_rate: 0.0025,
        leak_burst: Some((args.leak_at, 0.33)),
        work: Duration::from_millis(20),
        seed: clock_seed() ^ 0xa9e7,
        ..AgentSim::default()
    };
    let llm_url = agent_sim.llm_url.clone();
    let agent = spawn_agent(loopback, agent_sim)
        .await
        .context("starting the simulated agent")?;

    // Where the kill switch sends the agent's traffic: people, who answer more slowly.
    let queue = crate::sim::serve(loopback, |req: http::Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut r = http::Response::new(crate::sim::full(
            r#"{"status":"queued","answer":"A person from our support team will reply shortly."}"#,
        ));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await
    .context("starting the simulated human queue")?;
    let token_dir = std::env::temp_dir().join(format!("sloguard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&token_dir).context("creating the demo's token directory")?;
    let token_file = token_dir.join("admin-token");
    std::fs::write(&token_file, DEMO_TOKEN).context("writing the demo's admin token")?;

    let mut admin = args.admin;
    if std::net::TcpListener::bind(admin).is_err() {
        admin = loopback;
    }
    let config = Config::parse(
        "demo",
        &demo_config(
            admin,
            &token_file,
            &agent.url(),
            &provider.url(),
            &spare.url(),
            &queue.url(),
        ),
    )?;
    let sidecar = Sidecar::start(config).await?;
    let inbound = sidecar
        .listener_addr("inbound")
        .context("inbound listener")?;
    let egress = sidecar.listener_addr("egress").context("egress listener")?;
    let anthropic = sidecar
        .listener_addr("egress-anthropic")
        .context("egress-anthropic listener")?;
    let _ = llm_url.set(format!("http://{egress}"));

    println!("sloguard demo: simulated agent {} and LLM provider {} speaking OpenAI and Anthropic (3% 500s, 0.5% 429s, SSE streams, 30% tool calls of which 20% hallucinated)", agent.url(), provider.url());
    println!("  inbound           http://{inbound}  (role agent: clients -> agent; the agent calls its LLM through egress)");
    println!("  egress            http://{egress}  (role llm: agent -> provider, OpenAI Chat Completions; falls back to openai-spare {}, model rewritten to gpt-4.1-mini)", spare.url());
    if !args.outage_for.is_zero() {
        println!(
            "  outage   openai answers only 503s from {:?} to {:?}: watch its circuit open, traffic move to openai-spare, the probes, the close; egress keeps answering",
            args.outage_at,
            args.outage_at + args.outage_for
        );
    }
    println!("  egress-anthropic  http://{anthropic}  (role llm: Anthropic Messages, same provider, no fallback: what the outage does without one)");
    println!(
        "  safety   every answer of the agent and the LLM inspected (emails, card numbers, SSNs, keys); the agent leaks one answer in 400, then a third of them from {:?}: 5 violations within 10s trip the kill switch and inbound traffic goes to a human queue {}",
        args.leak_at,
        queue.url()
    );
    println!(
        "  admin    http://{}/metrics   /healthz   /readyz   /circuits",
        sidecar.admin_addr
    );
    println!(
        "  enable   curl -X POST -H 'Authorization: Bearer {DEMO_TOKEN}' http://{}/admin/agent/enable   (a human decides)",
        sidecar.admin_addr
    );
    println!(
        "  traffic  {} req/s to each listener{}",
        args.rate,
        args.duration
            .map_or(" until Ctrl-C".to_string(), |d| format!(" for {d:?}"))
    );
    println!();

    let client: DemoClient = Client::builder(TokioExecutor::new()).build_http();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let limit = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let mut send =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    let mut llm = LlmSummary::default();
    let mut chain = ChainSummary::default();
    let mut report =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = super::wait_for_stop_signal().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = send.tick() => {
                fire(&client, &limit, &samples, 0, format!("http://{inbound}/v1/tasks"), r#"{"task":"summarise the ticket"}"#);
                fire(&client, &limit, &samples, 1, format!("http://{egress}/v1/chat/completions"), OPENAI_REQUEST);
                fire(&client, &limit, &samples, 2, format!("http://{anthropic}/v1/messages"), ANTHROPIC_REQUEST);
            }
            _ = report.tick() => {
                let metrics = sidecar.telemetry.render();
                let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
                let t = start.elapsed().as_secs();
                for (i, name) in ["inbound", "egress", "egress-anthropic"].into_iter().enumerate() {
                    println!("[{t:>4}s] {}", summary_line(name, &metrics, &mut s.listeners[i]));
                }
                for upstream in ["openai", "openai-spare", "anthropic"] {
                    println!("[{t:>4}s] {}", llm.line(upstream, &metrics));
                }
                println!("[{t:>4}s] {}", chain.line("openai", &metrics));
                println!("[{t:>4}s] {}", safety_line(&metrics));
            }
            _ = &mut stop => break,
        }
    }
    println!("\nstopping: draining in-flight requests");
    sidecar.shutdown().await;
    Ok(())
}

const OPENAI_REQUEST: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{"type":"object"}}}]}"#;
const ANTHROPIC_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":512,"stream":true,"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"name":"open_ticket","input_schema":{"type":"object"}}]}"#;

/// The LLM line of the summary, from the sidecar's own GenAI metrics: time to first token over
/// the last second (from the histogram's buckets, as Prometheus' `histogram_quantile` would),
/// output tokens per second, and totals of finish reasons and hallucinated tool calls.
#[derive(Default)]
struct LlmSummary {
    /// Per upstream: the TTFT buckets `(le, cumulative count)` and output-token sum last time.
    last: std::collections::HashMap<String, (Vec<(f64, f64)>, f64)>,
}

/// The safety line: responses inspected and violations per listener, by detector, and the
/// kill switch with what the human queue answered.
fn safety_line(metrics: &str) -> String {
    let mut parts = Vec::new();
    for listener in ["inbound", "egress"] {
        let l = format!("listener=\"{listener}\"");
        let inspected = sum_series(metrics, "agent_responses_total", &[&l]);
        let mut by = Vec::new();
        for d in [
            "pii_email",
            "pii_credit_card",
            "pii_us_ssn",
            "secrets",
            "content_filter",
        ] {
            let n = sum_series(
                metrics,
                "agent_safety_violations_total",
                &[&l, &format!("detector=\"{d}\"")],
            );
            if n > 0.0 {
                by.push(format!("{d} {n}"));
            }
        }
        let all = sum_series(metrics, "agent_safety_violations_total", &[&l]);
        parts.push(format!(
            "{listener} {inspected} inspected, {all} violations{}",
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        ));
    }
    let disabled = sum_series(metrics, "sloguard_agent_disabled", &[]) > 0.0;
    let queue = sum_series(
        metrics,
        "agent_requests_total",
        &["upstream=\"kill_switch_fallback\""],
    );
    format!(
        "safety   {} | kill switch {} | human queue answered {queue}",
        parts.join(" | "),
        if disabled { "DISABLED (sev1)" } else { "off" }
    )
}

/// Sums a metric's samples over the series whose labels contain every `filter`.
fn sum_series(metrics: &str, name: &str, filters: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn buckets(metrics: &str, upstream: &str) -> Vec<(f64, f64)> {
    let name = "gen_ai_client_operation_time_to_first_chunk_seconds_bucket";
    let filter = format!("upstream=\"{upstream}\"");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&filter))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|v| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NAN)
                }
            });
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(v)) = (le, value) {
            match by_le.iter_mut().find(|(l, _)| *l == le) {
                Some(entry) => entry.1 += v,
                None => by_le.push((le, v)),
            }
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// The `q` quantile of a cumulative histogram, interpolated inside its bucket.
fn quantile(q: f64, cumulative: &[(f64, f64)]) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in cumulative {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let inside = (rank - prev.1) / (count - prev.1).max(1e-9);
            return Some(prev.0 + (le - prev.0) * inside);
        }
        prev = (le, count);
    }
    None
}

impl LlmSummary {
    fn line(&mut self, upstream: &str, metrics: &str) -> String {
        let up = format!("upstream=\"{upstream}\"");
        let now = buckets(metrics, upstream);
        let tokens = sum_series(
            metrics,
            "gen_ai_client_token_usage_sum",
            &[&up, "gen_ai_token_type=\"output\""],
        );
        let (before, tokens_before) = self.last.remove(upstream).unwrap_or_default();
        let window: Vec<(f64, f64)> = now
            .iter()
            .map(|&(le, c)| {
                let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
                (le, c - b)
            })
            .collect();
        let ms = |q| {
            quantile(q, &window).map_or("    -".to_string(), |v| format!("{:>4.0}ms", v * 1000.0))
        };
        let count = |name: &str, label: &str| sum_series(metrics, name, &[&up, label]) as u64;
        let line = format!(
            "{upstream:<16} TTFT p50 {} p99 {} (from buckets) | output tokens/s {:>5.0} | finish stop {:>4} tool_calls {:>4} error {:>4} | hallucinated tool calls: unknown_tool {:>3} invalid_arguments {:>3}",
            ms(0.5),
            ms(0.99),
            tokens - tokens_before,
            count("agent_llm_finish_reasons_total", "reason=\"stop\""),
            count("agent_llm_finish_reasons_total", "reason=\"tool_calls\""),
            count("agent_llm_finish_reasons_total", "reason=\"error\""),
            count("agent_hallucinated_tool_calls_total", "kind=\"unknown_tool\""),
            count("agent_hallucinated_tool_calls_total", "kind=\"invalid_arguments\""),
        );
        self.last.insert(upstream.to_owned(), (now, tokens));
        line
    }
}

/// The fallback line of the summary: the primary's attempts (all and last second), its circuit,
/// and the requests moved on from it, from the sidecar's own metrics.
#[derive(Default)]
struct ChainSummary {
    /// Attempts and successful attempts last time.
    last: (f64, f64),
}

impl ChainSummary {
    fn line(&mut self, upstream: &str, metrics: &str) -> String {
        let up = format!("upstream=\"{upstream}\"");
        let attempts = sum_series(metrics, "sloguard_upstream_requests_total", &[&up]);
        let ok = sum_series(
            metrics,
            "sloguard_upstream_requests_total",
            &[&up, "outcome=\"ok\""],
        );
        let (attempts_before, ok_before) = std::mem::replace(&mut self.last, (attempts, ok));
        let share = |ok: f64, all: f64| {
            if all > 0.0 {
                format!("{:>5.1}%", 100.0 * ok / all)
            } else {
                "    -".to_string()
            }
        };
        let state = match sum_series(metrics, "sloguard_circuit_state", &[&up]) as u8 {
            0 => "closed",
            1 => "half_open",
            _ => "open",
        };
        let transitions = |to: &str| {
            sum_series(
                metrics,
                "sloguard_circuit_transitions_total",
                &[&up, &format!("to=\"{to}\"")],
            ) as u64
        };
        let from = format!("from=\"{upstream}\"");
        let moved = |reason: &str| {
            sum_series(
                metrics,
                "sloguard_fallbacks_total",
                &[&from, &format!("reason=\"{reason}\"")],
            ) as u64
        };
        format!(
            "circuit {upstream:<8} {state:<9} (opened {:>2}, probes ok {:>2}) | attempts ok {} all, {} last 1s | requests moved on to the fallback: 5xx {:>4} 429 {:>4} circuit_open {:>5}",
            transitions("open"),
            transitions("closed"),
            share(ok, attempts),
            share(ok - ok_before, attempts - attempts_before),
            moved("5xx"),
            moved("429"),
            moved("circuit_open"),
        )
    }
}

/// A different run each time (the simulators' default seeds keep tests repeatable).
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

fn fire(
    client: &DemoClient,
    limit: &Arc<Semaphore>,
    samples: &Arc<Mutex<Samples>>,
    listener: usize,
    url: String,
    body: &'static str,
) {
    // Bounded: past 256 requests in flight the demo skips a beat rather than pile up.
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return;
    };
    let (client, samples) = (client.clone(), samples.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let Ok(req) = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
        else {
            return;
        };
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
        s.listeners[listener].push(secs);
    });
}

/// One listener's line: totals by status class and cause from the sidecar's own `/metrics`,
/// client-observed p50/p99 over the last second.
fn summary_line(listener: &str, metrics: &str, window: &mut Vec<f64>) -> String {
    let mut classes = [0u64; 5];
    let mut causes = [0u64; 4];
    let needle = format!("listener=\"{listener}\"");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("agent_requests_total{") && l.contains(&needle))
    {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            if line.contains(&format!("status=\"{class}\"")) {
                classes[i] += value;
            }
        }
        for (i, cause) in ["none", "upstream", "proxy", "agent"].iter().enumerate() {
            if line.contains(&format!("cause=\"{cause}\"")) {
                causes[i] += value;
            }
        }
    }
    let total: u64 = classes.iter().sum();
    window.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if window.is_empty() {
            "    -".to_string()
        } else {
            let i = ((window.len() as f64 * p).ceil() as usize).clamp(1, window.len()) - 1;
            format!("{:>4.0}ms", window[i] * 1000.0)
        }
    };
    let availability = if total > 0 {
        format!(
            "{:>6.2}%",
            100.0 * (total - classes[4]) as f64 / total as f64
        )
    } else {
        "      -".to_string()
    };
    let line = format!(
        "{listener:<16} total {total:>6} | availability {availability} | 2xx {:>6}  4xx {:>4}  5xx {:>4} | failures by cause: agent {:>3} upstream {:>3} proxy {:>3} | last 1s: {:>3} done, p50 {} p99 {}",
        classes[1], classes[3], classes[4], causes[3], causes[1], causes[2], window.len(), q(0.5), q(0.99)
    );
    window.clear();
    line
}
