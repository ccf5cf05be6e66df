//! A client stream whose reads are shown, on their way to hyper, to a
//! watcher that may also end the connection while a read waits. Writes pass
//! through untouched. The watchers (`framing`, `h2_head_deadline`) decide
//! what the bytes mean; this only carries them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees every byte read, in order, and is asked whenever a read must wait.
pub(crate) trait Watcher {
    /// Bytes just read; never changed on their way.
    fn seen(&mut self, bytes: &[u8]);

    /// The read waits for the peer: `Ready(error)` fails it (and so ends the
    /// connection); `Pending` lets it wait, with `cx`'s waker registered for
    /// any deadline of the watcher's own.
    fn waiting(&mut self, _cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Pending
    }
}

/// `inner` with `watcher` looking at its reads.
#[derive(Debug)]
pub(crate) struct ReadWatch<T, W> {
    inner: T,
    watcher: W,
}

impl<T, W> ReadWatch<T, W> {
    pub(crate) fn new(inner: T, watcher: W) -> Self {
        Self { inner, watcher }
    }
}

impl<T: AsyncRead + Unpin, W: Watcher + Unpin> AsyncRead for ReadWatch<T, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.watcher.seen(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => this.watcher.waiting(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin, W: Unpin> AsyncWrite for ReadWatch<T, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
