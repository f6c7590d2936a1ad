//! The running state built from one config: an immutable snapshot that each request takes a
//! reference to. A reload builds a new snapshot and swaps it in; requests in flight finish on
//! the one they started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics::Counter;

use crate::config::{Config, Role};
use crate::telemetry::{connection_errors, ModelLabels, RequestMetrics, Telemetry};
use crate::upstream::{Upstream, UpstreamBuildError};

pub struct Snapshot {
    pub config: Arc<Config>,
    /// In the config's order; a listener's accept loop refers to its entry by index.
    pub listeners: Vec<Arc<ListenerState>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// What a request arriving on one listener needs.
pub struct ListenerState {
    pub name: String,
    pub bind: SocketAddr,
    pub role: Role,
    pub upstream: Arc<Upstream>,
    pub metrics: RequestMetrics,
    pub connection_errors: Counter,
}

impl Snapshot {
    /// Builds the running state of a validated config.
    pub fn build(config: Config, telemetry: &Telemetry) -> Result<Snapshot, UpstreamBuildError> {
        let models = Arc::new(ModelLabels::new(config.metrics.max_model_labels));
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(name, up, &config.agent, telemetry, &models)?),
            );
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            // validate() guarantees the route and its first upstream exist.
            let upstream = config
                .routes
                .get(&l.route)
                .and_then(|r| r.upstreams.first())
                .and_then(|u| upstreams.get(u))
                .cloned()
                .ok_or_else(|| UpstreamBuildError::Url {
                    name: l.route.clone(),
                    message: "route has no upstream".into(),
                })?;
            listeners.push(Arc::new(ListenerState {
                name: l.name.clone(),
                bind: l.bind,
                role: l.role,
                metrics: RequestMetrics::new(telemetry, &config.agent, &l.name, &upstream.name),
                connection_errors: connection_errors(telemetry, &config.agent, &l.name),
                upstream,
            }));
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            upstreams,
        })
    }
}
