//! Anthropic Messages response bodies: JSON, and the typed stream (`message_start`,
//! `content_block_start`/`_delta`/`_stop`, `message_delta`, `message_stop`, `ping`, `error`).

use std::borrow::Cow;

use serde::Deserialize;

use super::calls::{ResponseFacts, ToolCalls};
use super::canon::Arguments;
use super::{FinishReason, ToolCall, Unparsed};

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
    /// Input tokens count cached ones too (the OpenTelemetry GenAI conventions' reading of
    /// Anthropic's split usage), so that the figure compares with other providers'.
    fn record(&self, facts: &mut ResponseFacts) {
        if let Some(input) = self.input_tokens {
            // Saturating: the numbers come from outside (found by the fuzz target).
            facts.input_tokens = Some(
                input
                    .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                    .saturating_add(self.cache_read_input_tokens.unwrap_or(0)),
            );
        }
        facts.output_tokens = self.output_tokens.or(facts.output_tokens);
    }
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    /// A complete `tool_use` block's input (an object; `{}` in a stream's start event).
    #[serde(default, borrow)]
    input: Option<&'a serde_json::value::RawValue>,
    /// A `text` block's text, kept raw: decoded only when the output is kept.
    #[serde(default, borrow)]
    text: Option<&'a serde_json::value::RawValue>,
}

impl Block<'_> {
    /// A call of a client tool (`server_tool_use` blocks run on Anthropic's side).
    fn is_tool_use(&self) -> bool {
        self.kind.as_deref() == Some("tool_use")
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Vec<Block<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Default)]
pub(super) struct MessagesStream {
    calls: ToolCalls,
}

impl MessagesStream {
    pub(super) fn event(
        &mut self,
        sse_event: &str,
        data: &[u8],
        facts: &mut ResponseFacts,
    ) -> Result<bool, Unparsed> {
        let e: Event<'_> =
            crate::inspect::from_json(data).map_err(|_| Unparsed::ResponseInvalidJson)?;
        let kind = e.kind.as_deref().unwrap_or(sse_event);
        Ok(match kind {
            "message_start" => {
                if let Some(usage) = e.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    usage.record(facts);
                }
                false
            }
            "content_block_start" => {
                let block = e.content_block.as_ref();
                match block.filter(|b| b.is_tool_use()) {
                    Some(b) => {
                        let name = b.name.as_deref().unwrap_or("");
                        self.calls.start((0, e.index), name, facts);
                        true
                    }
                    None => false,
                }
            }
            "content_block_delta" => {
                let Some(d) = &e.delta else { return Ok(false) };
                match d.kind.as_deref() {
                    Some("text_delta") => {
                        facts.output(d.text.as_deref());
                        d.text.as_deref().is_some_and(|t| !t.is_empty())
                    }
                    Some("input_json_delta") => {
                        let part = d.partial_json.as_deref().unwrap_or("");
                        if self.calls.open.iter().any(|c| c.key == (0, e.index)) {
                            self.calls.append((0, e.index), part, facts);
                        }
                        !part.is_empty()
                    }
                    _ => false,
                }
            }
            "content_block_stop" => {
                let index = e.index;
                self.calls.complete(|c| c.key == (0, index), true, facts);
                false
            }
            "message_delta" => {
                if let Some(usage) = &e.usage {
                    usage.record(facts);
                }
                if let Some(reason) = e.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    facts.refused |= reason == "refusal";
                    facts.finish_once(FinishReason::anthropic(reason));
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

pub(super) fn messages_json(body: &[u8], facts: &mut ResponseFacts) -> Result<(), Unparsed> {
    let m: Message<'_> =
        crate::inspect::from_json(body).map_err(|_| Unparsed::ResponseInvalidJson)?;
    if m.kind.as_deref() == Some("error") {
        facts.provider_failed();
        return Ok(());
    }
    if let Some(usage) = &m.usage {
        usage.record(facts);
    }
    for b in m
        .content
        .iter()
        .filter(|b| b.kind.as_deref() == Some("text"))
    {
        facts.output_json(b.text);
    }
    // `input` of a complete `tool_use` block is an object already (absent: none, `{}`).
    for b in m.content.iter().filter(|b| b.is_tool_use()) {
        let input = b.input.map_or("{}", |i| i.get());
        facts.push_call(ToolCall::new(
            b.name.as_deref().unwrap_or(""),
            Arguments::Json(input.as_bytes()),
        ));
    }
    if let Some(reason) = m.stop_reason.as_deref() {
        facts.refused |= reason == "refusal";
        facts.finish_reasons.push(FinishReason::anthropic(reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_past_u64_saturates_instead_of_overflowing() {
        let mut facts = ResponseFacts::default();
        let body = br#"{"type":"message","usage":{"input_tokens":18446744073709551615,"cache_creation_input_tokens":1,"output_tokens":2}}"#;
        messages_json(body, &mut facts).unwrap();
        assert_eq!(facts.input_tokens, Some(u64::MAX));
    }

    #[test]
    fn a_refusal_is_its_stop_reason() {
        let mut facts = ResponseFacts::default();
        let body = br#"{"type":"message","content":[],"stop_reason":"refusal"}"#;
        messages_json(body, &mut facts).unwrap();
        assert!(facts.refused);
        let mut facts = ResponseFacts::default();
        messages_json(
            br#"{"type":"message","stop_reason":"end_turn"}"#,
            &mut facts,
        )
        .unwrap();
        assert!(!facts.refused);
    }
}
