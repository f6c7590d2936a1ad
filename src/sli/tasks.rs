//! The task table of the `agent` role: which tasks are live, so that each is counted started
//! once and ended once — completed, failed, or abandoned (idle `in_progress` past `stuck_after`,
//! or evicted when the table is full).
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

    /// Without the header: a 2xx ends the task completed, a 5xx failed, anything else leaves
    /// it in progress (a 4xx is the client's to retry).
    pub fn of_status(status: http::StatusCode) -> Verdict {
        if status.is_success() {
            Verdict::Completed
        } else if status.is_server_error() {
            Verdict::Failed
        } else {
            Verdict::InProgress
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
    /// In progress and idle past `stuck_after`.
    Abandoned,
    /// Pushed out of a full table (also counted abandoned).
    Evicted,
}

/// A live task: 24 bytes besides its key.
#[derive(Debug, Clone, Copy)]
struct Task {
    /// Its last request or response.
    last: Instant,
    /// Requests of it still waiting for their response.
    outstanding: u32,
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

    /// A request of task `key` arrived. Returns whether the task is new (counted started), and
    /// the task a full table pushed out to make room (counted abandoned).
    pub fn request(&self, key: u64, now: Instant) -> (bool, Option<Ended>) {
        let new = || Task {
            last: now,
            outstanding: 0,
            looped: false,
        };
        let (new, evicted) = self.table.upsert(key, new, |task, new| {
            task.last = now;
            task.outstanding = task.outstanding.saturating_add(1);
            new
        });
        (new, evicted.map(|_| Ended::Evicted))
    }

    /// The response to a request of task `key` went out with `verdict`. Returns how the task
    /// ended, if it did. A response for a task not in the table (evicted meanwhile) ends
    /// nothing: it was counted when it was pushed out. A task the loop guard cut ends failed.
    pub fn response(&self, key: u64, verdict: Verdict, now: Instant) -> Option<Ended> {
        self.table
            .update(key, |task| {
                task.last = now;
                task.outstanding = task.outstanding.saturating_sub(1);
                let ended = match verdict {
                    _ if task.looped => Some(Ended::Failed),
                    Verdict::Completed => Some(Ended::Completed),
                    Verdict::Failed => Some(Ended::Failed),
                    Verdict::InProgress => None,
                };
                (ended, ended.is_some())
            })
            .flatten()
    }

    /// The request of task `key` got no response (the client left, or the exchange failed
    /// before one): the task waits for its next request, or is abandoned.
    pub fn no_response(&self, key: u64, now: Instant) {
        self.table.update(key, |task| {
            task.last = now;
            task.outstanding = task.outstanding.saturating_sub(1);
            ((), false)
        });
    }

    /// The loop guard refused an LLM call of task `key` (its activity, now): the task ends
    /// failed (at its next response, or when left idle). Returns whether the task is live here.
    pub fn looped(&self, key: u64, now: Instant) -> bool {
        self.table
            .update(key, |task| {
                task.last = now;
                task.looped = true;
                ((), false)
            })
            .is_some()
    }

    /// Ends every task with nothing outstanding that has been idle longer than `stuck_after`:
    /// abandoned, or failed if the loop guard cut it. Tasks with a request still outstanding
    /// are the stuck-request check's business, not abandoned.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        self.table.sweep(
            now,
            self.stuck_after,
            |task| match task.outstanding {
                0 => Idle::Remove,
                _ => Idle::Keep,
            },
            |task| match task.looped {
                true => swept.failed += 1,
                false => swept.abandoned += 1,
            },
        );
        swept
    }

    /// Live tasks.
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

    #[tokio::test(start_paused = true)]
    async fn a_task_of_several_requests_starts_once_and_ends_once() {
        let t = TaskTable::new(100, STUCK);
        let k = t.key(b"task-1");
        let now = Instant::now();
        assert_eq!(t.request(k, now), (true, None));
        assert_eq!(t.response(k, Verdict::InProgress, now), None);
        assert_eq!(t.request(k, now), (false, None));
        assert_eq!(
            t.response(k, Verdict::Completed, now),
            Some(Ended::Completed)
        );
        assert!(t.is_empty());
        // The id is new again: a new task.
        assert_eq!(t.request(k, now), (true, None));
        assert_eq!(t.response(k, Verdict::Failed, now), Some(Ended::Failed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_the_loop_guard_cut_ends_failed_whatever_the_agent_says() {
        let t = TaskTable::new(100, STUCK);
        let (a, b) = (t.key(b"a"), t.key(b"b"));
        let now = Instant::now();
        assert!(!t.looped(a, now), "not live yet");
        t.request(a, now);
        assert!(t.looped(a, now));
        assert_eq!(t.response(a, Verdict::Completed, now), Some(Ended::Failed));
        // Left idle after the cut: failed too, not abandoned.
        t.request(b, now);
        t.response(b, Verdict::InProgress, now);
        t.looped(b, now);
        tokio::time::advance(STUCK + Duration::from_secs(1)).await;
        assert_eq!(
            t.sweep(Instant::now()),
            Swept {
                abandoned: 0,
                failed: 1
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
        t.response(a, Verdict::InProgress, start);
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
        t.response(b, Verdict::InProgress, Instant::now());
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
        assert_eq!(t.request(key(1), start), (true, None));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.request(key(2), Instant::now()), (true, None));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Task 1 is the stalest, in another shard than task 3: it goes.
        assert_eq!(
            t.request(key(3), Instant::now()),
            (true, Some(Ended::Evicted))
        );
        assert_eq!(t.len(), 2);
        let now = Instant::now();
        // The evicted task's late response ends nothing.
        assert_eq!(t.response(key(1), Verdict::Completed, now), None);
        assert_eq!(
            t.response(key(2), Verdict::Completed, now),
            Some(Ended::Completed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_holds_across_shards() {
        let t = TaskTable::new(1000, STUCK);
        let now = Instant::now();
        let mut evicted = 0;
        for i in 0..5000u32 {
            if t.request(t.key(&i.to_le_bytes()), now).1.is_some() {
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
        assert_eq!(Verdict::of_status(http::StatusCode::OK), Verdict::Completed);
        assert_eq!(
            Verdict::of_status(http::StatusCode::BAD_GATEWAY),
            Verdict::Failed
        );
        assert_eq!(
            Verdict::of_status(http::StatusCode::TOO_MANY_REQUESTS),
            Verdict::InProgress
        );
    }

    #[test]
    fn memory_per_live_task_is_small_and_fixed() {
        // Key, value and the map's two links and bucket: under 100 bytes a task.
        assert!(std::mem::size_of::<(u64, Task)>() <= 32);
    }
}
