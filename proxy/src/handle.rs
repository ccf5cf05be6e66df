//! One HTTPS request: find its host, look the route up once, then forward to
//! the upstream or answer with a page. Logging of failures happens here,
//! once, where they are handled.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::forward::{forward, UpstreamClient};
use crate::host::{request_host, RequestHost};
use crate::limits::Limits;
use crate::pages::{self, ProxyBody};
use crate::routes::{Route, SharedRoutes};

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
}

/// Answers one request. Never fails: every failure becomes a page.
pub(crate) async fn handle(
    proxy: &Proxy,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let host = request_host(&req);
    let mut response = match route(proxy, peer, req, host.as_ref()).await {
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
    Ok(response)
}

async fn route(
    proxy: &Proxy,
    peer: &Peer,
    req: Request<Incoming>,
    host: Option<&RequestHost>,
) -> Result<Response<ProxyBody>, ProxyError> {
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
            forward(
                &proxy.client,
                req,
                upstream,
                peer.addr.ip(),
                host,
                proxy.limits.upstream_response_timeout,
            )
            .await
        }
        Some(Route::Building { commit, since }) => Err(ProxyError::Building { commit, since }),
        Some(Route::Failed { commit, log_tail }) => Err(ProxyError::Failed { commit, log_tail }),
        Some(Route::Gone) => Err(ProxyError::Gone),
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
