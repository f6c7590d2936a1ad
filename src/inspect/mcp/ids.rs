//! JSON-RPC ids, matched by value: a response matches the request whose id has the same value,
//! however the server wrote it back.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::MAX_NAME;

/// A JSON-RPC id's value: a response matches the request whose id has the same value, however
/// the server wrote it back (`1.0` for `1`, other escapes in a string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key<S> {
    /// An integral number (`1`, `1.0`, `1e0`).
    Int(i64),
    /// An integer past `i64::MAX`.
    UInt(u64),
    /// Another number, by its bits.
    Float(u64),
    Str(S),
    /// Not an id JSON-RPC allows (an object, `true`): by its text.
    Other(S),
}

/// A JSON-RPC id as a request wrote it (`1`, `"a-1"`; `null` is no id).
#[derive(Debug, Clone)]
pub struct RpcId {
    /// As written; `None` for an integer written as such (the common case: no allocation).
    json: Option<Box<str>>,
    key: Key<Box<str>>,
}

impl PartialEq for RpcId {
    fn eq(&self, other: &RpcId) -> bool {
        self.key == other.key
    }
}

impl Eq for RpcId {}

/// An id read from a response, borrowing its body: compared without an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRef<'a>(pub(super) Key<Cow<'a, str>>);

/// The value of an id's JSON text; `None` for `null`, or past [`MAX_NAME`] bytes.
pub(super) fn key_of(text: &str) -> Option<Key<Cow<'_, str>>> {
    let text = text.trim();
    if text == "null" || text.is_empty() || text.len() > MAX_NAME {
        return None;
    }
    let bytes = text.as_bytes();
    Some(match bytes[0] {
        // The common cases without a parser: a plain integer, a string without escapes.
        b'0'..=b'9' if bytes.len() < 19 && bytes.iter().all(u8::is_ascii_digit) => {
            Key::Int(text.parse().ok()?)
        }
        b'"' if bytes.len() > 1 && bytes[bytes.len() - 1] == b'"' && !text.contains('\\') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains('"') || inner.bytes().any(|b| b < 0x20) {
                return None;
            }
            Key::Str(Cow::Borrowed(inner))
        }
        b'"' => Key::Str(serde_json::from_str::<Cow<'_, str>>(text).ok()?),
        b'-' | b'0'..=b'9' => {
            let n: serde_json::Number = serde_json::from_str(text).ok()?;
            // An integral value by its integer, however written; an integer past i64 by its u64.
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Key::Int(i),
                (None, Some(u), _) => Key::UInt(u),
                (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Key::Int(f as i64),
                (None, None, Some(f)) => Key::Float(f.to_bits()),
                (None, None, None) => return None,
            }
        }
        _ => Key::Other(Cow::Borrowed(text)),
    })
}

impl RpcId {
    /// The id as it was written (JSON text), for a response to carry it back.
    pub fn as_json(&self) -> Cow<'_, str> {
        match (&self.json, &self.key) {
            (Some(json), _) => Cow::Borrowed(json),
            (None, Key::Int(i)) => Cow::Owned(i.to_string()),
            (None, _) => Cow::Borrowed("null"),
        }
    }

    /// The id of this JSON text; `None` for `null`, or past [`MAX_NAME`] bytes.
    pub fn parse(text: &str) -> Option<RpcId> {
        let key = match key_of(text)? {
            Key::Int(i) => Key::Int(i),
            Key::UInt(u) => Key::UInt(u),
            Key::Float(f) => Key::Float(f),
            Key::Str(s) => Key::Str(s.into()),
            Key::Other(s) => Key::Other(s.into()),
        };
        let text = text.trim();
        let plain =
            matches!(key, Key::Int(_)) && text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        Some(RpcId {
            json: (!plain).then(|| text.into()),
            key,
        })
    }

    /// Whether a response's id is this one.
    pub fn matches(&self, id: &IdRef<'_>) -> bool {
        match (&self.key, &id.0) {
            (Key::Int(a), Key::Int(b)) => a == b,
            (Key::UInt(a), Key::UInt(b)) => a == b,
            (Key::Float(a), Key::Float(b)) => a == b,
            (Key::Str(a), Key::Str(b)) | (Key::Other(a), Key::Other(b)) => **a == **b,
            _ => false,
        }
    }
}

impl<'a> IdRef<'a> {
    pub(super) fn of(raw: Option<&'a RawValue>) -> Option<IdRef<'a>> {
        key_of(raw?.get()).map(IdRef)
    }
}
