//! Hot reload: `POST /admin/reload`, SIGHUP and a change of the config file swap in a new config
//! while requests keep flowing; a config that cannot be used is refused and the old one serves.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scripted::admin_post;
use common::*;
use http::{Request, StatusCode};
use sloguard::sidecar::ConfigFile;
use sloguard::sim::{self, SimServer};
use sloguard::{Config, Sidecar};

const TOKEN: &str = "reload-test-token";

/// An upstream that answers 200 with its name in `x-from`, after `delay`.
async fn named_upstream(name: &'static str, delay: Duration) -> SimServer {
    counted_upstream(name, delay, Arc::default()).await
}

/// A [`named_upstream`] that counts the requests it got in `arrived` as they arrive.
async fn counted_upstream(
    name: &'static str,
    delay: Duration,
    arrived: Arc<AtomicUsize>,
) -> SimServer {
    sim::serve(LOOPBACK, move |_req| {
        arrived.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            http::Response::builder()
                .header("x-from", name)
                .body(sim::full(format!("from {name}")))
                .unwrap()
        }
    })
    .await
    .unwrap()
}

/// The JSON the admin port answers at `path`.
/// A directory of its own for a test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The config of the reload tests: listener `proxy` (agent role) on route `main` over
/// `upstreams` (name, url), then `extra` sections. The admin token is `dir/token`.
fn yaml(dir: &Path, upstreams: &[(&str, &SimServer)], route: &[&str], extra: &str) -> String {
    let mut ups = String::new();
    for (name, server) in upstreams {
        ups.push_str(&format!(
            "  {name}:\n    url: {}\n    circuit_breaker: {{consecutive_failures: 50}}\n",
            server.url()
        ));
    }
    format!(
        "agent: reload-agent
admin: {{bind: 127.0.0.1:0, token_file: {token}}}
listeners:
  - {{name: proxy, bind: 127.0.0.1:0, role: agent, route: main}}
routes:
  main: {{upstreams: [{route}]}}
upstreams:
{ups}shutdown: {{grace_period: 5s}}
{extra}",
        token = dir.join("token").display(),
        route = route.join(", "),
    )
}

/// Replaces `path`'s content at once (a new file renamed over it), as editors and the kubelet do:
/// the file watch never reads it half-written.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar started from the config file `dir/config.yaml` holding `text`.
async fn start_file(dir: &Path, text: &str) -> Sidecar {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let (file, config) = ConfigFile::load(path).expect("valid config");
    Sidecar::start_from_file(config, file)
        .await
        .expect("sidecar starts")
}

/// `POST /admin/reload` with the token: the status and the JSON answer.
async fn reload(s: &Sidecar) -> (StatusCode, serde_json::Value) {
    let (status, body) = admin_post(s, "/admin/reload", Some(TOKEN)).await;
    (status, serde_json::from_slice(&body).expect("JSON answer"))
}

/// Reloads `text`: writes it, asks for the reload, expects it done.
async fn reload_to(s: &Sidecar, dir: &Path, text: &str) -> serde_json::Value {
    write_atomically(&dir.join("config.yaml"), text);
    let (status, body) = reload(s).await;
    assert_eq!(status, StatusCode::OK, "reload refused: {body}");
    assert_eq!(body["reloaded"], true);
    body["changes"].clone()
}

/// One GET through `addr`: the status and the upstream that answered (`x-from`).
async fn call(c: &TestClient, addr: SocketAddr) -> (StatusCode, String) {
    let resp = get(c, &format!("http://{addr}/task")).await;
    let status = resp.status();
    let from = resp
        .headers()
        .get("x-from")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = body_bytes(resp).await;
    (status, from)
}

fn requests_total(m: &str, listener: &str) -> f64 {
    metric(m, "agent_requests_total", &[("listener", listener)])
}

fn reloads(m: &str, result: &str) -> f64 {
    metric(
        m,
        "sloguard_config_reloads_total",
        &[("agent", "reload-agent"), ("result", result)],
    )
}

/// One HTTP/1.1 connection of its own: no pool that would quietly open another when it closes.
struct OneConnection {
    send: hyper::client::conn::http1::SendRequest<TestBody>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl OneConnection {
    async fn open(addr: SocketAddr) -> OneConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        OneConnection {
            send,
            conn: tokio::spawn(conn),
        }
    }

    /// A GET on this connection, answered 200.
    async fn ask(&mut self) {
        let resp = self
            .send
            .send_request(
                Request::get("/task")
                    .header("host", "sloguard")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .expect("the connection still serves");
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = body_bytes(resp).await;
    }

    fn is_open(&self) -> bool {
        !self.conn.is_finished()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_keep_the_counters() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::ZERO).await;
    let dir = temp_dir("load");
    let ups = [("a", &a), ("b", &b)];
    // Twenty configs, each different from the one before: the route flips between the
    // upstreams, an upstream's timeouts change, a listener comes and goes, SLOs and safety
    // change.
    let variants: Vec<String> = (0..20)
        .map(|i| {
            let route: &[&str] = if i % 2 == 0 { &["b", "a"] } else { &["a", "b"] };
            let mut extra = format!(
                "slos:\n  - {{name: availability, sli: availability, target: 0.9{}, window: 30d}}\n",
                i % 3 + 5
            );
            if i % 4 == 1 {
                extra.push_str("safety: {detectors: [{builtin: pii_email}], action: record}\n");
            }
            let mut text = yaml(&dir, &ups, route, &extra);
            if i % 5 == 2 {
                text = text.replace(
                    "  - {name: proxy, bind: 127.0.0.1:0, role: agent, route: main}\n",
                    "  - {name: proxy, bind: 127.0.0.1:0, role: agent, route: main}\n  - {name: side, bind: 127.0.0.1:0, role: agent, route: main}\n",
                );
            }
            if i % 7 == 3 {
                // The limits of the listener under load change in place.
                text = text.replace(
                    "name: proxy, bind: 127.0.0.1:0, role: agent, route: main}",
                    "name: proxy, bind: 127.0.0.1:0, role: agent, route: main, limits: {max_connections: 500, idle_timeout: 20s}}",
                );
            }
            if i % 3 == 0 {
                text = text.replace(
                    "circuit_breaker: {consecutive_failures: 50}\n",
                    &format!("circuit_breaker: {{consecutive_failures: 50}}\n    timeouts: {{first_byte: {}s}}\n", 10 + i),
                );
            }
            text
        })
        .collect();
    let s = start_file(&dir, &yaml(&dir, &ups, &["a", "b"], "")).await;
    let proxy = s.listener_addr("proxy").unwrap();

    // A bounded stream of requests from four clients, until the reloads are done.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (done, sent) = (done.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let started = Instant::now();
            let mut failures = Vec::new();
            let mut from = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let resp = c
                    .request(
                        Request::get(format!("http://{proxy}/task"))
                            .body(empty())
                            .unwrap(),
                    )
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match resp {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let f = r
                            .headers()
                            .get("x-from")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let _ = body_bytes(r).await;
                        from.insert(f);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e:?}")),
                }
            }
            (failures, from)
        }));
    }
    let mut before = 0.0;
    for (i, text) in variants.iter().enumerate() {
        // Some load between two reloads (ten requests each: 200 in all at least).
        let flowing = async || requests_total(&metrics(&s).await, "proxy") >= before + 10.0;
        wait_until("requests flow between reloads", 10, flowing).await;
        let changes = reload_to(&s, &dir, text).await;
        assert!(
            changes["listeners"]["kept"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "proxy"),
            "reload {i} did not keep the proxy listener: {changes}"
        );
        // The counters go on from where they were: never back.
        let now = requests_total(&metrics(&s).await, "proxy");
        assert!(
            now >= before,
            "agent_requests_total went back at reload {i}: {before} -> {now}"
        );
        before = now;
    }
    done.store(true, Ordering::Relaxed);
    let mut upstreams_seen = std::collections::BTreeSet::new();
    for w in workers {
        let (failures, from) = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during reloads: {failures:?}"
        );
        upstreams_seen.extend(from);
    }
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{sent} requests from 4 clients across 20 reloads");
    assert!(
        sent >= 200,
        "the load was too thin to mean anything: {sent} requests"
    );
    // Both route orders served: the reloads took effect.
    assert_eq!(upstreams_seen.len(), 2, "served by {upstreams_seen:?}");
    let m = metrics(&s).await;
    assert_eq!(
        requests_total(&m, "proxy"),
        sent as f64,
        "every request counted, once"
    );
    assert_eq!(reloads(&m, "ok"), 20.0);
    assert_eq!(reloads(&m, "error"), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let a = named_upstream("a", Duration::ZERO).await;
    let dir = temp_dir("invalid");
    let good = yaml(&dir, &[("a", &a)], &["a"], "");
    let s = start_file(&dir, &good).await;
    let proxy = s.listener_addr("proxy").unwrap();
    let c = client();

    let cases: Vec<(String, &str)> = vec![
        // Not YAML the schema knows: the key and the line are named.
        (good.replace("routes:", "routez:"), "routez"),
        // A route naming an upstream that does not exist.
        (good.replace("upstreams: [a]", "upstreams: [nowhere]"), "nowhere"),
        // What only a restart can change.
        (good.replace("agent: reload-agent", "agent: other-agent"), "agent: cannot change without a restart"),
        (good.replace("grace_period: 5s", "grace_period: 7s"), "shutdown"),
        // A judge, valid, added: its thread lives as long as the process.
        (
            good.replace(
                "shutdown:",
                "  j: {url: 'http://127.0.0.1:9', protocol: openai}\nshutdown:",
            ) + "correctness:\n  judge: {upstream: j, model: m}\n",
            "correctness.judge (adding or removing it)",
        ),
        // A listener on a port taken (the admin port).
        (
            good.replace(
                "role: agent, route: main}\n",
                &format!("role: agent, route: main}}\n  - {{name: clash, bind: {}, role: agent, route: main}}\n", s.admin_addr),
            ),
            "listeners[1].bind",
        ),
    ];
    for (n, (text, named)) in cases.iter().enumerate() {
        write_atomically(&dir.join("config.yaml"), text);
        let (status, body) = reload(&s).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "case {n}: {body}");
        assert_eq!(body["error"]["type"], "config_refused", "case {n}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(named),
            "case {n}: {message:?} does not name {named:?}"
        );
        // The old config still serves.
        assert_eq!(
            call(&c, proxy).await,
            (StatusCode::OK, "a".to_owned()),
            "case {n}"
        );
        assert_eq!(reloads(&metrics(&s).await, "error"), (n + 1) as f64);
    }
    assert!(s.listener_addr("clash").is_none());
    // The token guards it like every admin action.
    let (status, _) = admin_post(&s, "/admin/reload", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reloads(&metrics(&s).await, "ok"), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_without_a_config_file_says_there_is_nothing_to_reload() {
    let a = named_upstream("a", Duration::ZERO).await;
    let dir = temp_dir("nofile");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let s = Sidecar::start(Config::parse("test", &yaml(&dir, &[("a", &a)], &["a"], "")).unwrap())
        .await
        .unwrap();
    let (status, body) = reload(&s).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["type"], "no_config_file");
    s.shutdown().await;
}

#[tokio::test]
async fn listeners_are_added_moved_and_removed_while_the_others_keep_their_connections() {
    let a = named_upstream("a", Duration::ZERO).await;
    let dir = temp_dir("listeners");
    let base = yaml(&dir, &[("a", &a)], &["a"], "");
    let s = start_file(&dir, &base).await;
    let proxy = s.listener_addr("proxy").unwrap();

    // One connection to `proxy`, kept open across every reload: it must never be dropped.
    let mut kept = OneConnection::open(proxy).await;
    kept.ask().await;

    let with_side = |bind: &str| {
        base.replace(
            "role: agent, route: main}\n",
            &format!("role: agent, route: main}}\n  - {{name: side, bind: {bind}, role: agent, route: main}}\n"),
        )
    };
    // Added.
    let first = closed_port();
    let changes = reload_to(&s, &dir, &with_side(&first.to_string())).await;
    assert_eq!(changes["listeners"]["added"], serde_json::json!(["side"]));
    assert_eq!(s.listener_addr("side"), Some(first));
    let c = client();
    assert_eq!(call(&c, first).await.0, StatusCode::OK);
    kept.ask().await;

    // Moved to another port: the new one serves, the old one is closed.
    let second = closed_port();
    let changes = reload_to(&s, &dir, &with_side(&second.to_string())).await;
    assert_eq!(changes["listeners"]["rebound"], serde_json::json!(["side"]));
    assert_eq!(s.listener_addr("side"), Some(second));
    assert_eq!(call(&client(), second).await.0, StatusCode::OK);
    wait_until("the old address still accepts", 5, async || {
        tokio::net::TcpStream::connect(first).await.is_err()
    })
    .await;
    kept.ask().await;

    // New limits on the same address: changed in place, the connections kept. One connection
    // to `side` is open; with a cap of one, a second one displaces it (it is idle).
    let mut side = OneConnection::open(second).await;
    side.ask().await;
    let limited = with_side(&second.to_string()).replace(
        &format!("bind: {second}, role: agent, route: main}}"),
        &format!("bind: {second}, role: agent, route: main, limits: {{max_connections: 1}}}}"),
    );
    let changes = reload_to(&s, &dir, &limited).await;
    assert_eq!(
        changes["listeners"]["kept"],
        serde_json::json!(["proxy", "side"]),
        "{changes}"
    );
    side.ask().await;
    assert!(side.is_open(), "the limits change dropped a connection");
    let displaced = |m: &str| {
        metric(
            m,
            "sloguard_client_connections_closed_total",
            &[("listener", "side"), ("reason", "displaced")],
        )
    };
    assert_eq!(displaced(&metrics(&s).await), 0.0);
    assert_eq!(call(&client(), second).await.0, StatusCode::OK);
    metrics_when(&s, |m| displaced(m) >= 1.0).await;
    // The displaced one is the connection kept across the reload: the new cap holds for it.
    wait_until("the kept connection was not displaced", 5, async || {
        !side.is_open()
    })
    .await;

    // Renamed on the same address: the socket goes on under the new name.
    let renamed = limited.replace("name: side,", "name: renamed,");
    let changes = reload_to(&s, &dir, &renamed).await;
    assert_eq!(
        changes["listeners"]["rebound"],
        serde_json::json!(["renamed"]),
        "{changes}"
    );
    assert_eq!(s.listener_addr("renamed"), Some(second));
    assert!(s.listener_addr("side").is_none());
    assert_eq!(call(&client(), second).await.0, StatusCode::OK);

    // Removed.
    let changes = reload_to(&s, &dir, &base).await;
    assert_eq!(
        changes["listeners"]["removed"],
        serde_json::json!(["renamed"])
    );
    assert!(s.listener_addr("renamed").is_none());
    wait_until("the removed listener still accepts", 5, async || {
        tokio::net::TcpStream::connect(second).await.is_err()
    })
    .await;
    kept.ask().await;
    assert!(
        kept.is_open(),
        "the proxy listener's connection was dropped"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let slow = counted_upstream("slow", Duration::from_millis(800), arrived.clone()).await;
    let fast = named_upstream("fast", Duration::ZERO).await;
    let dir = temp_dir("inflight");
    let ups = [("slow", &slow), ("fast", &fast)];
    let s = start_file(&dir, &yaml(&dir, &ups, &["slow"], "")).await;
    let proxy = s.listener_addr("proxy").unwrap();
    let pending = tokio::spawn(async move { call(&client(), proxy).await });
    let started = async || arrived.load(Ordering::SeqCst) == 1;
    wait_until("the slow request reaches its upstream", 10, started).await;
    reload_to(&s, &dir, &yaml(&dir, &ups, &["fast"], "")).await;
    // The new config answers the requests that come after it...
    assert_eq!(
        call(&client(), proxy).await,
        (StatusCode::OK, "fast".into())
    );
    // ... and the one that started before ends where it began.
    assert_eq!(pending.await.unwrap(), (StatusCode::OK, "slow".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn breaker_and_slo_state_survive_for_what_survives_the_reload() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::ZERO).await;
    let dir = temp_dir("state");
    let ups = [("a", &a), ("b", &b)];
    let slos = "slos:\n  - {name: availability, sli: availability, target: 0.99, window: 30d}\n  - {name: latency, sli: latency, threshold: 1s, target: 0.99, window: 30d}\n";
    let s = start_file(&dir, &yaml(&dir, &ups, &["a", "b"], slos)).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            call(&c, s.listener_addr("proxy").unwrap()).await.0,
            StatusCode::OK
        );
    }
    // a's circuit opened by hand; the SLO view has counted the five requests.
    let (status, _) = admin_post(&s, "/admin/circuits/a/open", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let slo_total = |v: &serde_json::Value, name: &str| {
        v["slos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["windows"]["since_start"]["total"].as_f64().unwrap_or(0.0))
    };
    let counted = async || slo_total(&admin_json(&s, "/slo").await, "availability") == Some(5.0);
    wait_until("the SLO view counts the requests", 10, counted).await;

    // a's timeouts change (the upstream is rebuilt, its breaker kept), b stays as it is, the
    // latency SLO's threshold changes (it starts afresh), availability stays.
    let changed = yaml(
        &dir,
        &ups,
        &["a", "b"],
        &slos.replace("threshold: 1s", "threshold: 2s"),
    )
    .replacen(
        "circuit_breaker: {consecutive_failures: 50}\n",
        "circuit_breaker: {consecutive_failures: 50}\n    timeouts: {first_byte: 20s}\n",
        1,
    );
    let changes = reload_to(&s, &dir, &changed).await;
    assert_eq!(
        changes["upstreams"]["changed"],
        serde_json::json!(["a"]),
        "{changes}"
    );
    assert_eq!(
        changes["upstreams"]["breakers_kept"],
        serde_json::json!(["a"])
    );
    assert_eq!(changes["upstreams"]["kept"], serde_json::json!(["b"]));
    assert_eq!(changes["slos_kept"], serde_json::json!(["availability"]));

    // Still open: the request skips a.
    assert_eq!(
        call(&c, s.listener_addr("proxy").unwrap()).await,
        (StatusCode::OK, "b".into())
    );
    let circuits = admin_json(&s, "/circuits").await;
    let state_of = |name: &str| {
        circuits["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["state"].clone())
    };
    assert_eq!(state_of("a"), Some("open".into()), "{circuits}");
    // Kept: six requests since the start; afresh: only what came after the reload.
    let kept = async || slo_total(&admin_json(&s, "/slo").await, "availability") == Some(6.0);
    wait_until("availability keeps its events", 10, kept).await;
    let v = admin_json(&s, "/slo").await;
    let latency = slo_total(&v, "latency").unwrap();
    assert!(latency <= 1.0, "the changed SLO kept its old events: {v}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_configmap_update_is_picked_up_through_its_symlinks() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::ZERO).await;
    let dir = temp_dir("configmap");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let ups = [("a", &a), ("b", &b)];
    // What the kubelet makes of a ConfigMap volume: the file is a symlink into `..data`, itself a
    // symlink to a timestamped directory; an update writes a new directory and swaps `..data`
    // with a rename.
    let volume = dir.join("volume");
    std::fs::create_dir_all(volume.join("..2026_12_02_1")).unwrap();
    let first = yaml(&dir, &ups, &["a"], "");
    std::fs::write(volume.join("..2026_12_02_1/config.yaml"), &first).unwrap();
    std::os::unix::fs::symlink("..2026_12_02_1", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", volume.join("config.yaml")).unwrap();
    let (file, config) = ConfigFile::load(volume.join("config.yaml")).unwrap();
    let s = Sidecar::start_from_file(config, file).await.unwrap();
    let proxy = s.listener_addr("proxy").unwrap();
    let c = client();
    assert_eq!(call(&c, proxy).await.1, "a");

    std::fs::create_dir_all(volume.join("..2026_12_02_2")).unwrap();
    std::fs::write(
        volume.join("..2026_12_02_2/config.yaml"),
        yaml(&dir, &ups, &["b"], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_02_2", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(volume.join("..2026_12_02_1")).unwrap();

    wait_until("the new config was never picked up", 10, async || {
        call(&c, proxy).await.1 == "b"
    })
    .await;
    // Once (that it is not loaded again while the content stays the same is the watch's
    // decision, tested on its own in `sidecar::reload`).
    let m = metrics(&s).await;
    assert_eq!(reloads(&m, "ok"), 1.0);

    // A broken update is refused once (not every second), and the running config stays.
    std::fs::create_dir_all(volume.join("..2026_12_02_3")).unwrap();
    std::fs::write(
        volume.join("..2026_12_02_3/config.yaml"),
        "agent: [broken\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_02_3", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    let m = metrics_when(&s, |m| reloads(m, "error") >= 1.0).await;
    assert_eq!(reloads(&m, "ok"), 1.0);
    assert_eq!(reloads(&m, "error"), 1.0);
    assert_eq!(call(&c, proxy).await, (StatusCode::OK, "b".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_config_of_the_running_binary() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::ZERO).await;
    let dir = temp_dir("sighup");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let ups = [("a", &a), ("b", &b)];
    let p = common::process::Process::start(&yaml(&dir, &ups, &["a"], ""), "reload-sighup").await;
    let c = client();
    assert_eq!(call(&c, p.listener).await.1, "a");
    let admin_metrics = async || {
        body_bytes(get(&client(), &format!("http://{}/metrics", p.admin)).await)
            .await
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
    };

    // A SIGHUP with the file as it is: a reload (not the end of the process, SIGHUP's default).
    p.signal("HUP");
    wait_until("SIGHUP did not reload", 10, async || {
        reloads(&admin_metrics().await, "ok") >= 1.0
    })
    .await;
    let sighup = p
        .log()
        .into_iter()
        .any(|l| l["message"] == "config reloaded" && l["trigger"] == "sighup");
    assert!(sighup, "no reload logged for the signal: {:?}", p.log());
    assert_eq!(call(&c, p.listener).await, (StatusCode::OK, "a".into()));

    // A changed file and a SIGHUP: the new route serves, and the signal reloaded again (the
    // file watch may have got there too; each SIGHUP reloads, changed or not).
    write_atomically(p.config_path(), &yaml(&dir, &ups, &["b"], ""));
    p.signal("HUP");
    let sighups = async || {
        p.log()
            .into_iter()
            .filter(|l| l["message"] == "config reloaded" && l["trigger"] == "sighup")
            .count()
            >= 2
    };
    wait_until("the second SIGHUP reloads", 10, sighups).await;
    assert_eq!(call(&c, p.listener).await, (StatusCode::OK, "b".into()));
    p.terminate();
}

#[tokio::test]
async fn new_severities_keep_the_upstreams_and_slos_they_apply_to() {
    let a = named_upstream("a", Duration::ZERO).await;
    let dir = temp_dir("severities");
    let slos = "slos:\n  - {name: availability, sli: availability, target: 0.99, window: 30d}\n";
    let s = start_file(&dir, &yaml(&dir, &[("a", &a)], &["a"], slos)).await;
    let changed = format!(
        "{slos}incidents:\n  severities: {{availability: sev1, safety: sev1, task_completion: sev3, latency: sev3, time_to_first_token: sev3}}\n"
    );
    let changes = reload_to(&s, &dir, &yaml(&dir, &[("a", &a)], &["a"], &changed)).await;
    assert_eq!(
        changes["upstreams"]["kept"],
        serde_json::json!(["a"]),
        "{changes}"
    );
    assert_eq!(changes["slos_kept"], serde_json::json!(["availability"]));
    let v = admin_json(&s, "/slo").await;
    assert_eq!(v["slos"][0]["severity"], "sev1", "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_file_caught_half_written_is_not_loaded() {
    let a = named_upstream("a", Duration::ZERO).await;
    let dir = temp_dir("halfwritten");
    let slos = "slos:\n  - {name: availability, sli: availability, target: 0.99, window: 30d}\n";
    let full = yaml(&dir, &[("a", &a)], &["a"], slos);
    let s = start_file(&dir, &full).await;
    // Written in place, as `cat > file` does: for most of a poll period the file holds its first
    // part — a valid config, without the SLOs — then the whole, changed.
    let whole = full.replace("target: 0.99", "target: 0.98");
    let cut = whole.find("slos:").unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, &whole[..cut]).unwrap();
    // The wall clock has to pass here: the watch polls the file each second (`CONFIG_POLL`).
    tokio::time::sleep(Duration::from_millis(800)).await;
    std::fs::write(&path, &whole).unwrap();
    // The first reload is the whole file: had the half been loaded, its SLO-less config would
    // show below.
    let m = metrics_when(&s, |m| reloads(m, "ok") >= 1.0).await;
    assert_eq!(
        reloads(&m, "ok"),
        1.0,
        "the half-written file was loaded:\n{m}"
    );
    assert_eq!(reloads(&m, "error"), 0.0);
    let v = admin_json(&s, "/slo").await;
    assert_eq!(v["slos"][0]["target"], 0.98, "{v}");
    s.shutdown().await;
}
