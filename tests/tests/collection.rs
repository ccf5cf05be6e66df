//! Collection removes what previewd made and no longer needs, and nothing else: objects of
//! other instances and objects without previewd's labels survive everything.

use std::process::Command;
use std::time::Duration;

use previewd_e2e::{eventually, test_env, Env};

const LIVE: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Objects that look like previewd's but are not this instance's: another instance's labels,
/// and no labels at all. Removed again when dropped.
struct Foreign {
    names: Vec<(&'static str, String)>,
}

impl Foreign {
    fn make(env: &Env) -> Foreign {
        let tag = format!("{}-foreign", env.instance);
        let other = "previewd.instance=someone-else";
        let mut names = Vec::new();
        // An image of its own, built FROM scratch, labelled as another instance's.
        let dir = env.root.join("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nLABEL previewd.instance=someone-else previewd.slug=feature-x previewd.branch=feature/x previewd.commit=0\n",
        )
        .unwrap();
        let image = format!("{tag}/image:1");
        docker(&["build", "-q", "-t", &image, dir.to_str().unwrap()]);
        names.push(("image", image.clone()));
        for (kind, name, labels) in [
            ("network", format!("{tag}-net"), vec![other]),
            ("network", format!("{tag}-bare-net"), vec![]),
            ("volume", format!("{tag}-vol"), vec![other]),
            ("volume", format!("{tag}-bare-vol"), vec![]),
        ] {
            let mut args = vec![kind, "create"];
            for l in &labels {
                args.extend(["--label", l]);
            }
            args.push(&name);
            docker(&args);
            names.push((kind, name));
        }
        let container = format!("{tag}-container");
        docker(&[
            "create",
            "--name",
            &container,
            "--label",
            other,
            "--label",
            "previewd.slug=feature-x",
            &image,
            "/bin/busybox",
            "true",
        ]);
        names.push(("container", container));
        Foreign { names }
    }

    fn assert_all_there(&self) {
        for (kind, name) in &self.names {
            let out = Command::new("docker")
                .args([kind, "inspect", name])
                .output()
                .unwrap();
            assert!(out.status.success(), "foreign {kind} {name} was removed");
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        for (kind, name) in self.names.iter().rev() {
            let args: &[&str] = match *kind {
                "container" => &["rm", "-f"],
                "image" => &["rmi", "-f"],
                "network" => &["network", "rm"],
                _ => &["volume", "rm", "-f"],
            };
            let _ = Command::new("docker").args(args).arg(name).output();
        }
    }
}

#[test]
fn collection_never_touches_foreign_objects_and_gc_says_what_goes() {
    let mut env = test_env!("collect");
    let foreign = Foreign::make(&env);
    // Every removal waits for a second look, so the dry run below sees it pending.
    env.daemon_args(&["--mass-removal-threshold", "0"]);
    env.start();
    env.push(&["main"]);
    env.commit_site("feature/x", "x\n");
    env.commit_site("feature/y", "y\n");
    env.push(&["feature/x", "feature/y"]);
    env.wait_for_body("feature-x", "x\n", LIVE);
    env.wait_for_body("feature-y", "y\n", LIVE);

    // Merged while previewd is down, so the dry run has something to show.
    env.stop();
    env.git(&["checkout", "-q", "main"]);
    env.git(&["merge", "-q", "--no-ff", "-m", "merge x", "feature/x"]);
    let hook = env.mirror.join("hooks/post-receive");
    std::fs::remove_file(&hook).unwrap();
    env.push(&["main"]);
    env.start();
    let (ok, dry) = env.cli(&["gc", "--dry-run"]);
    assert!(ok);
    let container = format!(
        "would remove container previewd-{}-feature-x-app-",
        env.instance
    );
    assert!(dry.contains(&container), "{dry}");
    assert!(dry.contains("(feature/x: merged or deleted)"), "{dry}");
    assert!(
        dry.contains(&format!("image previewd-{}/feature-x:", env.instance)),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("network previewd-{}-feature-x (", env.instance)),
        "{dry}"
    );
    assert!(!dry.contains("-foreign"), "{dry}");
    assert!(!dry.contains("feature-y"), "{dry}");
    assert_eq!(
        env.objects("container", &["previewd.slug=feature-x"]).len(),
        1,
        "a dry run removes nothing"
    );

    let (ok, out) = env.cli(&["gc"]);
    assert!(ok, "{out}");
    eventually(Duration::from_secs(10), "feature/x removed", || {
        let left = env.objects("container", &["previewd.slug=feature-x"]).len()
            + env.objects("image", &["previewd.slug=feature-x"]).len();
        (left == 0).then_some(())
    });
    assert_eq!(env.get("feature-y", "/"), (200, "y\n".to_owned()));
    foreign.assert_all_there();
    let (_, again) = env.cli(&["gc", "--dry-run"]);
    assert_eq!(again.trim(), "nothing to collect");
}

#[test]
fn a_cap_on_previews_removes_the_idlest_first() {
    let mut env = test_env!("cap");
    env.daemon_args(&["--max-previews", "2"]);
    env.start();
    env.push(&["main"]);
    // Commit times decide idleness: the oldest commit is the idlest branch.
    for (branch, date) in [
        ("oldest", "2020-01-01T00:00:00"),
        ("middle", "2021-01-01T00:00:00"),
    ] {
        env.git(&["checkout", "-q", "-b", branch, "main"]);
        std::fs::write(env.work.join("www/index.html"), format!("{branch}\n")).unwrap();
        let out = Command::new("git")
            .args(["commit", "-q", "-am", branch])
            .current_dir(&env.work)
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.invalid")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.invalid")
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_DATE", date)
            .status()
            .unwrap();
        assert!(out.success());
        env.push(&[branch]);
    }
    env.wait_for_body("oldest", "oldest\n", LIVE);
    env.wait_for_body("middle", "middle\n", LIVE);
    // A third, fresh branch: over the cap, so the idlest preview goes.
    env.commit_site("fresh", "fresh\n");
    env.push(&["fresh"]);
    env.wait_for_body("fresh", "fresh\n", LIVE);
    eventually(
        Duration::from_secs(10),
        "the idlest preview removed",
        || {
            (env.objects("container", &["previewd.slug=oldest"])
                .is_empty())
            .then_some(())
        },
    );
    assert_eq!(env.get("middle", "/"), (200, "middle\n".to_owned()));
    assert_eq!(env.objects("container", &[]).len(), 2);
}

/// Images anywhere on the engine (labelled or not) with a layer that copied into `path`: a
/// build's layers, found by what they hold.
fn images_with_layer_into(path: &str) -> Vec<String> {
    docker(&["images", "-a", "-q", "--no-trunc"])
        .lines()
        .filter(|id| {
            docker(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", id])
                .lines()
                .any(|step| {
                    step.ends_with(&format!(" in {path} "))
                        || step.ends_with(&format!(" in {path}"))
                })
        })
        .map(str::to_owned)
        .collect()
}

/// The bug this pins: a build that failed at a later step, or that a newer push cancelled,
/// left the layers it had committed as untagged images without previewd's labels, which no
/// collection could find: a disk leak on every broken or superseded push.
#[test]
fn failed_and_cancelled_builds_leave_no_layers_behind() {
    let mut env = test_env!("leftover");
    env.start();
    let marker = |what: &str| format!("/marker-{}-{what}", env.instance);
    let dockerfile = |copy_to: &str, last_step: &str| {
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www {copy_to}\n{last_step}\nEXPOSE 8080\n\
             ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"{copy_to}\"]\n"
        )
    };

    // Fails after two committed steps.
    env.checkout("fails-late");
    std::fs::write(
        env.work.join("Dockerfile"),
        dockerfile(&marker("failed"), "RUN [\"/bin/busybox\", \"false\"]"),
    )
    .unwrap();
    env.git(&["commit", "-q", "-am", "a build that fails late"]);
    env.push(&["fails-late"]);
    eventually(LIVE, "the late failure shown", || {
        env.row("fails-late").filter(|r| r["state"] == "failed")
    });

    // Cancelled in its slow last step by a newer push.
    env.checkout("superseded");
    std::fs::write(
        env.work.join("Dockerfile"),
        dockerfile(
            &marker("cancelled"),
            "RUN [\"/bin/busybox\", \"sleep\", \"60\"]",
        ),
    )
    .unwrap();
    env.git(&["commit", "-q", "-am", "a slow build"]);
    let slow = env.git(&["rev-parse", "HEAD"]).trim().to_owned();
    env.push(&["superseded"]);
    let log = env
        .state
        .join("logs/superseded")
        .join(format!("{}.log", &slow[..12]));
    eventually(LIVE, "the slow build in its last step", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains("sleep"))
    });
    assert!(
        !images_with_layer_into(&marker("cancelled")).is_empty(),
        "the build committed layers"
    );
    std::fs::write(env.work.join("Dockerfile"), previewd_e2e::DOCKERFILE).unwrap();
    env.git(&["commit", "-q", "-am", "a quick build"]);
    env.push(&["superseded"]);
    env.wait_for_body("superseded", "main\n", LIVE);

    for what in ["failed", "cancelled"] {
        eventually(LIVE, "the layers collected", || {
            images_with_layer_into(&marker(what))
                .is_empty()
                .then_some(())
        });
    }
    assert!(env.daemon_running());
}
