//! previewd's own records in the state dir: failed builds and build logs. They are history,
//! never the answer to "what exists" (that is git plus Docker). Records are written atomically;
//! an unreadable one is set aside with a warning, never fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::FailedBuild;

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
        self.dir.join(failed_name(slug))
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
        previewd_proxy::atomic_file::write(&self.dir, &failed_name(slug), &bytes, 0o644)
            .map_err(std::io::Error::other)
    }

    /// Build logs last written longer than `age` ago.
    pub fn old_logs(&self, age: std::time::Duration) -> Vec<PathBuf> {
        let mut old = Vec::new();
        let Ok(slugs) = std::fs::read_dir(&self.logs) else {
            return old;
        };
        for dir in slugs.flatten() {
            let Ok(logs) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for log in logs.flatten() {
                let aged = log
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
                if aged {
                    old.push(log.path());
                }
            }
        }
        old.sort();
        old
    }

    /// Deletes `logs` (from [`Records::old_logs`]) and the slug directories left empty.
    pub fn delete_logs(&self, logs: &[PathBuf]) {
        for log in logs {
            if let Err(error) = std::fs::remove_file(log) {
                tracing::warn!(path = %log.display(), %error, "cannot delete old build log");
            }
            if let Some(dir) = log.parent() {
                // Fails while the directory still holds logs; that is the point.
                let _ = std::fs::remove_dir(dir);
            }
        }
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

/// A failed build's record file, in the state dir.
fn failed_name(slug: &str) -> String {
    format!("{slug}.failed.json")
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
    fn old_logs_are_found_and_deleted_with_their_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let records = Records::new(tmp.path());
        for (slug, commit) in [("a", "old"), ("b", "old"), ("b", "new")] {
            let path = records.log_path(slug, commit);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "log").unwrap();
        }
        let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        for slug in ["a", "b"] {
            let file = std::fs::File::options()
                .write(true)
                .open(records.log_path(slug, "old"))
                .unwrap();
            file.set_modified(month_ago).unwrap();
        }
        let old = records.old_logs(std::time::Duration::from_secs(14 * 86_400));
        assert_eq!(
            old,
            vec![records.log_path("a", "old"), records.log_path("b", "old")]
        );
        records.delete_logs(&old);
        assert!(!tmp.path().join("logs/a").exists(), "empty dir removed");
        assert!(records.log_path("b", "new").exists(), "recent log kept");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
