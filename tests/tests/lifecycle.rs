//! The whole loop for real: push -> HTTPS preview -> update without downtime (requests
//! running on the old version finish) -> merge and delete -> nothing left in Docker.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use previewd_e2e::{eventually, test_env};

const LIVE: Duration = Duration::from_secs(120);
/// The promise for merged or deleted branches.
const GONE: Duration = Duration::from_secs(10);

#[test]
fn push_update_merge_and_delete() {
    let mut env = test_env!("life");
    env.start();
    env.push(&["main"]);

    // First push: the hook prints the URL, the preview goes live with the branch's content.
    let v1 = env.commit_site("feature/hello", "v1\n");
    let out = env.push(&["feature/hello"]);
    assert!(
        out.contains(&env.url("feature-hello")),
        "push output lacks the URL:\n{out}"
    );
    env.wait_for_body("feature-hello", "v1\n", LIVE);

    let (status, vars) = env.get("feature-hello", "/env.txt");
    assert_eq!(status, 200);
    let expected = format!(
        "feature/hello {v1} feature-hello {}\n",
        env.url("feature-hello")
    );
    assert_eq!(vars, expected, "PREVIEW_* variables");

    let containers = env.objects("container", &["previewd.slug=feature-hello"]);
    assert_eq!(containers.len(), 1, "one container per preview");
    for (label, value) in [
        ("previewd.instance", env.instance.as_str()),
        ("previewd.branch", "feature/hello"),
        ("previewd.slug", "feature-hello"),
        ("previewd.commit", v1.as_str()),
        ("previewd.role", "app"),
    ] {
        let got = env.inspect(
            &containers[0],
            &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
        );
        assert_eq!(got, value, "container label {label}");
    }
    let images = env.objects(
        "image",
        &[
            "previewd.slug=feature-hello",
            &format!("previewd.commit={v1}"),
        ],
    );
    assert_eq!(images.len(), 1, "the image carries the labels");
    let networks = env.objects(
        "network",
        &[
            "previewd.slug=feature-hello",
            "previewd.branch=feature/hello",
        ],
    );
    assert_eq!(networks.len(), 1, "the network carries the labels");

    let row = env.row("feature/hello").expect("ls lists the preview");
    assert_eq!(row["slug"], "feature-hello");
    assert_eq!(row["commit"], v1.as_str());
    assert_eq!(row["state"], "live");
    assert_eq!(row["url"], env.url("feature-hello").as_str());
    assert!(env.row("main").is_none(), "main has no preview");

    // Update: the old version answers until the new one does; never an error in between.
    let v2 = env.commit_site("feature/hello", "v2\n");
    env.push(&["feature/hello"]);
    eventually(LIVE, "the update goes live", || {
        let (status, body) = env.get("feature-hello", "/");
        assert_eq!(
            status, 200,
            "during the swap the preview answered {status}: {body}"
        );
        assert!(body == "v1\n" || body == "v2\n", "unexpected body {body:?}");
        (body == "v2\n").then_some(())
    });
    eventually(LIVE, "the old container and image are removed", || {
        let containers = env.objects("container", &["previewd.slug=feature-hello"]);
        let images = env.objects("image", &["previewd.slug=feature-hello"]);
        (containers.len() == 1 && images.len() == 1).then_some(())
    });
    let commit = env.inspect(
        &env.objects("container", &["previewd.slug=feature-hello"])[0],
        "{{index .Config.Labels \"previewd.commit\"}}",
    );
    assert_eq!(commit, v2);

    // A second branch, to be deleted rather than merged.
    env.commit_site("feature/bye", "bye\n");
    env.push(&["feature/bye"]);
    env.wait_for_body("feature-bye", "bye\n", LIVE);

    // Merge into main: everything of feature/hello goes, and feature/bye is untouched.
    env.git(&["checkout", "-q", "main"]);
    env.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "merge hello",
        "feature/hello",
    ]);
    env.push(&["main"]);
    eventually(GONE, "merged preview removed", || {
        let left = env
            .objects("container", &["previewd.slug=feature-hello"])
            .len()
            + env.objects("image", &["previewd.slug=feature-hello"]).len()
            + env
                .objects("network", &["previewd.slug=feature-hello"])
                .len();
        (left == 0).then_some(())
    });
    let (status, body) = env.get("feature-hello", "/");
    assert_ne!(status, 200, "a merged preview must not serve: {body}");
    assert_eq!(status, 404);
    assert_eq!(env.get("feature-bye", "/"), (200, "bye\n".to_owned()));

    // Delete the other branch: the instance ends with nothing in Docker.
    let out = env.push(&[":feature/bye"]);
    assert!(out.contains("feature/bye: deleted"), "{out}");
    eventually(GONE, "deleted preview removed", || {
        let left = env.objects("container", &[]).len()
            + env.objects("image", &[]).len()
            + env.objects("network", &[]).len()
            + env.objects("volume", &[]).len();
        (left == 0).then_some(())
    });
    assert_eq!(env.get("feature-bye", "/").0, 404);
    assert!(env.ls().is_empty(), "ls: {:?}", env.ls());
    assert!(env.daemon_running());
}

#[test]
fn a_request_running_during_the_swap_finishes_on_the_old_version() {
    let mut env = test_env!("drain");
    env.start();
    env.push(&["main"]);
    // A CGI that takes a second and answers with the version it belongs to.
    env.checkout("feature/slow");
    let cgi = env.work.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi).unwrap();
    std::fs::write(
        cgi.join("slow"),
        "#!/bin/busybox sh\n/bin/busybox sleep 1\necho 'Content-Type: text/plain'\necho\n\
         /bin/busybox cat /www/index.html\n",
    )
    .unwrap();
    std::fs::set_permissions(cgi.join("slow"), PermissionsExt::from_mode(0o755)).unwrap();
    env.git(&["add", "www/cgi-bin/slow"]);
    env.commit_site("feature/slow", "v1\n");
    env.push(&["feature/slow"]);
    env.wait_for_body("feature-slow", "v1\n", LIVE);
    assert_eq!(
        env.get("feature-slow", "/cgi-bin/slow"),
        (200, "v1\n".to_owned())
    );

    // Slow requests back to back while v2 replaces v1: one is all but certainly running on v1
    // when traffic moves, and it must still get its answer.
    let done = AtomicBool::new(false);
    let answers = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) {
                answers.push(env.get("feature-slow", "/cgi-bin/slow"));
            }
            answers
        });
        env.commit_site("feature/slow", "v2\n");
        env.push(&["feature/slow"]);
        env.wait_for_body("feature-slow", "v2\n", LIVE);
        eventually(LIVE, "the old container is removed", || {
            let containers = env.objects("container", &["previewd.slug=feature-slow"]);
            (containers.len() == 1).then_some(())
        });
        done.store(true, Ordering::SeqCst);
        slow.join().expect("slow requests")
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "a request during the swap failed: {body:?}");
    }
    assert!(
        answers.iter().any(|(_, body)| body == "v1\n"),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|(_, body)| body == "v2\n"),
        "{answers:?}"
    );
}
