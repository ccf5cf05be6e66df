//! A compose file's tree, checked and read into previewd's own narrow types. Every mistake is
//! collected with its key path and position, so one run shows them all; nothing here touches
//! the engine or the host. Service, volume and host names stay as the file writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::interpolate::interpolate;
use super::policy::{
    is_docker_socket, HostPolicy, REFUSED_SERVICE_KEYS, REWRITTEN_SERVICE_KEYS,
    UNSUPPORTED_SERVICE_KEYS,
};
use super::units::{self, ContainerPort};
use super::yaml::{Key, Node, Pos, Value};
use super::{Diagnostic, TreeFiles};

/// A whole stack, as previewd runs it: the services the active profiles select.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSpec {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes the file declares.
    pub volumes: BTreeSet<String>,
    /// The service and port that take the preview's traffic.
    pub web: Endpoint,
    /// More services with a URL of their own, `<service>--<slug>.<domain>`.
    pub public: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub service: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Run this image, pulled only when missing.
    Image(String),
    Build(BuildSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Directory in the tree, relative to its root ("" is the root).
    pub context: String,
    /// Path relative to the context.
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A string: run by the image's shell form rules (split by the engine).
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `["NONE"]` or `disable: true`: the image's own check is off too.
    Disabled,
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A named volume of the file, or an anonymous one (`name: None`).
    Volume {
        name: Option<String>,
        target: String,
        read_only: bool,
    },
    /// Files of the commit's tree at `path` (relative to its root), delivered read-only.
    Tree {
        path: String,
        target: String,
    },
    Tmpfs {
        target: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub source: Source,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    /// Values already interpolated; `None` for a name listed without a value (passed through
    /// from the host's values if it names one, else unset).
    pub environment: BTreeMap<String, Option<String>>,
    /// Files in the tree, relative to its root.
    pub env_files: Vec<String>,
    pub depends_on: BTreeMap<String, Condition>,
    pub healthcheck: Option<Healthcheck>,
    pub ports: Vec<ContainerPort>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub init: bool,
    pub stop_grace_period: Option<Duration>,
    pub limits: Limits,
    /// Another service waits for it with `service_completed_successfully`: it runs to its end.
    pub job: bool,
}

const TOP_LEVEL_KEYS: &[&str] = &["version", "name", "services", "volumes", "networks"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "depends_on",
    "healthcheck",
    "expose",
    "ports",
    "volumes",
    "working_dir",
    "user",
    "labels",
    "profiles",
    "tmpfs",
    "init",
    "stop_grace_period",
    "cpus",
    "mem_limit",
    "deploy",
    "cap_add",
];

/// Reads the root of a compose file. `vars` interpolate values; `files` is the tree the file
/// is in, for paths it names.
pub fn read(
    root: &Node,
    vars: &BTreeMap<String, String>,
    policy: &HostPolicy,
    files: &dyn TreeFiles,
) -> Checked {
    let mut c = Checker {
        vars,
        policy,
        files,
        errors: Vec::new(),
        warnings: Vec::new(),
        unset_reported: BTreeSet::new(),
    };
    let spec = c.root(root);
    c.errors
        .sort_by(|a, b| (a.pos, &a.path).cmp(&(b.pos, &b.path)));
    Checked {
        spec: spec.filter(|_| c.errors.is_empty()),
        errors: c.errors,
        warnings: c.warnings,
    }
}

/// What checking a file found: the stack when nothing was wrong, and every error and warning.
#[derive(Debug)]
pub struct Checked {
    pub spec: Option<StackSpec>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

struct Checker<'a> {
    vars: &'a BTreeMap<String, String>,
    policy: &'a HostPolicy,
    files: &'a dyn TreeFiles,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    unset_reported: BTreeSet<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A service that is not yet resolved against the others.
struct Draft {
    spec: ServiceSpec,
    pos: Pos,
    profiles: Vec<String>,
    /// `depends_on` entries with where they are written.
    depends_pos: BTreeMap<String, Pos>,
    /// `depends_on` entries with `required: false`: skipped when not in the stack.
    optional: BTreeSet<String>,
}

/// A service's `depends_on`, as read.
struct Dependencies {
    conditions: BTreeMap<String, Condition>,
    at: BTreeMap<String, Pos>,
    optional: BTreeSet<String>,
}

/// More services than a preview runs; also bounds the depth of the dependency walk.
const MAX_SERVICES: usize = 100;

impl Checker<'_> {
    fn error(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            path: path.to_owned(),
            pos,
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            path: path.to_owned(),
            pos,
            message: message.into(),
        });
    }

    fn mismatch(&mut self, path: &str, node: &Node, expected: &str) {
        let found = node.value.kind();
        self.error(
            path,
            node.pos,
            format!("expected {expected}, found {found}"),
        );
    }

    fn expect_map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ => {
                self.mismatch(path, node, "a mapping");
                None
            }
        }
    }

    /// A scalar, interpolated.
    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        let Some(raw) = node.value.scalar_text() else {
            self.mismatch(path, node, "a string");
            return None;
        };
        match interpolate(&raw, self.vars) {
            Ok(done) => {
                for name in done.unset {
                    if self.unset_reported.insert(name.clone()) {
                        self.warn(
                            path,
                            node.pos,
                            format!("variable {name} is not set; it is an empty string"),
                        );
                    }
                }
                Some(done.text)
            }
            Err(message) => {
                self.error(path, node.pos, message);
                None
            }
        }
    }

    /// A list of scalars; a single scalar is a list of one when `one_is_list`.
    fn texts(&mut self, node: &Node, path: &str, one_is_list: bool) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => {
                // Every bad item is reported, not only the first.
                let texts: Vec<Option<String>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.text(item, &format!("{path}[{i}]")))
                    .collect();
                texts.into_iter().collect()
            }
            _ if one_is_list && node.value.scalar_text().is_some() => {
                self.text(node, path).map(|t| vec![t])
            }
            _ => {
                self.mismatch(path, node, "a list");
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.mismatch(path, node, "true or false");
                None
            }
        }
    }

    /// `KEY: value` mapping or `["KEY=value", "KEY"]` list (environment, args, labels).
    fn key_values(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, Option<String>>> {
        self.key_values_at(node, path)
            .map(|entries| entries.into_iter().map(|(k, v, _)| (k, v)).collect())
    }

    /// [`Checker::key_values`], each entry with where it is written; bad entries are reported
    /// and left out.
    #[allow(clippy::type_complexity)]
    fn key_values_at(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<Vec<(String, Option<String>, Pos)>> {
        let mut out = Vec::new();
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let here = join(path, &key.name);
                    let text = match value.value {
                        Value::Null => None,
                        _ => match self.text(value, &here) {
                            Some(text) => Some(text),
                            None => continue,
                        },
                    };
                    out.push((key.name.clone(), text, key.pos));
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    let Some(entry) = self.text(item, &here) else {
                        continue;
                    };
                    match entry.split_once('=') {
                        Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()), item.pos)),
                        None => out.push((entry, None, item.pos)),
                    }
                }
            }
            _ => {
                self.mismatch(path, node, "a mapping or a list of KEY=value");
                return None;
            }
        }
        Some(out)
    }

    /// Reports keys not in `known`, with the closest known one when it looks like a typo.
    fn unknown_key(&mut self, path: &str, key: &Key, known: &[&str]) {
        let here = join(path, &key.name);
        let hint = closest(&key.name, known)
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        self.error(&here, key.pos, format!("unknown key{hint}"));
    }

    fn root(&mut self, root: &Node) -> Option<StackSpec> {
        let entries = self.expect_map(root, "")?;
        let mut services = None;
        let mut volumes = BTreeSet::new();
        let mut previewd = None;
        for (key, value) in entries {
            match key.name.as_str() {
                "version" => self.warn(
                    "version",
                    key.pos,
                    "obsolete, and ignored (as Compose does)",
                ),
                "name" => self.warn(
                    "name",
                    key.pos,
                    "ignored: previewd names each preview's objects itself",
                ),
                "services" => services = Some(value),
                "volumes" => volumes = self.top_volumes(value),
                "networks" => self.top_networks(value),
                "x-previewd" => previewd = Some(value),
                "secrets" | "configs" | "include" | "models" => {
                    self.error(&key.name, key.pos, "not supported by previewd yet")
                }
                name if name.starts_with("x-") => {}
                _ => self.unknown_key("", key, TOP_LEVEL_KEYS),
            }
        }
        let Some(services) = services else {
            self.error(
                "services",
                root.pos,
                "a compose file needs a services mapping",
            );
            return None;
        };
        let service_entries = self.expect_map(services, "services")?;
        if service_entries.is_empty() {
            self.error("services", services.pos, "no services");
            return None;
        }
        if service_entries.len() > MAX_SERVICES {
            self.error(
                "services",
                services.pos,
                format!(
                    "{} services: a preview runs at most {MAX_SERVICES}",
                    service_entries.len()
                ),
            );
            return None;
        }
        let mut drafts = BTreeMap::new();
        for (key, value) in service_entries {
            let path = join("services", &key.name);
            if !valid_service_name(&key.name) {
                self.error(
                    &path,
                    key.pos,
                    "a service name is letters, digits, '_', '.' and '-', starting with a letter or digit",
                );
                continue;
            }
            if let Some(mut draft) = self.service(value, &path, &volumes) {
                draft.pos = key.pos;
                drafts.insert(key.name.clone(), draft);
            }
        }
        let settings = match previewd {
            Some(node) => self.previewd(node)?,
            None => Settings::default(),
        };
        self.resolve(drafts, settings, root.pos, volumes)
    }

    fn top_volumes(&mut self, node: &Node) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let Some(entries) = self.expect_map(node, "volumes") else {
            return names;
        };
        for (key, value) in entries {
            let path = join("volumes", &key.name);
            names.insert(key.name.clone());
            let Value::Map(options) = &value.value else {
                if value.value != Value::Null {
                    self.mismatch(&path, value, "a mapping");
                }
                continue;
            };
            for (option, v) in options {
                let here = join(&path, &option.name);
                match option.name.as_str() {
                    "external" => {
                        if v.value != Value::Bool(false) {
                            self.error(&here, option.pos, "external volumes are refused: a preview's volumes are its own, made and removed by previewd");
                        }
                    }
                    "driver" => {
                        if self.text(v, &here).as_deref() != Some("local") {
                            self.error(&here, v.pos, "only the local driver: other drivers can reach host or network storage");
                        }
                    }
                    "driver_opts" => self.error(&here, option.pos, "refused: driver options can mount host paths"),
"labels" => {
                        self.labels(v, &here);
                    }
                    "name" => self.warn(&here, option.pos, "ignored: previewd names each preview's volumes itself, so previews never share one"),
                    name if name.starts_with("x-") => {}
                    _ => self.unknown_key(&path, option, &["driver", "driver_opts", "external", "labels", "name"]),
                }
            }
        }
        names
    }

    fn top_networks(&mut self, node: &Node) {
        let Some(entries) = self.expect_map(node, "networks") else {
            return;
        };
        for (key, value) in entries {
            let path = join("networks", &key.name);
            if let Value::Map(options) = &value.value {
                for (option, v) in options {
                    let here = join(&path, &option.name);
                    match option.name.as_str() {
                        "external" if v.value != Value::Bool(false) => self.error(
                            &here,
                            option.pos,
                            "external networks are refused: a preview reaches only its own network",
                        ),
                        "driver" if self.text(v, &here).as_deref() != Some("bridge") => self.error(
                            &here,
                            v.pos,
                            "only the bridge driver: a preview's network is a bridge of its own",
                        ),
                        _ => {}
                    }
                }
            }
            self.warn(
                &path,
                key.pos,
                "every service joins the preview's one network; other networks are not made",
            );
        }
    }

    /// Labels, with those under `previewd.` refused where they are written.
    fn labels(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let entries = self.key_values_at(node, path)?;
        let mut labels = BTreeMap::new();
        for (name, value, pos) in entries {
            if name.starts_with("previewd.") {
                self.error(
                    &join(path, &name),
                    pos,
                    "labels under previewd. are previewd's own: a repository cannot set them",
                );
            }
            labels.insert(name, value.unwrap_or_default());
        }
        Some(labels)
    }

    fn service(&mut self, node: &Node, path: &str, volumes: &BTreeSet<String>) -> Option<Draft> {
        let entries = self.expect_map(node, path)?;
        let mut image = None;
        let mut build = None;
        let mut spec = ServiceSpec {
            source: Source::Image(String::new()),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            env_files: Vec::new(),
            depends_on: BTreeMap::new(),
            healthcheck: None,
            ports: Vec::new(),
            mounts: Vec::new(),
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            init: false,
            stop_grace_period: None,
            limits: Limits::default(),
            job: false,
        };
        let mut profiles = Vec::new();
        let mut depends_pos = BTreeMap::new();
        let mut optional = BTreeSet::new();
        let errors_before = self.errors.len();
        for (key, value) in entries {
            let here = join(path, &key.name);
            let name = key.name.as_str();
            if let Some((_, why)) = REFUSED_SERVICE_KEYS.iter().find(|(k, _)| *k == name) {
                self.error(
                    &here,
                    key.pos,
                    format!("refused by the host's policy: {why}"),
                );
                continue;
            }
            if let Some((_, instead)) = REWRITTEN_SERVICE_KEYS.iter().find(|(k, _)| *k == name) {
                self.warn(&here, key.pos, format!("ignored: {instead}"));
                continue;
            }
            if UNSUPPORTED_SERVICE_KEYS.contains(&name) {
                self.error(&here, key.pos, "not supported by previewd yet");
                continue;
            }
            match name {
                "image" => image = self.text(value, &here),
                "build" => build = self.build(value, &here),
                "command" => spec.command = self.command(value, &here),
                "entrypoint" => spec.entrypoint = self.command(value, &here),
                "environment" => {
                    if let Some(env) = self.key_values(value, &here) {
                        spec.environment = env;
                    }
                }
                "env_file" => spec.env_files = self.env_files(value, &here),
                "depends_on" => {
                    if let Some(deps) = self.depends_on(value, &here) {
                        spec.depends_on = deps.conditions;
                        depends_pos = deps.at;
                        optional = deps.optional;
                    }
                }
                "healthcheck" => spec.healthcheck = self.healthcheck(value, &here),
                "expose" => {
                    for (i, item) in list_items(value).iter().enumerate() {
                        let at = format!("{here}[{i}]");
                        if let Some(text) = self.text(item, &at) {
                            match units::port_spec(&text) {
                                Ok((_, true)) => {
                                    self.error(&at, item.pos, "expose names container ports only")
                                }
                                Ok((port, false)) => spec.ports.push(port),
                                Err(message) => self.error(&at, item.pos, message),
                            }
                        }
                    }
                }
                "ports" => self.ports(value, &here, &mut spec.ports),
                "volumes" => self.mounts(value, &here, volumes, &mut spec.mounts),
                "working_dir" => spec.working_dir = self.text(value, &here),
                "user" => spec.user = self.text(value, &here),
                "labels" => spec.labels = self.labels(value, &here).unwrap_or_default(),
                "profiles" => profiles = self.texts(value, &here, false).unwrap_or_default(),
                "tmpfs" => {
                    for target in self.texts(value, &here, true).unwrap_or_default() {
                        let target = target.split(':').next().unwrap_or("").to_owned();
                        if target.starts_with('/') {
                            spec.mounts.push(Mount::Tmpfs { target });
                        } else {
                            self.error(&here, value.pos, format!("tmpfs target {target:?} is not an absolute path in the container"));
                        }
                    }
                }
                "init" => spec.init = self.boolean(value, &here).unwrap_or(false),
                "stop_grace_period" => {
                    spec.stop_grace_period = self.duration(value, &here);
                }
                "cpus" => spec.limits.cpus = self.cpus(value, &here),
                "mem_limit" => spec.limits.memory = self.size(value, &here),
                "deploy" => self.deploy(value, &here, &mut spec.limits),
                "cap_add" => {
                    for (i, item) in list_items(value).iter().enumerate() {
                        let at = format!("{here}[{i}]");
                        let Some(cap) = self.text(item, &at) else {
                            continue;
                        };
                        let cap = cap.to_ascii_uppercase();
                        let cap = cap.strip_prefix("CAP_").unwrap_or(&cap).to_owned();
                        if !self.policy.allowed_capabilities.contains(&cap) {
                            self.error(
                                &at,
                                item.pos,
                                format!("capability {cap} is not in the host's allow-list ([policy] allowed_capabilities)"),
                            );
                        }
                    }
                }
                other if other.starts_with("x-") => {}
                _ => self.unknown_key(path, key, SERVICE_KEYS),
            }
        }
        spec.source = match (image, build) {
            (_, Some(build)) => Source::Build(build),
            (Some(image), None) => Source::Image(image),
            (None, None) => {
                if self.errors.len() == errors_before {
                    self.error(path, node.pos, "a service needs an image or a build");
                }
                return None;
            }
        };
        spec.ports.sort();
        spec.ports.dedup();
        Some(Draft {
            spec,
            pos: node.pos,
            profiles,
            depends_pos,
            optional,
        })
    }

    fn build(&mut self, node: &Node, path: &str) -> Option<BuildSpec> {
        let mut spec = BuildSpec {
            context: String::new(),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
        };
        let mut context_pos = node.pos;
        let mut dockerfile_pos = node.pos;
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let here = join(path, &key.name);
                    match key.name.as_str() {
                        "context" => {
                            context_pos = value.pos;
                            spec.context = self.text(value, &here)?;
                        }
                        "dockerfile" => {
                            dockerfile_pos = value.pos;
                            spec.dockerfile = self.text(value, &here)?;
                        }
                        "args" => {
                            spec.args = self
                                .key_values(value, &here)?
                                .into_iter()
                                .filter_map(|(k, v)| Some((k, v?)))
                                .collect();
                        }
                        "target" => spec.target = self.text(value, &here),
                        "network" => {
                            let network = self.text(value, &here);
                            let why = if network.as_deref() == Some("host") {
                                "refused by the host's policy: a build on the host's network reaches the host"
                            } else {
                                "not supported: builds run on the engine's default network"
                            };
                            self.error(&here, value.pos, why);
                        }
                        name if name.starts_with("x-") => {}
                        "cache_from"
                        | "cache_to"
                        | "labels"
                        | "shm_size"
                        | "extra_hosts"
                        | "isolation"
                        | "platforms"
                        | "secrets"
                        | "ssh"
                        | "tags"
                        | "ulimits"
                        | "dockerfile_inline"
                        | "additional_contexts"
                        | "no_cache"
                        | "pull"
                        | "privileged"
                        | "entitlements"
                        | "provenance"
                        | "sbom" => {
                            self.error(&here, key.pos, "not supported by previewd yet");
                        }
                        _ => self.unknown_key(
                            path,
                            key,
                            &["context", "dockerfile", "args", "target", "network"],
                        ),
                    }
                }
            }
            _ => spec.context = self.text(node, path)?,
        }
        let context_path = join(path, "context");
        if spec.context.contains("://") || spec.context.starts_with("git@") {
            self.error(
                &context_path,
                context_pos,
                "remote build contexts are refused: a preview builds from its commit's tree",
            );
            return None;
        }
        let context = match tree_path(&spec.context) {
            Ok(p) => p,
            Err(why) => {
                self.error(&context_path, context_pos, why);
                return None;
            }
        };
        if !self.files.is_dir(&context) {
            self.error(
                &context_path,
                context_pos,
                format!("no directory {:?} in the tree", spec.context),
            );
            return None;
        }
        // Checked on its own first: an absolute path is a host path, not one under the context.
        let dockerfile = match tree_path(&spec.dockerfile)
            .and_then(|_| tree_path(&join_path(&context, &spec.dockerfile)))
        {
            Ok(p) => p,
            Err(why) => {
                self.error(&join(path, "dockerfile"), dockerfile_pos, why);
                return None;
            }
        };
        if !self.files.is_file(&dockerfile) {
            self.error(
                &join(path, "dockerfile"),
                dockerfile_pos,
                format!("no file {dockerfile:?} in the tree"),
            );
        }
        spec.context = context;
        Some(spec)
    }

    fn command(&mut self, node: &Node, path: &str) -> Option<Command> {
        match &node.value {
            Value::Seq(_) => self.texts(node, path, false).map(Command::Exec),
            _ => self.text(node, path).map(Command::Shell),
        }
    }

    fn env_files(&mut self, node: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in list_items(node).iter().enumerate() {
            let at = if matches!(node.value, Value::Seq(_)) {
                format!("{path}[{i}]")
            } else {
                path.to_owned()
            };
            let (file, required) = match &item.value {
                Value::Map(entries) => {
                    let mut file = None;
                    let mut required = true;
                    for (key, value) in entries {
                        let here = join(&at, &key.name);
                        match key.name.as_str() {
                            "path" => file = self.text(value, &here),
                            "required" => required = self.boolean(value, &here).unwrap_or(true),
                            "format" => {}
                            _ => self.unknown_key(&at, key, &["path", "required", "format"]),
                        }
                    }
                    (file, required)
                }
                _ => (self.text(item, &at), true),
            };
            let Some(file) = file else { continue };
            match tree_path(&file) {
                Ok(p) if self.files.is_file(&p) => out.push(p),
                Ok(_) if !required => {}
                Ok(p) => self.error(&at, item.pos, format!("no file {p:?} in the tree")),
                Err(why) => self.error(&at, item.pos, why),
            }
        }
        out
    }

    #[allow(clippy::type_complexity)]
    fn depends_on(&mut self, node: &Node, path: &str) -> Option<Dependencies> {
        let mut deps = BTreeMap::new();
        let mut at = BTreeMap::new();
        let mut optional = BTreeSet::new();
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Some(name) = self.text(item, &format!("{path}[{i}]")) else {
                        continue;
                    };
                    at.insert(name.clone(), item.pos);
                    deps.insert(name, Condition::Started);
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    let here = join(path, &key.name);
                    let mut condition = Condition::Started;
                    if let Some(options) = self.expect_map(value, &here) {
                        for (option, v) in options {
                            let there = join(&here, &option.name);
                            match option.name.as_str() {
                                "condition" => match self.text(v, &there).as_deref() {
                                    Some("service_started") => condition = Condition::Started,
                                    Some("service_healthy") => condition = Condition::Healthy,
                                    Some("service_completed_successfully") => {
                                        condition = Condition::CompletedSuccessfully;
                                    }
                                    Some(other) => self.error(&there, v.pos, format!("unknown condition {other:?}: expected service_started, service_healthy or service_completed_successfully")),
                                    None => {}
                                },
"restart" => {
                                    self.boolean(v, &there);
                                }
                                "required" => {
                                    if self.boolean(v, &there) == Some(false) {
                                        optional.insert(key.name.clone());
                                    }
                                }
                                _ => self.unknown_key(&here, option, &["condition", "restart", "required"]),
                            }
                        }
                    }
                    at.insert(key.name.clone(), key.pos);
                    deps.insert(key.name.clone(), condition);
                }
            }
            _ => {
                self.mismatch(path, node, "a list or a mapping");
                return None;
            }
        }
        Some(Dependencies {
            conditions: deps,
            at,
            optional,
        })
    }

    fn healthcheck(&mut self, node: &Node, path: &str) -> Option<Healthcheck> {
        let entries = self.expect_map(node, path)?;
        let mut check = Healthcheck {
            test: None,
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
        };
        for (key, value) in entries {
            let here = join(path, &key.name);
            match key.name.as_str() {
                "test" => {
                    check.test = match &value.value {
                        Value::Seq(_) => {
                            let words = self.texts(value, &here, false)?;
                            match words.split_first() {
                                Some((first, [])) if first == "NONE" => Some(HealthTest::Disabled),
                                Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                                    Some(HealthTest::Exec(rest.to_vec()))
                                }
                                Some((first, [script])) if first == "CMD-SHELL" => {
                                    Some(HealthTest::Shell(script.clone()))
                                }
                                _ => {
                                    self.error(&here, value.pos, "expected [\"CMD\", ...], [\"CMD-SHELL\", \"script\"] or [\"NONE\"]");
                                    None
                                }
                            }
                        }
                        _ => self.text(value, &here).map(HealthTest::Shell),
                    }
                }
                "disable" => {
                    if self.boolean(value, &here) == Some(true) {
                        check.test = Some(HealthTest::Disabled);
                    }
                }
                "interval" => check.interval = self.duration(value, &here),
                "timeout" => check.timeout = self.duration(value, &here),
                "start_period" => check.start_period = self.duration(value, &here),
                "start_interval" => {
                    self.duration(value, &here);
                }
                "retries" => match value.value {
                    Value::Int(n) if (0..=1000).contains(&n) => check.retries = Some(n as u32),
                    _ => self.error(&here, value.pos, "expected a number of retries, 0 to 1000"),
                },
                _ => self.unknown_key(
                    path,
                    key,
                    &[
                        "test",
                        "disable",
                        "interval",
                        "timeout",
                        "start_period",
                        "start_interval",
                        "retries",
                    ],
                ),
            }
        }
        Some(check)
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.text(node, path)?;
        units::duration(&text)
            .map_err(|message| self.error(path, node.pos, message))
            .ok()
    }

    fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let text = self.text(node, path)?;
        units::bytes(&text)
            .map_err(|message| self.error(path, node.pos, message))
            .ok()
    }

    fn cpus(&mut self, node: &Node, path: &str) -> Option<f64> {
        let text = self.text(node, path)?;
        match text.parse::<f64>() {
            Ok(cpus) if cpus > 0.0 && cpus <= 1024.0 => Some(cpus),
            _ => {
                self.error(path, node.pos, format!("{text:?} is not a number of CPUs"));
                None
            }
        }
    }

    fn ports(&mut self, node: &Node, path: &str, out: &mut Vec<ContainerPort>) {
        for (i, item) in list_items(node).iter().enumerate() {
            let at = format!("{path}[{i}]");
            match &item.value {
                Value::Map(entries) => {
                    let mut target = None;
                    let mut udp = false;
                    let mut published = false;
                    for (key, value) in entries {
                        let here = join(&at, &key.name);
                        match key.name.as_str() {
                            "target" => match value.value {
                                Value::Int(p) if (1..=65535).contains(&p) => {
                                    target = Some(p as u16)
                                }
                                _ => self.error(
                                    &here,
                                    value.pos,
                                    "expected a port number from 1 to 65535",
                                ),
                            },
                            "published" | "host_ip" => published = true,
                            "protocol" => udp = self.text(value, &here).as_deref() == Some("udp"),
                            "mode" | "name" | "app_protocol" => {}
                            _ => self.unknown_key(
                                &at,
                                key,
                                &[
                                    "target",
                                    "published",
                                    "host_ip",
                                    "protocol",
                                    "mode",
                                    "name",
                                    "app_protocol",
                                ],
                            ),
                        }
                    }
                    match target {
                        Some(port) => {
                            if published {
                                self.host_port_dropped(&at, item.pos);
                            }
                            out.push(ContainerPort { port, udp });
                        }
                        None => self.error(&at, item.pos, "a port needs a target"),
                    }
                }
                _ => {
                    let Some(text) = self.text(item, &at) else {
                        continue;
                    };
                    match units::port_spec(&text) {
                        Ok((port, published)) => {
                            if published {
                                self.host_port_dropped(&at, item.pos);
                            }
                            out.push(port);
                        }
                        Err(message) => self.error(&at, item.pos, message),
                    }
                }
            }
        }
    }

    fn host_port_dropped(&mut self, path: &str, pos: Pos) {
        self.warn(
            path,
            pos,
            "host port dropped: previewd never publishes a port on the host; the service is reached through its preview's URL or by name on its network",
        );
    }

    fn mounts(
        &mut self,
        node: &Node,
        path: &str,
        volumes: &BTreeSet<String>,
        out: &mut Vec<Mount>,
    ) {
        for (i, item) in list_items(node).iter().enumerate() {
            let at = format!("{path}[{i}]");
            let (kind, source, target, read_only) = match &item.value {
                Value::Map(entries) => {
                    let mut kind = None;
                    let mut source = None;
                    let mut target = None;
                    let mut read_only = false;
                    for (key, value) in entries {
                        let here = join(&at, &key.name);
                        match key.name.as_str() {
                            "type" => kind = self.text(value, &here),
                            "source" => source = self.text(value, &here),
                            "target" => target = self.text(value, &here),
                            "read_only" => read_only = self.boolean(value, &here).unwrap_or(false),
                            "consistency" => {}
                            "volume" | "tmpfs" => {
                                if let Value::Map(options) = &value.value {
                                    for (option, _) in options {
                                        self.error(
                                            &join(&here, &option.name),
                                            option.pos,
                                            "not supported by previewd yet",
                                        );
                                    }
                                }
                            }
                            "bind" => {
                                if let Value::Map(options) = &value.value {
                                    for (option, _) in options {
                                        if option.name != "create_host_path"
                                            && option.name != "selinux"
                                        {
                                            self.error(
                                                &join(&here, &option.name),
                                                option.pos,
                                                "not supported by previewd yet",
                                            );
                                        }
                                    }
                                }
                            }
                            _ => self.unknown_key(
                                &at,
                                key,
                                &[
                                    "type",
                                    "source",
                                    "target",
                                    "read_only",
                                    "volume",
                                    "bind",
                                    "tmpfs",
                                    "consistency",
                                ],
                            ),
                        }
                    }
                    let Some(kind) = kind else {
                        self.error(&at, item.pos, "a mount needs a type: volume, bind or tmpfs");
                        continue;
                    };
                    (kind, source, target, read_only)
                }
                _ => {
                    let Some(text) = self.text(item, &at) else {
                        continue;
                    };
                    let parts: Vec<&str> = text.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [target] => (None, *target, ""),
                        [source, target] => (Some(*source), *target, ""),
                        [source, target, mode] => (Some(*source), *target, *mode),
                        _ => {
                            self.error(
                                &at,
                                item.pos,
                                format!("{text:?} is not SOURCE:TARGET[:MODE]"),
                            );
                            continue;
                        }
                    };
                    let mut read_only = false;
                    for m in mode.split(',').filter(|m| !m.is_empty()) {
                        match m {
                            "ro" => read_only = true,
                            "rw" => {}
                            other => self.error(
                                &at,
                                item.pos,
                                format!(
                                    "mount mode {other:?} is not supported by previewd: ro or rw"
                                ),
                            ),
                        }
                    }
                    let kind = match source {
                        Some(s) if s.starts_with(['.', '/', '~']) => "bind",
                        _ => "volume",
                    };
                    (
                        kind.to_owned(),
                        source.map(str::to_owned),
                        Some(target.to_owned()),
                        read_only,
                    )
                }
            };
            let Some(target) = target.filter(|t| t.starts_with('/')) else {
                self.error(
                    &at,
                    item.pos,
                    "a mount's target is an absolute path in the container",
                );
                continue;
            };
            match kind.as_str() {
                "volume" => {
                    if let Some(name) = &source {
                        if !volumes.contains(name) {
                            self.error(
                                &at,
                                item.pos,
                                format!(
                                    "volume {name:?} is not declared under the top-level volumes"
                                ),
                            );
                            continue;
                        }
                    }
                    out.push(Mount::Volume {
                        name: source,
                        target,
                        read_only,
                    });
                }
                "bind" => {
                    let Some(source) = source else {
                        self.error(&at, item.pos, "a bind mount needs a source");
                        continue;
                    };
                    if is_docker_socket(&source) {
                        self.error(&at, item.pos, "refused by the host's policy: the engine's socket would give the preview the host");
                        continue;
                    }
                    let path = match tree_path(&source) {
                        Ok(path) => path,
                        Err(why) => {
                            self.error(&at, item.pos, why);
                            continue;
                        }
                    };
                    if !self.files.exists(&path) {
                        self.error(&at, item.pos, format!("no {path:?} in the tree"));
                        continue;
                    }
                    if !read_only {
                        self.warn(&at, item.pos, "mounted read-only: a preview gets the commit's files, not a checkout it could change");
                    }
                    out.push(Mount::Tree { path, target });
                }
                "tmpfs" => out.push(Mount::Tmpfs { target }),
                other => self.error(
                    &at,
                    item.pos,
                    format!("mount type {other:?} is refused: volume, bind (of the tree) or tmpfs"),
                ),
            }
        }
    }

    fn deploy(&mut self, node: &Node, path: &str, limits: &mut Limits) {
        let Some(entries) = self.expect_map(node, path) else {
            return;
        };
        for (key, value) in entries {
            let here = join(path, &key.name);
            match key.name.as_str() {
                "resources" => {
                    let Some(resources) = self.expect_map(value, &here) else {
                        continue;
                    };
                    for (rkey, rvalue) in resources {
                        let there = join(&here, &rkey.name);
                        match rkey.name.as_str() {
                            "limits" => {
                                let Some(items) = self.expect_map(rvalue, &there) else {
                                    continue;
                                };
                                for (lkey, lvalue) in items {
                                    let at = join(&there, &lkey.name);
                                    match lkey.name.as_str() {
                                        "cpus" => {
                                            limits.cpus = self.cpus(lvalue, &at).or(limits.cpus)
                                        }
                                        "memory" => {
                                            limits.memory = self.size(lvalue, &at).or(limits.memory)
                                        }
                                        "pids" => match lvalue.value {
                                            Value::Int(n) if n > 0 => limits.pids = Some(n),
                                            _ => self.error(
                                                &at,
                                                lvalue.pos,
                                                "expected a positive number of processes",
                                            ),
                                        },
                                        _ => self.unknown_key(
                                            &there,
                                            lkey,
                                            &["cpus", "memory", "pids"],
                                        ),
                                    }
                                }
                            }
                            "reservations" => self.warn(
                                &there,
                                rkey.pos,
                                "ignored: previewd applies limits, not reservations",
                            ),
                            _ => self.unknown_key(&here, rkey, &["limits", "reservations"]),
                        }
                    }
                }
                "replicas" => {
                    if value.value != Value::Int(1) {
                        self.error(
                            &here,
                            value.pos,
                            "a preview runs one replica of each service",
                        );
                    }
                }
                "restart_policy" => self.warn(
                    &here,
                    key.pos,
                    "ignored: previewd restarts a stopped service itself",
                ),
                "labels" | "mode" | "placement" | "update_config" | "rollback_config"
                | "endpoint_mode" => {
                    self.error(&here, key.pos, "not supported by previewd yet");
                }
                _ => self.unknown_key(path, key, &["resources", "replicas", "restart_policy"]),
            }
        }
    }

    fn previewd(&mut self, node: &Node) -> Option<Settings> {
        let path = "x-previewd";
        let entries = self.expect_map(node, path)?;
        let mut settings = Settings::default();
        for (key, value) in entries {
            let here = join(path, &key.name);
            match key.name.as_str() {
                "web" => settings.web = self.endpoint(value, &here),
                "public" => {
                    if let Value::Seq(items) = &value.value {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(e) = self.endpoint(item, &format!("{here}[{i}]")) {
                                settings.public.push(e);
                            }
                        }
                    } else {
                        self.mismatch(&here, value, "a list");
                    }
                }
                "profiles" => {
                    settings.profiles = self.texts(value, &here, false).unwrap_or_default()
                }
                _ => self.unknown_key(path, key, &["web", "public", "profiles"]),
            }
        }
        Some(settings)
    }

    /// `service`, `service:port`, or `{service, port}`.
    fn endpoint(&mut self, node: &Node, path: &str) -> Option<Wanted> {
        let (service, port) = match &node.value {
            Value::Map(entries) => {
                let mut service = None;
                let mut port = None;
                for (key, value) in entries {
                    let here = join(path, &key.name);
                    match key.name.as_str() {
                        "service" => service = self.text(value, &here),
                        "port" => match value.value {
                            Value::Int(p) if (1..=65535).contains(&p) => port = Some(p as u16),
                            _ => self.error(
                                &here,
                                value.pos,
                                "expected a port number from 1 to 65535",
                            ),
                        },
                        _ => self.unknown_key(path, key, &["service", "port"]),
                    }
                }
                (service?, port)
            }
            _ => {
                let text = self.text(node, path)?;
                match text.split_once(':') {
                    Some((service, port)) => match port.parse::<u16>() {
                        Ok(port) if port > 0 => (service.to_owned(), Some(port)),
                        _ => {
                            self.error(
                                path,
                                node.pos,
                                format!("{text:?} is not SERVICE or SERVICE:PORT"),
                            );
                            return None;
                        }
                    },
                    None => (text, None),
                }
            }
        };
        Some(Wanted {
            service,
            port,
            pos: node.pos,
            path: path.to_owned(),
        })
    }

    fn resolve(
        &mut self,
        drafts: BTreeMap<String, Draft>,
        settings: Settings,
        root_pos: Pos,
        volumes: BTreeSet<String>,
    ) -> Option<StackSpec> {
        let active: BTreeSet<String> = drafts
            .iter()
            .filter(|(_, d)| {
                d.profiles.is_empty() || d.profiles.iter().any(|p| settings.profiles.contains(p))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut services: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        for (name, draft) in &drafts {
            if !active.contains(name) {
                continue;
            }
            let mut spec = draft.spec.clone();
            for (dep, condition) in &draft.spec.depends_on {
                let at = join(&join(&join("services", name), "depends_on"), dep);
                let pos = draft.depends_pos.get(dep).copied().unwrap_or(draft.pos);
                if draft.optional.contains(dep) && !active.contains(dep) {
                    self.warn(
                        &at,
                        pos,
                        format!("optional dependency {dep:?} is not in this stack: skipped"),
                    );
                    spec.depends_on.remove(dep);
                    continue;
                }
                match drafts.get(dep) {
                    None => self.error(&at, pos, format!("no service {dep:?} in this file")),
                    Some(_) if !active.contains(dep) => self.error(
                        &at,
                        pos,
                        format!(
                            "service {dep:?} is in a profile x-previewd.profiles does not turn on"
                        ),
                    ),
                    Some(target)
                        if *condition == Condition::Healthy
                            && target
                                .spec
                                .healthcheck
                                .as_ref()
                                .and_then(|h| h.test.as_ref())
                                == Some(&HealthTest::Disabled) =>
                    {
                        self.error(
                            &at,
                            pos,
                            format!("service_healthy waits for {dep:?}, whose healthcheck is disabled: it can never be healthy"),
                        );
                    }
                    Some(target)
                        if *condition == Condition::Healthy
                            && target
                                .spec
                                .healthcheck
                                .as_ref()
                                .is_none_or(|h| h.test.is_none()) =>
                    {
                        self.warn(
                            &at,
                            pos,
                            format!("service_healthy waits for {dep:?}, which has no healthcheck test here: its image must define a HEALTHCHECK"),
                        );
                    }
                    Some(_) => {}
                }
            }
            services.insert(name.clone(), spec);
        }
        let jobs: BTreeSet<String> = services
            .values()
            .flat_map(|s| s.depends_on.iter())
            .filter(|(_, c)| **c == Condition::CompletedSuccessfully)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &jobs {
            if let Some(s) = services.get_mut(name) {
                s.job = true;
            }
        }
        if let Some(cycle) = find_cycle(&services) {
            let first = &cycle[0];
            let pos = drafts.get(first).map_or(root_pos, |d| d.pos);
            self.error(
                &join("services", first),
                pos,
                format!("depends_on goes round in a circle: {}", cycle.join(" -> ")),
            );
        }
        let web = match settings.web {
            Some(wanted) => self.endpoint_of(&wanted, &services),
            None => {
                let serving: Vec<(&String, &ServiceSpec)> = services
                    .iter()
                    .filter(|(_, s)| !s.job && s.ports.iter().any(|p| !p.udp))
                    .collect();
                match serving.as_slice() {
                    [(name, service)] => {
                        let tcp: Vec<u16> = service
                            .ports
                            .iter()
                            .filter(|p| !p.udp)
                            .map(|p| p.port)
                            .collect();
                        match tcp.as_slice() {
                            [port] => Some(Endpoint {
                                service: (*name).clone(),
                                port: *port,
                            }),
                            _ => {
                                let pos = drafts[*name].pos;
                                self.error("x-previewd.web", pos, format!("service {name:?} listens on ports {tcp:?}: name the one that takes traffic, as x-previewd.web: {name}:PORT"));
                                None
                            }
                        }
                    }
                    [] => {
                        self.error("x-previewd.web", root_pos, "no service exposes a port: add expose or ports to the web service, or name it in x-previewd.web as SERVICE:PORT");
                        None
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
                        self.error("x-previewd.web", root_pos, format!("services {names:?} expose ports: name the one that takes traffic in x-previewd.web"));
                        None
                    }
                }
            }
        };
        let mut public = Vec::new();
        for wanted in &settings.public {
            // Its URL is `<service>--<slug>.<domain>`: the name must make that one DNS label.
            if !public_name(&wanted.service) {
                self.error(
                    &wanted.path,
                    wanted.pos,
                    format!("{:?} cannot be public: its URL needs a service name of at most 30 lowercase letters, digits and single '-' inside", wanted.service),
                );
                continue;
            }
            public.extend(self.endpoint_of(wanted, &services));
        }
        Some(StackSpec {
            services,
            volumes,
            web: web?,
            public,
        })
    }

    fn endpoint_of(
        &mut self,
        wanted: &Wanted,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Option<Endpoint> {
        let Some(service) = services.get(&wanted.service) else {
            self.error(
                &wanted.path,
                wanted.pos,
                format!("no active service {:?}", wanted.service),
            );
            return None;
        };
        if service.job {
            self.error(&wanted.path, wanted.pos, format!("{:?} runs to its end (a service waits for it to complete): it cannot take traffic", wanted.service));
            return None;
        }
        let port = match wanted.port {
            Some(port) => port,
            None => {
                let tcp: Vec<u16> = service
                    .ports
                    .iter()
                    .filter(|p| !p.udp)
                    .map(|p| p.port)
                    .collect();
                match tcp.as_slice() {
                    [port] => *port,
                    _ => {
                        self.error(
                            &wanted.path,
                            wanted.pos,
                            format!(
                                "say which port of {:?} takes traffic, as {}:PORT",
                                wanted.service, wanted.service
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        Some(Endpoint {
            service: wanted.service.clone(),
            port,
        })
    }
}

/// `x-previewd`, before it is resolved against the services.
#[derive(Debug, Default)]
struct Settings {
    web: Option<Wanted>,
    public: Vec<Wanted>,
    profiles: Vec<String>,
}

#[derive(Debug)]
struct Wanted {
    service: String,
    port: Option<u16>,
    pos: Pos,
    path: String,
}

fn list_items(node: &Node) -> &[Node] {
    match &node.value {
        Value::Seq(items) => items,
        _ => std::slice::from_ref(node),
    }
}

fn valid_service_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn public_name(name: &str) -> bool {
    name.len() <= 30
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn join_path(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_owned()
    } else {
        format!("{dir}/{file}")
    }
}

/// A path of the tree, normalized and relative to its root ("" is the root). Absolute paths,
/// home paths and paths that climb out of the tree are refused: they would be host paths.
pub fn tree_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') || text.starts_with('~') {
        return Err(format!(
            "{text:?} is a host path: a preview reads only its commit's tree (use a path relative to the compose file)"
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "{text:?} climbs out of the tree: a preview reads only its commit's tree"
                    ));
                }
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// A `depends_on` cycle, as the services on it, if there is one.
fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, ServiceSpec>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| *s == name) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if !done.insert(name) {
            return None;
        }
        stack.push(name);
        for dep in services
            .get(name)
            .into_iter()
            .flat_map(|s| s.depends_on.keys())
        {
            if let Some(cycle) = visit(dep, services, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        if let Some(cycle) = visit(name, services, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// The known key nearest to a misspelt one, when it is near enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut above: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = above[j] + usize::from(ca != *cb);
            row[j + 1] = (above[j + 1] + 1).min(row[j] + 1).min(substitute);
        }
        above = row;
    }
    above[b.len()]
}
