//! Inline inspection cost: the SSE parser alone and the full response readers, fed a realistic
//! streamed completion the way it arrives (one event per read, or 1,460-byte TCP segments).
//! Throughput is in bytes of response body per second.
//!
//!   cargo bench --bench inspect
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::StatusCode;
use sloguard::inspect::{Format, ResponseReader, SseParser, MAX_INSPECTED_BODY};

/// A streamed Chat Completion as OpenAI sends it: a role chunk, `n` content chunks of a word or
/// two, a finish chunk, the usage chunk, `[DONE]`.
fn openai_stream(n: usize) -> Vec<Bytes> {
    let head = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":"#;
    let mut events = vec![format!(
        "data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )];
    let words = [
        "The",
        " agent",
        " kept",
        " its",
        " error",
        " budget",
        " \\\"intact\\\"",
        " today",
        ".",
    ];
    for i in 0..n {
        events.push(format!(
            "data: {head}{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null,\"obfuscation\":\"q3Xw\"}}\n\n",
            words[i % words.len()]
        ));
    }
    events.push(format!(
        "data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    events.push("data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":812,\"completion_tokens\":400,\"total_tokens\":1212}}\n\n".to_owned());
    events.push("data: [DONE]\n\n".to_owned());
    events.into_iter().map(Bytes::from).collect()
}

fn anthropic_stream(n: usize) -> Vec<Bytes> {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":812,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
    ];
    for i in 0..n {
        events.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word{i} \"}}}}\n\n"));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_owned(),
    );
    events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":400}}\n\n".to_owned());
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events.into_iter().map(Bytes::from).collect()
}

/// The same bytes cut into TCP-segment-sized reads, events split across them.
fn segments(events: &[Bytes], size: usize) -> Vec<Bytes> {
    let all: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
    all.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn bench(c: &mut Criterion) {
    let streams = [
        ("openai", Format::ChatCompletions, openai_stream(400)),
        ("anthropic", Format::Messages, anthropic_stream(400)),
    ];
    let mut g = c.benchmark_group("inspect");
    for (name, format, events) in &streams {
        let bytes: usize = events.iter().map(Bytes::len).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        for (cut, chunks) in [
            ("events", events.clone()),
            ("segments", segments(events, 1460)),
        ] {
            g.bench_function(format!("sse_parser/{name}/{cut}"), |b| {
                b.iter(|| {
                    let mut p = SseParser::new(MAX_INSPECTED_BODY);
                    let mut n = 0usize;
                    for c in &chunks {
                        p.feed(c, &mut |_| n += 1);
                    }
                    black_box(n)
                })
            });
            g.bench_function(format!("reader/{name}/{cut}"), |b| {
                b.iter(|| {
                    let mut r = ResponseReader::new(
                        *format,
                        StatusCode::OK,
                        Some(b"text/event-stream"),
                        None,
                    );
                    let mut outputs = 0;
                    for c in &chunks {
                        outputs += r.feed(c);
                    }
                    black_box((outputs, r.finish(true)))
                })
            });
        }
    }
    g.finish();

    // What inspection adds to time to first token: a reader made when the head arrives, then
    // the role-only chunk and the first content chunk read before the latter is passed on.
    let events = openai_stream(1);
    let mut g = c.benchmark_group("inspect_ttft");
    g.bench_function("openai/new_reader+role+first_content", |b| {
        b.iter(|| {
            let mut r = ResponseReader::new(
                Format::ChatCompletions,
                StatusCode::OK,
                Some(b"text/event-stream"),
                None,
            );
            black_box(r.feed(&events[0]));
            black_box(r.feed(&events[1]))
        })
    });
    g.finish();
}

/// Safety detectors over output text as a stream delivers it (40-byte deltas): every built-in,
/// 20 regexes and 1,000 keywords, over ~256 KiB of prose with a little PII in it.
fn safety_bench(c: &mut Criterion) {
    use sloguard::inspect::safety::{Builtin, DetectorSpec, Detectors};
    let mut specs: Vec<DetectorSpec> = [
        Builtin::PiiEmail,
        Builtin::PiiCreditCard,
        Builtin::PiiUsSsn,
        Builtin::Secrets,
    ]
    .into_iter()
    .map(DetectorSpec::Builtin)
    .collect();
    for i in 0..20 {
        specs.push(DetectorSpec::Regex {
            name: format!("rule{i}"),
            pattern: format!(r"(?i)\bproject[- ]?codename[- ]?{i}\b|https?://host{i}\.internal\b"),
        });
    }
    specs.push(DetectorSpec::Keywords {
        name: "banned".into(),
        words: (0..1000)
            .map(|i| format!("forbidden-term-{i:04}"))
            .collect(),
    });
    let detectors = std::sync::Arc::new(Detectors::new(&specs).unwrap());
    let prose = "The customer asked about their invoice from last month. I checked the account and the \
        payment went through on the 14th; the receipt was sent to the address on file. If you need \
        a copy, reply here and I will resend it. For refunds, the policy allows 30 days from purchase. \
        Contact jane.doe@acme-corp.io or call the support line. ";
    let mut text = String::new();
    while text.len() < 256 * 1024 {
        text.push_str(prose);
    }
    let pieces: Vec<&[u8]> = text.as_bytes().chunks(40).collect();
    let mut g = c.benchmark_group("safety");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("builtins_20_regexes_1000_keywords", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let mut s = detectors.scanner();
            for p in &pieces {
                s.feed(black_box(p), &mut |_| n += 1);
            }
            s.finish(&mut |_| n += 1);
            n
        })
    });
    // What `action: block` adds on a stream: a check of where a match could still start after
    // every delta, so that each can go out as soon as it is known clean, and a scan every
    // HELD_SCAN_STEP bytes.
    g.bench_function("held_stream_per_delta", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let mut settled = 0u64;
            let mut s = detectors.scanner();
            for p in &pieces {
                s.feed(black_box(p), &mut |_| n += 1);
                s.flush(sloguard::proxy::safety::HELD_SCAN_STEP, &mut |_| n += 1);
                settled = s.settled_upto();
            }
            s.finish(&mut |_| n += 1);
            n + settled
        })
    });
    g.finish();
}

criterion_group!(benches, bench, safety_bench);
criterion_main!(benches);
