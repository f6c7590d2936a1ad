//! Whether the agent is stuck, for the liveness probe that gets it restarted: a request to it
//! has waited longer than `stuck_after` for the first byte of its answer, or tasks were
//! abandoned within the last `stuck_after` and none completed. A plain type fed events with
//! their time (`tokio::time::Instant`, so tests run on paused time).
//!
//! Only the agent's silence counts. A request waits on the agent from when the agent has all
//! it needs to answer: its body uploaded (a slow client is the client's time), or the agent
//! stopped reading it (the agent's doing). A request that ended without an answer (the client
//! left) waits no more; what a task's end says is the task table's business.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A request's body on its way to the agent, as far as waiting goes.
pub trait AgentsTurn: Send + Sync + std::fmt::Debug {
    /// Since when the agent is the one being waited on: the upload ended, or the agent stopped
    /// reading it. `None` while the client is still sending.
    fn agents_turn_since(&self) -> Option<Instant>;
}

/// Since when a request waits on the agent.
#[derive(Debug)]
enum Waiting {
    Since(Instant),
    Upload(Arc<dyn AgentsTurn>),
}

impl Waiting {
    fn since(&self) -> Option<Instant> {
        match self {
            Waiting::Since(at) => Some(*at),
            Waiting::Upload(u) => u.agents_turn_since(),
        }
    }
}

#[derive(Debug)]
pub struct Liveness {
    stuck_after: Duration,
    epoch: Instant,
    /// Requests sent to the agent and not yet answered, by ticket.
    waiting: Mutex<BTreeMap<u64, Waiting>>,
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

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request went to the agent at `now`, its body (if it has one) still on its way as
    /// `upload` says; returns its ticket for [`Liveness::answered`].
    pub fn request(&self, now: Instant, upload: Option<Arc<dyn AgentsTurn>>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let waiting = match upload {
            Some(u) => Waiting::Upload(u),
            None => Waiting::Since(now),
        };
        self.waiting().insert(id, waiting);
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
            // Every request in flight is looked at: how long each has waited depends on its
            // upload, not on when it arrived. (Run once a second and per probe, over the
            // requests in flight: microseconds.)
            let (mut oldest, mut past) = (Duration::ZERO, 0);
            for w in self.waiting().values() {
                let Some(since) = w.since() else { continue };
                let waited = now.saturating_duration_since(since);
                if waited > self.stuck_after {
                    past += 1;
                    oldest = oldest.max(waited);
                }
            }
            if past > 0 {
                return Some(Stuck::NoAnswer {
                    oldest,
                    waiting: past,
                });
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
        let id = l.request(Instant::now(), None);
        tokio::time::advance(STUCK).await;
        assert_eq!(l.check(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let fresh = l.request(Instant::now(), None);
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

    /// An upload whose end the test sets.
    #[derive(Debug)]
    struct TestUpload(Mutex<Option<Instant>>);

    impl AgentsTurn for TestUpload {
        fn agents_turn_since(&self) -> Option<Instant> {
            *self.0.lock().unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_starts_when_the_upload_is_the_agents_turn() {
        let l = Liveness::new(STUCK);
        let upload = Arc::new(TestUpload(Mutex::new(None)));
        let id = l.request(Instant::now(), Some(upload.clone()));
        // The client uploads for twice stuck_after: not the agent's silence.
        tokio::time::advance(STUCK * 2).await;
        assert_eq!(l.check(Instant::now()), None);
        *upload.0.lock().unwrap() = Some(Instant::now());
        tokio::time::advance(STUCK).await;
        assert_eq!(l.check(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            l.check(Instant::now()),
            Some(Stuck::NoAnswer { waiting: 1, .. })
        ));
        l.answered(id);
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
