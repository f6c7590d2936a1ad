//! The judge (`correctness.judge`): a sample of the agent's answers graded by a model, off the
//! request path.
//!
//! A request on an `agent` listener is sampled when it arrives (`sample_ratio`), taking one of the
//! minute's `max_per_minute` places (none left: dropped and counted then; a sample that goes
//! nowhere gives its place back). A sampled one keeps the text of its request and of its answer
//! as they pass (each `max_chars` characters at most, counted against `memory.max_held`). When the
//! answer has reached the client whole, with a 2xx, and safety found nothing in it, the sample is
//! offered to the [`JudgeQueue`]: with the queue full it is dropped and counted. Nothing waits:
//! the offer is a `try_send`.
//!
//! The judge runs on a thread of its own with a single-threaded runtime at the idle scheduling
//! class, like the OTLP export, with a connection pool of its own to the judge upstream: its
//! connections are driven there, never on the workers. Each sample becomes one call to the
//! upstream (Chat Completions or Messages, as its protocol says) with the rubric, recorded like
//! any LLM call of that upstream (duration, tokens, finish reason) and counted in
//! `sloguard_upstream_requests_total`. The verdict ([`verdict`]) counts in
//! `agent_correctness_verdicts_total{source="judge"}`; a failed call (an error status, a broken
//! connection, `timeout`) or an answer with no verdict in it counts as `failed` or `unreadable`
//! in `sloguard_judge_samples_total`, never as incorrect.

mod call;
mod verdict;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use metrics::{Counter, Label};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Duration, Instant};

use crate::budget::{BodyBudget, Reservation};
use crate::config::{JudgeConfig, UpstreamConfig};
use crate::inspect::text::TextPrefix;
use crate::telemetry::{label, Telemetry, JUDGE_SAMPLES_TOTAL};
use crate::upstream::BodySample;
use crate::upstream::Upstream;

/// Samples waiting for the judge at most; past it, an offer is dropped.
const QUEUE: usize = 32;
/// Judge calls in flight at once.
const IN_FLIGHT: usize = 4;

/// What became of a sample (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Judged = 0,
    Dropped = 1,
    Failed = 2,
    Unreadable = 3,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Judged,
        Outcome::Dropped,
        Outcome::Failed,
        Outcome::Unreadable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Judged => "judged",
            Outcome::Dropped => "dropped",
            Outcome::Failed => "failed",
            Outcome::Unreadable => "unreadable",
        }
    }
}

/// The verdict counters of the listener a sample came from.
#[derive(Debug)]
pub(crate) struct JudgeVerdicts {
    pub(crate) correct: Counter,
    pub(crate) incorrect: Counter,
}

/// One sampled exchange on its way to the judge: the request (its method and target, then its
/// body's text) and the answer's text, each with whether some of it was not kept.
pub(crate) struct Sample {
    request: String,
    request_cut: bool,
    response: Bytes,
    response_cut: bool,
    verdicts: Arc<JudgeVerdicts>,
    /// What the texts hold of the body budget, given back when the sample is done.
    _held: [Reservation; 2],
}

/// Sizes only: a sample holds what a client and the agent said.
impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("request", &self.request.len())
            .field("response", &self.response.len())
            .finish_non_exhaustive()
    }
}

/// Where sampled answers go: the process's one queue to the judge thread, with the sampling
/// sequence, the rate limit and the results' counters.
#[derive(Debug)]
pub(crate) struct JudgeQueue {
    tx: mpsc::Sender<Sample>,
    /// Requests seen, hashed for the sampling decision.
    seq: AtomicU64,
    seed: u64,
    /// The current minute's start and the samples sent in it.
    minute: Mutex<(Instant, u32)>,
    results: [Counter; 4],
    budget: BodyBudget,
}

/// The judge thread's end of the queue.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Sample>,
    results: [Counter; 4],
    budget: BodyBudget,
}

/// A sampled request's texts, kept as they pass, and its place among the minute's samples.
pub(crate) struct Kept {
    /// `METHOD /path?query`: part of what the client asked.
    pub(crate) request_line: String,
    pub(crate) request: Arc<BodySample>,
    pub(crate) response: Option<TextPrefix>,
    slot: Slot,
}

/// Sizes only: what is kept is what a client and the agent said.
impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("request_line", &self.request_line.len())
            .field("request", &self.request)
            .field("response", &self.response)
            .finish()
    }
}

/// A sample's place among its minute's `max_per_minute`, taken when the request arrives: given
/// back when the sample goes nowhere (the answer failed, had no text, found the queue full), so
/// that the samples in flight are never more than the minute allows.
#[derive(Debug)]
struct Slot {
    queue: Arc<JudgeQueue>,
    /// The start of the minute it was taken in.
    minute: Instant,
    sent: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        if let Ok(mut minute) = self.queue.minute.lock() {
            if minute.0 == self.minute {
                minute.1 = minute.1.saturating_sub(1);
            }
        }
    }
}

impl JudgeQueue {
    /// The queue and its inbox, for `agent`.
    pub(crate) fn new(t: &Telemetry, agent: &str, budget: &BodyBudget) -> (Arc<JudgeQueue>, Inbox) {
        let results = Outcome::ALL.map(|o| {
            t.counter(
                JUDGE_SAMPLES_TOTAL,
                vec![
                    label("agent", agent),
                    Label::from_static_parts("result", o.as_str()),
                ],
            )
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0x1d9e_u64,
        );
        let queue = JudgeQueue {
            tx,
            seq: AtomicU64::new(0),
            seed,
            minute: Mutex::new((Instant::now(), 0)),
            results: results.clone(),
            budget: budget.clone(),
        };
        let inbox = Inbox {
            rx,
            results,
            budget: budget.clone(),
        };
        (Arc::new(queue), inbox)
    }

    /// A sample of the request arriving at `now` (its `request_line`), at `threshold`
    /// (`sample_ratio` of `u64::MAX`): the request's number in the sequence, hashed, under the
    /// threshold. It takes a place among the minute's `max_per_minute`; with none left it is
    /// dropped (and counted) at once, and nothing is kept.
    pub(crate) fn sample(
        self: &Arc<Self>,
        threshold: u64,
        max_per_minute: u32,
        now: Instant,
        request_line: impl FnOnce() -> String,
    ) -> Option<Kept> {
        if threshold == 0 {
            return None;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed);
        if hash > threshold {
            return None;
        }
        let Some(minute) = self.take_slot(max_per_minute, now) else {
            self.results[Outcome::Dropped as usize].increment(1);
            return None;
        };
        Some(Kept {
            request_line: request_line(),
            request: Arc::default(),
            response: None,
            slot: Slot {
                queue: self.clone(),
                minute,
                sent: false,
            },
        })
    }

    /// Where a sampled body's text is kept: `bytes` at most, counted against the body budget;
    /// `None` for a body with no text to read (binary, compressed).
    pub(crate) fn text(&self, headers: &http::HeaderMap, bytes: usize) -> Option<TextPrefix> {
        let value = |name| headers.get(name).map(http::HeaderValue::as_bytes);
        let (ct, ce) = (
            value(http::header::CONTENT_TYPE),
            value(http::header::CONTENT_ENCODING),
        );
        TextPrefix::new(ct, ce, bytes, &self.budget)
    }

    /// Offers a finished sample to the judge: dropped (and counted) with the queue full, or
    /// when some text was lost whole (the request's upload never ended, or the budget had no
    /// room for a text at all). An answer with no text is no sample. Never waits.
    pub(crate) fn offer(&self, kept: Kept, verdicts: &Arc<JudgeVerdicts>) {
        let Kept {
            request_line: mut request,
            request: body,
            response,
            mut slot,
        } = kept;
        let Some(response) = response else {
            return;
        };
        let (response, r2, response_cut) = response.finish();
        let dropped = || self.results[Outcome::Dropped as usize].increment(1);
        if response.is_empty() {
            if response_cut {
                dropped();
            }
            return;
        }
        let Some((body, r1, request_cut)) = body.take() else {
            return dropped();
        };
        if body.is_empty() && request_cut {
            return dropped();
        }
        if !body.is_empty() {
            request.push('\n');
            request.push_str(&String::from_utf8_lossy(&body));
        }
        let sample = Sample {
            request,
            request_cut,
            response,
            response_cut,
            verdicts: verdicts.clone(),
            _held: [r1, r2],
        };
        // Not sent: the slot goes back with it.
        match self.tx.try_send(sample) {
            Ok(()) => slot.sent = true,
            Err(_) => dropped(),
        }
    }

    /// Takes a place in the current minute (a fixed minute from its first sample): the minute's
    /// start, or `None` when its `max` are taken.
    fn take_slot(&self, max: u32, now: Instant) -> Option<Instant> {
        let mut minute = self.minute.lock().ok()?;
        if now.duration_since(minute.0) >= Duration::from_secs(60) {
            *minute = (now, 0);
        }
        if minute.1 >= max {
            return None;
        }
        minute.1 += 1;
        Some(minute.0)
    }
}

/// What became of one judge call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graded {
    /// The judge's verdict: correct or not.
    Verdict(bool),
    /// The judge answered, with no verdict to read.
    Unreadable,
    /// The call failed: an error status, a broken connection, past `timeout`.
    Failed,
    /// The body budget had no room for the call.
    Dropped,
}

/// What the judge asks, read from the current config for each sample (a reload changes the
/// model, the rubric or the upstream for the next one).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) config: JudgeConfig,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) upstream_config: UpstreamConfig,
}

/// Reads the current target: `None` while the config has no judge.
pub(crate) type TargetFn = Box<dyn Fn() -> Option<Target> + Send>;

/// Starts the judge thread; it ends when every sender of the queue is gone (the sidecar's
/// `Shared` and its listeners hold them, and go with the sidecar; `target` must reach the state
/// weakly, or it would keep the thread alive).
pub(crate) fn spawn(inbox: Inbox, target: TargetFn) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sloguard-judge".into())
        .spawn(move || {
            crate::telemetry::otlp::lower_priority("judge");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(run(inbox, target)),
                Err(e) => tracing::error!(error = %e, "judge: cannot start its runtime"),
            }
        })
        .map(|_| ())
}

/// Takes samples off the queue, `IN_FLIGHT` judged at a time.
async fn run(mut inbox: Inbox, target: TargetFn) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut pool: Option<(Arc<Upstream>, Arc<crate::upstream::ConnectionPool>)> = None;
    while let Some(sample) = inbox.rx.recv().await {
        let Some(target) = target() else {
            inbox.results[Outcome::Dropped as usize].increment(1);
            continue;
        };
        let current = match &pool {
            Some((u, p)) if Arc::ptr_eq(u, &target.upstream) => p.clone(),
            _ => {
                let name = &target.config.upstream;
                match crate::upstream::private_pool(name, &target.upstream_config) {
                    Ok(p) => {
                        let p = Arc::new(p);
                        pool = Some((target.upstream.clone(), p.clone()));
                        p
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "judge: cannot reach its upstream");
                        inbox.results[Outcome::Failed as usize].increment(1);
                        continue;
                    }
                }
            }
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let results = inbox.results.clone();
        let budget = inbox.budget.clone();
        tokio::spawn(async move {
            let verdicts = sample.verdicts.clone();
            let result = match call::judge(&target, &current, sample, &budget).await {
                Graded::Verdict(correct) => {
                    match correct {
                        true => verdicts.correct.increment(1),
                        false => verdicts.incorrect.increment(1),
                    }
                    Outcome::Judged
                }
                Graded::Unreadable => Outcome::Unreadable,
                Graded::Failed => Outcome::Failed,
                Graded::Dropped => Outcome::Dropped,
            };
            results[result as usize].increment(1);
            drop(permit);
        });
    }
}
