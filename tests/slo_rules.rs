//! `sloguard rules`: the generated Prometheus rules match their golden file, and the `promtool
//! test rules` unit tests in `tests/promtool/` (fast burn pages, slow burn tickets, low traffic
//! does not page, a provider's or another dependency's failures do not burn an SLO that excludes
//! them, the agent's LLM calls do not count in its availability, a tool SLO counts its tool's
//! calls) pass against the golden rules.
//! promtool comes from the Debian package `prometheus`, which `.ci/run` and `scripts/test`
//! install. The rules of every example config pass `promtool check rules` in
//! tests/config_examples.rs (config/) and tests/deploy.rs (deploy/).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};

use sloguard::slo::rules::rules;
use sloguard::Config;

#[path = "common/tools.rs"]
mod tools;
use tools::{promtool_ok, sloguard};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> PathBuf {
    root().join("tests/fixtures/rules/sidecar.rules.yaml")
}

#[test]
fn the_example_configs_rules_match_the_golden_file() {
    let config = Config::load(&root().join("config/sidecar.yaml")).unwrap();
    let generated = rules(&config);
    let expected = std::fs::read_to_string(golden()).unwrap();
    assert!(
        generated == expected,
        "the rules changed: if that is meant, regenerate with `cargo run -- rules --config config/sidecar.yaml > tests/fixtures/rules/sidecar.rules.yaml` and review the diff"
    );
    // Deterministic: the same config gives the same bytes.
    assert_eq!(rules(&config), generated);
    // A dependency SLO for each provider (the upstreams behind `llm` listeners), none for the
    // agent's own app, whose SLOs are the ones above.
    assert!(generated.contains("name: \"sloguard:support-bot:upstream:openai\""));
    assert!(!generated.contains("upstream:agent\""));
}

#[test]
fn the_mcp_configs_tool_slo_rules_match_their_golden_file() {
    let config = Config::load(&root().join("config/mcp.yaml")).unwrap();
    let generated = rules(&config);
    let expected =
        std::fs::read_to_string(root().join("tests/fixtures/rules/mcp.rules.yaml")).unwrap();
    assert!(
        generated == expected,
        "the rules changed: if that is meant, regenerate with `cargo run -- rules --config config/mcp.yaml > tests/fixtures/rules/mcp.rules.yaml` and review the diff"
    );
    // The latency SLO of one tool selects that tool's calls, not its other operations nor the
    // calls whose client left.
    assert!(generated.contains(
        "mcp_client_operation_duration_seconds_count{agent=\"research-bot\",gen_ai_tool_name=\"search\",mcp_method_name=\"tools/call\",error_type!=\"cancelled\"}"
    ));
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let mut tests: Vec<PathBuf> = std::fs::read_dir(root().join("tests/promtool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    tests.sort();
    assert!(tests.len() >= 3, "the promtool tests are missing");
    for test in &tests {
        promtool_ok(
            &["test", "rules", test.to_str().unwrap()],
            &test.display().to_string(),
        );
    }
}

#[test]
fn sloguard_rules_prints_them_and_refuses_a_bad_config() {
    let out = sloguard(&["rules"], &root().join("config/sidecar.yaml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(golden()).unwrap()
    );
    let bad = std::env::temp_dir().join(format!("sloguard-bad-slo-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(root().join("config/sidecar.yaml"))
        .unwrap()
        .replace("threshold: 2s", "threshold: 3s");
    std::fs::write(&bad, text).unwrap();
    let out = sloguard(&["rules"], &bad);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("threshold: 3s is not a bucket boundary"),
        "{err}"
    );
}
