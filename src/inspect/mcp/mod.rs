//! MCP (Model Context Protocol, Streamable HTTP) messages, as the `mcp` role reads them: the
//! JSON-RPC requests an agent POSTs (method, id, and for `tools/call` the tool's name and
//! arguments), the messages that come back in a JSON body or an SSE stream (the response that
//! ends an operation, told apart from the notifications and server requests before it), what a
//! response says (a result, a tool's own failure `isError`, a JSON-RPC error and its code, a
//! 2026-07-28 `resultType: "input_required"`), and a `tools/list` result's tools with a
//! fingerprint of each definition (name, description, inputSchema, annotations) for the
//! rug-pull guard.
//!
//! Plain functions over bytes, no I/O. Anything that is not a JSON-RPC message is `None`: the
//! body passes untouched whatever is read here. What is kept is bounded: a batch's first
//! [`MAX_BATCH`] messages, names and methods of [`MAX_NAME`] bytes, [`MAX_TOOLS`] tools a list.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Messages read from one JSON-RPC batch (2025-03-26 allows them); the rest are not operations.
pub const MAX_BATCH: usize = 64;
/// Longest method or tool name kept (MCP's own names are short; a tool name is at most 128).
pub const MAX_NAME: usize = 256;
/// Tools read from one `tools/list` page.
pub const MAX_TOOLS: usize = 1024;

mod ids;
mod list;
#[cfg(test)]
mod tests;

pub use ids::{IdRef, RpcId};
pub use list::{filter_tools, parse_tool_list, Filtered, ToolDef, ToolList};

/// A request the agent sent (a notification has no id: it is no operation), borrowing its body.
#[derive(Clone)]
pub struct McpRequest<'a> {
    pub id: Option<&'a RawValue>,
    pub method: Cow<'a, str>,
    /// `tools/call`: the tool's name.
    pub tool: Option<Cow<'a, str>>,
    /// `tools/call`: the arguments' JSON text, as sent (`None` when absent).
    pub arguments: Option<&'a str>,
    /// The request names a `cursor`: a later page of a list.
    pub cursor: bool,
}

/// The arguments by their size only: they are what the model sent a tool.
impl std::fmt::Debug for McpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpRequest")
            .field("id", &self.id.map(RawValue::get))
            .field("method", &self.method)
            .field("tool", &self.tool)
            .field("arguments", &self.arguments.map(str::len))
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl McpRequest<'_> {
    /// Its id, for the operation it begins (`None`: a notification).
    pub fn rpc_id(&self) -> Option<RpcId> {
        RpcId::parse(self.id?.get())
    }
}

/// A JSON-RPC message, read in one pass: what a request's `params` and a response's `result`
/// say is read as they pass (MCP's are objects), the rest skipped.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Lenient<Params<'a>>,
    #[serde(default, borrow)]
    result: Option<CallResult<'a>>,
    #[serde(default, borrow)]
    error: Option<RawError<'a>>,
}

/// An object read as `T`, anything else (an array of positional params, a string) skipped as
/// `None`: a message is not refused for a member it need not read.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let d = serde::de::value::MapAccessDeserializer::new(map);
                T::deserialize(d).map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A message's `result` kept as its text: a `tools/list` result is read from it.
#[derive(Deserialize)]
struct ResultText<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawError<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    message: Option<Cow<'a, str>>,
}

/// A request's `params`, read once: a call's tool and arguments, a list's cursor.
#[derive(Deserialize)]
struct Params<'a> {
    #[serde(default, borrow, deserialize_with = "crate::inspect::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cursor: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallResult<'a> {
    #[serde(default, rename = "isError")]
    is_error: Option<bool>,
    #[serde(
        default,
        rename = "resultType",
        borrow,
        deserialize_with = "crate::inspect::borrowed"
    )]
    result_type: Option<Cow<'a, str>>,
}

/// A message's `jsonrpc` member.
trait Versioned {
    fn is_rpc(&self) -> bool;
}

impl Versioned for RawMessage<'_> {
    fn is_rpc(&self) -> bool {
        self.jsonrpc.as_deref() == Some("2.0")
    }
}

impl Versioned for ResultText<'_> {
    fn is_rpc(&self) -> bool {
        self.jsonrpc.as_deref() == Some("2.0")
    }
}

/// Each JSON-RPC message of a body — one object, or a batch (its first [`MAX_BATCH`]) — to `f`.
/// `None` when the body is not JSON-RPC.
fn each_message<'a, M>(body: &'a [u8], mut f: impl FnMut(M)) -> Option<()>
where
    M: Deserialize<'a> + Versioned,
{
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'[' {
        let batch: Vec<&'a RawValue> = serde_json::from_slice(body).ok()?;
        for m in batch.iter().take(MAX_BATCH) {
            match serde_json::from_str::<M>(m.get()) {
                Ok(m) if m.is_rpc() => f(m),
                _ => {}
            }
        }
        return Some(());
    }
    let m: M = serde_json::from_slice(body).ok()?;
    if m.is_rpc() {
        f(m);
    }
    Some(())
}

fn bounded(s: &str) -> Box<str> {
    crate::prefix_at_char(s, MAX_NAME).into()
}

/// Each request (and notification) of a POSTed body, to `f`; `false` when it is not JSON-RPC.
pub fn each_request<'a>(body: &'a [u8], mut f: impl FnMut(McpRequest<'a>)) -> bool {
    each_message(body, |m: RawMessage<'a>| {
        let Some(method) = m.method else {
            return;
        };
        let (tool, arguments, cursor) = match m.params.0 {
            Some(p) if &*method == "tools/call" => (p.name, p.arguments.map(RawValue::get), false),
            Some(p) => (
                None,
                None,
                p.cursor.is_some_and(|c| c.get().trim() != "null"),
            ),
            None => (None, None, false),
        };
        f(McpRequest {
            id: m.id,
            tool: tool.map(|t| match t {
                Cow::Borrowed(t) => Cow::Borrowed(crate::prefix_at_char(t, MAX_NAME)),
                Cow::Owned(t) => Cow::Owned(crate::prefix_at_char(&t, MAX_NAME).to_owned()),
            }),
            method,
            arguments,
            cursor,
        })
    })
    .is_some()
}

/// What a response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A result.
    Ok,
    /// A `tools/call` result with `isError: true`: the tool itself failed.
    ToolError,
    /// A JSON-RPC error, with its code (`-32603`...) and whether it says the tool is unknown.
    Error { code: i64, unknown_tool: bool },
    /// A 2026-07-28 result asking the client for more (`resultType: "input_required"`): no end
    /// of the operation.
    InputRequired,
}

/// One message from the server, in a JSON body or an SSE event, borrowing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// The response to the request with this id: it ends that operation (unless it asks for
    /// input).
    Response {
        id: Option<IdRef<'a>>,
        answer: Answer,
    },
    /// A notification (progress, log) or a request of the server's: it ends nothing.
    Other,
}

/// Each message of a server's JSON body or of one SSE event's data, to `f`; `false` when it is
/// not JSON-RPC.
pub fn each_server_message<'a>(body: &'a [u8], mut f: impl FnMut(ServerMessage<'a>)) -> bool {
    each_message(body, |m: RawMessage<'a>| f(server_message(&m))).is_some()
}

fn server_message<'a>(m: &RawMessage<'a>) -> ServerMessage<'a> {
    if m.method.is_some() {
        return ServerMessage::Other;
    }
    let answer = match (&m.error, &m.result) {
        (Some(e), _) => Answer::Error {
            code: e.code.unwrap_or(0),
            unknown_tool: e.code == Some(-32602)
                && e.message.as_deref().is_some_and(names_unknown_tool),
        },
        (None, Some(r)) if r.result_type.as_deref() == Some("input_required") => {
            Answer::InputRequired
        }
        (None, Some(r)) if r.is_error == Some(true) => Answer::ToolError,
        (None, Some(_)) => Answer::Ok,
        (None, None) => return ServerMessage::Other,
    };
    ServerMessage::Response {
        id: IdRef::of(m.id),
        answer,
    }
}

/// Whether an invalid-params message says the tool does not exist ("Unknown tool: x", "Tool x
/// not found").
fn names_unknown_tool(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unknown tool") || (m.contains("tool") && m.contains("not found"))
}

/// The `result` of the response in a server's message body, by the request's id: the JSON text
/// a `tools/list` result is read from.
pub fn result_of<'a>(body: &'a [u8], id: &RpcId) -> Option<&'a str> {
    let mut found = None;
    each_message(body, |m: ResultText<'a>| {
        let ours = m.method.is_none() && IdRef::of(m.id).is_some_and(|i| id.matches(&i));
        if ours && found.is_none() {
            found = m.result.map(RawValue::get);
        }
    })?;
    found
}
