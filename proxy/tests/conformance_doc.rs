//! docs/HTTP-CONFORMANCE.md stays true to the suite: every test a row
//! names exists, every row has a test, and every row the differential
//! corpus cites to explain a difference from nginx is in the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The table rows: (id, the last cell).
fn rows(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter(|line| {
            line.starts_with("| ") && !line.starts_with("| id ") && !line.starts_with("|---")
        })
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            let id = cells[0].trim().to_owned();
            let last = cells.last().expect("cells").trim().to_owned();
            (id, last)
        })
        .collect()
}

/// `file::name` or `module::tests::name` in backquotes.
fn tests_named(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| name.contains("::"))
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is a test in `file` (a plain `fn`, or a row of the
/// table-test macros, written `name:` or `name <=`).
fn defines(file: &str, name: &str) -> bool {
    file.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with(&format!("async fn {name}("))
            || line.starts_with(&format!("fn {name}("))
            || line.starts_with(&format!("{name}:"))
            || line.starts_with(&format!("{name} <="))
    })
}

#[test]
fn every_row_names_tests_that_exist() {
    let doc = read(&root().join("docs/HTTP-CONFORMANCE.md"));
    let rows = rows(&doc);
    assert!(rows.len() > 60, "only {} rows", rows.len());
    let mut missing = Vec::new();
    for (id, cell) in &rows {
        let tests = tests_named(cell);
        if tests.is_empty() {
            missing.push(format!("{id}: names no test"));
        }
        for test in tests {
            let parts: Vec<&str> = test.split("::").collect();
            let (file, name) = match parts.as_slice() {
                [file, name] => (root().join(format!("proxy/tests/{file}.rs")), *name),
                [module, "tests", name] => (root().join(format!("proxy/src/{module}.rs")), *name),
                _ => {
                    missing.push(format!("{id}: cannot read `{test}`"));
                    continue;
                }
            };
            if !file.exists() || !defines(&read(&file), name) {
                missing.push(format!("{id}: `{test}` not found"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn row_ids_are_unique_and_cover_what_the_corpus_cites() {
    let doc = read(&root().join("docs/HTTP-CONFORMANCE.md"));
    let mut ids = BTreeSet::new();
    for (id, _) in rows(&doc) {
        assert!(ids.insert(id.clone()), "row {id} twice");
    }
    let corpus = read(&root().join("proxy/tests/differential_nginx.rs"));
    let cited: BTreeSet<&str> = corpus
        .split("Some(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!cited.is_empty());
    for id in cited {
        assert!(
            ids.contains(id),
            "the corpus cites row {id}, which the table lacks"
        );
    }
}
