//! The Docker engine, through bollard: the only module that imports it, and the
//! [`Engine`] the daemon runs on. It lists what exists (by this instance's labels), builds
//! images, runs containers and removes them. It decides nothing: `reconcile` tells it what to
//! do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine::{ContainerInfo, Engine, ImageInfo, Inventory, NetworkInfo, VolumeInfo};
use crate::model::{BuildLimits, ContainerLimits, Lifetime, PreviewRef, APP_SERVICE};
use crate::subnet_pool::{seed_of, Ipv4Net, SubnetPool};

pub const LABEL_INSTANCE: &str = "previewd.instance";
pub const LABEL_BRANCH: &str = "previewd.branch";
pub const LABEL_SLUG: &str = "previewd.slug";
pub const LABEL_COMMIT: &str = "previewd.commit";
pub const LABEL_ROLE: &str = "previewd.role";
/// The compose service an object belongs to ([`APP_SERVICE`] for a bare Dockerfile).
pub const LABEL_SERVICE: &str = "previewd.service";
/// How long the object lives ([`Lifetime`]): with the preview, or with its commit.
pub const LABEL_LIFETIME: &str = "previewd.lifetime";
/// `previewd.role` of a long-running service's container and of the image built for it.
pub const ROLE_APP: &str = "app";
/// `previewd.role` of a one-off service's container (a migration, a seed): it runs to its end,
/// and exiting 0 is its success, not a crash.
pub const ROLE_JOB: &str = "job";
pub const ROLE_NETWORK: &str = "network";
/// `previewd.role` of the layers a build commits before its last step: every stage of a
/// Dockerfile gets it right after its `FROM`, so layers a build leaves behind can be found.
pub const ROLE_BUILD_LAYER: &str = "build-layer";
/// The container port the app listens on, so an adopted container needs no image inspect.
pub const LABEL_PORT: &str = "previewd.port";
/// The git tree an image was built from: a commit with the same tree reuses the image.
pub const LABEL_TREE: &str = "previewd.tree";

/// The CPU scheduler period a build's quota is a share of, in microseconds (the kernel's
/// default).
const CPU_PERIOD_US: i64 = 100_000;

/// Longest any one Docker API call may take, builds excepted: a frozen engine must fail calls,
/// not pile up work behind them.
const API_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} did not answer within {after:?}")]
    Timeout { call: &'static str, after: Duration },
    #[error("cannot write build log: {0}")]
    Log(#[source] std::io::Error),
    #[error("{0}")]
    Build(String),
    #[error("the image exposes no TCP port: add an EXPOSE line to the Dockerfile")]
    NoExposedPort,
    #[error("no free subnet for the preview's network in the pool {pool}: widen [network] pool, or remove previews")]
    PoolExhausted { pool: String },
}

fn api(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| DockerError::Api { call, source }
}

/// Runs one API call under [`API_TIMEOUT`]; the inner result is the engine's answer.
async fn within<T>(
    call: &'static str,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<Result<T, bollard::errors::Error>, DockerError> {
    tokio::time::timeout(API_TIMEOUT, fut)
        .await
        .map_err(|_| DockerError::Timeout {
            call,
            after: API_TIMEOUT,
        })
}

/// [`within`], with the engine's refusal as an error too.
async fn call<T>(
    call: &'static str,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    within(call, fut).await?.map_err(api(call))
}

/// This instance's handle on the engine.
#[derive(Debug, Clone)]
pub struct Runtime {
    docker: Docker,
    instance: String,
    /// Where preview networks get their subnets.
    pool: SubnetPool,
}

/// How many subnets a network creation tries when the engine says each overlaps a network
/// made meanwhile (another daemon, a concurrent deploy), before it gives up for this pass.
const SUBNET_TRIES: usize = 8;

impl Runtime {
    /// Connects to `endpoint` (else `$DOCKER_HOST`, else the local socket) and agrees on an API
    /// version with the engine, so older engines (API 1.41) are spoken to in their version.
    pub async fn connect(
        endpoint: Option<&str>,
        instance: &str,
        pool: SubnetPool,
    ) -> Result<Self, DockerError> {
        let shown = endpoint
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let connect_err = |source| DockerError::Connect {
            endpoint: shown.clone(),
            source,
        };
        let docker = match endpoint {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(connect_err)?
        // bollard's own limit covers a response's headers; `within` covers whole calls. A
        // build's headers come at once, its body streams for as long as the build runs.
        .with_timeout(API_TIMEOUT);
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        Ok(Runtime {
            docker,
            instance: instance.to_owned(),
            pool,
        })
    }

    pub fn network_name(&self, slug: &str) -> String {
        format!("previewd-{}-{slug}", self.instance)
    }

    fn image_repo(&self, slug: &str) -> String {
        format!("previewd-{}/{slug}", self.instance)
    }

    pub fn image_tag(&self, preview: &PreviewRef) -> String {
        format!("{}:{}", self.image_repo(&preview.slug), preview.short())
    }

    /// One container per commit, so the new version can start beside the old one.
    pub fn container_name(&self, preview: &PreviewRef) -> String {
        format!(
            "previewd-{}-{}-app-{}",
            self.instance,
            preview.slug,
            preview.short()
        )
    }

    /// The labels of an object previewd makes for `preview`: `service` is `None` for the
    /// objects of the whole preview (its network).
    fn labels(
        &self,
        preview: &PreviewRef,
        role: &str,
        service: Option<&str>,
        lifetime: Lifetime,
    ) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_INSTANCE.into(), self.instance.clone()),
            (LABEL_BRANCH.into(), preview.branch.clone()),
            (LABEL_SLUG.into(), preview.slug.clone()),
            (LABEL_COMMIT.into(), preview.commit.clone()),
            (LABEL_ROLE.into(), role.into()),
            (LABEL_LIFETIME.into(), lifetime.as_str().into()),
        ]);
        if let Some(service) = service {
            labels.insert(LABEL_SERVICE.into(), service.into());
        }
        labels
    }

    /// The IPv4 subnets of every network on the engine, previewd's or not.
    async fn taken_subnets(&self) -> Result<Vec<Ipv4Net>, DockerError> {
        let networks = call(
            "list networks",
            self.docker
                .list_networks(None::<bollard::query_parameters::ListNetworksOptions>),
        )
        .await?;
        Ok(networks
            .into_iter()
            .filter_map(|n| n.ipam?.config)
            .flatten()
            .filter_map(|c| c.subnet?.parse().ok())
            .collect())
    }

    fn instance_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.instance)],
        )])
    }

    async fn build_failed(
        &self,
        log: &mut tokio::fs::File,
        message: String,
    ) -> Result<(), DockerError> {
        let line = format!("\nbuild failed: {}\n", message.trim_end());
        log.write_all(line.as_bytes())
            .await
            .map_err(DockerError::Log)?;
        log.flush().await.map_err(DockerError::Log)?;
        Err(DockerError::Build(message.trim_end().to_owned()))
    }

    /// A wake-up on every change to this instance's containers, as the engine reports them.
    /// Ends when the event stream breaks (the engine restarted, say): events are only a
    /// trigger, the caller re-reads everything and subscribes again.
    pub fn changes(&self) -> impl futures_util::Stream<Item = Result<(), DockerError>> + '_ {
        let mut filters = self.instance_filter();
        filters.insert("type".into(), vec!["container".into()]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        self.docker
            .events(Some(options))
            .map(|event| event.map(drop).map_err(api("follow events")))
    }
}

impl Engine for Runtime {
    /// Lists every container, image, network and volume carrying this instance's label.
    async fn inventory(&self) -> Result<Inventory, DockerError> {
        let filter = self.instance_filter();
        let containers = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        let images = ListImagesOptionsBuilder::new().filters(&filter).build();
        let networks = ListNetworksOptionsBuilder::new().filters(&filter).build();
        let volumes = ListVolumesOptionsBuilder::new().filters(&filter).build();
        // Independent questions: asked at once, a pass waits for the slowest only.
        let (containers, images, networks, volumes) = tokio::try_join!(
            call(
                "list containers",
                self.docker.list_containers(Some(containers))
            ),
            call("list images", self.docker.list_images(Some(images))),
            call("list networks", self.docker.list_networks(Some(networks))),
            call("list volumes", self.docker.list_volumes(Some(volumes))),
        )?;

        let mut inventory = Inventory::default();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let Some(object) = labelled(c.id, &labels) else {
                continue;
            };
            let network = self.network_name(&object.slug);
            let ip = c
                .network_settings
                .and_then(|s| s.networks)
                .and_then(|mut n| n.remove(&network))
                .and_then(|e| e.ip_address)
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let port = labels.get(LABEL_PORT).and_then(|p| p.parse::<u16>().ok());
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            let exit_code = match c.state {
                Some(ContainerSummaryStateEnum::EXITED) => c.status.as_deref().and_then(exit_code),
                _ => None,
            };
            inventory.containers.push(ContainerInfo {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                running,
                exit_code,
                upstream: ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port)),
                job: labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_JOB),
                web: port.is_some(),
                service: object.service.unwrap_or_else(|| APP_SERVICE.into()),
                lifetime: object.lifetime.unwrap_or(Lifetime::Commit),
                id: object.id,
                branch: object.branch,
                slug: object.slug,
                commit: object.commit,
            });
        }
        // Listed without `all`: the untagged images here are leaves, layers nothing builds on.
        inventory.leftover_layers = images
            .iter()
            .filter(|i| {
                i.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_BUILD_LAYER)
                    && !i.repo_tags.iter().any(|t| t != "<none>:<none>")
            })
            .map(|i| i.id.clone())
            .collect();
        inventory.images = images
            .into_iter()
            .filter_map(|i| {
                let object = labelled(Some(i.id), &i.labels)?;
                let repo = self.image_repo(&object.slug);
                let tags = i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t.rsplit_once(':').is_some_and(|(r, _)| r == repo))
                    .collect();
                Some(ImageInfo {
                    id: object.id,
                    branch: object.branch,
                    slug: object.slug,
                    tags,
                })
            })
            .collect();
        inventory.networks = networks
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels.unwrap_or_default();
                let object = labelled(n.id, &labels)?;
                Some(NetworkInfo {
                    id: object.id,
                    name: n.name.unwrap_or_default(),
                    branch: object.branch,
                    slug: object.slug,
                })
            })
            .collect();
        inventory.volumes = volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let object = labelled(Some(v.name), &v.labels)?;
                Some(VolumeInfo {
                    name: object.id,
                    branch: object.branch,
                    slug: object.slug,
                    commit: object.commit,
                    lifetime: object.lifetime.unwrap_or(Lifetime::Preview),
                })
            })
            .collect();
        Ok(inventory)
    }

    /// The preview's network, created with its labels unless it exists already.
    async fn ensure_network(&self, preview: &PreviewRef) -> Result<(), DockerError> {
        let name = self.network_name(&preview.slug);
        let exists = within(
            "inspect network",
            self.docker.inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )
        .await?
        .is_ok();
        if exists {
            return Ok(());
        }
        let taken = self.taken_subnets().await?;
        let mut last_overlap = None;
        let seed = seed_of(&preview.slug);
        for subnet in self.pool.candidates(seed, &taken).take(SUBNET_TRIES) {
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(self.labels(preview, ROLE_NETWORK, None, Lifetime::Preview)),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.to_string()),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                ..Default::default()
            };
            match within("create network", self.docker.create_network(request)).await? {
                Ok(_) => return Ok(()),
                // Lost a race with another pass that created it: that is what we wanted.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => return Ok(()),
                // Taken since we looked: try the next one.
                Err(source @ bollard::errors::Error::DockerResponseServerError { .. })
                    if source.to_string().contains("overlaps") =>
                {
                    last_overlap = Some(source);
                }
                Err(source) => {
                    return Err(DockerError::Api {
                        call: "create network",
                        source,
                    })
                }
            }
        }
        match last_overlap {
            // Contested, not full: a later pass tries again.
            Some(source) => Err(DockerError::Api {
                call: "create network",
                source,
            }),
            None => Err(DockerError::PoolExhausted {
                pool: self.pool.to_string(),
            }),
        }
    }

    async fn image_exists(&self, preview: &PreviewRef) -> Result<bool, DockerError> {
        let tag = self.image_tag(preview);
        match within("inspect image", self.docker.inspect_image(&tag)).await? {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(source) => Err(DockerError::Api {
                call: "inspect image",
                source,
            }),
        }
    }

    /// The labels of the preview's image, for the `LABEL` line appended to its Dockerfile by
    /// [`labelled_dockerfile`]. One line, one build step: the classic builder turns the build's
    /// `labels` parameter into one step (and one container) per label, seconds on every build.
    fn image_labels(&self, preview: &PreviewRef, tree: &str) -> Vec<(String, String)> {
        let mut labels: Vec<_> = self
            .labels(preview, ROLE_APP, Some(APP_SERVICE), Lifetime::Commit)
            .into_iter()
            .collect();
        labels.push((LABEL_TREE.into(), tree.into()));
        labels.sort();
        labels
    }

    /// The preview's image built from `tree` for an earlier commit, if one exists.
    async fn image_of_tree(
        &self,
        preview: &PreviewRef,
        tree: &str,
    ) -> Result<Option<String>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_INSTANCE}={}", self.instance),
                format!("{LABEL_SLUG}={}", preview.slug),
                format!("{LABEL_TREE}={tree}"),
            ],
        )]);
        let options = ListImagesOptionsBuilder::new().filters(&filters).build();
        let images = call("list images", self.docker.list_images(Some(options))).await?;
        Ok(images.into_iter().next().map(|i| i.id))
    }

    /// Tags an existing image as the preview's image for its commit: no build.
    async fn tag(&self, image: &str, preview: &PreviewRef) -> Result<(), DockerError> {
        let options = TagImageOptionsBuilder::new()
            .repo(&self.image_repo(&preview.slug))
            .tag(preview.short())
            .build();
        call("tag image", self.docker.tag_image(image, Some(options))).await
    }

    /// The labels every stage's layers get right after its `FROM`: this instance's, nothing
    /// of a branch or commit, so the layer cache stays shared by every build of the instance.
    fn layer_labels(&self) -> Vec<(String, String)> {
        vec![
            (LABEL_INSTANCE.into(), self.instance.clone()),
            (LABEL_ROLE.into(), ROLE_BUILD_LAYER.into()),
        ]
    }

    /// Builds `context` (a tar whose Dockerfile already carries the labels) into the preview's
    /// image with the classic builder, appending the build output to `log`. The engine pulls a
    /// missing base image itself.
    async fn build(
        &self,
        preview: &PreviewRef,
        context: Vec<u8>,
        limits: &BuildLimits,
        log: &mut tokio::fs::File,
    ) -> Result<(), DockerError> {
        // The classic builder limits each step's container: memory (swap included) and a CPU
        // quota per scheduler period.
        let memory = i32::try_from(limits.memory).unwrap_or(i32::MAX);
        let quota = limits.nano_cpus.saturating_mul(CPU_PERIOD_US) / 1_000_000_000;
        let options = BuildImageOptionsBuilder::new()
            .t(&self.image_tag(preview))
            .rm(true)
            .forcerm(true)
            .memory(memory)
            .memswap(memory)
            .cpuperiod(CPU_PERIOD_US as i32)
            .cpuquota(i32::try_from(quota.max(1_000)).unwrap_or(i32::MAX))
            .build();
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(bytes::Bytes::from(context))),
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        log.write_all(text.as_bytes())
                            .await
                            .map_err(DockerError::Log)?;
                    }
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "build failed".into());
                        return self.build_failed(log, message).await;
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return self.build_failed(log, error).await;
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return self.build_failed(log, message).await;
                }
                Err(source) => {
                    return Err(DockerError::Api {
                        call: "build image",
                        source,
                    })
                }
            }
        }
        log.flush().await.map_err(DockerError::Log)
    }

    /// The port the app listens on: the lowest TCP port the image exposes (the engine keeps
    /// EXPOSE lines as a set, so "first" can only mean lowest).
    async fn exposed_port(&self, preview: &PreviewRef) -> Result<u16, DockerError> {
        let tag = self.image_tag(preview);
        let image = call("inspect image", self.docker.inspect_image(&tag)).await?;
        image
            .config
            .and_then(|c| c.exposed_ports)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| match p.split_once('/') {
                Some((port, "tcp")) => port.parse::<u16>().ok(),
                Some(_) => None,
                None => p.parse::<u16>().ok(),
            })
            .min()
            .ok_or(DockerError::NoExposedPort)
    }

    /// Creates and starts the preview's app container on its network, replacing a leftover
    /// container of the same name (a crash between create and start, or a dead one). The
    /// result has no upstream when the container stopped before it got an address.
    async fn run(
        &self,
        preview: &PreviewRef,
        port: u16,
        env: Vec<String>,
        limits: &ContainerLimits,
    ) -> Result<ContainerInfo, DockerError> {
        let name = self.container_name(preview);
        let network = self.network_name(&preview.slug);
        self.remove_container(&name).await?;
        let mut labels = self.labels(preview, ROLE_APP, Some(APP_SERVICE), Lifetime::Commit);
        labels.insert(LABEL_PORT.into(), port.to_string());
        let body = ContainerCreateBody {
            image: Some(self.image_tag(preview)),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network.clone()),
                // previewd restarts dead previews itself, within a budget, so a crash loop
                // ends as a visible failure instead of restarting forever.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                // A branch's leak or fork bomb stops at its own container.
                memory: Some(i64::try_from(limits.memory).unwrap_or(i64::MAX)),
                memory_swap: Some(i64::try_from(limits.memory).unwrap_or(i64::MAX)),
                nano_cpus: Some(limits.nano_cpus),
                pids_limit: Some(limits.pids),
                // setuid binaries in a branch's image cannot raise a process's privileges.
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = call(
            "create container",
            self.docker.create_container(Some(options), body),
        )
        .await?;
        self.start_container(&created.id).await?;
        let inspect = call(
            "inspect container",
            self.docker
                .inspect_container(&created.id, None::<InspectContainerOptions>),
        )
        .await?;
        // No address means the container already stopped; the caller reports that.
        let ip = inspect
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(&network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        Ok(ContainerInfo::started_web(
            created.id,
            name,
            preview,
            ip.map(|ip| SocketAddr::new(ip, port)),
        ))
    }

    /// Starts an existing container (a preview that died, or one just created).
    async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        call("start container", self.docker.start_container(id, None)).await
    }

    /// Whether the container has stopped since it was started: it exited, is gone, or is
    /// being restarted.
    async fn has_stopped(&self, id: &str) -> bool {
        let inspect = within(
            "inspect container",
            self.docker
                .inspect_container(id, None::<InspectContainerOptions>),
        )
        .await;
        let Ok(Ok(inspect)) = inspect else {
            return true;
        };
        let state = inspect.state.unwrap_or_default();
        state.running != Some(true) || state.restarting == Some(true)
    }

    /// The last `lines` lines the container wrote (stdout and stderr), for failure pages.
    /// Empty when the engine cannot say.
    async fn log_tail(&self, id: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        let read = async {
            while let Some(Ok(chunk)) = stream.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(API_TIMEOUT, read).await;
        out
    }

    /// Removes a container, killing it if it runs. Already gone counts as done.
    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let result = within(
            "remove container",
            self.docker.remove_container(id, Some(options)),
        )
        .await?;
        gone_is_fine(result, "remove container")
    }

    /// Removes an image by id (all its tags), or one tag of it by name: the image itself goes
    /// with its last tag, unless a container still uses it. Already gone counts as done.
    async fn remove_image(&self, id: &str) -> Result<(), DockerError> {
        // Forcing by id removes every tag at once; a tag is removed without force so that an
        // image still used through another tag stays.
        let force = !id.contains(':') || id.starts_with("sha256:");
        let options = RemoveImageOptionsBuilder::new().force(force).build();
        let result = within(
            "remove image",
            self.docker.remove_image(id, Some(options), None),
        )
        .await?;
        gone_is_fine(result.map(drop), "remove image")
    }

    /// Removes a layer a build left behind, and its untagged parents, unless something still
    /// uses it (a container of a build, an image built on it since): that conflict, and a
    /// layer already gone, count as done; a later pass looks again.
    async fn remove_leftover_layer(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptionsBuilder::new().force(false).build();
        let result = within(
            "remove build layer",
            self.docker.remove_image(id, Some(options), None),
        )
        .await?;
        match result {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            other => gone_is_fine(other.map(drop), "remove build layer"),
        }
    }

    /// Removes a volume by name. Already gone counts as done; one a container still uses is
    /// an error (the caller removes containers first).
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let result = within(
            "remove volume",
            self.docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>),
        )
        .await?;
        gone_is_fine(result, "remove volume")
    }

    /// Removes a network by id. Already gone counts as done.
    async fn remove_network(&self, id: &str) -> Result<(), DockerError> {
        let result = within("remove network", self.docker.remove_network(id)).await?;
        gone_is_fine(result, "remove network")
    }
}

/// `dockerfile` as previewd builds it: a `LABEL` of `layer_labels` right after each `FROM`
/// (every layer of every stage then carries them, finished build or not) and one `LABEL` of
/// `image_labels` appended (the image's own). Values are quoted with the Dockerfile's own
/// escape character (a `# escape=` directive may change it), and `$` is escaped so the
/// builder does not expand it.
pub fn labelled_dockerfile(
    dockerfile: &[u8],
    layer_labels: &[(String, String)],
    image_labels: &[(String, String)],
) -> Vec<u8> {
    let escape = escape_char(dockerfile);
    let mut escape_bytes = [0u8; 4];
    let escape_bytes = escape.encode_utf8(&mut escape_bytes).as_bytes();
    let layer_line = label_instruction(layer_labels, escape);
    let mut out = Vec::with_capacity(dockerfile.len() + 256);
    // Inside an instruction that goes on after a line ending in the escape character.
    let mut continuing = false;
    let mut in_from = false;
    for line in dockerfile.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line);
        let text = line.trim_ascii();
        // Blank lines and comments neither start nor end an instruction.
        if text.is_empty() || text.starts_with(b"#") {
            continue;
        }
        if !continuing {
            in_from = text.len() > 4
                && text[..4].eq_ignore_ascii_case(b"FROM")
                && text[4].is_ascii_whitespace();
        }
        continuing = text.ends_with(escape_bytes);
        if in_from && !continuing {
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(layer_line.as_bytes());
            out.push(b'\n');
            in_from = false;
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(label_instruction(image_labels, escape).as_bytes());
    out.push(b'\n');
    out
}

/// One `LABEL` instruction for `labels`, quoted for a Dockerfile whose escape is `escape`.
fn label_instruction(labels: &[(String, String)], escape: char) -> String {
    let quote = |s: &str| {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '$' || c == escape {
                out.push(escape);
            }
            out.push(c);
        }
        out.push('"');
        out
    };
    let mut line = String::from("LABEL");
    for (key, value) in labels {
        line.push(' ');
        line.push_str(&quote(key));
        line.push('=');
        line.push_str(&quote(value));
    }
    line
}

/// The escape character of a Dockerfile: `\\` unless a leading `# escape=` directive says.
fn escape_char(dockerfile: &[u8]) -> char {
    let text = String::from_utf8_lossy(dockerfile);
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        let directive = directive.trim();
        if let Some((key, value)) = directive.split_once('=') {
            if key.trim().eq_ignore_ascii_case("escape") {
                if let Some(c) = value.trim().chars().next() {
                    return c;
                }
            }
        } else {
            // Directives end at the first comment that is not one.
            break;
        }
    }
    '\\'
}

fn gone_is_fine(
    result: Result<(), bollard::errors::Error>,
    call: &'static str,
) -> Result<(), DockerError> {
    match result {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(source) => Err(DockerError::Api { call, source }),
    }
}

/// What previewd reads back from any object's labels.
struct Labelled {
    id: String,
    branch: String,
    slug: String,
    commit: String,
    /// Absent on objects made before stacks (then the one service, [`APP_SERVICE`]).
    service: Option<String>,
    /// Absent on objects made before stacks (then read from what the object is).
    lifetime: Option<Lifetime>,
}

/// The labels previewd reads back from an object; `None` for objects missing them (made by
/// hand with the instance label only, say), which are then never touched.
fn labelled(id: Option<String>, labels: &HashMap<String, String>) -> Option<Labelled> {
    Some(Labelled {
        id: id?,
        branch: labels.get(LABEL_BRANCH)?.clone(),
        slug: labels.get(LABEL_SLUG)?.clone(),
        commit: labels.get(LABEL_COMMIT)?.clone(),
        service: labels.get(LABEL_SERVICE).cloned(),
        lifetime: labels.get(LABEL_LIFETIME).and_then(|l| Lifetime::parse(l)),
    })
}

/// The exit code in the engine's status line of an exited container, `Exited (0) 3 seconds
/// ago`: the list call says no more, and inspecting each container would cost a call apiece.
fn exit_code(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<(String, String)> {
        vec![
            ("previewd.branch".into(), "fix/\"quote\"-$HOME".into()),
            ("previewd.slug".into(), "fix-quote-home".into()),
        ]
    }

    fn layer() -> Vec<(String, String)> {
        vec![("previewd.role".into(), "build-layer".into())]
    }

    const LAYER: &str = "LABEL \"previewd.role\"=\"build-layer\"";

    fn labelled(dockerfile: &str) -> String {
        String::from_utf8(labelled_dockerfile(
            dockerfile.as_bytes(),
            &layer(),
            &labels(),
        ))
        .unwrap()
    }

    #[test]
    fn the_image_labels_are_one_quoted_instruction_at_the_end() {
        assert_eq!(
            labelled("FROM scratch"),
            format!(
                "FROM scratch\n{LAYER}\nLABEL \"previewd.branch\"=\"fix/\\\"quote\\\"-\\$HOME\" \"previewd.slug\"=\"fix-quote-home\"\n"
            )
        );
    }

    #[test]
    fn every_stage_labels_its_layers_right_after_its_from() {
        let text = labelled(
            "# a comment\nfrom node AS build\nRUN make \\\n  FROM-not-an-instruction\n\
             FROM --platform=linux/amd64 \\\n  # a comment inside\n  nginx\nCOPY --from=build /a /b\n",
        );
        assert_eq!(
            text,
            format!(
                "# a comment\nfrom node AS build\n{LAYER}\nRUN make \\\n  FROM-not-an-instruction\n\
                 FROM --platform=linux/amd64 \\\n  # a comment inside\n  nginx\n{LAYER}\n\
                 COPY --from=build /a /b\n{}\n",
                label_instruction(&labels(), '\\')
            )
        );
    }

    #[test]
    fn the_exit_code_is_read_from_the_status_line() {
        assert_eq!(exit_code("Exited (0) 3 seconds ago"), Some(0));
        assert_eq!(exit_code("Exited (137) About a minute ago"), Some(137));
        assert_eq!(exit_code("Exited (-1) 2 hours ago"), Some(-1));
        assert_eq!(exit_code("Up 5 seconds"), None);
        assert_eq!(exit_code("Exited () ago"), None);
    }

    #[test]
    fn the_escape_directive_is_honoured() {
        let text = labelled("# escape=`\nFROM scratch `\n  AS base\n");
        assert!(
            text.contains("  AS base\nLABEL \"previewd.role\""),
            "{text}"
        );
        assert!(
            text.ends_with("\"fix/`\"quote`\"-`$HOME\" \"previewd.slug\"=\"fix-quote-home\"\n"),
            "{text}"
        );
        assert_eq!(escape_char(b"# syntax=x\n# escape=`\nFROM a"), '`');
        assert_eq!(escape_char(b"FROM a\n# escape=`"), '\\');
    }
}
