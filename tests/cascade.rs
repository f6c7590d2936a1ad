//! Calls between agents, end to end: sidecars in front of small in-process agents that call each
//! other through their `peer` listeners. A chain A → B → C where C hangs (the deadline bounds
//! A's wait, A's bulkhead holds, A's failures are charged to the dependency and spend none of its
//! budget), and a loop A → B → A (caught by the path on its first repeat, and by the depth when
//! the names do not get through).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::otlp::grpc_receiver;
use common::process::Process;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use sloguard::sim::{self, full as sim_full, SimServer};
use sloguard::Sidecar;

const TASK: &str = "x-agent-task-id";

/// Where an agent's calls go, known once its sidecar is up.
type Late = Arc<OnceLock<String>>;

/// An agent that answers each request by calling another agent through its sidecar's `peers`
/// listener (at `peer`, once set), passing its task id and trace context on as an agent's HTTP
/// client would: 200
/// with the callee's answer, or 503 when the call failed.
async fn relay_agent(peer: Late) -> SimServer {
    sim::serve(LOOPBACK, move |req| {
        let peer = peer.get().cloned().expect("the peer listener is known");
        let pass_on: Vec<_> = [TASK, "traceparent"]
            .into_iter()
            .filter_map(|h| Some((h, req.headers().get(h)?.clone())))
            .collect();
        async move {
            let mut call = Request::post(format!("{peer}/work"));
            for (name, value) in pass_on {
                call = call.header(name, value);
            }
            let answer = match client().request(call.body(empty()).unwrap()).await {
                Ok(r) if r.status().is_success() => Some(body_bytes(r).await),
                _ => None,
            };
            match answer {
                Some(body) => Response::new(sim_full(body)),
                None => {
                    let mut r = Response::new(sim_full("my callee failed me"));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                }
            }
        }
    })
    .await
    .unwrap()
}

/// An agent that never answers, and keeps the headers of what reached it.
async fn hung_agent(seen: Arc<Mutex<Vec<HeaderMap>>>) -> SimServer {
    sim::serve(LOOPBACK, move |req| {
        seen.lock().unwrap().push(req.headers().clone());
        std::future::pending()
    })
    .await
    .unwrap()
}

/// A hop that passes requests on, headers and all, to `to` once set: lets two sidecars name
/// each other.
async fn late_hop(to: Late) -> SimServer {
    sim::serve(LOOPBACK, move |req| {
        let to = to.get().cloned().expect("the hop's target is known");
        async move {
            let mut call = Request::post(format!("{to}{}", req.uri()));
            for (k, v) in req.headers() {
                if k != http::header::HOST {
                    call = call.header(k, v);
                }
            }
            match client().request(call.body(empty()).unwrap()).await {
                Ok(r) => {
                    let status = r.status();
                    let mut out = Response::new(sim_full(body_bytes(r).await));
                    *out.status_mut() = status;
                    out
                }
                Err(_) => {
                    let mut out = Response::new(sim_full(""));
                    *out.status_mut() = StatusCode::BAD_GATEWAY;
                    out
                }
            }
        }
    })
    .await
    .unwrap()
}

/// The config of agent `name`'s sidecar: `inbound` in front of the agent at `agent_url`, and,
/// when `callee` is given (its URL, more keys of its route), `peers` in front of the agent it
/// calls. `cascade` is the section's body; `extra`, more sections.
fn sidecar_yaml(
    name: &str,
    agent_url: &str,
    callee: Option<(&str, &str)>,
    cascade: &str,
    extra: &str,
) -> String {
    let (peer_listener, peer_route, peer_upstream) = match callee {
        Some((url, route_keys)) => (
            "  - {name: peers, bind: 127.0.0.1:0, role: peer, route: callee}\n".to_owned(),
            format!("  callee: {{upstreams: [callee]{route_keys}}}\n"),
            format!("  callee: {{url: {url}}}\n"),
        ),
        None => Default::default(),
    };
    format!(
        "agent: {name}
admin: {{bind: 127.0.0.1:0}}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
{peer_listener}routes:
  agent: {{upstreams: [agent]}}
{peer_route}upstreams:
  agent: {{url: {agent_url}}}
{peer_upstream}cascade: {{{cascade}}}
slos:
  - {{name: availability, sli: availability, target: 0.99, window: 30d, exclude_dependency_failures: true}}
{extra}"
    )
}

async fn agent_sidecar_named(
    name: &str,
    agent_url: &str,
    callee: Option<(&str, &str)>,
    cascade: &str,
    extra: &str,
) -> Sidecar {
    start_yaml(&sidecar_yaml(name, agent_url, callee, cascade, extra)).await
}

/// A sidecar of a chain: in this process, or the binary as a child process.
enum Running {
    InProcess(Sidecar),
    Child(Process),
}

impl Running {
    async fn start(yaml: String, name: &str, as_process: bool) -> Running {
        match as_process {
            true => Running::Child(Process::start(&yaml, &format!("cascade-{name}")).await),
            false => Running::InProcess(start_yaml(&yaml).await),
        }
    }

    fn url(&self, listener: &str) -> String {
        match self {
            Running::InProcess(s) => url_of(s, listener),
            Running::Child(p) => format!("http://{}", p.listener_named(listener)),
        }
    }
}

impl Admin for Running {
    fn admin(&self) -> std::net::SocketAddr {
        match self {
            Running::InProcess(s) => s.admin(),
            Running::Child(p) => p.admin(),
        }
    }
}

fn url_of(s: &Sidecar, listener: &str) -> String {
    format!("http://{}", s.listener_addr(listener).unwrap())
}

async fn call(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
    let mut req = Request::post(format!("{url}/task"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let _ = body_bytes(resp).await;
    (status, headers)
}

/// The chain A → B → C, C hung: each agent's `peers` listener in front of the next's sidecar;
/// the sidecars in this process, or each a process of its own.
struct Chain {
    a: Running,
    b: Running,
    _c: Running,
    seen_by_c: Arc<Mutex<Vec<HeaderMap>>>,
    _agents: Vec<SimServer>,
}

async fn chain(a_route_keys: &str, processes: bool) -> Chain {
    let seen_by_c = Arc::new(Mutex::new(Vec::new()));
    let agent_c = hung_agent(seen_by_c.clone()).await;
    let c_yaml = sidecar_yaml("agent-c", &agent_c.url(), None, "", "");
    let c = Running::start(c_yaml, "c", processes).await;
    let (to_c, to_b) = (Late::default(), Late::default());
    let agent_b = relay_agent(to_c.clone()).await;
    let to_c_sidecar = Some((c.url("inbound"), ""));
    let callee = to_c_sidecar.as_ref().map(|(u, k)| (u.as_str(), *k));
    let b_yaml = sidecar_yaml("agent-b", &agent_b.url(), callee, "", "");
    let b = Running::start(b_yaml, "b", processes).await;
    to_c.set(b.url("peers")).unwrap();
    let agent_a = relay_agent(to_b.clone()).await;
    let to_b_sidecar = b.url("inbound");
    let callee = Some((to_b_sidecar.as_str(), a_route_keys));
    let a_yaml = sidecar_yaml("agent-a", &agent_a.url(), callee, "", "");
    let a = Running::start(a_yaml, "a", processes).await;
    to_b.set(a.url("peers")).unwrap();
    Chain {
        a,
        b,
        _c: c,
        seen_by_c,
        _agents: vec![agent_a, agent_b, agent_c],
    }
}

#[tokio::test]
async fn a_hung_agent_down_the_chain_holds_its_callers_only_until_their_deadline() {
    // Each sidecar a process of its own, as in three pods.
    let ch = chain("", true).await;
    let started = Instant::now();
    let deadline = [(TASK, "task-1"), ("x-agent-deadline-ms", "1500")];
    let (status, headers) = call(&ch.a.url("inbound"), &deadline).await;
    let waited = started.elapsed();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "A's agent gave up on B"
    );
    assert_eq!(headers["x-sloguard-upstream"], "agent");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    assert!(
        waited < Duration::from_secs(10),
        "bounded by the deadline: {waited:?}"
    );

    // What reached C: the time left, the depth and the path, carried two hops.
    let seen = ch.seen_by_c.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let left: u64 = seen[0]["x-agent-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 1500, "{left}");
    assert_eq!(seen[0]["x-agent-call-depth"], "2");
    assert_eq!(seen[0]["x-agent-call-path"], "agent-a,agent-b");

    // A's call to B was cut at A's deadline: B's failure, and the agent's 503 the dependency's.
    let m = metrics_when(&ch.a, |m| {
        metric(m, "agent_requests_total", &[("listener", "inbound")]) == 1.0
    })
    .await;
    let peers = [("listener", "peers")];
    expect_metric(&m, "agent_deadline_exceeded_total", &peers, 1.0);
    let cut = [
        ("listener", "peers"),
        ("status", "5xx"),
        ("cause", "upstream"),
    ];
    expect_metric(&m, "agent_requests_total", &cut, 1.0);
    // B had less time than its own first_byte: no failed attempt of B's.
    let attempts = [("upstream", "callee")];
    expect_metric(&m, "sloguard_upstream_requests_total", &attempts, 0.0);
    let charged = [
        ("listener", "inbound"),
        ("status", "5xx"),
        ("cause", "dependency"),
    ];
    expect_metric(&m, "agent_requests_total", &charged, 1.0);
    // B's inbound request ended too (its caller gone, or its own call cut): it is not B's fault.
    let mb = metrics_when(&ch.b, |m| {
        metric(m, "agent_requests_total", &[("listener", "inbound")]) == 1.0
    })
    .await;
    let own = [("listener", "inbound"), ("cause", "agent")];
    expect_metric(&mb, "agent_requests_total", &own, 0.0);
}

#[tokio::test]
async fn a_full_bulkhead_fails_fast_and_a_dependencys_failures_spend_none_of_the_budget() {
    let ch = chain(", max_in_flight: 2", false).await;
    let a = ch.a.url("inbound");
    let held: Vec<_> = (0..2)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                let task = format!("held-{i}");
                call(&a, &[(TASK, &task), ("x-agent-deadline-ms", "20000")]).await
            })
        })
        .collect();
    let both_at_c = async || ch.seen_by_c.lock().unwrap().len() == 2;
    wait_until("both calls reach C", 10, both_at_c).await;

    // A third task while two wait on C: A's bulkhead refuses its call to B at once.
    let started = Instant::now();
    let (status, _) = call(&a, &[(TASK, "third")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not held: {:?}",
        started.elapsed()
    );
    assert_eq!(
        ch.seen_by_c.lock().unwrap().len(),
        2,
        "the third went nowhere"
    );
    let m = metrics(&ch.a).await;
    expect_metric(
        &m,
        "sloguard_bulkhead_rejections_total",
        &[("route", "callee")],
        1.0,
    );
    let charged = [
        ("listener", "inbound"),
        ("status", "5xx"),
        ("cause", "dependency"),
    ];
    expect_metric(&m, "agent_requests_total", &charged, 1.0);

    // A's availability SLO leaves the dependency's failure out: no budget spent.
    let counted = async || {
        let v = admin_json(&ch.a, "/slo").await;
        v["slos"][0]["windows"]["since_start"]["total"] == 0 && v["slos"][0]["counting"] == true
    };
    wait_until("the SLO view reads the counters", 10, counted).await;
    let v = admin_json(&ch.a, "/slo").await;
    assert_eq!(v["slos"][0]["budget_remaining"], 1.0, "{v}");
    for h in held {
        h.abort();
    }
}

/// Agents A and B that each answer by calling the other, through their sidecars' `peers`
/// listeners (`a_cascade`, `b_cascade`: their `cascade` sections).
struct Loop {
    a: Sidecar,
    b: Sidecar,
    _servers: Vec<SimServer>,
}

async fn two_agents_calling_each_other(a_cascade: &str, b_cascade: &str) -> Loop {
    let (to_a_sidecar, to_b_sidecar) = (Late::default(), Late::default());
    let hop_ab = late_hop(to_b_sidecar.clone()).await;
    let hop_ba = late_hop(to_a_sidecar.clone()).await;
    let (a_calls, b_calls) = (Late::default(), Late::default());
    let agent_a = relay_agent(a_calls.clone()).await;
    let agent_b = relay_agent(b_calls.clone()).await;
    let to_b = Some((hop_ab.url(), ""));
    let to_b = to_b.as_ref().map(|(u, k)| (u.as_str(), *k));
    let a = agent_sidecar_named("agent-a", &agent_a.url(), to_b, a_cascade, "").await;
    let to_a = Some((hop_ba.url(), ""));
    let to_a = to_a.as_ref().map(|(u, k)| (u.as_str(), *k));
    let b = agent_sidecar_named("agent-b", &agent_b.url(), to_a, b_cascade, "").await;
    to_b_sidecar.set(url_of(&b, "inbound")).unwrap();
    to_a_sidecar.set(url_of(&a, "inbound")).unwrap();
    a_calls.set(url_of(&a, "peers")).unwrap();
    b_calls.set(url_of(&b, "peers")).unwrap();
    Loop {
        a,
        b,
        _servers: vec![hop_ab, hop_ba, agent_a, agent_b],
    }
}

#[tokio::test]
async fn a_loop_between_two_agents_is_refused_on_its_first_repeat() {
    let Loop { a, b, .. } =
        &two_agents_calling_each_other("on_cycle: block", "on_cycle: block").await;

    let counting = async || admin_json(&a, "/slo").await["dependencies"][0]["counting"] == true;
    wait_until("the SLO view's baseline", 10, counting).await;
    let (status, _) = call(&url_of(a, "inbound"), &[(TASK, "loop-1")]).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the loop ends in a failure"
    );
    // A → B → A: the second arrival at A carries path "agent-a,agent-b", and is refused.
    let m = metrics_when(&a, |m| {
        metric(m, "agent_requests_total", &[("listener", "inbound")]) == 2.0
    })
    .await;
    expect_metric(&m, "agent_call_cycles_total", &[("action", "block")], 1.0);
    let refused = [
        ("listener", "inbound"),
        ("status", "5xx"),
        ("cause", "agent"),
    ];
    expect_metric(&m, "agent_requests_total", &refused, 1.0);
    let first = [("listener", "inbound"), ("cause", "dependency")];
    expect_metric(&m, "agent_requests_total", &first, 1.0);
    let mb = metrics(&b).await;
    expect_metric(&mb, "agent_requests_total", &[("listener", "inbound")], 1.0);
    expect_metric(&mb, "agent_call_cycles_total", &[], 0.0);
    // In A's local view: its call to B failed (B's dependency SLO), the refused repeat is A's
    // own failure, and the first request, failed by B, is left out of A's availability.
    let read = async || {
        let v = admin_json(&a, "/slo").await;
        v["dependencies"][0]["windows"]["since_start"]["total"] == 1
            && v["slos"][0]["windows"]["since_start"]["total"] == 1
    };
    wait_until("the SLO view reads the loop", 10, read).await;
    let v = admin_json(&a, "/slo").await;
    let dep = &v["dependencies"][0];
    assert_eq!(dep["upstream"], "callee", "{v}");
    assert_eq!(dep["windows"]["since_start"]["good"], 0, "{v}");
    assert_eq!(dep["target"], 0.99, "{v}");
    assert_eq!(v["slos"][0]["windows"]["since_start"]["good"], 0, "{v}");
}

#[tokio::test]
async fn a_loop_whose_names_do_not_get_through_is_refused_past_the_depth() {
    // Each reads a path header the other does not write: neither sees its name come back.
    let a_keys = "on_cycle: block, max_depth: 4, path_header: x-path-of-a";
    let b_keys = "on_cycle: block, max_depth: 4, path_header: x-path-of-b";
    let Loop { a, b, .. } = &two_agents_calling_each_other(a_keys, b_keys).await;

    let (status, _) = call(&url_of(a, "inbound"), &[(TASK, "loop-2")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Depths 0, 2, 4 arrive at A and 1, 3, 5 at B: B refuses depth 5.
    let mb = metrics_when(&b, |m| {
        metric(m, "agent_requests_total", &[("listener", "inbound")]) == 3.0
    })
    .await;
    expect_metric(&mb, "agent_call_depth_exceeded_total", &[], 1.0);
    let ma = metrics_when(&a, |m| {
        metric(m, "agent_requests_total", &[("listener", "inbound")]) == 3.0
    })
    .await;
    expect_metric(&ma, "agent_call_depth_exceeded_total", &[], 0.0);
    expect_metric(&ma, "agent_call_cycles_total", &[], 0.0);
    expect_metric(&mb, "agent_call_cycles_total", &[], 0.0);
}

#[tokio::test]
async fn malformed_cascade_headers_are_ignored_and_counted_never_a_5xx() {
    let ok = sim::serve(LOOPBACK, |_req| async { Response::new(sim_full("fine")) })
        .await
        .unwrap();
    let s = agent_sidecar_named("agent-x", &ok.url(), None, "", "").await;
    let bad = [
        ("x-agent-deadline-ms", "soon"),
        ("x-agent-call-depth", "deep"),
        ("x-agent-call-path", "a,\u{e9}b"),
    ];
    for (name, value) in bad {
        let mut req = Request::post(format!("{}/task", url_of(&s, "inbound")));
        // Sent as Latin-1 bytes: a path of names must be ASCII.
        let bytes: Vec<u8> = value.chars().map(|c| c as u8).collect();
        req = req.header(name, http::HeaderValue::from_bytes(&bytes).unwrap());
        let status = send_empty(req).await;
        assert_eq!(status, StatusCode::OK, "{name}: {value:?}");
    }
    let long_path = "agent,".repeat(400);
    let (status, _) = call(&url_of(&s, "inbound"), &[("x-agent-call-path", &long_path)]).await;
    assert_eq!(status, StatusCode::OK, "a path past the cap is ignored");
    let m = metrics(&s).await;
    for (header, n) in [("deadline", 1.0), ("depth", 1.0), ("path", 2.0)] {
        expect_metric(
            &m,
            "sloguard_cascade_bad_headers_total",
            &[("header", header)],
            n,
        );
    }
    // A deadline already spent is answered at once, without the agent.
    let (status, headers) = call(&url_of(&s, "inbound"), &[("x-agent-deadline-ms", "0")]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-sloguard-error"], "deadline_exceeded");
    let m = metrics(&s).await;
    expect_metric(
        &m,
        "agent_deadline_exceeded_total",
        &[("listener", "inbound")],
        1.0,
    );
    let spent = [("status", "5xx"), ("cause", "dependency")];
    expect_metric(&m, "agent_requests_total", &spent, 1.0);
}

#[tokio::test]
async fn a_peer_call_continues_the_callers_trace_into_the_callees_sidecar() {
    let receiver = grpc_receiver().await;
    let otlp = format!(
        "otlp: {{endpoint: {}, interval: 1s, traces: {{sample_ratio: 1.0}}}}\n",
        receiver.url()
    );
    let agent_b = sim::serve(LOOPBACK, |_req| async { Response::new(sim_full("plan")) })
        .await
        .unwrap();
    let b = agent_sidecar_named("agent-b", &agent_b.url(), None, "", &otlp).await;
    let to_b = Late::default();
    let agent_a = relay_agent(to_b.clone()).await;
    let callee = Some((url_of(&b, "inbound"), ""));
    let callee = callee.as_ref().map(|(u, k)| (u.as_str(), *k));
    let a = agent_sidecar_named("agent-a", &agent_a.url(), callee, "", &otlp).await;
    to_b.set(url_of(&a, "peers")).unwrap();

    let (status, _) = call(&url_of(&a, "inbound"), &[(TASK, "traced")]).await;
    assert_eq!(status, StatusCode::OK);
    // Three requests, each a server span with its attempt's client span: A's inbound, A's call
    // to B (made by A's agent, which passed on the context A's sidecar gave it), B's inbound.
    let all_in = |r: &common::otlp::Receiver| r.spans().len() >= 6;
    assert!(receiver.until(Duration::from_secs(10), all_in).await);
    let spans = receiver.spans();
    let trace = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| s.trace_id == *trace),
        "one trace: {spans:#?}"
    );
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 3, "{spans:#?}");
    // Each request's span has a parent among the spans of the one before it, but the first.
    let ids: Vec<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    let rooted = servers
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .count();
    assert_eq!(rooted, 1, "{servers:#?}");
    for s in servers.iter().filter(|s| !s.parent_span_id.is_empty()) {
        assert!(ids.contains(&s.parent_span_id), "{s:#?}");
    }
}

#[test]
fn bad_cascade_and_scope_settings_are_refused_naming_the_key() {
    let base = |agent: &str, tail: &str| {
        format!(
            "agent: {agent}
listeners:
  - {{name: inbound, bind: 127.0.0.1:0, role: agent, route: agent}}
  - {{name: peers, bind: 127.0.0.1:0, role: peer, route: callee}}
routes:
  agent: {{upstreams: [agent]}}
  callee: {{upstreams: [callee]}}
upstreams:
  agent: {{url: http://127.0.0.1:1}}
  callee: {{url: http://127.0.0.1:2}}
{tail}"
        )
    };
    let cases = [
        ("bot", "cascade: {max_depth: 0}\n", "cascade.max_depth"),
        (
            "bot",
            "cascade: {deadline_header: 'no good'}\n",
            "cascade.deadline_header",
        ),
        (
            "bot",
            "cascade: {path_header: X-Agent-Deadline-Ms}\n",
            "cascade.path_header",
        ),
        (
            "bot",
            "cascade: {default_deadline: 2d}\n",
            "cascade.default_deadline",
        ),
        ("bot,2", "cascade: {}\n", "agent"),
        (
            "bot",
            "slos: [{name: a, sli: availability, target: 0.9, listeners: [nope]}]\n",
            "slos[0].listeners[0]",
        ),
        (
            "bot",
            "slos: [{name: t, sli: task_completion, target: 0.9, listeners: [inbound]}]\n",
            "slos[0].listeners",
        ),
    ];
    for (agent, tail, key) in cases {
        let err = sloguard::Config::parse("test", &base(agent, tail))
            .expect_err(tail)
            .to_string();
        assert!(err.contains(&format!("{key}:")), "{tail}: {err}");
    }
    // An empty section is the defaults; a name with a space is refused only with cascade on.
    let ok = sloguard::Config::parse("test", &base("bot", "cascade:\n")).unwrap();
    assert_eq!(ok.cascade.unwrap().max_depth, 8);
    assert!(sloguard::Config::parse("test", &base("my bot", "")).is_ok());
}
