//! Preview networks take small subnets from previewd's own pool, so a stock engine holds
//! hundreds of previews; when the pool is full, the one preview that finds no subnet fails
//! and says why, the others keep serving, and a freed subnet is taken by the next push.

use std::time::Duration;

use previewd_e2e::{eventually, test_env, Env};

const LIVE: Duration = Duration::from_secs(120);

fn subnet_of(env: &Env, slug: &str) -> String {
    let network = env
        .objects("network", &[&format!("previewd.slug={slug}")])
        .remove(0);
    env.inspect(&network, "{{(index .IPAM.Config 0).Subnet}}")
}

#[test]
fn previews_take_subnets_from_the_pool_and_a_full_pool_fails_one_preview_visibly() {
    let mut env = test_env!("netpool");
    let config = env.root.join("previewd.toml");
    // Two /28 subnets in all.
    std::fs::write(
        &config,
        "[network]\npool = \"10.212.0.0/27\"\nsubnet_size = 28\n",
    )
    .unwrap();
    env.daemon_args(&["--config", config.to_str().unwrap()]);
    env.start();
    env.push(&["main"]);
    for branch in ["a", "b"] {
        env.commit_site(branch, &format!("{branch}\n"));
        env.push(&[branch]);
    }
    env.wait_for_body("a", "a\n", LIVE);
    env.wait_for_body("b", "b\n", LIVE);
    let mut subnets = vec![subnet_of(&env, "a"), subnet_of(&env, "b")];
    subnets.sort();
    assert_eq!(subnets, ["10.212.0.0/28", "10.212.0.16/28"]);

    env.commit_site("c", "c\n");
    env.push(&["c"]);
    eventually(LIVE, "c fails for want of a subnet", || {
        env.row("c").filter(|r| r["state"] == "failed")
    });
    let (status, page) = env.get("c", "/");
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("no free subnet"), "{page}");
    assert!(page.contains("10.212.0.0/27"), "{page}");
    assert_eq!(
        env.get("a", "/"),
        (200, "a\n".into()),
        "the others keep serving"
    );

    // a goes, and c's next push takes its subnet.
    env.push(&[":a"]);
    eventually(LIVE, "a's network is removed", || {
        env.objects("network", &["previewd.slug=a"])
            .is_empty()
            .then_some(())
    });
    env.commit_site("c", "c again\n");
    env.push(&["c"]);
    env.wait_for_body("c", "c again\n", LIVE);
    assert!(subnet_of(&env, "c").starts_with("10.212.0."));
}
