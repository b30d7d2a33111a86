//! The shape of the code, checked from its `use` lines and paths (docs/architecture.md): no
//! product file imports a module that imports it back (no import circle of any length), the
//! domain module and the state layer stay below the layers that use them, and no product
//! file grows past 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, `["posthog", "query", "page"]`; `[]` is the crate root.
type Module = Vec<String>;

/// Every product module and its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            if parts == ["main"] {
                continue;
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The code of a file without its test module and comments.
fn product_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` (of module `me`) names: `crate::a::b`, `super::x`,
/// `self::x`, `child::x` and groups `a::{b, c::d}`. A name resolves to the longest module
/// prefix that exists.
fn imports(me: &Module, code: &str, all: &BTreeMap<Module, PathBuf>) -> BTreeSet<Module> {
    // The module that `self::`, `super::` and a child's name are relative to.
    let here: Module = me.clone();
    let children: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|n| n.trim().to_string())
        })
        .collect();
    let mut paths: Vec<String> = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            let before_ok = start == 0 || {
                let p = bytes[start - 1] as char;
                !(p.is_ascii_alphanumeric() || p == '_' || p == ':')
            };
            // A path: words joined by `::`, perhaps ending in a `{...}` group.
            let mut end = i;
            while end < bytes.len() {
                let ch = bytes[end] as char;
                if ch.is_ascii_alphanumeric() || ch == '_' {
                    end += 1;
                } else if code[end..].starts_with("::") {
                    end += 2;
                } else {
                    break;
                }
            }
            let path = code[start..end].trim_end_matches("::").to_string();
            let head = path.split("::").next().unwrap_or("");
            let known = matches!(head, "crate" | "super" | "self") || children.contains(head);
            let group = code[end..].starts_with('{');
            if before_ok && known && (path.contains("::") || group) {
                if group {
                    let close = code[end..].find('}').map_or(code.len(), |k| end + k);
                    for item in code[end + 1..close].split(',') {
                        let item = item.split(" as ").next().unwrap_or("").trim();
                        if !item.is_empty()
                            && item
                                .chars()
                                .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
                        {
                            paths.push(format!("{path}::{item}"));
                        }
                    }
                    paths.push(path);
                    i = close;
                } else {
                    paths.push(path);
                    i = end;
                }
                continue;
            }
            i = end.max(i + 1);
            continue;
        }
        i += 1;
    }
    let mut out = BTreeSet::new();
    for path in paths {
        let mut parts: Vec<&str> = path.split("::").collect();
        let mut base: Module = match parts[0] {
            "crate" => {
                parts.remove(0);
                Vec::new()
            }
            "super" => {
                let mut b = here.clone();
                while parts.first() == Some(&"super") {
                    parts.remove(0);
                    b.pop();
                }
                b
            }
            "self" => {
                parts.remove(0);
                here.clone()
            }
            _ => here.clone(),
        };
        let mut best = None;
        for part in parts {
            base.push(part.to_string());
            if all.contains_key(&base) {
                best = Some(base.clone());
            }
        }
        if let Some(m) = best
            && &m != me
            && !m.is_empty()
        {
            out.insert(m);
        }
    }
    out
}

/// The product's import graph (modules compiled only for tests, such as the property tests
/// that `lib.rs` declares under `#[cfg(test)]`, are no part of it).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = modules(&src);
    let root = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for test_only in root.split("#[cfg(test)]\nmod ").skip(1) {
        let name = test_only.split(';').next().unwrap_or("").trim().to_string();
        all.remove(&vec![name]);
    }
    all.iter()
        .map(|(m, file)| (m.clone(), imports(m, &product_code(file), &all)))
        .collect()
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut circle = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    circle.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if circle.len() > 1 {
                    self.found.push(circle);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn the_circle_finder_finds_a_planted_circle() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    g.insert(m("a"), [m("b")].into());
    g.insert(m("b"), [m("c")].into());
    g.insert(m("c"), [m("a"), m("d")].into());
    g.insert(m("d"), BTreeSet::new());
    let found = circles(&g);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].iter().collect::<BTreeSet<_>>(),
        [m("a"), m("b"), m("c")].iter().collect()
    );
    // And the reader of paths sees a child's module, `super::` and groups.
    let all: BTreeMap<Module, PathBuf> = [m("p"), m("p::q"), m("p::r"), m("s")]
        .into_iter()
        .map(|k| (k, PathBuf::new()))
        .collect();
    let code =
        "mod q;\nuse q::X;\nuse super::s::Y;\nuse crate::{p::r::Z, s};\npub(super) fn f() {}";
    let found = imports(&m("p"), code, &all);
    assert_eq!(found, [m("p::q"), m("p::r"), m("s")].into());
}

#[test]
fn no_product_file_imports_a_module_that_imports_it_back() {
    let g = graph();
    assert!(
        g.len() > 40,
        "the product's modules were found: {}",
        g.len()
    );
    let found = circles(&g);
    let shown: Vec<String> = found
        .iter()
        .map(|c| c.iter().map(name).collect::<Vec<_>>().join(" -> "))
        .collect();
    assert!(found.is_empty(), "import circles: {shown:#?}");
}

#[test]
fn the_domain_and_the_state_stay_below_the_layers_that_use_them() {
    let g = graph();
    let above_domain = [
        "cli", "settings", "state", "posthog", "sinks", "ndjson", "commands", "pipeline", "net",
    ];
    for (m, uses) in &g {
        let used: Vec<String> = uses.iter().map(name).collect();
        if m.first().is_some_and(|f| f == "domain") {
            let bad: Vec<&String> = used
                .iter()
                .filter(|u| above_domain.iter().any(|a| u.split("::").next() == Some(a)))
                .collect();
            assert!(bad.is_empty(), "{} uses {bad:?}", name(m));
        }
        // The state layer reads and writes files; it asks no server anything.
        if m.first().is_some_and(|f| f == "state") {
            let bad: Vec<&String> = used
                .iter()
                .filter(|u| {
                    ["posthog", "net", "sinks", "commands"]
                        .iter()
                        .any(|a| u.split("::").next() == Some(a))
                })
                .collect();
            assert!(bad.is_empty(), "{} uses {bad:?}", name(m));
        }
    }
}

/// The layers of docs/architecture.md, from the top: a module may use its own layer's
/// modules and those of the layers below.
fn layer(m: &Module) -> usize {
    match m.first().map(String::as_str) {
        None | Some("main") => 7,
        Some("commands") => 6,
        Some("posthog" | "ndjson") => 5,
        Some("sinks") => 4,
        Some("state") => 3,
        Some("settings") => 2,
        Some("cli") => 1,
        _ => 0,
    }
}

#[test]
fn imports_go_down_the_layers() {
    let g = graph();
    let mut up = Vec::new();
    for (m, uses) in &g {
        for u in uses {
            if layer(u) > layer(m) {
                up.push(format!("{} -> {}", name(m), name(u)));
            }
        }
    }
    assert!(up.is_empty(), "imports that go up a layer: {up:#?}");
}

#[test]
fn no_product_file_is_over_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long: Vec<String> = modules(&src)
        .values()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            (lines > 800).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "{long:?}");
}
