//! An upstream that fails mid-response: the client sees an aborted
//! response (HTTP/1.1: the connection closes before the announced length;
//! HTTP/2: the stream is reset) and the proxy keeps serving.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use previewd_proxy::RouteTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

const BROKEN: &str = "broken.preview.test";

/// Announces 100,000 bytes, sends half, then resets the connection.
async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                    .await;
                let _ = stream.write_all(&[b'x'; 50_000]).await;
                let _ = stream.flush().await;
                // RST instead of FIN.
                let _ = stream.set_zero_linger();
                drop(stream);
            });
        }
    });
    addr
}

async fn table() -> RouteTable {
    let mut table = app_at(echo_upstream().await);
    table.insert(BROKEN, live(resetting_upstream().await));
    table
}

#[tokio::test]
async fn upstream_reset_mid_response_aborts_the_http1_response() {
    let proxy = Proxy::start(table().await).await;
    let tls = proxy.tls(BROKEN, &[b"http/1.1"]).await.expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(HOST, BROKEN)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(10, "response head", sender.send_request(req))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "100000");
    let body = within(10, "aborted body", response.into_body().collect()).await;
    assert!(body.is_err(), "the body must not look complete");

    assert_eq!(proxy.get(APP, "/next").await.status, StatusCode::OK);
}

#[tokio::test]
async fn upstream_reset_mid_response_resets_only_the_http2_stream() {
    let proxy = Proxy::start(table().await).await;
    let mut sender = h2_sender(&proxy, BROKEN).await;
    let req = Request::get(format!("https://{BROKEN}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(10, "response head", sender.send_request(req))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    let err = within(10, "aborted body", response.into_body().collect())
        .await
        .expect_err("the body must not look complete");
    // RST_STREAM from the proxy: `Reset(StreamId(1), INTERNAL_ERROR, Remote)`.
    let err = format!("{err:?}");
    assert!(
        err.contains("Reset(StreamId(1), INTERNAL_ERROR, Remote)"),
        "expected the proxy to reset the stream, got {err}"
    );

    // The same connection still carries the next request.
    let req = Request::get(format!("https://{BROKEN}/again"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let again = within(10, "second stream", sender.send_request(req))
        .await
        .expect("the connection survived");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(proxy.get(APP, "/next").await.status, StatusCode::OK);
}
