//! `listeners[].limits` and `admin.limits`: what client connections may hold — how many, and for
//! how long without sending anything — so that no client can pin the sidecar's sockets, tasks or
//! memory.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigDuration;

/// The most client connections a listener may be set to hold (at the limit, finding the idlest
/// looks at each).
pub(super) const MAX_CONNECTIONS_LIMIT: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections open at once. At the limit, a new connection takes the place of the
    /// one idle longest (no request in flight); when every one is busy, it is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A new connection's first request head must have arrived within this (an HTTP/2
    /// connection: its preface, settings and a first request). A socket that sends nothing is
    /// closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    /// A connection with no request in flight for this long is closed (gracefully: HTTP/2 gets a
    /// GOAWAY). Also the longest an HTTP/1.1 connection may take to send its next request head.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// A request's body must have arrived whole within this after its head; past it the client
    /// gets 408 `request_timeout`. Listeners only (admin requests carry no body); default 60s.
    #[serde(default)]
    pub body_timeout: Option<ConfigDuration>,
    /// HTTP/2 streams one connection may have open at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval: a peer that does not answer one within `h2_keepalive_timeout` is
    /// gone, and its connection is closed.
    #[serde(default = "default_h2_keepalive_interval")]
    pub h2_keepalive_interval: ConfigDuration,
    #[serde(default = "default_h2_keepalive_timeout")]
    pub h2_keepalive_timeout: ConfigDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            body_timeout: None,
            max_concurrent_streams: default_max_concurrent_streams(),
            h2_keepalive_interval: default_h2_keepalive_interval(),
            h2_keepalive_timeout: default_h2_keepalive_timeout(),
        }
    }
}

/// A sidecar fronts one agent: a thousand connections is far past one pod's concurrency, and
/// about 20 MiB of connection buffers at most.
fn default_max_connections() -> usize {
    1024
}

fn default_header_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

/// Longer than the keep-alive most HTTP clients allow themselves (Go's 90s is the exception), so
/// that the client, not the sidecar, usually closes an idle connection: no request is then lost
/// to a close racing its send.
fn default_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

pub(super) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

fn default_max_concurrent_streams() -> u32 {
    100
}

fn default_h2_keepalive_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(20))
}

fn default_h2_keepalive_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

impl Limits {
    /// The body deadline (listeners).
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout.map_or(DEFAULT_BODY_TIMEOUT, |d| d.0)
    }

    /// Checks the values; `base` is the key path of the section (`listeners[0].limits`).
    pub fn validate(&self, base: &str, admin: bool) -> Result<(), (String, String)> {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err((
                format!("{base}.max_connections"),
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err((
                format!("{base}.max_concurrent_streams"),
                "must be at least 1".into(),
            ));
        }
        if admin && self.body_timeout.is_some() {
            return Err((
                format!("{base}.body_timeout"),
                "admin requests carry no body; body_timeout is for listeners".into(),
            ));
        }
        let durations = [
            ("header_timeout", Some(self.header_timeout)),
            ("idle_timeout", Some(self.idle_timeout)),
            ("body_timeout", self.body_timeout),
            ("h2_keepalive_interval", Some(self.h2_keepalive_interval)),
            ("h2_keepalive_timeout", Some(self.h2_keepalive_timeout)),
        ];
        for (key, d) in durations {
            if d.is_some_and(|d| d.0 < Duration::from_millis(100)) {
                return Err((format!("{base}.{key}"), "must be at least 100ms".into()));
            }
        }
        Ok(())
    }
}

/// `memory:`: what the sidecar holds of bodies at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Body bytes held at once across every request (see [`crate::budget`]): bodies read ahead
    /// for replay, responses read whole, SSE events being assembled, streams held back.
    #[serde(default = "default_max_held")]
    pub max_held: super::ByteSize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_held: default_max_held(),
        }
    }
}

/// Half of the 256 MiB the shipped deployment gives the container: the rest is the process,
/// its connections and the cache.
fn default_max_held() -> super::ByteSize {
    super::ByteSize(128 * 1024 * 1024)
}

impl MemoryConfig {
    /// `max_replay`: the largest `max_replay_body` of any route.
    pub fn validate(&self, max_replay: u64) -> Result<(), (String, String)> {
        let least = max_replay.max(crate::inspect::MAX_INSPECTED_BODY as u64);
        if self.max_held.0 < least {
            return Err((
                "memory.max_held".into(),
                format!(
                    "must be at least {} KiB: the largest body one request may hold (4 MiB read whole, or a route's max_replay_body)",
                    least / 1024
                ),
            ));
        }
        Ok(())
    }
}
