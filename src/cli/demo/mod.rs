//! `sloguard demo`: simulated provider and agent, the sidecar in front of both, synthetic traffic,
//! and a live summary once a second. Needs no config and no network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{parse_duration, Config};
use crate::sidecar::Sidecar;
use crate::sim::SimRng;

mod summary;
mod traffic;
mod world;
use summary::{
    cascade_line, correctness_line, safety_line, slo_line, summary_line, tasks_line, tools_line,
    ChainSummary, LlmSummary,
};
use traffic::{agent_healthz, fire, start_task, Samples, Task, ANTHROPIC_REQUEST, OPENAI_REQUEST};
use world::{clock_seed, demo_config, World};

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
    /// When the planner agent (which the support agent asks on every step, through its `peers`
    /// listener) slows down: its answers wait until the slow period ends, past the 2 s deadline.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub planner_slow_at: Duration,
    /// How long the planner stays slow (`0s`: never).
    #[arg(long, value_parser = parse_duration, default_value = "8s")]
    pub planner_slow_for: Duration,
    /// When the MCP server quietly changes its `summarize` tool's description (a rug pull): the
    /// next tools/list shows the change, the guard counts it, raises an incident and holds the
    /// tool (`tool_changes: block`).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub tool_change_at: Duration,
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// The target of the demo's availability SLO (see `world::demo_config`).
const AVAILABILITY_TARGET: f64 = 0.99;

/// The demo's admin token: the demo is local, the token is printed for the curl commands.
const DEMO_TOKEN: &str = "demo-token";

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        crate::telemetry::init_logging();
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let world = World::spawn(&args, loopback).await?;
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
            &world::Urls {
                agent: world.agent.url(),
                provider: world.provider.url(),
                spare: world.spare.url(),
                queue: world.queue.url(),
                planner: format!(
                    "http://{}",
                    world
                        .planner_sidecar
                        .listener_addr("inbound")
                        .context("the planner's listener")?
                ),
                judge: world.judge.url(),
                mcp: world.mcp.url(),
            },
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
    let peers = sidecar.listener_addr("peers").context("peers listener")?;
    let tools = sidecar.listener_addr("tools").context("tools listener")?;
    let _ = world.llm_url.set(format!("http://{egress}"));
    let _ = world.peer_url.set(format!("http://{peers}"));
    let _ = world.mcp_url.set(format!("http://{tools}"));
    let addrs = Addrs {
        inbound,
        egress,
        anthropic,
        peers,
        tools,
    };
    print_intro(&args, &world, &sidecar, &addrs);
    drive(&args, &sidecar, &addrs).await;
    println!("\nstopping: draining in-flight requests");
    sidecar.shutdown().await;
    world.planner_sidecar.shutdown().await;
    Ok(())
}

/// The sidecar's listeners.
struct Addrs {
    inbound: SocketAddr,
    egress: SocketAddr,
    anthropic: SocketAddr,
    peers: SocketAddr,
    tools: SocketAddr,
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
        peers,
        tools,
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
    println!("  peers             http://{peers}  (role peer: on every step the agent asks a planner agent {}, behind the planner's own sidecar; bulkhead max_in_flight 8, deadline 2s)", world.planner.url());
    if !args.planner_slow_for.is_zero() {
        println!(
            "  planner  the planner slows down from {:?} to {:?}: calls to it are cut at their 2s deadline (504 deadline_exceeded), past 8 in flight refused at once (503 bulkhead_full), and the agent's 503s are charged to the dependency: its availability budget is not spent",
            args.planner_slow_at,
            args.planner_slow_at + args.planner_slow_for
        );
    }
    println!("  tools             http://{tools}  (role mcp: after each step's LLM call the agent calls a tool on MCP server {}: search (slow, SSE with progress), fetch (one call in 10 fails as the tool's own isError), summarize)", world.mcp.url());
    println!(
        "  rug pull the MCP server changes summarize's description at {:?} (it asks for ~/.ssh/id_rsa): the next tools/list shows it, the change is counted and raised (sev2), summarize leaves the list the agent gets and its calls are held (tool_changes: block) until POST /admin/mcp/sim-tools/accept",
        args.tool_change_at
    );
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
        ..
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
                // The agent is the peers listener's only client: no client-side samples.
                println!("[{t:>4}s] {}", summary_line("peers", metrics, &mut Vec::new()));
                println!("[{t:>4}s] {}", cascade_line(metrics, AVAILABILITY_TARGET));
                println!("[{t:>4}s] {}", correctness_line(metrics));
                println!("[{t:>4}s] {}", tools_line(metrics));
                println!("[{t:>4}s] {}", safety_line(metrics));
                let probe = agent_healthz(&client, &healthz).await;
                println!("[{t:>4}s] {}", tasks_line(metrics, &probe));
                println!("[{t:>4}s] {}", slo_line(metrics));
            }
            _ = &mut stop => break,
        }
    }
}
