//! previewd's own records in the state dir: failed builds and build logs. They are history,
//! never the answer to "what exists" (that is git plus Docker). Records are written atomically;
//! an unreadable one is set aside with a warning, never fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::reconcile::plan::FailedBuild;

/// The record files under `<state-dir>`.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
    logs: PathBuf,
}

impl Records {
    pub fn new(state_dir: &Path) -> Self {
        Records {
            dir: state_dir.join("builds"),
            logs: state_dir.join("logs"),
        }
    }

    /// Where the build log of `slug` at `short_commit` goes.
    pub fn log_path(&self, slug: &str, short_commit: &str) -> PathBuf {
        self.logs.join(slug).join(format!("{short_commit}.log"))
    }

    fn failed_path(&self, slug: &str) -> PathBuf {
        self.dir.join(format!("{slug}.failed.json"))
    }

    /// Every failed-build record, by slug. Unreadable files are renamed to `*.corrupt`.
    pub fn load_failed(&self) -> BTreeMap<String, FailedBuild> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(slug) = name.strip_suffix(".failed.json") else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<FailedBuild>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(record) => {
                    out.insert(slug.to_owned(), record);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "setting aside unreadable build record");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        out
    }

    pub fn save_failed(&self, slug: &str, record: &FailedBuild) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        crate::atomic::write(&self.failed_path(slug), &bytes, 0o644)
    }

    pub fn clear_failed(&self, slug: &str) {
        let _ = std::fs::remove_file(self.failed_path(slug));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_records_round_trip_and_corrupt_ones_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let records = Records::new(tmp.path());
        let record = FailedBuild {
            branch: "feature/x".into(),
            commit: "abc".into(),
            log_tail: "step 2 failed".into(),
        };
        records.save_failed("feature-x", &record).unwrap();
        std::fs::write(tmp.path().join("builds/bad.failed.json"), b"{ torn").unwrap();
        let loaded = records.load_failed();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["feature-x"], record);
        assert!(tmp.path().join("builds/bad.failed.corrupt").exists());
        records.clear_failed("feature-x");
        assert!(records.load_failed().is_empty());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
