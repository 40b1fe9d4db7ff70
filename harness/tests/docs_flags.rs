//! The documentation and the binaries agree both ways: every command-line flag that README.md or
//! a page under docs/ names (in code, between backticks or in a code block) exists in the
//! `--help` of one of the project's binaries (clone-relay, chaos and its subcommands,
//! clone-drill, netbench) or is one of the listed flags of other programs the docs show (cargo,
//! docker, mysqld, systemctl); and every flag in those `--help`s is named somewhere in the docs.
//! Also every test that docs/security.md names as the proof of a claim is a test of the
//! workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use harness::process::workspace_binary;

/// Flags of programs other than the project's that the docs show in their commands.
const OTHER_PROGRAMS: [(&str, &str); 27] = [
    ("--all-targets", "cargo clippy"),
    ("--bin", "cargo run"),
    ("--check", "cargo fmt"),
    ("--features", "cargo test"),
    ("--ignored", "cargo test"),
    ("--include-ignored", "cargo test"),
    ("--no-fail-fast", "cargo test"),
    ("--no-run", "cargo bench"),
    ("--nocapture", "cargo test"),
    ("--release", "cargo build"),
    ("--test", "cargo test"),
    ("--workspace", "cargo test"),
    ("--exact", "cargo test"),
    ("--list", "cargo test"),
    ("--test-threads", "cargo test"),
    ("--network", "docker run"),
    ("--read-only", "docker run"),
    ("--rm", "docker run"),
    ("--tmpfs", "docker run"),
    ("--clone-valid-donor-list", "mysqld"),
    ("--innodb-doublewrite", "mysqld"),
    ("--innodb-redo-log-capacity", "mysqld"),
    ("--mysqlx", "mysqld"),
    ("--plugin-load-add", "mysqld"),
    ("--skip-log-bin", "mysqld"),
    ("--now", "systemctl enable"),
    ("--rebuild", "scripts/mysql-image.sh"),
];

/// The project's binaries whose flags the docs describe: (package, binary).
const BINARIES: [(&str, &str); 4] = [
    ("clone-relay", "clone-relay"),
    ("chaos", "chaos"),
    ("harness", "clone-drill"),
    ("clone-relay-benches", "netbench"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness sits in the workspace")
        .to_path_buf()
}

/// README.md and every page under docs/, by file name.
fn docs() -> Result<BTreeMap<String, String>> {
    let root = workspace_root();
    let mut pages = BTreeMap::new();
    pages.insert(
        "README.md".to_string(),
        std::fs::read_to_string(root.join("README.md"))?,
    );
    for entry in std::fs::read_dir(root.join("docs")).context("reading docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            pages.insert(name, std::fs::read_to_string(&path)?);
        }
    }
    Ok(pages)
}

/// The pieces of `text` that are code: fenced blocks and inline spans between backticks.
fn code_spans(text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let (before, after) = rest.split_at(start);
        spans.extend(inline_spans(before));
        let after = &after[3..];
        let end = after.find("```").unwrap_or(after.len());
        spans.push(&after[..end]);
        rest = after.get(end + 3..).unwrap_or("");
    }
    spans.extend(inline_spans(rest));
    spans
}

fn inline_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The `--flags` in `code`: two dashes, a lower-case word, more words joined by single dashes.
fn flags_in(code: &str) -> BTreeSet<String> {
    let bytes = code.as_bytes();
    let mut flags = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("--") {
        let start = at + found;
        at = start + 2;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        if preceded || !bytes.get(start + 2).is_some_and(u8::is_ascii_lowercase) {
            continue;
        }
        let mut end = start + 2;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || (bytes[end] == b'-'
                    && bytes
                        .get(end + 1)
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())))
        {
            end += 1;
        }
        flags.insert(code[start..end].to_string());
        at = end;
    }
    flags
}

/// Every flag of `binary` and of its subcommands, from their `--help`.
fn help_flags(binary: &Path, subcommand: &[&str], into: &mut BTreeSet<String>) -> Result<()> {
    let out = std::process::Command::new(binary)
        .args(subcommand)
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} {subcommand:?} --help failed: {out:?}", binary.display());
    }
    let help = String::from_utf8(out.stdout)?;
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            match trimmed.split_whitespace().next() {
                Some(name) if line.starts_with("  ") && name != "help" => {
                    commands.push(name.to_string())
                }
                Some(_) if line.starts_with("  ") => {}
                _ => in_commands = false,
            }
        }
        let flag = trimmed.strip_prefix("-").and_then(|_| {
            trimmed
                .split([',', ' ', '=', '[', '<'])
                .find(|w| w.starts_with("--"))
        });
        if let Some(flag) = flag
            && !matches!(flag, "--help" | "--version")
        {
            into.insert(flag.to_string());
        }
    }
    for command in commands {
        let mut path = subcommand.to_vec();
        path.push(&command);
        help_flags(binary, &path, into)?;
    }
    Ok(())
}

#[tokio::test]
async fn every_flag_the_docs_name_exists_and_every_flag_is_documented() -> Result<()> {
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for (page, text) in docs()? {
        for span in code_spans(&text) {
            for flag in flags_in(span) {
                documented.entry(flag).or_insert_with(|| page.clone());
            }
        }
    }
    let mut offered = BTreeMap::new();
    for (package, name) in BINARIES {
        let binary = workspace_binary(package, name).await?;
        let mut flags = BTreeSet::new();
        help_flags(&binary, &[], &mut flags)?;
        assert!(!flags.is_empty(), "{name} --help lists no flags");
        offered.insert(name, flags);
    }
    let other: BTreeSet<&str> = OTHER_PROGRAMS.iter().map(|(flag, _)| *flag).collect();
    let unknown: Vec<String> = documented
        .iter()
        .filter(|(flag, _)| {
            !matches!(flag.as_str(), "--help" | "--version")
                && !other.contains(flag.as_str())
                && !offered.values().any(|flags| flags.contains(*flag))
        })
        .map(|(flag, page)| format!("{flag} ({page})"))
        .collect();
    let undocumented: Vec<String> = offered
        .iter()
        .flat_map(|(name, flags)| {
            flags
                .iter()
                .filter(|flag| !documented.contains_key(*flag))
                .map(move |flag| format!("{name} {flag}"))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "the docs name flags that no binary has: {unknown:?}"
    );
    assert!(
        undocumented.is_empty(),
        "flags in --help that no page documents: {undocumented:?}"
    );
    eprintln!(
        "{} flags documented, {} offered by {} binaries, all matched",
        documented.len(),
        offered.values().map(BTreeSet::len).sum::<usize>(),
        offered.len()
    );
    Ok(())
}

#[test]
fn flags_are_read_from_code_only_and_whole() {
    let text = "Use `--tunnel-cert FILE` and `-x`; not --outside.\n```sh\nrun --a-b --c2 ---x\n```\n`a--b`";
    let flags: BTreeSet<String> = code_spans(text).into_iter().flat_map(flags_in).collect();
    let expect: BTreeSet<String> = ["--tunnel-cert", "--a-b", "--c2"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(flags, expect);
}

/// Every `.rs` file under `dir`, but `target` folders.
fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
    Ok(())
}

/// The test functions of the workspace: each `fn` right after a `#[test]` or `#[tokio::test..]`
/// attribute, and the end-to-end tests that `harness/tests/e2e/main.rs` lists as `module::test`.
fn workspace_tests() -> Result<BTreeSet<String>> {
    let root = workspace_root();
    let mut files = Vec::new();
    for crate_dir in ["relay", "chaos", "harness", "benches"] {
        rust_files(&root.join(crate_dir), &mut files)?;
    }
    let mut tests = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut after_attribute = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with("#[test]") || line.starts_with("#[tokio::test") {
                after_attribute = true;
            } else if after_attribute && line.contains("fn ") {
                let name = line.split("fn ").nth(1).unwrap_or_default();
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                tests.insert(name);
                after_attribute = false;
            }
        }
    }
    let e2e = std::fs::read_to_string(root.join("harness/tests/e2e/main.rs"))?;
    for word in e2e.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if let Some((module, test)) = word.rsplit_once("::")
            && !module.is_empty()
            && !test.is_empty()
            && test
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            tests.insert(test.to_string());
        }
    }
    Ok(tests)
}

/// Identifiers in the docs that look like test names and are not: MySQL settings, fields of
/// `/sessions` and series of `/metrics`.
const NOT_TESTS: [&str; 4] = [
    "clone_donor_timeout_after_network_failure",
    "clone_max_network_bandwidth",
    "clone_relay_upstream_stale_clone",
    "donor_resume_timeout_secs",
];

/// The test names (lower-case identifiers of four words or more) in `docs/{page}`, each
/// checked to exist; at least `at_least` of them.
fn check_named_tests(page: &str, at_least: usize) -> Result<()> {
    let text = std::fs::read_to_string(workspace_root().join("docs").join(page))?;
    let named: BTreeSet<&str> = inline_spans(&text)
        .filter(|span| {
            span.split('_').count() >= 4
                && !NOT_TESTS.contains(span)
                && span
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    anyhow::ensure!(
        named.len() >= at_least,
        "docs/{page} names only {} tests: {named:?}",
        named.len()
    );
    let tests = workspace_tests()?;
    let missing: Vec<&&str> = named.iter().filter(|n| !tests.contains(**n)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "docs/{page} names tests that do not exist: {missing:?}"
    );
    Ok(())
}

#[test]
fn every_test_the_security_page_names_exists() -> Result<()> {
    check_named_tests("security.md", 20)
}

#[test]
fn every_test_the_compatibility_and_recovery_pages_name_exists() -> Result<()> {
    check_named_tests("compatibility.md", 5)?;
    check_named_tests("recovery.md", 3)
}
