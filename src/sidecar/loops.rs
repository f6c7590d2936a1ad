//! The sidecar's background loops: the local SLO view, the config file watch, the upkeep, the
//! task sweep and the key files' reload. Each is supervised: a panic restarts it and counts
//! `sloguard_background_restarts_total{task}`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use tokio::task::JoinHandle;

use super::reload::Reloader;
use crate::background::{every, supervise};
use crate::proxy::{Shared, Snapshot};
use crate::slo::Slos;
use crate::telemetry::Telemetry;

/// How often `api_keys_file`s are checked for a change.
pub(super) const KEY_FILE_POLL: Duration = Duration::from_secs(1);

/// What the loops work on.
pub(super) struct Loops<'a> {
    pub(super) telemetry: &'a Telemetry,
    pub(super) shared: &'a Shared,
    pub(super) state: &'a Arc<ArcSwap<Snapshot>>,
    pub(super) slos: Arc<Slos>,
    /// The config file's reloader, when there is a file to watch.
    pub(super) watcher: Option<Arc<Reloader>>,
    /// The restart counter of a loop, by its name.
    pub(super) restarts: &'a dyn Fn(&str) -> Counter,
}

/// Starts the loops; their handles.
pub(super) fn start(l: &Loops<'_>) -> Vec<JoinHandle<()>> {
    let restarts = l.restarts;
    let mut background = Vec::new();
    // The local SLO view reads the sidecar's own counters once a second (while it has SLOs:
    // a reload may add some).
    let (metrics, slos) = (l.telemetry.clone(), l.slos.clone());
    background.push(every(
        "slo",
        restarts("slo"),
        Duration::from_secs(1),
        move || {
            if !slos.is_empty() {
                slos.tick(metrics.tallies(), tokio::time::Instant::now());
            }
        },
    ));
    if let Some(watcher) = l.watcher.clone() {
        background.push(supervise(
            "config_watch",
            restarts("config_watch"),
            move || watcher.clone().watch(),
        ));
    }
    let upkeep = l.telemetry.clone();
    let budget = l.shared.budget.clone();
    let pools = l.state.clone();
    background.push(every(
        "upkeep",
        restarts("upkeep"),
        Duration::from_secs(5),
        move || {
            budget.report();
            upkeep.run_upkeep();
            // An upstream no request reaches any more keeps no idle connection open either.
            for upstream in pools.load().upstreams.values() {
                upstream.pool.close_expired();
            }
        },
    ));
    // Tasks idle past `stuck_after` are abandoned: looked for every second (the table keeps
    // them in order of activity, so a sweep stops at the first that is not). The liveness
    // probe's state comes from here too.
    let tasks = l.shared.tasks.clone();
    background.push(every(
        "task_sweep",
        restarts("task_sweep"),
        Duration::from_secs(1),
        move || {
            tasks.sweep(tokio::time::Instant::now());
        },
    ));
    let keys = l.state.clone();
    background.push(supervise("key_reload", restarts("key_reload"), move || {
        reload_keys(keys.clone())
    }));
    background
}

/// Re-reads the `api_keys_file`s that changed, every [`KEY_FILE_POLL`].
async fn reload_keys(state: Arc<ArcSwap<Snapshot>>) {
    // Kubernetes propagates a changed Secret within a minute or so; a second's polling of a
    // few small files is nothing next to that.
    let mut tick = tokio::time::interval(KEY_FILE_POLL);
    loop {
        tick.tick().await;
        let rings: Vec<_> = state
            .load()
            .upstreams
            .values()
            .filter_map(|u| u.keys.clone())
            .collect();
        if rings.is_empty() {
            continue;
        }
        // File reads block: off the workers that serve requests.
        let _ =
            tokio::task::spawn_blocking(move || rings.iter().for_each(|r| r.reload_if_changed()))
                .await;
    }
}
