//! Readiness of a freshly started app: does it answer HTTP on its port? Used before any
//! traffic is routed to a new container.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take, connect to status line.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `addr` accepts a TCP connection and answers `GET /` with a status below 500.
pub async fn answers(addr: SocketAddr) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe(addr))
        .await
        .ok()
        .flatten()
        .is_some_and(|status| status < 500)
}

async fn probe(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: previewd-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    // "HTTP/1.1 200" is all we need: 12 bytes.
    while len < 12 {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    parse_status(&buf[..len])
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let head = std::str::from_utf8(head).ok()?;
    let rest = head.strip_prefix("HTTP/1.")?;
    let code = rest.get(2..5)?;
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 5"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }

    #[tokio::test]
    async fn a_closed_port_does_not_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(!answers(addr).await);
    }

    #[tokio::test]
    async fn a_server_error_is_not_ready_and_a_404_is() {
        for (reply, ready) in [
            ("HTTP/1.1 503 Busy\r\n\r\n", false),
            ("HTTP/1.1 404 No\r\n\r\n", true),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                s.write_all(reply.as_bytes()).await.unwrap();
            });
            assert_eq!(answers(addr).await, ready, "{reply}");
            server.await.unwrap();
        }
    }
}
