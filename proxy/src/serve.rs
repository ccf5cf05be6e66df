//! The listeners: accept loops for HTTPS (TLS handshake, then HTTP/1.1 or
//! HTTP/2) and plain-HTTP redirects, one task per connection, and graceful
//! shutdown with a deadline. The caller binds the listener and owns shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::forward::upstream_client;
use crate::handle::{handle, Peer, Proxy};
use crate::host::normalize_host;
use crate::limits::Limits;
use crate::redirect::redirect;
use crate::routes::SharedRoutes;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

type HttpBuilder = auto::Builder<TokioExecutor>;

/// Serves previews over HTTPS on `listener` until `shutdown` resolves.
///
/// Each connection is its own task: TLS handshake (10 s timeout), then
/// HTTP/1.1 or HTTP/2 as negotiated (30 s header read timeout), each request
/// routed through `routes`. A failed handshake or connection is logged at
/// debug and never ends the loop. On shutdown: stop accepting, ask open
/// connections to finish, wait up to 10 s for them, return `Ok(())`.
pub async fn serve_https(
    listener: TcpListener,
    routes: SharedRoutes,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let proxy = Arc::new(Proxy {
        routes,
        client: upstream_client(&limits),
        limits: limits.clone(),
    });
    let builder = Arc::new(http_builder(&limits));
    let handshake_timeout = limits.handshake_timeout;
    accept_loop(listener, shutdown, "https", limits.drain_timeout, move |stream, peer, watcher| {
        let acceptor = acceptor.clone();
        let proxy = proxy.clone();
        let builder = builder.clone();
        async move {
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(peer = %peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_elapsed) => {
                        tracing::debug!(peer = %peer, "TLS handshake timed out");
                        return;
                    }
                };
            let client = Peer {
                addr: peer,
                sni: stream
                    .get_ref()
                    .1
                    .server_name()
                    .and_then(normalize_host)
                    .map(Arc::from),
            };
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                let client = client.clone();
                async move { handle(&proxy, &client, req).await }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(peer = %peer, error = %err, "HTTPS connection ended with an error");
            }
        }
    })
    .await
}

/// Plain-HTTP listener: answers every request with 308 to
/// `https://<host>:<https_port><path-and-query>` (no `:443` for port 443),
/// but only when the request's host is `domain` or ends with `.<domain>`;
/// any other or missing host gets 400. Same shutdown contract as
/// [`serve_https`].
pub async fn serve_redirect(
    listener: TcpListener,
    domain: String,
    https_port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let domain: Arc<str> = normalize_host(&domain)
        .unwrap_or_else(|| domain.to_ascii_lowercase())
        .into();
    let limits = Limits::default();
    let builder = Arc::new(http_builder(&limits));
    accept_loop(listener, shutdown, "http", limits.drain_timeout, move |stream, peer, watcher| {
        let domain = domain.clone();
        let builder = builder.clone();
        async move {
            let service = service_fn(move |req| {
                let answer = redirect(&req, &domain, https_port);
                async move { answer }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(peer = %peer, error = %err, "HTTP connection ended with an error");
            }
        }
    })
    .await
}

fn http_builder(limits: &Limits) -> HttpBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper cannot enforce the header read timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts connections until `shutdown`, running `serve` for each in its own
/// task, then drains: open connections are told to finish and get
/// `drain_timeout`; whatever is left after that is aborted.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    scheme: &'static str,
    drain_timeout: Duration,
    mut serve: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // A response leaves as several writes (TLS records, header then
                    // body); with Nagle a later one waits for the client's delayed ACK,
                    // up to 40 ms.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(scheme, error = %err, "cannot set TCP_NODELAY");
                    }
                    // The watcher is taken before the task starts, so a
                    // connection still in its handshake also delays drain.
                    connections.spawn(serve(stream, peer, graceful.watcher()));
                }
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(scheme, error = %err, "accept failed for one connection");
                }
                Err(err) => {
                    tracing::warn!(scheme, error = %err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reap finished connection tasks so the set does not grow forever.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined {
                    if err.is_panic() {
                        tracing::warn!(scheme, error = %err, "connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    tracing::debug!(
        scheme,
        open = connections.len(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            scheme,
            open = connections.len(),
            "drain deadline passed; closing remaining connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
