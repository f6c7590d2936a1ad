//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules), fed the
//! bytes of a response as they pass, in chunks cut anywhere.
//!
//! - Lines end with `\r\n`, `\n` or `\r`, also when the `\r` and the `\n` arrive in different
//!   chunks; a leading UTF-8 byte-order mark is skipped.
//! - `data` lines of one event are joined with `\n`; `event`, `id` and `retry` are kept;
//!   comment lines (`:` first) are skipped; a blank line dispatches the event.
//! - Memory is bounded: a line or an event's data longer than `max_event_bytes` (a malicious
//!   never-ending line) is dropped, the rest of it skipped up to its line end, and the event
//!   reported as oversized instead of dispatched.
//!
//! The parser only observes: it never holds bytes back from the client.

use crate::budget::{Held, Reservation};

/// One dispatched event, borrowed from the parser's buffers until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event` field; empty when the event had none (the spec's default type "message").
    pub event: &'a str,
    pub data: &'a [u8],
    /// The last event id seen so far on the stream (ids persist across events).
    pub id: &'a str,
    pub retry: Option<u64>,
}

/// What the parser found, one call at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem<'a> {
    Event(SseEvent<'a>),
    /// An event whose line or data passed the size limit; its content was dropped.
    Oversized,
}

pub struct SseParser {
    max_event_bytes: usize,
    /// The current line, when it spans chunks.
    line: Vec<u8>,
    data: Vec<u8>,
    event: String,
    id: String,
    retry: Option<u64>,
    /// The last byte seen was a `\r`: a `\n` starting the next chunk belongs to that line end.
    after_cr: bool,
    /// Skipping the rest of an oversized line.
    skipping: bool,
    /// The current event lost content to the size limit.
    oversized: bool,
    /// Bytes of the stream seen so far, up to 3 (byte-order mark detection).
    start: u8,
    /// The current event's bytes, against the sidecar's body budget: an event it has no room
    /// for is dropped as oversized.
    reservation: Reservation,
}

/// Sizes only: an event's data is a model's output, not for a log.
impl std::fmt::Debug for SseParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseParser")
            .field("line", &self.line.len())
            .field("data", &self.data.len())
            .field("oversized", &self.oversized)
            .finish_non_exhaustive()
    }
}

/// An event's buffers up to this size stay allocated (and reserved) between events; larger ones
/// are let go once their event is over.
const KEEP_BUFFERS: usize = 64 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            id: String::new(),
            retry: None,
            after_cr: false,
            skipping: false,
            oversized: false,
            start: 0,
            reservation: Reservation::unbounded(Held::SseEvent),
        }
    }

    /// Counts the events' bytes against the budget `reservation` draws on.
    pub fn reserve_from(&mut self, reservation: Reservation) {
        self.reservation = reservation;
    }

    /// Room in the budget for `extra` more bytes of the current event (reserved in doubling
    /// steps, as the buffers grow).
    fn room(&mut self, extra: usize) -> bool {
        let needed = self.line.len() + self.data.len() + extra;
        needed <= self.reservation.bytes()
            || self
                .reservation
                .resize(needed.next_power_of_two().max(4096))
    }

    /// An event is over: large buffers are let go, and their reservation with them.
    fn release(&mut self) {
        if self.reservation.bytes() > KEEP_BUFFERS {
            if self.line.capacity() > KEEP_BUFFERS / 2 {
                self.line = Vec::new();
            }
            if self.data.capacity() > KEEP_BUFFERS / 2 {
                self.data = Vec::new();
            }
            let _ = self.reservation.resize(self.line.len() + self.data.len());
        }
    }

    /// No event is half-read: every byte fed so far belongs to an event already reported (or to
    /// a comment or a field that needs nothing more).
    pub fn is_between_events(&self) -> bool {
        self.line.is_empty()
            && self.data.is_empty()
            && self.event.is_empty()
            && !self.skipping
            && !self.oversized
            && !self.after_cr
    }

    /// Feeds the next chunk; `on_item` is called for each event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_item: &mut dyn FnMut(SseItem<'_>)) {
        if self.start < 3 {
            chunk = self.skip_bom(chunk);
        }
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                self.extend_line(chunk);
                return;
            };
            let (content, rest) = (&chunk[..end], &chunk[end + 1..]);
            let line_end = chunk[end];
            chunk = rest;
            if line_end == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.skipping {
                self.skipping = false;
                self.line.clear();
                continue;
            }
            if self.line.is_empty() {
                self.process_line(content, on_item);
            } else {
                let mut line = std::mem::take(&mut self.line);
                if line.len() + content.len() > self.max_event_bytes
                    || !self.room(line.len() + content.len())
                {
                    self.oversized = true;
                } else {
                    line.extend_from_slice(content);
                    self.process_line(&line, on_item);
                }
                line.clear();
                self.line = line;
            }
        }
    }

    /// The stream ended: an event not closed by a blank line is discarded (the spec's rule).
    pub fn finish(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.oversized = false;
        self.skipping = false;
        self.release();
    }

    fn skip_bom<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let mut i = 0;
        while self.start < 3 && i < chunk.len() {
            if chunk[i] != BOM[self.start as usize] {
                // Not a BOM: whatever matched so far was content. (Only a partial BOM could be
                // lost here, which no real stream starts with.)
                self.start = 3;
                return &chunk[i..];
            }
            self.start += 1;
            i += 1;
        }
        &chunk[i..]
    }

    fn extend_line(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + part.len() > self.max_event_bytes || !self.room(part.len()) {
            self.line.clear();
            self.skipping = true;
            self.oversized = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn process_line(&mut self, line: &[u8], on_item: &mut dyn FnMut(SseItem<'_>)) {
        // The same limit as a line that spans chunks meets, so that where the chunks were cut
        // never changes what is parsed.
        if line.len() > self.max_event_bytes {
            self.oversized = true;
            return;
        }
        if line.is_empty() {
            self.dispatch(on_item);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                // `line` is not part of the event here (taken, or never kept): only data counts.
                if self.data.len() + value.len() + 1 > self.max_event_bytes
                    || !self.room(value.len() + 1)
                {
                    self.oversized = true;
                } else {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                }
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_item: &mut dyn FnMut(SseItem<'_>)) {
        if self.oversized {
            self.oversized = false;
            on_item(SseItem::Oversized);
        } else if !self.data.is_empty() {
            let data = &self.data[..self.data.len() - 1];
            on_item(SseItem::Event(SseEvent {
                event: &self.event,
                data,
                id: &self.id,
                retry: self.retry,
            }));
        }
        self.data.clear();
        self.event.clear();
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_the_budget_has_no_room_for_is_dropped_as_oversized_and_its_bytes_given_back() {
        let t = crate::telemetry::Telemetry::new();
        let budget = t.body_budget(64 * 1024, "a");
        let mut p = SseParser::new(1 << 20);
        p.reserve_from(budget.reserve(Held::SseEvent));
        let mut seen = Vec::new();
        let big = format!("data: {}\n\n", "x".repeat(100 * 1024));
        let small = "data: ok\n\n";
        for chunk in big.as_bytes().chunks(1000).chain([small.as_bytes()]) {
            p.feed(chunk, &mut |item| {
                seen.push(matches!(item, SseItem::Oversized));
            });
        }
        // The big event was dropped (past 64 KiB of budget, within the 1 MiB limit); the next
        // one, small, came through.
        assert_eq!(seen, [true, false]);
        p.finish();
        assert!(budget.used() <= KEEP_BUFFERS, "{}", budget.used());
        drop(p);
        assert_eq!(budget.used(), 0);
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Event(String, String, String, Option<u64>),
        Oversized,
    }

    fn parse(chunks: &[&[u8]], max: usize) -> Vec<Seen> {
        let mut p = SseParser::new(max);
        let mut seen = Vec::new();
        for c in chunks {
            p.feed(c, &mut |item| {
                seen.push(match item {
                    SseItem::Event(e) => Seen::Event(
                        e.event.to_owned(),
                        String::from_utf8(e.data.to_vec()).unwrap(),
                        e.id.to_owned(),
                        e.retry,
                    ),
                    SseItem::Oversized => Seen::Oversized,
                })
            });
        }
        p.finish();
        seen
    }

    fn ev(event: &str, data: &str, id: &str) -> Seen {
        Seen::Event(event.into(), data.into(), id.into(), None)
    }

    #[test]
    fn fields_comments_and_multi_line_data() {
        let stream = b": comment\nevent: delta\nid: 7\ndata: one\ndata:two\ndata\n\ndata: x\n\n";
        assert_eq!(
            parse(&[stream], 1024),
            vec![ev("delta", "one\ntwo\n", "7"), ev("", "x", "7")]
        );
    }

    #[test]
    fn every_line_ending_and_splits_between_cr_and_lf() {
        let expected = vec![ev("", "a", ""), ev("", "b", ""), ev("", "c", "")];
        assert_eq!(
            parse(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"], 64),
            expected
        );
        assert_eq!(
            parse(
                &[
                    b"data: a\r",
                    b"\n\r",
                    b"\ndata: b\r",
                    b"\r",
                    b"data: c\n",
                    b"\n"
                ],
                64
            ),
            expected
        );
    }

    #[test]
    fn byte_order_mark_is_skipped_even_when_split() {
        assert_eq!(
            parse(&[b"\xEF\xBB", b"\xBFdata: a\n\n"], 64),
            vec![ev("", "a", "")]
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_unterminated_event_is_discarded() {
        assert_eq!(
            parse(&[b"event: ping\n\ndata: tail-without-blank-line\n"], 64),
            vec![]
        );
    }

    #[test]
    fn retry_needs_digits() {
        let got = parse(&[b"retry: 1500\ndata: a\n\nretry: x\ndata: b\n\n"], 64);
        assert_eq!(
            got,
            vec![
                Seen::Event("".into(), "a".into(), "".into(), Some(1500)),
                Seen::Event("".into(), "b".into(), "".into(), Some(1500)),
            ]
        );
    }

    #[test]
    fn an_endless_line_costs_bounded_memory_and_the_stream_recovers() {
        let mut p = SseParser::new(100);
        let mut items = 0;
        let mut oversized = 0;
        p.feed(b"data: ", &mut |_| {});
        for _ in 0..10_000 {
            p.feed(&[b'x'; 1000], &mut |_| items += 1);
            assert!(p.line.capacity() <= 1000, "line buffer grew");
        }
        p.feed(b"\n\ndata: fine\n\n", &mut |i| match i {
            SseItem::Oversized => oversized += 1,
            SseItem::Event(e) => {
                assert_eq!(e.data, b"fine");
                items += 1
            }
        });
        assert_eq!((items, oversized), (1, 1));
    }

    #[test]
    fn a_long_line_is_oversized_whether_it_arrives_whole_or_cut() {
        let stream: &[u8] = b"event: a-very-long-event-name\ndata: x\n\ndata: ok\n\n";
        let whole = parse(&[stream], 20);
        assert_eq!(whole, vec![Seen::Oversized, ev("", "ok", "")]);
        for cut in 1..stream.len() {
            assert_eq!(
                parse(&[&stream[..cut], &stream[cut..]], 20),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn too_much_data_in_one_event_is_oversized() {
        let got = parse(&[b"data: 0123456789\ndata: 0123456789\n\ndata: ok\n\n"], 20);
        assert_eq!(got, vec![Seen::Oversized, ev("", "ok", "")]);
    }
}
