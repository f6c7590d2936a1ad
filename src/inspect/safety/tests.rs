use super::*;
use proptest::prelude::*;

/// Compiled once for all tests.
fn builtins() -> &'static Arc<Detectors> {
    static D: std::sync::LazyLock<Arc<Detectors>> =
        std::sync::LazyLock::new(|| Arc::new(compile()));
    &D
}

fn compile() -> Detectors {
    Detectors::new(&[
        DetectorSpec::Builtin(Builtin::PiiEmail),
        DetectorSpec::Builtin(Builtin::PiiCreditCard),
        DetectorSpec::Builtin(Builtin::PiiUsSsn),
        DetectorSpec::Builtin(Builtin::Secrets),
        DetectorSpec::Regex {
            name: "internal_hosts".into(),
            pattern: r"https?://[a-z0-9.-]+\.internal\b".into(),
        },
        DetectorSpec::Keywords {
            name: "banned_terms".into(),
            words: vec!["Project Falcon".into(), "falconry".into()],
        },
    ])
    .unwrap()
}

/// The names of the detectors that fire on `text`, fed in one piece, in order of match end.
fn hits(d: &Arc<Detectors>, text: &str) -> Vec<String> {
    scan(d, &[text]).into_iter().map(|(n, _, _)| n).collect()
}

/// Every match of `pieces` fed one after another, scanned after every piece: (detector,
/// start, end).
fn scan(d: &Arc<Detectors>, pieces: &[&str]) -> Vec<(String, u64, u64)> {
    scan_batching(d, pieces, 1)
}

fn scan_batching<P: AsRef<[u8]>>(
    d: &Arc<Detectors>,
    pieces: &[P],
    batch: usize,
) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut found = |m: Match| out.push((d.name(m.detector).to_owned(), m.start, m.end));
    let mut s = d.scanner_batching(batch);
    for p in pieces {
        s.feed(p.as_ref(), &mut found);
    }
    s.finish(&mut found);
    out.sort_by(|a, b| (a.2, a.1, &a.0).cmp(&(b.2, b.1, &b.0)));
    out
}

/// What the detectors find in `text` by the plainest means: each pattern's `find_iter` over
/// the whole text, kept when it passes its check, and the keywords' `find_iter`. The scanner,
/// however the text is cut and batched, must find exactly these.
fn oracle(d: &Arc<Detectors>, text: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for p in &d.patterns {
        for m in p.regex.find_iter(text.as_bytes()) {
            if p.check.passes(m.as_bytes()) {
                out.push((
                    d.name(p.detector).to_owned(),
                    m.start() as u64,
                    m.end() as u64,
                ));
            }
        }
    }
    if let Some(ac) = &d.keywords {
        for m in ac.find_iter(text) {
            let detector = d.keyword_detector[m.pattern().as_usize()];
            out.push((
                d.name(detector).to_owned(),
                m.start() as u64,
                m.end() as u64,
            ));
        }
    }
    out.sort_by(|a, b| (a.2, a.1, &a.0).cmp(&(b.2, b.1, &b.0)));
    out
}

#[test]
fn emails_but_not_documentation_addresses_or_git_remotes() {
    let d = builtins();
    assert_eq!(
        hits(d, "write to jane.doe+tag@acme-corp.co.uk today"),
        ["pii_email"]
    );
    assert_eq!(
        hits(d, "Contact: J.Smith@Example.ORG."),
        Vec::<String>::new()
    );
    assert!(hits(d, "mail alice@example.com or bob@mail.example.net").is_empty());
    assert!(hits(d, "git clone git@github.com:org/repo.git").is_empty());
    assert!(hits(d, "@decorator\ndef f(): pass  # user@localhost").is_empty());
    assert!(hits(d, "npm install left-pad@1.3.0").is_empty());
}

#[test]
fn card_numbers_only_when_luhn_valid() {
    let d = builtins();
    for card in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500005555555559",
        "378282246310005",
    ] {
        assert_eq!(
            hits(d, &format!("card: {card}.")),
            ["pii_credit_card"],
            "{card}"
        );
    }
    for not_card in [
        "4111 1111 1111 1112",     // Luhn fails
        "order 1234567890123",     // Luhn fails
        "4111 1111 1111",          // 12 digits
        "12345678901234567890123", // 23 digits: no card inside a longer number
    ] {
        assert!(hits(d, not_card).is_empty(), "{not_card}");
    }
}

#[test]
fn ssns_that_can_exist() {
    let d = builtins();
    assert_eq!(hits(d, "SSN 123-45-6789 on file"), ["pii_us_ssn"]);
    for no in [
        "000-12-3456",
        "666-12-3456",
        "912-12-3456",
        "123-00-4567",
        "123-45-0000",
        "1234-56-7890",
    ] {
        assert!(hits(d, no).is_empty(), "{no}");
    }
}

#[test]
fn secrets_of_each_kind() {
    let d = builtins();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    for secret in [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----",
        jwt,
    ] {
        assert_eq!(
            hits(d, &format!("here: {secret} end")),
            ["secrets"],
            "{secret}"
        );
    }
    for not_secret in [
        "task-list",
        "sk-short",
        "AKIA1234",
        "-----BEGIN PUBLIC KEY-----",
        "ghp_short",
    ] {
        assert!(hits(d, not_secret).is_empty(), "{not_secret}");
    }
}

#[test]
fn the_users_regexes_and_keywords() {
    let d = builtins();
    assert_eq!(hits(d, "see http://billing.internal/x"), ["internal_hosts"]);
    assert!(hits(d, "see http://billing.internalx.com").is_empty());
    // Keywords ignore case, and the longest wins.
    assert_eq!(
        hits(d, "about PROJECT falcon and Falconry"),
        ["banned_terms", "banned_terms"]
    );
}

#[test]
fn a_match_split_across_pieces_is_found_once() {
    let d = builtins();
    let whole = scan(d, &["card 4111 1111 1111 1111 and mail jane@acme.io"]);
    let split = scan(
        d,
        &["card 4111 11", "11 1111 1111 and mail ja", "ne@ac", "me.io"],
    );
    assert_eq!(whole, split);
    assert_eq!(whole.len(), 2);
    // A match that could still grow is not reported early: "acme.co" then "m".
    let grown = scan(d, &["mail jane@acme.co", "m now"]);
    assert_eq!(grown, [("pii_email".to_owned(), 5, 18)]);
}

#[test]
fn memory_is_the_overlap_plus_a_batch_whatever_the_length() {
    let d = builtins();
    let mut s = d.scanner();
    let mut n = 0;
    let line = "lorem ipsum dolor sit amet, mail jane@acme.io, card 4111 1111 1111 1111\n";
    for _ in 0..20_000 {
        s.feed(line.as_bytes(), &mut |_| n += 1);
        assert!(s.window.len() <= d.overlap() + 2 * CONTEXT + SCAN_BATCH + line.len());
    }
    s.finish(&mut |_| n += 1);
    assert_eq!(n, 40_000);
}

#[test]
fn a_bad_detector_is_named() {
    let e = Detectors::new(&[
        DetectorSpec::Builtin(Builtin::Secrets),
        DetectorSpec::Regex {
            name: "x".into(),
            pattern: "(unclosed".into(),
        },
    ])
    .err()
    .unwrap();
    assert_eq!(e.index, 1);
    assert!(
        e.to_string().starts_with("detectors[1]: invalid regex"),
        "{e}"
    );
    let e = Detectors::new(&[DetectorSpec::Keywords {
        name: "k".into(),
        words: vec!["a".into(), String::new()],
    }])
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "detectors[0]: keywords[1] is empty");
    let e = Detectors::new(&[DetectorSpec::Regex {
        name: "optional".into(),
        pattern: r"(secret)?".into(),
    }])
    .err()
    .unwrap();
    assert!(e.to_string().contains("matches the empty text"), "{e}");
}

/// Text with things to find, and lots of near misses, in pieces of any size.
fn text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "jane@acme.io",
        "a@b.c",
        "4111 1111 1111 1111",
        "4111 1111 1111 1112",
        "123-45-6789",
        "sk-proj-abcdefghijklmnopqrstuvwxyz",
        "AKIAIOSFODNN7EXAMPLE",
        "falconry",
        "Project Falcon",
        "http://x.internal",
        " ",
        "\n",
        "lorem",
        "-",
        "@",
        "1",
        ".",
        "ipsum dolor",
        "é",
        "日本",
    ]);
    prop::collection::vec(atoms, 0..400).prop_map(|v| v.concat())
}

proptest! {
    // 200 cases unless PROPTEST_CASES says otherwise (a long run: PROPTEST_CASES=20000 in
    // release mode).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
    ))]

    #[test]
    fn any_chunking_finds_the_same_matches(
        text in text(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        batch in 1usize..300,
    ) {
        let d = builtins();
        let whole = scan_batching(d, &[&text], batch);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(text.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([text.len()]) {
            pieces.push(&text.as_bytes()[from..cut]);
            from = cut;
        }
        prop_assert_eq!(&whole, &scan_batching(d, &pieces, batch));
        // Scanning early (a blocking stream flushes after each event) finds the same.
        // And no match is reported later that starts before what was said to be settled then:
        // what a blocked stream let out held no match.
        let mut flushed = Vec::new();
        let mut settled = 0u64;
        let mut early = None;
        let mut s = d.scanner_batching(batch);
        for p in &pieces {
            let mut found = |m: Match| {
                if m.start < settled {
                    early.get_or_insert((m, settled));
                }
                flushed.push((d.name(m.detector).to_owned(), m.start, m.end));
            };
            s.feed(p, &mut found);
            s.flush(1, &mut found);
            prop_assert!(s.clean_upto() <= s.len());
            settled = s.settled_upto();
            prop_assert!(settled <= s.len() && settled >= s.clean_upto());
        }
        let mut found = |m: Match| {
            if m.start < settled {
                early.get_or_insert((m, settled));
            }
            flushed.push((d.name(m.detector).to_owned(), m.start, m.end));
        };
        s.finish(&mut found);
        prop_assert_eq!(early, None);
        flushed.sort_by(|a, b| (a.2, a.1, &a.0).cmp(&(b.2, b.1, &b.0)));
        prop_assert_eq!(&whole, &flushed);
        // And exactly what one search of the whole text finds: scanning in pieces and batches
        // loses nothing, finds nothing more, and reports nothing twice.
        prop_assert_eq!(&whole, &oracle(d, &text));
    }
}

#[test]
fn the_builtins_keep_a_small_overlap_and_flush_reports_clean_text() {
    let d = Arc::new(
        Detectors::new(&[
            DetectorSpec::Builtin(Builtin::PiiEmail),
            DetectorSpec::Builtin(Builtin::PiiCreditCard),
            DetectorSpec::Builtin(Builtin::PiiUsSsn),
            DetectorSpec::Builtin(Builtin::Secrets),
        ])
        .unwrap(),
    );
    // What a blocking stream holds back: a few hundred bytes, not MAX_OVERLAP.
    assert!(d.overlap() < 512, "{}", d.overlap());
    let mut s = d.scanner();
    let mut found = Vec::new();
    let clean = "a".repeat(2000) + " ";
    s.feed(clean.as_bytes(), &mut |m| found.push(m));
    assert_eq!(
        s.clean_upto(),
        0,
        "nothing scanned before a batch or a flush"
    );
    s.flush(1, &mut |m| found.push(m));
    let upto = s.clean_upto();
    assert!(upto > 0 && upto + d.overlap() as u64 + 2 * CONTEXT as u64 >= s.len());
    s.feed(b"mail jane@acme.io now", &mut |m| found.push(m));
    s.flush(1, &mut |m| found.push(m));
    // The address may still grow: not reported, and not clean.
    assert!(found.is_empty());
    assert!(s.clean_upto() <= 2001);
    s.finish(&mut |m| found.push(m));
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].start, found[0].end), (2006, 2018));
    assert_eq!(s.clean_upto(), s.len());
}
