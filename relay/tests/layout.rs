//! The layout keeps its promises: the relay's top-level modules import one another without a
//! loop (from the `crate::` paths in their code, comments and test modules aside), no source
//! file holds more than 600 lines before its test module, `main.rs` stays under 120 lines, and
//! the TLS mode enums are matched on in the TLS policy and the settings' validation only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file before its test module, without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`connection` for `src/connection/dial.rs`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules named in `crate::` paths of `code`, braces included.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(list) => list
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or(""),
            ],
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| !n.is_empty())
                .map(String::from),
        );
    }
    found
}

#[test]
fn the_top_level_modules_import_one_another_without_a_loop() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources() {
        let module = module_of(&path);
        if matches!(module.as_str(), "lib" | "main") || path.ends_with("tests.rs") {
            continue;
        }
        let deps = imports(&code(&path));
        graph
            .entry(module.clone())
            .or_default()
            .extend(deps.into_iter().filter(|d| *d != module));
    }
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    // Depth-first search for a way back to where it started.
    fn back_to(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if !path.contains(next) {
                path.push(next.clone());
                if let Some(cycle) = back_to(graph, start, next, path) {
                    return Some(cycle);
                }
                path.pop();
            }
        }
        None
    }
    for start in graph.keys() {
        let cycle = back_to(&graph, start, start, &mut vec![start.clone()]);
        assert!(
            cycle.is_none(),
            "an import loop: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn no_file_is_over_600_lines_and_main_stays_thin() {
    let mut long = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .count();
        let limit = if path.ends_with("tests.rs") {
            usize::MAX
        } else {
            600
        };
        if lines > limit {
            long.push(format!("{} ({lines} lines)", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over 600 lines before their tests: {long:?}"
    );
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    assert!(
        main.lines().count() < 120,
        "main.rs has {} lines",
        main.lines().count()
    );
}

#[test]
fn only_the_tls_policy_and_the_settings_match_on_the_tls_modes() {
    let mut elsewhere = Vec::new();
    for path in sources() {
        let rel = path
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .to_string();
        if rel == "tls/policy.rs" || rel.starts_with("config/") {
            continue;
        }
        for (n, line) in code(&path).lines().enumerate() {
            if ["ClientTlsMode::", "ServerTlsMode::"]
                .iter()
                .any(|mode| line.contains(mode))
            {
                elsewhere.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        elsewhere.is_empty(),
        "the TLS modes decided outside the policy: {elsewhere:#?}"
    );
}

#[test]
fn imports_are_read_from_paths_and_lists() {
    let found = imports("use crate::a::b;\nuse crate::{c, d::e};\nlet x = crate::f(1);");
    let expect: BTreeSet<String> = ["a", "c", "d", "f"].into_iter().map(String::from).collect();
    assert_eq!(found, expect);
}
