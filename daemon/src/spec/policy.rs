//! The host's policy over what a repository's compose file may ask for. The operator sets it;
//! nothing in a repository can loosen it.

use std::collections::BTreeSet;

/// What the operator allows beyond previewd's safe defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Capabilities a service may add with `cap_add` (upper case, without `CAP_`). Empty by
    /// default: previews run with Docker's default set.
    pub allowed_capabilities: BTreeSet<String>,
}

/// Service keys refused whatever their value, and why: each would let a branch reach the
/// host or other previews.
pub const REFUSED_SERVICE_KEYS: &[(&str, &str)] = &[
    ("privileged", "a privileged container controls the host"),
    (
        "network_mode",
        "a preview's services share its own network only",
    ),
    (
        "pid",
        "a preview cannot share the host's or another container's processes",
    ),
    (
        "ipc",
        "a preview cannot share the host's or another container's IPC",
    ),
    ("uts", "a preview cannot share the host's UTS namespace"),
    (
        "userns_mode",
        "a preview cannot leave the engine's user namespace setting",
    ),
    (
        "security_opt",
        "security options (seccomp, AppArmor) stay the host's",
    ),
    ("devices", "host devices are not given to previews"),
    ("sysctls", "kernel parameters stay the host's"),
    ("cgroup_parent", "previews stay in the engine's cgroups"),
    ("runtime", "previews run on the engine's default runtime"),
    (
        "volumes_from",
        "a preview cannot mount another container's volumes",
    ),
    (
        "device_cgroup_rules",
        "host devices are not given to previews",
    ),
    (
        "group_add",
        "supplementary groups could reach host resources",
    ),
    (
        "isolation",
        "previews run with the engine's default isolation",
    ),
    (
        "oom_kill_disable",
        "a preview cannot exempt itself from the OOM killer",
    ),
];

/// Compose service keys previewd knows but does not run yet: an error rather than a silent
/// drop, so a file never means less than it says.
pub const UNSUPPORTED_SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_drop",
    "configs",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpuset",
    "credential_spec",
    "develop",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "env_from",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "links",
    "logging",
    "mac_address",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_score_adj",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "provider",
    "pull_policy",
    "read_only",
    "scale",
    "secrets",
    "shm_size",
    "stdin_open",
    "stop_signal",
    "storage_opt",
    "tty",
    "ulimits",
    "use_api_socket",
];

/// Keys Compose honours that previewd replaces with its own behaviour: accepted with a
/// warning that says what happens instead.
pub const REWRITTEN_SERVICE_KEYS: &[(&str, &str)] = &[
    (
        "restart",
        "previewd restarts a stopped service itself (3 times in 10 minutes, then the preview fails)",
    ),
    (
        "container_name",
        "previewd names containers per preview; the service name still resolves on the preview's network",
    ),
    (
        "hostname",
        "the service name is the host name on the preview's network",
    ),
    (
        "networks",
        "every service joins the preview's one network, where service names resolve",
    ),
];

/// Paths a repository may never mount, whatever form the mount takes.
pub fn is_docker_socket(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path.ends_with("docker.sock") || path.ends_with("containerd.sock")
}
