//! The level-triggered loop: every trigger (hook poke, ref watcher, deploy finished, periodic
//! resync) runs the same pass — read git, read Docker, [`plan::plan`], apply — and publishes a
//! whole new route table. Triggers carry no payload, so a missed one costs nothing.

pub mod deploy;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use previewd_proxy::{Route, RouteTable, SharedRoutes};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::docker::{DockerError, Inventory, PreviewRef, Runtime};
use crate::mirror::{self, MirrorError};
use crate::slug;
use crate::state::Records;
use deploy::{DeployContext, DeployFailure};
use plan::{Action, FailedBuild, PreviewStatus, World};

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

struct InFlight {
    commit: String,
    branch: String,
    since: SystemTime,
    abort: AbortHandle,
}

struct Outcome {
    preview: PreviewRef,
    result: Result<(), DeployFailure>,
}

pub struct Reconciler {
    config: Arc<Config>,
    runtime: Runtime,
    records: Records,
    routes: SharedRoutes,
    status: SharedStatus,
    in_flight: BTreeMap<String, InFlight>,
    failed: BTreeMap<String, FailedBuild>,
    /// Slugs retired since start, answered with a "gone" page until reused.
    gone: BTreeSet<String>,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    outcomes_rx: mpsc::UnboundedReceiver<Outcome>,
}

impl Reconciler {
    pub fn new(
        config: Arc<Config>,
        runtime: Runtime,
        routes: SharedRoutes,
        status: SharedStatus,
    ) -> Self {
        let records = Records::new(&config.state_dir);
        let failed = records.load_failed();
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        Reconciler {
            config,
            runtime,
            records,
            routes,
            status,
            in_flight: BTreeMap::new(),
            failed,
            gone: BTreeSet::new(),
            outcomes_tx,
            outcomes_rx,
        }
    }

    /// Runs one pass; a failed pass is logged and changes nothing.
    pub async fn pass_logged(&mut self) {
        if let Err(error) = self.pass().await {
            tracing::warn!(%error, "reconcile pass failed; nothing was changed");
        }
    }

    /// Reconciles on every trigger and every [`RESYNC`] until `shutdown`. Deploys in flight
    /// are abandoned on shutdown; running previews are left running for the next start.
    pub async fn run(mut self, mut triggers: mpsc::Receiver<Trigger>, shutdown: CancellationToken) {
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            let mut replies = Vec::new();
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(trigger) = triggers.recv() => replies.extend(trigger.reply),
                Some(outcome) = self.outcomes_rx.recv() => self.settle(outcome),
                _ = resync.tick() => {}
            }
            // Everything that arrived meanwhile is answered by the same pass.
            while let Ok(trigger) = triggers.try_recv() {
                replies.extend(trigger.reply);
            }
            while let Ok(outcome) = self.outcomes_rx.try_recv() {
                self.settle(outcome);
            }
            self.pass_logged().await;
            let rows = self.status.load_full();
            for reply in replies {
                let _ = reply.send(rows.as_ref().clone());
            }
        }
        for flight in self.in_flight.values() {
            flight.abort.abort();
        }
    }

    /// Records what a finished deploy reported.
    fn settle(&mut self, outcome: Outcome) {
        let slug = &outcome.preview.slug;
        if self
            .in_flight
            .get(slug)
            .is_some_and(|f| f.commit == outcome.preview.commit)
        {
            self.in_flight.remove(slug);
        }
        match outcome.result {
            Ok(()) => {
                tracing::info!(preview = %slug, commit = %outcome.preview.short(), "live");
                self.failed.remove(slug);
                self.records.clear_failed(slug);
            }
            Err(failure) => {
                tracing::warn!(preview = %slug, commit = %outcome.preview.short(), "deploy failed");
                let record = FailedBuild {
                    branch: outcome.preview.branch.clone(),
                    commit: outcome.preview.commit.clone(),
                    log_tail: failure.log_tail,
                };
                if let Err(error) = self.records.save_failed(slug, &record) {
                    tracing::warn!(preview = %slug, %error, "cannot save build record");
                }
                self.failed.insert(slug.clone(), record);
            }
        }
    }

    /// Observe, plan, apply, publish.
    pub async fn pass(&mut self) -> Result<(), PassError> {
        let (mirror_path, main) = (self.config.mirror.clone(), self.config.main_branch.clone());
        let desired =
            tokio::task::spawn_blocking(move || mirror::scan(&mirror_path, &main)).await??;
        let inventory = self.runtime.inventory().await?;

        let (wanted, retained) = self.assign(&desired, &inventory);
        let flights = self.flights();
        let world = World {
            wanted: &wanted,
            retained: &retained,
            inventory: &inventory,
            in_flight: &flights,
            failed: &self.failed,
        };
        let actions = plan::plan(&world);
        // Make before break: traffic moves to what serves now before anything is removed.
        self.publish(&world);
        for action in actions {
            self.apply(action, &inventory).await;
        }

        // Seen again with the deploys just started and the previews just retired.
        let flights = self.flights();
        let world = World {
            wanted: &wanted,
            retained: &retained,
            inventory: &inventory,
            in_flight: &flights,
            failed: &self.failed,
        };
        self.publish(&world);
        Ok(())
    }

    fn flights(&self) -> BTreeMap<String, (String, SystemTime)> {
        self.in_flight
            .iter()
            .map(|(slug, f)| (slug.clone(), (f.commit.clone(), f.since)))
            .collect()
    }

    /// Slugs for every branch git knows, owners first (read from live objects' labels).
    fn assign(
        &self,
        desired: &mirror::Desired,
        inventory: &Inventory,
    ) -> (BTreeMap<String, PreviewRef>, BTreeSet<String>) {
        let mut owned: BTreeMap<String, String> = BTreeMap::new();
        let labelled = inventory
            .containers
            .iter()
            .map(|c| (&c.slug, &c.branch))
            .chain(inventory.images.iter().map(|i| (&i.slug, &i.branch)))
            .chain(inventory.networks.iter().map(|n| (&n.slug, &n.branch)))
            .chain(self.in_flight.iter().map(|(s, f)| (s, &f.branch)));
        for (slug, branch) in labelled {
            owned.entry(slug.clone()).or_insert_with(|| branch.clone());
        }
        let branches: BTreeSet<String> = desired
            .branches
            .keys()
            .chain(desired.unreadable.keys())
            .cloned()
            .collect();
        let slugs = slug::assign(&branches, &owned);
        let mut wanted = BTreeMap::new();
        let mut retained = BTreeSet::new();
        for (branch, slug) in slugs {
            match desired.branches.get(&branch) {
                Some(tip) => {
                    wanted.insert(
                        slug.clone(),
                        PreviewRef {
                            branch,
                            slug,
                            commit: tip.to_string(),
                        },
                    );
                }
                None => {
                    retained.insert(slug);
                }
            }
        }
        (wanted, retained)
    }

    async fn apply(&mut self, action: Action, inventory: &Inventory) {
        match action {
            Action::Deploy(preview) => self.start_deploy(preview),
            Action::RemoveContainer { slug, id } => {
                if let Err(error) = self.runtime.remove_container(&id).await {
                    tracing::warn!(preview = %slug, %error, "cannot remove superseded container");
                }
            }
            Action::RemoveImage { slug, id } => {
                if let Err(error) = self.runtime.remove_image(&id).await {
                    tracing::warn!(preview = %slug, %error, "cannot remove superseded image");
                }
            }
            Action::Retire { slug } => self.retire(&slug, inventory).await,
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
        };
        let outcomes = self.outcomes_tx.clone();
        let task_preview = preview.clone();
        let task = tokio::spawn(async move {
            let result = deploy::deploy(&ctx, &task_preview).await;
            let _ = outcomes.send(Outcome {
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
                abort: task.abort_handle(),
            },
        );
    }

    /// Removes everything of a merged or deleted branch: containers first (they hold the
    /// image and the network), then images, then the network.
    async fn retire(&mut self, slug: &str, inventory: &Inventory) {
        tracing::info!(preview = %slug, "branch merged or deleted: removing its preview");
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
        for i in inventory.images.iter().filter(|i| i.slug == slug) {
            if let Err(error) = self.runtime.remove_image(&i.id).await {
                tracing::warn!(preview = %slug, %error, "cannot remove image");
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
            self.failed.remove(slug);
            self.records.clear_failed(slug);
        }
        self.gone.insert(slug.to_owned());
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
