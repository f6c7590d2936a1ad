//! Reading plain request heads and writing response heads.

use super::*;

fn parsed(text: &str) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(text.as_bytes());
    let parsed = parse(&mut buf, &mut HeaderMap::new());
    (parsed, buf)
}

fn plain(text: &str) -> (Head, BytesMut) {
    match parsed(text) {
        (Parsed::Plain(head), rest) => (head, rest),
        (other, _) => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn a_plain_head_is_read_and_taken_out_of_the_buffer() {
    let (head, rest) = plain(
        "POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nX-Custom: one\r\nx-custom: two\r\n\
         Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhelloGET /next",
    );
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.uri, "/v1/chat?x=1");
    assert_eq!(head.length, 5);
    assert!(!head.close);
    assert_eq!(head.headers["host"], "a");
    let custom: Vec<_> = head.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["one", "two"]);
    // The body and what follows it stay in the buffer.
    assert_eq!(&rest[..], b"helloGET /next");
}

#[test]
fn connection_close_is_noted() {
    let (head, _) = plain("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(head.close);
    assert_eq!(head.length, 0);
}

#[test]
fn a_head_not_yet_whole_is_partial_and_left_in_place() {
    for cut in [
        "G",
        "GET / HTTP/1.1\r\nHost: a\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\r",
    ] {
        let (p, rest) = parsed(cut);
        assert!(matches!(p, Parsed::Partial), "{cut:?}: {p:?}");
        assert_eq!(&rest[..], cut.as_bytes());
    }
}

#[test]
fn requests_out_of_the_ordinary_are_left_to_hyper_with_their_bytes() {
    for text in [
        "GET / HTTP/1.0\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "HEAD / HTTP/1.1\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\n\r\n",
        "TRACE / HTTP/1.1\r\n\r\n",
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
    ] {
        let (p, rest) = parsed(text);
        assert!(matches!(p, Parsed::Unusual), "{text:?}: {p:?}");
        assert_eq!(&rest[..], text.as_bytes(), "{text:?}: bytes kept for hyper");
    }
}

#[test]
fn more_header_lines_than_the_table_holds_are_left_to_hyper() {
    let mut text = String::from("GET / HTTP/1.1\r\n");
    for i in 0..MAX_HEADERS {
        text.push_str(&format!("x-{i}: v\r\n"));
    }
    let (head, _) = plain(&format!("{text}\r\n"));
    assert_eq!(head.headers.len(), MAX_HEADERS);
    text.push_str("x-last: v\r\n\r\n");
    assert!(matches!(parsed(&text).0, Parsed::Unusual));
}

fn response(status: u16, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

fn head_of(parts: &mut Parts, exact: Option<u64>, close: bool) -> (String, Framing) {
    let mut out = BytesMut::new();
    let framing = encode_head(&mut out, parts, exact, close);
    (String::from_utf8(out.to_vec()).unwrap(), framing)
}

#[test]
fn a_known_length_is_sent_as_content_length() {
    let mut parts = response(
        200,
        &[("content-type", "text/plain"), ("content-length", "99")],
    );
    let (text, framing) = head_of(&mut parts, Some(12), false);
    assert_eq!(framing, Framing::Length(12));
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-length: 12\r\n"), "{text}");
    assert!(!text.contains("99"), "{text}");
    assert!(text.contains("\r\ncontent-type: text/plain\r\n"), "{text}");
    assert!(text.contains("\r\ndate: "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(!text.contains("connection"), "{text}");
}

#[test]
fn an_unknown_length_is_chunked_unless_the_head_declares_one() {
    let (text, framing) = head_of(&mut response(200, &[]), None, true);
    assert_eq!(framing, Framing::Chunked);
    assert!(
        text.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    let mut parts = response(200, &[("content-length", "7")]);
    let (text, framing) = head_of(&mut parts, None, false);
    assert_eq!(framing, Framing::Length(7));
    assert!(!text.contains("chunked"), "{text}");
    // An empty body: a length of 0, nothing to follow.
    let (text, framing) = head_of(&mut response(404, &[]), Some(0), false);
    assert_eq!(framing, Framing::None);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
}

#[test]
fn no_content_and_not_modified_have_no_body_framing() {
    for status in [204, 304] {
        let mut parts = response(status, &[("content-length", "5"), ("etag", "x")]);
        let (text, framing) = head_of(&mut parts, None, false);
        assert_eq!(framing, Framing::None);
        assert!(!text.contains("content-length"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("\r\netag: x\r\n"), "{text}");
    }
}

#[test]
fn a_date_the_answer_has_is_kept() {
    let date = "Mon, 07 Dec 2026 00:00:00 GMT";
    let (text, _) = head_of(&mut response(200, &[("date", date)]), Some(0), false);
    assert_eq!(text.matches("date: ").count(), 1, "{text}");
    assert!(text.contains(date), "{text}");
}

#[test]
fn the_fuzz_check_holds_for_plain_unusual_and_partial_heads() {
    for (first, text) in [
        (
            0u8,
            "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest",
        ),
        (
            3,
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ),
        (7, "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n"),
        (1, "HEAD / HTTP/1.1\r\n\r\n"),
        (0x7f, "GET / HTTP/1.1\r\nHost"),
        (2, "\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    ] {
        fuzz_request(&[&[first], text.as_bytes()].concat());
    }
}

#[test]
fn a_target_httparse_takes_and_http_does_not_is_left_to_hyper_whole() {
    // Found by the fuzz target: the head was taken out of the buffer before the target was
    // found unreadable, and hyper would have read what followed it as the request.
    let text = "GET 1/ws HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    let (p, rest) = parsed(text);
    assert!(matches!(p, Parsed::Unusual), "{p:?}");
    assert_eq!(&rest[..], text.as_bytes());
    fuzz_request(&[&[2u8], text.as_bytes()].concat());
}

#[test]
fn a_whole_head_past_the_limit_is_left_to_hyper() {
    let big = "v".repeat(crate::proxy::connections::MAX_HEADER_BYTES);
    let text = format!("GET / HTTP/1.1\r\nx-big: {big}\r\n\r\n");
    let (p, rest) = parsed(&text);
    assert!(matches!(p, Parsed::Unusual), "{p:?}");
    assert_eq!(rest.len(), text.len());
}
