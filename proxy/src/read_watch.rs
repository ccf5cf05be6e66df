//! A client stream whose reads are shown, on their way to hyper, to a
//! watcher that may hold back the rest of the stream from some byte on, or
//! end the connection while a read waits. Writes pass through untouched.
//! The watchers (`framing`, `h2_head_deadline`) decide what the bytes mean;
//! this only carries them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees every byte read, in order, and is asked whenever a read must wait.
pub(crate) trait Watcher {
    /// Bytes just read; never changed on their way. `Err(cut)` lets only the
    /// first `cut.keep` of them through; every read after that fails with
    /// `cut.reason`, so hyper never sees the bytes the watcher refused.
    fn seen(&mut self, bytes: &[u8]) -> Result<(), Cut>;

    /// The read waits for the peer: `Ready(error)` fails it (and so ends the
    /// connection); `Pending` lets it wait, with `cx`'s waker registered for
    /// any deadline of the watcher's own.
    fn waiting(&mut self, _cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Pending
    }
}

/// Where a watcher stops the stream, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Bytes of this read that still pass.
    pub(crate) keep: usize,
    /// The error every later read fails with.
    pub(crate) reason: &'static str,
}

impl Cut {
    fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self.reason)
    }
}

/// `inner` with `watcher` looking at its reads.
#[derive(Debug)]
pub(crate) struct ReadWatch<T, W> {
    inner: T,
    watcher: W,
    /// Set once the watcher cut the stream.
    cut: Option<Cut>,
}

impl<T, W> ReadWatch<T, W> {
    pub(crate) fn new(inner: T, watcher: W) -> Self {
        Self {
            inner,
            watcher,
            cut: None,
        }
    }
}

impl<T: AsyncRead + Unpin, W: Watcher + Unpin> AsyncRead for ReadWatch<T, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(cut) = this.cut {
            return Poll::Ready(Err(cut.error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => match this.watcher.seen(&buf.filled()[before..]) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(cut) => {
                    this.cut = Some(cut);
                    buf.set_filled(before + cut.keep);
                    // Nothing kept would read as the end of the stream.
                    if cut.keep == 0 {
                        return Poll::Ready(Err(cut.error()));
                    }
                    Poll::Ready(Ok(()))
                }
            },
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
