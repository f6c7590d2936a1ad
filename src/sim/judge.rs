//! A simulated judge model: answers Chat Completions requests with a verdict on the answer it is
//! shown, in the shapes real judges use — plain JSON, JSON in prose or in a code fence — and now
//! and then no verdict at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{full, serve, SimBody, SimRng, SimServer};

/// How the simulated judge grades.
#[derive(Debug, Clone)]
pub(crate) struct JudgeSim {
    /// Share of answers it finds incorrect.
    pub(crate) incorrect_rate: f64,
    /// Share of its replies that hold no verdict.
    pub(crate) unreadable_rate: f64,
    /// How long it thinks.
    pub(crate) delay: Duration,
    pub(crate) seed: u64,
}

impl Default for JudgeSim {
    fn default() -> Self {
        JudgeSim {
            incorrect_rate: 0.05,
            unreadable_rate: 0.02,
            delay: Duration::from_millis(40),
            seed: 0x1d9e,
        }
    }
}

pub(crate) async fn spawn_judge(bind: SocketAddr, sim: JudgeSim) -> std::io::Result<SimServer> {
    let rng = Arc::new(SimRng::new(sim.seed));
    let sim = Arc::new(sim);
    serve(bind, move |req| {
        let (sim, rng) = (sim.clone(), rng.clone());
        async move { grade(&sim, &rng, req).await }
    })
    .await
}

async fn grade(sim: &JudgeSim, rng: &SimRng, req: Request<Incoming>) -> Response<SimBody> {
    let _ = req.into_body().collect().await;
    tokio::time::sleep(sim.delay).await;
    let roll = rng.next_f64();
    let content = if roll < sim.unreadable_rate {
        "I am not able to grade this answer.".to_owned()
    } else {
        let correct = rng.next_f64() >= sim.incorrect_rate;
        let verdict = serde_json::json!({
            "correct": correct,
            "reason": if correct { "It answers the request." } else { "It misses the point of the request." },
        });
        // Judges wrap their JSON now and then.
        match (rng.next_f64() * 3.0) as u32 {
            0 => verdict.to_string(),
            1 => format!("Here is my verdict:\n```json\n{verdict}\n```"),
            _ => format!("After reading both, my verdict is {verdict}. Hope this helps."),
        }
    };
    let body = serde_json::json!({
        "id": "chatcmpl-judge", "object": "chat.completion", "model": "sim-judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220},
    });
    let mut r = Response::new(full(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
