//! Task tracking on the `agent` role: each request's task (by `tasks.id_header`, or a task of
//! its own), the agent's verdict on its response (`tasks.status_header`, or the status code),
//! and the counters of the article's task-completion SLI. The table itself is
//! [`crate::sli::tasks::TaskTable`]; this is its glue to requests and metrics.

use http::{HeaderMap, HeaderName};
use metrics::{Counter, Gauge};
use tokio::time::Instant;

use crate::config::TasksConfig;
use crate::sli::liveness::{Liveness, Stuck};
use crate::sli::tasks::{Ended, TaskTable, Verdict};
use crate::sli::StatusClass;
use crate::telemetry::{
    label, Telemetry, AGENT_STUCK, AGENT_TASKS_ABANDONED, AGENT_TASKS_COMPLETED,
    AGENT_TASKS_FAILED, AGENT_TASKS_STARTED, TASKS_EVICTED,
};

/// The task a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    /// `None`: a request without a task id, a task of its own.
    key: Option<u64>,
    /// Its ticket while it waits for the agent's answer.
    waiting: u64,
}

/// One sidecar's tasks: kept across config reloads, like the kill switch.
pub struct Tasks {
    pub table: TaskTable,
    /// Whether the agent is stuck (`GET /agent/healthz`).
    pub liveness: Liveness,
    stuck: Gauge,
    id_header: HeaderName,
    status_header: HeaderName,
    started: Counter,
    completed: Counter,
    failed: Counter,
    abandoned: Counter,
    evicted: Counter,
}

impl Tasks {
    pub fn new(config: &TasksConfig, t: &Telemetry, agent: &str) -> Tasks {
        let counter = |name| t.counter(name, vec![label("agent", agent)]);
        let header = |name: &str, fallback: &'static str| {
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static(fallback))
        };
        Tasks {
            table: TaskTable::new(config.max_tasks, config.stuck_after.0),
            liveness: Liveness::new(config.stuck_after.0),
            stuck: {
                let g = t.gauge(AGENT_STUCK, vec![label("agent", agent)]);
                g.set(0.0);
                g
            },
            id_header: header(&config.id_header, "x-agent-task-id"),
            status_header: header(&config.status_header, "x-agent-task-status"),
            started: counter(AGENT_TASKS_STARTED),
            completed: counter(AGENT_TASKS_COMPLETED),
            failed: counter(AGENT_TASKS_FAILED),
            abandoned: counter(AGENT_TASKS_ABANDONED),
            evicted: counter(TASKS_EVICTED),
        }
    }

    /// A request arrived with these headers.
    pub fn begin(&self, headers: &HeaderMap, now: Instant) -> TaskRef {
        let key = headers
            .get(&self.id_header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .map(|id| self.table.key(id));
        let new = match key {
            Some(k) => {
                let (new, evicted) = self.table.request(k, now);
                if let Some(e) = evicted {
                    self.ended(e, now);
                }
                new
            }
            None => true,
        };
        if new {
            self.started.increment(1);
        }
        TaskRef {
            key,
            waiting: self.liveness.request(now),
        }
    }

    /// The agent's answer to the request began: it is not stuck on it.
    pub fn answered(&self, task: TaskRef) {
        self.liveness.answered(task.waiting);
    }

    /// The agent's verdict in a response head, if it gave one.
    pub fn verdict(&self, headers: &HeaderMap) -> Option<Verdict> {
        headers
            .get(&self.status_header)
            .and_then(|v| Verdict::parse(v.as_bytes()))
    }

    /// The request's response went out: `verdict` from the agent's header, else the status.
    pub fn end(&self, task: TaskRef, status: StatusClass, verdict: Option<Verdict>, now: Instant) {
        self.answered(task);
        let verdict = verdict.unwrap_or(match status {
            StatusClass::Success => Verdict::Completed,
            StatusClass::ServerError => Verdict::Failed,
            _ => Verdict::InProgress,
        });
        let ended = match task.key {
            Some(k) => self.table.response(k, verdict, now),
            // A task of one request: it cannot go on.
            None => Some(match verdict {
                Verdict::Completed => Ended::Completed,
                Verdict::Failed => Ended::Failed,
                Verdict::InProgress => Ended::Abandoned,
            }),
        };
        if let Some(e) = ended {
            self.ended(e, now);
        }
    }

    /// The client left before any response.
    pub fn no_response(&self, task: TaskRef, now: Instant) {
        self.answered(task);
        match task.key {
            Some(k) => self.table.no_response(k, now),
            None => self.ended(Ended::Abandoned, now),
        }
    }

    /// Ends the tasks idle past `stuck_after`, and updates `sloguard_agent_stuck`.
    pub fn sweep(&self, now: Instant) {
        let abandoned = self.table.sweep(now);
        if abandoned > 0 {
            self.abandoned.increment(abandoned);
            self.liveness.abandoned(now);
        }
        self.check(now);
    }

    /// Whether the agent is stuck now (also sets `sloguard_agent_stuck`).
    pub fn check(&self, now: Instant) -> Option<Stuck> {
        let stuck = self.liveness.check(now);
        self.stuck.set(if stuck.is_some() { 1.0 } else { 0.0 });
        stuck
    }

    fn ended(&self, e: Ended, now: Instant) {
        match e {
            Ended::Completed => {
                self.completed.increment(1);
                self.liveness.completed(now);
            }
            Ended::Failed => self.failed.increment(1),
            Ended::Abandoned => {
                self.abandoned.increment(1);
                self.liveness.abandoned(now);
            }
            Ended::Evicted => {
                self.evicted.increment(1);
                self.abandoned.increment(1);
                self.liveness.abandoned(now);
            }
        }
    }
}
