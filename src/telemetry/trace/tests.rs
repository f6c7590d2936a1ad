use super::*;

#[test]
fn traceparent_is_read_as_w3c_writes_it() {
    let ok = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let p = parse_traceparent(ok).unwrap();
    assert_eq!(
        p.trace_id,
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
    );
    assert_eq!(p.span_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
    assert!(p.sampled);
    let unsampled = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert!(!parse_traceparent(unsampled).unwrap().sampled);
    // A later version may add fields after a dash.
    let future = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra";
    assert!(parse_traceparent(future).is_some());
    for bad in [
        &b"00-00000000000000000000000000000000-b7ad6b7169203331-01"[..],
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
        b"",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033é-01".as_bytes(),
    ] {
        assert_eq!(
            parse_traceparent(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn traceparent_written_for_the_upstream_round_trips() {
    let t = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let v = traceparent(t, s, true);
    assert_eq!(v, "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
    let p = parse_traceparent(v.as_bytes()).unwrap();
    assert_eq!((p.trace_id, p.span_id, p.sampled), (t, s, true));
    assert_eq!(
        traceparent(t, s, false),
        "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00"
    );
}

#[test]
fn ratio_sampling_keeps_about_the_ratio() {
    let (tx, _rx) = mpsc::channel(1);
    let ids = RandomIdGenerator::default();
    for (ratio, low, high) in [
        (0.0, 0, 0),
        (0.1, 800, 1200),
        (0.5, 4500, 5500),
        (1.0, 10_000, 10_000),
    ] {
        let t = Tracer::new(ratio, tx.clone(), Arc::default(), 1, Counter::noop());
        let kept = (0..10_000)
            .filter(|_| t.sampled(ids.new_trace_id()))
            .count();
        assert!(
            (low..=high).contains(&kept),
            "ratio {ratio}: {kept} of 10000"
        );
    }
}
