//! Under `tool_changes: block`, a `tools/list` answer is held until it was read whole, and the
//! agent gets only the tools whose definitions are the pinned ones (an allow-list: a tool that
//! cannot be read is not let through either). The rest of the answer keeps its bytes: a JSON
//! body gets its list rewritten in place; an SSE stream is sent again event by event with the
//! response's data replaced. A list that cannot be checked — not JSON-RPC, not a list, too large
//! — is refused: the agent gets a JSON-RPC error in its place. A stream is read only until every
//! operation of the request has its answer (a server need not close it).

use bytes::Bytes;
use tokio::time::Instant;

use super::op::Ended;
use super::tools::ToolBook;
use super::{read, ListenerMcp, McpState, Unanswered};
use crate::config::McpAction;
use crate::inspect::mcp::{self as rpc, Filtered, RpcId};
use crate::inspect::{SseItem, SseParser, Unparsed, MAX_INSPECTED_BODY};
use crate::telemetry::mcp::ToolOutcome;

/// How the held answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WholeKind {
    Json,
    Sse,
}

/// What becomes of a list in the held answer.
#[derive(Debug)]
pub(crate) enum Rewrite {
    /// A message (its JSON text, as sent) and what the agent gets instead.
    Replace(Box<[u8]>, Vec<u8>),
    /// The list of the request with this id could not be checked.
    Refuse(RpcId),
}

/// The list response to `id` in `message`, checked against `book`'s pins: `None` when it goes
/// as it is.
pub(super) fn checked(message: &[u8], id: &RpcId, book: &ToolBook) -> Option<Rewrite> {
    match rpc::filter_tools(message, id, &|t| book.is_pinned(t)) {
        Filtered::Unchanged => None,
        Filtered::Changed(new) => Some(Rewrite::Replace(message.into(), new)),
        Filtered::Unreadable => Some(Rewrite::Refuse(id.clone())),
    }
}

impl McpState {
    /// Whether the response must be read whole before it goes: a readable `tools/list` answer
    /// under `tool_changes: block` ([`McpState::rewrite`]).
    pub(crate) fn reads_whole(&mut self, lm: Option<&ListenerMcp>) -> bool {
        let block = lm.is_some_and(|lm| lm.tool_changes == McpAction::Block);
        if !block || !self.ops.iter().any(|o| o.list_first.is_some()) {
            return false;
        }
        self.whole = match &self.reader {
            // Read from the body as it was kept whole: no second copy.
            Some(super::reader::Reader::Json(_)) => {
                self.reader = None;
                Some(WholeKind::Json)
            }
            Some(super::reader::Reader::Sse(..)) => Some(WholeKind::Sse),
            None => None,
        };
        self.whole.is_some()
    }

    /// Whether the answer is held to be read whole.
    pub(crate) fn held_whole(&self) -> bool {
        self.whole.is_some()
    }

    /// The answer held whole is too large to be checked: counted as not read (its lists are
    /// refused, [`McpState::rewrite`]).
    pub(crate) fn too_large(&mut self, lm: Option<&ListenerMcp>, hop: usize) {
        if let (Some(lm), Some(_)) = (lm, self.whole) {
            lm.upstream(hop)
                .metrics
                .unparsed(Unparsed::ResponseTooLarge);
            self.reader = None;
        }
    }

    /// A held stream has every operation's answer: the rest need not be waited for.
    pub(crate) fn read_enough(&self) -> bool {
        self.whole == Some(WholeKind::Sse)
            && self.ops.iter().all(|o| o.ended.is_some() || o.suspended)
    }

    /// The response from the upstream at `hop`, read whole (`body`, maybe cut short by
    /// [`McpState::read_enough`] or empty when too large) at `now`, as the agent gets it.
    pub(crate) fn rewrite(
        &mut self,
        lm: Option<&ListenerMcp>,
        hop: usize,
        mut body: Bytes,
        now: Instant,
    ) -> Bytes {
        let (Some(lm), Some(kind)) = (lm, self.whole) else {
            return body;
        };
        let up = lm.upstream(hop);
        match kind {
            WholeKind::Json if body.is_empty() => {}
            WholeKind::Json => {
                let ops = &mut self.ops;
                if !read(lm, up, ops, &body, now, Some(&mut self.rewrites)) {
                    self.unanswered = Some(Unanswered::Unknown);
                }
            }
            WholeKind::Sse => self.finish_reading(lm, up, true, now),
        }
        let sse = kind == WholeKind::Sse;
        let mut refuse: Vec<RpcId> = Vec::new();
        let mut replace: Vec<(Box<[u8]>, Vec<u8>)> = Vec::new();
        for r in self.rewrites.drain(..) {
            match r {
                Rewrite::Replace(sent, new) => replace.push((sent, new)),
                Rewrite::Refuse(id) => refuse.push(id),
            }
        }
        // A list with no answer read is not let through unchecked.
        let unread = self
            .ops
            .iter()
            .filter(|o| o.list_first.is_some() && o.ended.is_none() && !o.suspended);
        refuse.extend(unread.map(|o| o.id.clone()));
        if let Some(id) = refuse.first() {
            for op in self.ops.iter_mut().filter(|o| refuse.contains(&o.id)) {
                op.ended = Some(Ended::Refused(ToolOutcome::ProtocolError, now));
            }
            return refusal(id, sse);
        }
        match (kind, replace.pop()) {
            (_, None) => {}
            (WholeKind::Json, Some((_, new))) => body = Bytes::from(new),
            (WholeKind::Sse, Some(last)) => {
                replace.push(last);
                body = resend(&body, &replace);
            }
        }
        body
    }
}

/// An SSE body sent again event by event (id, type, retry and data), each event whose data is
/// a replaced message carrying its replacement. Comments are not sent again.
fn resend(body: &[u8], replace: &[(Box<[u8]>, Vec<u8>)]) -> Bytes {
    use std::io::Write;
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut parser = SseParser::new(MAX_INSPECTED_BODY);
    let mut last_id = String::new();
    parser.feed(body, &mut |item| {
        let SseItem::Event(e) = item else {
            return;
        };
        if e.id != last_id {
            let _ = writeln!(out, "id: {}", e.id);
            last_id = e.id.to_owned();
        }
        if !e.event.is_empty() {
            let _ = writeln!(out, "event: {}", e.event);
        }
        if let Some(retry) = e.retry {
            let _ = writeln!(out, "retry: {retry}");
        }
        let data = replace
            .iter()
            .find(|(sent, _)| **sent == *e.data)
            .map_or(e.data, |(_, new)| new.as_slice());
        for line in data.split(|b| *b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
    });
    parser.finish();
    Bytes::from(out)
}

/// What the agent gets in place of a list that could not be checked: a JSON-RPC error for its
/// request (as an SSE event, for a stream).
fn refusal(id: &RpcId, sse: bool) -> Bytes {
    let message = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32603,"message":"sloguard: the MCP server's tool list could not be checked against the pinned definitions (tool_changes: block)"}}}}"#,
        id.as_json()
    );
    match sse {
        true => Bytes::from(format!("event: message\ndata: {message}\n\n")),
        false => Bytes::from(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_sent_again_with_only_the_response_replaced() {
        let response =
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        // A decoy notification carrying the same bytes inside it, and the response written on
        // two data lines.
        let decoy = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":{}}}}}"#,
            std::str::from_utf8(response).unwrap()
        );
        let body = format!(
            ": keep-alive\nevent: message\nid: 7\ndata: {decoy}\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{{\"tools\":[{{\"name\":\"a\"}},{{\"name\":\"b\"}}]}}}}\n\n"
        );
        let sent: Box<[u8]> = "{\"jsonrpc\":\"2.0\",\"id\":1,\n\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}"
            .as_bytes()
            .into();
        let new = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}"#.to_vec();
        let out = resend(body.as_bytes(), &[(sent, new.clone())]);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            format!(
                "id: 7\nevent: message\ndata: {decoy}\n\nevent: message\ndata: {}\n\n",
                std::str::from_utf8(&new).unwrap()
            )
        );
    }

    #[test]
    fn a_list_that_cannot_be_checked_is_refused_in_the_answers_format() {
        let id = RpcId::parse(r#""l-1""#).unwrap();
        let json = refusal(&id, false);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["id"], "l-1");
        assert_eq!(v["error"]["code"], -32603);
        let sse = refusal(&id, true);
        assert!(sse.starts_with(b"event: message\ndata: {"));
        assert!(sse.ends_with(b"}\n\n"));
    }
}
