//! The demo's world: the simulated providers, the support agent, the planner agent behind a
//! sidecar of its own, the human queue, the MCP tool server, and the support agent's sidecar
//! config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::header;
use http_body_util::BodyExt;

use super::DemoArgs;
use crate::config::Config;
use crate::sidecar::Sidecar;
use crate::sim::{
    spawn_agent, spawn_judge, spawn_mcp, spawn_provider, AgentSim, JudgeSim, McpSim, ProviderSim,
    SimServer,
};

/// Where the demo's simulated parts listen.
pub(super) struct Urls {
    pub(super) agent: String,
    pub(super) provider: String,
    pub(super) spare: String,
    pub(super) queue: String,
    pub(super) planner: String,
    pub(super) judge: String,
    pub(super) mcp: String,
}

pub(super) fn demo_config(admin: SocketAddr, token_file: &std::path::Path, urls: &Urls) -> String {
    let Urls {
        agent: agent_url,
        provider: provider_url,
        spare: spare_url,
        queue: queue_url,
        planner: planner_url,
        judge: judge_url,
        mcp: mcp_url,
    } = urls;
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
  - {{name: peers, bind: 127.0.0.1:0, role: peer, route: planner}}
  - {{name: tools, bind: 127.0.0.1:0, role: mcp, route: tools}}
routes:
  agent: {{upstreams: [agent]}}
  llm:
    upstreams: [openai, openai-spare]
    fallback_on: [connect_error, timeout, 5xx, 429]
    max_replay_body: 1MiB
  anthropic: {{upstreams: [anthropic]}}
  planner: {{upstreams: [planner], max_in_flight: 8}}
  tools: {{upstreams: [sim-tools]}}
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
  planner:
    url: {planner_url}
    timeouts: {{first_byte: 10s}}
  judge:
    url: {judge_url}
    protocol: openai
  sim-tools:
    url: {mcp_url}
    protocol: mcp
    timeouts: {{first_byte: 5s}}
mcp: {{tool_changes: block, validate_arguments: record}}
cascade: {{default_deadline: 2s}}
slos:
  - {{name: availability, sli: availability, target: {availability}, window: 30d, exclude_dependency_failures: true}}
  - {{name: task-completion, sli: task_completion, target: 0.92, window: 30d}}
  - {{name: latency, sli: latency, threshold: 1s, target: 0.95, window: 30d}}
  - {{name: ttft, sli: time_to_first_token, threshold: 0.5s, target: 0.95, window: 30d}}
  - {{name: safety, sli: safety, target: 0.999, window: 30d}}
  - {{name: correctness, sli: correctness, target: 0.9, window: 30d}}
  - {{name: tool-success, sli: tool_success, target: 0.95, window: 30d}}
  - {{name: search-latency, sli: tool_latency, tool: search, threshold: 0.5s, target: 0.95, window: 30d}}
correctness:
  judge: {{upstream: judge, model: judge-mini, sample_ratio: 0.25, max_per_minute: 600}}
tasks:
  stuck_after: 3s
  max_llm_calls: 20
  max_repeated_tool_calls: 3
  loop_action: block
shutdown:
  grace_period: 5s
",
        token = token_file.display(),
        availability = super::AVAILABILITY_TARGET,
    )
}

/// The simulated parts: the agent, the providers, the human queue.
pub(super) struct World {
    pub(super) provider: SimServer,
    pub(super) spare: SimServer,
    pub(super) agent: SimServer,
    pub(super) queue: SimServer,
    /// The planner agent and its own sidecar.
    pub(super) planner: SimServer,
    pub(super) planner_sidecar: Sidecar,
    /// The judge model grading a sample of the agent's answers.
    pub(super) judge: SimServer,
    /// The MCP server the agent calls its tools on (through the sidecar's `tools` listener).
    pub(super) mcp: SimServer,
    /// Where the agent calls its LLM: the sidecar's egress, once it listens.
    pub(super) llm_url: Arc<std::sync::OnceLock<String>>,
    /// Where the agent calls the planner: the sidecar's peers listener, once it listens.
    pub(super) peer_url: Arc<std::sync::OnceLock<String>>,
    /// Where the agent calls its tools: the sidecar's tools listener, once it listens.
    pub(super) mcp_url: Arc<std::sync::OnceLock<String>>,
}

impl World {
    pub(super) async fn spawn(args: &DemoArgs, loopback: SocketAddr) -> anyhow::Result<World> {
        let (provider, spare) = providers(args, loopback).await?;
        let (planner, planner_sidecar) = planner(args, loopback).await?;
        let agent_sim = AgentSim {
            error_rate: 0.01,
            leak_rate: 0.0025,
            leak_burst: Some((args.leak_at, 0.33)),
            stuck: (!args.stuck_for.is_zero()).then_some((args.stuck_at, args.stuck_for)),
            // Past the loop guard's max_llm_calls: the guard, not the agent, ends the loop.
            loop_calls: 40,
            work: Duration::from_millis(20),
            // Its validator finds a few of its own answers wrong, and says so.
            incorrect_rate: Some(0.04),
            seed: clock_seed() ^ 0xa9e7,
            ..AgentSim::default()
        };
        let (llm_url, peer_url) = (agent_sim.llm_url.clone(), agent_sim.peer_url.clone());
        let mcp_url = agent_sim.mcp_url.clone();
        let mcp = spawn_mcp(
            loopback,
            McpSim {
                change_at: Some(args.tool_change_at),
                ..McpSim::default()
            },
        )
        .await
        .context("starting the simulated MCP server")?;
        let agent = spawn_agent(loopback, agent_sim)
            .await
            .context("starting the simulated agent")?;
        Ok(World {
            provider,
            spare,
            agent,
            queue: human_queue(loopback).await?,
            planner,
            planner_sidecar,
            judge: spawn_judge(
                loopback,
                JudgeSim {
                    seed: clock_seed() ^ 0x1d9e,
                    ..JudgeSim::default()
                },
            )
            .await
            .context("starting the simulated judge")?,
            mcp,
            llm_url,
            peer_url,
            mcp_url,
        })
    }
}

/// The primary provider (with its outage) and the fallback, slower but healthy.
async fn providers(
    args: &DemoArgs,
    loopback: SocketAddr,
) -> anyhow::Result<(SimServer, SimServer)> {
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
            truncate_rate: 0.03,
            schema_break_rate: 0.04,
            outage: Some((args.outage_at, args.outage_for)),
            seed: clock_seed(),
            ..ProviderSim::default()
        },
    )
    .await
    .context("starting the simulated provider")?;
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
    Ok((provider, spare))
}

/// The planner agent the support agent asks for a plan on every step, behind a sidecar of its
/// own (`cascade` on: deadlines, depth and path carry on through it). It slows down during
/// `--planner-slow-at`/`--planner-slow-for`: a request then waits until the slow period ends.
async fn planner(args: &DemoArgs, loopback: SocketAddr) -> anyhow::Result<(SimServer, Sidecar)> {
    let planner = spawn_agent(
        loopback,
        AgentSim {
            work: Duration::from_millis(30),
            stuck: (!args.planner_slow_for.is_zero())
                .then_some((args.planner_slow_at, args.planner_slow_for)),
            seed: clock_seed() ^ 0x91a7,
            ..AgentSim::default()
        },
    )
    .await
    .context("starting the simulated planner agent")?;
    let config = Config::parse(
        "demo planner",
        &format!(
            "agent: planner
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
routes:
  agent: {{upstreams: [agent]}}
upstreams:
  agent: {{url: {}, timeouts: {{first_byte: 30s}}}}
cascade: {{}}
shutdown: {{grace_period: 1s}}
",
            planner.url()
        ),
    )?;
    let sidecar = Sidecar::start(config)
        .await
        .context("starting the planner's sidecar")?;
    Ok((planner, sidecar))
}

/// Where the kill switch sends the agent's traffic: people, who answer more slowly.
async fn human_queue(loopback: SocketAddr) -> anyhow::Result<SimServer> {
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
    Ok(queue)
}

/// A different run each time (the simulators' default seeds keep tests repeatable).
pub(super) fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}
