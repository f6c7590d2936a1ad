//! The text a response says, for the safety detectors: decoded from the body as it passes,
//! never the raw bytes where they differ.
//!
//! - JSON: string values with their escapes decoded (`\n`, `\"`, `\u00e9`, surrogate pairs). On
//!   the `agent` role every string value counts ([`Keys::All`]); on the `llm` role only the
//!   model's output ([`Keys::Output`]: values under `content`, `text`, `refusal` and `delta`,
//!   which is where the Chat Completions, Responses and Messages APIs put generated text, whole
//!   or streamed), not ids, model names or roles. Values of one document are separated by a
//!   newline, so that two fields never join into one match.
//! - SSE: each event's data read as JSON when it is JSON, else as text; the events' text is
//!   joined without a separator, so that a match split across two deltas is found.
//! - Any other text type: the bytes as they are.
//!
//! A plain state machine over bytes: memory is a few dozen bytes whatever the body, and no
//! JSON is validated (a malformed body yields what its strings say, and passes untouched).

use super::sse::{SseItem, SseParser};

/// Which JSON string values are text to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Every string value (an agent's answer: its shape is the agent's own).
    All,
    /// The values LLM APIs put output text in.
    Output,
}

const OUTPUT_KEYS: [&[u8]; 4] = [b"content", b"text", b"refusal", b"delta"];
/// Keys longer than this are never output keys: kept only this far.
const KEY_MAX: usize = 16;
/// Containers tracked for their kind; deeper ones count as unkeyed (their text still counts
/// under [`Keys::All`]).
const MAX_DEPTH: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Outside,
    /// In an object key.
    Key,
    /// In a string value; `emit` when it is text to inspect.
    Str { emit: bool },
    /// After a backslash.
    Escape { key: bool, emit: bool },
    /// In `\uXXXX`: the hex digits so far.
    Unicode { emit: bool, value: u16, digits: u8 },
    /// In a number (text under [`Keys::All`]: an agent may answer a card number as one).
    Number,
}

/// Streams the text of a JSON document (or of several in a row, with [`JsonText::reset`]).
pub struct JsonText {
    keys: Keys,
    state: State,
    depth: u32,
    /// Bit `d`: the container at depth `d` (1-based) is an array.
    arrays: u64,
    /// Bit `d`: the array at depth `d` holds output (its key was an output key).
    output_arrays: u64,
    /// In the current object: the next string is a key.
    expect_key: bool,
    key: [u8; KEY_MAX],
    key_len: usize,
    /// The last key read is an output key.
    key_is_output: bool,
    /// A value has been emitted in this document: the next one is separated from it.
    emitted: bool,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
}

impl JsonText {
    pub fn new(keys: Keys) -> JsonText {
        JsonText {
            keys,
            state: State::Outside,
            depth: 0,
            arrays: 0,
            output_arrays: 0,
            expect_key: false,
            key: [0; KEY_MAX],
            key_len: 0,
            key_is_output: false,
            emitted: false,
            high: None,
        }
    }

    /// A new document begins (the next SSE event's data): its text follows the last one's with
    /// no separator.
    pub fn reset(&mut self) {
        *self = JsonText::new(self.keys);
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.depth <= MAX_DEPTH && self.arrays & (1 << (self.depth - 1)) != 0
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.depth <= MAX_DEPTH && self.arrays & (1 << (self.depth - 1)) == 0
    }

    /// Whether a value starting now is output text.
    fn value_is_output(&self) -> bool {
        match self.keys {
            Keys::All => true,
            Keys::Output if self.in_object() => self.key_is_output,
            Keys::Output if self.in_array() => self.output_arrays & (1 << (self.depth - 1)) != 0,
            Keys::Output => false,
        }
    }

    fn push(&mut self, array: bool) {
        let output = array && self.keys == Keys::Output && self.value_is_output();
        self.depth = self.depth.saturating_add(1);
        if self.depth <= MAX_DEPTH {
            let bit = 1u64 << (self.depth - 1);
            self.arrays = if array {
                self.arrays | bit
            } else {
                self.arrays & !bit
            };
            self.output_arrays = if output {
                self.output_arrays | bit
            } else {
                self.output_arrays & !bit
            };
        }
        self.expect_key = !array;
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.expect_key = false;
    }

    /// Feeds bytes of the document; text goes to `sink` in pieces.
    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            match self.state {
                State::Outside => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    match b {
                        b'{' => self.push(false),
                        b'[' => self.push(true),
                        b'}' | b']' => self.pop(),
                        b',' => self.expect_key = self.in_object(),
                        b':' => self.expect_key = false,
                        // Every key is text too when every value is: `{"jane@acme.io": 1}`.
                        b'"' if self.expect_key && self.in_object() && self.keys == Keys::All => {
                            self.expect_key = false;
                            if self.emitted {
                                sink(b"\n");
                            }
                            self.emitted = true;
                            self.state = State::Str { emit: true };
                        }
                        b'"' if self.expect_key && self.in_object() => {
                            self.key_len = 0;
                            self.state = State::Key;
                        }
                        b'-' | b'0'..=b'9' if self.keys == Keys::All => {
                            if self.emitted {
                                sink(b"\n");
                            }
                            self.emitted = true;
                            sink(std::slice::from_ref(&b));
                            self.state = State::Number;
                        }
                        b'"' => {
                            let emit = self.value_is_output();
                            if emit && self.emitted {
                                sink(b"\n");
                            }
                            self.emitted |= emit;
                            self.state = State::Str { emit };
                        }
                        _ => {}
                    }
                }
                State::Number => {
                    let end = bytes
                        .iter()
                        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(bytes.len());
                    if end > 0 {
                        sink(&bytes[..end]);
                    }
                    bytes = &bytes[end..];
                    if !bytes.is_empty() {
                        // The byte after the number is read as structure.
                        self.state = State::Outside;
                    }
                }
                State::Key => {
                    let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
                    // `key_len` past KEY_MAX: too long to be an output key.
                    let kept = self.key_len.min(KEY_MAX);
                    let take = end.min(KEY_MAX - kept);
                    self.key[kept..kept + take].copy_from_slice(&bytes[..take]);
                    self.key_len = self.key_len.saturating_add(end).min(KEY_MAX + 1);
                    match bytes.get(end) {
                        Some(b'"') => {
                            let key = &self.key[..self.key_len.min(KEY_MAX)];
                            self.key_is_output =
                                self.key_len <= KEY_MAX && OUTPUT_KEYS.contains(&key);
                            self.expect_key = false;
                            self.state = State::Outside;
                        }
                        Some(_) => {
                            self.state = State::Escape {
                                key: true,
                                emit: false,
                            }
                        }
                        None => {}
                    }
                    bytes = &bytes[(end + 1).min(bytes.len())..];
                }
                State::Str { emit } => {
                    let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
                    if emit && end > 0 {
                        self.flush_high(sink);
                        sink(&bytes[..end]);
                    }
                    match bytes.get(end) {
                        Some(b'"') => {
                            self.flush_high_if(emit, sink);
                            self.state = State::Outside;
                        }
                        Some(_) => self.state = State::Escape { key: false, emit },
                        None => {}
                    }
                    bytes = &bytes[(end + 1).min(bytes.len())..];
                }
                State::Escape { key, emit } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if key {
                        // Keys with escapes are never output keys.
                        self.key_len = KEY_MAX + 1;
                        self.state = State::Key;
                        continue;
                    }
                    if b == b'u' {
                        self.state = State::Unicode {
                            emit,
                            value: 0,
                            digits: 0,
                        };
                        continue;
                    }
                    if emit {
                        self.flush_high(sink);
                        let decoded: &[u8] = match b {
                            b'n' => b"\n",
                            b't' => b"\t",
                            b'r' => b"\r",
                            b'b' => b"\x08",
                            b'f' => b"\x0c",
                            b'"' => b"\"",
                            b'\\' => b"\\",
                            b'/' => b"/",
                            // Not JSON: the byte as it came.
                            _ => std::slice::from_ref(&b),
                        };
                        sink(decoded);
                    }
                    self.state = State::Str { emit };
                }
                State::Unicode {
                    emit,
                    value,
                    digits,
                } => {
                    let b = bytes[0];
                    let Some(d) = (b as char).to_digit(16) else {
                        // Not a \u escape after all: go on with the string from this byte.
                        self.state = State::Str { emit };
                        continue;
                    };
                    bytes = &bytes[1..];
                    let value = (value << 4) | d as u16;
                    if digits < 3 {
                        self.state = State::Unicode {
                            emit,
                            value,
                            digits: digits + 1,
                        };
                        continue;
                    }
                    self.state = State::Str { emit };
                    if emit {
                        self.code_unit(value, sink);
                    }
                }
            }
        }
    }

    /// A `\uXXXX` code unit: a surrogate pair makes one character; a lone half is U+FFFD.
    fn code_unit(&mut self, unit: u16, sink: &mut dyn FnMut(&[u8])) {
        let c = match (self.high.take(), unit) {
            (Some(high), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                char::from_u32(c).unwrap_or('\u{FFFD}')
            }
            (high, 0xD800..=0xDBFF) => {
                if high.is_some() {
                    put(sink, '\u{FFFD}');
                }
                self.high = Some(unit);
                return;
            }
            (high, _) => {
                if high.is_some() {
                    put(sink, '\u{FFFD}');
                }
                char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}')
            }
        };
        put(sink, c);
    }

    fn flush_high(&mut self, sink: &mut dyn FnMut(&[u8])) {
        if self.high.take().is_some() {
            put(sink, '\u{FFFD}');
        }
    }

    fn flush_high_if(&mut self, emit: bool, sink: &mut dyn FnMut(&[u8])) {
        if emit {
            self.flush_high(sink);
        }
    }
}

fn put(sink: &mut dyn FnMut(&[u8]), c: char) {
    let mut buf = [0u8; 4];
    sink(c.encode_utf8(&mut buf).as_bytes());
}

/// How a response body's text is read.
pub enum BodyText {
    Json(JsonText),
    /// `lost`: an event was past the parser's size limit, its text never seen.
    Sse {
        parser: SseParser,
        json: JsonText,
        lost: bool,
    },
    Plain,
    /// A gzip or deflate body, decoded as it passes and read as `inner` reads it.
    Inflating {
        inflater: super::inflate::Inflater,
        inner: Box<BodyText>,
    },
    /// JSON compressed with brotli: kept, up to [`super::MAX_INSPECTED_BODY`], and read when it
    /// ends. `lost` past that, or when it does not decode.
    Compressed {
        json: JsonText,
        body: super::Collected,
        encoding: super::response::Encoding,
        lost: bool,
    },
}

/// Why a body has no text to read as it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotText {
    /// Its type carries no text (an image, audio, `application/octet-stream`): nothing to find.
    Binary,
    /// It has text, but in a form the sidecar cannot read as it passes: a content coding it
    /// does not know, codings chained, or brotli on anything but JSON.
    Unreadable,
}

impl BodyText {
    /// The reader for a body with this `content-type` and `content-encoding`. A body without a
    /// type is read as text.
    pub fn for_body(
        keys: Keys,
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
    ) -> Result<BodyText, NotText> {
        use super::response::Encoding;
        let encoding = Encoding::of(content_encoding).ok_or(NotText::Unreadable)?;
        let ct = content_type.unwrap_or(b"text/plain");
        let media = ct[..ct.iter().position(|&b| b == b';').unwrap_or(ct.len())].trim_ascii();
        let lower = media.to_ascii_lowercase();
        let json = lower == b"application/json" || lower.ends_with(b"+json");
        let plain = lower.starts_with(b"text/")
            || lower.is_empty()
            // JSON lines, XML, forms: text, read as it is.
            || [&b"json"[..], b"xml", b"x-www-form-urlencoded", b"javascript"]
                .iter()
                .any(|t| lower.windows(t.len()).any(|w| w == *t));
        let reader = if lower == b"text/event-stream" {
            BodyText::Sse {
                parser: SseParser::new(super::MAX_INSPECTED_BODY),
                json: JsonText::new(keys),
                lost: false,
            }
        } else if json {
            BodyText::Json(JsonText::new(keys))
        } else if plain {
            BodyText::Plain
        } else {
            return Err(NotText::Binary);
        };
        let inflater = match encoding {
            Encoding::Identity => return Ok(reader),
            Encoding::Gzip => super::inflate::Inflater::gzip(),
            Encoding::Deflate => super::inflate::Inflater::deflate(),
            // Brotli is read whole: JSON only (a brotli stream's window can be 16 MiB).
            Encoding::Brotli if json => {
                return Ok(BodyText::Compressed {
                    json: JsonText::new(keys),
                    body: super::Collected::default(),
                    encoding,
                    lost: false,
                })
            }
            Encoding::Brotli => return Err(NotText::Unreadable),
        };
        Ok(BodyText::Inflating {
            inflater,
            inner: Box::new(reader),
        })
    }

    /// Counts what the reader keeps (an SSE event, a brotli body) against `budget`: past it, the
    /// text is lost (and under `block`, blocked as uninspectable).
    pub fn reserve_from(&mut self, budget: &crate::budget::BodyBudget) {
        use crate::budget::Held;
        match self {
            BodyText::Sse { parser, .. } => parser.reserve_from(budget.reserve(Held::SseEvent)),
            BodyText::Compressed { body, .. } => {
                let b = std::mem::take(body);
                *body = b.reserve_from(budget.reserve(Held::ResponseRead));
            }
            BodyText::Inflating { inner, .. } => inner.reserve_from(budget),
            BodyText::Json(_) | BodyText::Plain => {}
        }
    }

    pub fn is_stream(&self) -> bool {
        match self {
            BodyText::Sse { .. } => true,
            BodyText::Inflating { inner, .. } => inner.is_stream(),
            _ => false,
        }
    }

    /// Text was lost (an SSE event past [`super::MAX_INSPECTED_BODY`], a body that does not
    /// decode): what the body says was not all seen.
    pub fn lost(&self) -> bool {
        match self {
            BodyText::Sse { lost, .. } | BodyText::Compressed { lost, .. } => *lost,
            BodyText::Inflating { inflater, inner } => inflater.failed() || inner.lost(),
            _ => false,
        }
    }

    /// The body ended: a compressed one is decoded and read now.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) {
        match self {
            BodyText::Compressed {
                json,
                body,
                encoding,
                lost,
            } => {
                if *lost {
                    return;
                }
                match encoding.decode(std::mem::take(body).into_bytes()) {
                    Ok(whole) => json.feed(&whole, sink),
                    Err(_) => *lost = true,
                }
            }
            BodyText::Inflating { inflater, inner } => {
                inflater.finish(&mut |decoded| inner.feed(decoded, sink));
                inner.finish(sink);
            }
            _ => {}
        }
    }

    /// Every byte fed so far has given its text (no SSE event is half-read).
    pub fn settled(&self) -> bool {
        match self {
            BodyText::Sse { parser, .. } => parser.is_between_events(),
            BodyText::Inflating { inner, .. } => inner.settled(),
            _ => true,
        }
    }

    /// Feeds a chunk of the body; its text goes to `sink`.
    pub fn feed(&mut self, chunk: &bytes::Bytes, sink: &mut dyn FnMut(&[u8])) {
        match self {
            BodyText::Json(json) => json.feed(chunk, sink),
            BodyText::Plain => sink(chunk),
            BodyText::Inflating { inflater, inner } => {
                inflater.feed(chunk, &mut |decoded| inner.feed(decoded, sink));
            }
            BodyText::Compressed { body, lost, .. } => {
                if !*lost && !body.push(chunk) {
                    *lost = true;
                    *body = super::Collected::default();
                }
            }
            BodyText::Sse { parser, json, lost } => parser.feed(chunk, &mut |item| {
                if matches!(item, SseItem::Oversized) {
                    *lost = true;
                }
                if let SseItem::Event(e) = item {
                    let data = e.data.trim_ascii_start();
                    if data
                        .first()
                        .is_some_and(|b| matches!(b, b'{' | b'[' | b'"'))
                    {
                        json.reset();
                        json.feed(data, sink);
                    } else if json.keys == Keys::All && e.data != b"[DONE]" {
                        sink(e.data);
                    }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(keys: Keys, pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        let mut j = JsonText::new(keys);
        for p in pieces {
            j.feed(p, &mut |t| out.extend_from_slice(t));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn string_values_with_escapes_decoded_in_any_chunking() {
        let doc = br#"{"id":"x1","answer":"mail jane\u0040acme.io\n\"now\"","n":[1,"two",{"k":"v\ud83d\ude00"}]}"#;
        let whole = text(Keys::All, &[doc]);
        assert_eq!(
            whole,
            "id\nx1\nanswer\nmail jane@acme.io\n\"now\"\nn\n1\ntwo\nk\nv\u{1F600}"
        );
        for cut in 1..doc.len() {
            assert_eq!(text(Keys::All, &[&doc[..cut], &doc[cut..]]), whole, "{cut}");
        }
    }

    #[test]
    fn numbers_and_keys_are_text_of_an_agents_answer() {
        let doc = br#"{"card": 4111111111111111, "jane.doe@acme.io": "customer", "n": -1.5e3}"#;
        assert_eq!(
            text(Keys::All, &[doc]),
            "card\n4111111111111111\njane.doe@acme.io\ncustomer\nn\n-1.5e3"
        );
        for cut in 1..doc.len() {
            assert_eq!(
                text(Keys::All, &[&doc[..cut], &doc[cut..]]),
                text(Keys::All, &[doc])
            );
        }
        // Not on the llm role: a token count is no output.
        assert_eq!(text(Keys::Output, &[doc]), "");
    }

    #[test]
    fn output_keys_only_on_the_llm_role() {
        let chat = br#"{"id":"chatcmpl-1","model":"gpt","choices":[{"message":{"role":"assistant","content":"Hi jane@acme.io"},"finish_reason":"stop"}]}"#;
        assert_eq!(text(Keys::Output, &[chat]), "Hi jane@acme.io");
        let messages = br#"{"type":"message","content":[{"type":"text","text":"A"},{"type":"text","text":"B"}],"stop_reason":"end_turn"}"#;
        assert_eq!(text(Keys::Output, &[messages]), "A\nB");
        let parts = br#"{"content":["x","y"],"other":["z"]}"#;
        assert_eq!(text(Keys::Output, &[parts]), "x\ny");
        // A key with an escape, a lone surrogate, a long key.
        let odd = br#"{"con\u0074ent":"no","text":"a\ud800b","a_very_long_key_name_text":"no"}"#;
        assert_eq!(text(Keys::Output, &[odd]), "a\u{FFFD}b");
    }

    fn read_all(t: &mut BodyText, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            t.feed(&bytes::Bytes::copy_from_slice(p), &mut |x| {
                out.extend_from_slice(x)
            });
        }
        t.finish(&mut |x| out.extend_from_slice(x));
        out
    }

    #[test]
    fn compressed_bodies_are_read() {
        use std::io::Write;
        let doc = br#"{"choices":[{"message":{"content":"mail jane@acme.io"}}]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(doc).unwrap();
        let gz = gz.finish().unwrap();
        let (a, b) = gz.split_at(gz.len() / 2);
        // gzip (and deflate): decoded as it passes, any type of text.
        let mut t =
            BodyText::for_body(Keys::Output, Some(b"application/json"), Some(b"gzip")).unwrap();
        assert!(matches!(t, BodyText::Inflating { .. }));
        assert_eq!(read_all(&mut t, &[a, b]), b"mail jane@acme.io");
        assert!(!t.lost());
        let events = b"data: {\"choices\":[{\"delta\":{\"content\":\"mail jane@acme.io\"}}]}\n\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(events).unwrap();
        let gz_events = gz.finish().unwrap();
        let mut t =
            BodyText::for_body(Keys::Output, Some(b"text/event-stream"), Some(b"gzip")).unwrap();
        assert!(t.is_stream());
        assert_eq!(read_all(&mut t, &[&gz_events]), b"mail jane@acme.io");
        // Not gzip after all: lost, not read as something else.
        let mut t =
            BodyText::for_body(Keys::Output, Some(b"application/json"), Some(b"gzip")).unwrap();
        read_all(&mut t, &[b"not gzip"]);
        assert!(t.lost());
    }

    #[test]
    fn what_has_no_text_to_read() {
        let of = |ct: Option<&'static [u8]>, ce: Option<&'static [u8]>| {
            BodyText::for_body(Keys::All, ct, ce).err()
        };
        // Unknown codings, chains of them, brotli on a stream: text that cannot be read.
        assert_eq!(
            of(Some(b"application/json"), Some(b"zstd")),
            Some(NotText::Unreadable)
        );
        assert_eq!(
            of(Some(b"application/json"), Some(b"gzip, br")),
            Some(NotText::Unreadable)
        );
        assert_eq!(
            of(Some(b"text/event-stream"), Some(b"br")),
            Some(NotText::Unreadable)
        );
        // Binary types: nothing to read.
        assert_eq!(of(Some(b"image/png"), None), Some(NotText::Binary));
        assert_eq!(
            of(Some(b"application/octet-stream"), Some(b"gzip")),
            Some(NotText::Binary)
        );
        // No type: text. JSON lines, XML: text.
        for ct in [
            None,
            Some(&b"application/x-ndjson"[..]),
            Some(b"application/xml"),
        ] {
            assert!(matches!(
                BodyText::for_body(Keys::All, ct, None),
                Ok(BodyText::Plain)
            ));
        }
        assert!(of(Some(b"application/json"), Some(b"br")).is_none());
    }

    proptest::proptest! {
        /// Any bytes (JSON-like or not), cut anywhere: no panic, and the same text as in one
        /// piece.
        #[test]
        fn any_input_in_any_chunking(
            doc in proptest::collection::vec(proptest::sample::select(
                br#"{}[]:,"\u0041dD8d0eEfx n1"#.to_vec()), 0..200),
            cut in 0usize..200,
        ) {
            let cut = cut.min(doc.len());
            for keys in [Keys::All, Keys::Output] {
                proptest::prop_assert_eq!(
                    text(keys, &[&doc]),
                    text(keys, &[&doc[..cut], &doc[cut..]])
                );
            }
        }
    }

    #[test]
    fn sse_deltas_are_joined() {
        let mut t = BodyText::for_body(
            Keys::Output,
            Some(b"text/event-stream; charset=utf-8"),
            None,
        )
        .unwrap();
        let mut out = Vec::new();
        let events: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"mail jane@ac\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"me.io\"}}]}\n",
            b"\ndata: [DONE]\n\n",
        ];
        for (i, e) in events.iter().enumerate() {
            t.feed(&bytes::Bytes::copy_from_slice(e), &mut |x| {
                out.extend_from_slice(x)
            });
            assert_eq!(t.settled(), i != 1, "{i}");
        }
        assert_eq!(out, b"mail jane@acme.io");
        assert!(matches!(
            BodyText::for_body(Keys::All, Some(b"text/plain"), None),
            Ok(BodyText::Plain)
        ));
    }
}
