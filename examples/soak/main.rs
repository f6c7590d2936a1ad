//! The fault soak (`benches/soak.sh`): the sidecar binary under open-loop mixed traffic on every
//! role while its upstreams fail in every way the soak knows (faults.rs) and its config is
//! reloaded every 10 s — two valid configs and an invalid one, by file change, SIGHUP and the
//! admin call in turn. At the end it checks, prints and writes (OUT/soak-summary.md):
//!
//! - every request a client sent was answered (none lost, none past the client's timeout), and
//!   counted exactly once in `agent_requests_total`: per listener and status class, the clients'
//!   own tally against the metric; every clean answer arrived whole and intact;
//! - no panic (the sidecar's log), no background restart (`sloguard_background_restarts_total`),
//!   exit 0 at SIGTERM;
//! - resident memory and open file descriptors flat after the warm-up (start, warm, peak, end);
//! - the kill switch never tripped (`sloguard_agent_disabled` 0 throughout, no
//!   `agent_disabled` answer);
//! - each reload ended as it should (`sloguard_config_reloads_total` against the reloads made).
//!
//! `cargo run --release --example soak -- SLOGUARD_BINARY SECS RATE OUT`

mod faults;
mod load;
mod sidecar;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faults::{Speaks, FAULTS, VARIANTS};
use load::{Load, LISTENERS};
use sidecar::{config, free_port, sum, write_config, Ports, Sidecar};

/// How a reload is made, in turn.
const TRIGGERS: [&str; 3] = ["file", "sighup", "admin"];

/// One sample of the sidecar's resources.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // What the clients' HTTP/2 library finds wrong in an answer (a stream reset, say) is logged
    // with its reason: `SOAK_LOG=h2=debug`.
    if let Ok(filter) = std::env::var("SOAK_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let binary = PathBuf::from(arg(1, "target/release/sloguard"));
    let secs: u64 = arg(2, "600").parse()?;
    let rate: u64 = arg(3, "200").parse()?;
    let out = PathBuf::from(arg(4, "bench-results"));
    std::fs::create_dir_all(&out)?;
    let dir = out.join("soak");
    std::fs::create_dir_all(&dir)?;

    // The upstreams: the agent closes idle connections after 2 s (gunicorn), the OpenAI-style
    // provider after 5 s saying so (Node.js), the others after 5 s without a word (uvicorn); the
    // chain's primary refuses connections from time to time.
    // (name, speaks, closes idle connections after (s), says so in Keep-Alive, refuses at times)
    let plan = [
        ("agent", Speaks::Agent, 2, false, false),
        ("openai", Speaks::OpenAi, 5, true, false),
        ("anthropic", Speaks::Anthropic, 5, false, false),
        ("chain-a", Speaks::OpenAi, 5, false, true),
        ("chain-b", Speaks::OpenAi, 5, false, false),
    ];
    let mut servers = Vec::new();
    for (seed, (name, speaks, idle, says, refuses)) in (1..).zip(plan) {
        let idle = Duration::from_secs(idle);
        servers.push(faults::start(name, speaks, idle, says, refuses, seed).await?);
    }
    let mut listeners = BTreeMap::new();
    for l in LISTENERS {
        listeners.insert(l, free_port()?);
    }
    let ports = Ports {
        admin: free_port()?,
        listeners,
        upstreams: servers.iter().map(|s| (s.name, s.addr)).collect(),
    };
    let config_path = dir.join("sloguard.yaml");
    write_config(&config_path, &config(&ports, &dir, 0))?;
    let log = dir.join("sloguard.log");
    let sidecar = Arc::new(Sidecar::start(&binary, &config_path, &log, ports.admin).await?);
    let started = Instant::now();
    println!(
        "soak: {secs} s at {rate} req/s through sloguard (pid {}), reloads every 10 s",
        sidecar.pid()
    );

    let load = Arc::new(Load::new(ports.listeners.clone()));
    let traffic = tokio::spawn(load.clone().run(rate, secs, 0x50a4));

    // Every second: resources and the kill switch; every 10 s a reload.
    let mut resources = Vec::new();
    let mut disabled_seen = 0.0f64;
    let mut expect_reloads = BTreeMap::from([("ok", 0u64), ("error", 0u64)]);
    let mut reload_log = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut step = 0usize;
    let mut current = 0u8;
    while !traffic.is_finished() {
        tick.tick().await;
        let at = started.elapsed();
        if let Some((rss_kib, fds)) = sidecar.resources() {
            resources.push(Sample { at, rss_kib, fds });
        }
        if let Some((_, m)) = sidecar.get("/metrics").await {
            disabled_seen = disabled_seen.max(sum(&m, "sloguard_agent_disabled", &[]));
        }
        let second = at.as_secs();
        if second >= 10 * (step as u64 + 1) && second < secs {
            // Rounds of three reloads, one per trigger: the file changes at the first of each
            // round, to the next of valid 0, valid 1, invalid.
            let trigger = TRIGGERS[step % 3];
            if trigger == "file" {
                current = ((step / 3) % 3) as u8;
                current = [1, 2, 0][current as usize];
                write_config(&config_path, &config(&ports, &dir, current))?;
            }
            let valid = current < 2;
            let outcome = match trigger {
                "file" => "written".to_owned(),
                "sighup" => format!("sent: {}", sidecar.signal("HUP")),
                _ => format!("answered {:?}", sidecar.admin_reload().await),
            };
            if trigger == "admin" {
                let want = if valid { "Some(200)" } else { "Some(422)" };
                if !outcome.ends_with(want) {
                    reload_log.push(format!(
                        "admin reload of config {current}: {outcome}, expected {want}"
                    ));
                }
            }
            *expect_reloads
                .entry(if valid { "ok" } else { "error" })
                .or_insert(0) += 1;
            step += 1;
        }
    }
    traffic.await?;
    let load_ended = started.elapsed();

    // Settle: every request counted (connections closing, lingering ones too), idle upstream
    // connections let go (the 5 s upkeep), then the last look.
    let tally = std::mem::take(&mut *load.tally.lock().unwrap_or_else(|p| p.into_inner()));
    drop(load);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = sidecar
            .get("/metrics")
            .await
            .map(|(_, m)| m)
            .unwrap_or_default();
        let counted: f64 = sum(&metrics, "agent_requests_total", &[]);
        if counted as u64 >= tally.sent.values().sum::<u64>() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    if let Some((rss_kib, fds)) = sidecar.resources() {
        resources.push(Sample {
            at: started.elapsed(),
            rss_kib,
            fds,
        });
    }
    let end_metrics = sidecar
        .get("/metrics")
        .await
        .map(|(_, m)| m)
        .unwrap_or_default();
    if !end_metrics.is_empty() {
        metrics = end_metrics;
    }
    for s in &mut servers {
        s.stop();
    }
    let sidecar = Arc::try_unwrap(sidecar).map_err(|_| anyhow::anyhow!("sidecar still shared"))?;
    let exit = sidecar.stop(Duration::from_secs(40)).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();

    // The verdicts.
    let mut failures: Vec<String> = Vec::new();
    let mut report = String::new();
    let total: u64 = tally.sent.values().sum();
    let _ = writeln!(
        report,
        "# Fault soak: {secs} s, {total} requests at {rate}/s, a reload every 10 s\n"
    );
    let _ = writeln!(
        report,
        "Command: `SOAK_S={secs} RATE={rate} bash benches/soak.sh`\n"
    );
    let _ = writeln!(
        report,
        "## Requests: the clients' tally against `agent_requests_total`\n"
    );
    let _ = writeln!(
        report,
        "| listener | sent | counted | 2xx (client / metric) | 3xx | 4xx | 5xx |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    for l in LISTENERS {
        let sent = tally.sent.get(l).copied().unwrap_or(0);
        let counted = sum(&metrics, "agent_requests_total", &[("listener", l)]) as u64;
        let mut row = format!("| {l} | {sent} | {counted} |");
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            let mine = tally.expected.get(&(l, class)).copied().unwrap_or(0);
            let theirs = sum(
                &metrics,
                "agent_requests_total",
                &[("listener", l), ("status", class)],
            ) as u64;
            let _ = write!(row, " {mine} / {theirs} |");
            if mine != theirs {
                failures.push(format!(
                    "{l} {class}: the clients saw {mine}, the metric counts {theirs}"
                ));
            }
        }
        if sent != counted {
            failures.push(format!("{l}: {sent} sent, {counted} counted"));
        }
        let _ = writeln!(report, "{row}");
    }
    let _ = writeln!(
        report,
        "\nLost (no answer, or none within {:?}): **{}**. Clean answers checked whole and intact: {} ({} damaged). Bodies cut by a fault after the head: {}. Served from the cache: {}.",
        load::CLIENT_TIMEOUT,
        tally.lost.len(),
        tally.clean,
        tally.damaged.len(),
        tally.cut,
        tally.cache_hits
    );
    let errors: Vec<String> = tally
        .sidecar_errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        report,
        "Answers the sidecar made itself: {}.",
        errors.join(", ")
    );
    failures.extend(tally.lost.iter().take(20).map(|l| format!("lost: {l}")));
    if tally.lost.len() > 20 {
        failures.push(format!("... {} lost in all", tally.lost.len()));
    }
    failures.extend(
        tally
            .damaged
            .iter()
            .take(20)
            .map(|d| format!("damaged: {d}")),
    );

    let _ = writeln!(report, "\n## Faults injected\n");
    let _ = writeln!(
        report,
        "| upstream | clean | {} | {} |",
        FAULTS.join(" | "),
        VARIANTS.join(" | ")
    );
    let _ = writeln!(
        report,
        "|---|---|{}",
        "---|".repeat(FAULTS.len() + VARIANTS.len())
    );
    let mut by_fault = [0u64; FAULTS.len()];
    for s in &servers {
        let i = &s.injected;
        let mut row = format!(
            "| {} | {} |",
            s.name,
            i.clean.load(std::sync::atomic::Ordering::Relaxed)
        );
        for (n, f) in i.faults.iter().enumerate() {
            let v = f.load(std::sync::atomic::Ordering::Relaxed);
            by_fault[n] += v;
            let _ = write!(row, " {v} |");
        }
        for v in &i.variants {
            let _ = write!(row, " {} |", v.load(std::sync::atomic::Ordering::Relaxed));
        }
        let _ = writeln!(report, "{row}");
    }
    let _ = writeln!(
        report,
        "\n(`refused` counts windows of 2–4 s in which chain-a's listener was closed; `429` and `5xx` count answers inside storms and bursts.) Upstream attempts by outcome, as the sidecar counted them: {}.",
        ["ok", "5xx", "429", "timeout", "connect_error", "reset"]
            .iter()
            .map(|o| format!("{o} {}", sum(&metrics, "sloguard_upstream_requests_total", &[("outcome", o)]) as u64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        report,
        "Fallbacks: {}; circuit transitions to open: {}; bodies not parsed: {}.",
        sum(&metrics, "sloguard_fallbacks_total", &[]) as u64,
        sum(
            &metrics,
            "sloguard_circuit_transitions_total",
            &[("to", "open")]
        ) as u64,
        sum(&metrics, "sloguard_unparsed_bodies_total", &[]) as u64
    );

    // Reloads.
    let ok = sum(
        &metrics,
        "sloguard_config_reloads_total",
        &[("result", "ok")],
    ) as u64;
    let err = sum(
        &metrics,
        "sloguard_config_reloads_total",
        &[("result", "error")],
    ) as u64;
    let _ = writeln!(
        report,
        "\n## Reloads\n\n{step} reloads made (file change, SIGHUP, admin call in turn; configs valid, valid, invalid in turn): ok {ok} (expected {}), refused {err} (expected {}).",
        expect_reloads["ok"], expect_reloads["error"]
    );
    if ok != expect_reloads["ok"] || err != expect_reloads["error"] {
        failures.push(format!(
            "reloads: ok {ok} / error {err}, expected {} / {}",
            expect_reloads["ok"], expect_reloads["error"]
        ));
    }
    failures.extend(reload_log);

    // Process health.
    let panics = log_text.lines().filter(|l| l.contains("panicked")).count();
    let restarts = sum(&metrics, "sloguard_background_restarts_total", &[]) as u64;
    let _ = writeln!(
        report,
        "\n## The process\n\nPanics in its log: {panics}. Background restarts: {restarts}. Exit at SIGTERM: {}. Kill switch: `sloguard_agent_disabled` at most {disabled_seen} over the run, {} `agent_disabled` answers.",
        exit.map_or("none within 40 s".to_owned(), |s| s.to_string()),
        tally.disabled
    );
    if panics > 0 {
        let first: Vec<&str> = log_text
            .lines()
            .filter(|l| l.contains("panicked"))
            .take(3)
            .collect();
        failures.push(format!("{panics} panics: {first:?}"));
    }
    if restarts > 0 {
        failures.push(format!("{restarts} background restarts"));
    }
    if !exit.is_some_and(|s| s.success()) {
        failures.push(format!("exit at SIGTERM: {exit:?}"));
    }
    if disabled_seen > 0.0 || tally.disabled > 0 {
        failures.push("the kill switch tripped".into());
    }

    // Resources: flat after the warm-up (the first fifth of the load, at least 10 s).
    let warm_at = Duration::from_secs((secs / 5).max(10));
    let warm = resources.iter().find(|s| s.at >= warm_at);
    let start = resources.first();
    let end = resources.last();
    let peak_rss = resources.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = resources.iter().map(|s| s.fds).max().unwrap_or(0);
    let mib = |k: u64| k as f64 / 1024.0;
    if let (Some(start), Some(warm), Some(end)) = (start, warm, end) {
        let _ = writeln!(
            report,
            "\n## Resources\n\n| | start | warm ({} s) | peak | end ({} s, {} s after the load) |\n|---|---|---|---|---|\n| resident memory (MiB) | {:.1} | {:.1} | {:.1} | {:.1} |\n| open file descriptors | {} | {} | {} | {} |",
            warm.at.as_secs(),
            end.at.as_secs(),
            end.at.saturating_sub(load_ended).as_secs(),
            mib(start.rss_kib),
            mib(warm.rss_kib),
            mib(peak_rss),
            mib(end.rss_kib),
            start.fds,
            warm.fds,
            peak_fds,
            end.fds
        );
        // Flat: after the warm-up, memory grows by no more than a tenth (and 8 MiB of allocator
        // slack), and once the load is gone every socket it opened is closed.
        let rss_bound = warm.rss_kib + warm.rss_kib / 10 + 8 * 1024;
        if end.rss_kib > rss_bound {
            failures.push(format!(
                "resident memory grew after the warm-up: {:.1} MiB at {} s, {:.1} MiB at the end",
                mib(warm.rss_kib),
                warm.at.as_secs(),
                mib(end.rss_kib)
            ));
        }
        if end.fds > start.fds + 4 {
            failures.push(format!(
                "open file descriptors: {} at the start, {} at the end",
                start.fds, end.fds
            ));
        }
    } else {
        failures.push("no resource samples".into());
    }

    let _ = writeln!(report, "\n## Verdict\n");
    if failures.is_empty() {
        let _ = writeln!(report, "PASS: nothing lost, every request counted once, no panic or restart, memory and descriptors flat, kill switch untouched.");
    } else {
        let _ = writeln!(report, "FAIL:\n");
        for f in &failures {
            let _ = writeln!(report, "- {f}");
        }
    }
    print!("{report}");
    std::fs::write(out.join("soak-summary.md"), &report)?;
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
