//! The safety net behind the hook: a file watcher on the mirror's loose refs and
//! `packed-refs`. Any change only asks for a reconcile pass; what changed is read from git.

use std::path::Path;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reconcile::Trigger;

/// Starts watching `mirror`. The watcher stops when the returned value is dropped.
pub fn watch_refs(
    mirror: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Reads are not changes, and previewd's own scans read the refs: counting them
            // would make every pass trigger the next one.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => false,
            Ok(event) => event.paths.iter().any(|p| touches_refs(p)),
            // A watcher error may hide a change: a pass settles it either way.
            Err(_) => true,
        };
        if relevant {
            // A full queue already holds a pass for this change.
            let _ = triggers.try_send(Trigger::default());
        }
    })?;
    watcher.watch(&mirror.join("refs"), RecursiveMode::Recursive)?;
    // Non-recursive on the mirror itself: `packed-refs` is replaced by rename, so the file
    // cannot be watched directly.
    watcher.watch(mirror, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn touches_refs(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "refs")
        || path.file_name().is_some_and(|n| n == "packed-refs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_ref_paths_count() {
        assert!(touches_refs(Path::new("/m.git/refs/heads/x")));
        assert!(touches_refs(Path::new("/m.git/packed-refs")));
        assert!(!touches_refs(Path::new("/m.git/objects/ab/cdef")));
        assert!(!touches_refs(Path::new("/m.git/FETCH_HEAD")));
    }

    #[tokio::test]
    async fn reading_the_refs_triggers_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mirror = tmp.path().join("m.git");
        crate::mirror::open_or_create(&mirror, "main").unwrap();
        std::fs::write(mirror.join("refs/heads/x"), "0".repeat(40)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let _watcher = watch_refs(&mirror, tx).unwrap();
        for _ in 0..20 {
            std::fs::read(mirror.join("refs/heads/x")).unwrap();
            std::fs::read_dir(mirror.join("refs/heads"))
                .unwrap()
                .for_each(drop);
        }
        // Quiet is checked before any write, so no late event of a write can land in it.
        let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(quiet.is_err(), "reading refs triggered a pass");
        // The watcher was live all along: a change is noticed.
        std::fs::write(mirror.join("refs/heads/y"), "0".repeat(40)).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(changed, Ok(Some(_))), "no trigger for a change");
    }

    #[tokio::test]
    async fn a_new_loose_ref_triggers_a_pass() {
        let tmp = tempfile::tempdir().unwrap();
        crate::mirror::open_or_create(&tmp.path().join("m.git"), "main").unwrap();
        let mirror = tmp.path().join("m.git");
        let (tx, mut rx) = mpsc::channel(4);
        let _watcher = watch_refs(&mirror, tx).unwrap();
        std::fs::write(mirror.join("refs/heads/new"), "0".repeat(40)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(got, Ok(Some(_))), "no trigger within 10 s");
    }
}
