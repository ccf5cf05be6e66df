//! The listeners: accept loops for HTTPS (TLS handshake, then HTTP/1.1 or
//! HTTP/2 by ALPN) and plain HTTP (ACME HTTP-01 answers, otherwise
//! redirects), one task per connection under the connection cap and deadline
//! I/O, hyper's protocol limits, and graceful shutdown with a deadline. The
//! caller binds the listener and owns shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::acme::Http01Responder;
use crate::deadline_io::DeadlineIo;
use crate::forward::{upstream_client, upstream_deadlines, UPSTREAM_MAX_BUF};
use crate::framing;
use crate::h2_head_deadline;
use crate::handle::{handle, Peer, Proxy};
use crate::host::normalize_host;
use crate::incoming::Incoming;
use crate::limits::Limits;
use crate::own_upstream::{Alongside, OwnUpstream};
use crate::per_thread::serve_per_thread;
use crate::redirect::redirect;
use crate::routes::SharedRoutes;
use crate::tunnel::Switch;

/// At most one warning per this long about connections refused for the cap.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// HTTP/2 streams a client may open and reset before we accept them (the
/// rapid-reset attack, CVE-2023-44487); beyond it: GOAWAY ENHANCE_YOUR_CALM.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2 streams we may reset for protocol errors the client caused before
/// the connection is closed (CVE-2024-27316-style floods).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Bytes of response data buffered per HTTP/2 stream before its body is
/// paused, so a client that stops reading cannot pile up upstream data.
const H2_MAX_SEND_BUF: usize = 256 * 1024;

/// Serves previews over HTTPS on `listener` until `shutdown` resolves.
///
/// Runs on `limits.threads` threads of its own, each with a single-threaded
/// runtime that keeps the connections it accepted (see `per_thread`), so it
/// does not use the caller's runtime for connections. Each connection is its
/// own task, at most `limits.max_connections` at once over all threads
/// (more are closed as soon as they are accepted): TLS handshake, then
/// HTTP/2 when ALPN chose `h2` and HTTP/1.1 otherwise, each request routed
/// through `routes`. Every limit in [`Limits`] applies. A failed handshake or
/// connection is logged at debug and never ends the loop. On shutdown: stop
/// accepting, ask open connections to finish, wait up to
/// `limits.drain_timeout` for them, return `Ok(())`.
pub async fn serve_https(
    listener: TcpListener,
    routes: SharedRoutes,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // One connection cap for all threads, as the limit is documented.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let threads = limits.threads;
    serve_per_thread(listener, threads, "https", shutdown, move |incoming| {
        // Per thread: the pooled client's connection tasks then live on the
        // thread whose requests use them.
        let https = Arc::new(Https {
            acceptor: TlsAcceptor::from(tls.clone()),
            h1: h1_builder(&limits),
            h2: h2_builder(&limits),
            proxy: Arc::new(Proxy {
                routes: routes.clone(),
                client: upstream_client(&limits),
                limits: limits.clone(),
            }),
        });
        let slots = slots.clone();
        async move {
            let limits = https.proxy.limits.clone();
            // Ends when the acceptor stops handing connections over.
            let no_other_stop = std::future::pending();
            accept_loop(
                incoming,
                no_other_stop,
                "https",
                &limits,
                slots,
                move |stream, peer, drain| serve_tls(https.clone(), stream, peer, drain),
            )
            .await
        }
    })
    .await
}

/// What every HTTPS connection task shares.
struct Https {
    acceptor: TlsAcceptor,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
}

/// One HTTPS connection: handshake, HTTP until it ends, then the WebSocket
/// tunnel if a request switched protocols (or the close of one that asked
/// to and did not). Runs inside the connection's task
/// so the connection cap and the drain deadline also cover tunnels.
async fn serve_tls(
    https: Arc<Https>,
    stream: DeadlineIo<TcpStream>,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    let limits = &https.proxy.limits;
    let stream =
        match tokio::time::timeout(limits.handshake_timeout, https.acceptor.accept(stream)).await {
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
    let session = stream.get_ref().1;
    let is_h2 = session.alpn_protocol() == Some(b"h2");
    let sni = session
        .server_name()
        .and_then(normalize_host)
        .map(Arc::from);
    let (tunnel_tx, mut tunnel_rx) = mpsc::channel::<Switch>(1);
    let mut client = Peer {
        addr: peer,
        sni,
        tunnels: None,
        framing: None,
        own_upstream: None,
    };
    let service = |client: Peer| {
        let proxy = https.proxy.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let client = client.clone();
            async move { handle(&proxy, &client, req).await }
        })
    };
    let ended = if is_h2 {
        let stream = h2_head_deadline::watch(stream, limits.header_read_timeout);
        let conn = https
            .h2
            .serve_connection(TokioIo::new(stream), service(client));
        until_drained(pin!(conn), drain.clone(), |conn| conn.graceful_shutdown()).await
    } else {
        let (stream, verdicts) = framing::watch(stream);
        let (own_upstream, upstreams) = OwnUpstream::new(
            limits.upstream_connect_timeout,
            upstream_deadlines(limits),
            UPSTREAM_MAX_BUF,
        );
        client.tunnels = Some(tunnel_tx);
        client.framing = Some(verdicts);
        client.own_upstream = Some(own_upstream);
        let conn = https
            .h1
            .serve_connection(TokioIo::new(stream), service(client))
            .with_upgrades();
        let conn = pin!(conn);
        let both = Alongside::new(conn, upstreams);
        until_drained(pin!(both), drain.clone(), |both| {
            both.get_mut().conn.as_mut().graceful_shutdown();
        })
        .await
    };
    match ended {
        Ok(()) => {}
        // hyper answered the client's malformed head itself (400/431).
        Err(err) if err.is_parse() || err.is_parse_too_large() => {
            tracing::debug!(peer = %peer, fault = "client", error = %err, "refused a malformed request head");
        }
        Err(err) => {
            tracing::debug!(peer = %peer, error = %err, "HTTPS connection ended with an error");
        }
    }
    if let Ok(switch) = tunnel_rx.try_recv() {
        switch.finish(drain).await;
    }
}

/// Plain-HTTP listener: answers every request with 308 to
/// `https://<host>:<https_port><path-and-query>` (no `:443` for port 443),
/// but only when the request's host is `domain` or ends with `.<domain>`;
/// any other or missing host gets 400. With an `http01` responder (mode
/// "acme" with HTTP-01, from [`crate::CertSource`]), `GET
/// /.well-known/acme-challenge/<token>` is answered instead: the key
/// authorization of a challenge pending for that host, or 404. Same shutdown
/// contract and default limits as [`serve_https`]. HTTP/1 only: browsers and
/// ACME validators never speak cleartext HTTP/2, and refusing it leaves no
/// HTTP/2 surface without the HTTPS listener's guards.
pub async fn serve_redirect(
    listener: TcpListener,
    domain: String,
    https_port: u16,
    http01: Option<Http01Responder>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let domain: Arc<str> = normalize_host(&domain)
        .unwrap_or_else(|| domain.to_ascii_lowercase())
        .into();
    let limits = Limits::default();
    let builder = Arc::new(h1_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let incoming = Incoming::Listener(listener);
    accept_loop(incoming, shutdown, "http", &limits, slots, move |stream, peer, drain| {
        let domain = domain.clone();
        let builder = builder.clone();
        let http01 = http01.clone();
        async move {
            let service = service_fn(move |req| {
                let answer = match http01.as_ref().and_then(|http01| http01.answer(&req)) {
                    Some(challenge) => Ok(challenge),
                    None => redirect(&req, &domain, https_port),
                };
                async move { answer }
            });
            let conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(err) = until_drained(conn, drain, |conn| conn.graceful_shutdown()).await {
                tracing::debug!(peer = %peer, error = %err, "HTTP connection ended with an error");
            }
        }
    })
    .await
}

fn h1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // Without a timer hyper cannot enforce the header read timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 and closes beyond this (start line included).
        .max_header_size(limits.max_header_bytes);
    builder
}

fn h2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        // Also bounds CONTINUATION frames per header block (h2 >= 0.4.4).
        .max_header_list_size(header_list_size(limits))
        .max_send_buf_size(H2_MAX_SEND_BUF);
    builder
}

fn header_list_size(limits: &Limits) -> u32 {
    u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX)
}

/// Runs `conn` to its end; when `drain` turns true first, asks it to finish
/// gracefully with `shutdown` and keeps running it.
async fn until_drained<C: Future>(
    mut conn: Pin<&mut C>,
    mut drain: watch::Receiver<bool>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::select! {
        ended = conn.as_mut() => return ended,
        // An error means the accept loop is gone: drain as well.
        _ = drain.wait_for(|draining| *draining) => {}
    }
    shutdown(conn.as_mut());
    conn.await
}

/// Takes connections from `incoming` until `shutdown` (or until `incoming`
/// ends), running `serve` for each in its own task under the connection cap
/// (`slots`) and the deadline I/O, then drains: open connections are told to
/// finish and get `drain_timeout`; whatever is left after that is aborted.
async fn accept_loop<F, Fut>(
    mut incoming: Incoming,
    shutdown: impl Future<Output = ()> + Send + 'static,
    scheme: &'static str,
    limits: &Limits,
    slots: Arc<Semaphore>,
    mut serve: F,
) -> io::Result<()>
where
    F: FnMut(DeadlineIo<TcpStream>, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut refused = RefusedLog::default();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = incoming.next(scheme) => match accepted {
                Some((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        refused.refused(scheme, limits.max_connections);
                        drop(stream);
                        continue;
                    };
                    // A response leaves as several writes (TLS records, header then
                    // body); with Nagle a later one waits for the client's delayed ACK,
                    // up to 40 ms.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(scheme, error = %err, "cannot set TCP_NODELAY");
                    }
                    let stream = DeadlineIo::new(stream, Some(limits.idle_timeout), limits.write_timeout);
                    let conn = serve(stream, peer, drain_rx.clone());
                    connections.spawn(async move {
                        conn.await;
                        drop(slot);
                    });
                }
                None => break,
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
    drop(incoming);
    tracing::debug!(
        scheme,
        open = connections.len(),
        "stopped accepting; draining connections"
    );
    drain_tx.send_replace(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, drained)
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

/// Rate-limits the warning about connections refused for the cap.
#[derive(Debug, Default)]
struct RefusedLog {
    /// When the last warning went out.
    last_warned: Option<Instant>,
    /// Refusals since then.
    since_warned: u64,
}

impl RefusedLog {
    fn refused(&mut self, scheme: &'static str, max_connections: usize) {
        self.since_warned += 1;
        let due = self
            .last_warned
            .is_none_or(|at| at.elapsed() >= REFUSED_WARN_INTERVAL);
        if due {
            tracing::warn!(
                scheme,
                max_connections,
                refused = self.since_warned,
                "connection cap reached; closing new connections"
            );
            self.last_warned = Some(Instant::now());
            self.since_warned = 0;
        } else {
            tracing::debug!(scheme, "connection refused: cap reached");
        }
    }
}
