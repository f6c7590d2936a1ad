//! The crate's imports flow one way: no module imports, directly or through others, a module
//! that imports it back, and each top-level module imports only the layers below its own in
//! `ARCHITECTURE.md`. Read off the sources (`crate::` and `super::` paths, a parent's paths to its
//! children, re-exports followed to the file that defines the item), so that a cycle cannot come
//! back unnoticed. Test code (`#[cfg(test)]` modules, `tests.rs` files) may import anything.
//!
//! A child's use of what its own parent (or an ancestor) defines is not an edge here: a parent
//! module is the vocabulary its children share. Everything else is: a parent's use of a child,
//! siblings' uses of each other, and every path across top-level modules.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Every module of the crate: its path (`proxy::ctx`; `` for the crate root) and its source,
/// test modules taken out.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel: PathBuf = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] || parts == ["main"] {
                    parts.clear();
                }
                if parts.last().is_some_and(|p| p == "tests") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                found.insert(parts.join("::"), without_tests(&text));
            }
        }
    }
    found
}

/// The source without comments and `#[cfg(test)]` modules.
fn without_tests(text: &str) -> String {
    let test_mod = Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s*)?mod\s+\w+\s*\{").unwrap();
    let mut out = String::new();
    let mut rest: &str = text;
    while let Some(m) = test_mod.find(rest) {
        out.push_str(&rest[..m.start()]);
        let body = &rest.as_bytes()[m.end()..];
        let (mut depth, mut i, mut in_string) = (1, 0, false);
        while i < body.len() && depth > 0 {
            match (in_string, body[i]) {
                (true, b'\\') => i += 1,
                (true, b'"') => in_string = false,
                (true, _) => {}
                (false, b'"') => in_string = true,
                // A brace as a character literal (`'{'`, `b'}'`) is no block.
                (false, b'\'') if body.get(i + 2) == Some(&b'\'') => i += 2,
                (false, b'{') => depth += 1,
                (false, b'}') => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        rest = &rest[m.end() + i..];
    }
    out.push_str(rest);
    // After the test modules: a `//` in a string must not hide a brace from the count above.
    let comment = Regex::new(r"//[^\n]*").unwrap();
    comment.replace_all(&out, "").into_owned()
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}::{name}")
    }
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or("", |(p, _)| p).to_owned()
}

/// The module-to-module edges.
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    // `pub use child::{A, B}` in a module: `module::A` is defined in `module::child`.
    let reexport = Regex::new(r"pub(?:\([^)]*\))?\s+use\s+(?:self::)?(\w+)::([^;]+);").unwrap();
    let word = Regex::new(r"\b\w+\b").unwrap();
    let mut defined_in: BTreeMap<(String, String), String> = BTreeMap::new();
    for (m, text) in modules {
        for c in reexport.captures_iter(text) {
            let child = join(m, &c[1]);
            if modules.contains_key(&child) {
                for w in word.find_iter(&c[2]) {
                    defined_in.insert((m.clone(), w.as_str().to_owned()), child.clone());
                }
            }
        }
    }
    let resolve = |base: &str, parts: &[&str]| -> String {
        let mut best = base.to_owned();
        for part in parts {
            let next = join(&best, part);
            if modules.contains_key(&next) {
                best = next;
            } else {
                if let Some(m) = defined_in.get(&(best.clone(), (*part).to_owned())) {
                    return m.clone();
                }
                break;
            }
        }
        best
    };
    let path = Regex::new(r"\b(crate|super)((?:::\w+)*)(::\{[^;]*?\})?").unwrap();
    let relative = Regex::new(r"(?:^|[^:\w])(\w+)::").unwrap();
    let item = Regex::new(r"\w+(?:::\w+)*").unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in modules {
        let mut out = BTreeSet::new();
        for c in path.captures_iter(text) {
            let (head, tail) = (&c[1], &c[2]);
            if tail.is_empty() && c.get(3).is_none() {
                continue; // `pub(super)`, `pub(crate)`
            }
            let mut parts: Vec<&str> = tail.split("::").filter(|p| !p.is_empty()).collect();
            let mut base = if head == "crate" {
                String::new()
            } else {
                parent(m)
            };
            while parts.first() == Some(&"super") {
                base = parent(&base);
                parts.remove(0);
            }
            match c.get(3) {
                Some(group) => {
                    for i in item.find_iter(group.as_str()) {
                        let mut all = parts.clone();
                        all.extend(i.as_str().split("::"));
                        out.insert(resolve(&base, &all));
                    }
                }
                None => {
                    out.insert(resolve(&base, &parts));
                }
            }
        }
        for c in relative.captures_iter(text) {
            let child = join(m, &c[1]);
            if modules.contains_key(&child) {
                out.insert(child);
            }
        }
        // A module's own parent's (and ancestors') definitions are its vocabulary.
        out.retain(|to| to != m && !to.is_empty() && !m.starts_with(&format!("{to}::")));
        edges.insert(m.clone(), out);
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(lw));
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    edges(&modules(&src))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let edges = crate_graph();
    let found = cycles(&edges);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let members: BTreeSet<&String> = component.iter().collect();
            let lines: Vec<String> = component
                .iter()
                .map(|m| {
                    let to: Vec<&String> =
                        edges[m].iter().filter(|t| members.contains(t)).collect();
                    format!("  {m} -> {to:?}")
                })
                .collect();
            lines.join("\n")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles:\n{}",
        described.join("\n\n")
    );
}

/// The layers of `ARCHITECTURE.md`'s "What may import what": numbered lines, bottom first, each
/// naming its top-level modules in backticks.
fn layers() -> BTreeMap<String, usize> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let section = doc
        .split("## What may import what")
        .nth(1)
        .expect("ARCHITECTURE.md has a section \"What may import what\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let numbered = Regex::new(r"(?m)^(\d+)\. (.*)$").unwrap();
    let name = Regex::new(r"`(\w+)`").unwrap();
    let mut layers = BTreeMap::new();
    for line in numbered.captures_iter(section) {
        let layer: usize = line[1].parse().unwrap();
        for n in name.captures_iter(&line[2]) {
            layers.insert(n[1].to_owned(), layer);
        }
    }
    layers
}

#[test]
fn top_level_modules_import_only_the_layers_below_them() {
    let layers = layers();
    let edges = crate_graph();
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut wrong = Vec::new();
    let mut unplaced = BTreeSet::new();
    for (from, tos) in &edges {
        let f = top(from);
        if f.is_empty() {
            continue;
        }
        if !layers.contains_key(&f) {
            unplaced.insert(f.clone());
        }
        for to in tos {
            let t = top(to);
            if t == f || t.is_empty() {
                continue;
            }
            match (layers.get(&f), layers.get(&t)) {
                (Some(lf), Some(lt)) if lt < lf => {}
                (Some(lf), Some(lt)) => {
                    wrong.push(format!("{from} (layer {lf}) imports {to} (layer {lt})"))
                }
                _ => {
                    unplaced.insert(t);
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "top-level modules missing from ARCHITECTURE.md's layers: {unplaced:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_cycle_when_there_is_one() {
    // The reader of sources, on a small crate of its own: `b` reaches `a::c` through `a`'s
    // re-export and `a` itself; `a` uses `b`; `c` uses its parent's own definitions only.
    let mut modules = BTreeMap::new();
    modules.insert(String::new(), "mod a; mod b;".to_owned());
    let a = "mod c; pub use c::Thing; use crate::b::Other; pub fn helper() {}";
    modules.insert("a".into(), a.to_owned());
    modules.insert(
        "a::c".into(),
        "use super::helper; pub struct Thing;".to_owned(),
    );
    let b = "use crate::a::{Thing, helper}; pub struct Other;";
    modules.insert("b".into(), b.to_owned());
    let edges = edges(&modules);
    let b_uses = BTreeSet::from(["a".to_owned(), "a::c".to_owned()]);
    assert_eq!(edges["b"], b_uses);
    assert!(
        edges["a::c"].is_empty(),
        "a parent's definitions are no edge"
    );
    let found = cycles(&edges);
    assert_eq!(found, vec![vec!["a".to_owned(), "b".to_owned()]]);
    // Test modules are not read.
    let stripped =
        without_tests("use crate::x;\n#[cfg(test)]\nmod tests {\n use crate::y; { }\n}\n");
    assert!(stripped.contains("crate::x") && !stripped.contains("crate::y"));
}
