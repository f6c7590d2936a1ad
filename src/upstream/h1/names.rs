//! Header names read from the wire. The common ones are matched as they are (or lowered, for a
//! sender that capitalizes them); `http`'s own parse walks a lowering table byte by byte, then matches every name it
//! knows, and allocates for a name it does not (`x-api-key`, `traceparent`). Measured with
//! callgrind: about 150 instructions a name, 7 names a proxied GET.

use http::header::{self, HeaderName, InvalidHeaderName};

/// The common names, in lower case: matched as literals, so that each compare is a load or two.
fn known(name: &[u8]) -> Option<HeaderName> {
    Some(match name {
        b"host" => header::HOST,
        b"date" => header::DATE,
        b"vary" => header::VARY,
        b"etag" => header::ETAG,
        b"accept" => header::ACCEPT,
        b"server" => header::SERVER,
        b"cookie" => header::COOKIE,
        b"origin" => header::ORIGIN,
        b"x-api-key" => HeaderName::from_static("x-api-key"),
        b"user-agent" => header::USER_AGENT,
        b"connection" => header::CONNECTION,
        b"set-cookie" => header::SET_COOKIE,
        b"tracestate" => HeaderName::from_static("tracestate"),
        b"traceparent" => HeaderName::from_static("traceparent"),
        b"content-type" => header::CONTENT_TYPE,
        b"x-request-id" => HeaderName::from_static("x-request-id"),
        b"authorization" => header::AUTHORIZATION,
        b"cache-control" => header::CACHE_CONTROL,
        b"last-modified" => header::LAST_MODIFIED,
        b"content-length" => header::CONTENT_LENGTH,
        b"accept-encoding" => header::ACCEPT_ENCODING,
        b"accept-language" => header::ACCEPT_LANGUAGE,
        b"x-forwarded-for" => HeaderName::from_static("x-forwarded-for"),
        b"content-encoding" => header::CONTENT_ENCODING,
        b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"anthropic-version" => HeaderName::from_static("anthropic-version"),
        b"x-forwarded-proto" => HeaderName::from_static("x-forwarded-proto"),
        _ => return None,
    })
}

/// The longest of the [`known`] names.
const LONGEST: usize = 17;

/// The header name `name` spells, in any case: the same as [`HeaderName::from_bytes`].
pub(crate) fn header_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    // Most senders write names in lower case.
    if let Some(found) = known(name) {
        return Ok(found);
    }
    if name.len() <= LONGEST && name.iter().any(u8::is_ascii_uppercase) {
        let mut lower = [0u8; LONGEST];
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        if let Some(found) = known(lower) {
            return Ok(found);
        }
    }
    HeaderName::from_bytes(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name [`known`] matches.
    const KNOWN: [&str; 27] = [
        "host",
        "date",
        "vary",
        "etag",
        "accept",
        "server",
        "cookie",
        "origin",
        "x-api-key",
        "user-agent",
        "connection",
        "set-cookie",
        "tracestate",
        "traceparent",
        "content-type",
        "x-request-id",
        "authorization",
        "cache-control",
        "last-modified",
        "content-length",
        "accept-encoding",
        "accept-language",
        "x-forwarded-for",
        "content-encoding",
        "transfer-encoding",
        "anthropic-version",
        "x-forwarded-proto",
    ];

    #[test]
    fn every_known_name_is_what_http_reads_in_any_case() {
        for text in KNOWN {
            assert!(known(text.as_bytes()).is_some(), "{text}");
            assert!(text.len() <= LONGEST, "{text}");
            for spelled in [text.to_string(), text.to_uppercase(), title_case(text)] {
                let read = header_name(spelled.as_bytes()).unwrap();
                assert_eq!(read, HeaderName::from_bytes(spelled.as_bytes()).unwrap());
                assert_eq!(read.as_str(), text, "{spelled}");
            }
        }
    }

    #[test]
    fn other_names_are_read_by_http_and_bad_ones_refused() {
        for other in [
            "x-custom",
            "Accept-Ranges",
            "hostx",
            "x-api-kez",
            "a",
            "X-A-Name-Longer-Than-Any-Known",
        ] {
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
