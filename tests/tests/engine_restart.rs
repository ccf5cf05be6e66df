//! The Docker engine restarts under a running previewd: previewd never exits, reconnects, and
//! every preview serves again once the engine is back, on its own container and image.
//!
//! The engine restarted is a private `dockerd` this test starts, in a network namespace of its
//! own (with its own socket, data root, exec root and pid file), so the tests running beside
//! it keep their engine, their networks and the host's `docker0`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use previewd_e2e::{eventually, test_env, Env};

/// How long the private engine may take to answer after it starts, and to exit after SIGTERM
/// (it stops its containers first, which takes their 10 s stop timeout).
const ENGINE_START: Duration = Duration::from_secs(60);
const ENGINE_STOP: Duration = Duration::from_secs(60);

/// A `dockerd` of this test's own.
///
/// It runs in a network namespace of its own, joined to the host by a veth pair with a route
/// to its address pool: a dockerd in the host's namespace deletes the host's `docker0` when
/// started with `--bridge none`, and again on every restart with `--default-address-pool` and
/// a default bridge (moby's `removeDefaultBridgeInterface`), which breaks the main engine.
/// Its addresses come from 172.16.0.0/16, which none of the engine's default pools
/// (172.17-31.0.0/16, 192.168.0.0/16) covers, so no subnet of the main engine overlaps.
///
/// Everything it keeps is in one short directory under /tmp: unix socket paths are limited
/// to 108 bytes, and containerd's sockets live under the exec root. Dropping it stops the
/// engine, removes the namespace and the veth pair, unmounts what it left and removes the
/// directory.
struct PrivateEngine {
    /// `/tmp/pd-XXXXXX`: `docker.sock`, `daemon.json`, `docker.pid`, `data/`, `exec/`, logs.
    dir: PathBuf,
    /// The network namespace, named after `dir`.
    netns: String,
    /// The host's end of the veth pair; the other end is `eth0` in the namespace.
    veth: String,
    /// The engine's /20 of 172.16.0.0/16 is `172.16.<slice>.0/20`.
    slice: u8,
    child: Option<Child>,
    starts: usize,
}

impl PrivateEngine {
    /// Starts a private engine and waits until it answers.
    fn start() -> PrivateEngine {
        let dir = tempfile::Builder::new()
            .prefix("pd-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp")
            .keep();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // An empty config file: the host's /etc/docker/daemon.json sets the data root and the
        // storage driver too, and dockerd refuses a key given both as a flag and in the file.
        std::fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        // Built before anything is set up, so a failure half-way is cleaned up by `drop`.
        let mut engine = PrivateEngine {
            veth: name.replace("pd-", "pdh"),
            netns: name,
            dir,
            slice: 0,
            child: None,
            starts: 0,
        };
        engine.connect_namespace();
        engine.spawn();
        engine
    }

    /// Creates the namespace, joins it to the host with a veth pair and routes a free /20 of
    /// 172.16.0.0/16 into it: its first /21 is the engine's address pool, its last /30 the
    /// link.
    fn connect_namespace(&mut self) {
        // Start at a slice picked by pid, so concurrent runs rarely even look at the same one.
        let first = std::process::id() % 16;
        let slice = (0..16)
            .map(|i| ((first + i) % 16 * 16) as u8)
            .find(|s| ip(&["route", "show", "root", &format!("172.16.{s}.0/20")]).is_empty())
            .expect("a /20 of 172.16.0.0/16 without routes on this host");
        self.slice = slice;
        let link = slice + 15;
        let ns = self.netns.clone();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("172.16.{link}.1/30"),
            "dev",
            &self.veth,
        ]);
        ip(&["link", "set", &self.veth, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("172.16.{link}.2/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("172.16.{link}.1"),
        ]);
        let pool = format!("172.16.{slice}.0/21");
        ip(&["route", "add", &pool, "via", &format!("172.16.{link}.2")]);
    }

    /// The range routed into the namespace, where previewd must put its preview networks (its
    /// default pool is not routed there).
    fn pool(&self) -> String {
        format!("172.16.{}.0/21", self.slice)
    }

    /// The engine's endpoint, for `--docker-host` and `docker -H`.
    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// Starts dockerd in the namespace on this engine's directories (the same flags every
    /// time, so a restart finds the containers and images it had) and waits until it answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "private dockerd already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("dockerd log");
        // nsenter changes the network namespace only: dockerd keeps the host's mounts (cgroups).
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.dir.join("daemon.json"))
            .args(["--host", &self.host()])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            // The main engine uses fuse-overlayfs; vfs needs no kernel or FUSE support.
            .args(["--storage-driver", "vfs"])
            // No default bridge: previewd makes networks of its own. No iptables rules: the
            // forward policy they set would drop the host's connections to the containers.
            // dockerd turns forwarding on in its namespace, so the veth reaches every bridge.
            .args(["--bridge", "none", "--iptables=false"])
            .arg("--default-address-pool")
            .arg(format!("base=172.16.{}.0/21,size=24", self.slice))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dockerd log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (docker.io and util-linux installed)");
        self.child = Some(child);
        eventually(ENGINE_START, "the private dockerd answers", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("private dockerd exited with {status}:\n{}", self.log());
            }
            let info = self
                .docker()
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output();
            info.is_ok_and(|o| o.status.success()).then_some(())
        });
    }

    /// Stops dockerd with SIGTERM, as an engine restart does, and waits until it exited.
    /// False when it did not exit within `limit`.
    fn stop(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let exited = wait_exit(child, limit);
        if exited {
            self.child = None;
        }
        exited
    }

    /// The `docker` CLI, talking to this engine.
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &self.host()]);
        cmd
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.join(format!("dockerd-{start}.log"))
    }

    /// The engine's log, every start, for failure messages.
    fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- engine restart ---\n")
    }

    /// Last resort when dockerd ignored SIGTERM: kills it, the app processes of its containers,
    /// and its containerd and shims (the processes whose command line names this directory).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut pids = Vec::new();
        let containers = std::fs::read_dir(self.dir.join("data/containers"));
        for id in containers.into_iter().flatten().flatten() {
            let id = id.file_name();
            let id = id.to_string_lossy();
            for cgroup in ["/sys/fs/cgroup/pids/docker", "/sys/fs/cgroup/docker"] {
                let procs = std::fs::read_to_string(format!("{cgroup}/{id}/cgroup.procs"));
                pids.extend(procs.unwrap_or_default().lines().map(str::to_owned));
            }
        }
        let dir = self.dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&dir) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for pid in pids {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if !self.stop(ENGINE_STOP) {
            eprintln!("private dockerd ignored SIGTERM for {ENGINE_STOP:?}; killing it");
            self.kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- private dockerd log (last 40 lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        // Deleting the namespace deletes the veth pair, and the route with it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        unmount_under(&self.dir);
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {error}", self.dir.display());
        }
    }
}

/// Runs `ip args`, panicking unless it succeeds; returns what it printed.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `child` until it exited, for at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts whatever is still mounted under `dir`, deepest first. A stopped dockerd normally
/// leaves nothing; one that was killed may leave its data root or a network namespace.
fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|target| Path::new(target).starts_with(dir))
        .collect();
    mounts.sort_by_key(|target| std::cmp::Reverse(target.len()));
    mounts.dedup();
    for target in mounts {
        let _ = Command::new("umount").args(["-l", target]).status();
    }
}

#[test]
fn engine_restart_leaves_previewd_running_and_every_preview_serves_again() {
    // Declared before the Env, so it is dropped after it: the Env's clean-up removes the
    // instance's objects from this engine while it still runs.
    let mut engine = PrivateEngine::start();
    let mut env = test_env!("engine-restart");
    env.set_docker_host(&engine.host());
    let config = env.root.join("previewd.toml");
    let network = format!(
        "[network]\npool = \"{}\"\nsubnet_size = 26\n",
        engine.pool()
    );
    std::fs::write(&config, network).unwrap();
    env.daemon_args(&["--config", config.to_str().unwrap()]);
    env.start();
    env.push(&["main"]);
    env.commit_site("feature/one", "one\n");
    env.commit_site("feature/two", "two\n");
    env.push(&["feature/one", "feature/two"]);
    env.wait_for_body("feature-one", "one\n", Duration::from_secs(180));
    env.wait_for_body("feature-two", "two\n", Duration::from_secs(180));

    let (one, two) = (app(&env, "feature/one"), app(&env, "feature/two"));
    assert_eq!(
        (one.len(), two.len()),
        (1, 1),
        "one app container per branch"
    );
    let containers = env.objects("container", &[]);
    let images = env.objects("image", &[]);
    let logs = (
        build_logs(&env, "feature-one"),
        build_logs(&env, "feature-two"),
    );

    let failed_before = failed_passes(&env);
    let stopped = Instant::now();
    assert!(
        engine.stop(ENGINE_STOP),
        "the private dockerd did not exit within {ENGINE_STOP:?} of SIGTERM"
    );
    let took = stopped.elapsed();
    assert!(
        env.daemon_running(),
        "previewd exited when the engine went away"
    );
    // Still answering on its control socket while the engine is down.
    assert_eq!(
        env.ls().len(),
        2,
        "ls lists both previews while the engine is down"
    );

    let restarted = Instant::now();
    engine.spawn();
    let failed_while_down = failed_passes(&env) - failed_before;
    env.wait_for_body("feature-one", "one\n", Duration::from_secs(120));
    env.wait_for_body("feature-two", "two\n", Duration::from_secs(120));
    eprintln!(
        "engine stopped in {took:?}; previewd logged {failed_while_down} failed passes \
         meanwhile; both previews served again {:?} after the engine was started",
        restarted.elapsed()
    );

    assert!(
        env.daemon_running(),
        "previewd exited after the engine came back"
    );
    eventually(Duration::from_secs(10), "ls shows both live", || {
        let rows = env.ls();
        let live = |branch: &str| {
            rows.iter()
                .any(|r| r["branch"] == branch && r["state"] == "live")
        };
        (rows.len() == 2 && live("feature/one") && live("feature/two")).then_some(())
    });
    assert_eq!(
        app(&env, "feature/one"),
        one,
        "the same container for feature/one"
    );
    assert_eq!(
        app(&env, "feature/two"),
        two,
        "the same container for feature/two"
    );
    assert_eq!(
        env.objects("container", &[]),
        containers,
        "no container added"
    );
    assert_eq!(
        env.objects("image", &[]),
        images,
        "same images: nothing rebuilt"
    );
    assert_eq!(
        (
            build_logs(&env, "feature-one"),
            build_logs(&env, "feature-two")
        ),
        logs,
        "no new build log: nothing was rebuilt"
    );
    let log = env.daemon_log();
    assert_eq!(
        log.matches("deploying").count(),
        2,
        "one deploy per branch, none after the engine restart:\n{log}"
    );
    assert!(env.daemon_running(), "previewd still runs at the end");
}

/// Ids of `branch`'s app containers.
fn app(env: &Env, branch: &str) -> Vec<String> {
    let branch = format!("previewd.branch={branch}");
    env.objects("container", &["previewd.role=app", &branch])
}

/// How many build logs `slug` has: one per build.
fn build_logs(env: &Env, slug: &str) -> usize {
    std::fs::read_dir(env.state.join("logs").join(slug))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// How many passes previewd logged as failed so far.
fn failed_passes(env: &Env) -> usize {
    env.daemon_log().matches("reconcile pass failed").count()
}
