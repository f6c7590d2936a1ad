//! Every default is written once, in the config schema: where the README's example
//! (`config/reference.yaml`, the same file) says a value is the default, leaving the key out (or
//! giving an empty section) must give that very value.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;

use serde_yaml_ng::Value;
use sloguard::Config;

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn parse(v: &Value) -> Config {
    Config::parse("reference.yaml", &serde_yaml_ng::to_string(v).unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A step of a key path: a mapping key or a sequence index.
#[derive(Clone, Copy)]
enum Step {
    Key(&'static str),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        Step::Key(k) => v
            .get_mut(*k)
            .unwrap_or_else(|| panic!("the reference config has no key {k:?}")),
        Step::Index(i) => v.get_mut(*i).expect("index"),
    })
}

/// The steps of a dotted key path, `listeners[0].limits` for example.
fn steps(path: &'static str) -> Vec<Step> {
    path.split('.')
        .flat_map(|part| match part.split_once('[') {
            Some((key, index)) => {
                let index = index.trim_end_matches(']').parse().expect("an index");
                vec![Step::Key(key), Step::Index(index)]
            }
            None => vec![Step::Key(part)],
        })
        .collect()
}

/// How the default is asked for.
#[derive(Clone, Copy)]
enum Ask {
    /// The key left out.
    Absent,
    /// An empty section (`{}`).
    Empty,
}

/// The README's value at `path` and the one the schema gives when `ask`ed, as `read` shows them.
fn both(path: &[Step], ask: Ask, read: impl Fn(&Config) -> String) -> (String, String) {
    let written = reference();
    let mut asked = written.clone();
    let (last, parent) = path.split_last().unwrap();
    let parent = at(&mut asked, parent);
    match (ask, last) {
        (Ask::Absent, Step::Key(k)) => {
            parent.as_mapping_mut().unwrap().remove(*k).expect("key");
        }
        (Ask::Empty, Step::Key(k)) => {
            let empty = Value::Mapping(Default::default());
            parent.as_mapping_mut().unwrap().insert((*k).into(), empty);
        }
        (_, Step::Index(_)) => unreachable!("defaults are asked for by key"),
    }
    (read(&parse(&written)), read(&parse(&asked)))
}

/// How a case reads the value it compares.
type Read = Box<dyn Fn(&Config) -> String>;

#[test]
fn the_values_the_reference_calls_defaults_are_the_schemas() {
    use Ask::{Absent, Empty};
    // `body_timeout` is optional in the schema (the admin port has none): its effective value.
    let listener = |c: &Config| {
        let mut l = c.listeners[0].limits.clone();
        let body = l.body_timeout();
        l.body_timeout = None;
        format!("{l:?} {body:?}")
    };
    let route = |c: &Config| {
        let r = &c.routes["llm"];
        format!("{:?} {:?}", r.fallback_on, r.max_replay_body)
    };
    let cache = |c: &Config| format!("{:?}", c.routes["llm"].cache);
    let up = |c: &Config| {
        let u = &c.upstreams["openai"];
        // The pool's idle limit depends on where the upstream is: its effective value.
        format!("{:?} {:?} {:?}", u.timeouts, u.h2, u.pool_idle_timeout())
    };
    // `max_open_for` follows `open_for` when that is longer: its effective value.
    let breaker = |c: &Config| {
        let mut b = c.upstreams["openai"].circuit_breaker.clone().unwrap();
        let max = b.max_open_for();
        b.max_open_for = None;
        format!("{b:?} {max:?}")
    };
    let safety = |c: &Config| format!("{:?}", c.safety.as_ref().unwrap().apply_to);
    let otlp = |c: &Config| {
        let o = c.otlp.as_ref().unwrap();
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            o.protocol,
            o.interval,
            o.timeout(),
            o.temporality,
            o.metrics
        )
    };
    let cases: Vec<(&str, Ask, Read)> = vec![
        (
            "admin.bind",
            Absent,
            Box::new(|c| format!("{:?}", c.admin.bind)),
        ),
        ("listeners[0].limits", Absent, Box::new(listener)),
        ("routes.llm.fallback_on", Absent, Box::new(route)),
        ("routes.llm.max_replay_body", Absent, Box::new(route)),
        ("routes.llm.cache", Empty, Box::new(cache)),
        ("upstreams.openai.timeouts", Absent, Box::new(up)),
        ("upstreams.openai.h2", Absent, Box::new(up)),
        ("upstreams.openai.pool", Absent, Box::new(up)),
        ("upstreams.openai.circuit_breaker", Empty, Box::new(breaker)),
        ("tasks", Absent, Box::new(|c| format!("{:?}", c.tasks))),
        ("cascade", Empty, Box::new(|c| format!("{:?}", c.cascade))),
        ("mcp", Absent, Box::new(|c| format!("{:?}", c.mcp))),
        (
            "correctness",
            Empty,
            Box::new(|c| format!("{:?}", c.correctness)),
        ),
        ("safety.apply_to", Absent, Box::new(safety)),
        (
            "shutdown",
            Absent,
            Box::new(|c| format!("{:?}", c.shutdown)),
        ),
        ("metrics", Absent, Box::new(|c| format!("{:?}", c.metrics))),
        ("memory", Absent, Box::new(|c| format!("{:?}", c.memory))),
        ("otlp.protocol", Absent, Box::new(otlp)),
        ("otlp.interval", Absent, Box::new(otlp)),
        ("otlp.timeout", Absent, Box::new(otlp)),
        ("otlp.temporality", Absent, Box::new(otlp)),
        ("otlp.metrics", Absent, Box::new(otlp)),
    ];
    for (key, ask, read) in cases {
        let (written, default) = both(&steps(key), ask, read);
        assert_eq!(
            written, default,
            "{key}: the reference's value is not the default"
        );
    }
}

#[test]
fn the_check_notices_a_written_value_that_is_not_the_default() {
    // The reference's timeouts changed by hand: no longer the default, and the comparison says so.
    let mut changed = reference();
    let timeouts = at(&mut changed, &steps("upstreams.openai.timeouts"));
    *timeouts.get_mut("connect").unwrap() = Value::String("3s".into());
    let mut absent = changed.clone();
    at(&mut absent, &steps("upstreams.openai"))
        .as_mapping_mut()
        .unwrap()
        .remove("timeouts");
    let read = |c: &Config| format!("{:?}", c.upstreams["openai"].timeouts);
    assert_ne!(read(&parse(&changed)), read(&parse(&absent)));
}
