//! One running sidecar: the admin port, the listeners, and their orderly shutdown. Used by
//! `sloguard run`, the demo and the end-to-end tests alike.

mod listeners;
pub(crate) mod reload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::proxy::connections::Connections;
use crate::proxy::judge::JudgeQueue;
use crate::proxy::{Shared, Snapshot};
use crate::telemetry::otlp::Otlp;
use crate::telemetry::{label, record_build_info, Tallies, Telemetry, BACKGROUND_RESTARTS_TOTAL};
use listeners::Listeners;
mod loops;
mod start;
pub use reload::{ConfigFile, ReloadError, Reloaded, Reloader, Trigger};
use start::bind;
pub use start::StartError;

/// How long the alerts still queued at shutdown may take to go out (a webhook post is bounded
/// by 2 s an attempt).
pub const INCIDENT_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Sidecar {
    pub admin_addr: SocketAddr,
    pub telemetry: Telemetry,
    pub state: Arc<ArcSwap<Snapshot>>,
    reloader: Arc<Reloader>,
    ready: Arc<AtomicBool>,
    admin_stop: watch::Sender<bool>,
    listeners: Arc<Mutex<Listeners>>,
    background: Vec<JoinHandle<()>>,
    incidents: crate::incident::Incidents,
    /// OTLP export, flushed last at shutdown.
    exports: Option<crate::telemetry::otlp::Exports>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sidecar {
    /// Builds the running state, binds the admin port and every listener, and starts serving.
    /// Ready (`/readyz` 200) when this returns. With no file to read again, a reload is refused.
    pub async fn start(config: Config) -> Result<Sidecar, StartError> {
        Sidecar::start_with(config, None, Tallies::default()).await
    }

    /// Like [`Sidecar::start`], keeping every metric as typed totals too
    /// ([`Tallies::every_metric`], read through `telemetry.tallies()`): for a reader in the same
    /// process, such as the demo's live summary. Each recording costs one more atomic add.
    pub async fn start_tallying_every_metric(config: Config) -> Result<Sidecar, StartError> {
        Sidecar::start_with(config, None, Tallies::every_metric()).await
    }

    /// Like [`Sidecar::start`], for a config read from `file`: reloaded on `POST /admin/reload`
    /// and when the file changes (see [`Reloader`]).
    pub async fn start_from_file(config: Config, file: ConfigFile) -> Result<Sidecar, StartError> {
        Sidecar::start_with(config, Some(file), Tallies::default()).await
    }

    async fn start_with(
        config: Config,
        file: Option<ConfigFile>,
        tallies: Tallies,
    ) -> Result<Sidecar, StartError> {
        let grace = config.shutdown.grace_period.0;
        let admin = config.admin.clone();
        let binds: Vec<SocketAddr> = config.listeners.iter().map(|l| l.bind).collect();
        let agent = config.agent.clone();
        let p = prepare(config, tallies).await?;
        let restarts = |task: &str| restarts_counter(&p.telemetry, &agent, task);

        // Bind everything before serving anything: a port taken is a startup error, not a half-up sidecar.
        let (admin_tcp, tcps) = bind_all(admin.bind, binds).await?;

        let listeners = Arc::new(Mutex::new(Listeners::new(&p.telemetry, &agent, grace)));
        let watching = file.is_some();
        let reloader = Arc::new(Reloader::new(
            file,
            p.state.clone(),
            p.shared.clone(),
            &p.telemetry,
            p.slos.clone(),
            listeners.clone(),
        ));
        let ready = Arc::new(AtomicBool::new(false));
        let (admin_stop, _) = watch::channel(false);
        let admin_addr = local_addr(&admin_tcp, admin.bind);
        let admin_connections =
            Connections::new("admin", &admin.limits, &agent, &p.telemetry, false);
        let mut background = vec![tokio::spawn(admin::serve(
            admin_tcp,
            admin_connections,
            Arc::new(p.admin_state(&ready, admin.token_file, &reloader)),
            admin_stop.subscribe(),
            restarts("accept_admin"),
        ))];
        background.extend(loops::start(&loops::Loops {
            telemetry: &p.telemetry,
            shared: &p.shared,
            state: &p.state,
            slos: p.slos,
            watcher: watching.then(|| reloader.clone()),
            restarts: &restarts,
        }));
        // Alerts still queued go out (for a few seconds) before the process ends.
        let incidents = p.shared.incidents.clone();

        lock(&listeners).start(&p.state.load(), tcps);
        ready.store(true, Ordering::Release);
        tracing::info!(admin = %admin_addr, "ready");
        Ok(Sidecar {
            admin_addr,
            telemetry: p.telemetry,
            state: p.state,
            reloader,
            ready,
            admin_stop,
            listeners,
            background,
            incidents,
            exports: p.exports,
        })
    }

    /// Each listener's name and the address it is bound to (the real port when the config said 0).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.listeners).addrs()
    }

    /// Reloads the config: what `POST /admin/reload` and SIGHUP do.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Stops accepting, drains in-flight requests (up to the grace period), then stops the admin
    /// port. `/readyz` answers 503 from the first moment, so the pod leaves its Service.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.wait().await;
    }

    /// Starts the shutdown: listeners stop accepting and `/readyz` turns 503.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        lock(&self.listeners).close();
    }

    /// Waits for the listeners to drain (after [`Sidecar::begin_shutdown`]), then stops the rest.
    pub async fn wait(self) {
        let draining = lock(&self.listeners).tasks();
        for task in draining {
            let _ = task.await;
        }
        let _ = self.admin_stop.send(true);
        for task in self.background {
            task.abort();
        }
        self.incidents.flush(INCIDENT_FLUSH).await;
        // Last: the drained requests' counts and spans are all in by now.
        if let Some(exports) = self.exports {
            exports.flush(crate::telemetry::otlp::FLUSH).await;
        }
        tracing::info!("stopped");
    }
}

/// What a sidecar runs on, built from its config before any port is bound.
struct Prepared {
    telemetry: Telemetry,
    shared: Shared,
    exports: Option<crate::telemetry::otlp::Exports>,
    slos: Arc<crate::slo::Slos>,
    state: Arc<ArcSwap<Snapshot>>,
}

/// Builds the telemetry (with OTLP export, started), checks the admin token, and builds the
/// first snapshot.
async fn prepare(config: Config, tallies: Tallies) -> Result<Prepared, StartError> {
    // The exporters exist before the first metric handle: each is registered with them too.
    let otlp = match &config.otlp {
        Some(c) => Some(Otlp::build(c, &config.agent, &|var| {
            std::env::var(var).ok()
        })?),
        None => None,
    };
    let telemetry = Telemetry::with(otlp.as_ref().and_then(Otlp::mirror), tallies);
    record_build_info(&telemetry, &config.agent);
    if let Some(path) = &config.admin.token_file {
        crate::admin::read_token(path).map_err(StartError::AdminToken)?;
    }
    let mut shared = Shared::new(&config, &telemetry, true);
    let judge = config
        .correctness
        .as_ref()
        .and_then(|c| c.judge.as_ref())
        .map(|_| JudgeQueue::new(&telemetry, &config.agent, &shared.budget));
    shared.judge = judge.as_ref().map(|(queue, _)| queue.clone());
    let restarts = |task: &str| restarts_counter(&telemetry, &config.agent, task);
    let exports = match otlp {
        Some(o) => {
            let (tracer, exports) = o.start(&telemetry, &config.agent, &restarts).await?;
            shared.tracer = tracer;
            Some(exports)
        }
        None => None,
    };
    let slos = Arc::new(crate::slo::Slos::new(
        &config,
        &telemetry,
        tokio::time::Instant::now(),
    ));
    let snapshot = Snapshot::build(config, &telemetry, &shared)?;
    let state = Arc::new(ArcSwap::from_pointee(snapshot));
    if let Some((_, inbox)) = judge {
        // Weakly: the state's listeners hold the queue's senders (as `shared` does), and the
        // thread ends when they go.
        let state = Arc::downgrade(&state);
        let target = Box::new(move || state.upgrade()?.load().judge_target());
        crate::proxy::judge::spawn(inbox, target).map_err(StartError::Judge)?;
    }
    Ok(Prepared {
        telemetry,
        shared,
        exports,
        slos,
        state,
    })
}

impl Prepared {
    /// What the admin endpoints read.
    fn admin_state(
        &self,
        ready: &Arc<AtomicBool>,
        token_file: Option<std::path::PathBuf>,
        reloader: &Arc<Reloader>,
    ) -> AdminState {
        AdminState {
            telemetry: self.telemetry.clone(),
            ready: ready.clone(),
            snapshot: self.state.clone(),
            token_file,
            log_limit: crate::telemetry::LogLimiter::new(),
            kill: self.shared.kill.clone(),
            tasks: self.shared.tasks.clone(),
            slos: self.slos.clone(),
            reloader: reloader.clone(),
            tools: self.shared.tools.clone(),
        }
    }
}

/// `sloguard_background_restarts_total{task}`: the restarts of a supervised background task.
fn restarts_counter(telemetry: &Telemetry, agent: &str, task: &str) -> metrics::Counter {
    telemetry.counter(
        BACKGROUND_RESTARTS_TOTAL,
        vec![label("agent", agent), label("task", task)],
    )
}

/// Binds the admin port, then each listener's address in config order.
async fn bind_all(
    admin: SocketAddr,
    listeners: Vec<SocketAddr>,
) -> Result<(TcpListener, Vec<TcpListener>), StartError> {
    let admin_tcp = bind("admin.bind".into(), admin).await?;
    let mut tcps = Vec::with_capacity(listeners.len());
    for (i, addr) in listeners.into_iter().enumerate() {
        tcps.push(bind(format!("listeners[{i}].bind"), addr).await?);
    }
    Ok((admin_tcp, tcps))
}

fn local_addr(tcp: &TcpListener, configured: SocketAddr) -> SocketAddr {
    tcp.local_addr().unwrap_or(configured)
}
