//! Header names read from the wire. The common ones are found in a table by their length and
//! bytes; `http`'s own parse walks a lowering table byte by byte, then matches every name it
//! knows, and allocates for a name it does not (`x-api-key`, `traceparent`). Measured with
//! callgrind: about 150 instructions a name, 7 names a proxied GET.

use http::header::{self, HeaderName, InvalidHeaderName};

type Known = [(&'static str, HeaderName)];

static LEN_4: [(&str, HeaderName); 4] = [
    ("host", header::HOST),
    ("date", header::DATE),
    ("vary", header::VARY),
    ("etag", header::ETAG),
];
static LEN_6: [(&str, HeaderName); 4] = [
    ("accept", header::ACCEPT),
    ("server", header::SERVER),
    ("cookie", header::COOKIE),
    ("origin", header::ORIGIN),
];
static LEN_9: [(&str, HeaderName); 1] = [("x-api-key", HeaderName::from_static("x-api-key"))];
static LEN_10: [(&str, HeaderName); 4] = [
    ("user-agent", header::USER_AGENT),
    ("connection", header::CONNECTION),
    ("set-cookie", header::SET_COOKIE),
    ("tracestate", HeaderName::from_static("tracestate")),
];
static LEN_11: [(&str, HeaderName); 1] = [("traceparent", HeaderName::from_static("traceparent"))];
static LEN_12: [(&str, HeaderName); 2] = [
    ("content-type", header::CONTENT_TYPE),
    ("x-request-id", HeaderName::from_static("x-request-id")),
];
static LEN_13: [(&str, HeaderName); 3] = [
    ("authorization", header::AUTHORIZATION),
    ("cache-control", header::CACHE_CONTROL),
    ("last-modified", header::LAST_MODIFIED),
];
static LEN_14: [(&str, HeaderName); 1] = [("content-length", header::CONTENT_LENGTH)];
static LEN_15: [(&str, HeaderName); 3] = [
    ("accept-encoding", header::ACCEPT_ENCODING),
    ("accept-language", header::ACCEPT_LANGUAGE),
    (
        "x-forwarded-for",
        HeaderName::from_static("x-forwarded-for"),
    ),
];
static LEN_16: [(&str, HeaderName); 1] = [("content-encoding", header::CONTENT_ENCODING)];
static LEN_17: [(&str, HeaderName); 3] = [
    ("transfer-encoding", header::TRANSFER_ENCODING),
    (
        "anthropic-version",
        HeaderName::from_static("anthropic-version"),
    ),
    (
        "x-forwarded-proto",
        HeaderName::from_static("x-forwarded-proto"),
    ),
];

/// The header name `name` spells, in any case: the same as [`HeaderName::from_bytes`].
pub(crate) fn header_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let known: &Known = match name.len() {
        4 => &LEN_4,
        6 => &LEN_6,
        9 => &LEN_9,
        10 => &LEN_10,
        11 => &LEN_11,
        12 => &LEN_12,
        13 => &LEN_13,
        14 => &LEN_14,
        15 => &LEN_15,
        16 => &LEN_16,
        17 => &LEN_17,
        _ => &[],
    };
    // Most senders write names in lower case: an exact compare first.
    if let Some((_, found)) = known.iter().find(|(text, _)| name == text.as_bytes()) {
        return Ok(found.clone());
    }
    if let Some((_, found)) = known
        .iter()
        .find(|(text, _)| name.eq_ignore_ascii_case(text.as_bytes()))
    {
        return Ok(found.clone());
    }
    HeaderName::from_bytes(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_is_what_http_reads_in_any_case() {
        let tables: [&Known; 11] = [
            &LEN_4, &LEN_6, &LEN_9, &LEN_10, &LEN_11, &LEN_12, &LEN_13, &LEN_14, &LEN_15, &LEN_16,
            &LEN_17,
        ];
        for (text, name) in tables.into_iter().flatten() {
            assert_eq!(name.as_str(), *text);
            for spelled in [text.to_string(), text.to_uppercase(), title_case(text)] {
                let read = header_name(spelled.as_bytes()).unwrap();
                assert_eq!(read, HeaderName::from_bytes(spelled.as_bytes()).unwrap());
                assert_eq!(read.as_str(), *text, "{spelled}");
            }
        }
    }

    #[test]
    fn other_names_are_read_by_http_and_bad_ones_refused() {
        for other in ["x-custom", "Accept-Ranges", "hostx", "x-api-kez", "a"] {
            assert_eq!(
                header_name(other.as_bytes()).unwrap(),
                HeaderName::from_bytes(other.as_bytes()).unwrap()
            );
        }
        for bad in ["", "ho st", "date:", "x-api-ke\u{e9}", "content-lengt\n"] {
            assert!(header_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    fn title_case(text: &str) -> String {
        text.split('-')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-")
    }
}
