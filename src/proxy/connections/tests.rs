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
