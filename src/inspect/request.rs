//! The request side of an LLM call: its model, whether it streams, and the tools it declares.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Format, Unparsed};

/// What the request said, read from its body on its way through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// Names of the functions the model may call, in the request's order.
    pub tools: Vec<String>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
    /// Chat Completions' deprecated function list.
    #[serde(default, borrow)]
    functions: Option<Vec<RawFunction<'a>>>,
}

#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<RawFunction<'a>>,
    #[serde(default, borrow)]
    custom: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

/// Reads a whole request body.
pub fn parse_request(format: Format, body: &[u8]) -> Result<RequestFacts, Unparsed> {
    let raw: RawRequest<'_> =
        serde_json::from_slice(body).map_err(|_| Unparsed::RequestInvalidJson)?;
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
        model: raw.model.map(Cow::into_owned),
        stream: raw.stream.unwrap_or(false),
        tools,
    })
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
