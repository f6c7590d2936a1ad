//! The request's `Accept-Encoding`, cut to the content codings the detectors can read as the
//! answer passes (`gzip`, `deflate`, none). A client sends the same value request after request,
//! so the last value seen and what it became are kept: the usual request is one comparison.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::ACCEPT_ENCODING;
use http::{HeaderMap, HeaderValue};

/// The codings asked of the upstream, with the last rewrite kept.
#[derive(Debug, Default)]
pub(super) struct Readable {
    /// A client's one `Accept-Encoding` value, and what it is sent on as.
    last: ArcSwapOption<(HeaderValue, HeaderValue)>,
}

impl Readable {
    /// Keeps of the request's `Accept-Encoding` the codings the client accepts that can be read;
    /// `identity` when none is left (or none was asked: without the header any coding would be
    /// acceptable).
    pub(super) fn ask(&self, headers: &mut HeaderMap) {
        let mut values = headers.get_all(&ACCEPT_ENCODING).iter();
        let one = match (values.next(), values.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        };
        if let (Some(v), Some(last)) = (one, &*self.last.load()) {
            if last.0 == v {
                if last.1 != v {
                    headers.insert(ACCEPT_ENCODING, last.1.clone());
                }
                return;
            }
        }
        let one = one.cloned();
        let sent = match rewritten(headers) {
            Some(value) => {
                headers.insert(ACCEPT_ENCODING, value.clone());
                value
            }
            None => match &one {
                Some(v) => v.clone(),
                None => return,
            },
        };
        if let Some(v) = one {
            self.last.store(Some(Arc::new((v, sent))));
        }
    }
}

/// The value the request's `Accept-Encoding` becomes; `None` when every coding in it is
/// readable (the usual `gzip, deflate`: nothing to change).
fn rewritten(headers: &HeaderMap) -> Option<HeaderValue> {
    let codings = || {
        headers
            .get_all(&ACCEPT_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter(|c| !c.trim_ascii().is_empty())
    };
    if headers.contains_key(&ACCEPT_ENCODING) && codings().all(readable) {
        return None;
    }
    let kept: Vec<&[u8]> = codings()
        .filter(|c| readable(c))
        .map(<[u8]>::trim_ascii)
        .collect();
    Some(match kept.is_empty() {
        true => HeaderValue::from_static("identity"),
        false => HeaderValue::from_bytes(&kept.join(&b", "[..]))
            .unwrap_or_else(|_| HeaderValue::from_static("identity")),
    })
}

/// Whether one coding of the list (with its parameters) is one the detectors read and not
/// refused: `q=0` (or `0.0`, `0.000`) refuses it.
fn readable(coding: &[u8]) -> bool {
    let name = coding
        .split(|b| *b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    let q0 = coding.split(|b| *b == b';').skip(1).any(|p| {
        let p = p.trim_ascii();
        p.len() > 2
            && p[..2].eq_ignore_ascii_case(b"q=")
            && std::str::from_utf8(&p[2..])
                .ok()
                .and_then(|q| q.parse::<f32>().ok())
                == Some(0.0)
    });
    !q0 && [&b"gzip"[..], b"x-gzip", b"deflate", b"identity"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Accept-Encoding` values a request with `values` is sent on with.
    fn asked(r: &Readable, values: &[&'static str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT_ENCODING, HeaderValue::from_static(v));
        }
        r.ask(&mut h);
        h.get_all(ACCEPT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn each_request_is_cut_to_its_own_readable_codings_the_same_when_asked_again() {
        let r = Readable::default();
        let cases: [(&[&str], &[&str]); 8] = [
            (&["gzip, deflate"], &["gzip, deflate"]),
            (&["gzip, deflate, br, zstd"], &["gzip, deflate"]),
            (&["br;q=1.0, gzip;q=0.5"], &["gzip;q=0.5"]),
            (&["br"], &["identity"]),
            (&["gzip;q=0, br"], &["identity"]),
            (&[], &["identity"]),
            (&["br", "gzip"], &["gzip"]),
            (&["gzip", "deflate"], &["gzip", "deflate"]),
        ];
        // Each value twice in a row (the kept rewrite), then all of them again.
        for round in 0..2 {
            for (values, want) in cases {
                for _ in 0..2 {
                    assert_eq!(asked(&r, values), want, "{values:?} in round {round}");
                }
            }
        }
    }
}
