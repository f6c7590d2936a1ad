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
use crate::sim::{spawn_agent, spawn_provider, AgentSim, ProviderSim, SimRng, SimServer};

mod summary;
use summary::{safety_line, slo_line, summary_line, tasks_line, ChainSummary, LlmSummary};

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
    #[arg(long, value_parser = parse_duration, default_value = "40s")]
    pub leak_at: Duration,
    /// When one task's agent falls into a reasoning loop (the same tool call, again and again),
    /// for the loop guard to cut.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub loop_at: Duration,
    /// When the agent gets stuck: it answers nothing until the period ends, and
    /// `/agent/healthz` turns 503 once a request has waited past `stuck_after` (3 s here).
    #[arg(long, value_parser = parse_duration, default_value = "28s")]
    pub stuck_at: Duration,
    /// How long the agent stays stuck (`0s`: never).
    #[arg(long, value_parser = parse_duration, default_value = "6s")]
    pub stuck_for: Duration,
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
  action: block
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
slos:
  - {{name: availability, sli: availability, target: 0.99, window: 30d, exclude_dependency_failures: true}}
  - {{name: task-completion, sli: task_completion, target: 0.92, window: 30d}}
  - {{name: latency, sli: latency, threshold: 1s, target: 0.95, window: 30d}}
  - {{name: ttft, sli: time_to_first_token, threshold: 0.5s, target: 0.95, window: 30d}}
  - {{name: safety, sli: safety, target: 0.999, window: 30d}}
tasks:
  stuck_after: 3s
  max_llm_calls: 20
  max_repeated_tool_calls: 3
  loop_action: block
shutdown:
  grace_period: 5s
",
        token = token_file.display()
    )
}

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        crate::telemetry::init_logging();
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let World {
        provider,
        spare,
        agent,
        queue,
        llm_url,
    } = World::spawn(&args, loopback).await?;
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
    let sidecar = Sidecar::start_tallying_every_metric(config).await?;
    let inbound = sidecar
        .listener_addr("inbound")
        .context("inbound listener")?;
    let egress = sidecar.listener_addr("egress").context("egress listener")?;
    let anthropic = sidecar
        .listener_addr("egress-anthropic")
        .context("egress-anthropic listener")?;
    let _ = llm_url.set(format!("http://{egress}"));
    let world = World {
        provider,
        spare,
        agent,
        queue,
        llm_url,
    };
    let addrs = Addrs {
        inbound,
        egress,
        anthropic,
    };
    print_intro(&args, &world, &sidecar, &addrs);
    drive(&args, &sidecar, &addrs).await;
    println!("\nstopping: draining in-flight requests");
    sidecar.shutdown().await;
    Ok(())
}

/// The simulated parts: the agent, the providers, the human queue.
struct World {
    provider: SimServer,
    spare: SimServer,
    agent: SimServer,
    queue: SimServer,
    /// Where the agent calls its LLM: the sidecar's egress, once it listens.
    llm_url: Arc<std::sync::OnceLock<String>>,
}

/// The sidecar's listeners.
struct Addrs {
    inbound: SocketAddr,
    egress: SocketAddr,
    anthropic: SocketAddr,
}

impl World {
    async fn spawn(args: &DemoArgs, loopback: SocketAddr) -> anyhow::Result<World> {
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
            stuck: (!args.stuck_for.is_zero()).then_some((args.stuck_at, args.stuck_for)),
            // Past the loop guard's max_llm_calls: the guard, not the agent, ends the loop.
            loop_calls: 40,
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
        Ok(World {
            provider,
            spare,
            agent,
            queue,
            llm_url,
        })
    }
}

/// What the demo runs, and where to look.
fn print_intro(args: &DemoArgs, world: &World, sidecar: &Sidecar, addrs: &Addrs) {
    let World {
        provider,
        spare,
        agent,
        queue,
        ..
    } = world;
    let Addrs {
        inbound,
        egress,
        anthropic,
    } = addrs;
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
        "  safety   every answer of the agent and the LLM inspected (emails, card numbers, SSNs, keys); the agent leaks one answer in 400, then a third of them from {:?}: each leak is blocked (403 safety_blocked), and leaks in 5 tasks within 10s trip the kill switch and inbound traffic goes to a human queue {}",
        args.leak_at,
        queue.url()
    );
    println!(
        "  tasks    inbound traffic is tasks of 1-3 requests (x-agent-task-id; the agent says in_progress, then completed); one in 20 clients walks away mid-task (abandoned after stuck_after 3s)"
    );
    println!(
        "  loop     at {:?} one task's agent loops, asking its model again and again and getting the same tool call back: the loop guard (max_repeated_tool_calls 3, loop_action block) answers its next call 429 loop_detected and the task fails",
        args.loop_at
    );
    if !args.stuck_for.is_zero() {
        println!(
            "  stuck    the agent hangs from {:?} to {:?}: once a request has waited 3s (stuck_after), /agent/healthz answers 503 and a kubelet would restart the agent",
            args.stuck_at,
            args.stuck_at + args.stuck_for
        );
    }
    println!(
        "  admin    http://{}/metrics   /healthz   /readyz   /agent/healthz   /circuits",
        sidecar.admin_addr
    );
    println!(
        "  slo      http://{}/slo   (the SLOs' budgets and burn rates, local view; a page with charts in a browser)",
        sidecar.admin_addr
    );
    println!(
        "  enable   curl -X POST -H 'Authorization: Bearer {DEMO_TOKEN}' http://{}/admin/agent/enable   (a human decides)",
        sidecar.admin_addr
    );
    println!(
        "  traffic  {} tasks/s to inbound, {} req/s to each egress listener{}",
        args.rate,
        args.rate,
        args.duration
            .map_or(" until Ctrl-C".to_string(), |d| format!(" for {d:?}"))
    );
    println!();
}

/// Sends the traffic and prints the summary every second, until the duration ends or a signal.
async fn drive(args: &DemoArgs, sidecar: &Sidecar, addrs: &Addrs) {
    let Addrs {
        inbound,
        egress,
        anthropic,
    } = addrs;
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
    let rng = SimRng::new(clock_seed() ^ 0x7a5c);
    let (mut task_no, mut looped) = (0u64, false);
    let healthz = format!("http://{}/agent/healthz", sidecar.admin_addr);
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = super::signal::wait_for_stop_signal().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = send.tick() => {
                task_no += 1;
                let steps = 1 + (rng.next_f64() * 3.0) as u32;
                // Some clients leave before their task's last step.
                let leave_after = (steps > 1 && rng.next_f64() < 0.05).then_some(steps - 1);
                let looping = !looped && start.elapsed() >= args.loop_at;
                looped |= looping;
                let task = Task { id: task_no, steps, leave_after, looping };
                start_task(&client, &limit, &samples, format!("http://{inbound}/v1/tasks"), task);
                fire(&client, &limit, &samples, 1, format!("http://{egress}/v1/chat/completions"), OPENAI_REQUEST);
                fire(&client, &limit, &samples, 2, format!("http://{anthropic}/v1/messages"), ANTHROPIC_REQUEST);
            }
            _ = report.tick() => {
                let metrics = sidecar.telemetry.tallies();
                let t = start.elapsed().as_secs();
                {
                    // Not held across the probe's await below.
                    let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
                    for (i, name) in ["inbound", "egress", "egress-anthropic"].into_iter().enumerate() {
                        println!("[{t:>4}s] {}", summary_line(name, metrics, &mut s.listeners[i]));
                    }
                }
                for upstream in ["openai", "openai-spare", "anthropic"] {
                    println!("[{t:>4}s] {}", llm.line(upstream, metrics));
                }
                println!("[{t:>4}s] {}", chain.line("openai", metrics));
                println!("[{t:>4}s] {}", safety_line(metrics));
                let probe = agent_healthz(&client, &healthz).await;
                println!("[{t:>4}s] {}", tasks_line(metrics, &probe));
                println!("[{t:>4}s] {}", slo_line(metrics));
            }
            _ = &mut stop => break,
        }
    }
}

const OPENAI_REQUEST: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{"type":"object"}}}]}"#;
const ANTHROPIC_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":512,"stream":true,"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"name":"open_ticket","input_schema":{"type":"object"}}]}"#;

/// A different run each time (the simulators' default seeds keep tests repeatable).
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

/// One task of the inbound traffic.
struct Task {
    id: u64,
    steps: u32,
    /// The client walks away after this step.
    leave_after: Option<u32>,
    /// The agent loops on the first step.
    looping: bool,
}

/// Sends a task's steps one after another, with the task's id; a step that fails ends it.
fn start_task(
    client: &DemoClient,
    limit: &Arc<Semaphore>,
    samples: &Arc<Mutex<Samples>>,
    url: String,
    task: Task,
) {
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return;
    };
    let (client, samples) = (client.clone(), samples.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let last = task.leave_after.unwrap_or(task.steps);
        for step in 1..=last {
            let body = serde_json::json!({
                "task": "summarise the ticket", "step": step, "steps": task.steps,
                "loop": task.looping && step == 1,
            });
            let Ok(req) = Request::post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-agent-task-id", format!("demo-task-{}", task.id))
                .body(Full::new(Bytes::from(body.to_string())))
            else {
                return;
            };
            let started = Instant::now();
            let ok = match client.request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            };
            samples.lock().unwrap_or_else(|p| p.into_inner()).listeners[0]
                .push(started.elapsed().as_secs_f64());
            if !ok {
                return;
            }
        }
    });
}

/// What `/agent/healthz` answers: `200 ok`, or `503 stuck: REASON`.
async fn agent_healthz(client: &DemoClient, url: &str) -> String {
    let Ok(req) = Request::get(url).body(Full::new(Bytes::new())) else {
        return "unreachable".into();
    };
    let Ok(resp) = client.request(req).await else {
        return "unreachable".into();
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match json["reason"].as_str() {
        Some(reason) => format!("{status} stuck: {reason}"),
        None => format!("{status} ok"),
    }
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
