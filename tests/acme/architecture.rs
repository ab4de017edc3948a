//! The module arrows of docs/architecture.md, enforced: every `crate::` path
//! in `src/` must point to a module that the table there allows its module to
//! use. http never reaches the store, validators or upstreams; upstreams never
//! reach the Authority; the wire layer `acme` uses nothing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it may use (besides itself). `app`, the composition
/// root, may use everything and is not listed.
const ALLOWED: &[(&str, &[&str])] = &[
    ("acme", &[]),
    ("model", &["acme"]),
    ("policy", &["acme", "model"]),
    ("nonce", &["model"]),
    ("store", &["model"]),
    ("validate", &["acme", "model", "danger"]),
    ("danger", &[]),
    ("upstream", &["acme", "model", "policy", "config", "danger"]),
    ("config", &["acme", "model", "validate"]),
    (
        "ra",
        &[
            "acme",
            "model",
            "policy",
            "store",
            "validate",
            "upstream",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "http",
        &["acme", "model", "nonce", "ra", "metrics", "telemetry"],
    ),
    (
        "tls",
        &["acme", "model", "upstream", "metrics", "telemetry"],
    ),
    ("metrics", &["acme"]),
    ("telemetry", &["acme"]),
    ("cli", &[]),
];

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

/// The top-level modules named by `crate::` paths in `code` (comments left
/// out), groups like `crate::{a::X, b}` included.
fn used_modules(code: &str) -> BTreeSet<String> {
    let text: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        // `acmeproxy_testkit::` or `some_crate::` do not count.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut level = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            used.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used
}

#[test]
fn the_reader_sees_groups_and_skips_comments_and_other_crates() {
    let code = "use crate::store::Records;\n\
                // use crate::http::x;\n\
                use crate::{acme::{Problem, ProblemType}, model::Id};\n\
                let x = acmeproxy_testkit::MockDns::start();\n\
                crate::ra::Authority::new()";
    let used: Vec<String> = used_modules(code).into_iter().collect();
    assert_eq!(used, ["acme", "model", "ra", "store"]);
}

#[test]
fn every_module_uses_only_what_docs_architecture_allows() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if matches!(module.as_str(), "app" | "lib" | "main") {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is not in docs/architecture.md's table (add it there and here)",
                rel.display()
            ));
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        for used in used_modules(&code) {
            if used != module && !may.contains(&used.as_str()) {
                wrong.push(format!(
                    "{}: `{module}` uses `crate::{used}`",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows docs/architecture.md does not allow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_table_in_docs_architecture_matches() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"),
    )
    .unwrap();
    for (module, may) in ALLOWED {
        let tick = format!("`{module}`");
        let row = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .find(|l| l.split('|').nth(1).is_some_and(|cell| cell.contains(&tick)))
            .unwrap_or_else(|| panic!("no row for {tick} in docs/architecture.md"));
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap();
        let documented: BTreeSet<&str> = last.split('`').skip(1).step_by(2).collect();
        let enforced: BTreeSet<&str> = may.iter().copied().collect();
        assert_eq!(
            documented, enforced,
            "docs/architecture.md's row for {tick} and this test's ALLOWED differ"
        );
    }
}
