//! Writing a request head and the framing of its body, as hyper's HTTP/1.1 client does: headers
//! in the map's order, the body delimited by the `Content-Length` or `Transfer-Encoding` the
//! request carries, else by the length the body knows, else chunked (no body at all for a `GET`,
//! `HEAD` or `CONNECT` whose length is unknown).

use std::io::Write as _;

use bytes::{BufMut, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    Chunked,
}

/// Writes the head of a request to `out` and says how its body is framed. `ended`: the body has
/// nothing at all; `exact`: its length, when known.
pub(crate) fn head(
    out: &mut BytesMut,
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    ended: bool,
    exact: Option<u64>,
) -> Framing {
    let framing = framing(method, headers, ended, exact);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    out.reserve(64 + target.len() + headers.len() * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    put_headers(out, headers);
    out.put_slice(b"\r\n");
    framing
}

/// Header lines, `name: value` each (names as `http` keeps them: lower case).
pub(crate) fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        put_header(out, name, value);
    }
}

/// One header line.
#[inline]
pub(crate) fn put_header(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

fn framing(method: &Method, headers: &mut HeaderMap, ended: bool, exact: Option<u64>) -> Framing {
    // One pass over the names (cheap compares) spares hashed lookups for what most requests
    // lack.
    let (mut coded, mut length) = (false, false);
    for name in headers.keys() {
        coded |= name == TRANSFER_ENCODING;
        length |= name == CONTENT_LENGTH;
    }
    if ended {
        if coded {
            headers.remove(TRANSFER_ENCODING);
        }
        // A length the body does not have would have the upstream read the next request as
        // this one's body.
        if length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Framing::Length(0);
    }
    let te = match coded {
        true => headers.get(TRANSFER_ENCODING),
        false => None,
    };
    if let Some(te) = te {
        let chunked = te
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !chunked {
            // A request's transfer coding must end in chunked: added, as hyper does.
            let mut value = te.as_bytes().to_vec();
            value.extend_from_slice(b", chunked");
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.insert(TRANSFER_ENCODING, v);
            }
        }
        headers.remove(CONTENT_LENGTH);
        return Framing::Chunked;
    }
    // Every value must be the same number; anything else is no length at all (and is removed).
    let mut said = None;
    let mut valid = true;
    for v in headers.get_all(CONTENT_LENGTH) {
        let v = v.as_bytes();
        let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
            .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        valid &= n.is_some() && (said.is_none() || said == n);
        said = said.or(n);
    }
    if valid {
        if let Some(n) = said {
            return Framing::Length(n);
        }
    }
    if length {
        headers.remove(CONTENT_LENGTH);
    }
    if let Some(n) = exact {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        return Framing::Length(n);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        return Framing::Length(0);
    }
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    Framing::Chunked
}

/// The line that opens a chunk of `len` bytes.
pub(crate) fn chunk_start(out: &mut BytesMut, len: usize) {
    let _ = write!(out.writer(), "{len:x}\r\n");
}

/// The last chunk, with no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        method: Method,
        headers: &[(&str, &str)],
        ended: bool,
        exact: Option<u64>,
    ) -> (String, Framing) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|_| unreachable!()),
                HeaderValue::from_str(v).unwrap_or_else(|_| unreachable!()),
            );
        }
        let mut out = BytesMut::new();
        let uri: Uri = "/v1/chat?x=1".parse().unwrap_or_else(|_| unreachable!());
        let f = head(&mut out, &method, &uri, &mut map, ended, exact);
        (String::from_utf8(out.to_vec()).unwrap_or_default(), f)
    }

    #[test]
    fn frames_the_body_as_hyper_does() {
        let (text, f) = encode(
            Method::GET,
            &[("host", "up"), ("accept", "a"), ("accept", "b")],
            true,
            Some(0),
        );
        assert_eq!(
            text,
            "GET /v1/chat?x=1 HTTP/1.1\r\nhost: up\r\naccept: a\r\naccept: b\r\n\r\n"
        );
        assert_eq!(f, Framing::Length(0));
        // The length the body knows.
        let (text, f) = encode(Method::POST, &[("host", "up")], false, Some(12));
        assert!(text.contains("content-length: 12\r\n"), "{text}");
        assert_eq!(f, Framing::Length(12));
        // The request's own Content-Length wins.
        let (_, f) = encode(Method::POST, &[("content-length", "7")], false, None);
        assert_eq!(f, Framing::Length(7));
        // Unknown length: chunked, but no body for a GET.
        let (text, f) = encode(Method::POST, &[], false, None);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!(f, Framing::Chunked);
        let (text, f) = encode(Method::GET, &[], false, None);
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert_eq!(f, Framing::Length(0));
        // A transfer coding not ending in chunked gets it added; Content-Length goes.
        let (text, f) = encode(
            Method::POST,
            &[("transfer-encoding", "gzip"), ("content-length", "3")],
            false,
            None,
        );
        assert!(
            text.contains("transfer-encoding: gzip, chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(f, Framing::Chunked);
    }

    #[test]
    fn a_length_is_sent_only_when_it_is_the_bodys() {
        // An ended body says 0, whatever the request said.
        let (text, f) = encode(Method::POST, &[("content-length", "5")], true, Some(0));
        assert!(text.contains("content-length: 0\r\n"), "{text}");
        assert_eq!(f, Framing::Length(0));
        // Values that disagree are no length: the body's own, or chunked.
        let (text, f) = encode(
            Method::POST,
            &[("content-length", "5"), ("content-length", "6")],
            false,
            Some(6),
        );
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("content-length: 6\r\n"), "{text}");
        assert_eq!(f, Framing::Length(6));
        let (text, f) = encode(Method::POST, &[("content-length", "x")], false, None);
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(f, Framing::Chunked);
        // The same value twice is that value.
        let (_, f) = encode(
            Method::POST,
            &[("content-length", "4"), ("content-length", "4")],
            false,
            None,
        );
        assert_eq!(f, Framing::Length(4));
    }

    #[test]
    fn chunk_lines_are_hex() {
        let mut out = BytesMut::new();
        chunk_start(&mut out, 4096);
        assert_eq!(&out[..], b"1000\r\n");
    }
}
