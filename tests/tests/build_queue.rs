//! The build queue and what it saves: bursts of pushes coalesce, identical trees are not
//! rebuilt, builds beyond the concurrency wait their turn, and apps that keep dying end as a
//! visible failure.

use std::time::{Duration, Instant};

use previewd_e2e::{eventually, test_env, Env};

const LIVE: Duration = Duration::from_secs(120);

/// Builds started for `slug`: each writes a log named after its commit.
fn builds(env: &Env, slug: &str) -> usize {
    std::fs::read_dir(env.state.join("logs").join(slug)).map_or(0, |d| d.count())
}

#[test]
fn a_burst_of_pushes_builds_at_most_twice_and_ends_on_the_last_commit() {
    let mut env = test_env!("burst");
    env.start();
    env.push(&["main"]);
    let started = Instant::now();
    for n in 1..=50 {
        env.commit_site("burst", &format!("push {n}\n"));
        env.push(&["burst"]);
    }
    eprintln!("50 pushes took {:?}", started.elapsed());
    env.wait_for_body("burst", "push 50\n", LIVE);
    let row = env.row("burst").unwrap();
    assert_eq!(row["state"], "live");
    assert_eq!(row["commit"], env.git(&["rev-parse", "burst"]).trim());
    let built = builds(&env, "burst");
    assert!((1..=2).contains(&built), "{built} builds for one burst");
    assert_eq!(env.objects("container", &[]).len(), 1);
}

#[test]
fn a_commit_with_the_same_tree_reuses_the_image() {
    let mut env = test_env!("tree");
    env.start();
    env.push(&["main"]);
    env.commit_site("amend", "same tree\n");
    env.push(&["amend"]);
    env.wait_for_body("amend", "same tree\n", LIVE);
    let image = env.objects("image", &[]);
    assert_eq!(builds(&env, "amend"), 1);

    // A new commit, same tree: only the message differs.
    env.git(&["commit", "-q", "--amend", "-m", "a better message"]);
    let amended = env.git(&["rev-parse", "HEAD"]).trim().to_owned();
    env.push(&["amend"]);
    eventually(LIVE, "the amended commit is live", || {
        env.row("amend")
            .filter(|r| r["commit"] == amended.as_str() && r["state"] == "live")
    });
    assert_eq!(builds(&env, "amend"), 1, "no second build");
    assert_eq!(env.objects("image", &[]), image, "the same image");
    let containers = eventually(LIVE, "the old container is removed", || {
        Some(env.objects("container", &[])).filter(|c| c.len() == 1)
    });
    let label = env.inspect(
        &containers[0],
        "{{index .Config.Labels \"previewd.commit\"}}",
    );
    assert_eq!(label, amended);
    assert_eq!(env.get("amend", "/"), (200, "same tree\n".to_owned()));
}

#[test]
fn builds_beyond_the_concurrency_wait_in_a_visible_queue() {
    let mut env = test_env!("queue");
    env.start();
    for branch in ["q1", "q2", "q3"] {
        env.commit_site(branch, &format!("{branch}\n"));
    }
    // Whichever build takes the slot first must last long enough for the other two to be
    // seen waiting, however fast the engine is: each of them sleeps a few seconds.
    for branch in ["q1", "q2", "q3"] {
        env.checkout(branch);
        let dockerfile = env.work.join("Dockerfile");
        let mut text = std::fs::read_to_string(&dockerfile).unwrap();
        text.push_str("RUN [\"/bin/busybox\", \"sleep\", \"4\"]\n");
        std::fs::write(&dockerfile, text).unwrap();
        env.git(&["commit", "-q", "-am", "a slow build step"]);
    }
    // One push, three branches: one build slot (the default), so two wait.
    env.push(&["main", "q1", "q2", "q3"]);
    let queued = eventually(LIVE, "two previews queued", || {
        let rows = env.ls();
        let mut places: Vec<u64> = rows
            .iter()
            .filter(|r| r["state"] == "queued")
            .filter_map(|r| r["queue_position"].as_u64())
            .collect();
        places.sort();
        (places.len() == 2).then_some(places)
    });
    assert_eq!(queued, [1, 2]);
    for branch in ["q1", "q2", "q3"] {
        env.wait_for_body(branch, &format!("{branch}\n"), LIVE);
    }
}

#[test]
fn an_app_that_keeps_dying_is_failed_after_its_restart_budget() {
    let mut env = test_env!("dying");
    env.start();
    env.git(&["checkout", "-q", "-b", "dies", "main"]);
    // Healthy for a few seconds (busybox httpd without -f runs in the background), then gone:
    // long enough for the first health probe however loaded the machine.
    std::fs::write(
        env.work.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nEXPOSE 8080\n\
         ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox httpd -p 8080 -h /www; echo app-crashed-again; /bin/busybox sleep 4; exit 1\"]\n",
    )
    .unwrap();
    env.git(&["commit", "-q", "-am", "an app that dies"]);
    env.push(&["dies"]);
    let row = eventually(LIVE, "the preview is failed", || {
        env.row("dies").filter(|r| r["state"] == "failed")
    });
    assert_eq!(row["slug"], "dies");
    let (status, page) = env.get("dies", "/");
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("stopped"), "{page}");
    assert!(
        page.contains("app-crashed-again"),
        "the app's output: {page}"
    );
    // Given up: the container stays stopped instead of restarting forever.
    let containers = env.objects("container", &[]);
    assert_eq!(containers.len(), 1);
    assert_eq!(env.inspect(&containers[0], "{{.State.Running}}"), "false");
    assert!(env.daemon_running());
}
