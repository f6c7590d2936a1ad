//! The response side of an LLM call: one reader per response, fed each chunk as it passes to the
//! client, asked at the end what it learned.

use bytes::Bytes;
use http::StatusCode;

use super::sse::{SseItem, SseParser};
use super::{anthropic, openai, Collected, FinishReason, Format, Unparsed, MAX_INSPECTED_BODY};

use super::calls::ResponseFacts;

/// The per-format state of a stream.
#[derive(Debug)]
pub(super) enum StreamState {
    Chat(openai::ChatStream),
    Responses(openai::ResponsesStream),
    Messages(anthropic::MessagesStream),
}

#[derive(Debug)]
enum BodyReader {
    Sse(SseParser),
    /// Kept until the body ends; decompressed then if the provider compressed it.
    Json {
        body: Collected,
        encoding: Encoding,
    },
    /// A body of a type no reader reads: judged at the end (an empty one is no problem).
    OtherType,
    /// Nothing to read (an error status, an unreadable body).
    Skip,
}

#[derive(Debug)]
pub struct ResponseReader {
    format: Format,
    body: BodyReader,
    stream: StreamState,
    facts: ResponseFacts,
}

fn media_type(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

impl ResponseReader {
    /// A reader for a response with this status and these `content-type` and
    /// `content-encoding` headers.
    pub fn new(
        format: Format,
        status: StatusCode,
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
    ) -> ResponseReader {
        let mut facts = ResponseFacts::default();
        let body = if !status.is_success() {
            // The provider's error body says why it failed, not what the model did.
            facts.finish_reasons.push(FinishReason::Error);
            BodyReader::Skip
        } else {
            let media = content_type.map(media_type).unwrap_or_default();
            let encoding = Encoding::of(content_encoding);
            let json = media.eq_ignore_ascii_case(b"application/json")
                || (media.len() > 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"));
            if encoding == Some(Encoding::Identity)
                && media.eq_ignore_ascii_case(b"text/event-stream")
            {
                BodyReader::Sse(SseParser::new(MAX_INSPECTED_BODY))
            } else if encoding.is_none() || !json {
                if encoding.is_none() || media.eq_ignore_ascii_case(b"text/event-stream") {
                    // A compressed stream (rare: providers send SSE plain) or an unknown coding.
                    facts.unparsed(Unparsed::ResponseContentEncoding);
                    BodyReader::Skip
                } else {
                    BodyReader::OtherType
                }
            } else {
                // JSON, plain or compressed: HTTP clients such as the OpenAI SDKs ask for gzip.
                BodyReader::Json {
                    body: Collected::default(),
                    encoding: encoding.unwrap_or(Encoding::Identity),
                }
            }
        };
        let stream = match format {
            Format::ChatCompletions => StreamState::Chat(Default::default()),
            Format::Responses => StreamState::Responses(Default::default()),
            Format::Messages => StreamState::Messages(Default::default()),
        };
        ResponseReader {
            format,
            body,
            stream,
            facts,
        }
    }

    /// Counts what the reader keeps (a JSON body, an SSE event) against `budget`: past it, the
    /// body goes unread (`response_too_large`).
    pub fn reserve_from(&mut self, budget: &crate::budget::BodyBudget) {
        use crate::budget::Held;
        match &mut self.body {
            BodyReader::Sse(parser) => parser.reserve_from(budget.reserve(Held::SseEvent)),
            BodyReader::Json { body, .. } => {
                let b = std::mem::take(body);
                *body = b.reserve_from(budget.reserve(Held::ResponseRead));
            }
            BodyReader::OtherType | BodyReader::Skip => {}
        }
    }

    /// Keeps the output text too, up to `limit` bytes counted against `budget` (for the
    /// `structured_output` check). Call before the first chunk.
    pub(crate) fn keep_output(&mut self, limit: usize, budget: &crate::budget::BodyBudget) {
        let reservation = budget.reserve(crate::budget::Held::ResponseRead);
        self.facts.output = Some(super::calls::OutputText::new(limit, reservation));
    }

    /// Reads the next chunk of the body; returns how many events in it carried output.
    pub fn feed(&mut self, chunk: &Bytes) -> u32 {
        match &mut self.body {
            BodyReader::Sse(parser) => {
                let (stream, facts) = (&mut self.stream, &mut self.facts);
                let before = facts.output_chunks;
                parser.feed(chunk, &mut |item| match item {
                    SseItem::Oversized => facts.unparsed(Unparsed::ResponseTooLarge),
                    SseItem::Event(e) => {
                        let output = match stream {
                            StreamState::Chat(s) => s.event(e.data, facts),
                            StreamState::Responses(s) => s.event(e.event, e.data, facts),
                            StreamState::Messages(s) => s.event(e.event, e.data, facts),
                        };
                        match output {
                            Ok(true) => facts.output_chunks = facts.output_chunks.saturating_add(1),
                            Ok(false) => {}
                            Err(why) => facts.unparsed(why),
                        }
                    }
                });
                self.facts.output_chunks - before
            }
            BodyReader::Json { body, .. } => {
                if !body.push(chunk) {
                    self.facts.unparsed(Unparsed::ResponseTooLarge);
                    self.body = BodyReader::Skip;
                }
                0
            }
            BodyReader::OtherType => {
                if !chunk.is_empty() {
                    self.facts.unparsed(Unparsed::ResponseContentType);
                    self.body = BodyReader::Skip;
                }
                0
            }
            BodyReader::Skip => 0,
        }
    }

    /// The body ended: `complete` when it ended as HTTP says it should, not cut.
    pub fn finish(mut self, complete: bool) -> ResponseFacts {
        match std::mem::replace(&mut self.body, BodyReader::Skip) {
            BodyReader::Sse(mut parser) => {
                parser.finish();
                match &mut self.stream {
                    StreamState::Chat(s) => s.finish(complete, &mut self.facts),
                    StreamState::Responses(_) | StreamState::Messages(_) => {}
                }
                // A stream that never said why it ended was cut or failed.
                if self.facts.finish_reasons.is_empty() {
                    self.facts.finish_reasons.push(FinishReason::Error);
                }
            }
            BodyReader::Json { body, encoding } if complete => {
                let whole = match encoding.decode(body.into_bytes()) {
                    Ok(w) => w,
                    Err(why) => {
                        self.facts.unparsed(why);
                        return self.facts;
                    }
                };
                if !whole.is_empty() {
                    let read = match self.format {
                        Format::ChatCompletions => openai::chat_json(&whole, &mut self.facts),
                        Format::Responses => openai::responses_json(&whole, &mut self.facts),
                        Format::Messages => anthropic::messages_json(&whole, &mut self.facts),
                    };
                    if let Err(why) = read {
                        self.facts = ResponseFacts::default();
                        self.facts.unparsed = Some(why);
                    }
                }
            }
            BodyReader::Json { .. } | BodyReader::OtherType | BodyReader::Skip => {
                if !complete && self.facts.finish_reasons.is_empty() {
                    self.facts.finish_reasons.push(FinishReason::Error);
                }
            }
        }
        self.facts
    }
}

/// A `content-encoding` the JSON reader can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

impl Encoding {
    /// `None`: a coding (or a chain of codings) the reader cannot undo.
    pub(crate) fn of(header: Option<&[u8]>) -> Option<Encoding> {
        let Some(value) = header.map(<[u8]>::trim_ascii) else {
            return Some(Encoding::Identity);
        };
        let is = |name: &[u8]| value.eq_ignore_ascii_case(name);
        if value.is_empty() || is(b"identity") {
            Some(Encoding::Identity)
        } else if is(b"gzip") || is(b"x-gzip") {
            Some(Encoding::Gzip)
        } else if is(b"deflate") {
            Some(Encoding::Deflate)
        } else if is(b"br") {
            Some(Encoding::Brotli)
        } else {
            None
        }
    }

    /// The decoded body, at most [`MAX_INSPECTED_BODY`] bytes of it (a small compressed body can
    /// expand a thousandfold).
    pub(crate) fn decode(self, body: Bytes) -> Result<Bytes, Unparsed> {
        use std::io::Read;
        let reader: Box<dyn Read + '_> = match self {
            Encoding::Identity => return Ok(body),
            Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
            // HTTP's "deflate" is zlib-wrapped; some servers send it raw.
            Encoding::Deflate if body.first().is_some_and(|b| b & 0x0f == 8) => {
                Box::new(flate2::read::ZlibDecoder::new(&body[..]))
            }
            Encoding::Deflate => Box::new(flate2::read::DeflateDecoder::new(&body[..])),
            Encoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(&body[..], 4096)),
        };
        let mut out = Vec::new();
        reader
            .take(MAX_INSPECTED_BODY as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| Unparsed::ResponseContentEncoding)?;
        if out.len() > MAX_INSPECTED_BODY {
            return Err(Unparsed::ResponseTooLarge);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BODY: &[u8] = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;

    fn read(encoding: &str, body: Vec<u8>) -> ResponseFacts {
        let mut r = ResponseReader::new(
            Format::ChatCompletions,
            StatusCode::OK,
            Some(b"application/json; charset=utf-8"),
            Some(encoding.as_bytes()),
        );
        let body = Bytes::from(body);
        let (a, b) = body.split_at(body.len() / 2);
        r.feed(&Bytes::copy_from_slice(a));
        r.feed(&Bytes::copy_from_slice(b));
        r.finish(true)
    }

    /// The output text kept from `body` (sent as `content_type`) for `format`.
    fn output(format: Format, content_type: &[u8], body: &str) -> Option<String> {
        let mut r = ResponseReader::new(format, StatusCode::OK, Some(content_type), None);
        r.keep_output(64, &crate::budget::BodyBudget::unlimited());
        for part in body.as_bytes().chunks(7) {
            r.feed(&Bytes::copy_from_slice(part));
        }
        let facts = r.finish(true);
        facts.output.and_then(|o| o.whole().map(str::to_owned))
    }

    #[test]
    fn the_output_text_is_kept_when_asked_for() {
        let json = b"application/json";
        let sse = b"text/event-stream";
        let chat = r#"{"choices":[{"index":1,"message":{"content":"no"}},{"index":0,"message":{"content":"{\"a\":\u00e91}"}}]}"#;
        assert_eq!(
            output(Format::ChatCompletions, json, chat).as_deref(),
            Some("{\"a\":é1}"),
            "the first choice's, escapes decoded"
        );
        let responses = r#"{"status":"completed","output":[{"type":"reasoning","content":null},{"type":"message","content":[{"type":"output_text","text":"[1,"},{"type":"output_text","text":"2]"}]}]}"#;
        assert_eq!(
            output(Format::Responses, json, responses).as_deref(),
            Some("[1,2]")
        );
        let responses_stream = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"[1,\"}\n\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"2]\"}\n\n";
        assert_eq!(
            output(Format::Responses, sse, responses_stream).as_deref(),
            Some("[1,2]")
        );
        let messages = r#"{"type":"message","content":[{"type":"thinking","thinking":"x"},{"type":"text","text":"{}"}],"stop_reason":"end_turn"}"#;
        assert_eq!(
            output(Format::Messages, json, messages).as_deref(),
            Some("{}")
        );
        let messages_stream = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"{\\\"b\\\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\":2}\"}}\n\n";
        assert_eq!(
            output(Format::Messages, sse, messages_stream).as_deref(),
            Some("{\"b\":2}")
        );
        // Content of another shape (a list of parts) is text not read: not whole either.
        let parts =
            r#"{"choices":[{"index":0,"message":{"content":[{"type":"text","text":"{}"}]}}]}"#;
        assert_eq!(output(Format::ChatCompletions, json, parts), None);
        // Past the limit the text is not whole: it cannot be judged.
        let long = format!(
            r#"{{"choices":[{{"index":0,"message":{{"content":"{}"}}}}]}}"#,
            "x".repeat(65)
        );
        assert_eq!(output(Format::ChatCompletions, json, &long), None);
    }

    #[test]
    fn compressed_json_is_read() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(BODY).unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(BODY).unwrap();
        let mut br = Vec::new();
        brotli_compress(BODY, &mut br);
        for (encoding, body) in [
            ("gzip", gz.finish().unwrap()),
            ("deflate", zlib.finish().unwrap()),
            ("br", br),
            ("identity", BODY.to_vec()),
        ] {
            let facts = read(encoding, body);
            assert_eq!(facts.unparsed, None, "{encoding}");
            assert_eq!(
                (facts.input_tokens, facts.output_tokens),
                (Some(3), Some(1))
            );
            assert_eq!(facts.finish_reasons, [FinishReason::Stop]);
        }
        assert_eq!(
            read("gzip", b"not gzip".to_vec()).unparsed,
            Some(Unparsed::ResponseContentEncoding)
        );
        assert_eq!(
            read("zstd", BODY.to_vec()).unparsed,
            Some(Unparsed::ResponseContentEncoding)
        );
    }

    #[test]
    fn a_stream_of_endless_tool_calls_keeps_bounded_state() {
        let mut r = ResponseReader::new(
            Format::ChatCompletions,
            StatusCode::OK,
            Some(b"text/event-stream"),
            None,
        );
        for i in 0..5_000u32 {
            let e = format!(
                "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"tool_calls\":[{{\"index\":{i},\"function\":{{\"name\":\"f\",\"arguments\":\"{{}}\"}}}}]}},\"finish_reason\":null}}]}}\n\n"
            );
            r.feed(&Bytes::from(e));
        }
        r.feed(&Bytes::from_static(b"data: [DONE]\n\n"));
        let facts = r.finish(true);
        assert_eq!(facts.tool_calls.len(), super::super::calls::MAX_TOOL_CALLS);
        assert_eq!(facts.unparsed, Some(Unparsed::ResponseTooLarge));
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..8 {
            gz.write_all(&zeros).unwrap();
        }
        let facts = read("gzip", gz.finish().unwrap());
        assert_eq!(facts.unparsed, Some(Unparsed::ResponseTooLarge));
    }

    /// Brotli's "uncompressed" meta-blocks: a valid stream without a compressor crate.
    fn brotli_compress(data: &[u8], out: &mut Vec<u8>) {
        // WBITS=16 (0), then one uncompressed meta-block per <=65536 bytes, then ISLAST empty.
        let mut bits: u64 = 0;
        let mut n = 0u32;
        let put = |out: &mut Vec<u8>, value: u64, count: u32, bits: &mut u64, n: &mut u32| {
            *bits |= value << *n;
            *n += count;
            while *n >= 8 {
                out.push(*bits as u8);
                *bits >>= 8;
                *n -= 8;
            }
        };
        put(out, 0, 1, &mut bits, &mut n); // WBITS = 16
        for block in data.chunks(65536) {
            put(out, 0, 1, &mut bits, &mut n); // ISLAST = 0
            put(out, 0, 2, &mut bits, &mut n); // MNIBBLES = 4
            put(out, (block.len() - 1) as u64, 16, &mut bits, &mut n); // MLEN - 1
            put(out, 1, 1, &mut bits, &mut n); // ISUNCOMPRESSED
            if n > 0 {
                put(out, 0, 8 - n, &mut bits, &mut n); // pad to a byte
            }
            out.extend_from_slice(block);
        }
        put(out, 1, 1, &mut bits, &mut n); // ISLAST
        put(out, 1, 1, &mut bits, &mut n); // ISLASTEMPTY
        if n > 0 {
            put(out, 0, 8 - n, &mut bits, &mut n);
        }
    }
}
