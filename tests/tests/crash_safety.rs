//! Crash safety: previewd is SIGKILLed at random moments while it builds, starts, swaps and
//! tears down previews, and started again. Every time it must converge, within 10 s, to
//! exactly one serving container per live branch, nothing at all for merged or deleted
//! branches, and records it can still read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use previewd_e2e::{test_env, Env};

/// The bar: at least 20 kills per run.
const KILLS: usize = 20;
/// The bound for converging after a restart.
const CONVERGE: Duration = Duration::from_secs(10);

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What git says now: live branches with the content they serve, and slugs that must be gone.
#[derive(Default)]
struct Expected {
    live: BTreeMap<String, (String, String)>,
    gone: BTreeSet<String>,
}

/// Commits `content` to `www/<branch>.txt` on `branch` (created from main if new). Each
/// branch touches only its own file, so merges never conflict.
fn commit_file(env: &Env, branch: &str, content: &str) -> String {
    env.checkout(branch);
    std::fs::write(env.work.join(format!("www/{branch}.txt")), content).unwrap();
    env.git(&["add", "-A"]);
    env.git(&["commit", "-q", "-m", content]);
    env.git(&["rev-parse", "HEAD"]).trim().to_owned()
}

/// One check of the whole world; `Err` says what is not there yet.
fn check(env: &Env, expected: &Expected) -> Result<(), String> {
    for (branch, (commit, content)) in &expected.live {
        let slug = branch.as_str();
        let containers = env.objects("container", &[&format!("previewd.slug={slug}")]);
        if containers.len() != 1 {
            return Err(format!("{branch}: {} containers", containers.len()));
        }
        let label = env.inspect(
            &containers[0],
            "{{index .Config.Labels \"previewd.commit\"}}",
        );
        if &label != commit {
            return Err(format!("{branch}: container at {label}, tip is {commit}"));
        }
        let (status, body) = env.get(slug, &format!("/{branch}.txt"));
        if status != 200 || &body != content {
            return Err(format!("{branch}: answered {status} {body:?}"));
        }
    }
    for slug in &expected.gone {
        let left = env
            .objects("container", &[&format!("previewd.slug={slug}")])
            .len()
            + env
                .objects("image", &[&format!("previewd.slug={slug}")])
                .len()
            + env
                .objects("network", &[&format!("previewd.slug={slug}")])
                .len();
        if left > 0 {
            return Err(format!("{slug}: {left} objects left after merge or delete"));
        }
    }
    let all = env.objects("container", &[]).len();
    if all != expected.live.len() {
        return Err(format!(
            "{all} containers for {} live branches",
            expected.live.len()
        ));
    }
    let volumes = env.objects("volume", &[]).len();
    if volumes > 0 {
        return Err(format!("{volumes} volumes of this instance"));
    }
    Ok(())
}

/// previewd's own records must stay readable: nothing set aside as corrupt, every record
/// parses.
fn assert_records_readable(env: &Env) {
    let Ok(entries) = std::fs::read_dir(env.state.join("builds")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        assert!(
            path.extension().is_some_and(|e| e == "json"),
            "unexpected record {}",
            path.display()
        );
        let bytes = std::fs::read(&path).unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or_else(|e| panic!("record {} unreadable: {e}", path.display()));
    }
}

#[test]
fn sigkill_at_random_moments_always_converges() {
    let seed = std::env::var("PREVIEWD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) | 1
        });
    eprintln!("crash test seed: {seed} (replay with PREVIEWD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let mut env = test_env!("crash");
    env.start();
    env.push(&["main"]);
    let mut expected = Expected::default();
    let mut made = 0;

    for round in 0..KILLS {
        // One change per round, of the kinds that exercise build, start, swap and teardown.
        let choice = rng.below(4);
        let action = if expected.live.len() < 2 || (choice == 0 && expected.live.len() < 4) {
            made += 1;
            let branch = format!("c{made}");
            let content = format!("{branch} v1\n");
            let commit = commit_file(&env, &branch, &content);
            env.push(&[&branch]);
            expected.live.insert(branch.clone(), (commit, content));
            format!("new {branch}")
        } else {
            let pick = rng.below(expected.live.len() as u64) as usize;
            let branch = expected.live.keys().nth(pick).unwrap().clone();
            match choice {
                1 => {
                    env.git(&["checkout", "-q", "main"]);
                    env.git(&["merge", "-q", "--no-ff", "-m", "merge", &branch]);
                    env.push(&["main"]);
                    expected.live.remove(&branch);
                    expected.gone.insert(branch.clone());
                    format!("merge {branch}")
                }
                2 => {
                    env.push(&[&format!(":{branch}")]);
                    env.git(&["checkout", "-q", "main"]);
                    env.git(&["branch", "-q", "-D", &branch]);
                    expected.live.remove(&branch);
                    expected.gone.insert(branch.clone());
                    format!("delete {branch}")
                }
                _ => {
                    let content = format!("{branch} v{round}\n");
                    let commit = commit_file(&env, &branch, &content);
                    env.push(&[&branch]);
                    expected.live.insert(branch.clone(), (commit, content));
                    format!("update {branch}")
                }
            }
        };

        // The kill lands somewhere in the work the push started: build, start, swap,
        // teardown, or after it all.
        let delay = Duration::from_millis(rng.below(3000));
        std::thread::sleep(delay);
        env.kill();
        eprintln!("round {round}: {action}, killed after {delay:?}");

        let restarted = Instant::now();
        env.start();
        let mut last = String::new();
        while Instant::now() - restarted < CONVERGE {
            match check(&env, &expected) {
                Ok(()) => break,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(why) = check(&env, &expected) {
            panic!(
                "round {round} ({action}, killed after {delay:?}): not converged {CONVERGE:?} after restart: {why} (before: {last}); seed {seed}"
            );
        }
        assert_records_readable(&env);
    }
}
