//! The loop guard of the `llm` role: an agent caught in a reasoning loop makes LLM call after
//! LLM call for one task, or gets the same tool call back again and again. Keyed by the task id
//! the agent forwards on its LLM calls (`tasks.id_header`), it counts each task's calls and the
//! run of identical tool calls its responses returned (name and canonical arguments,
//! [`crate::inspect::canon`]), and says when a task crosses `max_llm_calls` or
//! `max_repeated_tool_calls`.
//!
//! A plain type fed events with their time (`tokio::time::Instant`, so tests run on paused
//! time); the data plane asks it before each call and tells it each response's tool calls. A
//! task is forgotten once idle for `forget_after` (the sidecar uses `tasks.stuck_after`), and
//! the table is bounded like the task table: full, it forgets the stalest task.

use std::time::Duration;

use tokio::time::Instant;

use super::table::{Entry, Idle, Table};

/// Why a task counts as looping (`agent_loops_detected_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// More than `max_llm_calls` LLM calls in one task.
    MaxLlmCalls = 0,
    /// The same tool call returned `max_repeated_tool_calls` times in a row.
    RepeatedToolCall = 1,
}

impl LoopKind {
    pub const COUNT: usize = 2;
    pub const ALL: [LoopKind; LoopKind::COUNT] =
        [LoopKind::MaxLlmCalls, LoopKind::RepeatedToolCall];

    pub fn as_str(self) -> &'static str {
        match self {
            LoopKind::MaxLlmCalls => "max_llm_calls",
            LoopKind::RepeatedToolCall => "repeated_tool_call",
        }
    }
}

/// The guard's limits; 0 turns a check off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopLimits {
    pub max_llm_calls: u32,
    pub max_repeated_tool_calls: u32,
}

/// One task's calls: 40 bytes besides its key.
#[derive(Debug, Clone, Copy)]
struct TaskLoop {
    last: Instant,
    calls: u32,
    /// Identical tool calls in a row so far, the last of them `previous` (0: no run).
    run: u32,
    previous: u64,
    /// A loop was detected (the first kind found): under `loop_action: block` its calls are
    /// refused from now on.
    looping: Option<LoopKind>,
}

impl Entry for TaskLoop {
    fn last(&self) -> Instant {
        self.last
    }
}

/// What the guard says about an LLM call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCheck {
    /// This call crossed `max_llm_calls` (counted once per task).
    pub crossed: bool,
    /// The task was found looping, by this call or before it (the first kind found).
    pub looping: Option<LoopKind>,
    /// A full table forgot another task to make room for this one.
    pub evicted: bool,
}

pub struct LoopTable {
    table: Table<TaskLoop>,
    limits: LoopLimits,
    forget_after: Duration,
}

impl LoopTable {
    pub fn new(capacity: usize, limits: LoopLimits, forget_after: Duration) -> LoopTable {
        LoopTable {
            table: Table::new(capacity),
            limits,
            forget_after,
        }
    }

    pub fn limits(&self) -> LoopLimits {
        self.limits
    }

    /// An LLM call of task `key` is about to be made.
    pub fn call(&self, key: u64, now: Instant) -> CallCheck {
        let max = self.limits.max_llm_calls;
        let new = || TaskLoop {
            last: now,
            calls: 0,
            run: 0,
            previous: 0,
            looping: None,
        };
        let (check, evicted) = self.table.upsert(key, new, |t, _| {
            t.last = now;
            t.calls = t.calls.saturating_add(1);
            let crossed = max > 0 && t.calls == max.saturating_add(1);
            if crossed {
                t.looping.get_or_insert(LoopKind::MaxLlmCalls);
            }
            CallCheck {
                crossed,
                looping: t.looping,
                evicted: false,
            }
        });
        CallCheck {
            evicted: evicted.is_some(),
            ..check
        }
    }

    /// A successful response to an LLM call of task `key` returned these tool calls, in order
    /// (each its fingerprint; `None` for a call that cannot be known), or none — a response
    /// without a tool call breaks the run. Returns how many runs reached
    /// `max_repeated_tool_calls` (each counted once, when it does).
    pub fn returned(
        &self,
        key: u64,
        calls: impl IntoIterator<Item = Option<u64>>,
        now: Instant,
    ) -> u32 {
        let max = self.limits.max_repeated_tool_calls;
        self.table
            .update(key, |t| {
                t.last = now;
                let (mut detected, mut any) = (0, false);
                for call in calls {
                    any = true;
                    match call {
                        Some(f) if t.run > 0 && f == t.previous => t.run = t.run.saturating_add(1),
                        Some(f) => {
                            t.previous = f;
                            t.run = 1;
                        }
                        None => t.run = 0,
                    }
                    if max > 0 && t.run == max {
                        detected += 1;
                        t.looping.get_or_insert(LoopKind::RepeatedToolCall);
                    }
                }
                if !any {
                    t.run = 0;
                }
                (detected, false)
            })
            .unwrap_or(0)
    }

    /// The task ended (the agent's verdict): its calls are not counted on.
    pub fn forget(&self, key: u64) {
        self.table.remove(key);
    }

    /// Forgets the tasks idle longer than `forget_after`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut n = 0;
        self.table
            .sweep(now, self.forget_after, |_| Idle::Remove, |_| n += 1);
        n
    }

    /// Tasks now.
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

    const FORGET: Duration = Duration::from_secs(300);

    fn table(max_llm_calls: u32, max_repeated_tool_calls: u32) -> LoopTable {
        let limits = LoopLimits {
            max_llm_calls,
            max_repeated_tool_calls,
        };
        LoopTable::new(100, limits, FORGET)
    }

    #[tokio::test(start_paused = true)]
    async fn more_calls_than_max_llm_calls_is_a_loop_counted_once() {
        let t = table(3, 0);
        let now = Instant::now();
        for _ in 0..3 {
            let c = t.call(1, now);
            assert!(!c.crossed && c.looping.is_none());
        }
        let fourth = t.call(1, now);
        assert!(fourth.crossed);
        assert_eq!(fourth.looping, Some(LoopKind::MaxLlmCalls));
        let fifth = t.call(1, now);
        assert!(!fifth.crossed, "counted once");
        assert_eq!(fifth.looping, Some(LoopKind::MaxLlmCalls), "still looping");
        // Another task has its own count.
        assert_eq!(t.call(2, now).looping, None);
        // Off: never a loop.
        let off = table(0, 0);
        for _ in 0..1000 {
            assert_eq!(off.call(1, now).looping, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_tool_call_in_a_row_is_a_loop() {
        let t = table(0, 3);
        let now = Instant::now();
        t.call(1, now);
        assert_eq!(t.returned(1, [Some(7)], now), 0);
        assert_eq!(t.returned(1, [Some(7)], now), 0);
        assert_eq!(t.returned(1, [Some(7)], now), 1, "the third in a row");
        assert_eq!(t.call(1, now).looping, Some(LoopKind::RepeatedToolCall));
        assert_eq!(
            t.returned(1, [Some(7)], now),
            0,
            "the same run, counted once"
        );

        // Broken runs are no loop: another call, an unknowable one, or a response without one.
        for breaker in [vec![Some(8)], vec![None], vec![]] {
            let t = table(0, 3);
            t.call(1, now);
            t.returned(1, [Some(7), Some(7)], now);
            assert_eq!(t.returned(1, breaker.clone(), now), 0);
            assert_eq!(t.returned(1, [Some(7)], now), 0, "after {breaker:?}");
            assert_eq!(t.call(1, now).looping, None);
        }
        // Calls in one response count in order.
        let t = table(0, 3);
        t.call(1, now);
        assert_eq!(t.returned(1, [Some(5), Some(5), Some(5), Some(6)], now), 1);
        // A task the guard does not know (never called, or forgotten) is not judged.
        assert_eq!(t.returned(9, [Some(5), Some(5), Some(5)], now), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_are_forgotten_and_the_table_is_bounded() {
        let limits = LoopLimits {
            max_llm_calls: 2,
            max_repeated_tool_calls: 0,
        };
        let t = LoopTable::new(2, limits, FORGET);
        let start = Instant::now();
        t.call(1 << 59, start);
        t.call(1 << 59, start);
        tokio::time::advance(FORGET).await;
        t.call(2 << 59, Instant::now());
        assert_eq!(
            t.sweep(Instant::now()),
            0,
            "not idle longer than forget_after"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.sweep(Instant::now()), 1);
        // Forgotten: its count starts again.
        let again = t.call(1 << 59, Instant::now());
        assert!(!again.crossed && !again.evicted);
        let c = t.call(3 << 59, Instant::now());
        assert!(c.evicted, "the third task of a table of two");
        assert_eq!(t.len(), 2);
        t.forget(3 << 59);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn memory_per_task_is_small_and_fixed() {
        assert!(std::mem::size_of::<(u64, TaskLoop)>() <= 48);
    }
}
