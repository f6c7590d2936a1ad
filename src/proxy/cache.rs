//! A route's last-resort cache: successful non-streamed responses, kept by method, path and a
//! hash of the request body, served only when every upstream of the route is open or has failed
//! for the request. Bounded by entries (TinyUFO: TinyLFU admission, S3-FIFO eviction) and by
//! age (`ttl`, checked on read); each entry's body by [`MAX_CACHED_BODY`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tinyufo::TinyUfo;
use tokio::time::Instant;
use xxhash_rust::xxh3::Xxh3;

use crate::inspect::Collected;

/// A response body larger than this is not cached: with `max_entries` this bounds the cache's
/// memory (1,000 entries: at most 256 MiB; LLM JSON answers are typically a few KiB).
pub const MAX_CACHED_BODY: usize = 256 * 1024;

/// A request's identity in the cache: 128 bits of a seeded XXH3 over method, path and query,
/// and body (the same whatever the body's chunking). The cache map hashes it again to place it;
/// the whole 128 bits are compared on a hit, so two requests can share an entry only by a
/// collision of a hash seeded anew in each process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u128);

/// Hashes a request's key, its body fed chunk by chunk.
pub struct KeyHasher(Xxh3);

impl KeyHasher {
    pub fn new(seed: u64, method: &Method, path_and_query: &str) -> KeyHasher {
        let mut h = Xxh3::with_seed(seed);
        // Lengths first, so that the fields' boundaries are part of what is hashed.
        h.update(&(method.as_str().len() as u64).to_le_bytes());
        h.update(method.as_str().as_bytes());
        h.update(&(path_and_query.len() as u64).to_le_bytes());
        h.update(path_and_query.as_bytes());
        KeyHasher(h)
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(&self) -> CacheKey {
        CacheKey(self.0.digest128())
    }
}

#[derive(Clone)]
struct Entry {
    key: CacheKey,
    stored: Instant,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A response served from the cache.
pub struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct ResponseCache {
    entries: TinyUfo<CacheKey, Entry>,
    ttl: Duration,
    /// Seeds [`KeyHasher`]: chosen per process, so keys cannot be aimed at each other.
    pub seed: u64,
}

impl ResponseCache {
    pub fn new(max_entries: usize, ttl: Duration) -> ResponseCache {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5106_u64);
        ResponseCache {
            entries: TinyUfo::new(max_entries, max_entries),
            ttl,
            seed,
        }
    }

    pub fn get(&self, key: CacheKey, now: Instant) -> Option<Cached> {
        let entry = self.entries.get(&key)?;
        if entry.key != key {
            return None;
        }
        if now.saturating_duration_since(entry.stored) > self.ttl {
            self.entries.remove(&key);
            return None;
        }
        Some(Cached {
            status: entry.status,
            headers: entry.headers,
            body: entry.body,
        })
    }

    fn put(&self, entry: Entry) {
        // Every entry weighs 1: the limit is `max_entries`.
        self.entries.put(entry.key, entry, 1);
    }
}

/// A response on its way to the client, kept to be cached if it ends cleanly.
pub struct CacheFill {
    key: CacheKey,
    status: StatusCode,
    headers: HeaderMap,
    body: Collected,
}

impl CacheFill {
    /// `None` when the response is not to be cached: not a success, a stream (an event stream
    /// replayed later would replay stale events as if live), or marked `Cache-Control: no-store`
    /// by the upstream.
    pub fn new(key: CacheKey, status: StatusCode, headers: &HeaderMap) -> Option<CacheFill> {
        let streamed = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let no_store = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
                })
            });
        (status.is_success() && !streamed && !no_store).then(|| CacheFill {
            key,
            status,
            headers: headers.clone(),
            body: Collected::with_limit(MAX_CACHED_BODY),
        })
    }

    /// Keeps a chunk; `false` when the body has grown past [`MAX_CACHED_BODY`].
    pub fn push(&mut self, chunk: &Bytes) -> bool {
        self.body.push(chunk)
    }

    /// The response ended cleanly: into the cache.
    pub fn store(self, cache: &ResponseCache, now: Instant) {
        cache.put(Entry {
            key: self.key,
            stored: now,
            status: self.status,
            headers: self.headers,
            body: self.body.into_bytes(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_does_not_depend_on_chunking() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let key = |splits: &[usize]| {
            let mut h = KeyHasher::new(7, &Method::POST, "/v1/chat/completions");
            let mut at = 0;
            for &s in splits.iter().chain([body.len()].iter()) {
                h.update(&body[at..s]);
                at = s;
            }
            h.finish()
        };
        assert_eq!(key(&[]), key(&[1, 2, 4095, 4096, 9999]));
        let other = KeyHasher::new(7, &Method::POST, "/v1/chat/completionsx").finish();
        assert_ne!(key(&[]), other);
        // Field boundaries count: "POST" + "/a" is not "POS" + "T/a".
        let a = KeyHasher::new(7, &Method::POST, "/a").finish();
        let b = KeyHasher::new(7, &Method::from_bytes(b"POS").unwrap(), "T/a").finish();
        assert_ne!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_ttl_and_streams_are_not_cached() {
        let cache = ResponseCache::new(10, Duration::from_secs(60));
        let key = KeyHasher::new(cache.seed, &Method::POST, "/x").finish();
        let mut json = HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        let mut fill = CacheFill::new(key, StatusCode::OK, &json).unwrap();
        assert!(fill.push(&Bytes::from_static(b"{\"a\":")));
        assert!(fill.push(&Bytes::from_static(b"1}")));
        fill.store(&cache, Instant::now());
        let hit = cache.get(key, Instant::now()).unwrap();
        assert_eq!(hit.body, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(hit.status, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(cache.get(key, Instant::now()).is_none());

        let mut sse = HeaderMap::new();
        sse.insert(
            http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        assert!(CacheFill::new(key, StatusCode::OK, &sse).is_none());
        assert!(CacheFill::new(key, StatusCode::INTERNAL_SERVER_ERROR, &json).is_none());
        let mut no_store = json.clone();
        no_store.insert(
            http::header::CACHE_CONTROL,
            "private, No-Store".parse().unwrap(),
        );
        assert!(CacheFill::new(key, StatusCode::OK, &no_store).is_none());
        let mut big = CacheFill::new(key, StatusCode::OK, &json).unwrap();
        assert!(!big.push(&Bytes::from(vec![0u8; MAX_CACHED_BODY + 1])));
    }
}
