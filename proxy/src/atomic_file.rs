//! Writing a file in the state dir so that a crash leaves either the old or
//! the whole new content, and a key is never readable by others, not even
//! for a moment. It knows nothing of what the files mean; the daemon uses it
//! for its own records too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writing `path` (or its temp file, or syncing its directory) failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    /// The file or directory involved.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Writes `dir/name`: temp file created with `mode` from the start, fsync,
/// rename over the target, fsync of the directory.
pub fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| WriteError { path, source }
    };
    // A temp file left by a crash would make `create_new` fail forever.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(at(&tmp)(err)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(contents).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(at(&target))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_sets_mode_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A temp file a crash left, readable by all: replaced, never reused.
        let stale = tmp.path().join(".record.json.tmp");
        fs::write(&stale, b"stale").expect("stale temp file");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).expect("chmod");
        write(tmp.path(), "record.json", b"one", 0o600).expect("first write");
        write(tmp.path(), "record.json", b"two", 0o600).expect("second write");
        let path = tmp.path().join("record.json");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["record.json"]);
    }
}
