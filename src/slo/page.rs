//! `GET /slo` for a person (`Accept: text/html`): one card per SLO, with its state, budget and
//! burn rates, and a chart of its SLI over the last 6 hours and of its budget's burn-down.
//!
//! Drawn from the same report as the JSON, so the two never disagree. The page stands alone —
//! inline CSS and SVG, no script, nothing fetched — because the admin port is often reached
//! through a port-forward on a machine with no way out. Every string of the report comes from
//! config and is escaped.

use std::fmt::Write;

use serde_json::Value;

const STYLE: &str = "
:root{--ok:#1a7f37;--ok-bg:#dafbe1;--warning:#9a6700;--warning-bg:#fff8c5;--breach:#cf222e;
--breach-bg:#ffebe9;--muted:#59636e;--line:#d1d9e0;--faint:#eaeef2;--ink:#1f2328}
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:var(--ink);
font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0}h2{font-size:18px;margin:0}
.sub{color:var(--muted);margin:2px 0 8px}.head{display:flex;align-items:center;gap:10px}
.card{background:#fff;border:1px solid var(--line);border-left:5px solid var(--ok);
border-radius:8px;padding:16px 20px;margin:16px 0}
.card.warning{border-left-color:var(--warning)}.card.breach{border-left-color:var(--breach)}
.badge,.sev{font-size:11px;font-weight:600;padding:2px 9px;border-radius:999px;letter-spacing:.04em}
.badge{text-transform:uppercase}.sev{border:1px solid var(--line);color:var(--muted)}
.ok .badge,.badge.ok{color:var(--ok);background:var(--ok-bg)}
.warning .badge,.badge.warning{color:var(--warning);background:var(--warning-bg)}
.breach .badge,.badge.breach{color:var(--breach);background:var(--breach-bg)}
.meta{color:var(--muted);margin:4px 0 14px}.meta b{color:var(--ink);font-weight:600}
.grid{display:grid;grid-template-columns:330px 1fr;gap:28px;align-items:start}
.label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.big{font-size:28px;font-weight:600;font-variant-numeric:tabular-nums;margin:2px 0 6px}
.big small{font-size:14px;font-weight:500}.neg,.hot{color:var(--breach)}.hot{font-weight:600}
.bar{height:8px;background:var(--faint);border-radius:4px;overflow:hidden;margin-bottom:16px}
.bar span{display:block;height:100%;background:var(--ok)}
.warning .bar span{background:var(--warning)}.breach .bar span{background:var(--breach)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:5px 6px;border-bottom:1px solid var(--faint)}
th:first-child,td:first-child{text-align:left}th{font-weight:600;color:var(--muted);font-size:12px}
.empty{background:#fff;border:1px dashed var(--line);border-radius:8px;padding:32px;
text-align:center;color:var(--muted)}
svg{width:100%;height:auto;display:block}svg text{font-size:11px;fill:var(--muted)}
svg .title{font-size:12px;font-weight:600;fill:var(--ink)}
svg .halo{paint-order:stroke;stroke:#fff;stroke-width:3px}
@media (max-width:1100px){.grid{grid-template-columns:1fr}.grid>div{max-width:560px}}
";

/// The page for `report`: the JSON of [`super::Slos::report`], or `{"slos": []}`.
pub fn html(report: &Value) -> String {
    let slos: &[Value] = report["slos"].as_array().map_or(&[], Vec::as_slice);
    let title = match report["agent"].as_str() {
        Some(agent) => format!("SLOs of {}", esc(agent)),
        None => "SLOs".to_owned(),
    };
    let mut out = String::with_capacity(8192 + 8192 * slos.len());
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n\
         <title>{title} · sloguard</title>\n<style>{STYLE}</style></head>\n<body><main>\n\
         <h1>{title}</h1>\n"
    );
    let count = |state: &str| slos.iter().filter(|s| s["state"] == state).count();
    let _ = writeln!(
        out,
        "<p class=\"sub\">The sidecar's local view · {} SLOs · \
         <span class=\"badge breach\">{} breach</span> \
         <span class=\"badge warning\">{} warning</span> \
         <span class=\"badge ok\">{} ok</span></p>",
        slos.len(),
        count("breach"),
        count("warning"),
        count("ok"),
    );
    if slos.is_empty() {
        out.push_str("<p class=\"empty\">No SLOs are configured (<code>slos:</code>).</p>\n");
    }
    for (i, slo) in slos.iter().enumerate() {
        card(&mut out, i, slo);
    }
    out.push_str("</main></body></html>\n");
    out
}

/// Whether the request's `Accept` lists `text/html` with a weight above zero: a browser.
pub fn accepts_html(headers: &http::HeaderMap) -> bool {
    let html = |range: &str| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        media.eq_ignore_ascii_case("text/html")
            && !parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f64>().ok()) == Some(0.0))
    };
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(html))
}

fn card(out: &mut String, i: usize, slo: &Value) {
    let name = esc(slo["name"].as_str().unwrap_or("?"));
    // Also a class name: one of the known states only.
    let state = slo["state"].as_str();
    let state = state
        .filter(|s| ["ok", "warning", "breach"].contains(s))
        .unwrap_or("unknown");
    let target = slo["target"].as_f64().unwrap_or(1.0);
    let _ = write!(
        out,
        "<section class=\"card {state}\">\n<div class=\"head\"><h2>{name}</h2>\
         <span class=\"badge\">{state}</span><span class=\"sev\">{}</span></div>\n\
         <p class=\"meta\">SLI <b>{}</b> · target <b>{}%</b> · window <b>{}</b>",
        esc(slo["severity"].as_str().unwrap_or("?")),
        esc(slo["sli"].as_str().unwrap_or("?")),
        trim(target * 100.0),
        esc(slo["window"].as_str().unwrap_or("?")),
    );
    if let Some(t) = slo["threshold_seconds"].as_f64() {
        let _ = write!(out, " · threshold <b>{}s</b>", trim(t));
    }
    out.push_str("</p>\n<div class=\"grid\"><div>\n");
    let remaining = slo["budget_remaining"].as_f64().unwrap_or(1.0);
    let (class, note) = if remaining < 0.0 {
        (" neg", " <small>(overspent)</small>")
    } else {
        ("", "")
    };
    let _ = write!(
        out,
        "<div class=\"label\">Error budget remaining</div>\
         <div class=\"big{class}\">{}{note}</div>\
         <div class=\"bar\"><span style=\"width:{:.1}%\"></span></div>\n\
         <table><tr><th>window</th><th>SLI</th><th>burn rate</th><th>good / total</th></tr>\n",
        pct(remaining, 1),
        remaining.clamp(0.0, 1.0) * 100.0,
    );
    for (key, label) in [
        ("5m", "5 min"),
        ("1h", "1 hour"),
        ("6h", "6 hours"),
        ("since_start", "since start"),
    ] {
        let w = &slo["windows"][key];
        let sli = w["sli"].as_f64().map_or("—".into(), |v| pct(v, 2));
        let burn = match w["burn_rate"].as_f64() {
            Some(b) if b > 1.0 => format!("<span class=\"hot\">{b:.2}×</span>"),
            Some(b) => format!("{b:.2}×"),
            None => "—".into(),
        };
        let (good, total) = (w["good"].as_u64().unwrap_or(0), w["total"].as_u64());
        let _ = writeln!(
            out,
            "<tr><td>{label}</td><td>{sli}</td><td>{burn}</td><td>{good} / {}</td></tr>",
            total.unwrap_or(0)
        );
    }
    out.push_str("</table></div>\n");
    chart(out, i, &name, target, &slo["history"]);
    out.push_str("</div></section>\n");
}

/// A plot area of the chart and the values it shows, top to bottom.
struct Panel {
    x: f64,
    hi: f64,
    lo: f64,
    /// Values are periods drawn at their centres; else points spread to end at the right edge.
    periods: bool,
}

const TOP: f64 = 34.0;
const HEIGHT: f64 = 170.0;
const WIDTH: f64 = 316.0;

impl Panel {
    fn px(&self, i: usize, n: usize) -> f64 {
        let at = match (self.periods, n) {
            (true, _) => (i as f64 + 0.5) / n as f64,
            (false, 0 | 1) => 1.0,
            (false, _) => i as f64 / (n - 1) as f64,
        };
        self.x + WIDTH * at
    }

    fn py(&self, v: f64) -> f64 {
        TOP + HEIGHT * (self.hi - v.clamp(self.lo, self.hi)) / (self.hi - self.lo)
    }

    /// Title and latest value, frame, time labels, and a labelled gridline per tick.
    fn axes(
        &self,
        out: &mut String,
        title: &str,
        latest: Option<String>,
        from: &str,
        ticks: &[f64],
    ) {
        let (x, right, bottom) = (self.x, self.x + WIDTH, TOP + HEIGHT + 16.0);
        let latest = latest.map_or(String::new(), |l| format!("latest {l}"));
        let _ = write!(
            out,
            "<text class=\"title\" x=\"{x}\" y=\"16\">{title}</text>\
             <text x=\"{right}\" y=\"16\" text-anchor=\"end\">{latest}</text>\
             <rect x=\"{x}\" y=\"{TOP}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fbfcfd\" \
             stroke=\"#d1d9e0\"/><text x=\"{x}\" y=\"{bottom}\">{from}</text>\
             <text x=\"{right}\" y=\"{bottom}\" text-anchor=\"end\">now</text>"
        );
        let decimals = if self.hi - self.lo < 0.05 { 2 } else { 1 };
        for v in ticks {
            let y = self.hline(out, *v, "stroke=\"#eaeef2\"");
            let label = pct(
                *v,
                if (v * 100.0).fract() == 0.0 {
                    0
                } else {
                    decimals
                },
            );
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                x - 6.0,
                y + 4.0
            );
        }
    }

    /// A line across the panel at `v`; returns its height.
    fn hline(&self, out: &mut String, v: f64, style: &str) -> f64 {
        let (y, right) = (self.py(v), self.x + WIDTH);
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{right}\" y1=\"{y:.1}\" y2=\"{y:.1}\" {style}/>",
            self.x
        );
        y
    }

    /// A line through the values, broken at each gap, with a dot on points that stand alone.
    fn line(&self, out: &mut String, values: &[Option<f64>], colour: &str) {
        let n = values.len();
        let mut d = String::new();
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let (x, y) = (self.px(i, n), self.py(*v));
            let joined = i > 0 && values[i - 1].is_some();
            let _ = write!(d, "{}{x:.1},{y:.1}", if joined { "L" } else { "M" });
            if n <= 12 || !joined && values.get(i + 1).is_none_or(Option::is_none) {
                let _ = write!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>"
                );
            }
        }
        let _ = write!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
             stroke-linejoin=\"round\"/>"
        );
    }

    fn no_data(&self, out: &mut String) {
        let (x, y) = (self.x + WIDTH / 2.0, TOP + HEIGHT / 2.0);
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\" style=\"font-size:13px\">\
             no data yet</text>"
        );
    }
}

/// Two panels: the SLI per period against the target, and the budget remaining per hour.
fn chart(out: &mut String, i: usize, name: &str, target: f64, history: &Value) {
    let sli: Vec<Option<f64>> = history["sli"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(Value::as_f64).collect());
    let budget: Vec<f64> = history["budget_remaining_by_hour"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_f64).collect());
    let period = history["period_minutes"].as_u64().unwrap_or(5);
    let _ = write!(
        out,
        "<svg class=\"slo-chart\" data-slo=\"{name}\" viewBox=\"0 0 800 230\" role=\"img\" \
         aria-label=\"{name}: SLI over time and error budget burn-down\">"
    );
    sli_panel(out, &sli, target, period);
    burn_down_panel(out, i, &budget);
    out.push_str("</svg>\n");
}

/// The SLI, from a margin below the lowest of the values and the target up to 100%.
fn sli_panel(out: &mut String, sli: &[Option<f64>], target: f64, period: u64) {
    let low = sli.iter().flatten().fold(target, |m, v| m.min(*v));
    let lo = (low - (1.0 - low).max(0.001) * 0.25).max(0.0);
    let (x, hi, periods) = (56.0, 1.0, true);
    let p = Panel { x, hi, lo, periods };
    let last = sli.iter().rev().flatten().next().map(|v| pct(*v, 2));
    let minutes = sli.len().max(360 / period.max(1) as usize) as u64 * period;
    p.axes(
        out,
        &format!("SLI per {period} minutes"),
        last,
        &ago(minutes),
        &[1.0, lo],
    );
    let dashed = "stroke=\"#cf222e\" stroke-dasharray=\"5 4\" stroke-width=\"1.5\"";
    let ty = p.hline(out, target, dashed);
    if sli.iter().all(Option::is_none) {
        p.no_data(out);
    } else {
        p.line(out, sli, "#0969da");
    }
    // After the line, so that it stays legible where the line crosses it.
    let _ = write!(
        out,
        "<text class=\"halo\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" style=\"fill:#cf222e\">\
         target {}%</text>",
        p.x + WIDTH - 4.0,
        if ty - TOP < 16.0 { ty + 14.0 } else { ty - 5.0 },
        trim(target * 100.0),
    );
}

/// The burn-down: from 100% down through the 0% line, and below it once overspent. `i` keeps
/// the chart's clip paths apart from the other charts'.
fn burn_down_panel(out: &mut String, i: usize, budget: &[f64]) {
    let min = budget.iter().fold(0.0f64, |m, v| m.min(*v));
    let hi = budget.iter().fold(1.0f64, |m, v| m.max(*v));
    let (x, lo, periods) = (464.0, min - (hi - min) * 0.08, false);
    let b = Panel { x, hi, lo, periods };
    let mut ticks = vec![hi, 0.5, 0.0];
    if min < -0.15 {
        ticks.push(min);
    }
    let last = budget.last().map(|v| pct(*v, 1));
    let from = ago(60 * budget.len().saturating_sub(1) as u64);
    b.axes(out, "Budget remaining, by hour", last, &from, &ticks);
    let zero = b.hline(out, 0.0, "stroke=\"#1f2328\"");
    if budget.is_empty() {
        b.no_data(out);
    } else {
        // Shaded between the line and 0%: green above, red below, each clipped to its side.
        let n = budget.len();
        let mut area = format!("M{:.1},{zero:.1}", b.px(0, n));
        for (j, v) in budget.iter().enumerate() {
            let _ = write!(area, "L{:.1},{:.1}", b.px(j, n), b.py(*v));
        }
        let _ = write!(area, "L{:.1},{zero:.1}Z", b.px(n - 1, n));
        let _ = write!(
            out,
            "<clipPath id=\"above{i}\"><rect width=\"800\" height=\"{zero:.1}\"/></clipPath>\
             <clipPath id=\"below{i}\"><rect y=\"{zero:.1}\" width=\"800\" height=\"230\"/>\
             </clipPath><path d=\"{area}\" fill=\"#1a7f37\" fill-opacity=\".15\" \
             clip-path=\"url(#above{i})\"/><path d=\"{area}\" fill=\"#cf222e\" \
             fill-opacity=\".18\" clip-path=\"url(#below{i})\"/>",
        );
        let values: Vec<Option<f64>> = budget.iter().copied().map(Some).collect();
        b.line(out, &values, "#1f2328");
    }
}

/// `minutes` before now, as a time label: −45m, −6h, −12d.
fn ago(minutes: u64) -> String {
    match minutes {
        0 => String::new(),
        m if m < 120 => format!("\u{2212}{m}m"),
        m if m < 48 * 60 => format!("\u{2212}{}h", m / 60),
        m => format!("\u{2212}{}d", m / 1440),
    }
}

/// `x` as a percentage with `decimals`, a true minus sign when negative.
fn pct(x: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, x * 100.0).replace('-', "\u{2212}")
}

/// Up to three decimals, without trailing zeros: 99.9, 95, 0.25.
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for HTML content and quoted attributes alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slo(name: &str, remaining: f64, sli: Value, budget: Value) -> Value {
        let w = json!({"good": 90, "total": 100, "sli": 0.9, "burn_rate": 2.0});
        json!({
            "name": name, "sli": "availability", "target": 0.95, "window": "30d",
            "threshold_seconds": null, "budget_remaining": remaining,
            "windows": {"5m": w, "1h": w, "6h": w, "since_start": w},
            "state": if remaining <= 0.0 { "breach" } else { "ok" }, "severity": "sev2",
            "history": {"period_minutes": 5, "sli": sli, "budget_remaining_by_hour": budget},
        })
    }

    fn page(slos: &[Value]) -> String {
        html(&json!({"agent": "a&b", "slos": slos}))
    }

    #[test]
    fn html_only_for_clients_that_accept_it() {
        let accepts = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::ACCEPT, v.parse().unwrap());
            accepts_html(&h)
        };
        assert!(accepts("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(accepts("Text/HTML; q=0.5"));
        assert!(!accepts("text/html;q=0") && !accepts("*/*") && !accepts("application/json"));
        assert!(!accepts_html(&http::HeaderMap::new()));
    }

    #[test]
    fn escapes_every_string_from_the_report() {
        let name = "<script>alert('x')</script>\"&";
        let p = page(&[slo(name, 0.5, json!([0.99]), json!([1.0]))]);
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains("<h2>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;</h2>"));
        assert!(
            p.contains("data-slo=\"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;\"")
        );
        assert!(p.contains("<title>SLOs of a&amp;b · sloguard</title>"));
        assert!(p.contains("<meta charset=\"utf-8\">"));
    }

    #[test]
    fn draws_one_chart_per_slo() {
        let slos = ["a", "b", "c"].map(|n| slo(n, 0.9, json!([0.99, null, 1.0]), json!([1.0])));
        let p = page(&slos);
        assert_eq!(p.matches("<svg class=\"slo-chart\"").count(), 3);
        for n in ["a", "b", "c"] {
            assert_eq!(p.matches(&format!("data-slo=\"{n}\"")).count(), 1, "{n}");
        }
        assert!(!p.contains("http://") && !p.contains("https://") && !p.contains("<script"));
    }

    #[test]
    fn shows_an_overspent_budget_as_negative() {
        let p = page(&[slo("x", -0.352, json!([0.9]), json!([1.0, -0.352]))]);
        assert!(
            p.contains("\u{2212}35.2% <small>(overspent)</small>"),
            "{p}"
        );
        assert!(p.contains("class=\"card breach\""));
        assert!(p.contains("<span style=\"width:0.0%\">"), "an empty bar");
        assert!(
            p.contains("latest \u{2212}35.2%"),
            "the burn-down's last point"
        );
    }

    #[test]
    fn empty_history_still_draws_axes() {
        let p = page(&[slo("x", 1.0, json!([null, null]), json!([]))]);
        assert_eq!(p.matches("no data yet").count(), 2);
        assert_eq!(p.matches("<rect x=").count(), 2, "both panels framed");
        assert!(p.contains("target 95%"));
        let p = html(&json!({"slos": []}));
        assert!(p.contains("No SLOs are configured") && !p.contains("slo-chart"));
    }
}
