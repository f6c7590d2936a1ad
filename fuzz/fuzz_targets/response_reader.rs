//! `ResponseReader` fed a body cut at points the input chooses, checked against the same body
//! fed in one chunk: the facts must be equal, and the counts `feed` returns must add up to
//! `output_chunks`.
//!
//! Input: `[setup, split header, sizes.., body..]` (see `sloguard_fuzz::Split`).
//! `setup % 18` picks the format (`% 3`) and content type (`/ 3`); `setup / 18` (0..=14) picks
//! 200 with no content-encoding (0..=9), a 500 (10), or a 200 with `content-encoding` `gzip`
//! (11), `deflate` (12), `br` (13) or `identity` (14). Bit 0 of the split header's flags also finishes a second
//! pair of readers with `finish(false)` (a body cut short) and compares those.

#![no_main]

use bytes::Bytes;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use sloguard::inspect::{Format, ResponseFacts, ResponseReader};
use sloguard_fuzz::Split;

const FORMATS: [Format; 3] = [Format::ChatCompletions, Format::Responses, Format::Messages];

const CONTENT_TYPES: [Option<&[u8]>; 6] = [
    Some(b"text/event-stream"),
    Some(b"application/json"),
    Some(b"text/event-stream; charset=utf-8"),
    Some(b"application/problem+json"),
    Some(b"text/html"),
    None,
];

struct Setup {
    format: Format,
    status: StatusCode,
    content_type: Option<&'static [u8]>,
    content_encoding: Option<&'static [u8]>,
}

impl Setup {
    fn of(b: u8) -> Setup {
        let (kind, variant) = (b % 18, b / 18);
        let (status, content_encoding): (_, Option<&'static [u8]>) = match variant {
            0..=9 => (StatusCode::OK, None),
            10 => (StatusCode::INTERNAL_SERVER_ERROR, None),
            11 => (StatusCode::OK, Some(b"gzip")),
            12 => (StatusCode::OK, Some(b"deflate")),
            13 => (StatusCode::OK, Some(b"br")),
            _ => (StatusCode::OK, Some(b"identity")),
        };
        Setup {
            format: FORMATS[(kind % 3) as usize],
            status,
            content_type: CONTENT_TYPES[(kind / 3) as usize],
            content_encoding,
        }
    }

    fn read(&self, chunks: &[&[u8]], complete: bool) -> ResponseFacts {
        let mut reader = ResponseReader::new(
            self.format,
            self.status,
            self.content_type,
            self.content_encoding,
        );
        let mut output = 0u32;
        for chunk in chunks {
            output += reader.feed(&Bytes::copy_from_slice(chunk));
        }
        let facts = reader.finish(complete);
        assert_eq!(
            output, facts.output_chunks,
            "feed's counts do not add up to output_chunks"
        );
        facts
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&setup, rest)) = input.split_first() else {
        return;
    };
    let Some(split) = Split::parse(rest) else {
        return;
    };
    let setup = Setup::of(setup);
    let chunks = split.chunks();
    let sizes = || chunks.iter().map(|c| c.len()).collect::<Vec<_>>();
    let mut runs = vec![true];
    if split.flags & 1 == 1 {
        runs.push(false);
    }
    for complete in runs {
        let chunked = setup.read(&chunks, complete);
        let whole = setup.read(&[split.body], complete);
        assert_eq!(
            chunked,
            whole,
            "finish({complete}): cut into {:?} the body read differently from one chunk",
            sizes()
        );
    }
});
