//! Bounded warning logs: during an outage every request fails the same way, and a log line per
//! request would cost more than the outage tells. The first failure of each second is logged,
//! with the count of those suppressed since the last line; the metrics count every one.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

#[derive(Debug)]
pub struct LogLimiter {
    epoch: Instant,
    /// The second (since `epoch`) of the last line logged, plus one; 0 before the first.
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new() -> LogLimiter {
        LogLimiter {
            epoch: Instant::now(),
            last_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when this event may be logged, `None` when not.
    pub fn allow(&self) -> Option<u64> {
        let second = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_second.load(Ordering::Relaxed);
        if last != second
            && self
                .last_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_line_a_second_with_the_suppressed_count() {
        let limit = LogLimiter::new();
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..99 {
            assert_eq!(limit.allow(), None);
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(limit.allow(), Some(99));
        assert_eq!(limit.allow(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limit.allow(), Some(1));
    }
}
