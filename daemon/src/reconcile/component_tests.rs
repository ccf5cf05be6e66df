//! The reconciler over a real git mirror and the in-memory engine: the whole loop (triggers,
//! passes, deploy tasks, reports, policy) without Docker. The end-to-end suite runs the same
//! paths on the real engine; these pin the loop's decisions and run in seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use previewd_proxy::{Route, RouteTable, SharedRoutes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{GcRequest, Reconciler, SharedStatus, Trigger};
use crate::config::{Config, RunArgs};
use crate::engine::fake::FakeEngine;
use crate::engine::{Engine, Inventory};
use crate::model::{Lifetime, PreviewRef, PreviewState, PreviewStatus};
use crate::test_git::git;

const DOMAIN: &str = "preview.localhost";
const DOCKERFILE: &str = "FROM scratch\nEXPOSE 8080\n";
/// A bound for a loop that hangs, not a speed target: the passes here take milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// One reconciler, its mirror, a work tree that pushes to it, and the engine it drives.
struct World {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    engine: FakeEngine,
    config: Arc<Config>,
    routes: SharedRoutes,
    status: SharedStatus,
    loop_: Option<Loop>,
}

struct Loop {
    triggers: mpsc::Sender<Trigger>,
    _gc: mpsc::Sender<GcRequest>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (mirror, work) = (root.join("mirror.git"), root.join("work"));
        git(
            &root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                mirror.to_str().unwrap(),
            ],
        );
        git(&root, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        std::fs::write(work.join("Dockerfile"), DOCKERFILE).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "main"]);
        git(
            &work,
            &["remote", "add", "origin", mirror.to_str().unwrap()],
        );
        git(&work, &["push", "-q", "origin", "main"]);
        let args = RunArgs {
            state_dir: Some(root.join("state")),
            mirror: Some(mirror),
            instance: Some("t".into()),
            ..RunArgs::default()
        };
        let config = Arc::new(Config::load(&args).unwrap());
        World {
            _tmp: tmp,
            work,
            engine: FakeEngine::new("t"),
            config,
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::new())),
            status: SharedStatus::default(),
            loop_: None,
        }
    }

    /// Starts the reconcile loop (again, after [`World::stop`]): a fresh reconciler remembers
    /// nothing, as after a restart of previewd.
    fn start(&mut self) {
        let (triggers, triggers_rx) = mpsc::channel(16);
        let (gc, gc_rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let reconciler = Reconciler::new(
            self.config.clone(),
            self.engine.clone(),
            self.routes.clone(),
            self.status.clone(),
        );
        let task = tokio::spawn(reconciler.run(triggers_rx, gc_rx, shutdown.clone()));
        self.loop_ = Some(Loop {
            triggers,
            _gc: gc,
            shutdown,
            task,
        });
    }

    async fn stop(&mut self) {
        if let Some(l) = self.loop_.take() {
            l.shutdown.cancel();
            l.task.await.unwrap();
        }
    }

    /// Runs a pass now, as the hook's poke does, and answers the `ls` rows after it.
    async fn poke(&self) -> Vec<PreviewStatus> {
        let (reply, rows) = oneshot::channel();
        let l = self.loop_.as_ref().expect("the loop runs");
        l.triggers
            .send(Trigger { reply: Some(reply) })
            .await
            .unwrap();
        rows.await.unwrap()
    }

    /// Commits `files` on `branch` (from main when new) and pushes it. Returns the commit.
    fn push(&self, branch: &str, files: &[(&str, &str)]) -> String {
        let exists = git(&self.work, &["branch", "--list", branch]);
        if exists.trim().is_empty() {
            git(&self.work, &["checkout", "-q", "-b", branch, "main"]);
        } else {
            git(&self.work, &["checkout", "-q", branch]);
        }
        for (path, text) in files {
            let path = self.work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", branch]);
        git(&self.work, &["push", "-q", "-f", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn delete(&self, branch: &str) {
        git(&self.work, &["push", "-q", "origin", &format!(":{branch}")]);
    }

    fn route(&self, slug: &str) -> Option<Route> {
        self.routes.load().get(&format!("{slug}.{DOMAIN}")).cloned()
    }

    async fn inventory(&self) -> Inventory {
        self.engine.inventory().await.unwrap()
    }

    /// Pokes until `check` holds of the world; panics with the last rows after [`PATIENCE`].
    async fn until(&self, what: &str, mut check: impl FnMut(&World, &[PreviewStatus]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.poke().await;
            if check(self, &rows) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} within {PATIENCE:?}: rows {rows:?}, routes {:?}",
                self.routes.load()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn build_log(&self, slug: &str, commit: &str) -> PathBuf {
        crate::state::Records::new(&self.config.state_dir).log_path(slug, &commit[..12])
    }
}

fn state_of<'a>(rows: &'a [PreviewStatus], slug: &str) -> Option<&'a PreviewStatus> {
    rows.iter().find(|r| r.slug == slug)
}

fn live_at(rows: &[PreviewStatus], slug: &str, commit: &str) -> bool {
    state_of(rows, slug).is_some_and(|r| r.state == PreviewState::Live && r.commit == commit)
}

/// What the route of `slug` answers: the body of `GET /` from its upstream.
async fn answer(world: &World, slug: &str) -> Option<String> {
    let Some(Route::Live { upstream }) = world.route(slug) else {
        return None;
    };
    let mut stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

#[tokio::test]
async fn a_push_goes_live_and_the_next_swaps_make_before_break() {
    let mut w = World::new();
    w.start();
    let v1 = w.push("feature/a", &[("www/index.html", "one")]);
    w.until("live at v1", |_, rows| live_at(rows, "feature-a", &v1))
        .await;
    assert_eq!(
        answer(&w, "feature-a").await.as_deref(),
        Some(format!("feature-a {v1}").as_str())
    );
    assert!(w.build_log("feature-a", &v1).exists());

    let v2 = w.push("feature/a", &[("www/index.html", "two")]);
    w.until("live at v2", |_, rows| live_at(rows, "feature-a", &v2))
        .await;
    // Traffic moved first: the old container drains before it goes.
    assert_eq!(
        answer(&w, "feature-a").await.as_deref(),
        Some(format!("feature-a {v2}").as_str())
    );
    let inventory = w.inventory().await;
    assert!(
        inventory.containers.iter().any(|c| c.commit == v1),
        "the superseded container still drains: {inventory:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        w.poke().await;
        let inventory = w.inventory().await;
        let commits: Vec<&str> = inventory
            .containers
            .iter()
            .map(|c| c.commit.as_str())
            .collect();
        let tags: Vec<&String> = inventory.images.iter().flat_map(|i| &i.tags).collect();
        if commits == [v2.as_str()] && tags.len() == 1 {
            assert!(tags[0].ends_with(&v2[..12]), "{tags:?}");
            break;
        }
        assert!(Instant::now() < deadline, "old objects stay: {inventory:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.engine.builds().len(), 2);
    w.stop().await;
}

#[tokio::test]
async fn a_commit_with_a_tree_already_built_is_tagged_not_rebuilt() {
    let mut w = World::new();
    w.start();
    let v1 = w.push("same", &[("a.txt", "a")]);
    w.until("live", |_, rows| live_at(rows, "same", &v1)).await;
    // Same tree, new commit: an amended message, say.
    let v2 = w.push("same", &[]);
    assert_ne!(v1, v2);
    w.until("live at the new commit", |_, rows| {
        live_at(rows, "same", &v2)
    })
    .await;
    assert_eq!(w.engine.builds(), [format!("same:{}", &v1[..12])]);
    w.stop().await;
}

#[tokio::test]
async fn a_failed_build_is_shown_not_retried_and_the_last_good_version_serves() {
    let mut w = World::new();
    w.start();
    let good = w.push("b", &[("a.txt", "a")]);
    w.until("live", |_, rows| live_at(rows, "b", &good)).await;
    let bad = w.push("b", &[("Dockerfile", "FROM scratch\nRUN false\n")]);
    w.until("failed", |_, rows| {
        state_of(rows, "b").is_some_and(|r| r.state == PreviewState::Failed && r.commit == bad)
    })
    .await;
    assert_eq!(
        answer(&w, "b").await.as_deref(),
        Some(format!("b {good}").as_str()),
        "the last good version keeps serving"
    );
    let log = std::fs::read_to_string(w.build_log("b", &bad)).unwrap();
    assert!(log.contains("returned a non-zero code"), "{log}");
    // More passes, and a restart of previewd: the failed commit is not built again.
    for _ in 0..3 {
        w.poke().await;
    }
    w.stop().await;
    w.start();
    w.until("failed after a restart", |_, rows| {
        state_of(rows, "b").is_some_and(|r| r.state == PreviewState::Failed)
    })
    .await;
    assert_eq!(w.engine.builds().len(), 2, "{:?}", w.engine.builds());
    w.stop().await;
}

#[tokio::test]
async fn deleting_a_branch_removes_its_whole_stack_and_nothing_else() {
    let mut w = World::new();
    w.start();
    let keep = w.push("keep", &[("k.txt", "k")]);
    let gone = w.push("gone", &[("g.txt", "g")]);
    w.until("both live", |_, rows| {
        live_at(rows, "keep", &keep) && live_at(rows, "gone", &gone)
    })
    .await;
    let preview = |slug: &str, commit: &str| PreviewRef {
        branch: slug.into(),
        slug: slug.into(),
        commit: commit.into(),
    };
    w.engine
        .add_volume("gone-data", &preview("gone", &gone), Lifetime::Preview);
    w.engine
        .add_volume("keep-data", &preview("keep", &keep), Lifetime::Preview);
    w.engine.add_foreign_volume("gone-data-by-hand");

    w.delete("gone");
    w.until("gone retired", |w, rows| {
        state_of(rows, "gone").is_none() && matches!(w.route("gone"), Some(Route::Gone))
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let inventory = w.inventory().await;
        let left = inventory
            .stacks()
            .get("gone")
            .map(|s| s.containers.len() + s.images.len() + s.networks.len() + s.volumes.len());
        if left.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "left of gone: {inventory:?}");
        w.poke().await;
    }
    let inventory = w.inventory().await;
    let keep_stack = &inventory.stacks()["keep"];
    assert_eq!(keep_stack.containers.len(), 1);
    assert_eq!(
        keep_stack.volumes.len(),
        1,
        "the other preview's volume stays"
    );
    assert!(w.engine.foreign_volumes().contains("gone-data-by-hand"));
    assert!(live_at(&w.poke().await, "keep", &keep));
    w.stop().await;
}

#[tokio::test]
async fn an_engine_outage_during_a_deploy_is_retried_not_recorded_as_a_failure() {
    let mut w = World::new();
    w.engine.hold_builds();
    w.start();
    let tip = w.push("flaky", &[("f.txt", "f")]);
    w.until("building", |w, _| !w.engine.builds().is_empty())
        .await;
    // The engine freezes under the build; it comes back a moment later.
    w.engine.set_down(true);
    w.engine.release_builds();
    w.until("the build met the outage", |w, _| {
        w.engine.failed_calls().contains(&"build image")
    })
    .await;
    w.engine.set_down(false);
    w.until("live after the engine is back", |_, rows| {
        live_at(rows, "flaky", &tip)
    })
    .await;
    assert!(
        !w.config.state_dir.join("builds/flaky.failed.json").exists(),
        "an engine failure is not the commit's"
    );
    assert_eq!(w.engine.builds().len(), 2, "built again after the outage");
    w.stop().await;
}

#[tokio::test]
async fn a_crashing_app_is_restarted_within_its_budget_then_shown_as_failed() {
    let mut w = World::new();
    w.start();
    let tip = w.push("crash", &[("c.txt", "c")]);
    w.until("live", |_, rows| live_at(rows, "crash", &tip))
        .await;
    let id = w.inventory().await.containers[0].id.clone();
    for attempt in 1..=3 {
        w.engine.crash(&id);
        w.until(&format!("started again ({attempt})"), |w, rows| {
            live_at(rows, "crash", &tip) && matches!(w.route("crash"), Some(Route::Live { .. }))
        })
        .await;
    }
    w.engine.crash(&id);
    w.until("given up", |_, rows| {
        state_of(rows, "crash").is_some_and(|r| r.state == PreviewState::Failed)
    })
    .await;
    match w.route("crash") {
        Some(Route::Failed { log_tail, .. }) => {
            assert!(log_tail.contains("stopped 4 times"), "{log_tail}");
            assert!(log_tail.contains("the app crashed"), "{log_tail}");
        }
        other => panic!("expected a failure page, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test]
async fn a_restarted_reconciler_adopts_what_runs_without_rebuilding() {
    let mut w = World::new();
    w.start();
    let a = w.push("a", &[("a.txt", "a")]);
    w.until("live", |_, rows| live_at(rows, "a", &a)).await;
    let before = w.inventory().await;
    w.stop().await;

    w.start();
    w.until("live again", |_, rows| live_at(rows, "a", &a))
        .await;
    assert_eq!(w.inventory().await.containers, before.containers);
    assert_eq!(w.engine.builds().len(), 1);
    w.stop().await;
}
