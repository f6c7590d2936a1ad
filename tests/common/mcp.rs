//! MCP fixtures on the official Rust SDK (`rmcp`): a real MCP server speaking Streamable HTTP on
//! an ephemeral loopback port, with tools whose behaviour tests choose (echo, a failing tool, a
//! slow tool that reports progress, one that answers a JSON-RPC error, and one whose description
//! can change at run time), and a real rmcp client to talk to it, directly or through the
//! sidecar.
//!
//! rmcp answers POSTs with `application/json` only in stateless mode: in session mode it always
//! answers with an SSE stream, whatever `json_response` says. Even in stateless JSON mode it falls
//! back to SSE for a call whose handler sends a notification (progress) before its result.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the fixtures"
)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientConfig, ContentBlock, ErrorCode,
    ErrorData, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{
    ClientInitializeError, NotificationContext, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::StreamableHttpService;
use rmcp::transport::{StreamableHttpClientTransport, StreamableHttpServerConfig};
use rmcp::{ClientHandler, RoleServer, ServerHandler, ServiceError, ServiceExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// The text of the `fail` tool's error result.
pub const FAIL_TEXT: &str = "the tool failed";
/// The `search` tool's description until a test changes it.
pub const SEARCH_DESCRIPTION: &str = "Searches the documents for a query.";
/// The tools the server lists at start, in order.
pub const TOOL_NAMES: [&str; 5] = ["echo", "fail", "slow", "boom", "search"];

/// How the MCP server speaks Streamable HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpServerOpts {
    /// Sessions: `initialize` is answered with an `Mcp-Session-Id` that later requests must
    /// carry. Without it every POST is served on its own, with no session.
    pub stateful: bool,
    /// Answer POSTs with `application/json` rather than an SSE stream. rmcp honours this only
    /// when `stateful` is false (and falls back to SSE for a call that reports progress).
    pub json_response: bool,
}

impl McpServerOpts {
    /// The combinations rmcp supports: sessions with SSE, stateless with SSE, stateless with
    /// JSON (sessions with JSON would answer with SSE all the same).
    pub const SUPPORTED: [McpServerOpts; 3] = [
        McpServerOpts {
            stateful: true,
            json_response: false,
        },
        McpServerOpts {
            stateful: false,
            json_response: false,
        },
        McpServerOpts {
            stateful: false,
            json_response: true,
        },
    ];
}

/// What the server's tools are and did: shared by every session and the test.
#[derive(Debug)]
pub struct ToolState {
    search_description: Mutex<String>,
    search_listed: AtomicBool,
    calls: Mutex<HashMap<String, usize>>,
    /// `slow` answers once this is open ([`ToolState::open_gate`]).
    gate: tokio::sync::watch::Sender<bool>,
    /// When the last `slow` call reached the server.
    slow_started: Mutex<Option<std::time::Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for ToolState {
    fn default() -> Self {
        Self {
            search_description: Mutex::new(SEARCH_DESCRIPTION.to_owned()),
            search_listed: AtomicBool::new(true),
            calls: Mutex::new(HashMap::new()),
            gate: tokio::sync::watch::Sender::new(false),
            slow_started: Mutex::new(None),
        }
    }
}

impl ToolState {
    /// Changes the `search` tool's description from the next `tools/list` on (a rug pull).
    pub fn set_search_description(&self, s: &str) {
        *lock(&self.search_description) = s.to_owned();
    }

    /// Drops `search` from the list (`false`: calls to it then fail as an unknown tool) or
    /// adds it back (`true`).
    pub fn set_search_listed(&self, listed: bool) {
        self.search_listed.store(listed, Ordering::SeqCst);
    }

    /// How many `tools/call` requests named `tool` reached the server, known tool or not.
    pub fn calls(&self, tool: &str) -> usize {
        lock(&self.calls).get(tool).copied().unwrap_or(0)
    }

    /// Lets `slow` calls answer (those waiting and those to come).
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// When the last `slow` call reached the server.
    pub fn slow_started(&self) -> Option<std::time::Instant> {
        *lock(&self.slow_started)
    }

    /// All `tools/call` requests that reached the server.
    pub fn total_calls(&self) -> usize {
        lock(&self.calls).values().sum()
    }

    /// The tools as the server lists them now.
    pub fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool::new(
                "echo",
                "Returns its text.",
                schema(json!({"text": {"type": "string"}}), &["text"]),
            ),
            Tool::new(
                "fail",
                "Always fails (a result with isError).",
                schema(json!({}), &[]),
            ),
            Tool::new(
                "slow",
                "Reports progress twice, waits until the test opens its gate, answers done.",
                schema(json!({}), &[]),
            ),
            Tool::new(
                "boom",
                "Answers a JSON-RPC internal error.",
                schema(json!({}), &[]),
            ),
        ];
        if self.search_listed.load(Ordering::SeqCst) {
            let description = lock(&self.search_description).clone();
            let query = json!({"query": {"type": "string"}});
            tools.push(Tool::new("search", description, schema(query, &["query"])));
        }
        tools
    }

    fn count(&self, tool: &str) {
        *lock(&self.calls).entry(tool.to_owned()).or_insert(0) += 1;
    }
}

/// A JSON Schema object with `properties` and `required`.
fn schema(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let value = json!({"type": "object", "properties": properties, "required": required});
    let Value::Object(map) = value else {
        unreachable!("json!({{…}}) is an object")
    };
    Arc::new(map)
}

/// The hand-written MCP server: tools are listed and dispatched from [`ToolState`].
#[derive(Debug, Clone)]
pub struct TestMcpServer {
    state: Arc<ToolState>,
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn string_arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, ErrorData> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorData::invalid_params(format!("missing string argument: {name}"), None))
}

impl TestMcpServer {
    /// `slow`: two progress notifications when the request asked for progress, then a wait
    /// until the test opens the gate.
    async fn slow(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        *lock(&self.state.slow_started) = Some(std::time::Instant::now());
        if let Some(token) = context.meta.get_progress_token() {
            for step in [1.0, 2.0] {
                let progress = ProgressNotificationParam::new(token.clone(), step)
                    .with_total(2.0)
                    .with_message(format!("step {step}"));
                context
                    .peer
                    .notify_progress(progress)
                    .await
                    .map_err(|e| ErrorData::internal_error(format!("progress: {e}"), None))?;
            }
        }
        let mut gate = self.state.gate.subscribe();
        gate.wait_for(|open| *open)
            .await
            .map_err(|e| ErrorData::internal_error(format!("gate: {e}"), None))?;
        Ok(text_result("done"))
    }
}

impl ServerHandler for TestMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.state.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.state.tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        self.state.count(name);
        let args = request.arguments.clone().unwrap_or_default();
        let listed = self.get_tool(name).is_some();
        let result = match name {
            "echo" => text_result(string_arg(&args, "text")?),
            "fail" => CallToolResult::error(vec![ContentBlock::text(FAIL_TEXT)]),
            "slow" => self.slow(&context).await?,
            "boom" => return Err(ErrorData::internal_error("boom", None)),
            "search" if listed => {
                text_result(format!("results for {}", string_arg(&args, "query")?))
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    format!("Unknown tool: {name}"),
                    None,
                ))
            }
        };
        Ok(result.into())
    }
}

/// One HTTP exchange the server saw, for assertions on the wire.
#[derive(Debug, Clone)]
pub struct HttpExchange {
    /// The request's method (`POST`, the session's `GET` stream, `DELETE`).
    pub method: Method,
    /// The request's path.
    pub path: String,
    /// The request's headers as they reached the server.
    pub request_headers: HeaderMap,
    /// The response's status.
    pub status: StatusCode,
    /// The response's headers (`content-type`, `mcp-session-id`, …).
    pub response_headers: HeaderMap,
}

/// A running MCP server; dropping it stops it (sessions end, the port closes).
#[derive(Debug)]
pub struct McpServer {
    /// The loopback address it listens on.
    pub addr: SocketAddr,
    /// Its tools, for tests to change and to count calls on.
    pub state: Arc<ToolState>,
    /// How it was started.
    pub opts: McpServerOpts,
    log: Arc<Mutex<Vec<HttpExchange>>>,
    _stop: oneshot::Sender<()>,
}

impl McpServer {
    /// `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Every HTTP exchange so far, in the order the responses were made.
    pub fn exchanges(&self) -> Vec<HttpExchange> {
        lock(&self.log).clone()
    }
}

type McpService = StreamableHttpService<TestMcpServer, LocalSessionManager>;

/// Serves one HTTP request: `/mcp` goes to rmcp, anything else is a 404; the exchange is logged.
async fn serve_one(
    mut mcp: McpService,
    log: Arc<Mutex<Vec<HttpExchange>>>,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<bytes::Bytes, Infallible>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let request_headers = req.headers().clone();
    let response = if path == "/mcp" {
        tower_service::Service::call(&mut mcp, req).await?
    } else {
        let mut r = Response::new(Full::new(bytes::Bytes::from_static(b"not found")).boxed());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    lock(&log).push(HttpExchange {
        method,
        path,
        request_headers,
        status: response.status(),
        response_headers: response.headers().clone(),
    });
    Ok(response)
}

/// Starts an MCP server on an ephemeral loopback port, serving Streamable HTTP at `/mcp`.
pub async fn spawn_mcp_server(opts: McpServerOpts) -> McpServer {
    let state = Arc::new(ToolState::default());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(opts.stateful)
        .with_json_response(opts.json_response);
    let cancel = config.cancellation_token.clone();
    let handler = TestMcpServer {
        state: state.clone(),
    };
    let mcp: McpService = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the MCP server");
    let addr = listener.local_addr().expect("the MCP server's address");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let conn_log = log.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (mcp, log) = (mcp.clone(), conn_log.clone());
            let svc =
                hyper::service::service_fn(move |req| serve_one(mcp.clone(), log.clone(), req));
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
        cancel.cancel();
    });
    McpServer {
        addr,
        state,
        opts,
        log,
        _stop: stop,
    }
}

/// The client side's handler: records the progress notifications the server sends.
#[derive(Debug, Clone)]
pub struct TestMcpClient {
    progress: Arc<watch::Sender<Vec<ProgressNotificationParam>>>,
}

impl Default for TestMcpClient {
    fn default() -> Self {
        Self {
            progress: Arc::new(watch::channel(Vec::new()).0),
        }
    }
}

impl ClientHandler for TestMcpClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
        info
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.send_modify(|all| all.push(params));
    }
}

/// A connected, initialized rmcp client; derefs to `Peer<RoleClient>` (`call_tool`, …).
pub type McpClient = RunningService<RoleClient, TestMcpClient>;

/// Connects rmcp's Streamable HTTP client (rmcp's default reqwest client, plain HTTP) to `url`
/// and runs the `initialize` handshake, asking for protocol 2025-11-25 (the newest that has one).
pub async fn try_mcp_client(url: &str) -> Result<McpClient, ClientInitializeError> {
    let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
    TestMcpClient::default().serve(transport).await
}

/// Connects and initializes, failing the test if that fails.
pub async fn mcp_client(url: &str) -> McpClient {
    try_mcp_client(url)
        .await
        .expect("the MCP client connects and initializes")
}

/// Calls tool `name`; `args` is a JSON object (or `null` for no arguments).
pub async fn call(
    client: &McpClient,
    name: &str,
    args: Value,
) -> Result<CallToolResult, ServiceError> {
    let mut params = CallToolRequestParams::new(Cow::Owned(name.to_owned()));
    match args {
        Value::Object(map) => params = params.with_arguments(map),
        Value::Null => {}
        other => panic!("tool arguments must be an object, not {other}"),
    }
    client.call_tool(params).await
}

/// Lists every tool, failing the test if that fails.
pub async fn list(client: &McpClient) -> Vec<Tool> {
    client.list_all_tools().await.expect("tools/list succeeds")
}

/// The text blocks of a result, joined.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.as_str())
        .collect()
}

/// The JSON-RPC error code of a failed request, if it failed with a JSON-RPC error.
pub fn error_code(error: &ServiceError) -> Option<ErrorCode> {
    match error {
        ServiceError::McpError(e) => Some(e.code),
        _ => None,
    }
}

/// The progress notifications the client has received so far.
pub fn progress(client: &McpClient) -> Vec<ProgressNotificationParam> {
    client.service().progress.borrow().clone()
}

/// Waits until the client has received at least `n` progress notifications (callers bound it).
pub async fn wait_progress(client: &McpClient, n: usize) -> Vec<ProgressNotificationParam> {
    let mut rx = client.service().progress.subscribe();
    let seen = rx
        .wait_for(|all| all.len() >= n)
        .await
        .expect("the progress channel is open");
    seen.clone()
}
