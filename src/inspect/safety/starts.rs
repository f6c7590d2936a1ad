//! Where a match could still start: what lets a stream being blocked go out as soon as its text
//! is known clean, rather than an overlap window later.
//!
//! The scanner reports a match once all the text it could extend over has arrived; until then
//! the last `overlap` bytes are undecided. Most of them cannot start a match at all: "lorem "
//! starts no email, no key, no card number — a lazy DFA of every pattern, run anchored from a
//! position, dies within a few bytes. So the text before the first position from which some
//! pattern is still alive (or has matched) holds no match start, and can be let through. In
//! prose that is the last word or so, not the last few hundred bytes.

use std::panic::{RefUnwindSafe, UnwindSafe};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::pool::Pool;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

/// Room for the lazy DFA's states per cache; a cache that fills is cleared (and the check it was
/// in is cut short, conservatively).
const CACHE_CAPACITY: usize = 256 * 1024;
/// Patterns needing more than this much cache are not used for this (the overlap decides).
const MAX_CACHE_CAPACITY: usize = 8 << 20;

type NewCache = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

#[derive(Debug)]
pub(super) struct Starts {
    dfa: DFA,
    /// Lazy DFA caches for reuse (the `regex` crate's own pool: a fast path for the thread that
    /// owns one, a stack for the others): a check holds one only while it runs, never across
    /// an await.
    caches: Pool<Cache, NewCache>,
}

/// What the patterns make of the text from one position on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// No pattern can match starting here, whatever follows.
    Dead,
    /// Some pattern matches from here, or may once more text arrives (or the DFA gave up).
    Alive,
}

impl Starts {
    /// The DFA of `patterns` (regex sources) and `words` (matched ASCII-case-insensitively);
    /// `None` if it cannot be built (a Unicode construct the lazy DFA does not do): then only
    /// the overlap decides.
    pub(super) fn new(patterns: &[String], words: &[String]) -> Option<Starts> {
        let mut all: Vec<String> = patterns.to_vec();
        all.extend(
            words
                .iter()
                .map(|w| format!("(?i-u){}", regex_syntax::escape(w))),
        );
        let build = |capacity: usize| {
            DFA::builder()
                .syntax(syntax::Config::new().utf8(false))
                .configure(
                    DFA::config()
                        .match_kind(MatchKind::All)
                        .cache_capacity(capacity)
                        .unicode_word_boundary(true),
                )
                .build_many(&all)
                .ok()
        };
        // Many patterns (a thousand keywords) need more room than the default: the first of
        // these sizes that is at least twice what they need, so that the cache is not cleared
        // at every check.
        let mut capacity = CACHE_CAPACITY;
        let dfa = loop {
            if build(capacity / 2).is_some() {
                break build(capacity)?;
            }
            capacity *= 4;
            if capacity > MAX_CACHE_CAPACITY {
                return None;
            }
        };
        let for_caches = dfa.clone();
        Some(Starts {
            dfa,
            caches: Pool::new(Box::new(move || for_caches.create_cache())),
        })
    }

    /// The first position in `text[from..]` from which some pattern is alive; `text.len()` if
    /// none. `text[..from]` is context (a `\b` looks behind).
    pub(super) fn first_alive(&self, text: &[u8], from: usize) -> usize {
        let mut cache = self.caches.get();
        let mut at = from;
        while at < text.len() && self.from(&mut cache, text, at) == From::Dead {
            at += 1;
        }
        at
    }

    fn from(&self, cache: &mut Cache, text: &[u8], at: usize) -> From {
        let input = Input::new(text).range(at..).anchored(Anchored::Yes);
        let Ok(mut sid) = self.dfa.start_state_forward(cache, &input) else {
            return From::Alive;
        };
        for &b in &text[at..] {
            if sid.is_dead() {
                return From::Dead;
            }
            if sid.is_match() || sid.is_quit() {
                return From::Alive;
            }
            sid = match self.dfa.next_state(cache, sid, b) {
                Ok(sid) => sid,
                Err(_) => {
                    cache.reset(&self.dfa);
                    return From::Alive;
                }
            };
        }
        if sid.is_dead() {
            From::Dead
        } else {
            From::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_may_still_match_is_alive() {
        let s = Starts::new(
            &[
                r"(?-u)\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}\.[A-Za-z]{2,24}\b".into(),
                r"(?-u)\bsk-[A-Za-z0-9_-]{20}".into(),
            ],
            &["Project Falcon".into()],
        )
        .unwrap();
        let first = |t: &str| s.first_alive(t.as_bytes(), 0);
        // Prose: only the last word may still become an address.
        assert_eq!(first("lorem ipsum dolor"), 12);
        // A word followed by a space is done; a key's start is alive; "proj" may begin a
        // keyword.
        assert_eq!(first("lorem ipsum "), 12);
        assert_eq!(first("the key sk-ab"), 8);
        assert_eq!(first("see the proj"), 8);
        // An address in progress is alive from its start.
        assert_eq!(first("mail jane@acme.c"), 5);
        // A match that has ended is alive too (the scanner reports it).
        assert_eq!(first("mail jane@acme.io today"), 5);
        assert_eq!(first(""), 0);
    }

    #[test]
    fn a_thousand_keywords_build() {
        let words: Vec<String> = (0..1000).map(|i| format!("term-{i:04}")).collect();
        let s = Starts::new(&[], &words).expect("built with a larger cache");
        assert_eq!(s.first_alive(b"the Term-00", 0), 4);
        assert_eq!(s.first_alive(b"the term-0001 x", 0), 4);
        assert_eq!(s.first_alive(b"the team ", 0), 9);
    }
}
