//! pebble (Let's Encrypt's test ACME server) and pebble-challtestsrv (its
//! DNS server) on loopback ports, from the Debian package (`apt-get install
//! -y pebble`; the DNS hook uses curl), killed when dropped even if the test
//! panics; and the checks the ACME tests share.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use previewd_proxy::{CertSource, CertStatus, Limits, RouteTable};
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::certs::TestCa;
use super::{client_config, within, Proxy};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
const CURL: &str = "/usr/bin/curl";

/// A child process killed (and reaped) when dropped.
pub struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
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
pub struct Pebble {
    pub dir: TempDir,
    /// Signs pebble's HTTPS certificate (the ACME client's `ca_file`).
    pub https_ca: PathBuf,
    pub acme_port: u16,
    management_port: u16,
    challtest_port: u16,
    pebble: Option<Child>,
    _challtestsrv: Child,
}

impl Pebble {
    /// pebble validating HTTP-01 on a port nobody listens on (DNS-01 tests).
    pub async fn start() -> Pebble {
        Self::start_validating_http_on(free_port()).await
    }

    /// pebble validating HTTP-01 challenges by connecting to every name at
    /// 127.0.0.1:`http_port` (challtestsrv resolves every name to loopback).
    pub async fn start_validating_http_on(http_port: u16) -> Pebble {
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
                "httpPort": http_port,
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
                // Challenges are really validated, whatever the caller's environment.
                .env_remove("PEBBLE_VA_ALWAYS_VALID")
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

    pub fn logs(&self) -> String {
        ["pebble", "pebble-challtestsrv"]
            .iter()
            .map(|name| {
                let log = fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                format!("--- {name}\n{log}")
            })
            .collect()
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root pebble issues under, from its management API (over HTTPS).
    pub async fn issuing_root(&self) -> String {
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
    pub fn hook(&self) -> PathBuf {
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

    pub fn stop_pebble(&mut self) {
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

/// An executable `#!/bin/sh` script `dir/name` running `body`.
///
/// A child `sh` writes it, never this process: a file this multi-threaded
/// test process held open for writing could be inherited by a process
/// another test forks at that moment, and exec'ing the script would then
/// fail with "Text file busy".
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut writer = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start sh");
    let mut stdin = writer.stdin.take().expect("stdin");
    stdin
        .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
        .expect("write script");
    drop(stdin);
    assert!(
        writer.wait().expect("sh").success(),
        "writing {}",
        path.display()
    );
    path
}

pub async fn wait_status(
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

pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
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

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// A proxy with no routes serving the certificates of `source`; its clients
/// trust only `trusted_pem` (pebble's issuing root).
pub async fn proxy_for(source: &CertSource, trusted_pem: String) -> Proxy {
    Proxy::start_resolved(
        RouteTable::new(),
        Limits::default(),
        source.resolver.clone(),
        trusted_pem,
        tempfile::tempdir().expect("tempdir"),
    )
    .await
}
