//! ARCHITECTURE.md stays true to the tree: every path it names exists, and every module of
//! `src/` (and every crate under `crates/`) has its place in the code map. A change that moves,
//! adds or removes a module fails here until the map says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The folders at the repository's root whose paths the document may name.
const ROOTS: &[&str] = &[
    "src/",
    "crates/",
    "tests/",
    "bench/",
    "benches/",
    "config/",
    "migrations/",
    ".ci/",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable")
}

/// Every `inline code` span of the text outside fenced blocks that names a path under one of
/// [`ROOTS`], as written (a folder keeps its trailing `/`).
fn named_paths(markdown: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Between the 2k+1-th and 2k+2-th backtick: the inline code spans.
        for span in line.split('`').skip(1).step_by(2) {
            if !span.contains(char::is_whitespace) && ROOTS.iter().any(|r| span.starts_with(r)) {
                paths.insert(span.to_string());
            }
        }
    }
    paths
}

#[test]
fn every_path_architecture_md_names_exists() {
    let named = named_paths(&architecture());
    // The code map names every module; far fewer means the spans were not found at all.
    assert!(
        named.len() > 40,
        "only {} paths found: {named:?}",
        named.len()
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|p| {
            let path = repo().join(p.trim_end_matches('/'));
            if p.ends_with('/') {
                !path.is_dir()
            } else {
                !path.exists()
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

/// The entries of a folder as the document would name them: `dir/name.rs` or `dir/name/`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = read
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if e.path().is_dir() {
                Some(format!("{prefix}{name}/"))
            } else if name.ends_with(".rs") {
                Some(format!("{prefix}{name}"))
            } else {
                None
            }
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_module_of_src_and_every_crate_is_in_the_code_map() {
    let named = named_paths(&architecture());
    let mut unmapped = entries(&repo().join("src"), "src/");
    unmapped.extend(entries(&repo().join("crates"), "crates/"));
    unmapped.retain(|p| !named.contains(p));
    assert!(
        unmapped.is_empty(),
        "ARCHITECTURE.md's code map does not mention {unmapped:?}"
    );
}

#[test]
fn inline_code_spans_outside_fences_are_the_paths_found() {
    let text =
        "See `src/a.rs` and `tests/b/`, not `cargo test` nor `x/y`.\n```sh\n`src/fenced.rs`\n```\n";
    let found: Vec<String> = named_paths(text).into_iter().collect();
    assert_eq!(found, vec!["src/a.rs".to_string(), "tests/b/".to_string()]);
}
