//! Session affinity on the `mcp` role: an MCP session (`Mcp-Session-Id`) lives on the server that
//! made it, so the sidecar remembers which upstream answered with each session id and sends the
//! session's later requests there — only there: no fallback, and while that upstream's circuit
//! is open they are refused, not admitted to another server that does not know the session.
//! Kept across reloads (by upstream name), bounded (least recently used forgotten first), and
//! holding no session id: only its hash.

use std::sync::Mutex;

use hashlink::LruCache;
use http::{HeaderMap, HeaderName};

/// Sessions remembered at most.
const MAX_SESSIONS: usize = 4096;

pub(crate) static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

/// Which upstream each session lives on (see the module's documentation).
pub(crate) struct Sessions(Mutex<LruCache<u64, Box<str>>>);

/// Sizes only.
impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |s| s.len());
        f.debug_struct("Sessions").field("len", &n).finish()
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions(Mutex::new(LruCache::new(MAX_SESSIONS)))
    }
}

/// The session a message carries, by the hash of its id.
pub(crate) fn session_of(headers: &HeaderMap) -> Option<u64> {
    let id = headers.get(&MCP_SESSION_ID)?.as_bytes();
    Some(xxhash_rust::xxh3::xxh3_64(id))
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Box<str>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Upstream `upstream` answered with this session (a response's `Mcp-Session-Id`).
    pub(crate) fn made(&self, session: u64, upstream: &str) {
        let mut table = self.table();
        if table.get(&session).is_some_and(|u| &**u == upstream) {
            return;
        }
        table.insert(session, upstream.into());
    }

    /// The upstream session `session` lives on, if known.
    pub(crate) fn upstream(
        &self,
        session: u64,
        found: impl FnOnce(&str) -> Option<usize>,
    ) -> Option<usize> {
        self.table().get(&session).and_then(|u| found(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_where_it_was_made_and_the_table_is_bounded() {
        let s = Sessions::default();
        let mut h = HeaderMap::new();
        h.insert(&MCP_SESSION_ID, "abc-1".parse().unwrap());
        let id = session_of(&h).unwrap();
        assert_eq!(session_of(&HeaderMap::new()), None);
        let chain = ["primary", "replica"];
        let hop = |name: &str| chain.iter().position(|c| *c == name);
        assert_eq!(s.upstream(id, hop), None);
        s.made(id, "replica");
        assert_eq!(s.upstream(id, hop), Some(1));
        for i in 0..(MAX_SESSIONS as u64 + 10) {
            s.made(i, "primary");
        }
        assert_eq!(s.table().len(), MAX_SESSIONS);
        assert_eq!(s.upstream(id, hop), None, "the oldest was forgotten");
    }
}
