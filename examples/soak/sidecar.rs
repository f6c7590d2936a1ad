//! The sidecar under soak: the real binary as a child process, its configs (two valid, one
//! invalid), the reloads (a file change, SIGHUP, the admin call, in turn), and what is read off it
//! (`/metrics`, resident memory and open file descriptors from /proc).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const TOKEN: &str = "soak-admin-token";

/// Where the sidecar's listeners and admin port bind, and its upstreams are.
pub struct Ports {
    pub admin: SocketAddr,
    pub listeners: BTreeMap<&'static str, SocketAddr>,
    pub upstreams: BTreeMap<&'static str, SocketAddr>,
}

/// A free loopback port (bound and let go: nothing else on this machine takes it meanwhile in
/// practice).
pub fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The config: `variant` 0 or 1 (two valid ones that differ in what a reload changes live),
/// anything else an invalid one (an unknown key).
pub fn config(p: &Ports, dir: &Path, variant: u8) -> String {
    let l = |n: &str| p.listeners[n];
    let u = |n: &str| p.upstreams[n];
    // Far below the defaults, so that hung and stalled upstreams are cut within seconds.
    let t = "timeouts: {connect: 500ms, first_byte: 2s, idle: 1s, total: 10s}";
    let (open_for, ttl, model) = match variant {
        1 => ("3s", "60s", ", model: gpt-4o-mini-soak"),
        _ => ("2s", "30s", ""),
    };
    let detectors = match variant {
        1 => "\n  detectors: [{builtin: pii_email}, {builtin: secrets}, {name: banned, keywords: [falconry, Project Falcon]}]",
        _ => "",
    };
    let invalid = if variant > 1 {
        "\n    colour: blue"
    } else {
        ""
    };
    format!(
        "agent: soak
admin: {{bind: {admin}, token_file: {token}}}
listeners:
  - {{name: inbound, bind: {inbound}, role: agent, route: agent}}
  - {{name: openai, bind: {openai}, role: llm, route: openai}}
  - {{name: anthropic, bind: {anthropic}, role: llm, route: anthropic}}
  - {{name: chain, bind: {chain}, role: llm, route: chain}}
routes:
  agent: {{upstreams: [agent]}}
  openai: {{upstreams: [openai]}}
  anthropic: {{upstreams: [anthropic]}}
  chain:
    upstreams: [chain-a, chain-b]
    cache: {{max_entries: 100, ttl: {ttl}}}{invalid}
upstreams:
  agent: {{url: 'http://{agent}', {t}, circuit_breaker: {{open_for: {open_for}, max_open_for: 10s}}}}
  openai: {{url: 'http://{up_openai}', protocol: openai, {t}, circuit_breaker: {{open_for: {open_for}, max_open_for: 10s}}{model}}}
  anthropic: {{url: 'http://{up_anthropic}', protocol: anthropic, {t}}}
  chain-a: {{url: 'http://{chain_a}', protocol: openai, {t}, circuit_breaker: {{open_for: {open_for}, max_open_for: 10s}}}}
  chain-b: {{url: 'http://{chain_b}', protocol: openai, {t}, circuit_breaker: {{open_for: {open_for}, max_open_for: 10s}}}}
tasks: {{stuck_after: 30s}}
safety:
  action: block{detectors}
  kill_switch: {{violations: 3, within: 10m}}
slos:
  - {{name: availability, sli: availability, target: 0.99, window: 30d, exclude_dependency_failures: true}}
  - {{name: ttft, sli: time_to_first_token, threshold: 1s, target: 0.9, window: 30d}}
",
        admin = p.admin,
        token = dir.join("token").display(),
        inbound = l("inbound"),
        openai = l("openai"),
        anthropic = l("anthropic"),
        chain = l("chain"),
        agent = u("agent"),
        up_openai = u("openai"),
        up_anthropic = u("anthropic"),
        chain_a = u("chain-a"),
        chain_b = u("chain-b"),
    )
}

/// Writes `text` to `path` the way Kubernetes updates a mounted ConfigMap: whole, by a rename.
pub fn write_config(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

pub struct Sidecar {
    pub child: Child,
    pub admin: SocketAddr,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Sidecar {
    /// Starts `binary` on `config` (logs to `log`), and waits until it is ready.
    pub async fn start(
        binary: &Path,
        config: &Path,
        log: &Path,
        admin: SocketAddr,
    ) -> anyhow::Result<Sidecar> {
        if let Some(dir) = config.parent() {
            std::fs::write(dir.join("token"), format!("{TOKEN}\n"))?;
        }
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            // As deployed: the Deployment's CPU limit of 1 gives the one-thread runtime.
            .env("SLOGUARD_RUNTIME", "one-thread")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let s = Sidecar {
            child,
            admin,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while s.get("/readyz").await.map(|(c, _)| c) != Some(200) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "sloguard not ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let uri = format!("http://{}{path}", self.admin).parse().ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.get(uri))
            .await
            .ok()?
            .ok()?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `POST /admin/reload` with the token: its status.
    pub async fn admin_reload(&self) -> Option<u16> {
        let req = http::Request::post(format!("http://{}/admin/reload", self.admin))
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Empty::new())
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .ok()?
            .ok()?;
        Some(resp.status().as_u16())
    }

    pub fn signal(&self, name: &str) -> bool {
        Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Resident memory (KiB) and open file descriptors, from /proc.
    pub fn resources(&self) -> Option<(u64, usize)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()?
            .count();
        Some((rss, fds))
    }

    /// SIGTERM, and the exit status within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        None
    }
}

/// The samples of `name` in Prometheus text, each with its labels.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.rsplit_once("} ")?;
                    (labels, value)
                }
                None => ("", rest.strip_prefix(' ')?),
            };
            let mut map = BTreeMap::new();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            Some((map, value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `want`.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
        .map(|(_, v)| v)
        .sum()
}
