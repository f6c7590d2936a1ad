use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use http::{Method, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// One request the receiver saw.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Bytes,
}

/// An Alertmanager stand-in on loopback answering every request with `status`.
async fn receiver(status: StatusCode) -> (SocketAddr, UnboundedReceiver<Seen>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let tx = tx.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let _ = tx.send(Seen {
                        method: parts.method,
                        path: parts.uri.path().to_owned(),
                        content_type: parts
                            .headers
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        body,
                    });
                    let mut answer = Response::new(Full::new(Bytes::from_static(b"{}")));
                    *answer.status_mut() = status;
                    Ok::<_, Infallible>(answer)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    (addr, rx)
}

/// A receiver that accepts connections and never answers.
async fn silent_receiver() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test opens one or two connections.
        while held.len() < 64 {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            held.push(stream);
        }
    });
    addr
}

/// A loopback port nothing listens on.
async fn refused_port() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.local_addr().unwrap()
}

fn webhook(addr: SocketAddr, attempts: u32) -> WebhookConfig {
    WebhookConfig {
        attempts,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(1),
        ..WebhookConfig::new(format!("http://{addr}/api/v2/alerts").parse().unwrap())
    }
}

/// The value of the series `name{labels}` in the Prometheus text (all its labels given).
fn metric(t: &Telemetry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    t.render().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series
            .strip_prefix(name)?
            .strip_prefix('{')?
            .strip_suffix('}')?;
        let pairs: Vec<&str> = rest.split(',').collect();
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        (pairs.len() == wanted.len() && wanted.iter().all(|w| pairs.contains(&w.as_str())))
            .then(|| value.parse().ok())?
    })
}

fn notifications(t: &Telemetry, result: &str) -> Option<f64> {
    metric(
        t,
        INCIDENT_NOTIFICATIONS_TOTAL,
        &[("agent", "bot"), ("result", result)],
    )
}

/// Waits (bounded) until `notifications{result}` reaches `want`.
async fn settle(t: &Telemetry, result: &str, want: f64) {
    let reached = timeout(WAIT, async {
        while notifications(t, result) != Some(want) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{result} never reached {want}:\n{}",
        t.render()
    );
}

async fn next(rx: &mut UnboundedReceiver<Seen>) -> Seen {
    timeout(WAIT, rx.recv()).await.unwrap().unwrap()
}

fn alerts(seen: &Seen) -> Vec<Value> {
    match serde_json::from_slice(&seen.body).unwrap() {
        Value::Array(alerts) => alerts,
        other => panic!("not a JSON array: {other}"),
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`; `None` if not that shape.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "000"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if date.len() != 10 || hms.len() != 8 || frac.len() != 3 {
        return None;
    }
    let ms: i64 = frac.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some((days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + ms)
}

/// The inverse of `civil_from_days`, written independently (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn at(secs: u64, millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
}

#[test]
fn rfc3339_formats_known_instants() {
    assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(at(951_868_800, 0)), "2000-03-01T00:00:00Z");
    assert_eq!(rfc3339(at(1_700_000_000, 123)), "2023-11-14T22:13:20.123Z");
    assert_eq!(rfc3339(at(1_709_251_199, 7)), "2024-02-29T23:59:59.007Z");
    assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    // Sub-millisecond parts are cut, not rounded up into the next second.
    assert_eq!(
        rfc3339(at(59, 999) + Duration::from_micros(999)),
        "1970-01-01T00:00:59.999Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
        "1970-01-01T00:00:00Z"
    );
}

proptest! {
    #[test]
    fn rfc3339_round_trips(secs in 0u64..16_000_000_000, millis in 0u64..1000) {
        let text = rfc3339(at(secs, millis));
        prop_assert_eq!(parse_rfc3339(&text), Some((secs * 1000 + millis) as i64), "{}", text);
    }
}

#[test]
fn severities_follow_the_article_table() {
    for s in Severity::ALL {
        assert_eq!(Severity::from_name(s.as_str()), Some(s));
        assert_eq!(s.actions().len(), 3);
    }
    assert_eq!(Severity::from_name("SEV1"), None);
    assert_eq!(Severity::Sev1.response_time(), "5 minutes");
    assert_eq!(Severity::Sev2.response_time(), "15 minutes");
    assert_eq!(Severity::Sev3.response_time(), "1 hour");
    assert!(Severity::Sev1
        .runbook()
        .starts_with("Immediately disable affected agent; Route traffic"));
    let parsed: Severity = serde_yaml_ng::from_str("sev2").unwrap();
    assert_eq!(parsed, Severity::Sev2);
    assert_eq!(Kind::KillSwitch.as_str(), "kill_switch");
    assert_eq!(Kind::CircuitBreaker.alertname(), "SloguardCircuitOpen");
}

#[test]
fn webhook_urls_are_checked() {
    let ok = WebhookConfig::parse("https://am.example:9093/api/v2/alerts").unwrap();
    assert_eq!(ok.url.path(), "/api/v2/alerts");
    assert_eq!(ok.attempts, 3);
    assert_eq!(ok.backoff, Duration::from_millis(200));
    assert_eq!(ok.timeout, Duration::from_secs(2));
    for bad in ["/api/v2/alerts", "ftp://am/api", "not a url", "http:///x"] {
        assert!(WebhookConfig::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn active_alerts_keep_their_first_start_and_stay_bounded() {
    let mut active = ActiveAlerts::default();
    let (t0, t1, t2) = (at(100, 0), at(200, 0), at(300, 0));
    let fire = |a: &mut ActiveAlerts, sev, now| {
        a.record(Kind::CircuitBreaker, "openai", sev, "open", true, now)
    };
    assert_eq!(fire(&mut active, Severity::Sev2, t0), (Severity::Sev2, t0));
    // Re-opening after a failed probe is the same outage.
    assert_eq!(fire(&mut active, Severity::Sev2, t1), (Severity::Sev2, t0));
    // The resolve carries what the alert fired with, whatever the caller says now.
    let resolved = active.record(
        Kind::CircuitBreaker,
        "openai",
        Severity::Sev3,
        "closed",
        false,
        t2,
    );
    assert_eq!(resolved, (Severity::Sev2, t0));
    // A resolve of something never seen firing starts and ends now.
    let unknown = active.record(Kind::KillSwitch, "bot", Severity::Sev1, "off", false, t2);
    assert_eq!(unknown, (Severity::Sev1, t2));
    assert!(active.map.is_empty());

    for i in 0..MAX_ACTIVE as u64 + 10 {
        let name = format!("up{i}");
        active.record(
            Kind::CircuitBreaker,
            &name,
            Severity::Sev2,
            "open",
            true,
            at(i, 0),
        );
    }
    assert_eq!(active.map.len(), MAX_ACTIVE);
    // The oldest were forgotten, the newest kept.
    assert!(!active
        .map
        .contains_key(&(Kind::CircuitBreaker, "up0".to_owned())));
    let newest = format!("up{}", MAX_ACTIVE + 9);
    assert!(active.map.contains_key(&(Kind::CircuitBreaker, newest)));
}

#[test]
fn summaries_are_cut_at_a_character_boundary() {
    let mut s = "é".repeat(MAX_SUMMARY_BYTES); // two bytes each
    crate::truncate_at_char(&mut s, MAX_SUMMARY_BYTES - 1);
    assert_eq!(s.len(), MAX_SUMMARY_BYTES - 2);
    let mut short = "short".to_owned();
    crate::truncate_at_char(&mut short, MAX_SUMMARY_BYTES);
    assert_eq!(short, "short");
}

/// Without a webhook no runtime is needed: events are logged and counted only.
#[test]
fn without_a_webhook_events_are_counted() {
    let t = Telemetry::new();
    let incidents = Incidents::new(&t, "bot", None);
    incidents.raise(Incident::kill_switch("bot", true, "kill switch on"));
    incidents.raise(Incident::kill_switch("bot", false, "kill switch off"));
    incidents.raise(Incident::circuit_breaker(
        Severity::Sev2,
        "openai",
        true,
        "open",
    ));
    let events = |sev: &str, kind: &str| {
        metric(
            &t,
            INCIDENTS_TOTAL,
            &[("agent", "bot"), ("severity", sev), ("kind", kind)],
        )
    };
    assert_eq!(events("sev1", "kill_switch"), Some(2.0));
    assert_eq!(events("sev2", "circuit_breaker"), Some(1.0));
    // Every combination is registered up front.
    assert_eq!(events("sev3", "kill_switch"), Some(0.0));
    assert_eq!(events("sev3", "circuit_breaker"), Some(0.0));
    assert_eq!(notifications(&t, "sent"), Some(0.0));
}

#[tokio::test]
async fn kill_switch_firing_and_resolve_reach_alertmanager() {
    let (addr, mut rx) = receiver(StatusCode::OK).await;
    let t = Telemetry::new();
    let incidents = Incidents::new(&t, "bot", Some(webhook(addr, 3)));

    incidents.raise(Incident::kill_switch(
        "bot",
        true,
        "3 safety violations within 10m",
    ));
    let firing = next(&mut rx).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    incidents.raise(Incident::kill_switch(
        "bot",
        false,
        "enabled by an operator",
    ));
    let resolved = next(&mut rx).await;

    let mut starts = Vec::new();
    for (seen, summary) in [
        (&firing, "3 safety violations within 10m"),
        (&resolved, "enabled by an operator"),
    ] {
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/api/v2/alerts");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        let alerts = alerts(seen);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let alert = &alerts[0];
        let labels: serde_json::Map<String, Value> =
            serde_json::from_value(alert["labels"].clone()).unwrap();
        let want = serde_json::json!({
            "alertname": "SloguardKillSwitch",
            "agent": "bot",
            "severity": "sev1",
            "kind": "kill_switch",
        });
        assert_eq!(Value::Object(labels), want);
        assert_eq!(alert["annotations"]["summary"], summary);
        assert_eq!(alert["annotations"]["response_time"], "5 minutes");
        let runbook = alert["annotations"]["runbook"].as_str().unwrap();
        assert!(
            runbook.contains("Immediately disable affected agent"),
            "{runbook}"
        );
        let start = alert["startsAt"].as_str().unwrap().to_owned();
        assert!(parse_rfc3339(&start).is_some(), "{start}");
        starts.push(start);
    }
    assert_eq!(starts[0], starts[1], "a resolve keeps its firing's start");
    assert!(alerts(&firing)[0].get("endsAt").is_none());
    let ends = alerts(&resolved)[0]["endsAt"].as_str().unwrap().to_owned();
    let (start, end) = (
        parse_rfc3339(&starts[0]).unwrap(),
        parse_rfc3339(&ends).unwrap(),
    );
    assert!(end >= start + 20, "{} .. {}", starts[0], ends);

    settle(&t, "sent", 2.0).await;
    let kill_switch = [
        ("agent", "bot"),
        ("severity", "sev1"),
        ("kind", "kill_switch"),
    ];
    assert_eq!(metric(&t, INCIDENTS_TOTAL, &kill_switch), Some(2.0));
    assert_eq!(notifications(&t, "failed"), Some(0.0));
    assert_eq!(notifications(&t, "queue_full"), Some(0.0));
    assert!(rx.try_recv().is_err(), "nothing more was posted");
}

#[tokio::test]
async fn firing_alerts_are_resent_until_resolved() {
    let (addr, mut rx) = receiver(StatusCode::OK).await;
    let t = Telemetry::new();
    let config = WebhookConfig {
        resend: Duration::from_millis(50),
        ..webhook(addr, 3)
    };
    let incidents = Incidents::new(&t, "bot", Some(config));

    incidents.raise(Incident::circuit_breaker(
        Severity::Sev2,
        "openai",
        true,
        "circuit open",
    ));
    let first = alerts(&next(&mut rx).await).remove(0);
    assert_eq!(first["labels"]["upstream"], "openai");
    assert_eq!(first["labels"]["alertname"], "SloguardCircuitOpen");
    assert_eq!(first["labels"]["severity"], "sev2");
    assert_eq!(first["annotations"]["response_time"], "15 minutes");
    let again = alerts(&next(&mut rx).await).remove(0);
    assert_eq!(again, first, "a re-send repeats the alert as it fired");

    incidents.raise(Incident::circuit_breaker(
        Severity::Sev2,
        "openai",
        false,
        "circuit closed",
    ));
    // Re-sends already under way may still arrive before the resolve; none after it.
    let resolve = timeout(WAIT, async {
        loop {
            let alert = alerts(&next(&mut rx).await).remove(0);
            if alert.get("endsAt").is_some() {
                return alert;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(resolve["labels"], first["labels"]);
    assert_eq!(resolve["startsAt"], first["startsAt"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "a resolved alert is not re-sent");
}

#[tokio::test]
async fn server_errors_and_429_are_retried_then_dropped() {
    for status in [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let (addr, mut rx) = receiver(status).await;
        let t = Telemetry::new();
        let incidents = Incidents::new(&t, "bot", Some(webhook(addr, 3)));
        incidents.raise(Incident::kill_switch("bot", true, "on"));
        settle(&t, "failed", 1.0).await;
        let mut requests = 0;
        while rx.try_recv().is_ok() {
            requests += 1;
        }
        assert_eq!(requests, 3, "{status}");
        assert_eq!(notifications(&t, "sent"), Some(0.0));
    }
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let (addr, mut rx) = receiver(StatusCode::BAD_REQUEST).await;
    let t = Telemetry::new();
    let incidents = Incidents::new(&t, "bot", Some(webhook(addr, 3)));
    incidents.raise(Incident::kill_switch("bot", true, "on"));
    settle(&t, "failed", 1.0).await;
    next(&mut rx).await;
    // Another attempt would have come 10 ms later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "exactly one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_never_holds_raise() {
    let addr = refused_port().await;
    let t = Telemetry::new();
    let incidents = Incidents::new(&t, "bot", Some(webhook(addr, 3)));
    for i in 0..10 {
        let started = Instant::now();
        incidents.raise(Incident::circuit_breaker(
            Severity::Sev2,
            &format!("up{i}"),
            true,
            "open",
        ));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(50), "raise took {took:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    settle(&t, "failed", 10.0).await;
    assert_eq!(notifications(&t, "sent"), Some(0.0));
    assert_eq!(notifications(&t, "queue_full"), Some(0.0));
}

#[tokio::test]
async fn a_full_queue_drops_without_blocking() {
    let addr = silent_receiver().await;
    let t = Telemetry::new();
    let config = WebhookConfig {
        timeout: Duration::from_secs(30),
        ..webhook(addr, 1)
    };
    let incidents = Incidents::new(&t, "bot", Some(config));
    let raises = QUEUE_CAPACITY + 100;
    let mut slowest = Duration::ZERO;
    for i in 0..raises {
        let started = Instant::now();
        incidents.raise(Incident::circuit_breaker(
            Severity::Sev2,
            &format!("up{i}"),
            true,
            "open",
        ));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "slowest raise {slowest:?}"
    );
    // This single-threaded runtime ran no other task during the loop: the queue took exactly
    // its capacity.
    assert_eq!(notifications(&t, "queue_full"), Some(100.0));
    // The notifier takes a batch and waits on the silent receiver; the queue has room again but
    // nothing is sent or failed until the 30 s timeout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..MAX_BATCH * 2 {
        incidents.raise(Incident::circuit_breaker(
            Severity::Sev3,
            &format!("more{i}"),
            true,
            "open",
        ));
    }
    assert_eq!(
        notifications(&t, "queue_full"),
        Some((100 + MAX_BATCH) as f64),
        "room for one batch taken out"
    );
    assert_eq!(notifications(&t, "sent"), Some(0.0));
    assert_eq!(notifications(&t, "failed"), Some(0.0));
}
