//! Connections to upstreams under a write deadline, for the pooled client
//! and for a client connection's own upstream connection alike: an upstream
//! that accepts none of our bytes for too long fails its connection, so a
//! preview that stops reading can never hold a socket (and the request body
//! queued for it) for ever. An upstream that is merely silent is not cut
//! off here: a slow answer, a long poll or an event stream is judged by the
//! request's own clocks, and an idle pooled connection by the pool. It must
//! not speak HTTP.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::deadline_io::DeadlineIo;

/// How long an upstream connection's writes may wait for the upstream to
/// read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamDeadlines {
    pub(crate) write: Duration,
}

/// One upstream connection, deadlines included.
#[derive(Debug)]
pub(crate) struct UpstreamIo(TokioIo<DeadlineIo<TcpStream>>);

impl UpstreamIo {
    pub(crate) fn new(stream: TcpStream, deadlines: UpstreamDeadlines) -> Self {
        Self(TokioIo::new(DeadlineIo::new(stream, None, deadlines.write)))
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The pooled client's connector: hyper-util's TCP connector (connect
/// timeout, `TCP_NODELAY`), each connection wrapped in [`UpstreamIo`].
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConnector {
    pub(crate) tcp: HttpConnector,
    pub(crate) deadlines: UpstreamDeadlines,
}

type Connecting = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, upstream: Uri) -> Connecting {
        let connecting = self.tcp.call(upstream);
        let deadlines = self.deadlines;
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(UpstreamIo::new(stream, deadlines))
        })
    }
}
