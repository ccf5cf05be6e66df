//! A broken Dockerfile fails one preview, visibly and alone; a fixing push recovers it.

use std::time::Duration;

use previewd_e2e::{eventually, test_env, DOCKERFILE};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_broken_build_fails_alone_and_a_fix_recovers() {
    let mut env = test_env!("broken");
    env.start();
    env.push(&["main"]);
    env.commit_site("good", "good\n");
    env.push(&["good"]);
    env.wait_for_body("good", "good\n", LIMIT);

    // A Dockerfile that cannot build, whose error output carries markup.
    env.git(&["checkout", "-q", "-b", "broken", "main"]);
    std::fs::write(
        env.work.join("Dockerfile"),
        "FROM scratch\nCOPY missing-<script>alert(1)</script> /x\n",
    )
    .unwrap();
    env.git(&["commit", "-q", "-am", "break the build"]);
    env.push(&["broken"]);

    let (status, page) = eventually(LIMIT, "the failure is shown", || {
        let (status, page) = env.get("broken", "/");
        (status != 503).then_some((status, page))
    });
    assert_ne!(status, 200, "{page}");
    assert!(status >= 500, "{status}: {page}");
    assert!(page.to_lowercase().contains("failed"), "{page}");
    assert!(
        page.contains("missing-&lt;script&gt;"),
        "log tail, escaped: {page}"
    );
    assert!(!page.contains("<script>"), "unescaped markup: {page}");
    assert_eq!(env.row("broken").unwrap()["state"], "failed");

    // The rest keeps working.
    assert_eq!(env.get("good", "/"), (200, "good\n".to_owned()));
    assert_eq!(env.row("good").unwrap()["state"], "live");
    assert!(env.daemon_running());

    // Fix it.
    std::fs::write(env.work.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(env.work.join("www/index.html"), "fixed\n").unwrap();
    env.git(&["commit", "-q", "-am", "fix the build"]);
    env.push(&["broken"]);
    env.wait_for_body("broken", "fixed\n", LIMIT);
    assert_eq!(env.row("broken").unwrap()["state"], "live");
}

#[test]
fn an_app_that_exits_fails_with_its_output() {
    let mut env = test_env!("exits");
    env.start();
    env.git(&["checkout", "-q", "-b", "crash", "main"]);
    std::fs::write(
        env.work.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nEXPOSE 8080\nENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"echo cannot-start-db >&2; exit 3\"]\n",
    )
    .unwrap();
    env.git(&["commit", "-q", "-am", "crash on start"]);
    env.push(&["crash"]);
    let (status, page) = eventually(LIMIT, "the failure is shown", || {
        let (status, page) = env.get("crash", "/");
        (status != 503).then_some((status, page))
    });
    assert_eq!(status, 502, "{page}");
    assert!(
        page.contains("cannot-start-db"),
        "container output shown: {page}"
    );
    assert!(
        env.objects("container", &[]).is_empty(),
        "the failed container is removed, not left restarting"
    );
}
