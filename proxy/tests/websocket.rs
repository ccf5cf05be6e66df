//! WebSocket tunnels through the proxy: only `Upgrade: websocket` on
//! HTTP/1.1, only after the upstream answered 101, and a silent tunnel ends
//! after the idle timeout. The upstream and the client speak a minimal
//! hand-written WebSocket (handshake and small text frames).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use previewd_proxy::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

/// Reads up to and including the blank line ending an HTTP head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.expect("read head") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

/// One text frame; `mask` for client-to-server frames.
fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126, "small frames only");
    let mut out = vec![0x81];
    let len = u8::try_from(payload.len()).expect("small");
    match mask {
        Some(key) => {
            out.push(0x80 | len);
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            out.push(len);
            out.extend_from_slice(payload);
        }
    }
    out
}

/// Reads one small frame, unmasking it if masked; `None` on EOF.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let masked = head[1] & 0x80 != 0;
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "small frames only");
    let mut key = [0u8; 4];
    if masked {
        stream.read_exact(&mut key).await.ok()?;
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some(payload)
}

/// Answers `Upgrade: websocket` with 101 and echoes frames; `/refuse` with
/// 403; anything else with 200 and the upgrade headers it saw.
async fn websocket_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let upgrade = header(&head, "upgrade").to_owned();
                let connection = header(&head, "connection").to_owned();
                if head.starts_with("GET /refuse ") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 7\r\n\r\nrefused")
                        .await;
                    // Keep the connection open: the proxy must not tunnel it.
                    let _ = stream.read(&mut [0u8; 1]).await;
                } else if upgrade.eq_ignore_ascii_case("websocket") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                              connection: Upgrade\r\nsec-websocket-accept: test\r\n\r\n",
                        )
                        .await;
                    while let Some(payload) = read_frame(&mut stream).await {
                        let mut echo = b"echo: ".to_vec();
                        echo.extend_from_slice(&payload);
                        if stream.write_all(&frame(&echo, None)).await.is_err() {
                            break;
                        }
                    }
                } else {
                    let body = format!("upgrade={upgrade};connection={connection}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    addr
}

fn upgrade_request(path: &str, protocol: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {APP}\r\nconnection: Upgrade\r\nupgrade: {protocol}\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
         http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
}

async fn open<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> String {
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    within(10, "response head", read_head(stream)).await
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_and_echoes_messages() {
    let proxy = Proxy::start(app_at(websocket_upstream().await)).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let head = open(&mut tls, &upgrade_request("/chat", "WebSocket")).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        header(&head, "upgrade").eq_ignore_ascii_case("websocket"),
        "{head}"
    );
    assert!(
        header(&head, "connection").eq_ignore_ascii_case("upgrade"),
        "{head}"
    );
    assert_eq!(header(&head, "sec-websocket-accept"), "test", "{head}");

    for i in 0..5 {
        let message = format!("message {i}");
        tls.write_all(&frame(message.as_bytes(), Some([1, 2, 3, 4])))
            .await
            .expect("send frame");
        let echo = within(10, "echo", read_frame(&mut tls))
            .await
            .expect("echo frame");
        assert_eq!(echo, format!("echo: {message}").into_bytes());
    }
}

#[tokio::test]
async fn h2c_upgrade_is_not_tunnelled_but_forwarded_plain() {
    let proxy = Proxy::start(app_at(websocket_upstream().await)).await;
    for protocol in ["h2c", "foo", "websocket2"] {
        let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
        tls.write_all(upgrade_request("/", protocol).as_bytes())
            .await
            .expect("write");
        let mut answer = String::new();
        within(10, "plain answer", tls.read_to_string(&mut answer))
            .await
            .expect("read answer");
        assert_eq!(raw_status(&answer), 200, "{protocol}: {answer}");
        // The upstream saw neither Upgrade nor the upgrade token.
        assert!(
            answer.ends_with("upgrade=;connection="),
            "{protocol}: {answer}"
        );
    }
}

#[tokio::test]
async fn upgrade_refused_by_the_upstream_is_relayed_without_a_tunnel() {
    let proxy = Proxy::start(app_at(websocket_upstream().await)).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let head = open(&mut tls, &upgrade_request("/refuse", "websocket")).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(header(&head, "upgrade"), "", "{head}");
    let mut rest = String::new();
    // No tunnel: the answer's body, then the proxy closes the connection.
    within(10, "connection close", tls.read_to_string(&mut rest))
        .await
        .expect("read rest");
    assert_eq!(rest, "refused");
}

#[tokio::test]
async fn silent_tunnel_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(websocket_upstream().await), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let head = open(&mut tls, &upgrade_request("/chat", "websocket")).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    tls.write_all(&frame(b"hi", Some([9, 9, 9, 9])))
        .await
        .expect("send");
    assert_eq!(
        within(10, "echo", read_frame(&mut tls)).await.as_deref(),
        Some(&b"echo: hi"[..])
    );
    // Nothing moves now; the proxy ends the tunnel.
    let mut rest = Vec::new();
    let _ = within(10, "idle tunnel close", tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn upgrade_answered_by_a_page_closes_the_connection_cleanly() {
    let mut table = app_at(closed_port().await);
    table.insert("gone.preview.test", previewd_proxy::Route::Gone);
    let proxy = Proxy::start(table).await;
    for (host, status) in [(APP, 502), ("gone.preview.test", 404)] {
        let mut tls = proxy.tls(host, &[b"http/1.1"]).await.expect("TLS");
        let request = upgrade_request("/chat", "websocket").replace(APP, host);
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        // read_to_string fails on a close without TLS close_notify.
        within(10, "clean close", tls.read_to_string(&mut answer))
            .await
            .expect("closed with close_notify");
        assert_eq!(raw_status(&answer), status, "{answer}");
    }
}
