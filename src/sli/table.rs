//! A bounded table of live tasks by key, kept in order of last activity: the task table of the
//! `agent` role and the loop guard's table of the `llm` role are both one.
//!
//! Keys are 64-bit hashes of task ids (the caller's, seeded per process), so memory per entry
//! is fixed whatever the id's length. The table is sharded by key; each shard is an
//! insertion-ordered map kept in order of last activity, so the stalest entry is at its front,
//! for the idle sweep and for eviction alike. Shards are locked one at a time, never two at
//! once: there is no lock order to get wrong, and no lock is held across anything but plain
//! updates of the entry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hashlink::LinkedHashMap;
use tokio::time::Instant;

/// Shards: enough that two threads rarely meet on one lock.
const SHARDS: usize = 16;

/// An entry knows when it was last active.
pub(crate) trait Entry {
    fn last(&self) -> Instant;
}

/// What the sweep does with an entry idle past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// It goes (handed to the sweep's caller).
    Remove,
    /// It stays, moved to the back (looked at again next sweep).
    Keep,
}

#[derive(Debug)]
pub(crate) struct Table<V> {
    shards: Vec<Mutex<LinkedHashMap<u64, V>>>,
    capacity: usize,
    /// Entries in all shards.
    live: AtomicUsize,
}

impl<V: Entry> Table<V> {
    /// A table of at most `capacity` entries (threads inserting at the same moment can take it
    /// an entry or two past, until entries go).
    pub(crate) fn new(capacity: usize) -> Table<V> {
        Table {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LinkedHashMap::new()))
                .collect(),
            capacity: capacity.max(1),
            live: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, LinkedHashMap<u64, V>> {
        lock(&self.shards[(key >> 59) as usize % SHARDS])
    }

    /// Updates the entry of `key` with `f(entry, false)`, or inserts `new()` updated with
    /// `f(entry, true)`; either way it becomes the most recent. Returns what `f` returned, and
    /// the entry a full table pushed out to make room.
    pub(crate) fn upsert<R>(
        &self,
        key: u64,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V, bool) -> R,
    ) -> (R, Option<V>) {
        {
            let mut shard = self.shard(key);
            if let Some(v) = shard.to_back(&key) {
                return (f(v, false), None);
            }
        }
        // Full: the stalest entry of the whole table makes room.
        let evicted = (self.live.load(Ordering::Relaxed) >= self.capacity)
            .then(|| self.evict_stalest())
            .flatten();
        let mut shard = self.shard(key);
        if let Some(v) = shard.to_back(&key) {
            // Another thread inserted it meanwhile.
            return (f(v, false), evicted);
        }
        let mut v = new();
        let r = f(&mut v, true);
        shard.insert(key, v);
        self.live.fetch_add(1, Ordering::Relaxed);
        (r, evicted)
    }

    /// Updates the entry of `key`, if there is one, making it the most recent; `f` returns what
    /// to give back and whether the entry now goes.
    pub(crate) fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> (R, bool)) -> Option<R> {
        let mut shard = self.shard(key);
        let (r, remove) = f(shard.to_back(&key)?);
        if remove {
            shard.remove(&key);
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        Some(r)
    }

    /// Removes the entry of `key`.
    pub(crate) fn remove(&self, key: u64) -> Option<V> {
        let v = self.shard(key).remove(&key)?;
        self.live.fetch_sub(1, Ordering::Relaxed);
        Some(v)
    }

    /// Pushes out the entry idle longest (the oldest of the shards' fronts).
    fn evict_stalest(&self) -> Option<V> {
        let mut oldest: Option<(usize, u64, Instant)> = None;
        for (i, shard) in self.shards.iter().enumerate() {
            if let Some((&key, v)) = lock(shard).front() {
                if oldest.is_none_or(|(_, _, last)| v.last() < last) {
                    oldest = Some((i, key, v.last()));
                }
            }
        }
        let (i, key, _) = oldest?;
        let v = lock(&self.shards[i]).remove(&key)?;
        self.live.fetch_sub(1, Ordering::Relaxed);
        Some(v)
    }

    /// Looks at every entry idle longer than `idle`: `judge` says whether it goes (handed to
    /// `removed`) or stays. Each entry is looked at once per sweep.
    pub(crate) fn sweep(
        &self,
        now: Instant,
        idle: Duration,
        judge: impl Fn(&V) -> Idle,
        mut removed: impl FnMut(V),
    ) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let mut kept = 0;
            while let Some((&key, v)) = shard.front() {
                if now.saturating_duration_since(v.last()) <= idle || kept >= shard.len() {
                    break;
                }
                if judge(v) == Idle::Keep {
                    shard.to_back(&key);
                    kept += 1;
                    continue;
                }
                if let Some((_, v)) = shard.pop_front() {
                    self.live.fetch_sub(1, Ordering::Relaxed);
                    removed(v);
                }
            }
        }
    }

    /// Entries now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A poisoned shard only means a panic elsewhere mid-update of plain numbers.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
