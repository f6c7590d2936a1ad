//! OpenAI response bodies: Chat Completions (JSON and `chat.completion.chunk` streams) and the
//! Responses API (JSON and its typed stream events).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::calls::{ResponseFacts, ToolCalls};
use super::canon::Arguments;
use super::{FinishReason, ToolCall, Unparsed};

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl ChatUsage {
    fn record(&self, facts: &mut ResponseFacts) {
        facts.input_tokens = self.prompt_tokens.or(facts.input_tokens);
        facts.output_tokens = self.completion_tokens.or(facts.output_tokens);
    }
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    /// Absent from some OpenAI-compatible providers (Gemini's), which send each call whole.
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
    /// A custom tool's call (free-text input).
    #[serde(default, borrow)]
    custom: Option<Custom<'a>>,
}

#[derive(Deserialize)]
struct Custom<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    input: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// A Chat Completions stream: tool calls assembled per choice and index, finish reasons per
/// choice.
#[derive(Debug, Default)]
pub(super) struct ChatStream {
    calls: ToolCalls,
    /// `(choice index, reason)`, kept in choice order at the end.
    finished: Vec<(u32, FinishReason)>,
    errored: bool,
    /// `[DONE]` came: the stream said it is over.
    done: bool,
    /// Calls sent without an `index`, told apart by `id`: `(choice, id, key)`.
    ids: Vec<(u32, String, u32)>,
}

/// Keys of calls without an `index` start here, clear of real indexes.
const INDEXLESS: u32 = 1 << 30;

/// Legacy `function_call` deltas are assembled as tool index `u32::MAX`.
const LEGACY_FUNCTION: u32 = u32::MAX;

impl ChatStream {
    pub(super) fn event(
        &mut self,
        data: &[u8],
        facts: &mut ResponseFacts,
    ) -> Result<bool, Unparsed> {
        if data == b"[DONE]" {
            self.done = true;
            return Ok(false);
        }
        let chunk: ChatChunk<'_> =
            crate::inspect::from_json(data).map_err(|_| Unparsed::ResponseInvalidJson)?;
        if chunk.error.is_some() {
            self.errored = true;
        }
        if let Some(usage) = &chunk.usage {
            usage.record(facts);
        }
        let mut output = false;
        for choice in &chunk.choices {
            if let Some(delta) = &choice.delta {
                let text = |t: &Option<Cow<'_, str>>| t.as_deref().is_some_and(|t| !t.is_empty());
                facts.refused |= text(&delta.refusal);
                output |= text(&delta.content) || text(&delta.refusal);
                if choice.index == 0 {
                    facts.output(delta.content.as_deref());
                }
                for call in delta.tool_calls.iter().flatten() {
                    output = true;
                    let key = (choice.index, self.key(choice.index, call));
                    if let Some(c) = &call.custom {
                        self.calls
                            .start(key, c.name.as_deref().unwrap_or(""), facts);
                        self.calls.free_form(key);
                        if let Some(input) = c.input.as_deref() {
                            self.calls.append(key, input, facts);
                        }
                    } else {
                        self.delta(key, call.function.as_ref(), facts);
                    }
                }
                if let Some(f) = &delta.function_call {
                    output = true;
                    self.delta((choice.index, LEGACY_FUNCTION), Some(f), facts);
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref() {
                let index = choice.index;
                // Bounded like tool calls: a model returns a handful of choices.
                if self.finished.len() < super::calls::MAX_TOOL_CALLS
                    && !self.finished.iter().any(|(i, _)| *i == index)
                {
                    self.finished.push((index, FinishReason::openai(reason)));
                }
                // The choice is over: its calls are complete.
                self.calls.complete(|c| c.key.0 == index, false, facts);
            }
        }
        Ok(output)
    }

    /// Which call a delta continues: its `index`; without one, its `id` (a new id is a new
    /// call); without either, the choice's last call.
    fn key(&mut self, choice: u32, call: &ToolCallDelta<'_>) -> u32 {
        if let Some(index) = call.index {
            return index.min(INDEXLESS - 1);
        }
        let known = |ids: &[(u32, String, u32)], id: Option<&str>| {
            ids.iter()
                .rev()
                .find(|(c, i, _)| *c == choice && id.is_none_or(|id| i == id))
                .map(|(_, _, k)| *k)
        };
        match call.id.as_deref() {
            Some(id) => known(&self.ids, Some(id)).unwrap_or_else(|| {
                let key = INDEXLESS + self.ids.len() as u32;
                if self.ids.len() < super::calls::MAX_TOOL_CALLS {
                    self.ids.push((choice, id.to_owned(), key));
                }
                key
            }),
            None => known(&self.ids, None).unwrap_or(0),
        }
    }

    fn delta(&mut self, key: (u32, u32), f: Option<&Function<'_>>, facts: &mut ResponseFacts) {
        let name = f.and_then(|f| f.name.as_deref()).unwrap_or("");
        self.calls.start(key, name, facts);
        if let Some(args) = f.and_then(|f| f.arguments.as_deref()) {
            self.calls.append(key, args, facts);
        }
    }

    /// The stream ended. When it ended with `[DONE]`, calls of choices that never sent a finish
    /// reason are complete too; a stream that just stopped (cut, or ended early) leaves them
    /// unjudged: half-sent arguments are not the model's fault.
    pub(super) fn finish(&mut self, complete: bool, facts: &mut ResponseFacts) {
        if complete && self.done {
            self.calls.complete(|_| true, false, facts);
        }
        self.finished.sort_by_key(|(i, _)| *i);
        facts
            .finish_reasons
            .extend(self.finished.iter().map(|(_, r)| *r));
        if self.errored {
            facts.provider_error = true;
            facts.finish_reasons.push(FinishReason::Error);
        }
    }
}

#[derive(Deserialize)]
struct ToolCallFull<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
    #[serde(default, borrow)]
    custom: Option<Custom<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    /// Kept raw: decoded only when the output is kept.
    #[serde(default, borrow)]
    content: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallFull<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatCompletion<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

fn tool_call(f: &Function<'_>) -> ToolCall {
    let args = f
        .arguments
        .as_deref()
        .map_or(Arguments::Absent, |a| Arguments::Json(a.as_bytes()));
    ToolCall::new(f.name.as_deref().unwrap_or(""), args)
}

pub(super) fn chat_json(body: &[u8], facts: &mut ResponseFacts) -> Result<(), Unparsed> {
    let mut c: ChatCompletion<'_> =
        crate::inspect::from_json(body).map_err(|_| Unparsed::ResponseInvalidJson)?;
    if let Some(usage) = &c.usage {
        usage.record(facts);
    }
    c.choices.sort_by_key(|c| c.index);
    for choice in &c.choices {
        if let Some(m) = &choice.message {
            facts.refused |= m.refusal.as_deref().is_some_and(|r| !r.is_empty());
            if choice.index == 0 {
                facts.output_json(m.content);
            }
            for call in m.tool_calls.iter().flatten() {
                if let Some(f) = &call.function {
                    facts.push_call(tool_call(f));
                } else if let Some(c) = &call.custom {
                    // Free-text input: only the name can be wrong.
                    let input = c.input.as_deref().unwrap_or("");
                    facts.push_call(ToolCall::new(
                        c.name.as_deref().unwrap_or(""),
                        Arguments::Text(input.as_bytes()),
                    ));
                }
            }
            if let Some(f) = &m.function_call {
                facts.push_call(tool_call(f));
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            facts.finish_reasons.push(FinishReason::openai(reason));
        }
    }
    if c.error.is_some() {
        facts.provider_error = true;
        facts.finish_reasons.push(FinishReason::Error);
    }
    Ok(())
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    arguments: Option<Cow<'a, str>>,
    /// A custom tool call's free-text input.
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    input: Option<Cow<'a, str>>,
    /// A message's parts (`output_text`, `refusal`).
    /// (`null` in some servers' reasoning items.)
    #[serde(default, borrow)]
    content: Option<Vec<ContentPart<'a>>>,
}

#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    /// An `output_text` part's text, kept raw: decoded only when the output is kept.
    #[serde(default, borrow)]
    text: Option<&'a serde_json::value::RawValue>,
}

impl OutputItem<'_> {
    /// A call of a function tool, or of a custom tool (free-text input).
    fn is_function_call(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some("function_call" | "custom_tool_call")
        )
    }

    fn tool_call(&self) -> ToolCall {
        let args = if self.kind.as_deref() == Some("custom_tool_call") {
            Arguments::Text(self.input.as_deref().unwrap_or("").as_bytes())
        } else {
            self.arguments
                .as_deref()
                .map_or(Arguments::Absent, |a| Arguments::Json(a.as_bytes()))
        };
        ToolCall::new(self.name.as_deref().unwrap_or(""), args)
    }
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ResponseObject<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default, borrow)]
    incomplete_details: Option<Incomplete<'a>>,
    #[serde(default, borrow)]
    output: Vec<OutputItem<'a>>,
}

impl ResponseObject<'_> {
    /// The response's end state, once it has one.
    fn finish(&self, facts: &mut ResponseFacts) {
        if let Some(u) = &self.usage {
            facts.input_tokens = u.input_tokens.or(facts.input_tokens);
            facts.output_tokens = u.output_tokens.or(facts.output_tokens);
        }
        let reason = match self.status.as_deref() {
            Some("completed") if self.output.iter().any(OutputItem::is_function_call) => {
                FinishReason::ToolCalls
            }
            Some("completed") => FinishReason::Stop,
            Some("incomplete") => {
                match self
                    .incomplete_details
                    .as_ref()
                    .and_then(|d| d.reason.as_deref())
                {
                    Some("max_output_tokens") => FinishReason::Length,
                    Some("content_filter") => FinishReason::ContentFilter,
                    _ => FinishReason::Other,
                }
            }
            Some("failed") => {
                facts.provider_error = true;
                FinishReason::Error
            }
            // Still running (`in_progress`, `queued`): a background response, no end yet.
            _ => return,
        };
        facts.finish_reasons.push(reason);
    }
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    item: Option<OutputItem<'a>>,
    #[serde(default, borrow)]
    response: Option<ResponseObject<'a>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    delta: Option<Cow<'a, str>>,
}

#[derive(Debug, Default)]
pub(super) struct ResponsesStream;

impl ResponsesStream {
    pub(super) fn event(
        &mut self,
        sse_event: &str,
        data: &[u8],
        facts: &mut ResponseFacts,
    ) -> Result<bool, Unparsed> {
        if data == b"[DONE]" {
            return Ok(false);
        }
        let e: ResponsesEvent<'_> =
            crate::inspect::from_json(data).map_err(|_| Unparsed::ResponseInvalidJson)?;
        let kind = e.kind.as_deref().unwrap_or(sse_event);
        let non_empty = e.delta.as_deref().is_some_and(|d| !d.is_empty());
        Ok(match kind {
            "response.refusal.delta" => {
                facts.refused |= non_empty;
                non_empty
            }
            "response.output_text.delta" => {
                facts.output(e.delta.as_deref());
                non_empty
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                non_empty
            }
            "response.output_item.added" => e.item.as_ref().is_some_and(|i| i.is_function_call()),
            "response.output_item.done" => {
                if let Some(item) = e.item.as_ref().filter(|i| i.is_function_call()) {
                    facts.push_call(item.tool_call());
                }
                false
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let (Some(r), true) = (&e.response, facts.finish_reasons.is_empty()) {
                    r.finish(facts);
                }
                false
            }
            "error" => {
                facts.provider_failed();
                false
            }
            _ => false,
        })
    }
}

pub(super) fn responses_json(body: &[u8], facts: &mut ResponseFacts) -> Result<(), Unparsed> {
    let r: ResponseObject<'_> =
        crate::inspect::from_json(body).map_err(|_| Unparsed::ResponseInvalidJson)?;
    for item in r.output.iter().filter(|i| i.is_function_call()) {
        facts.push_call(item.tool_call());
    }
    let refusal = |p: &ContentPart<'_>| p.kind.as_deref() == Some("refusal");
    facts.refused |= r
        .output
        .iter()
        .any(|i| i.content.iter().flatten().any(refusal));
    let parts = r.output.iter().flat_map(|i| i.content.iter().flatten());
    for p in parts.filter(|p| p.kind.as_deref() == Some("output_text")) {
        facts.output_json(p.text);
    }
    r.finish(facts);
    Ok(())
}

#[cfg(test)]
mod tests;
