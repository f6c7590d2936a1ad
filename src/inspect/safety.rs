//! Safety detectors over response text: built-in PII and secret detectors, the user's regexes
//! (one `RegexSet` pass decides which can match at all) and keywords (one case-insensitive
//! Aho-Corasick automaton).
//!
//! Text arrives in pieces (SSE deltas, body chunks). A [`Scanner`] keeps an overlap window as
//! long as the longest possible match (bounded by [`MAX_OVERLAP`]), so a match split across
//! pieces is found, and never more than that window plus a batch of new text: memory is fixed,
//! whatever the body's length. Text is scanned in batches of [`SCAN_BATCH`] bytes (and at the
//! end), not per piece: a stream of 5-byte deltas does not rescan the window per delta.
//!
//! Each match is reported once. A match is reported when all the text it could extend over has
//! arrived (the overlap's length past its start) or the text has ended: "a@b.co" may still
//! become "a@b.com". Scans happen at fixed offsets of the text, so what is found does not depend
//! on how the text was cut into pieces.

use std::sync::Arc;

mod starts;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// The longest match the scanner guarantees to find across piece boundaries; a regex whose
/// matches can be longer (unbounded repetition) is still applied, but a match longer than this
/// that straddles a boundary can be missed.
pub const MAX_OVERLAP: usize = 4096;
/// Detectors a config may list: each response keeps one bit per detector and signal.
pub const MAX_DETECTORS: usize = 61;
/// New text gathered before a scan. A scan reads the overlap again: larger batches read less
/// twice (16 KiB against a 4 KiB overlap: each byte is read 1.25 times) at the price of memory
/// per response being scanned (overlap + batch, about 20 KiB).
pub const SCAN_BATCH: usize = 16 * 1024;
/// Compiled regexes are bounded (a hostile or careless pattern cannot take the memory).
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Bytes a regex may look at beyond a match, on either side, to decide a `\b` (one UTF-8
/// character).
const CONTEXT: usize = 4;

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    PiiEmail,
    PiiCreditCard,
    PiiUsSsn,
    Secrets,
}

impl Builtin {
    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::PiiEmail => "pii_email",
            Builtin::PiiCreditCard => "pii_credit_card",
            Builtin::PiiUsSsn => "pii_us_ssn",
            Builtin::Secrets => "secrets",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        [
            Builtin::PiiEmail,
            Builtin::PiiCreditCard,
            Builtin::PiiUsSsn,
            Builtin::Secrets,
        ]
        .into_iter()
        .find(|b| b.as_str() == name)
    }

    /// The patterns, each with the check a match must also pass. ASCII only (`(?-u)`): the
    /// things they find are ASCII, and ASCII classes are faster.
    ///
    /// Every pattern is bounded in length, so that the overlap a scanner keeps (and, when
    /// blocking, the text it holds back from a stream) is a few hundred bytes, not
    /// [`MAX_OVERLAP`]. A pattern for a token of open-ended length matches the token's start,
    /// long enough to be sure it is one: enough to count it or block it.
    fn patterns(self) -> &'static [(&'static str, Check)] {
        match self {
            Builtin::PiiEmail => &[(
                r"(?-u)\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}\b",
                Check::Email,
            )],
            // 13 to 19 digits, single spaces or dashes between them allowed.
            Builtin::PiiCreditCard => &[(r"(?-u)\b\d(?:[ -]?\d){12,18}\b", Check::Luhn)],
            Builtin::PiiUsSsn => &[(r"(?-u)\b\d{3}-\d{2}-\d{4}\b", Check::Ssn)],
            Builtin::Secrets => &[
                // OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-...) API keys.
                (r"(?-u)\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20}", Check::None),
                // AWS access key ids.
                (r"(?-u)\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", Check::None),
                // GitHub tokens.
                (r"(?-u)\bgh[pousr]_[A-Za-z0-9]{36}", Check::None),
                (r"(?-u)\bgithub_pat_[A-Za-z0-9_]{22}", Check::None),
                // PEM private key blocks.
                (
                    r"(?-u)-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----",
                    Check::None,
                ),
                // A JWT: a base64url JSON header, then the start of its JSON payload.
                (
                    r"(?-u)\beyJ[A-Za-z0-9_-]{8,256}\.eyJ[A-Za-z0-9_-]{8}",
                    Check::None,
                ),
            ],
        }
    }
}

/// What a regex match must also pass to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    /// A payment card number: its digits pass the Luhn check.
    Luhn,
    /// A US social security number that can exist: area not 000, 666 or 9xx, group not 00,
    /// serial not 0000.
    Ssn,
    /// Not a documentation address (`example.com`, `.test`, ...) nor a git remote (`git@host`).
    Email,
}

impl Check {
    fn passes(self, m: &[u8]) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => luhn(m),
            Check::Ssn => ssn(m),
            Check::Email => email(m),
        }
    }
}

fn luhn(m: &[u8]) -> bool {
    let digits = m.iter().rev().filter(|b| b.is_ascii_digit());
    let (mut sum, mut n) = (0u32, 0usize);
    for (i, d) in digits.enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
        n += 1;
    }
    (13..=19).contains(&n) && sum % 10 == 0
}

fn ssn(m: &[u8]) -> bool {
    let num = |r: std::ops::Range<usize>| {
        m.get(r)
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u32>().ok())
    };
    match (num(0..3), num(4..6), num(7..11)) {
        (Some(area), Some(group), Some(serial)) => {
            area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        }
        _ => false,
    }
}

fn email(m: &[u8]) -> bool {
    let Some(at) = m.iter().position(|b| *b == b'@') else {
        return false;
    };
    let (local, domain) = (&m[..at], m[at + 1..].to_ascii_lowercase());
    // RFC 2606 / 6761 names for documentation and tests.
    let reserved = ["example.com", "example.org", "example.net"]
        .iter()
        .any(|d| domain == d.as_bytes() || domain.ends_with(&[b".", d.as_bytes()].concat()))
        || [".example", ".test", ".invalid", ".localhost"]
            .iter()
            .any(|s| domain.ends_with(s.as_bytes()));
    !reserved && local != b"git"
}

/// One detector as configured.
#[derive(Debug, Clone)]
pub enum DetectorSpec {
    Builtin(Builtin),
    Regex { name: String, pattern: String },
    Keywords { name: String, words: Vec<String> },
}

/// Why a detector could not be built: which one (its index), and the reason.
#[derive(Debug, thiserror::Error)]
#[error("detectors[{index}]: {message}")]
pub struct DetectorError {
    pub index: usize,
    pub message: String,
}

#[derive(Debug)]
struct Pattern {
    detector: usize,
    regex: Regex,
    check: Check,
}

/// Every configured detector, compiled once per config.
#[derive(Debug)]
pub struct Detectors {
    /// Per detector: the `detector` label value.
    names: Vec<Arc<str>>,
    patterns: Vec<Pattern>,
    /// All patterns in one pass: which can match a window at all.
    set: RegexSet,
    /// All keywords; the pattern id indexes `keyword_detector`.
    keywords: Option<AhoCorasick>,
    keyword_detector: Vec<usize>,
    /// Bytes kept between scans: the longest possible match, at most [`MAX_OVERLAP`].
    overlap: usize,
    /// Where a match could still start (for a stream held back while blocking).
    starts: Option<starts::Starts>,
}

/// A match: which detector, where in the text (byte offsets from the text's start), and a
/// fingerprint of what it matched (see [`fingerprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub detector: usize,
    pub start: u64,
    pub end: u64,
    pub fingerprint: u64,
}

/// A fingerprint of matched text, for telling an echo (the same thing found in the request)
/// from something the agent said of its own: the detector and the text's ASCII letters and
/// digits, case folded, so that `4111-1111-...` and `4111 1111 ...`, or `Jane@Acme.io` and
/// `jane@acme.io`, are one thing. The text itself is never kept.
pub fn fingerprint(detector: usize, text: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(detector as u64).to_le_bytes());
    for b in text.iter().filter(|b| b.is_ascii_alphanumeric()) {
        h.update(&[b.to_ascii_lowercase()]);
    }
    h.digest()
}

/// The detectors' names, regex sources and keywords, as the config lists them.
struct Listed {
    names: Vec<Arc<str>>,
    /// Per regex: its detector, its source, the check its matches must pass.
    sources: Vec<(usize, String, Check)>,
    words: Vec<String>,
    /// Per keyword: its detector.
    keyword_detector: Vec<usize>,
}

impl Listed {
    fn from_specs(specs: &[DetectorSpec]) -> Result<Listed, DetectorError> {
        let mut names = Vec::with_capacity(specs.len());
        let mut sources: Vec<(usize, String, Check)> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut keyword_detector = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            match spec {
                DetectorSpec::Builtin(b) => {
                    names.push(Arc::from(b.as_str()));
                    for (p, check) in b.patterns() {
                        sources.push((index, (*p).to_owned(), *check));
                    }
                }
                DetectorSpec::Regex { name, pattern } => {
                    names.push(Arc::from(name.as_str()));
                    sources.push((index, pattern.clone(), Check::None));
                }
                DetectorSpec::Keywords { name, words: w } => {
                    names.push(Arc::from(name.as_str()));
                    if let Some(i) = w.iter().position(|w| w.is_empty()) {
                        return Err(DetectorError {
                            index,
                            message: format!("keywords[{i}] is empty"),
                        });
                    }
                    words.extend(w.iter().cloned());
                    keyword_detector.extend(std::iter::repeat_n(index, w.len()));
                }
            }
        }
        Ok(Listed {
            names,
            sources,
            words,
            keyword_detector,
        })
    }
}

/// Each regex compiled (one that can match the empty text refused), and the overlap the longest
/// of their matches needs.
fn compile_patterns(
    sources: &[(usize, String, Check)],
) -> Result<(Vec<Pattern>, usize), DetectorError> {
    let mut overlap = 0usize;
    let mut patterns = Vec::with_capacity(sources.len());
    for (detector, source, check) in sources {
        let err = |e: &dyn std::fmt::Display| DetectorError {
            index: *detector,
            message: format!("invalid regex: {e}"),
        };
        let regex = RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| err(&e))?;
        let hir = regex_syntax::parse(source).map_err(|e| err(&e))?;
        if hir.properties().minimum_len() == Some(0) {
            return Err(err(
                &"it matches the empty text, so it would flag every response",
            ));
        }
        let longest = hir.properties().maximum_len().unwrap_or(MAX_OVERLAP);
        overlap = overlap.max(longest.min(MAX_OVERLAP));
        patterns.push(Pattern {
            detector: *detector,
            regex,
            check: *check,
        });
    }
    Ok((patterns, overlap))
}

/// All keywords in one case-insensitive automaton (`keyword_detector`: each one's detector).
fn keyword_automaton(
    words: &[String],
    keyword_detector: &[usize],
) -> Result<AhoCorasick, DetectorError> {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(words)
        .map_err(|e| DetectorError {
            index: keyword_detector.first().copied().unwrap_or(0),
            message: format!("keywords: {e}"),
        })
}

impl Detectors {
    pub fn new(specs: &[DetectorSpec]) -> Result<Detectors, DetectorError> {
        let Listed {
            names,
            sources,
            words,
            keyword_detector,
        } = Listed::from_specs(specs)?;
        let (patterns, mut overlap) = compile_patterns(&sources)?;
        let set = RegexSetBuilder::new(sources.iter().map(|(_, s, _)| s))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| DetectorError {
                index: 0,
                message: format!("the regexes together are too large: {e}"),
            })?;
        let keywords = if words.is_empty() {
            None
        } else {
            overlap = overlap.max(
                words
                    .iter()
                    .map(String::len)
                    .max()
                    .unwrap_or(0)
                    .min(MAX_OVERLAP),
            );
            Some(keyword_automaton(&words, &keyword_detector)?)
        };
        let sources: Vec<String> = sources.into_iter().map(|(_, s, _)| s).collect();
        Ok(Detectors {
            names,
            patterns,
            set,
            keywords,
            keyword_detector,
            overlap,
            starts: starts::Starts::new(&sources, &words),
        })
    }

    /// The `detector` label of detector `index`.
    pub fn name(&self, index: usize) -> &str {
        self.names.get(index).map_or("unknown", |n| n)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The overlap window kept between scans.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    pub fn scanner(self: &Arc<Self>) -> Scanner {
        self.scanner_batching(SCAN_BATCH)
    }

    /// A scanner that scans once `batch` new bytes have arrived (tests use small batches, so
    /// that the overlap is exercised by short texts).
    fn scanner_batching(self: &Arc<Self>, batch: usize) -> Scanner {
        Scanner {
            detectors: self.clone(),
            clean: 0,
            alive: 0,
            batch: batch.max(1),
            window: Vec::new(),
            base: 0,
            scanned: 0,
            resume: vec![0; self.patterns.len() + 1],
        }
    }
}

/// Scans one text (one response's output) as it arrives.
pub struct Scanner {
    detectors: Arc<Detectors>,
    /// No match not yet reported starts before this offset of the text.
    clean: u64,
    /// No match at all can start between `clean` and this offset (see [`starts`]).
    alive: u64,
    batch: usize,
    /// The overlap kept from before, then the text not yet scanned.
    window: Vec<u8>,
    /// Offset in the text of `window[0]`.
    base: u64,
    /// Bytes of `window` already scanned (the overlap after a trim).
    scanned: usize,
    /// Per pattern (then the keywords): the offset in the text its next search starts from.
    resume: Vec<u64>,
}

/// Offsets only: the window is a response's text, not for a log.
impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("clean", &self.clean)
            .field("alive", &self.alive)
            .field("window", &self.window.len())
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// More text; matches found are passed to `found`.
    pub fn feed(&mut self, mut text: &[u8], found: &mut impl FnMut(Match)) {
        // Scans at fixed offsets of the text, whatever pieces it came in: what is found does not
        // depend on how the text was cut. A large piece goes in a batch at a time, so that the
        // window never holds more than the overlap and a batch (and each scan moves only the
        // overlap to the window's front).
        while !text.is_empty() {
            let room = self.batch - (self.window.len() - self.scanned).min(self.batch);
            let (now, rest) = text.split_at(room.min(text.len()));
            self.window.extend_from_slice(now);
            text = rest;
            if self.window.len() - self.scanned >= self.batch {
                let upto = self.scanned + self.batch;
                self.scan(upto, false, found);
            }
        }
    }

    /// The text has ended: what is left is scanned, matches at its very end included.
    pub fn finish(&mut self, found: &mut impl FnMut(Match)) {
        if !self.window.is_empty() {
            let upto = self.window.len();
            self.scan(upto, true, found);
        }
        self.clean = self.base + self.window.len() as u64;
    }

    /// Scans what has arrived now rather than when a batch is full, if at least `min` bytes
    /// are new: a stream being held back until it is known clean must not wait for a batch.
    pub fn flush(&mut self, min: usize, found: &mut impl FnMut(Match)) {
        let upto = self.window.len();
        if upto - self.scanned >= min.max(1) {
            self.scan(upto, false, found);
        }
    }

    /// The offset of the text before which every match has been reported: text before it
    /// may be let through.
    pub fn clean_upto(&self) -> u64 {
        self.clean
    }

    /// The offset before which no match can start, whatever text follows — at least
    /// [`Scanner::clean_upto`], and in prose just short of the end: the first position from
    /// which some pattern may still match (the `starts` module). For a stream held back while
    /// blocking: its text before this offset can go out.
    pub fn settled_upto(&mut self) -> u64 {
        let Some(starts) = &self.detectors.starts else {
            return self.clean;
        };
        let from = self.alive.max(self.clean).max(self.base);
        let at = usize::try_from(from - self.base).unwrap_or(self.window.len());
        let first = starts.first_alive(&self.window, at.min(self.window.len()));
        self.alive = self.base + first as u64;
        self.alive.max(self.clean)
    }

    /// Bytes of text taken in so far.
    pub fn len(&self) -> u64 {
        self.base + self.window.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scans `window[..upto]` for the matches that start before the last `overlap` bytes (all
    /// of them on the last scan), then drops what no later scan needs.
    ///
    /// Each pattern resumes where a scan of the whole text in one piece would: just after its
    /// last match (whether or not that match passed its check), or, when it found none, where
    /// the text still to scan begins. A match starting before `ready` lies whole in the
    /// window, with the bytes a `\b` looks at on either side of it, so it is the very match the
    /// scan of the whole text finds there; one starting later may still grow ("a@b.co" then
    /// "m") or not be there at all, and is left to the next scan, which sees it from its start.
    fn scan(&mut self, upto: usize, last: bool, found: &mut impl FnMut(Match)) {
        let d = &*self.detectors;
        let w = &self.window[..upto];
        let ready = if last {
            upto
        } else {
            upto.saturating_sub(d.overlap + CONTEXT)
        };
        let base = self.base;
        let at_of = |resume: u64| usize::try_from(resume - base).unwrap_or(upto).min(upto);
        // Most text matches nothing: a search that may stop at the first match (and need not
        // track every pattern's) says so at a fraction of the cost of `matches`.
        let candidates = d.set.is_match(w).then(|| d.set.matches(w));
        for (i, p) in d.patterns.iter().enumerate() {
            let mut at = at_of(self.resume[i]);
            if candidates.as_ref().is_some_and(|c| c.matched(i)) {
                while let Some(m) = p.regex.find_at(w, at).filter(|m| m.start() < ready) {
                    if p.check.passes(m.as_bytes()) {
                        found(Match {
                            detector: p.detector,
                            start: base + m.start() as u64,
                            end: base + m.end() as u64,
                            fingerprint: fingerprint(p.detector, m.as_bytes()),
                        });
                    }
                    // Never empty: patterns that can match nothing are refused.
                    at = m.end();
                }
            }
            self.resume[i] = base + at.max(ready) as u64;
        }
        if let Some(ac) = &d.keywords {
            let slot = d.patterns.len();
            let mut at = at_of(self.resume[slot]);
            while let Some(m) = ac
                .find(aho_corasick::Input::new(w).span(at..upto))
                .filter(|m| m.start() < ready)
            {
                let detector = d.keyword_detector[m.pattern().as_usize()];
                found(Match {
                    detector,
                    start: base + m.start() as u64,
                    end: base + m.end() as u64,
                    fingerprint: fingerprint(detector, &w[m.start()..m.end()]),
                });
                at = m.end();
            }
            self.resume[slot] = base + at.max(ready) as u64;
        }
        self.clean = self.clean.max(base + ready as u64);
        // Every pattern resumes at `ready` or later; the bytes just before it are context.
        let cut = ready.saturating_sub(CONTEXT).min(upto);
        self.window.drain(..cut);
        self.base += cut as u64;
        self.scanned = upto - cut;
    }
}

#[cfg(test)]
mod tests;
