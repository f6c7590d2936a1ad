//! The one change the sidecar makes to an LLM request body when configured to: the `model` an
//! upstream is asked for. Only the top-level `model` value changes; every other member keeps its
//! bytes and its place.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::Unparsed;

struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON object's members in order, each value as its JSON text; `None` when `body` is not an
/// object.
pub(crate) fn members(body: &[u8]) -> Option<Vec<(String, &RawValue)>> {
    serde_json::from_slice::<Members<'_>>(body)
        .ok()
        .map(|m| m.0)
}

/// The object of `members` with `key`'s value set to `value` (JSON text; added when absent).
/// Every other member keeps its bytes and its place.
pub(crate) fn with_member(members: &[(String, &RawValue)], key: &str, value: &[u8]) -> Vec<u8> {
    let size: usize = members
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + key.len() + value.len() + 4);
    out.push(b'{');
    let mut seen = false;
    let write_str = |out: &mut Vec<u8>, s: &str| {
        // Serialising a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    };
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, k);
        out.push(b':');
        if k == key {
            seen = true;
            out.extend_from_slice(value);
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    if !seen {
        if !members.is_empty() {
            out.push(b',');
        }
        write_str(&mut out, key);
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    out
}

/// The body with its top-level `model` set to `model` (added when absent).
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Vec<u8>, Unparsed> {
    let members = members(body).ok_or(Unparsed::RequestInvalidJson)?;
    let value = serde_json::to_vec(model).map_err(|_| Unparsed::RequestInvalidJson)?;
    Ok(with_member(&members, "model", &value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_changes() {
        let body = br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "a \"quote\""}], "stream": true}"#;
        let out = rewrite_model(body, "gpt-4o-mini").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt-4o-mini","messages":[{"role": "user", "content": "a \"quote\""}],"stream":true}"#
        );
        let added = rewrite_model(br#"{"input":"x"}"#, "m\"1").unwrap();
        assert_eq!(added, br#"{"input":"x","model":"m\"1"}"#);
        assert_eq!(rewrite_model(b"{}", "m").unwrap(), br#"{"model":"m"}"#);
        assert_eq!(
            rewrite_model(b"[1,2]", "m"),
            Err(Unparsed::RequestInvalidJson)
        );
        assert_eq!(
            rewrite_model(b"{\"model\":", "m"),
            Err(Unparsed::RequestInvalidJson)
        );
    }
}
