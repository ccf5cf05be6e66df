//! One deploy of one preview at one commit: network, image (built only if missing), container,
//! readiness. Traffic is not touched here: the reconciler routes to the container once this
//! reports success, so the last good version serves until then.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::Report;
use crate::docker::{self, DockerError};
use crate::engine::Engine;
use crate::health::HealthCheck;
use crate::model::{BuildLimits, ContainerLimits, PreviewRef};
use crate::{mirror, state};

/// Lines of build or container log shown on a failure page.
pub const LOG_TAIL_LINES: usize = 40;

/// What a deploy needs besides the preview itself.
#[derive(Debug, Clone)]
pub struct DeployContext<E> {
    pub runtime: E,
    pub mirror: PathBuf,
    pub records: state::Records,
    /// The preview's public URL, given to the app as `PREVIEW_URL`.
    pub url: String,
    /// Build slots: builds beyond the configured concurrency wait here, in order.
    pub builds: Arc<Semaphore>,
    /// When a new container may take traffic.
    pub health: HealthCheck,
    pub container_limits: ContainerLimits,
    pub build_limits: BuildLimits,
    /// Where the deploy says it waits for, or got, a build slot (and the caller, its end).
    pub reports: mpsc::UnboundedSender<Report>,
}

/// A deploy's progress through the build queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub slug: String,
    pub commit: String,
    pub queued: bool,
}

/// Why a deploy failed, with what the user needs to fix it.
#[derive(Debug)]
pub struct DeployFailure {
    pub log_tail: String,
    /// The engine failed, not the commit: try again later instead of recording a failure.
    pub transient: bool,
}

impl DeployFailure {
    /// The commit itself failed: its build, its image or its app.
    fn commit(log_tail: String) -> Self {
        DeployFailure {
            log_tail,
            transient: false,
        }
    }
}

impl From<DockerError> for DeployFailure {
    fn from(error: DockerError) -> Self {
        // A full pool is the host's to fix, but the preview must say so, not wait silently.
        let transient = !matches!(
            error,
            DockerError::Build(_) | DockerError::NoExposedPort | DockerError::PoolExhausted { .. }
        );
        DeployFailure {
            log_tail: error.to_string(),
            transient,
        }
    }
}

/// Runs the deploy to the end. On failure the new container (if any) is removed again, so
/// nothing half-started is ever mistaken for a serving version.
pub async fn deploy<E: Engine>(
    ctx: &DeployContext<E>,
    preview: &PreviewRef,
) -> Result<(), DeployFailure> {
    let fail = DeployFailure::commit;
    ctx.runtime.ensure_network(preview).await?;
    if !ctx.runtime.image_exists(preview).await? {
        let commit = git2::Oid::from_str(&preview.commit).map_err(|e| fail(e.to_string()))?;
        let tree = read_tree(ctx, commit).await?;
        match ctx.runtime.image_of_tree(preview, &tree).await? {
            // Same tree as a commit already built (an amended message, an empty merge): the
            // image is the same too.
            Some(image) => ctx.runtime.tag(&image, preview).await?,
            None => {
                let _slot = build_slot(ctx, preview).await;
                build(ctx, preview, commit, &tree).await?;
            }
        }
    }
    let port = ctx.runtime.exposed_port(preview).await?;
    let env = vec![
        format!("PREVIEW_BRANCH={}", preview.branch),
        format!("PREVIEW_COMMIT={}", preview.commit),
        format!("PREVIEW_SLUG={}", preview.slug),
        format!("PREVIEW_URL={}", ctx.url),
    ];
    let container = ctx
        .runtime
        .run(preview, port, env, &ctx.container_limits)
        .await?;
    let ready = match container.upstream {
        Some(upstream) => wait_ready(ctx, &container.id, upstream).await,
        None => Err("the container stopped before it got an address".to_owned()),
    };
    if let Err(reason) = ready {
        let logs = ctx.runtime.log_tail(&container.id, LOG_TAIL_LINES).await;
        if let Err(error) = ctx.runtime.remove_container(&container.id).await {
            tracing::warn!(preview = %preview.slug, %error, "cannot remove failed container");
        }
        return Err(fail(format!("{reason}\n\ncontainer output:\n{logs}")));
    }
    Ok(())
}

/// Waits for a build slot, telling the reconciler while it waits so `ls` shows the queue.
async fn build_slot<E: Engine>(
    ctx: &DeployContext<E>,
    preview: &PreviewRef,
) -> tokio::sync::OwnedSemaphorePermit {
    if let Ok(slot) = ctx.builds.clone().try_acquire_owned() {
        return slot;
    }
    let phase = |queued| Phase {
        slug: preview.slug.clone(),
        commit: preview.commit.clone(),
        queued,
    };
    let _ = ctx.reports.send(Report::Phase(phase(true)));
    let slot = ctx
        .builds
        .clone()
        .acquire_owned()
        .await
        .expect("the build semaphore is never closed");
    let _ = ctx.reports.send(Report::Phase(phase(false)));
    slot
}

async fn read_tree<E: Engine>(
    ctx: &DeployContext<E>,
    commit: git2::Oid,
) -> Result<String, DeployFailure> {
    let fail = DeployFailure::commit;
    let mirror = ctx.mirror.clone();
    let tree = tokio::task::spawn_blocking(move || mirror::tree_of(&mirror, commit))
        .await
        .map_err(|e| fail(format!("reading the commit panicked: {e}")))?
        .map_err(|e| fail(e.to_string()))?;
    Ok(tree.to_string())
}

async fn build<E: Engine>(
    ctx: &DeployContext<E>,
    preview: &PreviewRef,
    commit: git2::Oid,
    tree: &str,
) -> Result<(), DeployFailure> {
    let fail = DeployFailure::commit;
    let mirror = ctx.mirror.clone();
    let layer_labels = ctx.runtime.layer_labels();
    let image_labels = ctx.runtime.image_labels(preview, tree);
    let context = tokio::task::spawn_blocking(move || {
        mirror::context_tar(&mirror, commit, |dockerfile| {
            docker::labelled_dockerfile(dockerfile, &layer_labels, &image_labels)
        })
    })
    .await
    .map_err(|e| fail(format!("reading the tree panicked: {e}")))?
    .map_err(|e| fail(e.to_string()))?;

    let log_path = ctx.records.log_path(&preview.slug, preview.short());
    let open_log = async {
        if let Some(dir) = log_path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::File::create(&log_path).await
    };
    let mut log = open_log
        .await
        .map_err(|e| fail(format!("cannot open build log {}: {e}", log_path.display())))?;
    let limits = ctx.build_limits;
    let built = tokio::time::timeout(
        limits.timeout,
        ctx.runtime.build(preview, context, &limits, &mut log),
    )
    .await;
    // Dropping the build's stream makes the engine stop it.
    let Ok(built) = built else {
        let line = format!(
            "\nbuild stopped: it ran longer than the host's limit of {} s ([limits] build_timeout_s)\n",
            limits.timeout.as_secs()
        );
        let _ = log.write_all(line.as_bytes()).await;
        let _ = log.flush().await;
        return Err(log_tail_failure(&log_path).await);
    };
    match built {
        Ok(()) => Ok(()),
        Err(DockerError::Build(_)) => Err(log_tail_failure(&log_path).await),
        Err(e) => Err(e.into()),
    }
}

/// The commit's failure, told by the last lines of its build log.
async fn log_tail_failure(log_path: &std::path::Path) -> DeployFailure {
    let text = tokio::fs::read_to_string(log_path)
        .await
        .unwrap_or_default();
    DeployFailure::commit(state::tail(&text, LOG_TAIL_LINES))
}

/// Polls until the app answers, the container stops, or the start period is over.
async fn wait_ready<E: Engine>(
    ctx: &DeployContext<E>,
    id: &str,
    upstream: std::net::SocketAddr,
) -> Result<(), String> {
    let health = &ctx.health;
    let deadline = Instant::now() + health.start_period;
    let mut next_liveness_check = Instant::now();
    loop {
        if health.passes(upstream).await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let expected = match health.status {
                Some(status) => format!("status {status}"),
                None => "a status below 500".into(),
            };
            return Err(format!(
                "the app did not answer GET {} on port {} with {expected} within {} s",
                health.path,
                upstream.port(),
                health.start_period.as_secs()
            ));
        }
        // Asking the engine on every probe would double its load for nothing.
        if now >= next_liveness_check {
            if ctx.runtime.has_stopped(id).await {
                return Err("the container exited before it answered".into());
            }
            next_liveness_check = now + Duration::from_secs(1);
        }
        tokio::time::sleep(health.interval).await;
    }
}
