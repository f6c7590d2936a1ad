//! The command-line tools some tests run (promtool, kubectl, kubernetes-validate): a tool that is
//! missing fails the test, naming how to install it, rather than letting it pass unchecked.
//! Included on its own (`#[path = "common/tools.rs"] mod tools;`) by tests that need nothing else
//! of `common`.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::Path;
use std::process::{Command, Output};

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
