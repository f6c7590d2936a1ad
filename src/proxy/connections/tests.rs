//! The connection set's unit tests: deadlines, the cap, displacement.

use super::*;

fn set(max: usize) -> Arc<Connections> {
    let limits = Limits {
        max_connections: max,
        ..Limits::default()
    };
    Connections::new("p", &limits, "a", &Telemetry::new(), true)
}

fn closes(set: &Connections, c: &Conn) -> Option<CloseReason> {
    match set.watch(c, Instant::now()) {
        Watch::Close(r) => Some(r),
        Watch::Until(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn deadlines_of_a_connection() {
    let set = set(10);
    let c = set.admit(Instant::now()).unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(closes(&set, &c), None);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(closes(&set, &c), Some(CloseReason::HeaderTimeout));
    // A request came: busy (for as long as it takes), then idle from its end.
    let r = c.request();
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(closes(&set, &c), None);
    drop(r);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(closes(&set, &c), None);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(closes(&set, &c), Some(CloseReason::Idle));
}

#[tokio::test(start_paused = true)]
async fn with_every_connection_busy_a_new_one_is_refused() {
    let set = set(2);
    let a = set.admit(Instant::now()).unwrap();
    let b = set.admit(Instant::now()).unwrap();
    let (_ra, rb) = (a.request(), b.request());
    assert!(set.admit(Instant::now()).is_none());
    // One answer done: that connection is idle, and makes room.
    drop(rb);
    assert!(set.admit(Instant::now()).is_some());
    assert!(!set.live().contains_key(&b.id));
}

#[tokio::test(start_paused = true)]
async fn the_idlest_makes_room() {
    let set = set(3);
    let first = set.admit(Instant::now()).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = set.admit(Instant::now()).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let busy = set.admit(Instant::now()).unwrap();
    let _r = busy.request();
    let _r1 = first.request();
    // `first` is busy now, `second` idle since it came: `second` goes.
    let _new = set.admit(Instant::now()).unwrap();
    let live = set.live();
    assert!(live.contains_key(&first.id) && !live.contains_key(&second.id));
}

/// A connection future that never ends, and counts its polls.
fn pending_conn(polls: &std::cell::Cell<u32>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        polls.set(polls.get() + 1);
        std::task::Poll::Pending
    })
}

#[tokio::test(start_paused = true)]
async fn the_watch_wakes_at_its_deadline_and_when_told() {
    let set = set(10);
    let c = set.admit(Instant::now()).unwrap();
    let polls = std::cell::Cell::new(0);
    let mut conn_future = std::pin::pin!(pending_conn(&polls));
    let start = Instant::now();
    let mut wake = Wake::new(&c, start + Duration::from_secs(5));
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Deadline
    ));
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
    // The same deadline again, once it fired, is waited for again: it has passed, so at once.
    wake.set_deadline(start + Duration::from_secs(5));
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Deadline
    ));
    wake.set_deadline(start + Duration::from_secs(60));
    c.tell(TOLD_DISPLACED);
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Told(TOLD_DISPLACED)
    ));
    // Told again: the next value comes through, and the deadline still stands.
    c.tell(TOLD_CUT);
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Told(TOLD_CUT)
    ));
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Deadline
    ));
    assert_eq!(Instant::now(), start + Duration::from_secs(60));
    assert!(polls.get() >= 5, "the connection is polled at every wake");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_first_looked_at_with_the_budget_spent_still_fires() {
    let set = set(10);
    let c = set.admit(Instant::now()).unwrap();
    let mut conn_future = std::pin::pin!(std::future::pending::<()>());
    let start = Instant::now();
    let mut wake = Wake::new(&c, start + Duration::from_secs(5));
    let mut next = std::pin::pin!(wake.next(conn_future.as_mut()));
    let first = std::future::poll_fn(|cx| {
        // The task's budget runs out before the watch's first look (as after a busy poll).
        loop {
            let spend = std::pin::pin!(tokio::task::consume_budget());
            if spend.poll(cx).is_pending() {
                break;
            }
        }
        assert!(!tokio::task::coop::has_budget_remaining());
        std::task::Poll::Ready(next.as_mut().poll(cx).is_ready())
    })
    .await;
    assert!(!first);
    let event = tokio::time::timeout(Duration::from_secs(3600), next)
        .await
        .expect("the deadline fired");
    assert!(matches!(event, Event::Deadline));
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_repeated_tell_does_not_hide_the_next() {
    let set = set(10);
    let c = set.admit(Instant::now()).unwrap();
    let mut conn_future = std::pin::pin!(std::future::pending::<()>());
    let mut wake = Wake::new(&c, Instant::now() + Duration::from_secs(3600));
    c.tell(TOLD_DRAIN);
    assert!(matches!(
        wake.next(conn_future.as_mut()).await,
        Event::Told(TOLD_DRAIN)
    ));
    // The watch waits (armed); the drain is told again, then the cut comes from elsewhere.
    let waited = tokio::time::timeout(Duration::from_secs(1), wake.next(conn_future.as_mut()));
    assert!(waited.await.is_err());
    c.tell(TOLD_DRAIN);
    let teller = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        teller.tell(TOLD_CUT);
    });
    let before = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(10), wake.next(conn_future.as_mut()))
        .await
        .expect("the cut wakes the watch");
    assert!(matches!(event, Event::Told(TOLD_CUT)));
    // Woken by the cut itself (a timeout, when it fires, looks at the watch once more first).
    assert_eq!(Instant::now() - before, Duration::from_millis(100));
}
