//! `parse_request` for each format, and `rewrite_model` with a fixed model name checked against
//! serde_json's own reading of the body and of the result.
//!
//! The input is the request body as it is (no control bytes).
//!
//! The whole-document judge is [`Json`], a plain tree read through serde_json, rather than
//! `serde_json::Value`: with serde_json's `raw_value` feature on (sloguard turns it on), `Value`
//! reads an object whose first key is `"$serde_json::private::RawValue"` as a raw value, so
//! `{"$serde_json::private::RawValue": 0}` fails to parse as a `Value` though it is a plain JSON
//! object (this target found that; `rewrite_model` rewrites it as it should).

#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use sloguard::inspect::rewrite::rewrite_model;
use sloguard::inspect::{parse_request, Format};

/// Fixed, with characters that need escaping in JSON.
const MODEL: &str = "fuzz/model-\"q\"\\\u{1}\u{e9}\u{1F600}";

const FORMATS: [Format; 3] = [Format::ChatCompletions, Format::Responses, Format::Messages];

/// A JSON document as serde_json reads it, like `serde_json::Value` (a repeated key: the last
/// wins) but with no special keys.
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    /// The bits, so that equal documents compare equal.
    F64(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::F64(v.to_bits()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    members.insert(k, v);
                }
                Ok(Json::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// serde_json refuses JSON past two of its own limits when it builds a document: more than 128
/// levels of nesting, and numbers beyond `f64`'s range (`1E400`). `rewrite_model` copies the
/// members it keeps as `RawValue`s, which are skipped without either limit, so such bodies are
/// rewritten; a document tree cannot be the judge of them.
fn is_value_limit(e: &serde_json::Error) -> bool {
    let e = e.to_string();
    e.starts_with("recursion limit exceeded") || e.starts_with("number out of range")
}

/// Whether every top-level member but `model` decodes as a JSON value.
fn others_decode(body: &[u8]) -> bool {
    members_but_model(body)
        .is_some_and(|m| m.values().all(|t| serde_json::from_str::<Json>(t).is_ok()))
}

/// An error's message without where it was found.
fn without_position(e: &serde_json::Error) -> String {
    let e = e.to_string();
    match e.rfind(" at line ") {
        Some(cut) => e[..cut].to_owned(),
        None => e,
    }
}

/// The top-level members as serde_json reads them (the last of a repeated key wins), each value
/// as its JSON text, without `model`.
fn members_but_model(body: &[u8]) -> Option<HashMap<String, &str>> {
    let mut m: HashMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    m.remove("model");
    Some(m.into_iter().map(|(k, v)| (k, v.get())).collect())
}

fuzz_target!(|body: &[u8]| {
    let requests = FORMATS.map(|f| parse_request(f, body));

    let rewritten = rewrite_model(body, MODEL);
    let input = serde_json::from_slice::<Json>(body);

    let out = match rewritten {
        Ok(out) => out,
        Err(why) => {
            // Any JSON object can be rewritten.
            if let Ok(Json::Obj(_)) = &input {
                panic!("rewrite_model refused a JSON object: {why:?}");
            }
            return;
        }
    };

    // The result is JSON whose top-level `model` is the fixed name, and the input was an object.
    let top: HashMap<String, &RawValue> =
        serde_json::from_slice(&out).expect("the rewritten body is not a JSON object");
    let model = top.get("model").expect("the rewritten body has no model");
    let model: String =
        serde_json::from_str(model.get()).expect("the rewritten body's model is not a string");
    assert_eq!(model, MODEL);

    // Every other member kept its JSON text.
    let before =
        members_but_model(body).expect("rewrite_model accepted a body that is not an object");
    assert_eq!(
        members_but_model(&out),
        Some(before),
        "members other than model changed"
    );

    match (input, serde_json::from_slice::<Json>(&out)) {
        (Ok(input), Ok(output)) => {
            let Json::Obj(mut expected) = input else {
                panic!("rewrite_model accepted a body that is not an object: {input:?}");
            };
            let Json::Obj(output) = output else {
                panic!("the rewritten body is not an object: {output:?}");
            };
            assert_eq!(output.get("model"), Some(&Json::Str(MODEL.to_owned())));
            // Every other member kept its value.
            expected.insert("model".to_owned(), Json::Str(MODEL.to_owned()));
            assert_eq!(output, expected, "members other than model changed");
        }
        // Past one of serde_json's limits: the checks on the members above stand in. The
        // rewritten body can be within them when only the old `model` was past them.
        (Err(e), Err(f)) if is_value_limit(&e) && is_value_limit(&f) => {}
        // A member whose text serde_json reads as JSON but cannot decode (a lone surrogate
        // escape, `"\udE05"`): kept as it was (checked above), so it fails the same way after.
        (Err(e), Err(f)) if without_position(&e) == without_position(&f) => {}
        (Err(e), Ok(_)) if is_value_limit(&e) => {}
        // Only the old `model` could not be decoded (a lone surrogate escape): it was replaced.
        (Err(_), Ok(_)) if others_decode(body) => {}
        (input, output) => panic!(
            "the body parsed as {:?}, the rewritten body as {:?}",
            input.map(|_| ()),
            output.map(|_| ())
        ),
    }

    // Rewriting again changes nothing.
    assert_eq!(
        rewrite_model(&out, MODEL).as_deref(),
        Ok(&out[..]),
        "not idempotent"
    );

    // A request that could be read reads the same after the rewrite, but for its model.
    for (format, before) in FORMATS.into_iter().zip(requests) {
        if let Ok(mut before) = before {
            let after = parse_request(format, &out).unwrap_or_else(|e| {
                panic!("{format:?}: readable before the rewrite, not after: {e:?}")
            });
            before.model = Some(MODEL.to_owned());
            assert_eq!(
                after, before,
                "{format:?}: the rewrite changed more than the model"
            );
        }
    }
});
