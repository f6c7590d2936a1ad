//! The judge's side of quality sampling: the prompt the sidecar sends a judge LLM (an OpenAI Chat
//! Completions or Anthropic Messages upstream) about one sampled exchange, the request body that
//! carries it, and the verdict read back from the judge's reply.
//!
//! The judge is asked for a JSON object `{"correct": bool, "reason": str}`, but judges do not
//! always answer with that object alone: they wrap it in prose ("Here is my verdict: ..."), in a
//! Markdown code fence, or put it after a thinking block. [`verdict_in`] looks for the object in
//! those places. Whatever it cannot find is [`Judged::Unreadable`], never a verdict of
//! "incorrect": a judge that failed to answer says nothing about the agent's answer.
//!
//! Plain functions, no I/O; the work on a reply is bounded (see [`verdict_in`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::inspect::Protocol;

/// Placeholders in a rubric for the sampled request's and response's texts.
const REQUEST: &str = "{request}";
const RESPONSE: &str = "{response}";
/// Appended to every prompt: the shape of the answer [`verdict_in`] reads.
const INSTRUCTION: &str = "\n\nAnswer with a JSON object only: \
    {\"correct\": true or false, \"reason\": \"one short sentence\"}";
/// `max_tokens` of an Anthropic judge request (the API requires one): room for a short reason.
const ANTHROPIC_MAX_TOKENS: u32 = 512;
/// How much of a judge's text [`verdict_in`] looks at, in bytes.
const MAX_TEXT: usize = 64 * 1024;
/// How many `{...}` spans [`verdict_in`] tries at most.
const MAX_SPANS: usize = 64;

/// The judge prompt for one exchange: `rubric` with `{request}` and `{response}` replaced by
/// `request` and `response`, followed by the instruction to answer with a JSON verdict.
///
/// Placeholders are replaced in one left-to-right pass over the rubric only, so a placeholder
/// inside an inserted text stays as it is. A rubric with neither placeholder gets the request and
/// the response appended under `Request:` and `Response:` headings.
pub(crate) fn prompt(rubric: &str, request: &str, response: &str) -> String {
    let mut out = String::with_capacity(rubric.len() + request.len() + response.len() + 128);
    let mut rest = rubric;
    let filled = rubric.contains(REQUEST) || rubric.contains(RESPONSE);
    while let Some(at) = rest.find('{') {
        let (before, from) = rest.split_at(at);
        let (text, after) = if let Some(after) = from.strip_prefix(REQUEST) {
            (request, after)
        } else if let Some(after) = from.strip_prefix(RESPONSE) {
            (response, after)
        } else {
            ("{", &from[1..]) // `{` is one byte.
        };
        out.extend([before, text]);
        rest = after;
    }
    out.push_str(rest);
    if !filled {
        out.extend(["\n\nRequest:\n", request, "\n\nResponse:\n", response]);
    }
    out.push_str(INSTRUCTION);
    out
}

/// The longest prefix of `text` of at most `max_chars` chars (Unicode scalar values); never splits
/// a char.
pub(crate) fn cut(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// One chat message of a judge request.
#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// A judge request: OpenAI Chat Completions with neither `max_tokens` nor `temperature` (its
/// reasoning models refuse both), Anthropic Messages with `max_tokens` (required) and
/// `temperature: 0`.
#[derive(Serialize)]
struct JudgeRequest<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<u8>,
    messages: [Message<'a>; 1],
}

/// The JSON body asking `model` to judge `prompt`, in the shape `protocol` speaks: one user
/// message. [`Protocol::None`] gets the OpenAI shape, the one most OpenAI-compatible servers
/// accept.
pub(crate) fn request_body(protocol: Protocol, model: &str, prompt: &str) -> Vec<u8> {
    let anthropic = matches!(protocol, Protocol::Anthropic);
    let request = JudgeRequest {
        model,
        max_tokens: anthropic.then_some(ANTHROPIC_MAX_TOKENS),
        temperature: anthropic.then_some(0),
        messages: [Message {
            role: "user",
            content: prompt,
        }],
    };
    // Serializing a struct of strings and integers cannot fail.
    serde_json::to_vec(&request).unwrap_or_default()
}

/// What a judge's reply says about the judged exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// The judge gave a verdict.
    Verdict {
        /// Whether the judge found the response correct.
        correct: bool,
    },
    /// No verdict could be read: the body is not the protocol's response, or its text holds no
    /// JSON object with a boolean `correct`. Not a verdict of "incorrect".
    Unreadable,
}

/// A JSON string, borrowed from the body when it has no escapes. (A newtype so that `Option` of it
/// still borrows: serde borrows a `Cow<str>` only as a field's own type.)
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The part of an OpenAI Chat Completions response a verdict is in.
#[derive(Deserialize)]
struct OpenaiResponse<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    message: Option<ChoiceMessage<'a>>,
}

#[derive(Deserialize)]
struct ChoiceMessage<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
}

/// The part of an Anthropic Messages response a verdict is in.
#[derive(Deserialize)]
struct AnthropicResponse<'a> {
    #[serde(default, borrow)]
    content: Vec<Block<'a>>,
}

/// One content block; only `text` blocks count (not `thinking`, `tool_use`, ...).
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
}

/// The verdict in a judge's response `body`, read as `protocol`'s response ([`Protocol::None`] as
/// OpenAI's, like [`request_body`]).
pub(crate) fn read(protocol: Protocol, body: &[u8]) -> Judged {
    match reply_text(protocol, body).as_deref().and_then(verdict_in) {
        Some(correct) => Judged::Verdict { correct },
        None => Judged::Unreadable,
    }
}

/// The judge model's text in a response body: OpenAI's `choices[0].message.content`, Anthropic's
/// `text` blocks joined. `None` when the body is not such a response or has no text.
fn reply_text(protocol: Protocol, body: &[u8]) -> Option<Cow<'_, str>> {
    match protocol {
        Protocol::Openai | Protocol::Mcp | Protocol::None => {
            let response: OpenaiResponse<'_> = serde_json::from_slice(body).ok()?;
            let choice = response.choices.into_iter().next()?;
            Some(choice.message?.content?.0)
        }
        Protocol::Anthropic => {
            let response: AnthropicResponse<'_> = serde_json::from_slice(body).ok()?;
            let texts = response
                .content
                .into_iter()
                .filter(|block| block.kind.as_ref().is_some_and(|kind| kind.0 == "text"))
                .filter_map(|block| block.text.map(|text| text.0));
            texts.reduce(|mut joined, text| {
                joined.to_mut().push_str(&text);
                joined
            })
        }
    }
}

/// A verdict object: `correct` must be a JSON boolean; other keys (`reason`) are skipped.
#[derive(Deserialize)]
struct Verdict {
    correct: bool,
}

/// The verdict in a judge's text, looked for in order:
///
/// 1. the whole (trimmed) text as a JSON object;
/// 2. the contents of the first Markdown code fence (```` ``` ```` or ```` ```json ````);
/// 3. each balanced `{...}` span, by where it starts, left to right; braces inside JSON strings
///    (with backslash escapes) do not count.
///
/// An object is a verdict when its top level has `"correct"` with a JSON boolean; the string
/// `"true"` does not count. Step 3 tries inner spans too, so in `{"verdict": {"correct": true}}`
/// the outer object is no verdict but the inner `{"correct": true}` is found: accepted, as a judge
/// that nests its verdict still meant it. An outer object that is a verdict starts first and wins.
///
/// Bounded: only the first 64 KiB of text and at most 64 spans are looked at.
pub(crate) fn verdict_in(text: &str) -> Option<bool> {
    let text = crate::prefix_at_char(text, MAX_TEXT);
    verdict_of(text.trim())
        .or_else(|| fenced(text).and_then(verdict_of))
        .or_else(|| {
            text.match_indices('{')
                .take(MAX_SPANS)
                .filter_map(|(start, _)| span_from(&text[start..]))
                .find_map(verdict_of)
        })
}

/// The verdict in `candidate` when it is exactly one JSON object with a boolean `correct`.
fn verdict_of(candidate: &str) -> Option<bool> {
    // A derived struct would also accept a JSON array (`[true]`): objects only.
    if !candidate.trim_start().starts_with('{') {
        return None;
    }
    let verdict: Verdict = serde_json::from_str(candidate).ok()?;
    Some(verdict.correct)
}

/// The trimmed contents of the first Markdown code fence in `text`, without a `json` info string;
/// `None` when there is no closed fence.
fn fenced(text: &str) -> Option<&str> {
    let (_, after) = text.split_once("```")?;
    let after = match after.get(..4) {
        Some(tag) if tag.eq_ignore_ascii_case("json") => &after[4..],
        _ => after,
    };
    let (inside, _) = after.split_once("```")?;
    Some(inside.trim())
}

/// The balanced `{...}` span `text` starts with (`text` starts with `{`), skipping braces inside
/// JSON strings; `None` when it does not close.
fn span_from(text: &str) -> Option<&str> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, byte) in text.bytes().enumerate() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (_, b'"') => in_string = !in_string,
            (false, b'{') => depth += 1,
            (false, b'}') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&text[..=at]);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const TRUE: Judged = Judged::Verdict { correct: true };

    #[test]
    fn verdicts_in_texts() {
        // Texts with a verdict of correct (`yes`), of incorrect (`no`), and with none.
        let yes = [
            r#"{"correct": true, "reason": "ok"}"#,
            r#"Sure! Here is my verdict: {"correct": true}. Hope it helps"#,
            "```JSON\n{\"correct\": true}\n```",
            "Here:\n```\n{\"correct\": true, \"reason\": \"fine\"}\n```\nDone.",
            r#"So: {"reason": "a \"}\" here", "correct": true} ok"#,
            r#"{"a": 1} then {"correct": true}"#,
            // The inner object is found (documented on `verdict_in`).
            r#"{"verdict": {"correct": true}}"#,
        ];
        let no = [
            " \n{\"correct\": false}\n",
            "Verdict:\n```json\n{\"correct\": false, \"reason\": \"no\"}\n```\nDone.",
            r#"{"correct": false, "reason": "missing } and { braces"}"#,
            r#"So: {"correct": false, "reason": "missing } and { braces"}. Bye"#,
            // A stray brace and quote in the prose before the verdict do not hide it.
            r#"Note: { means "open. {"correct": false}"#,
            // An outer verdict starts first and wins over an inner one.
            r#"x {"correct": false, "detail": {"correct": true}}"#,
        ];
        let none = [
            r#"{"correct": "true"}"#,
            r#"{"correct": 1, "reason": "x"}"#,
            r#"{"reason": "no verdict"}"#,
            "[true]",
            "The answer looks correct to me.",
            "",
            r#"{"correct": tru"#,
            "```json\n{\"correct\": tru\n```",
        ];
        for (texts, verdict) in [(&yes[..], Some(true)), (&no, Some(false)), (&none, None)] {
            for text in texts {
                assert_eq!(verdict_in(text), verdict, "{text:?}");
            }
        }
    }

    #[test]
    fn bounded_text_and_spans() {
        let after = |prefix: String| verdict_in(&format!("{prefix}{{\"correct\": true}}"));
        assert_eq!(after("a".repeat(MAX_TEXT)), None);
        assert_eq!(after("{} ".repeat(MAX_SPANS)), None);
        assert_eq!(after("{} ".repeat(MAX_SPANS - 1)), Some(true));
        // Cutting at 64 KiB never splits a char.
        assert_eq!(after(format!("a{}", "é".repeat(MAX_TEXT / 2))), None);
    }

    #[test]
    fn openai_bodies() {
        let openai = |content: Value| json!({"choices": [{"message": {"content": content}}]});
        let body = serde_json::to_vec(&openai(json!("{\"correct\": true}"))).unwrap();
        assert_eq!(read(Protocol::Openai, &body), TRUE);
        assert_eq!(read(Protocol::None, &body), TRUE);
        for content in [json!(null), json!("{\"correct\": \"true\"}"), json!("no")] {
            let body = serde_json::to_vec(&openai(content)).unwrap();
            assert_eq!(read(Protocol::Openai, &body), Judged::Unreadable);
        }
        for body in [&br#"{"choices": []}"#[..], b"not json {", b""] {
            assert_eq!(read(Protocol::Openai, body), Judged::Unreadable);
        }
        // Text without escapes is borrowed from the body.
        let plain = br#"{"choices": [{"message": {"content": "{}"}}]}"#;
        let text = reply_text(Protocol::Openai, plain);
        assert!(matches!(text, Some(Cow::Borrowed("{}"))));
    }

    #[test]
    fn anthropic_bodies() {
        let body = br#"{"content": [
            {"type": "thinking", "thinking": "{\"correct\": false}", "signature": "s"},
            {"type": "text", "text": "{\"correct\": true, \"reason\": \"right\"}"}]}"#;
        assert_eq!(read(Protocol::Anthropic, body), TRUE);
        let split = br#"{"content": [{"type": "text", "text": "Verdict: {\"correct\": "},
            {"type": "tool_use", "id": "t", "name": "n", "input": {}},
            {"type": "text", "text": "true}"}]}"#;
        assert_eq!(read(Protocol::Anthropic, split), TRUE);
        let thinking = br#"{"content": [{"type": "thinking", "thinking": "{\"correct\": true}"}]}"#;
        assert_eq!(read(Protocol::Anthropic, thinking), Judged::Unreadable);
        assert_eq!(read(Protocol::Anthropic, b"<html>"), Judged::Unreadable);
    }

    #[test]
    fn prompt_fills_placeholders_once() {
        let filled = prompt("Q: {request}\nA: {response} {x}", "ask {response}", "ans");
        let expected = format!("Q: ask {{response}}\nA: ans {{x}}{INSTRUCTION}");
        assert_eq!(filled, expected);
        let twice = prompt("{request}{request}", "r", "x");
        assert_eq!(twice, format!("rr{INSTRUCTION}"));
        let bare = prompt("Is it right?", "q", "a");
        let expected = format!("Is it right?\n\nRequest:\nq\n\nResponse:\na{INSTRUCTION}");
        assert_eq!(bare, expected);
        assert!(INSTRUCTION.starts_with("\n\nAnswer with a JSON object only: {\"correct\""));
    }

    #[test]
    fn cut_counts_chars() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("héllo", 0), "");
        assert_eq!(cut("héllo", 99), "héllo");
        assert_eq!(cut("日本語", 1), "日");
    }

    #[test]
    fn request_bodies() {
        let text = "Say \"hi\"\nthen {stop}\\";
        let parse = |protocol, model| -> Value {
            serde_json::from_slice(&request_body(protocol, model, text)).unwrap()
        };
        let messages = json!([{"role": "user", "content": text}]);
        let openai = json!({"model": "gpt", "messages": messages});
        assert_eq!(parse(Protocol::Openai, "gpt"), openai);
        assert_eq!(parse(Protocol::None, "gpt"), openai);
        let anthropic =
            json!({"model": "claude", "max_tokens": 512, "temperature": 0, "messages": messages});
        assert_eq!(parse(Protocol::Anthropic, "claude"), anthropic);
    }
}
