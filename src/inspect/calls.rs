//! What a response reader gathers, whatever the provider's format: the response's facts (tokens,
//! finish reasons, tool calls), and the tool calls being assembled from a stream's fragments. The
//! per-format readers ([`super::openai`], [`super::anthropic`]) fill it; [`super::response`]
//! drives them.

use super::canon::{fingerprint, Arguments};
use super::{FinishReason, ToolCall, Unparsed, MAX_INSPECTED_BODY};

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
    /// The provider reported a failure inside a successful answer: an error event in the stream
    /// (Anthropic's `overloaded_error`, OpenAI's `error`), an error object or a failed response
    /// in a 2xx body. The call failed, whatever its status said.
    pub provider_error: bool,
    /// The model refused (OpenAI's `refusal`, Anthropic's `stop_reason: "refusal"`).
    pub refused: bool,
    /// The output text, when the reader was asked to keep it ([`super::ResponseReader::keep_output`]).
    pub output: Option<OutputText>,
}

/// The text a model generated (the first choice's, for Chat Completions), kept whole up to a
/// limit, against the body budget.
pub struct OutputText {
    text: String,
    limit: usize,
    reservation: crate::budget::Reservation,
    /// Past the limit (or the budget): the text is not whole and cannot be judged.
    overflow: bool,
}

/// Sizes only: what is kept is what a model wrote.
impl std::fmt::Debug for OutputText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputText")
            .field("len", &self.text.len())
            .field("overflow", &self.overflow)
            .finish()
    }
}

impl PartialEq for OutputText {
    fn eq(&self, other: &Self) -> bool {
        (&self.text, self.overflow) == (&other.text, other.overflow)
    }
}

impl Eq for OutputText {}

impl Clone for OutputText {
    /// A copy for tests and tools: not counted against any budget.
    fn clone(&self) -> Self {
        OutputText {
            text: self.text.clone(),
            limit: self.limit,
            reservation: crate::budget::Reservation::unbounded(crate::budget::Held::ResponseRead),
            overflow: self.overflow,
        }
    }
}

impl OutputText {
    pub(crate) fn new(limit: usize, reservation: crate::budget::Reservation) -> OutputText {
        OutputText {
            text: String::new(),
            limit,
            reservation,
            overflow: false,
        }
    }

    /// The whole text; `None` when it outgrew what is kept.
    pub fn whole(&self) -> Option<&str> {
        (!self.overflow).then_some(self.text.as_str())
    }

    pub(super) fn push(&mut self, part: &str) {
        if self.overflow || part.is_empty() {
            return;
        }
        let len = self.text.len() + part.len();
        if len > self.limit || !self.reservation.resize(len) {
            self.unknown();
            return;
        }
        self.text.push_str(part);
    }

    /// A JSON string value, its escapes decoded; `null` adds nothing, and any other value (a
    /// list of parts some servers send) makes the text unknown: it cannot be judged.
    pub(super) fn push_json(&mut self, value: &serde_json::value::RawValue) {
        if self.overflow || value.get() == "null" {
            return;
        }
        match serde_json::from_str::<std::borrow::Cow<'_, str>>(value.get()) {
            Ok(s) => self.push(&s),
            Err(_) => self.unknown(),
        }
    }

    /// Some of the text could not be read: it is not whole.
    fn unknown(&mut self) {
        self.overflow = true;
        self.text = String::new();
        self.reservation.resize(0);
    }
}

/// Tool calls kept per response (and in progress per stream): far past what a model makes, so
/// that a hostile stream cannot grow memory with them.
pub(super) const MAX_TOOL_CALLS: usize = 256;
/// Longest tool name kept (OpenAI allows 64 characters, Anthropic 128).
pub(super) const MAX_TOOL_NAME: usize = 256;

impl ResponseFacts {
    /// Output text, kept when the reader keeps it.
    pub(super) fn output(&mut self, part: Option<&str>) {
        if let (Some(o), Some(part)) = (self.output.as_mut(), part) {
            o.push(part);
        }
    }

    /// Output text as a JSON string value, kept when the reader keeps it.
    pub(super) fn output_json(&mut self, value: Option<&serde_json::value::RawValue>) {
        if let (Some(o), Some(v)) = (self.output.as_mut(), value) {
            o.push_json(v);
        }
    }

    pub(super) fn unparsed(&mut self, why: Unparsed) {
        self.unparsed.get_or_insert(why);
    }

    /// The provider said, inside its answer, that the call failed.
    pub(super) fn provider_failed(&mut self) {
        self.provider_error = true;
        self.finish_once(FinishReason::Error);
    }

    /// The one finish reason of a response that has a single one (Responses, Messages): the
    /// first end event counts, later ones are echoes.
    pub(super) fn finish_once(&mut self, reason: FinishReason) {
        if self.finish_reasons.is_empty() {
            self.finish_reasons.push(reason);
        }
    }

    /// Keeps a complete tool call, up to [`MAX_TOOL_CALLS`]; past it the body counts as too
    /// large to read whole.
    pub(super) fn push_call(&mut self, mut call: ToolCall) {
        if call.name.len() > MAX_TOOL_NAME {
            // No tool is declared with such a name: keep a bounded prefix, it still mismatches.
            crate::truncate_at_char(&mut call.name, MAX_TOOL_NAME);
        }
        if self.tool_calls.len() < MAX_TOOL_CALLS {
            self.tool_calls.push(call);
        } else {
            self.unparsed(Unparsed::ResponseTooLarge);
        }
    }
}

/// A tool call being assembled from stream deltas.
#[derive(Debug)]
pub(super) struct PartialCall {
    /// Which call this is (choice and tool index, or content block index).
    pub key: (u32, u32),
    pub name: String,
    pub arguments: String,
    /// The arguments outgrew the limit: they cannot be judged.
    pub overflow: bool,
    /// A custom tool's free-text input: not judged as JSON.
    pub free_form: bool,
}

/// Tool calls in progress, with their arguments' total size bounded.
#[derive(Debug, Default)]
pub(super) struct ToolCalls {
    pub open: Vec<PartialCall>,
    bytes: usize,
}

impl ToolCalls {
    /// The call with this key, opened if new (`None`: too many open at once; counted).
    fn call(&mut self, key: (u32, u32), facts: &mut ResponseFacts) -> Option<&mut PartialCall> {
        let i = match self.open.iter().position(|c| c.key == key) {
            Some(i) => i,
            None if self.open.len() >= MAX_TOOL_CALLS => {
                facts.unparsed(Unparsed::ResponseTooLarge);
                return None;
            }
            None => {
                self.open.push(PartialCall {
                    key,
                    name: String::new(),
                    arguments: String::new(),
                    overflow: false,
                    free_form: false,
                });
                self.open.len() - 1
            }
        };
        Some(&mut self.open[i])
    }

    /// Opens a call; its name is the first one a delta gives (providers send it once, some
    /// repeat it whole in every delta; none splits it).
    pub(super) fn start(&mut self, key: (u32, u32), name: &str, facts: &mut ResponseFacts) {
        if let Some(call) = self.call(key, facts) {
            if call.name.is_empty() && name.len() <= MAX_TOOL_NAME {
                call.name.push_str(name);
            }
        }
    }

    /// Marks a call whose input is free text (a custom tool), not JSON.
    pub(super) fn free_form(&mut self, key: (u32, u32)) {
        if let Some(c) = self.open.iter_mut().find(|c| c.key == key) {
            c.free_form = true;
        }
    }

    pub(super) fn append(&mut self, key: (u32, u32), part: &str, facts: &mut ResponseFacts) {
        let over = self.bytes + part.len() > MAX_INSPECTED_BODY;
        let Some(call) = self.call(key, facts) else {
            return;
        };
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
    pub(super) fn complete(
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
                let args = if call.free_form {
                    Arguments::Text(call.arguments.as_bytes())
                } else if empty_is_valid && call.arguments.is_empty() {
                    Arguments::Json(b"{}")
                } else {
                    Arguments::Json(call.arguments.as_bytes())
                };
                let print = fingerprint(&call.name, args);
                facts.push_call(ToolCall {
                    // Arguments cut at the limit cannot be judged, nor known.
                    arguments_valid: call.overflow || print.valid,
                    fingerprint: (!call.overflow).then_some(print.hash),
                    name: call.name,
                });
            } else {
                i += 1;
            }
        }
    }
}
