//! The runtimes connections are served on.
//!
//! Without per-core runtimes (one core, tokio's work-stealing scheduler, the demo, every
//! in-process test) a connection is served where it was accepted. `sloguard run` on several cores
//! runs a one-thread runtime per core instead (`cli::runtime`): the listeners accept on the
//! first, and each accepted connection is handed, in turn, to one of them for its whole life —
//! its requests, its HTTP/1.1 upstream exchanges and their timers never cross threads, and no
//! scheduler steals work. The admin port's connections stay on the first.
//! Measured on two cores (`benches/runtimes.sh`): sloguard served 1.22× the requests a second of
//! tokio's work-stealing scheduler with two workers.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The per-core runtimes, when the process runs them.
static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// The index of the per-core runtime this thread runs (0 on any other thread).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

#[derive(Debug)]
struct Workers {
    handles: Vec<Handle>,
    /// The next connection's runtime: counts up, taken modulo the number of runtimes.
    next: AtomicUsize,
}

/// Makes `handles` the runtimes connections are served on (their order: their indices). Once
/// per process, before the listeners start; `false` if it was done already.
pub(crate) fn install(handles: Vec<Handle>) -> bool {
    let next = AtomicUsize::new(1);
    WORKERS.set(Workers { handles, next }).is_ok()
}

/// Marks the calling thread as the one that runs per-core runtime `index`.
pub(crate) fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The runtime the next accepted connection is served on: `None` for the one accepting it
/// (always so without per-core runtimes).
pub(crate) fn next_for_connection() -> Option<&'static Handle> {
    let workers = WORKERS.get()?;
    let n = workers.handles.len();
    if n < 2 {
        return None;
    }
    let index = workers.next.fetch_add(1, Ordering::Relaxed) % n;
    if index == current() {
        return None;
    }
    workers.handles.get(index)
}

/// How many runtimes serve connections (1 without per-core runtimes).
pub(crate) fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.handles.len().max(1))
}

/// The index of the per-core runtime the calling thread runs (0 on any other thread): for state
/// kept per runtime, such as an upstream's idle connections.
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}
