//! The running state built from one config: an immutable snapshot that each request takes a
//! reference to. A reload builds a new snapshot and swaps it in; requests in flight finish on
//! the one they started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics::{Counter, Histogram};

use super::cache::ResponseCache;
use super::fallback::{FallbackOn, FallbackReason};
use crate::config::{Config, Protocol, Role, RouteConfig};
use crate::telemetry::{
    connection_errors, label, overhead, replay_skipped, ModelLabels, RequestMetrics, Telemetry,
    FALLBACKS_TOTAL,
};
use crate::upstream::{Upstream, UpstreamBuildError};

pub struct Snapshot {
    pub config: Arc<Config>,
    /// In the config's order; a listener's accept loop refers to its entry by index.
    pub listeners: Vec<Arc<ListenerState>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// A route: its chain of upstreams, what moves a request along it, and its cache.
pub struct RouteState {
    pub name: String,
    /// Tried in this order; never empty.
    pub chain: Vec<Arc<Upstream>>,
    pub fallback_on: FallbackOn,
    pub max_replay_body: usize,
    pub cache: Option<ResponseCache>,
    /// `sloguard_fallbacks_total` by `[hop][reason]`: from `chain[hop]` to the next upstream, or
    /// from the last to the cache (absent without one).
    pub(super) fallbacks: Vec<[Counter; FallbackReason::COUNT]>,
    /// Some upstream of the chain rewrites the model of LLM requests.
    pub rewrites_model: bool,
}

impl RouteState {
    /// Whether requests on the route are kept for replay: a fallback or the cache needs them.
    pub fn replays(&self) -> bool {
        self.chain.len() > 1 || self.cache.is_some()
    }

    fn new(
        name: &str,
        config: &RouteConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        agent: &str,
        t: &Telemetry,
    ) -> Result<RouteState, UpstreamBuildError> {
        let chain = config
            .upstreams
            .iter()
            .map(|u| {
                upstreams
                    .get(u)
                    .cloned()
                    .ok_or_else(|| UpstreamBuildError::Url {
                        name: u.clone(),
                        message: format!("route {name} names an upstream that does not exist"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if chain.is_empty() {
            return Err(UpstreamBuildError::Url {
                name: name.to_owned(),
                message: "route has no upstream".into(),
            });
        }
        let targets = chain.len() - 1 + usize::from(config.cache.is_some());
        let fallbacks = (0..targets)
            .map(|hop| {
                let to = chain.get(hop + 1).map_or("cache", |u| u.name.as_str());
                FallbackReason::ALL.map(|reason| {
                    t.counter(
                        FALLBACKS_TOTAL,
                        vec![
                            label("agent", agent),
                            label("from", &chain[hop].name),
                            label("to", to),
                            metrics::Label::from_static_parts("reason", reason.as_str()),
                        ],
                    )
                })
            })
            .collect();
        Ok(RouteState {
            name: name.to_owned(),
            rewrites_model: chain
                .iter()
                .any(|u| u.model.is_some() && u.protocol != Protocol::None),
            chain,
            fallback_on: FallbackOn::new(&config.fallback_on),
            max_replay_body: usize::try_from(config.max_replay_body.0).unwrap_or(usize::MAX),
            cache: config
                .cache
                .as_ref()
                .map(|c| ResponseCache::new(c.max_entries, c.ttl.0)),
            fallbacks,
        })
    }
}

/// What a request arriving on one listener needs.
pub struct ListenerState {
    pub name: String,
    pub bind: SocketAddr,
    pub role: Role,
    pub route: Arc<RouteState>,
    /// Indexed like the route's chain, then the cache: the request is recorded under the
    /// upstream that answered it.
    pub metrics: Vec<RequestMetrics>,
    pub overhead: Histogram,
    pub replay_skipped: Counter,
    pub connection_errors: Counter,
}

impl ListenerState {
    /// The handles for a request answered at `hop` of the chain (`chain.len()`: the cache).
    #[inline]
    pub fn metrics(&self, hop: usize) -> &RequestMetrics {
        &self.metrics[hop.min(self.metrics.len() - 1)]
    }
}

impl Snapshot {
    /// Builds the running state of a validated config.
    pub fn build(config: Config, telemetry: &Telemetry) -> Result<Snapshot, UpstreamBuildError> {
        let models = Arc::new(ModelLabels::new(config.metrics.max_model_labels));
        let agent = &config.agent;
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(name, up, agent, telemetry, &models)?),
            );
        }
        let mut routes = BTreeMap::new();
        for (name, r) in &config.routes {
            let route = RouteState::new(name, r, &upstreams, agent, telemetry)?;
            routes.insert(name.as_str(), Arc::new(route));
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            // validate() guarantees the route exists.
            let route =
                routes
                    .get(l.route.as_str())
                    .cloned()
                    .ok_or_else(|| UpstreamBuildError::Url {
                        name: l.route.clone(),
                        message: "no such route".into(),
                    })?;
            let mut metrics: Vec<RequestMetrics> = route
                .chain
                .iter()
                .map(|u| RequestMetrics::new(telemetry, agent, &l.name, &u.name))
                .collect();
            if route.cache.is_some() {
                metrics.push(RequestMetrics::new(telemetry, agent, &l.name, "cache"));
            }
            listeners.push(Arc::new(ListenerState {
                name: l.name.clone(),
                bind: l.bind,
                role: l.role,
                metrics,
                overhead: overhead(telemetry, agent, &l.name),
                replay_skipped: replay_skipped(telemetry, agent, &l.name),
                connection_errors: connection_errors(telemetry, agent, &l.name),
                route,
            }));
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            upstreams,
        })
    }
}
