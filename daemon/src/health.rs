//! Readiness of a freshly started app: does it answer HTTP on its port as configured? Used
//! before any traffic is routed to a new container.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a new version is judged ready for traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path of the `GET` probe, starting with `/`.
    pub path: String,
    /// The status the probe must answer; `None`: any status below 500.
    pub status: Option<u16>,
    /// Pause between probes.
    pub interval: Duration,
    /// How long one probe may take, connect to status line.
    pub timeout: Duration,
    /// How long a new container has to become ready before its deploy fails.
    pub start_period: Duration,
}

impl Default for HealthCheck {
    /// TCP connect, then `GET /` below 500; probes every 25 ms (the interval is added to every
    /// push-to-live), 2 s each, for up to 60 s.
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            status: None,
            interval: Duration::from_millis(25),
            timeout: Duration::from_secs(2),
            start_period: Duration::from_secs(60),
        }
    }
}

impl HealthCheck {
    /// Whether `addr` accepts a TCP connection and answers the probe as expected.
    pub async fn passes(&self, addr: SocketAddr) -> bool {
        let status = tokio::time::timeout(self.timeout, probe(addr, &self.path))
            .await
            .ok()
            .flatten();
        match (status, self.status) {
            (Some(got), Some(want)) => got == want,
            (Some(got), None) => got < 500,
            (None, _) => false,
        }
    }
}

async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: previewd-health\r\nConnection: close\r\n\r\n");
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
        assert!(!HealthCheck::default().passes(addr).await);
    }

    /// Serves one connection with `reply`, handing back the request line it got.
    async fn one_reply(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(reply.as_bytes()).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.lines().next().unwrap_or_default().to_owned()
        });
        (addr, server)
    }

    #[tokio::test]
    async fn by_default_a_server_error_is_not_ready_and_a_404_is() {
        for (reply, ready) in [
            ("HTTP/1.1 503 Busy\r\n\r\n", false),
            ("HTTP/1.1 404 No\r\n\r\n", true),
        ] {
            let (addr, server) = one_reply(reply).await;
            assert_eq!(HealthCheck::default().passes(addr).await, ready, "{reply}");
            assert_eq!(server.await.unwrap(), "GET / HTTP/1.1");
        }
    }

    #[tokio::test]
    async fn a_configured_path_and_status_are_used() {
        let check = HealthCheck {
            path: "/healthz".into(),
            status: Some(204),
            ..HealthCheck::default()
        };
        for (reply, ready) in [
            ("HTTP/1.1 200 OK\r\n\r\n", false),
            ("HTTP/1.1 204 No Content\r\n\r\n", true),
        ] {
            let (addr, server) = one_reply(reply).await;
            assert_eq!(check.passes(addr).await, ready, "{reply}");
            assert_eq!(server.await.unwrap(), "GET /healthz HTTP/1.1");
        }
    }
}
