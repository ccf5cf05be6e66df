//! Every way a request ends without an upstream's own answer, and the one
//! place that maps each to an HTTP status. Rendering is `pages`' job.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::StatusCode;

/// Why the proxy answers a request itself instead of relaying an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No `Host`/`:authority`, or one that is not a host name.
    #[error("request has no valid host")]
    BadHost,
    /// The request names another host than the TLS handshake (SNI) did, so
    /// the certificate the client checked was not for this host.
    #[error("request host {host} does not match the TLS server name {sni}")]
    Misdirected {
        /// Normalized request host.
        host: String,
        /// Normalized SNI of the connection.
        sni: String,
    },
    /// The request target is longer than the limit allows.
    #[error("request target of {len} bytes exceeds the limit of {max}")]
    UriTooLong {
        /// Bytes in the request target.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The request's framing could be read more than one way (request
    /// smuggling shapes hyper lets through); it is never forwarded.
    #[error("ambiguous request framing: {reason}")]
    AmbiguousFraming {
        /// What was wrong, for the log.
        reason: &'static str,
    },
    /// The host is valid but no preview lives there.
    #[error("no preview for this host")]
    UnknownHost,
    /// The preview's first build is still running.
    #[error("preview is building commit {commit}")]
    Building {
        /// Commit being built.
        commit: String,
        /// When the build started.
        since: SystemTime,
    },
    /// The preview's build or start failed and nothing serves.
    #[error("preview build of commit {commit} failed")]
    Failed {
        /// Commit that failed.
        commit: String,
        /// End of the build log, unescaped.
        log_tail: String,
    },
    /// The preview was removed after its branch went away.
    #[error("preview is gone")]
    Gone,
    /// The upstream address does not make a valid URI.
    #[error("upstream {upstream} does not make a valid URI")]
    UpstreamUri {
        /// The route's upstream.
        upstream: SocketAddr,
        /// What `http` rejected.
        #[source]
        source: http::Error,
    },
    /// No connection to the upstream (refused, unreachable, connect timeout).
    #[error("upstream {upstream} not reachable")]
    UpstreamConnect {
        /// The route's upstream.
        upstream: SocketAddr,
        /// The pooled client's or the own connection's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Connected, but the exchange failed (connection reset, bad response).
    #[error("request to upstream {upstream} failed")]
    UpstreamRequest {
        /// The route's upstream.
        upstream: SocketAddr,
        /// The pooled client's or the own connection's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream switched protocols although no tunnel was asked for.
    #[error("upstream {upstream} answered 101 to a request that was not an upgrade")]
    UnexpectedUpgrade {
        /// The route's upstream.
        upstream: SocketAddr,
    },
    /// The upstream did not send response headers in time.
    #[error("upstream {upstream} did not answer within {}s", timeout.as_secs())]
    UpstreamTimeout {
        /// The route's upstream.
        upstream: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
}

impl ProxyError {
    /// The status this answer is sent with. No `_` arm: a new variant must
    /// decide its status here.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::AmbiguousFraming { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::Building { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Failed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Gone => StatusCode::NOT_FOUND,
            ProxyError::UpstreamUri { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamRequest { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// True for failures of a live preview, which deserve a warning; the
    /// rest are ordinary answers.
    pub(crate) fn is_upstream_failure(&self) -> bool {
        match self {
            ProxyError::BadHost
            | ProxyError::Misdirected { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::AmbiguousFraming { .. }
            | ProxyError::UnknownHost
            | ProxyError::Building { .. }
            | ProxyError::Failed { .. }
            | ProxyError::Gone => false,
            ProxyError::UpstreamUri { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::UpstreamTimeout { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let upstream: SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases = [
            (ProxyError::BadHost, 400),
            (
                ProxyError::Misdirected {
                    host: "a.test".into(),
                    sni: "b.test".into(),
                },
                421,
            ),
            (ProxyError::UnknownHost, 404),
            (ProxyError::UriTooLong { len: 9, max: 8 }, 414),
            (
                ProxyError::AmbiguousFraming {
                    reason: "transfer-encoding",
                },
                400,
            ),
            (ProxyError::UnexpectedUpgrade { upstream }, 502),
            (
                ProxyError::Building {
                    commit: "abc".into(),
                    since: SystemTime::now(),
                },
                503,
            ),
            (
                ProxyError::Failed {
                    commit: "abc".into(),
                    log_tail: String::new(),
                },
                502,
            ),
            (ProxyError::Gone, 404),
            (
                ProxyError::UpstreamTimeout {
                    upstream,
                    timeout: Duration::from_secs(60),
                },
                504,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }
}
