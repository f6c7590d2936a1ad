//! The demo's live summary: one line per listener, upstream, circuit, safety and tasks, read
//! from the sidecar's own metrics as typed totals ([`Tallies`], the sidecar started with
//! [`Tallies::every_metric`]): what a person would ask Prometheus, without its text.

use crate::metric_table::{
    AGENT_DISABLED, AGENT_LOOPS_DETECTED, AGENT_REQUESTS_TOTAL, AGENT_RESPONSES_TOTAL,
    AGENT_TASKS_ABANDONED, AGENT_TASKS_COMPLETED, AGENT_TASKS_FAILED, AGENT_TASKS_STARTED,
    AGENT_TOOL_CALLS_TOTAL, BULKHEAD_REJECTIONS_TOTAL, CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL,
    CORRECTNESS_VERDICTS_TOTAL, DEADLINE_EXCEEDED_TOTAL, FALLBACKS_TOTAL, FINISH_REASONS_TOTAL,
    GEN_AI_TIME_TO_FIRST_CHUNK, GEN_AI_TOKEN_USAGE, HALLUCINATED_TOOL_CALLS_TOTAL,
    JUDGE_SAMPLES_TOTAL, MCP_OPERATION_DURATION, MCP_TOOL_CHANGES_TOTAL, SAFETY_VIOLATIONS_TOTAL,
    SLO_BUDGET_REMAINING, SLO_BURN_RATE, UPSTREAM_REQUESTS_TOTAL,
};
use crate::sim::SIM_TOOLS;
use crate::telemetry::{has_label, Tallies};

/// The LLM line of the summary, from the sidecar's own GenAI metrics: time to first token over
/// the last second (from the histogram's buckets, as Prometheus' `histogram_quantile` would),
/// output tokens per second, and totals of finish reasons and hallucinated tool calls.
#[derive(Default)]
pub(super) struct LlmSummary {
    /// Per upstream: the TTFT buckets `(le, cumulative count)` and output-token sum last time.
    last: std::collections::HashMap<String, (Vec<(f64, u64)>, f64)>,
}

/// The safety line: responses inspected and violations per listener, by detector, and the
/// kill switch with what the human queue answered.
pub(super) fn safety_line(t: &Tallies) -> String {
    let mut parts = Vec::new();
    for listener in ["inbound", "egress"] {
        let l = ("listener", listener);
        let inspected = total(t, AGENT_RESPONSES_TOTAL, &[l]);
        let mut by = Vec::new();
        for d in [
            "pii_email",
            "pii_credit_card",
            "pii_us_ssn",
            "secrets",
            "content_filter",
        ] {
            let n = total(t, SAFETY_VIOLATIONS_TOTAL, &[l, ("detector", d)]);
            if n > 0 {
                by.push(format!("{d} {n}"));
            }
        }
        let all = total(t, SAFETY_VIOLATIONS_TOTAL, &[l]);
        parts.push(format!(
            "{listener} {inspected} inspected, {all} violations{}",
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        ));
    }
    let disabled = t.gauge_sum(AGENT_DISABLED, |_| true) > 0.0;
    let queue = total(
        t,
        AGENT_REQUESTS_TOTAL,
        &[("upstream", "kill_switch_fallback")],
    );
    format!(
        "safety   {} | kill switch {} | human queue answered {queue}",
        parts.join(" | "),
        if disabled { "DISABLED (sev1)" } else { "off" }
    )
}

/// Whether `key` has every label of `labels`.
fn labelled(key: &metrics::Key, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(n, v)| has_label(key, n, v))
}

/// The total of the counters called `name` over the series with every label of `labels`.
fn total(t: &Tallies, name: &str, labels: &[(&str, &str)]) -> u64 {
    t.sum(name, |k| labelled(k, labels))
}

/// The `q` quantile of a cumulative histogram, interpolated inside its bucket.
fn quantile(q: f64, cumulative: &[(f64, f64)]) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in cumulative {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let inside = (rank - prev.1) / (count - prev.1).max(1e-9);
            return Some(prev.0 + (le - prev.0) * inside);
        }
        prev = (le, count);
    }
    None
}

impl LlmSummary {
    pub(super) fn line(&mut self, upstream: &str, t: &Tallies) -> String {
        let up = ("upstream", upstream);
        let now = t.cumulative(GEN_AI_TIME_TO_FIRST_CHUNK, |k| labelled(k, &[up]));
        let tokens = t.observed_sum(GEN_AI_TOKEN_USAGE, |k| {
            labelled(k, &[up, ("gen_ai_token_type", "output")])
        });
        let (before, tokens_before) = self.last.remove(upstream).unwrap_or_default();
        let window: Vec<(f64, f64)> = now
            .iter()
            .map(|&(le, c)| {
                let b = before.iter().find(|(l, _)| *l == le).map_or(0, |x| x.1);
                (le, c.saturating_sub(b) as f64)
            })
            .collect();
        let ms = |q| {
            quantile(q, &window).map_or("    -".to_string(), |v| format!("{:>4.0}ms", v * 1000.0))
        };
        let count = |name: &str, label: (&str, &str)| total(t, name, &[up, label]);
        let line = format!(
            "{upstream:<16} TTFT p50 {} p99 {} (from buckets) | output tokens/s {:>5.0} | finish stop {:>4} tool_calls {:>4} error {:>4} | hallucinated tool calls: unknown_tool {:>3} invalid_arguments {:>3}",
            ms(0.5),
            ms(0.99),
            tokens - tokens_before,
            count(FINISH_REASONS_TOTAL, ("reason", "stop")),
            count(FINISH_REASONS_TOTAL, ("reason", "tool_calls")),
            count(FINISH_REASONS_TOTAL, ("reason", "error")),
            count(HALLUCINATED_TOOL_CALLS_TOTAL, ("kind", "unknown_tool")),
            count(HALLUCINATED_TOOL_CALLS_TOTAL, ("kind", "invalid_arguments")),
        );
        self.last.insert(upstream.to_owned(), (now, tokens));
        line
    }
}

/// The fallback line of the summary: the primary's attempts (all and last second), its circuit,
/// and the requests moved on from it, from the sidecar's own metrics.
#[derive(Default)]
pub(super) struct ChainSummary {
    /// Attempts and successful attempts last time.
    last: (u64, u64),
}

impl ChainSummary {
    pub(super) fn line(&mut self, upstream: &str, t: &Tallies) -> String {
        let up = ("upstream", upstream);
        let attempts = total(t, UPSTREAM_REQUESTS_TOTAL, &[up]);
        let ok = total(t, UPSTREAM_REQUESTS_TOTAL, &[up, ("outcome", "ok")]);
        let (attempts_before, ok_before) = std::mem::replace(&mut self.last, (attempts, ok));
        let share = |ok: u64, all: u64| {
            if all > 0 {
                format!("{:>5.1}%", 100.0 * ok as f64 / all as f64)
            } else {
                "    -".to_string()
            }
        };
        let state = match t.gauge_sum(CIRCUIT_STATE, |k| labelled(k, &[up])) as u8 {
            0 => "closed",
            1 => "half_open",
            _ => "open",
        };
        let transitions = |to: &str| total(t, CIRCUIT_TRANSITIONS_TOTAL, &[up, ("to", to)]);
        let moved = |reason: &str| {
            total(
                t,
                FALLBACKS_TOTAL,
                &[("from", upstream), ("reason", reason)],
            )
        };
        format!(
            "circuit {upstream:<8} {state:<9} (opened {:>2}, probes ok {:>2}) | attempts ok {} all, {} last 1s | requests moved on to the fallback: 5xx {:>4} 429 {:>4} circuit_open {:>5}",
            transitions("open"),
            transitions("closed"),
            share(ok, attempts),
            share(ok - ok_before, attempts - attempts_before),
            moved("5xx"),
            moved("429"),
            moved("circuit_open"),
        )
    }
}

/// One listener's line: totals by status class and cause from the sidecar's own `/metrics`,
/// client-observed p50/p99 over the last second.
pub(super) fn summary_line(listener: &str, t: &Tallies, window: &mut Vec<f64>) -> String {
    let l = ("listener", listener);
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .map(|class| total(t, AGENT_REQUESTS_TOTAL, &[l, ("status", class)]));
    let causes = ["none", "upstream", "proxy", "agent", "dependency"]
        .map(|cause| total(t, AGENT_REQUESTS_TOTAL, &[l, ("cause", cause)]));
    let total: u64 = classes.iter().sum();
    let late = self::total(t, DEADLINE_EXCEEDED_TOTAL, &[l]);
    window.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if window.is_empty() {
            "    -".to_string()
        } else {
            let i = ((window.len() as f64 * p).ceil() as usize).clamp(1, window.len()) - 1;
            format!("{:>4.0}ms", window[i] * 1000.0)
        }
    };
    let availability = if total > 0 {
        format!(
            "{:>6.2}%",
            100.0 * (total - classes[4]) as f64 / total as f64
        )
    } else {
        "      -".to_string()
    };
    let line = format!(
        "{listener:<16} total {total:>6} | availability {availability} | 2xx {:>6}  4xx {:>4}  5xx {:>4} | failures by cause: agent {:>3} upstream {:>3} dependency {:>3} proxy {:>3} | deadline_exceeded {late:>3} | last 1s: {:>3} done, p50 {} p99 {}",
        classes[1], classes[3], classes[4], causes[3], causes[1], causes[4], causes[2], window.len(), q(0.5), q(0.99)
    );
    window.clear();
    line
}

/// The tasks line: the article's task-completion SLI over the tasks the sidecar counted, the
/// loop guard's findings and the calls it refused, and what `/agent/healthz` answers.
pub(super) fn tasks_line(t: &Tallies, healthz: &str) -> String {
    let n = |name: &str| total(t, name, &[]);
    let started = n(AGENT_TASKS_STARTED);
    let completed = n(AGENT_TASKS_COMPLETED);
    let rate = if started > 0 {
        format!("{:>6.2}%", 100.0 * completed as f64 / started as f64)
    } else {
        "      -".to_string()
    };
    let loops = |kind: &str| total(t, AGENT_LOOPS_DETECTED, &[("kind", kind)]);
    // On the egress listener, the agent's own 4xx are the loop guard's refusals.
    let refused = total(
        t,
        AGENT_REQUESTS_TOTAL,
        &[
            ("listener", "egress"),
            ("status", "4xx"),
            ("cause", "agent"),
        ],
    );
    format!(
        "tasks    started {started:>5} completed {completed:>5} failed {:>4} abandoned {:>3} | completion rate {rate} (completed/started) | loops repeated_tool_call {} max_llm_calls {}, LLM calls refused {refused} | /agent/healthz {healthz}",
        n(AGENT_TASKS_FAILED),
        n(AGENT_TASKS_ABANDONED),
        loops("repeated_tool_call"),
        loops("max_llm_calls"),
    )
}

/// The line of calls between agents: the agent's calls to the planner (answered, cut at their
/// deadline, refused by the bulkhead), the agent's answers a dependency failed, and the
/// availability budget those did not spend: what is left, and what would be left had they been
/// charged (over the same requests, at the SLO's `target`).
pub(super) fn cascade_line(t: &Tallies, target: f64) -> String {
    let peers = ("listener", "peers");
    let calls = total(t, AGENT_REQUESTS_TOTAL, &[peers]);
    let ok = total(t, AGENT_REQUESTS_TOTAL, &[peers, ("status", "2xx")]);
    let cut = total(t, DEADLINE_EXCEEDED_TOTAL, &[peers]);
    let refused = total(t, BULKHEAD_REJECTIONS_TOTAL, &[("route", "planner")]);
    let inbound = ("listener", "inbound");
    let dependency = total(t, AGENT_REQUESTS_TOTAL, &[inbound, ("cause", "dependency")]);
    let own = total(
        t,
        AGENT_REQUESTS_TOTAL,
        &[inbound, ("status", "5xx"), ("cause", "agent")],
    );
    let left = t.gauge_sum(SLO_BUDGET_REMAINING, |k| {
        labelled(k, &[("slo", "availability")])
    });
    let all = total(t, AGENT_REQUESTS_TOTAL, &[inbound]);
    let failed = total(t, AGENT_REQUESTS_TOTAL, &[inbound, ("status", "5xx")]);
    let charged = match all {
        0 => 1.0,
        _ => 1.0 - failed as f64 / ((1.0 - target) * all as f64),
    };
    format!(
        "cascade  planner calls {calls:>5}, ok {ok:>5} | cut at the deadline {cut:>4} | bulkhead_full {refused:>4} | agent 5xx charged to the dependency {dependency:>4}, to the agent {own:>4} | availability budget {:>7.1}% left, {:>8.1}% had the dependency's been charged",
        100.0 * left,
        100.0 * charged
    )
}

/// The correctness line: the verdicts by source and reason (the judge's samples too), and the SLI
/// they make.
pub(super) fn correctness_line(t: &Tallies) -> String {
    let n = |source: &str, verdict: &str, reason: &str| {
        let labels = [("source", source), ("verdict", verdict), ("reason", reason)];
        total(t, CORRECTNESS_VERDICTS_TOTAL, &labels)
    };
    let all = total(t, CORRECTNESS_VERDICTS_TOTAL, &[]);
    let correct = total(t, CORRECTNESS_VERDICTS_TOTAL, &[("verdict", "correct")]);
    let sli = match all {
        0 => "      -".to_string(),
        _ => format!("{:>6.2}%", 100.0 * correct as f64 / all as f64),
    };
    let samples = |result: &str| total(t, JUDGE_SAMPLES_TOTAL, &[("result", result)]);
    format!(
        "correct  checks: ok {:>5} truncated {:>4} schema {:>3} refusal {:>3} | the agent's verdicts: correct {:>5} incorrect {:>4} | judge: correct {:>4} incorrect {:>3} unreadable {:>2} dropped {:>2} | feedback {:>3} | SLI {sli} (correct of {all} verdicts)",
        n("check", "correct", "checks"),
        n("check", "incorrect", "truncated"),
        n("check", "incorrect", "schema_invalid"),
        n("check", "incorrect", "refusal"),
        n("agent", "correct", "agent"),
        n("agent", "incorrect", "agent"),
        n("judge", "correct", "judge"),
        n("judge", "incorrect", "judge"),
        samples("unreadable"),
        samples("dropped"),
        total(t, CORRECTNESS_VERDICTS_TOTAL, &[("source", "feedback")]),
    )
}

/// The tools line: per tool of the demo's MCP server, the share of its calls that ended `ok`
/// and its p99 (from the histogram's buckets, over the whole run), and the definition changes
/// the guard caught.
pub(super) fn tools_line(t: &Tallies) -> String {
    let mut parts = Vec::new();
    for tool in SIM_TOOLS {
        let named = ("gen_ai_tool_name", tool);
        let all = total(t, AGENT_TOOL_CALLS_TOTAL, &[named]);
        let ok = total(t, AGENT_TOOL_CALLS_TOTAL, &[named, ("outcome", "ok")]);
        let calls = [named, ("mcp_method_name", "tools/call")];
        let buckets: Vec<(f64, f64)> = t
            .cumulative(MCP_OPERATION_DURATION, |k| labelled(k, &calls))
            .into_iter()
            .map(|(le, n)| (le, n as f64))
            .collect();
        let p99 = quantile(0.99, &buckets)
            .map_or("    -".to_string(), |v| format!("{:>4.0}ms", v * 1000.0));
        let success = match all {
            0 => "     -".to_string(),
            _ => format!("{:>5.1}%", 100.0 * ok as f64 / all as f64),
        };
        parts.push(format!("{tool} ok {success} of {all:>4} p99 {p99}"));
    }
    let change = |c: &str| total(t, MCP_TOOL_CHANGES_TOTAL, &[("change", c)]);
    format!(
        "tools    {} | tool definitions changed {} added {} removed {} (caught on tools/list; held under block)",
        parts.join(" | "),
        change("changed"),
        change("added"),
        change("removed"),
    )
}

/// The SLO line: each SLO's error budget left (of its 30-day window) and its burn rate over the
/// last 5 minutes and hour, from the sidecar's own `sloguard_slo_*` gauges.
pub(super) fn slo_line(t: &Tallies) -> String {
    let mut parts = Vec::new();
    for slo in [
        "availability",
        "task-completion",
        "latency",
        "ttft",
        "safety",
        "correctness",
        "tool-success",
        "search-latency",
    ] {
        let s = ("slo", slo);
        let remaining = t.gauge_sum(SLO_BUDGET_REMAINING, |k| labelled(k, &[s]));
        let burn = |w: &str| t.gauge_sum(SLO_BURN_RATE, |k| labelled(k, &[s, ("window", w)]));
        parts.push(format!(
            "{slo} {:>7.1}% left, burn {:>5.2}/{:>5.2}",
            100.0 * remaining,
            burn("5m"),
            burn("1h")
        ));
    }
    format!(
        "slo      budget (30d) and burn rate 5m/1h: {}",
        parts.join(" | ")
    )
}
