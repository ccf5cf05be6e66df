//! Where an accept loop gets its connections: straight from a listening
//! socket, or handed over by the acceptor that spreads one socket's
//! connections over the serving threads (`per_thread`). Accept errors are
//! handled here, once.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// An accepted connection on its way to the thread that will serve it.
pub(crate) type Handed = (std::net::TcpStream, SocketAddr);

/// A source of accepted connections.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Accepts on this socket.
    Listener(TcpListener),
    /// Receives connections another task accepted; ends when it stops.
    Handoff(mpsc::UnboundedReceiver<Handed>),
}

impl Incoming {
    /// The next connection; `None` once a hand-off's acceptor has stopped.
    /// Errors that concern one connection are logged at debug and skipped;
    /// others (such as running out of file descriptors) are logged and
    /// retried after a pause.
    pub(crate) async fn next(&mut self, scheme: &'static str) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = match self {
                Incoming::Listener(listener) => listener.accept().await,
                Incoming::Handoff(handoff) => {
                    let (stream, peer) = handoff.recv().await?;
                    // Registers the socket with this thread's event loop.
                    TcpStream::from_std(stream).map(|stream| (stream, peer))
                }
            };
            match accepted {
                Ok(connection) => return Some(connection),
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(scheme, error = %err, "accept failed for one connection");
                }
                Err(err) => {
                    tracing::warn!(scheme, error = %err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
