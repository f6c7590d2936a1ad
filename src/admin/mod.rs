//! The admin port: `/metrics`, `/healthz`, `/readyz`, `/circuits`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::error_response;
use crate::telemetry::Telemetry;

/// What the admin endpoints read.
pub struct AdminState {
    pub telemetry: Telemetry,
    /// True once the config is loaded and every listener is bound; false again while draining.
    pub ready: Arc<AtomicBool>,
    pub snapshot: Arc<arc_swap::ArcSwap<crate::proxy::Snapshot>>,
}

pub async fn serve(tcp: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let builder = crate::proxy::listener::server_builder();
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = crate::proxy::listener::stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        "/circuits" => circuits(state),
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
