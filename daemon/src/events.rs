//! Docker's event stream as a trigger: any change to this instance's containers (a preview
//! that dies, say) asks for a pass within moments. Events are only a wake-up: the pass re-lists
//! everything, and after the stream breaks (an engine restart) a pass runs on reconnect.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::docker::Runtime;
use crate::reconcile::Trigger;

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Follows the engine's events until `shutdown`, resubscribing with backoff.
pub async fn follow(
    runtime: Runtime,
    triggers: mpsc::Sender<Trigger>,
    shutdown: CancellationToken,
) {
    let mut delay = RETRY_FIRST;
    loop {
        let changes = runtime.changes();
        tokio::pin!(changes);
        let mut connected = false;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = changes.next() => next,
            };
            match next {
                Some(Ok(())) => {
                    if !connected {
                        connected = true;
                        delay = RETRY_FIRST;
                    }
                    // A full queue already holds a pass.
                    let _ = triggers.try_send(Trigger::default());
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "Docker event stream broke");
                    break;
                }
                None => {
                    tracing::warn!("Docker event stream ended");
                    break;
                }
            }
        }
        // What changed while the stream was down is found by re-listing everything.
        let _ = triggers.try_send(Trigger::default());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}
