use super::*;

fn whole(input: &str) -> Result<(Head, Vec<u8>), DecodeError> {
    decode_whole(input.as_bytes(), input.len(), false)
}

#[test]
fn a_length_delimited_body_keeps_the_connection() {
    let (head, body) =
        whole("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello").unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["x-a"], "b");
    assert_eq!(head.headers["content-length"], "5");
    assert_eq!(head.framing, Framing::Length(5));
    assert!(head.keep_alive);
    assert_eq!(body, b"hello");
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    for step in [1, 2, 3, 7, text.len()] {
        let (head, body) = decode_whole(text.as_bytes(), step, false).unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        assert_eq!(body, b"hello world", "step {step}");
    }
}

#[test]
fn no_body_for_head_204_and_304_whatever_they_say() {
    let (head, body) =
        decode_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 100, true).unwrap();
    assert_eq!(head.framing, Framing::Length(0));
    assert!(body.is_empty());
    for status in ["204 No Content", "304 Not Modified"] {
        let (head, _) = whole(&format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\n\r\n")).unwrap();
        assert_eq!(head.framing, Framing::Length(0));
        assert!(head.keep_alive);
    }
}

#[test]
fn a_body_to_the_close_ends_the_connection() {
    let (head, body) = whole("HTTP/1.1 200 OK\r\n\r\nall of it").unwrap();
    assert_eq!(head.framing, Framing::Close);
    assert!(!head.keep_alive);
    assert_eq!(body, b"all of it");
    // Close asked for, HTTP/1.0 without keep-alive, or both framings: not reused.
    assert!(
        !whole("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    assert!(
        !whole("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    assert!(
        whole("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    // `close` wins over `keep-alive`, in one field or two.
    assert!(
        !whole("HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    assert!(!whole("HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").unwrap().0.keep_alive);
    let both = whole("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").unwrap();
    assert_eq!(both.0.framing, Framing::Chunked);
    assert!(!both.0.keep_alive);
    // A transfer coding that is not chunked last: to the close.
    assert_eq!(
        whole("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz")
            .unwrap()
            .0
            .framing,
        Framing::Close
    );
}

#[test]
fn informational_heads_are_skipped() {
    let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    for step in [1, 5, text.len()] {
        let (head, body) = decode_whole(text.as_bytes(), step, false).unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert!(head.headers.get("link").is_none());
        assert_eq!(body, b"ok");
    }
}

#[test]
fn broken_responses_are_errors() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            DecodeError::Incomplete,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            DecodeError::Head("differing Content-Length values"),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            DecodeError::Head("Content-Length"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            DecodeError::Chunked("chunk size"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
            DecodeError::Chunked("chunk not followed by CRLF"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n",
            DecodeError::Chunked("line not ended by CRLF"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
            DecodeError::Incomplete,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            DecodeError::Chunked("chunk size"),
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            DecodeError::Head("101 Switching Protocols to a request that asked for no upgrade"),
        ),
        ("HTTP/1.1 2000 OK\r\n\r\n", DecodeError::Head("status")),
        ("SSH-2.0-OpenSSH\r\n\r\n", DecodeError::Head("version")),
        ("HTTP/1.1 200 OK\r\n", DecodeError::Incomplete),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            DecodeError::Head("Transfer-Encoding in an HTTP/1.0 response"),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(whole(text).err(), Some(want), "{text:?}");
    }
}

#[test]
fn heads_and_chunk_lines_are_bounded() {
    let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    assert_eq!(
        decode_whole(&big, 4096, false).err(),
        Some(DecodeError::HeadTooLarge)
    );
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("x-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(whole(&many).err(), Some(DecodeError::HeadTooLarge));
    let mut line = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    line.resize(line.len() + MAX_CHUNK_LINE, b'x');
    assert_eq!(
        decode_whole(&line, 512, false).err(),
        Some(DecodeError::Chunked("chunk-size line too long"))
    );
}

/// A small deterministic generator (xorshift): the same inputs every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Arbitrary bytes, and valid responses with bytes flipped, cut or repeated, fed in arbitrary
/// pieces: never a panic, and a valid response decodes the same however it is split.
#[test]
fn every_input() {
    let valid: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;a=b\r\n world\r\n0\r\nt: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nnone here",
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for v in valid {
        let expected = decode_whole(v, v.len(), false).map(|(h, b)| (h.status, h.framing, b));
        assert!(expected.is_ok(), "{:?}", String::from_utf8_lossy(v));
        for _ in 0..200 {
            let step = 1 + rng.below(v.len());
            assert_eq!(
                decode_whole(v, step, false).map(|(h, b)| (h.status, h.framing, b)),
                expected
            );
        }
    }
    for round in 0..20_000 {
        let mut input: Vec<u8> = if round % 2 == 0 {
            valid[rng.below(valid.len())].to_vec()
        } else {
            (0..rng.below(200)).map(|_| rng.next() as u8).collect()
        };
        for _ in 0..rng.below(4) {
            if input.is_empty() {
                break;
            }
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] = rng.next() as u8,
                1 => input.truncate(at),
                _ => {
                    let piece = input[at..].to_vec();
                    input.extend_from_slice(&piece);
                }
            }
        }
        let step = 1 + rng.below(input.len() + 1);
        let _ = decode_whole(&input, step, rng.below(5) == 0);
    }
}
