//! The command-line tools some tests run (promtool, kubectl, kubernetes-validate): a tool that is
//! missing fails the test, naming how to install it, rather than letting it pass unchecked.
//! Included on its own (`#[path = "common/tools.rs"] mod tools;`) by tests that need nothing else
//! of `common`.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sloguard::Config;

/// Runs `program` with `args`; `install` says how to get it.
pub fn run_tool(program: &Path, args: &[&str], install: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} could not run ({e}): {install} (scripts/test does)",
                program.display()
            )
        })
}

/// promtool (Debian package `prometheus`).
pub fn promtool(args: &[&str]) -> Output {
    run_tool(
        Path::new("promtool"),
        args,
        "install it with `apt-get install -y prometheus`",
    )
}

/// Runs promtool with `args` and fails the test unless it succeeds (`what` names the input);
/// returns what it printed.
pub fn promtool_ok(args: &[&str], what: &str) -> String {
    let out = promtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool {} on {what}: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The sloguard binary with `args` and `--config config`.
pub fn sloguard(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// A copy of `text` (the source of `config`) in `dir` whose `api_keys_file:` and `token_file:`
/// values are stand-in files there, for `sloguard check`, which reads them as `run` does. Only
/// values the parsed config holds are replaced, so a commented-out line stays as is; every one of
/// them must be found.
pub fn with_stand_in_files(config: &Config, text: &str, dir: &Path) -> PathBuf {
    let mut files: Vec<String> = config
        .upstreams
        .values()
        .filter_map(|u| u.api_keys_file.as_ref())
        .chain(config.admin.token_file.as_ref())
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    files.sort();
    files.dedup();
    let mut replaced = vec![false; files.len()];
    let copy: String = text
        .lines()
        .map(|line| {
            let found = ["api_keys_file:", "token_file:"]
                .into_iter()
                .find_map(|key| Some((key, line.split_once(key)?)))
                .filter(|(_, (head, _))| !head.trim_start().starts_with('#'));
            let Some((key, (head, rest))) = found else {
                return format!("{line}\n");
            };
            // Value by value, not by substring: one key path may be the prefix of another.
            let value = rest.split('#').next().unwrap_or_default().trim();
            let i = files
                .iter()
                .position(|f| f == value)
                .unwrap_or_else(|| panic!("{key} {value:?} is not one the config loaded"));
            replaced[i] = true;
            let path = dir.join(format!("secret-{i}"));
            std::fs::write(&path, "sk-stand-in-key\n").unwrap();
            format!("{head}{key} {}\n", path.display())
        })
        .collect();
    assert!(
        replaced.iter().all(|r| *r),
        "every key file line replaced: {files:?}"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, copy).unwrap();
    path
}
