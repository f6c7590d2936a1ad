//! `tasks:`: how requests to the agent group into tasks, when an idle one is abandoned, and the
//! loop guard's limits on a task's LLM calls.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// The most live tasks a table may be set to hold (each takes about 75 bytes).
pub(super) const MAX_TASKS_LIMIT: usize = 10_000_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Loop guard: LLM calls one task may make (0: no limit).
    #[serde(default = "default_max_llm_calls")]
    pub max_llm_calls: u32,
    /// Loop guard: the same tool call (name and arguments) returned this many times in a row
    /// is a loop (0: not checked).
    #[serde(default = "default_max_repeated_tool_calls")]
    pub max_repeated_tool_calls: u32,
    #[serde(default)]
    pub loop_action: LoopAction,
}

/// What the loop guard does about a task found looping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopAction {
    /// Count it (`agent_loops_detected_total`); the calls go on.
    #[default]
    Record,
    /// Count it, and answer the task's next LLM calls 429 `loop_detected`; the task counts as
    /// failed.
    Block,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            id_header: default_id_header(),
            status_header: default_status_header(),
            stuck_after: default_stuck_after(),
            max_tasks: default_max_tasks(),
            max_llm_calls: default_max_llm_calls(),
            max_repeated_tool_calls: default_max_repeated_tool_calls(),
            loop_action: LoopAction::default(),
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

fn default_max_llm_calls() -> u32 {
    50
}

fn default_max_repeated_tool_calls() -> u32 {
    3
}

impl TasksConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
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
        if self.max_repeated_tool_calls == 1 {
            return Err((
                "tasks.max_repeated_tool_calls".into(),
                "must be at least 2 (1 would make every tool call a loop), or 0 to turn the check off".into(),
            ));
        }
        Ok(())
    }
}
