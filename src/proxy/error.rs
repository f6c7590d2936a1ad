//! Failures the proxy answers itself, and the one place that maps each to the status the client
//! sees, its bounded `type` label, the upstream outcome, and its log level.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::headers::X_SLOGUARD_ERROR;
use crate::config::Role;
use crate::sli::{Cause, UpstreamOutcome};
use crate::telemetry::LogLimiter;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not connect to upstream {upstream}")]
    Connect {
        upstream: String,
        #[source]
        source: crate::upstream::pool::BoxError,
    },
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    FirstByteTimeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream} broke the connection or sent an invalid response")]
    Broken {
        upstream: String,
        #[source]
        source: crate::upstream::ExchangeError,
    },
    /// The client's request body broke off (the client went away, or sent a malformed body):
    /// the client's doing, not the upstream's.
    #[error("the request body could not be read from the client")]
    ClientBody {
        #[source]
        source: crate::upstream::pool::BoxError,
    },
    /// The client paused its request body for `idle` (or was still sending it when `total` or
    /// its body deadline, `limits.body_timeout`, ran out) while the upstream waited for it.
    #[error("the client did not send its request body in time")]
    ClientStalled,
    /// A method a reverse proxy does not forward (CONNECT: sloguard is no tunnel).
    #[error("{method} is not proxied")]
    Method { method: http::Method },
    #[error("the request could not be addressed to upstream {upstream}: {reason}")]
    Internal { upstream: String, reason: String },
    /// Every upstream of the route has an open circuit (and the cache, if any, had nothing):
    /// none is tried.
    #[error("every upstream of route {route} is failing; their circuits are open")]
    CircuitOpen { route: String },
    /// The route has `max_in_flight` requests in flight already: refused at once, not queued.
    #[error("route {route} already has as many requests in flight as its max_in_flight allows; retry shortly")]
    BulkheadFull { route: String },
    #[error("the response was blocked: the safety detector {detector} found a violation")]
    SafetyBlocked { detector: String },
    #[error("the agent is disabled by its kill switch until a human enables it")]
    AgentDisabled,
    /// The sidecar's body budget (`memory.max_held`) is spent: the request is refused before
    /// it is sent, rather than held.
    #[error("the sidecar is holding as many request and response bodies as its memory.max_held allows; retry shortly")]
    Overloaded,
    /// The loop guard found the call's task looping (`loop_action: block`).
    #[error("the loop guard stopped this task: {}", loop_reason(*.kind))]
    LoopDetected { kind: crate::sli::loops::LoopKind },
    /// The request's deadline (`cascade`) is spent.
    #[error("{}", deadline_reason(*.0))]
    DeadlineExceeded(DeadlineWhen),
    /// The request came through more agents than `cascade.max_depth` allows.
    #[error("the request is {depth} agent-to-agent calls deep, past cascade.max_depth ({max}): the agents are likely calling each other in a loop")]
    CallDepthExceeded { depth: u32, max: u32 },
    /// The request's call path already holds this agent (`on_cycle: block`).
    #[error("the agents are calling each other in a cycle: this agent is already on the request's call path ({path})")]
    CallCycle { path: String },
}

/// When a request's deadline was found spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineWhen {
    /// It arrived (inbound) with no time left: its callers spent it.
    Arrival,
    /// The agent made the call (egress) after its inbound request's deadline.
    Call,
    /// The upstream had not answered when the deadline came.
    Attempt,
    /// The deadline came before a fallback's attempt: the failed attempts before it took the
    /// time.
    Fallback,
}

fn deadline_reason(when: DeadlineWhen) -> &'static str {
    match when {
        DeadlineWhen::Arrival => {
            "the request arrived with its deadline spent; it was not passed to the agent"
        }
        DeadlineWhen::Call => {
            "the request this call is made for has run out of time; the call was not made"
        }
        DeadlineWhen::Attempt => {
            "the upstream did not answer before the deadline of the request this call is made for"
        }
        DeadlineWhen::Fallback => {
            "the request this call is made for ran out of time while its failed attempts were followed by a fallback"
        }
    }
}

fn loop_reason(kind: crate::sli::loops::LoopKind) -> &'static str {
    match kind {
        crate::sli::loops::LoopKind::MaxLlmCalls => {
            "it made more LLM calls than tasks.max_llm_calls allows"
        }
        crate::sli::loops::LoopKind::RepeatedToolCall => {
            "it got the same tool call back tasks.max_repeated_tool_calls times in a row"
        }
    }
}

impl ProxyError {
    /// Classifies a failed exchange: the client's upload broke off (noted by the request body,
    /// and reported by the client as the body's error), or the upstream failed.
    pub fn from_exchange(
        upstream: &str,
        source: crate::upstream::ExchangeError,
        client_failed: bool,
    ) -> ProxyError {
        if client_failed || source.is_client_body() {
            ProxyError::ClientBody {
                source: Box::new(source),
            }
        } else if source.is_request_unsendable() {
            ProxyError::Internal {
                upstream: upstream.to_owned(),
                reason: source.to_string(),
            }
        } else {
            ProxyError::Broken {
                upstream: upstream.to_owned(),
                source,
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect { .. } | ProxyError::Broken { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::FirstByteTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientStalled => StatusCode::REQUEST_TIMEOUT,
            ProxyError::CircuitOpen { .. }
            | ProxyError::BulkheadFull { .. }
            | ProxyError::AgentDisabled
            | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::SafetyBlocked { .. } => StatusCode::FORBIDDEN,
            ProxyError::LoopDetected { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::CallDepthExceeded { .. } | ProxyError::CallCycle { .. } => {
                StatusCode::LOOP_DETECTED
            }
        }
    }

    /// The contract's error `type`, also the `x-sloguard-error` header.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } | ProxyError::Broken { .. } => "upstream_unavailable",
            ProxyError::FirstByteTimeout { .. } => "upstream_timeout",
            ProxyError::Internal { .. } => "proxy_error",
            ProxyError::ClientBody { .. } => "bad_request",
            ProxyError::Method { .. } => "method_not_allowed",
            ProxyError::ClientStalled => "request_timeout",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::BulkheadFull { .. } => "bulkhead_full",
            ProxyError::SafetyBlocked { .. } => "safety_blocked",
            ProxyError::AgentDisabled => "agent_disabled",
            ProxyError::Overloaded => "overloaded",
            ProxyError::LoopDetected { .. } => "loop_detected",
            ProxyError::DeadlineExceeded(_) => "deadline_exceeded",
            ProxyError::CallDepthExceeded { .. } => "call_depth_exceeded",
            ProxyError::CallCycle { .. } => "call_cycle",
        }
    }

    /// What the attempt counts as in `sloguard_upstream_requests_total`; `None` when it is not
    /// the upstream's to answer for (none was made, or the client broke it).
    pub fn outcome(&self) -> Option<UpstreamOutcome> {
        match self {
            ProxyError::Connect { .. } => Some(UpstreamOutcome::ConnectError),
            ProxyError::FirstByteTimeout { .. } => Some(UpstreamOutcome::Timeout),
            ProxyError::Broken { .. } => Some(UpstreamOutcome::Reset),
            // Cut at its caller's deadline, the upstream had less time than its own `first_byte`
            // gives it: no failure of its (or a client's short deadline could open its circuit
            // for everyone).
            ProxyError::DeadlineExceeded(_)
            | ProxyError::CallDepthExceeded { .. }
            | ProxyError::CallCycle { .. }
            | ProxyError::Internal { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientStalled
            | ProxyError::Method { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::BulkheadFull { .. }
            | ProxyError::SafetyBlocked { .. }
            | ProxyError::AgentDisabled
            | ProxyError::Overloaded
            | ProxyError::LoopDetected { .. } => None,
        }
    }

    /// Refused before the agent could see the request: no verdict of the agent's on its task.
    pub fn refused_before_agent(&self) -> bool {
        matches!(
            self,
            ProxyError::BulkheadFull { .. }
                | ProxyError::CallDepthExceeded { .. }
                | ProxyError::CallCycle { .. }
                | ProxyError::DeadlineExceeded(DeadlineWhen::Arrival)
        )
    }

    /// Who is charged with the failure, given who is behind the listener.
    pub fn cause(&self, role: Role) -> Cause {
        match self {
            ProxyError::Internal { .. } | ProxyError::Overloaded => Cause::Proxy,
            ProxyError::ClientBody { .. }
            | ProxyError::ClientStalled
            | ProxyError::Method { .. }
            | ProxyError::SafetyBlocked { .. } => Cause::None,
            // The agent was silenced for what it said, or stopped for looping: its own failure.
            ProxyError::AgentDisabled | ProxyError::LoopDetected { .. } => Cause::Agent,
            // What is behind the route is saturated: its failure, on any listener.
            ProxyError::BulkheadFull { .. } => Cause::Upstream,
            // The time was spent before the request reached this agent, by its callers.
            ProxyError::DeadlineExceeded(DeadlineWhen::Arrival) => Cause::Dependency,
            // The agent took so long that its own call came too late; agents calling each
            // other in a loop.
            ProxyError::DeadlineExceeded(DeadlineWhen::Call)
            | ProxyError::CallDepthExceeded { .. }
            | ProxyError::CallCycle { .. } => Cause::Agent,
            _ => Cause::upstream_failure(role),
        }
    }

    /// Logs the failure; upstream failures at most once a second per upstream (`limit`).
    pub fn log(&self, limit: &LogLimiter) {
        match self {
            ProxyError::Internal { .. } => {
                tracing::error!(error = %error_chain(self), "proxy fault")
            }
            // The breaker's transitions are logged when they happen; each refusal is not news.
            ProxyError::ClientBody { .. }
            | ProxyError::ClientStalled
            | ProxyError::Method { .. }
            | ProxyError::CircuitOpen { .. }
            | ProxyError::BulkheadFull { .. }
            | ProxyError::SafetyBlocked { .. }
            | ProxyError::AgentDisabled
            | ProxyError::Overloaded
            | ProxyError::LoopDetected { .. }
            | ProxyError::DeadlineExceeded(
                DeadlineWhen::Arrival | DeadlineWhen::Call | DeadlineWhen::Fallback,
            )
            | ProxyError::CallDepthExceeded { .. }
            | ProxyError::CallCycle { .. } => {
                tracing::debug!(error = %error_chain(self), "request refused")
            }
            _ => {
                if let Some(suppressed) = limit.allow() {
                    // The source chain says why (refused, reset, TLS); it never holds request data.
                    tracing::warn!(error = %error_chain(self), suppressed, "upstream attempt failed");
                }
            }
        }
    }

    /// The JSON response the client gets.
    pub fn to_response(&self) -> Response<Bytes> {
        error_response(self.status(), self.error_type(), &self.to_string())
    }
}

/// `{"error": {"type": ..., "message": ...}}` with `x-sloguard-error: TYPE`.
pub fn error_response(
    status: StatusCode,
    error_type: &'static str,
    message: &str,
) -> Response<Bytes> {
    let body = serde_json::json!({"error": {"type": error_type, "message": message}});
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        X_SLOGUARD_ERROR.clone(),
        HeaderValue::from_static(error_type),
    );
    response
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
