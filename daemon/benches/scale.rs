//! `cargo bench -p previewd --bench scale`: the pure part of a reconcile pass at scale — scan a
//! bare mirror of 1,000 branches, assign slugs, plan against an inventory that already holds
//! every preview — timed with `Instant`, median and p90 of `SCALE_ITERS` runs (default 20).
//! Method and figures: docs/BENCHMARKS.md, "Scale".
//!
//! The mirror is built with `git fast-import` in a temp dir: a linear `main` of
//! `SCALE_MAIN_COMMITS` commits (default 500), and `SCALE_BRANCHES` branches (default 1,000):
//! - 1 in 10 points at a commit of main (merged by ancestry);
//! - 1 in 10 forks from main and adds a file that main adds again three commits later, with
//!   another message (a rebase merge: only the patch-id rule calls it merged);
//! - the other 8 in 10 fork from main at points spread over its last `SCALE_FORK_SPAN` commits
//!   (default: all of them) and add 1–3 commits of their own (unmerged, distinct tips): every
//!   one of them goes through the whole patch-id check.
//!
//! No Docker and no network: the inventory is synthetic, one running container, one image and
//! one network per wanted preview, labelled as previewd labels them, so the plan is the
//! steady state of a host with that many live previews (no actions).

// A benchmark measures wall time on purpose.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use previewd::engine::{ContainerInfo, ImageInfo, Inventory, NetworkInfo};
use previewd::merged::{MergedCache, MergedRule};
use previewd::mirror::{self, Desired};
use previewd::model::{FailedBuild, Lifetime, PreviewRef, Unreadable};
use previewd::reconcile::plan::{self, Flight, World};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

/// What the fixture should scan to.
struct Expected {
    wanted: usize,
    merged: usize,
}

/// Writes the fast-import stream of the fixture described at the top of this file.
fn fast_import_stream(
    main_commits: usize,
    branches: usize,
    fork_span: usize,
) -> (Vec<u8>, Expected) {
    let mut s = Vec::new();
    let t0: u64 = 1_700_000_000;
    let commit = |s: &mut Vec<u8>,
                  refname: &str,
                  mark: usize,
                  time: u64,
                  from: Option<usize>,
                  msg: &str,
                  path: &str,
                  content: &str| {
        writeln!(s, "commit {refname}").unwrap();
        writeln!(s, "mark :{mark}").unwrap();
        writeln!(s, "committer bench <bench@previewd.invalid> {time} +0000").unwrap();
        writeln!(s, "data {}\n{msg}", msg.len()).unwrap();
        if let Some(from) = from {
            writeln!(s, "from :{from}").unwrap();
        }
        writeln!(s, "M 100644 inline {path}").unwrap();
        writeln!(s, "data {}\n{content}", content.len()).unwrap();
        writeln!(s).unwrap();
    };

    // Rebase-merged branch k forks at main commit `4 + 5k - 3` and lands at `4 + 5k`.
    let landed: Vec<usize> = (0..branches).filter(|j| j % 10 == 1).collect();
    let lands_at = |k: usize| 4 + 5 * k;
    assert!(
        landed.is_empty() || lands_at(landed.len() - 1) < main_commits,
        "SCALE_MAIN_COMMITS too small for {} rebase-merged branches",
        landed.len()
    );
    let mut landing: BTreeMap<usize, usize> = BTreeMap::new();
    for (k, &j) in landed.iter().enumerate() {
        landing.insert(lands_at(k), j);
    }
    // Main commit i has mark i + 1.
    let main_mark = |i: usize| i + 1;
    for i in 0..main_commits {
        let (path, content, msg) = match landing.get(&i) {
            Some(j) => (
                format!("landed/{j}"),
                format!("work of branch {j}\n"),
                format!("land branch {j}"),
            ),
            None => (
                format!("main/{i}"),
                format!("main {i}\n"),
                format!("main {i}"),
            ),
        };
        let from = i.checked_sub(1).map(main_mark);
        let time = t0 + 60 * i as u64;
        commit(
            &mut s,
            "refs/heads/main",
            main_mark(i),
            time,
            from,
            &msg,
            &path,
            &content,
        );
    }

    let names = ["feature", "fix", "Feature", "chore", "exp"];
    let mut mark = main_commits + 1;
    let mut expected = Expected {
        wanted: 0,
        merged: 0,
    };
    let mut landed_k = 0;
    for j in 0..branches {
        // Realistic names: slashes, capitals, underscores; slug collisions are rare.
        let name = format!("{}/topic_{j}-Work", names[j % names.len()]);
        let refname = format!("refs/heads/{name}");
        match j % 10 {
            0 => {
                let at = main_mark((j * 13) % main_commits);
                writeln!(s, "reset {refname}\nfrom :{at}\n").unwrap();
                expected.merged += 1;
            }
            1 => {
                let fork = lands_at(landed_k) - 3;
                let time = t0 + 60 * fork as u64 + 30;
                mark += 1;
                let content = format!("work of branch {j}\n");
                let path = format!("landed/{j}");
                let msg = format!("branch {j}: the change");
                let from = Some(main_mark(fork));
                commit(&mut s, &refname, mark, time, from, &msg, &path, &content);
                landed_k += 1;
                expected.merged += 1;
            }
            _ => {
                let fork = main_commits - 1 - (j * 37) % fork_span;
                let mut from = main_mark(fork);
                for c in 0..=(j % 3) {
                    mark += 1;
                    let time = t0 + 60 * fork as u64 + 10 + c as u64;
                    let content = format!("branch {j} commit {c}\n");
                    let path = format!("work/{j}/{c}");
                    let msg = format!("branch {j} commit {c}");
                    commit(
                        &mut s,
                        &refname,
                        mark,
                        time,
                        Some(from),
                        &msg,
                        &path,
                        &content,
                    );
                    from = mark;
                }
                expected.wanted += 1;
            }
        }
    }
    (s, expected)
}

fn build_mirror(dir: &Path, main_commits: usize, branches: usize, fork_span: usize) -> Expected {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git installed");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir_s = dir.to_str().unwrap();
    git(&["init", "-q", "--bare", "-b", "main", dir_s]);
    let (stream, expected) = fast_import_stream(main_commits, branches, fork_span);
    let mut child = Command::new("git")
        .args(["--git-dir", dir_s, "fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success(), "git fast-import failed");
    expected
}

/// Slugs as the reconciler assigns them (no deploys in flight).
fn assign(
    desired: &Desired,
    inventory: &Inventory,
) -> (BTreeMap<String, PreviewRef>, BTreeMap<String, Unreadable>) {
    plan::assign(desired, inventory, std::iter::empty())
}

/// One running container, one image and one network per wanted preview, at its tip.
fn inventory_of(wanted: &BTreeMap<String, PreviewRef>) -> Inventory {
    let mut inv = Inventory::default();
    for (n, p) in wanted.values().enumerate() {
        let upstream = SocketAddr::from(([172, 30, (n / 250) as u8, (n % 250 + 2) as u8], 8080));
        inv.containers.push(ContainerInfo {
            id: format!("{:064x}", 0xc000_0000u64 + n as u64),
            name: format!("previewd-scale-{}-app-{}", p.slug, p.short()),
            branch: p.branch.clone(),
            slug: p.slug.clone(),
            commit: p.commit.clone(),
            service: "app".into(),
            lifetime: Lifetime::Commit,
            job: false,
            web: true,
            exit_code: None,
            running: true,
            upstream: Some(upstream),
        });
        inv.images.push(ImageInfo {
            id: format!("{:064x}", 0x1000_0000u64 + n as u64),
            branch: p.branch.clone(),
            slug: p.slug.clone(),
            tags: vec![format!("previewd-scale/{}:{}", p.slug, p.short())],
        });
        inv.networks.push(NetworkInfo {
            id: format!("{:064x}", 0x2000_0000u64 + n as u64),
            name: format!("previewd-scale-{}", p.slug),
            branch: p.branch.clone(),
            slug: p.slug.clone(),
        });
    }
    inv
}

/// Runs `f` `iters` times after one untimed warm-up; the sorted durations.
fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    std::hint::black_box(f());
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(label: &str, samples: &[Duration]) {
    let p90 = samples[(samples.len() * 9).div_ceil(10) - 1];
    println!(
        "| {label} | {:.2} | {:.2} | {:.2} |",
        ms(samples[samples.len() / 2]),
        ms(p90),
        ms(samples[0]),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, once, small.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let iters = if smoke { 1 } else { knob("SCALE_ITERS", 20) };
    let main_commits = knob("SCALE_MAIN_COMMITS", 500);
    let branches = knob("SCALE_BRANCHES", 1_000);
    let fork_span = knob("SCALE_FORK_SPAN", main_commits).clamp(1, main_commits);

    let tmp = tempfile::tempdir().unwrap();
    let mirror_dir = tmp.path().join("mirror.git");
    let built = Instant::now();
    let expected = build_mirror(&mirror_dir, main_commits, branches, fork_span);
    let built = built.elapsed();
    let rule = MergedRule::PatchId;

    // Correctness first: the fixture scans to what it was built to be.
    let mut warm_cache = MergedCache::new();
    let desired = mirror::scan(&mirror_dir, "main", rule, &mut warm_cache).unwrap();
    assert!(desired.main.is_some());
    assert!(desired.unreadable.is_empty(), "{:?}", desired.unreadable);
    assert_eq!(desired.branches.len(), expected.wanted, "unmerged branches");
    assert_eq!(
        branches - desired.branches.len(),
        expected.merged,
        "merged branches"
    );

    let (wanted0, _) = assign(&desired, &Inventory::default());
    let inventory = inventory_of(&wanted0);
    let (wanted, unreadable) = assign(&desired, &inventory);
    assert_eq!(wanted, wanted0, "owners keep their slugs");
    let in_flight: BTreeMap<String, Flight> = BTreeMap::new();
    let failed: BTreeMap<String, FailedBuild> = BTreeMap::new();
    let world = World {
        wanted: &wanted,
        unreadable: &unreadable,
        inventory: &inventory,
        in_flight: &in_flight,
        failed: &failed,
    };
    assert!(plan::plan(&world).is_empty(), "steady state: nothing to do");
    let url = |slug: &str| format!("https://{slug}.preview.localhost:8443/");

    let scan_cold = time(iters, || {
        let mut cache = MergedCache::new();
        mirror::scan(&mirror_dir, "main", rule, &mut cache).unwrap()
    });
    let scan_warm = time(iters, || {
        mirror::scan(&mirror_dir, "main", rule, &mut warm_cache).unwrap()
    });
    let scan_ancestry = time(iters, || {
        let mut cache = MergedCache::new();
        mirror::scan(&mirror_dir, "main", MergedRule::Ancestry, &mut cache).unwrap()
    });
    let slugs = time(iters, || assign(&desired, &inventory));
    let planned = time(iters, || plan::plan(&world));
    let published = time(iters, || {
        (plan::routes(&world), plan::statuses(&world, url))
    });
    let pass = time(iters, || {
        let desired = mirror::scan(&mirror_dir, "main", rule, &mut warm_cache).unwrap();
        let (wanted, unreadable) = assign(&desired, &inventory);
        let world = World {
            wanted: &wanted,
            unreadable: &unreadable,
            inventory: &inventory,
            in_flight: &in_flight,
            failed: &failed,
        };
        let actions = plan::plan(&world);
        // A pass publishes twice: before and after applying.
        for _ in 0..2 {
            std::hint::black_box((plan::routes(&world), plan::statuses(&world, url)));
        }
        actions
    });

    println!(
        "scale: mirror of {branches} branches ({} unmerged, forked from the last {fork_span} \
         commits of main; {} merged) over a main of {main_commits} commits, built in {:.2} s; \
         {iters} runs each, ms",
        expected.wanted,
        expected.merged,
        built.as_secs_f64()
    );
    println!();
    println!("| step | median | p90 | min |");
    println!("|---|---:|---:|---:|");
    row("`mirror::scan`, patch-id, cold cache", &scan_cold);
    row("`mirror::scan`, patch-id, warm cache", &scan_warm);
    row("`mirror::scan`, ancestry only", &scan_ancestry);
    row("slugs: owners from labels + `slug::assign`", &slugs);
    row("`plan::plan` (steady state, no actions)", &planned);
    row("`plan::routes` + `plan::statuses`", &published);
    row(
        "**pure pass: warm scan + slugs + plan + 2 x publish**",
        &pass,
    );
    let median = pass[pass.len() / 2];
    let verdict = if median < Duration::from_millis(50) {
        "within"
    } else {
        "over"
    };
    println!();
    println!(
        "pure pass median {:.1} ms: {verdict} the 50 ms aim",
        ms(median)
    );
}
