//! Harness for the end-to-end tests: one [`Env`] per test, with its own instance label, temp
//! dirs, ports, daemon process, git work tree and HTTPS client (curl with previewd's CA).
//! Dropping an `Env` stops its daemon and removes every Docker object of its instance, also
//! when the test failed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The static busybox the test images are made of (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// A Dockerfile whose app serves `www/` and writes what previewd told it to `env.txt`.
pub const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
COPY www /www
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "sh", "-c", "echo \"$PREVIEW_BRANCH $PREVIEW_COMMIT $PREVIEW_SLUG $PREVIEW_URL\" > /www/env.txt && exec /bin/busybox httpd -f -p 8080 -h /www"]
"#;

pub const DOMAIN: &str = "preview.localhost";

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Runs a command, panicking with its output if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// One test's world.
pub struct Env {
    pub instance: String,
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub mirror: PathBuf,
    pub work: PathBuf,
    pub https_port: u16,
    pub http_port: u16,
    binary: PathBuf,
    /// The engine the daemon and the Docker checks talk to; `None` is the default engine.
    docker_host: Option<String>,
    /// More flags for `previewd run`.
    daemon_args: Vec<String>,
    daemon: Option<Child>,
    starts: usize,
}

/// `Env::new(name, <the daemon binary>)`: the binary's path is only known to integration tests.
#[macro_export]
macro_rules! test_env {
    ($name:expr) => {
        $crate::Env::new($name, env!("CARGO_BIN_EXE_previewd-e2e-daemon"))
    };
}

impl Env {
    /// A fresh world for the test `name`, with a work repository whose `main` holds the
    /// busybox site, and the `preview` remote pointing at the (not yet created) mirror.
    /// `binary` is the daemon under test; [`test_env!`] fills it in.
    pub fn new(name: &str, binary: &str) -> Env {
        let mut instance = format!("e2e-{}-{name}", std::process::id());
        instance.truncate(32);
        let instance = instance.trim_end_matches('-').to_owned();
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_owned();
        let env = Env {
            instance,
            state: root.join("state"),
            mirror: root.join("state/mirror.git"),
            work: root.join("work"),
            root,
            _tmp: tmp,
            https_port: free_port(),
            http_port: free_port(),
            binary: PathBuf::from(binary),
            docker_host: None,
            daemon_args: Vec::new(),
            daemon: None,
            starts: 0,
        };
        std::fs::create_dir_all(env.work.join("www")).unwrap();
        std::fs::copy(BUSYBOX, env.work.join("busybox"))
            .expect("busybox-static installed at /bin/busybox");
        std::fs::write(env.work.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(env.work.join("www/index.html"), "main\n").unwrap();
        env.git(&["init", "-q", "-b", "main"]);
        env.git(&["add", "-A"]);
        env.git(&["commit", "-q", "-m", "main"]);
        env.git(&["remote", "add", "preview", env.mirror.to_str().unwrap()]);
        env
    }

    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Points this world at the engine `host` (`unix:///…`) instead of the default one: the
    /// daemon gets `--docker-host`, and [`Env::objects`], [`Env::inspect`] and the clean-up
    /// on drop ask that engine. Call it before [`Env::start`].
    pub fn set_docker_host(&mut self, host: &str) {
        assert!(
            self.daemon.is_none(),
            "set the Docker host before starting the daemon"
        );
        self.docker_host = Some(host.to_owned());
    }

    /// Adds flags to `previewd run` for every later [`Env::start`].
    pub fn daemon_args(&mut self, args: &[&str]) {
        self.daemon_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// `previewd <args> --state-dir <state>`: its exit status and standard output.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = run(Command::new(&self.binary)
            .args(args)
            .arg("--state-dir")
            .arg(&self.state));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The `docker` CLI, talking to this world's engine.
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Some(host) = &self.docker_host {
            cmd.args(["-H", host]);
        }
        cmd
    }

    /// Starts the daemon and waits until its control socket answers.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        self.starts += 1;
        let log = std::fs::File::create(self.root.join(format!("daemon-{}.log", self.starts)))
            .expect("daemon log");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["run", "--state-dir"])
            .arg(&self.state)
            .args(["--domain", DOMAIN, "--instance", &self.instance])
            .args(["--https-listen", &format!("127.0.0.1:{}", self.https_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)]);
        if let Some(host) = &self.docker_host {
            cmd.args(["--docker-host", host]);
        }
        cmd.args(&self.daemon_args);
        let child = cmd
            .env("RUST_LOG", "previewd=debug,previewd_proxy=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start previewd");
        self.daemon = Some(child);
        eventually(
            Duration::from_secs(30),
            "daemon answers on its socket",
            || self.try_ls().map(|_| ()),
        );
    }

    /// Stops the daemon with SIGTERM, as systemd would.
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("previewd did not stop within 20 s of SIGTERM");
    }

    /// Kills the daemon with SIGKILL: no cleanup, no goodbye, as a crash or OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the daemon process is still alive.
    pub fn daemon_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs git in the work tree; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = self.git_output(args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn git_output(&self, args: &[&str]) -> Output {
        run(Command::new("git")
            .args(args)
            .current_dir(&self.work)
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.invalid")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.invalid")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.root))
    }

    /// Checks out `branch`, creating it from `main` if it does not exist yet.
    pub fn checkout(&self, branch: &str) {
        let exists = self
            .git_output(&[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}"),
            ])
            .status
            .success();
        if exists {
            self.git(&["checkout", "-q", branch]);
        } else {
            self.git(&["checkout", "-q", "-b", branch, "main"]);
        }
    }

    /// Checks out `branch` (from `main` if new), sets the site's content and commits.
    /// Returns the new commit id.
    pub fn commit_site(&self, branch: &str, content: &str) -> String {
        self.checkout(branch);
        std::fs::write(self.work.join("www/index.html"), content).unwrap();
        self.git(&["commit", "-q", "-am", content]);
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// `git push preview <refspecs>`; panics unless it succeeds. Returns what git printed,
    /// the hook's lines included.
    pub fn push(&self, refspecs: &[&str]) -> String {
        let mut args = vec!["push", "--force", "preview"];
        args.extend_from_slice(refspecs);
        let out = self.git_output(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "push {refspecs:?} failed: {text}");
        text
    }

    pub fn host(&self, slug: &str) -> String {
        format!("{slug}.{DOMAIN}")
    }

    pub fn url(&self, slug: &str) -> String {
        format!("https://{}:{}/", self.host(slug), self.https_port)
    }

    /// GET `path` of the preview `slug` over real TLS, verified against previewd's CA only.
    /// Returns the status (0 when no HTTP answer came) and the body.
    pub fn get(&self, slug: &str, path: &str) -> (u16, String) {
        let host = self.host(slug);
        let out = run(Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(self.state.join("tls/ca.pem"))
            .args([
                "--resolve",
                &format!("{host}:{}:127.0.0.1", self.https_port),
            ])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{host}:{}{path}", self.https_port)));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Waits until `slug` answers 200 with exactly `body`.
    pub fn wait_for_body(&self, slug: &str, body: &str, limit: Duration) {
        let mut last = (0, String::new());
        let what = format!("{slug} serves {body:?}");
        eventually(limit, &what, || {
            last = self.get(slug, "/");
            (last.0 == 200 && last.1 == body).then_some(())
        });
    }

    /// `previewd ls --json`, parsed; `None` while the daemon does not answer.
    pub fn try_ls(&self) -> Option<Vec<Value>> {
        let out = run(Command::new(&self.binary)
            .args(["ls", "--json", "--state-dir"])
            .arg(&self.state));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `previewd ls --json`, parsed.
    pub fn ls(&self) -> Vec<Value> {
        self.try_ls().expect("previewd ls --json answers")
    }

    /// The row of `previewd ls` for `branch`.
    pub fn row(&self, branch: &str) -> Option<Value> {
        self.ls().into_iter().find(|r| r["branch"] == branch)
    }

    /// Ids of Docker objects of this instance: `kind` is `container`, `image` or `network`;
    /// `filters` are extra `label=...` filters.
    pub fn objects(&self, kind: &str, filters: &[&str]) -> Vec<String> {
        let mut cmd = self.docker();
        match kind {
            "container" => cmd.args(["ps", "-a", "-q", "--no-trunc"]),
            "image" => cmd.args(["images", "-q", "--no-trunc"]),
            "network" => cmd.args(["network", "ls", "-q", "--no-trunc"]),
            "volume" => cmd.args(["volume", "ls", "-q"]),
            other => panic!("unknown Docker object kind {other}"),
        };
        cmd.args([
            "--filter",
            &format!("label=previewd.instance={}", self.instance),
        ]);
        for f in filters {
            cmd.args(["--filter", &format!("label={f}")]);
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "docker {kind} list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// `docker inspect -f <format> <id>`.
    pub fn inspect(&self, id: &str, format: &str) -> String {
        let out = run(self.docker().args(["inspect", "-f", format, id]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The daemon's log so far (all starts), for failure messages.
    pub fn daemon_log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.root.join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Removes every Docker object of this instance: containers first, they hold the rest.
    fn remove_objects(&self) {
        let label = format!("label=previewd.instance={}", self.instance);
        for (list, remove) in [
            (&["ps", "-a", "-q"][..], &["rm", "-f", "-v"][..]),
            (&["images", "-q"][..], &["rmi", "-f"][..]),
            (&["network", "ls", "-q"][..], &["network", "rm"][..]),
            (&["volume", "ls", "-q"][..], &["volume", "rm", "-f"][..]),
        ] {
            let out = run(self.docker().args(list).args(["--filter", &label]));
            let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            ids.dedup();
            if !ids.is_empty() {
                let _ = self
                    .docker()
                    .args(remove)
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- previewd log of {} (last 60 lines) ---", self.instance);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        self.remove_objects();
    }
}
