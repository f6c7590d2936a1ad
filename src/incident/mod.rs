//! Incidents: the events an on-call engineer must hear about, told to the logs, the metrics and,
//! when one is configured, an Alertmanager webhook.
//!
//! An *incident event* is one of:
//!
//! - the agent's kill switch turning on (firing) or off (resolved): always **sev1**, because
//!   "a silent agent is safer than a hallucinating one" and a disabled agent is the proof that
//!   one was not;
//! - an upstream's circuit breaker opening (firing) or closing (resolved), at the severity the
//!   caller picks (`incidents.severities.availability`, sev2 by default).
//!
//! Every event, whatever the webhook, is one structured log line (`warn` when firing, `info` when
//! resolved, with the fields `severity`, `kind`, `subject` and `summary`; never a secret or user
//! text: the callers pass names from the config and fixed wording) and one increment of
//! `sloguard_incidents_total{agent, severity, kind}`.
//!
//! ## The webhook
//!
//! With `incidents.webhook` set, each event also becomes an Alertmanager v2 alert
//! (`POST` of a JSON array, the `postableAlerts` of Alertmanager's `api/v2/openapi.yaml`, to the
//! configured URL as given):
//!
//! ```json
//! [{"labels": {"alertname": "SloguardCircuitOpen", "agent": "support-bot", "severity": "sev2",
//!              "kind": "circuit_breaker", "upstream": "openai"},
//!   "annotations": {"summary": "...", "response_time": "15 minutes",
//!                   "runbook": "Check LLM provider status page; Verify database connectivity; ..."},
//!   "startsAt": "2025-01-01T12:00:00.250Z",
//!   "endsAt": "2025-01-01T12:03:10Z"}]
//! ```
//!
//! `response_time` and `runbook` are the severity's row of the incident severity table of the
//! reference article. `endsAt` is present only on a resolve. A resolve carries the labels and the
//! `startsAt` of its firing event, so that Alertmanager matches it to the alert it ends: the
//! start (and severity) of each active alert is kept per (kind, subject) in a map bounded to
//! [`MAX_ACTIVE`] entries (past that, the oldest is forgotten and its resolve starts "now").
//!
//! Alertmanager resolves an alert on its own when it has not heard of it for its
//! `resolve_timeout` (5 minutes by default), so the active alerts are re-sent every
//! [`WebhookConfig::resend`] (1 minute by default, as Prometheus does) until they are resolved.
//! This also heals a lost notification: a dropped firing is re-sent on the next tick, and a
//! dropped resolve is no longer re-sent, so Alertmanager resolves it after its timeout.
//!
//! ## Never in the way
//!
//! [`Incidents::raise`] is synchronous and never waits: it puts the alert on a bounded queue
//! ([`QUEUE_CAPACITY`] alerts of a few hundred bytes each) and returns. One background task takes
//! up to [`MAX_BATCH`] queued alerts at a time and posts them as one array. Each post gets
//! [`WebhookConfig::attempts`] attempts (3 by default), each bounded by
//! [`WebhookConfig::timeout`] (2 s, connecting included), with an exponential backoff between
//! them starting at [`WebhookConfig::backoff`] (200 ms, then 400 ms). A 2xx answer is success;
//! a connect error, a broken connection, a timeout, a 5xx or a 429 is retried; any other answer
//! (a 4xx: the receiver will not take this payload) is not.
//!
//! When the receiver is down, each batch costs at most about `attempts × timeout` plus the
//! backoffs (≈ 6.6 s by default) and is then dropped; meanwhile new alerts wait in the queue, and
//! once it is full they are dropped at once. Nothing grows and the data plane never waits. Every
//! alert is counted in `sloguard_incident_notifications_total{agent, result}`: `sent`, `failed`
//! (dropped after its attempts, re-sends included) or `queue_full` (dropped at once); the log
//! says why, without the URL (it may carry credentials).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::{Counter, Label};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::MissedTickBehavior;

use crate::telemetry::{
    label, LogLimiter, Telemetry, BACKGROUND_RESTARTS_TOTAL, INCIDENTS_TOTAL,
    INCIDENT_NOTIFICATIONS_TOTAL,
};

/// Alerts waiting for the webhook; past this, new ones are dropped (`queue_full`).
pub const QUEUE_CAPACITY: usize = 256;
/// Alerts posted in one request at most.
pub const MAX_BATCH: usize = 64;
/// Active alerts whose start is remembered (one per kill switch and per upstream in practice).
pub const MAX_ACTIVE: usize = 1024;
/// Longer summaries are cut (at a character boundary) to keep each alert small.
pub const MAX_SUMMARY_BYTES: usize = 512;
/// The receiver's answer is read (so the connection can be reused) up to this many bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How urgent an incident is: the severity table of the reference article.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Sev1 = 0,
    Sev2 = 1,
    Sev3 = 2,
}

impl From<crate::config::SeverityName> for Severity {
    fn from(name: crate::config::SeverityName) -> Severity {
        match name {
            crate::config::SeverityName::Sev1 => Severity::Sev1,
            crate::config::SeverityName::Sev2 => Severity::Sev2,
            crate::config::SeverityName::Sev3 => Severity::Sev3,
        }
    }
}

impl Severity {
    pub const COUNT: usize = 3;
    pub const ALL: [Severity; Severity::COUNT] = [Severity::Sev1, Severity::Sev2, Severity::Sev3];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Sev1 => "sev1",
            Severity::Sev2 => "sev2",
            Severity::Sev3 => "sev3",
        }
    }

    /// `sev1`, `sev2` or `sev3`.
    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Severity::Sev1 => "Agent producing harmful or unsafe outputs",
            Severity::Sev2 => "Agent unavailable or task completion below SLO",
            Severity::Sev3 => "Elevated latency or intermittent failures",
        }
    }

    /// How soon someone must respond.
    pub fn response_time(self) -> &'static str {
        match self {
            Severity::Sev1 => "5 minutes",
            Severity::Sev2 => "15 minutes",
            Severity::Sev3 => "1 hour",
        }
    }

    /// What the responder does first, in order.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Severity::Sev1 => &[
                "Immediately disable affected agent",
                "Route traffic to fallback agent or human queue",
                "Page on-call SRE and AI safety lead",
            ],
            Severity::Sev2 => &[
                "Check LLM provider status page",
                "Verify database connectivity",
                "Check for recent deployments to rollback",
            ],
            Severity::Sev3 => &[
                "Monitor dashboards for trend",
                "Check rate limit consumption",
                "Review recent config changes",
            ],
        }
    }

    /// The actions as one line, `; ` between them (the alert's `runbook` annotation).
    pub fn runbook(self) -> String {
        self.actions().join("; ")
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The agent's kill switch; the subject is the agent.
    KillSwitch = 0,
    /// An upstream's circuit breaker; the subject is the upstream.
    CircuitBreaker = 1,
    /// An MCP upstream's tool definitions moved from the pinned ones; the subject is the
    /// upstream.
    ToolChange = 2,
}

impl Kind {
    pub const COUNT: usize = 3;
    pub const ALL: [Kind; Kind::COUNT] = [Kind::KillSwitch, Kind::CircuitBreaker, Kind::ToolChange];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::KillSwitch => "kill_switch",
            Kind::CircuitBreaker => "circuit_breaker",
            Kind::ToolChange => "tool_change",
        }
    }

    /// The Alertmanager `alertname` label.
    pub fn alertname(self) -> &'static str {
        match self {
            Kind::KillSwitch => "SloguardKillSwitch",
            Kind::CircuitBreaker => "SloguardCircuitOpen",
            Kind::ToolChange => "SloguardToolChanged",
        }
    }

    /// The alert label naming the subject, when the `agent` label does not already.
    fn subject_label(self) -> Option<&'static str> {
        match self {
            Kind::KillSwitch => None,
            Kind::CircuitBreaker | Kind::ToolChange => Some("upstream"),
        }
    }
}

/// One incident event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub severity: Severity,
    pub kind: Kind,
    /// `true` when the condition starts (kill switch on, circuit open), `false` when it ends.
    pub firing: bool,
    /// What it happened to: the agent's name, or the upstream's. Events about one subject and
    /// kind are one alert.
    pub subject: String,
    /// One line for a human, from fixed wording and config names only (it is logged and sent).
    pub summary: String,
}

impl Incident {
    /// The kill switch of `agent` turned on (`on`) or off: always sev1.
    pub fn kill_switch(agent: &str, on: bool, summary: impl Into<String>) -> Incident {
        Incident {
            severity: Severity::Sev1,
            kind: Kind::KillSwitch,
            firing: on,
            subject: agent.to_owned(),
            summary: summary.into(),
        }
    }

    /// The circuit breaker of `upstream` opened (`open`) or closed.
    pub fn circuit_breaker(
        severity: Severity,
        upstream: &str,
        open: bool,
        summary: impl Into<String>,
    ) -> Incident {
        Incident {
            severity,
            kind: Kind::CircuitBreaker,
            firing: open,
            subject: upstream.to_owned(),
            summary: summary.into(),
        }
    }
}

impl Incident {
    /// The tools of MCP upstream `upstream` moved from their pinned definitions (`changed`), or
    /// its current list was accepted.
    pub fn tool_change(
        severity: Severity,
        upstream: &str,
        changed: bool,
        summary: impl Into<String>,
    ) -> Incident {
        Incident {
            severity,
            kind: Kind::ToolChange,
            firing: changed,
            subject: upstream.to_owned(),
            summary: summary.into(),
        }
    }
}

/// Where and how the alerts are posted (`incidents.webhook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The full `.../api/v2/alerts` URL, used as given; `http` or `https`.
    pub url: Uri,
    /// Attempts per post, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each next one.
    pub backoff: Duration,
    /// Bound on each attempt, connecting included.
    pub timeout: Duration,
    /// Active alerts are re-sent this often so Alertmanager does not resolve them on its own
    /// (keep it below Alertmanager's `resolve_timeout`).
    pub resend: Duration,
}

impl WebhookConfig {
    pub const DEFAULT_ATTEMPTS: u32 = 3;
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);

    /// `url` with the default retry policy.
    pub fn new(url: Uri) -> WebhookConfig {
        WebhookConfig {
            url,
            attempts: WebhookConfig::DEFAULT_ATTEMPTS,
            backoff: WebhookConfig::DEFAULT_BACKOFF,
            timeout: WebhookConfig::DEFAULT_TIMEOUT,
            resend: WebhookConfig::DEFAULT_RESEND,
        }
    }

    /// Parses and checks a webhook URL (absolute, `http` or `https`); the error is for the
    /// config's error message and does not repeat the URL.
    pub fn parse(url: &str) -> Result<WebhookConfig, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("the URL must start with http:// or https://".to_owned()),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err("the URL has no host".to_owned());
        }
        Ok(WebhookConfig::new(uri))
    }
}

/// Raises incident events; cheap to clone, shared by every part that has incidents to tell.
#[derive(Debug, Clone)]
pub struct Incidents {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    agent: String,
    /// Indexed by `[Severity][Kind]`.
    events: [[Counter; Kind::COUNT]; Severity::COUNT],
    active: Arc<Mutex<ActiveAlerts>>,
    /// `None` without a webhook.
    queue: Option<mpsc::Sender<Alert>>,
    /// The webhook's sender: told to flush at shutdown, and awaited.
    notifier: Mutex<Option<NotifierHandle>>,
    notifications: NotificationCounters,
    queue_full_log: LogLimiter,
}

#[derive(Debug, Clone)]
struct NotificationCounters {
    sent: Counter,
    failed: Counter,
    queue_full: Counter,
}

impl Incidents {
    /// Registers the metrics of `agent` and, with a webhook, starts the task that posts to it
    /// (on the current tokio runtime; without one, or if the HTTP client cannot be built, the
    /// error is logged and every notification counts as `failed`).
    pub fn new(telemetry: &Telemetry, agent: &str, webhook: Option<WebhookConfig>) -> Incidents {
        let events = Severity::ALL.map(|severity| {
            Kind::ALL.map(|kind| {
                telemetry.counter(
                    INCIDENTS_TOTAL,
                    vec![
                        label("agent", agent),
                        Label::from_static_parts("severity", severity.as_str()),
                        Label::from_static_parts("kind", kind.as_str()),
                    ],
                )
            })
        });
        let result = |result: &'static str| {
            telemetry.counter(
                INCIDENT_NOTIFICATIONS_TOTAL,
                vec![
                    label("agent", agent),
                    Label::from_static_parts("result", result),
                ],
            )
        };
        let notifications = NotificationCounters {
            sent: result("sent"),
            failed: result("failed"),
            queue_full: result("queue_full"),
        };
        let active = Arc::new(Mutex::new(ActiveAlerts::default()));
        let mut notifier = None;
        let queue = webhook.map(|config| {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let restarts = telemetry.counter(
                BACKGROUND_RESTARTS_TOTAL,
                vec![
                    label("agent", agent),
                    Label::from_static_parts("task", "incident_webhook"),
                ],
            );
            notifier = start_notifier(
                Notifier {
                    agent: agent.to_owned(),
                    active: active.clone(),
                    counters: notifications.clone(),
                    config,
                },
                rx,
                restarts,
            );
            tx
        });
        Incidents {
            inner: Arc::new(Inner {
                agent: agent.to_owned(),
                events,
                active,
                queue,
                notifier: Mutex::new(notifier),
                notifications,
                queue_full_log: LogLimiter::new(),
            }),
        }
    }

    /// Sends the alerts still queued, then stops the webhook's sender; gives up after `within`
    /// (what is left then is lost, and counted `failed`). For shutdown: incidents raised after
    /// it count as `failed`.
    pub async fn flush(&self, within: Duration) {
        let handle = self
            .inner
            .notifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.flush.send(true);
            if tokio::time::timeout(within, h.done).await.is_err() {
                tracing::warn!(within = ?within, "incident alerts still queued at shutdown were not all sent");
            }
        }
    }

    /// Logs and counts `incident`, and queues its alert for the webhook. Never blocks, never
    /// waits: a full queue drops the alert (counted).
    pub fn raise(&self, incident: Incident) {
        let inner = &*self.inner;
        let Incident {
            severity,
            kind,
            firing,
            subject,
            mut summary,
        } = incident;
        crate::truncate_at_char(&mut summary, MAX_SUMMARY_BYTES);
        let now = SystemTime::now();
        let (severity, queued) = {
            // Held while queueing, so alerts about one subject queue in the order of the map's
            // updates (a resolve never overtakes its firing). Nothing here waits.
            let mut active = lock(&inner.active);
            let (severity, starts_at) =
                active.record(kind, &subject, severity, &summary, firing, now);
            let queued = inner.queue.as_ref().map(|queue| {
                queue.try_send(Alert {
                    severity,
                    kind,
                    subject: subject.clone(),
                    summary: summary.clone(),
                    starts_at,
                    ends_at: (!firing).then(|| now.max(starts_at)),
                })
            });
            (severity, queued)
        };
        inner.events[severity as usize][kind as usize].increment(1);
        let (sev, kind) = (severity.as_str(), kind.as_str());
        if firing {
            tracing::warn!(agent = %inner.agent, severity = sev, kind, subject = %subject, summary = %summary, "incident firing");
        } else {
            tracing::info!(agent = %inner.agent, severity = sev, kind, subject = %subject, summary = %summary, "incident resolved");
        }
        match queued {
            None | Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_))) => {
                inner.notifications.queue_full.increment(1);
                if let Some(suppressed) = inner.queue_full_log.allow() {
                    tracing::warn!(
                        capacity = QUEUE_CAPACITY,
                        suppressed,
                        "incident notification dropped: the webhook queue is full"
                    );
                }
            }
            Some(Err(TrySendError::Closed(_))) => {
                // The notifier never started (logged then) or is gone with its runtime.
                inner.notifications.failed.increment(1);
            }
        }
    }
}

fn lock(active: &Mutex<ActiveAlerts>) -> MutexGuard<'_, ActiveAlerts> {
    // A panic elsewhere cannot leave the map half-updated in a way that matters here.
    active
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The alerts that are firing, by (kind, subject).
#[derive(Debug, Default)]
struct ActiveAlerts {
    map: HashMap<(Kind, String), Active>,
}

#[derive(Debug)]
struct Active {
    severity: Severity,
    summary: String,
    starts_at: SystemTime,
}

impl ActiveAlerts {
    /// Records an event at `now`; gives the severity and start its alert carries. A firing
    /// keeps the start of an alert already firing (a breaker re-opening after a failed probe is
    /// the same outage); a resolve ends it with the severity and start it fired with.
    fn record(
        &mut self,
        kind: Kind,
        subject: &str,
        severity: Severity,
        summary: &str,
        firing: bool,
        now: SystemTime,
    ) -> (Severity, SystemTime) {
        let key = (kind, subject.to_owned());
        if !firing {
            return match self.map.remove(&key) {
                Some(a) => (a.severity, a.starts_at),
                None => (severity, now),
            };
        }
        if let Some(a) = self.map.get_mut(&key) {
            a.severity = severity;
            summary.clone_into(&mut a.summary);
            return (severity, a.starts_at);
        }
        if self.map.len() >= MAX_ACTIVE {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, a)| a.starts_at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(
            key,
            Active {
                severity,
                summary: summary.to_owned(),
                starts_at: now,
            },
        );
        (severity, now)
    }

    /// The firing alerts, for a re-send.
    fn alerts(&self) -> Vec<Alert> {
        self.map
            .iter()
            .map(|((kind, subject), a)| Alert {
                severity: a.severity,
                kind: *kind,
                subject: subject.clone(),
                summary: a.summary.clone(),
                starts_at: a.starts_at,
                ends_at: None,
            })
            .collect()
    }
}

/// One queued alert.
#[derive(Debug, Clone)]
struct Alert {
    severity: Severity,
    kind: Kind,
    subject: String,
    summary: String,
    starts_at: SystemTime,
    ends_at: Option<SystemTime>,
}

mod webhook;
pub use webhook::rfc3339;
use webhook::{start_notifier, Notifier, NotifierHandle};

#[cfg(test)]
mod tests;
