//! The host's limits hold whatever a branch contains: every preview container runs with a
//! memory, CPU and process cap and cannot gain privileges, and a build that runs too long is
//! stopped and shown as the branch's failure.

use std::process::Command;
use std::time::Duration;

use previewd_e2e::{eventually, test_env};

const LIVE: Duration = Duration::from_secs(120);

#[test]
fn a_preview_runs_within_the_hosts_limits_and_cannot_gain_privileges() {
    let mut env = test_env!("limits");
    let config = env.root.join("previewd.toml");
    std::fs::write(
        &config,
        "[limits]\nmemory = \"128m\"\ncpus = 0.5\npids = 64\n",
    )
    .unwrap();
    env.daemon_args(&["--config", config.to_str().unwrap()]);
    env.start();
    env.push(&["main"]);
    env.commit_site("capped", "capped\n");
    env.push(&["capped"]);
    env.wait_for_body("capped", "capped\n", LIVE);

    let id = env
        .objects("container", &["previewd.slug=capped"])
        .remove(0);
    let host = env.inspect(
        &id,
        "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{json .HostConfig.SecurityOpt}}",
    );
    assert_eq!(
        host,
        format!(
            "{m} {m} 500000000 64 [\"no-new-privileges:true\"]",
            m = 128 << 20
        )
    );

    // A fork bomb stops at the cap: the 100th process cannot start.
    let bomb = Command::new("docker")
        .args(["exec", &id, "/bin/busybox", "sh", "-c"])
        .arg("for i in $(/bin/busybox seq 100); do /bin/busybox sleep 60 & done; wait")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bomb.stderr);
    assert!(
        said.contains("can't fork") || said.contains("Resource temporarily unavailable"),
        "the process cap held: {said}"
    );
    // The preview itself keeps serving.
    assert_eq!(env.get("capped", "/"), (200, "capped\n".into()));
}

#[test]
fn a_build_past_the_time_limit_is_stopped_and_shown() {
    let mut env = test_env!("buildtime");
    let config = env.root.join("previewd.toml");
    std::fs::write(&config, "[limits]\nbuild_timeout_s = 3\n").unwrap();
    env.daemon_args(&["--config", config.to_str().unwrap()]);
    env.start();
    env.push(&["main"]);
    env.checkout("slow-build");
    let dockerfile = std::fs::read_to_string(env.work.join("Dockerfile")).unwrap();
    let slow = dockerfile.replace(
        "COPY www /www\n",
        "COPY www /www\nRUN [\"/bin/busybox\", \"sleep\", \"60\"]\n",
    );
    std::fs::write(env.work.join("Dockerfile"), slow).unwrap();
    env.git(&["commit", "-q", "-am", "a build that takes a minute"]);
    env.push(&["slow-build"]);

    eventually(LIVE, "the build fails at its time limit", || {
        env.row("slow-build").filter(|r| r["state"] == "failed")
    });
    let (status, page) = env.get("slow-build", "/");
    assert_eq!(status, 502, "{page}");
    assert!(
        page.contains("ran longer than the host&#39;s limit of 3 s")
            || page.contains("ran longer than the host's limit of 3 s"),
        "{page}"
    );
    // The stopped build leaves no container behind (its step containers carry the layer
    // label, so they would be listed).
    eventually(Duration::from_secs(30), "no build container left", || {
        env.objects("container", &[]).is_empty().then_some(())
    });
}
