//! Mode "files" over real sockets: a test CA the client trusts, wildcard
//! leaves in PEM files, and replacements the way operators, cert-manager and
//! Kubernetes secret volumes make them, while a keep-alive connection stays
//! open.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use previewd_proxy::{
    build_resolver, CertSource, CertStatus, Limits, RouteTable, TlsError, TlsMode,
};
use tokio::sync::watch;

use support::certs::{served_leaf, wait_for_leaf, write_renamed, Leaf, TestCa};
use support::*;

/// The proxy in mode "files" reading `cert` and `key`.
async fn start(cert: PathBuf, key: PathBuf, ca: &TestCa) -> (Proxy, CertSource) {
    let state = tempfile::tempdir().expect("tempdir");
    let mode = TlsMode::Files { cert, key };
    let source = build_resolver(
        &mode,
        state.path(),
        DOMAIN,
        &no_routes(),
        std::future::pending(),
    )
    .await
    .expect("files load");
    let mut table = RouteTable::new();
    table.insert(APP, live(echo_upstream().await));
    let proxy = Proxy::start_resolved(
        table,
        Limits::default(),
        source.resolver.clone(),
        ca.pem.clone(),
        state,
    )
    .await;
    (proxy, source)
}

/// An HTTP/1.1 keep-alive connection that stays open across reloads.
async fn keep_alive(proxy: &Proxy) -> SendRequest<Full<Bytes>> {
    let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

async fn get_on(sender: &mut SendRequest<Full<Bytes>>) -> StatusCode {
    let req = Request::get("/still-open")
        .header(HOST, APP)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(
        10,
        "request on the open connection",
        sender.send_request(req),
    )
    .await
    .expect("the open connection keeps working");
    Answer::read(response).await.status
}

async fn wait_status(
    status: &mut watch::Receiver<CertStatus>,
    what: &str,
    f: impl FnMut(&CertStatus) -> bool,
) {
    within(5, what, status.wait_for(f))
        .await
        .expect("status sender alive");
}

fn write_pair(dir: &Path, leaf: &Leaf) {
    write_renamed(dir, "key.pem", &leaf.key_pem);
    write_renamed(dir, "cert.pem", &leaf.chain_pem);
}

#[tokio::test]
async fn replacement_by_atomic_rename_is_served_within_5s_and_open_connections_survive() {
    let ca = TestCa::new("files test CA");
    let (a, b) = (ca.wildcard(), ca.wildcard());
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path(), &a);
    let (proxy, _source) =
        start(dir.path().join("cert.pem"), dir.path().join("key.pem"), &ca).await;
    assert_eq!(served_leaf(proxy.addr, &ca.pem, APP).await, a.der);
    let mut open = keep_alive(&proxy).await;
    assert_eq!(get_on(&mut open).await, StatusCode::OK);

    write_pair(dir.path(), &b);
    wait_for_leaf(proxy.addr, &ca.pem, &b.der, 5).await;
    assert_eq!(get_on(&mut open).await, StatusCode::OK);
    // The apex is covered by the same certificate.
    assert_eq!(served_leaf(proxy.addr, &ca.pem, DOMAIN).await, b.der);
}

#[tokio::test]
async fn replacement_by_symlink_swap_like_a_kubernetes_secret_is_taken() {
    // <dir>/tls.crt -> ..data/tls.crt, ..data -> ..v1; an update writes ..v2 and
    // renames a new ..data link over the old one.
    let ca = TestCa::new("files test CA");
    let (a, b) = (ca.wildcard(), ca.wildcard());
    let dir = tempfile::tempdir().expect("tempdir");
    let version = |name: &str, leaf: &Leaf| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).expect("version dir");
        std::fs::write(v.join("tls.crt"), &leaf.chain_pem).expect("crt");
        std::fs::write(v.join("tls.key"), &leaf.key_pem).expect("key");
    };
    version("..v1", &a);
    symlink("..v1", dir.path().join("..data")).expect("..data");
    symlink("..data/tls.crt", dir.path().join("tls.crt")).expect("tls.crt");
    symlink("..data/tls.key", dir.path().join("tls.key")).expect("tls.key");
    let (proxy, _source) = start(dir.path().join("tls.crt"), dir.path().join("tls.key"), &ca).await;
    assert_eq!(served_leaf(proxy.addr, &ca.pem, APP).await, a.der);
    let mut open = keep_alive(&proxy).await;

    version("..v2", &b);
    symlink("..v2", dir.path().join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
    std::fs::remove_dir_all(dir.path().join("..v1")).expect("old version gone");

    wait_for_leaf(proxy.addr, &ca.pem, &b.der, 5).await;
    assert_eq!(get_on(&mut open).await, StatusCode::OK);
}

#[tokio::test]
async fn torn_write_is_refused_and_the_completed_file_is_taken() {
    let ca = TestCa::new("files test CA");
    let (a, b) = (ca.wildcard(), ca.wildcard());
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path(), &a);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (proxy, source) = start(cert.clone(), key.clone(), &ca).await;
    let mut status = source.status.clone();
    let mut open = keep_alive(&proxy).await;

    // In place, same inode: the new key, then half of the new chain.
    std::fs::write(&key, &b.key_pem).expect("key");
    std::fs::write(&cert, &b.chain_pem[..b.chain_pem.len() / 3]).expect("torn cert");
    wait_status(&mut status, "refusing the torn write", |s| {
        s.last_error.is_some()
    })
    .await;
    assert_eq!(served_leaf(proxy.addr, &ca.pem, APP).await, a.der);
    assert_eq!(get_on(&mut open).await, StatusCode::OK);

    std::fs::write(&cert, &b.chain_pem).expect("complete cert");
    wait_for_leaf(proxy.addr, &ca.pem, &b.der, 5).await;
    wait_status(&mut status, "clearing the error", |s| {
        s.last_error.is_none()
    })
    .await;
    assert_eq!(get_on(&mut open).await, StatusCode::OK);
}

#[tokio::test]
async fn mismatched_replacement_is_refused_and_the_old_certificate_keeps_serving() {
    let ca = TestCa::new("files test CA");
    let (a, b, c) = (ca.wildcard(), ca.wildcard(), ca.wildcard());
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path(), &a);
    let (proxy, source) = start(dir.path().join("cert.pem"), dir.path().join("key.pem"), &ca).await;
    let mut status = source.status.clone();

    // B's chain with C's key.
    write_renamed(dir.path(), "key.pem", &c.key_pem);
    write_renamed(dir.path(), "cert.pem", &b.chain_pem);
    wait_status(&mut status, "refusing the mismatch", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not match"))
    })
    .await;
    assert_eq!(served_leaf(proxy.addr, &ca.pem, APP).await, a.der);

    write_renamed(dir.path(), "key.pem", &b.key_pem);
    wait_for_leaf(proxy.addr, &ca.pem, &b.der, 5).await;
    wait_status(&mut status, "clearing the error", |s| {
        s.last_error.is_none()
    })
    .await;
}

#[tokio::test]
async fn bad_files_at_start_are_a_clear_error() {
    let ca = TestCa::new("files test CA");
    let (a, b) = (ca.wildcard(), ca.wildcard());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let load = |cert: &Path, key: &Path| {
        let mode = TlsMode::Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        let state = state.path().to_owned();
        async move {
            build_resolver(&mode, &state, DOMAIN, &no_routes(), std::future::pending())
                .await
                .expect_err("must refuse to start")
        }
    };

    let err = load(&cert, &key).await;
    assert!(matches!(err, TlsError::Files(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read TLS file {}", cert.display())),
        "{err}"
    );

    std::fs::write(&cert, "not a certificate").expect("write");
    std::fs::write(&key, &a.key_pem).expect("write");
    let err = load(&cert, &key).await.to_string();
    assert!(
        err.contains("certificate chain holds no PEM certificate"),
        "{err}"
    );

    std::fs::write(&cert, &a.chain_pem).expect("write");
    std::fs::write(&key, &b.key_pem).expect("write");
    let err = load(&cert, &key).await.to_string();
    assert!(
        err.contains("private key does not match the certificate"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}
