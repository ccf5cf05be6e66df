//! One HTTPS request: refuse what must never be forwarded (overlong targets,
//! ambiguous framing), find its host, look the route up once, then forward
//! to the upstream or answer with a page. Logging of failures happens here,
//! once, where they are handled.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONNECTION, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::forward::{forward, UpstreamClient, Via};
use crate::framing::FramingVerdicts;
use crate::host::{request_host, RequestHost};
use crate::limits::Limits;
use crate::own_upstream::OwnUpstream;
use crate::pages::{self, ProxyBody};
use crate::routes::{Route, SharedRoutes};
use crate::tunnel::{PendingSwitch, TunnelSender};

const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");

/// What every request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// The table the reconciler publishes.
    pub(crate) routes: SharedRoutes,
    /// The one pooled upstream client.
    pub(crate) client: UpstreamClient,
    /// Bounds on requests and upstreams.
    pub(crate) limits: Limits,
}

/// Who sent a request, as known from its connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// Normalized SNI of the TLS connection, when the client sent one.
    pub(crate) sni: Option<Arc<str>>,
    /// Where a WebSocket switch goes; only HTTP/1.1 connections have one.
    pub(crate) tunnels: Option<TunnelSender>,
    /// The framing scanner's findings; only HTTP/1.1 connections have one.
    pub(crate) framing: Option<Arc<FramingVerdicts>>,
    /// The connection's own upstream connection; only HTTP/1.1 has one.
    pub(crate) own_upstream: Option<Arc<OwnUpstream>>,
}

/// Answers one request. Never fails: every failure becomes a page.
pub(crate) async fn handle(
    proxy: &Proxy,
    peer: &Peer,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // First, for every request: the verdicts are read in arrival order.
    let ambiguous = peer
        .framing
        .as_deref()
        .is_some_and(FramingVerdicts::next_is_ambiguous);
    let host = request_host(&req);
    // Any `Upgrade` makes hyper hand an HTTP/1.1 connection over after our
    // answer; the claim is taken here so every answer, page or relayed,
    // settles it.
    let switch = peer
        .tunnels
        .as_ref()
        .and_then(|tunnels| PendingSwitch::take(tunnels, &mut req));
    let asked_to_switch = switch.is_some();
    let routed = if ambiguous {
        Err(ProxyError::AmbiguousFraming {
            reason: "content-length together with transfer-encoding",
        })
    } else {
        route(proxy, peer, req, host.as_ref(), switch).await
    };
    let mut response = match routed {
        Ok(response) => response,
        Err(err) => {
            log(&err, peer, host.as_ref());
            pages::page(&err)
        }
    };
    // Previews are work in progress: keep them out of search engines, on
    // every answer including error pages.
    response
        .headers_mut()
        .insert(X_ROBOTS_TAG, HeaderValue::from_static("noindex"));
    // hyper hands an HTTP/1.1 connection over after any request that asked
    // to switch protocols, switched or not; one that did not switch ends.
    if asked_to_switch && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

async fn route(
    proxy: &Proxy,
    peer: &Peer,
    req: Request<Incoming>,
    host: Option<&RequestHost>,
    switch: Option<PendingSwitch>,
) -> Result<Response<ProxyBody>, ProxyError> {
    check_target(req.uri(), proxy.limits.max_uri_bytes)?;
    check_framing(&req)?;
    let host = host.ok_or(ProxyError::BadHost)?;
    // Each preview gets its own certificate, so a client never has a reason
    // to send one preview's requests over another's connection; refusing
    // keeps TLS and routing in agreement about who is being talked to.
    if let Some(sni) = peer.sni.as_deref() {
        if sni != host.name {
            return Err(ProxyError::Misdirected {
                host: host.name.clone(),
                sni: sni.to_owned(),
            });
        }
    }
    // Load once and clone the route, so no guard is held across an await.
    let route = proxy.routes.load().get(&host.name).cloned();
    match route {
        None => Err(ProxyError::UnknownHost),
        Some(Route::Live { upstream }) => {
            let via = Via {
                pool: &proxy.client,
                own: peer.own_upstream.as_deref(),
            };
            forward(
                via,
                req,
                upstream,
                peer.addr.ip(),
                host,
                proxy.limits.upstream_response_timeout,
                switch,
            )
            .await
        }
        Some(Route::Building { commit, since }) => Err(ProxyError::Building { commit, since }),
        Some(Route::Failed { commit, log_tail }) => Err(ProxyError::Failed { commit, log_tail }),
        Some(Route::Gone) => Err(ProxyError::Gone),
    }
}

/// 414 for a request target longer than `max` bytes (hyper's own limit is
/// 64 KiB, and only on HTTP/1).
fn check_target(uri: &Uri, max: usize) -> Result<(), ProxyError> {
    let len = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > max {
        return Err(ProxyError::UriTooLong { len, max });
    }
    Ok(())
}

/// Refuses HTTP/1 framing that hyper accepts but that another parser could
/// read differently. hyper already refuses (400) differing or non-numeric
/// `Content-Length`, a `Transfer-Encoding` whose last coding is not
/// `chunked`, `Transfer-Encoding` on HTTP/1.0, obs-fold and whitespace before
/// the colon. Left for us: a `Transfer-Encoding` that is anything but one
/// plain `chunked` (`gzip, chunked`, `chunked, chunked`, two fields), which
/// we could not relay faithfully anyway since the upstream hop re-frames.
fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.version() > Version::HTTP_11 {
        return Ok(());
    }
    let mut codings = req.headers().get_all(TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(only), None)
            if only
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked") =>
        {
            Ok(())
        }
        _ => Err(ProxyError::AmbiguousFraming {
            reason: "transfer-encoding other than a single chunked",
        }),
    }
}

fn log(err: &ProxyError, peer: &Peer, host: Option<&RequestHost>) {
    let host = host.map_or("", |h| h.name.as_str());
    let peer = peer.addr;
    if err.is_upstream_failure() {
        tracing::warn!(host = %host, peer = %peer, error = %err, cause = %causes(err), "upstream failed");
    } else {
        tracing::debug!(host = %host, peer = %peer, answer = %err, "answered with a page");
    }
}

/// The chain of sources below `err`, outermost first, joined by ": ".
fn causes(err: &ProxyError) -> String {
    let mut chain = Vec::new();
    let mut next = err.source();
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_length_counts_every_part() {
        let uri: Uri = "https://app.preview.test/abc?d".parse().expect("uri");
        assert!(check_target(&uri, 30).is_ok());
        assert!(matches!(
            check_target(&uri, 29),
            Err(ProxyError::UriTooLong { len: 30, max: 29 })
        ));
        let origin: Uri = "/abc".parse().expect("uri");
        assert!(check_target(&origin, 4).is_ok());
        assert!(check_target(&origin, 3).is_err());
    }

    #[test]
    fn only_a_single_plain_chunked_passes() {
        let request = |values: &[&str]| {
            let mut builder = Request::post("/");
            for value in values {
                builder = builder.header(TRANSFER_ENCODING, *value);
            }
            builder.body(()).expect("request")
        };
        assert!(check_framing(&request(&[])).is_ok());
        assert!(check_framing(&request(&["chunked"])).is_ok());
        assert!(check_framing(&request(&["Chunked "])).is_ok());
        for bad in [
            &["gzip, chunked"][..],
            &["chunked, chunked"][..],
            &["chunked", "chunked"][..],
            &["xchunked"][..],
        ] {
            assert!(check_framing(&request(bad)).is_err(), "{bad:?}");
        }
    }
}
