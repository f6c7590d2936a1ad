//! The request side of an LLM call: its model, whether it streams, the tools it declares, and
//! the JSON schema its output must follow, if it asks for one.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Format, Unparsed};

/// What the request said, read from its body on its way through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// Names of the functions the model may call, in the request's order.
    pub tools: Vec<String>,
    /// The JSON schema the output must follow (the schema object's text, as sent), when the
    /// request asks for structured output: Chat Completions' `response_format` of type
    /// `json_schema`, Responses' `text.format`, Anthropic's `output_config.format` (or the beta's
    /// `output_format`).
    pub schema: Option<Schema>,
}

/// The longest schema kept (and checked against); a request that asks for a longer one asked
/// for a schema all the same.
pub(crate) const MAX_SCHEMA: usize = 64 << 10;

/// The JSON schema a request asks its output to follow: its text as sent, or `None` when it is
/// longer than [`MAX_SCHEMA`].
#[derive(Clone, PartialEq, Eq)]
pub struct Schema(Option<Arc<str>>);

impl Schema {
    pub fn text(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// Sizes only: the schema is what a client wrote.
impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Schema")
            .field(&self.0.as_ref().map(|s| s.len()))
            .finish()
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
    /// Chat Completions' deprecated function list.
    #[serde(default, borrow)]
    functions: Option<Vec<RawFunction<'a>>>,
    /// Kept raw, read leniently (a value of another shape asks for no schema, and costs the
    /// request nothing else): Chat Completions' `{"type": "json_schema", "json_schema":
    /// {"schema": {..}}}`.
    #[serde(default, borrow)]
    response_format: Option<&'a RawValue>,
    /// Responses: `{"format": {"type": "json_schema", "schema": {..}}}`.
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    /// Anthropic: `{"format": {"type": "json_schema", "schema": {..}}}`.
    #[serde(default, borrow)]
    output_config: Option<&'a RawValue>,
    /// Anthropic's structured-outputs beta: `{"type": "json_schema", "schema": {..}}`.
    #[serde(default, borrow)]
    output_format: Option<&'a RawValue>,
    /// The conversation (Chat Completions' and Anthropic's `messages`, Responses' `input`),
    /// skipped one element at a time (see [`skip_elements`]).
    #[serde(default, rename = "messages", deserialize_with = "skip_elements")]
    _messages: (),
    #[serde(default, rename = "input", deserialize_with = "skip_elements")]
    _input: (),
}

/// Skips a value, an array one element at a time: serde_json skips a whole array of objects with
/// a stack of its brackets (an allocation a request), and each flat element without one. (The one
/// value read more strictly than a skip would: a bare number past `f64`'s range, which no API
/// sends as a conversation; such a request is counted unparsed and passed on as it is.)
fn skip_elements<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    d.deserialize_any(serde::de::IgnoredAny).map(|_| ())
}

#[derive(Deserialize)]
struct OutputConfig<'a> {
    #[serde(default, borrow)]
    format: Option<OutputFormat<'a>>,
}

/// An output format; only `json_schema` carries a schema (`json_object` and `text` do not).
#[derive(Deserialize)]
struct OutputFormat<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
    /// Chat Completions nests it one level down.
    #[serde(default, borrow)]
    json_schema: Option<NamedSchema<'a>>,
}

#[derive(Deserialize)]
struct NamedSchema<'a> {
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
}

impl OutputFormat<'_> {
    fn schema(&self) -> Option<&RawValue> {
        if self.kind.as_deref() != Some("json_schema") {
            return None;
        }
        self.schema
            .or_else(|| self.json_schema.as_ref().and_then(|j| j.schema))
    }
}

#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(
        default,
        rename = "type",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<RawFunction<'a>>,
    #[serde(default, borrow)]
    custom: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
}

/// Reads a whole request body.
pub fn parse_request(format: Format, body: &[u8]) -> Result<RequestFacts, Unparsed> {
    let raw: RawRequest<'_> =
        crate::inspect::from_json(body).map_err(|_| Unparsed::RequestInvalidJson)?;
    let mut tools = Vec::new();
    for tool in raw.tools.iter().flatten() {
        let kind = tool.kind.as_deref();
        let name = match format {
            // `{"type": "function", "function": {"name": ...}}`
            Format::ChatCompletions if matches!(kind, Some("function") | None) => {
                tool.function.as_ref().and_then(|f| f.name.as_deref())
            }
            // `{"type": "custom", "custom": {"name": ...}}`: free-text tools.
            Format::ChatCompletions if kind == Some("custom") => {
                tool.custom.as_ref().and_then(|f| f.name.as_deref())
            }
            // `{"type": "function" | "custom", "name": ...}`; built-in tools (web search, file
            // search) have no name and their calls are not function calls.
            Format::Responses if matches!(kind, Some("function" | "custom")) => {
                tool.name.as_deref()
            }
            // Every named tool: client tools with a `type` (bash, text editor) are called by
            // name through `tool_use` blocks too.
            Format::Messages => tool.name.as_deref(),
            _ => None,
        };
        if let Some(name) = name {
            tools.push(name.to_owned());
        }
    }
    for f in raw.functions.iter().flatten() {
        if let Some(name) = f.name.as_deref() {
            tools.push(name.to_owned());
        }
    }
    Ok(RequestFacts {
        schema: schema(format, &raw),
        model: raw.model.map(Cow::into_owned),
        stream: raw.stream.unwrap_or(false),
        tools,
    })
}

/// The schema the request asks for, where `format` puts it.
fn schema(format: Format, raw: &RawRequest<'_>) -> Option<Schema> {
    fn read<'a, T: Deserialize<'a>>(v: Option<&'a RawValue>) -> Option<T> {
        serde_json::from_str(v?.get()).ok()
    }
    let nested = |v| read::<OutputConfig<'_>>(v).and_then(|c| c.format);
    let format = match format {
        Format::ChatCompletions => read::<OutputFormat<'_>>(raw.response_format),
        Format::Responses => nested(raw.text),
        Format::Messages => nested(raw.output_config).or_else(|| read(raw.output_format)),
    }?;
    let text = format.schema()?.get();
    Some(Schema((text.len() <= MAX_SCHEMA).then(|| Arc::from(text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_stream_and_tools_per_format() {
        let chat =
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi \"x\""}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}],
            "functions":[{"name":"legacy"}]}"#;
        let f = parse_request(Format::ChatCompletions, chat).unwrap();
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert!(f.stream);
        assert_eq!(f.tools, ["get_weather", "legacy"]);

        let responses = br#"{"model":"gpt-4.1","input":"x","tools":[{"type":"web_search"},{"type":"function","name":"lookup"}]}"#;
        let f = parse_request(Format::Responses, responses).unwrap();
        assert!(!f.stream);
        assert_eq!(f.tools, ["lookup"]);

        let messages = br#"{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[{"name":"get_weather","input_schema":{}},{"type":"bash_20250124","name":"bash"}]}"#;
        let f = parse_request(Format::Messages, messages).unwrap();
        assert_eq!(f.tools, ["get_weather", "bash"]);
    }

    #[test]
    fn the_conversation_is_skipped_whatever_its_shape_and_checked_as_json() {
        for messages in [
            r#"[{"role":"user","content":"a \"quoted\" word"}]"#,
            r#"[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"u"}}]}]"#,
            r#""just text""#,
            r#"{"odd":[1,[2,[3]]]}"#,
            "null",
            "[]",
        ] {
            for key in ["messages", "input"] {
                let body = format!(r#"{{"{key}":{messages},"model":"m","stream":true}}"#);
                let f = parse_request(Format::ChatCompletions, body.as_bytes()).unwrap();
                assert_eq!((f.model.as_deref(), f.stream), (Some("m"), true), "{body}");
            }
        }
        for broken in [
            r#"{"messages":[{"role":}],"model":"m"}"#,
            r#"{"messages":[{"role":"user"}"#,
            r#"{"input":[1 2],"model":"m"}"#,
        ] {
            assert_eq!(
                parse_request(Format::ChatCompletions, broken.as_bytes()),
                Err(Unparsed::RequestInvalidJson),
                "{broken}"
            );
        }
    }

    #[test]
    fn reads_the_schema_asked_for_per_format() {
        let schema = |format, body: &str| {
            let facts = parse_request(format, body.as_bytes()).unwrap();
            facts
                .schema
                .map(|s| s.text().unwrap_or("too long").to_owned())
        };
        let chat = r#"{"model":"m","response_format":{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object"}}}}"#;
        assert_eq!(
            schema(Format::ChatCompletions, chat).as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        let json_mode = r#"{"model":"m","response_format":{"type":"json_object"}}"#;
        assert_eq!(schema(Format::ChatCompletions, json_mode), None);
        let responses = r#"{"model":"m","text":{"format":{"type":"json_schema","name":"x","schema":{"type":"array"}}}}"#;
        assert_eq!(
            schema(Format::Responses, responses).as_deref(),
            Some(r#"{"type":"array"}"#)
        );
        let ga = r#"{"model":"m","output_config":{"format":{"type":"json_schema","schema":{"type":"string"}}}}"#;
        assert_eq!(
            schema(Format::Messages, ga).as_deref(),
            Some(r#"{"type":"string"}"#)
        );
        let beta =
            r#"{"model":"m","output_format":{"type":"json_schema","schema":{"type":"number"}}}"#;
        assert_eq!(
            schema(Format::Messages, beta).as_deref(),
            Some(r#"{"type":"number"}"#)
        );
        // Another API's field is not this one's.
        assert_eq!(schema(Format::Messages, chat), None);
        assert_eq!(schema(Format::ChatCompletions, "{}"), None);
        // A field of another shape asks for nothing, and the rest of the request still reads.
        let odd = r#"{"model":"m","response_format":"json","text":"plain"}"#;
        assert_eq!(schema(Format::ChatCompletions, odd), None);
        assert_eq!(schema(Format::Responses, odd), None);
        let facts = parse_request(Format::ChatCompletions, odd.as_bytes()).unwrap();
        assert_eq!(facts.model.as_deref(), Some("m"));
        let long = format!(
            r#"{{"response_format":{{"type":"json_schema","json_schema":{{"schema":{{"description":"{}"}}}}}}}}"#,
            "x".repeat(MAX_SCHEMA)
        );
        assert_eq!(
            schema(Format::ChatCompletions, &long).as_deref(),
            Some("too long")
        );
    }

    #[test]
    fn not_json_is_unparsed() {
        assert_eq!(
            parse_request(Format::ChatCompletions, b"model=gpt"),
            Err(Unparsed::RequestInvalidJson)
        );
        // JSON that is not an object is no request either.
        assert_eq!(
            parse_request(Format::ChatCompletions, b"[1]"),
            Err(Unparsed::RequestInvalidJson)
        );
    }
}
