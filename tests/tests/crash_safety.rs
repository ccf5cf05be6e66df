//! Crash safety: previewd is SIGKILLed at random moments while it builds, starts, swaps and
//! tears down previews, and started again. Every time, within 10 s of the restart, the right
//! deploy must be live or in flight and nothing else may exist: each live branch serves its
//! tip from exactly one container, or `ls` shows its tip building with at most the last good
//! version beside it; merged and deleted branches have nothing left; records stay readable.
//! A build is not asked to finish inside those 10 s (a slow machine rebuilds slowly), but at
//! the end every branch must serve its tip.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use previewd_e2e::{test_env, Env};

/// The bar: at least 20 kills per run.
const KILLS: usize = 20;
/// The bound for converging after a restart.
const CONVERGE: Duration = Duration::from_secs(10);
/// A bound for a deploy that never ends, not a speed target: after the last round every
/// in-flight deploy must reach live within this.
const SETTLE: Duration = Duration::from_secs(300);

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

/// Where the world stands: every branch serving its tip, or some tips still deploying.
#[derive(Debug, PartialEq)]
enum Converged {
    Settled,
    InFlight(Vec<String>),
}

/// One check of the whole world; `Err` says what is wrong or not there yet.
fn check(env: &Env, expected: &Expected) -> Result<Converged, String> {
    let rows = env.try_ls().ok_or("previewd ls does not answer")?;
    let mut in_flight = Vec::new();
    let mut containers_of_live = 0;
    for (branch, (commit, content)) in &expected.live {
        let slug = branch.as_str();
        let containers = env.objects("container", &[&format!("previewd.slug={slug}")]);
        containers_of_live += containers.len();
        let commits: Vec<String> = containers
            .iter()
            .map(|c| env.inspect(c, "{{index .Config.Labels \"previewd.commit\"}}"))
            .collect();
        let at_tip = commits.iter().filter(|c| *c == commit).count();
        let (status, body) = env.get(slug, &format!("/{branch}.txt"));
        if at_tip == 1 && commits.len() == 1 && status == 200 && &body == content {
            continue;
        }
        // Not serving its tip yet: then the tip's deploy must be under way, beside at most
        // one older version (the last good one, still serving, or draining after a swap).
        let row = rows.iter().find(|r| r["branch"] == branch.as_str());
        let deploying = row.is_some_and(|r| {
            r["commit"] == commit.as_str()
                && matches!(r["state"].as_str(), Some("building" | "queued"))
        });
        if !deploying {
            return Err(format!(
                "{branch}: containers at {commits:?}, answered {status} {body:?}, ls {row:?}; tip is {commit}"
            ));
        }
        if commits.len() - at_tip > 1 || at_tip > 1 {
            return Err(format!(
                "{branch}: deploying its tip beside containers at {commits:?}"
            ));
        }
        in_flight.push(branch.clone());
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
    if all != containers_of_live {
        return Err(format!(
            "{all} containers, {containers_of_live} of them of the {} live branches",
            expected.live.len()
        ));
    }
    let volumes = env.objects("volume", &[]).len();
    if volumes > 0 {
        return Err(format!("{volumes} volumes of this instance"));
    }
    Ok(if in_flight.is_empty() {
        Converged::Settled
    } else {
        Converged::InFlight(in_flight)
    })
}

/// Polls until `check` says `done`, or panics with what was wrong after `limit`.
fn wait_for(
    env: &Env,
    expected: &Expected,
    limit: Duration,
    done: impl Fn(&Converged) -> bool,
    context: &str,
) -> Converged {
    let start = Instant::now();
    loop {
        let last = match check(env, expected) {
            Ok(state) if done(&state) => return state,
            Ok(state) => format!("{state:?}"),
            Err(why) => why,
        };
        if Instant::now() - start >= limit {
            panic!("{context}: not converged {limit:?} after restart: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

        env.start();
        let context = format!("round {round} ({action}, killed after {delay:?}), seed {seed}");
        let state = wait_for(&env, &expected, CONVERGE, |_| true, &context);
        if state != Converged::Settled {
            eprintln!("round {round}: converged with {state:?}");
        }
        assert_records_readable(&env);
    }
    let context = format!("after the last round, seed {seed}");
    wait_for(
        &env,
        &expected,
        SETTLE,
        |s| *s == Converged::Settled,
        &context,
    );
}
