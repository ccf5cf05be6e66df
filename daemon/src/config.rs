//! `previewd run` settings: command-line flags over a TOML file over embedded defaults,
//! validated once into a [`Config`] of domain types. Nothing else parses settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use previewd_proxy::{AcmeChallenge, AcmeSettings, TlsMode};
use serde::Deserialize;

use previewd_proxy::Limits;

use crate::health::HealthCheck;
use crate::merged::MergedRule;
use crate::model::{BuildLimits, ContainerLimits};
use crate::spec::HostPolicy;
use crate::subnet_pool::{Ipv4Net, SubnetPool};

/// Flags of `previewd run`. Every one of them can also be set in the `--config` file.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (flags win over it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where previewd keeps its CA, logs, records and control socket [default: ./.previewd]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Bare git mirror developers push to; created if missing [default: <state-dir>/mirror.git]
    #[arg(long, value_name = "DIR")]
    pub mirror: Option<PathBuf>,
    /// Base domain: previews are served at <slug>.<domain> [default: preview.localhost]
    #[arg(long, value_name = "BASE")]
    pub domain: Option<String>,
    /// HTTPS listener [default: 127.0.0.1:8443]
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<SocketAddr>,
    /// Plain-HTTP listener that redirects to HTTPS [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Scopes every Docker label and name, so several daemons can share one engine [default: default]
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// The integration branch: it gets no preview, and branches merged into it are removed [default: main]
    #[arg(long = "main", value_name = "BRANCH")]
    pub main_branch: Option<String>,
    /// Docker endpoint, e.g. unix:///var/run/docker.sock [default: $DOCKER_HOST, else the local socket]
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
    /// Builds that may run at once; more wait in a queue [default: 1]
    #[arg(long, value_name = "N")]
    pub build_concurrency: Option<usize>,
    /// Removing more previews than this in one pass waits for a second look [default: 3]
    #[arg(long, value_name = "N")]
    pub mass_removal_threshold: Option<usize>,
    /// When a branch counts as merged: `ancestry` (its tip is in main), or `patch-id` (also
    /// when all its changes are in main, as after a squash or rebase merge) [default: patch-id]
    #[arg(long, value_name = "RULE")]
    pub merged: Option<String>,
    /// Remove the preview of a branch with no commit for this many days (0: never) [default: 0]
    #[arg(long, value_name = "DAYS")]
    pub expire_idle_days: Option<u64>,
    /// Keep at most this many previews, removing the idlest first (0: no cap) [default: 0]
    #[arg(long, value_name = "N")]
    pub max_previews: Option<usize>,
    /// Delete build logs older than this many days [default: 14]
    #[arg(long, value_name = "DAYS")]
    pub keep_logs_days: Option<u64>,
}

/// The `--config` file as written. Keys mirror the long flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    mirror: Option<PathBuf>,
    domain: Option<String>,
    https_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    instance: Option<String>,
    main: Option<String>,
    docker_host: Option<String>,
    build_concurrency: Option<usize>,
    mass_removal_threshold: Option<usize>,
    merged: Option<String>,
    expire_idle_days: Option<u64>,
    max_previews: Option<usize>,
    keep_logs_days: Option<u64>,
    health: Option<FileHealth>,
    proxy: Option<FileProxy>,
    tls: Option<FileTls>,
    policy: Option<FilePolicy>,
    limits: Option<FileLimits>,
    network: Option<FileNetwork>,
}

/// The `[network]` table: where preview networks get their subnets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    pool: Option<String>,
    subnet_size: Option<u8>,
}

/// The `[limits]` table: what each container and each build of a preview may use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<i64>,
    build_memory: Option<String>,
    build_cpus: Option<f64>,
    build_timeout_s: Option<u64>,
}

/// The `[policy]` table: what a repository's compose file may ask for beyond the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    /// Capabilities a service may add with `cap_add`, e.g. `["NET_BIND_SERVICE"]`.
    allowed_capabilities: Option<Vec<String>>,
}

/// The `[health]` table: when a new version may take traffic.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    path: Option<String>,
    /// 0 or absent: any status below 500.
    status: Option<u16>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    start_period_s: Option<u64>,
}

/// The `[proxy]` table: limits and timeouts of the HTTPS listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    handshake_timeout_s: Option<u64>,
    header_read_timeout_s: Option<u64>,
    max_header_bytes: Option<usize>,
    max_uri_bytes: Option<usize>,
    idle_timeout_s: Option<u64>,
    write_timeout_s: Option<u64>,
    upstream_connect_timeout_s: Option<u64>,
    upstream_response_timeout_s: Option<u64>,
    client_body_timeout_s: Option<u64>,
    max_connections: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    drain_timeout_s: Option<u64>,
    threads: Option<usize>,
}

/// The `[tls]` table: where the served certificate comes from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    /// "self-signed" (default), "files" or "acme".
    mode: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    acme: Option<FileAcme>,
}

/// The `[tls.acme]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcme {
    directory: Option<String>,
    ca_file: Option<PathBuf>,
    email: Option<String>,
    dns_hook: Option<PathBuf>,
    /// "dns-01" (default): one wildcard. "http-01": a certificate per preview host, which
    /// puts every branch name in CT logs.
    challenge: Option<String>,
    hook_timeout_s: Option<u64>,
    renew_check_interval_s: Option<u64>,
}

/// Validated settings of a running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_dir: PathBuf,
    pub mirror: PathBuf,
    /// Lowercase, no trailing dot.
    pub domain: String,
    pub https_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// `[a-z0-9-]`, at most 32 bytes: it goes into container and network names.
    pub instance: String,
    pub main_branch: String,
    /// `None`: `$DOCKER_HOST`, else the platform's local socket.
    pub docker_host: Option<String>,
    /// At least 1.
    pub build_concurrency: usize,
    /// Retiring more previews than this in one pass needs a second pass to agree.
    pub mass_removal_threshold: usize,
    pub merged: MergedRule,
    /// Previews of branches without a commit for this long are removed; `None`: never.
    pub expire_idle: Option<Duration>,
    /// At most this many previews (the idlest go first); `None`: no cap.
    pub max_previews: Option<usize>,
    /// Build logs older than this are deleted.
    pub keep_logs: Duration,
    pub health: HealthCheck,
    /// Bounds on clients and upstreams of the HTTPS listener.
    pub proxy: Limits,
    /// Where the served certificate comes from.
    pub tls: TlsMode,
    /// What a branch's compose file may ask for.
    pub policy: HostPolicy,
    /// What each preview container may use.
    pub container_limits: ContainerLimits,
    /// What each build may use, and for how long.
    pub build_limits: BuildLimits,
    /// The subnets preview networks take.
    pub network_pool: SubnetPool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid domain {0:?}: expected DNS labels of [a-z0-9-] separated by dots, e.g. preview.example.com")]
    Domain(String),
    #[error(
        "invalid instance {0:?}: expected 1 to 32 characters of [a-z0-9-], not starting with '-'"
    )]
    Instance(String),
    #[error("invalid main branch {0:?}: expected a branch name such as main")]
    MainBranch(String),
    #[error("invalid build_concurrency 0: at least one build must be able to run")]
    NoBuilds,
    #[error("invalid [health] {0}")]
    Health(&'static str),
    #[error("invalid [proxy] {0}")]
    Proxy(&'static str),
    #[error("invalid merged rule {0:?}: expected \"patch-id\" or \"ancestry\"")]
    MergedRule(String),
    #[error("invalid [tls] mode {0:?}: expected \"self-signed\", \"files\" or \"acme\"")]
    TlsMode(String),
    #[error("invalid [tls.acme] challenge {0:?}: expected \"dns-01\" or \"http-01\"")]
    AcmeChallenge(String),
    #[error("invalid {0}")]
    Tls(&'static str),
    #[error("invalid [network] {0}")]
    Network(String),
    #[error("invalid [limits] {0}")]
    Limits(String),
    #[error("invalid [policy] allowed_capabilities entry {0:?}: expected a capability name such as NET_BIND_SERVICE")]
    Capability(String),
}

impl Config {
    /// Flags win over the file, the file over the embedded defaults.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &RunArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let state_dir = pick(&args.state_dir, file.state_dir, || {
            PathBuf::from(".previewd")
        });
        let mirror = pick(&args.mirror, file.mirror, || state_dir.join("mirror.git"));
        let domain = pick(&args.domain, file.domain, || "preview.localhost".into());
        let instance = pick(&args.instance, file.instance, || "default".into());
        let main_branch = pick(&args.main_branch, file.main, || "main".into());
        Ok(Config {
            https_listen: pick(&args.https_listen, file.https_listen, || {
                SocketAddr::from(([127, 0, 0, 1], 8443))
            }),
            http_listen: pick(&args.http_listen, file.http_listen, || {
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }),
            docker_host: args.docker_host.clone().or(file.docker_host),
            build_concurrency: match pick(&args.build_concurrency, file.build_concurrency, || 1) {
                0 => return Err(ConfigError::NoBuilds),
                n => n,
            },
            merged: match pick(&args.merged, file.merged, || "patch-id".into()).as_str() {
                "patch-id" => MergedRule::PatchId,
                "ancestry" => MergedRule::Ancestry,
                other => return Err(ConfigError::MergedRule(other.to_owned())),
            },
            expire_idle: match pick(&args.expire_idle_days, file.expire_idle_days, || 0) {
                0 => None,
                days => Some(days_to_duration(days)),
            },
            max_previews: match pick(&args.max_previews, file.max_previews, || 0) {
                0 => None,
                n => Some(n),
            },
            health: health(file.health.unwrap_or_default())?,
            proxy: proxy_limits(file.proxy.unwrap_or_default())?,
            tls: tls(file.tls.unwrap_or_default())?,
            policy: policy(file.policy.unwrap_or_default())?,
            container_limits: container_limits(file.limits.as_ref())?,
            build_limits: build_limits(file.limits.as_ref())?,
            network_pool: network_pool(file.network.unwrap_or_default())?,
            keep_logs: days_to_duration(pick(&args.keep_logs_days, file.keep_logs_days, || 14)),
            mass_removal_threshold: pick(
                &args.mass_removal_threshold,
                file.mass_removal_threshold,
                || 3,
            ),
            domain: validate_domain(&domain)?,
            instance: validate_instance(instance)?,
            main_branch: validate_main(main_branch)?,
            mirror,
            state_dir,
        })
    }

    /// The control socket the CLI and the git hook talk to.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.state_dir)
    }

    /// `https://<slug>.<domain>[:port]/`, the port left out when it is 443.
    pub fn preview_url(&self, slug: &str) -> String {
        match self.https_listen.port() {
            443 => format!("https://{slug}.{}/", self.domain),
            port => format!("https://{slug}.{}:{port}/", self.domain),
        }
    }
}

/// Where the control socket of the daemon using `state_dir` lives.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("previewd.sock")
}

fn network_pool(file: FileNetwork) -> Result<SubnetPool, ConfigError> {
    let range: Ipv4Net = file
        .pool
        .as_deref()
        .unwrap_or("10.210.0.0/16")
        .parse()
        .map_err(|why| ConfigError::Network(format!("pool: {why}")))?;
    SubnetPool::new(range, file.subnet_size.unwrap_or(26)).map_err(ConfigError::Network)
}

/// Docker refuses less memory than this for a container.
const MIN_MEMORY: u64 = 6 << 20;

fn memory(text: Option<&str>, key: &str, default: u64) -> Result<u64, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let bytes = crate::spec::units::bytes(text)
        .map_err(|why| ConfigError::Limits(format!("{key}: {why}")))?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::Limits(format!("{key}: at least 6m")));
    }
    Ok(bytes)
}

/// CPUs as the engine counts them, in billionths.
fn nano_cpus(value: Option<f64>, key: &str) -> Result<i64, ConfigError> {
    match value {
        None => Ok(1_000_000_000),
        Some(cpus) if (0.01..=1024.0).contains(&cpus) => Ok((cpus * 1e9).round() as i64),
        Some(_) => Err(ConfigError::Limits(format!(
            "{key}: from 0.01 to 1024 CPUs"
        ))),
    }
}

fn container_limits(file: Option<&FileLimits>) -> Result<ContainerLimits, ConfigError> {
    let pids = match file.and_then(|f| f.pids) {
        None => 512,
        Some(pids) if pids >= 16 => pids,
        Some(_) => return Err(ConfigError::Limits("pids: at least 16".into())),
    };
    Ok(ContainerLimits {
        memory: memory(file.and_then(|f| f.memory.as_deref()), "memory", 1 << 30)?,
        nano_cpus: nano_cpus(file.and_then(|f| f.cpus), "cpus")?,
        pids,
    })
}

fn build_limits(file: Option<&FileLimits>) -> Result<BuildLimits, ConfigError> {
    let memory = memory(
        file.and_then(|f| f.build_memory.as_deref()),
        "build_memory",
        2000 << 20,
    )?;
    // The engine API client takes a build's memory as a 32-bit count of bytes.
    if memory > i32::MAX as u64 {
        return Err(ConfigError::Limits("build_memory: at most 2047m".into()));
    }
    let timeout = match file.and_then(|f| f.build_timeout_s) {
        None => Duration::from_secs(900),
        Some(s @ 1..=86_400) => Duration::from_secs(s),
        Some(_) => {
            return Err(ConfigError::Limits(
                "build_timeout_s: from 1 to 86400".into(),
            ))
        }
    };
    Ok(BuildLimits {
        memory,
        nano_cpus: nano_cpus(file.and_then(|f| f.build_cpus), "build_cpus")?,
        timeout,
    })
}

fn policy(file: FilePolicy) -> Result<HostPolicy, ConfigError> {
    let mut allowed_capabilities = std::collections::BTreeSet::new();
    for name in file.allowed_capabilities.unwrap_or_default() {
        let upper = name.to_ascii_uppercase();
        let cap = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let valid = !cap.is_empty() && cap.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        if !valid {
            return Err(ConfigError::Capability(name));
        }
        allowed_capabilities.insert(cap.to_owned());
    }
    Ok(HostPolicy {
        allowed_capabilities,
    })
}

fn health(file: FileHealth) -> Result<HealthCheck, ConfigError> {
    let default = HealthCheck::default();
    let path = file.path.unwrap_or(default.path);
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ConfigError::Health(
            "path: expected an absolute path without spaces, e.g. /healthz",
        ));
    }
    let status = match file.status {
        None | Some(0) => None,
        Some(code @ 100..=599) => Some(code),
        Some(_) => {
            return Err(ConfigError::Health(
                "status: expected 100 to 599, or 0 for any below 500",
            ))
        }
    };
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    let check = HealthCheck {
        path,
        status,
        interval: ms(file.interval_ms, default.interval),
        timeout: ms(file.timeout_ms, default.timeout),
        start_period: file
            .start_period_s
            .map_or(default.start_period, Duration::from_secs),
    };
    if check.interval.is_zero() || check.timeout.is_zero() || check.start_period.is_zero() {
        return Err(ConfigError::Health(
            "interval_ms, timeout_ms and start_period_s must be above 0",
        ));
    }
    Ok(check)
}

/// The longest timeout `[proxy]` takes: a week.
const MAX_PROXY_TIMEOUT_S: u64 = 7 * 24 * 3600;

fn proxy_limits(file: FileProxy) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
    let limits = Limits {
        handshake_timeout: secs(file.handshake_timeout_s, d.handshake_timeout),
        header_read_timeout: secs(file.header_read_timeout_s, d.header_read_timeout),
        max_header_bytes: file.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_uri_bytes: file.max_uri_bytes.unwrap_or(d.max_uri_bytes),
        idle_timeout: secs(file.idle_timeout_s, d.idle_timeout),
        write_timeout: secs(file.write_timeout_s, d.write_timeout),
        upstream_connect_timeout: secs(file.upstream_connect_timeout_s, d.upstream_connect_timeout),
        upstream_response_timeout: secs(
            file.upstream_response_timeout_s,
            d.upstream_response_timeout,
        ),
        client_body_timeout: secs(file.client_body_timeout_s, d.client_body_timeout),
        max_connections: file.max_connections.unwrap_or(d.max_connections),
        h2_max_concurrent_streams: file
            .h2_max_concurrent_streams
            .unwrap_or(d.h2_max_concurrent_streams),
        drain_timeout: secs(file.drain_timeout_s, d.drain_timeout),
        threads: file.threads.unwrap_or(d.threads),
    };
    let timeouts = [
        limits.handshake_timeout,
        limits.header_read_timeout,
        limits.idle_timeout,
        limits.write_timeout,
        limits.upstream_connect_timeout,
        limits.upstream_response_timeout,
        limits.client_body_timeout,
    ];
    if timeouts.iter().any(Duration::is_zero) {
        return Err(ConfigError::Proxy(
            "timeouts must be above 0 (only drain_timeout_s may be 0)",
        ));
    }
    // Longer means nothing on a proxy, and deadlines must stay on the clock.
    let longest = Duration::from_secs(MAX_PROXY_TIMEOUT_S);
    if timeouts
        .iter()
        .chain([&limits.drain_timeout])
        .any(|t| *t > longest)
    {
        return Err(ConfigError::Proxy(
            "timeouts must be at most 7 days (604800 s)",
        ));
    }
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if limits.max_header_bytes < 8192 {
        return Err(ConfigError::Proxy("max_header_bytes: at least 8192"));
    }
    if limits.max_uri_bytes < 256 || limits.max_uri_bytes > limits.max_header_bytes {
        return Err(ConfigError::Proxy(
            "max_uri_bytes: at least 256 and at most max_header_bytes",
        ));
    }
    if limits.max_connections == 0 || limits.h2_max_concurrent_streams == 0 || limits.threads == 0 {
        return Err(ConfigError::Proxy(
            "max_connections, h2_max_concurrent_streams and threads must be above 0",
        ));
    }
    Ok(limits)
}

fn tls(file: FileTls) -> Result<TlsMode, ConfigError> {
    let mode = file.mode.unwrap_or_else(|| "self-signed".into());
    let files = match (file.cert_file, file.key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Tls(
                "[tls] cert_file and key_file: set both or neither",
            ))
        }
    };
    if mode != "files" && files.is_some() {
        return Err(ConfigError::Tls(
            "[tls] cert_file and key_file: only used with mode = \"files\"",
        ));
    }
    if mode != "acme" && file.acme.is_some() {
        return Err(ConfigError::Tls(
            "[tls.acme]: only used with mode = \"acme\"",
        ));
    }
    match mode.as_str() {
        "self-signed" => Ok(TlsMode::SelfSigned),
        "files" => match files {
            Some((cert, key)) => Ok(TlsMode::Files { cert, key }),
            None => Err(ConfigError::Tls(
                "[tls] cert_file and key_file: mode = \"files\" needs both",
            )),
        },
        "acme" => acme(file.acme.unwrap_or_default()).map(TlsMode::Acme),
        _ => Err(ConfigError::TlsMode(mode)),
    }
}

fn acme(file: FileAcme) -> Result<AcmeSettings, ConfigError> {
    let challenge = match file.challenge.as_deref().unwrap_or("dns-01") {
        "dns-01" => acme_dns01(file.dns_hook, file.hook_timeout_s)?,
        // The hook keys are refused rather than ignored: a config that names a hook most likely
        // meant the wildcard, and http-01 publishes every branch name.
        "http-01" if file.dns_hook.is_some() || file.hook_timeout_s.is_some() => {
            return Err(ConfigError::Tls(
                "[tls.acme] dns_hook and hook_timeout_s: only used with challenge = \"dns-01\"",
            ))
        }
        "http-01" => AcmeChallenge::Http01,
        other => return Err(ConfigError::AcmeChallenge(other.to_owned())),
    };
    let mut settings = AcmeSettings::new(challenge);
    if let Some(directory) = file.directory {
        if !directory.starts_with("https://") {
            return Err(ConfigError::Tls(
                "[tls.acme] directory: expected an https:// URL",
            ));
        }
        settings.directory = directory;
    }
    if let Some(email) = file.email {
        let ok = email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !email.contains(char::is_whitespace)
        });
        if !ok {
            return Err(ConfigError::Tls(
                "[tls.acme] email: expected an address such as ops@example.com",
            ));
        }
        settings.email = Some(email);
    }
    settings.ca_file = file.ca_file;
    if let Some(secs) = file.renew_check_interval_s {
        settings.renew_check_interval = Duration::from_secs(secs);
    }
    if settings.renew_check_interval.is_zero() {
        return Err(ConfigError::Tls(ACME_ZERO));
    }
    Ok(settings)
}

const ACME_ZERO: &str = "[tls.acme] hook_timeout_s and renew_check_interval_s must be above 0";

fn acme_dns01(hook: Option<PathBuf>, timeout_s: Option<u64>) -> Result<AcmeChallenge, ConfigError> {
    let Some(hook) = hook else {
        return Err(ConfigError::Tls(
            "[tls.acme] dns_hook: challenge = \"dns-01\" (the default) needs the program that sets the TXT records",
        ));
    };
    Ok(match timeout_s {
        None => AcmeChallenge::dns01(hook),
        Some(0) => return Err(ConfigError::Tls(ACME_ZERO)),
        Some(secs) => AcmeChallenge::Dns01 {
            hook,
            hook_timeout: Duration::from_secs(secs),
        },
    })
}

fn days_to_duration(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(86_400))
}

fn pick<T: Clone>(flag: &Option<T>, file: Option<T>, default: impl FnOnce() -> T) -> T {
    flag.clone().or(file).unwrap_or_else(default)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn validate_domain(raw: &str) -> Result<String, ConfigError> {
    let domain = raw.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    // Room for a 63-byte slug, its dot and the domain within DNS's 253 bytes.
    if domain.len() > 253 - 64 || !domain.split('.').all(label_ok) {
        return Err(ConfigError::Domain(raw.to_owned()));
    }
    Ok(domain)
}

fn validate_instance(instance: String) -> Result<String, ConfigError> {
    let ok = !instance.is_empty()
        && instance.len() <= 32
        && !instance.starts_with('-')
        && instance
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(instance)
    } else {
        Err(ConfigError::Instance(instance))
    }
}

fn validate_main(branch: String) -> Result<String, ConfigError> {
    let bad = branch.is_empty()
        || branch.starts_with('-')
        || branch.starts_with("refs/")
        || branch.contains("..")
        || branch.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if bad {
        Err(ConfigError::MainBranch(branch))
    } else {
        Ok(branch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source: Box::new(source),
        })?;
        Config::merge(&RunArgs::default(), file)
    }

    #[test]
    fn preview_networks_come_from_a_pool_of_small_subnets() {
        let c = from_toml("").unwrap();
        assert_eq!(
            c.network_pool.to_string(),
            "10.210.0.0/16 (/26 each, 1024 in all)"
        );
        let c = from_toml("[network]\npool = \"172.30.0.0/20\"\nsubnet_size = 28\n").unwrap();
        assert_eq!(c.network_pool.capacity(), 256);
        for (text, expect) in [
            ("pool = \"10.0.0.1/16\"", "invalid [network] pool: \"10.0.0.1/16\" has host bits set: the network is 10.0.0.0/16"),
            ("pool = \"fd00::/64\"", "invalid [network] pool: \"fd00::/64\" is not an IPv4 network such as 10.210.0.0/16"),
            ("subnet_size = 30", "invalid [network] subnet_size 30: from the pool's own prefix (16) to 29"),
        ] {
            let error = from_toml(&format!("[network]\n{text}\n")).unwrap_err();
            assert_eq!(error.to_string(), expect, "{text}");
        }
    }

    #[test]
    fn limits_have_safe_defaults_and_clear_errors() {
        let c = from_toml("").unwrap();
        assert_eq!(
            c.container_limits,
            ContainerLimits {
                memory: 1 << 30,
                nano_cpus: 1_000_000_000,
                pids: 512
            }
        );
        assert_eq!(c.build_limits.memory, 2000 << 20);
        assert_eq!(c.build_limits.timeout, Duration::from_secs(900));
        let c =
            from_toml("[limits]\nmemory = \"256m\"\ncpus = 0.5\npids = 64\nbuild_timeout_s = 30\n")
                .unwrap();
        assert_eq!(c.container_limits.memory, 256 << 20);
        assert_eq!(c.container_limits.nano_cpus, 500_000_000);
        assert_eq!(c.container_limits.pids, 64);
        assert_eq!(c.build_limits.timeout, Duration::from_secs(30));
        for (text, expect) in [
            (
                "memory = \"lots\"",
                "invalid [limits] memory: \"lots\" is not a size: expected e.g. 512m or 2g",
            ),
            ("memory = \"1m\"", "invalid [limits] memory: at least 6m"),
            ("cpus = 0", "invalid [limits] cpus: from 0.01 to 1024 CPUs"),
            ("pids = 2", "invalid [limits] pids: at least 16"),
            (
                "build_memory = \"4g\"",
                "invalid [limits] build_memory: at most 2047m",
            ),
            (
                "build_timeout_s = 0",
                "invalid [limits] build_timeout_s: from 1 to 86400",
            ),
        ] {
            let error = from_toml(&format!("[limits]\n{text}\n")).unwrap_err();
            assert_eq!(error.to_string(), expect, "{text}");
        }
    }

    #[test]
    fn the_compose_policy_names_capabilities() {
        let c = from_toml("[policy]\nallowed_capabilities = [\"cap_net_admin\", \"SYS_TIME\"]\n")
            .unwrap();
        let names: Vec<&str> = c
            .policy
            .allowed_capabilities
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["NET_ADMIN", "SYS_TIME"]);
        assert!(from_toml("")
            .unwrap()
            .policy
            .allowed_capabilities
            .is_empty());
        let error = from_toml("[policy]\nallowed_capabilities = [\"ALL; rm\"]\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid [policy] allowed_capabilities entry \"ALL; rm\": expected a capability name such as NET_BIND_SERVICE"
        );
    }

    #[test]
    fn embedded_defaults() {
        let c = from_toml("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(".previewd"));
        assert_eq!(c.mirror, PathBuf::from(".previewd/mirror.git"));
        assert_eq!(c.domain, "preview.localhost");
        assert_eq!(c.https_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.instance, "default");
        assert_eq!(c.main_branch, "main");
        assert_eq!(c.docker_host, None);
        assert_eq!(c.build_concurrency, 1);
        assert_eq!(c.mass_removal_threshold, 3);
        assert_eq!(c.merged, MergedRule::PatchId);
        assert_eq!(c.expire_idle, None);
        assert_eq!(c.max_previews, None);
        assert_eq!(c.keep_logs, Duration::from_secs(14 * 86_400));
        assert_eq!(c.health, HealthCheck::default());
        assert_eq!(c.proxy, Limits::default());
        assert_eq!(c.tls, TlsMode::SelfSigned);
        assert_eq!(c.socket_path(), PathBuf::from(".previewd/previewd.sock"));
    }

    #[test]
    fn file_values_are_used() {
        let c = from_toml(
            r#"
            state_dir = "/var/lib/previewd"
            domain = "Preview.Example.COM."
            https_listen = "0.0.0.0:443"
            instance = "ci-7"
            main = "trunk"
            expire_idle_days = 30
            max_previews = 20

            [health]
            path = "/healthz"
            status = 204
            interval_ms = 100
            start_period_s = 120
            "#,
        )
        .unwrap();
        assert_eq!(c.mirror, PathBuf::from("/var/lib/previewd/mirror.git"));
        assert_eq!(c.domain, "preview.example.com");
        assert_eq!(c.instance, "ci-7");
        assert_eq!(c.main_branch, "trunk");
        assert_eq!(c.expire_idle, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.max_previews, Some(20));
        assert_eq!(c.health.path, "/healthz");
        assert_eq!(c.health.status, Some(204));
        assert_eq!(c.health.interval, Duration::from_millis(100));
        assert_eq!(c.health.timeout, Duration::from_secs(2));
        assert_eq!(c.health.start_period, Duration::from_secs(120));
        assert_eq!(c.preview_url("x"), "https://x.preview.example.com/");
    }

    #[test]
    fn proxy_limits_are_read_in_their_units() {
        let c = from_toml(
            r#"
            [proxy]
            header_read_timeout_s = 3
            client_body_timeout_s = 20
            max_header_bytes = 16384
            max_uri_bytes = 2048
            max_connections = 500
            h2_max_concurrent_streams = 64
            drain_timeout_s = 0
            threads = 3
            "#,
        )
        .unwrap();
        assert_eq!(c.proxy.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.proxy.client_body_timeout, Duration::from_secs(20));
        assert_eq!(c.proxy.max_header_bytes, 16384);
        assert_eq!(c.proxy.max_uri_bytes, 2048);
        assert_eq!(c.proxy.max_connections, 500);
        assert_eq!(c.proxy.h2_max_concurrent_streams, 64);
        assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
        assert_eq!(c.proxy.threads, 3);
        assert_eq!(c.proxy.idle_timeout, Limits::default().idle_timeout);
    }

    #[test]
    fn flags_win_over_the_file() {
        let args = RunArgs {
            domain: Some("flag.test".into()),
            https_listen: Some("127.0.0.1:9443".parse().unwrap()),
            ..RunArgs::default()
        };
        let file: FileConfig =
            toml::from_str("domain = \"file.test\"\ninstance = \"fromfile\"").unwrap();
        let c = Config::merge(&args, file).unwrap();
        assert_eq!(c.domain, "flag.test");
        assert_eq!(c.instance, "fromfile");
        assert_eq!(c.preview_url("a-b"), "https://a-b.flag.test:9443/");
    }

    #[test]
    fn the_example_config_lists_valid_keys_with_their_defaults() {
        // Uncomment every setting of the shipped example: it must parse, and (but for the
        // paths it sets for a host install) give the embedded defaults.
        let example = include_str!("../../systemd/previewd.toml.example");
        let text: String = example
            .lines()
            .filter_map(|l| {
                let setting = l.strip_prefix('#')?;
                let is_setting = setting.starts_with('[')
                    || setting.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    });
                is_setting.then(|| format!("{setting}\n"))
            })
            .collect();
        let c = from_toml(&text).unwrap();
        let defaults = from_toml("").unwrap();
        assert_eq!(c.health, defaults.health);
        assert_eq!(c.proxy, defaults.proxy);
        assert_eq!(c.domain, defaults.domain);
        assert_eq!(c.build_concurrency, defaults.build_concurrency);
        assert_eq!(c.merged, defaults.merged);
        assert_eq!(c.container_limits, defaults.container_limits);
        assert_eq!(c.build_limits, defaults.build_limits);
        assert_eq!(c.policy, defaults.policy);
        assert_eq!(c.network_pool, defaults.network_pool);
        assert_eq!(c.keep_logs, defaults.keep_logs);
    }

    #[test]
    fn tls_modes() {
        let files = from_toml(
            "[tls]\nmode = \"files\"\ncert_file = \"/etc/c.pem\"\nkey_file = \"/etc/k.pem\"",
        )
        .unwrap();
        assert_eq!(
            files.tls,
            TlsMode::Files {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            }
        );

        let minimal = from_toml("[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"").unwrap();
        assert_eq!(
            minimal.tls,
            TlsMode::Acme(AcmeSettings::new(AcmeChallenge::dns01("/h".into())))
        );
        let TlsMode::Acme(defaults) = minimal.tls else {
            unreachable!()
        };
        assert_eq!(
            defaults.directory,
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(
            defaults.renew_check_interval,
            Duration::from_secs(12 * 3600)
        );

        let full = from_toml(
            r#"
            [tls]
            mode = "acme"
            [tls.acme]
            directory = "https://127.0.0.1:14000/dir"
            ca_file = "/etc/pebble.pem"
            email = "ops@example.com"
            dns_hook = "/usr/local/bin/dns-hook"
            challenge = "dns-01"
            hook_timeout_s = 30
            renew_check_interval_s = 60
            "#,
        )
        .unwrap();
        assert_eq!(
            full.tls,
            TlsMode::Acme(AcmeSettings {
                directory: "https://127.0.0.1:14000/dir".into(),
                ca_file: Some("/etc/pebble.pem".into()),
                email: Some("ops@example.com".into()),
                challenge: AcmeChallenge::Dns01 {
                    hook: "/usr/local/bin/dns-hook".into(),
                    hook_timeout: Duration::from_secs(30),
                },
                renew_check_interval: Duration::from_secs(60),
            })
        );

        let per_host = from_toml(
            "[tls]\nmode = \"acme\"\n[tls.acme]\nchallenge = \"http-01\"\nemail = \"ops@example.com\"",
        )
        .unwrap();
        let mut expect = AcmeSettings::new(AcmeChallenge::Http01);
        expect.email = Some("ops@example.com".into());
        assert_eq!(per_host.tls, TlsMode::Acme(expect));
    }

    #[test]
    fn tls_errors_are_one_exact_line() {
        for (text, expect) in [
            (
                "[tls]\nmode = \"files\"",
                "invalid [tls] cert_file and key_file: mode = \"files\" needs both",
            ),
            (
                "[tls]\nmode = \"files\"\ncert_file = \"/c.pem\"",
                "invalid [tls] cert_file and key_file: set both or neither",
            ),
            (
                "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"",
                "invalid [tls] cert_file and key_file: only used with mode = \"files\"",
            ),
            (
                "[tls]\nmode = \"self-signed\"\n[tls.acme]\ndns_hook = \"/h\"",
                "invalid [tls.acme]: only used with mode = \"acme\"",
            ),
            (
                "[tls]\nmode = \"acme\"",
                "invalid [tls.acme] dns_hook: challenge = \"dns-01\" (the default) needs the program that sets the TXT records",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"\nchallenge = \"http-01\"",
                "invalid [tls.acme] dns_hook and hook_timeout_s: only used with challenge = \"dns-01\"",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\nchallenge = \"http-01\"\nhook_timeout_s = 5",
                "invalid [tls.acme] dns_hook and hook_timeout_s: only used with challenge = \"dns-01\"",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\nchallenge = \"tls-alpn-01\"",
                "invalid [tls.acme] challenge \"tls-alpn-01\": expected \"dns-01\" or \"http-01\"",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"\nhook_timeout_s = 0",
                "invalid [tls.acme] hook_timeout_s and renew_check_interval_s must be above 0",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"\ndirectory = \"http://ca.test/dir\"",
                "invalid [tls.acme] directory: expected an https:// URL",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"\nemail = \"ops\"",
                "invalid [tls.acme] email: expected an address such as ops@example.com",
            ),
            (
                "[tls]\nmode = \"acme\"\n[tls.acme]\ndns_hook = \"/h\"\nrenew_check_interval_s = 0",
                "invalid [tls.acme] hook_timeout_s and renew_check_interval_s must be above 0",
            ),
        ] {
            assert_eq!(from_toml(text).unwrap_err().to_string(), expect, "{text}");
        }
    }

    #[test]
    fn the_example_tls_blocks_parse_in_their_modes() {
        // The example shows the keys of modes "files" and "acme" (with each challenge) indented
        // under a "# mode = ...:" line; each block, uncommented with its mode, must be valid.
        let example = include_str!("../../systemd/previewd.toml.example");
        for (mode, marker) in [
            ("files", "# mode = \"files\":"),
            ("acme", "# mode = \"acme\":"),
            ("acme", "# mode = \"acme\", challenge = \"http-01\":"),
        ] {
            let block: String = example
                .lines()
                .skip_while(|l| !l.starts_with(marker))
                .skip(1)
                .map_while(|l| l.strip_prefix("#   "))
                .map(|l| format!("{l}\n"))
                .collect();
            assert!(!block.is_empty(), "no block for mode {mode}");
            let text = format!("[tls]\nmode = \"{mode}\"\n{block}");
            let c = from_toml(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(c.tls != TlsMode::SelfSigned, "{text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = from_toml("domian = \"x.test\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `domian`"), "{err}");
    }

    #[test]
    fn bad_addresses_are_refused() {
        let err = from_toml("https_listen = \"localhost\"").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (text, expect) in [
            ("domain = \"bad_domain.test\"", "invalid domain"),
            ("domain = \"\"", "invalid domain"),
            ("domain = \"a..b\"", "invalid domain"),
            ("instance = \"Has Space\"", "invalid instance"),
            ("instance = \"\"", "invalid instance"),
            ("instance = \"-x\"", "invalid instance"),
            ("main = \"\"", "invalid main branch"),
            ("main = \"a..b\"", "invalid main branch"),
            ("build_concurrency = 0", "invalid build_concurrency"),
            ("merged = \"squash\"", "invalid merged rule"),
            ("[health]\npath = \"healthz\"", "invalid [health] path"),
            ("[health]\nstatus = 700", "invalid [health] status"),
            ("[health]\ninterval_ms = 0", "invalid [health] interval_ms"),
            ("[health]\nretries = 3", "config file"),
            ("[proxy]\nidle_timeout_s = 0", "invalid [proxy] timeouts"),
            (
                "[proxy]\nupstream_response_timeout_s = 4611686018427387904",
                "invalid [proxy] timeouts must be at most 7 days",
            ),
            (
                "[proxy]\nmax_header_bytes = 4096",
                "invalid [proxy] max_header_bytes",
            ),
            (
                "[proxy]\nmax_uri_bytes = 100",
                "invalid [proxy] max_uri_bytes",
            ),
            (
                "[proxy]\nmax_connections = 0",
                "invalid [proxy] max_connections",
            ),
            (
                "[proxy]\nthreads = 0",
                "invalid [proxy] max_connections, h2_max_concurrent_streams and threads",
            ),
            ("[proxy]\nmax_body = 1", "config file"),
            (
                "[tls]\nmode = \"letsencrypt\"",
                "invalid [tls] mode \"letsencrypt\"",
            ),
            ("[tls]\ncert = \"/c.pem\"", "config file"),
            (
                "[tls.acme]\nchallenge = \"dns-01\"",
                "invalid [tls.acme]: only used",
            ),
        ] {
            let err = from_toml(text).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{text}: {err}");
        }
    }
}
