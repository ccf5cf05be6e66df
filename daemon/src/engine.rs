//! The one boundary in front of the container engine: what the reconciler and a deploy may
//! ask of it, and what it answers with (the inventory of this instance's objects). The Docker
//! Engine API ([`crate::docker::Runtime`]) is one implementation; component tests run the
//! reconciler over an in-memory one; a Swarm runtime would be another, beside them, with
//! `reconcile` untouched.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use crate::docker::DockerError;
use crate::model::{BuildLimits, ContainerLimits, Lifetime, PreviewRef, APP_SERVICE};

#[cfg(test)]
pub mod fake;

/// The engine, as the reconciler and a deploy use it. Objects are this instance's only: an
/// implementation lists and touches nothing that does not carry its labels. Removals of what
/// is already gone succeed.
pub trait Engine: Clone + Send + Sync + 'static {
    /// Every container, image, network and volume of this instance, and the build layers left
    /// behind.
    fn inventory(&self) -> impl Future<Output = Result<Inventory, DockerError>> + Send;

    /// The preview's network, created unless it exists.
    fn ensure_network(
        &self,
        preview: &PreviewRef,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Whether the preview's image for its commit exists.
    fn image_exists(
        &self,
        preview: &PreviewRef,
    ) -> impl Future<Output = Result<bool, DockerError>> + Send;

    /// The image built for the preview from `tree` for an earlier commit, if one exists.
    fn image_of_tree(
        &self,
        preview: &PreviewRef,
        tree: &str,
    ) -> impl Future<Output = Result<Option<String>, DockerError>> + Send;

    /// Names an existing image as the preview's image for its commit: no build.
    fn tag(
        &self,
        image: &str,
        preview: &PreviewRef,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// The labels every layer of a build carries (written into the Dockerfile after each
    /// `FROM`), so the layers an unfinished build leaves can be found.
    fn layer_labels(&self) -> Vec<(String, String)>;

    /// The labels of the image built for `preview` from `tree`.
    fn image_labels(&self, preview: &PreviewRef, tree: &str) -> Vec<(String, String)>;

    /// Builds `context` (a tar whose Dockerfile already carries the labels) into the preview's
    /// image within `limits` (memory and CPUs of each step; the caller keeps the time),
    /// appending the build output to `log`. A build that fails is [`DockerError::Build`].
    fn build(
        &self,
        preview: &PreviewRef,
        context: Vec<u8>,
        limits: &BuildLimits,
        log: &mut tokio::fs::File,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// The port the preview's image listens on.
    fn exposed_port(
        &self,
        preview: &PreviewRef,
    ) -> impl Future<Output = Result<u16, DockerError>> + Send;

    /// Creates and starts the preview's web container on its network, with `env`, within
    /// `limits` and without a way to gain privileges. No upstream in the answer means it
    /// stopped before it got an address.
    fn run(
        &self,
        preview: &PreviewRef,
        port: u16,
        env: Vec<String>,
        limits: &ContainerLimits,
    ) -> impl Future<Output = Result<ContainerInfo, DockerError>> + Send;

    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Whether the container stopped since it was started (or cannot be found).
    fn has_stopped(&self, id: &str) -> impl Future<Output = bool> + Send;

    /// The container's last `lines` lines of output; empty when the engine cannot say.
    fn log_tail(&self, id: &str, lines: usize) -> impl Future<Output = String> + Send;

    /// Removes a container, killing it if it runs.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes an image by id, or one tag of it by name (the image goes with its last tag).
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes a build layer left behind, unless something still uses it.
    fn remove_leftover_layer(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn remove_network(&self, id: &str) -> impl Future<Output = Result<(), DockerError>> + Send;
}

/// A container of this instance, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub branch: String,
    pub slug: String,
    pub commit: String,
    /// The compose service it runs.
    pub service: String,
    pub lifetime: Lifetime,
    /// A one-off service (role [`ROLE_JOB`]): it is meant to exit.
    pub job: bool,
    /// The service that takes the preview's traffic (it carries `previewd.port`).
    pub web: bool,
    pub running: bool,
    /// How it exited, once it has (and the engine said).
    pub exit_code: Option<i64>,
    /// Where it takes traffic: its address on its preview network and the port previewd
    /// routes to. Only a service that takes traffic has one.
    pub upstream: Option<SocketAddr>,
}

impl ContainerInfo {
    /// The web container just started for `preview`: running once it has an upstream.
    pub fn started_web(
        id: String,
        name: String,
        preview: &PreviewRef,
        upstream: Option<SocketAddr>,
    ) -> Self {
        ContainerInfo {
            id,
            name,
            branch: preview.branch.clone(),
            slug: preview.slug.clone(),
            commit: preview.commit.clone(),
            service: APP_SERVICE.into(),
            lifetime: Lifetime::Commit,
            job: false,
            web: true,
            running: upstream.is_some(),
            exit_code: None,
            upstream,
        }
    }

    /// A one-off service that ran to success: done, not crashed.
    pub fn job_done(&self) -> bool {
        self.job && !self.running && self.exit_code == Some(0)
    }
}

/// A volume of this instance, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub branch: String,
    pub slug: String,
    /// The commit it was made for.
    pub commit: String,
    pub lifetime: Lifetime,
}

/// A network of this instance, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub branch: String,
    pub slug: String,
}

/// An image of this instance, as listed. One image can serve several commits of a branch
/// (same tree), one tag each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub branch: String,
    pub slug: String,
    /// Its tags, `previewd-<instance>/<slug>:<commit12>`.
    pub tags: Vec<String>,
}

/// Whether the image tag `tag` names `commit` (tags carry its first 12 hex digits).
pub fn tag_is_for(tag: &str, commit: &str) -> bool {
    tag.rsplit_once(':')
        .is_some_and(|(_, short)| !short.is_empty() && commit.starts_with(short))
}

/// Everything of this instance that the engine holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub containers: Vec<ContainerInfo>,
    pub images: Vec<ImageInfo>,
    pub networks: Vec<NetworkInfo>,
    pub volumes: Vec<VolumeInfo>,
    /// Ids of untagged build layers of this instance with nothing built on them: what a
    /// build that failed, was cancelled or was killed left behind.
    pub leftover_layers: Vec<String>,
}

impl Inventory {
    /// `(slug, branch)` of every object, as its labels say: who holds which slug.
    pub fn owners(&self) -> impl Iterator<Item = (&String, &String)> {
        self.containers
            .iter()
            .map(|c| (&c.slug, &c.branch))
            .chain(self.images.iter().map(|i| (&i.slug, &i.branch)))
            .chain(self.networks.iter().map(|n| (&n.slug, &n.branch)))
            .chain(self.volumes.iter().map(|v| (&v.slug, &v.branch)))
    }
}

/// One preview's objects, as [`Inventory::stacks`] groups them.
#[derive(Debug, Clone, Default)]
pub struct Stack<'a> {
    pub containers: Vec<&'a ContainerInfo>,
    pub images: Vec<&'a ImageInfo>,
    pub networks: Vec<&'a NetworkInfo>,
    pub volumes: Vec<&'a VolumeInfo>,
}

impl Stack<'_> {
    /// The container of the service that takes traffic at `commit`, if one exists.
    pub fn web_at(&self, commit: &str) -> Option<&ContainerInfo> {
        self.containers
            .iter()
            .copied()
            .find(|c| c.web && c.commit == commit)
    }
}

impl Inventory {
    /// Every preview's objects, by slug.
    pub fn stacks(&self) -> BTreeMap<&str, Stack<'_>> {
        let mut stacks: BTreeMap<&str, Stack<'_>> = Default::default();
        for c in &self.containers {
            stacks.entry(&c.slug).or_default().containers.push(c);
        }
        for i in &self.images {
            stacks.entry(&i.slug).or_default().images.push(i);
        }
        for n in &self.networks {
            stacks.entry(&n.slug).or_default().networks.push(n);
        }
        for v in &self.volumes {
            stacks.entry(&v.slug).or_default().volumes.push(v);
        }
        stacks
    }
}
