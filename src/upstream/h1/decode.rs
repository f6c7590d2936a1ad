//! Reading an upstream's HTTP/1.1 response without I/O: the head (on `httparse`, the parser inside
//! hyper) and the framing of its body (RFC 9112 §6.3). Bytes go in, a head or body frames come
//! out; the connection ([`super::Conn`]) does the reading. Nothing here panics on any input (the
//! `every_input` test and the `h1_response` fuzz target feed it arbitrary bytes).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, StatusCode, Version};

/// Header fields in one head, as hyper allows.
pub(crate) const MAX_HEADERS: usize = 100;
/// The longest head read (hyper's bound: 8 KiB and 4 KiB per allowed header).
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * MAX_HEADERS;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// The longest trailer section of a chunked body (read and dropped).
const MAX_TRAILERS: usize = 64 * 1024;

/// What broke the response: the upstream is at fault, the connection is not reused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes or {MAX_HEADERS} fields")]
    HeadTooLarge,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("connection closed before the response was complete")]
    Incomplete,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` bytes (0: none, as for `HEAD`, 204 and 304).
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A final response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another exchange once this body has ended.
    pub(crate) keep_alive: bool,
}

/// Where a header's name and value lie in the head.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Takes a final response head from the front of `buf`: `Ok(None)` while it is incomplete.
/// Informational heads (1xx) before it are taken and dropped (hyper's client does the same).
/// `head_request`: the request was `HEAD`, so the response has no body whatever it says. The
/// headers go into `spare` (an empty map: the request's, written out), taken from there.
pub(crate) fn take_head(
    buf: &mut BytesMut,
    head_request: bool,
    spare: &mut HeaderMap,
) -> Result<Option<Head>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Filled in place: returned by value, it would be copied twice per response. Not cleared
    // first (a `SmallVec`): zeroing the table cost a `memset` of 1.6 KB a look.
    let mut spans = Spans::new();
    loop {
        let Some((len, status, version)) = parse(buf, &mut spans)? else {
            if buf.len() >= MAX_HEAD {
                return Err(DecodeError::HeadTooLarge);
            }
            return Ok(None);
        };
        let bytes = buf.split_to(len).freeze();
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(DecodeError::Head(
                    "101 Switching Protocols to a request that asked for no upgrade",
                ));
            }
            continue;
        }
        let status = StatusCode::from_u16(status).map_err(|_| DecodeError::Head("status code"))?;
        let mut headers = std::mem::take(spare);
        // Room for what the proxy adds (`x-sloguard-upstream`, ...) without growing the map.
        headers.reserve(spans.len() + 4);
        return build(&bytes, status, version, &spans, head_request, headers).map(Some);
    }
}

/// The head's length, status and version (its header fields' spans in `spans`).
type Parsed = (usize, u16, Version);

/// Where a head's header fields lie.
type Spans = smallvec::SmallVec<[Span; MAX_HEADERS]>;

fn parse(buf: &[u8], spans: &mut Spans) -> Result<Option<Parsed>, DecodeError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(DecodeError::HeadTooLarge),
        Err(e) => return Err(DecodeError::Head(head_error(e))),
    };
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = response.code.unwrap_or_default();
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    spans.clear();
    spans.extend(response.headers.iter().map(|h| Span {
        name: at(h.name.as_bytes()),
        value: at(h.value),
    }));
    Ok(Some((len, status, version)))
}

fn head_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::Version => "version",
        _ => "malformed",
    }
}

fn build(
    bytes: &Bytes,
    status: StatusCode,
    version: Version,
    spans: &[Span],
    head_request: bool,
    mut headers: HeaderMap,
) -> Result<Head, DecodeError> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let (mut close, mut keep_alive) = (false, false);
    for span in spans {
        let name = &bytes[span.name.0 as usize..(span.name.0 + span.name.1) as usize];
        let (start, len) = (span.value.0 as usize, span.value.1 as usize);
        let name = super::names::header_name(name).map_err(|_| DecodeError::Head("header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..start + len))
            .map_err(|_| DecodeError::Head("header value"))?;
        if name == CONTENT_LENGTH {
            let n = content_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(DecodeError::Head("differing Content-Length values"));
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            // The last coding decides: chunked or, for any other, to the close.
            let last = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    // `close` wins over `keep-alive` (RFC 9112 §9.3); HTTP/1.0 keeps only when asked to.
    let close = close || (version == Version::HTTP_10 && !keep_alive);
    if chunked.is_some() && version == Version::HTTP_10 {
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        return Err(DecodeError::Head(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) if version == Version::HTTP_11 => Framing::Chunked,
            (Some(_), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    // A body framed by both, or by the close, leaves the connection unfit for another exchange.
    let keep_alive =
        !close && framing != Framing::Close && !(chunked.is_some() && length.is_some());
    Ok(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

fn content_length(v: &[u8]) -> Result<u64, DecodeError> {
    // Repeated in one field ("5, 5") counts as one when they agree.
    let mut n: Option<u64> = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(DecodeError::Head("Content-Length"));
        }
        let value = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if n.is_some_and(|n| n != value) {
            return Err(DecodeError::Head("differing Content-Length values"));
        }
        n = Some(value);
    }
    n.ok_or(DecodeError::Head("Content-Length"))
}

/// What [`BodyDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The body has ended.
    End,
}

/// The body of one response, delimited by its [`Framing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::ChunkSize,
            Framing::Close => BodyDecoder::Close,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body from the front of `buf`; `eof`: the upstream has closed the
    /// connection, so no more bytes come than are in `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, DecodeError> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(Step::End),
                BodyDecoder::Length(n) => {
                    let data = take_counted(n, buf, eof)?;
                    if *n == 0 {
                        *self = BodyDecoder::Done;
                    }
                    return Ok(data);
                }
                BodyDecoder::Close => {
                    if !buf.is_empty() {
                        return Ok(Step::Data(buf.split().freeze()));
                    }
                    if eof {
                        *self = BodyDecoder::Done;
                        return Ok(Step::End);
                    }
                    return Ok(Step::More);
                }
                BodyDecoder::ChunkData(n) => {
                    let data = take_counted(n, buf, eof)?;
                    if *n == 0 {
                        *self = BodyDecoder::ChunkEnd;
                    }
                    return Ok(data);
                }
                BodyDecoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return more(eof);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::Chunked("chunk not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    *self = BodyDecoder::ChunkSize;
                }
                BodyDecoder::ChunkSize => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE, "chunk-size line too long")? else {
                        return more(eof);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        BodyDecoder::Trailers(0)
                    } else {
                        BodyDecoder::ChunkData(size)
                    };
                }
                BodyDecoder::Trailers(seen) => {
                    let left = MAX_TRAILERS.saturating_sub(*seen);
                    let Some(line) = line(buf, left, "trailer section too large")? else {
                        return more(eof);
                    };
                    if line.len() == 2 {
                        *self = BodyDecoder::Done;
                        return Ok(Step::End);
                    }
                    *seen += line.len();
                }
            }
        }
    }
}

/// Up to `n` bytes (`n` > 0) of a body or chunk from the front of `buf`, `n` counted down.
fn take_counted(n: &mut u64, buf: &mut BytesMut, eof: bool) -> Result<Step, DecodeError> {
    if buf.is_empty() {
        return more(eof);
    }
    let take = (*n).min(buf.len() as u64);
    *n -= take;
    Ok(Step::Data(buf.split_to(take as usize).freeze()))
}

fn more(eof: bool) -> Result<Step, DecodeError> {
    if eof {
        Err(DecodeError::Incomplete)
    } else {
        Ok(Step::More)
    }
}

/// A line ending in CRLF (included) from the front of `buf`; `None` while incomplete.
fn line(
    buf: &mut BytesMut,
    max: usize,
    too_long: &'static str,
) -> Result<Option<BytesMut>, DecodeError> {
    let Some(lf) = memchr::memchr(b'\n', &buf[..buf.len().min(max)]) else {
        return if buf.len() >= max {
            Err(DecodeError::Chunked(too_long))
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(DecodeError::Chunked("line not ended by CRLF"));
    }
    Ok(Some(buf.split_to(lf + 1)))
}

/// The size of a chunk-size line (hex digits, then optional whitespace and extensions).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let line = &line[..line.len() - 2];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(DecodeError::Chunked("chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(DecodeError::Chunked("chunk size"));
    }
    let mut size = 0u64;
    for d in &line[..digits] {
        let v = (*d as char).to_digit(16).unwrap_or_default();
        size = size << 4 | u64::from(v);
    }
    Ok(size)
}

/// Decodes a whole response fed in pieces of `step` bytes (the connection closing after the
/// last): the head and the body's bytes, or the first error.
pub(crate) fn decode_whole(
    input: &[u8],
    step: usize,
    head_request: bool,
) -> Result<(Head, Vec<u8>), DecodeError> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| {
        let end = (fed + step.max(1)).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        fed == input.len()
    };
    let mut eof = false;
    let head = loop {
        if let Some(head) = take_head(&mut buf, head_request, &mut HeaderMap::new())? {
            break head;
        }
        if eof {
            return Err(DecodeError::Incomplete);
        }
        eof = feed(&mut buf);
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf, eof)? {
            Step::Data(d) => {
                assert!(!d.is_empty(), "an empty data frame");
                body.extend_from_slice(&d);
            }
            Step::End => break,
            Step::More => {
                assert!(!eof, "More after the end of input");
                eof = feed(&mut buf);
            }
        }
    }
    Ok((head, body))
}

/// The `h1_response` fuzz target: `data` decoded as a response, its first byte choosing the
/// pieces it is fed in and whether it answers a `HEAD`. It must not panic, and the body must
/// come out the same however the input is split.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = 1 + usize::from(first & 0x7f);
    let head_request = first & 0x80 != 0;
    let whole = decode_whole(input, input.len(), head_request);
    let split = decode_whole(input, step, head_request);
    match (whole, split) {
        (Ok((a, body_a)), Ok((b, body_b))) => {
            assert_eq!(
                (a.status, a.framing, a.keep_alive),
                (b.status, b.framing, b.keep_alive)
            );
            assert_eq!(body_a, body_b);
        }
        (Err(a), Err(b)) => {
            // Where the split falls may decide which check fails first, never whether one does.
            let _ = (a, b);
        }
        (whole, split) => panic!(
            "whole: {:?}, split: {:?}",
            whole.map(|w| w.1),
            split.map(|s| s.1)
        ),
    }
}

#[cfg(test)]
mod tests;
