//! Which tokio runtime `sloguard run` runs on: one thread on one core, a one-thread runtime
//! per core on more (see `crate::runtime`), or tokio's work-stealing scheduler when asked for.

/// Which tokio scheduler runs the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Runtime {
    /// Every task on the one thread that also runs `main`: no work stealing, no cross-thread
    /// wake-ups (on one core, about the same requests a second as one work-stealing worker:
    /// `benches/runtimes.sh`).
    OneThread,
    /// tokio's work-stealing scheduler, `TOKIO_WORKER_THREADS` workers (default one a core).
    WorkStealing,
    /// A one-thread runtime on each of this many threads; each accepted connection is served on
    /// one of them, in turn (see `crate::runtime`).
    PerCore(usize),
}

impl Runtime {
    /// `SLOGUARD_RUNTIME` (`one-thread`, `per-core`, `work-stealing`), or by the cores the
    /// sidecar may use ([`cores`]): one thread on one core, a one-thread runtime per core on more.
    pub(super) fn for_sidecar() -> Result<Runtime, String> {
        match std::env::var("SLOGUARD_RUNTIME").as_deref() {
            Ok("one-thread") => return Ok(Runtime::OneThread),
            Ok("work-stealing") => return Ok(Runtime::WorkStealing),
            Ok("per-core") => return Ok(Runtime::PerCore(cores().max(1))),
            Ok("" | "auto") | Err(std::env::VarError::NotPresent) => {}
            Ok(other) => {
                return Err(format!(
                    "SLOGUARD_RUNTIME: `{other}` is not one of one-thread, work-stealing, per-core, auto"
                ))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err("SLOGUARD_RUNTIME: not UTF-8".to_string())
            }
        }
        let cores = cores();
        Ok(if cores <= 1 {
            Runtime::OneThread
        } else {
            Runtime::PerCore(cores)
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Runtime::OneThread => "one-thread",
            Runtime::WorkStealing => "work-stealing",
            Runtime::PerCore(_) => "per-core",
        }
    }

    /// The runtime `main` blocks on (for per-core runtimes: the first; the others start on
    /// threads of their own and run until the process ends).
    pub(super) fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let one_thread = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        };
        match self {
            Runtime::OneThread => one_thread(),
            Runtime::WorkStealing => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            Runtime::PerCore(n) => {
                let first = one_thread()?;
                let mut handles = vec![first.handle().clone()];
                crate::runtime::enter_worker(0);
                for index in 1..n {
                    let (started, handle) = std::sync::mpsc::channel();
                    std::thread::Builder::new()
                        .name(format!("sloguard-core-{index}"))
                        .spawn(move || {
                            crate::runtime::enter_worker(index);
                            match one_thread() {
                                Ok(runtime) => {
                                    let _ = started.send(Ok(runtime.handle().clone()));
                                    runtime.block_on(std::future::pending::<()>());
                                }
                                Err(e) => {
                                    let _ = started.send(Err(e));
                                }
                            }
                        })?;
                    let handle = handle.recv().map_err(std::io::Error::other)??;
                    handles.push(handle);
                }
                crate::runtime::install(handles);
                Ok(first)
            }
        }
    }
}

/// The cores the sidecar may use: `TOKIO_WORKER_THREADS`, else what the CPU limit and the
/// affinity mask allow.
fn cores() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}
