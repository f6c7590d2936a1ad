//! `parse_request` for each format, and `rewrite_model` with a fixed model name checked against
//! serde_json's own reading of the body and of the result.
//!
//! The input is the request body as it is (no control bytes).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use sloguard::inspect::rewrite::rewrite_model;
use sloguard::inspect::{parse_request, Format};

/// Fixed, with characters that need escaping in JSON.
const MODEL: &str = "fuzz/model-\"q\"\\\u{1}\u{e9}\u{1F600}";

const FORMATS: [Format; 3] = [Format::ChatCompletions, Format::Responses, Format::Messages];

/// serde_json's `Value` stops at 128 levels of nesting, while the values that `rewrite_model`
/// copies through as `RawValue`s are skipped without such a limit: a body nested deeper is
/// still valid JSON, just not one `Value` can hold.
fn is_recursion_limit(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

fuzz_target!(|body: &[u8]| {
    let requests = FORMATS.map(|f| parse_request(f, body));

    let rewritten = rewrite_model(body, MODEL);
    let input = serde_json::from_slice::<Value>(body);

    let out = match rewritten {
        Ok(out) => out,
        Err(why) => {
            // Any JSON object can be rewritten.
            if let Ok(v) = &input {
                assert!(!v.is_object(), "rewrite_model refused a JSON object: {why:?}");
            }
            return;
        }
    };

    // The result is JSON whose top-level `model` is the fixed name, and the input was an object.
    let top: HashMap<String, &RawValue> =
        serde_json::from_slice(&out).expect("the rewritten body is not a JSON object");
    let model: String = serde_json::from_str(top["model"].get())
        .expect("the rewritten body's model is not a string");
    assert_eq!(model, MODEL);

    match (input, serde_json::from_slice::<Value>(&out)) {
        (Ok(input), Ok(output)) => {
            let Value::Object(mut expected) = input else {
                panic!("rewrite_model accepted a body that is not an object: {input}");
            };
            assert_eq!(output["model"], Value::String(MODEL.to_owned()));
            // Every other member kept its value.
            expected.insert("model".to_owned(), Value::String(MODEL.to_owned()));
            assert_eq!(output, Value::Object(expected), "members other than model changed");
        }
        (Err(e), Err(f)) if is_recursion_limit(&e) && is_recursion_limit(&f) => {
            serde_json::from_slice::<HashMap<String, &RawValue>>(body)
                .expect("rewrite_model accepted a body that is not an object");
        }
        (input, output) => panic!(
            "the body parsed as {:?}, the rewritten body as {:?}",
            input.map(|_| ()),
            output.map(|_| ())
        ),
    }

    // Rewriting again changes nothing.
    assert_eq!(rewrite_model(&out, MODEL).as_deref(), Ok(&out[..]), "not idempotent");

    // A request that could be read reads the same after the rewrite, but for its model.
    for (format, before) in FORMATS.into_iter().zip(requests) {
        if let Ok(mut before) = before {
            let after = parse_request(format, &out)
                .unwrap_or_else(|e| panic!("{format:?}: readable before the rewrite, not after: {e:?}"));
            before.model = Some(MODEL.to_owned());
            assert_eq!(after, before, "{format:?}: the rewrite changed more than the model");
        }
    }
});
