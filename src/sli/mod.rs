//! Request outcomes turned into SLI events: the status class the client got, who caused a
//! failure, and what an upstream attempt came to. Plain types, no I/O; the data plane classifies,
//! the telemetry handles count.

pub(crate) mod liveness;
pub mod loops;
pub(crate) mod table;
pub mod tasks;

use crate::config::Role;

/// The status class the client got (`2xx` … `5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Informational = 0,
    Success = 1,
    Redirection = 2,
    ClientError = 3,
    ServerError = 4,
}

impl StatusClass {
    pub const COUNT: usize = 5;
    pub const ALL: [StatusClass; StatusClass::COUNT] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Who a failed request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Not a failure.
    None = 0,
    /// An LLM provider failed (or rate-limited us): a dependency failure.
    Upstream = 1,
    /// The sidecar's own fault.
    Proxy = 2,
    /// The agent itself failed.
    Agent = 3,
    /// The agent failed the request because something it depends on failed it: a call it made
    /// for the request (to a provider, a tool server, another agent) failed after every
    /// fallback; or the request arrived with its deadline spent by its callers.
    Dependency = 4,
}

impl Cause {
    pub const COUNT: usize = 5;
    pub const ALL: [Cause; Cause::COUNT] = [
        Cause::None,
        Cause::Upstream,
        Cause::Proxy,
        Cause::Agent,
        Cause::Dependency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::None => "none",
            Cause::Upstream => "upstream",
            Cause::Proxy => "proxy",
            Cause::Agent => "agent",
            Cause::Dependency => "dependency",
        }
    }

    /// Who is charged when the upstream behind a listener fails: on the `agent` role the upstream
    /// *is* the agent; on the `llm` and `peer` roles it is a provider or another agent, a
    /// dependency.
    pub fn upstream_failure(role: Role) -> Cause {
        match role {
            Role::Agent => Cause::Agent,
            Role::Llm | Role::Peer | Role::Mcp => Cause::Upstream,
        }
    }

    /// The cause for a response the upstream sent with `status`.
    pub fn of_response(role: Role, status: http::StatusCode) -> Cause {
        if status.is_server_error()
            || (role.is_egress() && status == http::StatusCode::TOO_MANY_REQUESTS)
        {
            Cause::upstream_failure(role)
        } else {
            Cause::None
        }
    }
}

/// What one attempt at an upstream came to (`sloguard_upstream_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Ok = 0,
    ServerError = 1,
    TooManyRequests = 2,
    /// No response head within `first_byte`, a body stalled past `idle`, or `total` ran out.
    Timeout = 3,
    /// The connection could not be made (refused, unreachable, TLS handshake failed, `connect` ran out).
    ConnectError = 4,
    /// The connection broke after it was made: reset, closed early, or an invalid HTTP response.
    Reset = 5,
}

impl UpstreamOutcome {
    pub const COUNT: usize = 6;
    pub const ALL: [UpstreamOutcome; UpstreamOutcome::COUNT] = [
        UpstreamOutcome::Ok,
        UpstreamOutcome::ServerError,
        UpstreamOutcome::TooManyRequests,
        UpstreamOutcome::Timeout,
        UpstreamOutcome::ConnectError,
        UpstreamOutcome::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::ServerError => "5xx",
            UpstreamOutcome::TooManyRequests => "429",
            UpstreamOutcome::Timeout => "timeout",
            UpstreamOutcome::ConnectError => "connect_error",
            UpstreamOutcome::Reset => "reset",
        }
    }

    /// The outcome of an attempt that got a response head with `status` (and whose body, if it
    /// fails later, is re-classified).
    pub fn of_status(status: http::StatusCode) -> UpstreamOutcome {
        if status.is_server_error() {
            UpstreamOutcome::ServerError
        } else if status == http::StatusCode::TOO_MANY_REQUESTS {
            UpstreamOutcome::TooManyRequests
        } else {
            UpstreamOutcome::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn classes() {
        assert_eq!(StatusClass::of(StatusCode::OK).as_str(), "2xx");
        assert_eq!(StatusClass::of(StatusCode::NOT_FOUND).as_str(), "4xx");
        assert_eq!(StatusClass::of(StatusCode::BAD_GATEWAY).as_str(), "5xx");
        assert_eq!(
            StatusClass::of(StatusCode::PERMANENT_REDIRECT).as_str(),
            "3xx"
        );
    }

    #[test]
    fn causes_follow_the_role() {
        assert_eq!(
            Cause::of_response(Role::Agent, StatusCode::INTERNAL_SERVER_ERROR),
            Cause::Agent
        );
        assert_eq!(
            Cause::of_response(Role::Llm, StatusCode::INTERNAL_SERVER_ERROR),
            Cause::Upstream
        );
        assert_eq!(
            Cause::of_response(Role::Llm, StatusCode::TOO_MANY_REQUESTS),
            Cause::Upstream
        );
        assert_eq!(
            Cause::of_response(Role::Agent, StatusCode::TOO_MANY_REQUESTS),
            Cause::None
        );
        assert_eq!(Cause::of_response(Role::Llm, StatusCode::OK), Cause::None);
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            UpstreamOutcome::of_status(StatusCode::OK),
            UpstreamOutcome::Ok
        );
        assert_eq!(
            UpstreamOutcome::of_status(StatusCode::NOT_FOUND),
            UpstreamOutcome::Ok
        );
        assert_eq!(
            UpstreamOutcome::of_status(StatusCode::SERVICE_UNAVAILABLE),
            UpstreamOutcome::ServerError
        );
        assert_eq!(
            UpstreamOutcome::of_status(StatusCode::TOO_MANY_REQUESTS),
            UpstreamOutcome::TooManyRequests
        );
    }
}
