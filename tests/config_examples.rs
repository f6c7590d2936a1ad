//! config/: every example config passes `sloguard check` and the rules `sloguard rules` prints for
//! it pass `promtool check rules`. The examples name the key files a pod would mount
//! (`api_keys_file`, `admin.token_file`); `check` reads them as `run` does, so each is checked as
//! a copy whose key file paths point at stand-in files in a temporary directory.
//! promtool comes from the Debian package `prometheus` (scripts/test installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};

use sloguard::config::Role;
use sloguard::Config;

#[path = "common/tools.rs"]
mod tools;
use tools::{promtool_ok, sloguard, with_stand_in_files};

/// The examples for real situations; each must carry SLOs (and so rules).
const WITH_SLOS: [&str; 4] = [
    "openai-azure-selfhosted.yaml",
    "anthropic.yaml",
    "inbound-slos.yaml",
    "strict-safety.yaml",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for name in WITH_SLOS {
        assert!(
            files.contains(&root().join("config").join(name)),
            "config/{name} is missing"
        );
    }
    files
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-examples-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_example_passes_sloguard_check() {
    for file in examples() {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let dir = scratch(&file.file_stem().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&file).unwrap();
        let copy = with_stand_in_files(&config, &text, &dir);
        let out = sloguard(&["check"], &copy);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "sloguard check {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn promtool_accepts_the_rules_of_every_example() {
    for file in examples() {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if WITH_SLOS.contains(&name.as_str()) {
            assert!(!config.slos.is_empty(), "config/{name} should have SLOs");
        }
        let out = sloguard(&["rules"], &file);
        assert!(
            out.status.success(),
            "sloguard rules {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = scratch(&format!(
            "rules-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        let rules = dir.join("rules.yaml");
        std::fs::write(&rules, &out.stdout).unwrap();
        let report = promtool_ok(
            &["check", "rules", rules.to_str().unwrap()],
            &format!("the rules of {}", file.display()),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // A config with SLOs or providers (an `llm` listener: their dependency SLOs) has rules;
        // one with neither an empty list.
        let some = !config.slos.is_empty() || config.listeners.iter().any(|l| l.role == Role::Llm);
        assert_eq!(
            !report.contains("SUCCESS: 0 rules"),
            some,
            "{}: {report}",
            file.display()
        );
    }
}
