//! A gzip or deflate body decoded as it passes, for the safety detectors: a compressed stream is
//! read event by event like a plain one, with a decoder's window (32 KiB) of memory, not the
//! whole body. (A brotli body is only read whole, JSON only; where safety applies, sloguard asks
//! upstreams for gzip, deflate or nothing.)

use std::io::Write;

use bytes::buf::Writer;
use bytes::{BufMut, Bytes, BytesMut};
use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

/// Decoded bytes read from one body at most: past it (a decompression bomb, or a body no
/// detector should have to read) its text is lost to inspection, and under `block` it is
/// blocked as uninspectable.
pub(crate) const MAX_INFLATED: u64 = 256 * 1024 * 1024;

#[derive(Debug)]
enum Decoder {
    Gzip(MultiGzDecoder<Writer<BytesMut>>),
    Zlib(ZlibDecoder<Writer<BytesMut>>),
    Raw(DeflateDecoder<Writer<BytesMut>>),
    /// `deflate`, before its first byte says whether it is zlib-wrapped (as HTTP means) or raw
    /// (as some servers send it).
    Deflate,
}

#[derive(Debug)]
pub(crate) struct Inflater {
    decoder: Decoder,
    out: u64,
    failed: bool,
}

impl Inflater {
    pub(crate) fn gzip() -> Inflater {
        Inflater::new(Decoder::Gzip(MultiGzDecoder::new(BytesMut::new().writer())))
    }

    pub(crate) fn deflate() -> Inflater {
        Inflater::new(Decoder::Deflate)
    }

    fn new(decoder: Decoder) -> Inflater {
        Inflater {
            decoder,
            out: 0,
            failed: false,
        }
    }

    /// The body could not be decoded (corrupt, or past [`MAX_INFLATED`]): its text is lost.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// Decodes `chunk`; what it decodes to (everything it can, now) goes to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut dyn FnMut(&Bytes)) {
        if self.failed || chunk.is_empty() {
            return;
        }
        if let Decoder::Deflate = self.decoder {
            let w = BytesMut::new().writer();
            self.decoder = match chunk[0] & 0x0f == 8 {
                true => Decoder::Zlib(ZlibDecoder::new(w)),
                false => Decoder::Raw(DeflateDecoder::new(w)),
            };
        }
        // `flush` makes the decoder hand over everything it has decoded so far.
        let written = match &mut self.decoder {
            Decoder::Gzip(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Zlib(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Raw(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Deflate => Ok(()),
        };
        self.hand_over(written.is_ok(), out);
    }

    /// The body ended: what the decoder still holds goes to `out`.
    pub(crate) fn finish(&mut self, out: &mut dyn FnMut(&Bytes)) {
        if self.failed {
            return;
        }
        let finished = match &mut self.decoder {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zlib(d) => d.try_finish(),
            Decoder::Raw(d) => d.try_finish(),
            Decoder::Deflate => Ok(()),
        };
        self.hand_over(finished.is_ok(), out);
    }

    fn hand_over(&mut self, ok: bool, out: &mut dyn FnMut(&Bytes)) {
        let buffer = match &mut self.decoder {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zlib(d) => d.get_mut(),
            Decoder::Raw(d) => d.get_mut(),
            Decoder::Deflate => return,
        }
        .get_mut();
        let decoded = buffer.split().freeze();
        self.out += decoded.len() as u64;
        if !ok || self.out > MAX_INFLATED {
            self.failed = true;
            return;
        }
        if !decoded.is_empty() {
            out(&decoded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn inflate(mut i: Inflater, body: &[u8], cut: usize) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let (a, b) = body.split_at(cut.min(body.len()));
        for piece in [a, b] {
            i.feed(piece, &mut |d| got.extend_from_slice(d));
        }
        i.finish(&mut |d| got.extend_from_slice(d));
        (got, i.failed())
    }

    #[test]
    fn gzip_and_both_deflates_in_any_cut() {
        let text = b"data: {\"delta\":\"jane@acme.io\"}\n\n".repeat(50);
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        let raw = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&text).unwrap();
            e.finish().unwrap()
        };
        let gzipped = gz(&text);
        for cut in [0, 1, 7, 30, 10_000] {
            assert_eq!(
                inflate(Inflater::gzip(), &gzipped, cut),
                (text.clone(), false)
            );
            assert_eq!(
                inflate(Inflater::deflate(), &zlib, cut),
                (text.clone(), false)
            );
            assert_eq!(
                inflate(Inflater::deflate(), &raw, cut),
                (text.clone(), false)
            );
        }
    }

    #[test]
    fn what_a_prefix_decodes_to_comes_out_at_once() {
        // A streamed body compressed event by event (a sync flush after each, as a server that
        // streams does): each event is readable as soon as its bytes arrive.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"data: one\n\n").unwrap();
        e.flush().unwrap();
        let first = e.get_ref().len();
        e.write_all(b"data: two\n\n").unwrap();
        let body = e.finish().unwrap();
        let mut i = Inflater::gzip();
        let mut got = Vec::new();
        i.feed(&body[..first], &mut |d| got.extend_from_slice(d));
        assert_eq!(got, b"data: one\n\n");
    }

    #[test]
    fn corrupt_bodies_are_lost_not_misread() {
        let (_, failed) = inflate(Inflater::gzip(), b"not gzip at all", 3);
        assert!(failed);
    }
}
