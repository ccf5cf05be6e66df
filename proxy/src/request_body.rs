//! A client's request body on its way to an upstream, watched so that a
//! failure or a stall is put on the side that caused it. A body the client
//! framed badly (a bad chunk, a cut-off upload) is the client's fault (400,
//! 408), never a "preview broken" 502/504; an upstream that stops reading
//! the body, or answers late, stays the upstream's (504). A stalled exchange
//! is given up: the client's body is let go (so its connection can end) and
//! the upstream's copy fails rather than end as if whole. It must not decide
//! statuses (that is `error`) nor touch the bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

/// The body handed to the upstream connection: the client's `B` (hyper's
/// `Incoming`; tests use their own).
#[derive(Debug)]
pub(crate) struct RequestBody<B = Incoming> {
    source: Source<B>,
}

#[derive(Debug)]
enum Source<B> {
    /// A body already over (most GETs): no watch, nothing to pay.
    Plain(B),
    /// A body still to come; it lives in the watch, so giving up can drop it.
    Watched(Arc<BodyWatch<B>>),
}

/// The error type of the client's body.
type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// Why the body handed to the upstream connection ended in an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's body failed.
    #[error(transparent)]
    Client(ClientError),
    /// previewd gave the request up (a stall); the upstream must not take
    /// what it got for a whole request.
    #[error("the request was given up")]
    GivenUp,
}

impl<B: Body> RequestBody<B> {
    /// Wraps `inner`, with a watch unless the body is already over.
    pub(crate) fn new(inner: B) -> (Self, Option<Arc<BodyWatch<B>>>) {
        if inner.is_end_stream() {
            return (
                Self {
                    source: Source::Plain(inner),
                },
                None,
            );
        }
        let watch = Arc::new(BodyWatch::new(inner));
        let body = Self {
            source: Source::Watched(watch.clone()),
        };
        (body, Some(watch))
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<ClientError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().source {
            Source::Plain(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|err| BodyError::Client(err.into())),
            Source::Watched(watch) => watch.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Plain(inner) => inner.is_end_stream(),
            // A given-up body is not over: it fails on its next poll.
            Source::Watched(watch) => watch.lock().body.as_ref().is_some_and(B::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Plain(inner) => inner.size_hint(),
            Source::Watched(watch) => watch
                .lock()
                .body
                .as_ref()
                .map_or_else(SizeHint::new, B::size_hint),
        }
    }
}

impl<B> Drop for RequestBody<B> {
    /// The upstream connection lets a body go once it has written all it
    /// announced, without polling it to its end: a body that is still
    /// "streaming" then is over.
    fn drop(&mut self) {
        if let Source::Watched(watch) = &self.source {
            let mut state = watch.lock();
            if matches!(state.progress, Progress::Streaming { .. }) && state.body.is_some() {
                state.progress = Progress::Finished { at: Instant::now() };
            }
        }
    }
}

/// One request body while it streams, shared by the upstream connection
/// that reads it and the exchange that waits on it.
#[derive(Debug)]
pub(crate) struct BodyWatch<B = Incoming> {
    state: Mutex<State<B>>,
}

#[derive(Debug)]
struct State<B> {
    progress: Progress,
    /// The client's body; `None` once the exchange was given up.
    body: Option<B>,
    /// The task that last found the body waiting, for a give-up to wake.
    waker: Option<Waker>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// Still arriving. `waiting_on_client`: the upstream connection asked
    /// for more and the client has not sent it yet; otherwise the upstream
    /// connection has not asked since the last piece (it is not reading).
    Streaming {
        since: Instant,
        waiting_on_client: bool,
    },
    /// Read to its end.
    Finished { at: Instant },
    /// The client's bytes did not make a valid body; why, for the page.
    Failed { reason: String },
}

/// Which side let a request stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stall {
    /// The client stopped sending its body (408).
    Client,
    /// The upstream stopped reading the body (504).
    UpstreamNotReading,
    /// The body is in; the upstream did not answer (504).
    UpstreamResponse,
}

impl<B> BodyWatch<B> {
    fn new(body: B) -> Self {
        Self {
            state: Mutex::new(State {
                progress: Progress::Streaming {
                    since: Instant::now(),
                    waiting_on_client: false,
                },
                body: Some(body),
                waker: None,
            }),
        }
    }

    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<ClientError>,
    {
        let mut state = self.lock();
        let Some(body) = state.body.as_mut() else {
            return Poll::Ready(Some(Err(BodyError::GivenUp)));
        };
        let polled = Pin::new(&mut *body)
            .poll_frame(cx)
            .map_err(|err| -> ClientError { err.into() });
        // hyper stops polling once `is_end_stream` says so after a frame,
        // so a sized body ends with its last frame, not with `None`.
        let ended = body.is_end_stream();
        let now = Instant::now();
        let progress = match &polled {
            Poll::Pending => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                match state.progress {
                    // The client's clock starts when the upstream asks.
                    Progress::Streaming {
                        waiting_on_client: false,
                        ..
                    } => Progress::Streaming {
                        since: now,
                        waiting_on_client: true,
                    },
                    ref other => other.clone(),
                }
            }
            // Trailers are the last frame there is, and hyper stops polling
            // after them, as after the last byte of a sized body.
            Poll::Ready(Some(Ok(frame))) if ended || frame.is_trailers() => {
                Progress::Finished { at: now }
            }
            Poll::Ready(Some(Ok(_))) => Progress::Streaming {
                since: now,
                waiting_on_client: false,
            },
            Poll::Ready(Some(Err(err))) => Progress::Failed {
                reason: reason(err.as_ref()),
            },
            Poll::Ready(None) => Progress::Finished { at: now },
        };
        if !matches!(state.progress, Progress::Failed { .. }) {
            state.progress = progress;
        }
        polled.map_err(BodyError::Client)
    }

    /// Gives the request up: the body's next poll fails (the upstream
    /// connection closes rather than take a part for the whole), and the
    /// client's body is dropped now, so hyper can end the client connection
    /// even if the upstream connection never polls the body again.
    pub(crate) fn give_up(&self) {
        let (body, waker) = {
            let mut state = self.lock();
            (state.body.take(), state.waker.take())
        };
        drop(body);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Why the client's body failed, if it did.
    pub(crate) fn client_failure(&self) -> Option<String> {
        match &self.lock().progress {
            Progress::Failed { reason } => Some(reason.clone()),
            Progress::Streaming { .. } | Progress::Finished { .. } => None,
        }
    }

    /// The clock that applies now: when it runs out, the stall it means,
    /// and the moment it counts from; `None` once the body failed. A
    /// deadline beyond what the clock can hold (a huge configured timeout)
    /// is `None` too: it never comes.
    fn clock(&self, body_timeout: Duration, response_timeout: Duration) -> Option<Clock> {
        let (since, timeout, stall) = match self.lock().progress {
            Progress::Streaming {
                since,
                waiting_on_client: true,
            } => (since, body_timeout, Stall::Client),
            Progress::Streaming {
                since,
                waiting_on_client: false,
            } => (since, response_timeout, Stall::UpstreamNotReading),
            Progress::Finished { at } => (at, response_timeout, Stall::UpstreamResponse),
            Progress::Failed { .. } => return None,
        };
        Some(Clock {
            deadline: since.checked_add(timeout),
            stall,
            since,
        })
    }

    /// Resolves when the request stalls: no body byte moved for
    /// `body_timeout` while the upstream waits for the client, or for
    /// `response_timeout` while the upstream does not read; or no answer
    /// `response_timeout` after the body ended. The stall is blamed on
    /// whoever holds the body up when it is found, and found within the
    /// shorter timeout of when it began. Never resolves once the body failed
    /// (the exchange itself ends with that error).
    pub(crate) async fn stalled(
        &self,
        body_timeout: Duration,
        response_timeout: Duration,
    ) -> Stall {
        // Whichever clock applies can change while nothing moves, so the
        // state is looked at again at least this often.
        let recheck = body_timeout.min(response_timeout);
        let mut wake = Instant::now().checked_add(recheck);
        loop {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
            let Some(clock) = self.clock(body_timeout, response_timeout) else {
                return std::future::pending().await;
            };
            match clock.next_look(Instant::now(), recheck) {
                Ok(stall) => return stall,
                Err(next) => wake = next,
            }
        }
    }

    /// After the response head arrived: if the body is still coming, keeps
    /// watching it, and a body that stalls (the client stops sending, or
    /// the upstream stops reading) is given up, so neither connection waits
    /// on it for ever. The watch ends once the body ends, fails, or is let
    /// go.
    pub(crate) fn watch_after_response(
        self: &Arc<Self>,
        body_timeout: Duration,
        response_timeout: Duration,
    ) where
        B: Send + 'static,
    {
        if !matches!(self.lock().progress, Progress::Streaming { .. }) {
            return;
        }
        let watch: Weak<Self> = Arc::downgrade(self);
        let recheck = body_timeout.min(response_timeout);
        tokio::spawn(async move {
            let mut wake = Instant::now().checked_add(recheck);
            while let Some(at) = wake {
                tokio::time::sleep_until(at).await;
                let Some(watch) = watch.upgrade() else {
                    return;
                };
                let clock = watch.clock(body_timeout, response_timeout);
                let Some(clock) = clock.filter(|clock| clock.stall != Stall::UpstreamResponse)
                else {
                    return;
                };
                match clock.next_look(Instant::now(), recheck) {
                    Ok(stall) => {
                        tracing::debug!(
                            ?stall,
                            "request body stalled after the response began; giving the exchange up"
                        );
                        watch.give_up();
                        return;
                    }
                    Err(next) => wake = next,
                }
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // Plain data: a panic cannot leave it half written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One stall clock, as [`BodyWatch::clock`] reads it.
#[derive(Debug)]
struct Clock {
    deadline: Option<Instant>,
    stall: Stall,
    since: Instant,
}

impl Clock {
    /// At `now`: the stall, if the clock ran out; otherwise when to look
    /// again (`None`: never, both clocks are beyond reach).
    fn next_look(&self, now: Instant, recheck: Duration) -> Result<Stall, Option<Instant>> {
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(self.stall);
        }
        let recheck_at = now.max(self.since).checked_add(recheck);
        Err(match (self.deadline, recheck_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

/// The error's innermost useful text: hyper's own words are generic
/// ("error reading a body from connection"), its source says what was wrong.
fn reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text = cause.to_string();
        next = cause.source();
    }
    text
}

/// Runs `sent` (the exchange with the upstream) until it ends or `watch`
/// reports a stall, whichever is first; a stalled request is given up.
pub(crate) async fn unless_stalled<F: Future, B>(
    sent: F,
    watch: &BodyWatch<B>,
    body_timeout: Duration,
    response_timeout: Duration,
) -> Result<F::Output, Stall> {
    let stalled = tokio::select! {
        biased;
        ended = sent => return Ok(ended),
        stall = watch.stalled(body_timeout, response_timeout) => stall,
    };
    watch.give_up();
    Err(stalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    const BODY: Duration = Duration::from_secs(5);
    const RESPONSE: Duration = Duration::from_secs(60);

    /// A client's body fed from the test; `left` makes it a sized body.
    struct TestBody {
        frames: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>,
        left: Option<usize>,
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            let polled = self.frames.poll_recv(cx);
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if let Some(left) = &mut self.left {
                    *left -= len;
                }
            }
            polled
        }

        fn is_end_stream(&self) -> bool {
            self.left == Some(0)
        }
    }

    type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

    fn body(left: Option<usize>) -> (RequestBody<TestBody>, Arc<BodyWatch<TestBody>>, Feed) {
        let (feed, frames) = mpsc::unbounded_channel();
        let (body, watch) = RequestBody::new(TestBody { frames, left });
        (body, watch.expect("a body still to come is watched"), feed)
    }

    fn piece(feed: &Feed) {
        feed.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .expect("body alive");
    }

    type Read = Option<Result<Frame<Bytes>, BodyError>>;

    /// The upstream connection: reads `frames` frames (all, if `None`),
    /// then stops polling but keeps the body; returns it and what the last
    /// read gave.
    fn upstream(
        mut body: RequestBody<TestBody>,
        frames: Option<usize>,
    ) -> tokio::task::JoinHandle<(RequestBody<TestBody>, Read)> {
        tokio::spawn(async move {
            let mut read = 0;
            loop {
                let frame = body.frame().await;
                read += 1;
                if frame.as_ref().is_none_or(Result::is_err) || frames == Some(read) {
                    return (body, frame);
                }
            }
        })
    }

    /// What the upstream's last read gave, once it has stopped.
    async fn last_read(
        upstream: tokio::task::JoinHandle<(RequestBody<TestBody>, Read)>,
    ) -> (RequestBody<TestBody>, Result<Frame<Bytes>, BodyError>) {
        let (body, frame) = upstream.await.expect("upstream");
        (body, frame.expect("a frame"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_stalls_after_the_body_timeout() {
        let (body, watch, feed) = body(None);
        let _upstream = upstream(body, None);
        piece(&feed);
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::Client);
        assert_eq!(start.elapsed(), BODY);
    }

    /// The bug this pins: the client's clock counted from the last byte,
    /// not from when the upstream asked for more, so an upstream that
    /// paused reading got the client a 408 for the upstream's own pause.
    #[tokio::test(start_paused = true)]
    async fn the_clients_clock_starts_when_the_upstream_asks() {
        let (mut body, watch, feed) = body(None);
        piece(&feed);
        let start = Instant::now();
        body.frame().await.expect("a frame").expect("data");
        // The upstream pauses 3 s (under the 60 s it may), then asks.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let upstream = upstream(body, None);
        tokio::task::yield_now().await;
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::Client);
        assert_eq!(start.elapsed(), Duration::from_secs(3) + BODY);
        drop((upstream, feed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_let_go_by_the_upstream_connection_is_over() {
        let (mut body, watch, feed) = body(None);
        piece(&feed);
        body.frame().await.expect("a frame").expect("data");
        // Written all it announced: hyper drops the body without polling on.
        drop(body);
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::UpstreamResponse);
        drop(feed);
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_end_the_body() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, Some(2));
        piece(&feed);
        feed.send(Ok(Frame::trailers(http::HeaderMap::new())))
            .expect("send");
        // hyper stops polling after the trailers, with the body kept.
        let (_kept, frame) = last_read(upstream).await;
        assert!(frame.expect("trailers").is_trailers());
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::UpstreamResponse);
        drop(feed);
    }

    #[tokio::test(start_paused = true)]
    async fn each_piece_of_body_restarts_the_clock() {
        let (body, watch, feed) = body(None);
        let _upstream = upstream(body, None);
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                piece(&feed);
            }
            feed
        });
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::Client);
        // Last piece at 12 s, then 5 s of nothing.
        assert_eq!(start.elapsed(), Duration::from_secs(17));
        drop(feeder.await.expect("feeder"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_stops_reading_is_the_upstreams_stall() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, Some(1));
        piece(&feed);
        let (_kept, frame) = last_read(upstream).await;
        frame.expect("data");
        let start = Instant::now();
        assert_eq!(
            watch.stalled(BODY, RESPONSE).await,
            Stall::UpstreamNotReading
        );
        assert_eq!(start.elapsed(), RESPONSE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_timeout_shorter_than_the_body_timeout_applies_too() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, Some(1));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        piece(&feed);
        let (_kept, frame) = last_read(upstream).await;
        frame.expect("data");
        assert_eq!(
            watch.stalled(RESPONSE, BODY).await,
            Stall::UpstreamNotReading
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2) + BODY);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_body_the_upstream_has_the_response_timeout() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, None);
        piece(&feed);
        drop(feed);
        assert!(upstream.await.expect("upstream").1.is_none());
        let start = Instant::now();
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::UpstreamResponse);
        assert_eq!(start.elapsed(), RESPONSE);
    }

    /// The bug this pins: hyper stops polling a sized body after its last
    /// frame, so waiting for `None` left it "streaming" and a slow answer
    /// was blamed as "stopped reading the body".
    #[tokio::test(start_paused = true)]
    async fn a_sized_body_is_over_with_its_last_frame() {
        let (body, watch, feed) = body(Some(1));
        let upstream = upstream(body, Some(1));
        piece(&feed);
        let (_kept, frame) = last_read(upstream).await;
        frame.expect("data");
        assert_eq!(watch.stalled(BODY, RESPONSE).await, Stall::UpstreamResponse);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_body_never_stalls_and_says_why() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, None);
        feed.send(Err(std::io::Error::other("bad chunk")))
            .expect("send");
        let (_kept, last) = last_read(upstream).await;
        assert!(matches!(last, Err(BodyError::Client(_))));
        let stalled =
            tokio::time::timeout(Duration::from_secs(3600), watch.stalled(BODY, RESPONSE));
        assert!(stalled.await.is_err());
        assert_eq!(watch.client_failure().as_deref(), Some("bad chunk"));
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_lets_the_clients_body_go_and_fails_the_upstreams_copy() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, None);
        piece(&feed);
        tokio::task::yield_now().await;
        watch.give_up();
        // Dropped at once, though nobody polls it: the client connection can end.
        assert!(feed.is_closed());
        // And the waiting upstream connection is woken to fail.
        let (_kept, last) = last_read(upstream).await;
        assert!(matches!(last, Err(BodyError::GivenUp)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_after_the_response_began_is_given_up() {
        let (body, watch, feed) = body(None);
        let upstream = upstream(body, None);
        piece(&feed);
        tokio::task::yield_now().await;
        let start = Instant::now();
        watch.watch_after_response(BODY, RESPONSE);
        drop(watch);
        let (_kept, last) = last_read(upstream).await;
        assert!(matches!(last, Err(BodyError::GivenUp)));
        assert_eq!(start.elapsed(), BODY);
        assert!(feed.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeouts_never_fire_and_never_overflow() {
        let (body, watch, feed) = body(None);
        let _upstream = upstream(body, None);
        piece(&feed);
        let stalled = watch.stalled(Duration::MAX, Duration::MAX);
        assert!(tokio::time::timeout(Duration::from_secs(3600), stalled)
            .await
            .is_err());
    }
}
