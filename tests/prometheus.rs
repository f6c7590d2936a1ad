//! End to end on a real Prometheus (the Debian package, which `scripts/test` installs): it
//! scrapes a running sidecar every second, known traffic goes through, and the reference
//! article's four SLI queries, verbatim, give the scripted values over Prometheus's HTTP API.
//! The generated rules are loaded too, and their recorded error ratio agrees.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sloguard::sim::{self, SimServer};
use sloguard::Sidecar;
use tokio::process::{Child, Command};

/// The article's SLI queries, exactly as written there.
const AVAILABILITY: &str =
    "sum(rate(agent_requests_total{status!='5xx'}[5m])) / sum(rate(agent_requests_total[5m]))";
const TASK_COMPLETION: &str =
    "sum(rate(agent_tasks_completed[5m])) / sum(rate(agent_tasks_started[5m]))";
const LATENCY: &str = "histogram_quantile(0.99, rate(agent_response_seconds_bucket[5m]))";
const SAFETY: &str =
    "sum(rate(agent_safety_violations_total[5m])) / sum(rate(agent_responses_total[5m]))";

/// An agent answering `/{status}`, `/slow` (200 after 1.2 s) and `/leak` (200 with a customer's
/// email address in its answer).
async fn agent() -> SimServer {
    sim::serve(LOOPBACK, |req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        let _ = req.into_body().collect().await;
        let (status, body) = match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                (200, r#"{"answer":"done"}"#)
            }
            "/leak" => (
                200,
                r#"{"answer":"mailed it to dana.whitfield@northwind-mail.com"}"#,
            ),
            p => (p[1..].parse().unwrap(), r#"{"answer":"done"}"#),
        };
        let mut r = Response::new(sim::full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    })
    .await
    .unwrap()
}

struct Prometheus {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real Prometheus on 127.0.0.1, its own config and data directory, scraping `target` every
/// second and evaluating `rules` every second.
async fn prometheus(target: std::net::SocketAddr, rules: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("sloguard-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    std::fs::write(
        dir.join("prometheus.yaml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: sloguard
    static_configs: [{{targets: ['{target}']}}]
"
        ),
    )
    .unwrap();
    // A free port: bound, read, let go.
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yaml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("prometheus could not start ({e}): install it with `apt-get install -y prometheus` (scripts/test does)")
        });
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let ready = async || {
        let req = Request::get(format!("{}/-/ready", p.url));
        let resp = client().request(req.body(empty()).unwrap()).await;
        resp.is_ok_and(|r| r.status() == StatusCode::OK)
    };
    if !holds_within(30, ready).await {
        let log = std::fs::read_to_string(p.dir.join("prometheus.log"));
        panic!("prometheus did not get ready: {}", log.unwrap_or_default());
    }
    p
}

impl Prometheus {
    /// The values of an instant query (one per series).
    async fn query(&self, q: &str) -> Vec<f64> {
        let url = format!("{}/api/v1/query?query={}", self.url, form_urlencoded(q));
        let resp = get(&client(), &url).await;
        let body: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
        assert_eq!(body["status"], "success", "{q}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Waits until `q`'s single value satisfies `ready`; returns it.
    async fn value_when(&self, q: &str, ready: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.query(q).await;
            if v.len() == 1 && ready(v[0]) {
                return v[0];
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{q} never got there: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn form_urlencoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_articles_sli_queries_work_verbatim_on_a_real_prometheus() {
    let a = agent().await;
    let config = agent_config(
        &a.url(),
        "safety: {apply_to: [agent]}
slos:
  - {name: availability, sli: availability, target: 0.99}
",
    );
    let rules = sloguard::slo::rules::rules(&config);
    let s = Sidecar::start(config).await.unwrap();
    // Every series the queries read exists before the first scrape, so that all of them are
    // sampled at the same instants and rate() extrapolates them alike. rate() also stops
    // extrapolating where a counter would reach zero: each series starts at more than half its
    // coming increase, so that this never applies once Prometheus holds 3 samples or more.
    for (path, n) in [("/200", 40), ("/503", 10), ("/429", 4), ("/leak", 4)] {
        send(&s, path, n).await;
    }
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) >= 58.0).await;
    let responses_before = metric(&m, "agent_responses_total", &[]);
    let p = prometheus(s.admin_addr, &rules).await;
    // Scraped twice before the traffic the queries are to see.
    p.value_when("count(up == 1)", |v| v == 1.0).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // The scripted outcome: 100 requests. 78 answered 200 at once, 5 of them leaking an email
    // address; 2 answered 200 after 1.2 s; 15 answered 503 by the agent; 5 answered 429.
    send(&s, "/200", 73).await;
    send(&s, "/leak", 5).await;
    send(&s, "/503", 15).await;
    send(&s, "/429", 5).await;
    let slow = tokio::spawn({
        let url = proxy_url(&s, "/slow");
        async move {
            let req = |u: &str| Request::post(u).body(empty()).unwrap();
            let (x, y) = tokio::join!(client().request(req(&url)), client().request(req(&url)));
            let _ = body_bytes(x.unwrap()).await;
            let _ = body_bytes(y.unwrap()).await;
        }
    });
    slow.await.unwrap();
    let m = metrics_when(&s, |m| metric(m, "agent_requests_total", &[]) >= 158.0).await;
    let responses = metric(&m, "agent_responses_total", &[]) - responses_before;
    // Every request counted and scraped.
    let total = "sum(increase(agent_requests_total[5m]))";
    p.value_when(total, |v| v > 0.0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Availability: 85 of 100 not 5xx (429s are not server errors).
    let v = p.query(AVAILABILITY).await;
    assert_eq!(v.len(), 1, "{v:?}");
    assert!((v[0] - 0.85).abs() < 1e-9, "availability {v:?}");
    // Task completion: tasks of one request each; the 2xx completed, the 5xx failed, the 429s
    // (no verdict: the client's to retry) started none: 80 completed of 95 started.
    let v = p.query(TASK_COMPLETION).await;
    assert!((v[0] - 80.0 / 95.0).abs() < 1e-9, "task completion {v:?}");
    // Latency: 98 requests fast, 2 between 1 s and 2 s: the p99 is interpolated in (1, 2]: 1.5.
    let v = p.query(LATENCY).await;
    assert_eq!(v.len(), 1, "{v:?}");
    assert!((v[0] - 1.5).abs() < 1e-9, "p99 latency {v:?}");
    // Safety: 5 violations (one detector each) of the responses inspected.
    let v = p.query(SAFETY).await;
    assert!(
        (v[0] - 5.0 / responses).abs() < 1e-9,
        "safety {v:?} of {responses}"
    );
    // The generated rules' recorded error ratio agrees with the article's availability.
    let v = p
        .value_when(
            "sloguard:slo_error_ratio:rate5m{slo=\"availability\"}",
            |v| (v - 0.15).abs() < 1e-9,
        )
        .await;
    assert!((v - 0.15).abs() < 1e-9);
    s.shutdown().await;
}
