//! The demo's synthetic traffic: tasks of one to three requests to the inbound listener, LLM
//! calls to the egress listeners, and the probe of `/agent/healthz`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::DemoClient;

/// Client-side latencies of the last second, per listener.
#[derive(Default)]
pub(super) struct Samples {
    /// inbound, egress, egress-anthropic
    pub(super) listeners: [Vec<f64>; 3],
}

/// Asks for a structured answer: a summary and a priority of `low` or `high`.
pub(super) const OPENAI_REQUEST: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"type":"function","function":{"name":"open_ticket","parameters":{"type":"object"}}}],"response_format":{"type":"json_schema","json_schema":{"name":"triage","strict":true,"schema":{"type":"object","properties":{"summary":{"type":"string"},"priority":{"enum":["low","high"]}},"required":["summary","priority"]}}}}"#;
pub(super) const ANTHROPIC_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":512,"stream":true,"messages":[{"role":"user","content":"Triage ticket T-1042"}],"tools":[{"name":"open_ticket","input_schema":{"type":"object"}}]}"#;

/// One task of the inbound traffic.
pub(super) struct Task {
    pub(super) id: u64,
    pub(super) steps: u32,
    /// The client walks away after this step.
    pub(super) leave_after: Option<u32>,
    /// The agent loops on the first step.
    pub(super) looping: bool,
}

/// Sends a task's steps one after another, with the task's id; a step that fails ends it.
pub(super) fn start_task(
    client: &DemoClient,
    limit: &Arc<Semaphore>,
    samples: &Arc<Mutex<Samples>>,
    url: String,
    task: Task,
) {
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return;
    };
    let (client, samples) = (client.clone(), samples.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let last = task.leave_after.unwrap_or(task.steps);
        for step in 1..=last {
            let body = serde_json::json!({
                "task": "summarise the ticket", "step": step, "steps": task.steps,
                "loop": task.looping && step == 1,
            });
            let Ok(req) = Request::post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-agent-task-id", format!("demo-task-{}", task.id))
                .body(Full::new(Bytes::from(body.to_string())))
            else {
                return;
            };
            let started = Instant::now();
            let ok = match client.request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            };
            samples.lock().unwrap_or_else(|p| p.into_inner()).listeners[0]
                .push(started.elapsed().as_secs_f64());
            if !ok {
                return;
            }
        }
    });
}

/// What `/agent/healthz` answers: `200 ok`, or `503 stuck: REASON`.
pub(super) async fn agent_healthz(client: &DemoClient, url: &str) -> String {
    let Ok(req) = Request::get(url).body(Full::new(Bytes::new())) else {
        return "unreachable".into();
    };
    let Ok(resp) = client.request(req).await else {
        return "unreachable".into();
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match json["reason"].as_str() {
        Some(reason) => format!("{status} stuck: {reason}"),
        None => format!("{status} ok"),
    }
}

pub(super) fn fire(
    client: &DemoClient,
    limit: &Arc<Semaphore>,
    samples: &Arc<Mutex<Samples>>,
    listener: usize,
    url: String,
    body: &'static str,
) {
    // Bounded: past 256 requests in flight the demo skips a beat rather than pile up.
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return;
    };
    let (client, samples) = (client.clone(), samples.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let Ok(req) = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
        else {
            return;
        };
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
        s.listeners[listener].push(secs);
    });
}
