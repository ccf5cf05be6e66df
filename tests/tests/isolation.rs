//! Previews cannot reach each other: each runs on a network of its own, and a container of
//! one preview gets no answer from another preview's container, while it reaches itself.

use std::process::Command;
use std::time::Duration;

use previewd_e2e::{test_env, Env};

const LIVE: Duration = Duration::from_secs(120);

fn container_of(env: &Env, slug: &str) -> String {
    env.objects("container", &[&format!("previewd.slug={slug}")])
        .remove(0)
}

/// A `GET /` sent from inside `container` to `ip:8080` with busybox `nc` (its `wget`, built
/// statically against glibc, cannot resolve even a numeric address in a scratch image);
/// what came back, if anything.
fn fetch_from(container: &str, ip: &str) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {ip} 8080");
    let out = Command::new("docker")
        .args(["exec", container, "/bin/busybox", "sh", "-c", &script])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_preview_cannot_reach_another_previews_containers() {
    let mut env = test_env!("isolation");
    env.start();
    env.push(&["main"]);
    for branch in ["left", "right"] {
        env.commit_site(branch, &format!("{branch}\n"));
        env.push(&[branch]);
    }
    env.wait_for_body("left", "left\n", LIVE);
    env.wait_for_body("right", "right\n", LIVE);
    let (left, right) = (container_of(&env, "left"), container_of(&env, "right"));
    let network = |id: &str| {
        env.inspect(
            id,
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        )
    };
    assert_ne!(
        network(&left),
        network(&right),
        "each preview has its own network"
    );

    // The probe works inside a preview: it reaches its own app.
    let text = fetch_from(&left, "127.0.0.1");
    assert!(
        text.starts_with("HTTP/1.") && text.ends_with("\r\n\r\nleft\n"),
        "{text}"
    );
    // The other preview's app, by address, gets no answer.
    let right_ip = env.inspect(
        &right,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert!(!right_ip.is_empty());
    let text = fetch_from(&left, &right_ip);
    assert!(
        !text.contains("right\n"),
        "left reached right's app at {right_ip}: {text}"
    );
    // And right's app does answer on that address, from its own network.
    let text = fetch_from(&right, &right_ip);
    assert!(text.ends_with("\r\n\r\nright\n"), "{text}");
}
