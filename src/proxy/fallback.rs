//! A route's fallback chain: why a request moves on from one upstream to the next, which
//! upstream takes it, and how the moves are counted.

use http::{HeaderName, HeaderValue, StatusCode};
use metrics::Counter;

use super::error::ProxyError;
use crate::config::FallbackClass;

pub(crate) static X_SLOGUARD_FALLBACK: HeaderName = HeaderName::from_static("x-sloguard-fallback");
pub(crate) static X_SLOGUARD_CACHE: HeaderName = HeaderName::from_static("x-sloguard-cache");

/// Why a request left an upstream: a `fallback_on` class, or an open circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    ConnectError,
    Timeout,
    ServerError,
    TooManyRequests,
    CircuitOpen,
}

impl FallbackReason {
    pub const COUNT: usize = 5;
    pub const ALL: [FallbackReason; FallbackReason::COUNT] = [
        FallbackReason::ConnectError,
        FallbackReason::Timeout,
        FallbackReason::ServerError,
        FallbackReason::TooManyRequests,
        FallbackReason::CircuitOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::ServerError => "5xx",
            FallbackReason::TooManyRequests => "429",
            FallbackReason::CircuitOpen => "circuit_open",
        }
    }

    /// The `x-sloguard-fallback` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    fn class(self) -> Option<FallbackClass> {
        match self {
            FallbackReason::ConnectError => Some(FallbackClass::ConnectError),
            FallbackReason::Timeout => Some(FallbackClass::Timeout),
            FallbackReason::ServerError => Some(FallbackClass::ServerError),
            FallbackReason::TooManyRequests => Some(FallbackClass::TooManyRequests),
            FallbackReason::CircuitOpen => None,
        }
    }

    /// The class of a response head that may move a request on.
    pub fn of_status(status: StatusCode) -> Option<FallbackReason> {
        if status.is_server_error() {
            Some(FallbackReason::ServerError)
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Some(FallbackReason::TooManyRequests)
        } else {
            None
        }
    }

    /// The class of a failure before the response head. A connection the upstream broke before
    /// answering is a connect error here: the request got no answer, and nothing reached the
    /// client. Failures that are the client's (or the sidecar's) move nothing on.
    pub fn of_error(err: &ProxyError) -> Option<FallbackReason> {
        match err {
            ProxyError::Connect { .. } | ProxyError::Broken { .. } => {
                Some(FallbackReason::ConnectError)
            }
            ProxyError::FirstByteTimeout { .. } => Some(FallbackReason::Timeout),
            _ => None,
        }
    }
}

/// `fallback_on` as a set.
#[derive(Debug, Clone, Copy, Default)]
pub struct FallbackOn(u8);

impl FallbackOn {
    pub fn new(classes: &[FallbackClass]) -> FallbackOn {
        FallbackOn(classes.iter().fold(0, |m, c| m | 1 << (*c as u8)))
    }

    pub fn contains(self, reason: FallbackReason) -> bool {
        reason
            .class()
            .is_some_and(|c| self.0 & (1 << (c as u8)) != 0)
    }
}

/// `sloguard_fallbacks_total` of a route by `[hop][reason]`: from `chain[hop]` to the next
/// upstream, or from the last to the cache (absent without one).
#[derive(Debug)]
pub struct FallbackCounters(pub(super) Vec<[Counter; FallbackReason::COUNT]>);

impl FallbackCounters {
    /// Counts a request's moves from `from` (left for `reason`) to `to` (past the chain: the
    /// cache): one per hop, every upstream in between skipped for its open circuit.
    pub fn count_moves(&self, from: usize, reason: FallbackReason, to: usize) {
        let mut reason = reason;
        for hop in from..to {
            if let Some(counters) = self.0.get(hop) {
                counters[reason as usize].increment(1);
            }
            reason = FallbackReason::CircuitOpen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_on_is_a_set_of_classes() {
        let on = FallbackOn::new(&[FallbackClass::ServerError, FallbackClass::Timeout]);
        assert!(on.contains(FallbackReason::ServerError));
        assert!(on.contains(FallbackReason::Timeout));
        assert!(!on.contains(FallbackReason::TooManyRequests));
        assert!(!on.contains(FallbackReason::ConnectError));
        // An open circuit is no failure of the request: it is never "in" fallback_on.
        assert!(!on.contains(FallbackReason::CircuitOpen));
        let all = FallbackOn::new(&FallbackClass::ALL);
        assert!(FallbackReason::ALL[..4].iter().all(|r| all.contains(*r)));
    }

    #[test]
    fn statuses_that_move_a_request_on() {
        assert_eq!(
            FallbackReason::of_status(StatusCode::BAD_GATEWAY),
            Some(FallbackReason::ServerError)
        );
        assert_eq!(
            FallbackReason::of_status(StatusCode::TOO_MANY_REQUESTS),
            Some(FallbackReason::TooManyRequests)
        );
        assert_eq!(FallbackReason::of_status(StatusCode::BAD_REQUEST), None);
        assert_eq!(FallbackReason::of_status(StatusCode::OK), None);
    }
}
