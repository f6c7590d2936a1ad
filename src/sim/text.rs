//! The text the simulated provider writes, word by word: plain prose, or — when the request asks
//! for a JSON schema — a JSON object that follows the demo's schema, or breaks it.

/// The words of a plain answer, one a chunk.
const WORDS: &[&str] = &[
    "The ", "agent ", "kept ", "its ", "error ", "budget ", "intact ", "today. ",
];

/// Chunk `i` of an answer in `chunks` chunks: prose, or (`structured`: `Some(follows)`) part of
/// a JSON object `{"summary": .., "priority": ..}` whose priority is `high` (the demo's schema
/// allows `low` and `high`) or `urgent` (out of its range).
pub(super) fn word(i: usize, chunks: usize, structured: Option<bool>) -> String {
    let word = WORDS[i % WORDS.len()];
    let Some(follows) = structured else {
        return word.to_owned();
    };
    let mut out = String::new();
    if i == 0 {
        out.push_str("{\"summary\": \"");
    }
    out.push_str(word);
    if i + 1 == chunks {
        out.push_str(match follows {
            true => "\", \"priority\": \"high\"}",
            false => "\", \"priority\": \"urgent\"}",
        });
    }
    out
}

/// The whole answer.
pub(super) fn text(chunks: usize, structured: Option<bool>) -> String {
    (0..chunks).map(|i| word(i, chunks, structured)).collect()
}

/// Whether a request (as JSON) asks for a JSON schema, in any of the APIs' ways.
pub(super) fn asks_for_schema(request: &serde_json::Value) -> bool {
    let json_schema = |v: &serde_json::Value| v["type"] == "json_schema";
    json_schema(&request["response_format"])
        || json_schema(&request["text"]["format"])
        || json_schema(&request["output_config"]["format"])
        || json_schema(&request["output_format"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_answers_follow_or_break_the_schema() {
        let ok: serde_json::Value = serde_json::from_str(&text(20, Some(true))).unwrap();
        assert_eq!(ok["priority"], "high");
        let bad: serde_json::Value = serde_json::from_str(&text(1, Some(false))).unwrap();
        assert_eq!(bad["priority"], "urgent");
        assert!(text(3, None).starts_with("The agent"));
    }
}
