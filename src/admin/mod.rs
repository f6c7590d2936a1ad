//! The admin port: `/metrics`, `/healthz`, `/readyz`, `/circuits`, and the admin API
//! (`POST /admin/circuits/{upstream}/open|close|auto`) behind a bearer token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod feedback;
mod mcp;

use crate::proxy::connections::{Connections, Hyper};
use crate::proxy::error_response;
use crate::telemetry::Telemetry;
use crate::upstream::Force;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub telemetry: Telemetry,
    /// True once the config is loaded and every listener is bound; false again while draining.
    pub ready: Arc<AtomicBool>,
    pub snapshot: Arc<arc_swap::ArcSwap<crate::proxy::Snapshot>>,
    /// `admin.token_file`: read at each mutation, so a rotated token takes effect at once.
    pub token_file: Option<std::path::PathBuf>,
    /// Bounds the log lines a broken token file causes.
    pub log_limit: crate::telemetry::LogLimiter,
    /// `POST /admin/agent/disable|enable`.
    pub kill: Arc<crate::proxy::safety::KillSwitch>,
    /// `GET /agent/healthz`.
    pub tasks: Arc<crate::proxy::tasks::Tasks>,
    /// `GET /slo`.
    pub slos: Arc<crate::slo::Slos>,
    /// `POST /admin/reload`.
    pub reloader: Arc<dyn Reload>,
    /// `GET /mcp`, `POST /admin/mcp/{upstream}/accept`.
    pub tools: Arc<crate::proxy::mcp::ToolBooks>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this sidecar was started without a config file: there is nothing to reload")]
    NoFile,
    /// The config cannot be read, parsed, validated or built, or a listener cannot be bound:
    /// the message names the key.
    #[error("{0}")]
    Refused(String),
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

/// What `POST /admin/reload` does: what changed (as JSON), or why the config was refused.
pub(crate) type ReloadFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<serde_json::Value, ReloadError>> + Send + 'a>,
>;

/// The config reload, as the admin port asks for it. The sidecar's reloader does the work; the
/// admin port meets it through this one method, so that it depends on nothing above it.
pub(crate) trait Reload: Send + Sync {
    fn reload_now(&self) -> ReloadFuture<'_>;
}

/// Reads the admin token file (one line, surrounding whitespace ignored).
pub(crate) fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(token.to_owned())
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin port until `stop` turns true (after the listeners have drained). The accept
/// loop is supervised: a panic restarts it rather than leave the probes unanswered.
pub(crate) async fn serve(
    tcp: TcpListener,
    connections: Arc<Connections>,
    state: Arc<AdminState>,
    stop: watch::Receiver<bool>,
    restarts: metrics::Counter,
) {
    let tcp = Arc::new(tcp);
    let accepting = {
        let connections = connections.clone();
        crate::background::supervise("accept admin", restarts, move || {
            let state = state.clone();
            let service_for = move |_peer, conn: Arc<crate::proxy::connections::Conn>| {
                let state = state.clone();
                // Each request is in flight until its answer is made (which also tells the
                // connection it has asked, so `header_timeout` no longer applies to it): a
                // client slow to read an answer holds an idle connection, which a newcomer (a
                // probe) can displace. A reload takes a while: in flight until answered, its
                // connection is neither displaced nor closed for idling meanwhile.
                Hyper(hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let in_flight = conn.request();
                    async move {
                        let answer = if is_reload(&req) {
                            reload(&state, &req).await
                        } else if feedback::is_feedback(&req) {
                            feedback::feedback(&state, req).await
                        } else {
                            route(&state, req)
                        };
                        drop(in_flight);
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                }))
            };
            connections
                .clone()
                .accept(tcp.clone(), stop.clone(), service_for)
        })
    };
    let _ = accepting.await;
    // Answers are immediate: what is in flight is done within a moment.
    connections
        .drain(std::time::Duration::from_millis(500))
        .await;
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path().starts_with("/admin/") {
        return mutate(state, &req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return to_full(error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the admin endpoints of this build answer GET only",
        ));
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.telemetry.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/agent/healthz" => agent_health(state),
        "/circuits" => circuits(state),
        "/mcp" => mcp::view(state),
        "/slo" => slo(state, req.headers()),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        _ => to_full(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        )),
    }
}

fn is_reload(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST && req.uri().path() == "/admin/reload"
}

/// `POST /admin/reload`: reads the config file again and swaps it in; 200 with what changed, or
/// 422 with why the config was refused (the running one stays).
async fn reload(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(refused) = authorize(state, req) {
        return refused;
    }
    match state.reloader.reload_now().await {
        Ok(done) => {
            let body = serde_json::json!({"reloaded": true, "changes": done});
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            let (status, kind) = match e {
                ReloadError::NoFile => (StatusCode::CONFLICT, "no_config_file"),
                ReloadError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_refused"),
                ReloadError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            };
            to_full(error_response(status, kind, &e.to_string()))
        }
    }
}

/// `POST /admin/...`: a valid bearer token first, then the action.
fn mutate(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(refused) = authorize(state, req) {
        return refused;
    }
    mutation(state, req)
}

/// Checks the bearer token of an admin call: `Err` holds the answer to a call refused.
#[allow(clippy::result_large_err)]
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    let Some(path) = &state.token_file else {
        return Err(to_full(error_response(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: set admin.token_file to enable it",
        )));
    };
    let expected = match read_token(path) {
        Ok(t) => t,
        Err(e) => {
            if let Some(suppressed) = state.log_limit.allow() {
                tracing::error!(error = %e, suppressed, "admin token unreadable; refusing admin requests");
            }
            return Err(to_full(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin_unavailable",
                "the admin token file cannot be read",
            )));
        }
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| v[7..].trim_ascii());
    if !given.is_some_and(|g| same_secret(g, expected.as_bytes())) {
        let mut r = to_full(error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer TOKEN` is required",
        ));
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(r);
    }
    Ok(())
}

/// An authorized `POST /admin/...` other than the reload.
fn mutation(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let (name, action) = match parts.as_slice() {
        ["admin", "agent", action] => return agent_switch(state, action),
        ["admin", "circuits", name, action] => (*name, *action),
        ["admin", "mcp", name, "accept"] => return mcp::accept(state, name),
        _ => {
            return to_full(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin action",
            ))
        }
    };
    let force = match action {
        "open" => Force::Open,
        "close" => Force::Closed,
        "auto" => Force::Auto,
        _ => {
            return to_full(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "circuit actions are open, close and auto",
            ))
        }
    };
    let snap = state.snapshot.load();
    let Some(upstream) = snap.upstreams.get(name) else {
        return to_full(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such upstream",
        ));
    };
    let Some(b) = &upstream.breaker else {
        return to_full(error_response(
            StatusCode::CONFLICT,
            "no_circuit_breaker",
            "this upstream has no circuit_breaker configured",
        ));
    };
    b.force(force, tokio::time::Instant::now());
    tracing::warn!(upstream = name, action, "circuit forced by the admin API");
    circuits(state)
}

/// `GET /slo`: the local view of every SLO (an empty list without SLOs), as JSON, or as a page
/// for a client that accepts `text/html` (a browser).
fn slo(state: &AdminState, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
    let report = state.slos.report(tokio::time::Instant::now());
    let (body, content_type) = if crate::slo::page::accepts_html(headers) {
        (crate::slo::page::html(&report), "text/html; charset=utf-8")
    } else {
        (report.to_string(), "application/json")
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // One URL, two representations: a cache must key on `Accept`.
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    r
}

/// `GET /agent/healthz`: 503 with the reason while the agent is stuck, for its container's
/// liveness probe; else 200.
fn agent_health(state: &AdminState) -> Response<Full<Bytes>> {
    let (status, body) = match state.tasks.check(tokio::time::Instant::now()) {
        Some(stuck) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stuck", "reason": stuck.reason()}),
        ),
        None => (StatusCode::OK, serde_json::json!({"status": "ok"})),
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `POST /admin/agent/disable|enable`: a human silences the agent, or lets it speak again.
/// Answers `{"disabled": bool, "changed": bool}`.
fn agent_switch(state: &AdminState, action: &str) -> Response<Full<Bytes>> {
    let disable = match action {
        "disable" => true,
        "enable" => false,
        _ => {
            return to_full(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "agent actions are disable and enable",
            ))
        }
    };
    let severity = state.snapshot.load().config.incidents.severities.safety;
    let why = if disable {
        "disabled by hand (admin API)"
    } else {
        "enabled by hand (admin API)"
    };
    let changed = state
        .kill
        .set(disable, why, crate::proxy::safety::severity(severity));
    tracing::warn!(action, changed, "kill switch set by the admin API");
    let body = serde_json::json!({"disabled": state.kill.is_disabled(), "changed": changed});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Every upstream's circuit: `{"upstreams": [{"name", "state", "consecutive_failures",
/// "last_trip_reason", "half_open_in_seconds"}]}`. An upstream without a breaker is always
/// `closed`.
fn circuits(state: &AdminState) -> Response<Full<Bytes>> {
    let now = tokio::time::Instant::now();
    let snap = state.snapshot.load();
    let upstreams: Vec<serde_json::Value> = snap
        .upstreams
        .values()
        .map(|u| match &u.breaker {
            Some(b) => {
                let v = b.breaker.view(now);
                serde_json::json!({
                    "name": u.name,
                    "state": v.state.as_str(),
                    "forced": v.forced,
                    "consecutive_failures": v.consecutive_failures,
                    "last_trip_reason": v.last_trip_reason.map(|r| r.as_str()),
                    "half_open_in_seconds": v.half_open_in.map(|d| d.as_secs_f64()),
                })
            }
            None => serde_json::json!({
                "name": u.name,
                "state": "closed",
                "forced": false,
                "consecutive_failures": 0,
                "last_trip_reason": null,
                "half_open_in_seconds": null,
            }),
        })
        .collect();
    let body = serde_json::json!({ "upstreams": upstreams }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn to_full(r: Response<Bytes>) -> Response<Full<Bytes>> {
    r.map(Full::new)
}
