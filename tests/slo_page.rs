//! The `/slo` page in a real browser: a sidecar with SLOs after known traffic, its page fetched
//! as a browser asks for it, then loaded by headless chromium (Debian `chromium`; scripts/test
//! installs it) for its DOM and a screenshot. The screenshots and pages are kept under
//! `target/` for a person to look at.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use http::{header, Request, Response, StatusCode};
use serde_json::json;
use sloguard::Sidecar;

const SLOS: [&str; 4] = ["availability", "availability-strict", "latency", "tasks"];

/// Four SLOs that 10% errors put in each state: breach (95%), warning (88%: a sixth of the
/// budget left), ok (latency, tasks at 50%).
async fn sidecar(agent_url: &str) -> Sidecar {
    agent_sidecar(
        agent_url,
        "slos:
  - {name: availability, sli: availability, target: 0.88, window: 7d}
  - {name: availability-strict, sli: availability, target: 0.95, window: 30d}
  - {name: latency, sli: latency, threshold: 5s, target: 0.99, window: 7d, severity: sev1}
  - {name: tasks, sli: task_completion, target: 0.5}
",
    )
    .await
}

async fn get_slo(s: &Sidecar, accept: Option<&str>) -> Response<hyper::body::Incoming> {
    let mut req = Request::get(format!("http://{}/slo", s.admin_addr));
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    client().request(req.body(empty()).unwrap()).await.unwrap()
}

/// A fresh directory of the system's temp dir, for one test's files and chromium profiles.
fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("sloguard-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless chromium with a profile of its own under `dir`, for at most 60 s.
async fn chromium(dir: &Path, profile: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
    ])
    .arg(format!("--user-data-dir={}", dir.join(profile).display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run `chromium` ({e}): this test needs a headless browser; \
             install it with `apt-get install -y chromium` (scripts/test does)"
        )
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium's output");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Loads `page` in chromium: checks its DOM has one chart per name of `slos`, and that it
/// renders without console errors to a screenshot of some substance. Keeps the page and the
/// screenshot as `target/{artifact}.html|png`.
async fn render(page: &str, slos: &[&str], artifact: &str) {
    // Nothing is fetched from elsewhere: the admin port is often reached with no way out.
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(!page.contains("<script"), "the page needs no script");
    let dir = scratch(artifact);
    let file = dir.join("slo.html");
    std::fs::write(&file, page).unwrap();
    let url = format!("file://{}", file.display());
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join(format!("{artifact}.html")), page).unwrap();

    let dom = chromium(&dir, "dom", &["--dump-dom", &url]).await;
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert_eq!(
        dom.matches("class=\"slo-chart\"").count(),
        slos.len(),
        "one chart per SLO in the browser's DOM"
    );
    for name in slos {
        assert_eq!(
            dom.matches(&format!("data-slo=\"{name}\"")).count(),
            1,
            "{name}"
        );
    }

    let png = kept.join(format!("{artifact}.png"));
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    let out = chromium(
        &dir,
        "shot",
        &[
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
            "--hide-scrollbars",
            "--window-size=1280,1800",
            &shot,
            &url,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The page runs no script: any console message at all (chromium logs each as a `CONSOLE`
    // line, an uncaught exception too) is a fault.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(errors.is_empty(), "console messages: {errors:#?}");
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "the window's width");
    assert!(bytes.len() > 10_000, "a blank page? {} bytes", bytes.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn slo_page_renders_in_a_headless_browser() {
    let a = verdict_agent().await;
    let s = sidecar(&a.url()).await;
    // The view as JSON: without `Accept: text/html`.
    let json = async || {
        let resp = get_slo(&s, Some("application/json")).await;
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        serde_json::from_slice::<serde_json::Value>(&body_bytes(resp).await).unwrap()
    };
    // The engine's baseline first, then 90 successes and 10 failures, counted once the engine's
    // next tick reads them.
    let baseline = async || json().await["slos"][1]["counting"] == true;
    wait_until("the SLO's baseline", 5, baseline).await;
    ninety_good_ten_bad(&s).await;
    let counted = async || json().await["slos"][1]["windows"]["5m"]["total"] == 100;
    // Past the deadline, the states below say what is off.
    holds_within(5, counted).await;
    let r = json().await;
    let states: Vec<&str> = r["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["warning", "breach", "ok", "ok"], "{r:#}");

    // What a browser sends.
    let resp = get_slo(&s, Some("text/html,application/xhtml+xml,*/*;q=0.8")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(resp.headers()[header::VARY], "accept");
    let page = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(page.contains("<title>SLOs of test-agent"), "{page}");
    assert!(page.contains("\u{2212}100.0% <small>(overspent)</small>"));
    render(&page, &SLOS, "slo-page").await;
    s.shutdown().await;
}

/// Six hours of SLI with a dip and a gap, and a month's burn-down that goes below zero: what
/// the page looks like on a sidecar that has run a while.
#[tokio::test]
async fn slo_page_draws_a_long_history_in_a_headless_browser() {
    let sli: Vec<serde_json::Value> = (0..72)
        .map(|i| match i {
            20..=23 => json!(null),
            40..=48 => json!(0.93 + 0.005 * (i as f64 - 44.0).abs()),
            _ => json!(0.997 + 0.002 * ((i as f64) * 0.7).sin()),
        })
        .collect();
    let burn: Vec<f64> = (0..300)
        .map(|h| {
            1.0 - 0.002 * h as f64
                - if h > 200 {
                    0.01 * (h - 200) as f64
                } else {
                    0.0
                }
        })
        .collect();
    let w = json!({"good": 991, "total": 1000, "sli": 0.991, "burn_rate": 9.0});
    let slo = |name: &str, state: &str, remaining: f64, history: serde_json::Value| {
        json!({
            "name": name, "sli": "availability", "target": 0.999, "window": "30d",
            "threshold_seconds": null, "budget_remaining": remaining,
            "windows": {"5m": w, "1h": w, "6h": w, "since_start": w},
            "state": state, "severity": "sev2", "history": history,
        })
    };
    let report = json!({"agent": "research-agent", "slos": [
        slo("availability", "breach", *burn.last().unwrap(), json!({
            "period_minutes": 5, "sli": sli, "budget_remaining_by_hour": burn,
        })),
        slo("fresh", "ok", 1.0, json!({
            "period_minutes": 5, "sli": [], "budget_remaining_by_hour": [],
        })),
    ]});
    let page = sloguard::slo::page::html(&report);
    render(&page, &["availability", "fresh"], "slo-page-history").await;
}
