//! `sloguard rules`: the generated Prometheus rules match their golden file, `promtool check
//! rules` accepts the rules of every example config, and the `promtool test rules` unit tests
//! in `tests/promtool/` (fast burn pages, slow burn tickets, low traffic does not page, a
//! provider's failures do not burn an SLO that excludes them) pass against the golden rules.
//! promtool comes from the Debian package `prometheus`, which `.ci/run` and `scripts/test`
//! install.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::Command;

use sloguard::config::Role;
use sloguard::slo::rules::rules;
use sloguard::Config;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> PathBuf {
    root().join("tests/fixtures/rules/sidecar.rules.yaml")
}

/// Runs promtool with `args`; fails the test, saying how to get it, when it is not installed.
fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool could not run ({e}): install it with `apt-get install -y prometheus` (scripts/test does)")
        })
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
fn promtool_accepts_the_rules_of_every_example_config() {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    configs.push(root().join("deploy/kubernetes/sloguard.yaml"));
    configs.push(root().join("deploy/overlays/research-agent/sloguard.yaml"));
    configs.sort();
    let dir = std::env::temp_dir().join(format!("sloguard-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for config in &configs {
        let c = Config::load(config).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join(format!(
            "{}.rules.yaml",
            config.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, rules(&c)).unwrap();
        let out = promtool(&["check", "rules", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A config with SLOs or providers has rules; one with neither an empty list.
        let text = String::from_utf8_lossy(&out.stdout);
        let some = !c.slos.is_empty() || c.listeners.iter().any(|l| l.role == Role::Llm);
        assert_eq!(
            !text.contains("SUCCESS: 0 rules"),
            some,
            "{}: {text}",
            config.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
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
        let out = promtool(&["test", "rules", test.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            test.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn sloguard_rules_prints_them_and_refuses_a_bad_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["rules", "--config"])
        .arg(root().join("config/sidecar.yaml"))
        .output()
        .unwrap();
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
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["rules", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("threshold: 3s is not a bucket boundary"),
        "{err}"
    );
}
