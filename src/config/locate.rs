//! Finds the line of a key path (`listeners[1].bind`) in the YAML source, so that errors found after
//! parsing (a missing reference, a duplicate bind) can point at the line as serde's own errors do.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key paths of a YAML document mapped to the 1-based line where their value starts.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Collector {
    /// The path of the value that starts now, advancing the parent's position; `None` when the
    /// event is a mapping key rather than a value.
    fn value_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // A key: remember it; complex (non-scalar) keys get a placeholder.
                    *key = Some(scalar.unwrap_or("?").to_owned());
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.value_path(Some(&value)) {
                    self.lines.entry(path).or_insert(mark.line());
                } else if let Some(Frame::Map { path, key: Some(k) }) = self.stack.last() {
                    // Point a path at its key's line: that is where a reader looks.
                    let p = join(path, k);
                    self.lines.insert(p, mark.line());
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.value_path(None) {
                    self.lines.entry(path).or_insert(mark.line());
                }
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(None).unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingStart(..) => {
                let path = self.value_path(None).unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Indexes `source`; a document the YAML scanner rejects gives an empty index (serde reports it).
    pub fn new(source: &str) -> Self {
        let mut collector = Collector::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut collector, false).is_err() {
            return LineIndex::default();
        }
        LineIndex {
            lines: collector.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that the document has.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let src = "agent: a\nlisteners:\n  - name: x\n    bind: 1\n  - name: y\n    bind: 2\nroutes:\n  r:\n    upstreams: [u, v]\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line("agent"), Some(1));
        assert_eq!(idx.line("listeners[1].bind"), Some(6));
        assert_eq!(idx.line("listeners[0].name"), Some(3));
        assert_eq!(idx.line("routes.r.upstreams[1]"), Some(9));
        assert_eq!(idx.line("routes.r.missing"), Some(8));
    }
}
