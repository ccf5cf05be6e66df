//! `previewd proxy` as a real process: a certificate made here with rcgen, an in-process
//! upstream, a rustls client that trusts only the test CA, routes changed through the
//! `previewd proxy route` verbs, and shutdown by SIGTERM. Readiness is polled with deadlines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_previewd");
const APP: &str = "app.preview.test";
const DEADLINE: Duration = Duration::from_secs(10);

/// A CA and a `*.preview.test` leaf it signed, as PEM files in a temp dir.
struct Certs {
    dir: TempDir,
    ca_pem: String,
}

impl Certs {
    fn new() -> Certs {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["*.preview.test".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write key");
        Certs {
            dir,
            ca_pem: ca_cert.pem(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }
}

/// A `previewd proxy` process; killed if the test ends while it runs.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    /// Starts `previewd proxy --listen 127.0.0.1:0 <args>` and waits for its ready line.
    async fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .arg("proxy")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start previewd proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        timeout(DEADLINE, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("previewd proxy did not get ready in time")
            .expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("previewd proxy: listening on https://")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .parse()
            .expect("listen address");
        Running { child, addr }
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

/// An upstream answering `hello from upstream`; `/slow` first reports its arrival, then
/// answers once the test releases it.
struct Upstream {
    addr: SocketAddr,
    arrivals: mpsc::UnboundedReceiver<()>,
    release: watch::Sender<bool>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let (arrived, arrivals) = mpsc::unbounded_channel();
    let (release, released) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            let released = released.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let arrived = arrived.clone();
                    let mut released = released.clone();
                    async move {
                        if req.uri().path() == "/slow" {
                            let _ = arrived.send(());
                            let _ = released.wait_for(|go| *go).await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"hello from upstream"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        arrivals,
        release,
    }
}

/// One GET over a fresh TLS connection with SNI and Host `host`.
async fn get(proxy: SocketAddr, ca_pem: &str, host: &str, path: &str) -> (StatusCode, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    let name = ServerName::try_from(host.to_owned()).expect("server name");
    let tls = timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GETs `/` on `host` until it answers `want`, failing after the deadline.
async fn poll_status(proxy: SocketAddr, ca_pem: &str, host: &str, want: StatusCode) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, _) = get(proxy, ca_pem, host, "/").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} still answers {status}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `previewd <args>`; answers exit code, stdout, stderr.
async fn previewd(args: &[&str]) -> (i32, String, String) {
    let out = timeout(DEADLINE, Command::new(BIN).args(args).output())
        .await
        .expect("previewd finished in time")
        .expect("run previewd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_serve_over_tls_and_unknown_hosts_get_404() {
    let certs = Certs::new();
    let backend = upstream().await.addr;
    let route = format!("{APP}={backend}");
    let proxy = Running::start(&[
        "--cert",
        s(&certs.cert()),
        "--key",
        s(&certs.key()),
        "--route",
        &route,
    ])
    .await;

    let (status, body) = get(proxy.addr, &certs.ca_pem, APP, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello from upstream");
    let (status, _) = get(proxy.addr, &certs.ca_pem, "nope.preview.test", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_add_serves_a_new_host_and_route_remove_makes_it_404() {
    let certs = Certs::new();
    let backend = upstream().await.addr;
    let socket = certs.socket();
    let proxy = Running::start(&[
        "--cert",
        s(&certs.cert()),
        "--key",
        s(&certs.key()),
        "--admin-socket",
        s(&socket),
    ])
    .await;
    let new = "new.preview.test";
    let (status, _) = get(proxy.addr, &certs.ca_pem, new, "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let route = format!("New.Preview.Test={backend}");
    let (code, out, err) = previewd(&[
        "proxy",
        "route",
        "add",
        "--admin-socket",
        s(&socket),
        &route,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{new}={backend}\n"));
    poll_status(proxy.addr, &certs.ca_pem, new, StatusCode::OK).await;

    let (code, out, err) = previewd(&["proxy", "route", "ls", "--admin-socket", s(&socket)]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{new}={backend}\n"));

    let (code, out, err) = previewd(&[
        "proxy",
        "route",
        "remove",
        "--admin-socket",
        s(&socket),
        new,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("removed {new}\n"));
    poll_status(proxy.addr, &certs.ca_pem, new, StatusCode::NOT_FOUND).await;

    // Removing it again is a runtime error: exit 1, one line.
    let (code, _, err) = previewd(&[
        "proxy",
        "route",
        "remove",
        "--admin-socket",
        s(&socket),
        new,
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no route for new.preview.test"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2_with_one_line() {
    let certs = Certs::new();
    let missing = certs.dir.path().join("missing.pem");
    let (cert, key) = (certs.cert(), certs.key());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["proxy", "--listen", "nowhere"], "--listen"),
        (vec!["proxy", "--route", "app.preview.test"], "--route"),
        (vec!["proxy", "--route", "bad host=127.0.0.1:1"], "--route"),
        (vec!["proxy", "--cert", s(&cert)], "--cert and --key"),
        (vec!["proxy", "--drain-timeout", "soon"], "--drain-timeout"),
        (
            vec!["proxy", "--cert", s(&missing), "--key", s(&key)],
            "missing.pem",
        ),
        (
            vec!["proxy", "--cert", s(&key), "--key", s(&key)],
            "holds no PEM certificate",
        ),
        (
            vec![
                "proxy",
                "route",
                "add",
                "--admin-socket",
                "/nonexistent",
                "x",
            ],
            "--route",
        ),
    ];
    for (args, expected) in cases {
        let (code, _, err) = previewd(&args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A well-formed call to no proxy is a runtime failure.
    let (code, _, err) = previewd(&[
        "proxy",
        "route",
        "add",
        "--admin-socket",
        "/nonexistent",
        "a.test=127.0.0.1:1",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_refuses_new_connections_and_exits_0() {
    let certs = Certs::new();
    let mut upstream = upstream().await;
    let backend = upstream.addr;
    let route = format!("{APP}={backend}");
    let mut proxy = Running::start(&[
        "--cert",
        s(&certs.cert()),
        "--key",
        s(&certs.key()),
        "--route",
        &route,
        "--drain-timeout",
        "20s",
    ])
    .await;
    let addr = proxy.addr;
    let ca_pem = certs.ca_pem.clone();
    let slow = tokio::spawn(async move { get(addr, &ca_pem, APP, "/slow").await });
    timeout(DEADLINE, upstream.arrivals.recv())
        .await
        .expect("slow request reached the upstream in time");

    proxy.terminate();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        !slow.is_finished(),
        "the slow request must still be in flight"
    );
    upstream.release.send_replace(true);

    let (status, body) = slow.await.expect("slow request task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello from upstream");
    let exit = timeout(DEADLINE, proxy.child.wait())
        .await
        .expect("previewd proxy exited in time")
        .expect("wait");
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cert_files_previewd_ca_issues_per_host() {
    let state = tempfile::tempdir().expect("tempdir");
    let backend = upstream().await.addr;
    let route = format!("{APP}={backend}");
    let proxy = Running::start(&[
        "--state-dir",
        s(state.path()),
        "--domain",
        "preview.test",
        "--route",
        &route,
    ])
    .await;
    let ca_pem = std::fs::read_to_string(state.path().join("tls/ca.pem")).expect("CA written");
    let (status, body) = get(proxy.addr, &ca_pem, APP, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
