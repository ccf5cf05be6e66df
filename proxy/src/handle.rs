//! One HTTPS request: refuse what must never be forwarded (`conformance`,
//! and what `framing` saw in the raw bytes), find its host, look the route
//! up once, then forward to the upstream or answer with a page. Logging of
//! failures happens here, once, where they are handled.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::CONNECTION;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::conformance;
use crate::error::{Fault, ProxyError};
use crate::forward::{forward, UpstreamClient, Via};
use crate::framing::FramingVerdicts;
use crate::host::RequestHost;
use crate::limits::Limits;
use crate::max_forwards;
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
    let scanned = peer
        .framing
        .as_deref()
        .and_then(FramingVerdicts::next_refusal);
    let version = req.version();
    // Any `Upgrade` makes hyper hand an HTTP/1.1 connection over after our
    // answer; the claim is taken here so every answer, page or relayed,
    // settles it.
    let switch = peer
        .tunnels
        .as_ref()
        .and_then(|tunnels| PendingSwitch::take(tunnels, &mut req));
    let asked_to_switch = switch.is_some();
    let admitted = match scanned {
        Some(refusal) => Err(refusal),
        None => conformance::admit(&req, proxy.limits.max_uri_bytes),
    };
    let (routed, host) = match admitted {
        Ok(host) => (route(proxy, peer, req, &host, switch).await, Some(host)),
        Err(refusal) => (Err(ProxyError::Refused(refusal)), None),
    };
    let mut ends_connection = false;
    let mut response = match routed {
        Ok(response) => response,
        Err(err) => {
            log(&err, peer, host.as_ref());
            ends_connection = err.ends_connection();
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
    let switch_refused = asked_to_switch && response.status() != StatusCode::SWITCHING_PROTOCOLS;
    // HTTP/2 has no `Connection` (and a broken request only ends its stream).
    if (switch_refused || ends_connection) && version <= Version::HTTP_11 {
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
    host: &RequestHost,
    switch: Option<PendingSwitch>,
) -> Result<Response<ProxyBody>, ProxyError> {
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
            if let Some(answer) = max_forwards::final_answer(&req) {
                return Ok(answer);
            }
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
                &proxy.limits,
                switch,
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
    match err.fault() {
        Fault::Upstream => {
            tracing::warn!(host = %host, peer = %peer, fault = "upstream", error = %err, cause = %causes(err), "upstream failed");
        }
        // Debug: anyone on the internet can send a malformed request.
        Fault::Client => {
            tracing::debug!(host = %host, peer = %peer, fault = "client", answer = %err, "refused the client's request");
        }
        Fault::Neither => {
            tracing::debug!(host = %host, peer = %peer, answer = %err, "answered with a page");
        }
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
