//! Every way a request ends without an upstream's own answer, and the one
//! place that maps each to an HTTP status. Rendering is `pages`' job.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::conformance::Refusal;

/// Why the proxy answers a request itself instead of relaying an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The request breaks a rule of HTTP (RFC 9112, 9110, 9113) and is
    /// refused before it reaches any upstream.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The request names another host than the TLS handshake (SNI) did, so
    /// the certificate the client checked was not for this host.
    #[error("request host {host} does not match the TLS server name {sni}")]
    Misdirected {
        /// Normalized request host.
        host: String,
        /// Normalized SNI of the connection.
        sni: String,
    },
    /// The client's request body was not a valid body (bad chunk framing,
    /// a bad trailer, cut short); the upstream got no complete request.
    #[error("the request body is malformed: {reason}")]
    ClientBody {
        /// What the body reader found wrong.
        reason: String,
    },
    /// The client stopped sending its request body while the upstream
    /// waited for it.
    #[error("the request body stopped arriving for {}s", timeout.as_secs())]
    ClientBodyTimeout {
        /// How long nothing came.
        timeout: Duration,
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
    /// The upstream stopped reading the request body.
    #[error("upstream {upstream} read none of the request body for {}s", timeout.as_secs())]
    UpstreamStoppedReading {
        /// The route's upstream.
        upstream: SocketAddr,
        /// How long it read nothing.
        timeout: Duration,
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
            ProxyError::Refused(refusal) => refusal.status(),
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::Building { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Failed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Gone => StatusCode::NOT_FOUND,
            ProxyError::UpstreamUri { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamRequest { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamStoppedReading { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Which side is to blame: the status pages and the logs say so.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            ProxyError::Refused(_)
            | ProxyError::Misdirected { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyTimeout { .. } => Fault::Client,
            ProxyError::UnknownHost
            | ProxyError::Building { .. }
            | ProxyError::Failed { .. }
            | ProxyError::Gone => Fault::Neither,
            ProxyError::UpstreamUri { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::UpstreamStoppedReading { .. }
            | ProxyError::UpstreamTimeout { .. } => Fault::Upstream,
        }
    }

    /// Whether an HTTP/1 connection must end after this answer: after a
    /// request whose framing or syntax was wrong, what follows on the
    /// connection cannot be trusted to start a new request (RFC 9112 6.1,
    /// 6.3, 9.6); a 408 ends it (RFC 9110 15.5.9); and a body given up
    /// half-read leaves nothing a next request could start at.
    pub(crate) fn ends_connection(&self) -> bool {
        match self {
            // Each leaves the client's bytes, or some of them, unread.
            ProxyError::Refused(_)
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyTimeout { .. }
            | ProxyError::UpstreamStoppedReading { .. } => true,
            ProxyError::Misdirected { .. }
            | ProxyError::UnknownHost
            | ProxyError::Building { .. }
            | ProxyError::Failed { .. }
            | ProxyError::Gone
            | ProxyError::UpstreamUri { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::UpstreamTimeout { .. } => false,
        }
    }
}

/// Who caused an answer the proxy gave itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// What the client sent (4xx).
    Client,
    /// The preview's app (502, 504).
    Upstream,
    /// Nobody: the preview is building, failed to build, is gone or unknown.
    Neither,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let upstream: SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases = [
            (ProxyError::Refused(Refusal::MissingHost), 400),
            (ProxyError::Refused(Refusal::Connect), 501),
            (
                ProxyError::ClientBody {
                    reason: "invalid chunk size".into(),
                },
                400,
            ),
            (
                ProxyError::ClientBodyTimeout {
                    timeout: Duration::from_secs(60),
                },
                408,
            ),
            (
                ProxyError::UpstreamStoppedReading {
                    upstream,
                    timeout: Duration::from_secs(60),
                },
                504,
            ),
            (
                ProxyError::Misdirected {
                    host: "a.test".into(),
                    sni: "b.test".into(),
                },
                421,
            ),
            (ProxyError::UnknownHost, 404),
            (
                ProxyError::Refused(Refusal::TargetTooLong { len: 9, max: 8 }),
                414,
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
