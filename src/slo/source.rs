//! An SLO's cumulative events, summed from the sidecar's own counters as the rules' queries sum
//! them (scoped to the agent): the typed totals telemetry keeps of the series an SLO can be
//! computed from ([`Tallies`]), never the exposition text.

use super::engine::Tally;
use crate::config::{SliKind, SloConfig};
use crate::metric_table::{
    AGENT_REQUESTS_TOTAL, AGENT_RESPONSES_TOTAL, AGENT_RESPONSE_SECONDS, AGENT_TASKS_COMPLETED,
    AGENT_TASKS_STARTED, AGENT_TOOL_CALLS_TOTAL, CORRECTNESS_VERDICTS_TOTAL,
    GEN_AI_TIME_TO_FIRST_CHUNK, MCP_OPERATION_DURATION, SAFETY_VIOLATIONS_TOTAL,
    UPSTREAM_REQUESTS_TOTAL,
};
use crate::telemetry::{has_label, Tallies};

/// `(good, total)` attempts at `upstream` of `agent` so far: its dependency SLO's events.
pub fn dependency_counts(tallies: &Tallies, agent: &str, upstream: &str) -> (u64, u64) {
    let ours =
        |k: &metrics::Key| has_label(k, "agent", agent) && has_label(k, "upstream", upstream);
    let total = tallies.sum(UPSTREAM_REQUESTS_TOTAL, ours);
    let ok = tallies.sum(UPSTREAM_REQUESTS_TOTAL, |k| {
        ours(k) && has_label(k, "outcome", "ok")
    });
    (ok, total)
}

/// How an SLI's first counter counts (safety counts violations; the others good events).
pub fn tally(sli: SliKind) -> Tally {
    match sli {
        SliKind::Safety => Tally::Bad,
        _ => Tally::Good,
    }
}

/// `(first, total)` events of `slo` so far, from the tallied series of `agent` on the listeners
/// of `scope` (`None`: every listener; see [`SloConfig::scope`]): the first counter counts good
/// events, or bad ones for safety ([`tally`]).
pub fn counts(
    tallies: &Tallies,
    agent: &str,
    slo: &SloConfig,
    scope: Option<&[String]>,
) -> (u64, u64) {
    let ours = |k: &metrics::Key| has_label(k, "agent", agent);
    let scoped = |k: &metrics::Key| {
        ours(k) && scope.is_none_or(|names| names.iter().any(|l| has_label(k, "listener", l)))
    };
    match slo.sli {
        SliKind::Availability => {
            let dependency = |k: &metrics::Key| {
                has_label(k, "cause", "upstream") || has_label(k, "cause", "dependency")
            };
            let counted =
                |k: &metrics::Key| scoped(k) && !(slo.exclude_dependency_failures && dependency(k));
            let total = tallies.sum(AGENT_REQUESTS_TOTAL, counted);
            let failed = tallies.sum(AGENT_REQUESTS_TOTAL, |k| {
                counted(k) && has_label(k, "status", "5xx")
            });
            (total - failed.min(total), total)
        }
        SliKind::TaskCompletion => (
            tallies.sum(AGENT_TASKS_COMPLETED, ours),
            tallies.sum(AGENT_TASKS_STARTED, ours),
        ),
        SliKind::Latency | SliKind::TimeToFirstToken => {
            let histogram = match slo.sli {
                SliKind::Latency => AGENT_RESPONSE_SECONDS,
                _ => GEN_AI_TIME_TO_FIRST_CHUNK,
            };
            match (slo.threshold, slo.sli) {
                (Some(t), SliKind::Latency) => tallies.below(histogram, t.0.as_secs_f64(), scoped),
                (Some(t), _) => tallies.below(histogram, t.0.as_secs_f64(), ours),
                (None, _) => (0, 0),
            }
        }
        SliKind::Safety => (
            tallies.sum(SAFETY_VIOLATIONS_TOTAL, scoped),
            tallies.sum(AGENT_RESPONSES_TOTAL, scoped),
        ),
        SliKind::Correctness => {
            let counted = |k: &metrics::Key| {
                scoped(k)
                    && slo.sources.as_ref().is_none_or(|sources| {
                        sources.iter().any(|s| has_label(k, "source", s.as_str()))
                    })
            };
            let correct = |k: &metrics::Key| counted(k) && has_label(k, "verdict", "correct");
            (
                tallies.sum(CORRECTNESS_VERDICTS_TOTAL, correct),
                tallies.sum(CORRECTNESS_VERDICTS_TOTAL, counted),
            )
        }
        SliKind::ToolSuccess | SliKind::ToolLatency => tool_counts(tallies, agent, slo),
    }
}

/// `(good, total)` tool calls of `agent` (of `slo.tool` only, if set).
fn tool_counts(tallies: &Tallies, agent: &str, slo: &SloConfig) -> (u64, u64) {
    let ours = |k: &metrics::Key| {
        has_label(k, "agent", agent)
            && slo
                .tool
                .as_ref()
                .is_none_or(|t| has_label(k, "gen_ai_tool_name", t))
    };
    match (slo.sli, slo.threshold) {
        (SliKind::ToolLatency, Some(t)) => {
            tallies.below(MCP_OPERATION_DURATION, t.0.as_secs_f64(), |k| {
                ours(k)
                    && has_label(k, "mcp_method_name", "tools/call")
                    && !has_label(k, "error_type", "cancelled")
            })
        }
        (SliKind::ToolLatency, None) => (0, 0),
        _ => (
            tallies.sum(AGENT_TOOL_CALLS_TOTAL, |k| {
                ours(k) && has_label(k, "outcome", "ok")
            }),
            tallies.sum(AGENT_TOOL_CALLS_TOTAL, ours),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use crate::telemetry::{label, Telemetry};

    fn slo(sli: SliKind, threshold: Option<f64>, exclude: bool) -> SloConfig {
        SloConfig {
            name: "s".into(),
            sli,
            target: 0.99,
            window: ConfigDuration(std::time::Duration::from_secs(30 * 86_400)),
            threshold: threshold.map(|t| ConfigDuration(std::time::Duration::from_secs_f64(t))),
            exclude_dependency_failures: exclude,
            listeners: None,
            sources: None,
            tool: None,
            severity: None,
        }
    }

    fn requests_on(t: &Telemetry, agent: &str, listener: &str, status: &str, cause: &str, n: u64) {
        let labels = vec![
            label("agent", agent),
            label("listener", listener),
            label("status", status),
            label("cause", cause),
        ];
        t.counter(AGENT_REQUESTS_TOTAL, labels).increment(n);
    }

    /// The series of agent `a` (and one of `b`), recorded through the registry's handles.
    fn recorded() -> Telemetry {
        let t = Telemetry::new();
        let requests = |agent, status, cause, n| requests_on(&t, agent, "in", status, cause, n);
        requests("a", "2xx", "none", 90);
        requests("a", "5xx", "agent", 6);
        requests("a", "5xx", "upstream", 4);
        requests("b", "5xx", "agent", 1000);
        let a = || vec![label("agent", "a")];
        t.counter(AGENT_TASKS_STARTED, a()).increment(10);
        t.counter(AGENT_TASKS_COMPLETED, a()).increment(7);
        let latency = t.histogram(AGENT_RESPONSE_SECONDS, a());
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            latency.record(v);
        }
        let ttft = t.histogram(GEN_AI_TIME_TO_FIRST_CHUNK, a());
        for v in [0.1, 0.5, 0.6, 9.0] {
            ttft.record(v);
        }
        t.counter(AGENT_RESPONSES_TOTAL, a()).increment(200);
        let mut v = a();
        v.push(label("detector", "secrets"));
        t.counter(SAFETY_VIOLATIONS_TOTAL, v).increment(2);
        t
    }

    #[test]
    fn each_sli_sums_its_series_for_the_agent() {
        let t = recorded();
        let c = |s: SloConfig| counts(t.tallies(), "a", &s, None);
        assert_eq!(c(slo(SliKind::Availability, None, false)), (90, 100));
        assert_eq!(c(slo(SliKind::Availability, None, true)), (90, 96));
        assert_eq!(c(slo(SliKind::TaskCompletion, None, false)), (7, 10));
        assert_eq!(c(slo(SliKind::Latency, Some(2.0), false)), (4, 5));
        assert_eq!(c(slo(SliKind::TimeToFirstToken, Some(0.5), false)), (2, 4));
        assert_eq!(
            c(slo(SliKind::Safety, None, false)),
            (2, 200),
            "violations, of all"
        );
        // Another agent's series are not ours.
        let b = slo(SliKind::Availability, None, false);
        assert_eq!(counts(t.tallies(), "b", &b, None), (0, 1000));
        let nobody = slo(SliKind::Safety, None, false);
        assert_eq!(counts(t.tallies(), "nobody", &nobody, None), (0, 0));
    }

    #[test]
    fn the_tool_slis_count_tool_calls_of_the_agent_and_of_their_tool() {
        let t = recorded();
        let calls = |agent: &str, tool: &str, outcome: &str, n: u64| {
            let labels = vec![
                label("agent", agent),
                label("upstream", "search-mcp"),
                label("gen_ai_tool_name", tool),
                label("outcome", outcome),
            ];
            t.counter(AGENT_TOOL_CALLS_TOTAL, labels).increment(n);
        };
        calls("a", "search", "ok", 8);
        calls("a", "search", "tool_error", 2);
        calls("a", "fetch", "ok", 5);
        calls("a", "fetch", "timeout", 5);
        calls("b", "search", "transport_error", 100);
        let operation_as = |method: &str, tool: &str, error: &str, seconds: &[f64]| {
            let labels = vec![
                label("agent", "a"),
                label("upstream", "search-mcp"),
                label("mcp_method_name", method),
                label("gen_ai_tool_name", tool),
                label("error_type", error),
            ];
            let h = t.histogram(MCP_OPERATION_DURATION, labels);
            seconds.iter().for_each(|s| h.record(*s));
        };
        let operation =
            |method: &str, tool: &str, seconds: &[f64]| operation_as(method, tool, "", seconds);
        operation("tools/call", "search", &[0.05, 0.5, 1.5, 9.0]);
        // A call whose client left is no latency event, fast or slow.
        operation_as("tools/call", "search", "cancelled", &[0.01, 60.0]);
        operation("tools/call", "fetch", &[0.01, 30.0]);
        // Other methods are not tool calls, however slow.
        operation("tools/list", "", &[100.0, 100.0]);
        let success = |tool: Option<&str>| {
            let mut s = slo(SliKind::ToolSuccess, None, false);
            s.tool = tool.map(str::to_owned);
            counts(t.tallies(), "a", &s, None)
        };
        assert_eq!(success(None), (13, 20));
        assert_eq!(success(Some("search")), (8, 10));
        assert_eq!(success(Some("nothing")), (0, 0));
        let latency = |tool: Option<&str>| {
            let mut s = slo(SliKind::ToolLatency, Some(2.0), false);
            s.tool = tool.map(str::to_owned);
            counts(t.tallies(), "a", &s, None)
        };
        assert_eq!(latency(None), (4, 6));
        assert_eq!(latency(Some("search")), (3, 4));
    }

    #[test]
    fn availability_counts_the_listeners_of_its_scope_and_leaves_out_both_dependency_causes() {
        let t = recorded();
        requests_on(&t, "a", "egress", "5xx", "upstream", 50);
        requests_on(&t, "a", "in", "5xx", "dependency", 10);
        let all = slo(SliKind::Availability, None, false);
        let inbound = ["in".to_owned()];
        assert_eq!(counts(t.tallies(), "a", &all, None), (90, 160));
        assert_eq!(counts(t.tallies(), "a", &all, Some(&inbound)), (90, 110));
        let excluding = slo(SliKind::Availability, None, true);
        assert_eq!(
            counts(t.tallies(), "a", &excluding, Some(&inbound)),
            (90, 96),
            "upstream and dependency failures left out"
        );
        let egress = ["egress".to_owned()];
        assert_eq!(counts(t.tallies(), "a", &all, Some(&egress)), (0, 50));
    }

    #[test]
    fn the_counts_agree_with_the_scrape() {
        // What the engine sums is what Prometheus would sum from the exposition.
        let t = recorded();
        let text = t.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit_once(' '))
                .map(|(_, v)| v.parse::<f64>().unwrap_or(-1.0))
        };
        let le2 = line(r#"agent_response_seconds_bucket{agent="a",le="2"}"#);
        let latency = counts(
            t.tallies(),
            "a",
            &slo(SliKind::Latency, Some(2.0), false),
            None,
        );
        assert_eq!(le2, Some(latency.0 as f64));
        let count = line(r#"agent_response_seconds_count{agent="a"}"#);
        assert_eq!(count, Some(latency.1 as f64));
    }
}
