//! The JSON schemas requests ask their output to follow, compiled once each (`jsonschema`) and
//! kept in a small LRU keyed by a 128-bit hash of the schema's text: an agent sends the same few
//! schemas over and over, and compiling one costs far more than validating with it.

use std::sync::{Arc, Mutex};

use hashlink::LruCache;

/// Distinct schemas kept compiled; past it the least recently used goes.
const MAX_SCHEMAS: usize = 128;

/// The process's compiled schemas (`None`: a schema that does not compile, remembered so).
pub(crate) struct Schemas(Mutex<LruCache<u128, Option<Arc<jsonschema::Validator>>>>);

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |c| c.len());
        f.debug_struct("Schemas").field("kept", &n).finish()
    }
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas(Mutex::new(LruCache::new(MAX_SCHEMAS)))
    }
}

impl Schemas {
    /// Whether `output` parses as JSON and follows `schema`; `None` when the schema cannot be
    /// used (too long, not a schema, or one that refers to documents elsewhere).
    pub(crate) fn follows(&self, schema: &str, output: &str) -> Option<bool> {
        let validator = self.compiled(schema)?;
        Some(match serde_json::from_str::<serde_json::Value>(output) {
            Ok(value) => validator.is_valid(&value),
            Err(_) => false,
        })
    }

    fn compiled(&self, schema: &str) -> Option<Arc<jsonschema::Validator>> {
        if schema.len() > crate::inspect::request::MAX_SCHEMA {
            return None;
        }
        let key = xxhash_rust::xxh3::xxh3_128(schema.as_bytes());
        if let Some(found) = self.0.lock().ok()?.get(&key) {
            return found.clone();
        }
        // Compiled outside the lock: two requests racing on a new schema both compile it.
        let compiled = serde_json::from_str::<serde_json::Value>(schema)
            .ok()
            .and_then(|s| jsonschema::validator_for(&s).ok())
            .map(Arc::new);
        self.0.lock().ok()?.insert(key, compiled.clone());
        compiled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_keeps_each_schema_once() {
        let s = Schemas::default();
        let schema =
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;
        assert_eq!(s.follows(schema, r#"{"city":"Oslo"}"#), Some(true));
        assert_eq!(s.follows(schema, r#"{"town":"Oslo"}"#), Some(false));
        assert_eq!(
            s.follows(schema, r#"{"city":"Oslo""#),
            Some(false),
            "cut JSON"
        );
        assert_eq!(s.follows(schema, "Sure! Here it is"), Some(false));
        assert_eq!(s.0.lock().unwrap().len(), 1);
        // Not a schema: not checked, and remembered.
        assert_eq!(s.follows(r#"{"type": 12}"#, "{}"), None);
        assert_eq!(s.follows("not json", "{}"), None);
        assert_eq!(s.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn hostile_schemas_and_outputs_end_in_a_verdict_or_none() {
        let s = Schemas::default();
        // Schemas that refer to themselves, directly or in a loop.
        for schema in [
            r##"{"$ref":"#"}"##,
            r##"{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}"##,
            r##"{"type":"array","items":{"$ref":"#"}}"##,
        ] {
            let _ = s.follows(schema, "[[[[[[[[[[]]]]]]]]]]");
        }
        // A schema elsewhere is not fetched.
        let remote = r#"{"$ref":"https://example.com/schema.json"}"#;
        assert_eq!(s.follows(remote, "{}"), None);
        // Output nested past the JSON parser's depth limit does not parse.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(s.follows(r#"{"type":"array"}"#, &deep), Some(false));
    }

    #[test]
    fn the_cache_is_bounded() {
        let s = Schemas::default();
        for i in 0..MAX_SCHEMAS + 10 {
            let schema = format!(r#"{{"type":"integer","maximum":{i}}}"#);
            assert_eq!(s.follows(&schema, "0"), Some(true));
        }
        assert_eq!(s.0.lock().unwrap().len(), MAX_SCHEMAS);
    }
}
