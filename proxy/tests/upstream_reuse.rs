//! Upstream connections over real sockets: an HTTP/1.1 client connection
//! gets an upstream connection of its own after its first request and keeps
//! reusing it; bodies, silent upstreams and upstreams that close after every
//! response all work on it; it closes with the client connection.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use previewd_proxy::Limits;
use tokio::net::TcpListener;

use support::*;

/// One keep-alive HTTP/1.1 connection to the proxy, SNI and host `APP`.
async fn keep_alive_client(proxy: &Proxy) -> SendRequest<Full<Bytes>> {
    let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Answer {
    within(10, "sender ready", sender.ready())
        .await
        .expect("connection open");
    let response = within(10, "response", sender.send_request(req))
        .await
        .expect("response");
    Answer::read(response).await
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(HOST, APP)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn a_keep_alive_client_connection_reuses_its_upstream_connection() {
    let (upstream, accepted) = counting_upstream().await;
    // One thread: each serving thread has a pool of its own.
    let limits = Limits {
        threads: 1,
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let mut client = keep_alive_client(&proxy).await;
    for i in 0..50 {
        let answer = send(&mut client, get(&format!("/{i}"))).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
        assert_eq!(answer.body, "upstream");
    }
    // The first request over the shared pool, the other 49 over one
    // connection of the client connection's own.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A second client connection: its first request takes the pool's idle
    // connection, the rest one new connection.
    let mut second = keep_alive_client(&proxy).await;
    for i in 0..10 {
        assert_eq!(
            send(&mut second, get("/")).await.status,
            StatusCode::OK,
            "{i}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bodies_and_forwarding_headers_cross_the_own_connection() {
    let proxy = Proxy::start(app_at(echo_upstream().await)).await;
    let mut client = keep_alive_client(&proxy).await;
    for i in 0..3 {
        let req = Request::post(format!("/upload/{i}?q=1"))
            .header(HOST, APP)
            .header("x-forwarded-for", "6.6.6.6")
            .body(Full::new(Bytes::from(format!("payload {i}"))))
            .expect("request");
        let answer = send(&mut client, req).await;
        assert_eq!(answer.status, StatusCode::OK);
        // Origin form on the wire, whichever connection carried it.
        assert!(
            answer.body.contains(&format!("uri=/upload/{i}?q=1\n")),
            "{}",
            answer.body
        );
        assert!(
            answer.body.contains(&format!("body=payload {i}\n")),
            "{}",
            answer.body
        );
        assert!(answer.body.contains("xff=127.0.0.1\n"), "{}", answer.body);
        assert!(
            answer.body.contains(&format!("host={APP}\n")),
            "{}",
            answer.body
        );
    }
}

/// Answers every request and then closes the connection.
async fn closing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(
                        b"once",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_gets_a_new_connection() {
    let proxy = Proxy::start(app_at(closing_upstream().await)).await;
    let mut client = keep_alive_client(&proxy).await;
    for i in 0..20 {
        let answer = send(&mut client, get("/")).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {answer:?}");
        assert_eq!(answer.body, "once");
    }
}

#[tokio::test]
async fn a_silent_upstream_times_out_on_the_own_connection_too() {
    let limits = Limits {
        upstream_response_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(silent_upstream().await), limits).await;
    let mut client = keep_alive_client(&proxy).await;
    // The first over the pool, the second over the connection of its own.
    for i in 0..2 {
        let answer = send(&mut client, get("/")).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "request {i}");
    }
}

#[tokio::test]
async fn own_upstream_connections_close_with_their_client_connection() {
    let (upstream, accepted) = counting_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let mut client = keep_alive_client(&proxy).await;
    for _ in 0..3 {
        assert_eq!(send(&mut client, get("/")).await.status, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let open_to_upstream = || established_to(upstream);
    assert_eq!(open_to_upstream(), 2, "pool and own connection open");
    drop(client);
    // The pool keeps its idle connection; the own one goes with the client.
    eventually(10, "own upstream connection closed", || {
        open_to_upstream() == 1
    })
    .await;
}

/// Established TCP connections from this process to `upstream`, read from
/// /proc/net/tcp (local side: the proxy's sockets whose remote is `upstream`).
fn established_to(upstream: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = upstream else {
        panic!("IPv4 upstream expected")
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    let remote = format!("{ip:08X}:{:04X}", v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 2 is the remote address, field 3 the state (01: established).
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}
