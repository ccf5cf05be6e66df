//! Mode "acme" against a real ACME server: Let's Encrypt's test server
//! pebble and its DNS server pebble-challtestsrv, on loopback ports, from the
//! Debian package (`apt-get install -y pebble`; the hook uses curl). The
//! test's DNS hook sets TXT records through challtestsrv's management API.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use previewd_proxy::{
    build_resolver, AcmeSettings, CertSource, CertStatus, Limits, RouteTable, Serving, TlsMode,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsConnector;

use support::certs::{served_leaf, TestCa};
use support::*;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
const CURL: &str = "/usr/bin/curl";

/// A child process killed (and reaped) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the ACME tests need `apt-get install -y pebble curl`"
    );
}

/// pebble and pebble-challtestsrv on loopback, with their own files.
struct Pebble {
    dir: TempDir,
    /// Signs pebble's HTTPS certificate (the ACME client's `ca_file`).
    https_ca: PathBuf,
    acme_port: u16,
    management_port: u16,
    challtest_port: u16,
    pebble: Option<Child>,
    _challtestsrv: Child,
}

impl Pebble {
    async fn start() -> Pebble {
        for binary in [PEBBLE, CHALLTESTSRV, CURL] {
            require(binary);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("pebble HTTPS test CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let https_ca = dir.path().join("https-ca.pem");
        fs::write(&https_ca, &ca.pem).expect("CA");
        fs::write(dir.path().join("cert.pem"), &leaf.chain_pem).expect("cert");
        fs::write(dir.path().join("key.pem"), &leaf.key_pem).expect("key");
        let (acme_port, management_port, dns_port, challtest_port) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        fs::write(dir.path().join("pebble.json"), config.to_string()).expect("config");

        let challtestsrv = spawn(
            "pebble-challtestsrv",
            Command::new(CHALLTESTSRV)
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{challtest_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            dir.path(),
        );
        let pebble = spawn(
            "pebble",
            Command::new(PEBBLE)
                .arg("-config")
                .arg(dir.path().join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            dir.path(),
        );
        let pebble = Pebble {
            dir,
            https_ca,
            acme_port,
            management_port,
            challtest_port,
            pebble: Some(pebble),
            _challtestsrv: challtestsrv,
        };
        for port in [acme_port, management_port, challtest_port] {
            pebble.wait_listening(port).await;
        }
        pebble
    }

    async fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on 127.0.0.1:{port} after 30s; logs in {}:\n{}",
                self.dir.path().display(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        ["pebble", "pebble-challtestsrv"]
            .iter()
            .map(|name| {
                let log = fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                format!("--- {name}\n{log}")
            })
            .collect()
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root pebble issues under, from its management API (over HTTPS).
    async fn issuing_root(&self) -> String {
        let pem = fs::read_to_string(&self.https_ca).expect("CA");
        let config = client_config(&pem, &[b"http/1.1"]);
        let tcp = TcpStream::connect(("127.0.0.1", self.management_port))
            .await
            .expect("connect management");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS to pebble management");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1");
        tokio::spawn(conn);
        let req = Request::get("/roots/0")
            .header("host", format!("127.0.0.1:{}", self.management_port))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = within(10, "GET /roots/0", sender.send_request(req))
            .await
            .expect("roots response");
        assert!(response.status().is_success(), "{response:?}");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(body.to_vec()).expect("PEM")
    }

    /// A DNS hook that adds and clears TXT records in challtestsrv.
    fn hook(&self) -> PathBuf {
        let port = self.challtest_port;
        script(
            self.dir.path(),
            "dns-hook",
            &format!(
                r#"set -eu
case "$1" in
  set) path=set-txt; body="{{\"host\":\"$2\",\"value\":\"$3\"}}" ;;
  clear) path=clear-txt; body="{{\"host\":\"$2\"}}" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
{CURL} -sS --fail -X POST -d "$body" "http://127.0.0.1:{port}/$path""#
            ),
        )
    }

    fn stop_pebble(&mut self) {
        self.pebble.take();
    }
}

fn spawn(name: &'static str, command: &mut Command, dir: &Path) -> Child {
    let log = fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Child(child)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn settings(pebble: &Pebble, dns_hook: PathBuf) -> AcmeSettings {
    AcmeSettings {
        directory: pebble.directory(),
        ca_file: Some(pebble.https_ca.clone()),
        email: Some("ops@preview.test".into()),
        dns_hook,
        hook_timeout: Duration::from_secs(30),
        renew_check_interval: Duration::from_secs(3600),
    }
}

/// A running certificate source and the means to stop its background work.
struct Started {
    source: CertSource,
    _stop: oneshot::Sender<()>,
}

async fn start_acme(settings: &AcmeSettings, state: &Path) -> Started {
    let (stop, stopped) = oneshot::channel::<()>();
    let source = build_resolver(
        &TlsMode::Acme(settings.clone()),
        state,
        DOMAIN,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("acme mode starts");
    Started {
        source,
        _stop: stop,
    }
}

async fn wait_status(
    status: &mut watch::Receiver<CertStatus>,
    secs: u64,
    what: &str,
    f: impl FnMut(&CertStatus) -> bool,
) -> CertStatus {
    within(secs, what, status.wait_for(f))
        .await
        .expect("status sender alive")
        .clone()
}

fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

async fn proxy_for(source: &CertSource, trusted_pem: String) -> Proxy {
    Proxy::start_resolved(
        RouteTable::new(),
        Limits::default(),
        source.resolver.clone(),
        trusted_pem,
        tempfile::tempdir().expect("tempdir"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_is_issued_by_dns01_persisted_and_served_after_a_restart_without_the_server() {
    let mut pebble = Pebble::start().await;
    let root = pebble.issuing_root().await;
    let state = tempfile::tempdir().expect("state");
    let settings = settings(&pebble, pebble.hook());

    let first = start_acme(&settings, state.path()).await;
    let mut status = first.source.status.clone();
    let issued = wait_status(&mut status, 90, "ACME issuance", |s| {
        s.serving == Serving::Acme || s.last_error.is_some()
    })
    .await;
    assert_eq!(issued.last_error, None, "pebble logs:\n{}", pebble.logs());
    assert!(issued.not_after.is_some());

    // A client that trusts only pebble's root accepts it, for any branch name.
    let proxy = proxy_for(&first.source, root.clone()).await;
    let leaf = served_leaf(proxy.addr, &root, APP).await;
    assert_eq!(
        served_leaf(proxy.addr, &root, "other-branch.preview.test").await,
        leaf
    );
    let mut names = dns_names(&leaf);
    names.sort();
    assert_eq!(names, ["DNSName(*.preview.test)", "DNSName(preview.test)"]);

    // Account and certificate are persisted; keys only for previewd.
    let store = state
        .path()
        .join(format!("tls/acme/127.0.0.1_{}", pebble.acme_port));
    assert_eq!(mode(&store.join("account.json")), 0o600);
    assert_eq!(mode(&store.join("key.pem")), 0o600);
    assert!(store.join("cert.pem").is_file());
    drop(proxy);
    drop(first);

    // Restart with the ACME server gone: the persisted certificate serves at once.
    pebble.stop_pebble();
    let second = start_acme(&settings, state.path()).await;
    let now = second.source.status.borrow().clone();
    assert_eq!(now.serving, Serving::Acme, "{now:?}");
    assert_eq!(now.last_error, None);
    let proxy = proxy_for(&second.source, root.clone()).await;
    assert_eq!(served_leaf(proxy.addr, &root, APP).await, leaf);
    assert_eq!(second.source.status.borrow().last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewal_keeps_the_old_certificate_and_reports_the_hook_error() {
    let pebble = Pebble::start().await;
    // A persisted certificate with 10 of its 90 days left: due for renewal.
    let ca = TestCa::new("expiring test CA");
    let expiring = ca.expiring_wildcard(
        Duration::from_secs(80 * 86_400),
        Duration::from_secs(10 * 86_400),
    );
    let state = tempfile::tempdir().expect("state");
    let store = state
        .path()
        .join(format!("tls/acme/127.0.0.1_{}", pebble.acme_port));
    fs::create_dir_all(&store).expect("store dir");
    fs::write(store.join("cert.pem"), &expiring.chain_pem).expect("cert");
    fs::write(store.join("key.pem"), &expiring.key_pem).expect("key");

    let failing = script(
        pebble.dir.path(),
        "failing-hook",
        "echo \"dns provider refused the update for $2\" >&2; exit 1",
    );
    let started = start_acme(&settings(&pebble, failing), state.path()).await;
    let mut status = started.source.status.clone();
    assert_eq!(status.borrow().serving, Serving::Acme);
    let failed = wait_status(&mut status, 60, "the failing renewal", |s| {
        s.last_error.is_some()
    })
    .await;
    let error = failed.last_error.unwrap_or_default();
    assert!(
        error.contains("dns provider refused the update for _acme-challenge.preview.test."),
        "{error}"
    );
    assert_eq!(failed.serving, Serving::Acme);

    let proxy = proxy_for(&started.source, ca.pem.clone()).await;
    assert_eq!(served_leaf(proxy.addr, &ca.pem, APP).await, expiring.der);
    assert_eq!(
        fs::read_to_string(store.join("cert.pem")).expect("cert"),
        expiring.chain_pem
    );
}

#[tokio::test]
async fn before_the_first_certificate_previewd_ca_stands_in() {
    // The ACME server is unreachable: handshakes still complete, with a leaf
    // from previewd's own CA, and the failure is reported.
    let state = tempfile::tempdir().expect("state");
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = AcmeSettings::new(script(dir.path(), "hook", "exit 0"));
    settings.directory = format!("https://127.0.0.1:{}/dir", free_port());
    let started = start_acme(&settings, state.path()).await;
    let mut status = started.source.status.clone();
    assert_eq!(status.borrow().serving, Serving::AcmeFallback);
    let ca_pem = fs::read_to_string(state.path().join("tls/ca.pem")).expect("previewd CA");
    let proxy = proxy_for(&started.source, ca_pem.clone()).await;
    let leaf = served_leaf(proxy.addr, &ca_pem, APP).await;
    assert_eq!(dns_names(&leaf), ["DNSName(app.preview.test)"]);
    let failed = wait_status(&mut status, 30, "the unreachable server", |s| {
        s.last_error.is_some()
    })
    .await;
    assert_eq!(failed.serving, Serving::AcmeFallback);
}
