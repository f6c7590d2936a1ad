//! `GET /mcp` (each MCP upstream's tools against their pinned definitions) and
//! `POST /admin/mcp/{upstream}/accept` (pins an upstream's current list, ending its tool-change
//! incident and releasing the tools `block` held).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{to_full, AdminState};
use crate::config::Protocol;
use crate::incident::Incident;
use crate::proxy::error_response;

/// `{"upstreams": [{"name", "tools": [{"name", "pinned_at", "state"}], "last_list_at"}]}`, for
/// every upstream of the config with `protocol: mcp`.
pub(super) fn view(state: &AdminState) -> Response<Full<Bytes>> {
    let snap = state.snapshot.load();
    let upstreams: Vec<serde_json::Value> = snap
        .config
        .upstreams
        .iter()
        .filter(|(_, u)| u.protocol == Protocol::Mcp)
        .map(|(name, _)| state.tools.get(name).view(name))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "upstreams": upstreams }),
    )
}

/// Pins the current list of MCP upstream `name`.
pub(super) fn accept(state: &AdminState, name: &str) -> Response<Full<Bytes>> {
    let snap = state.snapshot.load();
    let is_mcp = snap
        .config
        .upstreams
        .get(name)
        .is_some_and(|u| u.protocol == Protocol::Mcp);
    if !is_mcp {
        return to_full(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no MCP upstream of that name (protocol: mcp)",
        ));
    }
    let book = state.tools.get(name);
    let Some(pending) = book.accept(std::time::SystemTime::now()) else {
        return to_full(error_response(
            StatusCode::CONFLICT,
            "no_tool_list",
            "no complete tools/list of this upstream has been seen yet: nothing to pin",
        ));
    };
    tracing::warn!(
        upstream = name,
        "MCP tool definitions accepted by the admin API"
    );
    if !pending {
        // Nothing had moved: no incident to end.
        return json(StatusCode::OK, book.view(name));
    }
    let severity = crate::proxy::safety::severity(snap.config.incidents.severities.tool_change);
    let summary = format!("the tool definitions of MCP server {name} were accepted and pinned");
    state
        .tools
        .incidents
        .raise(Incident::tool_change(severity, name, false, summary));
    json(StatusCode::OK, book.view(name))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
