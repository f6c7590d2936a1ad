//! MCP tool calls on the `mcp` role: each JSON-RPC request the agent POSTs is an operation,
//! ended by the response with its id — in a JSON body, or inside an SSE stream after the
//! progress notifications before it — and counted per method and tool with its outcome
//! (`mcp_client_operation_duration_seconds`, `agent_tool_calls_total`). The request body is read
//! ahead (it is small, and a call may have to be answered without the server); the response is
//! read as it passes ([`reader`]). A `tools/list` result feeds the upstream's [`tools::ToolBook`]:
//! the label values it allows, the schemas arguments are checked against, and the pinned
//! definitions whose changes are counted and raised as an incident. Bytes pass unchanged unless
//! `block` says otherwise.

mod reader;
pub(crate) mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::budget::BodyBudget;
use crate::config::{Config, ListenerConfig, McpAction, Role};
use crate::incident::{Incident, Incidents, Severity};
use crate::inspect::mcp::{self as rpc, Answer, RpcId, ServerMessage};
use crate::inspect::Unparsed;
use crate::sli::UpstreamOutcome;
use crate::telemetry::mcp::{code_label, method_label, McpMetrics, ToolChange, ToolOutcome};
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;
use reader::Reader;
use tools::{Arguments, Standing, ToolBook};

/// The tool books of every MCP upstream, by name: kept across reloads (a reload must not re-pin
/// what a server changed); and where their changes are raised.
#[derive(Debug)]
pub struct ToolBooks {
    books: Mutex<HashMap<String, Arc<ToolBook>>>,
    pub(crate) incidents: Incidents,
}

impl ToolBooks {
    pub(crate) fn new(incidents: Incidents) -> ToolBooks {
        ToolBooks {
            books: Mutex::default(),
            incidents,
        }
    }

    pub(crate) fn get(&self, upstream: &str) -> Arc<ToolBook> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        books.entry(upstream.to_owned()).or_default().clone()
    }
}

/// One upstream of an `mcp` listener's route.
#[derive(Debug)]
struct McpUpstream {
    name: String,
    book: Arc<ToolBook>,
    metrics: McpMetrics,
}

/// What an `mcp` listener needs: its route's upstreams (indexed like the chain) and the section.
#[derive(Debug)]
pub(crate) struct ListenerMcp {
    upstreams: Vec<McpUpstream>,
    tool_changes: McpAction,
    validate: McpAction,
    max_tools: usize,
    incidents: Incidents,
    severity: Severity,
}

impl ListenerMcp {
    /// For listener `l` with `chain` its route's upstreams; `None` unless it is an `mcp` listener.
    pub(crate) fn new(
        config: &Config,
        l: &ListenerConfig,
        chain: &[Arc<Upstream>],
        books: &ToolBooks,
        t: &Telemetry,
    ) -> Option<ListenerMcp> {
        if l.role != Role::Mcp {
            return None;
        }
        let upstreams = chain
            .iter()
            .map(|u| McpUpstream {
                name: u.name.clone(),
                book: books.get(&u.name),
                metrics: McpMetrics::new(t, &config.agent, &u.name),
            })
            .collect();
        let severity = crate::proxy::safety::severity(config.incidents.severities.tool_change);
        Some(ListenerMcp {
            upstreams,
            tool_changes: config.mcp.tool_changes,
            validate: config.mcp.validate_arguments,
            max_tools: config.mcp.max_tools,
            incidents: books.incidents.clone(),
            severity,
        })
    }

    fn upstream(&self, hop: usize) -> &McpUpstream {
        &self.upstreams[hop.min(self.upstreams.len() - 1)]
    }
}

/// How an operation's response ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Answered(AnswerKind, Instant),
    /// Answered by the sidecar itself (`block`), as this outcome.
    Refused(ToolOutcome, Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerKind {
    Ok,
    ToolError,
    Error { code: i64, unknown_tool: bool },
}

/// One operation: a JSON-RPC request with an id.
#[derive(Debug)]
struct Op {
    id: RpcId,
    method: &'static str,
    /// `tools/call`: the tool's name as sent.
    tool: Option<Box<str>>,
    /// `tools/list`: whether it asked for the first page.
    list_first: Option<bool>,
    /// The called tool is not in the upstream's last list.
    unknown: bool,
    /// The call's arguments break the tool's `inputSchema`.
    invalid: bool,
    ended: Option<Ended>,
    /// A 2026-07-28 `input_required` result: no end; the agent's retry is a new operation.
    suspended: bool,
}

/// What the sidecar answers itself instead of the server (`block`).
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The JSON-RPC response, a `CallToolResult` with `isError: true`.
    pub body: Bytes,
    /// `x-sloguard-error`.
    pub error: &'static str,
}

/// The request's operations (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct McpState {
    ops: Vec<Op>,
    reader: Option<Reader>,
    /// The response's status, once a head came.
    status: Option<StatusCode>,
    received: Option<Instant>,
    /// What an operation without a response ends as, when the sidecar knows better than the
    /// status: its own error answered, or a response it could not read (no outcome then).
    unanswered: Option<Unanswered>,
}

impl McpState {
    /// The request arrived with `body` (`Err`: why it could not be read); `hop` is the upstream
    /// it will go to first. Under `block`, a call the sidecar answers itself is returned.
    pub(crate) fn request(
        &mut self,
        lm: Option<&ListenerMcp>,
        body: Result<&[u8], Unparsed>,
        received: Instant,
    ) -> Option<Refusal> {
        let lm = lm?;
        let up = lm.upstream(0);
        let requests = match body.map(rpc::parse_requests) {
            Ok(Some(r)) => r,
            Ok(None) => {
                up.metrics.unparsed(Unparsed::RequestInvalidJson);
                return None;
            }
            Err(why) => {
                up.metrics.unparsed(why);
                return None;
            }
        };
        self.received = Some(received);
        // A batch (even of one) is counted, never answered by the sidecar: its answer would have
        // to be a batch too.
        let batch = body.is_ok_and(|b| b.trim_ascii_start().first() == Some(&b'['));
        let single = requests.len() == 1 && !batch;
        for r in requests {
            let Some(id) = r.id else { continue };
            let mut op = Op {
                id,
                method: method_label(&r.method),
                tool: r.tool,
                list_first: (&*r.method == "tools/list").then_some(!r.cursor),
                unknown: false,
                invalid: false,
                ended: None,
                suspended: false,
            };
            let refusal = op.check(lm, up, r.arguments.as_deref(), single, received);
            self.ops.push(op);
            if refusal.is_some() {
                return refusal;
            }
        }
        None
    }

    /// Whether the request is an MCP operation the sidecar reads the response of.
    pub(crate) fn is_operation(&self) -> bool {
        !self.ops.is_empty()
    }

    /// The response head from the upstream at `hop`.
    pub(crate) fn head(
        &mut self,
        lm: Option<&ListenerMcp>,
        hop: usize,
        status: StatusCode,
        headers: &HeaderMap,
        budget: &BodyBudget,
    ) {
        let Some(lm) = lm.filter(|_| self.is_operation()) else {
            return;
        };
        self.status = Some(status);
        match Reader::new(headers, budget) {
            Ok(Some(reader)) => self.reader = Some(reader),
            // A success of another type says nothing the sidecar can read.
            Ok(None) if status.is_success() => self.unanswered = Some(Unanswered::Unknown),
            Ok(None) => {}
            Err(why) => {
                lm.upstream(hop).metrics.unparsed(why);
                self.unanswered = Some(Unanswered::Unknown);
            }
        }
    }

    /// The sidecar answered the request itself with `err`'s `outcome` (`blocked`: safety held
    /// back the server's answer): what its operations end as.
    pub(crate) fn local_answer(&mut self, outcome: Option<UpstreamOutcome>, blocked: bool) {
        self.unanswered = Some(match outcome {
            _ if blocked => Unanswered::Unknown,
            Some(UpstreamOutcome::Timeout) => Unanswered::Timeout,
            _ => Unanswered::Transport,
        });
    }

    /// A chunk of the response from the upstream at `hop` passed at `now`.
    pub(crate) fn data(
        &mut self,
        lm: Option<&ListenerMcp>,
        hop: usize,
        chunk: &Bytes,
        now: Instant,
    ) {
        let (Some(lm), Some(reader)) = (lm, self.reader.as_mut()) else {
            return;
        };
        let up = lm.upstream(hop);
        let ops = &mut self.ops;
        let mut read_all = true;
        let unread = reader.feed(chunk, &mut |message| {
            read_all &= read(lm, up, ops, message, now);
        });
        if let Some(why) = unread {
            up.metrics.unparsed(why);
        }
        if unread.is_some() || !read_all {
            self.unanswered = Some(Unanswered::Unknown);
        }
    }

    /// The request is counted: each operation ends with what it was answered, or with what became
    /// of the request (`complete`: the body ended cleanly; `outcome`: the upstream attempt's).
    pub(crate) fn end(
        &mut self,
        lm: Option<&ListenerMcp>,
        hop: usize,
        complete: bool,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
    ) {
        let (Some(lm), Some(received)) = (lm, self.received) else {
            return;
        };
        let up = lm.upstream(hop);
        if let Some(reader) = self.reader.take() {
            // A stream whose events carry ids may be resumed on a GET (2025-11-25): a response not
            // in it may come there, unmeasured.
            if complete && reader.resumable() {
                self.unanswered.get_or_insert(Unanswered::Unknown);
            }
            // What a cut body holds is no message.
            let ops = &mut self.ops;
            let mut read_all = true;
            if complete {
                reader.finish(&mut |message| read_all &= read(lm, up, ops, message, now));
            }
            if !read_all {
                self.unanswered = Some(Unanswered::Unknown);
            }
        }
        let unanswered = match self.unanswered {
            Some(u) => u,
            None => Unanswered::of(complete, self.status, outcome),
        };
        for op in self.ops.drain(..) {
            op.record(lm, up, unanswered, received, now);
        }
    }
}

/// Reads one JSON-RPC message (or batch) of the response: the operations it answers end at `now`.
/// `false` when it is not JSON-RPC.
fn read(lm: &ListenerMcp, up: &McpUpstream, ops: &mut [Op], message: &[u8], now: Instant) -> bool {
    let Some(messages) = rpc::parse_server_messages(message) else {
        up.metrics.unparsed(Unparsed::ResponseInvalidJson);
        return false;
    };
    for m in messages {
        let ServerMessage::Response {
            id: Some(id),
            answer,
        } = m
        else {
            continue;
        };
        let Some(op) = ops.iter_mut().find(|o| o.id == id && o.ended.is_none()) else {
            continue;
        };
        let kind = match answer {
            Answer::InputRequired => {
                op.suspended = true;
                continue;
            }
            Answer::Ok => AnswerKind::Ok,
            Answer::ToolError => AnswerKind::ToolError,
            Answer::Error { code, unknown_tool } => AnswerKind::Error { code, unknown_tool },
        };
        op.ended = Some(Ended::Answered(kind, now));
        if let (Some(first), AnswerKind::Ok) = (op.list_first, kind) {
            listed(lm, up, first, message, &op.id);
        }
    }
    true
}

/// A `tools/list` result: the upstream's book takes the page; changes against the pin are counted
/// and raised.
fn listed(lm: &ListenerMcp, up: &McpUpstream, first: bool, message: &[u8], id: &RpcId) {
    let Some(page) = rpc::result_of(message, id).and_then(|r| rpc::parse_tool_list(r.as_bytes()))
    else {
        return;
    };
    if lm.tool_changes == McpAction::Off {
        // Labels and schemas still come from the list; nothing is compared.
        up.book.page(first, page, lm.max_tools, SystemTime::now());
        return;
    }
    let changes = up.book.page(first, page, lm.max_tools, SystemTime::now());
    if changes.is_empty() {
        return;
    }
    for change in [ToolChange::Changed, ToolChange::Added, ToolChange::Removed] {
        let n = changes.iter().filter(|(_, c)| *c == change).count() as u64;
        if n > 0 {
            up.metrics.tool_changed(change, n);
        }
    }
    let names: Vec<String> = changes
        .iter()
        .take(8)
        .map(|(n, c)| format!("{} ({})", crate::prefix_at_char(n, 64), c.as_str()))
        .collect();
    let summary = format!(
        "MCP server {} changed {} pinned tool definition(s): {}{}",
        up.name,
        changes.len(),
        names.join(", "),
        if changes.len() > 8 { ", ..." } else { "" }
    );
    tracing::warn!(upstream = %up.name, changes = changes.len(), "{summary}");
    lm.incidents
        .raise(Incident::tool_change(lm.severity, &up.name, true, summary));
}

/// What became of a request whose operation got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// The client left before the response: no outcome.
    Cancelled,
    Timeout,
    Transport,
    /// An HTTP error status without a JSON-RPC error, or a body without the response.
    Protocol(Option<StatusCode>),
    /// The response could not be read (or safety withheld it): no outcome.
    Unknown,
}

impl Unanswered {
    fn of(
        complete: bool,
        status: Option<StatusCode>,
        outcome: Option<UpstreamOutcome>,
    ) -> Unanswered {
        match outcome {
            Some(UpstreamOutcome::Timeout) => Unanswered::Timeout,
            Some(
                UpstreamOutcome::ConnectError
                | UpstreamOutcome::Reset
                | UpstreamOutcome::ServerError,
            ) => Unanswered::Transport,
            _ if !complete && status.is_some_and(|s| s.is_success()) => Unanswered::Cancelled,
            _ if !complete && status.is_none() => Unanswered::Cancelled,
            _ => Unanswered::Protocol(status.filter(|s| !s.is_success())),
        }
    }
}

impl Op {
    /// A `tools/call`'s checks against the upstream's book: an unlisted name, arguments that
    /// break the schema, a tool whose definition moved. Under `block` (for a request of one
    /// message), what the sidecar answers instead.
    fn check(
        &mut self,
        lm: &ListenerMcp,
        up: &McpUpstream,
        arguments: Option<&str>,
        single: bool,
        now: Instant,
    ) -> Option<Refusal> {
        let name = self.tool.as_deref()?;
        self.unknown = up.book.lists(name) == Some(false);
        if lm.tool_changes == McpAction::Block && single {
            if let Some(s @ (Standing::Changed | Standing::Added)) = up.book.standing(name) {
                let why = format!(
                    "The definition of tool {name:?} changed on the server since it was pinned ({}); calls to it are held until an operator accepts the new definition.",
                    if s == Standing::Added { "added" } else { "changed" }
                );
                self.ended = Some(Ended::Refused(ToolOutcome::ToolError, now));
                return Some(refusal(&self.id, &why, "tool_changed"));
            }
        }
        if lm.validate == McpAction::Off || self.unknown {
            return None;
        }
        let Arguments::Invalid { path, message } = up.book.check(name, arguments) else {
            return None;
        };
        self.invalid = true;
        if lm.validate != McpAction::Block || !single {
            return None;
        }
        let at = if path.is_empty() { "/" } else { &path };
        let why = format!(
            "Invalid arguments for tool {name:?} at {at}: {message}. Call it again with arguments that follow its inputSchema."
        );
        self.ended = Some(Ended::Refused(ToolOutcome::InvalidArguments, now));
        Some(refusal(&self.id, &why, "invalid_arguments"))
    }

    /// Records the operation, ended at its response or as `unanswered` says at `now`.
    fn record(
        self,
        lm: &ListenerMcp,
        up: &McpUpstream,
        unanswered: Unanswered,
        received: Instant,
        now: Instant,
    ) {
        if self.suspended || (self.ended.is_none() && unanswered == Unanswered::Unknown) {
            return;
        }
        let (error, outcome, at): (Arc<str>, ToolOutcome, Instant) = match self.ended {
            Some(Ended::Answered(kind, at)) => match kind {
                AnswerKind::Ok => ("".into(), ToolOutcome::Ok, at),
                AnswerKind::ToolError => ("tool_error".into(), ToolOutcome::ToolError, at),
                AnswerKind::Error { code, unknown_tool } => {
                    let o = if unknown_tool {
                        ToolOutcome::UnknownTool
                    } else {
                        ToolOutcome::ProtocolError
                    };
                    (code_label(code), o, at)
                }
            },
            Some(Ended::Refused(o, at)) => (o.as_str().into(), o, at),
            None => match unanswered {
                Unanswered::Cancelled => ("cancelled".into(), ToolOutcome::Ok, now),
                Unanswered::Timeout => ("timeout".into(), ToolOutcome::Timeout, now),
                Unanswered::Transport => {
                    ("transport_error".into(), ToolOutcome::TransportError, now)
                }
                Unanswered::Unknown => return,
                Unanswered::Protocol(status) => {
                    let e = status.map_or("no_response".into(), |s| s.as_str().into());
                    (e, ToolOutcome::ProtocolError, now)
                }
            },
        };
        let tool: Arc<str> = match &self.tool {
            Some(name) => up.book.label(name, lm.max_tools),
            None => "".into(),
        };
        let seconds = at.saturating_duration_since(received).as_secs_f64();
        up.metrics.operation(self.method, &tool, &error, seconds);
        let cancelled = self.ended.is_none() && unanswered == Unanswered::Cancelled;
        if self.tool.is_none() || cancelled {
            return;
        }
        let outcome = if self.unknown && !matches!(self.ended, Some(Ended::Refused(..))) {
            ToolOutcome::UnknownTool
        } else if self.invalid {
            ToolOutcome::InvalidArguments
        } else {
            outcome
        };
        up.metrics.tool_call(&tool, outcome);
    }
}

/// The JSON-RPC response the sidecar answers a call with: a tool result with `isError: true`
/// whose text says why, so that the model can correct itself.
fn refusal(id: &RpcId, why: &str, error: &'static str) -> Refusal {
    let result = serde_json::json!({
        "content": [{"type": "text", "text": why}],
        "isError": true,
    });
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id.as_json(),
        result
    );
    Refusal {
        body: Bytes::from(body),
        error,
    }
}
