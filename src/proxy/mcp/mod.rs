//! MCP tool calls on the `mcp` role: each JSON-RPC request the agent POSTs is an operation,
//! ended by the response with its id — in a JSON body, or inside an SSE stream after the
//! progress notifications before it — and counted per method and tool with its outcome
//! (`mcp_client_operation_duration_seconds`, `agent_tool_calls_total`). The request body is read
//! ahead (it is small, and a call may have to be answered without the server); the response is
//! read as it passes ([`reader`]). A `tools/list` result feeds the upstream's [`tools::ToolBook`]:
//! the label values it allows, the schemas arguments are checked against, and the pinned
//! definitions whose changes are counted and raised as an incident. Bytes pass unchanged unless
//! `block` says otherwise.

mod hold;
mod op;
mod reader;
pub(crate) mod sessions;
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
use crate::inspect::canon::{fingerprint, Arguments};
use crate::inspect::mcp::{self as rpc, Answer, RpcId, ServerMessage};
use crate::inspect::Unparsed;
use crate::sli::UpstreamOutcome;
use crate::telemetry::mcp::{method_label, McpMetrics, ToolChange};
use crate::telemetry::trace::{McpFacts, RequestTrace};
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;
use op::{AnswerKind, Ended, Op, Unanswered};
use reader::Reader;
use tools::ToolBook;

/// The tool books of every MCP upstream, by name: kept across reloads (a reload must not re-pin
/// what a server changed); and where their changes are raised.
#[derive(Debug)]
pub struct ToolBooks {
    books: Mutex<HashMap<String, Arc<ToolBook>>>,
    pub(crate) incidents: Incidents,
    /// Which upstream each MCP session lives on.
    pub(crate) sessions: sessions::Sessions,
}

impl ToolBooks {
    pub(crate) fn new(incidents: Incidents) -> ToolBooks {
        ToolBooks {
            books: Mutex::default(),
            incidents,
            sessions: sessions::Sessions::default(),
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
    books: Arc<ToolBooks>,
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
        books: &Arc<ToolBooks>,
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
            books: books.clone(),
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

    /// A request of an MCP session (these headers carry `Mcp-Session-Id`): the place in the chain
    /// of the upstream the session lives on, the first for a session not seen made. `None` for
    /// a request of no session.
    pub(crate) fn session_hop(&self, headers: &HeaderMap) -> Option<usize> {
        let session = sessions::session_of(headers)?;
        let at = |name: &str| self.upstreams.iter().position(|u| u.name == name);
        Some(self.books.sessions.upstream(session, at).unwrap_or(0))
    }
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
    /// The response is read whole before it goes (a `tools/list` under `tool_changes: block`),
    /// so that a changed tool can be taken out of it ([`hold`]).
    whole: Option<hold::WholeKind>,
    /// What becomes of the response's lists once it was read whole.
    rewrites: Vec<Rewrite>,
    /// The request's `MCP-Protocol-Version`, for its spans.
    version: Option<http::HeaderValue>,
}

use hold::Rewrite;

impl McpState {
    /// The request arrived with `body` (`Err`: why it could not be read), going first to the
    /// upstream at `first`; `loops`: the loop guard counts its tool calls. Under `block`, a call
    /// the sidecar answers itself is returned.
    pub(crate) fn request(
        &mut self,
        lm: Option<&ListenerMcp>,
        headers: &HeaderMap,
        body: Result<&[u8], Unparsed>,
        received: Instant,
        (first, loops): (usize, bool),
    ) -> Option<Refusal> {
        let lm = lm?;
        static VERSION: http::HeaderName = http::HeaderName::from_static("mcp-protocol-version");
        self.version = headers.get(&VERSION).cloned();
        // The guards judge by the list of the upstream the request goes to first.
        let up = lm.upstream(first);
        let body = match body {
            Ok(body) => body,
            Err(why) => {
                up.metrics.unparsed(why);
                return None;
            }
        };
        self.received = Some(received);
        // A batch (even of one) is counted, never answered by the sidecar: its answer would have
        // to be a batch too.
        let single = body.trim_ascii_start().first() != Some(&b'[');
        let (ops, mut refusal) = (&mut self.ops, None);
        let parsed = rpc::each_request(body, |r| {
            let Some(id) = r.rpc_id().filter(|_| refusal.is_none()) else {
                return;
            };
            // The loop guard's fingerprint, only when it counts tool calls.
            let print = r.tool.as_deref().filter(|_| loops).map(|name| {
                let args = r
                    .arguments
                    .map_or(Arguments::Absent, |a| Arguments::Json(a.as_bytes()));
                fingerprint(name, args).hash
            });
            let mut op = Op {
                id,
                print,
                method: method_label(&r.method),
                tool: r.tool.as_deref().map(Box::from),
                list_first: (&*r.method == "tools/list").then_some(!r.cursor),
                unknown: false,
                invalid: false,
                ended: None,
                suspended: false,
            };
            refusal = op.check(lm, up, r.arguments, single, received);
            ops.push(op);
        });
        if !parsed {
            up.metrics.unparsed(Unparsed::RequestInvalidJson);
        }
        refusal
    }

    /// The request's `tools/call`s as one set of calls for the loop guard (name and canonical
    /// arguments; `Some(None)`: one cannot be known); `None` when it made none.
    pub(crate) fn tool_calls(&self) -> Option<Option<u64>> {
        let calls = self.ops.iter().filter(|o| o.tool.is_some());
        calls.clone().next()?;
        Some(crate::inspect::canon::set_of(calls.map(|o| o.print)))
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
        let Some(lm) = lm else {
            return;
        };
        // The upstream that answers with a session id holds that session.
        if let Some(session) = sessions::session_of(headers).filter(|_| status.is_success()) {
            lm.books.sessions.made(session, &lm.upstream(hop).name);
        }
        if !self.is_operation() {
            return;
        }
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
        // What the upstream's body held is not what the agent got.
        self.reader = None;
        self.rewrites.clear();
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
        let (ops, rewrites) = (&mut self.ops, self.whole.map(|_| &mut self.rewrites));
        let mut rewrites = rewrites;
        let mut read_all = true;
        let unread = reader.feed(chunk, &mut |message| {
            read_all &= read(lm, up, ops, message, now, rewrites.as_deref_mut());
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
    #[allow(
        clippy::too_many_arguments,
        reason = "the request's end, as the context has it"
    )]
    pub(crate) fn end(
        &mut self,
        lm: Option<&ListenerMcp>,
        hop: usize,
        complete: bool,
        outcome: Option<UpstreamOutcome>,
        now: Instant,
        mut trace: Option<&mut RequestTrace>,
    ) {
        let (Some(lm), Some(received)) = (lm, self.received) else {
            return;
        };
        let up = lm.upstream(hop);
        self.finish_reading(lm, up, complete, now);
        let unanswered = match self.unanswered {
            Some(u) => u,
            None => Unanswered::of(complete, self.status, outcome),
        };
        if let (Some(t), Some(v)) = (trace.as_deref_mut(), &self.version) {
            t.mcp_version(v.to_str().unwrap_or(""));
        }
        for op in self.ops.drain(..) {
            // The span's facts only for a traced request: they cost allocations.
            let traced = trace
                .is_some()
                .then(|| (op.method, op.id.as_json().into(), op.code()));
            let recorded = op.record(lm, up, unanswered, received, now);
            if let (Some(t), Some((method, request_id, code)), Some((tool, error, end))) =
                (trace.as_deref_mut(), traced, recorded)
            {
                let (start, hop) = (received, hop);
                t.mcp_operation(McpFacts {
                    method,
                    tool,
                    request_id,
                    error,
                    code,
                    hop,
                    start,
                    end,
                });
            }
        }
    }
}

impl McpState {
    /// The response's body ended (`complete`: cleanly): what the reader still holds is read.
    fn finish_reading(&mut self, lm: &ListenerMcp, up: &McpUpstream, complete: bool, now: Instant) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        // A stream whose events carry ids may be resumed on a GET (2025-11-25): a response not
        // in it may come there, unmeasured.
        if complete && reader.resumable() {
            self.unanswered.get_or_insert(Unanswered::Unknown);
        }
        // What a cut body holds is no message.
        let ops = &mut self.ops;
        let mut rewrites = self.whole.map(|_| &mut self.rewrites);
        let mut read_all = true;
        if complete {
            reader.finish(&mut |message| {
                read_all &= read(lm, up, ops, message, now, rewrites.as_deref_mut());
            });
        }
        if !read_all {
            self.unanswered = Some(Unanswered::Unknown);
        }
    }
}

/// Reads one JSON-RPC message (or batch) of the response: the operations it answers end at `now`.
/// `false` when it is not JSON-RPC. `rewrites`: the response is read whole, and a list with
/// changed tools gets its rewrite there.
fn read(
    lm: &ListenerMcp,
    up: &McpUpstream,
    ops: &mut [Op],
    message: &[u8],
    now: Instant,
    mut rewrites: Option<&mut Vec<Rewrite>>,
) -> bool {
    let parsed = rpc::each_server_message(message, |m| {
        let ServerMessage::Response {
            id: Some(id),
            answer,
        } = m
        else {
            return;
        };
        let Some(op) = ops
            .iter_mut()
            .find(|o| o.ended.is_none() && o.id.matches(&id))
        else {
            return;
        };
        let kind = match answer {
            Answer::InputRequired => {
                op.suspended = true;
                return;
            }
            Answer::Ok => AnswerKind::Ok,
            Answer::ToolError => AnswerKind::ToolError,
            Answer::Error { code, unknown_tool } => AnswerKind::Error { code, unknown_tool },
        };
        op.ended = Some(Ended::Answered(kind, now));
        if let (Some(first), AnswerKind::Ok) = (op.list_first, kind) {
            let checked = listed(lm, up, first, message, &op.id, rewrites.is_some());
            if let (Some(r), Some(rewrite)) = (rewrites.as_deref_mut(), checked) {
                r.push(rewrite);
            }
        }
    });
    if !parsed {
        up.metrics.unparsed(Unparsed::ResponseInvalidJson);
    }
    parsed
}

/// A `tools/list` result: the upstream's book takes the page; changes against the pin are counted
/// and raised. `hold` (`block`, the response read whole): what becomes of the message — only its
/// tools whose definitions are the pinned ones, or refused when its list cannot be read.
fn listed(
    lm: &ListenerMcp,
    up: &McpUpstream,
    first: bool,
    message: &[u8],
    id: &RpcId,
    hold: bool,
) -> Option<Rewrite> {
    let page = rpc::result_of(message, id).and_then(|r| rpc::parse_tool_list(r.as_bytes()));
    let Some(page) = page else {
        return hold.then(|| Rewrite::Refuse(id.clone()));
    };
    if lm.tool_changes == McpAction::Off {
        // Labels and schemas still come from the list; nothing is compared.
        up.book.page(first, page, lm.max_tools, SystemTime::now());
        return None;
    }
    let changes = up.book.page(first, page, lm.max_tools, SystemTime::now());
    // What the agent may see: only definitions that are the pinned ones (none before a pin).
    let rewrite = hold.then(|| hold::checked(message, id, &up.book)).flatten();
    if changes.is_empty() {
        return rewrite;
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
    rewrite
}
