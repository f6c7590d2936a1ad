//! The real binary as a child process: started on a config file, its bound addresses read from
//! its log.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `sloguard run --config <config>` with the environment variables of `env` and then of `more`
/// set, its log on a pipe (`stderr`), killed when dropped.
pub fn spawn(config: &std::path::Path, env: &[(&str, &str)], more: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().chain(more).copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The real binary, started on a config file, with its bound addresses read from its log.
pub struct Process {
    pub child: Child,
    pub admin: SocketAddr,
    /// The last listener it logged.
    pub listener: SocketAddr,
    /// Every listener, by name.
    pub listeners: Vec<(String, SocketAddr)>,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Process {
    pub async fn start(config: &str, name: &str) -> Process {
        Process::start_with_env(config, name, &[]).await
    }

    /// Started with these environment variables set too.
    pub async fn start_with_env(config: &str, name: &str, env: &[(&str, &str)]) -> Process {
        let dir = std::env::temp_dir().join(format!("sloguard-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = spawn(&path, &[("RUST_LOG", "info")], env);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut admin, mut listeners) = (None, Vec::new());
        // Its last thousand log lines, from its start.
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                {
                    let mut log = log.lock().unwrap();
                    if log.len() >= 1000 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
                match v["message"].as_str() {
                    Some("listening") => {
                        let bind = v["bind"].as_str().and_then(|s| s.parse().ok());
                        let name = v["listener"].as_str().unwrap_or_default().to_owned();
                        listeners.extend(bind.map(|b| (name, b)));
                    }
                    Some("ready") => {
                        admin = v["admin"].as_str().and_then(|s| s.parse().ok());
                        break;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("sloguard became ready");
        // Keep draining its log so that it never blocks on a full pipe; the last lines are kept.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().unwrap();
                while kept.len() >= 1000 {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Process {
            child,
            admin: admin.expect("admin address logged"),
            listener: listeners.last().expect("listener logged").1,
            listeners,
            dir,
            config: path,
            log,
        }
    }

    /// The address of the listener called `name`.
    pub fn listener_named(&self, name: &str) -> SocketAddr {
        let found = self.listeners.iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("no listener {name}")).1
    }

    /// The config file it was started on.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Its log lines (the last thousand), parsed.
    pub fn log(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether it has logged a line with `message` since it became ready.
    pub fn logged(&self, message: &str) -> bool {
        self.log().iter().any(|l| l["message"] == message)
    }

    /// Sends it a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let kill = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.pid()))
            .status()
            .expect("sh runs");
        assert!(kill.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends it SIGTERM, as Kubernetes does to stop a container.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// A field of /proc/PID/status, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
