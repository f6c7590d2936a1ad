//! A route's last-resort cache: successful non-streamed responses, kept by method, path and a
//! hash of the request body, served only when every upstream of the route is open or has failed
//! for the request. Bounded by entries (TinyUFO: TinyLFU admission, S3-FIFO eviction) and by
//! age (`ttl`, checked on read); each entry's body by [`MAX_CACHED_BODY`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use tinyufo::TinyUfo;
use tokio::time::Instant;
use xxhash_rust::xxh3::Xxh3;

use crate::inspect::Collected;

/// A response body larger than this is not cached: with `max_entries` this bounds the cache's
/// memory (1,000 entries: at most 256 MiB; LLM JSON answers are typically a few KiB).
pub(crate) const MAX_CACHED_BODY: usize = 256 * 1024;

/// A request's identity in the cache: 128 bits of a seeded XXH3 over method, path and query,
/// the request headers that decide whose answer it is and what it looks like
/// ([`KEYED_HEADERS`]), and body (the same whatever the body's chunking). The cache map hashes it again to place it;
/// the whole 128 bits are compared on a hit, so two requests can share an entry only by a
/// collision of a hash seeded anew in each process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(u128);

/// Hashes a request's key, its body fed chunk by chunk.
pub(crate) struct KeyHasher(Xxh3);

/// Request headers that are part of the key: whose request it is (keys, cookies; on the `llm`
/// role the sidecar's own key is injected later, so these are the client's), and what may
/// change the answer (API versions and betas, content negotiation).
pub(crate) static KEYED_HEADERS: [HeaderName; 11] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    http::header::COOKIE,
    http::header::ACCEPT,
    http::header::ACCEPT_ENCODING,
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
];

/// The key hasher of a request, its body still to be fed.
pub(crate) fn cache_key_hasher(
    seed: u64,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> KeyHasher {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut h = KeyHasher::new(seed, method, pq);
    for (i, name) in KEYED_HEADERS.iter().enumerate() {
        for value in headers.get_all(name) {
            h.field(&(i as u64).to_le_bytes());
            h.field(value.as_bytes());
        }
    }
    // The end of the headers: no body can pass for a header.
    h.field(b"");
    h
}

impl KeyHasher {
    pub(crate) fn new(seed: u64, method: &Method, path_and_query: &str) -> KeyHasher {
        let mut h = Xxh3::with_seed(seed);
        // Lengths first, so that the fields' boundaries are part of what is hashed.
        h.update(&(method.as_str().len() as u64).to_le_bytes());
        h.update(method.as_str().as_bytes());
        h.update(&(path_and_query.len() as u64).to_le_bytes());
        h.update(path_and_query.as_bytes());
        KeyHasher(h)
    }

    /// A field of the key, with its length: its boundary is part of what is hashed.
    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub(crate) fn finish(&self) -> CacheKey {
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

/// The status and sizes only: an entry is someone's answer.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .finish()
    }
}

pub struct ResponseCache {
    entries: TinyUfo<CacheKey, Entry>,
    ttl: Duration,
    /// Seeds [`KeyHasher`]: chosen per process, so keys cannot be aimed at each other.
    pub seed: u64,
}

/// The cache's settings; its entries are request bodies' answers, not for a log.
impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
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
pub(crate) struct CacheFill {
    key: CacheKey,
    status: StatusCode,
    headers: HeaderMap,
    body: Collected,
}

/// The status and sizes only: what is kept is someone's answer.
impl std::fmt::Debug for CacheFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFill")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl CacheFill {
    /// `None` when the response is not to be cached: not a 200 (a partial or empty answer is no
    /// answer to replay), a stream (an event stream replayed later would replay stale events as
    /// if live), one the upstream marked `Cache-Control: no-store` or `private`, one that sets a
    /// cookie, or one that varies on anything (`Vary`: the key cannot tell what it varies on).
    pub(crate) fn new(
        key: CacheKey,
        status: StatusCode,
        headers: &HeaderMap,
        budget: &crate::budget::BodyBudget,
    ) -> Option<CacheFill> {
        use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE, VARY};
        let streamed = headers.get(CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes().trim_ascii_start();
            v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
        });
        let forbidden = headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|d| {
                    let d = d.trim();
                    d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
                })
            })
        });
        let personal = headers.contains_key(SET_COOKIE) || headers.contains_key(VARY);
        (status == StatusCode::OK && !streamed && !forbidden && !personal).then(|| CacheFill {
            key,
            status,
            headers: headers.clone(),
            // Past the budget: not cached (as past its size).
            body: Collected::with_limit(MAX_CACHED_BODY)
                .reserve_from(budget.reserve(crate::budget::Held::Cache)),
        })
    }

    /// Keeps a chunk; `false` when the body has grown past [`MAX_CACHED_BODY`].
    pub(crate) fn push(&mut self, chunk: &Bytes) -> bool {
        self.body.push(chunk)
    }

    /// The response ended cleanly: into the cache.
    pub(crate) fn store(self, cache: &ResponseCache, now: Instant) {
        cache.put(Entry {
            key: self.key,
            stored: now,
            status: self.status,
            headers: self.headers,
            // A copy of its own: an entry must not pin the network buffers its chunks are
            // slices of (its memory is then its size).
            body: self.body.into_copied(),
        });
    }
}

/// What of the request's response is kept for the route's cache: nothing, or a fill until the
/// response ends cleanly (or turns out not to be worth keeping).
#[derive(Debug, Default)]
pub(super) struct CacheState(Option<Box<CacheFill>>);

impl CacheState {
    /// The response head arrived, for a request the cache keys as `key` (on a route with a
    /// cache): kept as it passes if it is worth keeping.
    pub(super) fn head(
        &mut self,
        key: Option<CacheKey>,
        status: StatusCode,
        headers: &HeaderMap,
        budget: &crate::budget::BodyBudget,
    ) {
        if let Some(key) = key {
            self.0 = CacheFill::new(key, status, headers, budget).map(Box::new);
        }
    }

    pub(super) fn data(&mut self, data: &Bytes) {
        if self.0.as_mut().is_some_and(|f| !f.push(data)) {
            self.0 = None;
        }
    }

    /// What was kept is no answer to replay (the sidecar answered instead, the stream was
    /// blocked or broke off).
    pub(super) fn discard(&mut self) {
        self.0 = None;
    }

    /// The request is counted: a response that ended cleanly, and said no error, goes in.
    pub(super) fn end(&mut self, cache: Option<&ResponseCache>, clean: bool, now: Instant) {
        if let (Some(fill), Some(cache), true) = (self.0.take(), cache, clean) {
            fill.store(cache, now);
        }
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

    #[test]
    fn whose_request_it_is_is_part_of_the_key() {
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        let key = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let mut h = cache_key_hasher(7, &Method::POST, &uri, &headers);
            h.update(b"{}");
            h.finish()
        };
        let a = key(&[("authorization", "Bearer a")]);
        assert_ne!(a, key(&[("authorization", "Bearer b")]));
        assert_ne!(a, key(&[]));
        assert_ne!(key(&[("cookie", "s=1")]), key(&[("cookie", "s=2")]));
        assert_ne!(key(&[("accept-encoding", "gzip")]), key(&[]));
        // Headers that do not change the answer do not split the cache.
        assert_eq!(
            a,
            key(&[("authorization", "Bearer a"), ("x-request-id", "42")])
        );
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
        let mut fill = CacheFill::new(
            key,
            StatusCode::OK,
            &json,
            &crate::budget::BodyBudget::unlimited(),
        )
        .unwrap();
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
        assert!(CacheFill::new(
            key,
            StatusCode::OK,
            &sse,
            &crate::budget::BodyBudget::unlimited()
        )
        .is_none());
        assert!(CacheFill::new(
            key,
            StatusCode::INTERNAL_SERVER_ERROR,
            &json,
            &crate::budget::BodyBudget::unlimited()
        )
        .is_none());
        for (name, value) in [
            (http::header::CACHE_CONTROL, "max-age=0, No-Store"),
            (http::header::CACHE_CONTROL, "Private"),
            (http::header::SET_COOKIE, "session=1"),
            (http::header::VARY, "accept-language"),
        ] {
            let mut personal = json.clone();
            personal.insert(name, value.parse().unwrap());
            assert!(
                CacheFill::new(
                    key,
                    StatusCode::OK,
                    &personal,
                    &crate::budget::BodyBudget::unlimited()
                )
                .is_none(),
                "{value}"
            );
        }
        assert!(CacheFill::new(
            key,
            StatusCode::PARTIAL_CONTENT,
            &json,
            &crate::budget::BodyBudget::unlimited()
        )
        .is_none());
        assert!(CacheFill::new(
            key,
            StatusCode::NO_CONTENT,
            &json,
            &crate::budget::BodyBudget::unlimited()
        )
        .is_none());
        let mut big = CacheFill::new(
            key,
            StatusCode::OK,
            &json,
            &crate::budget::BodyBudget::unlimited(),
        )
        .unwrap();
        assert!(!big.push(&Bytes::from(vec![0u8; MAX_CACHED_BODY + 1])));
    }
}
