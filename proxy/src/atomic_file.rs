//! Writing a file in the state dir so that a crash leaves either the old or
//! the whole new content, and a key is never readable by others, not even
//! for a moment. It knows nothing of what the files mean.

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
pub(crate) fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), WriteError> {
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
