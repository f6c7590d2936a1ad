//! The configuration file: schema (serde, `deny_unknown_fields`), defaults, and validation.
//!
//! One convention everywhere: parse with serde (its errors carry the key path and line), then
//! [`Config::validate`] checks what a schema cannot (references, duplicates, sections this build
//! does not act on) and reports the key path and line the same way.

mod cascade;
mod checks;
mod correctness;
mod limits;
mod locate;
mod mcp;
mod otlp;
mod safety;
mod slo;
mod tasks;
mod units;
mod upstream;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use cascade::{CascadeConfig, CycleAction, MAX_CALL_PATH, MAX_DEADLINE};
pub use correctness::{CorrectnessCheck, CorrectnessConfig, JudgeConfig};
pub use limits::{Limits, MemoryConfig};
pub use locate::LineIndex;
pub use mcp::{McpAction, McpConfig, MAX_TOOL_LABELS};
pub use otlp::{OtlpConfig, OtlpProtocol, OtlpTemporality, TracesConfig, MAX_TRACE_QUEUE};
pub use safety::{
    DetectorConfig, IncidentsConfig, KillSwitchConfig, SafetyAction, SafetyConfig, Severities,
    SeverityName,
};
pub use slo::{SliKind, SloConfig, VerdictSource, MAX_WINDOW, MIN_WINDOW};
pub use tasks::{LoopAction, TasksConfig};
pub use units::{parse_duration, parse_size, ByteSize, ConfigDuration};
pub use upstream::{
    parse_upstream_url, CircuitBreakerConfig, H2Config, PoolConfig, Protocol, SlowCallConfig,
    Timeouts, UpstreamConfig, UpstreamTls, UpstreamUrl, MAX_H2_CONNECTIONS,
};

/// The largest `max_replay_body`: each request in flight on the route may hold this much.
pub const MAX_REPLAY_BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// The largest `cache.max_entries` (each entry holds up to
/// [`crate::proxy::cache::MAX_CACHED_BODY`] of body).
pub const MAX_CACHE_ENTRIES: usize = 100_000;

/// A section that, once written, must say something: `otlp:` left empty is an error (no
/// endpoint), not the section's absence.
fn section<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A configuration error: where (key path and line) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Label value on every metric.
    pub agent: String,
    #[serde(default)]
    pub admin: AdminConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    /// How requests to the agent group into tasks (defaults without the section, or with an
    /// empty one).
    #[serde(default, deserialize_with = "null_is_default")]
    pub tasks: TasksConfig,
    /// Inspects responses for harmful content (see `inspect::safety`). An empty `safety:`
    /// means the defaults (every built-in detector, both roles, record), not no safety.
    #[serde(default, deserialize_with = "present_or_defaults")]
    pub safety: Option<SafetyConfig>,
    /// Deadlines, call depth and the call path between agents (nothing read or added without
    /// the section; an empty `cascade:` means the defaults).
    #[serde(default, deserialize_with = "present_or_defaults")]
    pub cascade: Option<CascadeConfig>,
    /// Verdicts on the agent's answers for the `correctness` SLI (none gathered without the
    /// section; an empty `correctness:` means the defaults).
    #[serde(default, deserialize_with = "present_or_defaults")]
    pub correctness: Option<CorrectnessConfig>,
    /// MCP tool calls on `mcp` listeners (the defaults without the section).
    #[serde(default, deserialize_with = "null_is_default")]
    pub mcp: McpConfig,
    /// The service level objectives (none without the section).
    #[serde(default, deserialize_with = "null_is_default")]
    pub slos: Vec<SloConfig>,
    #[serde(default)]
    pub incidents: IncidentsConfig,
    /// Pushes metrics and spans to an OpenTelemetry Collector (nothing without the section).
    #[serde(default, deserialize_with = "section")]
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// Bearer token for `POST /admin/*` (one line); without it, mutations are refused.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// The admin port's connections (the probes must get through whatever else connects).
    #[serde(default)]
    pub limits: Limits,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: default_admin_bind(),
            token_file: None,
            limits: Limits::default(),
        }
    }
}

fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7490))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_grace")]
    pub grace_period: ConfigDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: default_grace(),
        }
    }
}

fn default_grace() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// Bounds on what the metrics record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Distinct `gen_ai_request_model` label values; later model names are recorded as `other`.
    #[serde(default = "default_max_model_labels")]
    pub max_model_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_model_labels: default_max_model_labels(),
        }
    }
}

/// Model names kept as label values before the rest become `other`: enough for every model a
/// team uses, few enough that a client sending random names cannot blow up the series count.
fn default_max_model_labels() -> usize {
    50
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// In front of the agent's own API.
    Agent,
    /// In front of the LLM providers the agent calls.
    Llm,
    /// In front of the other agents this agent calls (usually their own sidecars).
    Peer,
    /// In front of the MCP servers (Streamable HTTP) whose tools the agent calls.
    Mcp,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Llm => "llm",
            Role::Peer => "peer",
            Role::Mcp => "mcp",
        }
    }

    /// Whether the listener takes the agent's own calls out (to providers, tools, other
    /// agents): its requests belong to an inbound request in flight.
    pub fn is_egress(self) -> bool {
        self != Role::Agent
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub role: Role,
    pub route: String,
    /// Its client connections.
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Tried in this order: the first is the primary, the rest its fallbacks.
    pub upstreams: Vec<String>,
    /// What moves a request on to the next upstream (all four classes by default).
    #[serde(default = "default_fallback_on")]
    pub fallback_on: Vec<FallbackClass>,
    /// Request bodies up to this size are kept so that a fallback can replay them; larger ones
    /// stream to the first upstream and cannot fall back.
    #[serde(default = "default_max_replay_body")]
    pub max_replay_body: ByteSize,
    /// The last resort when every upstream is open or has failed.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// A bulkhead: at most this many of the route's requests at once; past it a request is
    /// answered 503 `bulkhead_full` at once. None: no cap.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// A failure class that moves a request on to the next upstream of its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FallbackClass {
    /// No connection, or the connection broke before the response head.
    #[serde(rename = "connect_error")]
    ConnectError,
    /// No response head within `first_byte`.
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "429")]
    TooManyRequests,
}

impl FallbackClass {
    pub const ALL: [FallbackClass; 4] = [
        FallbackClass::ConnectError,
        FallbackClass::Timeout,
        FallbackClass::ServerError,
        FallbackClass::TooManyRequests,
    ];
}

fn default_fallback_on() -> Vec<FallbackClass> {
    FallbackClass::ALL.to_vec()
}

fn default_max_replay_body() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// `routes.*.cache`: successful non-streamed responses kept as the route's last resort.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    #[serde(default = "default_cache_ttl")]
    pub ttl: ConfigDuration,
}

fn default_cache_entries() -> usize {
    1000
}

fn default_cache_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(600))
}

fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A section that, once written, is on: left empty, with its defaults.
fn present_or_defaults<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    let given = Option::<T>::deserialize(d)?;
    Ok(Some(given.unwrap_or_default()))
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            path: String::new(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&name, &source)
    }

    /// Parses and validates config text; `source_name` prefixes errors (a file name).
    pub fn parse(source_name: &str, source: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(source).map_err(|e| {
            // serde_yaml_ng's message reads "key.path: what at line L column C"; the position
            // moves to the front, as with every other error.
            let mut message = e.to_string();
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            ConfigError {
                source_name: source_name.to_owned(),
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message,
            }
        })?;
        if let Err((path, message)) = config.validate() {
            let index = LineIndex::new(source);
            return Err(ConfigError {
                source_name: source_name.to_owned(),
                line: index.line(&path),
                path,
                message,
            });
        }
        Ok(config)
    }

    /// The judge's upstream exists and speaks an LLM API the judge can ask.
    fn validate_judge_upstream(&self, name: &str) -> Result<(), (String, String)> {
        let key = "correctness.judge.upstream".to_owned();
        match self.upstreams.get(name) {
            None => Err((key, format!("{name:?} is not an entry of upstreams"))),
            Some(u) if !u.protocol.is_llm() => Err((
                key,
                format!("upstream {name:?} must have protocol openai or anthropic: the judge asks it for a verdict"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// A `correctness` SLO needs the `correctness` section: without it no verdict is gathered.
    fn validate_correctness_slos(&self) -> Result<(), (String, String)> {
        let needs = self.slos.iter().position(|s| s.sli == SliKind::Correctness);
        match (needs, &self.correctness) {
            (Some(i), None) => Err((
                format!("slos[{i}].sli"),
                "a correctness SLO needs the `correctness:` section (`correctness: {}` for its defaults): without it no verdict is gathered".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The upstreams behind egress listeners (providers, other agents), by name: each one's own
    /// success is its dependency SLO. The agent's own app, behind an `agent` listener, has the
    /// config's SLOs.
    pub fn dependencies(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listeners
            .iter()
            .filter(|l| l.role.is_egress())
            .filter_map(|l| self.routes.get(&l.route))
            .flat_map(|r| r.upstreams.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The target and window of the dependency SLOs: the first availability SLO's, else 99%
    /// over 30 days.
    pub fn dependency_objective(&self) -> (f64, Duration) {
        self.slos
            .iter()
            .find(|s| s.sli == SliKind::Availability)
            .map_or((0.99, Duration::from_secs(30 * 86_400)), |s| {
                (s.target, s.window.0)
            })
    }

    /// Checks what the schema cannot, section by section; the error is `(key path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(otlp) = &self.otlp {
            otlp.validate()?;
        }
        slo::validate(&self.slos, &self.listeners)?;
        if let Some(cascade) = &self.cascade {
            cascade.validate(&self.agent)?;
        }
        if let Some(correctness) = &self.correctness {
            correctness.validate()?;
            if let Some(judge) = &correctness.judge {
                self.validate_judge_upstream(&judge.upstream)?;
            }
        }
        self.validate_correctness_slos()?;
        self.mcp.validate()?;
        if let Some(safety) = &self.safety {
            safety.validate()?;
            if safety.kill_switch.is_some() && self.admin.token_file.is_none() {
                return Err((
                    "safety.kill_switch".into(),
                    "needs admin.token_file: a tripped switch holds until a human enables the agent again (POST /admin/agent/enable), and without a token nothing but a restart could".into(),
                ));
            }
        }
        self.incidents.validate()?;
        self.tasks.validate()?;
        if self.metrics.max_model_labels == 0 {
            return Err((
                "metrics.max_model_labels".into(),
                "must be at least 1".into(),
            ));
        }
        if self.agent.trim().is_empty() {
            return Err((
                "agent".into(),
                "must name the agent (it labels every metric)".into(),
            ));
        }
        self.admin.limits.validate("admin.limits", true)?;
        self.validate_listeners()?;
        for (name, route) in &self.routes {
            self.validate_route(name, route)?;
        }
        for (name, up) in &self.upstreams {
            up.validate(&format!("upstreams.{name}"))?;
        }
        let max_replay = self.routes.values().map(|r| r.max_replay_body.0).max();
        self.memory.validate(max_replay.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
agent: bot
listeners:
  - name: inbound
    bind: 127.0.0.1:7480
    role: agent
    route: agent
routes:
  agent:
    upstreams: [agent]
upstreams:
  agent:
    url: http://127.0.0.1:8000
";

    #[test]
    fn good_config_gets_defaults() {
        let c = Config::parse("t.yaml", GOOD).unwrap();
        assert_eq!(c.admin.bind, "0.0.0.0:7490".parse().unwrap());
        assert_eq!(
            c.upstreams["agent"].timeouts.first_byte.0,
            Duration::from_secs(30)
        );
        assert_eq!(c.shutdown.grace_period.0, Duration::from_secs(30));
    }

    #[test]
    fn url_with_path_prefix() {
        let u = parse_upstream_url("https://example.com/openai/").unwrap();
        assert_eq!(u.path_prefix, "/openai");
        assert_eq!(u.authority.as_str(), "example.com");
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("http://u:p@x").is_err());
    }
}
