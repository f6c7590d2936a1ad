//! The OpenAI readers on JSON bodies and streams: refusals, tool calls, finish reasons.

use super::Arguments;
use bytes::Bytes;
use http::StatusCode;

use super::super::{FinishReason, Format, ResponseFacts, ResponseReader, ToolCall};

fn stream(events: &[&str], complete: bool) -> ResponseFacts {
    let mut r = ResponseReader::new(
        Format::ChatCompletions,
        StatusCode::OK,
        Some(b"text/event-stream"),
        None,
    );
    for e in events {
        r.feed(&Bytes::from(format!("data: {e}\n\n")));
    }
    r.finish(complete)
}

/// The call a reader should report: fingerprinted as if its arguments came whole.
fn call(name: &str, args: &str) -> ToolCall {
    ToolCall::new(name, Arguments::Json(args.as_bytes()))
}

const HALF_CALL: &str = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": "}}]}}]}"#;

#[test]
fn a_refusal_is_read_from_json_streams_and_responses() {
    let refused = |json: &[u8], read: fn(&[u8], &mut ResponseFacts) -> Result<(), _>| {
        let mut facts = ResponseFacts::default();
        read(json, &mut facts).unwrap();
        facts.refused
    };
    let chat = br#"{"choices":[{"index":0,"message":{"content":null,"refusal":"No."},"finish_reason":"stop"}]}"#;
    assert!(refused(chat, super::chat_json));
    let plain = br#"{"choices":[{"index":0,"message":{"content":"Yes.","refusal":null},"finish_reason":"stop"}]}"#;
    assert!(!refused(plain, super::chat_json));
    let responses = br#"{"status":"completed","output":[{"type":"message","content":[{"type":"refusal","refusal":"No."}]}]}"#;
    assert!(refused(responses, super::responses_json));
    // A reasoning item's `content: null` (some servers write it out) still reads.
    let reasoning = br#"{"status":"completed","output":[{"type":"reasoning","content":null},{"type":"message","content":[{"type":"output_text","text":"Yes."}]}]}"#;
    assert!(!refused(reasoning, super::responses_json));
    let facts = stream(
        &[
            r#"{"choices":[{"index":0,"delta":{"refusal":"No."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ],
        true,
    );
    assert!(facts.refused);
}

#[test]
fn a_call_in_a_stream_that_stopped_is_not_judged() {
    // Cut by the network, or ended cleanly but without a finish reason or [DONE].
    for complete in [false, true] {
        let facts = stream(&[HALF_CALL], complete);
        assert_eq!(facts.tool_calls, []);
        assert_eq!(facts.finish_reasons, [FinishReason::Error]);
    }
    // [DONE] says the stream is over: what was sent is the call.
    let facts = stream(&[HALF_CALL, "[DONE]"], true);
    assert_eq!(facts.tool_calls, [call("f", r#"{"a": "#)]);
    assert!(!facts.tool_calls[0].arguments_valid);
}

#[test]
fn calls_without_index_are_told_apart_by_id() {
    // Gemini's OpenAI-compatible stream: whole calls, no `index`.
    let a = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#;
    let b = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c2","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#;
    let end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
    let facts = stream(&[a, b, end, "[DONE]"], true);
    assert_eq!(
        facts.tool_calls,
        [
            call("get_weather", r#"{"city":"Paris"}"#),
            call("get_time", "{}")
        ]
    );
}

#[test]
fn a_name_repeated_in_every_delta_is_the_name() {
    let d = |args: &str| {
        format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"name":"read_file","arguments":"{args}"}}}}]}}}}]}}"#
        )
    };
    let (a, b) = (d(r#"{\"path\":"#), d(r#"\"/etc\"}"#));
    let facts = stream(&[&a, &b, "[DONE]"], true);
    assert_eq!(facts.tool_calls, [call("read_file", r#"{"path":"/etc"}"#)]);
}

#[test]
fn custom_tool_input_is_free_text() {
    let c = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"custom","custom":{"name":"apply_patch","input":"*** Begin Patch"}}]}}]}"#;
    let end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
    let facts = stream(&[c, end], true);
    assert_eq!(
        facts.tool_calls,
        [ToolCall::new(
            "apply_patch",
            Arguments::Text(b"*** Begin Patch")
        )]
    );
    assert_eq!(facts.output_chunks, 1);
}
