//! Whether the agent is stuck, for the liveness probe that gets it restarted: a request to it
//! has waited longer than `stuck_after` for the first byte of its answer, or tasks were
//! abandoned within the last `stuck_after` and none completed. A plain type fed events with
//! their time (`tokio::time::Instant`, so tests run on paused time).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Why the agent is stuck.
#[derive(Debug, Clone, PartialEq)]
pub enum Stuck {
    /// A request has had no answer for this long (`waiting` of them past `stuck_after`).
    NoAnswer { oldest: Duration, waiting: usize },
    /// Tasks were abandoned this long ago, and none completed since `stuck_after` ago.
    Abandoned { last: Duration },
}

impl Stuck {
    /// One line for the probe's answer (no task ids, no request content).
    pub fn reason(&self) -> String {
        match self {
            Stuck::NoAnswer { oldest, waiting } => format!(
                "{waiting} request(s) to the agent without an answer for longer than stuck_after; the oldest for {:.1}s",
                oldest.as_secs_f64()
            ),
            Stuck::Abandoned { last } => format!(
                "tasks abandoned within stuck_after (the last {:.1}s ago) and none completed",
                last.as_secs_f64()
            ),
        }
    }
}

/// Never, in the `last_*` fields.
const NEVER: u64 = u64::MAX;

pub struct Liveness {
    stuck_after: Duration,
    epoch: Instant,
    /// Requests waiting for the agent's answer: their start, by arrival order.
    waiting: Mutex<BTreeMap<u64, Instant>>,
    next: AtomicU64,
    /// Milliseconds since `epoch` of the last abandoned and completed task.
    last_abandoned: AtomicU64,
    last_completed: AtomicU64,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Liveness {
        Liveness {
            stuck_after,
            epoch: Instant::now(),
            waiting: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            last_abandoned: AtomicU64::new(NEVER),
            last_completed: AtomicU64::new(NEVER),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(NEVER - 1)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request went to the agent; returns its ticket for [`Liveness::answered`].
    pub fn request(&self, now: Instant) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting().insert(id, now);
        id
    }

    /// The agent answered the request (or it ended without an answer): it waits no more.
    pub fn answered(&self, id: u64) {
        self.waiting().remove(&id);
    }

    pub fn abandoned(&self, now: Instant) {
        self.last_abandoned.store(self.ms(now), Ordering::Relaxed);
    }

    pub fn completed(&self, now: Instant) {
        self.last_completed.store(self.ms(now), Ordering::Relaxed);
    }

    /// Whether the agent is stuck now, and why.
    pub fn check(&self, now: Instant) -> Option<Stuck> {
        {
            let waiting = self.waiting();
            // Arrival order is start order, give or take a race of microseconds.
            if let Some(oldest) = waiting.values().next() {
                let oldest = now.saturating_duration_since(*oldest);
                if oldest > self.stuck_after {
                    let cutoff = now.checked_sub(self.stuck_after);
                    let waiting = waiting
                        .values()
                        .take_while(|s| cutoff.is_some_and(|c| **s < c))
                        .count();
                    return Some(Stuck::NoAnswer { oldest, waiting });
                }
            }
        }
        let window = u64::try_from(self.stuck_after.as_millis()).unwrap_or(NEVER);
        let now_ms = self.ms(now);
        let recent = |at: u64| at != NEVER && now_ms.saturating_sub(at) <= window;
        let abandoned = self.last_abandoned.load(Ordering::Relaxed);
        if recent(abandoned) && !recent(self.last_completed.load(Ordering::Relaxed)) {
            return Some(Stuck::Abandoned {
                last: Duration::from_millis(now_ms.saturating_sub(abandoned)),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUCK: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_past_stuck_after_is_stuck_until_answered() {
        let l = Liveness::new(STUCK);
        let id = l.request(Instant::now());
        tokio::time::advance(STUCK).await;
        assert_eq!(l.check(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let fresh = l.request(Instant::now());
        assert_eq!(
            l.check(Instant::now()),
            Some(Stuck::NoAnswer {
                oldest: STUCK + Duration::from_secs(1),
                waiting: 1
            })
        );
        l.answered(id);
        l.answered(fresh);
        assert_eq!(l.check(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_tasks_with_none_completed_are_stuck_for_stuck_after() {
        let l = Liveness::new(STUCK);
        tokio::time::advance(Duration::from_secs(5)).await;
        l.completed(Instant::now());
        tokio::time::advance(Duration::from_secs(100)).await;
        l.abandoned(Instant::now());
        assert!(matches!(
            l.check(Instant::now()),
            Some(Stuck::Abandoned { .. })
        ));
        // A completion clears it.
        l.completed(Instant::now());
        assert_eq!(l.check(Instant::now()), None);
        // A later abandonment, with that completion still within the window: not stuck.
        tokio::time::advance(Duration::from_secs(10)).await;
        l.abandoned(Instant::now());
        assert_eq!(l.check(Instant::now()), None);
        // Past the window of the completion, the abandonment still within its own: stuck...
        tokio::time::advance(Duration::from_secs(55)).await;
        assert!(l.check(Instant::now()).is_some());
        // ... and once the abandonment is old too, not any more.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.check(Instant::now()), None);
    }
}
