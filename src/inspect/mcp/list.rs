//! A `tools/list` result: its tools, each definition fingerprinted for the rug-pull guard, and
//! the list with only the tools a guard lets through.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ids::{key_of, IdRef, RpcId};
use super::{bounded, MAX_TOOLS};
use crate::inspect::canon::canonical_json;

/// One tool of a `tools/list` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDef {
    pub name: Box<str>,
    /// The definition (description, inputSchema, annotations) in canonical form, hashed: the
    /// same definition however it is spelled.
    pub fingerprint: u64,
    /// The `inputSchema`'s JSON text, for checking a call's arguments.
    pub input_schema: Option<Box<str>>,
}

/// A `tools/list` result page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolList {
    pub tools: Vec<ToolDef>,
    /// More pages follow (`nextCursor`): the list is not complete yet.
    pub more: bool,
    /// Past [`MAX_TOOLS`]: the page was not read whole.
    pub truncated: bool,
}

#[derive(Deserialize)]
struct RawList<'a> {
    /// Required: a result without it is no tool list.
    #[serde(borrow)]
    tools: Vec<&'a RawValue>,
    #[serde(default, rename = "nextCursor", borrow)]
    next_cursor: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    description: Option<&'a RawValue>,
    #[serde(default, rename = "inputSchema", borrow)]
    input_schema: Option<&'a RawValue>,
    #[serde(default, borrow)]
    annotations: Option<&'a RawValue>,
}

/// The tools of a `tools/list` result (the `result` object's JSON text); `None` when it is not
/// one. A tool without a name is skipped.
pub fn parse_tool_list(result: &[u8]) -> Option<ToolList> {
    let raw: RawList<'_> = serde_json::from_slice(result).ok()?;
    let truncated = raw.tools.len() > MAX_TOOLS;
    let tools = raw.tools.iter().take(MAX_TOOLS).filter_map(|t| tool_def(t));
    let more = raw.next_cursor.is_some_and(|c| c.get().trim() != "null");
    Some(ToolList {
        tools: tools.collect(),
        more,
        truncated,
    })
}

/// One entry of a tool list, fingerprinted; `None` when it is no tool (no name, or a part that
/// is not JSON).
fn tool_def(entry: &RawValue) -> Option<ToolDef> {
    let tool: RawTool<'_> = serde_json::from_str(entry.get()).ok()?;
    let part = |v: Option<&RawValue>| v.map_or(Some(0), |v| canonical_json(v.get().as_bytes()));
    let parts = [
        part(tool.description)?,
        part(tool.input_schema)?,
        part(tool.annotations)?,
    ];
    let mut bytes = [0u8; 24];
    for (chunk, p) in bytes.chunks_mut(8).zip(parts) {
        chunk.copy_from_slice(&p.to_le_bytes());
    }
    Some(ToolDef {
        name: bounded(&tool.name),
        fingerprint: xxhash_rust::xxh3::xxh3_64(&bytes),
        input_schema: tool.input_schema.map(|s| s.get().into()),
    })
}

/// What [`filter_tools`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Every tool of the list was kept (or the message holds no response to the request).
    Unchanged,
    /// The message with only the kept tools.
    Changed(Vec<u8>),
    /// The response to the request is no tool list that can be read.
    Unreadable,
}

/// The response to `id` in `message` (one JSON-RPC object, or a batch) with only the tools of its
/// `tools/list` result that `keep` allows (by name and fingerprint; an entry that is no readable
/// tool is not kept). Every other byte as it was.
pub fn filter_tools(message: &[u8], id: &RpcId, keep: &dyn Fn(&ToolDef) -> bool) -> Filtered {
    if message.trim_ascii_start().first() != Some(&b'[') {
        return filter_response(message, id, keep);
    }
    let Ok(batch) = serde_json::from_slice::<Vec<&RawValue>>(message) else {
        return Filtered::Unreadable;
    };
    let mut out: Vec<Cow<'_, [u8]>> = Vec::with_capacity(batch.len());
    let mut changed = false;
    for m in &batch {
        match filter_response(m.get().as_bytes(), id, keep) {
            Filtered::Unchanged => out.push(Cow::Borrowed(m.get().as_bytes())),
            Filtered::Changed(new) => {
                changed = true;
                out.push(Cow::Owned(new));
            }
            Filtered::Unreadable => return Filtered::Unreadable,
        }
    }
    if !changed {
        return Filtered::Unchanged;
    }
    let mut joined = vec![b'['];
    for (i, m) in out.iter().enumerate() {
        if i > 0 {
            joined.push(b',');
        }
        joined.extend_from_slice(m);
    }
    joined.push(b']');
    Filtered::Changed(joined)
}

/// [`filter_tools`] on one JSON-RPC object.
fn filter_response(message: &[u8], id: &RpcId, keep: &dyn Fn(&ToolDef) -> bool) -> Filtered {
    use crate::inspect::rewrite::{members, with_member};
    fn member<'a>(m: &[(String, &'a RawValue)], key: &str) -> Option<&'a str> {
        m.iter().find(|(k, _)| k == key).map(|(_, v)| v.get())
    }
    let Some(top) = members(message) else {
        return Filtered::Unreadable;
    };
    let ours = member(&top, "id")
        .and_then(key_of)
        .is_some_and(|k| id.matches(&IdRef(k)));
    if !ours || member(&top, "method").is_some() {
        return Filtered::Unchanged;
    }
    let Some(result) = member(&top, "result").and_then(|r| members(r.as_bytes())) else {
        return Filtered::Unreadable;
    };
    let Some(Ok(tools)) = member(&result, "tools").map(serde_json::from_str::<Vec<&RawValue>>)
    else {
        return Filtered::Unreadable;
    };
    let kept: Vec<&str> = tools
        .iter()
        .filter(|t| tool_def(t).is_some_and(|d| keep(&d)))
        .map(|t| t.get())
        .collect();
    if kept.len() == tools.len() {
        return Filtered::Unchanged;
    }
    let list = format!("[{}]", kept.join(","));
    let result = with_member(&result, "tools", list.as_bytes());
    Filtered::Changed(with_member(&top, "result", &result))
}
