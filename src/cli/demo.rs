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
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// Client-side latencies of the last second, per listener.
#[derive(Default)]
struct Samples {
    inbound: Vec<f64>,
    egress: Vec<f64>,
}

fn demo_config(admin: SocketAddr, agent_url: &str, provider_url: &str) -> String {
    format!(
        "agent: demo-agent
admin:
  bind: {admin}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
  - {{name: egress, bind: 127.0.0.1:0, role: llm, route: llm}}
routes:
  agent: {{upstreams: [agent]}}
  llm: {{upstreams: [openai]}}
upstreams:
  agent:
    url: {agent_url}
    timeouts: {{first_byte: 5s}}
  openai:
    url: {provider_url}
    protocol: openai
    timeouts: {{connect: 1s, first_byte: 5s, idle: 2s, total: 30s}}
shutdown:
  grace_period: 5s
"
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
            rate_limit_rate: 0.02,
            seed: clock_seed(),
        },
    )
    .await
    .context("starting the simulated provider")?;
    let agent_sim = AgentSim {
        error_rate: 0.01,
        work: Duration::from_millis(20),
        seed: clock_seed() ^ 0xa9e7,
        ..AgentSim::default()
    };
    let llm_url = agent_sim.llm_url.clone();
    let agent = spawn_agent(loopback, agent_sim)
        .await
        .context("starting the simulated agent")?;

    let mut admin = args.admin;
    if std::net::TcpListener::bind(admin).is_err() {
        admin = loopback;
    }
    let config = Config::parse("demo", &demo_config(admin, &agent.url(), &provider.url()))?;
    let sidecar = Sidecar::start(config).await?;
    let inbound = sidecar
        .listener_addr("inbound")
        .context("inbound listener")?;
    let egress = sidecar.listener_addr("egress").context("egress listener")?;
    let _ = llm_url.set(format!("http://{egress}"));

    println!("sloguard demo: simulated agent {} and OpenAI-style provider {} (3% 500s, 2% 429s, SSE streams)", agent.url(), provider.url());
    println!("  inbound  http://{inbound}  (role agent: clients -> agent; the agent calls its LLM through egress)");
    println!("  egress   http://{egress}  (role llm: agent -> provider)");
    println!(
        "  admin    http://{}/metrics   /healthz   /readyz",
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
                fire(&client, &limit, &samples, true, format!("http://{inbound}/v1/tasks"), r#"{"task":"summarise the ticket"}"#);
                fire(&client, &limit, &samples, false, format!("http://{egress}/v1/chat/completions"),
                     r#"{"model":"sim-gpt","stream":true,"messages":[{"role":"user","content":"hi"}]}"#);
            }
            _ = report.tick() => {
                let metrics = sidecar.telemetry.render();
                let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
                let t = start.elapsed().as_secs();
                println!("[{t:>4}s] {}", summary_line("inbound", &metrics, &mut s.inbound));
                println!("[{t:>4}s] {}", summary_line("egress", &metrics, &mut s.egress));
            }
            _ = &mut stop => break,
        }
    }
    println!("\nstopping: draining in-flight requests");
    sidecar.shutdown().await;
    Ok(())
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
    inbound: bool,
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
        if inbound {
            s.inbound.push(secs)
        } else {
            s.egress.push(secs)
        }
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
    let line = format!(
        "{listener:<8} total {total:>6} | 2xx {:>6}  4xx {:>4}  5xx {:>4} | failures by cause: agent {:>3} upstream {:>3} proxy {:>3} | last 1s: {:>3} done, p50 {} p99 {}",
        classes[1], classes[3], classes[4], causes[3], causes[1], causes[2], window.len(), q(0.5), q(0.99)
    );
    window.clear();
    line
}
