//! Golden files: real-shaped OpenAI and Anthropic bodies (`tests/fixtures/llm/`), each with the
//! facts a correct reading extracts; and, for any split of a body into chunks, the same facts.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::StatusCode;
use proptest::prelude::*;
use serde::Deserialize;
use sloguard::inspect::canon::{fingerprint, Arguments};
use sloguard::inspect::{hallucinations, parse_request, Format, RequestFacts, ResponseReader};

#[derive(Deserialize)]
struct Case {
    format: String,
    content_type: String,
    status: u16,
    request: Option<String>,
    body: String,
    expect: Expect,
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectRequest {
    model: Option<String>,
    stream: bool,
    tools: Vec<String>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectToolCall {
    name: String,
    arguments_valid: bool,
    /// The arguments, as a JSON value: the call's fingerprint must be that of this value written
    /// out anew (another key order and spacing than the provider's). Absent for arguments that
    /// are not JSON.
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Hallucinations {
    unknown_tool: u64,
    invalid_arguments: u64,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Expect {
    request: Option<ExpectRequest>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    finish_reasons: Vec<String>,
    tool_calls: Vec<ExpectToolCall>,
    hallucinations: Hallucinations,
    output_chunks: u32,
    unparsed: Option<String>,
}

struct Fixture {
    name: String,
    case: Case,
    format: Format,
    request: Option<Result<RequestFacts, sloguard::inspect::Unparsed>>,
    body: Bytes,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm")
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".case.json"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".case.json", "");
        let case: Case = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let format = match case.format.as_str() {
            "chat_completions" => Format::ChatCompletions,
            "responses" => Format::Responses,
            "messages" => Format::Messages,
            other => panic!("{name}: unknown format {other}"),
        };
        let request = case
            .request
            .as_ref()
            .map(|f| parse_request(format, &std::fs::read(dir().join(f)).unwrap()));
        let body = Bytes::from(std::fs::read(dir().join(&case.body)).unwrap());
        out.push(Fixture {
            name,
            case,
            format,
            request,
            body,
        });
    }
    assert!(out.len() >= 20, "fixtures missing: {}", out.len());
    out
}

/// Reads the fixture's body in the chunks `cuts` makes, and returns the facts as the golden
/// file writes them.
fn read(f: &Fixture, cuts: &[usize]) -> Expect {
    let mut reader = ResponseReader::new(
        f.format,
        StatusCode::from_u16(f.case.status).unwrap(),
        Some(f.case.content_type.as_bytes()),
        None,
    );
    let mut at = 0;
    let mut outputs = 0;
    for &cut in cuts.iter().chain([f.body.len()].iter()) {
        let cut = cut.clamp(at, f.body.len());
        outputs += reader.feed(&f.body.slice(at..cut));
        at = cut;
    }
    let facts = reader.finish(true);
    assert_eq!(outputs, facts.output_chunks, "{}: feed() counts", f.name);
    let request = f
        .request
        .as_ref()
        .map(|r| r.clone().expect("request parses"));
    let (unknown, invalid) = hallucinations(request.as_ref(), &facts.tool_calls);
    Expect {
        request: request.map(|r| ExpectRequest {
            model: r.model,
            stream: r.stream,
            tools: r.tools,
        }),
        input_tokens: facts.input_tokens,
        output_tokens: facts.output_tokens,
        finish_reasons: facts
            .finish_reasons
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        tool_calls: facts
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ExpectToolCall {
                name: c.name.clone(),
                arguments_valid: c.arguments_valid,
                // The golden's arguments, kept only if the call's fingerprint is theirs.
                arguments: f
                    .case
                    .expect
                    .tool_calls
                    .get(i)
                    .and_then(|g| g.arguments.clone())
                    .filter(|a| {
                        let written = serde_json::to_string(a).unwrap();
                        let print = fingerprint(&c.name, Arguments::Json(written.as_bytes()));
                        c.fingerprint == Some(print.hash)
                    }),
            })
            .collect(),
        hallucinations: Hallucinations {
            unknown_tool: unknown,
            invalid_arguments: invalid,
        },
        output_chunks: facts.output_chunks,
        unparsed: facts.unparsed.map(|u| u.as_str().to_owned()),
    }
}

#[test]
fn golden_files_give_their_facts() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let got = read(&f, &[]);
        if got != f.case.expect {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                f.name, f.case.expect, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn byte_at_a_time_gives_the_same_facts() {
    for f in fixtures() {
        let cuts: Vec<usize> = (1..f.body.len()).collect();
        assert_eq!(read(&f, &cuts), f.case.expect, "{}", f.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_facts(
        which in any::<prop::sample::Index>(),
        mut cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let all = fixtures_cached();
        let f = &all[which.index(all.len())];
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(f.body.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(read(f, &cuts), read(f, &[]), "{}", f.name);
    }
}

fn fixtures_cached() -> &'static [Fixture] {
    static ALL: std::sync::OnceLock<Vec<Fixture>> = std::sync::OnceLock::new();
    ALL.get_or_init(fixtures)
}
