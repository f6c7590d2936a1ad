//! The handles of one MCP upstream's metrics: the operation histogram per (method, tool, error
//! type) and the tool-call counter per (tool, outcome), registered on first use from bounded
//! label values (the methods MCP defines, the tool labels the upstream's list allows, the
//! outcomes and error types below), the definition changes, the hallucinated calls and the
//! bodies not read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use metrics::{Counter, Histogram, Label};

use super::{label, Telemetry};
use crate::inspect::Unparsed;
use crate::metric_table::{
    AGENT_TOOL_CALLS_TOTAL, HALLUCINATED_TOOL_CALLS_TOTAL, MCP_OPERATION_DURATION,
    MCP_TOOL_CHANGES_TOTAL, UNPARSED_BODIES_TOTAL,
};

/// How a `tools/call` ended (`agent_tool_calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolOutcome {
    Ok,
    /// The tool answered `isError: true`.
    ToolError,
    /// A JSON-RPC error.
    ProtocolError,
    /// A name the upstream's list does not have, or an error saying so.
    UnknownTool,
    /// Arguments that break the tool's `inputSchema`.
    InvalidArguments,
    Timeout,
    /// Connect error, reset, 5xx, a stream cut before the response.
    TransportError,
}

impl ToolOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolOutcome::Ok => "ok",
            ToolOutcome::ToolError => "tool_error",
            ToolOutcome::ProtocolError => "protocol_error",
            ToolOutcome::UnknownTool => "unknown_tool",
            ToolOutcome::InvalidArguments => "invalid_arguments",
            ToolOutcome::Timeout => "timeout",
            ToolOutcome::TransportError => "transport_error",
        }
    }
}

/// A definition that moved (`sloguard_mcp_tool_changes_total{change}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChange {
    Changed = 0,
    Added = 1,
    Removed = 2,
}

impl ToolChange {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolChange::Changed => "changed",
            ToolChange::Added => "added",
            ToolChange::Removed => "removed",
        }
    }
}

/// The methods of MCP's client requests, as `mcp_method_name` values; any other is `other`.
const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "server/discover",
];

/// A method as a label value.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The JSON-RPC error codes kept as `error_type` values: JSON-RPC's own, and those MCP defines
/// (resource not found, URL elicitation required, connection closed, request timeout).
const CODES: &[i64] = &[
    -32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002, -32042,
];

/// An operation's `error_type`: none, a fixed name, a JSON-RPC code (one of [`CODES`]; any
/// other is `other`: a server choosing codes freely must not multiply the series), or an HTTP
/// status. Hashed and compared without an allocation; its text is made when a series is
/// registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    None,
    Named(&'static str),
    Code(i64),
    Status(u16),
}

impl ErrorType {
    /// A JSON-RPC error code.
    pub fn code(code: i64) -> ErrorType {
        if CODES.contains(&code) {
            ErrorType::Code(code)
        } else {
            ErrorType::Named("other")
        }
    }

    pub fn text(self) -> std::borrow::Cow<'static, str> {
        match self {
            ErrorType::None => "".into(),
            ErrorType::Named(n) => n.into(),
            ErrorType::Code(c) => c.to_string().into(),
            ErrorType::Status(s) => s.to_string().into(),
        }
    }

    pub fn is_none(self) -> bool {
        self == ErrorType::None
    }
}

/// The tool label of an operation that calls no tool.
pub fn no_tool() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
    EMPTY.clone()
}

type OpKey = (&'static str, Arc<str>, ErrorType, Option<ToolOutcome>);

/// A small multiply-rotate hash for the operation series' keys: label values the sidecar bounds
/// (methods, the upstream's listed tools, fixed error types), so no flooding defence is needed,
/// and it costs a fraction of SipHash on every operation.
#[derive(Debug, Default)]
pub struct LabelHasher(u64);

impl std::hash::Hasher for LabelHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl LabelHasher {
    fn add(&mut self, word: u64) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

type OpMap =
    HashMap<OpKey, (Histogram, Option<Counter>), std::hash::BuildHasherDefault<LabelHasher>>;

/// One MCP upstream's handles.
#[derive(Debug)]
pub struct McpMetrics {
    telemetry: Telemetry,
    agent: String,
    upstream: String,
    /// Per series: the operation's histogram and, for a `tools/call`, its outcome's counter.
    operations: RwLock<OpMap>,
    changes: [Counter; 3],
    /// `[unknown_tool, invalid_arguments]`.
    hallucinated: [Counter; 2],
    unparsed: [Counter; Unparsed::COUNT],
}

impl McpMetrics {
    pub fn new(t: &Telemetry, agent: &str, upstream: &str) -> McpMetrics {
        let base = || vec![label("agent", agent), label("upstream", upstream)];
        let with = |name: &'static str, key: &'static str, value: &'static str| {
            let mut labels = base();
            labels.push(Label::from_static_parts(key, value));
            t.counter(name, labels)
        };
        McpMetrics {
            telemetry: t.clone(),
            agent: agent.to_owned(),
            upstream: upstream.to_owned(),
            operations: RwLock::default(),
            changes: [ToolChange::Changed, ToolChange::Added, ToolChange::Removed]
                .map(|c| with(MCP_TOOL_CHANGES_TOTAL, "change", c.as_str())),
            hallucinated: ["unknown_tool", "invalid_arguments"]
                .map(|k| with(HALLUCINATED_TOOL_CALLS_TOTAL, "kind", k)),
            unparsed: Unparsed::ALL.map(|u| with(UNPARSED_BODIES_TOTAL, "reason", u.as_str())),
        }
    }

    fn labels(&self) -> Vec<Label> {
        vec![
            label("agent", &self.agent),
            label("upstream", &self.upstream),
        ]
    }

    /// One operation of `method` (a label value), for tool `tool` (empty: not a call), that took
    /// `seconds` and ended with `error`; a `tools/call` that ended as `call` is counted too. One
    /// lookup finds both handles of a series seen before.
    pub fn operation(
        &self,
        method: &'static str,
        tool: &Arc<str>,
        error: ErrorType,
        seconds: f64,
        call: Option<ToolOutcome>,
    ) {
        let key = (method, tool.clone(), error, call);
        let found = self
            .operations
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let (histogram, counter) = found.unwrap_or_else(|| {
            let mut labels = self.labels();
            labels.push(Label::new("gen_ai_tool_name", tool.to_string()));
            let counter = call.map(|outcome| {
                let mut labels = labels.clone();
                labels.push(Label::from_static_parts("outcome", outcome.as_str()));
                self.telemetry.counter(AGENT_TOOL_CALLS_TOTAL, labels)
            });
            labels.push(Label::from_static_parts("mcp_method_name", method));
            labels.push(Label::new("error_type", error.text()));
            let handles = (
                self.telemetry.histogram(MCP_OPERATION_DURATION, labels),
                counter,
            );
            if let Ok(mut m) = self.operations.write() {
                m.insert(key, handles.clone());
            }
            handles
        });
        histogram.record(seconds);
        if let Some(c) = counter {
            c.increment(1);
        }
        if let Some(o @ (ToolOutcome::UnknownTool | ToolOutcome::InvalidArguments)) = call {
            let i = usize::from(o == ToolOutcome::InvalidArguments);
            self.hallucinated[i].increment(1);
        }
    }

    pub fn tool_changed(&self, change: ToolChange, n: u64) {
        self.changes[change as usize].increment(n);
    }

    pub fn unparsed(&self, why: Unparsed) {
        self.unparsed[why as usize].increment(1);
    }
}
