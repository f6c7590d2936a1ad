//! The loop guard of the `llm` role: an agent caught in a reasoning loop makes LLM call after
//! LLM call for one task, or gets the same tool call back again and again. Keyed by the task id
//! the agent forwards on its LLM calls (`tasks.id_header`), it counts each task's calls and the
//! run of identical tool calls its responses returned (name and canonical arguments,
//! [`crate::inspect::canon`]), and says when a task crosses `max_llm_calls` or
//! `max_repeated_tool_calls`.
//!
//! A call counts when it is made (so that the call past the limit can be refused before it
//! goes out) and is taken back if no provider answered it with a success: retries of failed
//! calls are not reasoning steps. A refused call does not count. The unit of "in a row" is a
//! response: the set of tool calls it returned (one call, or several made in parallel), so a
//! loop of the same parallel calls is one, and two identical calls in one response are not two
//! in a row.
//!
//! A plain type fed events with their time (`tokio::time::Instant`, so tests run on paused
//! time); the data plane asks it before each call and tells it how each call ended. A task is
//! forgotten once idle for `forget_after` (the sidecar uses `tasks.stuck_after`), and the table
//! is bounded like the task table: full, it forgets the stalest task.

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
    /// Responses in a row that returned the same tool calls, `previous` (0: no run).
    run: u32,
    previous: u64,
    /// MCP `tools/call` requests in a row that made the same calls (by the low half of their
    /// fingerprint, `tool_previous`; saturating): a run of its own, so that an LLM response and
    /// the MCP call that carries it out are not two in a row.
    tool_run: u16,
    tool_previous: u32,
    /// `max_llm_calls` was crossed (counted once, whatever the count does after).
    over: bool,
    /// A loop was detected (the first kind found): under `loop_action: block` its calls are
    /// refused from now on.
    looping: Option<LoopKind>,
}

impl TaskLoop {
    fn new(now: Instant) -> TaskLoop {
        TaskLoop {
            last: now,
            calls: 0,
            run: 0,
            previous: 0,
            tool_run: 0,
            tool_previous: 0,
            over: false,
            looping: None,
        }
    }
}

/// Extends a run of the same calls with `calls` (`None` breaks it); returns its length.
fn extend<R, P>(run: &mut R, previous: &mut P, calls: Option<P>) -> u32
where
    R: Copy + Into<u32> + TryFrom<u32>,
    P: PartialEq,
{
    let n: u32 = (*run).into();
    let next = match calls {
        Some(f) if n > 0 && f == *previous => n.saturating_add(1),
        Some(f) => {
            *previous = f;
            1
        }
        None => 0,
    };
    // Past the counter's width the run stays at its top.
    if let Ok(r) = R::try_from(next) {
        *run = r;
    }
    (*run).into()
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
    /// The call is refused (asked to refuse a looping task's calls, and it loops): not counted.
    pub refused: bool,
    /// A full table forgot another task to make room for this one.
    pub evicted: bool,
}

#[derive(Debug)]
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

    /// An LLM call of task `key` is about to be made; `refuse_looping`: a looping task's call
    /// is to be refused (and then not counted).
    pub fn call(&self, key: u64, refuse_looping: bool, now: Instant) -> CallCheck {
        let max = self.limits.max_llm_calls;
        let (check, evicted) = self.table.upsert(
            key,
            || TaskLoop::new(now),
            |t, _| {
                t.last = now;
                let calls = t.calls.saturating_add(1);
                let crossed = max > 0 && calls > max && !t.over;
                if crossed {
                    t.over = true;
                    t.looping.get_or_insert(LoopKind::MaxLlmCalls);
                }
                let refused = refuse_looping && t.looping.is_some();
                if !refused {
                    t.calls = calls;
                }
                CallCheck {
                    crossed,
                    looping: t.looping,
                    refused,
                    evicted: false,
                }
            },
        );
        CallCheck {
            evicted: evicted.is_some(),
            ..check
        }
    }

    /// A call of task `key` counted by [`LoopTable::call`] got no successful answer from a
    /// provider: it is taken back.
    pub fn unanswered(&self, key: u64, now: Instant) {
        self.table.update(key, |t| {
            t.last = now;
            t.calls = t.calls.saturating_sub(1);
            ((), false)
        });
    }

    /// A successful response to an LLM call of task `key` returned these tool calls: their
    /// fingerprint as a set ([`crate::inspect::canon::set_of`]); `None` for a
    /// response without a tool call, or with one that cannot be known — either breaks the run.
    /// Returns whether the run reached `max_repeated_tool_calls` now (once per run).
    pub fn returned(&self, key: u64, calls: Option<u64>, now: Instant) -> bool {
        let max = self.limits.max_repeated_tool_calls;
        self.table
            .update(key, |t| {
                t.last = now;
                let run = extend(&mut t.run, &mut t.previous, calls);
                let detected = max > 0 && run == max;
                if detected {
                    t.looping.get_or_insert(LoopKind::RepeatedToolCall);
                }
                (detected, false)
            })
            .unwrap_or(false)
    }

    /// Task `key` made MCP tool calls in one request: their fingerprint as a set (`None`: one
    /// cannot be known, which breaks the run). Returns whether the run of the same calls reached
    /// `max_repeated_tool_calls` now (once per run), and whether a full table forgot another task.
    pub fn tool_called(&self, key: u64, calls: Option<u64>, now: Instant) -> (bool, bool) {
        let max = self.limits.max_repeated_tool_calls;
        let (detected, evicted) = self.table.upsert(
            key,
            || TaskLoop::new(now),
            |t, _| {
                t.last = now;
                // The low half of the fingerprint: a false "same call" is a 2^-32 chance.
                let calls = calls.map(|c| c as u32);
                let before = u32::from(t.tool_run);
                let run = extend(&mut t.tool_run, &mut t.tool_previous, calls);
                // Crossing the limit, once per run (past the counter's width, at its top).
                let limit = max.min(u32::from(u16::MAX));
                let detected = max > 0 && run >= limit && before < limit;
                if detected {
                    t.looping.get_or_insert(LoopKind::RepeatedToolCall);
                }
                detected
            },
        );
        (detected, evicted.is_some())
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

    #[tokio::test(start_paused = true)]
    async fn the_same_mcp_tool_calls_in_a_row_are_a_loop_on_a_run_of_their_own() {
        let t = table(0, 3);
        let now = Instant::now();
        assert_eq!(t.tool_called(1, Some(7), now), (false, false));
        // The LLM response that asked for the call is its own run: it does not make two.
        assert!(!t.returned(1, Some(7), now));
        assert_eq!(t.tool_called(1, Some(7), now), (false, false));
        // Another task's calls are not this one's.
        assert_eq!(t.tool_called(2, Some(7), now), (false, false));
        assert_eq!(t.tool_called(1, Some(7), now), (true, false));
        // Counted once per run; a different call starts a new one.
        assert_eq!(t.tool_called(1, Some(7), now), (false, false));
        assert_eq!(t.tool_called(1, Some(8), now), (false, false));
        assert_eq!(t.tool_called(1, None, now), (false, false));
        assert_eq!(t.tool_called(1, Some(8), now), (false, false));
        // Found looping: under block the task's next LLM call is refused.
        assert_eq!(
            t.call(1, true, now).looping,
            Some(LoopKind::RepeatedToolCall)
        );
        assert!(t.call(1, true, now).refused);
    }

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
            let c = t.call(1, false, now);
            assert!(!c.crossed && c.looping.is_none() && !c.refused);
        }
        let fourth = t.call(1, false, now);
        assert!(fourth.crossed && !fourth.refused);
        assert_eq!(fourth.looping, Some(LoopKind::MaxLlmCalls));
        let fifth = t.call(1, false, now);
        assert!(!fifth.crossed, "counted once");
        assert_eq!(fifth.looping, Some(LoopKind::MaxLlmCalls), "still looping");
        // Another task has its own count.
        assert_eq!(t.call(2, false, now).looping, None);
        // Off: never a loop.
        let off = table(0, 0);
        for _ in 0..1000 {
            assert_eq!(off.call(1, false, now).looping, None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refused_and_unanswered_calls_do_not_count() {
        let t = table(2, 0);
        let now = Instant::now();
        // Two calls, one of which failed: one counts.
        t.call(1, true, now);
        t.call(1, true, now);
        t.unanswered(1, now);
        let c = t.call(1, true, now);
        assert!(!c.crossed && !c.refused, "the second that counts");
        let c = t.call(1, true, now);
        assert!(c.crossed && c.refused, "the third is refused");
        // Refused calls (an SDK retrying its 429s) neither count nor cross again.
        for _ in 0..5 {
            let c = t.call(1, true, now);
            assert!(!c.crossed && c.refused);
        }
        // A recorded (not refused) task crosses once even if failures take calls back.
        let t = table(2, 0);
        for _ in 0..3 {
            t.call(1, false, now);
        }
        t.unanswered(1, now);
        t.unanswered(1, now);
        assert!(!t.call(1, false, now).crossed);
        assert!(!t.call(1, false, now).crossed, "crossed once already");
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_tool_calls_in_a_row_are_a_loop() {
        let t = table(0, 3);
        let now = Instant::now();
        t.call(1, false, now);
        assert!(!t.returned(1, Some(7), now));
        assert!(!t.returned(1, Some(7), now));
        assert!(t.returned(1, Some(7), now), "the third in a row");
        assert_eq!(
            t.call(1, false, now).looping,
            Some(LoopKind::RepeatedToolCall)
        );
        assert!(!t.returned(1, Some(7), now), "the same run, counted once");
        assert!(t.call(1, true, now).refused);

        // Broken runs are no loop: other calls, or a response without a (known) call.
        for breaker in [Some(8), None] {
            let t = table(0, 3);
            t.call(1, false, now);
            t.returned(1, Some(7), now);
            t.returned(1, Some(7), now);
            assert!(!t.returned(1, breaker, now));
            assert!(!t.returned(1, Some(7), now), "after {breaker:?}");
            assert_eq!(t.call(1, false, now).looping, None);
        }
        // A task the guard does not know (never called, or forgotten) is not judged.
        assert!(!t.returned(9, Some(5), now));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_are_forgotten_and_the_table_is_bounded() {
        let limits = LoopLimits {
            max_llm_calls: 2,
            max_repeated_tool_calls: 0,
        };
        let t = LoopTable::new(2, limits, FORGET);
        let start = Instant::now();
        t.call(1 << 59, false, start);
        t.call(1 << 59, false, start);
        tokio::time::advance(FORGET).await;
        t.call(2 << 59, false, Instant::now());
        assert_eq!(
            t.sweep(Instant::now()),
            0,
            "not idle longer than forget_after"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.sweep(Instant::now()), 1);
        // Forgotten: its count starts again.
        let again = t.call(1 << 59, false, Instant::now());
        assert!(!again.crossed && !again.evicted);
        let c = t.call(3 << 59, false, Instant::now());
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
