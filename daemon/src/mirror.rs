//! The bare git mirror developers push to: creating it, reading which branches want a preview,
//! and turning a commit's tree into a Docker build context. Everything here is blocking git2
//! work: callers run it inside `spawn_blocking` and get owned data back.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, RepositoryInitOptions, TreeWalkMode, TreeWalkResult};

use crate::dockerignore::{DockerIgnore, DockerIgnoreError, Verdict};
use crate::merged::{self, MergedCache, MergedRule};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot open git mirror {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot create git mirror {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot list refs of {path}: {source}")]
    Refs {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot install hook {path}: {source}")]
    Hook {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read commit {commit}: {source}")]
    Commit {
        commit: Oid,
        #[source]
        source: git2::Error,
    },
    #[error("cannot read {path:?} at commit {commit}: {source}")]
    Tree {
        commit: Oid,
        path: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot write build context: {0}")]
    Tar(#[source] std::io::Error),
    #[error("cannot use .dockerignore at commit {commit}: {source}")]
    DockerIgnore {
        commit: Oid,
        #[source]
        source: DockerIgnoreError,
    },
}

/// What git says should have a preview, read in one pass over the refs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Tip of the integration branch, if it exists yet.
    pub main: Option<Oid>,
    /// Branches that want a preview: every branch but main whose tip is not in main.
    pub branches: BTreeMap<String, Oid>,
    /// Branches whose tip could not be read, with the reason. They keep whatever preview they
    /// have: a branch we cannot read is not a deleted branch.
    pub unreadable: BTreeMap<String, String>,
    /// When each branch in `branches` last changed, as far as git knows: its tip's committer
    /// time, in seconds since the epoch.
    pub activity: BTreeMap<String, i64>,
}

/// Opens the mirror, creating it bare (HEAD -> `main_branch`) when the directory is missing.
pub fn open_or_create(path: &Path, main_branch: &str) -> Result<Repository, MirrorError> {
    if path.exists() {
        return Repository::open_bare(path).map_err(|source| MirrorError::Open {
            path: path.to_owned(),
            source,
        });
    }
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true)
        .mkpath(true)
        .initial_head(&format!("refs/heads/{main_branch}"));
    Repository::init_opts(path, &opts).map_err(|source| MirrorError::Create {
        path: path.to_owned(),
        source,
    })
}

/// Writes `script` as the mirror's `post-receive` hook (mode 0755), replacing it atomically
/// and only when it changed.
pub fn install_hook(mirror: &Path, script: &str) -> Result<(), MirrorError> {
    let hooks = mirror.join("hooks");
    let path = hooks.join("post-receive");
    let err = |source| MirrorError::Hook {
        path: path.clone(),
        source,
    };
    if std::fs::read_to_string(&path).is_ok_and(|old| old == script) {
        return Ok(());
    }
    std::fs::create_dir_all(&hooks).map_err(err)?;
    previewd_proxy::atomic_file::write(&hooks, "post-receive", script.as_bytes(), 0o755)
        .map_err(|failed| err(failed.source))
}

/// Reads every branch's tip and decides which ones want a preview.
///
/// Fails only when the refs cannot be listed at all; a single unreadable branch is reported in
/// [`Desired::unreadable`] and the others are still answered.
pub fn scan(
    path: &Path,
    main_branch: &str,
    rule: MergedRule,
    cache: &mut MergedCache,
) -> Result<Desired, MirrorError> {
    let repo = Repository::open_bare(path).map_err(|source| MirrorError::Open {
        path: path.to_owned(),
        source,
    })?;
    let refs_err = |source| MirrorError::Refs {
        path: path.to_owned(),
        source,
    };
    let mut tips: BTreeMap<String, Result<(Oid, i64), String>> = BTreeMap::new();
    for reference in repo.references().map_err(refs_err)? {
        let reference = reference.map_err(refs_err)?;
        let Some(name) = reference.name_bytes().strip_prefix(b"refs/heads/") else {
            continue;
        };
        // Ref names are bytes. A name that is not UTF-8 is shown with replacement characters;
        // its slug is still a valid label, and two such names that read alike keep the first.
        let name = String::from_utf8_lossy(name).into_owned();
        let tip = reference
            .peel_to_commit()
            .map(|c| (c.id(), c.committer().when().seconds()))
            .map_err(|e| e.message().to_owned());
        tips.entry(name).or_insert(tip);
    }

    let mut desired = Desired::default();
    if let Some(Ok((main, _))) = tips.remove(main_branch) {
        desired.main = Some(main);
    }
    for (name, tip) in tips {
        match tip {
            // Without a main branch yet, nothing can have been merged into it.
            Ok((tip, time)) => match desired.main.map_or(Ok(false), |main| {
                merged::is_merged(&repo, tip, main, rule, cache)
            }) {
                Ok(true) => {}
                Ok(false) => {
                    desired.activity.insert(name.clone(), time);
                    desired.branches.insert(name, tip);
                }
                Err(e) => {
                    desired.unreadable.insert(name, e.message().to_owned());
                }
            },
            Err(reason) => {
                desired.unreadable.insert(name, reason);
            }
        }
    }
    Ok(desired)
}

/// The id of the tree `commit` points at: two commits with one tree build the same image.
pub fn tree_of(mirror: &Path, commit: Oid) -> Result<Oid, MirrorError> {
    let repo = Repository::open_bare(mirror).map_err(|source| MirrorError::Open {
        path: mirror.to_owned(),
        source,
    })?;
    let commit = repo
        .find_commit(commit)
        .map_err(|source| MirrorError::Commit { commit, source })?;
    Ok(commit.tree_id())
}

/// The tree at `commit` as an uncompressed tar, the Docker build context. Read straight from
/// the object database: there is no working tree. Submodules are left out (their commits are
/// not in this repository). Every entry gets the commit's time, so a tree always gives the same
/// bytes. The root `Dockerfile` goes through `edit_dockerfile` on its way in.
///
/// The root `.dockerignore` is applied as the docker CLI applies it (the engine does not, for a
/// tar context): excluded entries are left out, and an excluded directory is not walked unless
/// an exception may re-include something beneath it. The root `Dockerfile` and `.dockerignore`
/// are always sent, whatever the patterns say, as the CLI does.
pub fn context_tar(
    mirror: &Path,
    commit: Oid,
    edit_dockerfile: impl Fn(&[u8]) -> Vec<u8>,
) -> Result<Vec<u8>, MirrorError> {
    let repo = Repository::open_bare(mirror).map_err(|source| MirrorError::Open {
        path: mirror.to_owned(),
        source,
    })?;
    let commit_err = |source| MirrorError::Commit { commit, source };
    let commit_obj = repo.find_commit(commit).map_err(commit_err)?;
    let tree = commit_obj.tree().map_err(commit_err)?;
    let mtime = u64::try_from(commit_obj.time().seconds()).unwrap_or(0);
    let ignore = read_dockerignore(&repo, &tree, commit)?;

    let mut tar = tar::Builder::new(Vec::new());
    let mut failure: Option<MirrorError> = None;
    // The verdict on each directory walked into, keyed like the walk's `dir` ("a/b/"), so each
    // entry is matched once, against its parent's result, as Docker's walk does.
    let mut dir_verdicts: HashMap<String, Verdict> = HashMap::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let mut path = dir.as_bytes().to_vec();
        path.extend_from_slice(entry.name_bytes());
        // Names are bytes; a name that is not UTF-8 is matched with replacement characters.
        let text = String::from_utf8_lossy(&path);
        let verdict = ignore.check(&text, dir_verdicts.get(dir));
        let excluded = verdict.excluded() && !ALWAYS_SENT.contains(&path.as_slice());
        if entry.kind() == Some(ObjectType::Tree) {
            if excluded && !ignore.may_reinclude_under(&text) {
                return TreeWalkResult::Skip;
            }
            dir_verdicts.insert(format!("{text}/"), verdict);
        }
        if excluded {
            // An excluded directory that is still walked is itself left out, as Docker does;
            // the engine creates it when it unpacks a re-included file beneath it.
            return TreeWalkResult::Ok;
        }
        let edit: Option<&DockerfileEdit<'_>> = if path == b"Dockerfile" {
            Some(&edit_dockerfile)
        } else {
            None
        };
        match append_entry(&repo, &mut tar, &path, entry, mtime, edit) {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(match e {
                    EntryError::Git(source) => MirrorError::Tree {
                        commit,
                        path: String::from_utf8_lossy(&path).into_owned(),
                        source,
                    },
                    EntryError::Io(e) => MirrorError::Tar(e),
                });
                TreeWalkResult::Abort
            }
        }
    })
    .or_else(|e| if failure.is_some() { Ok(()) } else { Err(e) })
    .map_err(commit_err)?;
    if let Some(e) = failure {
        return Err(e);
    }
    tar.into_inner().map_err(MirrorError::Tar)
}

/// Root entries the docker CLI sends even when `.dockerignore` excludes them: the engine needs
/// the Dockerfile, and the CLI keeps the ignore file with it.
const ALWAYS_SENT: [&[u8]; 2] = [b"Dockerfile", b".dockerignore"];

/// The patterns of the root `.dockerignore` at this commit; none when there is no such file. A
/// symlink is followed one step inside the tree, as the CLI would follow it in a checkout; one
/// that leads nowhere in the tree counts as no file, like a dangling link for the CLI.
fn read_dockerignore(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    commit: Oid,
) -> Result<DockerIgnore, MirrorError> {
    const NAME: &str = ".dockerignore";
    let tree_err = |source| MirrorError::Tree {
        commit,
        path: NAME.to_owned(),
        source,
    };
    let Some(mut entry) = tree.get_name(NAME).map(|e| e.to_owned()) else {
        return Ok(DockerIgnore::default());
    };
    if entry.kind() == Some(ObjectType::Blob) && entry.filemode() == 0o120000 {
        let link = repo.find_blob(entry.id()).map_err(tree_err)?;
        match tree.get_path(Path::new(OsStr::from_bytes(link.content()))) {
            Ok(target) => entry = target,
            Err(_) => return Ok(DockerIgnore::default()),
        }
    }
    // A directory, a submodule or a link to a link: not read, rather than guessed at.
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120000 {
        return Ok(DockerIgnore::default());
    }
    let blob = repo.find_blob(entry.id()).map_err(tree_err)?;
    DockerIgnore::parse(&String::from_utf8_lossy(blob.content()))
        .map_err(|source| MirrorError::DockerIgnore { commit, source })
}

/// Rewrites the root Dockerfile's bytes on their way into the build context.
type DockerfileEdit<'a> = dyn Fn(&[u8]) -> Vec<u8> + 'a;

enum EntryError {
    Git(git2::Error),
    Io(std::io::Error),
}

fn append_entry(
    repo: &Repository,
    tar: &mut tar::Builder<Vec<u8>>,
    path: &[u8],
    entry: &git2::TreeEntry<'_>,
    mtime: u64,
    edit: Option<&DockerfileEdit<'_>>,
) -> Result<(), EntryError> {
    let path = Path::new(OsStr::from_bytes(path));
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    match entry.kind() {
        Some(ObjectType::Tree) => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, path, std::io::empty())
                .map_err(EntryError::Io)
        }
        Some(ObjectType::Blob) => {
            let blob = repo.find_blob(entry.id()).map_err(EntryError::Git)?;
            if entry.filemode() == 0o120000 {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                let target = Path::new(OsStr::from_bytes(blob.content()));
                tar.append_link(&mut header, path, target)
                    .map_err(EntryError::Io)
            } else {
                let edited = edit.map(|edit| edit(blob.content()));
                let content = edited.as_deref().unwrap_or(blob.content());
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if entry.filemode() == 0o100755 {
                    0o755
                } else {
                    0o644
                });
                header.set_size(content.len() as u64);
                tar.append_data(&mut header, path, content)
                    .map_err(EntryError::Io)
            }
        }
        // Submodule commits and anything else have no content in this repository.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_git::git;
    use std::io::Read;

    /// A work repository with main and two branches pushed into a fresh mirror.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let mirror = tmp.path().join("mirror.git");
        open_or_create(&mirror, "main").unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(work.join("www")).unwrap();
        std::fs::write(work.join("www/index.html"), "hello\n").unwrap();
        std::fs::write(work.join("run.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("www/index.html", work.join("link")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        git(&work, &["checkout", "-q", "-b", "feature/merged"]);
        git(&work, &["checkout", "-q", "-b", "feature/open"]);
        std::fs::write(work.join("www/index.html"), "open\n").unwrap();
        git(&work, &["commit", "-q", "-am", "two"]);
        git(&work, &["remote", "add", "m", mirror.to_str().unwrap()]);
        git(
            &work,
            &["push", "-q", "m", "main", "feature/merged", "feature/open"],
        );
        (tmp, mirror, work)
    }

    #[test]
    fn created_mirror_is_bare_with_main_as_head() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = open_or_create(&tmp.path().join("a/b.git"), "trunk").unwrap();
        assert!(repo.is_bare());
        let head = std::fs::read_to_string(tmp.path().join("a/b.git/HEAD")).unwrap();
        assert_eq!(head.trim(), "ref: refs/heads/trunk");
    }

    #[test]
    fn scan_skips_main_and_merged_branches() {
        let (_tmp, mirror, _work) = fixture();
        let desired = scan(
            &mirror,
            "main",
            MergedRule::PatchId,
            &mut MergedCache::new(),
        )
        .unwrap();
        assert!(desired.main.is_some());
        assert_eq!(
            desired.branches.keys().collect::<Vec<_>>(),
            ["feature/open"]
        );
        assert!(desired.unreadable.is_empty());
    }

    #[test]
    fn without_main_nothing_counts_as_merged() {
        let (_tmp, mirror, _work) = fixture();
        let desired = scan(
            &mirror,
            "trunk",
            MergedRule::PatchId,
            &mut MergedCache::new(),
        )
        .unwrap();
        assert_eq!(desired.main, None);
        assert_eq!(desired.branches.len(), 3, "{desired:?}");
    }

    #[test]
    fn a_missing_mirror_is_an_error_not_an_empty_scan() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(scan(
            &tmp.path().join("nope.git"),
            "main",
            MergedRule::PatchId,
            &mut MergedCache::new()
        )
        .is_err());
    }

    #[test]
    fn context_has_files_modes_and_symlinks() {
        let (_tmp, mirror, _work) = fixture();
        let tip = scan(
            &mirror,
            "main",
            MergedRule::PatchId,
            &mut MergedCache::new(),
        )
        .unwrap()
        .branches["feature/open"];
        let edit = |d: &[u8]| [d, b"LABEL x=y\n"].concat();
        let bytes = context_tar(&mirror, tip, edit).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let header = entry.header().clone();
            let mut body = String::new();
            if header.entry_type().is_symlink() {
                body = entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
            } else {
                entry.read_to_string(&mut body).unwrap();
            }
            seen.insert(path, (header.mode().unwrap(), body));
        }
        assert_eq!(seen["www/index.html"], (0o644, "open\n".to_string()));
        assert_eq!(seen["run.sh"].0, 0o755);
        assert_eq!(seen["link"].1, "www/index.html");
        assert!(seen.contains_key("www"));
        assert_eq!(seen["Dockerfile"].1, "FROM scratch\nLABEL x=y\n");
        assert_eq!(
            context_tar(&mirror, tip, edit).unwrap(),
            bytes,
            "deterministic"
        );
    }

    /// Commits `files` on a new branch `name` of the fixture's work repository, pushes it and
    /// returns its tip in the mirror.
    fn push_branch(work: &Path, mirror: &Path, name: &str, files: &[(&str, &str)]) -> Oid {
        git(work, &["checkout", "-q", "-b", name]);
        for (path, body) in files {
            let path = work.join(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(path, body).unwrap();
        }
        git(work, &["add", "-A"]);
        git(work, &["commit", "-q", "-m", name]);
        git(work, &["push", "-q", "m", name]);
        Repository::open_bare(mirror)
            .unwrap()
            .refname_to_id(&format!("refs/heads/{name}"))
            .unwrap()
    }

    /// Path and body of every entry of a context (empty for directories).
    fn context_entries(bytes: &[u8]) -> BTreeMap<String, String> {
        let mut archive = tar::Archive::new(bytes);
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut body = String::new();
            if entry.header().entry_type().is_file() {
                entry.read_to_string(&mut body).unwrap();
            }
            seen.insert(path, body);
        }
        seen
    }

    #[test]
    fn context_leaves_out_what_dockerignore_excludes() {
        let (_tmp, mirror, work) = fixture();
        let ignore = "# not a pattern\n*.log\nnode_modules\ndocs\n!docs/README.md\nDockerfile\n.dockerignore\n";
        let tip = push_branch(
            &work,
            &mirror,
            "feature/ignore",
            &[
                (".dockerignore", ignore),
                ("debug.log", "x"),
                ("www/kept.log", "kept"),
                ("node_modules/a/b.js", "x"),
                ("docs/README.md", "readme"),
                ("docs/guide.md", "x"),
            ],
        );
        let edit = |d: &[u8]| [d, b"LABEL x=y\n"].concat();
        let seen = context_entries(&context_tar(&mirror, tip, edit).unwrap());
        for gone in [
            "debug.log",
            "node_modules",
            "node_modules/a",
            "node_modules/a/b.js",
            "docs/guide.md",
            // Excluded itself, walked only for the exception beneath it.
            "docs",
        ] {
            assert!(!seen.contains_key(gone), "{gone} was sent: {seen:?}");
        }
        assert_eq!(seen["docs/README.md"], "readme");
        assert_eq!(seen["www/kept.log"], "kept", "`*.log` is for the root only");
        assert_eq!(seen["Dockerfile"], "FROM scratch\nLABEL x=y\n");
        assert_eq!(seen[".dockerignore"], ignore);
        assert!(seen.contains_key("www/index.html"));
        assert!(seen.contains_key("run.sh"));
    }

    #[test]
    fn a_symlinked_dockerignore_is_followed_inside_the_tree() {
        let (_tmp, mirror, work) = fixture();
        std::os::unix::fs::symlink("config/ignore", work.join(".dockerignore")).unwrap();
        let tip = push_branch(
            &work,
            &mirror,
            "feature/linked",
            &[("config/ignore", "secret.env\n"), ("secret.env", "x")],
        );
        let seen = context_entries(&context_tar(&mirror, tip, |d: &[u8]| d.to_vec()).unwrap());
        assert!(!seen.contains_key("secret.env"), "{seen:?}");
        assert!(seen.contains_key("config/ignore"));
    }

    #[test]
    fn a_malformed_dockerignore_fails_the_context() {
        let (_tmp, mirror, work) = fixture();
        let tip = push_branch(
            &work,
            &mirror,
            "feature/bad",
            &[(".dockerignore", "ok\n[a\n")],
        );
        let err = context_tar(&mirror, tip, |d: &[u8]| d.to_vec()).unwrap_err();
        assert!(
            matches!(
                err,
                MirrorError::DockerIgnore {
                    source: DockerIgnoreError::BadPattern { line: 2, .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
