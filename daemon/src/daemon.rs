//! `previewd run`: wires the parts together and owns their shutdown. Listeners are bound
//! here and handed to the servers; nothing below this module reads configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use previewd_proxy::{AcmeChallenge, AcmeSettings, RouteTable, TlsMode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::docker::Runtime;
use crate::reconcile::Reconciler;
use crate::{control, events, hook, mirror, sd_notify, watch};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificates: {0}")]
    Tls(#[from] previewd_proxy::TlsError),
    #[error(transparent)]
    Mirror(#[from] mirror::MirrorError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot watch the mirror's refs: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot find previewd's own binary for the git hook: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the daemon until `shutdown` is cancelled. Running previews are left running.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let config = Arc::new(prepare_paths(config)?);
    warn_if_per_host_certificates(&config);
    // Created before the certificates: ACME HTTP-01 issues for the hosts it holds.
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
    let certs = previewd_proxy::build_resolver(
        &config.tls,
        &config.state_dir,
        &config.domain,
        &routes,
        shutdown.clone().cancelled_owned(),
    )
    .await?;
    let binary = std::env::current_exe().map_err(RunError::CurrentExe)?;
    let hook_script = hook::render(&binary, &config.state_dir);
    let (mirror_path, main) = (config.mirror.clone(), config.main_branch.clone());
    tokio::task::spawn_blocking(move || {
        mirror::open_or_create(&mirror_path, &main)?;
        mirror::install_hook(&mirror_path, &hook_script)
    })
    .await??;

    let https = bind("HTTPS", config.https_listen).await?;
    let http = bind("HTTP redirect", config.http_listen).await?;
    let socket_path = config.socket_path();
    let control_listener = control::bind(&socket_path).await?;

    let status = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let (triggers_tx, triggers_rx) = mpsc::channel(64);
    let (gc_tx, gc_rx) = mpsc::channel(4);

    let tls = previewd_proxy::server_config(certs.resolver.clone());
    let https_task = tokio::spawn(previewd_proxy::serve_https(
        https,
        routes.clone(),
        tls,
        config.proxy.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    let http_task = tokio::spawn(previewd_proxy::serve_redirect(
        http,
        config.domain.clone(),
        config.https_listen.port(),
        certs.http01.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    let control_task = tokio::spawn(control::serve(
        control_listener,
        control::Channels {
            status: status.clone(),
            triggers: triggers_tx.clone(),
            gc: gc_tx,
        },
        shutdown.clone(),
    ));
    tracing::info!(
        https = %config.https_listen,
        http = %config.http_listen,
        mirror = %config.mirror.display(),
        domain = %config.domain,
        instance = %config.instance,
        certificates = ?certs.status.borrow().serving,
        "previewd listening"
    );

    if let Some(runtime) = connect_docker(&config, &shutdown).await {
        let runtime_events = runtime.clone();
        let mut reconciler = Reconciler::new(config.clone(), runtime, routes, status);
        // Watching before the first pass reads the refs: a push in between
        // (without the hook) is then noticed at once, not by the next resync.
        let _watcher = watch::watch_refs(&config.mirror, triggers_tx.clone())?;
        // Adopt what runs before saying ready, so a restart serves at once.
        reconciler.pass_logged().await;
        sd_notify::ready();
        let events = tokio::spawn(events::follow(
            runtime_events,
            triggers_tx,
            shutdown.clone(),
        ));
        reconciler.run(triggers_rx, gc_rx, shutdown.clone()).await;
        events.await?;
    }

    sd_notify::stopping();
    for task in [https_task, http_task] {
        if let Err(error) = task.await? {
            tracing::warn!(%error, "listener ended with an error");
        }
    }
    control_task.await?;
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("previewd stopped; previews keep running");
    Ok(())
}

/// ACME HTTP-01 is an opt-in with a cost the operator must not miss: said once, at start.
fn warn_if_per_host_certificates(config: &Config) {
    if let TlsMode::Acme(AcmeSettings {
        challenge: AcmeChallenge::Http01,
        ..
    }) = &config.tls
    {
        tracing::warn!(
            domain = %config.domain,
            http_listen = %config.http_listen,
            "ACME challenge http-01: every preview host name (so every branch name) will be \
             published in Certificate Transparency logs, and each preview costs one certificate \
             against the CA's rate limits (Let's Encrypt: 50 certificates per registered domain \
             per week); port 80 of every preview name must reach http_listen"
        );
    }
}

/// Creates the state dir and makes both paths absolute: the git hook runs elsewhere.
fn prepare_paths(mut config: Config) -> Result<Config, RunError> {
    let absolute = |path: &Path| -> Result<PathBuf, RunError> {
        std::fs::create_dir_all(path)
            .and_then(|()| path.canonicalize())
            .map_err(|source| RunError::StateDir {
                path: path.to_owned(),
                source,
            })
    };
    config.state_dir = absolute(&config.state_dir)?;
    if !config.mirror.is_absolute() {
        config.mirror = std::env::current_dir()
            .map_err(|source| RunError::StateDir {
                path: config.mirror.clone(),
                source,
            })?
            .join(&config.mirror);
    }
    Ok(config)
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen { what, addr, source })
}

/// Connects to the engine, retrying with backoff while the proxy already serves. `None` when
/// shut down first.
async fn connect_docker(config: &Config, shutdown: &CancellationToken) -> Option<Runtime> {
    let mut delay = Duration::from_millis(500);
    loop {
        let (endpoint, pool) = (config.docker_host.as_deref(), config.network_pool);
        match Runtime::connect(endpoint, &config.instance, pool).await {
            Ok(runtime) => return Some(runtime),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "Docker engine not reachable");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
