//! One MCP operation: the checks a `tools/call` gets before it goes (an unlisted name, arguments
//! that break the schema, a definition that moved), how it ended, and its recording.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::time::Instant;

use super::tools::{Arguments, Standing};
use super::{ListenerMcp, McpUpstream, Refusal};
use crate::config::McpAction;
use crate::inspect::mcp::RpcId;
use crate::sli::UpstreamOutcome;
use crate::telemetry::mcp::{no_tool, ErrorType, ToolOutcome};

/// How an operation's response ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Answered(AnswerKind, Instant),
    /// Answered by the sidecar itself (`block`), as this outcome.
    Refused(ToolOutcome, Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AnswerKind {
    Ok,
    ToolError,
    Error { code: i64, unknown_tool: bool },
}

/// One operation: a JSON-RPC request with an id.
#[derive(Debug)]
pub(super) struct Op {
    pub(super) id: RpcId,
    /// `tools/call`: the call's fingerprint for the loop guard (name and canonical arguments).
    pub(super) print: Option<u64>,
    pub(super) method: &'static str,
    /// `tools/call`: the tool's name as sent.
    pub(super) tool: Option<Box<str>>,
    /// `tools/list`: whether it asked for the first page.
    pub(super) list_first: Option<bool>,
    /// The called tool is not in the upstream's last list.
    pub(super) unknown: bool,
    /// The call's arguments break the tool's `inputSchema`.
    pub(super) invalid: bool,
    pub(super) ended: Option<Ended>,
    /// A 2026-07-28 `input_required` result: no end; the agent's retry is a new operation.
    pub(super) suspended: bool,
}

/// What became of a request whose operation got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unanswered {
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
    pub(super) fn of(
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
    pub(super) fn check(
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

    /// The JSON-RPC error code the server answered, if it did.
    pub(super) fn code(&self) -> Option<i64> {
        match self.ended {
            Some(Ended::Answered(AnswerKind::Error { code, .. }, _)) => Some(code),
            _ => None,
        }
    }

    /// Records the operation, ended at its response or as `unanswered` says at `now`: its tool
    /// label, error type and end, when it was recorded.
    pub(super) fn record(
        self,
        lm: &ListenerMcp,
        up: &McpUpstream,
        unanswered: Unanswered,
        received: Instant,
        now: Instant,
    ) -> Option<(Arc<str>, ErrorType, Instant)> {
        if self.suspended || (self.ended.is_none() && unanswered == Unanswered::Unknown) {
            return None;
        }
        let named = ErrorType::Named;
        let (error, outcome, at) = match self.ended {
            Some(Ended::Answered(kind, at)) => match kind {
                AnswerKind::Ok => (ErrorType::None, ToolOutcome::Ok, at),
                AnswerKind::ToolError => (named("tool_error"), ToolOutcome::ToolError, at),
                AnswerKind::Error { code, unknown_tool } => {
                    let o = if unknown_tool {
                        ToolOutcome::UnknownTool
                    } else {
                        ToolOutcome::ProtocolError
                    };
                    (ErrorType::code(code), o, at)
                }
            },
            Some(Ended::Refused(o, at)) => (named(o.as_str()), o, at),
            None => match unanswered {
                Unanswered::Cancelled => (named("cancelled"), ToolOutcome::Ok, now),
                Unanswered::Timeout => (named("timeout"), ToolOutcome::Timeout, now),
                Unanswered::Transport => {
                    (named("transport_error"), ToolOutcome::TransportError, now)
                }
                Unanswered::Unknown => return None,
                Unanswered::Protocol(status) => {
                    let e = status.map_or(named("no_response"), |s| ErrorType::Status(s.as_u16()));
                    (e, ToolOutcome::ProtocolError, now)
                }
            },
        };
        // Unknown to the upstream that answered (a request may have fallen back to another):
        // as its label says.
        let (tool, unknown) = match &self.tool {
            Some(name) => {
                let label = up.book.label(name, lm.max_tools);
                let unknown = super::tools::is_unlisted(&label);
                (label, unknown)
            }
            None => (no_tool(), false),
        };
        let seconds = at.saturating_duration_since(received).as_secs_f64();
        let cancelled = self.ended.is_none() && unanswered == Unanswered::Cancelled;
        let outcome = if unknown && !matches!(self.ended, Some(Ended::Refused(..))) {
            ToolOutcome::UnknownTool
        } else if self.invalid {
            ToolOutcome::InvalidArguments
        } else {
            outcome
        };
        let call = (self.tool.is_some() && !cancelled).then_some(outcome);
        up.metrics
            .operation(self.method, &tool, error, seconds, call);
        Some((tool, error, at))
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
