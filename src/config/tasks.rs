//! `tasks:`: how requests to the agent group into tasks, and when an idle one is abandoned.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, Present};

/// The most live tasks a table may be set to hold (each takes about 75 bytes).
pub const MAX_TASKS_LIMIT: usize = 10_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Requests carrying the same value belong to one task; a request without it is a task of
    /// its own.
    #[serde(default = "default_id_header")]
    pub id_header: String,
    /// The agent's verdict on its response: `completed`, `failed`, `in_progress`.
    #[serde(default = "default_status_header")]
    pub status_header: String,
    /// An `in_progress` task idle this long is abandoned.
    #[serde(default = "default_stuck_after")]
    pub stuck_after: ConfigDuration,
    /// Live tasks kept; past it the stalest is evicted (counted abandoned).
    #[serde(default = "default_max_tasks")]
    pub max_tasks: usize,
    // The loop guard (a later build): parsed so that the error can say so plainly.
    #[serde(default, deserialize_with = "super::present")]
    pub max_llm_calls: Option<Present>,
    #[serde(default, deserialize_with = "super::present")]
    pub max_repeated_tool_calls: Option<Present>,
    #[serde(default, deserialize_with = "super::present")]
    pub loop_action: Option<Present>,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            id_header: default_id_header(),
            status_header: default_status_header(),
            stuck_after: default_stuck_after(),
            max_tasks: default_max_tasks(),
            max_llm_calls: None,
            max_repeated_tool_calls: None,
            loop_action: None,
        }
    }
}

fn default_id_header() -> String {
    "x-agent-task-id".into()
}

fn default_status_header() -> String {
    "x-agent-task-status".into()
}

fn default_stuck_after() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

fn default_max_tasks() -> usize {
    100_000
}

impl TasksConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("max_llm_calls", &self.max_llm_calls),
            ("max_repeated_tool_calls", &self.max_repeated_tool_calls),
            ("loop_action", &self.loop_action),
        ] {
            if value.is_some() {
                return Err((
                    format!("tasks.{key}"),
                    "the loop guard is not supported by this build of sloguard yet; remove it (it would otherwise be silently ignored)".into(),
                ));
            }
        }
        for (key, name) in [
            ("id_header", &self.id_header),
            ("status_header", &self.status_header),
        ] {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("tasks.{key}"),
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            }
        }
        if self.id_header.eq_ignore_ascii_case(&self.status_header) {
            return Err((
                "tasks.status_header".into(),
                "must differ from tasks.id_header".into(),
            ));
        }
        if self.stuck_after.0 < Duration::from_secs(1) {
            return Err(("tasks.stuck_after".into(), "must be at least 1s".into()));
        }
        if self.max_tasks == 0 || self.max_tasks > MAX_TASKS_LIMIT {
            return Err((
                "tasks.max_tasks".into(),
                format!("must be between 1 and {MAX_TASKS_LIMIT}"),
            ));
        }
        Ok(())
    }
}
