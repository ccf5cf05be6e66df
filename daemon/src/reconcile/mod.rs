//! The level-triggered loop: every trigger (hook poke, ref watcher, Docker event, deploy
//! progress, periodic resync) runs the same pass — read git, read Docker, [`plan::plan`],
//! apply — and publishes a whole new route table. Triggers carry no payload, so a missed one
//! costs nothing.

mod collection;
#[cfg(test)]
mod component_tests;
pub mod deploy;
pub mod expiry;
pub mod plan;
pub mod policy;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use previewd_proxy::{Route, RouteTable, SharedRoutes};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::docker::DockerError;
use crate::engine::{Engine, Inventory};
use crate::merged::MergedCache;
use crate::mirror::{self, MirrorError};
use crate::model::{FailedBuild, PreviewRef, PreviewStatus, Unreadable};
use crate::state::Records;
use deploy::{DeployContext, DeployFailure, Phase};
use expiry::Expiry;
use plan::{Action, Flight, World};
use policy::{Policy, RestartVerdict, BACKOFF_FIRST, RESTART_WINDOW};

/// A request to reconcile now. A poke may ask for the previews' state after the pass.
#[derive(Debug, Default)]
pub struct Trigger {
    pub reply: Option<oneshot::Sender<Vec<PreviewStatus>>>,
}

/// The latest `previewd ls` rows, published after every pass.
pub type SharedStatus = Arc<ArcSwap<Vec<PreviewStatus>>>;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("reading the mirror panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How often the world is re-read when nothing triggered a pass.
const RESYNC: Duration = Duration::from_secs(30);
/// How often old build logs are looked for.
const LOG_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest wait between failing passes: a recovered engine is noticed within this.
const PASS_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One look at git and Docker, with the operator's limits applied.
struct Observed {
    inventory: Inventory,
    /// Previews git wants, by slug.
    wanted: BTreeMap<String, PreviewRef>,
    unreadable: BTreeMap<String, Unreadable>,
    /// Open branches whose previews the limits drop, by branch.
    expired: BTreeMap<String, Expiry>,
}

/// `previewd gc`: what collection would remove; with `apply`, a pass then removes it.
pub struct GcRequest {
    pub apply: bool,
    pub reply: oneshot::Sender<Result<Vec<String>, String>>,
}

struct InFlight {
    commit: String,
    branch: String,
    since: SystemTime,
    /// Waiting for a build slot.
    queued: bool,
    abort: AbortHandle,
}

/// What deploy tasks tell the loop, in order: queue phases while they run, then their end.
pub enum Report {
    Phase(Phase),
    Done {
        preview: PreviewRef,
        result: Result<(), DeployFailure>,
    },
}

pub struct Reconciler<E> {
    config: Arc<Config>,
    runtime: E,
    records: Records,
    routes: SharedRoutes,
    status: SharedStatus,
    builds: Arc<Semaphore>,
    in_flight: BTreeMap<String, InFlight>,
    failed: BTreeMap<String, FailedBuild>,
    /// Slugs retired since start, answered with a "gone" page until reused.
    gone: BTreeSet<String>,
    /// Backoffs, burst quiet, drains, restart budgets and the mass-removal guard.
    policy: Policy,
    /// Expired branches already logged, so each is logged once.
    expired_reported: BTreeMap<String, Expiry>,
    /// When old build logs were last looked for.
    logs_pruned: Option<Instant>,
    /// Unreadable branches already logged, so each is logged once, not every pass.
    unreadable_reported: BTreeMap<String, String>,
    /// Patch ids of commits already seen, so "merged" stays cheap scan after scan.
    patch_ids: Arc<Mutex<MergedCache>>,
    /// `previewd gc` asked for this pass: removals need no second look.
    removals_confirmed: bool,
    /// While passes fail: how long the last backoff was.
    failing: Option<Duration>,
    /// A pass is due then even without a trigger (a held removal, a backoff ending).
    recheck_at: Option<Instant>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
}

impl<E: Engine> Reconciler<E> {
    pub fn new(
        config: Arc<Config>,
        runtime: E,
        routes: SharedRoutes,
        status: SharedStatus,
    ) -> Self {
        let records = Records::new(&config.state_dir);
        let failed = records.load_failed();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        Reconciler {
            builds: Arc::new(Semaphore::new(config.build_concurrency)),
            policy: Policy::new(config.mass_removal_threshold),
            config,
            runtime,
            records,
            routes,
            status,
            in_flight: BTreeMap::new(),
            failed,
            gone: BTreeSet::new(),
            unreadable_reported: BTreeMap::new(),
            expired_reported: BTreeMap::new(),
            logs_pruned: None,
            patch_ids: Arc::new(Mutex::new(MergedCache::new())),
            recheck_at: None,
            failing: None,
            removals_confirmed: false,
            reports_tx,
            reports_rx,
        }
    }

    /// Runs one pass; a failed pass is logged and changes nothing. After a failure the next
    /// pass waits a little longer each time (the engine is restarting, the mirror is away), so
    /// a stream of triggers cannot turn into a stream of failing passes.
    pub async fn pass_logged(&mut self) {
        match self.pass().await {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!("reconcile passes succeed again");
                }
            }
            Err(error) => {
                let delay = self
                    .failing
                    .map_or(BACKOFF_FIRST, |d| (d * 2).min(PASS_BACKOFF_MAX));
                tracing::warn!(%error, retry_in = ?delay, "reconcile pass failed; nothing was changed");
                self.failing = Some(delay);
                self.recheck(Instant::now() + delay);
            }
        }
    }

    /// Reconciles on every trigger and every [`RESYNC`] until `shutdown`. Deploys in flight
    /// are abandoned on shutdown; running previews are left running for the next start.
    pub async fn run(
        mut self,
        mut triggers: mpsc::Receiver<Trigger>,
        mut gc: mpsc::Receiver<GcRequest>,
        shutdown: CancellationToken,
    ) {
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            let mut replies = Vec::new();
            let recheck = self.recheck_at;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(trigger) = triggers.recv() => replies.extend(trigger.reply),
                Some(request) = gc.recv() => {
                    let report = self.collectable().await.map_err(|e| e.to_string());
                    let _ = request.reply.send(report);
                    if !request.apply {
                        continue;
                    }
                    // An operator asking for collection is the second look removals wait for.
                    self.removals_confirmed = true;
                }
                Some(report) = self.reports_rx.recv() => self.settle(report),
                _ = resync.tick() => {}
                () = sleep_until(recheck), if recheck.is_some() => self.recheck_at = None,
            }
            // Everything that arrived meanwhile is answered by the same pass.
            while let Ok(trigger) = triggers.try_recv() {
                replies.extend(trigger.reply);
            }
            while let Ok(report) = self.reports_rx.try_recv() {
                self.settle(report);
            }
            // While passes fail, only the backoff's own wake-up (or someone waiting for an
            // answer) runs the next one.
            let backing_off =
                self.failing.is_some() && self.recheck_at.is_some_and(|at| at > Instant::now());
            if backing_off && replies.is_empty() {
                continue;
            }
            self.pass_logged().await;
            // A pass ran to its end, failed or not: the loop is alive.
            crate::sd_notify::watchdog();
            let rows = self.status.load_full();
            for reply in replies {
                let _ = reply.send(rows.as_ref().clone());
            }
        }
        for flight in self.in_flight.values() {
            flight.abort.abort();
        }
    }

    /// Records what a deploy reported.
    fn settle(&mut self, report: Report) {
        let (preview, result) = match report {
            Report::Phase(phase) => {
                if let Some(flight) = self.in_flight.get_mut(&phase.slug) {
                    if flight.commit == phase.commit {
                        flight.queued = phase.queued;
                    }
                }
                return;
            }
            Report::Done { preview, result } => (preview, result),
        };
        let slug = &preview.slug;
        if self
            .in_flight
            .get(slug)
            .is_some_and(|f| f.commit == preview.commit)
        {
            self.in_flight.remove(slug);
        }
        match result {
            Ok(()) => {
                tracing::info!(preview = %slug, commit = %preview.short(), "live");
                self.policy.deployed(slug);
                self.clear_failure(slug);
            }
            Err(failure) if failure.transient => {
                let delay = self.policy.engine_failed(slug, Instant::now());
                tracing::warn!(preview = %slug, commit = %preview.short(), error = %failure.log_tail, retry_in = ?delay, "deploy interrupted by the engine");
            }
            Err(failure) => {
                let reason = failure
                    .log_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty());
                tracing::warn!(preview = %slug, commit = %preview.short(), reason = reason.unwrap_or(""), "deploy failed");
                self.record_failure(&preview, failure.log_tail);
            }
        }
    }

    fn record_failure(&mut self, preview: &PreviewRef, log_tail: String) {
        let record = FailedBuild {
            branch: preview.branch.clone(),
            commit: preview.commit.clone(),
            log_tail,
        };
        if let Err(error) = self.records.save_failed(&preview.slug, &record) {
            tracing::warn!(preview = %preview.slug, %error, "cannot save build record");
        }
        self.failed.insert(preview.slug.clone(), record);
    }

    fn clear_failure(&mut self, slug: &str) {
        if self.failed.remove(slug).is_some() {
            self.records.clear_failed(slug);
        }
    }

    /// Reads git and Docker, and applies the operator's limits to what git wants.
    async fn observe(&mut self) -> Result<Observed, PassError> {
        let (mirror_path, main) = (self.config.mirror.clone(), self.config.main_branch.clone());
        let (rule, patch_ids) = (self.config.merged, self.patch_ids.clone());
        let mut desired = tokio::task::spawn_blocking(move || {
            let mut patch_ids = patch_ids.lock().unwrap_or_else(PoisonError::into_inner);
            mirror::scan(&mirror_path, &main, rule, &mut patch_ids)
        })
        .await??;
        let inventory = self.runtime.inventory().await?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let expired = expiry::expire(
            &desired,
            self.config.expire_idle,
            self.config.max_previews,
            now,
        );
        for branch in expired.keys() {
            desired.branches.remove(branch);
        }
        let deploying = self.in_flight.iter().map(|(s, f)| (s, &f.branch));
        let (wanted, unreadable) = plan::assign(&desired, &inventory, deploying);
        Ok(Observed {
            inventory,
            wanted,
            unreadable,
            expired,
        })
    }

    /// What a pass now would remove, described for `previewd gc`, without removing it.
    async fn collectable(&mut self) -> Result<Vec<String>, PassError> {
        let observed = self.observe().await?;
        let flights = self.flights();
        let actions = plan::plan(&World {
            wanted: &observed.wanted,
            unreadable: &observed.unreadable,
            inventory: &observed.inventory,
            in_flight: &flights,
            failed: &self.failed,
        });
        let mut lines = collection::describe(&actions, &observed.inventory, &observed.expired);
        let logs = self.records.clone();
        let keep = self.config.keep_logs;
        let old = tokio::task::spawn_blocking(move || logs.old_logs(keep)).await?;
        lines.extend(old.iter().map(|p| {
            format!(
                "build log {} (older than {} days)",
                p.display(),
                keep.as_secs() / 86_400
            )
        }));
        Ok(lines)
    }

    /// Deletes build logs older than the configured age, at most once an hour.
    async fn prune_logs(&mut self) {
        if self
            .logs_pruned
            .is_some_and(|at| at.elapsed() < LOG_PRUNE_EVERY)
        {
            return;
        }
        self.logs_pruned = Some(Instant::now());
        let (records, keep) = (self.records.clone(), self.config.keep_logs);
        let pruned = tokio::task::spawn_blocking(move || {
            let old = records.old_logs(keep);
            records.delete_logs(&old);
            old.len()
        })
        .await;
        if let Ok(count @ 1..) = pruned {
            tracing::info!(count, "deleted old build logs");
        }
    }

    /// Observe, plan, publish, apply, publish.
    pub async fn pass(&mut self) -> Result<(), PassError> {
        let observed = self.observe().await?;
        self.track(&observed);
        self.prune_logs().await;
        let Observed {
            inventory,
            wanted,
            unreadable,
            ..
        } = observed;
        let flights = self.flights();
        let world = World {
            wanted: &wanted,
            unreadable: &unreadable,
            inventory: &inventory,
            in_flight: &flights,
            failed: &self.failed,
        };
        let mut actions = plan::plan(&world);
        // Make before break: traffic moves to what serves now before anything is removed.
        self.publish(&world);
        self.hold_doubtful(&mut actions);
        for action in actions {
            self.apply(action, &inventory).await;
        }

        // Seen again with the deploys just started and the previews just retired.
        let flights = self.flights();
        let world = World {
            wanted: &wanted,
            unreadable: &unreadable,
            inventory: &inventory,
            in_flight: &flights,
            failed: &self.failed,
        };
        self.publish(&world);
        Ok(())
    }

    /// Keeps what passes remember between them in step with what was just observed: the
    /// policy's memos, and which expired or unreadable branches were already logged (each is
    /// logged once, not every pass).
    fn track(&mut self, observed: &Observed) {
        let ids = observed.inventory.containers.iter().map(|c| c.id.as_str());
        self.policy.observe(&observed.wanted, ids, Instant::now());
        for (branch, why) in &observed.expired {
            if self.expired_reported.get(branch) != Some(why) {
                tracing::info!(%branch, reason = %why, "preview expired");
            }
        }
        self.expired_reported = observed.expired.clone();
        for u in observed.unreadable.values() {
            if self.unreadable_reported.get(&u.branch) != Some(&u.reason) {
                tracing::warn!(branch = %u.branch, reason = %u.reason, "cannot read branch; keeping its preview as it is");
            }
        }
        self.unreadable_reported = observed
            .unreadable
            .values()
            .map(|u| (u.branch.clone(), u.reason.clone()))
            .collect();
    }

    /// Drops what must wait (the policy's word), and says so.
    fn hold_doubtful(&mut self, actions: &mut Vec<Action>) {
        let confirmed = std::mem::take(&mut self.removals_confirmed);
        let held = self.policy.hold(actions, confirmed, Instant::now());
        if let Some(previews) = held.mass_removal {
            tracing::warn!(
                previews,
                threshold = self.config.mass_removal_threshold,
                "many previews would be removed at once; waiting for a second look"
            );
        }
        if let Some(at) = held.recheck {
            self.recheck(at);
        }
    }

    fn recheck(&mut self, at: Instant) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |r| r.min(at)));
    }

    /// In-flight deploys as the planner sees them; queue places follow start order, which is
    /// the order the build semaphore serves them in.
    fn flights(&self) -> BTreeMap<String, Flight> {
        let mut queued: Vec<(&SystemTime, &String)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.queued)
            .map(|(slug, f)| (&f.since, slug))
            .collect();
        queued.sort();
        self.in_flight
            .iter()
            .map(|(slug, f)| {
                let place = queued.iter().position(|(_, s)| *s == slug).map(|p| p + 1);
                let flight = Flight {
                    commit: f.commit.clone(),
                    since: f.since,
                    queue_position: place.filter(|_| f.queued),
                };
                (slug.clone(), flight)
            })
            .collect()
    }

    async fn apply(&mut self, action: Action, inventory: &Inventory) {
        match action {
            Action::Deploy(preview) => self.start_deploy(preview),
            Action::Restart { preview, id } => self.restart(&preview, &id).await,
            Action::RemoveContainer { slug, id, .. } => {
                if let Err(error) = self.runtime.remove_container(&id).await {
                    tracing::warn!(preview = %slug, %error, "cannot remove superseded container");
                }
            }
            Action::RemoveImage { slug, id } => {
                if self.deploying() {
                    tracing::debug!(preview = %slug, image = %id, "image removal waits for the deploys in flight");
                } else if let Err(error) = self.runtime.remove_image(&id).await {
                    tracing::warn!(preview = %slug, %error, "cannot remove superseded image");
                }
            }
            Action::RemoveVolume { slug, name } => {
                if let Err(error) = self.runtime.remove_volume(&name).await {
                    tracing::warn!(preview = %slug, volume = %name, %error, "cannot remove superseded volume");
                }
            }
            // A build in flight may be using a layer that looks left over for a moment
            // (committed, its next step not yet started), as with images.
            Action::RemoveLeftoverLayer { id } => {
                if self.deploying() {
                    tracing::debug!(layer = %id, "build layer removal waits for the deploys in flight");
                } else if let Err(error) = self.runtime.remove_leftover_layer(&id).await {
                    tracing::warn!(layer = %id, %error, "cannot remove a layer a build left behind");
                }
            }
            Action::Retire { slug } => self.retire(&slug, inventory).await,
            Action::Cancel { slug } => {
                if let Some(flight) = self.in_flight.remove(&slug) {
                    tracing::info!(preview = %slug, commit = %&flight.commit[..12.min(flight.commit.len())], "superseded by a newer push: cancelling its deploy");
                    flight.abort.abort();
                }
                self.policy.cancelled(&slug);
            }
        }
    }

    fn start_deploy(&mut self, preview: PreviewRef) {
        tracing::info!(preview = %preview.slug, commit = %preview.short(), branch = %preview.branch, "deploying");
        self.gone.remove(&preview.slug);
        let ctx = DeployContext {
            runtime: self.runtime.clone(),
            mirror: self.config.mirror.clone(),
            records: self.records.clone(),
            url: self.config.preview_url(&preview.slug),
            builds: self.builds.clone(),
            health: self.config.health.clone(),
            container_limits: self.config.container_limits,
            build_limits: self.config.build_limits,
            reports: self.reports_tx.clone(),
        };
        let task_preview = preview.clone();
        let task = tokio::spawn(async move {
            let result = deploy::deploy(&ctx, &task_preview).await;
            let _ = ctx.reports.send(Report::Done {
                preview: task_preview,
                result,
            });
        });
        self.in_flight.insert(
            preview.slug.clone(),
            InFlight {
                commit: preview.commit,
                branch: preview.branch,
                since: SystemTime::now(),
                queued: false,
                abort: task.abort_handle(),
            },
        );
    }

    /// Starts a preview's stopped app again, unless it already used its restart budget: then
    /// the commit is marked failed with the app's last output, instead of restarting forever.
    async fn restart(&mut self, preview: &PreviewRef, id: &str) {
        let attempt = match self.policy.restart(id, Instant::now()) {
            RestartVerdict::Start { attempt } => attempt,
            RestartVerdict::GiveUp { stops } => {
                let logs = self.runtime.log_tail(id, deploy::LOG_TAIL_LINES).await;
                tracing::warn!(preview = %preview.slug, commit = %preview.short(), "app keeps stopping; giving up");
                let text = format!(
                    "the app stopped {stops} times within {} minutes; previewd stopped restarting it. Push a fix to try again.\n\ncontainer output:\n{logs}",
                    RESTART_WINDOW.as_secs() / 60
                );
                self.record_failure(preview, text);
                return;
            }
        };
        tracing::info!(preview = %preview.slug, commit = %preview.short(), attempt, "app stopped; starting it again");
        if let Err(error) = self.runtime.start_container(id).await {
            tracing::warn!(preview = %preview.slug, %error, "cannot restart container");
        }
    }

    /// Removes everything of a merged or deleted branch: containers first (they hold the
    /// images, volumes and the network), then images, volumes, and the network.
    async fn retire(&mut self, slug: &str, inventory: &Inventory) {
        if !self.gone.contains(slug) {
            tracing::info!(preview = %slug, "branch merged, deleted or expired: removing its preview");
        }
        if let Some(flight) = self.in_flight.remove(slug) {
            flight.abort.abort();
        }
        let mut clean = true;
        for c in inventory.containers.iter().filter(|c| c.slug == slug) {
            if let Err(error) = self.runtime.remove_container(&c.id).await {
                tracing::warn!(preview = %slug, %error, "cannot remove container");
                clean = false;
            }
        }
        // Removing an image also removes the untagged layers under it, which a build running
        // now may have just picked from the layer cache: that build would fail on a missing
        // layer. Images wait for the deploys in flight; a later pass removes them.
        let images_wait = self.deploying();
        for i in inventory.images.iter().filter(|i| i.slug == slug) {
            if images_wait {
                clean = false;
            } else if let Err(error) = self.runtime.remove_image(&i.id).await {
                tracing::warn!(preview = %slug, %error, "cannot remove image");
                clean = false;
            }
        }
        for v in inventory.volumes.iter().filter(|v| v.slug == slug) {
            if let Err(error) = self.runtime.remove_volume(&v.name).await {
                tracing::warn!(preview = %slug, volume = %v.name, %error, "cannot remove volume");
                clean = false;
            }
        }
        for n in inventory.networks.iter().filter(|n| n.slug == slug) {
            if let Err(error) = self.runtime.remove_network(&n.id).await {
                tracing::warn!(preview = %slug, %error, "cannot remove network");
                clean = false;
            }
        }
        // Whatever is left (or appears from an aborted build) is retired on a later pass.
        if clean {
            self.clear_failure(slug);
            self.policy.retired(slug);
        }
        self.gone.insert(slug.to_owned());
    }

    /// Whether a deploy runs now (and so may be building from the layer cache).
    fn deploying(&self) -> bool {
        !self.in_flight.is_empty()
    }

    fn publish(&self, world: &World<'_>) {
        let mut table = RouteTable::new();
        let domain = &self.config.domain;
        for slug in &self.gone {
            if !world.wanted.contains_key(slug) {
                table.insert(&format!("{slug}.{domain}"), Route::Gone);
            }
        }
        for (slug, route) in plan::routes(world) {
            table.insert(&format!("{slug}.{domain}"), route);
        }
        self.routes.store(Arc::new(table));
        let rows = plan::statuses(world, |slug| self.config.preview_url(slug));
        self.status.store(Arc::new(rows));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
