//! Stopping previewd never stops previews, and a restart adopts them: same containers, no
//! rebuild, served again at once.

use std::time::Duration;

use previewd_e2e::{eventually, test_env};

#[test]
fn restart_adopts_running_previews_without_a_rebuild() {
    let mut env = test_env!("restart");
    env.start();
    env.push(&["main"]);
    env.commit_site("feature/keep", "kept\n");
    env.push(&["feature/keep"]);
    env.wait_for_body("feature-keep", "kept\n", Duration::from_secs(120));

    let containers = env.objects("container", &[]);
    let images = env.objects("image", &[]);
    assert_eq!(containers.len(), 1);
    let started_at = env.inspect(&containers[0], "{{.State.StartedAt}}");
    let logs = std::fs::read_dir(env.state.join("logs/feature-keep"))
        .unwrap()
        .count();

    env.stop();
    assert_eq!(
        env.inspect(&containers[0], "{{.State.Running}}"),
        "true",
        "stopping previewd leaves previews running"
    );

    env.start();
    // Served again by the adopted container: the checks below prove no rebuild ran.
    env.wait_for_body("feature-keep", "kept\n", Duration::from_secs(30));
    assert_eq!(env.objects("container", &[]), containers, "same container");
    assert_eq!(env.objects("image", &[]), images, "same image");
    assert_eq!(
        env.inspect(&containers[0], "{{.State.StartedAt}}"),
        started_at,
        "not restarted"
    );
    let logs_after = std::fs::read_dir(env.state.join("logs/feature-keep"))
        .unwrap()
        .count();
    assert_eq!(logs_after, logs, "no new build log: nothing was rebuilt");
    let row = eventually(Duration::from_secs(5), "ls shows it live", || {
        env.row("feature/keep").filter(|r| r["state"] == "live")
    });
    assert_eq!(row["slug"], "feature-keep");
    let log = env.daemon_log();
    let second_start = log.split("--- restart ---").nth(1).unwrap_or_default();
    assert!(
        !second_start.contains("deploying"),
        "the second start deployed again:\n{log}"
    );
}
