//! Every bound the proxy puts on a client or an upstream, in one value the
//! operator can set. The defaults are safe for a proxy on the internet.

use std::time::Duration;

/// Limits and timeouts for the HTTPS listener and its upstream requests.
/// Every field is enforced; defaults are in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client that has not finished its TLS handshake by then is dropped
    /// [10 s].
    pub handshake_timeout: Duration,
    /// Longest wait for a request's complete header block (slowloris
    /// guard); the connection is closed without an answer [15 s]. HTTP/1.1:
    /// hyper starts this timer whenever it waits for a request head, so it
    /// also bounds how long a keep-alive connection may sit idle between
    /// requests. HTTP/2: the connection preface, every frame but DATA, and
    /// each header block (HEADERS through the CONTINUATION with
    /// END_HEADERS) must each arrive whole within it once begun.
    pub header_read_timeout: Duration,
    /// Largest request header block in bytes, start line included [64 KiB].
    /// HTTP/1.1: 431 and the connection closed (hyper). HTTP/2: advertised
    /// as SETTINGS_MAX_HEADER_LIST_SIZE, a larger block gets 431 on its
    /// stream, and it also bounds CONTINUATION frames per block.
    pub max_header_bytes: usize,
    /// Longest request target (URI) in bytes; more gets 414 and is never
    /// routed or forwarded [8 KiB].
    pub max_uri_bytes: usize,
    /// A connection with no bytes moving either way for this long is closed,
    /// WebSocket tunnels included [75 s].
    pub idle_timeout: Duration,
    /// A client that accepts none of our bytes for this long is cut off
    /// (hyper has no write timeout of its own) [60 s].
    pub write_timeout: Duration,
    /// Connecting to an upstream; failing is 502 [5 s].
    pub upstream_connect_timeout: Duration,
    /// Waiting for an upstream's response headers once the request body
    /// is in, and the longest an upstream may leave the body unread;
    /// exceeding either is 504 [60 s]. An upload takes as long as it needs
    /// while its bytes keep moving.
    pub upstream_response_timeout: Duration,
    /// The longest gap in a request body the upstream is waiting for;
    /// exceeding it is the client's fault: 408 and the connection closed,
    /// and the upstream never gets a complete request [60 s].
    pub client_body_timeout: Duration,
    /// Open client connections; beyond it new connections are closed as
    /// soon as they are accepted, with a rate-limited warning [10,000].
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once; more are
    /// refused with RST_STREAM(REFUSED_STREAM) [128].
    pub h2_max_concurrent_streams: u32,
    /// How long open connections get to finish after shutdown is asked for;
    /// then they are aborted [10 s].
    pub drain_timeout: Duration,
    /// Threads serving HTTPS connections, each with its own event loop; a
    /// connection stays on the thread that accepted it [one per CPU].
    pub threads: usize,
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
            client_body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
            drain_timeout: Duration::from_secs(10),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}
