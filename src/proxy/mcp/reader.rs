//! An MCP response as it passes: a JSON body kept (bounded, against the body budget) and read at
//! its end, or an SSE stream read event by event, each event's data one JSON-RPC message (or
//! batch) handed on as it arrives.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;

use crate::budget::{BodyBudget, Held};
use crate::inspect::{Collected, SseItem, SseParser, Unparsed, MAX_INSPECTED_BODY};

/// How the response is read.
#[derive(Debug)]
pub(super) enum Reader {
    /// `application/json`: kept whole (`None` once it outgrew its limit or the budget).
    Json(Option<Collected>),
    /// `text/event-stream`, and whether its events carried ids (a stream that may be resumed).
    Sse(SseParser, bool),
}

/// What the reader could not read, for `sloguard_unparsed_bodies_total`.
pub(super) type Unread = Option<Unparsed>;

impl Reader {
    /// The reader for a response with these headers; `Err` when its body cannot be read (it
    /// passes untouched), `Ok(None)` when there is nothing to read (no body type MCP uses).
    pub(super) fn new(
        headers: &HeaderMap,
        budget: &BodyBudget,
    ) -> Result<Option<Reader>, Unparsed> {
        let encoded = headers
            .get(CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        // The media type, before any parameter; compared without an allocation.
        let kind = headers.get(CONTENT_TYPE).map(|v| {
            let v = v.as_bytes();
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            v[..end].trim_ascii()
        });
        let is = |k: &[u8], name: &str| k.eq_ignore_ascii_case(name.as_bytes());
        let reader = match kind {
            Some(k) if is(k, "application/json") => Reader::Json(Some(
                Collected::with_limit(MAX_INSPECTED_BODY)
                    .reserve_from(budget.reserve(Held::ResponseRead)),
            )),
            Some(k) if is(k, "text/event-stream") => {
                let mut p = SseParser::new(MAX_INSPECTED_BODY);
                p.reserve_from(budget.reserve(Held::SseEvent));
                Reader::Sse(p, false)
            }
            _ => return Ok(None),
        };
        if encoded {
            return Err(Unparsed::ResponseContentEncoding);
        }
        Ok(Some(reader))
    }

    /// A chunk of the body: each SSE event's data goes to `message` as it completes. Returns what
    /// could not be read (a JSON body past its limit, an oversized event).
    pub(super) fn feed(&mut self, chunk: &Bytes, message: &mut dyn FnMut(&[u8])) -> Unread {
        match self {
            Reader::Json(kept) => {
                let c = kept.as_mut()?;
                if c.push(chunk) {
                    return None;
                }
                *kept = None;
                Some(Unparsed::ResponseTooLarge)
            }
            Reader::Sse(parser, ids) => {
                let mut oversized = false;
                parser.feed(chunk, &mut |item| match item {
                    SseItem::Event(e) => {
                        *ids |= !e.id.is_empty();
                        if !e.data.is_empty() {
                            message(e.data);
                        }
                    }
                    SseItem::Oversized => oversized = true,
                });
                oversized.then_some(Unparsed::ResponseTooLarge)
            }
        }
    }

    /// Whether the stream's events carried ids: the server may resume it on a GET.
    pub(super) fn resumable(&self) -> bool {
        matches!(self, Reader::Sse(_, true))
    }

    /// The body ended: a JSON body goes to `message` whole.
    pub(super) fn finish(self, message: &mut dyn FnMut(&[u8])) {
        match self {
            Reader::Json(Some(c)) => message(&c.into_bytes()),
            Reader::Json(None) => {}
            Reader::Sse(mut parser, _) => parser.finish(),
        }
    }
}
