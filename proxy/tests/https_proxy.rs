//! Component tests of the proxy over real sockets: a CA in a temp dir, the
//! HTTPS server and redirect server on 127.0.0.1:0, in-process upstreams, and
//! a rustls client that trusts only the CA.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use previewd_proxy::{serve_redirect, CertificateAuthority, Route, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use support::*;
#[tokio::test]
async fn live_route_forwards_body_and_sets_forwarding_headers() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    let proxy = Proxy::start(table).await;

    let host = format!("{APP}:{}", proxy.addr.port());
    let req = Request::post("/submit?x=1")
        .header(HOST, &host)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .body(Full::new(Bytes::from_static(b"hello upstream")))
        .expect("request");
    let answer = proxy.send_h1(APP, req).await;

    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let body = &answer.body;
    assert!(body.contains(&format!("host={host}\n")), "{body}");
    assert!(body.contains("xff=127.0.0.1\n"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(body.contains("xfp=https\n"), "{body}");
    assert!(body.contains(&format!("xfh={host}\n")), "{body}");
    assert!(
        body.contains(&format!(
            "forwarded=for=127.0.0.1;proto=https;host=\"{host}\"\n"
        )),
        "{body}"
    );
    assert!(body.contains("hop=\n"), "{body}");
    assert!(body.contains("uri=/submit?x=1\n"), "{body}");
    assert!(body.contains("body=hello upstream\n"), "{body}");
    assert_eq!(answer.header("x-upstream-hop"), "", "{answer:?}");
    answer.assert_noindex();
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_forwarded() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    let proxy = Proxy::start(table).await;

    let tls = proxy.tls(APP, &[b"h2", b"http/1.1"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for round in 0..2 {
        let req = Request::post(format!("https://{APP}/h2?round={round}"))
            .body(Full::new(Bytes::from(format!("over h2 {round}"))))
            .expect("request");
        let response = within(10, "h2 request", sender.send_request(req))
            .await
            .expect("h2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let answer = Answer::read(response).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert!(
            answer.body.contains(&format!("host={APP}\n")),
            "{}",
            answer.body
        );
        assert!(answer.body.contains("xfp=https\n"), "{}", answer.body);
        assert!(
            answer.body.contains(&format!("body=over h2 {round}\n")),
            "{}",
            answer.body
        );
        answer.assert_noindex();
    }
}

#[tokio::test]
async fn unknown_host_is_404_and_reveals_no_other_preview() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    table.insert("secret-branch.preview.test", Route::Gone);
    let proxy = Proxy::start(table).await;

    let answer = proxy.get("nope.preview.test", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.body.contains("No preview here"), "{}", answer.body);
    assert!(!answer.body.contains("app"), "{}", answer.body);
    assert!(!answer.body.contains("secret-branch"), "{}", answer.body);
    assert_eq!(answer.header("content-type"), "text/html; charset=utf-8");

    let no_host = proxy
        .send_h1(
            APP,
            Request::get("/")
                .header(HOST, "bad host")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(no_host.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn request_for_another_host_than_the_sni_is_misdirected() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    table.insert("other.preview.test", live(upstream));
    let proxy = Proxy::start(table).await;

    let req = Request::get("/")
        .header(HOST, "other.preview.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = proxy.send_h1(APP, req).await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{answer:?}");
    assert!(
        !answer.body.contains("host="),
        "must not reach the upstream"
    );

    // Same host in another case and with a port is the same host.
    let req = Request::get("/")
        .header(HOST, format!("APP.preview.test.:{}", proxy.addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(proxy.send_h1(APP, req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn building_failed_and_gone_get_their_pages() {
    let mut table = RouteTable::new();
    table.insert(
        "building.preview.test",
        Route::Building {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            since: SystemTime::now() - Duration::from_secs(5),
        },
    );
    table.insert(
        "failed.preview.test",
        Route::Failed {
            commit: "fedcba9876543210".into(),
            log_tail: "step 3/4\nerror: <script>alert('x')</script>".into(),
        },
    );
    table.insert("gone.preview.test", Route::Gone);
    let proxy = Proxy::start(table).await;

    let building = proxy.get("building.preview.test", "/").await;
    assert_eq!(building.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(building.header("refresh"), "2");
    assert_eq!(building.header("cache-control"), "no-store");
    assert!(building.body.contains("0123456789ab"), "{}", building.body);
    building.assert_noindex();

    let failed = proxy.get("failed.preview.test", "/").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert!(failed.body.contains("failed"), "{}", failed.body);
    assert!(failed.body.contains("fedcba987654"), "{}", failed.body);
    assert!(
        failed
            .body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "{}",
        failed.body
    );
    assert!(!failed.body.contains("<script>"), "{}", failed.body);
    failed.assert_noindex();

    let gone = proxy.get("gone.preview.test", "/").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.body.contains("This preview is gone"), "{}", gone.body);
    gone.assert_noindex();
}

#[tokio::test]
async fn closed_upstream_is_502_and_the_proxy_keeps_serving() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert("down.preview.test", live(closed_port().await));
    table.insert(APP, live(upstream));
    let proxy = Proxy::start(table).await;

    let down = proxy.get("down.preview.test", "/").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{down:?}");
    assert!(down.body.contains("not reachable"), "{}", down.body);
    down.assert_noindex();

    let up = proxy.get(APP, "/after").await;
    assert_eq!(up.status, StatusCode::OK, "{up:?}");
    assert!(up.body.contains("uri=/after\n"), "{}", up.body);
}

#[tokio::test]
async fn published_table_is_seen_by_the_next_request() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(RouteTable::new()).await;
    assert_eq!(proxy.get(APP, "/").await.status, StatusCode::NOT_FOUND);

    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    proxy.routes.store(Arc::new(table));
    assert_eq!(proxy.get(APP, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn certificates_are_issued_per_sni_name_under_the_domain() {
    let proxy = Proxy::start(RouteTable::new()).await;
    for sni in ["anything.preview.test", "deep.er.preview.test", DOMAIN] {
        let tls = proxy
            .tls(sni, &[b"http/1.1"])
            .await
            .unwrap_or_else(|err| panic!("handshake for {sni} must verify: {err}"));
        let chain = tls.get_ref().1.peer_certificates().expect("peer chain");
        assert_eq!(chain.len(), 2, "chain is leaf + CA");
    }
    // A foreign name gets the domain's certificate, which the client rejects:
    // we never hand out a certificate for a name that is not ours.
    assert!(proxy.tls("evil.com", &[]).await.is_err());
}

#[tokio::test]
async fn ca_is_kept_across_restarts_with_a_private_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("state/tls");
    let first = CertificateAuthority::load_or_create(&tls_dir).expect("create");
    let second = CertificateAuthority::load_or_create(&tls_dir).expect("reload");
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("ca.pem")).expect("ca.pem"),
        first.cert_pem()
    );
    let mode = std::fs::metadata(tls_dir.join("ca-key.pem"))
        .expect("ca-key.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn redirect_server_sends_our_hosts_to_https_and_refuses_others() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_redirect(
        listener,
        DOMAIN.to_owned(),
        8443,
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    let get = |host: &'static str| async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/path?q")
            .header(HOST, host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = within(10, "redirect request", sender.send_request(req))
            .await
            .expect("response");
        Answer::read(response).await
    };

    let ours = get("x.preview.test:8080").await;
    assert_eq!(ours.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(ours.headers[LOCATION], "https://x.preview.test:8443/path?q");

    let evil = get("evil.com").await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST);
    assert!(evil.headers.get(LOCATION).is_none());

    // Cleartext HTTP/2 (prior knowledge) is not spoken at all.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let h2c = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::get("http://x.preview.test/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.send_request(req).await
    };
    let refused = within(10, "h2c attempt", h2c).await;
    assert!(refused.is_err(), "answered over h2c: {refused:?}");

    stop.send(()).expect("server still running");
    within(15, "serve_redirect shutdown", server)
        .await
        .expect("join")
        .expect("serve_redirect result");
}

#[tokio::test]
async fn shutdown_makes_serve_https_return() {
    let upstream = echo_upstream().await;
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    let mut proxy = Proxy::start(table).await;

    // An idle keep-alive connection must not hold shutdown up.
    let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    let client_conn = tokio::spawn(conn);
    let req = Request::get("/")
        .header(HOST, APP)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(Answer::read(response).await.status, StatusCode::OK);

    let stop = proxy.stop.take().expect("stop sender");
    let server = proxy.server.take().expect("server task");
    stop.send(()).expect("server still running");
    within(8, "serve_https shutdown", server)
        .await
        .expect("join")
        .expect("serve_https result");
    // The server closed the idle connection on its way out.
    within(5, "client connection close", client_conn)
        .await
        .expect("join")
        .ok();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "listener must be closed"
    );
}
