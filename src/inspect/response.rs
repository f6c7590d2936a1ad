//! The response side of an LLM call: one reader per response, fed each chunk as it passes to the
//! client, asked at the end what it learned.

use bytes::Bytes;
use http::StatusCode;

use super::sse::{SseItem, SseParser};
use super::{anthropic, openai, FinishReason, Format, ToolCall, Unparsed, MAX_INSPECTED_BODY};

/// What a response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// Tokens as the provider reported them; `None` when it did not.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// One per choice (Chat Completions), one per response otherwise.
    pub finish_reasons: Vec<FinishReason>,
    /// Complete tool calls, in the order they completed.
    pub tool_calls: Vec<ToolCall>,
    /// Stream events that carried output text or a tool call.
    pub output_chunks: u32,
    pub unparsed: Option<Unparsed>,
}

impl ResponseFacts {
    pub(super) fn unparsed(&mut self, why: Unparsed) {
        self.unparsed.get_or_insert(why);
    }
}

/// A tool call being assembled from stream deltas.
pub(super) struct PartialCall {
    /// Which call this is (choice and tool index, or content block index).
    pub key: (u32, u32),
    pub name: String,
    pub arguments: String,
    /// The arguments outgrew the limit: they cannot be judged.
    pub overflow: bool,
}

/// Tool calls in progress, with their arguments' total size bounded.
#[derive(Default)]
pub(super) struct ToolCalls {
    pub open: Vec<PartialCall>,
    bytes: usize,
}

impl ToolCalls {
    pub fn start(&mut self, key: (u32, u32), name: &str) -> &mut PartialCall {
        let i = match self.open.iter().position(|c| c.key == key) {
            Some(i) => i,
            None => {
                self.open.push(PartialCall {
                    key,
                    name: String::new(),
                    arguments: String::new(),
                    overflow: false,
                });
                self.open.len() - 1
            }
        };
        let call = &mut self.open[i];
        if call.name.len() + name.len() <= 256 {
            call.name.push_str(name);
        }
        call
    }

    pub fn append(&mut self, key: (u32, u32), part: &str, facts: &mut ResponseFacts) {
        let over = self.bytes + part.len() > MAX_INSPECTED_BODY;
        let call = self.start(key, "");
        if over || call.overflow {
            call.overflow = true;
            call.arguments = String::new();
            facts.unparsed(Unparsed::ResponseTooLarge);
        } else {
            call.arguments.push_str(part);
            self.bytes += part.len();
        }
    }

    /// Completes the calls `select` picks; `empty_is_valid` for Anthropic, whose streamed
    /// tool input with no deltas is `{}`.
    pub fn complete(
        &mut self,
        select: impl Fn(&PartialCall) -> bool,
        empty_is_valid: bool,
        facts: &mut ResponseFacts,
    ) {
        let mut i = 0;
        while i < self.open.len() {
            if select(&self.open[i]) {
                let call = self.open.remove(i);
                self.bytes -= call.arguments.len();
                let valid = call.overflow
                    || (empty_is_valid && call.arguments.is_empty())
                    || super::is_json(call.arguments.as_bytes());
                facts.tool_calls.push(ToolCall {
                    name: call.name,
                    arguments_valid: valid,
                });
            } else {
                i += 1;
            }
        }
    }
}

/// The per-format state of a stream.
pub(super) enum StreamState {
    Chat(openai::ChatStream),
    Responses(openai::ResponsesStream),
    Messages(anthropic::MessagesStream),
}

enum BodyReader {
    Sse(SseParser),
    /// Chunks kept (reference counts, not copies) until the body ends.
    Json {
        chunks: Vec<Bytes>,
        len: usize,
    },
    /// Nothing to read (an error status, an unreadable body).
    Skip,
}

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
        } else if content_encoding.is_some_and(|e| !e.eq_ignore_ascii_case(b"identity")) {
            facts.unparsed(Unparsed::ResponseContentEncoding);
            BodyReader::Skip
        } else {
            let media = content_type.map(media_type).unwrap_or_default();
            if media.eq_ignore_ascii_case(b"text/event-stream") {
                BodyReader::Sse(SseParser::new(MAX_INSPECTED_BODY))
            } else if media.eq_ignore_ascii_case(b"application/json")
                || (media.len() > 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"))
            {
                BodyReader::Json {
                    chunks: Vec::new(),
                    len: 0,
                }
            } else {
                // Judged at the end: an empty body of any type is no problem.
                BodyReader::Json {
                    chunks: Vec::new(),
                    len: usize::MAX,
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

    pub fn is_stream(&self) -> bool {
        matches!(self.body, BodyReader::Sse(_))
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
                            Ok(true) => facts.output_chunks += 1,
                            Ok(false) => {}
                            Err(why) => facts.unparsed(why),
                        }
                    }
                });
                self.facts.output_chunks - before
            }
            BodyReader::Json { chunks, len } => {
                if *len == usize::MAX {
                    if !chunk.is_empty() {
                        self.facts.unparsed(Unparsed::ResponseContentType);
                        self.body = BodyReader::Skip;
                    }
                } else if *len + chunk.len() > MAX_INSPECTED_BODY {
                    self.facts.unparsed(Unparsed::ResponseTooLarge);
                    self.body = BodyReader::Skip;
                } else {
                    *len += chunk.len();
                    chunks.push(chunk.clone());
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
            BodyReader::Json { chunks, len } if complete && len != usize::MAX => {
                let whole = match chunks.len() {
                    1 => chunks.into_iter().next().unwrap_or_default(),
                    _ => {
                        let mut all = Vec::with_capacity(len);
                        chunks.iter().for_each(|c| all.extend_from_slice(c));
                        Bytes::from(all)
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
            BodyReader::Json { .. } | BodyReader::Skip => {
                if !complete && self.facts.finish_reasons.is_empty() {
                    self.facts.finish_reasons.push(FinishReason::Error);
                }
            }
        }
        self.facts
    }
}
