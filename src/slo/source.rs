//! An SLO's cumulative events, summed from the Prometheus exposition text of the sidecar's own
//! metrics as the rules' queries sum them (scoped to the agent).

use super::engine::Tally;
use crate::config::{SliKind, SloConfig};

/// How an SLI's first counter counts (safety counts violations; the others good events).
pub fn tally(sli: SliKind) -> Tally {
    match sli {
        SliKind::Safety => Tally::Bad,
        _ => Tally::Good,
    }
}

/// One sample line: its name, its labels' text (between the braces) and its value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((series, "", value)),
    }
}

/// Whether a sample's labels text has `key="value"`. Values are read as quoted strings (a
/// comma or `="` inside one is part of it) and unescaped (`\\`, `\"`, `\n`) before they are
/// compared.
fn has(labels: &str, key: &str, value: &str) -> bool {
    let mut rest = labels;
    while let Some((k, after)) = rest.split_once("=\"") {
        let k = k.trim_start_matches(',').trim();
        let mut unescaped = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => unescaped.push('\n'),
                    Some((_, other)) => unescaped.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => unescaped.push(c),
            }
        }
        if k == key && unescaped == value {
            return true;
        }
        rest = &after[end..];
    }
    false
}

/// `(first, total)` events of `slo` so far, from `metrics` (exposition text): the first counter
/// counts good events, or bad ones for safety ([`tally`]), each summed as it is.
pub fn counts(metrics: &str, agent: &str, slo: &SloConfig) -> (u64, u64) {
    let le = slo.threshold.map(|t| format!("{}", t.0.as_secs_f64()));
    let histogram = match slo.sli {
        SliKind::Latency => "agent_response_seconds",
        _ => "gen_ai_client_operation_time_to_first_chunk_seconds",
    };
    let (mut good, mut total, mut bad) = (0.0, 0.0, 0.0);
    for (name, labels, value) in metrics.lines().filter_map(sample) {
        if !has(labels, "agent", agent) {
            continue;
        }
        match slo.sli {
            SliKind::Availability if name == "agent_requests_total" => {
                if slo.exclude_dependency_failures && has(labels, "cause", "upstream") {
                    continue;
                }
                total += value;
                if !has(labels, "status", "5xx") {
                    good += value;
                }
            }
            SliKind::TaskCompletion if name == "agent_tasks_completed" => good += value,
            SliKind::TaskCompletion if name == "agent_tasks_started" => total += value,
            SliKind::Latency | SliKind::TimeToFirstToken => {
                let Some(le) = le.as_deref() else { continue };
                if name.strip_prefix(histogram) == Some("_bucket") && has(labels, "le", le) {
                    good += value;
                } else if name.strip_prefix(histogram) == Some("_count") {
                    total += value;
                }
            }
            SliKind::Safety if name == "agent_safety_violations_total" => bad += value,
            SliKind::Safety if name == "agent_responses_total" => total += value,
            _ => {}
        }
    }
    let first = match tally(slo.sli) {
        Tally::Good => good,
        Tally::Bad => bad,
    };
    (first as u64, total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn slo(sli: SliKind, threshold: Option<f64>, exclude: bool) -> SloConfig {
        SloConfig {
            name: "s".into(),
            sli,
            target: 0.99,
            window: ConfigDuration(std::time::Duration::from_secs(30 * 86_400)),
            threshold: threshold.map(|t| ConfigDuration(std::time::Duration::from_secs_f64(t))),
            exclude_dependency_failures: exclude,
            severity: None,
        }
    }

    const TEXT: &str = r#"# TYPE agent_requests_total counter
agent_requests_total{agent="a",listener="in",upstream="x",status="2xx",cause="none"} 90
agent_requests_total{agent="a",listener="in",upstream="x",status="5xx",cause="agent"} 6
agent_requests_total{agent="a",listener="in",upstream="x",status="5xx",cause="upstream"} 4
agent_requests_total{agent="b",listener="in",upstream="x",status="5xx",cause="agent"} 1000
agent_tasks_started{agent="a"} 10
agent_tasks_completed{agent="a"} 7
agent_response_seconds_bucket{agent="a",listener="in",upstream="x",le="1"} 50
agent_response_seconds_bucket{agent="a",listener="in",upstream="x",le="2"} 80
agent_response_seconds_bucket{agent="a",listener="in",upstream="x",le="+Inf"} 100
agent_response_seconds_count{agent="a",listener="in",upstream="x"} 100
agent_response_seconds_sum{agent="a",listener="in",upstream="x"} 123.5
gen_ai_client_operation_time_to_first_chunk_seconds_bucket{agent="a",upstream="o",le="0.5"} 3
gen_ai_client_operation_time_to_first_chunk_seconds_count{agent="a",upstream="o"} 4
agent_responses_total{agent="a",listener="in"} 200
agent_safety_violations_total{agent="a",listener="in",detector="secrets",action="record"} 2
"#;

    #[test]
    fn each_sli_sums_its_series_for_the_agent() {
        let c = |s: SloConfig| counts(TEXT, "a", &s);
        assert_eq!(c(slo(SliKind::Availability, None, false)), (90, 100));
        assert_eq!(c(slo(SliKind::Availability, None, true)), (90, 96));
        assert_eq!(c(slo(SliKind::TaskCompletion, None, false)), (7, 10));
        assert_eq!(c(slo(SliKind::Latency, Some(2.0), false)), (80, 100));
        assert_eq!(c(slo(SliKind::TimeToFirstToken, Some(0.5), false)), (3, 4));
        assert_eq!(
            c(slo(SliKind::Safety, None, false)),
            (2, 200),
            "violations, of all"
        );
        // Another agent's series are not ours.
        assert_eq!(
            counts(TEXT, "b", &slo(SliKind::Availability, None, false)),
            (0, 1000)
        );
        assert_eq!(
            counts(TEXT, "nobody", &slo(SliKind::Safety, None, false)),
            (0, 0)
        );
    }

    #[test]
    fn label_values_are_read_as_quoted_strings() {
        let line = r#"agent_tasks_started{agent="a, b=\"c\"",x="\\n"} 4"#;
        let (name, labels, value) = sample(line).unwrap();
        assert_eq!((name, value), ("agent_tasks_started", 4.0));
        assert!(has(labels, "agent", "a, b=\"c\""));
        assert!(has(labels, "x", "\\n"));
        assert!(!has(labels, "agent", "a"));
        assert!(!has(labels, "b", "\\\"c\\\""));
        let slo = slo(SliKind::TaskCompletion, None, false);
        let text = format!("{line}\nagent_tasks_started{{agent=\"a\"}} 9\n");
        assert_eq!(counts(&text, "a, b=\"c\"", &slo), (0, 4));
    }
}
