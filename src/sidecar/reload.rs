//! Hot reload: on `POST /admin/reload`, on SIGHUP, and when the config file's content changes,
//! the file is read, parsed and validated, the running state it describes is built (what
//! survives of the current one carried over), the listeners it adds or moves are bound, and only
//! then is it swapped in. Any failure on the way leaves the running config as it was: the error
//! is logged, counted (`sloguard_config_reloads_total{result="error"}`) and returned to the admin
//! call.
//!
//! Requests in flight finish on the state they started with (each holds its own reference);
//! requests that arrive after the swap take the new one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use serde::Serialize;

use super::listeners::{ListenerChanges, Listeners};
use crate::config::Config;
use crate::proxy::{Shared, Snapshot};
use crate::slo::Slos;
use crate::telemetry::{label, Telemetry, CONFIG_RELOADS_TOTAL};

/// How often the config file is read for a change (a change is applied once two reads agree).
/// A ConfigMap volume swaps a symlink (`..data`) when the ConfigMap changes, which a read
/// through the file's path follows; the kubelet takes up to a minute or so to get there, next to
/// which a second or two is nothing.
pub(crate) const CONFIG_POLL: Duration = Duration::from_secs(1);

/// The sections a reload cannot change: the state built from them lives as long as the process
/// (the metric labels, the admin port, the exporters, the body budget, the task table, the
/// incident sender). A reload that changes one is refused, naming it.
const RESTART_ONLY: &[&str] = &[
    "agent",
    "admin",
    "shutdown",
    "metrics",
    "memory",
    "tasks",
    "incidents.webhook",
    "otlp",
    "correctness.judge (adding or removing it)",
];

fn has_judge(config: &Config) -> bool {
    config
        .correctness
        .as_ref()
        .is_some_and(|c| c.judge.is_some())
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let same = [
        old.agent == new.agent,
        old.admin == new.admin,
        old.shutdown == new.shutdown,
        old.metrics == new.metrics,
        old.memory == new.memory,
        old.tasks == new.tasks,
        old.incidents.webhook == new.incidents.webhook,
        old.otlp == new.otlp,
        has_judge(old) == has_judge(new),
    ];
    RESTART_ONLY
        .iter()
        .zip(same)
        .filter(|(_, same)| !same)
        .map(|(key, _)| *key)
        .collect()
}

/// What set a reload off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Admin,
    Signal,
    FileChange,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Admin => "admin",
            Trigger::Signal => "sighup",
            Trigger::FileChange => "file_change",
        }
    }
}

pub use crate::admin::ReloadError;

impl crate::admin::Reload for Reloader {
    fn reload_now(&self) -> crate::admin::ReloadFuture<'_> {
        Box::pin(async move {
            let done = self.reload(Trigger::Admin).await?;
            Ok(serde_json::to_value(done).unwrap_or_default())
        })
    }
}

/// The file watch's decision, apart from the file and the clock: a text read from the file is
/// loaded once it differs from the text last read for a load (loaded or refused) and has been
/// read the same on two polls in a row. So a change is loaded once, a refused one is not tried
/// again until the file changes, and a file caught half-written is not loaded.
#[derive(Debug, Default)]
struct Settling(Option<String>);

impl Settling {
    /// The file read `text` (`last`: the text last read for a load): what to load now.
    fn read(&mut self, text: String, last: Option<&str>) -> Option<String> {
        if last == Some(text.as_str()) {
            self.0 = None;
            return None;
        }
        if self.0.as_deref() != Some(text.as_str()) {
            self.0 = Some(text);
            return None;
        }
        self.0.take()
    }
}

/// What a reload changed.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub trigger: &'static str,
    pub listeners: ListenerChanges,
    pub upstreams: UpstreamChanges,
    /// SLOs that go on with the events they counted (the others start afresh).
    pub slos_kept: Vec<String>,
}

/// What a reload did to the upstreams, by name.
#[derive(Debug, Default, Serialize)]
pub struct UpstreamChanges {
    /// Taken over whole: connections, keys, breaker.
    pub kept: Vec<String>,
    /// Rebuilt with new settings.
    pub changed: Vec<String>,
    /// Of those changed, the ones whose circuit breaker (its state and counts) went on.
    pub breakers_kept: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl UpstreamChanges {
    /// Compares the objects themselves: what is shared was carried over.
    fn between(old: &Snapshot, new: &Snapshot) -> UpstreamChanges {
        let mut c = UpstreamChanges::default();
        for (name, up) in &new.upstreams {
            match old.upstreams.get(name) {
                None => c.added.push(name.clone()),
                Some(o) if Arc::ptr_eq(o, up) => c.kept.push(name.clone()),
                Some(o) => {
                    c.changed.push(name.clone());
                    if let (Some(a), Some(b)) = (&o.breaker, &up.breaker) {
                        if Arc::ptr_eq(a, b) {
                            c.breakers_kept.push(name.clone());
                        }
                    }
                }
            }
        }
        c.removed = old
            .upstreams
            .keys()
            .filter(|n| !new.upstreams.contains_key(*n))
            .cloned()
            .collect();
        c
    }
}

/// The config file a sidecar was started from, and the text it held then.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

impl ConfigFile {
    /// Reads and parses the file.
    pub fn load(path: PathBuf) -> Result<(ConfigFile, Config), crate::config::ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| crate::config::ConfigError {
            source_name: name.clone(),
            path: String::new(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let config = Config::parse(&name, &text)?;
        Ok((ConfigFile { path, text }, config))
    }
}

/// Reloads a running sidecar's config.
#[derive(Debug)]
pub struct Reloader {
    file: Option<PathBuf>,
    state: Arc<ArcSwap<Snapshot>>,
    shared: Shared,
    telemetry: Telemetry,
    slos: Arc<Slos>,
    listeners: Arc<Mutex<Listeners>>,
    /// One reload at a time.
    serial: tokio::sync::Mutex<()>,
    /// The text of the config last read (loaded or refused): the file watch reloads when the
    /// file holds something else.
    last_text: Mutex<Option<String>>,
    ok: Counter,
    error: Counter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reloader {
    pub(crate) fn new(
        file: Option<ConfigFile>,
        state: Arc<ArcSwap<Snapshot>>,
        shared: Shared,
        telemetry: &Telemetry,
        slos: Arc<Slos>,
        listeners: Arc<Mutex<Listeners>>,
    ) -> Reloader {
        let agent = state.load().config.agent.clone();
        let count = |result: &str| {
            telemetry.counter(
                CONFIG_RELOADS_TOTAL,
                vec![label("agent", &agent), label("result", result)],
            )
        };
        let (file, text) = match file {
            Some(f) => (Some(f.path), Some(f.text)),
            None => (None, None),
        };
        Reloader {
            file,
            state,
            shared,
            slos,
            listeners,
            serial: tokio::sync::Mutex::new(()),
            last_text: Mutex::new(text),
            ok: count("ok"),
            error: count("error"),
            telemetry: telemetry.clone(),
        }
    }

    /// Reads the config file again and, when it is valid, swaps it in.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let Some(path) = self.file.clone() else {
            return Err(ReloadError::NoFile);
        };
        let _one = self.serial.lock().await;
        let text = match read(path.clone()).await {
            Ok(text) => text,
            Err(e) => return Err(self.refused(trigger, ReloadError::Refused(e))),
        };
        self.apply(&path, text, trigger).await
    }

    /// Reloads when the file's content changed since it was last read and then held still for
    /// one more [`CONFIG_POLL`]: a file written in place (truncated, then written) can be read
    /// half-written, and half a config may well be valid — without its SLOs, say.
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(CONFIG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut settling = Settling::default();
        loop {
            tick.tick().await;
            // Missing for a moment (an editor's rename, a volume being remounted): looked for
            // again at the next tick; the running config stays.
            let Ok(text) = read(path.clone()).await else {
                continue;
            };
            let last = lock(&self.last_text).clone();
            let Some(text) = settling.read(text, last.as_deref()) else {
                continue;
            };
            let _one = self.serial.lock().await;
            // An admin call or a signal may have loaded it meanwhile.
            if lock(&self.last_text).as_deref() == Some(text.as_str()) {
                continue;
            }
            let _ = self.apply(&path, text, Trigger::FileChange).await;
        }
    }

    /// Parses, validates, builds and swaps in `text` (the serial lock held).
    async fn apply(
        &self,
        path: &std::path::Path,
        text: String,
        trigger: Trigger,
    ) -> Result<Reloaded, ReloadError> {
        let result = self.try_apply(path, &text, trigger).await;
        *lock(&self.last_text) = Some(text);
        match result {
            Ok(done) => {
                self.ok.increment(1);
                tracing::info!(
                    trigger = trigger.as_str(),
                    listeners_added = ?done.listeners.added,
                    listeners_removed = ?done.listeners.removed,
                    listeners_rebound = ?done.listeners.rebound,
                    upstreams_changed = ?done.upstreams.changed,
                    upstreams_added = ?done.upstreams.added,
                    upstreams_removed = ?done.upstreams.removed,
                    "config reloaded"
                );
                Ok(done)
            }
            Err(e) => Err(self.refused(trigger, e)),
        }
    }

    fn refused(&self, trigger: Trigger, e: ReloadError) -> ReloadError {
        if !matches!(e, ReloadError::ShuttingDown) {
            self.error.increment(1);
        }
        tracing::error!(trigger = trigger.as_str(), error = %e, "config reload refused; the running config stays");
        e
    }

    async fn try_apply(
        &self,
        path: &std::path::Path,
        text: &str,
        trigger: Trigger,
    ) -> Result<Reloaded, ReloadError> {
        let source = path.display().to_string();
        let refused = ReloadError::Refused;
        let current = self.state.load_full();
        // Parsing, compiling the detectors and reading CA and key files take time and block: off
        // the workers that serve requests.
        let (telemetry, shared, previous, text) = (
            self.telemetry.clone(),
            self.shared.clone(),
            current.clone(),
            text.to_owned(),
        );
        let next = tokio::task::spawn_blocking(move || {
            build(&source, &text, &telemetry, &shared, &previous)
        })
        .await
        .map_err(|e| refused(format!("{}: {e}", path.display())))??;
        let serving = lock(&self.listeners).configs();
        let plan = Listeners::prepare(&serving, &next)
            .await
            .map_err(|e| refused(format!("{}: {e}", path.display())))?;
        // The swap: nothing below fails.
        let next = Arc::new(next);
        let changes = {
            let mut listeners = lock(&self.listeners);
            if listeners.is_closed() {
                return Err(ReloadError::ShuttingDown);
            }
            self.state.store(next.clone());
            next.took_over();
            listeners.commit(plan, &next)
        };
        let slos_kept =
            self.slos
                .reload(&next.config, &self.telemetry, tokio::time::Instant::now());
        Ok(Reloaded {
            trigger: trigger.as_str(),
            listeners: changes,
            upstreams: UpstreamChanges::between(&current, &next),
            slos_kept,
        })
    }
}

/// Parses and validates `text`, and builds the running state it describes after `current`.
fn build(
    source: &str,
    text: &str,
    telemetry: &Telemetry,
    shared: &Shared,
    current: &Snapshot,
) -> Result<Snapshot, ReloadError> {
    let refused = ReloadError::Refused;
    let config = Config::parse(source, text).map_err(|e| refused(e.to_string()))?;
    let fixed = restart_only_changes(&current.config, &config);
    if !fixed.is_empty() {
        return Err(refused(format!(
            "{source}: {}: cannot change without a restart (a reload changes listeners, routes, upstreams, safety, slos and incidents.severities)",
            fixed.join(", ")
        )));
    }
    Snapshot::build_after(config, telemetry, shared, Some(current))
        .map_err(|e| refused(format!("{source}: {e}")))
}

/// Reads the config file off the workers that serve requests.
async fn read(path: PathBuf) -> Result<String, String> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
        .await
        .map_err(|e| format!("{shown}: cannot read the config file: {e}"))?
        .map_err(|e| format!("{shown}: cannot read the config file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_loaded_once_after_it_held_still_for_a_poll() {
        let mut w = Settling::default();
        let loaded = |w: &mut Settling, text: &str, last: &str| w.read(text.into(), Some(last));
        // The file as loaded: nothing to do, however often it is read.
        assert_eq!(loaded(&mut w, "a", "a"), None);
        // Changed: read once, it may be half-written; the same again, it is loaded.
        assert_eq!(loaded(&mut w, "b", "a"), None);
        assert_eq!(loaded(&mut w, "b", "a"), Some("b".into()));
        // Loaded (or refused): not again while the content stays the same.
        for _ in 0..5 {
            assert_eq!(loaded(&mut w, "b", "b"), None);
        }
    }

    #[test]
    fn a_file_caught_half_written_is_never_loaded() {
        let mut w = Settling::default();
        // Truncated and written in place: a valid-looking first part, then the whole.
        assert_eq!(w.read("agent: x\n".into(), Some("old")), None);
        assert_eq!(w.read("agent: x\nslos: []\n".into(), Some("old")), None);
        assert_eq!(
            w.read("agent: x\nslos: []\n".into(), Some("old")),
            Some("agent: x\nslos: []\n".into())
        );
        // Changed back before it settled: the first read of it counts for nothing.
        let mut w = Settling::default();
        assert_eq!(w.read("b".into(), None), None);
        assert_eq!(w.read("c".into(), None), None);
        assert_eq!(w.read("b".into(), None), None);
        assert_eq!(w.read("b".into(), None), Some("b".into()));
    }
}
