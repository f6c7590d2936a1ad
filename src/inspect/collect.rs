//! A body kept for reading once it is whole, within [`MAX_INSPECTED_BODY`].
//!
//! Large chunks are kept as reference counts (no copy); small ones are copied into one buffer,
//! so that a body sent as a million 1-byte chunks costs its bytes, not a million handles each
//! pinning a network read buffer.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::budget::{Held, Reservation};

/// The most of one body (a request, a JSON response, one SSE event, a tool call's arguments) kept
/// for parsing. LLM requests carry whole conversations, so this is generous; past it, the body
/// still passes through untouched and is counted as unparsed (`*_too_large`).
pub const MAX_INSPECTED_BODY: usize = 4 << 20;

/// Chunks at least this big are kept by reference.
const SHARE_AT: usize = 4096;

pub struct Collected {
    /// The first chunk, by reference: a body in one chunk (the usual one) needs no list.
    first: Option<Bytes>,
    /// The chunks after it.
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
    limit: usize,
    /// What is kept, against the sidecar's body budget (unbounded until one is given).
    reservation: Reservation,
    /// A push was refused by the budget, not the limit.
    starved: bool,
    /// Reserved ahead and not pushed yet.
    prepaid: usize,
}

/// Sizes only: what is kept is a body, not for a log.
impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collected")
            .field("len", &self.len)
            .field("limit", &self.limit)
            .field("starved", &self.starved)
            .finish_non_exhaustive()
    }
}

impl Default for Collected {
    /// Bounded by [`MAX_INSPECTED_BODY`].
    fn default() -> Collected {
        Collected::with_limit(MAX_INSPECTED_BODY)
    }
}

impl Collected {
    pub fn with_limit(limit: usize) -> Collected {
        Collected {
            first: None,
            chunks: VecDeque::new(),
            tail: BytesMut::new(),
            len: 0,
            limit,
            reservation: Reservation::unbounded(Held::ResponseRead),
            starved: false,
            prepaid: 0,
        }
    }

    /// Counts what is kept against the budget `reservation` draws on (before anything is
    /// pushed).
    pub fn reserve_from(mut self, reservation: Reservation) -> Collected {
        self.reservation = reservation;
        self
    }

    /// Reserves `n` bytes at once, for a body that declared its length: all or nothing, so that
    /// requests racing for the last of the budget do not each take a part and all fail.
    pub fn reserve_ahead(&mut self, n: usize) -> bool {
        if n > self.limit || !self.reservation.grow(n) {
            self.starved = n <= self.limit;
            return false;
        }
        self.prepaid += n;
        true
    }

    /// A push was refused because the budget had no room (rather than the limit).
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// The bytes kept so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a chunk; `false` (and nothing added) when the body would pass the limit, or the
    /// budget has no room for it ([`Collected::starved`]).
    pub fn push(&mut self, chunk: &Bytes) -> bool {
        if self.len + chunk.len() > self.limit {
            return false;
        }
        let paid = chunk.len().min(self.prepaid);
        self.prepaid -= paid;
        if !self.reservation.grow(chunk.len() - paid) {
            self.starved = true;
            return false;
        }
        self.len += chunk.len();
        // The first chunk is kept by reference whatever its size: a body in one chunk (the
        // usual request) is then kept without a copy, and one handle is no burden.
        if self.first.is_none() {
            self.first = Some(chunk.clone());
        } else if chunk.len() >= SHARE_AT {
            self.flush();
            self.chunks.push_back(chunk.clone());
        } else {
            self.tail.extend_from_slice(chunk);
        }
        true
    }

    fn flush(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }

    /// The body in one piece (copied only when it is in more than one).
    pub fn into_bytes(mut self) -> Bytes {
        self.flush();
        match (self.first.take(), self.chunks.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(first), true) => first,
            (Some(first), false) => {
                let mut all = BytesMut::with_capacity(self.len);
                all.extend_from_slice(&first);
                self.chunks.iter().for_each(|c| all.extend_from_slice(c));
                all.freeze()
            }
        }
    }

    /// The body in one buffer of its own, always copied: it shares no memory with the chunks
    /// it came in (for keeping long after they were received).
    pub fn into_copied(mut self) -> Bytes {
        self.flush();
        let mut all = BytesMut::with_capacity(self.len);
        self.first
            .iter()
            .chain(&self.chunks)
            .for_each(|c| all.extend_from_slice(c));
        all.freeze()
    }

    /// The body as chunks, same bytes in the same order (to send on).
    pub fn into_chunks(self) -> VecDeque<Bytes> {
        self.into_reserved_chunks().0
    }

    /// The body as chunks, with the reservation that counts them (kept as long as they are).
    pub fn into_reserved_chunks(mut self) -> (VecDeque<Bytes>, Reservation) {
        self.flush();
        let mut chunks = std::mem::take(&mut self.chunks);
        if let Some(first) = self.first.take() {
            chunks.push_front(first);
        }
        let reservation = std::mem::replace(
            &mut self.reservation,
            Reservation::unbounded(Held::ResponseRead),
        );
        (chunks, reservation)
    }
}

/// The first bytes of a body, up to a limit, copied as they pass (a sample to be read later,
/// such as the judge's): the rest goes by unkept. Counted against the body budget; a chunk the
/// budget has no room for ends the prefix there.
pub(crate) struct Prefix {
    kept: BytesMut,
    limit: usize,
    reservation: Reservation,
    /// Bytes went by that were not kept (past the limit, or the budget's room).
    cut: bool,
}

/// Sizes only: what is kept is a body.
impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefix")
            .field("len", &self.kept.len())
            .field("limit", &self.limit)
            .field("cut", &self.cut)
            .finish()
    }
}

impl Prefix {
    pub(crate) fn new(limit: usize, reservation: Reservation) -> Prefix {
        Prefix {
            kept: BytesMut::new(),
            limit,
            reservation,
            cut: false,
        }
    }

    /// Keeps what of `chunk` fits.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let room = self.limit - self.kept.len();
        let n = chunk.len().min(room);
        if n > 0 && !self.reservation.grow(n) {
            // No room in the budget: the prefix ends here.
            self.limit = self.kept.len();
            self.cut = true;
            return;
        }
        self.kept.extend_from_slice(&chunk[..n]);
        self.cut |= n < chunk.len();
    }

    /// Nothing more will be kept.
    pub(crate) fn is_full(&self) -> bool {
        self.kept.len() >= self.limit
    }

    /// Notes that more went by, unkept.
    pub(crate) fn lose(&mut self) {
        self.cut = true;
    }

    /// What was kept, with the reservation that counts it, and whether more went by.
    pub(crate) fn finish(self) -> (Bytes, Reservation, bool) {
        (self.kept.freeze(), self.reservation, self.cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_chunks_are_copied_together_and_big_ones_shared() {
        let mut c = Collected::default();
        for _ in 0..10_000 {
            assert!(c.push(&Bytes::from_static(b"x")));
        }
        let big = Bytes::from(vec![b'y'; 8192]);
        assert!(c.push(&big));
        assert!(c.push(&Bytes::from_static(b"z")));
        assert_eq!(c.len, 10_000 + 8192 + 1);
        let chunks = c.into_chunks();
        // The first "x" (kept by reference), the other 9,999 copied together, the big one, "z".
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].len(), 9_999);
        assert_eq!(
            chunks[2].as_ptr(),
            big.as_ptr(),
            "the big chunk is not copied"
        );
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&all[..10_000], &[b'x'; 10_000][..]);
        assert_eq!(all.last(), Some(&b'z'));
    }

    #[test]
    fn a_body_in_one_small_chunk_is_not_copied() {
        let mut c = Collected::default();
        let one = Bytes::from(vec![b'{'; 100]);
        assert!(c.push(&one));
        assert_eq!(c.into_bytes().as_ptr(), one.as_ptr());
    }

    #[test]
    fn the_budget_holds_and_a_declared_length_is_all_or_nothing() {
        let t = crate::telemetry::Telemetry::new();
        let budget = t.body_budget(10_000, "a");
        let mut a = Collected::default().reserve_from(budget.reserve(Held::Replay));
        assert!(a.reserve_ahead(6_000));
        // Pushes draw on what was reserved ahead first.
        assert!(a.push(&Bytes::from(vec![0u8; 6_000])));
        assert_eq!(budget.used(), 6_000);
        let mut b = Collected::default().reserve_from(budget.reserve(Held::Replay));
        assert!(!b.reserve_ahead(6_000), "no room: nothing taken");
        assert!(b.starved());
        assert_eq!(budget.used(), 6_000);
        assert!(!b.push(&Bytes::from(vec![0u8; 5_000])));
        let (chunks, kept) = a.into_reserved_chunks();
        assert_eq!(chunks.len(), 1);
        assert_eq!(budget.used(), 6_000, "kept with its chunks");
        drop(kept);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_limit_holds() {
        let mut c = Collected::default();
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        for _ in 0..4 {
            assert!(c.push(&chunk));
        }
        assert!(!c.push(&Bytes::from_static(b"1")));
        assert_eq!(c.len, MAX_INSPECTED_BODY);
    }
}
