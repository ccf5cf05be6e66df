//! How pushes reach previewd: the hook pokes it and prints URLs; the ref watcher covers a
//! missing hook; a push never fails because previewd is down.

use std::time::Duration;

use previewd_e2e::{eventually, test_env};

#[test]
fn a_push_succeeds_while_previewd_is_down_and_is_picked_up_on_start() {
    let mut env = test_env!("down");
    env.start();
    env.stop();
    env.commit_site("feature/offline", "offline\n");
    let out = env.push(&["feature/offline"]);
    assert!(out.contains("previewd is not running"), "{out}");
    env.start();
    env.wait_for_body("feature-offline", "offline\n", Duration::from_secs(120));
}

#[test]
fn the_ref_watcher_reacts_without_the_hook() {
    let mut env = test_env!("watch");
    env.start();
    std::fs::remove_file(env.mirror.join("hooks/post-receive")).unwrap();
    env.commit_site("feature/watched", "watched\n");
    let out = env.push(&["feature/watched"]);
    assert!(!out.contains("previewd:"), "the hook is gone, yet: {out}");
    // Well inside the 30 s periodic resync: only the watcher can have noticed this soon.
    eventually(
        Duration::from_secs(10),
        "the watcher notices the push",
        || env.row("feature/watched"),
    );
    env.wait_for_body("feature-watched", "watched\n", Duration::from_secs(120));
}

#[test]
fn the_hook_prints_one_url_per_pushed_branch() {
    let mut env = test_env!("hook");
    env.start();
    // A branch name git accepts but a shell, a Dockerfile and a DNS name do not.
    let hostile = "Fix/\"Quote\"$HOME-\u{fc}n\u{ef}";
    env.commit_site("a/one", "1\n");
    env.commit_site(hostile, "2\n");
    let out = env.push(&["main", "a/one", hostile]);
    assert!(
        out.contains(&format!("a/one: {}", env.url("a-one"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("{hostile}: {}", env.url("fix-quote-home-n"))),
        "{out}"
    );
    assert!(out.contains("main: no preview"), "{out}");
    env.wait_for_body("a-one", "1\n", Duration::from_secs(120));
    env.wait_for_body("fix-quote-home-n", "2\n", Duration::from_secs(120));
    let container = &env.objects("container", &["previewd.slug=fix-quote-home-n"])[0];
    let label = env.inspect(container, "{{index .Config.Labels \"previewd.branch\"}}");
    assert_eq!(label, hostile, "the branch label keeps the exact name");
    let image = &env.objects("image", &["previewd.slug=fix-quote-home-n"])[0];
    let label = env.inspect(image, "{{index .Config.Labels \"previewd.branch\"}}");
    assert_eq!(
        label, hostile,
        "the image label too, through the Dockerfile's LABEL line"
    );
}
