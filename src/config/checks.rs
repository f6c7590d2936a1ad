//! The checks of `listeners` and `routes` that the schema cannot make: names, binds, chains,
//! and what a route's cache and replay allow.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    CacheConfig, Config, Protocol, Role, RouteConfig, MAX_CACHE_ENTRIES, MAX_REPLAY_BODY_LIMIT,
};

impl Config {
    /// `listeners`: at least one, names and binds unique (and not the admin port's), each
    /// naming a route that exists.
    pub(super) fn validate_listeners(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err((
                "listeners".into(),
                "at least one listener is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut binds: Vec<(SocketAddr, usize)> = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.name.is_empty() {
                return Err((format!("listeners[{i}].name"), "must not be empty".into()));
            }
            if l.name == "admin" {
                return Err((
                    format!("listeners[{i}].name"),
                    "\"admin\" is the admin port's listener label (its connections, the feedback verdicts): pick another name".into(),
                ));
            }
            if !names.insert(l.name.as_str()) {
                return Err((
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            if let Some((_, j)) = binds.iter().find(|(b, _)| binds_clash(*b, l.bind)) {
                return Err((
                    format!("listeners[{i}].bind"),
                    format!(
                        "duplicate bind address {}: listeners[{j}] binds it too",
                        l.bind
                    ),
                ));
            }
            if binds_clash(l.bind, self.admin.bind) {
                return Err((
                    format!("listeners[{i}].bind"),
                    format!("bind address {} is the admin port's (admin.bind)", l.bind),
                ));
            }
            binds.push((l.bind, i));
            l.limits
                .validate(&format!("listeners[{i}].limits"), false)?;
            let Some(route) = self.routes.get(&l.route) else {
                return Err((
                    format!("listeners[{i}].route"),
                    format!("no route named {:?} under `routes`", l.route),
                ));
            };
            if l.role == Role::Mcp {
                let other = route.upstreams.iter().find(|u| {
                    self.upstreams
                        .get(*u)
                        .is_some_and(|c| c.protocol != Protocol::Mcp)
                });
                if let Some(u) = other {
                    return Err((
                        format!("upstreams.{u}.protocol"),
                        format!(
                            "must be `mcp`: the upstream is behind the mcp listener {:?}",
                            l.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `routes.<name>`: a chain of distinct upstreams that exist and speak one protocol, a
    /// replay limit within bounds, and a cache only where it may be.
    pub(super) fn validate_route(
        &self,
        name: &str,
        route: &RouteConfig,
    ) -> Result<(), (String, String)> {
        let base = format!("routes.{name}");
        if route.upstreams.is_empty() {
            return Err((
                format!("{base}.upstreams"),
                "at least one upstream is required".into(),
            ));
        }
        for (i, up) in route.upstreams.iter().enumerate() {
            if !self.upstreams.contains_key(up) {
                return Err((
                    format!("{base}.upstreams[{i}]"),
                    format!("no upstream named {up:?} under `upstreams`"),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, up) in route.upstreams.iter().enumerate() {
            if !seen.insert(up) {
                return Err((
                    format!("{base}.upstreams[{i}]"),
                    format!("{up:?} is already in this route's chain; a fallback to the upstream that just failed would fail too"),
                ));
            }
        }
        if route.max_in_flight == Some(0) {
            return Err((
                format!("{base}.max_in_flight"),
                "must be at least 1 (leave it out for no cap)".into(),
            ));
        }
        if route.max_replay_body.0 > MAX_REPLAY_BODY_LIMIT {
            return Err((
                format!("{base}.max_replay_body"),
                format!(
                    "at most {} MiB: every request in flight may hold this much",
                    MAX_REPLAY_BODY_LIMIT >> 20
                ),
            ));
        }
        // One request body must suit every upstream it may be replayed to.
        let mut protocols = route
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Some((i, self.upstreams.get(u)?.protocol)))
            .filter(|(_, p)| *p != Protocol::None);
        if let Some((_, first)) = protocols.next() {
            if let Some((i, other)) = protocols.find(|(_, p)| *p != first) {
                return Err((
                    format!("{base}.upstreams[{i}]"),
                    format!(
                        "speaks {}, the chain before it {}: a request cannot be replayed from one protocol to the other",
                        other.provider_name(),
                        first.provider_name()
                    ),
                ));
            }
        }
        if let Some(cache) = &route.cache {
            self.validate_cache(name, route, cache)?;
        }
        Ok(())
    }

    /// `routes.<name>.cache`: only on routes of `llm` listeners, bounded, with a lifetime.
    fn validate_cache(
        &self,
        name: &str,
        route: &RouteConfig,
        cache: &CacheConfig,
    ) -> Result<(), (String, String)> {
        let base = format!("routes.{name}");
        if let Some(l) = self
            .listeners
            .iter()
            .find(|l| l.route == *name && l.role != Role::Llm)
        {
            return Err((
                format!("{base}.cache"),
                format!(
                    "only for routes of `llm` listeners; listener {:?} (role {}) uses this route, and an agent's answers belong to the task they were given for",
                    l.name,
                    l.role.as_str()
                ),
            ));
        }
        if let Some(i) = route.upstreams.iter().position(|u| u == "cache") {
            return Err((
                format!("{base}.upstreams[{i}]"),
                "an upstream named \"cache\" cannot be in a route with a cache: its metrics would be the cache's".into(),
            ));
        }
        if cache.max_entries == 0 || cache.max_entries > MAX_CACHE_ENTRIES {
            return Err((
                format!("{base}.cache.max_entries"),
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        if cache.ttl.0.is_zero() {
            return Err((
                format!("{base}.cache.ttl"),
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

/// Two binds clash when they share a port and one is the other's address or a wildcard.
fn binds_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
