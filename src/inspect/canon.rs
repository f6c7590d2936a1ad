//! A tool call's identity, for the loop guard: its name and its arguments in canonical form,
//! hashed to 64 bits as the arguments are parsed — no JSON value is built.
//!
//! Canonical means the same call however the model spelled it: object keys in any order,
//! any whitespace, escapes decoded (`"\u0041"` is `"A"`), and a number by its value (`1`,
//! `1.0` and `1e0` are one number: integers that fit 64 bits exactly, other numbers as the
//! nearest double, correctly rounded). Arrays keep their order; an object's duplicate keys each
//! count. The hash is XXH3 over the
//! canonical pieces, combined so that an object's entries commute; it is not a security
//! boundary (a collision would only make two different calls count as the same one, with
//! probability about 2⁻⁶⁴), so its seeds are fixed and fingerprints are stable across runs.

use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// What a tool call's input is.
#[derive(Debug, Clone, Copy)]
pub enum Arguments<'a> {
    /// JSON text (a function tool's arguments).
    Json(&'a [u8]),
    /// Free text (a custom tool's input): taken byte for byte.
    Text(&'a [u8]),
    /// The call carried no arguments at all.
    Absent,
}

/// A tool call's canonical hash, and whether its arguments parsed as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    /// `Json` arguments were one complete JSON value (`Text` always is valid, `Absent` never).
    pub valid: bool,
}

// Tags keep values of different kinds apart (the string "1" is not the number 1).
const NULL: u64 = 0x6e75_6c6c;
const BOOL: u64 = 0x626f_6f6c;
const INT: u64 = 0x696e_7467;
const FLOAT: u64 = 0x666c_6f61;
const STRING: u64 = 0x7374_7269;
const ARRAY: u64 = 0x6172_7261;
const OBJECT: u64 = 0x6f62_6a65;
const NAME: u64 = 0x6e61_6d65;
const TEXT: u64 = 0x7465_7874;
const INVALID: u64 = 0x696e_7661;
const ABSENT: u64 = 0x6162_7365;
const SET: u64 = 0x7365_7473;

/// The fingerprint of a call of tool `name` with `arguments`. Arguments that are not valid JSON
/// are taken byte for byte: the same broken call made again is still the same call.
pub fn fingerprint(name: &str, arguments: Arguments<'_>) -> Fingerprint {
    let (args, valid) = match arguments {
        Arguments::Json(text) => match canonical_json(text) {
            Some(h) => (h, true),
            // Valid JSON the canonical form cannot hold (a number past f64's range, nesting
            // past serde_json's depth limit) is still valid: taken byte for byte.
            None => (
                xxh3_64_with_seed(text, INVALID),
                serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok(),
            ),
        },
        Arguments::Text(text) => (xxh3_64_with_seed(text, TEXT), true),
        Arguments::Absent => (ABSENT, false),
    };
    Fingerprint {
        hash: mix(xxh3_64_with_seed(name.as_bytes(), NAME), args),
        valid,
    }
}

/// The canonical hash of one complete JSON value; `None` when `text` is not one.
pub fn canonical_json(text: &[u8]) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let hash = Canon.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(hash)
}

/// The fingerprint of one response's tool calls as a set (parallel calls come in any order);
/// `None` when there is none, or one cannot be known.
pub fn set_of(prints: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    let (mut sum, mut n) = (0u64, 0u64);
    for p in prints {
        sum = sum.wrapping_add(mix(SET, p?));
        n += 1;
    }
    (n > 0).then(|| mix(mix(SET, sum), n))
}

/// Two hashes into one (order matters).
fn mix(a: u64, b: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    xxh3_64_with_seed(&bytes, 0)
}

fn integer(v: i128) -> u64 {
    xxh3_64_with_seed(&v.to_le_bytes(), INT)
}

/// Hashes the value it is given to deserialize.
struct Canon;

impl<'de> DeserializeSeed<'de> for Canon {
    type Value = u64;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canon {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(NULL)
    }

    fn visit_bool<E>(self, v: bool) -> Result<u64, E> {
        Ok(mix(BOOL, u64::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<u64, E> {
        Ok(integer(i128::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<u64, E> {
        Ok(integer(i128::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<u64, E> {
        // A whole number written as a float is that integer; every whole f64 below 1e38 fits
        // an i128 exactly.
        if v.fract() == 0.0 && v.abs() < 1e38 {
            return Ok(integer(v as i128));
        }
        Ok(xxh3_64_with_seed(&v.to_bits().to_le_bytes(), FLOAT))
    }

    fn visit_str<E>(self, v: &str) -> Result<u64, E> {
        Ok(xxh3_64_with_seed(v.as_bytes(), STRING))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let (mut h, mut n) = (ARRAY, 0u64);
        while let Some(e) = seq.next_element_seed(Canon)? {
            h = mix(h, e);
            n += 1;
        }
        Ok(mix(h, n))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        // Entries are summed: the order they came in does not matter.
        let (mut sum, mut n) = (0u64, 0u64);
        while let Some(k) = map.next_key_seed(Canon)? {
            let v = map.next_value_seed(Canon)?;
            sum = sum.wrapping_add(mix(k, v));
            n += 1;
        }
        Ok(mix(mix(OBJECT, sum), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(name: &str, args: &str) -> Fingerprint {
        fingerprint(name, Arguments::Json(args.as_bytes()))
    }

    #[test]
    fn the_same_call_however_it_is_spelled() {
        let a = json(
            "search",
            r#"{"q":"weather in Paris","limit":5,"opts":{"a":[1,2],"b":null}}"#,
        );
        assert!(a.valid);
        for same in [
            r#"{"limit":5,"q":"weather in Paris","opts":{"b":null,"a":[1,2]}}"#,
            "{ \"q\" : \"weather in \\u0050aris\",\n \"limit\": 5.0, \"opts\": {\"a\": [1, 2e0], \"b\": null} }",
            r#"{"opts":{"a":[1.0,2],"b":null},"limit":50e-1,"q":"weather in Paris"}"#,
        ] {
            assert_eq!(json("search", same), a, "{same}");
        }
    }

    #[test]
    fn a_different_call_is_different() {
        let base = json("search", r#"{"q":"paris","n":[1,2]}"#).hash;
        for other in [
            r#"{"q":"Paris","n":[1,2]}"#,
            r#"{"q":"paris","n":[2,1]}"#,
            r#"{"q":"paris","n":[1,2,null]}"#,
            r#"{"q":"paris","n":["1",2]}"#,
            r#"{"q":"paris","n":[1,2.5]}"#,
            r#"{"q":"paris","n":[true,2]}"#,
            r#"{"q":"paris","m":[1,2]}"#,
            r#"{"q":"paris"}"#,
            r#"{"q":"paris","n":[1,2],"x":1}"#,
            r#"[["q","paris"],["n",[1,2]]]"#,
        ] {
            assert_ne!(json("search", other).hash, base, "{other}");
        }
        assert_ne!(json("lookup", r#"{"q":"paris","n":[1,2]}"#).hash, base);
        // Nesting is part of the form: [[1],2] is not [1,[2]].
        assert_ne!(json("f", "[[1],2]").hash, json("f", "[1,[2]]").hash);
        assert_ne!(json("f", r#"{"a":{}}"#).hash, json("f", r#"{"a":[]}"#).hash);
    }

    #[test]
    fn broken_arguments_are_the_same_when_byte_identical() {
        let a = json("f", r#"{"q": "unterminated"#);
        assert!(!a.valid);
        assert_eq!(json("f", r#"{"q": "unterminated"#), a);
        assert_ne!(json("f", r#"{"q":  "unterminated"#).hash, a.hash);
        // Trailing text after a value is not JSON.
        assert!(!json("f", "{} {}").valid);
        assert!(!json("f", "").valid);
        let absent = fingerprint("f", Arguments::Absent);
        assert!(!absent.valid);
        assert_ne!(absent.hash, json("f", "{}").hash);
        let text = fingerprint("f", Arguments::Text(b"SELECT 1"));
        assert!(text.valid);
        assert_ne!(text.hash, json("f", "\"SELECT 1\"").hash);
    }

    #[test]
    fn deep_or_huge_input_is_no_crash() {
        let deep = "[".repeat(100_000);
        assert!(!json("f", &deep).valid);
        // Valid JSON past what the canonical form holds: valid, taken byte for byte.
        assert!(json("f", "1e400").valid);
        assert_ne!(json("f", "1e400").hash, json("f", "2e400").hash);
        let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(json("f", &nested).valid);
        assert!(json("f", "123456789012345678901234567890").valid);
    }

    #[test]
    fn floats_are_their_correctly_rounded_value() {
        // Without correct rounding these parse to two different doubles.
        assert_eq!(json("f", "[1e-23]").hash, json("f", "[1.0e-23]").hash);
        assert_eq!(json("f", "[0.1]").hash, json("f", "[1e-1]").hash);
        assert_ne!(
            json("f", "[0.1]").hash,
            json("f", "[0.10000000000000002]").hash
        );
        assert_eq!(json("f", "[-0.0]").hash, json("f", "[0]").hash);
    }

    #[test]
    fn a_set_of_calls_ignores_their_order_not_their_number() {
        let (a, b) = (Some(1), Some(2));
        assert_eq!(set_of([a, b]), set_of([b, a]));
        assert_ne!(set_of([a, b]), set_of([a]));
        assert_ne!(set_of([a, a]), set_of([a]));
        assert_eq!(set_of([]), None);
        assert_eq!(set_of([a, None]), None);
    }
}
