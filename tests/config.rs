//! Config files: every example parses; bad configs give a message naming the key path and line;
//! `sloguard check` exits non-zero with that message.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::process::Command;

use sloguard::Config;

#[test]
fn every_file_in_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example configs in {}", dir.display());
}

#[test]
fn the_readme_config_example_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```yaml\n")
        .expect("a yaml block in the README")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    Config::parse("README.md", &readme[start..end]).unwrap_or_else(|e| panic!("{e}"));
}

const BASE: &str = "agent: a
listeners:
  - name: inbound
    bind: 127.0.0.1:7480
    role: agent
    route: agent
routes:
  agent:
    upstreams: [agent]
upstreams:
  agent:
    url: http://127.0.0.1:8000
";

fn error_of(text: &str) -> String {
    Config::parse("bad.yaml", text)
        .expect_err("config must be refused")
        .to_string()
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = error_of(&BASE.replace("    route: agent\n", "    route: agent\n    colour: blue\n"));
    assert_eq!(
        e,
        "bad.yaml:7: listeners[0]: unknown field `colour`, expected one of `name`, `bind`, `role`, `route`, `limits`"
    );
    let e = error_of(&format!("{BASE}telemetry: {{}}\n"));
    assert!(
        e.starts_with("bad.yaml:13: unknown field `telemetry`"),
        "{e}"
    );
}

#[test]
fn a_bad_duration_is_named_with_its_line() {
    let e = error_of(&format!("{BASE}    timeouts:\n      idle: 30 seconds\n"));
    assert!(
        e.starts_with(
            "bad.yaml:14: upstreams.agent.timeouts.idle: invalid duration \"30 seconds\""
        ),
        "{e}"
    );
}

#[test]
fn a_missing_upstream_reference_is_named_with_its_line() {
    let e = error_of(&BASE.replace("upstreams: [agent]", "upstreams: [agnet]"));
    assert_eq!(
        e,
        "bad.yaml:9: routes.agent.upstreams[0]: no upstream named \"agnet\" under `upstreams`"
    );
    let e = error_of(&BASE.replace("    route: agent", "    route: nowhere"));
    assert_eq!(
        e,
        "bad.yaml:6: listeners[0].route: no route named \"nowhere\" under `routes`"
    );
}

#[test]
fn a_duplicate_listener_bind_is_named_with_its_line() {
    let dup = BASE.replace(
        "routes:\n",
        "  - name: second\n    bind: 0.0.0.0:7480\n    role: llm\n    route: agent\nroutes:\n",
    );
    let e = error_of(&dup);
    assert_eq!(e, "bad.yaml:8: listeners[1].bind: duplicate bind address 0.0.0.0:7480: listeners[0] binds it too");
}

#[test]
fn otlp_values_are_checked_by_key() {
    let with = |otlp: &str| error_of(&format!("{BASE}otlp:\n{otlp}"));
    assert_eq!(
        with("  endpoint: https://collector:4317\n"),
        "bad.yaml:14: otlp.endpoint: https is not supported by this build: point it at a collector (or its agent) in the cluster over http://"
    );
    assert!(
        with("  endpoint: collector:4317\n").starts_with("bad.yaml:14: otlp.endpoint: "),
        "{}",
        with("  endpoint: collector:4317\n")
    );
    let e = with("  endpoint: http://c:4317\n  protocol: thrift\n");
    assert!(
        e.starts_with("bad.yaml:15: otlp.protocol: unknown variant `thrift`"),
        "{e}"
    );
    let e = with("  endpoint: http://c:4317\n  interval: 100ms\n");
    assert_eq!(e, "bad.yaml:15: otlp.interval: must be at least 1s");
    let e = with("  endpoint: http://c:4317\n  interval: 5s\n  timeout: 10s\n");
    assert!(
        e.starts_with(
            "bad.yaml:16: otlp.timeout: must be at least 100ms and at most otlp.interval"
        ),
        "{e}"
    );
    let e = with("  endpoint: http://c:4317\n  traces: {sample_ratio: 1.5}\n");
    assert_eq!(
        e,
        "bad.yaml:15: otlp.traces.sample_ratio: must be between 0 and 1"
    );
    let e = with("  endpoint: http://c:4317\n  traces: {max_queue: 0}\n");
    assert_eq!(
        e,
        "bad.yaml:15: otlp.traces.max_queue: must be between 1 and 1000000"
    );
    let e = with("  endpoint: http://c:4317\n  temporality: sometimes\n");
    assert!(
        e.starts_with("bad.yaml:15: otlp.temporality: unknown variant `sometimes`"),
        "{e}"
    );
    let e = with("  endpoint: http://c:4317\n  metrics: false\n");
    assert_eq!(
        e,
        "bad.yaml:13: otlp: exports nothing: metrics is false and there is no traces section"
    );
    // A complete section parses, with its defaults.
    let c = Config::parse(
        "ok.yaml",
        &format!("{BASE}otlp:\n  endpoint: http://otel-collector:4318\n  protocol: http/protobuf\n  traces: {{}}\n"),
    )
    .unwrap();
    let otlp = c.otlp.unwrap();
    assert_eq!(otlp.interval.0, std::time::Duration::from_secs(15));
    assert_eq!(otlp.traces.unwrap().sample_ratio, 0.1);
}

#[test]
fn circuit_breaker_values_are_checked_by_key() {
    let with = |cb: &str| {
        BASE.replace(
            "    url: http://127.0.0.1:8000\n",
            &format!("    url: http://127.0.0.1:8000\n    circuit_breaker: {cb}\n"),
        )
    };
    let ok = Config::parse(
        "t.yaml",
        &with("{consecutive_failures: 2, slow_call: {threshold: 5s}}"),
    )
    .unwrap();
    let cb = ok.upstreams["agent"].circuit_breaker.clone().unwrap();
    assert_eq!(
        (
            cb.consecutive_failures,
            cb.min_requests,
            cb.half_open_probes
        ),
        (2, 20, 3)
    );
    assert_eq!(cb.slow_call.unwrap().rate, 0.8);
    for (cb, want) in [
        (
            "{failure_rate: 1.5}",
            "upstreams.agent.circuit_breaker.failure_rate: must be above 0 and at most 1",
        ),
        (
            "{half_open_probes: 0}",
            "upstreams.agent.circuit_breaker.half_open_probes: must be at least 1",
        ),
        (
            "{open_for: 10m, max_open_for: 5m}",
            "upstreams.agent.circuit_breaker.max_open_for: must be at least open_for",
        ),
        (
            "{slow_call: {threshold: 1s, rate: 0}}",
            "upstreams.agent.circuit_breaker.slow_call.rate: must be above 0 and at most 1",
        ),
    ] {
        let e = error_of(&with(cb));
        assert!(e.contains(want), "{cb}: {e}");
    }
    let e = error_of(&with("{consecutive: 5}"));
    assert!(e.contains("unknown field `consecutive`"), "{e}");
    // An empty section asks for the defaults; it does not switch the breaker off.
    let empty = Config::parse("t.yaml", &with("")).unwrap();
    let cb = empty.upstreams["agent"].circuit_breaker.clone().unwrap();
    assert_eq!((cb.consecutive_failures, cb.half_open_probes), (5, 3));
    let none = Config::parse("t.yaml", BASE).unwrap();
    assert!(none.upstreams["agent"].circuit_breaker.is_none());
}

#[test]
fn a_bad_url_and_a_missing_section_are_named() {
    let e = error_of(&BASE.replace("http://127.0.0.1:8000", "ftp://127.0.0.1:8000"));
    assert!(e.starts_with("bad.yaml:12: upstreams.agent.url: URL \"ftp://127.0.0.1:8000\" must start with http:// or https://"), "{e}");
    let e = error_of("agent: a\nlisteners: []\nroutes: {}\n");
    assert!(e.contains("missing field `upstreams`"), "{e}");
}

/// An unknown `SLOGUARD_RUNTIME` stops `run` before anything starts, naming the variable and
/// the choices.
#[test]
fn an_unknown_runtime_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("sloguard-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, BASE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["run", "--config"])
        .arg(&config)
        .env("SLOGUARD_RUNTIME", "fibers")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "SLOGUARD_RUNTIME: `fibers` is not one of one-thread, work-stealing, per-core, auto"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sloguard_check_exits_non_zero_with_the_message() {
    let dir = std::env::temp_dir().join(format!("sloguard-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        BASE.replace("upstreams: [agent]", "upstreams: [agnet]"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:9: routes.agent.upstreams[0]: no upstream named \"agnet\""),
        "{stderr}"
    );

    let good = dir.join("good.yaml");
    std::fs::write(&good, BASE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .arg("check")
        .env("SLOGUARD_CONFIG", &good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_otlp_section_is_refused_not_taken_for_none() {
    let e = error_of(&format!("{BASE}otlp:\n"));
    assert!(e.starts_with("bad.yaml:13: otlp"), "{e}");
}

#[test]
fn a_routes_fallback_settings_are_checked_by_key() {
    // An `llm` listener: a cache is for LLM routes only.
    let chain = |extra: &str| {
        BASE.replace("    role: agent\n", "    role: llm\n")
            .replace(
                "    upstreams: [agent]\n",
                &format!("    upstreams: [agent, spare]\n{extra}"),
            )
            + "  spare:\n    url: http://127.0.0.1:8001\n"
    };
    let ok = Config::parse("t.yaml", &chain("    cache: {}\n")).unwrap();
    let route = &ok.routes["agent"];
    assert_eq!(route.fallback_on.len(), 4, "all four classes by default");
    assert_eq!(route.max_replay_body.0, 1024 * 1024);
    let cache = route.cache.as_ref().unwrap();
    assert_eq!((cache.max_entries, cache.ttl.0.as_secs()), (1000, 600));
    let ok = Config::parse("t.yaml", &chain("    fallback_on: [5xx, timeout]\n")).unwrap();
    assert_eq!(ok.routes["agent"].fallback_on.len(), 2);
    for (extra, want) in [
        (
            "    fallback_on: [5xx, 404]\n",
            "bad.yaml:10: routes.agent.fallback_on[1]: unknown variant `404`",
        ),
        (
            "    max_replay_body: 1GiB\n",
            "bad.yaml:10: routes.agent.max_replay_body: at most 64 MiB",
        ),
        (
            "    cache: {max_entries: 0}\n",
            "bad.yaml:10: routes.agent.cache.max_entries: must be between 1 and 100000",
        ),
        (
            "    cache: {ttl: 0s}\n",
            "bad.yaml:10: routes.agent.cache.ttl: must be greater than zero",
        ),
    ] {
        let e = error_of(&chain(extra));
        assert!(e.starts_with(want), "{extra}: {e}");
    }
    // An agent's answers belong to its users: no cache in front of it.
    let e = error_of(&BASE.replace(
        "    upstreams: [agent]\n",
        "    upstreams: [agent]\n    cache: {}\n",
    ));
    assert!(
        e.starts_with("bad.yaml:10: routes.agent.cache: only for routes of `llm` listeners; listener \"inbound\" (role agent)"),
        "{e}"
    );
    // One body cannot be replayed from one protocol to another.
    let mixed = chain("").replace(
        "    url: http://127.0.0.1:8000\n",
        "    url: http://127.0.0.1:8000\n    protocol: openai\n",
    ) + "    protocol: anthropic\n";
    let e = error_of(&mixed);
    assert!(
        e.starts_with(
            "bad.yaml:9: routes.agent.upstreams[1]: speaks anthropic, the chain before it openai"
        ),
        "{e}"
    );
    let named_cache = chain("    cache: {}\n")
        .replace("[agent, spare]", "[agent, cache]")
        .replace("  spare:\n", "  cache:\n");
    let e = error_of(&named_cache);
    assert!(
        e.starts_with("bad.yaml:9: routes.agent.upstreams[1]: an upstream named \"cache\""),
        "{e}"
    );
    let e = error_of(&BASE.replace("upstreams: [agent]", "upstreams: [agent, agent]"));
    assert!(
        e.starts_with(
            "bad.yaml:9: routes.agent.upstreams[1]: \"agent\" is already in this route's chain"
        ),
        "{e}"
    );
}

#[test]
fn llm_keys_are_checked_against_the_protocol() {
    let with = |extra: &str| {
        BASE.replace(
            "    url: http://127.0.0.1:8000\n",
            &format!("    url: http://127.0.0.1:8000\n{extra}"),
        )
    };
    let e = error_of(&with("    api_keys_file: /k\n"));
    assert_eq!(e, "bad.yaml:13: upstreams.agent.api_keys_file: needs `protocol: openai`, `anthropic` or `mcp` (the protocol decides the key header)");
    let e = error_of(&with("    model: gpt-4o\n"));
    assert!(
        e.starts_with("bad.yaml:13: upstreams.agent.model: needs `protocol: openai`"),
        "{e}"
    );
    let e = error_of(&with("    protocol: openai\n    model: ''\n"));
    assert_eq!(e, "bad.yaml:14: upstreams.agent.model: must not be empty");
    let e = error_of(&format!("{BASE}metrics: {{max_model_labels: 0}}\n"));
    assert_eq!(
        e,
        "bad.yaml:13: metrics.max_model_labels: must be at least 1"
    );
    let e = error_of(&with("    protocol: openai\n    api_keys_file: [a, b]\n"));
    assert!(e.contains("upstreams.agent.api_keys_file"), "{e}");
}

#[test]
fn keys_are_never_sent_in_clear_to_another_host() {
    let at = |url: &str| {
        BASE.replace(
            "    url: http://127.0.0.1:8000\n",
            &format!("    url: {url}\n    protocol: openai\n    api_keys_file: /k\n"),
        )
    };
    for url in ["http://api.example.com", "http://10.0.0.7:8080/v1"] {
        let e = error_of(&at(url));
        assert_eq!(e, "bad.yaml:14: upstreams.agent.api_keys_file: keys are sent in clear over http:// to a host other than this one (loopback); use https://", "{url}");
    }
    // This host (a local gateway, a test double), or https anywhere: fine.
    for url in [
        "http://127.0.0.1:8000",
        "http://127.3.2.1",
        "http://localhost:4000",
        "http://[::1]:9",
        "https://api.example.com",
    ] {
        Config::parse("ok.yaml", &at(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn safety_and_incidents_are_checked_by_key() {
    let with = |section: &str| format!("{BASE}{section}");
    let too_many = format!(
        "safety:\n  detectors:\n{}",
        (0..62)
            .map(|i| format!("    - {{name: r{i}, regex: 'x{i}'}}\n"))
            .collect::<String>()
    );
    // An empty section means the defaults: every built-in, both roles, record.
    let c = Config::parse("ok.yaml", &with("safety:\n")).unwrap();
    let safety = c.safety.unwrap();
    assert_eq!(safety.detectors.len(), 4);
    assert_eq!(safety.action, sloguard::config::SafetyAction::Record);
    let c = Config::parse("ok.yaml", &with("admin: {token_file: /run/t}\nsafety:\n  action: block\n  kill_switch: {violations: 3, within: 10m, fallback_url: 'http://127.0.0.1:9/q'}\nincidents:\n  webhook: http://127.0.0.1:9093/api/v2/alerts\n  severities: {availability: sev3}\n")).unwrap();
    assert_eq!(
        c.incidents.severities.availability,
        sloguard::config::SeverityName::Sev3
    );
    assert_eq!(
        c.incidents.severities.safety,
        sloguard::config::SeverityName::Sev1
    );
    for (section, expected) in [
        (
            "safety:\n  detectors:\n    - builtin: pii_phone\n",
            "bad.yaml:15: safety.detectors[0].builtin: unknown built-in detector \"pii_phone\"",
        ),
        (
            "safety:\n  detectors:\n    - regex: 'x+'\n",
            "bad.yaml:15: safety.detectors[0].name: a regex or keywords detector needs a `name`",
        ),
        (
            "safety:\n  detectors:\n    - name: bad\n      regex: '(unclosed'\n",
            "bad.yaml:16: safety.detectors[0].regex: invalid regex",
        ),
        (
            "safety:\n  detectors:\n    - name: k\n      keywords: [a, '']\n",
            "bad.yaml:16: safety.detectors[0].keywords: keywords[1] is empty",
        ),
        (
            "safety:\n  detectors:\n    - builtin: secrets\n      regex: 'x'\n",
            "bad.yaml:15: safety.detectors[0]: give exactly one of",
        ),
        (
            "safety:\n  detectors:\n    - builtin: secrets\n    - builtin: secrets\n",
            "bad.yaml:16: safety.detectors[1]: detector \"secrets\" is listed twice",
        ),
        (
            "safety:\n  action: shout\n",
            "bad.yaml:14: safety.action: unknown variant `shout`",
        ),
        (
            "safety:\n  kill_switch: {violations: 0, within: 1m}\n",
            "bad.yaml:14: safety.kill_switch.violations: must be between 1 and",
        ),
        (
            "safety:\n  kill_switch: {violations: 2, within: 1m, fallback_url: 'ftp://x'}\n",
            "bad.yaml:14: safety.kill_switch.fallback_url: URL \"ftp://x\" must start with http",
        ),
        (
            "incidents:\n  webhook: not a url\n",
            "bad.yaml:14: incidents.webhook:",
        ),
        (
            "incidents:\n  severities: {safety: sev9}\n",
            "bad.yaml:14: incidents.severities.safety: unknown variant `sev9`",
        ),
        (
            too_many.as_str(),
            "bad.yaml:14: safety.detectors: at most 61 detectors",
        ),
    ] {
        let e = error_of(&with(section));
        assert!(e.starts_with(expected), "{section}: {e}");
    }
}

#[test]
fn tasks_are_checked_by_key() {
    let with = |section: &str| format!("{BASE}{section}");
    let c = Config::parse("ok.yaml", &with("tasks:\n")).unwrap();
    assert_eq!(c.tasks.id_header, "x-agent-task-id");
    assert_eq!(c.tasks.max_tasks, 100_000);
    assert_eq!(c.tasks.max_llm_calls, 50);
    assert_eq!(c.tasks.max_repeated_tool_calls, 3);
    assert_eq!(c.tasks.loop_action, sloguard::config::LoopAction::Record);
    let c = Config::parse(
        "ok.yaml",
        &with("tasks:\n  max_llm_calls: 0\n  max_repeated_tool_calls: 5\n  loop_action: block\n"),
    )
    .unwrap();
    assert_eq!(c.tasks.max_llm_calls, 0);
    assert_eq!(c.tasks.max_repeated_tool_calls, 5);
    assert_eq!(c.tasks.loop_action, sloguard::config::LoopAction::Block);
    for (section, expected) in [
        (
            "tasks:\n  id_header: 'bad header'\n",
            "bad.yaml:14: tasks.id_header: \"bad header\" is not a valid HTTP header name",
        ),
        (
            "tasks:\n  stuck_after: 10ms\n",
            "bad.yaml:14: tasks.stuck_after: must be at least 1s",
        ),
        (
            "tasks:\n  max_tasks: 0\n",
            "bad.yaml:14: tasks.max_tasks: must be between 1 and",
        ),
        (
            "tasks:\n  status_header: X-Agent-Task-Id\n",
            "bad.yaml:14: tasks.status_header: must differ from tasks.id_header",
        ),
        (
            "tasks:\n  max_repeated_tool_calls: 1\n",
            "bad.yaml:14: tasks.max_repeated_tool_calls: must be at least 2",
        ),
        (
            "tasks:\n  loop_action: kill\n",
            "bad.yaml:14: tasks.loop_action: unknown variant `kill`, expected `record` or `block`",
        ),
        (
            "tasks:\n  max_llm_calls: -1\n",
            "bad.yaml:14: tasks.max_llm_calls: invalid type: integer `-1`, expected u32",
        ),
    ] {
        let e = error_of(&with(section));
        assert!(e.starts_with(expected), "{section}: {e}");
    }
}

#[test]
fn slos_are_checked_by_key() {
    let with = |slos: &str| format!("{BASE}slos:\n{slos}");
    let c = Config::parse(
        "ok.yaml",
        &with("  - {name: avail, sli: availability, target: 0.995}\n  - {name: fast, sli: latency, threshold: 250ms, target: 0.9, window: 7d, severity: sev1}\n"),
    )
    .unwrap();
    assert_eq!(c.slos.len(), 2);
    assert_eq!(
        c.slos[0].window.0,
        std::time::Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        c.slos[1].severity(&c.incidents.severities),
        sloguard::config::SeverityName::Sev1
    );
    assert_eq!(
        c.slos[0].severity(&c.incidents.severities),
        sloguard::config::SeverityName::Sev2,
        "the article's default for availability"
    );
    assert!(Config::parse("ok.yaml", &format!("{BASE}slos: ~\n"))
        .unwrap()
        .slos
        .is_empty());
    for (slos, expected) in [
        (
            "  - {name: a, sli: latency, threshold: 3s, target: 0.99}\n",
            "bad.yaml:14: slos[0].threshold: 3s is not a bucket boundary of the histogram, so the SLI could not be computed exactly; pick one of 0.005s, 0.01s",
        ),
        (
            "  - {name: a, sli: latency, target: 0.99}\n",
            "bad.yaml:14: slos[0].threshold: a latency SLO needs a threshold",
        ),
        (
            "  - {name: a, sli: safety, threshold: 1s, target: 0.99}\n",
            "bad.yaml:14: slos[0].threshold: a safety SLO takes no threshold",
        ),
        (
            "  - {name: a, sli: availability, target: 99.5}\n",
            "bad.yaml:14: slos[0].target: 99.5 must be between 0 and 1",
        ),
        (
            "  - {name: a, sli: availability, target: 0.99, window: 1d}\n",
            "bad.yaml:14: slos[0].window: must be from 3d",
        ),
        (
            "  - {name: a, sli: availability, target: 0.99}\n  - {name: a, sli: safety, target: 0.99}\n",
            "bad.yaml:15: slos[1].name: \"a\" is the name of slos[0] too",
        ),
        (
            "  - {name: 'a b', sli: availability, target: 0.99}\n",
            "bad.yaml:14: slos[0].name: \"a b\" must be 1 to 64 letters",
        ),
        (
            "  - {name: a, sli: safety, target: 0.99, exclude_dependency_failures: true}\n",
            "bad.yaml:14: slos[0].exclude_dependency_failures: applies to availability SLOs only",
        ),
        (
            "  - {name: a, sli: uptime, target: 0.99}\n",
            "bad.yaml:14: slos[0].sli: unknown variant `uptime`",
        ),
        (
            "  - {name: a, sli: time_to_first_token, threshold: 2s, target: 0.99, severity: sev4}\n",
            "bad.yaml:14: slos[0].severity: unknown variant `sev4`",
        ),
    ] {
        let e = error_of(&with(slos));
        assert!(e.starts_with(expected), "{slos}: {e}");
    }
}

/// A default never makes a sensible config invalid: a default that must agree with another
/// value follows it, and only explicit values that disagree are refused.
#[test]
fn defaults_follow_the_values_they_depend_on() {
    use std::time::Duration;
    let parse = |extra: &str| Config::parse("ok.yaml", &format!("{BASE}{extra}"));
    // otlp.timeout (default 10s) must not outlast otlp.interval.
    let c = parse("otlp: {endpoint: 'http://c:4317', interval: 1s}\n").unwrap();
    assert_eq!(c.otlp.unwrap().timeout(), Duration::from_secs(1));
    let c = parse("otlp: {endpoint: 'http://c:4317'}\n").unwrap();
    assert_eq!(c.otlp.unwrap().timeout(), Duration::from_secs(10));
    let c = parse("otlp: {endpoint: 'http://c:4317', interval: 2s, timeout: 500ms}\n").unwrap();
    assert_eq!(c.otlp.unwrap().timeout(), Duration::from_millis(500));
    let e = error_of(&format!(
        "{BASE}otlp: {{endpoint: 'http://c:4317', interval: 1s, timeout: 2s}}\n"
    ));
    assert!(
        e.contains("otlp.timeout: must be at least 100ms and at most otlp.interval"),
        "{e}"
    );
    // circuit_breaker.max_open_for (default 5m) must not be shorter than open_for.
    let breaker = |cb: &str| {
        let text = BASE.replace(
            "    url: http://127.0.0.1:8000\n",
            &format!("    url: http://127.0.0.1:8000\n    circuit_breaker: {cb}\n"),
        );
        Config::parse("ok.yaml", &text)
    };
    let c = breaker("{open_for: 10m}").unwrap();
    let cb = c.upstreams["agent"].circuit_breaker.clone().unwrap();
    assert_eq!(cb.max_open_for(), Duration::from_secs(600));
    let c = breaker("{}").unwrap();
    let cb = c.upstreams["agent"].circuit_breaker.clone().unwrap();
    assert_eq!(cb.max_open_for(), Duration::from_secs(300));
    let e = breaker("{open_for: 2m, max_open_for: 1m}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upstreams.agent.circuit_breaker.max_open_for: must be at least open_for"),
        "{e}"
    );
}

#[test]
fn mcp_settings_are_checked_naming_their_key() {
    let mcp_listener = BASE.replace("role: agent", "role: mcp");
    let e = error_of(&mcp_listener);
    assert!(
        e.contains(
            "upstreams.agent.protocol: must be `mcp`: the upstream is behind the mcp listener"
        ),
        "{e}"
    );
    let e = error_of(&mcp_listener.replace(
        "    url: http://127.0.0.1:8000\n",
        "    url: http://127.0.0.1:8000\n    protocol: mcp\n    model: x\n",
    ));
    assert!(
        e.contains("upstreams.agent.model: needs `protocol: openai`"),
        "{e}"
    );
    let ok = mcp_listener.replace(
        "    url: http://127.0.0.1:8000\n",
        "    url: http://127.0.0.1:8000\n    protocol: mcp\n",
    );
    Config::parse("ok.yaml", &ok).unwrap();
    let e = error_of(&format!("{ok}mcp: {{max_tools: 0}}\n"));
    assert!(
        e.contains("mcp.max_tools: must be between 1 and 2000"),
        "{e}"
    );
    let e = error_of(&format!("{ok}mcp: {{tool_changes: warn}}\n"));
    assert!(
        e.contains("mcp.tool_changes: unknown variant `warn`"),
        "{e}"
    );
    // The tool SLIs: thresholds from the MCP histogram, a tool filter only on them, and an
    // mcp listener whose calls they count.
    let slo = |s: &str| format!("slos:\n  - {s}\n");
    let tool_latency = "{name: t, sli: tool_latency, tool: search, threshold: 2s, target: 0.95}";
    Config::parse("ok.yaml", &format!("{ok}{}", slo(tool_latency))).unwrap();
    let e = error_of(&format!("{ok}{}", slo(&tool_latency.replace("2s", "3s"))));
    assert!(
        e.contains("slos[0].threshold: 3s is not a bucket boundary"),
        "{e}"
    );
    let e = error_of(&format!(
        "{ok}{}",
        slo("{name: a, sli: availability, tool: search, target: 0.99}")
    ));
    assert!(
        e.contains("slos[0].tool: applies to tool_success and tool_latency SLOs only"),
        "{e}"
    );
    let e = error_of(&format!(
        "{ok}{}",
        slo("{name: s, sli: tool_success, tool: '', target: 0.99}")
    ));
    assert!(e.contains("slos[0].tool: must be a tool's name"), "{e}");
    let e = error_of(&format!(
        "{BASE}{}",
        slo("{name: s, sli: tool_success, target: 0.99}")
    ));
    assert!(
        e.contains("slos[0].sli: a tool_success SLO counts the tool calls of an `mcp` listener, and there is none"),
        "{e}"
    );
}
