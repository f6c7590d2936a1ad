//! The framing of a plain HTTP/1.1 exchange: a request head read into a [`Head`] (or found out of
//! the ordinary: then hyper takes the connection), a response head written.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::upstream::h1::encode::{put_header, put_headers};
use crate::upstream::h1::names::header_name;

/// Most header lines a plain request may have (hyper's default; past it, hyper answers 431).
const MAX_HEADERS: usize = 100;

/// What the bytes read so far hold.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, taken apart at once: boxing it would allocate for every request"
)]
pub(crate) enum Parsed {
    /// A whole plain request head.
    Plain(Head),
    /// Not all of the head yet.
    Partial,
    /// Something the plain path does not serve: a malformed or oversized head, another version
    /// than HTTP/1.1 (HTTP/2's preface among them), `HEAD`, `CONNECT`, an upgrade,
    /// `Expect`, `Transfer-Encoding`, more than one `Content-Length`. hyper serves it.
    Unusual,
}

/// A plain request's head, its bytes taken from the read buffer.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    /// `Content-Length` (0 without one: a plain request has no other framing).
    pub(crate) length: u64,
    /// The client asked to close the connection after this exchange.
    pub(crate) close: bool,
}

/// Where a header line's name and value lie in the head (offsets as `u32`: a head is at most
/// [`super::MAX_HEADER_BYTES`] and a few reads long).
#[derive(Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

fn span_of(base: *const u8, part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base as usize;
    (start as u32, (start + part.len()) as u32)
}

fn range((start, end): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..end as usize
}

/// Reads a request head from the start of `buf`; a plain one's bytes are taken out of it. Its
/// headers go into `spare` (an empty map, the last answer's: no allocation when it has the room),
/// taken from there.
pub(crate) fn parse(buf: &mut BytesMut, spare: &mut HeaderMap) -> Parsed {
    if buf.len() > u32::MAX as usize {
        return Parsed::Unusual;
    }
    // Not cleared: httparse writes the lines it finds before anything reads them.
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unusual,
    };
    // A head past the limit is hyper's to answer (431), however it came to be read whole.
    if req.version != Some(1) || len > super::super::MAX_HEADER_BYTES {
        return Parsed::Unusual;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("DELETE") => Method::DELETE,
        Some("PATCH") => Method::PATCH,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Parsed::Unusual,
    };
    let base = buf.as_ptr();
    let Some(path) = req.path else {
        return Parsed::Unusual;
    };
    let path = range(span_of(base, path.as_bytes()));
    // Not cleared first (a `SmallVec`): zeroing the table cost a `memset` of 1.6 KB a request.
    let mut spans = smallvec::SmallVec::<[Span; MAX_HEADERS]>::new();
    let Some((length, close)) = scan(req.headers, base, &mut spans) else {
        return Parsed::Unusual;
    };
    let head = buf.split_to(len).freeze();
    match build(&head, path, &spans, spare) {
        Some((uri, headers)) => Parsed::Plain(Head {
            method,
            uri,
            headers,
            length: length.unwrap_or(0),
            close,
        }),
        None => {
            // A request target or header httparse let through and `http` does not: hyper gets
            // the whole head back, to answer it (the rare case pays a copy).
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parsed::Unusual
        }
    }
}

/// The request target and the headers, as slices of `head` (no copy), the headers in `spare`.
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    spans: &[Span],
    spare: &mut HeaderMap,
) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = std::mem::take(spare);
    // Room for what the proxy adds (`host`, `x-forwarded-*`) without growing the map.
    headers.reserve(spans.len() + 4);
    for span in spans {
        let name = header_name(&head[range(span.name)]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(range(span.value))).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// Notes where each header line lies, and what frames the request: its `Content-Length` (if
/// any) and whether it asks to close; `None` for a line that makes it out of the ordinary.
fn scan(
    lines: &[httparse::Header<'_>],
    base: *const u8,
    spans: &mut smallvec::SmallVec<[Span; MAX_HEADERS]>,
) -> Option<(Option<u64>, bool)> {
    let mut length = None;
    let mut close = false;
    for line in lines {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (length, parse_length(line.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return None,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in line.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return None;
        }
        spans.push(Span {
            name: span_of(base, name),
            value: span_of(base, line.value),
        });
    }
    Some((length, close))
}

/// A `Content-Length` value: digits only (no sign, no list), at most 18 of them.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How a response's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body may follow (204, 304), or none does.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: the length is not known before the end.
    Chunked,
}

/// Writes the response head to `out`: the status line, the headers (with `date` and the body's
/// framing added, and `connection: close` when `close`). `exact` is the body's length if it is
/// known. Returns the framing the body must follow.
pub(crate) fn encode_head(
    out: &mut BytesMut,
    parts: &mut Parts,
    exact: Option<u64>,
    close: bool,
) -> Framing {
    let status = parts.status;
    // A known length is written here, not put in the map: a value made from a number allocates.
    let mut length = None;
    let framing = if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.remove(TRANSFER_ENCODING);
        Framing::None
    } else if let Some(n) = exact {
        // Any `content-length` in the map is left out as the headers are written.
        length = Some(n);
        match n {
            0 => Framing::None,
            n => Framing::Length(n),
        }
    } else if let Some(n) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| parse_length(v.as_bytes()))
    {
        Framing::Length(n)
    } else {
        parts.headers.remove(CONTENT_LENGTH);
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Framing::Chunked
    };
    if close {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    // One pass, no hashed lookups: the map's own length left out when ours is written, and
    // whether it has a `date`.
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH && length.is_some() {
            continue;
        }
        dated |= name == DATE;
        put_header(out, name, value);
    }
    if let Some(n) = length {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    framing
}

thread_local! {
    /// The `Date` value, made once a second.
    static DATE_NOW: RefCell<(u64, Bytes)> = const { RefCell::new((0, Bytes::new())) };
}

fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_NOW.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = Bytes::from(httpdate::fmt_http_date(now));
        }
        out.put_slice(text);
    });
}

/// For the fuzz target `h1_request`: the bytes after the first as what a client sent, read whole
/// and fed in pieces of `1 + (first & 0x7f)` bytes as a connection reads them. No panic; the same
/// outcome both ways (the same plain head, left to hyper, or not whole yet); and a plain head
/// written back out reads as the same head again.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let mut whole_rest = BytesMut::from(bytes);
    let whole = parse(&mut whole_rest, &mut HeaderMap::new());
    let mut buf = BytesMut::new();
    let mut cut = Parsed::Partial;
    for piece in bytes.chunks(1 + usize::from(first & 0x7f)) {
        buf.extend_from_slice(piece);
        cut = parse(&mut buf, &mut HeaderMap::new());
        if !matches!(cut, Parsed::Partial) {
            break;
        }
    }
    match (&whole, &cut) {
        (Parsed::Plain(a), Parsed::Plain(b)) => {
            assert_same(a, b);
            // What follows the head: the same bytes, as far as the pieces had come.
            assert!(
                whole_rest.starts_with(&buf),
                "the bytes after the head differ"
            );
            let again = match parse(&mut written(a), &mut HeaderMap::new()) {
                Parsed::Plain(again) => again,
                other => panic!("a plain head written back reads as {other:?}"),
            };
            assert_same(a, &again);
        }
        (Parsed::Unusual, Parsed::Unusual) | (Parsed::Partial, Parsed::Partial) => {}
        _ => panic!("whole: {whole:?}, in pieces: {cut:?}"),
    }
    if !matches!(whole, Parsed::Plain(_)) {
        assert_eq!(
            &whole_rest[..],
            bytes,
            "bytes taken from a head left to hyper"
        );
    }
}

fn assert_same(a: &Head, b: &Head) {
    assert_eq!(
        (&a.method, &a.uri, &a.headers, a.length, a.close),
        (&b.method, &b.uri, &b.headers, b.length, b.close)
    );
}

/// A head as a client would send it.
fn written(head: &Head) -> BytesMut {
    let mut out = BytesMut::from(format!("{} {} HTTP/1.1\r\n", head.method, head.uri).as_bytes());
    put_headers(&mut out, &head.headers);
    out.put_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests;
