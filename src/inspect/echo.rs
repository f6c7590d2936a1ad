//! Echoes: what the detectors find in a request, so that a response repeating it is known for
//! what it is. A client that asks the agent to repeat a card number has not made the agent
//! leak one, and must not be able to trip the kill switch that way. The request's text goes
//! through the same detectors as it streams to the upstream; only the fingerprints of what
//! they find are kept (a fixed number), never the text.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use super::safety::{Detectors, Match, Scanner};
use super::text::{BodyText, Keys};

/// Fingerprints kept per request: a request quoting more sensitive things than this is rare,
/// and past it later ones are not known for echoes (counted as the agent's own: the safe side).
pub(crate) const MAX_ECHOES: usize = 256;

/// A request's text on its way, through the detectors.
#[derive(Debug)]
pub struct EchoTap {
    text: BodyText,
    scanner: Scanner,
    found: Vec<u64>,
}

/// The fingerprints of what the detectors found in a request.
#[derive(Debug, Default)]
pub struct Echoes(Vec<u64>);

impl Echoes {
    /// Whether `m` repeats something the request said.
    pub fn contains(&self, m: &Match) -> bool {
        self.0.contains(&m.fingerprint)
    }
}

impl EchoTap {
    /// The tap for a request with these headers: `None` when its text cannot be read as it
    /// passes (compressed, binary). A request without a type is read as text.
    pub fn new(detectors: &Arc<Detectors>, headers: &HeaderMap) -> Option<EchoTap> {
        let value = |name| headers.get(name).map(http::HeaderValue::as_bytes);
        let encoding = value(http::header::CONTENT_ENCODING);
        if encoding.is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity")) {
            return None;
        }
        Some(EchoTap {
            text: BodyText::for_body(Keys::All, value(http::header::CONTENT_TYPE), None).ok()?,
            scanner: detectors.scanner(),
            found: Vec::new(),
        })
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        let (found, scanner) = (&mut self.found, &mut self.scanner);
        self.text
            .feed(chunk, &mut |t| scanner.feed(t, &mut |m| remember(found, m)));
    }

    /// The request's body ended.
    pub fn finish(mut self) -> Echoes {
        let (found, scanner) = (&mut self.found, &mut self.scanner);
        self.text
            .finish(&mut |t| scanner.feed(t, &mut |m| remember(found, m)));
        scanner.finish(&mut |m| remember(found, m));
        Echoes(self.found)
    }
}

fn remember(found: &mut Vec<u64>, m: Match) {
    if found.len() < MAX_ECHOES && !found.contains(&m.fingerprint) {
        found.push(m.fingerprint);
    }
}
