//! What a branch asks previewd to run: its compose file and the `x-previewd` block in it,
//! parsed into previewd's own narrow types, interpolated, and checked against the host's
//! policy. Pure: it reads the file and the names of the tree's paths it is given, and never
//! touches the engine. `previewd check-spec` runs it on a file on disk.

pub mod compose;
mod interpolate;
pub mod policy;
pub(crate) mod units;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use compose::{Checked, StackSpec};
pub use policy::HostPolicy;
use yaml::Pos;

/// The names Compose looks for, in its order.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// One finding, at a key path (`services.web.ports[0]`) and a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Empty for the file as a whole (a syntax error).
    pub path: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "line {} column {}: {}",
                self.pos.line, self.pos.column, self.message
            )
        } else {
            write!(
                f,
                "line {} column {}: {}: {}",
                self.pos.line, self.pos.column, self.path, self.message
            )
        }
    }
}

/// The tree a compose file is in, as far as the file's paths need it. Paths are relative to
/// the tree's root, normalized, `""` being the root. A path that passes through a symbolic
/// link, anywhere along it, neither is a file nor a directory: a link in a branch could point
/// at any host path.
pub trait TreeFiles {
    fn is_file(&self, path: &str) -> bool;
    fn is_dir(&self, path: &str) -> bool;
    fn exists(&self, path: &str) -> bool {
        self.is_file(path) || self.is_dir(path)
    }
}

/// A directory on disk as the tree (for `check-spec`).
pub struct DirFiles(pub PathBuf);

impl DirFiles {
    /// What is at `path`, looked at one component at a time so that no symbolic link is
    /// followed on the way.
    fn metadata(&self, path: &str) -> Option<std::fs::Metadata> {
        let mut at = self.0.clone();
        let mut last = std::fs::symlink_metadata(&at).ok()?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at.push(part);
            last = std::fs::symlink_metadata(&at).ok()?;
            if last.file_type().is_symlink() {
                return None;
            }
        }
        Some(last)
    }
}

impl TreeFiles for DirFiles {
    fn is_file(&self, path: &str) -> bool {
        self.metadata(path).is_some_and(|m| m.is_file())
    }

    fn is_dir(&self, path: &str) -> bool {
        self.metadata(path).is_some_and(|m| m.is_dir())
    }
}

/// Checks a compose file's text. `vars` are what `${...}` may name.
pub fn check(
    text: &str,
    vars: &BTreeMap<String, String>,
    policy: &HostPolicy,
    files: &dyn TreeFiles,
) -> Checked {
    match yaml::parse(text) {
        Ok(root) => compose::read(&root, vars, policy, files),
        Err(error) => Checked {
            spec: None,
            errors: vec![Diagnostic {
                path: String::new(),
                pos: error.pos.unwrap_or(Pos { line: 1, column: 1 }),
                message: error.message,
            }],
            warnings: Vec::new(),
        },
    }
}

/// The compose file of a directory, by Compose's lookup order.
pub fn find_in(dir: &Path) -> Option<PathBuf> {
    COMPOSE_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
}

/// The variables of a `.env` file: `KEY=value` lines, `#` comments, an optional `export `,
/// values in single quotes taken as written, in double quotes with `\n`, `\"` and `\\`
/// escapes.
pub fn dotenv(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        // A quoted value ends at its closing quote; a comment may follow.
        let quoted = |q: char| {
            let inner = value.strip_prefix(q)?;
            let end = inner.rfind(q)?;
            let after = inner[end + 1..].trim();
            (after.is_empty() || after.starts_with('#')).then(|| &inner[..end])
        };
        let value = if let Some(inner) = quoted('\'') {
            inner.to_owned()
        } else if let Some(inner) = quoted('"') {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('\\', Some('n')) => {
                        out.push('\n');
                        chars.next();
                    }
                    ('\\', Some(e @ ('"' | '\\'))) => {
                        out.push(e);
                        chars.next();
                    }
                    _ => out.push(c),
                }
            }
            out
        } else {
            // An unquoted value ends at a comment.
            value.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        vars.insert(key.trim().to_owned(), value);
    }
    vars
}

#[cfg(test)]
mod tests;
