//! The compose parser and checker under arbitrary input: it never panics, never hangs past
//! its budgets, gives a stack exactly when it reports no error, and every finding points at
//! a line of the input.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use previewd::spec::{self, HostPolicy, TreeFiles};

/// A tree where every path exists as a file and a directory, so path checks pass and the
/// checker goes on to everything after them.
struct Everything;

impl TreeFiles for Everything {
    fn is_file(&self, _: &str) -> bool {
        true
    }

    fn is_dir(&self, _: &str) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = BTreeMap::from([("SET".to_string(), "value".to_string())]);
    let checked = spec::check(text, &vars, &HostPolicy::default(), &Everything);
    assert_eq!(
        checked.spec.is_some(),
        checked.errors.is_empty(),
        "a stack exactly when nothing is wrong: {:?}",
        checked.errors
    );
    // YAML breaks lines at \n, \r\n and a lone \r: counting both characters bounds it.
    let lines = text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() as u64 + 1;
    for d in checked.errors.iter().chain(&checked.warnings) {
        assert!(
            d.pos.line >= 1 && d.pos.line <= lines,
            "{d:?} outside {lines} lines"
        );
        assert!(!d.message.is_empty());
    }
});
