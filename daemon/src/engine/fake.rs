//! An in-memory [`Engine`] for the reconciler's component tests: no Docker, but the same
//! contract. A build reads the Dockerfile of the context it is given (its `LABEL` lines become
//! the image's labels, `EXPOSE` its port, and a `RUN false` fails it, as the classic builder
//! would); a running container is a loopback HTTP server that answers every request with its
//! slug and commit, so health checks and routes are real. Tests crash containers, take the
//! engine down, hold builds, and plant objects that are not this instance's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{ContainerInfo, Engine, ImageInfo, Inventory, NetworkInfo, VolumeInfo};
use crate::docker::{
    DockerError, LABEL_BRANCH, LABEL_INSTANCE, LABEL_ROLE, LABEL_SLUG, LABEL_TREE, ROLE_BUILD_LAYER,
};
use crate::model::{BuildLimits, ContainerLimits, Lifetime, PreviewRef};

#[derive(Clone)]
pub struct FakeEngine {
    instance: String,
    state: Arc<Mutex<State>>,
    /// Builds wait while this is `false`.
    builds_open: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    containers: BTreeMap<String, Container>,
    images: BTreeMap<String, Image>,
    networks: BTreeMap<String, NetworkInfo>,
    volumes: BTreeMap<String, VolumeInfo>,
    /// Volumes made by someone else (by hand, another instance): never listed as ours.
    foreign_volumes: BTreeSet<String>,
    /// `slug:commit12` of every build started, in order.
    builds: Vec<String>,
    /// While set, every call fails as a frozen engine's would.
    down: bool,
    /// The calls that failed because the engine was down, in order.
    failed_calls: Vec<&'static str>,
}

struct Container {
    info: ContainerInfo,
    image: String,
    server: Option<AbortHandle>,
}

struct Image {
    labels: BTreeMap<String, String>,
    tags: BTreeSet<String>,
    port: Option<u16>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl FakeEngine {
    pub fn new(instance: &str) -> Self {
        FakeEngine {
            instance: instance.into(),
            state: Arc::default(),
            builds_open: Arc::new(watch::channel(true).0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails unless the engine is up.
    fn up(&self, call: &'static str) -> Result<(), DockerError> {
        let mut state = self.state();
        if state.down {
            state.failed_calls.push(call);
            return Err(DockerError::Timeout {
                call,
                after: Duration::from_secs(30),
            });
        }
        Ok(())
    }

    /// Every build started so far, as `slug:commit12`.
    pub fn builds(&self) -> Vec<String> {
        self.state().builds.clone()
    }

    pub fn failed_calls(&self) -> Vec<&'static str> {
        self.state().failed_calls.clone()
    }

    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Builds started from now on wait until [`FakeEngine::release_builds`].
    pub fn hold_builds(&self) {
        self.builds_open.send_replace(false);
    }

    pub fn release_builds(&self) {
        self.builds_open.send_replace(true);
    }

    /// The container stops as a crashing app would (exit 1).
    pub fn crash(&self, id: &str) {
        let mut state = self.state();
        let Some(c) = state.containers.get_mut(id) else {
            return;
        };
        if let Some(server) = c.server.take() {
            server.abort();
        }
        c.info.running = false;
        c.info.exit_code = Some(1);
        c.info.upstream = None;
    }

    /// A volume of this instance, labelled for `preview`.
    pub fn add_volume(&self, name: &str, preview: &PreviewRef, lifetime: Lifetime) {
        let volume = VolumeInfo {
            name: name.into(),
            branch: preview.branch.clone(),
            slug: preview.slug.clone(),
            commit: preview.commit.clone(),
            lifetime,
        };
        self.state().volumes.insert(name.into(), volume);
    }

    /// A volume previewd did not make.
    pub fn add_foreign_volume(&self, name: &str) {
        self.state().foreign_volumes.insert(name.into());
    }

    pub fn foreign_volumes(&self) -> BTreeSet<String> {
        self.state().foreign_volumes.clone()
    }

    fn image_repo(&self, slug: &str) -> String {
        format!("previewd-{}/{slug}", self.instance)
    }

    fn image_tag(&self, preview: &PreviewRef) -> String {
        format!("{}:{}", self.image_repo(&preview.slug), preview.short())
    }

    fn image_id_of(state: &State, tag: &str) -> Option<String> {
        state
            .images
            .iter()
            .find(|(_, i)| i.tags.contains(tag))
            .map(|(id, _)| id.clone())
    }

    fn next_id(state: &mut State, kind: &str) -> String {
        state.next_id += 1;
        format!("{kind}{:04}", state.next_id)
    }
}

/// A loopback HTTP server answering every request `200 <body>`, until aborted.
async fn serve(body: String) -> (SocketAddr, AbortHandle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, task.abort_handle())
}

/// The Dockerfile of a build context.
fn dockerfile_of(context: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(context);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let is_dockerfile = entry.path().ok()?.to_str() == Some("Dockerfile");
        if is_dockerfile {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}

/// The `"key"="value"` pairs of a `LABEL` line as previewd writes them (backslash escapes).
fn label_pairs(line: &str) -> Vec<(String, String)> {
    let mut quoted = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.extend(chars.next()),
                '"' => break,
                c => text.push(c),
            }
        }
        quoted.push(text);
    }
    quoted
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
        .collect()
}

impl Engine for FakeEngine {
    async fn inventory(&self) -> Result<Inventory, DockerError> {
        self.up("list containers")?;
        let state = self.state();
        let images = state
            .images
            .iter()
            .filter(|(_, i)| i.labels.get(LABEL_ROLE).map(String::as_str) != Some(ROLE_BUILD_LAYER))
            .filter_map(|(id, i)| {
                Some(ImageInfo {
                    id: id.clone(),
                    branch: i.labels.get(LABEL_BRANCH)?.clone(),
                    slug: i.labels.get(LABEL_SLUG)?.clone(),
                    tags: i.tags.iter().cloned().collect(),
                })
            })
            .collect();
        Ok(Inventory {
            containers: state.containers.values().map(|c| c.info.clone()).collect(),
            images,
            networks: state.networks.values().cloned().collect(),
            volumes: state.volumes.values().cloned().collect(),
            leftover_layers: Vec::new(),
        })
    }

    async fn ensure_network(&self, preview: &PreviewRef) -> Result<(), DockerError> {
        self.up("create network")?;
        let mut state = self.state();
        let name = format!("previewd-{}-{}", self.instance, preview.slug);
        if state.networks.values().any(|n| n.name == name) {
            return Ok(());
        }
        let id = Self::next_id(&mut state, "net");
        let network = NetworkInfo {
            id: id.clone(),
            name,
            branch: preview.branch.clone(),
            slug: preview.slug.clone(),
        };
        state.networks.insert(id, network);
        Ok(())
    }

    async fn image_exists(&self, preview: &PreviewRef) -> Result<bool, DockerError> {
        self.up("inspect image")?;
        Ok(Self::image_id_of(&self.state(), &self.image_tag(preview)).is_some())
    }

    async fn image_of_tree(
        &self,
        preview: &PreviewRef,
        tree: &str,
    ) -> Result<Option<String>, DockerError> {
        self.up("list images")?;
        let state = self.state();
        Ok(state
            .images
            .iter()
            .find(|(_, i)| {
                i.labels.get(LABEL_SLUG) == Some(&preview.slug)
                    && i.labels.get(LABEL_TREE).map(String::as_str) == Some(tree)
            })
            .map(|(id, _)| id.clone()))
    }

    async fn tag(&self, image: &str, preview: &PreviewRef) -> Result<(), DockerError> {
        self.up("tag image")?;
        let tag = self.image_tag(preview);
        let mut state = self.state();
        match state.images.get_mut(image) {
            Some(i) => {
                i.tags.insert(tag);
                Ok(())
            }
            None => Err(DockerError::Build(format!("no such image: {image}"))),
        }
    }

    fn layer_labels(&self) -> Vec<(String, String)> {
        vec![
            (LABEL_INSTANCE.into(), self.instance.clone()),
            (LABEL_ROLE.into(), ROLE_BUILD_LAYER.into()),
        ]
    }

    fn image_labels(&self, preview: &PreviewRef, tree: &str) -> Vec<(String, String)> {
        vec![
            (LABEL_INSTANCE.into(), self.instance.clone()),
            (LABEL_BRANCH.into(), preview.branch.clone()),
            (LABEL_SLUG.into(), preview.slug.clone()),
            (crate::docker::LABEL_COMMIT.into(), preview.commit.clone()),
            (LABEL_ROLE.into(), crate::docker::ROLE_APP.into()),
            (LABEL_TREE.into(), tree.into()),
        ]
    }

    async fn build(
        &self,
        preview: &PreviewRef,
        context: Vec<u8>,
        _limits: &BuildLimits,
        log: &mut tokio::fs::File,
    ) -> Result<(), DockerError> {
        self.up("build image")?;
        self.state()
            .builds
            .push(format!("{}:{}", preview.slug, preview.short()));
        let mut open = self.builds_open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.up("build image")?;
        let dockerfile = dockerfile_of(&context)
            .ok_or_else(|| DockerError::Build("Cannot locate specified Dockerfile".into()))?;
        let mut labels = BTreeMap::new();
        let mut port = None;
        for line in dockerfile.lines() {
            let line = line.trim();
            log.write_all(format!("Step : {line}\n").as_bytes())
                .await
                .map_err(DockerError::Log)?;
            if line == "RUN false" {
                let message = "The command '/bin/sh -c false' returned a non-zero code: 1";
                log.write_all(format!("\nbuild failed: {message}\n").as_bytes())
                    .await
                    .map_err(DockerError::Log)?;
                return Err(DockerError::Build(message.into()));
            }
            if let Some(rest) = line.strip_prefix("LABEL ") {
                labels.extend(label_pairs(rest));
            }
            if let Some(rest) = line.strip_prefix("EXPOSE ") {
                port = rest.split('/').next().and_then(|p| p.trim().parse().ok());
            }
        }
        log.flush().await.map_err(DockerError::Log)?;
        let tag = self.image_tag(preview);
        let mut state = self.state();
        for image in state.images.values_mut() {
            image.tags.remove(&tag);
        }
        let id = Self::next_id(&mut state, "sha256:");
        state.images.insert(
            id,
            Image {
                labels,
                tags: BTreeSet::from([tag]),
                port,
            },
        );
        Ok(())
    }

    async fn exposed_port(&self, preview: &PreviewRef) -> Result<u16, DockerError> {
        self.up("inspect image")?;
        let state = self.state();
        let id = Self::image_id_of(&state, &self.image_tag(preview))
            .ok_or(DockerError::NoExposedPort)?;
        state.images[&id].port.ok_or(DockerError::NoExposedPort)
    }

    async fn run(
        &self,
        preview: &PreviewRef,
        _port: u16,
        _env: Vec<String>,
        _limits: &ContainerLimits,
    ) -> Result<ContainerInfo, DockerError> {
        self.up("create container")?;
        let name = format!(
            "previewd-{}-{}-app-{}",
            self.instance,
            preview.slug,
            preview.short()
        );
        let image = {
            let mut state = self.state();
            state.containers.retain(|_, c| c.info.name != name);
            Self::image_id_of(&state, &self.image_tag(preview))
                .ok_or_else(|| DockerError::Build("no such image".into()))?
        };
        let (upstream, server) = serve(format!("{} {}", preview.slug, preview.commit)).await;
        let mut state = self.state();
        let id = Self::next_id(&mut state, "ctr");
        let info = ContainerInfo::started_web(id.clone(), name, preview, Some(upstream));
        state.containers.insert(
            id,
            Container {
                info: info.clone(),
                image,
                server: Some(server),
            },
        );
        Ok(info)
    }

    async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        self.up("start container")?;
        let body = {
            let state = self.state();
            let c = state
                .containers
                .get(id)
                .ok_or_else(|| DockerError::Build(format!("no such container: {id}")))?;
            if c.info.running {
                return Ok(());
            }
            format!("{} {}", c.info.slug, c.info.commit)
        };
        let (upstream, server) = serve(body).await;
        let mut state = self.state();
        match state.containers.get_mut(id) {
            Some(c) => {
                c.info.running = true;
                c.info.exit_code = None;
                c.info.upstream = Some(upstream);
                c.server = Some(server);
            }
            None => server.abort(),
        }
        Ok(())
    }

    async fn has_stopped(&self, id: &str) -> bool {
        self.state()
            .containers
            .get(id)
            .is_none_or(|c| !c.info.running)
    }

    async fn log_tail(&self, id: &str, _lines: usize) -> String {
        match self.state().containers.get(id) {
            Some(c) if !c.info.running => "the app crashed\n".into(),
            _ => String::new(),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        self.up("remove container")?;
        let mut state = self.state();
        state
            .containers
            .retain(|cid, c| cid != id && c.info.name != id);
        Ok(())
    }

    async fn remove_image(&self, id: &str) -> Result<(), DockerError> {
        self.up("remove image")?;
        let mut state = self.state();
        let by_id = state.images.contains_key(id);
        let image_id = if by_id {
            Some(id.to_owned())
        } else {
            Self::image_id_of(&state, id)
        };
        let Some(image_id) = image_id else {
            return Ok(());
        };
        if !by_id {
            let image = state.images.get_mut(&image_id).expect("found above");
            image.tags.remove(id);
            if !image.tags.is_empty() {
                return Ok(());
            }
        }
        // The engine keeps an image a container uses when its last tag goes, unless forced
        // by id (the container then runs on, its image only dangling).
        let used = state.containers.values().any(|c| c.image == image_id);
        if used && !by_id {
            return Ok(());
        }
        state.images.remove(&image_id);
        Ok(())
    }

    async fn remove_leftover_layer(&self, id: &str) -> Result<(), DockerError> {
        self.up("remove build layer")?;
        self.state().images.remove(id);
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.up("remove volume")?;
        let mut state = self.state();
        state.volumes.remove(name);
        // The engine removes any volume by name: only the caller's care keeps others safe.
        state.foreign_volumes.remove(name);
        Ok(())
    }

    async fn remove_network(&self, id: &str) -> Result<(), DockerError> {
        self.up("remove network")?;
        self.state().networks.remove(id);
        Ok(())
    }
}
