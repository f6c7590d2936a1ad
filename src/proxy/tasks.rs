//! Task tracking on the `agent` role: each request's task (by `tasks.id_header`, or a task of
//! its own), the agent's verdict on its response (`tasks.status_header`, or the status code),
//! and the counters of the article's task-completion SLI. And the loop guard on the `llm` role,
//! keyed by the same header on the agent's LLM calls. The tables themselves are
//! [`crate::sli::tasks::TaskTable`] and [`crate::sli::loops::LoopTable`]; this is their glue
//! to requests and metrics. Both share one key per task id, so that a call the guard refuses
//! fails the agent's task of the same id.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::llm::CallEnd;
use super::safety::KillSwitch;
use crate::config::{LoopAction, TasksConfig};
use crate::inspect::canon::set_of;
use crate::sli::liveness::{AgentsTurn, Liveness, Stuck};
use crate::sli::loops::{LoopKind, LoopLimits, LoopTable};
use crate::sli::tasks::{Change, Ended, TaskTable, Verdict};
use crate::sli::StatusClass;
use crate::telemetry::{
    label, Telemetry, AGENT_LOOPS_DETECTED, AGENT_STUCK, AGENT_TASKS_ABANDONED,
    AGENT_TASKS_COMPLETED, AGENT_TASKS_FAILED, AGENT_TASKS_STARTED, LOOP_TASKS_EVICTED,
    TASKS_EVICTED,
};

/// The task a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    /// `None`: a request without a task id, a task of its own.
    key: Option<u64>,
    /// Its ticket while it waits for the agent's answer (from when it is sent).
    waiting: Option<u64>,
}

/// What the loop guard says about an LLM call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopCall {
    /// The task the call belongs to (`None`: it carries no task id and is not guarded).
    pub key: Option<u64>,
    /// Refuse it (`loop_action: block`, the task found looping): 429 `loop_detected`.
    pub refuse: Option<LoopKind>,
}

/// The request's task (`agent` role), and the agent's verdict on it in the response head.
#[derive(Debug, Default)]
pub(super) struct TaskState {
    task: Option<TaskRef>,
    verdict: Option<Verdict>,
}

impl TaskState {
    /// A request arrived with these headers: its task is looked up (or it is one of its own).
    pub(super) fn begin(&mut self, tasks: Option<&Tasks>, headers: &HeaderMap, now: Instant) {
        self.task = tasks.map(|t| t.begin(headers, now));
    }

    /// An attempt goes to the agent now, its body on its way as `upload` says.
    pub(super) fn sending(
        &mut self,
        tasks: Option<&Tasks>,
        now: Instant,
        upload: Option<Arc<dyn AgentsTurn>>,
    ) {
        if let (Some(tasks), Some(task)) = (tasks, self.task.as_mut()) {
            tasks.sending(task, now, upload);
        }
    }

    /// The agent answered: its verdict is noted, and it is not stuck on this request whatever
    /// the body does.
    pub(super) fn head(&mut self, tasks: Option<&Tasks>, headers: &HeaderMap) {
        if let (Some(tasks), Some(task)) = (tasks, self.task) {
            self.verdict = tasks.verdict(headers);
            tasks.answered(task);
        }
    }

    /// The client left before any response.
    pub(super) fn no_response(&mut self, tasks: Option<&Tasks>, now: Instant) {
        if let (Some(task), Some(tasks)) = (self.task.take(), tasks) {
            tasks.no_response(task, now);
        }
    }

    /// The request is counted with this status: the task ends if the verdict (or the status)
    /// ends it.
    pub(super) fn end(&mut self, tasks: Option<&Tasks>, status: StatusClass, now: Instant) {
        if let (Some(task), Some(tasks)) = (self.task.take(), tasks) {
            tasks.end(task, status, self.verdict, now);
        }
    }
}

/// The task of an LLM call the loop guard counted (`llm` role): told how the call ended.
#[derive(Debug, Default)]
pub(super) struct LoopWatch(Option<u64>);

impl LoopWatch {
    /// The guard counts the call of the task these headers name; under `block`, a call of a task
    /// found looping is to be refused before any work is spent on it: what the guard found.
    pub(super) fn call(
        &mut self,
        guard: Option<&Tasks>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<LoopKind> {
        let call = guard?.llm_call(headers, now);
        self.0 = call.key;
        call.refuse
    }

    /// The call ended (`None`: no provider call was made).
    pub(super) fn end(&mut self, guard: Option<&Tasks>, end: Option<&CallEnd>, now: Instant) {
        if let (Some(key), Some(guard)) = (self.0.take(), guard) {
            guard.llm_ended(key, end, now);
        }
    }
}

/// One sidecar's tasks: kept across config reloads, like the kill switch.
#[derive(Debug)]
pub struct Tasks {
    pub table: TaskTable,
    /// The loop guard's count of each task's LLM calls.
    pub loops: LoopTable,
    loop_action: LoopAction,
    loops_detected: [Counter; LoopKind::COUNT],
    loops_evicted: Counter,
    /// Whether the agent is stuck (`GET /agent/healthz`).
    pub liveness: Liveness,
    stuck: Gauge,
    id_header: HeaderName,
    status_header: HeaderName,
    /// While it holds, the agent gets no traffic: tasks left idle then are not the agent being
    /// stuck.
    kill: Arc<KillSwitch>,
    stuck_after: std::time::Duration,
    started: Counter,
    completed: Counter,
    failed: Counter,
    abandoned: Counter,
    evicted: Counter,
}

impl Tasks {
    pub fn new(config: &TasksConfig, t: &Telemetry, agent: &str, kill: Arc<KillSwitch>) -> Tasks {
        let counter = |name| t.counter(name, vec![label("agent", agent)]);
        let header = |name: &str, fallback: &'static str| {
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static(fallback))
        };
        Tasks {
            table: TaskTable::new(config.max_tasks, config.stuck_after.0),
            loops: LoopTable::new(
                config.max_tasks,
                LoopLimits {
                    max_llm_calls: config.max_llm_calls,
                    max_repeated_tool_calls: config.max_repeated_tool_calls,
                },
                config.stuck_after.0,
            ),
            loop_action: config.loop_action,
            loops_detected: LoopKind::ALL.map(|kind| {
                t.counter(
                    AGENT_LOOPS_DETECTED,
                    vec![label("agent", agent), label("kind", kind.as_str())],
                )
            }),
            loops_evicted: counter(LOOP_TASKS_EVICTED),
            liveness: Liveness::new(config.stuck_after.0),
            stuck: {
                let g = t.gauge(AGENT_STUCK, vec![label("agent", agent)]);
                g.set(0.0);
                g
            },
            id_header: header(&config.id_header, "x-agent-task-id"),
            status_header: header(&config.status_header, "x-agent-task-status"),
            kill,
            stuck_after: config.stuck_after.0,
            started: counter(AGENT_TASKS_STARTED),
            completed: counter(AGENT_TASKS_COMPLETED),
            failed: counter(AGENT_TASKS_FAILED),
            abandoned: counter(AGENT_TASKS_ABANDONED),
            evicted: counter(TASKS_EVICTED),
        }
    }

    /// The key of the task id in these headers, if they carry one.
    fn key(&self, headers: &HeaderMap) -> Option<u64> {
        headers
            .get(&self.id_header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .map(|id| self.table.key(id))
    }

    /// A request arrived with these headers.
    pub fn begin(&self, headers: &HeaderMap, now: Instant) -> TaskRef {
        let key = self.key(headers);
        if let Some(started) = key.and_then(|k| self.table.request(k, now)) {
            // The table's doing, not the agent's: counted, never a sign it is stuck.
            self.evicted.increment(1);
            if started {
                self.abandoned.increment(1);
            }
        }
        TaskRef { key, waiting: None }
    }

    /// The request goes to the agent now (an attempt, again after a fallback), its body, if it
    /// has one, on its way as `upload` says: from when the upload is the agent's turn, the
    /// request waits on the agent.
    pub fn sending(&self, task: &mut TaskRef, now: Instant, upload: Option<Arc<dyn AgentsTurn>>) {
        self.answered(*task);
        task.waiting = Some(self.liveness.request(now, upload));
    }

    /// The agent's answer to the request began: it is not stuck on it.
    pub fn answered(&self, task: TaskRef) {
        if let Some(w) = task.waiting {
            self.liveness.answered(w);
        }
    }

    /// The agent's verdict in a response head, if it gave one.
    pub fn verdict(&self, headers: &HeaderMap) -> Option<Verdict> {
        headers
            .get(&self.status_header)
            .and_then(|v| Verdict::parse(v.as_bytes()))
    }

    /// The request's response went out: `verdict` from the agent's header, else the status (a
    /// 2xx completes, a 5xx fails, others say nothing).
    pub fn end(&self, task: TaskRef, status: StatusClass, verdict: Option<Verdict>, now: Instant) {
        self.answered(task);
        let verdict = verdict.or(Verdict::of_status(status));
        let change = match task.key {
            Some(k) => {
                let change = self.table.response(k, verdict, now);
                if change.ended.is_some() {
                    // Over: its LLM calls are not counted on.
                    self.loops.forget(k);
                }
                change
            }
            // A task of one request: it cannot go on, so it starts and ends with its answer —
            // when the agent gave one.
            None => Change {
                started: verdict.is_some(),
                ended: verdict.map(|v| match v {
                    Verdict::Completed => Ended::Completed,
                    Verdict::Failed => Ended::Failed,
                    Verdict::InProgress => Ended::Abandoned,
                }),
            },
        };
        if change.started {
            self.started.increment(1);
        }
        if let Some(e) = change.ended {
            self.ended(e, now);
        }
    }

    /// The client left before any response, or the exchange failed before one.
    pub fn no_response(&self, task: TaskRef, now: Instant) {
        self.answered(task);
        if let Some(k) = task.key {
            self.table.no_response(k, now);
        }
    }

    /// Ends the tasks idle past `stuck_after` (and forgets the loop guard's), and updates
    /// `sloguard_agent_stuck`.
    pub fn sweep(&self, now: Instant) {
        let swept = self.table.sweep(now);
        if swept.abandoned > 0 {
            self.abandoned.increment(swept.abandoned);
            self.abandoned_while_live(now);
        }
        self.failed.increment(swept.failed);
        self.loops.sweep(now);
        self.check(now);
    }

    /// The loop guard, asked about an LLM call (on an `llm` listener) with these headers, about
    /// to be made. A call the guard refuses fails the agent's task of the same id.
    pub fn llm_call(&self, headers: &HeaderMap, now: Instant) -> LoopCall {
        let limits = self.loops.limits();
        let watched = limits.max_llm_calls > 0 || limits.max_repeated_tool_calls > 0;
        let Some(key) = self.key(headers).filter(|_| watched) else {
            return LoopCall {
                key: None,
                refuse: None,
            };
        };
        let block = self.loop_action == LoopAction::Block;
        let check = self.loops.call(key, block, now);
        if check.evicted {
            self.loops_evicted.increment(1);
        }
        if check.crossed {
            self.loops_detected[LoopKind::MaxLlmCalls as usize].increment(1);
        }
        let refuse = check.looping.filter(|_| check.refused);
        if refuse.is_some() && self.table.looped(key, now) == Some(true) {
            // The guard cut a task the agent had taken on: it will end failed.
            self.started.increment(1);
        }
        LoopCall {
            // A refused call is not counted, so nothing is to be told when it ends.
            key: Some(key).filter(|_| refuse.is_none()),
            refuse,
        }
    }

    /// Whether the loop guard counts repeated tool calls (`max_repeated_tool_calls`).
    pub fn counts_tool_calls(&self) -> bool {
        self.loops.limits().max_repeated_tool_calls > 0
    }

    /// An MCP request with these headers made tool calls (their fingerprint as a set, `None`:
    /// one cannot be known): the loop guard counts the same calls in a row
    /// (`max_repeated_tool_calls`). A task found looping so has its next LLM calls refused under
    /// `loop_action: block`.
    pub fn tool_calls(&self, headers: &HeaderMap, calls: Option<u64>, now: Instant) {
        if !self.counts_tool_calls() {
            return;
        }
        let Some(key) = self.key(headers) else {
            return;
        };
        let (detected, evicted) = self.loops.tool_called(key, calls, now);
        if evicted {
            self.loops_evicted.increment(1);
        }
        if detected {
            self.loops_detected[LoopKind::RepeatedToolCall as usize].increment(1);
        }
    }

    /// An LLM call of task `key` that the guard counted ended (`None`: no provider call was
    /// made, the cache answered): a call without a successful answer is taken back; a response
    /// read whole tells the guard its tool calls.
    pub fn llm_ended(&self, key: u64, end: Option<&CallEnd>, now: Instant) {
        match end {
            Some(e) if e.answered => {
                if let Some(calls) = &e.tool_calls {
                    let set = set_of(calls.iter().map(|c| c.fingerprint));
                    if self.loops.returned(key, set, now) {
                        self.loops_detected[LoopKind::RepeatedToolCall as usize].increment(1);
                    }
                }
            }
            _ => self.loops.unanswered(key, now),
        }
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
                self.abandoned_while_live(now);
            }
        }
    }

    /// Tasks were abandoned: a sign the agent is stuck — unless the kill switch holds, or was
    /// lifted within the last `stuck_after` (and a sweep's second): the tasks' next requests
    /// went to the human queue, not to the agent, and are swept up to `stuck_after` later.
    fn abandoned_while_live(&self, now: Instant) {
        let lately = self.kill.enabled_at().is_some_and(|at| {
            now.saturating_duration_since(at)
                <= self.stuck_after + std::time::Duration::from_secs(1)
        });
        if !self.kill.is_disabled() && !lately {
            self.liveness.abandoned(now);
        }
    }
}
