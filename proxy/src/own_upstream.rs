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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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
        sender: SendRequest<Incoming>,
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
    pub(crate) fn new(connect_timeout: Duration, max_buf: usize) -> (Arc<Self>, Driver) {
        let (spawn, incoming) = mpsc::unbounded_channel();
        let mut builder = http1::Builder::new();
        builder.max_buf_size(max_buf);
        let handle = Arc::new(Self {
            slot: Mutex::new(Slot::Fresh),
            spawn,
            builder,
            connect_timeout,
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
    ) -> Result<Option<SendRequest<Incoming>>, OwnConnectError> {
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
    pub(crate) fn check_in(&self, upstream: SocketAddr, sender: SendRequest<Incoming>) {
        *self.lock() = Slot::Kept { upstream, sender };
    }

    async fn connect(
        &self,
        upstream: SocketAddr,
    ) -> Result<SendRequest<Incoming>, OwnConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(upstream))
            .await
            .map_err(|_elapsed| OwnConnectError::Timeout(self.connect_timeout))?
            .map_err(OwnConnectError::Connect)?;
        // Head and body leave as separate writes; Nagle would hold the second.
        stream.set_nodelay(true).map_err(OwnConnectError::Connect)?;
        let (sender, conn) = self
            .builder
            .handshake(TokioIo::new(stream))
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
///
/// Each side gets a waker of its own that marks it before waking the task,
/// and a side is polled only when marked. Handing a request or a response
/// across wakes the task although the other side was already polled in the
/// same turn; without the marks that wake-up polled both connections again
/// for nothing, twice per request.
pub(crate) struct Alongside<'a, C> {
    conn: Pin<&'a mut C>,
    driver: Driver,
    conn_side: Side,
    driver_side: Side,
}

impl<'a, C> Alongside<'a, C> {
    pub(crate) fn new(conn: Pin<&'a mut C>, driver: Driver) -> Self {
        Self {
            conn,
            driver,
            conn_side: Side::new(),
            driver_side: Side::new(),
        }
    }

    /// The client connection, e.g. for graceful shutdown. It is polled on
    /// the next turn whatever was done to it (no waker tells of a call).
    pub(crate) fn conn_mut(&mut self) -> Pin<&mut C> {
        self.conn_side.flag.due.store(true, Ordering::Release);
        self.conn.as_mut()
    }
}

impl<C: Future> Future for Alongside<'_, C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        this.conn_side.follow(cx.waker());
        this.driver_side.follow(cx.waker());
        // Upstream first, so a response that just arrived is relayed in this
        // same poll; again after, so a request just handed over is written
        // now rather than on the wake-up it caused.
        if let Some(mut cx) = this.driver_side.take() {
            this.driver.poll_connections(&mut cx);
        }
        let Some(mut conn_cx) = this.conn_side.take() else {
            return Poll::Pending;
        };
        let ended = this.conn.as_mut().poll(&mut conn_cx);
        if ended.is_pending() {
            if let Some(mut cx) = this.driver_side.take() {
                this.driver.poll_connections(&mut cx);
            }
        }
        ended
    }
}

/// The waker one side of [`Alongside`] is polled with: it marks the side as
/// due, then wakes the task.
struct Side {
    flag: Arc<SideFlag>,
    waker: Waker,
}

struct SideFlag {
    /// Set by the side's waker; taken by the poll that serves it.
    due: AtomicBool,
    /// The task to wake, as of its last poll.
    task: Mutex<Option<Waker>>,
}

impl Side {
    /// Due at first, so the first poll reaches every side.
    fn new() -> Self {
        let flag = Arc::new(SideFlag {
            due: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(flag.clone());
        Self { flag, waker }
    }

    /// Wakes `task` from now on (a task's waker rarely changes).
    fn follow(&self, task: &Waker) {
        let mut current = self.flag.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|waker| waker.will_wake(task)) {
            *current = Some(task.clone());
        }
    }

    /// A context for polling this side if it is due, clearing the mark.
    fn take(&self) -> Option<Context<'_>> {
        self.flag
            .due
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }
}

impl Wake for SideFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `finish` is set, pending (without
    /// arranging a wake-up) until then.
    struct Counted {
        polls: Arc<AtomicUsize>,
        finish: Arc<AtomicBool>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.finish.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn a_side_is_polled_only_when_woken_or_touched() {
        let polls = Arc::new(AtomicUsize::new(0));
        let finish = Arc::new(AtomicBool::new(false));
        let mut conn = Counted {
            polls: polls.clone(),
            finish: finish.clone(),
        };
        let (_handle, driver) = OwnUpstream::new(Duration::from_secs(1), 8192);
        let mut both = Alongside::new(Pin::new(&mut conn), driver);
        let mut cx = Context::from_waker(Waker::noop());

        assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "first poll reaches the connection");
        assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled again");

        both.conn_side.waker.wake_by_ref();
        assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "woken: polled");

        finish.store(true, Ordering::SeqCst);
        assert_eq!(both.conn_mut().polls.load(Ordering::SeqCst), 2);
        assert!(Pin::new(&mut both).poll(&mut cx).is_ready(), "touched: polled");
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }
}
