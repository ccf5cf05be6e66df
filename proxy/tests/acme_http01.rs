//! Mode "acme" with the HTTP-01 opt-in against a real ACME server: pebble
//! validates each preview host by fetching its challenge from our plain-HTTP
//! listener (pebble's `httpPort`), with every name resolved to loopback by
//! pebble-challtestsrv, and no shortcut (`PEBBLE_VA_ALWAYS_VALID` unset).

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use previewd_proxy::{
    build_resolver, serve_redirect, AcmeChallenge, AcmeSettings, CertSource, RouteTable, Serving,
    SharedRoutes, TlsMode,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use support::certs::served_leaf;
use support::pebble::{dns_names, mode, proxy_for, wait_status, Pebble};
use support::*;

/// A certificate source in HTTP-01 mode and its plain-HTTP listener; both
/// stop when dropped.
struct Started {
    source: CertSource,
    _stop: oneshot::Sender<()>,
    _stop_http: oneshot::Sender<()>,
}

async fn start_http01(
    settings: &AcmeSettings,
    state: &Path,
    routes: &SharedRoutes,
    http: TcpListener,
) -> Started {
    let (stop, stopped) = oneshot::channel::<()>();
    let source = build_resolver(
        &TlsMode::Acme(settings.clone()),
        state,
        DOMAIN,
        routes,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("acme http-01 mode starts");
    assert!(source.http01.is_some(), "http-01 hands out a responder");
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_redirect(
        http,
        DOMAIN.to_owned(),
        8443,
        source.http01.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));
    Started {
        source,
        _stop: stop,
        _stop_http: stop_http,
    }
}

fn settings(pebble: &Pebble) -> AcmeSettings {
    let mut settings = AcmeSettings::new(AcmeChallenge::Http01);
    settings.directory = pebble.directory();
    settings.ca_file = Some(pebble.https_ca.clone());
    settings.email = Some("ops@preview.test".into());
    settings
}

/// Status and `Location` of a plain-HTTP GET of `path` for `host`.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, Option<String>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(10, "plain-HTTP request", sender.send_request(req))
        .await
        .expect("response");
    let location = response
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().expect("ASCII").to_owned());
    (response.status(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_host_gets_its_own_certificate_by_http01_kept_across_a_restart() {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = http.local_addr().expect("addr");
    let mut pebble = Pebble::start_validating_http_on(http_addr.port()).await;
    let root = pebble.issuing_root().await;
    let state = tempfile::tempdir().expect("state");
    let settings = settings(&pebble);
    let routes: SharedRoutes = Arc::new(ArcSwap::from_pointee(RouteTable::new()));

    let first = start_http01(&settings, state.path(), &routes, http).await;
    let mut status = first.source.status.clone();
    assert_eq!(status.borrow().serving, Serving::AcmePerHost);
    assert_eq!(status.borrow().not_after, None);
    let ca_pem = fs::read_to_string(state.path().join("tls/ca.pem")).expect("previewd CA");
    let proxy = proxy_for(&first.source, root.clone()).await;

    // Before its host is routed, a name gets previewd's CA, without waiting.
    let before = served_leaf(proxy.addr, &ca_pem, APP).await;
    assert_eq!(dns_names(&before), ["DNSName(app.preview.test)"]);

    // Any route state counts: a preview still building is already a host.
    let mut table = RouteTable::new();
    table.insert(
        APP,
        previewd_proxy::Route::Building {
            commit: "c0ffee".into(),
            since: std::time::SystemTime::now(),
        },
    );
    routes.store(Arc::new(table));
    let issued = wait_status(&mut status, 90, "HTTP-01 issuance", |s| {
        s.not_after.is_some() || s.last_error.is_some()
    })
    .await;
    assert_eq!(issued.last_error, None, "pebble logs:\n{}", pebble.logs());

    // A client trusting only pebble's root accepts it, and it names exactly the host.
    let leaf = served_leaf(proxy.addr, &root, APP).await;
    assert_eq!(dns_names(&leaf), ["DNSName(app.preview.test)"]);
    // A host never in the table still gets previewd's CA.
    let other = served_leaf(proxy.addr, &ca_pem, "other.preview.test").await;
    assert_eq!(dns_names(&other), ["DNSName(other.preview.test)"]);

    // The plain-HTTP listener still redirects everything but challenges.
    assert_eq!(
        http_get(http_addr, "app.preview.test", "/path?q").await,
        (
            StatusCode::PERMANENT_REDIRECT,
            Some("https://app.preview.test:8443/path?q".to_owned())
        )
    );
    assert_eq!(
        http_get(http_addr, "evil.com", "/").await,
        (StatusCode::BAD_REQUEST, None)
    );
    assert_eq!(
        http_get(
            http_addr,
            "app.preview.test",
            "/.well-known/acme-challenge/unknown-token"
        )
        .await,
        (StatusCode::NOT_FOUND, None)
    );

    // One pair per host, the key only for previewd.
    let hosts = state
        .path()
        .join(format!("tls/acme/127.0.0.1_{}/hosts", pebble.acme_port));
    assert_eq!(mode(&hosts.join("app.preview.test.key.pem")), 0o600);
    assert!(hosts.join("app.preview.test.cert.pem").is_file());
    assert_eq!(fs::read_dir(&hosts).expect("hosts dir").count(), 2);
    drop(proxy);
    drop(first);

    // Restart with the ACME server gone: the persisted certificate serves at once.
    pebble.stop_pebble();
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let second = start_http01(&settings, state.path(), &routes, http).await;
    let now = second.source.status.borrow().clone();
    assert_eq!(now.serving, Serving::AcmePerHost);
    assert_eq!(now.not_after, issued.not_after);
    let proxy = proxy_for(&second.source, root.clone()).await;
    assert_eq!(served_leaf(proxy.addr, &root, APP).await, leaf);
    // Nothing was due, so after a poll of the routes nothing was attempted
    // against the stopped server (not a readiness wait: nothing should change).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(second.source.status.borrow().last_error, None);
}
