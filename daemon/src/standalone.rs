//! `previewd proxy`: the embedded TLS reverse proxy on its own, with routes from flags and the
//! admin socket instead of git and Docker, and the `previewd proxy route` verbs that talk to
//! it. It binds the listeners and owns shutdown; it must not reach into the proxy's internals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Args, Subcommand};
use previewd_proxy::{
    build_resolver, normalize_host, serve_https, server_config, CertFilesError, Limits, Route,
    RouteTable, SharedRoutes, TlsError, TlsMode,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{control, route_admin};

/// Exit status for bad flags, as clap uses for usage errors.
const USAGE: u8 = 2;

/// `previewd proxy [FLAGS]` or `previewd proxy route ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProxyCommand {
    #[command(subcommand)]
    command: Option<ProxySubcommand>,
    #[command(flatten)]
    args: ProxyArgs,
}

#[derive(Debug, Subcommand)]
enum ProxySubcommand {
    /// Change the routes of a running `previewd proxy` through its admin socket
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Route HOST to the plain-HTTP upstream ADDR (replacing its route, if any)
    Add {
        #[arg(long, value_name = "PATH")]
        admin_socket: PathBuf,
        #[arg(value_name = "HOST=ADDR")]
        route: String,
    },
    /// Remove the route of HOST (it answers 404 again)
    Remove {
        #[arg(long, value_name = "PATH")]
        admin_socket: PathBuf,
        #[arg(value_name = "HOST")]
        host: String,
    },
    /// List the routes, one HOST=ADDR per line
    Ls {
        #[arg(long, value_name = "PATH")]
        admin_socket: PathBuf,
    },
}

/// The flags of `previewd proxy`, as typed; [`ProxyConfig`] is the checked form.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address for HTTPS
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: String,
    /// PEM certificate chain served for every name (with --key); without both, previewd's own
    /// CA in --state-dir issues a certificate per name under --domain
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Route HOST to the plain-HTTP upstream ADDR; repeatable. Other hosts answer 404
    #[arg(long = "route", value_name = "HOST=ADDR")]
    routes: Vec<String>,
    /// Unix socket for changing routes while running (`previewd proxy route`)
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// How long open connections get to finish after SIGTERM or SIGINT, e.g. 10s, 500ms
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    drain_timeout: String,
    /// Without --cert/--key: certificates are issued for names under this domain
    #[arg(long, value_name = "BASE", default_value = "preview.localhost")]
    domain: String,
    /// Without --cert/--key: where previewd's CA lives (`<DIR>/tls`)
    #[arg(long, value_name = "DIR", default_value = ".previewd")]
    state_dir: PathBuf,
    /// Threads serving HTTPS, each with its own event loop [default: one per CPU]
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
}

/// A bad `previewd proxy` flag; each is reported as one line with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ProxyArgsError {
    #[error("--listen {0:?}: expected an address such as 127.0.0.1:8443")]
    Listen(String),
    #[error("--route {0:?}: expected HOST=ADDR such as app.preview.localhost=127.0.0.1:3000")]
    Route(String),
    #[error("--cert and --key go together")]
    CertWithoutKey,
    #[error("--drain-timeout {0:?}: expected a duration such as 10s or 500ms")]
    DrainTimeout(String),
    #[error("--domain {0:?}: not a domain name")]
    Domain(String),
    #[error("--worker-threads must be at least 1")]
    WorkerThreads,
    #[error("--cert/--key: {0}")]
    TlsFiles(#[source] CertFilesError),
}

/// Why a running standalone proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket: {0}")]
    Admin(#[from] control::ControlError),
    #[error("TLS certificates: {0}")]
    Tls(#[source] TlsError),
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("HTTPS listener failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Where the proxy's certificates come from.
#[derive(Debug)]
enum TlsSource {
    /// One chain and key for every name.
    Files { cert: PathBuf, key: PathBuf },
    /// previewd's CA in `<state_dir>/tls`, a leaf per name under `domain`.
    Ca { state_dir: PathBuf, domain: String },
}

/// `previewd proxy`'s checked settings.
#[derive(Debug)]
struct ProxyConfig {
    listen: SocketAddr,
    tls: TlsSource,
    routes: Vec<(String, SocketAddr)>,
    admin_socket: Option<PathBuf>,
    drain_timeout: Duration,
    worker_threads: Option<usize>,
}

impl TryFrom<&ProxyArgs> for ProxyConfig {
    type Error = ProxyArgsError;

    fn try_from(args: &ProxyArgs) -> Result<Self, Self::Error> {
        let listen = args
            .listen
            .parse()
            .map_err(|_| ProxyArgsError::Listen(args.listen.clone()))?;
        let tls = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None) => TlsSource::Ca {
                state_dir: args.state_dir.clone(),
                domain: normalize_host(&args.domain)
                    .filter(|d| !d.starts_with('['))
                    .ok_or_else(|| ProxyArgsError::Domain(args.domain.clone()))?,
            },
            _ => return Err(ProxyArgsError::CertWithoutKey),
        };
        let routes = args
            .routes
            .iter()
            .map(|raw| parse_route(raw).ok_or_else(|| ProxyArgsError::Route(raw.clone())))
            .collect::<Result<_, _>>()?;
        let drain_timeout = parse_duration(&args.drain_timeout)
            .ok_or_else(|| ProxyArgsError::DrainTimeout(args.drain_timeout.clone()))?;
        if args.worker_threads == Some(0) {
            return Err(ProxyArgsError::WorkerThreads);
        }
        Ok(Self {
            listen,
            tls,
            routes,
            admin_socket: args.admin_socket.clone(),
            drain_timeout,
            worker_threads: args.worker_threads,
        })
    }
}

/// `HOST=ADDR` with a valid host name and a socket address; the host comes back normalized.
fn parse_route(raw: &str) -> Option<(String, SocketAddr)> {
    let (host, addr) = raw.split_once('=')?;
    Some((normalize_host(host)?, addr.trim().parse().ok()?))
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(number)),
        "ms" => Some(Duration::from_millis(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

/// Runs `previewd proxy ...`: the proxy itself, or one `route` verb.
pub fn main(command: ProxyCommand) -> ExitCode {
    match command.command {
        Some(ProxySubcommand::Route { command }) => route_verb(command),
        None => run_proxy(&command.args),
    }
}

fn run_proxy(args: &ProxyArgs) -> ExitCode {
    let config = match ProxyConfig::try_from(args) {
        Ok(config) => config,
        Err(error) => return usage(error),
    };
    crate::cli::init_logging();
    // Connections run on the proxy's own threads (`Limits::threads`); this
    // runtime only has signals, the admin socket and certificate reloads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return failure(ProxyRunError::Runtime(error)),
    };
    let shutdown = CancellationToken::new();
    let (mode, state_dir, domain) = match &config.tls {
        TlsSource::Files { cert, key } => (
            TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            Path::new("."),
            "",
        ),
        TlsSource::Ca { state_dir, domain } => {
            (TlsMode::SelfSigned, state_dir.as_path(), domain.as_str())
        }
    };
    let routes = route_table(&config);
    // The proxy's `files` mode: checked now, then re-read when the files are replaced.
    let certs = runtime.block_on(build_resolver(
        &mode,
        state_dir,
        domain,
        &routes,
        shutdown.clone().cancelled_owned(),
    ));
    let tls = match certs {
        Ok(certs) => server_config(certs.resolver),
        // Unreadable or mismatched files are a usage error, found before anything serves.
        Err(TlsError::Files(error)) => return usage(ProxyArgsError::TlsFiles(error)),
        Err(error) => return failure(ProxyRunError::Tls(error)),
    };
    match runtime.block_on(serve(config, routes, tls, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failure(error),
    }
}

fn failure(error: ProxyRunError) -> ExitCode {
    tracing::error!(%error, "previewd proxy cannot run");
    eprintln!("previewd: {error}");
    ExitCode::FAILURE
}

fn usage(error: ProxyArgsError) -> ExitCode {
    eprintln!("previewd: {error}");
    ExitCode::from(USAGE)
}

/// The routes given as flags.
fn route_table(config: &ProxyConfig) -> SharedRoutes {
    let mut table = RouteTable::new();
    for (host, upstream) in &config.routes {
        table.insert(
            host,
            Route::Live {
                upstream: *upstream,
            },
        );
    }
    Arc::new(ArcSwap::from_pointee(table))
}

/// Serves `routes` until SIGTERM or SIGINT, then drains for up to the drain timeout.
async fn serve(
    config: ProxyConfig,
    routes: SharedRoutes,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), ProxyRunError> {
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ProxyRunError::Listen {
                addr: config.listen,
                source,
            })?;
    let local = listener
        .local_addr()
        .map_err(|source| ProxyRunError::Listen {
            addr: config.listen,
            source,
        })?;
    // Installed before anyone can know we are up, so an early SIGTERM drains too.
    let mut term = signal(SignalKind::terminate()).map_err(ProxyRunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ProxyRunError::Signals)?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: draining open connections");
        on_signal.cancel();
    });
    let admin = match &config.admin_socket {
        Some(path) => {
            let listener = control::bind(path).await?;
            Some(tokio::spawn(route_admin::serve(
                listener,
                routes.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };

    tracing::info!(listen = %local, routes = config.routes.len(), "previewd proxy serving");
    // The one line on stdout: scripts and tests wait for it, and learn the port of :0.
    println!("previewd proxy: listening on https://{local}");
    let defaults = Limits::default();
    let limits = Limits {
        drain_timeout: config.drain_timeout,
        threads: config.worker_threads.unwrap_or(defaults.threads),
        ..defaults
    };
    let stop = shutdown.clone();
    let served = serve_https(listener, routes, tls, limits, async move {
        stop.cancelled().await;
    })
    .await;
    shutdown.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
        remove_socket(config.admin_socket.as_deref());
    }
    served.map_err(ProxyRunError::Serve)
}

fn remove_socket(path: Option<&Path>) {
    if let Some(path) = path {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::debug!(path = %path.display(), %error, "cannot remove the admin socket");
        }
    }
}

/// `previewd proxy route add|remove|ls`: one call to the admin socket, its answer printed.
fn route_verb(command: RouteCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("previewd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match command {
        RouteCommand::Add {
            admin_socket,
            route,
        } => {
            let Some((host, upstream)) = parse_route(&route) else {
                return usage(ProxyArgsError::Route(route));
            };
            runtime.block_on(route_admin::add(&admin_socket, &host, upstream))
        }
        RouteCommand::Remove { admin_socket, host } => {
            let Some(host) = normalize_host(&host) else {
                eprintln!("previewd: {host:?} is not a host name");
                return ExitCode::from(USAGE);
            };
            runtime.block_on(route_admin::remove(&admin_socket, &host))
        }
        RouteCommand::Ls { admin_socket } => runtime.block_on(route_admin::list(&admin_socket)),
    };
    match answer {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("previewd: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<ProxyConfig, ProxyArgsError> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ProxyArgs,
        }
        let argv = std::iter::once("previewd-proxy").chain(extra.iter().copied());
        ProxyConfig::try_from(&Wrap::parse_from(argv).args)
    }

    #[test]
    fn defaults_use_the_ca_on_loopback() {
        let c = args(&[]).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert!(c.routes.is_empty());
        assert!(matches!(c.tls, TlsSource::Ca { ref domain, .. } if domain == "preview.localhost"));
    }

    #[test]
    fn routes_are_normalized() {
        let c = args(&[
            "--route",
            "App.Test.=127.0.0.1:3000",
            "--route",
            "b.test=[::1]:80",
        ])
        .expect("routes");
        assert_eq!(c.routes[0].0, "app.test");
        assert_eq!(c.routes[0].1.to_string(), "127.0.0.1:3000");
        assert_eq!(c.routes[1].1.to_string(), "[::1]:80");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (&["--listen", "nope"], "--listen"),
            (&["--route", "app.test"], "--route"),
            (&["--route", "app.test=nope"], "--route"),
            (&["--route", "bad host=127.0.0.1:1"], "--route"),
            (&["--cert", "c.pem"], "--cert and --key"),
            (&["--drain-timeout", "soon"], "--drain-timeout"),
            (&["--domain", "a b"], "--domain"),
        ];
        for (flags, expected) in cases {
            let err = args(flags).expect_err(expected).to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
