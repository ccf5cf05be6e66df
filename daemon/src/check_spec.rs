//! `previewd check-spec [PATH]`: runs [`crate::spec`] on a compose file on disk, with the
//! `.env` beside it and the host's policy from `--config`, and prints every finding as
//! `FILE:LINE:COLUMN: error|warning: KEY.PATH: message`, the form editors jump to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, RunArgs};
use crate::spec::{self, DirFiles, HostPolicy};

/// Exit status when the file has errors.
const INVALID: u8 = 1;
/// Exit status when there is nothing to check (no file, unreadable config).
const USAGE: u8 = 2;

pub fn main(path: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let policy = match config {
        Some(file) => {
            let args = RunArgs {
                config: Some(file),
                ..RunArgs::default()
            };
            match Config::load(&args) {
                Ok(config) => config.policy,
                Err(error) => {
                    eprintln!("previewd: {error}");
                    return ExitCode::from(USAGE);
                }
            }
        }
        None => HostPolicy::default(),
    };
    let path = path.unwrap_or_else(|| PathBuf::from("."));
    let file = if path.is_dir() {
        match spec::find_in(&path) {
            Some(file) => file,
            None => {
                eprintln!(
                    "previewd: no compose file in {} (looked for {})",
                    path.display(),
                    spec::COMPOSE_FILES.join(", ")
                );
                return ExitCode::from(USAGE);
            }
        }
    } else {
        path
    };
    let text = match std::fs::read(&file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                eprintln!("previewd: {} is not UTF-8 text", file.display());
                return ExitCode::from(INVALID);
            }
        },
        Err(error) => {
            eprintln!("previewd: cannot read {}: {error}", file.display());
            return ExitCode::from(USAGE);
        }
    };
    // A bare file name's parent is "": the current directory.
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let checked = spec::check(&text, &variables(&dir), &policy, &DirFiles(dir));
    let shown = file.display();
    for (kind, list) in [("error", &checked.errors), ("warning", &checked.warnings)] {
        for d in list {
            let path = if d.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", d.path)
            };
            println!(
                "{shown}:{}:{}: {kind}: {path}{}",
                d.pos.line, d.pos.column, d.message
            );
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match &checked.spec {
        Some(stack) if checked.errors.is_empty() => {
            let names: Vec<&str> = stack.services.keys().map(String::as_str).collect();
            println!(
                "{shown}: ok: {} ({}); web {}:{}; {}",
                plural(names.len(), "service"),
                names.join(", "),
                stack.web.service,
                stack.web.port,
                plural(checked.warnings.len(), "warning")
            );
            ExitCode::SUCCESS
        }
        _ => {
            println!(
                "{shown}: {}, {}",
                plural(checked.errors.len(), "error"),
                plural(checked.warnings.len(), "warning")
            );
            ExitCode::from(INVALID)
        }
    }
}

/// What `${...}` may name here: the `.env` beside the file, and the variables previewd gives
/// every preview, with example values. Never the shell's environment: a preview does not get
/// it either.
fn variables(dir: &Path) -> BTreeMap<String, String> {
    let mut vars = std::fs::read_to_string(dir.join(".env"))
        .map(|text| spec::dotenv(&text))
        .unwrap_or_default();
    for (name, example) in [
        ("PREVIEW_BRANCH", "feature/example"),
        ("PREVIEW_COMMIT", "0123456789abcdef0123456789abcdef01234567"),
        ("PREVIEW_SLUG", "feature-example"),
        ("PREVIEW_URL", "https://feature-example.preview.localhost/"),
    ] {
        vars.insert(name.into(), example.into());
    }
    vars
}
