//! Deadlines on one connection's byte stream (a client's, below TLS, or an
//! upstream's): a write that makes no progress for the write timeout fails,
//! and, when there is an idle timeout, a connection with no bytes moving
//! either way for that long fails its next read. It must not know about
//! HTTP; hyper sees the failures as I/O errors and closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with an idle deadline and a write-stall deadline.
#[derive(Debug)]
pub(crate) struct DeadlineIo<T> {
    /// The stream itself (the accepted TCP connection).
    inner: T,
    /// No bytes read or written for this long: reads fail with `TimedOut`.
    /// `None`: no idle deadline (upstreams, whose silence the request's own
    /// clocks judge).
    idle_timeout: Option<Duration>,
    /// A pending write or flush that stays pending this long fails.
    write_timeout: Duration,
    /// When a byte last moved either way.
    last_progress: Instant,
    /// Fires at or before `last_progress + idle_timeout`; moved on to the
    /// real deadline only when it fires. `None` without an idle timeout.
    idle: Option<Pin<Box<Sleep>>>,
    /// Since when writes have been waiting for the peer, if they are.
    write_stalled_since: Option<Instant>,
    /// Fires at `write_stalled_since + write_timeout`.
    write_stall: Pin<Box<Sleep>>,
}

/// `at + after`, or a time 30 years on when that is beyond the clock's
/// reach (a timeout too large to mean anything but "never").
fn later(at: Instant, after: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    at.checked_add(after).unwrap_or_else(|| at + NEVER)
}

impl<T> DeadlineIo<T> {
    /// Wraps `inner`; the idle clock starts now.
    pub(crate) fn new(inner: T, idle_timeout: Option<Duration>, write_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle_timeout,
            write_timeout,
            last_progress: now,
            idle: idle_timeout
                .map(|idle_timeout| Box::pin(tokio::time::sleep_until(later(now, idle_timeout)))),
            write_stalled_since: None,
            write_stall: Box::pin(tokio::time::sleep_until(later(now, write_timeout))),
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
        self.write_stalled_since = None;
    }

    /// Ready with an error once the connection has been idle too long;
    /// otherwise registers the waker for the deadline.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (Some(idle), Some(idle_timeout)) = (self.idle.as_mut(), self.idle_timeout) else {
            return Poll::Pending;
        };
        // The timer is moved only when it fires: it is never later than the
        // real deadline (progress only pushes that back), so firing early
        // just re-arms it. A busy connection thus touches the timer wheel
        // once per idle timeout instead of once per request.
        loop {
            if idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = later(self.last_progress, idle_timeout);
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes moved within the idle timeout",
                ));
            }
            idle.as_mut().reset(deadline);
        }
    }

    /// Ready with an error once writes have waited too long for the peer.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = match self.write_stalled_since {
            Some(since) => since,
            None => {
                let now = Instant::now();
                self.write_stalled_since = Some(now);
                self.write_stall
                    .as_mut()
                    .reset(later(now, self.write_timeout));
                now
            }
        };
        debug_assert_eq!(
            self.write_stall.deadline(),
            later(since, self.write_timeout)
        );
        match self.write_stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer accepted no bytes within the write timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Maps a pending write-side operation to the stall deadline.
    fn on_write_result<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.poll_write_stall(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(written)) = polled {
            if written > 0 {
                this.progressed();
            }
        }
        this.on_write_result(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            if written > 0 {
                this.progressed();
            }
        }
        this.on_write_result(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.write_stalled_since = None;
        }
        this.on_write_result(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.on_write_result(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn idle_reader_times_out_and_traffic_resets_the_clock() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(near, Some(Duration::from_secs(5)), LONG);
        let mut buf = [0u8; 8];

        tokio::time::advance(Duration::from_secs(4)).await;
        far.write_all(b"hi").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 2);

        // 4 s after the last byte: still alive.
        let started = Instant::now();
        let err = io.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_silence_is_no_error() {
        let (near, _far) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(near, None, Duration::MAX);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(365 * 86400), io.read(&mut buf));
        assert!(read.await.is_err(), "a silent peer is waited for");
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_writer_times_out() {
        let (near, _far) = tokio::io::duplex(16);
        let mut io = DeadlineIo::new(near, Some(LONG), Duration::from_secs(2));
        let started = Instant::now();
        let err = io.write_all(&[0u8; 64]).await.expect_err("stall");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_but_moving_writer_is_not_cut_off() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = DeadlineIo::new(near, Some(LONG), Duration::from_secs(2));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 16];
            while total < 160 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += far.read(&mut buf).await.expect("read");
            }
            total
        });
        io.write_all(&[7u8; 160])
            .await
            .expect("slow reader keeps up");
        assert_eq!(reader.await.expect("join"), 160);
    }
}
