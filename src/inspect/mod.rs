//! What the sidecar learns from LLM bodies as they pass: the request's model, `stream` flag and
//! declared tools; from the response, token usage, finish reasons, tool calls and the moments
//! output arrives. Plain types fed bytes, no I/O: the data plane feeds them, telemetry counts.
//!
//! Parsing is observation. Nothing here holds bytes back or changes them; a body a reader cannot
//! read is reported as [`Unparsed`] and passes through as it came.

mod anthropic;
mod calls;
pub mod canon;
pub(crate) mod collect;
pub(crate) mod echo;
pub(crate) mod inflate;
mod json_text;
pub mod mcp;
mod openai;
pub(crate) mod request;
pub(crate) mod response;
pub mod rewrite;
pub mod safety;
pub(crate) mod sse;
pub(crate) mod text;

/// The API an upstream speaks, as `upstreams.*.protocol` names it: which LLM bodies there are to
/// read, or MCP's JSON-RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Openai,
    Anthropic,
    /// An MCP server (Streamable HTTP): JSON-RPC, no LLM bodies.
    Mcp,
    #[default]
    None,
}

impl Protocol {
    /// `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn provider_name(self) -> &'static str {
        match self {
            Protocol::Openai => "openai",
            Protocol::Anthropic => "anthropic",
            Protocol::Mcp => "mcp",
            Protocol::None => "none",
        }
    }

    /// Whether the upstream is an LLM provider (its bodies are read as LLM calls).
    pub fn is_llm(self) -> bool {
        matches!(self, Protocol::Openai | Protocol::Anthropic)
    }
}

pub use calls::{OutputText, ResponseFacts};
pub use collect::Collected;
pub use request::{parse_request, RequestFacts, Schema};
pub use response::ResponseReader;
pub use sse::{SseEvent, SseItem, SseParser};

pub use collect::MAX_INSPECTED_BODY;

/// The LLM API operation a request is, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Chat Completions (`/v1/chat/completions`; also Azure OpenAI's deployment paths and
    /// the OpenAI-compatible endpoints other providers offer).
    ChatCompletions,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
    /// Anthropic Messages (`/v1/messages`).
    Messages,
}

impl Format {
    /// Only `POST`s to a known operation are inspected; anything else (model lists, files,
    /// embeddings) passes through as plain HTTP. Messages is Anthropic's only: OpenAI's
    /// `/v1/threads/{id}/messages` (Assistants) is not a completion.
    pub fn of(method: &http::Method, path: &str, protocol: Protocol) -> Option<Format> {
        if method != http::Method::POST {
            return None;
        }
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Format::ChatCompletions)
        } else if path.ends_with("/responses") {
            Some(Format::Responses)
        } else if path.ends_with("/messages") && protocol == Protocol::Anthropic {
            Some(Format::Messages)
        } else {
            None
        }
    }

    /// `gen_ai.operation.name` (OpenTelemetry GenAI semantic conventions): all three are chat.
    pub fn operation_name(self) -> &'static str {
        "chat"
    }
}

/// Why a body could not be read. The body passed through untouched either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    RequestInvalidJson,
    RequestTooLarge,
    RequestContentEncoding,
    ResponseInvalidJson,
    ResponseTooLarge,
    ResponseContentEncoding,
    ResponseContentType,
}

impl Unparsed {
    pub const COUNT: usize = 7;
    pub const ALL: [Unparsed; Unparsed::COUNT] = [
        Unparsed::RequestInvalidJson,
        Unparsed::RequestTooLarge,
        Unparsed::RequestContentEncoding,
        Unparsed::ResponseInvalidJson,
        Unparsed::ResponseTooLarge,
        Unparsed::ResponseContentEncoding,
        Unparsed::ResponseContentType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unparsed::RequestInvalidJson => "request_invalid_json",
            Unparsed::RequestTooLarge => "request_too_large",
            Unparsed::RequestContentEncoding => "request_content_encoding",
            Unparsed::ResponseInvalidJson => "response_invalid_json",
            Unparsed::ResponseTooLarge => "response_too_large",
            Unparsed::ResponseContentEncoding => "response_content_encoding",
            Unparsed::ResponseContentType => "response_content_type",
        }
    }
}

/// Why a generation ended, normalised across providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop = 0,
    Length = 1,
    ToolCalls = 2,
    ContentFilter = 3,
    Error = 4,
    Other = 5,
}

impl FinishReason {
    pub const COUNT: usize = 6;
    pub const ALL: [FinishReason; FinishReason::COUNT] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::ToolCalls,
        FinishReason::ContentFilter,
        FinishReason::Error,
        FinishReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Error => "error",
            FinishReason::Other => "other",
        }
    }

    /// OpenAI Chat Completions' `finish_reason`.
    pub fn openai(reason: &str) -> FinishReason {
        match reason {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }

    /// Anthropic Messages' `stop_reason`.
    pub fn anthropic(reason: &str) -> FinishReason {
        match reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }
}

/// One complete tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments, once complete, parse as JSON.
    pub arguments_valid: bool,
    /// The call's name and canonical arguments, hashed ([`canon`]); `None` when its arguments
    /// outgrew what is kept and cannot be known.
    pub fingerprint: Option<u64>,
}

impl ToolCall {
    /// A complete call of `name` with `arguments`.
    pub fn new(name: &str, arguments: canon::Arguments<'_>) -> ToolCall {
        let f = canon::fingerprint(name, arguments);
        ToolCall {
            name: name.to_owned(),
            arguments_valid: f.valid,
            fingerprint: Some(f.hash),
        }
    }
}

/// `serde_json::from_slice`, with the body's UTF-8 checked once, up front: serde_json then does
/// not check each string of it again (a call per string, most of an LLM body). A body that is
/// not UTF-8 throughout is read as `from_slice` reads it.
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// For `#[serde(deserialize_with)]`: an optional string as it is in the body (`Cow::Borrowed`),
/// decoded (owned) only when it has escapes. serde's own `Option<Cow<str>>` always copies it:
/// `#[serde(borrow)]` reaches only a bare `Cow`.
pub(crate) fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error> {
    struct Text<'a>(std::borrow::Cow<'a, str>);
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = std::borrow::Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Owned(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(std::borrow::Cow::Owned(v))
        }
    }
    impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(Visit).map(Text)
        }
    }
    Ok(<Option<Text<'a>> as serde::Deserialize>::deserialize(d)?.map(|t| t.0))
}

/// Tool calls that do not fit the request: `(unknown_tool, invalid_arguments)`. With no request
/// facts (the request could not be read) no call is taken for unknown.
pub fn hallucinations(request: Option<&RequestFacts>, calls: &[ToolCall]) -> (u64, u64) {
    let unknown = match request {
        Some(r) => calls.iter().filter(|c| !r.tools.contains(&c.name)).count(),
        None => 0,
    };
    let invalid = calls.iter().filter(|c| !c.arguments_valid).count();
    (unknown as u64, invalid as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(default, borrow, deserialize_with = "borrowed")]
        name: Option<Cow<'a, str>>,
    }

    #[test]
    fn an_optional_string_is_borrowed_from_the_body_unless_it_has_escapes() {
        let name = |body: &'static str| from_json::<Named<'_>>(body.as_bytes()).map(|n| n.name);
        assert!(matches!(
            name(r#"{"name": "plain"}"#),
            Ok(Some(Cow::Borrowed("plain")))
        ));
        match name(r#"{"name": "a\"q\u00e9"}"#) {
            Ok(Some(Cow::Owned(s))) => assert_eq!(s, "a\"q\u{e9}"),
            other => panic!("decoded, owned: {other:?}"),
        }
        assert!(matches!(name(r#"{"name": null}"#), Ok(None)));
        assert!(matches!(name("{}"), Ok(None)));
        assert!(name(r#"{"name": 3}"#).is_err(), "not a string");
        // Not UTF-8 (in a value nothing reads): read all the same.
        let bytes = b"{\"name\": \"x\", \"other\": \"\xff\"}";
        let n: Named<'_> = from_json(bytes).unwrap();
        assert_eq!(n.name.as_deref(), Some("x"));
    }

    #[test]
    fn formats_by_path() {
        let post = http::Method::POST;
        let (openai, anthropic) = (Protocol::Openai, Protocol::Anthropic);
        assert_eq!(
            Format::of(&post, "/v1/chat/completions", openai),
            Some(Format::ChatCompletions)
        );
        assert_eq!(
            Format::of(&post, "/openai/deployments/gpt4/chat/completions", openai),
            Some(Format::ChatCompletions)
        );
        assert_eq!(
            Format::of(&post, "/v1/responses", openai),
            Some(Format::Responses)
        );
        assert_eq!(
            Format::of(&post, "/v1/messages", anthropic),
            Some(Format::Messages)
        );
        assert_eq!(Format::of(&post, "/v1/threads/t_1/messages", openai), None);
        assert_eq!(Format::of(&post, "/v1/embeddings", openai), None);
        assert_eq!(
            Format::of(&http::Method::GET, "/v1/messages", anthropic),
            None
        );
    }

    #[test]
    fn hallucination_kinds() {
        let req = RequestFacts {
            model: Some("m".into()),
            stream: false,
            tools: vec!["get_weather".into()],
            schema: None,
        };
        let calls = [
            ToolCall::new("get_weather", canon::Arguments::Json(b"{}")),
            ToolCall::new("delete_db", canon::Arguments::Json(b"{")),
        ];
        assert_eq!(hallucinations(Some(&req), &calls), (1, 1));
        assert_eq!(hallucinations(None, &calls), (0, 1));
    }
}
