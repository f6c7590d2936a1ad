//! One byte budget for the bodies the sidecar holds (`memory.max_held`): request bodies kept for
//! replay or read ahead, request and response bytes kept to be read whole (the LLM readers, a
//! safety decision under `block`, a brotli body), SSE events being assembled, a stream held back
//! while it is checked, a response kept for the cache. Each holder reserves what it keeps as it
//! keeps it and gives it back when it lets go; past the budget, a holder that can refuse the
//! request before answering does (503 `overloaded`), and one that cannot degrades as it would at
//! its own limit (the body goes unread and counted, a held stream is blocked as uninspectable,
//! nothing is cached). So a thousand large requests at once cost at most the budget, not a
//! thousand bodies.
//!
//! A reservation is one atomic update of a shared counter per chunk kept; nothing is locked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge};

/// What holds bytes (the `held` label of the refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A request body read ahead: kept for replay, for a model rewrite, or before a probe.
    Replay,
    /// A streamed LLM request's bytes, kept to read its model and tools.
    RequestTap,
    /// A response kept to be read whole: an LLM reader's JSON, a safety decision, a brotli body.
    ResponseRead,
    /// An SSE event being assembled.
    SseEvent,
    /// A stream held back until its text is known clean.
    SafetyHold,
    /// A response on its way into the cache.
    Cache,
    /// A sampled request and answer on their way to the judge (`correctness.judge`).
    JudgeSample,
}

impl Held {
    pub const COUNT: usize = 7;
    pub const ALL: [Held; Held::COUNT] = [
        Held::Replay,
        Held::RequestTap,
        Held::ResponseRead,
        Held::SseEvent,
        Held::SafetyHold,
        Held::Cache,
        Held::JudgeSample,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Held::Replay => "replay",
            Held::RequestTap => "request_tap",
            Held::ResponseRead => "response_read",
            Held::SseEvent => "sse_event",
            Held::SafetyHold => "safety_hold",
            Held::Cache => "cache",
            Held::JudgeSample => "judge_sample",
        }
    }
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    used: AtomicUsize,
    refused: [Counter; Held::COUNT],
    used_gauge: Gauge,
}

/// The budget of one sidecar; cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Inner>);

impl BodyBudget {
    /// A budget of `capacity` bytes, counting its refusals by holder (indexed as [`Held::ALL`])
    /// and its bytes in use on these handles (registered by the telemetry layer).
    pub fn new(capacity: usize, refused: [Counter; Held::COUNT], used: Gauge) -> BodyBudget {
        BodyBudget(Arc::new(Inner {
            capacity,
            used: AtomicUsize::new(0),
            refused,
            used_gauge: used,
        }))
    }

    /// A budget with no limit, counted nowhere (tools, benches and unit tests).
    pub fn unlimited() -> BodyBudget {
        BodyBudget::new(
            usize::MAX,
            Held::ALL.map(|_| Counter::noop()),
            Gauge::noop(),
        )
    }

    /// A reservation of nothing yet, for `what`.
    pub fn reserve(&self, what: Held) -> Reservation {
        Reservation {
            budget: Some(self.clone()),
            what,
            bytes: 0,
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Sets `sloguard_body_budget_used_bytes` (from the periodic upkeep, not per chunk).
    pub fn report(&self) {
        self.0.used_gauge.set(self.used() as f64);
    }

    fn take(&self, n: usize) -> bool {
        let i = &self.0;
        i.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|total| *total <= i.capacity)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes one holder keeps, given back when it is dropped.
#[derive(Debug)]
pub struct Reservation {
    /// `None`: not counted against any budget (tools and tests that hold nothing for long).
    budget: Option<BodyBudget>,
    what: Held,
    bytes: usize,
}

impl Reservation {
    /// A reservation that every growth succeeds for.
    pub fn unbounded(what: Held) -> Reservation {
        Reservation {
            budget: None,
            what,
            bytes: 0,
        }
    }

    /// Reserves `n` more bytes; `false` (and counted) when the budget has no room for them.
    pub fn grow(&mut self, n: usize) -> bool {
        let Some(b) = &self.budget else {
            self.bytes += n;
            return true;
        };
        if b.take(n) {
            self.bytes += n;
            true
        } else {
            b.0.refused[self.what as usize].increment(1);
            false
        }
    }

    /// Makes the reservation `n` bytes: grows it (`false` when refused) or gives the excess back.
    pub fn resize(&mut self, n: usize) -> bool {
        if n > self.bytes {
            return self.grow(n - self.bytes);
        }
        if let Some(b) = &self.budget {
            b.give(self.bytes - n);
        }
        self.bytes = n;
        true
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_back_on_drop() {
        let t = crate::telemetry::Telemetry::new();
        let b = t.body_budget(100, "a");
        let mut x = b.reserve(Held::Replay);
        let mut y = b.reserve(Held::Cache);
        assert!(x.grow(60));
        assert!(!y.grow(50), "past the budget");
        assert!(y.grow(40));
        assert_eq!(b.used(), 100);
        assert!(x.resize(10));
        assert_eq!(b.used(), 50);
        drop(x);
        drop(y);
        assert_eq!(b.used(), 0);
        assert!(t
            .render()
            .contains("sloguard_body_budget_refusals_total{agent=\"a\",held=\"cache\"} 1"));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_budget() {
        let t = crate::telemetry::Telemetry::new();
        let b = t.body_budget(1000, "a");
        let kept: Vec<Reservation> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        let mut r = b.reserve(Held::Replay);
                        for _ in 0..100 {
                            let _ = r.grow(7);
                        }
                        r
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = kept.iter().map(Reservation::bytes).sum();
        assert!(total <= 1000 && total > 990, "{total}");
        assert_eq!(b.used(), total);
    }
}
