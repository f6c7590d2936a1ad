//! One response's inspection: its text through the detectors as it passes, and under `block`
//! a stream held back chunk by chunk until its text is known clean.

use std::collections::VecDeque;

use bytes::Bytes;
use http::HeaderMap;
use tokio::time::Instant;

use std::sync::Arc;

use super::{ListenerSafety, Source, Violation, HELD_SCAN_STEP, MAX_HELD_BYTES};
use crate::budget::{Held, Reservation};
use crate::inspect::inflate::Inflater;
use crate::inspect::safety::{Match, Scanner};
use crate::inspect::text::{BodyText, NotText};
use crate::upstream::Upload;

/// A stream held back until its text is known clean.
struct Hold {
    /// `bytes`, against the sidecar's body budget: past it, the stream is blocked as
    /// uninspectable (what cannot be held cannot be let out unseen).
    reservation: Reservation,
    /// Chunks not yet let through, each with the text offset its text ends at (`None` while an
    /// SSE event in it is still incomplete).
    held: VecDeque<(Bytes, Option<u64>)>,
    /// Chunks let through, waiting for the client to take them.
    ready: VecDeque<Bytes>,
    /// Bytes in `held`.
    bytes: usize,
}

/// Sizes only: what is held back may be the very text safety withholds.
impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("held", &self.held.len())
            .field("ready", &self.ready.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// One response's inspection.
#[derive(Debug)]
pub struct SafetyCheck {
    text: BodyText,
    scanner: Scanner,
    /// Bit per detector slot: counted already in this response.
    counted: u64,
    /// Some while a stream is being held back (`block` on an SSE response).
    hold: Option<Hold>,
    /// The first violation found while blocking: the response ends there.
    blocked: Option<(Source, u64)>,
    /// A body read whole for a `block` decision: every match is to be blocked.
    blocking: bool,
    finished: bool,
    block_sent: bool,
    /// For the kill switch: the request's origin, and its upload (what it said, for echoes).
    origin: u64,
    request: Option<Arc<Upload>>,
    /// The kill switch was fed this response's violation already (one is enough: they share
    /// their origin).
    fed_kill_switch: bool,
    /// A compressed stream held back: decoded here, the client gets the text.
    inflate: Option<Box<Inflater>>,
}

impl SafetyCheck {
    /// The check of a response with these headers to a request from `origin` whose body went
    /// as `request` says; an error when it has no text to read as it passes (see [`NotText`]).
    ///
    /// Under `block`, a compressed stream (gzip or deflate SSE) is decoded here and goes to the
    /// client decoded — its `Content-Encoding` is removed from `headers` — so that what is held
    /// back is text, and the event that ends a blocked stream can follow it.
    pub fn new(
        ls: &ListenerSafety,
        headers: &mut HeaderMap,
        origin: u64,
        request: Option<Arc<Upload>>,
    ) -> Result<SafetyCheck, NotText> {
        let value = |name| headers.get(name).map(http::HeaderValue::as_bytes);
        let mut text = BodyText::for_body(
            ls.keys,
            value(http::header::CONTENT_TYPE),
            value(http::header::CONTENT_ENCODING),
        )?;
        let mut inflate = None;
        if ls.block && text.is_stream() {
            if let BodyText::Inflating { inflater, inner } = text {
                headers.remove(http::header::CONTENT_ENCODING);
                headers.remove(http::header::CONTENT_LENGTH);
                inflate = Some(Box::new(inflater));
                text = *inner;
            }
        }
        text.reserve_from(&ls.budget);
        let hold = (ls.block && text.is_stream()).then(|| Hold {
            reservation: ls.budget.reserve(Held::SafetyHold),
            held: VecDeque::new(),
            ready: VecDeque::new(),
            bytes: 0,
        });
        Ok(SafetyCheck {
            text,
            scanner: ls.detectors.scanner(),
            counted: 0,
            hold,
            blocked: None,
            blocking: false,
            finished: false,
            block_sent: false,
            origin,
            request,
            fed_kill_switch: false,
            inflate,
        })
    }

    /// The body will be read whole before the answer: a match blocks it.
    pub fn read_whole(&mut self) {
        self.blocking = true;
    }

    /// Whether any violation was counted in this response.
    pub fn found(&self) -> bool {
        self.counted != 0 || self.blocked.is_some()
    }

    /// Whether this response is held back chunk by chunk.
    pub fn holds(&self) -> bool {
        self.hold.is_some()
    }

    pub fn blocked(&self) -> Option<Source> {
        self.blocked.map(|(s, _)| s)
    }

    /// A held stream was blocked and its clean chunks have gone: the source, once, for the
    /// event that ends it.
    pub fn take_block(&mut self) -> Option<Source> {
        let hold = self.hold.as_ref()?;
        if self.block_sent || !hold.ready.is_empty() {
            return None;
        }
        let source = self.blocked()?;
        self.block_sent = true;
        Some(source)
    }

    /// Counts one violation of `source` (once per response).
    pub fn count(&mut self, ls: &ListenerSafety, source: Source, at: Option<&Match>, now: Instant) {
        let bit = 1u64 << ls.slot(source).min(63);
        // The provider withheld the text itself: nothing left to block.
        let blocking = (self.blocking || self.hold.is_some()) && source != Source::ContentFilter;
        if blocking && self.blocked.is_none() {
            self.blocked = Some((source, at.map_or(0, |m| m.start)));
        }
        let echo = at.is_some_and(|m| {
            let echoes = self.request.as_ref().and_then(|u| u.echoes.get());
            echoes.is_some_and(|e| e.contains(m))
        });
        let v = Violation {
            source,
            blocked: blocking,
            at,
            origin: self.origin,
            echo,
        };
        if self.counted & bit == 0 {
            self.counted |= bit;
            ls.count(&v);
        }
        // Every match is looked at for the switch, not only a detector's first: an echo first
        // must not hide the agent's own leak after it.
        if !self.fed_kill_switch {
            self.fed_kill_switch = ls.feed_kill_switch(&v, now);
        }
    }

    /// A chunk of the body went by (or, when holding, arrived and is kept — decoded, for a
    /// compressed stream).
    pub fn feed(&mut self, ls: &ListenerSafety, chunk: &Bytes, now: Instant) {
        if self.blocked.is_some() {
            return;
        }
        if let Some(mut inflate) = self.inflate.take() {
            inflate.feed(chunk, &mut |decoded| self.feed_text(ls, decoded, now));
            if inflate.failed() && self.blocked.is_none() {
                // A body that does not decode (or decodes past the limit): never let out unseen.
                self.count(ls, Source::Uninspectable, None, now);
                self.release();
            }
            self.inflate = Some(inflate);
            return;
        }
        self.feed_text(ls, chunk, now);
    }

    /// A chunk of the body's text encoding (as it is, or decoded).
    fn feed_text(&mut self, ls: &ListenerSafety, chunk: &Bytes, now: Instant) {
        if self.blocked.is_some() {
            return;
        }
        let mut found: Vec<Match> = Vec::new();
        {
            let scanner = &mut self.scanner;
            let mut on_match = |m: Match| found.push(m);
            self.text
                .feed(chunk, &mut |t| scanner.feed(t, &mut on_match));
            if self.hold.is_some() {
                scanner.flush(HELD_SCAN_STEP, &mut on_match);
            }
        }
        for m in &found {
            self.count(ls, Source::Detector(m.detector), Some(m), now);
        }
        let blocking = self.blocking || self.hold.is_some();
        if blocking && self.text.lost() {
            self.count(ls, Source::Uninspectable, None, now);
        }
        if let Some(hold) = &mut self.hold {
            hold.bytes += chunk.len();
            hold.held.push_back((chunk.clone(), None));
            let room = hold.reservation.resize(hold.bytes);
            if (hold.bytes > MAX_HELD_BYTES || !room) && self.blocked.is_none() {
                self.count(ls, Source::Uninspectable, None, now);
                self.release();
                return;
            }
            let Some(hold) = &mut self.hold else { return };
            if self.text.settled() {
                let end = self.scanner.len();
                for (_, mark) in hold.held.iter_mut().rev() {
                    if mark.is_some() {
                        break;
                    }
                    *mark = Some(end);
                }
            }
            self.release();
        }
    }

    /// The body ended (`complete`) or was cut: the rest of the text is scanned.
    pub fn finish(&mut self, ls: &ListenerSafety, complete: bool, now: Instant) {
        if self.blocked.is_some() || self.finished {
            return;
        }
        if let Some(mut inflate) = self.inflate.take().filter(|_| complete) {
            inflate.finish(&mut |decoded| self.feed_text(ls, decoded, now));
            if inflate.failed() && self.blocked.is_none() {
                self.count(ls, Source::Uninspectable, None, now);
                self.release();
                return;
            }
        }
        self.finished = true;
        let mut found: Vec<Match> = Vec::new();
        {
            let scanner = &mut self.scanner;
            let mut on_match = |m: Match| found.push(m);
            // A compressed body is read now, whole.
            self.text.finish(&mut |t| scanner.feed(t, &mut on_match));
            scanner.finish(&mut on_match);
        }
        for m in &found {
            self.count(ls, Source::Detector(m.detector), Some(m), now);
        }
        if (self.blocking || self.hold.is_some()) && self.text.lost() {
            self.count(ls, Source::Uninspectable, None, now);
        }
        if let Some(hold) = &mut self.hold {
            if complete {
                // Every byte has been looked at: an event left incomplete says nothing more.
                let end = self.scanner.len();
                for (_, mark) in hold.held.iter_mut() {
                    mark.get_or_insert(end);
                }
            }
            self.release();
        }
    }

    /// Moves the chunks known clean to the ready queue; once blocked, those before the match,
    /// then the error event, and nothing after.
    fn release(&mut self) {
        let Some(hold) = &mut self.hold else { return };
        let clean = match self.blocked {
            // Text that was never seen: nothing held goes out, whatever its marks say.
            Some((Source::Uninspectable, _)) => {
                hold.bytes = 0;
                hold.held.clear();
                let _ = hold.reservation.resize(0);
                return;
            }
            Some((_, start)) => start,
            None => self.scanner.settled_upto(),
        };
        while let Some((_, Some(end))) = hold.held.front() {
            if *end > clean {
                break;
            }
            if let Some((bytes, _)) = hold.held.pop_front() {
                hold.bytes -= bytes.len();
                hold.ready.push_back(bytes);
            }
        }
        if self.blocked.is_some() {
            hold.held.clear();
            hold.bytes = 0;
        }
        let _ = hold.reservation.resize(hold.bytes);
    }

    /// The next chunk that may go to the client.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
        self.hold.as_mut()?.ready.pop_front()
    }

    /// Bytes held back now.
    pub fn held_bytes(&self) -> usize {
        self.hold.as_ref().map_or(0, |h| h.bytes)
    }

    /// Chunks still held back (not yet known clean).
    pub fn holding(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| !h.held.is_empty())
    }
}
