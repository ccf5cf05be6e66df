//! Every bound the proxy puts on a client or an upstream, in one value the
//! operator can set. The defaults are safe for a proxy on the internet.

use std::time::Duration;

/// Limits and timeouts for the HTTPS listener and its upstream requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Longest wait for a request's complete header block (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request header block in bytes; more gets 431.
    pub max_header_bytes: usize,
    /// Longest request target (URI) in bytes; more gets 414.
    pub max_uri_bytes: usize,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// A client that accepts none of our bytes for this long is cut off
    /// (hyper has no write timeout of its own).
    pub write_timeout: Duration,
    /// Connecting to an upstream.
    pub upstream_connect_timeout: Duration,
    /// Waiting for an upstream's response headers.
    pub upstream_response_timeout: Duration,
    /// Open client connections; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// How long open connections get to finish after shutdown is asked for.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(15),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
