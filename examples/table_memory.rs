//! Resident memory of 100,000 live tasks, in a fresh process (a bench's figure is skewed by heap
//! the benches before it freed): `cargo run --release --example table_memory -- tasks|loops`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a measuring tool")]

use std::time::Duration;

use sloguard::sli::loops::{LoopLimits, LoopTable};
use sloguard::sli::tasks::{TaskTable, Verdict};

const LIVE: u64 = 100_000;

/// Resident memory (Linux), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "tasks".into());
    let now = tokio::time::Instant::now();
    let stuck_after = Duration::from_secs(300);
    let keys: Vec<u64> = (0..LIVE)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let before = rss_kib();
    let len = match which.as_str() {
        "tasks" => {
            let t = TaskTable::new(LIVE as usize, stuck_after);
            for k in &keys {
                t.request(*k, now);
                t.response(*k, Some(Verdict::InProgress), now);
            }
            let len = t.len();
            std::mem::forget(t);
            len
        }
        "loops" => {
            let limits = LoopLimits {
                max_llm_calls: 50,
                max_repeated_tool_calls: 3,
            };
            let t = LoopTable::new(LIVE as usize, limits, stuck_after);
            for k in &keys {
                t.call(*k, false, now);
                t.returned(*k, Some(*k), now);
            }
            let len = t.len();
            std::mem::forget(t);
            len
        }
        other => panic!("tasks or loops, not {other}"),
    };
    let kib = rss_kib().saturating_sub(before);
    assert_eq!(len, LIVE as usize);
    println!(
        "{which}: {LIVE} live tasks take {kib} KiB resident ({} bytes a task)",
        kib * 1024 / LIVE
    );
}
