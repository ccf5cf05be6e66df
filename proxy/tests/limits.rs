//! Every bound in `Limits`, exercised over real sockets: header read
//! timeout (slowloris), idle keep-alive, write timeout (a client that stops
//! reading), header and target sizes, upstream response timeout and the
//! connection cap.

mod support;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use previewd_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

fn limits(change: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    change(&mut limits);
    limits
}

/// Reads until the proxy closes the connection (EOF or reset).
async fn until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_is_cut_off_after_the_header_read_timeout() {
    let limits = limits(|l| l.header_read_timeout = Duration::from_secs(1));
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let (mut reader, mut writer) = tokio::io::split(tls);
    writer
        .write_all(format!("GET / HTTP/1.1\r\nhost: {APP}\r\n").as_bytes())
        .await
        .expect("start line");
    // One more header line every 500 ms, forever: always "making progress".
    let dribble = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            n += 1;
            if writer
                .write_all(format!("x-slow-{n}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return n;
            }
        }
    });
    let answer = within(10, "slowloris disconnect", until_closed(&mut reader)).await;
    // hyper closes without an answer (no 408).
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    dribble.abort();
}

#[tokio::test]
async fn header_read_timeout_also_ends_idle_http1_keep_alive() {
    // hyper starts the header timer as soon as it waits for the next request
    // head, so on HTTP/1.1 it bounds keep-alive idleness too.
    let limits = limits(|l| l.header_read_timeout = Duration::from_secs(1));
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {APP}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let seen = within(10, "keep-alive close", until_closed(&mut tls)).await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&seen)), 200);
}

#[tokio::test]
async fn idle_http1_connection_is_closed_after_the_idle_timeout() {
    let limits = limits(|l| {
        l.idle_timeout = Duration::from_secs(1);
        l.header_read_timeout = Duration::from_secs(300);
    });
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {APP}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let seen = within(10, "idle close", until_closed(&mut tls)).await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&seen)), 200);
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let limits = limits(|l| l.idle_timeout = Duration::from_secs(1));
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let tls = proxy.tls(APP, &[b"h2"]).await.expect("TLS");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("https://{APP}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(Answer::read(response).await.status, StatusCode::OK);
    // The client connection task ends when the proxy closes the connection.
    let _ = within(10, "h2 idle close", conn).await;
}

#[tokio::test]
async fn oversized_header_block_gets_431_on_http1() {
    let (upstream, accepted) = counting_upstream().await;
    let limits = limits(|l| l.max_header_bytes = 16 * 1024);
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let big = "a".repeat(20 * 1024);
    let answer = raw_h1(
        &proxy,
        format!("GET / HTTP/1.1\r\nhost: {APP}\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    // Just under the limit still passes.
    let fits = "a".repeat(15 * 1024);
    let answer = raw_h1(
        &proxy,
        format!("GET / HTTP/1.1\r\nhost: {APP}\r\nx-big: {fits}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn overlong_target_gets_414_and_is_never_forwarded() {
    let (upstream, accepted) = counting_upstream().await;
    let limits = limits(|l| l.max_uri_bytes = 100);
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let long = format!("/{}", "a".repeat(100));
    let answer = proxy.get(APP, &long).await;
    assert_eq!(answer.status, StatusCode::URI_TOO_LONG, "{answer:?}");
    answer.assert_noindex();

    let mut sender = h2_sender(&proxy, APP).await;
    let req = Request::get(format!("https://{APP}{long}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(req).await.expect("h2 response");
    assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was forwarded");

    assert_eq!(proxy.get(APP, "/short").await.status, StatusCode::OK);
}

/// Zero bytes forever; sets `dropped` when hyper drops it (the peer is gone).
struct Endless {
    dropped: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        self.sent.fetch_add(ZEROS.len(), Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS)))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let dropped = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (flag, count) = (dropped.clone(), sent.clone());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let service = service_fn(move |_req: Request<Incoming>| {
            let body = Endless {
                dropped: flag.clone(),
                sent: count.clone(),
            };
            async move { Ok::<_, hyper::Error>(Response::new(body)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let limits = limits(|l| l.write_timeout = Duration::from_secs(1));
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    tls.write_all(format!("GET /download HTTP/1.1\r\nhost: {APP}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    // Never read: the proxy's writes stall once the socket buffers fill, and
    // after the write timeout it gives up, dropping the upstream response.
    eventually(30, "upstream body dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(sent.load(Ordering::SeqCst) > 0);
    drop(tls);
}

#[tokio::test]
async fn silent_upstream_gets_504_after_the_response_timeout() {
    let limits = limits(|l| l.upstream_response_timeout = Duration::from_secs(1));
    let proxy = Proxy::start_with(app_at(silent_upstream().await), limits).await;
    let answer = proxy.get(APP, "/").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}");
    assert!(
        answer.body.contains("did not answer within 1 seconds"),
        "{}",
        answer.body
    );
    answer.assert_noindex();
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let limits = limits(|l| l.max_connections = 2);
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let first = proxy.tls(APP, &[b"http/1.1"]).await.expect("first");
    let _second = proxy.tls(APP, &[b"http/1.1"]).await.expect("second");
    let third = proxy.tls(APP, &[b"http/1.1"]).await;
    assert!(third.is_err(), "third connection must be refused");

    // A freed slot is usable again once the proxy notices the close. The
    // probe that gets in is the one that carries the request: dropping it
    // and dialling again would race the proxy noticing that drop.
    drop(first);
    let admitted = within(10, "a slot frees up", async {
        loop {
            if let Ok(tls) = proxy.tls(APP, &[b"http/1.1"]).await {
                return tls;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let req = Request::get("/")
        .header(HOST, APP)
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send_h1_over(admitted, req).await.status, StatusCode::OK);
}
