//! What wakes a connection's watch: the connection itself, being told to close, or its
//! deadline. The watch runs at every wake of the connection's task (every request, every body
//! chunk), so the close signal and the timer are registered once and looked at again only when
//! they may have fired, not polled at each wake: polled each time, they cost about 400
//! instructions of a proxied GET (callgrind), a timer check and a waiter list's lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use super::Conn;

pub(super) enum Event<T> {
    /// The connection's future ended, with this.
    Ended(T),
    /// The connection was told something (`told`, as it stands now).
    Told(u8),
    /// The deadline passed.
    Deadline,
}

pub(super) struct Wake<'a> {
    conn: &'a Conn,
    told: Pin<Box<Notified<'a>>>,
    /// `told` is registered with the connection's task: it is polled again only once
    /// `conn.told` moved past `told_seen`.
    told_armed: bool,
    told_seen: u8,
    sleep: Pin<Box<Sleep>>,
    /// `sleep` is registered with the timer: it is polled again only once it has fired.
    sleep_armed: bool,
}

impl<'a> Wake<'a> {
    pub(super) fn new(conn: &'a Conn, deadline: Instant) -> Wake<'a> {
        Wake {
            conn,
            told: Box::pin(conn.close.notified()),
            told_armed: false,
            told_seen: conn.told.load(Ordering::Acquire),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            sleep_armed: false,
        }
    }

    /// Waits for the deadline `at` from now on (the same one again after it fired).
    pub(super) fn set_deadline(&mut self, at: Instant) {
        if self.sleep_armed && self.sleep.deadline() == at && !self.sleep.is_elapsed() {
            return;
        }
        self.sleep.as_mut().reset(at);
        self.sleep_armed = false;
    }

    /// The next event; the connection's own first.
    pub(super) async fn next<F: Future>(
        &mut self,
        mut conn_future: Pin<&mut F>,
    ) -> Event<F::Output> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(ended) = conn_future.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(ended));
            }
            match self.poll_told(cx) {
                Poll::Pending => self.poll_sleep(cx),
                told => told,
            }
        })
        .await
    }

    fn poll_told<T>(&mut self, cx: &mut Context<'_>) -> Poll<Event<T>> {
        let told = self.conn.told.load(Ordering::Acquire);
        if self.told_armed && told == self.told_seen {
            return Poll::Pending;
        }
        // A Notified registers at its first poll and keeps the waker; `notify_one` wakes it.
        if self.told.as_mut().poll(cx).is_pending() {
            self.told_armed = true;
            return Poll::Pending;
        }
        self.told.set(self.conn.close.notified());
        self.told_armed = false;
        self.told_seen = told;
        Poll::Ready(Event::Told(told))
    }

    fn poll_sleep<T>(&mut self, cx: &mut Context<'_>) -> Poll<Event<T>> {
        if self.sleep_armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        // With the task's budget spent, a Sleep returns Pending without registering: it counts
        // as armed only when polled with budget left.
        let budget = tokio::task::coop::has_budget_remaining();
        if self.sleep.as_mut().poll(cx).is_pending() {
            self.sleep_armed = budget;
            return Poll::Pending;
        }
        self.sleep_armed = false;
        Poll::Ready(Event::Deadline)
    }
}
