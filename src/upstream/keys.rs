//! Provider API keys held by the sidecar (`api_keys_file`), so that agents carry none.
//!
//! The file has one key a line (blank lines and `#` comments skipped). Requests get the current
//! key; a 401 from the provider moves the upstream on to the next key. The file is re-read when
//! its content changes — Kubernetes updates a mounted Secret by swapping a symlink, so the
//! content is compared, not the inode or mtime. A missing or empty file at start is an error;
//! later, it is logged and counted, and the keys in use are kept.
//!
//! Keys never reach a log line, a label or an error message: errors name the file and a line
//! number only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use crate::config::Protocol;
use crate::telemetry::{KeyMetrics, LogLimiter};

/// Headers a client may carry its own provider key in; all removed before the sidecar's key goes
/// in (`api-key` is Azure OpenAI's).
static CLIENT_KEY_HEADERS: [HeaderName; 3] = [
    AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} holds no key (one key a line expected)")]
    Empty { path: String },
    #[error("{path}: line {line} is not a valid header value (control characters or non-ASCII)")]
    Invalid { path: String, line: usize },
}

/// The keys of one upstream and which one is in use.
pub struct KeyRing {
    path: PathBuf,
    protocol: Protocol,
    keys: ArcSwap<Vec<HeaderValue>>,
    current: AtomicUsize,
    /// The file content the keys were read from, to notice a change.
    loaded: Mutex<Vec<u8>>,
    /// The file could not be read at the last check.
    unreadable: AtomicBool,
    pub metrics: KeyMetrics,
}

/// Names the key file and how many keys it holds, never a key.
impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("path", &self.path)
            .field("protocol", &self.protocol)
            .field("keys", &self.keys.load().len())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// Reads and checks a key file's content into header values for `protocol`.
fn parse_keys(
    path: &Path,
    content: &[u8],
    protocol: Protocol,
) -> Result<Vec<HeaderValue>, KeyFileError> {
    let mut keys = Vec::new();
    for (i, line) in content.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let invalid = || KeyFileError::Invalid {
            path: path.display().to_string(),
            line: i + 1,
        };
        if !line.iter().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let value = match protocol {
            Protocol::Anthropic => HeaderValue::from_bytes(line),
            _ => HeaderValue::from_bytes(&[b"Bearer ", line].concat()),
        };
        let mut value = value.map_err(|_| invalid())?;
        // Never indexed by HPACK: a key does not linger in the h2 connection's header table.
        value.set_sensitive(true);
        keys.push(value);
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    std::fs::read(path).map_err(|e| KeyFileError::Unreadable {
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })
}

impl KeyRing {
    /// Loads the key file; any problem is a startup error.
    pub fn load(
        path: &Path,
        protocol: Protocol,
        metrics: KeyMetrics,
    ) -> Result<KeyRing, KeyFileError> {
        let content = read(path)?;
        let keys = parse_keys(path, &content, protocol)?;
        Ok(KeyRing {
            path: path.to_owned(),
            protocol,
            keys: ArcSwap::from_pointee(keys),
            current: AtomicUsize::new(0),
            loaded: Mutex::new(content),
            unreadable: AtomicBool::new(false),
            metrics,
        })
    }

    fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Removes the client's key headers and puts the current key in; returns which key it was, to
    /// hand back to [`KeyRing::rejected`] on a 401.
    pub fn inject(&self, headers: &mut HeaderMap) -> usize {
        for name in &CLIENT_KEY_HEADERS {
            headers.remove(name);
        }
        let keys = self.keys.load();
        let index = self.current.load(Ordering::Relaxed) % keys.len().max(1);
        if let Some(key) = keys.get(index) {
            let name = match self.protocol {
                Protocol::Anthropic => HeaderName::from_static("x-api-key"),
                _ => AUTHORIZATION,
            };
            headers.insert(name, key.clone());
        }
        index
    }

    /// The provider refused key `index` (401): later requests use the next key. Concurrent 401s
    /// for the same key move on once. Logged through the upstream's limiter: a provider refusing
    /// every key must not flood the log.
    pub fn rejected(&self, index: usize, log_limit: &LogLimiter) {
        self.metrics.rejections.increment(1);
        let n = self.len();
        let moved = n > 1
            && self
                .current
                .compare_exchange(index, (index + 1) % n, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if let Some(suppressed) = log_limit.allow() {
            if moved {
                tracing::warn!(file = %self.path.display(), key = index + 1, keys = n, suppressed, "provider rejected an API key (401); using the next one");
            } else {
                tracing::warn!(file = %self.path.display(), keys = n, suppressed, "provider rejected an API key (401)");
            }
        }
    }

    /// Re-reads the file if its content changed. A file that went missing or empty keeps the keys
    /// in use (and is logged and counted): an agent keeps working through a botched rotation.
    pub fn reload_if_changed(&self) {
        let content = match read(&self.path) {
            Ok(c) => c,
            // Reported once, not every second, until the file can be read again.
            Err(e) => {
                if !self.unreadable.swap(true, Ordering::AcqRel) {
                    self.reload_failed(&e);
                }
                return;
            }
        };
        self.unreadable.store(false, Ordering::Release);
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        if *loaded == content {
            return;
        }
        match parse_keys(&self.path, &content, self.protocol) {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.current.store(0, Ordering::Release);
                *loaded = content;
                self.metrics.reload_ok.increment(1);
                tracing::info!(file = %self.path.display(), keys = n, "API keys reloaded");
            }
            Err(e) => {
                // Not retried until the content changes again.
                *loaded = content;
                drop(loaded);
                self.reload_failed(&e);
            }
        }
    }

    fn reload_failed(&self, e: &KeyFileError) {
        self.metrics.reload_error.increment(1);
        tracing::error!(error = %e, "API key file unusable; keeping the keys in use");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn ring(content: &str, protocol: Protocol) -> (KeyRing, tempfile_path::TempPath) {
        let file = tempfile_path::TempPath::new(content);
        let metrics = KeyMetrics::new(&Telemetry::new(), "a", "u");
        (KeyRing::load(&file.0, protocol, metrics).unwrap(), file)
    }

    /// A file under the target directory, removed on drop (no tempfile crate for one test).
    mod tempfile_path {
        pub(super) struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub(super) fn new(content: &str) -> TempPath {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "sloguard-keys-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, content).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn injects_per_protocol_and_removes_client_keys() {
        let (r, _f) = ring("# comment\n\nsk-one\n sk-two \n", Protocol::Openai);
        assert_eq!(r.len(), 2);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("agent-key"));
        h.insert("api-key", HeaderValue::from_static("agent-key"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer agent-key"));
        assert_eq!(r.inject(&mut h), 0);
        assert_eq!(h.len(), 1);
        assert_eq!(h[AUTHORIZATION], "Bearer sk-one");
        assert!(h[AUTHORIZATION].is_sensitive());

        let (a, _g) = ring("ant-key\n", Protocol::Anthropic);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer agent-key"));
        a.inject(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-api-key"], "ant-key");
    }

    #[test]
    fn a_rejected_key_moves_on_once() {
        let (r, _f) = ring("k1\nk2\nk3\n", Protocol::Openai);
        let mut h = HeaderMap::new();
        let log = LogLimiter::new();
        let used = r.inject(&mut h);
        r.rejected(used, &log);
        r.rejected(used, &log); // a second 401 for the same key, in flight at the same time
        assert_eq!(r.inject(&mut h), 1);
        assert_eq!(h[AUTHORIZATION], "Bearer k2");
        r.rejected(1, &log);
        r.rejected(2, &log);
        assert_eq!(r.inject(&mut h), 0);
    }

    #[test]
    fn bad_files_name_the_file_never_the_key() {
        let p = std::path::Path::new("/k");
        assert_eq!(
            parse_keys(p, b"\n# only a comment\n", Protocol::Openai),
            Err(KeyFileError::Empty { path: "/k".into() })
        );
        let e = parse_keys(p, "ok\nsecret\u{7f}key\n".as_bytes(), Protocol::Openai).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/k: line 2 is not a valid header value (control characters or non-ASCII)"
        );
    }

    #[test]
    fn reload_keeps_keys_when_the_file_turns_empty_or_goes_away() {
        let f = tempfile_path::TempPath::new("k1\n");
        let t = Telemetry::new();
        let r = KeyRing::load(&f.0, Protocol::Openai, KeyMetrics::new(&t, "a", "u")).unwrap();
        std::fs::write(&f.0, "").unwrap();
        r.reload_if_changed();
        r.reload_if_changed();
        assert_eq!(r.len(), 1);
        std::fs::remove_file(&f.0).unwrap();
        r.reload_if_changed();
        r.reload_if_changed();
        assert_eq!(r.len(), 1);
        // Each broken state is reported once, not at every check.
        let errors = t
            .render()
            .lines()
            .find(|l| l.starts_with("sloguard_api_key_reloads_total{") && l.contains("error"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned());
        assert_eq!(errors.as_deref(), Some("2"));
        std::fs::write(&f.0, "k9\nk8\n").unwrap();
        r.reload_if_changed();
        let mut h = HeaderMap::new();
        r.inject(&mut h);
        assert_eq!(
            (r.len(), h[AUTHORIZATION].to_str().unwrap()),
            (2, "Bearer k9")
        );
    }
}
