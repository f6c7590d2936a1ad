//! `mcp:`: what the sidecar does with the agent's MCP tool calls on `mcp` listeners — pinning tool
//! definitions against quiet changes, checking a call's arguments against its tool's
//! `inputSchema`, and bounding the tool names that become label values. Without the section,
//! its defaults apply to every `mcp` listener.

use serde::Deserialize;

/// What a guard does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McpAction {
    /// Nothing is looked at.
    Off,
    /// Counted (and, for tool changes, an incident); the bytes pass unchanged.
    Record,
    /// Counted, and acted on: an invalid call is answered by the sidecar, a changed tool hidden.
    Block,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Tool definitions pinned on the first complete `tools/list`; later changes counted.
    #[serde(default = "record")]
    pub tool_changes: McpAction,
    /// `tools/call` arguments checked against the tool's `inputSchema`.
    #[serde(default = "record")]
    pub validate_arguments: McpAction,
    /// Distinct `gen_ai_tool_name` label values per upstream; past it, `other`.
    #[serde(default = "default_max_tools")]
    pub max_tools: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            tool_changes: record(),
            validate_arguments: record(),
            max_tools: default_max_tools(),
        }
    }
}

fn record() -> McpAction {
    McpAction::Record
}

fn default_max_tools() -> usize {
    200
}

/// The most `max_tools`: each tool name is a label value on two metrics per upstream.
pub const MAX_TOOL_LABELS: usize = 2000;

impl McpConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.max_tools == 0 || self.max_tools > MAX_TOOL_LABELS {
            return Err((
                "mcp.max_tools".into(),
                format!("must be between 1 and {MAX_TOOL_LABELS}"),
            ));
        }
        Ok(())
    }
}
