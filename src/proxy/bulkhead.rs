//! Bulkheads (`routes.*.max_in_flight`): at most that many of a route's requests at once. Past
//! it a request is answered 503 `bulkhead_full` at once, without queueing, so that a slow
//! dependency holds no more of the agent than its share, and its callers fail fast instead of
//! piling up behind it.
//!
//! A request takes its place before any work is spent on it and gives it back when it is
//! counted (its answer's last byte out, or the client gone): a slow stream holds its place. A
//! reload builds the route afresh, with a count of its own; requests already in flight keep
//! their places on the old one until they end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use metrics::Counter;

/// One route's cap on requests in flight.
#[derive(Debug)]
pub struct Bulkhead {
    limit: u32,
    in_flight: AtomicU32,
    /// `sloguard_bulkhead_rejections_total` of the route.
    rejections: Counter,
}

impl Bulkhead {
    pub(crate) fn new(limit: u32, rejections: Counter) -> Arc<Bulkhead> {
        Arc::new(Bulkhead {
            limit,
            in_flight: AtomicU32::new(0),
            rejections,
        })
    }

    /// A place for one request, until the [`Place`] is dropped; `None` (and counted) when the
    /// route has `max_in_flight` requests in flight already.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Place> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Place(self.clone())),
            Err(_) => {
                self.rejections.increment(1);
                None
            }
        }
    }

    /// The route's requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A request's place in its route's bulkhead, given back when dropped.
#[derive(Debug)]
pub(crate) struct Place(Arc<Bulkhead>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_up_to_the_limit_then_refusals_until_one_is_given_back() {
        let b = Bulkhead::new(2, Counter::noop());
        let first = b.enter().expect("a first place");
        let second = b.enter().expect("a second place");
        assert!(b.enter().is_none(), "full at two");
        assert_eq!(b.in_flight(), 2);
        drop(first);
        assert_eq!(b.in_flight(), 1);
        let third = b.enter().expect("a place given back is taken again");
        assert!(b.enter().is_none());
        drop((second, third));
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn threads_racing_never_take_more_places_than_the_limit() {
        let b = Bulkhead::new(3, Counter::noop());
        let most = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        if let Some(place) = b.enter() {
                            most.fetch_max(b.in_flight(), Ordering::AcqRel);
                            drop(place);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::Acquire) <= 3);
        assert_eq!(b.in_flight(), 0);
    }
}
