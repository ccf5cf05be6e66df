//! Runs an accept loop on several threads, each with its own single-threaded
//! tokio runtime, and spreads one listening socket's connections over them.
//!
//! Why: on tokio's shared multi-threaded runtime a connection's task, the
//! tasks it wakes and its timers hop between worker threads (work stealing,
//! cross-thread wake-ups, shared timer and I/O driver state). A proxy
//! connection never needs another thread's help, so each thread here keeps
//! its connections for their whole life, as an nginx worker does. One
//! acceptor deals connections out in turn: threads that raced for the socket
//! themselves ended up unevenly loaded (the one awake took most of a burst),
//! which showed in tail latency. Measured in docs/BENCHMARKS.md.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::incoming::{Handed, Incoming};

/// Accepts on `listener` until `shutdown` resolves, handing each connection
/// to the next of `threads` threads (at least one, named
/// `previewd-<scheme>-<n>`) that each run `serve(incoming)`. On shutdown the
/// socket is closed at once (new connections are refused), each thread's
/// `incoming` ends, and this waits for every `serve` to return. If one fails or panics first, the rest are
/// stopped the same way and that failure is returned.
pub(crate) async fn serve_per_thread<F, Fut>(
    listener: TcpListener,
    threads: usize,
    scheme: &'static str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> io::Result<()>
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    let serve = Arc::new(serve);
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<io::Result<()>>();
    let mut handoffs = Vec::new();
    for index in 0..threads.max(1) {
        let (handoff, incoming) = mpsc::unbounded_channel::<Handed>();
        let serve = serve.clone();
        let ended_tx = ended_tx.clone();
        std::thread::Builder::new()
            .name(format!("previewd-{scheme}-{index}"))
            .spawn(move || {
                // Sent when this guard drops, so a panic is reported too.
                let report = EndReport {
                    to: ended_tx,
                    result: Some(Err(io::Error::other("thread panicked"))),
                };
                report.finish(run_thread(|| serve(Incoming::Handoff(incoming))));
            })?;
        handoffs.push(handoff);
    }
    drop(ended_tx);
    let mut listener = Incoming::Listener(listener);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0;
    let mut first_failure = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(result) = ended.recv() => {
                first_failure = result.err();
                break;
            }
            Some((stream, peer)) = listener.next(scheme) => {
                // Leaves this runtime's event loop for the serving thread's.
                match stream.into_std() {
                    Ok(stream) => {
                        // A send fails only if that thread has ended, which
                        // `ended` reports on the next turn.
                        let _ = handoffs[next].send((stream, peer));
                        next = (next + 1) % handoffs.len();
                    }
                    Err(err) => tracing::debug!(error = %err, "cannot hand a connection over"),
                }
            }
        }
    }
    drop(listener);
    drop(handoffs);
    while let Some(result) = ended.recv().await {
        if let Err(err) = result {
            first_failure.get_or_insert(err);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Runs `serve()` on a new single-threaded runtime; it is called inside the
/// runtime, so it may spawn and set timers.
fn run_thread<Fut>(serve: impl FnOnce() -> Fut) -> io::Result<()>
where
    Fut: Future<Output = io::Result<()>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move { serve().await })
}

/// Reports how a thread ended, when dropped: its result, or a panic if it
/// never got to [`EndReport::finish`].
struct EndReport {
    to: mpsc::UnboundedSender<io::Result<()>>,
    result: Option<io::Result<()>>,
}

impl EndReport {
    fn finish(mut self, result: io::Result<()>) {
        self.result = Some(result);
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        if let Some(result) = self.result.take() {
            // The receiver is gone only when the caller stopped waiting.
            let _ = self.to.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::net::TcpStream;

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    #[tokio::test]
    async fn connections_are_dealt_out_in_turn_and_threads_stop_on_shutdown() {
        let listener = listener().await;
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_per_thread(
            listener,
            2,
            "test",
            async move {
                let _ = go_rx.await;
            },
            move |mut incoming| {
                let log = log.clone();
                async move {
                    let thread = std::thread::current().name().map(str::to_owned);
                    let mut held = Vec::new();
                    while let Some((stream, _peer)) = incoming.next("test").await {
                        log.lock().expect("log").push(thread.clone());
                        held.push(stream);
                    }
                    Ok(())
                }
            },
        ));
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while received.lock().expect("log").len() < 6 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections not handed over"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        go_tx.send(()).expect("shutdown");
        server.await.expect("join").expect("clean stop");
        let received = received.lock().expect("log").clone();
        for name in ["previewd-test-0", "previewd-test-1"] {
            let count = received
                .iter()
                .filter(|t| t.as_deref() == Some(name))
                .count();
            assert_eq!(count, 3, "{name}: {received:?}");
        }
        // The socket closed with the acceptor: new connections are refused.
        let refused = TcpStream::connect(addr).await.expect_err("closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn one_failing_thread_stops_the_others_and_is_reported() {
        let calls = Arc::new(AtomicUsize::new(0));
        let result = serve_per_thread(
            listener().await,
            2,
            "test",
            std::future::pending(),
            move |mut incoming| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        return Err(io::Error::other("boom"));
                    }
                    while incoming.next("test").await.is_some() {}
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(result.expect_err("failure").to_string(), "boom");
    }

    #[tokio::test]
    async fn a_panicking_thread_is_reported() {
        let result = serve_per_thread(
            listener().await,
            1,
            "test",
            std::future::pending(),
            |_incoming| async { panic!("on purpose") },
        )
        .await;
        assert_eq!(result.expect_err("panic").to_string(), "thread panicked");
    }
}
