use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::compose::{Command, Condition, Endpoint, HealthTest, Mount, Source};
use super::units::ContainerPort;
use super::*;

/// A tree of these files (and the directories above them).
struct Files(BTreeSet<String>);

impl Files {
    fn new(paths: &[&str]) -> Self {
        Files(paths.iter().map(|p| p.to_string()).collect())
    }
}

impl TreeFiles for Files {
    fn is_file(&self, path: &str) -> bool {
        self.0.contains(path)
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.0.iter().any(|f| f.starts_with(&format!("{path}/")))
    }
}

fn files() -> Files {
    Files::new(&[
        "Dockerfile",
        "app/Dockerfile",
        "app/main.py",
        "db/init.sql",
        "config/nginx.conf",
        ".env",
        "app.env",
    ])
}

fn vars() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PG_VERSION".into(), "15".into()),
        ("PREVIEW_URL".into(), "https://x.preview.localhost".into()),
    ])
}

fn run(text: &str) -> Checked {
    check(text, &vars(), &HostPolicy::default(), &files())
}

/// The errors as `line:column path: message` lines.
fn errors(text: &str) -> Vec<String> {
    run(text)
        .errors
        .iter()
        .map(|d| format!("{}:{} {}: {}", d.pos.line, d.pos.column, d.path, d.message))
        .collect()
}

fn warnings(text: &str) -> Vec<String> {
    run(text)
        .warnings
        .iter()
        .map(|d| format!("{}:{} {}: {}", d.pos.line, d.pos.column, d.path, d.message))
        .collect()
}

fn assert_error(text: &str, at: &str, needle: &str) {
    let found = errors(text);
    assert!(
        found
            .iter()
            .any(|e| e.starts_with(at) && e.contains(needle)),
        "expected an error at {at} containing {needle:?}, got {found:#?}"
    );
}

const STACK: &str = r#"
x-previewd:
  web: app:8000
  profiles: [seed]
services:
  app:
    build:
      context: ./app
      args:
        PYTHON: "3.12"
    command: ["python", "main.py"]
    environment:
      DATABASE_URL: postgres://app@db/app
      PUBLIC_URL: ${PREVIEW_URL}
      DEBUG:
    env_file: app.env
    expose: ["8000"]
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
      migrate:
        condition: service_completed_successfully
    volumes:
      - ./config/nginx.conf:/etc/nginx.conf:ro
      - uploads:/srv/uploads
    deploy:
      resources:
        limits:
          cpus: "0.5"
          memory: 512m
  migrate:
    build: ./app
    command: python main.py migrate
    depends_on: [db]
  db:
    image: "postgres:${PG_VERSION}"
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U app"]
      interval: 2s
      retries: 30
    volumes:
      - pgdata:/var/lib/postgresql/data
      - ./db/init.sql:/docker-entrypoint-initdb.d/init.sql:ro
    mem_limit: 1g
  cache:
    image: redis:7
    tmpfs: /data
  seed:
    build: ./app
    profiles: [seed]
    depends_on:
      db:
        condition: service_healthy
  docs:
    image: nginx
    profiles: [docs]
volumes:
  pgdata:
  uploads:
"#;

#[test]
fn a_whole_stack_is_read_as_written() {
    let checked = run(STACK);
    assert_eq!(checked.errors, [], "{:#?}", checked.errors);
    let spec = checked.spec.unwrap();
    let names: Vec<&str> = spec.services.keys().map(String::as_str).collect();
    // `docs` is in a profile x-previewd does not turn on.
    assert_eq!(names, ["app", "cache", "db", "migrate", "seed"]);
    assert_eq!(
        spec.web,
        Endpoint {
            service: "app".into(),
            port: 8000
        }
    );
    let app = &spec.services["app"];
    match &app.source {
        Source::Build(build) => {
            assert_eq!(build.context, "app");
            assert_eq!(build.dockerfile, "Dockerfile");
            assert_eq!(build.args["PYTHON"], "3.12");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        app.command,
        Some(Command::Exec(vec!["python".into(), "main.py".into()]))
    );
    assert_eq!(
        app.environment["PUBLIC_URL"].as_deref(),
        Some("https://x.preview.localhost")
    );
    assert_eq!(app.environment["DEBUG"], None);
    assert_eq!(app.env_files, ["app.env"]);
    assert_eq!(
        app.depends_on,
        BTreeMap::from([
            ("cache".into(), Condition::Started),
            ("db".into(), Condition::Healthy),
            ("migrate".into(), Condition::CompletedSuccessfully),
        ])
    );
    assert_eq!(
        app.mounts,
        [
            Mount::Tree {
                path: "config/nginx.conf".into(),
                target: "/etc/nginx.conf".into()
            },
            Mount::Volume {
                name: Some("uploads".into()),
                target: "/srv/uploads".into(),
                read_only: false
            }
        ]
    );
    assert_eq!(app.limits.cpus, Some(0.5));
    assert_eq!(app.limits.memory, Some(512 << 20));
    assert!(!app.job);
    assert!(spec.services["migrate"].job);
    assert_eq!(
        spec.services["migrate"].command,
        Some(Command::Shell("python main.py migrate".into()))
    );
    let db = &spec.services["db"];
    assert_eq!(db.source, Source::Image("postgres:15".into()));
    let health = db.healthcheck.as_ref().unwrap();
    assert_eq!(
        health.test,
        Some(HealthTest::Shell("pg_isready -U app".into()))
    );
    assert_eq!(health.interval, Some(Duration::from_secs(2)));
    assert_eq!(health.retries, Some(30));
    assert_eq!(db.limits.memory, Some(1 << 30));
    assert_eq!(
        spec.services["cache"].mounts,
        [Mount::Tmpfs {
            target: "/data".into()
        }]
    );
    assert_eq!(
        spec.volumes,
        BTreeSet::from(["pgdata".into(), "uploads".into()])
    );
}

#[test]
fn three_mistakes_are_three_errors_each_with_line_and_column() {
    let text = "services:\n  web:\n    image: busybox\n    expose: [80]\n    privileged: true\n    enviroment:\n      A: b\n    volumes:\n      - /etc:/host-etc:ro\n";
    assert_eq!(
        errors(text),
        [
            "5:5 services.web.privileged: refused by the host's policy: a privileged container controls the host",
            "6:5 services.web.enviroment: unknown key (did you mean \"environment\"?)",
            "9:9 services.web.volumes[0]: \"/etc\" is a host path: a preview reads only its commit's tree (use a path relative to the compose file)",
        ]
    );
}

#[test]
fn every_key_that_loosens_the_host_is_refused() {
    for (key, value) in [
        ("privileged", "true"),
        ("network_mode", "host"),
        ("pid", "host"),
        ("ipc", "host"),
        ("uts", "host"),
        ("userns_mode", "host"),
        ("security_opt", "[seccomp=unconfined]"),
        ("devices", "[/dev/kvm]"),
        ("sysctls", "{net.ipv4.ip_forward: 1}"),
        ("cgroup_parent", "x"),
        ("runtime", "runc"),
        ("volumes_from", "[other]"),
    ] {
        let text =
            format!("services:\n  web:\n    image: a\n    expose: [80]\n    {key}: {value}\n");
        assert_error(
            &text,
            &format!("5:5 services.web.{key}"),
            "refused by the host's policy",
        );
    }
}

#[test]
fn host_paths_the_socket_and_foreign_storage_are_refused() {
    let service =
        |extra: &str| format!("services:\n  web:\n    image: a\n    expose: [80]\n{extra}");
    assert_error(
        &service("    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"),
        "5:15 services.web.volumes[0]",
        "engine's socket",
    );
    assert_error(
        &service("    volumes: [\"../secrets:/s:ro\"]\n"),
        "5:15 services.web.volumes[0]",
        "climbs out of the tree",
    );
    assert_error(
        &service("    volumes: [\"~/.ssh:/s:ro\"]\n"),
        "5:15 services.web.volumes[0]",
        "host path",
    );
    assert_error(
        &service("    volumes:\n      - type: bind\n        source: /etc\n        target: /e\n"),
        "6:9 services.web.volumes[0]",
        "host path",
    );
    assert_error(
        &service("    volumes: [\"data:/d\"]\nvolumes:\n  data:\n    external: true\n"),
        "8:5 volumes.data.external",
        "external volumes are refused",
    );
    assert_error(
        &service("volumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /etc}\n"),
        "7:5 volumes.data.driver_opts",
        "can mount host paths",
    );
    assert_error(
        &service("networks:\n  outside:\n    external: true\n"),
        "7:5 networks.outside.external",
        "external networks are refused",
    );
    assert_error(
        "services:\n  web:\n    build:\n      context: .\n      network: host\n    expose: [80]\n",
        "5:16 services.web.build.network",
        "host's network",
    );
    assert_error(
        "services:\n  web:\n    build: https://github.com/x/y.git\n    expose: [80]\n",
        "3:12 services.web.build.context",
        "remote build contexts are refused",
    );
    assert_error(
        &service("    labels:\n      previewd.instance: other\n"),
        "6:7 services.web.labels.previewd.instance",
        "previewd's own",
    );
}

#[test]
fn capabilities_come_only_from_the_hosts_allow_list() {
    let text = "services:\n  web:\n    image: a\n    expose: [80]\n    cap_add: [NET_ADMIN, CAP_SYS_TIME]\n";
    let found = errors(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("5:15 services.web.cap_add[0]: capability NET_ADMIN"));
    let policy = HostPolicy {
        allowed_capabilities: BTreeSet::from(["NET_ADMIN".into(), "SYS_TIME".into()]),
    };
    let checked = check(text, &vars(), &policy, &files());
    assert_eq!(checked.errors, []);
}

#[test]
fn what_previewd_replaces_is_a_warning_that_says_so() {
    let text = "version: \"3.9\"\nservices:\n  web:\n    image: a\n    ports: [\"8080:80\"]\n    restart: always\n    volumes: [\"./config:/c\"]\n";
    assert_eq!(errors(text), Vec::<String>::new());
    let found = warnings(text);
    assert!(found[0].starts_with("1:1 version: obsolete"), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|w| w.starts_with("5:13 services.web.ports[0]: host port dropped")),
        "{found:#?}"
    );
    assert!(found
        .iter()
        .any(|w| w.starts_with("6:5 services.web.restart: ignored")));
    assert!(found.iter().any(|w| w.contains("mounted read-only")));
    let spec = run(text).spec.unwrap();
    assert_eq!(spec.web.port, 80);
    assert_eq!(
        spec.services["web"].ports,
        [ContainerPort {
            port: 80,
            udp: false
        }]
    );
}

#[test]
fn dependencies_must_exist_not_loop_and_be_checkable() {
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    depends_on: [dbb]\n",
        "5:18 services.web.depends_on.dbb",
        "no service \"dbb\"",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    depends_on:\n      db:\n        condition: service_healthy\n  db:\n    image: b\n    healthcheck:\n      disable: true\n",
        "6:7 services.web.depends_on.db",
        "whose healthcheck is disabled",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [web]\n",
        "6:3 services.b",
        "goes round in a circle: b -> web -> b",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    depends_on:\n      db:\n        condition: when_ready\n  db:\n    image: b\n",
        "7:20 services.web.depends_on.db.condition",
        "unknown condition",
    );
}

#[test]
fn the_web_service_is_named_or_found() {
    assert_error(
        "services:\n  a:\n    image: a\n  b:\n    image: b\n",
        "1:1 x-previewd.web",
        "no service exposes a port",
    );
    assert_error(
        "services:\n  a:\n    image: a\n    expose: [80]\n  b:\n    image: b\n    expose: [81]\n",
        "1:1 x-previewd.web",
        "name the one that takes traffic",
    );
    let text = "x-previewd:\n  web: b\n  public: [\"a:80\"]\nservices:\n  a:\n    image: a\n    expose: [80]\n  b:\n    image: b\n    expose: [81]\n";
    let spec = run(text).spec.unwrap();
    assert_eq!(spec.web.service, "b");
    assert_eq!(spec.web.port, 81);
    assert_eq!(spec.public[0].service, "a");
    assert_error(
        "x-previewd:\n  web: nope:80\nservices:\n  a:\n    image: a\n",
        "2:8 x-previewd.web",
        "no active service \"nope\"",
    );
    assert_error(
        "x-previewd:\n  wbe: a\nservices:\n  a:\n    image: a\n    expose: [80]\n",
        "2:3 x-previewd.wbe",
        "did you mean \"web\"",
    );
}

#[test]
fn interpolation_errors_point_at_the_value() {
    assert_error(
        "services:\n  web:\n    image: \"app:${TAG:?set TAG in .env}\"\n    expose: [80]\n",
        "3:12 services.web.image",
        "variable TAG is not set: set TAG in .env",
    );
    let found = warnings("services:\n  web:\n    image: \"app:${TAG}\"\n    expose: [80]\n");
    assert!(found[0].contains("variable TAG is not set"), "{found:#?}");
}

#[test]
fn paths_the_tree_lacks_are_errors() {
    assert_error(
        "services:\n  web:\n    build: ./nope\n    expose: [80]\n",
        "3:12 services.web.build.context",
        "no directory",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    env_file: missing.env\n",
        "5:15 services.web.env_file",
        "no file \"missing.env\"",
    );
    assert_eq!(
        errors("services:\n  web:\n    image: a\n    expose: [80]\n    env_file:\n      - path: missing.env\n        required: false\n"),
        Vec::<String>::new()
    );
}

#[test]
fn hostile_files_are_bounded_with_clear_errors() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(", ");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    assert!(errors(&bomb)[0].contains("budget"), "{:?}", errors(&bomb));
    let deep = format!("services: {}{}\n", "[".repeat(100), "]".repeat(100));
    assert_eq!(errors(&deep).len(), 1);
    let huge = format!("services:\n  x: \"{}\"\n", "y".repeat(10 << 20));
    assert!(errors(&huge)[0].contains("at most 1048576 bytes"));
    assert!(errors("- just\n- a list\n")[0].contains("expected a mapping"));
    assert!(errors("")[0].contains("expected a mapping"));
}

#[test]
fn dotenv_files() {
    let vars = dotenv(
        "# comment\nA=1\nexport B=two words\nC='single $x' # c\nD=\"line\\nnext \\\"q\\\"\"\nE=value # trailing\n\nbroken line\n",
    );
    assert_eq!(vars["A"], "1");
    assert_eq!(vars["B"], "two words");
    assert_eq!(vars["C"], "single $x");
    assert_eq!(vars["D"], "line\nnext \"q\"");
    assert_eq!(vars["E"], "value");
    assert_eq!(vars.len(), 5);
}

#[test]
fn a_symbolic_link_in_the_tree_is_no_way_out() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/", dir.path().join("hostroot")).unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::fs::write(dir.path().join("real/file"), "x").unwrap();
    let files = DirFiles(dir.path().to_path_buf());
    assert!(files.is_file("real/file"));
    assert!(files.is_dir("real"));
    assert!(!files.is_dir("hostroot"));
    assert!(!files.is_file("hostroot/etc/hostname"));
    assert!(!files.is_dir("hostroot/var/run"));
    let text = "services:\n  web:\n    image: a\n    expose: [80]\n    env_file: hostroot/etc/hostname\n    volumes: [\"./hostroot/etc:/x:ro\"]\n";
    let checked = check(text, &vars(), &HostPolicy::default(), &files);
    let found: Vec<String> = checked.errors.iter().map(|d| d.to_string()).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("env_file: no file"), "{found:#?}");
    assert!(
        found[1].contains("volumes[0]: no \"hostroot/etc\" in the tree"),
        "{found:#?}"
    );
}

#[test]
fn what_the_review_found_stays_fixed() {
    // A non-ASCII character after a variable name, and a duration that overflows: errors,
    // not panics.
    assert_error(
        "services:\n  web:\n    image: \"${VARé}\"\n    expose: [80]\n",
        "3:12 services.web.image",
        "invalid interpolation",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    stop_grace_period: 10000000000000000000s10000000000000000000s\n",
        "5:24 services.web.stop_grace_period",
        "is not a duration",
    );
    // A long dependency chain is bounded by the service cap, not by the stack.
    let mut chain = String::from("services:\n");
    for i in 0..=MAX_SERVICES_FOR_TEST {
        chain.push_str(&format!(
            "  s{i}:\n    image: a\n    depends_on: [s{}]\n",
            i + 1
        ));
    }
    assert_error(&chain, "2:3 services", "a preview runs at most 100");
    // Options previewd does not honour are errors, not silent drops.
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    volumes: [\"data:/d:rshared\"]\nvolumes:\n  data:\n",
        "5:15 services.web.volumes[0]",
        "mount mode \"rshared\"",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    volumes:\n      - type: volume\n        source: data\n        target: /d\n        volume:\n          subpath: x\nvolumes:\n  data:\n",
        "10:11 services.web.volumes[0].volume.subpath",
        "not supported",
    );
    assert_error(
        "services:\n  web:\n    build:\n      context: ./app\n      dockerfile: /Dockerfile\n    expose: [80]\n",
        "5:19 services.web.build.dockerfile",
        "host path",
    );
    // Each previewd label is reported where it is written.
    assert_error(
        "services:\n  web:\n    image: a\n    expose: [80]\n    labels:\n      ok: yes\n      previewd.slug: other\n",
        "7:7 services.web.labels.previewd.slug",
        "previewd's own",
    );
    // An optional dependency the stack lacks is skipped; an image's own healthcheck may serve.
    let text = "services:\n  web:\n    image: a\n    expose: [80]\n    depends_on:\n      extra:\n        condition: service_started\n        required: false\n      db:\n        condition: service_healthy\n  db:\n    image: postgres\n";
    let checked = run(text);
    assert_eq!(checked.errors, [], "{:#?}", checked.errors);
    let deps = &checked.spec.unwrap().services["web"].depends_on;
    assert_eq!(deps.keys().collect::<Vec<_>>(), ["db"]);
    assert!(warnings(text)
        .iter()
        .any(|w| w.contains("its image must define a HEALTHCHECK")));
    // A public service's name must make one DNS label of its URL.
    assert_error(
        "x-previewd:\n  web: web\n  public: [\"ad.min:80\"]\nservices:\n  web:\n    image: a\n    expose: [80]\n  ad.min:\n    image: b\n    expose: [80]\n",
        "3:12 x-previewd.public[0]",
        "cannot be public",
    );
}

const MAX_SERVICES_FOR_TEST: usize = 100;
