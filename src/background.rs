//! Background loops under supervision. A loop the sidecar depends on — the task sweep that
//! feeds the liveness probe, the key file reload, the SLO view, the incident webhook, the accept
//! loops — must not end silently on a panic: it would leave a probe answering from stale state
//! or a listener that accepts nothing. Each runs in a task of its own; a panic is logged with its
//! message, counted (`sloguard_background_restarts_total{task}`), and the loop started again
//! after a second.

use std::future::Future;
use std::time::Duration;

use metrics::Counter;
use tokio::task::JoinHandle;

/// Wait before a loop that panicked starts again: a loop that panics at once every time costs a
/// log line a second, not a core.
pub(crate) const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Aborts the task it holds when dropped: aborting a supervisor aborts what it supervises.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()`'s future in a task, and again whenever it panics; returns once a run ends
/// (or the supervisor is aborted, which aborts the run too).
pub(crate) fn supervise<F, Fut>(
    task: impl Into<String>,
    restarts: Counter,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let task = task.into();
    tokio::spawn(async move {
        loop {
            let mut run = AbortOnDrop(tokio::spawn(make()));
            match (&mut run.0).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_owned());
                    restarts.increment(1);
                    tracing::error!(task = %task, panic = %message, restart_in = ?RESTART_AFTER, "background task panicked; restarting it");
                    tokio::time::sleep(RESTART_AFTER).await;
                }
                // Cancelled from outside (the runtime is going away).
                Err(_) => return,
            }
        }
    })
}

/// Calls `tick` every `period`, supervised.
pub(crate) fn every(
    task: &str,
    restarts: Counter,
    period: Duration,
    tick: impl Fn() + Send + Sync + 'static,
) -> JoinHandle<()> {
    let tick = std::sync::Arc::new(tick);
    supervise(task, restarts, move || {
        let tick = tick.clone();
        async move {
            let mut every = tokio::time::interval(period);
            loop {
                every.tick().await;
                tick();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn restarts(t: &crate::telemetry::Telemetry) -> Counter {
        t.counter(
            crate::telemetry::BACKGROUND_RESTARTS_TOTAL,
            vec![crate::telemetry::label("task", "test")],
        )
    }

    /// A loop that panics on its second tick, once.
    fn flaky(
        ticks: Arc<AtomicU32>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move || {
            let ticks = ticks.clone();
            Box::pin(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if ticks.fetch_add(1, Ordering::SeqCst) == 1 {
                        panic!("a bug in the loop");
                    }
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsupervised_loop_ends_for_good_on_a_panic() {
        // What every background loop did before: `tokio::spawn`, the panic ends it silently.
        let ticks = Arc::new(AtomicU32::new(0));
        let run = tokio::spawn(flaky(ticks.clone())());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(run.is_finished());
        assert_eq!(ticks.load(Ordering::SeqCst), 2, "no tick after the panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_supervised_loop_is_restarted_after_a_panic_and_counted() {
        let t = crate::telemetry::Telemetry::new();
        let ticks = Arc::new(AtomicU32::new(0));
        let supervisor = supervise("test", restarts(&t), flaky(ticks.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!supervisor.is_finished());
        assert!(ticks.load(Ordering::SeqCst) >= 8, "it kept ticking");
        assert!(t
            .render()
            .contains("sloguard_background_restarts_total{task=\"test\"} 1"));
        // Aborting the supervisor stops the loop it runs.
        supervisor.abort();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_ends_is_not_started_again() {
        let t = crate::telemetry::Telemetry::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let supervisor = supervise("test", restarts(&t), move || {
            r.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
