//! Mode "acme" against a real ACME server: Let's Encrypt's test server
//! pebble and its DNS server pebble-challtestsrv, on loopback ports, from the
//! Debian package (`apt-get install -y pebble`; the hook uses curl). The
//! test's DNS hook sets TXT records through challtestsrv's management API.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use previewd_proxy::{build_resolver, AcmeChallenge, AcmeSettings, CertSource, Serving, TlsMode};
use tokio::sync::oneshot;

use support::certs::{served_leaf, TestCa};
use support::pebble::{dns_names, free_port, mode, proxy_for, script, wait_status, Pebble};
use support::*;

fn settings(pebble: &Pebble, dns_hook: PathBuf) -> AcmeSettings {
    AcmeSettings {
        directory: pebble.directory(),
        ca_file: Some(pebble.https_ca.clone()),
        email: Some("ops@preview.test".into()),
        challenge: AcmeChallenge::Dns01 {
            hook: dns_hook,
            hook_timeout: Duration::from_secs(30),
        },
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
        &no_routes(),
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
    let mut settings =
        AcmeSettings::new(AcmeChallenge::dns01(script(dir.path(), "hook", "exit 0")));
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
