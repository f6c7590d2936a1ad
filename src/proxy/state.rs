//! The running state built from one config: an immutable snapshot that each request takes a
//! reference to. A reload builds a new snapshot and swaps it in; requests in flight finish on
//! the one they started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics::{Counter, Histogram};

use super::bulkhead::Bulkhead;
use super::cache::ResponseCache;
use super::cascade::{CascadeRules, Correlations, ListenerCascade};
use super::correctness::{Feedback, ListenerCorrectness, Schemas};
use super::fallback::{FallbackCounters, FallbackOn, FallbackReason};
use super::judge::{JudgeQueue, Target};
use super::safety::{severity, KillSwitch, ListenerSafety};
use crate::budget::BodyBudget;
use crate::config::{Config, ListenerConfig, Protocol, Role, RouteConfig, UpstreamConfig};
use crate::incident::{Incidents, Severity, WebhookConfig};
use crate::inspect::safety::Detectors;
use crate::telemetry::trace::{ListenerTracer, SpanNames, Tracer};
use crate::telemetry::{
    label, overhead, replay_skipped, ModelLabels, RequestMetrics, Telemetry,
    BULKHEAD_REJECTIONS_TOTAL, FALLBACKS_TOTAL,
};
use crate::upstream::{Upstream, UpstreamBreaker, UpstreamBuildError};

/// What outlives a snapshot: the kill switch (only a human, or the switch itself, changes it; a
/// reload does not) and the incident queue.
#[derive(Debug, Clone)]
pub struct Shared {
    pub kill: Arc<KillSwitch>,
    pub incidents: Incidents,
    /// The agent's live tasks.
    pub tasks: Arc<super::tasks::Tasks>,
    /// The bytes of bodies held at once (`memory.max_held`).
    pub budget: BodyBudget,
    /// Starts each request's span (`otlp.traces`).
    pub tracer: Option<Arc<Tracer>>,
    /// The model names seen so far (`metrics.max_model_labels`): one bound for the process, not
    /// one per config snapshot.
    pub models: Arc<ModelLabels>,
    /// The inbound requests in flight, for the egress calls made for them: across reloads, as
    /// requests are.
    pub correlations: Arc<Correlations>,
    /// The JSON schemas compiled for the `structured_output` check.
    pub(crate) schemas: Arc<Schemas>,
    /// The queue to the judge thread (`correctness.judge`), once it is started.
    pub(crate) judge: Option<Arc<JudgeQueue>>,
    /// What is known of each MCP upstream's tools (pinned definitions among it).
    pub tools: Arc<super::mcp::ToolBooks>,
}

impl Shared {
    /// `webhook`: post incidents to `incidents.webhook` (spawns the sender: call within a
    /// runtime); off for `sloguard check`.
    pub fn new(config: &Config, telemetry: &Telemetry, webhook: bool) -> Shared {
        let hook = config
            .incidents
            .webhook
            .as_deref()
            .filter(|_| webhook)
            .and_then(|url| WebhookConfig::parse(url).ok());
        let incidents = Incidents::new(telemetry, &config.agent, hook);
        let kill = KillSwitch::new(telemetry, &config.agent, incidents.clone());
        Shared {
            tools: Arc::new(super::mcp::ToolBooks::new(incidents.clone())),
            tasks: Arc::new(super::tasks::Tasks::new(
                &config.tasks,
                telemetry,
                &config.agent,
                kill.clone(),
            )),
            kill,
            incidents,
            budget: telemetry.body_budget(
                usize::try_from(config.memory.max_held.0).unwrap_or(usize::MAX),
                &config.agent,
            ),
            tracer: None,
            models: Arc::new(ModelLabels::new(config.metrics.max_model_labels)),
            correlations: Arc::new(Correlations::new(telemetry.counter(
                crate::telemetry::CORRELATION_EVICTIONS_TOTAL,
                vec![label("agent", &config.agent)],
            ))),
            schemas: Arc::default(),
            judge: None,
        }
    }
}

/// The upstream name a disabled agent's traffic is recorded under.
pub(crate) const KILL_SWITCH_FALLBACK: &str = "kill_switch_fallback";

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// In the config's order; a listener's accept loop refers to its entry by index.
    pub listeners: Vec<Arc<ListenerState>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub routes: BTreeMap<String, Arc<RouteState>>,
    /// `POST /admin/feedback`, with `correctness`.
    pub feedback: Option<Feedback>,
}

impl Snapshot {
    /// What the judge asks now: `None` while the config has no judge.
    pub(crate) fn judge_target(&self) -> Option<Target> {
        let config = self.config.correctness.as_ref()?.judge.clone()?;
        Some(Target {
            upstream: self.upstreams.get(&config.upstream)?.clone(),
            upstream_config: self.config.upstreams.get(&config.upstream)?.clone(),
            config,
        })
    }
}

/// A route: its chain of upstreams, what moves a request along it, and its cache.
#[derive(Debug)]
pub struct RouteState {
    pub name: String,
    /// Tried in this order; never empty.
    pub chain: Vec<Arc<Upstream>>,
    pub fallback_on: FallbackOn,
    pub max_replay_body: usize,
    pub cache: Option<ResponseCache>,
    pub fallbacks: FallbackCounters,
    /// Some upstream of the chain rewrites the model of LLM requests.
    pub rewrites_model: bool,
    /// `max_in_flight`, when set.
    pub bulkhead: Option<Arc<Bulkhead>>,
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
                .any(|u| u.model.is_some() && u.protocol.is_llm()),
            chain,
            fallback_on: FallbackOn::new(&config.fallback_on),
            max_replay_body: usize::try_from(config.max_replay_body.0).unwrap_or(usize::MAX),
            cache: config
                .cache
                .as_ref()
                .map(|c| ResponseCache::new(c.max_entries, c.ttl.0)),
            fallbacks: FallbackCounters(fallbacks),
            bulkhead: config.max_in_flight.map(|limit| {
                let rejections = t.counter(
                    BULKHEAD_REJECTIONS_TOTAL,
                    vec![label("agent", agent), label("route", name)],
                );
                Bulkhead::new(limit, rejections)
            }),
        })
    }
}

/// What a request arriving on one listener needs.
#[derive(Debug)]
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
    /// The detectors and handles of `safety`, when it applies to this listener's role.
    pub safety: Option<ListenerSafety>,
    /// Checked first by every request: while it holds, the agent is silent. `None` on the
    /// human queue's listener state, which is where the switch sends traffic.
    pub kill: Option<Arc<KillSwitch>>,
    /// Where requests go while the agent is disabled (an `agent` listener with a
    /// `kill_switch.fallback_url`): this listener with the fallback as its one upstream.
    pub when_disabled: Option<Arc<ListenerState>>,
    /// The agent's tasks, on an `agent` listener.
    pub tasks: Option<Arc<super::tasks::Tasks>>,
    /// The same tasks, for the loop guard, on an `llm` listener.
    pub loop_guard: Option<Arc<super::tasks::Tasks>>,
    /// A request's body must have arrived within this after its head (`limits.body_timeout`).
    pub body_timeout: std::time::Duration,
    /// What this listener's requests hold of bodies counts here.
    pub budget: BodyBudget,
    /// Starts each request's span (`otlp.traces`).
    pub tracer: Option<ListenerTracer>,
    /// Correlation, deadlines, depth and path (`cascade`), when either applies.
    pub cascade: Option<ListenerCascade>,
    /// Verdicts on answers (`correctness`): the checks (`llm`), the agent's header (`agent`).
    pub correctness: Option<ListenerCorrectness>,
    /// MCP operations and tools, on an `mcp` listener.
    pub(crate) mcp: Option<super::mcp::ListenerMcp>,
}

/// The tracer of a listener whose route is `route`.
fn listener_tracer(shared: &Shared, listener: &str, route: &RouteState) -> Option<ListenerTracer> {
    let tracer = shared.tracer.clone()?;
    let names = SpanNames {
        listener: listener.to_owned(),
        upstreams: route.chain.iter().map(|u| u.name.clone()).collect(),
    };
    Some(ListenerTracer::new(tracer, names))
}

impl ListenerState {
    /// The handles for a request answered at `hop` of the chain (`chain.len()`: the cache).
    #[inline]
    pub fn metrics(&self, hop: usize) -> &RequestMetrics {
        &self.metrics[hop.min(self.metrics.len() - 1)]
    }
}

/// What building a snapshot's parts takes from the config and the sidecar's shared state.
struct Build<'a> {
    config: &'a Config,
    telemetry: &'a Telemetry,
    shared: &'a Shared,
    breaker_severity: Severity,
    /// The `cascade` section, ready for requests.
    cascade: Option<Arc<CascadeRules>>,
}

impl Build<'_> {
    fn upstream(
        &self,
        name: &str,
        up: &UpstreamConfig,
        breaker: Option<Arc<UpstreamBreaker>>,
    ) -> Result<Arc<Upstream>, UpstreamBuildError> {
        let s = self.shared;
        Ok(Arc::new(Upstream::new(
            name,
            up,
            &self.config.agent,
            self.telemetry,
            &s.models,
            &s.incidents,
            self.breaker_severity,
            breaker,
        )?))
    }

    /// The safety detectors, compiled once for every listener.
    fn detectors(&self) -> Result<Option<Arc<Detectors>>, UpstreamBuildError> {
        let Some(s) = &self.config.safety else {
            return Ok(None);
        };
        let detectors = s
            .detector_specs()
            .and_then(|specs| Detectors::new(&specs).map_err(|e| (String::new(), e.to_string())))
            .map_err(|(path, message)| UpstreamBuildError::Safety { path, message })?;
        Ok(Some(Arc::new(detectors)))
    }

    /// The human queue of `kill_switch.fallback_url`: a route of one upstream like any other,
    /// recorded under its own name.
    fn human_queue(&self) -> Result<Option<Arc<RouteState>>, UpstreamBuildError> {
        let safety = self.config.safety.as_ref();
        let Some(url) = safety.and_then(|s| s.kill_switch.as_ref()?.fallback_url.clone()) else {
            return Ok(None);
        };
        let up = UpstreamConfig {
            url,
            protocol: Protocol::None,
            timeouts: Default::default(),
            tls: None,
            api_keys_file: None,
            model: None,
            circuit_breaker: None,
            h2: Default::default(),
            pool: Default::default(),
        };
        let route = RouteConfig {
            upstreams: vec![KILL_SWITCH_FALLBACK.to_owned()],
            fallback_on: Vec::new(),
            max_replay_body: crate::config::ByteSize(0),
            cache: None,
            max_in_flight: None,
        };
        let mut only = BTreeMap::new();
        only.insert(
            KILL_SWITCH_FALLBACK.to_owned(),
            self.upstream(KILL_SWITCH_FALLBACK, &up, None)?,
        );
        let agent = &self.config.agent;
        let route = RouteState::new(KILL_SWITCH_FALLBACK, &route, &only, agent, self.telemetry)?;
        Ok(Some(Arc::new(route)))
    }

    /// A listener of the config on `route`; with a human queue, an `agent` listener sends its
    /// requests there while the agent is disabled.
    fn listener(
        &self,
        l: &ListenerConfig,
        route: Arc<RouteState>,
        detectors: Option<&Arc<Detectors>>,
        human_queue: Option<&Arc<RouteState>>,
    ) -> Arc<ListenerState> {
        let (t, agent, shared) = (self.telemetry, &self.config.agent, self.shared);
        let mut metrics: Vec<RequestMetrics> = route
            .chain
            .iter()
            .map(|u| RequestMetrics::new(t, agent, &l.name, &u.name))
            .collect();
        if route.cache.is_some() {
            metrics.push(RequestMetrics::new(t, agent, &l.name, "cache"));
        }
        let when_disabled = match (human_queue, l.role) {
            (Some(queue), Role::Agent) => Some(self.human_queue_listener(l, queue)),
            _ => None,
        };
        let safety = match (&self.config.safety, detectors) {
            (Some(s), Some(d)) => ListenerSafety::new(
                s,
                d,
                l,
                agent,
                &shared.kill,
                severity(self.config.incidents.severities.safety),
                self.id_header(),
                &shared.budget,
                t,
            ),
            _ => None,
        };
        Arc::new(ListenerState {
            name: l.name.clone(),
            bind: l.bind,
            role: l.role,
            metrics,
            overhead: overhead(t, agent, &l.name),
            replay_skipped: replay_skipped(t, agent, &l.name),
            safety,
            kill: Some(shared.kill.clone()),
            when_disabled,
            tasks: (l.role == Role::Agent).then(|| shared.tasks.clone()),
            loop_guard: matches!(l.role, Role::Llm | Role::Mcp).then(|| shared.tasks.clone()),
            body_timeout: l.limits.body_timeout(),
            budget: shared.budget.clone(),
            tracer: listener_tracer(shared, &l.name, &route),
            cascade: self.listener_cascade(l),
            correctness: self.config.correctness.as_ref().and_then(|c| {
                let judge = shared.judge.as_ref();
                ListenerCorrectness::new(c, l.role, t, agent, &l.name, &shared.schemas, judge)
            }),
            mcp: super::mcp::ListenerMcp::new(self.config, l, &route.chain, &shared.tools, t),
            route,
        })
    }

    /// What listener `l` does about calls between agents. Egress calls are correlated with
    /// inbound requests while the sidecar has listeners of both kinds.
    fn listener_cascade(&self, l: &ListenerConfig) -> Option<ListenerCascade> {
        let listeners = &self.config.listeners;
        let both = listeners.iter().any(|o| o.role == Role::Agent)
            && listeners.iter().any(|o| o.role.is_egress());
        if !both && self.cascade.is_none() {
            return None;
        }
        let agent = &self.config.agent;
        ListenerCascade::new(
            l.role,
            both.then(|| self.shared.correlations.clone()),
            self.id_header(),
            self.cascade.clone(),
            ListenerCascade::deadline_counter(self.telemetry, agent, &l.name),
        )
    }

    /// Listener `l` as its requests are served while the agent is disabled: through the human
    /// queue, recorded under it.
    fn human_queue_listener(
        &self,
        l: &ListenerConfig,
        queue: &Arc<RouteState>,
    ) -> Arc<ListenerState> {
        let (t, agent, shared) = (self.telemetry, &self.config.agent, self.shared);
        Arc::new(ListenerState {
            name: l.name.clone(),
            bind: l.bind,
            role: l.role,
            metrics: vec![RequestMetrics::new(t, agent, &l.name, KILL_SWITCH_FALLBACK)],
            overhead: overhead(t, agent, &l.name),
            replay_skipped: replay_skipped(t, agent, &l.name),
            // A human's answers are not inspected, and the switch does not apply to the place
            // it sends traffic to.
            safety: None,
            kill: None,
            when_disabled: None,
            // A human queue's answers are no verdict on the agent's tasks.
            tasks: None,
            loop_guard: None,
            body_timeout: l.limits.body_timeout(),
            budget: shared.budget.clone(),
            tracer: listener_tracer(shared, &l.name, queue),
            cascade: None,
            // A human's answers are no verdict on the agent's.
            correctness: None,
            mcp: None,
            route: queue.clone(),
        })
    }

    /// `tasks.id_header` (validated already: a header name).
    fn id_header(&self) -> http::HeaderName {
        http::HeaderName::from_bytes(self.config.tasks.id_header.as_bytes())
            .unwrap_or_else(|_| http::HeaderName::from_static("x-agent-task-id"))
    }
}

impl Snapshot {
    /// Builds the running state of a validated config.
    pub fn build(
        config: Config,
        telemetry: &Telemetry,
        shared: &Shared,
    ) -> Result<Snapshot, UpstreamBuildError> {
        Snapshot::build_after(config, telemetry, shared, None)
    }

    /// Builds the running state of a validated config that replaces `previous` (a reload): an
    /// upstream whose name and settings stay the same is taken over whole (its connections,
    /// keys and breaker), one whose settings changed keeps its breaker when the breaker's
    /// settings did not, and a route whose settings and upstreams stay the same keeps its cache.
    /// Nothing of `previous` changes: a breaker taken over gets the new config's severity from
    /// [`Snapshot::took_over`], once the new snapshot is swapped in.
    pub fn build_after(
        config: Config,
        telemetry: &Telemetry,
        shared: &Shared,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, UpstreamBuildError> {
        let b = Build {
            config: &config,
            telemetry,
            shared,
            breaker_severity: severity(config.incidents.severities.availability),
            cascade: config
                .cascade
                .as_ref()
                .and_then(|c| CascadeRules::new(c, &config.agent, telemetry))
                .map(Arc::new),
        };
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let upstream = match previous.map(|p| p.carried(name, up, &config)) {
                Some(Carried::Whole(u)) => u,
                Some(Carried::Breaker(breaker)) => b.upstream(name, up, Some(breaker))?,
                _ => b.upstream(name, up, None)?,
            };
            upstreams.insert(name.clone(), upstream);
        }
        let human_queue = b.human_queue()?;
        let mut routes = BTreeMap::new();
        for (name, r) in &config.routes {
            let route = match previous.and_then(|p| p.kept_route(name, r, &upstreams)) {
                Some(route) => route,
                None => Arc::new(RouteState::new(
                    name,
                    r,
                    &upstreams,
                    &config.agent,
                    telemetry,
                )?),
            };
            routes.insert(name.clone(), route);
        }
        let detectors = b.detectors()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            // validate() guarantees the route exists.
            let route = routes
                .get(&l.route)
                .cloned()
                .ok_or_else(|| UpstreamBuildError::Url {
                    name: l.route.clone(),
                    message: "no such route".into(),
                })?;
            listeners.push(b.listener(l, route, detectors.as_ref(), human_queue.as_ref()));
        }
        let feedback = config
            .correctness
            .as_ref()
            .map(|_| Feedback::new(telemetry, &config.agent));
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            upstreams,
            routes,
            feedback,
        })
    }

    /// What of this snapshot's upstream `name` the next config (`next`, which configures it as
    /// `config`) goes on with.
    fn carried(&self, name: &str, config: &UpstreamConfig, next: &Config) -> Carried {
        let (Some(old), Some(was)) = (self.upstreams.get(name), self.config.upstreams.get(name))
        else {
            return Carried::Nothing;
        };
        if was == config && self.config.agent == next.agent {
            return Carried::Whole(old.clone());
        }
        match &old.breaker {
            Some(b) if was.circuit_breaker == config.circuit_breaker => Carried::Breaker(b.clone()),
            _ => Carried::Nothing,
        }
    }

    /// Called once this snapshot replaced another: the breakers it took over raise their
    /// incidents at this config's severity.
    pub fn took_over(&self) {
        let availability = severity(self.config.incidents.severities.availability);
        for b in self.upstreams.values().filter_map(|u| u.breaker.as_ref()) {
            b.set_severity(availability);
        }
    }

    /// This snapshot's route `name`, when the next config leaves its settings as they are and
    /// its upstreams are the ones `upstreams` goes on with.
    fn kept_route(
        &self,
        name: &str,
        config: &RouteConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Option<Arc<RouteState>> {
        let old = self.routes.get(name)?;
        if self.config.routes.get(name) != Some(config) {
            return None;
        }
        let same_chain = old
            .chain
            .iter()
            .all(|u| upstreams.get(&u.name).is_some_and(|n| Arc::ptr_eq(n, u)));
        same_chain.then(|| old.clone())
    }
}

/// What a reload takes over of an upstream.
enum Carried {
    /// The upstream itself: its settings did not change.
    Whole(Arc<Upstream>),
    /// Its circuit breaker: the upstream's settings changed, the breaker's did not.
    Breaker(Arc<crate::upstream::UpstreamBreaker>),
    Nothing,
}
