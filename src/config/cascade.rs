//! `cascade:`: deadlines, call depth and the call path carried between agents in headers, so
//! that one slow or looping agent cannot hold up or loop through the agents that call it.
//! Without the section none of it is read or added.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// The longest `default_deadline` (and the longest deadline a header may ask for).
pub const MAX_DEADLINE: Duration = Duration::from_secs(86_400);
/// The longest call path carried (`path_header`), in bytes: past it the oldest names go.
pub const MAX_CALL_PATH: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The time a request has left, in milliseconds (so that clocks need not agree).
    #[serde(default = "default_deadline_header")]
    pub deadline_header: String,
    /// The deadline of an inbound request that carries none; `0s`: none.
    #[serde(default = "default_default_deadline")]
    pub default_deadline: ConfigDuration,
    /// How many agent-to-agent calls deep the request is.
    #[serde(default = "default_depth_header")]
    pub depth_header: String,
    /// The agent names the call came through, comma-separated.
    #[serde(default = "default_path_header")]
    pub path_header: String,
    /// An inbound request deeper than this is answered 508 `call_depth_exceeded`.
    #[serde(default = "default_max_depth")]
    pub max_depth: u32,
    #[serde(default)]
    pub on_cycle: CycleAction,
}

/// What is done about an inbound request whose call path already holds this agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleAction {
    /// Count it (`agent_call_cycles_total`); the request goes on.
    #[default]
    Record,
    /// Count it and answer 508 `call_cycle`.
    Block,
}

impl CycleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleAction::Record => "record",
            CycleAction::Block => "block",
        }
    }
}

impl Default for CascadeConfig {
    fn default() -> Self {
        CascadeConfig {
            deadline_header: default_deadline_header(),
            default_deadline: default_default_deadline(),
            depth_header: default_depth_header(),
            path_header: default_path_header(),
            max_depth: default_max_depth(),
            on_cycle: CycleAction::default(),
        }
    }
}

fn default_deadline_header() -> String {
    "x-agent-deadline-ms".into()
}

/// Two minutes: longer than any one answer an agent's caller would wait for, short enough that
/// a hung chain lets go of its callers.
fn default_default_deadline() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(120))
}

fn default_depth_header() -> String {
    "x-agent-call-depth".into()
}

fn default_path_header() -> String {
    "x-agent-call-path".into()
}

fn default_max_depth() -> u32 {
    8
}

impl CascadeConfig {
    /// `agent`: the name this sidecar adds to the call path.
    pub fn validate(&self, agent: &str) -> Result<(), (String, String)> {
        let headers = [
            ("deadline_header", &self.deadline_header),
            ("depth_header", &self.depth_header),
            ("path_header", &self.path_header),
        ];
        for (i, (key, name)) in headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("cascade.{key}"),
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            }
            if let Some((other, _)) = headers[..i]
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
            {
                return Err((
                    format!("cascade.{key}"),
                    format!("must differ from cascade.{other}"),
                ));
            }
        }
        if self.default_deadline.0 > MAX_DEADLINE {
            return Err((
                "cascade.default_deadline".into(),
                "at most 24h (0s: no deadline)".into(),
            ));
        }
        if self.max_depth == 0 {
            return Err((
                "cascade.max_depth".into(),
                "must be at least 1 (a request from another agent is depth 1)".into(),
            ));
        }
        let name_fits = agent.len() < MAX_CALL_PATH / 4
            && agent.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if !name_fits {
            return Err((
                "agent".into(),
                format!(
                    "with `cascade`, the agent's name goes into the call path header: it must be printable ASCII without spaces or commas, shorter than {} bytes",
                    MAX_CALL_PATH / 4
                ),
            ));
        }
        Ok(())
    }
}
