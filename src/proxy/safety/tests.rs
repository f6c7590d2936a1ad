use super::check::SafetyCheck;
use super::*;
use proptest::prelude::*;

fn listener_safety(block: bool) -> ListenerSafety {
    let t = Telemetry::new();
    let config = SafetyConfig {
        action: if block {
            SafetyAction::Block
        } else {
            SafetyAction::Record
        },
        ..SafetyConfig::default()
    };
    let detectors = Arc::new(Detectors::new(&config.detector_specs().unwrap()).unwrap());
    let l = crate::config::ListenerConfig {
        name: "egress".into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        role: Role::Llm,
        route: "r".into(),
        limits: Default::default(),
    };
    let kill = KillSwitch::new(&t, "a", Incidents::new(&t, "a", None));
    let id_header = http::HeaderName::from_static("x-agent-task-id");
    ListenerSafety::new(
        &config,
        &detectors,
        &l,
        "a",
        &kill,
        Severity::Sev1,
        id_header,
        &crate::budget::BodyBudget::unlimited(),
        &t,
    )
    .unwrap()
}

fn sse_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h
}

/// A chat stream of `deltas`, as bytes.
fn stream(deltas: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in deltas {
        let e = serde_json::json!({"choices": [{"index": 0, "delta": {"content": d}}]});
        out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Feeds `body` cut at `cuts`, taking out what is let through after each chunk; returns what
/// went out and whether the stream was blocked.
fn run(ls: &ListenerSafety, body: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut check = SafetyCheck::new(ls, &mut sse_headers(), 0, None)
        .ok()
        .unwrap();
    assert!(check.holds());
    let now = Instant::now();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        let cut = cut.clamp(from, body.len());
        check.feed(ls, &Bytes::copy_from_slice(&body[from..cut]), now);
        from = cut;
        while let Some(b) = check.pop_ready() {
            out.extend_from_slice(&b);
        }
    }
    check.finish(ls, true, now);
    while let Some(b) = check.pop_ready() {
        out.extend_from_slice(&b);
    }
    let blocked = check.take_block().is_some();
    (out, blocked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Held back, then let through: a clean stream goes out whole and in order, however it
    /// is cut; a stream with a secret goes out only up to before the event that starts it.
    #[test]
    fn a_held_stream_lets_out_exactly_the_clean_prefix(
        words in prop::collection::vec(prop::sample::select(vec![
            "lorem ", "ipsum ", "dolor ", "sit ", "amet, ", "the ", "key ", "is ", "\n",
        ]), 1..120),
        secret_at in prop::option::of(0usize..120),
        mut cuts in prop::collection::vec(0usize..6000, 0..30),
        split in 1usize..20,
    ) {
        let ls = listener_safety(true);
        let secret = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX";
        let mut text: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        if let Some(at) = secret_at {
            let at = at.min(text.len());
            // Split inside the secret: two deltas.
            let split = split.min(secret.len() - 1);
            text.insert(at, secret[split..].to_owned() + " ");
            text.insert(at, " ".to_owned() + &secret[..split]);
        }
        let body = stream(&text);
        cuts.sort_unstable();
        let (out, blocked) = run(&ls, &body, &cuts);
        prop_assert!(body.starts_with(&out), "what went out is a prefix of the stream");
        match secret_at {
            None => {
                prop_assert!(!blocked);
                prop_assert_eq!(out.len(), body.len());
            }
            Some(_) => {
                prop_assert!(blocked);
                let split = split.min(secret.len() - 1);
                let head = format!(" {}\"", &secret[..split]);
                let first = body
                    .windows(head.len())
                    .position(|w| w == head.as_bytes())
                    .unwrap();
                // Not a byte of the event that starts the secret went out.
                let event_start = body[..first]
                    .windows(2)
                    .rposition(|w| w == b"\n\n")
                    .map_or(0, |p| p + 2);
                prop_assert!(out.len() <= event_start, "{} > {}", out.len(), event_start);
                let text_out = String::from_utf8_lossy(&out);
                prop_assert!(!text_out.contains("sk-proj"));
            }
        }
    }
}

#[test]
fn what_cannot_be_inspected_in_bounded_memory_is_blocked_not_let_through() {
    let ls = listener_safety(true);
    // An event that never ends: its text is never seen.
    let mut check = SafetyCheck::new(&ls, &mut sse_headers(), 0, None)
        .ok()
        .unwrap();
    let now = Instant::now();
    check.feed(
        &ls,
        &Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\""),
        now,
    );
    let chunk = Bytes::from(vec![b'a'; 16 * 1024]);
    let mut out = 0;
    for _ in 0..64 {
        check.feed(&ls, &chunk, now);
        while let Some(b) = check.pop_ready() {
            out += b.len();
        }
        assert!(check.held_bytes() <= MAX_HELD_BYTES + chunk.len());
    }
    assert_eq!(out, 0, "nothing of it went out");
    assert_eq!(check.take_block(), Some(Source::Uninspectable));
    // An event past the parser's limit (4 MiB) is blocked too, even when it ends.
    let mut check = SafetyCheck::new(&ls, &mut sse_headers(), 0, None)
        .ok()
        .unwrap();
    let mut big = b"data: ".to_vec();
    big.extend(std::iter::repeat_n(
        b'a',
        crate::inspect::MAX_INSPECTED_BODY + 10,
    ));
    big.extend_from_slice(b" sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX\n\n");
    check.feed(&ls, &Bytes::from(big), now);
    check.finish(&ls, true, now);
    assert!(check.pop_ready().is_none());
    assert_eq!(check.take_block(), Some(Source::Uninspectable));
}

#[test]
fn a_held_stream_holds_back_only_what_may_still_start_a_match() {
    let ls = listener_safety(true);
    let long: Vec<String> = (0..200).map(|i| format!("word{i} ")).collect();
    let body = stream(&long);
    let mut check = SafetyCheck::new(&ls, &mut sse_headers(), 0, None)
        .ok()
        .unwrap();
    let now = Instant::now();
    let mut out = 0usize;
    // One event per chunk, as providers send them.
    for event in body
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
    {
        let chunk: Vec<u8> = event.concat();
        check.feed(&ls, &Bytes::from(chunk), now);
        while let Some(b) = check.pop_ready() {
            out += b.len();
        }
    }
    // Before the end, only the last event is held: its word ("word199 " may yet become
    // an address) — not the overlap window's worth of events.
    let held = body.len() - out;
    let last_two = stream(&["word198 ".into(), "word199 ".into()]).len();
    assert!(held < last_two, "held {held} of {}", body.len());
    check.finish(&ls, true, now);
    while let Some(b) = check.pop_ready() {
        out += b.len();
    }
    assert_eq!(out, body.len());
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_counts_distinct_origins_within_its_window() {
    let t = Telemetry::new();
    let kill = KillSwitch::new(&t, "a", Incidents::new(&t, "a", None));
    let rule = Some((3, Duration::from_secs(60)));
    let hit = |origin| kill.violation(Instant::now(), origin, rule, Severity::Sev1);
    // One origin, however often: one.
    for _ in 0..10 {
        hit(1);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    hit(2);
    assert!(!kill.is_disabled());
    // Origin 1's last hit falls out of the window: two origins within it, then three.
    tokio::time::advance(Duration::from_secs(31)).await;
    hit(3);
    assert!(!kill.is_disabled());
    hit(1);
    assert!(kill.is_disabled());
}

#[test]
fn what_the_kill_switch_counts() {
    let m = crate::inspect::safety::Match {
        detector: 0,
        start: 0,
        end: 1,
        fingerprint: 7,
    };
    let v = |source, blocked, echo| Violation {
        source,
        blocked,
        at: Some(&m),
        origin: 1,
        echo,
    };
    assert!(v(Source::Detector(0), true, false).kills());
    assert!(v(Source::SafetyFlag, true, false).kills());
    // Recorded only, an echo of the request, the provider's filter, text never seen: no.
    assert!(!v(Source::Detector(0), false, false).kills());
    assert!(!v(Source::Detector(0), true, true).kills());
    assert!(!v(Source::ContentFilter, true, false).kills());
    assert!(!v(Source::Uninspectable, true, false).kills());
}

#[test]
fn an_echo_is_what_the_request_said_however_spelled() {
    let ls = listener_safety(true);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut tap = EchoTap::new(&ls.detectors, &headers).unwrap();
    for piece in [
        &br#"{"msg":"my card is 4111 1111 "#[..],
        b"1111 1111 and jane@Acme.io\"}",
    ] {
        tap.feed(&Bytes::copy_from_slice(piece));
    }
    let echoes = tap.finish();
    let found = |text: &[u8]| {
        let mut scanner = ls.detectors.scanner();
        let mut out = Vec::new();
        scanner.feed(text, &mut |m| out.push(m));
        scanner.finish(&mut |m| out.push(m));
        out
    };
    for echo in [&b"card 4111-1111-1111-1111"[..], b"mail JANE@acme.io"] {
        let m = found(echo);
        assert_eq!(m.len(), 1);
        assert!(echoes.contains(&m[0]), "{}", String::from_utf8_lossy(echo));
    }
    let own = found(b"card 5555 5555 5555 4444");
    assert!(!echoes.contains(&own[0]));
    // A compressed request is not read: no echoes known, every match the agent's own.
    headers.insert(
        http::header::CONTENT_ENCODING,
        http::HeaderValue::from_static("gzip"),
    );
    assert!(EchoTap::new(&ls.detectors, &headers).is_none());
}
