//! The correlation table: the inbound (`agent` role) requests in flight, by task id and by W3C
//! trace id, so that an egress call (`llm`, `peer`) finds the inbound request it is made for —
//! its deadline, its depth and path, and where to note that a dependency failed it.
//!
//! Bounded: 16 shards of at most [`SHARD_CAP`] entries each (an inbound request carrying both a
//! task id and a trace id takes two). An inbound request leaves when it is counted. Several in
//! flight under one key (one trace fanning out) are all kept: a call finds the newest. A shard
//! that is full drops its oldest eighth to make room (`sloguard_correlation_evictions_total`; one
//! scan for many inserts): the oldest requests in flight are the ones most likely stuck or given
//! up on by their clients, and their egress calls then go uncorrelated (no deadline, no
//! attribution), nothing worse.
//!
//! Keys are hashed with a per-process random seed (xxh3), so that a client cannot aim its ids at
//! one shard; a lookup compares the key's bytes too.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue};
use metrics::Counter;
use tokio::time::Instant;

use crate::telemetry::trace;

/// Shards of the table: requests on different cores rarely meet on one lock.
const SHARDS: usize = 16;
/// Keys a shard holds at most: 16,384 in all, more inbound requests than a pod has in flight.
pub(crate) const SHARD_CAP: usize = 1024;

/// An inbound request in flight, as its egress calls see it.
#[derive(Debug)]
pub(crate) struct Inbound {
    task: Option<(u64, HeaderValue)>,
    trace: Option<(u64, [u8; 16])>,
    arrived: Instant,
    /// When its time runs out (`cascade`), if it has a deadline.
    pub(crate) deadline: Option<Instant>,
    /// Its call depth, as it arrived (0 from a client that is no agent).
    pub(crate) depth: u32,
    /// Its call path, as it arrived (checked: printable ASCII, within the cap).
    pub(crate) path: Option<HeaderValue>,
    /// One of its egress calls failed after every fallback.
    dependency_failed: AtomicBool,
}

impl Inbound {
    fn hashes(&self) -> [Option<u64>; 2] {
        [self.task.as_ref().map(|t| t.0), self.trace.map(|t| t.0)]
    }

    pub(crate) fn note_dependency_failed(&self) {
        self.dependency_failed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn dependency_failed(&self) -> bool {
        self.dependency_failed.load(Ordering::Relaxed)
    }
}

/// The keys a request carries: its task id and its trace id, hashed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Keys<'a> {
    /// The hash of the trimmed id, and the header it is in.
    task: Option<(u64, &'a HeaderValue)>,
    trace: Option<(u64, [u8; 16])>,
}

impl Keys<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.task.is_none() && self.trace.is_none()
    }
}

/// The table (see the module's documentation).
#[derive(Debug)]
pub struct Correlations {
    seed: u64,
    shards: [Mutex<Shard>; SHARDS],
    evictions: Counter,
}

/// One shard: per key, the requests in flight that carry it, oldest first.
#[derive(Debug, Default)]
struct Shard {
    by_key: HashMap<u64, Requests, BuildHasherDefault<Prehashed>>,
    /// Entries in all the lists.
    entries: usize,
}

/// The requests in flight under one key: almost always one, which needs no list of its own.
#[derive(Debug)]
enum Requests {
    One(Arc<Inbound>),
    Many(Vec<Arc<Inbound>>),
}

impl Requests {
    fn all(&self) -> &[Arc<Inbound>] {
        match self {
            Requests::One(i) => std::slice::from_ref(i),
            Requests::Many(list) => list,
        }
    }

    /// Keeps the requests `keep` says; `false` when none is left.
    fn retain(&mut self, mut keep: impl FnMut(&Arc<Inbound>) -> bool) -> bool {
        match self {
            Requests::One(i) => keep(i),
            Requests::Many(list) => {
                list.retain(|i| keep(i));
                !list.is_empty()
            }
        }
    }
}

impl Shard {
    fn insert(&mut self, hash: u64, inbound: Arc<Inbound>) {
        use std::collections::hash_map::Entry;
        match self.by_key.entry(hash) {
            Entry::Vacant(v) => {
                v.insert(Requests::One(inbound));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Requests::Many(list) => list.push(inbound),
                one @ Requests::One(_) => {
                    let first = one.all()[0].clone();
                    *one = Requests::Many(vec![first, inbound]);
                }
            },
        }
        self.entries += 1;
    }

    fn remove(&mut self, hash: u64, inbound: &Arc<Inbound>) -> bool {
        let Some(requests) = self.by_key.get_mut(&hash) else {
            return false;
        };
        let mut found = false;
        let left = requests.retain(|i| {
            let this = !found && Arc::ptr_eq(i, inbound);
            found |= this;
            !this
        });
        if !left {
            self.by_key.remove(&hash);
        }
        self.entries -= usize::from(found);
        found
    }

    /// Makes room: the oldest eighth of the entries go (one scan for many inserts).
    fn evict_oldest(&mut self) -> usize {
        let mut arrivals: Vec<Instant> = self
            .by_key
            .values()
            .flat_map(Requests::all)
            .map(|i| i.arrived)
            .collect();
        let n = (SHARD_CAP / 8).max(1).min(arrivals.len());
        if n == 0 {
            return 0;
        }
        let (_, cutoff, _) = arrivals.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        // Everything older than the cutoff goes, and as many arriving at it as make up `n`.
        let mut ties = n - arrivals.iter().filter(|a| **a < cutoff).count();
        let mut evicted = 0;
        self.by_key.retain(|_, requests| {
            requests.retain(|i| {
                let go = i.arrived < cutoff || (i.arrived == cutoff && ties > 0);
                if go && i.arrived == cutoff {
                    ties -= 1;
                }
                evicted += usize::from(go);
                !go
            })
        });
        self.entries -= evicted;
        evicted
    }

    /// The newest request under `hash` that `same` accepts.
    fn newest(&self, hash: u64, same: impl Fn(&Inbound) -> bool) -> Option<Arc<Inbound>> {
        let requests = self.by_key.get(&hash)?;
        requests.all().iter().rev().find(|i| same(i)).cloned()
    }
}

impl Correlations {
    pub fn new(evictions: Counter) -> Correlations {
        Correlations {
            seed: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0u8,
            ),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            evictions,
        }
    }

    /// The keys of a request: the value of `id_header` (trimmed, not empty), and `trace`, its
    /// trace id (see [`trace_id_of`]).
    pub(crate) fn keys<'a>(
        &self,
        headers: &'a HeaderMap,
        id_header: &http::HeaderName,
        trace: Option<[u8; 16]>,
    ) -> Keys<'a> {
        let task = headers
            .get(id_header)
            .filter(|v| !task_id(v).is_empty())
            .map(|v| (self.hash(0, task_id(v)), v));
        let trace = trace.map(|id| (self.hash(1, &id), id));
        Keys { task, trace }
    }

    fn hash(&self, kind: u64, bytes: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seed ^ kind)
    }

    /// The shard of a key: by middle bits of its hash (the map inside uses the top ones).
    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters an inbound request under its keys (none: it is not entered).
    pub(crate) fn enter(
        &self,
        keys: Keys<'_>,
        arrived: Instant,
        deadline: Option<Instant>,
        depth: u32,
        path: Option<HeaderValue>,
    ) -> Option<Arc<Inbound>> {
        if keys.is_empty() {
            return None;
        }
        let inbound = Arc::new(Inbound {
            // A reference count of the request's own header, not a copy.
            task: keys.task.map(|(h, v)| (h, v.clone())),
            trace: keys.trace,
            arrived,
            deadline,
            depth,
            path,
            dependency_failed: AtomicBool::new(false),
        });
        for hash in inbound.hashes().into_iter().flatten() {
            let mut shard = self.shard(hash);
            if shard.entries >= SHARD_CAP {
                let evicted = shard.evict_oldest();
                self.evictions.increment(evicted as u64);
            }
            shard.insert(hash, inbound.clone());
        }
        Some(inbound)
    }

    /// Takes an inbound request out (if an eviction has not already).
    pub(crate) fn leave(&self, inbound: &Arc<Inbound>) {
        for hash in inbound.hashes().into_iter().flatten() {
            self.shard(hash).remove(hash, inbound);
        }
    }

    /// The inbound request in flight that an egress call with these keys is made for: the
    /// newest of its task, else the newest of its trace.
    pub(crate) fn find(&self, keys: Keys<'_>) -> Option<Arc<Inbound>> {
        if let Some((hash, id)) = keys.task {
            let id = task_id(id);
            let same = |i: &Inbound| i.task.as_ref().is_some_and(|(_, v)| task_id(v) == id);
            if let Some(inbound) = self.shard(hash).newest(hash, same) {
                return Some(inbound);
            }
        }
        let (hash, id) = keys.trace?;
        let same = |i: &Inbound| i.trace.is_some_and(|(_, t)| t == id);
        self.shard(hash).newest(hash, same)
    }

    /// Entries now (an inbound request has one per key).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.entries))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The trace id a request carries: of its one well-formed `traceparent` (W3C Trace Context;
/// not all zeros), as the tracer reads it.
pub(crate) fn trace_id_of(headers: &HeaderMap) -> Option<[u8; 16]> {
    let mut all = headers.get_all(&trace::TRACEPARENT).iter();
    let one = all.next().filter(|_| all.next().is_none())?;
    trace::parse_traceparent(one.as_bytes()).map(|p| p.trace_id.to_bytes())
}

/// A task id as it is compared: the header's value, trimmed.
fn task_id(v: &HeaderValue) -> &[u8] {
    v.as_bytes().trim_ascii()
}

/// The map's keys are hashes already.
#[derive(Debug, Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(task: Option<&str>, trace: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = task {
            h.insert("x-agent-task-id", t.parse().unwrap());
        }
        if let Some(t) = trace {
            h.insert("traceparent", t.parse().unwrap());
        }
        h
    }

    const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const OTHER_TRACE: &str = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn id() -> http::HeaderName {
        http::HeaderName::from_static("x-agent-task-id")
    }

    fn keys<'a>(t: &Correlations, h: &'a HeaderMap) -> Keys<'a> {
        t.keys(h, &id(), trace_id_of(h))
    }

    #[test]
    fn an_egress_call_finds_its_inbound_by_task_else_by_trace() {
        let t = Correlations::new(Counter::noop());
        let now = Instant::now();
        let both = headers(Some("task-1"), Some(TRACE));
        let inbound = t.enter(keys(&t, &both), now, None, 2, None).unwrap();
        let by_task = headers(Some("task-1"), None);
        assert!(Arc::ptr_eq(&t.find(keys(&t, &by_task)).unwrap(), &inbound));
        let by_trace = headers(None, Some(TRACE));
        assert!(Arc::ptr_eq(&t.find(keys(&t, &by_trace)).unwrap(), &inbound));
        // Another task's id, with the same trace: the trace still finds it.
        let other_task = headers(Some("task-2"), Some(TRACE));
        assert!(t.find(keys(&t, &other_task)).is_some());
        assert!(t
            .find(keys(&t, &headers(Some("task-2"), Some(OTHER_TRACE))))
            .is_none());
        assert_eq!(t.len(), 2);
        t.leave(&inbound);
        assert!(t.is_empty());
        assert!(t.find(keys(&t, &by_task)).is_none());
    }

    #[test]
    fn malformed_or_empty_keys_enter_nothing() {
        let t = Correlations::new(Counter::noop());
        for trace in [
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7",
            "",
        ] {
            let h = headers(Some("  "), Some(trace).filter(|t| !t.is_empty()));
            assert!(keys(&t, &h).is_empty(), "{trace}");
        }
        assert!(t
            .enter(Keys::default(), Instant::now(), None, 0, None)
            .is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn requests_of_one_trace_are_all_kept_and_a_call_finds_the_newest_in_flight() {
        let t = Correlations::new(Counter::noop());
        let h = headers(None, Some(TRACE));
        let now = Instant::now();
        let older = t.enter(keys(&t, &h), now, None, 0, None).unwrap();
        let newer = t.enter(keys(&t, &h), now, None, 1, None).unwrap();
        assert!(Arc::ptr_eq(&t.find(keys(&t, &h)).unwrap(), &newer));
        // The newest ends first: the older, still in flight, is found again.
        t.leave(&newer);
        assert!(Arc::ptr_eq(&t.find(keys(&t, &h)).unwrap(), &older));
        t.leave(&older);
        assert!(t.is_empty());
        assert!(t.find(keys(&t, &h)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_every_older_entry_before_any_of_the_newest_age() {
        let mut shard = Shard::default();
        let entry = |arrived| {
            Arc::new(Inbound {
                task: None,
                trace: None,
                arrived,
                deadline: None,
                depth: 0,
                path: None,
                dependency_failed: AtomicBool::new(false),
            })
        };
        // Many of one age first in the map, then a few older ones: the older go, whatever order
        // the map keeps them in.
        let start = Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let young = Instant::now();
        for key in 0..SHARD_CAP as u64 {
            shard.insert(key, entry(young));
        }
        let old: Vec<_> = (0..3).map(|_| entry(start)).collect();
        for (i, o) in old.iter().enumerate() {
            shard.insert(10_000 + i as u64, o.clone());
        }
        let evicted = shard.evict_oldest();
        assert_eq!(evicted, SHARD_CAP / 8);
        assert_eq!(shard.entries, SHARD_CAP + 3 - SHARD_CAP / 8);
        for (i, o) in old.iter().enumerate() {
            assert!(
                !shard.remove(10_000 + i as u64, o),
                "an older entry was kept"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_drops_its_oldest_and_never_grows_past_its_cap() {
        let t = Correlations::new(Counter::noop());
        let first = headers(Some("task-first"), None);
        let kept = t
            .enter(keys(&t, &first), Instant::now(), None, 0, None)
            .unwrap();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let mut all = Vec::new();
        for n in 0..SHARDS * SHARD_CAP * 2 {
            let h = headers(Some(&format!("task-{n}")), None);
            all.push(
                t.enter(keys(&t, &h), Instant::now(), None, 0, None)
                    .unwrap(),
            );
        }
        assert!(t.len() <= SHARDS * SHARD_CAP, "{}", t.len());
        assert!(t.find(keys(&t, &first)).is_none(), "the oldest went first");
        let last = headers(Some(&format!("task-{}", SHARDS * SHARD_CAP * 2 - 1)), None);
        assert!(t.find(keys(&t, &last)).is_some(), "the newest is in");
        t.leave(&kept);
        for i in &all {
            t.leave(i);
        }
        assert!(t.is_empty());
    }
}
