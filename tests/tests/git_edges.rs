//! What git can do to a mirror besides a plain push: rewrite history, delete and re-create,
//! rename, gc, leave lock files, lose an object, carry names that are not UTF-8, merge by
//! squash or rebase, or vanish for a while. Each converges; only the affected branch shows an
//! error; nothing is torn down on doubt.

use std::process::Command;
use std::time::Duration;

use previewd_e2e::{eventually, test_env, Env};

const LIVE: Duration = Duration::from_secs(120);
const GONE: Duration = Duration::from_secs(10);

fn mirror_git(env: &Env, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&env.mirror)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in the mirror failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn slug_objects(env: &Env, slug: &str) -> usize {
    let filter = format!("previewd.slug={slug}");
    env.objects("container", &[&filter]).len()
        + env.objects("image", &[&filter]).len()
        + env.objects("network", &[&filter]).len()
}

fn wait_gone(env: &Env, slug: &str) {
    eventually(GONE, &format!("{slug} removed"), || {
        (slug_objects(env, slug) == 0).then_some(())
    });
}

#[test]
fn history_rewrites_deletes_and_renames_converge() {
    let mut env = test_env!("history");
    env.start();
    env.push(&["main"]);

    // Force-push: the rewritten history is what serves.
    env.commit_site("rewrite", "first\n");
    env.push(&["rewrite"]);
    env.wait_for_body("rewrite", "first\n", LIVE);
    env.git(&["reset", "-q", "--hard", "main"]);
    env.commit_site("rewrite", "rewritten\n");
    env.push(&["rewrite"]);
    env.wait_for_body("rewrite", "rewritten\n", LIVE);

    // Deleted, then re-created under the same name: a fresh preview at the same URL.
    env.push(&[":rewrite"]);
    wait_gone(&env, "rewrite");
    env.push(&["rewrite"]);
    env.wait_for_body("rewrite", "rewritten\n", LIVE);

    // Renamed: the new name serves, the old one goes.
    env.git(&["branch", "-q", "-m", "rewrite", "renamed"]);
    env.push(&["renamed", ":rewrite"]);
    env.wait_for_body("renamed", "rewritten\n", LIVE);
    wait_gone(&env, "rewrite");
    assert_eq!(env.objects("container", &[]).len(), 1);
}

#[test]
fn squash_and_rebase_merges_count_as_merged() {
    let mut env = test_env!("merges");
    env.start();
    env.push(&["main"]);

    // Two branches of two commits each, each touching its own file.
    for branch in ["squashed", "rebased"] {
        env.git(&["checkout", "-q", "-b", branch, "main"]);
        for n in 1..=2 {
            std::fs::write(env.work.join(format!("www/{branch}-{n}.txt")), "x\n").unwrap();
            env.git(&["add", "-A"]);
            env.git(&["commit", "-q", "-m", &format!("{branch} {n}")]);
        }
        env.push(&[branch]);
    }
    eventually(LIVE, "both live", || {
        let live = env.ls().iter().filter(|r| r["state"] == "live").count();
        (live == 2).then_some(())
    });

    // Squash merge: main gets one new commit with both changes; the branch is not an
    // ancestor of main, but its changes are all there.
    env.git(&["checkout", "-q", "main"]);
    env.git(&["merge", "-q", "--squash", "squashed"]);
    env.git(&["commit", "-q", "-m", "squash merge"]);
    // Rebase merge: main gets copies of the branch's commits.
    env.git(&["cherry-pick", "main..rebased"]);
    env.push(&["main"]);
    wait_gone(&env, "squashed");
    wait_gone(&env, "rebased");
    assert!(env.ls().is_empty(), "{:?}", env.ls());
}

#[test]
fn gc_lock_files_and_odd_names_do_not_disturb_previews() {
    let mut env = test_env!("refstore");
    env.start();
    env.push(&["main"]);
    env.commit_site("steady", "steady\n");
    env.push(&["steady"]);
    env.wait_for_body("steady", "steady\n", LIVE);
    let container = env.objects("container", &[]);

    // gc packs the loose refs and rewrites packed-refs while previewd watches and reads.
    mirror_git(&env, &["gc", "-q", "--prune=now"]);
    // Stale locks, as a crashed git leaves them.
    std::fs::write(env.mirror.join("refs/heads/steady.lock"), "garbage").unwrap();
    std::fs::write(env.mirror.join("packed-refs.lock"), "garbage").unwrap();
    // A branch whose name is not UTF-8, made in the mirror directly.
    let tip = mirror_git(&env, &["rev-parse", "steady"]);
    let odd = Command::new("git")
        .arg("--git-dir")
        .arg(&env.mirror)
        .arg("update-ref")
        .arg(std::ffi::OsStr::new(unsafe_free_bytes()))
        .arg(tip.trim())
        .status()
        .expect("git update-ref");
    assert!(odd.success());

    // The odd branch gets a preview of its own (its slug drops the bad bytes); the steady
    // one is untouched: same container, still serving.
    eventually(LIVE, "the non-UTF-8 branch is live", || {
        env.ls()
            .into_iter()
            .find(|r| r["slug"] == "odd" && r["state"] == "live")
    });
    assert_eq!(env.get("steady", "/"), (200, "steady\n".to_owned()));
    let now: Vec<String> = env
        .objects("container", &["previewd.slug=steady"])
        .into_iter()
        .collect();
    assert_eq!(now, container, "the steady preview was not touched");
    assert!(env.daemon_running());
}

/// `refs/heads/odd\xff`: a ref name git accepts that is not UTF-8.
fn unsafe_free_bytes() -> &'static std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b"refs/heads/odd\xff")
}

#[test]
fn a_corrupt_object_fails_only_its_branch() {
    let mut env = test_env!("corrupt");
    env.start();
    env.push(&["main"]);
    env.commit_site("healthy", "healthy\n");
    env.push(&["healthy"]);
    env.wait_for_body("healthy", "healthy\n", LIVE);
    env.commit_site("damaged", "damaged\n");
    env.push(&["damaged"]);
    env.wait_for_body("damaged", "damaged\n", LIVE);

    // Corrupt the damaged branch's tip commit in the mirror (pushes this small arrive as
    // loose objects).
    let tip = mirror_git(&env, &["rev-parse", "damaged"]);
    let tip = tip.trim();
    let object = env.mirror.join("objects").join(&tip[..2]).join(&tip[2..]);
    let mut perms = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&object, perms).unwrap();
    std::fs::write(&object, b"not a zlib stream").unwrap();
    // A ref change makes previewd look again (git itself now refuses pushes that touch the
    // damaged object, so the ref is made in the mirror directly).
    let main = mirror_git(&env, &["rev-parse", "main"]);
    mirror_git(&env, &["update-ref", "refs/heads/poke", main.trim()]);

    let row = eventually(GONE, "the damaged branch shows an error", || {
        env.row("damaged").filter(|r| r["error"].is_string())
    });
    assert_eq!(row["state"], "failed");
    // Never destroy on doubt: what served keeps serving.
    assert_eq!(env.get("damaged", "/"), (200, "damaged\n".to_owned()));
    assert_eq!(env.row("healthy").unwrap()["state"], "live");
    assert!(env.daemon_running());
}

#[test]
fn a_mirror_that_vanishes_for_a_minute_tears_nothing_down() {
    let mut env = test_env!("vanish");
    env.start();
    env.push(&["main"]);
    for branch in ["one", "two", "three", "four"] {
        env.commit_site(branch, &format!("{branch}\n"));
        env.push(&[branch]);
    }
    for branch in ["one", "two", "three", "four"] {
        env.wait_for_body(branch, &format!("{branch}\n"), LIVE);
    }
    let before = env.objects("container", &[]);
    assert_eq!(before.len(), 4);

    let away = env.root.join("mirror-away.git");
    std::fs::rename(&env.mirror, &away).unwrap();
    // A minute without a mirror: resyncs, watcher events and Docker events all happen, and
    // each pass must fail rather than conclude every branch was deleted. The watcher fires at
    // once on the move; the periodic resync (30 s) runs at least once in this minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            env.objects("container", &[]),
            before,
            "a preview was torn down"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    std::fs::rename(&away, &env.mirror).unwrap();
    for branch in ["one", "two", "three", "four"] {
        assert_eq!(env.get(branch, "/"), (200, format!("{branch}\n")));
    }
    env.commit_site("one", "one again\n");
    env.push(&["one"]);
    env.wait_for_body("one", "one again\n", LIVE);
    assert!(env.daemon_running());
}
