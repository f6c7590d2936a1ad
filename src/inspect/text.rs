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

use super::json_text::JsonText;
pub(crate) use super::json_text::Keys;

/// How a response body's text is read.
#[derive(Debug)]
pub(crate) enum BodyText {
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
    pub(crate) fn for_body(
        keys: Keys,
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
    ) -> Result<BodyText, NotText> {
        use super::response::Encoding;
        let encoding = Encoding::of(content_encoding).ok_or(NotText::Unreadable)?;
        let ct = content_type.unwrap_or(b"text/plain");
        let media = ct[..ct.iter().position(|&b| b == b';').unwrap_or(ct.len())].trim_ascii();
        // Compared in any case, in place (no lowered copy: this runs for every response read).
        let starts = |t: &[u8]| {
            media
                .get(..t.len())
                .is_some_and(|m| m.eq_ignore_ascii_case(t))
        };
        let ends = |t: &[u8]| {
            let from = media.len().checked_sub(t.len());
            from.is_some_and(|from| media[from..].eq_ignore_ascii_case(t))
        };
        let has = |t: &[u8]| media.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t));
        let json = media.eq_ignore_ascii_case(b"application/json") || ends(b"+json");
        let plain = || {
            starts(b"text/")
                || media.is_empty()
                // JSON lines, XML, forms: text, read as it is.
                || [&b"json"[..], b"xml", b"x-www-form-urlencoded", b"javascript"]
                    .iter()
                    .any(|t| has(t))
        };
        let reader = if media.eq_ignore_ascii_case(b"text/event-stream") {
            BodyText::Sse {
                parser: SseParser::new(super::MAX_INSPECTED_BODY),
                json: JsonText::new(keys),
                lost: false,
            }
        } else if json {
            BodyText::Json(JsonText::new(keys))
        } else if plain() {
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
    pub(crate) fn reserve_from(&mut self, budget: &crate::budget::BodyBudget) {
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

    pub(crate) fn is_stream(&self) -> bool {
        match self {
            BodyText::Sse { .. } => true,
            BodyText::Inflating { inner, .. } => inner.is_stream(),
            _ => false,
        }
    }

    /// Text was lost (an SSE event past [`super::MAX_INSPECTED_BODY`], a body that does not
    /// decode): what the body says was not all seen.
    pub(crate) fn lost(&self) -> bool {
        match self {
            BodyText::Sse { lost, .. } | BodyText::Compressed { lost, .. } => *lost,
            BodyText::Inflating { inflater, inner } => inflater.failed() || inner.lost(),
            _ => false,
        }
    }

    /// The body ended: a compressed one is decoded and read now.
    pub(crate) fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) {
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
    pub(crate) fn settled(&self) -> bool {
        match self {
            BodyText::Sse { parser, .. } => parser.is_between_events(),
            BodyText::Inflating { inner, .. } => inner.settled(),
            _ => true,
        }
    }

    /// Feeds a chunk of the body; its text goes to `sink`.
    pub(crate) fn feed(&mut self, chunk: &bytes::Bytes, sink: &mut dyn FnMut(&[u8])) {
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
                    } else if json.keys != Keys::Output && e.data != b"[DONE]" {
                        sink(e.data);
                    }
                }
            }),
        }
    }
}

/// The first bytes of a body's text, as [`BodyText`] reads it: a JSON body's strings ([`Keys::All`]),
/// an SSE stream's output text ([`Keys::Answer`]), or plain text: a sample for the judge. `None`
/// for a body with no text to read, or a compressed one.
pub(crate) struct TextPrefix {
    text: BodyText,
    kept: super::collect::Prefix,
}

/// Sizes only: what is kept is a body's text.
impl std::fmt::Debug for TextPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextPrefix")
            .field("kept", &self.kept)
            .finish()
    }
}

impl TextPrefix {
    /// Keeps `limit` bytes of text at most, counted against `budget` (what is kept, and an SSE
    /// event being assembled).
    pub(crate) fn new(
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        limit: usize,
        budget: &crate::budget::BodyBudget,
    ) -> Option<TextPrefix> {
        let identity =
            content_encoding.is_none_or(|e| e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        if !identity {
            return None;
        }
        let stream = content_type.is_some_and(|ct| {
            let media = ct.split(|&b| b == b';').next().unwrap_or_default();
            media
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream")
        });
        let keys = if stream { Keys::Answer } else { Keys::All };
        let mut text = BodyText::for_body(keys, content_type, None).ok()?;
        text.reserve_from(budget);
        let reservation = budget.reserve(crate::budget::Held::JudgeSample);
        Some(TextPrefix {
            text,
            kept: super::collect::Prefix::new(limit, reservation),
        })
    }

    /// Reads the next chunk; once the prefix is full, the rest is not read (it is only noted
    /// that more came).
    pub(crate) fn push(&mut self, chunk: &bytes::Bytes) {
        if self.kept.is_full() {
            if !chunk.is_empty() {
                self.kept.lose();
            }
            return;
        }
        let kept = &mut self.kept;
        self.text.feed(chunk, &mut |t| kept.push(t));
    }

    /// The text kept, its reservation, and whether some went by unkept.
    pub(crate) fn finish(self) -> (bytes::Bytes, crate::budget::Reservation, bool) {
        let lost = self.text.lost();
        let (text, held, cut) = self.kept.finish();
        (text, held, cut || lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a [`TextPrefix`] of `limit` bytes keeps of `body` (sent as `ct`), and whether it
    /// says some went by.
    fn sample(ct: &str, body: &str, limit: usize) -> (String, bool) {
        let budget = crate::budget::BodyBudget::unlimited();
        let mut p = TextPrefix::new(Some(ct.as_bytes()), None, limit, &budget).unwrap();
        for part in body.as_bytes().chunks(5) {
            p.push(&bytes::Bytes::copy_from_slice(part));
        }
        let (text, _, cut) = p.finish();
        (String::from_utf8(text.to_vec()).unwrap(), cut)
    }

    #[test]
    fn a_judge_sample_keeps_the_text_of_a_body() {
        let json = r#"{"answer":"Paris","sources":["atlas"]}"#;
        let chat_stream = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"}}]}\n\ndata: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n";
        let plain_stream = "data: step one\n\ndata: step two\n\n";
        assert_eq!(
            sample("application/json", json, 100),
            ("answer\nParis\nsources\natlas".into(), false)
        );
        // A stream's output text, not its ids, models and roles.
        assert_eq!(
            sample("text/event-stream", chat_stream, 100),
            ("Hello world".into(), false)
        );
        assert_eq!(
            sample("text/event-stream; charset=utf-8", plain_stream, 100),
            ("step onestep two".into(), false)
        );
        assert_eq!(
            sample("text/plain", "a long text", 6),
            ("a long".into(), true)
        );
        let budget = crate::budget::BodyBudget::unlimited();
        assert!(TextPrefix::new(Some(b"image/png"), None, 9, &budget).is_none());
        let gzip = Some(&b"gzip"[..]);
        assert!(TextPrefix::new(Some(b"application/json"), gzip, 9, &budget).is_none());
    }

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

    #[test]
    fn output_keys_cut_anywhere_give_the_same_text() {
        // Keys read where they are when whole in a chunk, kept across chunks when cut; a key
        // with an escape or longer than any output key is none.
        let doc = br#"{"choices":[{"delta":{"content":"Hi","refusal":"no"},"text":"t"}],"x":{"contents":"n","delta":["d"],"con\u0074ent":"e","text_of_a_long_key":"l"}}"#;
        let whole = text(Keys::Output, &[doc]);
        assert_eq!(whole, "Hi\nno\nt\nd");
        for a in 1..doc.len() {
            for b in a..doc.len() {
                let pieces = [&doc[..a], &doc[a..b], &doc[b..]];
                assert_eq!(text(Keys::Output, &pieces), whole, "{a} {b}");
            }
        }
    }

    #[test]
    fn objects_deeper_than_tracked_read_their_strings_as_values() {
        // 70 objects deep, past the 64 tracked: the inner keys are no output keys, and under
        // `Keys::All` every string is text, keys or not.
        let mut doc = Vec::new();
        for _ in 0..70 {
            doc.extend_from_slice(br#"{"content":"#);
        }
        doc.extend_from_slice(br#""deep""#);
        doc.extend(std::iter::repeat_n(b'}', 70));
        assert_eq!(text(Keys::Output, &[&doc]), "");
        let all = format!("{}deep", "content\n".repeat(70));
        assert_eq!(text(Keys::All, &[&doc]), all);
        // 63 deep, within the tracked: the innermost value is output.
        let mut doc = Vec::new();
        for _ in 0..63 {
            doc.extend_from_slice(br#"{"content":"#);
        }
        doc.extend_from_slice(br#""in""#);
        doc.extend(std::iter::repeat_n(b'}', 63));
        assert_eq!(text(Keys::Output, &[&doc]), "in");
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

    #[test]
    fn media_types_are_read_in_any_case() {
        let of = |ct: &'static [u8]| BodyText::for_body(Keys::Output, Some(ct), None);
        assert!(matches!(
            of(b"Application/JSON; charset=utf-8"),
            Ok(BodyText::Json(_))
        ));
        assert!(matches!(
            of(b"application/vnd.api+JSON"),
            Ok(BodyText::Json(_))
        ));
        assert!(matches!(of(b"TEXT/Event-Stream"), Ok(BodyText::Sse { .. })));
        assert!(matches!(of(b"Application/X-NDJSON"), Ok(BodyText::Plain)));
        assert!(matches!(of(b" Text/HTML "), Ok(BodyText::Plain)));
        assert!(matches!(of(b"IMAGE/PNG"), Err(NotText::Binary)));
        assert!(matches!(of(b"json"), Ok(BodyText::Plain)));
        assert!(matches!(of(b"+json"), Ok(BodyText::Json(_))));
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
