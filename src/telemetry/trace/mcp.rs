//! MCP operations on a request's trace: a client span per JSON-RPC operation, named
//! `{mcp.method.name} {gen_ai.tool.name}` (or the method alone), a child of the attempt that
//! carried it, with the attributes of the OpenTelemetry MCP semantic conventions.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{IdGenerator, SpanData, SpanEvents, SpanLinks};
use tokio::time::Instant;

use super::RequestTrace;
use crate::telemetry::mcp::ErrorType;

/// Longest `mcp.protocol.version` kept (a date, `2025-11-25`).
const MAX_VERSION: usize = 32;

/// One MCP operation, as its span carries it.
#[derive(Debug, Clone)]
pub struct McpFacts {
    /// `mcp.method.name` (a bounded label value).
    pub method: &'static str,
    /// `gen_ai.tool.name` as the metrics label it (empty: not a tool call).
    pub tool: Arc<str>,
    /// The request's JSON-RPC id, as it was written.
    pub request_id: Box<str>,
    /// `error.type`.
    pub error: ErrorType,
    /// The JSON-RPC error code, when the server answered one.
    pub code: Option<i64>,
    /// The attempt's place in the route's chain.
    pub hop: usize,
    pub start: Instant,
    pub end: Instant,
}

impl RequestTrace {
    /// The MCP protocol version the request named (`MCP-Protocol-Version`).
    pub fn mcp_version(&mut self, version: &str) {
        self.mcp_version = Some(crate::prefix_at_char(version, MAX_VERSION).into());
    }

    /// An MCP operation of the request ended.
    pub fn mcp_operation(&mut self, facts: McpFacts) {
        self.mcp.push(facts);
    }

    /// An operation's client span: a child of the (last) attempt at its hop, else of the
    /// request's span.
    pub(super) fn mcp_span(&self, m: &McpFacts) -> SpanData {
        let parent = self
            .attempts
            .iter()
            .rev()
            .find(|a| a.hop == m.hop)
            .map_or(self.span_id, |a| a.span_id);
        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::new("mcp.method.name", m.method));
        let id = m.request_id.trim_matches('"');
        attrs.push(KeyValue::new("jsonrpc.request.id", id.to_owned()));
        let name = if m.tool.is_empty() {
            Cow::Borrowed(m.method)
        } else {
            attrs.push(KeyValue::new("gen_ai.tool.name", m.tool.to_string()));
            attrs.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            Cow::Owned(format!("{} {}", m.method, m.tool))
        };
        if !m.error.is_none() {
            attrs.push(KeyValue::new("error.type", m.error.text()));
        }
        if let Some(code) = m.code {
            attrs.push(KeyValue::new("rpc.response.status_code", code.to_string()));
        }
        if let Some(v) = &self.mcp_version {
            attrs.push(KeyValue::new("mcp.protocol.version", v.to_string()));
        }
        attrs.push(KeyValue::new(
            "sloguard.upstream",
            self.upstream_name(m.hop),
        ));
        // A client that left is no failure of the operation.
        let failed = !m.error.is_none() && m.error != ErrorType::Named("cancelled");
        SpanData {
            // Made on the export thread, like the spans.
            span_context: self.span_context(self.tracer.ids.new_span_id()),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name,
            start_time: self.wall_time(m.start),
            end_time: self.wall_time(m.end),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if failed {
                Status::error(m.error.text())
            } else {
                Status::Unset
            },
            instrumentation_scope: self.tracer.scope.clone(),
        }
    }
}
