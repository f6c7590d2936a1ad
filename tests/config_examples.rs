//! config/: every example config passes `sloguard check` and the rules `sloguard rules` prints for
//! it pass `promtool check rules`. The examples name the key files a pod would mount
//! (`api_keys_file`, `admin.token_file`); `check` reads them as `run` does, so each is checked as
//! a copy whose key file paths point at stand-in files in a temporary directory.
//! promtool comes from the Debian package `prometheus` (scripts/test installs it).
//!
//! Every config the README shows is one of these files, and every one of them (and the configs
//! `deploy/` mounts) serves a real request through each listener and along each fallback chain,
//! to stand-ins for its upstreams that record the path they were asked: the path an SDK pointed
//! at the listener as documented (`OPENAI_BASE_URL=http://127.0.0.1:7481/v1`,
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:7481`) reaches each provider on the path its API has.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_yaml_ng::Value;
use sloguard::config::{Protocol, Role};
use sloguard::Config;

#[path = "common/tools.rs"]
mod tools;
use tools::{promtool_ok, sloguard, with_stand_in_files};

/// The examples for real situations; each must carry SLOs (and so rules).
const WITH_SLOS: [&str; 5] = [
    "openai-azure-selfhosted.yaml",
    "anthropic.yaml",
    "inbound-slos.yaml",
    "strict-safety.yaml",
    "multi-agent.yaml",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for name in WITH_SLOS {
        assert!(
            files.contains(&root().join("config").join(name)),
            "config/{name} is missing"
        );
    }
    files
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-examples-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_example_passes_sloguard_check() {
    for file in examples() {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let dir = scratch(&file.file_stem().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&file).unwrap();
        let copy = with_stand_in_files(&config, &text, &dir);
        let out = sloguard(&["check"], &copy);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "sloguard check {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn promtool_accepts_the_rules_of_every_example() {
    for file in examples() {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if WITH_SLOS.contains(&name.as_str()) {
            assert!(!config.slos.is_empty(), "config/{name} should have SLOs");
        }
        let out = sloguard(&["rules"], &file);
        assert!(
            out.status.success(),
            "sloguard rules {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = scratch(&format!(
            "rules-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        let rules = dir.join("rules.yaml");
        std::fs::write(&rules, &out.stdout).unwrap();
        let report = promtool_ok(
            &["check", "rules", rules.to_str().unwrap()],
            &format!("the rules of {}", file.display()),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // A config with SLOs or providers (an `llm` listener: their dependency SLOs) has rules;
        // one with neither an empty list.
        let some = !config.slos.is_empty() || config.listeners.iter().any(|l| l.role.is_egress());
        assert_eq!(
            !report.contains("SUCCESS: 0 rules"),
            some,
            "{}: {report}",
            file.display()
        );
    }
}

/// Every ```yaml block of the README: the text between the fences.
fn readme_yaml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + "```yaml\n".len()..];
        let end = body.find("```\n").expect("a closed block");
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

#[test]
fn every_config_the_readme_shows_is_a_file_in_config() {
    let blocks = readme_yaml_blocks();
    assert!(!blocks.is_empty(), "the README shows a config");
    let files: Vec<(PathBuf, String)> = examples()
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    for block in blocks {
        assert!(
            files.iter().any(|(_, text)| *text == block),
            "a YAML block of the README is no file in config/ (put it there as it is, so that \
             the tests run it):\n{block}"
        );
    }
}

/// The path a provider's API has for `api` (`chat` or `messages`), by the host of its URL as a
/// user writes it in a config: Azure OpenAI's v1 API under /openai/v1, OpenAI (and
/// OpenAI-compatible servers such as vLLM) and Anthropic under /v1.
fn documented_path(url: &str, api: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    let base = if host.ends_with(".openai.azure.com") {
        "/openai/v1"
    } else {
        "/v1"
    };
    match api {
        "chat" => format!("{base}/chat/completions"),
        _ => format!("{base}/messages"),
    }
}

/// A stand-in for one upstream: records the path of each request, and answers it 200 with a
/// body of the API the path names — unless `answering` (shared by a route's stand-ins) is past
/// its place in the chain: then 503, so that the request moves on.
async fn stand_in(
    place: usize,
    answering: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
) -> sloguard::sim::SimServer {
    sloguard::sim::serve(
        "127.0.0.1:0".parse().unwrap(),
        move |req: Request<hyper::body::Incoming>| {
            let (answering, seen) = (answering.clone(), seen.clone());
            async move {
                let path = req.uri().path().to_owned();
                let _ = req.into_body().collect().await;
                seen.lock().unwrap().push(path.clone());
                let body = if path.ends_with("/chat/completions") {
                    r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#
                } else if path.ends_with("/messages") {
                    r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#
                } else {
                    r#"{"answer":"hello"}"#
                };
                let mut r = Response::new(sloguard::sim::full(body));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                if answering.load(Ordering::SeqCst) > place {
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            }
        },
    )
    .await
    .unwrap()
}

/// The path of a URL (`""` without one).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("", |i| &rest[i..])
}

fn set(map: &mut Value, key: &str, value: Value) {
    map.as_mapping_mut()
        .unwrap()
        .insert(Value::from(key), value);
}

/// Runs `file` for real: binds on 127.0.0.1:0, each upstream a stand-in on loopback with the
/// URL's own path, key and token files stand-ins; then one request through each listener for each
/// upstream of its chain (the ones before it failing), checking the path each stand-in was
/// asked. Returns what went wrong.
async fn serve_every_chain(file: &Path) -> Vec<String> {
    let what = file.display().to_string();
    let config = Config::load(file).unwrap_or_else(|e| panic!("{e}"));
    let mut yaml: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let dir = scratch(&format!(
        "run-{}",
        file.file_stem().unwrap().to_string_lossy()
    ));
    let secret = dir.join("secret");
    std::fs::write(&secret, "sk-stand-in-key\n").unwrap();
    let secret = Value::from(secret.to_str().unwrap());
    let loopback = Value::from("127.0.0.1:0");
    let admin = yaml.get_mut("admin");
    if let Some(admin) = admin {
        set(admin, "bind", loopback.clone());
        if admin.get("token_file").is_some() {
            set(admin, "token_file", secret.clone());
        }
    } else {
        let mut admin = Value::Mapping(Default::default());
        set(&mut admin, "bind", loopback.clone());
        set(&mut yaml, "admin", admin);
    }
    for l in yaml["listeners"].as_sequence_mut().unwrap() {
        set(l, "bind", loopback.clone());
    }
    // The kill switch's human queue and the webhook: nothing listens there (never reached).
    let nowhere = "http://127.0.0.1:9";
    if let Some(k) = yaml
        .get_mut("safety")
        .and_then(|s| s.get_mut("kill_switch"))
    {
        if k.get("fallback_url").is_some() {
            set(k, "fallback_url", Value::from(nowhere));
        }
    }
    if let Some(i) = yaml.get_mut("incidents") {
        if i.get("webhook").is_some() {
            set(i, "webhook", Value::from(nowhere));
        }
    }
    if let Some(o) = yaml.get_mut("otlp") {
        set(o, "endpoint", Value::from(nowhere));
    }
    // One stand-in per upstream, at its place in the chain of the route that uses it.
    let mut stand_ins = std::collections::BTreeMap::new();
    let mut servers = Vec::new();
    for route in config.routes.values() {
        let answering = Arc::new(AtomicUsize::new(0));
        for (place, name) in route.upstreams.iter().enumerate() {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let server = stand_in(place, answering.clone(), seen.clone()).await;
            let up = &mut yaml["upstreams"][name.as_str()];
            let url = config.upstreams[name].url.clone();
            let path = url_path(&url);
            set(
                up,
                "url",
                Value::from(format!("http://{}{path}", server.addr)),
            );
            up.as_mapping_mut().unwrap().remove("tls");
            if up.get("api_keys_file").is_some() {
                set(up, "api_keys_file", secret.clone());
            }
            stand_ins.insert(name.clone(), (answering.clone(), seen, url));
            servers.push(server);
        }
    }
    let text = serde_yaml_ng::to_string(&yaml).unwrap();
    let run = Config::parse(&what, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let sidecar = sloguard::Sidecar::start(run).await.unwrap();
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut failures = Vec::new();
    for l in &config.listeners {
        let addr = sidecar.listener_addr(&l.name).unwrap();
        let chain = &config.routes[&l.route].upstreams;
        let protocol = config.upstreams[&chain[0]].protocol;
        // What the agent's SDK sends, pointed at this listener as the README says.
        let (path, api, body) = match (l.role, protocol) {
            (Role::Llm, Protocol::Anthropic) => (
                "/v1/messages",
                "messages",
                r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            (Role::Llm, _) => (
                "/v1/chat/completions",
                "chat",
                r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            ),
            _ => ("/ask", "", r#"{"question":"hi"}"#),
        };
        for (place, name) in chain.iter().enumerate() {
            let (answering, seen, url) = &stand_ins[name];
            answering.store(place, Ordering::SeqCst);
            seen.lock().unwrap().clear();
            let req = Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let (status, from) = (
                resp.status(),
                resp.headers().get("x-sloguard-upstream").cloned(),
            );
            let _ = resp.into_body().collect().await;
            let want = match l.role {
                Role::Llm => documented_path(url, api),
                _ => format!("{}{path}", url_path(url).trim_end_matches('/')),
            };
            let got = seen.lock().unwrap().clone();
            if status != StatusCode::OK || from.as_ref().is_none_or(|f| f != name.as_str()) {
                failures.push(format!(
                    "{what}: {} {path} for upstream {name}: {status} from {from:?}",
                    l.name
                ));
            } else if got != [want.clone()] {
                failures.push(format!(
                    "{what}: {} {path} reached upstream {name} ({url}) as {got:?}; its API is at {want}",
                    l.name
                ));
            }
        }
    }
    sidecar.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
    failures
}

#[tokio::test]
async fn every_example_serves_a_request_along_every_chain() {
    let mut files = examples();
    for deployed in [
        "deploy/kubernetes/sloguard.yaml",
        "deploy/overlays/research-agent/sloguard.yaml",
    ] {
        files.push(root().join(deployed));
    }
    let mut failures = Vec::new();
    for file in files {
        failures.extend(serve_every_chain(&file).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
