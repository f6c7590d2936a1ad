//! The client's request body as a route's attempts use it: streamed once, or read ahead (within
//! `max_replay_body`, or [`crate::inspect::MAX_INSPECTED_BODY`] for a model rewrite) so that each attempt gets
//! the same bytes — each upstream's own model rewrite applied to them — and so that the cache
//! can key the request by its body.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::cache::{CacheKey, KeyHasher};
use super::error::ProxyError;
use crate::budget::{Held, Reservation};
use crate::client_body::ClientBody;
use crate::inspect::{parse_request, rewrite::rewrite_model, Collected, Format, Unparsed};
use crate::upstream::{RequestBody, Upload};

/// The request body, for however many attempts the route makes.
pub(crate) enum Payload {
    /// Goes to one upstream as it arrives: `prefix` (read ahead, when the body turned out too
    /// large to keep), then the rest from the client. `None` once an attempt took it.
    Stream(Option<(VecDeque<Bytes>, Option<ClientBody>)>),
    /// Read whole: every attempt sends these bytes.
    Whole(Whole),
}

pub(crate) struct Whole {
    chunks: Arc<[Bytes]>,
    /// Counts the chunks against the body budget for as long as the request keeps them.
    _reservation: Reservation,
    len: usize,
    /// The body in one piece, made the first time a model rewrite needs it.
    contiguous: Option<Bytes>,
    /// The cache's key for the request, on a route with a cache.
    pub key: Option<CacheKey>,
}

/// The chunks of every empty body: shared, so that a request without a body (a `GET`) costs no
/// allocation to keep for replay.
static NO_CHUNKS: std::sync::LazyLock<Arc<[Bytes]>> = std::sync::LazyLock::new(|| Arc::from([]));

impl Payload {
    pub(crate) fn streamed(body: ClientBody) -> Payload {
        Payload::Stream(Some((VecDeque::new(), Some(body))))
    }

    /// A request without a body: nothing to read ahead.
    pub(crate) fn empty() -> Payload {
        Payload::Whole(Whole {
            chunks: NO_CHUNKS.clone(),
            _reservation: Reservation::unbounded(Held::Replay),
            len: 0,
            contiguous: None,
            key: None,
        })
    }

    /// Keys a whole body for the cache: `hasher` holds the method, path and query. (Done here,
    /// after the read, so that the hasher's state is never part of a future held across an
    /// await.)
    pub(crate) fn set_key(&mut self, mut hasher: KeyHasher) {
        if let Payload::Whole(w) = self {
            w.chunks.iter().for_each(|c| hasher.update(c));
            w.key = Some(hasher.finish());
        }
    }

    /// Whether a failed attempt can be followed by another: the body is whole and within `limit`.
    pub(crate) fn replayable(&self, limit: usize) -> bool {
        matches!(self, Payload::Whole(w) if w.len <= limit)
    }

    pub(crate) fn cache_key(&self) -> Option<CacheKey> {
        match self {
            Payload::Whole(w) => w.key,
            Payload::Stream(_) => None,
        }
    }

    /// The body for one attempt, with `format` the LLM operation the upstream speaks and `model`
    /// the model it rewrites requests to. `headers` are the attempt's own (a rewrite changes
    /// their `content-length`). `None` when the body was already streamed to an earlier attempt.
    pub(crate) fn body_for(
        &mut self,
        headers: &mut HeaderMap,
        format: Option<Format>,
        model: Option<&str>,
        received: Instant,
    ) -> Option<(RequestBody, Option<Arc<Upload>>)> {
        let encoded = format.is_some()
            && headers
                .get(CONTENT_ENCODING)
                .is_some_and(|e| e.as_bytes() != b"identity");
        match self {
            Payload::Stream(parts) => {
                let (prefix, rest) = parts.take()?;
                Some(match (prefix.is_empty(), rest) {
                    (true, Some(rest)) => {
                        super::llm::streamed_body(rest, headers, format, received)
                    }
                    (_, rest) => {
                        // Read ahead for a model rewrite and found too large to change (or a
                        // prefix kept for replay and found too large to keep): passed on as is.
                        let facts = match (format, model) {
                            (Some(_), _) if encoded => Some(Err(Unparsed::RequestContentEncoding)),
                            (Some(_), Some(_)) => Some(Err(Unparsed::RequestTooLarge)),
                            _ => None,
                        };
                        RequestBody::buffered(prefix, rest, received, facts, format)
                    }
                })
            }
            Payload::Whole(whole) => {
                let facts = match (format, model) {
                    (Some(_), _) if encoded => Some(Err(Unparsed::RequestContentEncoding)),
                    (Some(format), Some(model)) => {
                        let bytes = whole.contiguous();
                        match rewrite_model(&bytes, model) {
                            Ok(rewritten) => {
                                let facts = parse_request(format, &rewritten);
                                headers.insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                                let chunks = Arc::from([Bytes::from(rewritten)]);
                                return Some(RequestBody::replay(
                                    chunks,
                                    received,
                                    Some(facts),
                                    None,
                                ));
                            }
                            Err(why) => Some(Err(why)),
                        }
                    }
                    _ => None,
                };
                // One reference count: a replay copies nothing.
                Some(RequestBody::replay(
                    whole.chunks.clone(),
                    received,
                    facts,
                    format,
                ))
            }
        }
    }
}

impl Payload {
    /// The body read whole, in one piece (`None`: it is streamed, too large to keep).
    pub(crate) fn whole_bytes(&mut self) -> Option<Bytes> {
        match self {
            Payload::Whole(w) if w.chunks.len() == 1 => Some(w.chunks[0].clone()),
            Payload::Whole(w) => Some(w.contiguous()),
            Payload::Stream(_) => None,
        }
    }
}

impl Whole {
    fn contiguous(&mut self) -> Bytes {
        if self.contiguous.is_none() {
            let mut all = Collected::with_limit(usize::MAX);
            self.chunks.iter().for_each(|c| {
                all.push(c);
            });
            self.contiguous = Some(all.into_bytes());
        }
        self.contiguous.clone().unwrap_or_default()
    }
}

/// Reads the body ahead, up to `limit` bytes, counted against `reservation`'s budget. A body
/// that declares (or turns out) larger goes on as a stream, with what was read before it. The
/// client's pauses are bounded by `idle`, the whole read by `deadline`; a budget with no room
/// left refuses the request (503 `overloaded`). Also returns when the last chunk read ahead
/// arrived (the sidecar's overhead does not count the wait for it).
pub(crate) async fn read_ahead(
    mut body: ClientBody,
    limit: usize,
    idle: std::time::Duration,
    deadline: Instant,
    reservation: Reservation,
) -> Result<(Payload, Instant), ProxyError> {
    // The declared length (hyper's hint is the `Content-Length`): no need to read to find out.
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Ok((Payload::streamed(body), Instant::now()));
    }
    let mut kept = Collected::with_limit(limit).reserve_from(reservation);
    if let Some(declared) = http_body::Body::size_hint(&body).exact() {
        if !kept.reserve_ahead(declared as usize) {
            return Err(ProxyError::Overloaded);
        }
    }
    // A chunk past the limit: the body goes on as a stream, this chunk after what was kept.
    let mut overflow = None;
    while !http_body::Body::is_end_stream(&body) {
        let next = (Instant::now() + idle).min(deadline);
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Err(_) => return Err(ProxyError::ClientStalled),
            Ok(None) => break,
            Ok(Some(Err(source))) => {
                return Err(ProxyError::ClientBody {
                    source: Box::new(source),
                })
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers of a request read ahead are dropped: replayed bodies carry data only.
        if let Ok(data) = frame.into_data() {
            if !kept.push(&data) {
                if kept.starved() {
                    return Err(ProxyError::Overloaded);
                }
                overflow = Some(data);
                break;
            }
        }
    }
    let last_chunk = Instant::now();
    let len = kept.len();
    let (mut chunks, reservation) = kept.into_reserved_chunks();
    if let Some(next) = overflow {
        // Streamed on: what was read goes out first, and is not held for long.
        chunks.push_back(next);
        return Ok((Payload::Stream(Some((chunks, Some(body)))), last_chunk));
    }
    let chunks: Arc<[Bytes]> = chunks.into_iter().collect();
    Ok((
        Payload::Whole(Whole {
            chunks,
            _reservation: reservation,
            len,
            contiguous: None,
            key: None,
        }),
        last_chunk,
    ))
}
