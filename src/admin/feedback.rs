//! `POST /admin/feedback`: a verdict on an answer that comes after it, such as a user's
//! thumbs-down — `{"task_id": "...", "verdict": "correct" | "incorrect"}` — counted in
//! `agent_correctness_verdicts_total{source="feedback", listener="admin"}`. The task id is not
//! looked up (the task may be long over): an unknown one still counts.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{authorize, to_full, AdminState};
use crate::proxy::error_response;

/// The largest feedback body read.
const MAX_FEEDBACK_BODY: usize = 64 * 1024;
/// The longest a feedback body may take to arrive.
const FEEDBACK_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn is_feedback(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST && req.uri().path() == "/admin/feedback"
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Given {
    /// Required, never kept or logged: it may be a user's.
    #[expect(dead_code, reason = "checked present, otherwise not used")]
    task_id: String,
    verdict: Said,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Said {
    Correct,
    Incorrect,
}

pub(super) async fn feedback(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(refused) = authorize(state, &req) {
        return refused;
    }
    let snap = state.snapshot.load();
    let Some(counters) = snap.feedback.as_ref() else {
        return to_full(error_response(
            StatusCode::CONFLICT,
            "correctness_off",
            "no verdict is gathered: the config has no `correctness:` section",
        ));
    };
    // Bounded in time too: a request in flight holds an admin connection the probes need.
    let read = Limited::new(req.into_body(), MAX_FEEDBACK_BODY).collect();
    let body = match tokio::time::timeout(FEEDBACK_BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return bad_request("the body could not be read, or is over 64 KiB"),
        Err(_) => {
            return to_full(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive within 5 s",
            ))
        }
    };
    let given: Given = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(_) => {
            return bad_request(
                r#"expected {"task_id": "...", "verdict": "correct" | "incorrect"}"#,
            )
        }
    };
    let correct = matches!(given.verdict, Said::Correct);
    counters.count(correct);
    let answer = serde_json::json!({"counted": true, "verdict": if correct { "correct" } else { "incorrect" }});
    let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    to_full(error_response(
        StatusCode::BAD_REQUEST,
        "bad_request",
        message,
    ))
}
