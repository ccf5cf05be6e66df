//! The upstream connection an HTTP/1.1 client connection keeps for itself,
//! polled inside the client connection's own task.
//!
//! Why: hyper-util's pooled client runs every upstream connection as a task
//! of its own, so each request crossed from the client connection's task to
//! that task and back, usually between the two worker threads (`futex`
//! wake-ups, context switches: docs/BENCHMARKS.md). An HTTP/1.1 client sends
//! one request at a time, so one upstream connection driven by the same task
//! serves it with no hand-off at all.
//!
//! The first request of a client connection still goes through the shared
//! pool, so a connection that makes a single request (`Connection: close`,
//! probes) never opens an upstream connection of its own. Own upstream
//! connections close with their client connection. WebSocket upgrades and
//! HTTP/2 clients (whose streams hyper runs as tasks anyway) use the pool.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::request_body::RequestBody;
use crate::upstream_io::{UpstreamDeadlines, UpstreamIo};

/// An upstream connection's protocol future, run by [`Alongside`].
type UpstreamConn = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The per-client-connection handle that request handlers use.
#[derive(Debug)]
pub(crate) struct OwnUpstream {
    slot: Mutex<Slot>,
    /// Hands new upstream connections to the client connection's task.
    spawn: mpsc::UnboundedSender<UpstreamConn>,
    builder: http1::Builder,
    connect_timeout: Duration,
    deadlines: UpstreamDeadlines,
}

#[derive(Debug)]
enum Slot {
    /// No request yet: the first one goes through the shared pool.
    Fresh,
    /// No usable connection kept (none opened yet, or the last one failed).
    Empty,
    /// The connection of the last request, to `upstream`.
    Kept {
        upstream: SocketAddr,
        sender: SendRequest<RequestBody>,
    },
}

/// Why no own upstream connection could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The client connection is ending; nothing would drive the connection.
    #[error("the client connection is closing")]
    Closing,
}

impl OwnUpstream {
    /// A handle for one client connection and the driver its task must poll
    /// (see [`Alongside`]). `max_buf` bounds each connection's read buffer.
    pub(crate) fn new(
        connect_timeout: Duration,
        deadlines: UpstreamDeadlines,
        max_buf: usize,
    ) -> (Arc<Self>, Driver) {
        let (spawn, incoming) = mpsc::unbounded_channel();
        let mut builder = http1::Builder::new();
        builder.max_buf_size(max_buf);
        let handle = Arc::new(Self {
            slot: Mutex::new(Slot::Fresh),
            spawn,
            builder,
            connect_timeout,
            deadlines,
        });
        let driver = Driver {
            incoming,
            running: Vec::new(),
        };
        (handle, driver)
    }

    /// The sender for the next request to `upstream`, or `None` when the
    /// shared pool should carry it (the connection's first request). The
    /// kept connection is reused when it is idle and still to `upstream`;
    /// otherwise a new one is opened (a busy or stale one is let go: it
    /// closes once idle, as its sender is dropped).
    pub(crate) async fn checkout(
        &self,
        upstream: SocketAddr,
    ) -> Result<Option<SendRequest<RequestBody>>, OwnConnectError> {
        match std::mem::replace(&mut *self.lock(), Slot::Empty) {
            Slot::Fresh => return Ok(None),
            Slot::Kept {
                upstream: kept,
                sender,
            } if kept == upstream && sender.is_ready() => return Ok(Some(sender)),
            Slot::Kept { .. } | Slot::Empty => {}
        }
        self.connect(upstream).await.map(Some)
    }

    /// Keeps `sender` for the next request. Called as soon as a request is
    /// handed to it: the connection is ready again once the response has
    /// been read, which happens before the client can send its next request.
    pub(crate) fn check_in(&self, upstream: SocketAddr, sender: SendRequest<RequestBody>) {
        *self.lock() = Slot::Kept { upstream, sender };
    }

    async fn connect(
        &self,
        upstream: SocketAddr,
    ) -> Result<SendRequest<RequestBody>, OwnConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(upstream))
            .await
            .map_err(|_elapsed| OwnConnectError::Timeout(self.connect_timeout))?
            .map_err(OwnConnectError::Connect)?;
        // Head and body leave as separate writes; Nagle would hold the second.
        stream.set_nodelay(true).map_err(OwnConnectError::Connect)?;
        let (sender, conn) = self
            .builder
            .handshake(UpstreamIo::new(stream, self.deadlines))
            .await
            .map_err(OwnConnectError::Handshake)?;
        let conn: UpstreamConn = Box::pin(async move {
            if let Err(err) = conn.await {
                tracing::debug!(upstream = %upstream, error = %err, "own upstream connection ended with an error");
            }
        });
        self.spawn
            .send(conn)
            .map_err(|_closed| OwnConnectError::Closing)?;
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // The slot holds no invariant a panic could break halfway.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The upstream connections of one client connection, polled by its task.
pub(crate) struct Driver {
    incoming: mpsc::UnboundedReceiver<UpstreamConn>,
    /// Rarely more than one: a client connection talks to one preview.
    running: Vec<UpstreamConn>,
}

impl Driver {
    fn poll_connections(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(conn)) = self.incoming.poll_recv(cx) {
            self.running.push(conn);
        }
        self.running
            .retain_mut(|conn| conn.as_mut().poll(cx).is_pending());
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// Runs a client connection `conn` and its own upstream connections in one
/// future, so both ends of a request are polled by the same task. Ends when
/// `conn` ends; the upstream connections are dropped (closed) with it.
pub(crate) struct Alongside<'a, C> {
    /// The client connection, for graceful shutdown.
    pub(crate) conn: Pin<&'a mut C>,
    driver: Driver,
}

impl<'a, C> Alongside<'a, C> {
    pub(crate) fn new(conn: Pin<&'a mut C>, driver: Driver) -> Self {
        Self { conn, driver }
    }
}

impl<C: Future> Future for Alongside<'_, C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        // Upstream first, so a response that just arrived is relayed in this
        // same poll; again after, so a request just handed over is written
        // now rather than on the wake-up it caused.
        this.driver.poll_connections(cx);
        let ended = this.conn.as_mut().poll(cx);
        if ended.is_pending() {
            this.driver.poll_connections(cx);
        }
        ended
    }
}
