//! Runs one listener's accept loop on several threads, each with its own
//! single-threaded tokio runtime and its own handle on the listening socket.
//!
//! Why: on tokio's shared multi-threaded runtime a connection's task, the
//! tasks it wakes and its timers hop between worker threads (work stealing,
//! cross-thread wake-ups, shared timer and I/O driver state). A proxy
//! connection never needs another thread's help, so each thread here keeps
//! its connections for their whole life, as an nginx worker does. Idle
//! threads pick up new connections first, because every thread waits on the
//! same socket. Measured in docs/BENCHMARKS.md.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Resolves when the serving threads are asked to stop.
pub(crate) type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `serve(listener, stop)` on `threads` threads (at least one) until
/// `shutdown` resolves, then resolves `stop` on each and waits for all of
/// them to return. If one thread's `serve` fails or panics first, the others
/// are stopped too and that failure is returned.
pub(crate) async fn serve_per_thread<F, Fut>(
    listener: TcpListener,
    threads: usize,
    name: &str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> io::Result<()>
where
    F: Fn(TcpListener, Stop) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    let listener = listener.into_std()?;
    let serve = Arc::new(serve);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<io::Result<()>>();
    let threads = threads.max(1);
    for index in 0..threads {
        let listener = listener.try_clone()?;
        let serve = serve.clone();
        let mut stop_rx = stop_rx.clone();
        let ended_tx = ended_tx.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                // Sent when this guard drops, so a panic is reported too.
                let report = EndReport(ended_tx, Some(Err(io::Error::other("thread panicked"))));
                let result = run_thread(listener, move |listener| {
                    let stop: Stop = Box::pin(async move {
                        // An error means the caller is gone: stop as well.
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    });
                    serve(listener, stop)
                });
                report.finish(result);
            })?;
    }
    // The socket must close as soon as every thread stops accepting (new
    // connections are then refused while open ones drain), so no handle on
    // it may stay here.
    drop(listener);
    drop(ended_tx);
    let mut first_failure = None;
    tokio::select! {
        () = shutdown => {}
        Some(result) = ended.recv() => first_failure = result.err(),
    }
    stop_tx.send_replace(true);
    while let Some(result) = ended.recv().await {
        if let Err(err) = result {
            first_failure.get_or_insert(err);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

fn run_thread<Fut>(
    listener: std::net::TcpListener,
    serve: impl FnOnce(TcpListener) -> Fut,
) -> io::Result<()>
where
    Fut: Future<Output = io::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        serve(listener).await
    })
}

/// Reports how a thread ended: its result, or a panic if it never got to.
struct EndReport(
    mpsc::UnboundedSender<io::Result<()>>,
    Option<io::Result<()>>,
);

impl EndReport {
    fn finish(mut self, result: io::Result<()>) {
        self.1 = Some(result);
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        if let Some(result) = self.1.take() {
            // The receiver is gone only when the caller stopped waiting.
            let _ = self.0.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    #[tokio::test]
    async fn every_thread_runs_and_stops_on_shutdown() {
        let started = Arc::new(AtomicUsize::new(0));
        let counted = started.clone();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_per_thread(
            listener().await,
            3,
            "test",
            async move {
                let _ = go_rx.await;
            },
            move |_listener, stop| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    stop.await;
                    Ok(())
                }
            },
        ));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while started.load(Ordering::SeqCst) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "threads did not start"
            );
            tokio::task::yield_now().await;
        }
        go_tx.send(()).expect("shutdown");
        server.await.expect("join").expect("clean stop");
    }

    #[tokio::test]
    async fn one_failing_thread_stops_the_others_and_is_reported() {
        let calls = Arc::new(AtomicUsize::new(0));
        let result = serve_per_thread(
            listener().await,
            2,
            "test",
            std::future::pending(),
            move |_listener, stop| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        return Err(io::Error::other("boom"));
                    }
                    stop.await;
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
            |_listener, _stop| async { panic!("on purpose") },
        )
        .await;
        assert_eq!(result.expect_err("panic").to_string(), "thread panicked");
    }
}
