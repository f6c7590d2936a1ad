//! Alertmanager v2 delivery: the JSON body of `POST /api/v2/alerts`, RFC 3339 times, and the
//! background sender that drains the bounded queue with bounded retries.

use super::*;

/// An element of Alertmanager's `postableAlerts`.
#[derive(Serialize)]
struct PostableAlert<'a> {
    labels: BTreeMap<&'static str, &'a str>,
    annotations: Annotations<'a>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
}

#[derive(Serialize)]
struct Annotations<'a> {
    summary: &'a str,
    response_time: &'static str,
    runbook: String,
}

/// The JSON body posting `alerts` for `agent`.
pub(super) fn alerts_body(agent: &str, alerts: &[Alert]) -> Result<Bytes, serde_json::Error> {
    let postable: Vec<PostableAlert<'_>> = alerts
        .iter()
        .map(|a| {
            let mut labels = BTreeMap::new();
            labels.insert("alertname", a.kind.alertname());
            labels.insert("agent", agent);
            labels.insert("severity", a.severity.as_str());
            labels.insert("kind", a.kind.as_str());
            if let Some(key) = a.kind.subject_label() {
                labels.insert(key, a.subject.as_str());
            }
            PostableAlert {
                labels,
                annotations: Annotations {
                    summary: &a.summary,
                    response_time: a.severity.response_time(),
                    runbook: a.severity.runbook(),
                },
                starts_at: rfc3339(a.starts_at),
                ends_at: a.ends_at.map(rfc3339),
            }
        })
        .collect();
    serde_json::to_vec(&postable).map(Bytes::from)
}

/// `t` as RFC 3339 in UTC: `2000-02-29T00:00:00Z`, with `.mmm` when there are milliseconds.
/// Instants before 1970 (a clock gone badly wrong) are written as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    match since.subsec_millis() {
        0 => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
        ms => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
    }
}

/// (year, month, day) of the `days`th day after 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative day numbers).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Why a post failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("the receiver answered {0}")]
    Status(StatusCode),
    #[error("cannot connect to the receiver")]
    Connect,
    #[error("the connection to the receiver failed")]
    Connection,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("cannot build the request")]
    Request,
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            Failure::Connect | Failure::Connection | Failure::Timeout => true,
            Failure::Request => false,
        }
    }
}

pub(super) type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The background task that posts the queued alerts.
pub(super) struct Notifier {
    pub(super) agent: String,
    pub(super) active: Arc<Mutex<ActiveAlerts>>,
    pub(super) counters: NotificationCounters,
    pub(super) config: WebhookConfig,
}

/// The running sender: told to flush, and awaited.
#[derive(Debug)]
pub(super) struct NotifierHandle {
    pub(super) flush: tokio::sync::watch::Sender<bool>,
    pub(super) done: tokio::task::JoinHandle<()>,
}

/// Starts the sender (supervised: a panic restarts it, with the queue as it was); `None` when it
/// cannot run (then every notification counts as `failed`).
pub(super) fn start_notifier(
    notifier: Notifier,
    rx: mpsc::Receiver<Alert>,
    restarts: Counter,
) -> Option<NotifierHandle> {
    let client = match crate::connect::build_connector(notifier.config.timeout, Vec::new()) {
        Ok(connector) => Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector),
        Err(e) => {
            tracing::error!(error = %e, "incident webhook disabled: cannot build its HTTP client");
            // Dropping `rx` makes every later notification count as failed.
            return None;
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::error!("incident webhook disabled: no async runtime to post from");
        return None;
    }
    let (flush, flushing) = tokio::sync::watch::channel(false);
    let notifier = Arc::new(notifier);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let done = crate::background::supervise("incident_webhook", restarts, move || {
        notifier
            .clone()
            .run(client.clone(), rx.clone(), flushing.clone())
    });
    Some(NotifierHandle { flush, done })
}

impl Notifier {
    async fn run(
        self: Arc<Self>,
        client: WebhookClient,
        rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Alert>>>,
        mut flush: tokio::sync::watch::Receiver<bool>,
    ) {
        // Held for the run: a run that panicked let go of it, and the next takes the queue up.
        let mut rx = rx.lock().await;
        let every = self.config.resend.max(Duration::from_millis(1));
        let mut resend = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        resend.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut flushing = false;
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 {
                    // Every `Incidents` is gone (or flushing) and the queue is empty.
                    return;
                },
                _ = resend.tick(), if !flushing => batch = lock(&self.active).alerts(),
                _ = flush.wait_for(|f| *f), if !flushing => {
                    // Shutdown: take no more, send what is queued, then end.
                    flushing = true;
                    rx.close();
                    continue;
                }
            }
            for alerts in batch.chunks(MAX_BATCH) {
                let n = alerts.len() as u64;
                let posted = match alerts_body(&self.agent, alerts) {
                    Ok(body) => self.post(&client, body).await,
                    Err(_) => Err(Failure::Request),
                };
                match posted {
                    Ok(()) => self.counters.sent.increment(n),
                    Err(why) => {
                        self.counters.failed.increment(n);
                        tracing::warn!(alerts = n, reason = %why, "incident notification dropped");
                    }
                }
            }
            batch.clear();
        }
    }

    /// Posts `body` with the retry policy.
    async fn post(&self, client: &WebhookClient, body: Bytes) -> Result<(), Failure> {
        let attempts = self.config.attempts.max(1);
        let mut backoff = self.config.backoff;
        let mut attempt = 1;
        loop {
            let failure =
                match tokio::time::timeout(self.config.timeout, self.attempt(client, body.clone()))
                    .await
                {
                    Ok(Ok(status)) if status.is_success() => return Ok(()),
                    Ok(Ok(status)) => Failure::Status(status),
                    Ok(Err(failure)) => failure,
                    Err(_) => Failure::Timeout,
                };
            if attempt >= attempts || !failure.retryable() {
                return Err(failure);
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn attempt(&self, client: &WebhookClient, body: Bytes) -> Result<StatusCode, Failure> {
        let request = Request::post(self.config.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("sloguard/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|_| Failure::Request)?;
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                Failure::Connect
            } else {
                Failure::Connection
            }
        })?;
        let status = response.status();
        // Read the (small) answer so the connection goes back to the pool; a huge one is cut off.
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        Ok(status)
    }
}
