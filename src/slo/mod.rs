//! Service level objectives: the sidecar's local view of them (`/slo`, `sloguard_slo_*`), and
//! the Prometheus rules that compute them where they count (`sloguard rules`).
//!
//! The local engine reads each SLO's events from the sidecar's own counters once a second —
//! the same series Prometheus scrapes, summed as the rules' queries sum them — so that its view
//! and Prometheus's agree, and the data plane does no work for it.

pub(crate) mod engine;
pub mod page;
pub mod rules;
pub mod source;

use std::sync::Mutex;

use metrics::Gauge;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{Config, SloConfig};
use crate::incident::Severity;
use crate::telemetry::{label, Tallies, Telemetry, SLO_BUDGET_REMAINING, SLO_BURN_RATE};
use engine::{Tracker, WINDOWS};

/// One SLO: its config, its events, its gauges.
#[derive(Debug)]
struct Slo {
    config: SloConfig,
    /// The listeners whose requests count (`None`: all).
    scope: Option<Vec<String>>,
    severity: Severity,
    tracker: Tracker,
    remaining: Gauge,
    burn: [Gauge; WINDOWS.len()],
}

/// One dependency SLO: an upstream behind an egress listener, its attempts not `ok` of all (the
/// rules' `sloguard:upstream_error_ratio`), at the objective of the config's first availability
/// SLO.
#[derive(Debug)]
struct Dependency {
    upstream: String,
    objective: (f64, std::time::Duration),
    tracker: Tracker,
}

impl Dependency {
    fn new(upstream: &str, objective: (f64, std::time::Duration), now: Instant) -> Dependency {
        let (target, window) = objective;
        Dependency {
            upstream: upstream.to_owned(),
            objective,
            tracker: Tracker::new(engine::Tally::Good, target, window, now),
        }
    }
}

/// The config's SLOs and its dependencies', fed once a second.
#[derive(Debug)]
pub struct Slos {
    agent: String,
    slos: Mutex<Vec<Slo>>,
    dependencies: Mutex<Vec<Dependency>>,
}

impl Slo {
    fn new(s: &SloConfig, config: &Config, t: &Telemetry, now: Instant) -> Slo {
        let labels = || vec![label("agent", &config.agent), label("slo", &s.name)];
        let remaining = t.gauge(SLO_BUDGET_REMAINING, labels());
        remaining.set(1.0);
        Slo {
            severity: Severity::from(s.severity(&config.incidents.severities)),
            tracker: Tracker::new(source::tally(s.sli), s.target, s.window.0, now),
            scope: scope(s, config),
            remaining,
            burn: WINDOWS.map(|(w, _)| {
                let mut l = labels();
                l.push(label("window", w));
                t.gauge(SLO_BURN_RATE, l)
            }),
            config: s.clone(),
        }
    }
}

/// The listeners an SLO counts, owned.
fn scope(s: &SloConfig, config: &Config) -> Option<Vec<String>> {
    let names = s.scope(&config.listeners)?;
    Some(names.into_iter().map(str::to_owned).collect())
}

impl Slos {
    /// The config's SLOs (none: an empty list, which a reload may fill).
    pub fn new(config: &Config, t: &Telemetry, now: Instant) -> Slos {
        Slos {
            agent: config.agent.clone(),
            slos: Mutex::new(
                config
                    .slos
                    .iter()
                    .map(|s| Slo::new(s, config, t, now))
                    .collect(),
            ),
            dependencies: Mutex::new(
                config
                    .dependencies()
                    .iter()
                    .map(|u| Dependency::new(u, config.dependency_objective(), now))
                    .collect(),
            ),
        }
    }

    fn lock_dependencies(&self) -> std::sync::MutexGuard<'_, Vec<Dependency>> {
        self.dependencies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slo>> {
        self.slos.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether there is nothing to follow: no SLO, no dependency.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && self.lock_dependencies().is_empty()
    }

    /// Takes the SLOs of a reloaded config: one whose name and settings stay the same goes on
    /// with the events it has counted (under the severity the config gives it now); a new or
    /// changed one starts afresh. Returns the names of the SLOs kept.
    pub fn reload(&self, config: &Config, t: &Telemetry, now: Instant) -> Vec<String> {
        let mut slos = self.lock();
        let mut old = std::mem::take(&mut *slos);
        let mut kept = Vec::new();
        for s in &config.slos {
            let severity = Severity::from(s.severity(&config.incidents.severities));
            let scope = scope(s, config);
            match old.iter().position(|o| o.config == *s && o.scope == scope) {
                Some(i) => {
                    kept.push(s.name.clone());
                    let mut slo = old.swap_remove(i);
                    slo.severity = severity;
                    slos.push(slo);
                }
                None => slos.push(Slo::new(s, config, t, now)),
            }
        }
        drop(slos);
        let objective = config.dependency_objective();
        let mut deps = self.lock_dependencies();
        let mut old = std::mem::take(&mut *deps);
        for u in config.dependencies() {
            match old
                .iter()
                .position(|d| d.upstream == u && d.objective == objective)
            {
                Some(i) => deps.push(old.swap_remove(i)),
                None => deps.push(Dependency::new(&u, objective, now)),
            }
        }
        kept
    }

    /// Reads every SLO's events from the sidecar's own counters (their typed totals), and updates
    /// the gauges.
    pub fn tick(&self, tallies: &Tallies, now: Instant) {
        let mut slos = self.lock();
        for slo in slos.iter_mut() {
            let scope = slo.scope.as_deref();
            let (first, total) = source::counts(tallies, &self.agent, &slo.config, scope);
            slo.tracker.feed(first, total, now);
            slo.remaining.set(slo.tracker.budget_remaining(now));
            for (gauge, (_, minutes)) in slo.burn.iter().zip(WINDOWS) {
                let burn = slo
                    .tracker
                    .window(minutes, now)
                    .burn_rate(slo.config.target);
                gauge.set(burn.unwrap_or(0.0));
            }
        }
        drop(slos);
        for d in self.lock_dependencies().iter_mut() {
            let (ok, total) = source::dependency_counts(tallies, &self.agent, &d.upstream);
            d.tracker.feed(ok, total, now);
        }
    }

    /// `GET /slo`: every SLO with its windows, budget and state.
    pub fn report(&self, now: Instant) -> Value {
        let slos = self.lock();
        let list: Vec<Value> = slos
            .iter()
            .map(|s| {
                let t = &s.tracker;
                let target = s.config.target;
                let windows = windows(t, target, now);
                json!({
                    "name": s.config.name,
                    "sli": s.config.sli.as_str(),
                    "target": target,
                    "window": rules::duration_label(s.config.window.0),
                    "threshold_seconds": s.config.threshold.map(|d| d.0.as_secs_f64()),
                    "budget_remaining": t.budget_remaining(now),
                    "windows": windows,
                    "state": t.state(now).as_str(),
                    "severity": s.severity.as_str(),
                    "counting": t.counting(),
                    // The listeners whose requests count; null: every listener.
                    "listeners": s.scope,
                    "exclude_dependency_failures": s.config.exclude_dependency_failures,
                    "history": {
                        "period_minutes": 5,
                        "sli": t.history(5, 72, now),
                        "budget_remaining_by_hour": t.burn_down(now),
                    },
                })
            })
            .collect();
        let dependencies: Vec<Value> = self
            .lock_dependencies()
            .iter()
            .map(|d| {
                let (t, (target, window)) = (&d.tracker, d.objective);
                json!({
                    "upstream": d.upstream,
                    "target": target,
                    "window": rules::duration_label(window),
                    "budget_remaining": t.budget_remaining(now),
                    "windows": windows(t, target, now),
                    "state": t.state(now).as_str(),
                    "counting": t.counting(),
                })
            })
            .collect();
        json!({"agent": self.agent, "slos": list, "dependencies": dependencies})
    }
}

/// A tracker's windows for `/slo`: good and total events, SLI and burn rate of each.
fn windows(t: &Tracker, target: f64, now: Instant) -> serde_json::Map<String, Value> {
    let window = |c: engine::Counts| json!({"good": c.good, "total": c.total, "sli": c.sli(), "burn_rate": c.burn_rate(target)});
    let mut windows = serde_json::Map::new();
    for (name, minutes) in WINDOWS {
        windows.insert(name.into(), window(t.window(minutes, now)));
    }
    windows.insert("since_start".into(), window(t.since_start()));
    windows
}
