//! `SseParser` fed a body cut at points the input chooses, checked against the same body fed in
//! one chunk: the items (owned copies) must be the same, and no event's data may pass the limit.
//!
//! Input: `[max selector, split header, sizes.., body..]` (see `sloguard_fuzz::Split`).
//! Max selector `b`: `b < 0x80` → `b` bytes; `0x80..=0xFE` → `(b - 0x7F) * 16` bytes;
//! `0xFF` → `MAX_INSPECTED_BODY`, the limit the proxy uses.
//!
//! This target's first run found that a line longer than the limit was reported `Oversized`
//! when cut and read when whole; the reproducers are in `artifacts/kept/sse_parser/`.

#![no_main]

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
    assert_eq!(
        chunked,
        whole,
        "cut into {:?} the stream parsed differently from one chunk",
        split.chunks().iter().map(|c| c.len()).collect::<Vec<_>>()
    );
});
