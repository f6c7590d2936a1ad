//! The listeners a sidecar serves, as the config of the moment has them: started with the
//! sidecar, added, removed and rebound by reloads, stopped at shutdown.
//!
//! A reload keeps a listener's socket and its connections when its name and bind address stay
//! the same: the state its next requests take changes, and its limits change in place. A
//! listener renamed on the same address goes on on the same socket, so that nothing queued in
//! its backlog is lost, with a new connection set (the name labels its metrics); the old set
//! drains. A listener on a new address gets a new socket, bound before anything is swapped (a
//! port taken refuses the reload), and the old one stops accepting and drains: its keep-alive
//! connections are closed once their requests are answered, as at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ListenerConfig;
use crate::proxy::connections::Connections;
use crate::proxy::state::ListenerState;
use crate::proxy::{listener, Snapshot};
use crate::telemetry::{label, Telemetry, BACKGROUND_RESTARTS_TOTAL};

use super::start::{bind, StartError};

/// One listener being served.
#[derive(Debug)]
struct Serving {
    /// As configured (a port 0 is whatever the system gave).
    config: ListenerConfig,
    /// Where it is bound.
    addr: SocketAddr,
    tcp: Arc<TcpListener>,
    /// The state its requests take: a reload stores the new one here.
    slot: Arc<ArcSwap<ListenerState>>,
    /// Its connections: a reload may change their limits.
    connections: Arc<Connections>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What a listener of a new config is served with: found before the config is swapped in.
enum Source {
    /// The listener `serving[i]`: same name and address.
    Kept(usize),
    /// The socket of `serving[i]`, under a new name.
    Socket(usize),
    /// A socket of its own, bound for it.
    Bound(TcpListener),
}

/// How a reload changes the listeners: bound sockets, in the order of the new snapshot's
/// listeners.
pub(crate) struct Plan(Vec<Source>);

/// What a reload did to the listeners, by name.
#[derive(Debug, Default, Serialize)]
pub struct ListenerChanges {
    pub kept: Vec<String>,
    pub added: Vec<String>,
    /// Serving on a new address, or (renamed) with a new connection set.
    pub rebound: Vec<String>,
    pub removed: Vec<String>,
}

/// The sidecar's listeners.
#[derive(Debug)]
pub(crate) struct Listeners {
    serving: Vec<Serving>,
    /// Listeners a reload removed or replaced, draining: waited for at shutdown.
    retired: Vec<JoinHandle<()>>,
    /// Set by the shutdown: no reload starts a listener after it.
    closed: bool,
    telemetry: Telemetry,
    agent: String,
    grace: Duration,
}

impl Listeners {
    pub(crate) fn new(telemetry: &Telemetry, agent: &str, grace: Duration) -> Listeners {
        Listeners {
            serving: Vec::new(),
            retired: Vec::new(),
            closed: false,
            telemetry: telemetry.clone(),
            agent: agent.to_owned(),
            grace,
        }
    }

    /// Starts serving `snapshot`'s listeners on `tcps`, bound in the same order.
    pub(crate) fn start(&mut self, snapshot: &Snapshot, tcps: Vec<TcpListener>) {
        for (i, tcp) in tcps.into_iter().enumerate() {
            self.spawn(snapshot, i, Arc::new(tcp));
        }
    }

    /// Each listener's name and bound address.
    pub(crate) fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.serving
            .iter()
            .map(|s| (s.config.name.clone(), s.addr))
            .collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Finds, for each listener of `next`, the socket it will be served on; binds those that
    /// need a new one. `current`: the configs of the listeners served now (see
    /// [`Listeners::configs`]).
    pub(crate) async fn prepare(
        current: &[(ListenerConfig, Arc<TcpListener>)],
        next: &Snapshot,
    ) -> Result<Plan, StartError> {
        let mut claimed = vec![false; current.len()];
        let mut sources = Vec::with_capacity(next.config.listeners.len());
        for (i, l) in next.config.listeners.iter().enumerate() {
            let by_name = current
                .iter()
                .position(|(c, _)| c.name == l.name && c.bind == l.bind);
            // A listener renamed, or one that takes over the address of one removed.
            let by_address = || {
                current
                    .iter()
                    .enumerate()
                    .position(|(j, (c, _))| !claimed[j] && c.bind == l.bind && l.bind.port() != 0)
            };
            let source = match by_name.filter(|&j| !claimed[j]).or_else(by_address) {
                // Its role, route and limits change in place: only the name is the connection
                // set's for good (a metric label).
                Some(j) if current[j].0.name == l.name => Source::Kept(j),
                Some(j) => Source::Socket(j),
                None => Source::Bound(bind(format!("listeners[{i}].bind"), l.bind).await?),
            };
            if let Source::Kept(j) | Source::Socket(j) = source {
                claimed[j] = true;
            }
            sources.push(source);
        }
        Ok(Plan(sources))
    }

    /// The listeners served now, for [`Listeners::prepare`].
    pub(crate) fn configs(&self) -> Vec<(ListenerConfig, Arc<TcpListener>)> {
        self.serving
            .iter()
            .map(|s| (s.config.clone(), s.tcp.clone()))
            .collect()
    }

    /// Serves `next`'s listeners as `plan` says; those it leaves out stop accepting and drain.
    pub(crate) fn commit(&mut self, plan: Plan, next: &Snapshot) -> ListenerChanges {
        self.retired.retain(|t| !t.is_finished());
        let mut old: Vec<Option<Serving>> = std::mem::take(&mut self.serving)
            .into_iter()
            .map(Some)
            .collect();
        let mut changes = ListenerChanges::default();
        // Those on sockets already served first: a listener on a new address replaces the one
        // of its name that no other listener took over.
        let (bound, served): (Vec<_>, Vec<_>) = plan
            .0
            .into_iter()
            .enumerate()
            .partition(|(_, s)| matches!(s, Source::Bound(_)));
        for (i, source) in served.into_iter().chain(bound) {
            let state = &next.listeners[i];
            match source {
                Source::Kept(j) => {
                    let Some(mut s) = old[j].take() else { continue };
                    s.slot.store(state.clone());
                    if s.config.limits != next.config.listeners[i].limits {
                        s.connections.set_limits(&next.config.listeners[i].limits);
                    }
                    s.config = next.config.listeners[i].clone();
                    changes.kept.push(state.name.clone());
                    self.serving.push(s);
                }
                Source::Socket(j) => {
                    let Some(s) = old[j].take() else { continue };
                    let tcp = s.tcp.clone();
                    self.retire(s);
                    changes.rebound.push(state.name.clone());
                    self.spawn(next, i, tcp);
                }
                Source::Bound(tcp) => {
                    let name = &state.name;
                    let replaces = old
                        .iter()
                        .position(|s| s.as_ref().is_some_and(|s| s.config.name == *name));
                    match replaces.and_then(|j| old[j].take()) {
                        Some(s) => {
                            self.retire(s);
                            changes.rebound.push(name.clone());
                        }
                        None => changes.added.push(name.clone()),
                    }
                    self.spawn(next, i, Arc::new(tcp));
                }
            }
        }
        for s in old.into_iter().flatten() {
            changes.removed.push(s.config.name.clone());
            self.retire(s);
        }
        changes
    }

    /// Stops a listener: it takes no more connections, and its connections drain.
    fn retire(&mut self, s: Serving) {
        tracing::info!(listener = %s.config.name, bind = %s.addr, "listener stopped by a reload: draining");
        let _ = s.stop.send(true);
        self.retired.push(s.task);
    }

    /// Serves `snapshot`'s listener `i` on `tcp`.
    fn spawn(&mut self, snapshot: &Snapshot, i: usize, tcp: Arc<TcpListener>) {
        let state = &snapshot.listeners[i];
        let config = snapshot.config.listeners[i].clone();
        let addr = tcp.local_addr().unwrap_or(config.bind);
        let connections = Connections::new(
            &config.name,
            &config.limits,
            &self.agent,
            &self.telemetry,
            true,
        );
        let restarts = self.telemetry.counter(
            BACKGROUND_RESTARTS_TOTAL,
            vec![
                label("agent", &self.agent),
                label("task", &format!("accept_{}", config.name)),
            ],
        );
        tracing::info!(listener = %state.name, role = state.role.as_str(), bind = %addr, route = %state.route.name, upstreams = ?state.route.chain.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), "listening");
        let slot = Arc::new(ArcSwap::new(state.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(listener::serve(
            tcp.clone(),
            slot.clone(),
            connections.clone(),
            stopped,
            self.grace,
            restarts,
        ));
        self.serving.push(Serving {
            config,
            addr,
            tcp,
            slot,
            connections,
            stop,
            task,
        });
    }

    /// The shutdown: every listener stops accepting and drains; no reload starts another.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for s in &self.serving {
            let _ = s.stop.send(true);
        }
    }

    /// The tasks to wait for after [`Listeners::close`]: every listener's drain.
    pub(crate) fn tasks(&mut self) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<_> = self.serving.drain(..).map(|s| s.task).collect();
        tasks.append(&mut self.retired);
        tasks
    }
}
