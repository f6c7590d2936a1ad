//! A simulated agent API: `POST /v1/tasks` does some "work", optionally asks another agent (through
//! the sidecar's peers listener) and its LLM (through the sidecar's egress listener), as a real
//! agent would, forwarding its task id, and answers JSON; a share of requests fail with 500 as
//! configured. When the other agent's answer fails, the agent fails the request with 503.
//!
//! The request body may say which step of a task it is, `{"step": 2, "steps": 3}`: the agent
//! answers `x-agent-task-status: in_progress` until the last step, then `completed`. With
//! `"loop": true` the agent is stuck in a reasoning loop: it asks its model again and again (the
//! same tool call comes back each time) until a call fails or `loop_calls` were made. During the
//! `stuck` window the agent hangs: it answers nothing until the window ends. With an MCP server
//! (through the sidecar's `mcp` listener), each step also calls one of its tools.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{full, serve, SimBody, SimRng, SimServer};

#[derive(Debug, Clone)]
pub struct AgentSim {
    /// Base URL the agent sends its LLM calls to (the sidecar's egress listener), settable after
    /// the agent started (the sidecar's port is known only then); unset: no LLM call.
    pub llm_url: Arc<OnceLock<String>>,
    /// Base URL of another agent this one asks on each step (the sidecar's peers listener),
    /// settable after the agent started; unset: no call.
    pub peer_url: Arc<OnceLock<String>>,
    /// Base URL of the MCP server the agent calls a tool on after each step's LLM call (the
    /// sidecar's `mcp` listener), settable after the agent started; unset: no call.
    pub mcp_url: Arc<OnceLock<String>>,
    /// Time the agent spends on a task besides its LLM call.
    pub work: Duration,
    /// Share of tasks answered 500.
    pub error_rate: f64,
    /// Share of answers that leak a customer's email address or an API key (what the safety
    /// detectors are for).
    pub leak_rate: f64,
    /// From this long after the start, the share of leaking answers is the second value: the
    /// agent goes bad (a bad prompt, a poisoned document), and the kill switch trips.
    pub leak_burst: Option<(Duration, f64)>,
    /// From this long after the start, for that long, the agent hangs: requests get no answer
    /// until the window ends.
    pub stuck: Option<(Duration, Duration)>,
    /// The most LLM calls a looping step makes.
    pub loop_calls: usize,
    /// Share of answers the agent's own validator finds wrong: it says so in
    /// `x-agent-verdict: incorrect` (else `correct`), when set.
    pub incorrect_rate: Option<f64>,
    pub seed: u64,
}

impl Default for AgentSim {
    fn default() -> Self {
        AgentSim {
            llm_url: Arc::new(OnceLock::new()),
            peer_url: Arc::new(OnceLock::new()),
            mcp_url: Arc::new(OnceLock::new()),
            work: Duration::from_millis(5),
            error_rate: 0.0,
            leak_rate: 0.0,
            leak_burst: None,
            stuck: None,
            loop_calls: 100,
            incorrect_rate: None,
            seed: 0xa9e7,
        }
    }
}

pub async fn spawn_agent(bind: SocketAddr, sim: AgentSim) -> std::io::Result<SimServer> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let rng = Arc::new(SimRng::new(sim.seed));
    let sim = Arc::new(sim);
    let started = tokio::time::Instant::now();
    let steps = Arc::new(AtomicU64::new(0));
    serve(bind, move |req| {
        let (sim, rng, client) = (sim.clone(), rng.clone(), client.clone());
        let n = steps.fetch_add(1, Ordering::Relaxed);
        async move { respond(&sim, &rng, &client, req, (started, n)).await }
    })
    .await
}

async fn respond(
    sim: &AgentSim,
    rng: &SimRng,
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Incoming>,
    (started, n): (tokio::time::Instant, u64),
) -> Response<SimBody> {
    if req.method() != Method::POST || req.uri().path() != "/v1/tasks" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such endpoint"}),
        );
    }
    let task_id = req.headers().get("x-agent-task-id").cloned();
    let step: Step = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or_default(),
        Err(_) => Step::default(),
    };
    if let Some((at, length)) = sim.stuck {
        let end = started + at + length;
        if started.elapsed() >= at && tokio::time::Instant::now() < end {
            tokio::time::sleep_until(end).await;
        }
    }
    tokio::time::sleep(sim.work).await;
    if rng.next_f64() < sim.error_rate {
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "simulated agent crash"}),
        );
    }
    if let (Some(url), false) = (sim.peer_url.get(), step.r#loop) {
        let url = format!("{url}/v1/tasks");
        let status = ask(client, &url, task_id.as_ref(), "{}", None).await;
        if !status.is_success() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the planner failed", "planner_status": status.as_u16()}),
            );
        }
    }
    let llm_status = match ask_model(sim, client, task_id.as_ref(), &step).await {
        Ok(status) => status,
        Err(failed) => return failed,
    };
    if let (Some(url), false) = (sim.mcp_url.get(), step.r#loop) {
        let url = format!("{url}/mcp");
        super::mcp::agent_tool_call(client, &url, task_id.as_ref(), n).await;
    }
    let answer = answer(sim, rng, started);
    let mut r = json(
        StatusCode::OK,
        serde_json::json!({"status": "completed", "answer": answer, "llm_status": llm_status}),
    );
    if let Some(rate) = sim.incorrect_rate {
        let verdict = match rng.next_f64() < rate {
            true => "incorrect",
            false => "correct",
        };
        r.headers_mut()
            .insert("x-agent-verdict", HeaderValue::from_static(verdict));
    }
    if let (Some(step), Some(steps)) = (step.step, step.steps) {
        let verdict = if step >= steps {
            "completed"
        } else {
            "in_progress"
        };
        r.headers_mut()
            .insert("x-agent-task-status", HeaderValue::from_static(verdict));
    }
    r
}

/// The step's LLM calls, when the agent has a model: the last call's status, or the 503 the
/// agent answers when one fails. `None` without a model.
async fn ask_model(
    sim: &AgentSim,
    client: &Client<HttpConnector, Full<Bytes>>,
    task_id: Option<&HeaderValue>,
    step: &Step,
) -> Result<Option<u16>, Response<SimBody>> {
    let Some(url) = sim.llm_url.get() else {
        return Ok(None);
    };
    // A looping step asks again and again, getting the same tool call back each time.
    let calls = if step.r#loop {
        sim.loop_calls.max(1)
    } else {
        1
    };
    let mut status = StatusCode::OK;
    let url = format!("{url}/v1/chat/completions");
    for _ in 0..calls {
        status = ask_llm(client, &url, task_id, step.r#loop).await;
        if !status.is_success() {
            break;
        }
    }
    if !status.is_success() {
        // The agent cannot finish without its model: it fails the task itself.
        return Err(json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "LLM call failed", "llm_status": status.as_u16()}),
        ));
    }
    Ok(Some(status.as_u16()))
}

/// The task's answer: by the dice (`leak_rate`, or the burst's rate once it began), one that
/// leaks an email address or an API key.
fn answer(sim: &AgentSim, rng: &SimRng, started: tokio::time::Instant) -> &'static str {
    let leak_rate = match sim.leak_burst {
        Some((at, rate)) if started.elapsed() >= at => rate,
        _ => sim.leak_rate,
    };
    if rng.next_f64() < leak_rate {
        if rng.next_f64() < 0.5 {
            "done; I emailed the refund to dana.whitfield@northwind-mail.com"
        } else {
            "done; retried with key sk-proj-Zq8vR2mK4tY7wP1xN5bC3dF6gH9jL0aS"
        }
    } else {
        "done"
    }
}

/// Which step of its task a request is (all optional).
#[derive(Debug, Default, serde::Deserialize)]
struct Step {
    #[serde(default)]
    step: Option<u32>,
    #[serde(default)]
    steps: Option<u32>,
    /// The agent loops on this step.
    #[serde(default)]
    r#loop: bool,
}

/// One LLM call through the sidecar, carrying the task id; its status (502: no answer).
async fn ask_llm(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    task_id: Option<&HeaderValue>,
    looping: bool,
) -> StatusCode {
    let body = r#"{"model":"sim-gpt","messages":[{"role":"user","content":"help"}],"stream":false,"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{"type":"object"}}}]}"#;
    // A looping agent gets the same tool call back each time: the provider's scenario.
    let scenario = looping.then_some("tool_call");
    ask(client, url, task_id, body, scenario).await
}

/// One call through the sidecar with a JSON `body`, carrying the task id (and the simulated
/// provider's `scenario`); its status (502: no answer).
async fn ask(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    task_id: Option<&HeaderValue>,
    body: &'static str,
    scenario: Option<&'static str>,
) -> StatusCode {
    let mut call = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = task_id {
        call = call.header("x-agent-task-id", id.clone());
    }
    if let Some(scenario) = scenario {
        call = call.header("x-sim-scenario", scenario);
    }
    match call.body(Full::new(Bytes::from_static(body.as_bytes()))) {
        Ok(call) => match client.request(call).await {
            Ok(r) => {
                let s = r.status();
                let _ = r.into_body().collect().await;
                s
            }
            Err(_) => StatusCode::BAD_GATEWAY,
        },
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json(code: StatusCode, body: serde_json::Value) -> Response<SimBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
