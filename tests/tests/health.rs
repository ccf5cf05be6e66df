//! Configured health checks decide when a new version takes traffic; a version that never
//! gets healthy leaves the last good one serving, and its failure is shown.

use std::time::Duration;

use previewd_e2e::{eventually, test_env};

const LIVE: Duration = Duration::from_secs(120);

/// An app that serves `www/` at once but reports ready (`/ready.txt`) only after `delay`
/// seconds, or never when `delay` is `None`.
fn dockerfile(delay: Option<u32>) -> String {
    let ready = match delay {
        Some(s) => format!("/bin/busybox sleep {s}; echo ok > /www/ready.txt; "),
        None => String::new(),
    };
    format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nEXPOSE 8080\n\
         ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox httpd -p 8080 -h /www; {ready}exec /bin/busybox sleep 100000\"]\n"
    )
}

#[test]
fn traffic_waits_for_the_configured_check_and_an_unhealthy_version_never_gets_it() {
    let mut env = test_env!("health");
    let config = env.root.join("previewd.toml");
    std::fs::write(
        &config,
        "[health]\npath = \"/ready.txt\"\nstatus = 200\ninterval_ms = 50\nstart_period_s = 15\n",
    )
    .unwrap();
    env.daemon_args(&["--config", config.to_str().unwrap()]);
    env.start();
    env.push(&["main"]);

    // Ready only after 2 s: until then the preview is building, although the app answers.
    env.git(&["checkout", "-q", "-b", "slow", "main"]);
    std::fs::write(env.work.join("Dockerfile"), dockerfile(Some(2))).unwrap();
    std::fs::write(env.work.join("www/index.html"), "v1\n").unwrap();
    env.git(&["commit", "-q", "-am", "v1"]);
    env.push(&["slow"]);
    env.wait_for_body("slow", "v1\n", LIVE);
    let (status, ready) = env.get("slow", "/ready.txt");
    assert_eq!(
        (status, ready.as_str()),
        (200, "ok\n"),
        "traffic came only once ready"
    );

    // A version that never reports ready: it fails, and v1 keeps serving.
    std::fs::write(env.work.join("Dockerfile"), dockerfile(None)).unwrap();
    std::fs::write(env.work.join("www/index.html"), "v2\n").unwrap();
    env.git(&["commit", "-q", "-am", "v2 never ready"]);
    env.push(&["slow"]);
    let row = eventually(LIVE, "v2 fails its health check", || {
        env.row("slow").filter(|r| r["state"] == "failed")
    });
    assert_eq!(row["commit"], env.git(&["rev-parse", "HEAD"]).trim());
    assert_eq!(
        env.get("slow", "/"),
        (200, "v1\n".to_owned()),
        "the last good version serves"
    );
    let containers = env.objects("container", &["previewd.slug=slow"]);
    assert_eq!(containers.len(), 1, "the unhealthy container is removed");
}
