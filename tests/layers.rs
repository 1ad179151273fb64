//! The modules of `src/` form layers: no module uses one that uses it back. This reads every
//! `crate::…`, `super::…` and `self::…` path in `src/` (code and unit tests alike; comments
//! and string literals skipped), builds the graph of which module uses which, and fails on
//! any cycle, naming it.
//!
//! The graph is checked twice: with a node per top-level module (`src/x.rs` or `src/x/`, all
//! its submodules included), and with `mapping`'s submodules as nodes of their own
//! (`mapping::event`, `mapping::rules`, …; `mapping` itself is `src/mapping/mod.rs` with its
//! re-exports), since the rules and the event builder must stay apart inside it too.
//! `lib.rs` and `main.rs` only declare and start the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules whose submodules are nodes of their own.
const SPLIT: &[&str] = &["mapping"];

/// Upward edges that are known and left for later. A cycle that needs one of these edges is
/// not reported. None today: the observer moved into the pipeline that calls it.
const KNOWN_UPWARD_EDGES: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/normalize/geo.rs` → `[normalize, geo]`,
/// `src/commands/mod.rs` → `[commands]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("a file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The node a module path belongs to.
fn node_of(path: &[String]) -> Option<String> {
    let top = path.first()?;
    match path.get(1) {
        Some(sub) if SPLIT.contains(&top.as_str()) && module_exists(&[top, sub]) => {
            Some(format!("{top}::{sub}"))
        }
        _ => Some(top.clone()),
    }
}

/// Whether `src/a/b.rs`, `src/a/b/` (or `src/a.rs` for one part) exists.
fn module_exists(parts: &[&String]) -> bool {
    let mut p = src();
    for part in parts {
        p.push(part.as_str());
    }
    p.with_extension("rs").is_file() || p.is_dir()
}

/// The source text with comments, string literals and char literals blanked out (each
/// replaced by a space), so that only code remains. Lifetimes are kept.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"#.
        let prev_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if !prev_is_ident && (c == 'r' || (c == 'b' && next == Some('r'))) {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                j += 1;
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"' && (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push(' ');
                i = j;
                continue;
            }
        }
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime ('a), which is kept.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
                continue;
            }
            if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The paths a piece of code names that start with `crate`, `super` or `self`, each as the
/// module path it resolves to from `here` (the module path of the code's file), with `use`
/// trees (`crate::{a::X, b::{c, d}}`) expanded. Inline modules (`mod tests { … }`) are
/// followed, so that a unit test's `super::*` is its own file.
fn referenced_paths(code: &str, here: &[String], children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut found = Vec::new();
    // The inline modules we are in, each with the brace depth at which it closes.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((depth, tokens[i + 1].clone()));
            }
            _ => {}
        }
        let starts_path = i == 0 || tokens[i - 1] != "::";
        let is_root = matches!(t, "crate" | "super" | "self")
            || (t == "$crate")
            || (here.len() <= 1 && children.contains(t) && inline.is_empty());
        if starts_path && is_root && tokens.get(i + 1).map(String::as_str) == Some("::") {
            let mut module: Vec<String> = here.to_vec();
            module.extend(inline.iter().map(|(_, m)| m.clone()));
            let end = expand(&tokens, i, &module, &mut found);
            i = end;
            continue;
        }
        i += 1;
    }
    found
}

/// Splits code into identifiers, `::` and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// Reads the path starting at `tokens[start]`, resolving its leading `crate`/`super`/`self`
/// (or a child module's name) against `module`, and pushes every full path it names (a `use`
/// tree gives several). Returns the index after the path.
fn expand(tokens: &[String], start: usize, module: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut base: Vec<String> = Vec::new();
    let mut i = start;
    // The leading segments that say where the path starts.
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("crate") | Some("$crate") if i == start => base.clear(),
            Some("self") if i == start => base = module.to_vec(),
            Some("super") => {
                if i == start {
                    base = module.to_vec();
                }
                base.pop();
            }
            _ => break,
        }
        i += 1;
        if tokens.get(i).map(String::as_str) == Some("::") {
            i += 1;
        } else {
            out.push(base);
            return i;
        }
    }
    if i == start {
        // A child module's name, used from its parent.
        base = module.to_vec();
    }
    tree(tokens, i, base, out)
}

/// A path's rest after `prefix`: segments, and a `{ … }` group of trees.
fn tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        Some("self") => {
                            out.push(prefix.clone());
                            i += 1;
                        }
                        Some(_) => i = tree(tokens, i, prefix.clone(), out),
                        None => return i,
                    }
                }
            }
            Some("*") => {
                out.push(prefix);
                return i + 1;
            }
            Some(seg) if seg.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                prefix.push(seg.to_string());
                i += 1;
                if tokens.get(i).map(String::as_str) == Some("::") {
                    i += 1;
                } else {
                    // `as name` and what follows are not part of the path.
                    out.push(prefix);
                    return i;
                }
            }
            _ => {
                out.push(prefix);
                return i;
            }
        }
    }
}

/// The module graph of `src/`: node → the nodes it uses (itself excluded).
fn module_graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph = Graph::new();
    for file in files {
        let here = module_path(&file);
        if here == ["lib"] || here == ["main"] {
            continue;
        }
        let Some(from) = node_of(&here) else {
            continue;
        };
        // The child modules of a `mod.rs` (or of `x.rs` with an `x/` folder), which it may
        // name without `self::`.
        let dir = if file.file_name().is_some_and(|n| n == "mod.rs") {
            file.parent().map(Path::to_path_buf)
        } else {
            Some(file.with_extension(""))
        };
        let children: BTreeSet<String> = dir
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let uses = graph.entry(from.clone()).or_default();
        for path in referenced_paths(&code_only(&text), &here, &children) {
            // Only paths into a module of ours make an edge (not `crate::SomeItem` of lib.rs).
            if path.first().is_some_and(|top| module_exists(&[top])) {
                if let Some(to) = node_of(&path) {
                    if to != from {
                        uses.insert(to);
                    }
                }
            }
        }
    }
    graph
}

/// The cycles of a graph, as its strongly connected components of more than one node, with
/// `ignored` edges left out.
fn cycles(graph: &Graph, ignored: &[(&str, &str)]) -> Vec<BTreeSet<String>> {
    let nodes: Vec<&String> = graph.keys().collect();
    let edges = |n: &str| -> Vec<&String> {
        graph
            .get(n)
            .into_iter()
            .flatten()
            .filter(|to| !ignored.contains(&(n, to.as_str())))
            .collect()
    };
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for to in edges(&n) {
                if seen.insert(to.clone()) {
                    todo.push(to.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for n in &nodes {
        let component: BTreeSet<String> = nodes
            .iter()
            .filter(|m| reach[*n].contains(m.as_str()) && reach[*m].contains(n.as_str()))
            .map(|m| m.to_string())
            .collect();
        if component.len() > 1 && !found.contains(&component) {
            found.push(component);
        }
    }
    found
}

/// The graph with each split module's submodules merged into it (`mapping::event` →
/// `mapping`).
fn top_level(graph: &Graph) -> Graph {
    let top = |n: &String| n.split("::").next().unwrap_or(n).to_string();
    let mut merged = Graph::new();
    for (from, uses) in graph {
        let entry = merged.entry(top(from)).or_default();
        entry.extend(uses.iter().map(top).filter(|to| *to != top(from)));
    }
    merged
}

fn shown(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(n, uses)| {
            format!(
                "{n} → {}",
                uses.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_module_of_src_uses_one_that_uses_it_back() {
    let graph = module_graph();
    // The reading found the modules and their uses; an empty graph would pass vacuously.
    assert!(graph.len() > 20, "{}", shown(&graph));
    for (from, to) in [
        ("mapping::event", "mapping::rules"),
        ("mapping::event", "config"),
        ("source", "connection"),
        ("commands", "pipeline"),
        ("cli", "commands"),
    ] {
        assert!(
            graph.get(from).is_some_and(|u| u.contains(to)),
            "expected {from} → {to} in\n{}",
            shown(&graph)
        );
    }
    // Shown with `cargo test --test layers -- --nocapture`.
    println!("{}\n\n{}", shown(&top_level(&graph)), shown(&graph));
    for graph in [top_level(&graph), graph] {
        let loops = cycles(&graph, KNOWN_UPWARD_EDGES);
        assert!(
            loops.is_empty(),
            "modules that use each other (each set is a loop): {loops:?}\n\nthe module graph:\n{}",
            shown(&graph)
        );
    }
}

#[test]
fn the_command_line_is_on_top_and_only_it_calls_the_commands() {
    let graph = top_level(&module_graph());
    for (from, uses) in &graph {
        assert!(!uses.contains("cli"), "{from} uses cli, which is above it");
        assert!(
            from == "cli" || !uses.contains("commands"),
            "{from} uses commands, which only cli calls"
        );
    }
}

#[test]
fn paths_are_read_from_code_only_and_resolved_from_where_they_stand() {
    let here = vec!["mapping".to_string(), "event".to_string()];
    let code = code_only(
        r#"
use super::rules::{self, Refusal};
use crate::{config::{ModelConfig, Secret}, sink::*};
// use crate::commented::Out;
let s = "crate::in_a_string::X";
let c = '"'; let t: &'static str = crate::source::inspect::f();
mod tests { use super::*; use super::super::value::Value; }
"#,
    );
    let found: BTreeSet<String> = referenced_paths(&code, &here, &BTreeSet::new())
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected: BTreeSet<String> = [
        "mapping::rules",
        "mapping::rules::Refusal",
        "config::ModelConfig",
        "config::Secret",
        "sink",
        "source::inspect::f",
        "mapping::event",
        "mapping::value::Value",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_loop_is_found_and_a_known_upward_edge_is_not_one() {
    let graph: Graph = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("observer", vec!["pipeline"]),
        ("pipeline", vec!["observer", "a"]),
    ]
    .into_iter()
    .map(|(n, uses)| (n.to_string(), uses.into_iter().map(String::from).collect()))
    .collect();
    let expected: BTreeSet<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
    assert_eq!(cycles(&graph, &[("observer", "pipeline")]), vec![expected]);
    assert_eq!(cycles(&graph, &[]).len(), 2);
}
