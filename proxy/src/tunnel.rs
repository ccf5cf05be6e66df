//! WebSocket tunnels over HTTP/1.1 `Upgrade`: which requests may become one,
//! and copying bytes both ways once client and upstream both switched
//! protocols. It must not talk HTTP to upstreams (that is `forward`) nor
//! decide routes. Only `Upgrade: websocket` is tunnelled; any other protocol
//! (`h2c`, anything else) is stripped and the request forwarded as a plain
//! one, so a client can never get a raw pipe to an upstream by naming an
//! arbitrary protocol.

use std::net::SocketAddr;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// The only protocol we tunnel.
pub(crate) const WEBSOCKET: &str = "websocket";

/// Where a handler hands a protocol switch to its connection task, which
/// finishes it after hyper has given up the connection. At most one per
/// HTTP/1.1 connection: nothing follows a request that asked to switch.
pub(crate) type TunnelSender = mpsc::Sender<Switch>;

/// How a request that asked to switch protocols ends.
#[derive(Debug)]
pub(crate) enum Switch {
    /// Both sides switched: copy bytes.
    Tunnel(Tunnel),
    /// No switch (another protocol, or the upstream did not answer 101).
    /// hyper still hands the connection over once our answer is written;
    /// it is closed properly (TLS close_notify) instead of dropped.
    Refused(OnUpgrade),
}

impl Switch {
    /// Runs the tunnel, or closes the connection of a refused switch.
    pub(crate) async fn finish(self, drain: watch::Receiver<bool>) {
        match self {
            Switch::Tunnel(tunnel) => tunnel.run(drain).await,
            Switch::Refused(client) => {
                if let Ok(upgraded) = client.await {
                    // The deadline I/O below bounds how long this may take.
                    let _ = TokioIo::new(upgraded).shutdown().await;
                }
            }
        }
    }
}

/// Both halves of an agreed protocol switch, not yet completed.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// The client connection, once hyper has written our 101.
    client: OnUpgrade,
    /// The upstream connection, once its 101 has been read.
    upstream: OnUpgrade,
    /// For logs.
    upstream_addr: SocketAddr,
}

/// A request's claim on its connection's protocol switch, taken before the
/// request is forwarded. Unless [`PendingSwitch::tunnel`] completes it,
/// dropping it (any answer but a 101, any error) hands the connection task
/// a [`Switch::Refused`], so the connection is closed properly.
#[derive(Debug)]
pub(crate) struct PendingSwitch {
    tunnels: TunnelSender,
    /// `None` once handed to the connection task.
    client: Option<OnUpgrade>,
    /// Whether the request asked for a WebSocket (the only switch we make).
    pub(crate) websocket: bool,
}

impl PendingSwitch {
    /// Takes hyper's upgrade handle from `req` when it carries `Upgrade`.
    pub(crate) fn take<B>(tunnels: &TunnelSender, req: &mut Request<B>) -> Option<Self> {
        if !req.headers().contains_key(UPGRADE) {
            return None;
        }
        Some(Self {
            tunnels: tunnels.clone(),
            websocket: wants_websocket(req),
            client: Some(hyper::upgrade::on(req)),
        })
    }

    /// Hands both halves to the connection task; false if this request did
    /// not ask for a WebSocket or the connection already has a switch.
    pub(crate) fn tunnel(mut self, upstream: OnUpgrade, upstream_addr: SocketAddr) -> bool {
        if !self.websocket {
            return false;
        }
        let Some(client) = self.client.take() else {
            return false;
        };
        let tunnel = Tunnel {
            client,
            upstream,
            upstream_addr,
        };
        // Capacity one and one request at a time on HTTP/1.1: only a second
        // switch on one connection could fail, and none can follow a first.
        self.tunnels.try_send(Switch::Tunnel(tunnel)).is_ok()
    }
}

impl Drop for PendingSwitch {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.tunnels.try_send(Switch::Refused(client));
        }
    }
}

/// True when `req` asks for a WebSocket over HTTP/1.1: `Connection` has the
/// `upgrade` token and `Upgrade` the `websocket` token (case-insensitive).
pub(crate) fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && has_token(req.headers(), &CONNECTION, "upgrade")
        && has_token(req.headers(), &UPGRADE, WEBSOCKET)
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

impl Tunnel {
    /// Waits for both switches, then copies bytes both ways until either
    /// side closes or fails, or `drain` turns true. The client side runs over
    /// the connection's deadline I/O, so the idle timeout (no bytes moving
    /// either way) ends a silent tunnel.
    async fn run(self, mut drain: watch::Receiver<bool>) {
        let upstream_addr = self.upstream_addr;
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(upstream = %upstream_addr, error = %err, "protocol switch failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => tracing::debug!(
                    upstream = %upstream_addr, bytes_up = up, bytes_down = down, "tunnel closed"
                ),
                Err(err) => tracing::debug!(
                    upstream = %upstream_addr, error = %err, "tunnel ended with an error"
                ),
            },
            _ = drain.wait_for(|draining| *draining) => {
                tracing::debug!(upstream = %upstream_addr, "tunnel closed for shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn websocket_needs_both_tokens_on_http11() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(wants_websocket(&request(Version::HTTP_11, &ws)));
        assert!(!wants_websocket(&request(Version::HTTP_10, &ws)));
        assert!(!wants_websocket(&request(Version::HTTP_2, &ws)));
        for headers in [
            &[("upgrade", "websocket")][..],
            &[("connection", "upgrade")][..],
            &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            &[("connection", "upgrade"), ("upgrade", "websocketx")][..],
            &[("connection", "upgraded"), ("upgrade", "websocket")][..],
        ] {
            assert!(
                !wants_websocket(&request(Version::HTTP_11, headers)),
                "{headers:?}"
            );
        }
    }
}
