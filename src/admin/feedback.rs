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
    let body = match Limited::new(req.into_body(), MAX_FEEDBACK_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad_request("the body could not be read, or is over 64 KiB"),
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
