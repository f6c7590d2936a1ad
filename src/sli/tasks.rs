//! The task table of the `agent` role: which tasks are live, so that each is counted started
//! once and ended once — completed, failed, or abandoned (idle `in_progress` past `stuck_after`,
//! or evicted when the table is full).
//!
//! A task starts when the agent takes it on: its first verdict on one of the task's requests
//! (`in_progress`, `completed` or `failed`, from its status header or a 2xx or 5xx). A request
//! the agent answers without one (a 4xx: the client's mistake) or that its client leaves before
//! any answer starts nothing, so that no client can make tasks out of its own errors — nor
//! abandoned ones, which tell the liveness probe the agent may be stuck.
//!
//! A plain type fed events with their time (`tokio::time::Instant`, so tests run on paused
//! time); the data plane feeds it, telemetry counts what it returns. Task ids from outside are
//! never kept: a task is its id's 64-bit hash (seeded per process), so memory per task is fixed
//! whatever the id's length, and an id is never a label. The table is a [`Table`]: bounded,
//! sharded, kept in order of last activity.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Entry, Idle, Table};
use super::StatusClass;

/// What the agent said about its task on a response (`tasks.status_header`), or what its status
/// code says without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Completed,
    Failed,
    InProgress,
}

impl Verdict {
    /// The header's value (`completed`, `failed`, `in_progress`, any case); `None` for others.
    pub fn parse(value: &[u8]) -> Option<Verdict> {
        let v = value.trim_ascii();
        if v.eq_ignore_ascii_case(b"completed") {
            Some(Verdict::Completed)
        } else if v.eq_ignore_ascii_case(b"failed") {
            Some(Verdict::Failed)
        } else if v.eq_ignore_ascii_case(b"in_progress") {
            Some(Verdict::InProgress)
        } else {
            None
        }
    }

    /// Without the header: a 2xx ends the task completed, a 5xx failed; anything else (a 4xx,
    /// a 429, a redirect) says nothing about it — the client's to retry.
    pub fn of_status(status: StatusClass) -> Option<Verdict> {
        match status {
            StatusClass::Success => Some(Verdict::Completed),
            StatusClass::ServerError => Some(Verdict::Failed),
            _ => None,
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
    /// Marked in progress by the agent, then idle past `stuck_after` (or, without a task id,
    /// answered `in_progress`: it cannot go on).
    Abandoned,
}

/// What a response (or the loop guard) did to a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// The task started now: the agent took it on (its first verdict).
    pub started: bool,
    pub ended: Option<Ended>,
}

/// A live task: 24 bytes besides its key.
#[derive(Debug, Clone, Copy)]
struct Task {
    /// Its last request or response.
    last: Instant,
    /// Requests of it still waiting for their response.
    outstanding: u32,
    /// The agent took it on: it said `in_progress` (or the loop guard cut it). Until then the
    /// entry is only the id of requests in flight — none answered with a verdict — and goes with
    /// them: a request refused (a 4xx) or left by its client starts no task.
    started: bool,
    /// The loop guard refused one of its LLM calls: it ends failed, whatever the agent says.
    looped: bool,
}

impl Entry for Task {
    fn last(&self) -> Instant {
        self.last
    }
}

/// Tasks the idle sweep ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub abandoned: u64,
    /// Cut by the loop guard, then left idle.
    pub failed: u64,
}

/// The live tasks.
#[derive(Debug)]
pub struct TaskTable {
    table: Table<Task>,
    stuck_after: Duration,
    hasher: std::collections::hash_map::RandomState,
}

impl TaskTable {
    /// A table of at most `capacity` live tasks (threads inserting at the same moment can take
    /// it a task or two past, until tasks end).
    pub fn new(capacity: usize, stuck_after: Duration) -> TaskTable {
        TaskTable {
            table: Table::new(capacity),
            stuck_after,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The key of a task id.
    pub fn key(&self, id: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(id);
        h.finish()
    }

    /// A request of task `key` arrived. Returns the task a full table pushed out to make room:
    /// `Some(true)` for a started task (counted abandoned), `Some(false)` for an entry the agent
    /// had not taken on yet.
    pub fn request(&self, key: u64, now: Instant) -> Option<bool> {
        let new = || Task {
            last: now,
            outstanding: 0,
            started: false,
            looped: false,
        };
        let ((), evicted) = self.table.upsert(key, new, |task, _| {
            task.last = now;
            task.outstanding = task.outstanding.saturating_add(1);
        });
        evicted.map(|t| t.started)
    }

    /// The response to a request of task `key` went out with `verdict` (`None`: the agent said
    /// nothing of the task). A task ends completed or failed; `in_progress` starts it (if it had
    /// not started); no verdict leaves a started task as it is, and drops an entry the agent never
    /// took on once nothing of it is in flight. A response for a task not in the table (evicted
    /// meanwhile) changes nothing: it was counted when it was pushed out. A task the loop guard
    /// cut ends failed.
    pub fn response(&self, key: u64, verdict: Option<Verdict>, now: Instant) -> Change {
        self.table
            .update(key, |task| {
                task.last = now;
                task.outstanding = task.outstanding.saturating_sub(1);
                let verdict = if task.looped {
                    Some(Verdict::Failed)
                } else {
                    verdict
                };
                let mut change = Change {
                    started: verdict.is_some() && !task.started,
                    ended: None,
                };
                match verdict {
                    Some(Verdict::Completed) => change.ended = Some(Ended::Completed),
                    Some(Verdict::Failed) => change.ended = Some(Ended::Failed),
                    Some(Verdict::InProgress) => task.started = true,
                    None => {}
                }
                let drop = !task.started && task.outstanding == 0;
                (change, change.ended.is_some() || drop)
            })
            .unwrap_or_default()
    }

    /// The request of task `key` got no response (the client left, or the exchange failed
    /// before one): a started task waits for its next request, or is abandoned; an entry the agent
    /// never took on goes once nothing of it is in flight.
    pub fn no_response(&self, key: u64, now: Instant) {
        self.table.update(key, |task| {
            task.last = now;
            task.outstanding = task.outstanding.saturating_sub(1);
            ((), !task.started && task.outstanding == 0)
        });
    }

    /// The loop guard refused an LLM call of task `key` (its activity, now): the task ends
    /// failed (at its next response, or when left idle). Returns whether the task is live here,
    /// and whether it started now (a cut task is one the agent took on).
    pub fn looped(&self, key: u64, now: Instant) -> Option<bool> {
        self.table.update(key, |task| {
            task.last = now;
            task.looped = true;
            let started = !task.started;
            task.started = true;
            (started, false)
        })
    }

    /// Ends every task with nothing outstanding that has been idle longer than `stuck_after`:
    /// abandoned, or failed if the loop guard cut it; an entry the agent never took on just goes.
    /// Tasks with a request still outstanding are the stuck-request check's business, not
    /// abandoned.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        self.table.sweep(
            now,
            self.stuck_after,
            |task| match task.outstanding {
                0 => Idle::Remove,
                _ => Idle::Keep,
            },
            |task| match (task.started, task.looped) {
                (_, true) => swept.failed += 1,
                (true, false) => swept.abandoned += 1,
                (false, false) => {}
            },
        );
        swept
    }

    /// Live tasks (and entries of requests in flight not yet taken on).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUCK: Duration = Duration::from_secs(300);
    const IN_PROGRESS: Option<Verdict> = Some(Verdict::InProgress);

    fn started() -> Change {
        Change {
            started: true,
            ended: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_of_several_requests_starts_once_and_ends_once() {
        let t = TaskTable::new(100, STUCK);
        let k = t.key(b"task-1");
        let now = Instant::now();
        assert_eq!(t.request(k, now), None);
        assert_eq!(t.response(k, IN_PROGRESS, now), started());
        t.request(k, now);
        assert_eq!(t.response(k, IN_PROGRESS, now), Change::default());
        t.request(k, now);
        assert_eq!(
            t.response(k, Some(Verdict::Completed), now),
            Change {
                started: false,
                ended: Some(Ended::Completed)
            }
        );
        assert!(t.is_empty());
        // The id is new again: a new task, started and ended by one answer.
        t.request(k, now);
        assert_eq!(
            t.response(k, Some(Verdict::Failed), now),
            Change {
                started: true,
                ended: Some(Ended::Failed)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_without_a_verdict_start_no_task() {
        let t = TaskTable::new(100, STUCK);
        let k = t.key(b"x");
        let now = Instant::now();
        // Refused (a 4xx) and left by the client: no task, no entry left behind.
        t.request(k, now);
        assert_eq!(t.response(k, None, now), Change::default());
        t.request(k, now);
        t.no_response(k, now);
        assert!(t.is_empty());
        // Two in flight, one refused: the entry waits for the other's answer.
        t.request(k, now);
        t.request(k, now);
        assert_eq!(t.response(k, None, now), Change::default());
        assert_eq!(t.len(), 1);
        assert_eq!(t.response(k, IN_PROGRESS, now), started());
        // Started: a later 4xx leaves it in progress, and idle it is abandoned.
        t.request(k, now);
        assert_eq!(t.response(k, None, now), Change::default());
        assert_eq!(t.len(), 1);
        tokio::time::advance(STUCK + Duration::from_secs(1)).await;
        assert_eq!(t.sweep(Instant::now()).abandoned, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_the_loop_guard_cut_ends_failed_whatever_the_agent_says() {
        let t = TaskTable::new(100, STUCK);
        let (a, b, c) = (t.key(b"a"), t.key(b"b"), t.key(b"c"));
        let now = Instant::now();
        assert_eq!(t.looped(a, now), None, "not live yet");
        t.request(a, now);
        assert_eq!(t.looped(a, now), Some(true), "a cut task starts");
        assert_eq!(
            t.response(a, Some(Verdict::Completed), now),
            Change {
                started: false,
                ended: Some(Ended::Failed)
            }
        );
        // Left idle after the cut: failed too, not abandoned.
        t.request(b, now);
        t.response(b, IN_PROGRESS, now);
        assert_eq!(t.looped(b, now), Some(false));
        // Cut while its first request is in flight, then left by the client: failed.
        t.request(c, now);
        t.looped(c, now);
        t.no_response(c, now);
        tokio::time::advance(STUCK + Duration::from_secs(1)).await;
        assert_eq!(
            t.sweep(Instant::now()),
            Swept {
                abandoned: 0,
                failed: 2
            }
        );
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_in_progress_tasks_are_abandoned_after_stuck_after() {
        let t = TaskTable::new(100, STUCK);
        let (a, b) = (t.key(b"a"), t.key(b"b"));
        let start = Instant::now();
        t.request(a, start);
        t.response(a, IN_PROGRESS, start);
        t.request(b, start);
        t.response(b, IN_PROGRESS, start);
        t.request(b, start);
        // `b` still waits for its response: not abandoned, however long.
        tokio::time::advance(STUCK).await;
        assert_eq!(
            t.sweep(Instant::now()),
            Swept::default(),
            "not idle longer than stuck_after yet"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.sweep(Instant::now()).abandoned, 1);
        assert_eq!(t.len(), 1);
        // Activity keeps a task alive.
        t.response(b, IN_PROGRESS, Instant::now());
        tokio::time::advance(STUCK / 2).await;
        assert_eq!(t.sweep(Instant::now()).abandoned, 0);
        tokio::time::advance(STUCK).await;
        assert_eq!(t.sweep(Instant::now()).abandoned, 1);
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_evicts_its_stalest_task() {
        let t = TaskTable::new(2, STUCK);
        // Keys in different shards (the top bits choose it).
        let key = |i: u64| i << 59;
        let start = Instant::now();
        assert_eq!(t.request(key(1), start), None);
        t.response(key(1), IN_PROGRESS, start);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.request(key(2), Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Task 1 is the stalest, in another shard than task 3: it goes, a started task.
        assert_eq!(t.request(key(3), Instant::now()), Some(true));
        // Then 2, still in flight and not taken on.
        assert_eq!(t.request(key(4), Instant::now()), Some(false));
        assert_eq!(t.len(), 2);
        let now = Instant::now();
        // The evicted task's late response changes nothing.
        assert_eq!(
            t.response(key(1), Some(Verdict::Completed), now),
            Change::default()
        );
        assert_eq!(
            t.response(key(3), Some(Verdict::Completed), now).ended,
            Some(Ended::Completed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_holds_across_shards() {
        let t = TaskTable::new(1000, STUCK);
        let now = Instant::now();
        let mut evicted = 0;
        for i in 0..5000u32 {
            if t.request(t.key(&i.to_le_bytes()), now).is_some() {
                evicted += 1;
            }
        }
        assert_eq!(evicted, 4000);
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn verdicts_from_header_and_status() {
        assert_eq!(Verdict::parse(b" Completed "), Some(Verdict::Completed));
        assert_eq!(Verdict::parse(b"in_progress"), Some(Verdict::InProgress));
        assert_eq!(Verdict::parse(b"done"), None);
        let of =
            |code| Verdict::of_status(StatusClass::of(http::StatusCode::from_u16(code).unwrap()));
        assert_eq!(of(200), Some(Verdict::Completed));
        assert_eq!(of(502), Some(Verdict::Failed));
        assert_eq!(of(429), None);
        assert_eq!(of(404), None);
    }

    #[test]
    fn memory_per_live_task_is_small_and_fixed() {
        // Key, value and the map's two links and bucket: under 100 bytes a task.
        assert!(std::mem::size_of::<(u64, Task)>() <= 32);
    }
}
