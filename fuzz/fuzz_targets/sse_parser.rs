//! `SseParser` fed a body cut at points the input chooses, checked against the same body fed in
//! one chunk: the items (owned copies) must be the same, and no event's data may pass the limit.
//!
//! Input: `[max selector, split header, sizes.., body..]` (see `sloguard_fuzz::Split`).
//! Max selector `b`: `b < 0x80` → `b` bytes; `0x80..=0xFE` → `(b - 0x7F) * 16` bytes;
//! `0xFF` → `MAX_INSPECTED_BODY`, the limit the proxy uses.
//!
//! Known divergence (found by this target): the parser enforces `max_event_bytes` on a whole
//! line only when the line spans chunks, so a line longer than the limit is reported
//! `Oversized` when cut and read (or ignored) when it arrives whole. With
//! `SSE_FUZZ_IGNORE_LONG_LINES=1` in the environment, the differential check is skipped for
//! bodies with a line longer than the limit, so a run can look past that divergence for others;
//! the other checks still run on every input.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sloguard::inspect::{SseItem, SseParser, MAX_INSPECTED_BODY};
use sloguard_fuzz::Split;

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Event {
        event: String,
        data: Vec<u8>,
        id: String,
        retry: Option<u64>,
    },
    Oversized,
}

fn max_event_bytes(b: u8) -> usize {
    match b {
        0..=0x7F => b as usize,
        0x80..=0xFE => (b as usize - 0x7F) * 16,
        0xFF => MAX_INSPECTED_BODY,
    }
}

fn ignore_long_lines() -> bool {
    static IGNORE: OnceLock<bool> = OnceLock::new();
    *IGNORE.get_or_init(|| std::env::var_os("SSE_FUZZ_IGNORE_LONG_LINES").is_some_and(|v| v == "1"))
}

/// Whether a line of `body` (cut at `\r` or `\n`) is longer than `max`.
fn has_long_line(body: &[u8], max: usize) -> bool {
    body.split(|&b| b == b'\n' || b == b'\r').any(|line| line.len() > max)
}

fn parse(chunks: &[&[u8]], max: usize) -> Vec<Item> {
    let mut parser = SseParser::new(max);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut |item| {
            items.push(match item {
                SseItem::Event(e) => {
                    assert!(
                        e.data.len() <= max,
                        "event data of {} bytes passed the limit of {max}",
                        e.data.len()
                    );
                    Item::Event {
                        event: e.event.to_owned(),
                        data: e.data.to_vec(),
                        id: e.id.to_owned(),
                        retry: e.retry,
                    }
                }
                SseItem::Oversized => Item::Oversized,
            })
        });
    }
    parser.finish();
    items
}

fuzz_target!(|input: &[u8]| {
    let Some((&max, rest)) = input.split_first() else {
        return;
    };
    let Some(split) = Split::parse(rest) else {
        return;
    };
    let max = max_event_bytes(max);
    let chunked = parse(&split.chunks(), max);
    let whole = parse(&[split.body], max);
    if ignore_long_lines() && has_long_line(split.body, max) {
        return;
    }
    assert_eq!(
        chunked,
        whole,
        "cut into {:?} the stream parsed differently from one chunk",
        split.chunks().iter().map(|c| c.len()).collect::<Vec<_>>()
    );
});
