//! The privilege boundary as a build check: which top-level part of `src/` may use which
//! (ARCHITECTURE.md draws the same graph). The root side (`supervisor`, and `sandbox`, which
//! runs in the child before the worker) and the unprivileged side (`worker` and what only it
//! uses) never use each other; what they share is `contract` and plain configuration (`cli`).
//! Only `main.rs` names both sides.
//!
//! Every path in the code is read (`crate::x`, and `super::…` chains resolved against the
//! file's own module), comments and string literals left out. The pure crate
//! `crates/openai-wire` cannot use the proxy at all: it does not depend on it (Cargo refuses a
//! cycle), which the second test checks in its manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Part → the other parts of the crate it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("contract", &[]),
    ("atomic_file", &[]),
    ("cli", &[]),
    ("clock", &[]),
    ("logging", &["clock"]),
    ("usage", &["clock"]),
    ("sandbox", &["contract", "cli"]),
    (
        "supervisor",
        &[
            "contract",
            "sandbox",
            "cli",
            "logging",
            "clock",
            "atomic_file",
        ],
    ),
    (
        "worker",
        &[
            "contract",
            "cli",
            "logging",
            "usage",
            "clock",
            "atomic_file",
        ],
    ),
];

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/` (`src/worker/http.rs` → `["worker", "http"]`).
fn module_path(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(source_root()).unwrap();
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code without comments, string and char literals (so a doc comment that names
/// `crate::supervisor` is not a use of it).
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if bytes.get(i + 1) == Some(&b'#') || bytes.get(i + 1) == Some(&b'"') => {
                // A raw string r"…" or r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"')
                    || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
                {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let closing: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < bytes.len() && !bytes[j..].starts_with(&closing) {
                    j += 1;
                }
                i = j + closing.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// The top-level parts of the crate a file's code uses.
fn parts_used(file: &Path) -> BTreeSet<String> {
    parts_used_in(&std::fs::read_to_string(file).unwrap(), &module_path(file))
}

/// The top-level parts used by `text`, the code of the module at `here`.
fn parts_used_in(text: &str, here: &[String]) -> BTreeSet<String> {
    let code = code_only(text);
    let mut used = BTreeSet::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("::"))
        .collect();
    for word in words {
        let segments: Vec<&str> = word.split("::").collect();
        let target = match segments[0] {
            "crate" => segments.get(1).map(|s| s.to_string()),
            "super" => {
                let ups = segments.iter().take_while(|s| **s == "super").count();
                // `super` from a file's own module: a `mod.rs` is its directory's module.
                if ups >= here.len() {
                    segments.get(ups).map(|s| s.to_string())
                } else {
                    here.first().cloned()
                }
            }
            _ => None,
        };
        if let Some(target) = target.filter(|t| !t.is_empty()) {
            used.insert(target);
        }
    }
    used
}

#[test]
fn the_root_side_and_the_worker_never_use_each_other() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&source_root(), &mut files);
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let here = module_path(file);
        let Some(part) = here.first() else { continue };
        if part == "main" || part == "lib" {
            continue; // main.rs wires both sides; lib.rs declares the parts and re-exports.
        }
        let Some(may_use) = allowed.get(part.as_str()) else {
            unknown.insert(part.clone());
            continue;
        };
        for used in parts_used(file) {
            if used != *part
                && allowed.contains_key(used.as_str())
                && !may_use.contains(&used.as_str())
            {
                violations.push(format!(
                    "{} uses crate::{used} ({part} may use only {may_use:?})",
                    file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap()
                        .display()
                ));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "parts of src/ not in the architecture table (add them to ALLOWED and ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "forbidden uses:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_paths_and_ignores_comments_and_strings() {
    let text = "// crate::supervisor in a comment\n/* crate::usage */ let s = \"crate::sandbox\";\nlet r = r#\"crate::cli\"#;\nuse crate::contract::Handover;\nsuper::super::supervisor::x();\nsuper::http::y();\n";
    let here = vec!["worker".to_string(), "routes".to_string()];
    let used: Vec<String> = parts_used_in(text, &here).into_iter().collect();
    assert_eq!(used, vec!["contract", "supervisor", "worker"]);
    assert_eq!(
        module_path(&source_root().join("worker/server/mod.rs")),
        vec!["worker", "server"]
    );
}

#[test]
fn the_pure_crate_does_not_depend_on_the_proxy() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/openai-wire/Cargo.toml"),
    )
    .unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("");
    for forbidden in ["codex-responses-api-proxy", "tokio", "hyper", "reqwest"] {
        assert!(
            !dependencies.contains(forbidden),
            "crates/openai-wire must stay pure: it depends on {forbidden}"
        );
    }
}
