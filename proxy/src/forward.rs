//! Relaying one request to a live preview's upstream over the shared pooled
//! client: URI rewrite, hop-by-hop stripping, `X-Forwarded-*`/`Forwarded`,
//! timeouts, and the upstream half of a WebSocket upgrade. Bodies stream both
//! ways and are never buffered. It must not decide whether to forward (that
//! is `handle`) nor render pages.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{self, HeaderName, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::ProxyError;
use crate::host::RequestHost;
use crate::limits::Limits;
use crate::max_forwards;
use crate::own_upstream::OwnUpstream;
use crate::pages::{self, ProxyBody};
use crate::request_body::{unless_stalled, RequestBody, Stall};
use crate::tunnel::{PendingSwitch, WEBSOCKET};
use crate::upstream_io::{UpstreamConnector, UpstreamDeadlines};

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest read buffer of one upstream connection. hyper's default (~400 KiB)
/// lets every pooled connection grow a buffer the size of a large response;
/// bodies stream anyway, so a small buffer only costs a few more reads.
pub(crate) const UPSTREAM_MAX_BUF: usize = 32 * 1024;

/// The one pooled HTTP/1.1 client all forwarded requests share.
pub(crate) type UpstreamClient = Client<UpstreamConnector, RequestBody>;

/// Headers that describe one hop, not the message (RFC 9110 7.6.1), plus the
/// proxy-auth pair: none of them may be relayed.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The deadline of every upstream connection: writes may wait twice the
/// response timeout. The request's own clock (`request_body`) answers a
/// stalled upload after one response timeout; this then frees the
/// connection the upload was on.
pub(crate) fn upstream_deadlines(limits: &Limits) -> UpstreamDeadlines {
    UpstreamDeadlines {
        write: limits.upstream_response_timeout.saturating_mul(2),
    }
}

/// Builds the shared upstream client (connect timeout, `TCP_NODELAY`,
/// deadlines, pooled).
pub(crate) fn upstream_client(limits: &Limits) -> UpstreamClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(limits.upstream_connect_timeout));
    tcp.set_nodelay(true);
    let connector = UpstreamConnector {
        tcp,
        deadlines: upstream_deadlines(limits),
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http1_max_buf_size(UPSTREAM_MAX_BUF)
        .build(connector)
}

/// Sends `req` to `upstream` and relays its response (headers cleaned, body
/// streamed). `client_ip` and `host` describe the original request.
///
/// With a `switch` that asked for a WebSocket (HTTP/1.1 only) the request is
/// forwarded with `Connection: upgrade` and `Upgrade: websocket`; only if the
/// upstream answers 101 is the switch handed to the connection as a tunnel.
/// Any other answer is relayed as is, and no tunnel exists.
///
/// A failure of the request body is the client's ([`ProxyError::ClientBody`],
/// [`ProxyError::ClientBodyTimeout`]); anything else that goes wrong before
/// the response head arrives is the upstream's.
pub(crate) async fn forward(
    via: Via<'_>,
    req: Request<Incoming>,
    upstream: SocketAddr,
    client_ip: IpAddr,
    host: &RequestHost,
    limits: &Limits,
    switch: Option<PendingSwitch>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let websocket = switch.as_ref().is_some_and(|switch| switch.websocket);
    let (mut parts, body) = req.into_parts();
    let (body, watch) = RequestBody::new(body);
    let received = parts.version;
    // The upstream speaks HTTP/1.1 whatever the client spoke; the pooled
    // client refuses an HTTP/2 request on an HTTP/1 connection.
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if websocket {
        set_upgrade_headers(headers);
    }
    if received == Version::HTTP_2 {
        join_cookies(headers);
    }
    set_content_length(headers, &body);
    max_forwards::decrement(&parts.method, headers);
    set_forwarding_headers(headers, client_ip, host, received);
    let req = Request::from_parts(parts, body);

    let sent = via.send(req, upstream, switch.is_some());
    let response_timeout = limits.upstream_response_timeout;
    let outcome = match &watch {
        None => tokio::time::timeout(response_timeout, sent)
            .await
            .map_err(|_elapsed| Stall::UpstreamResponse),
        Some(watch) => {
            unless_stalled(sent, watch, limits.client_body_timeout, response_timeout).await
        }
    };
    let mut response = match outcome {
        Ok(Ok(response)) => {
            // An early answer (a 413, a streamed reply): the body may still
            // stall, and must not hold both connections for ever.
            if let Some(watch) = &watch {
                watch.watch_after_response(limits.client_body_timeout, response_timeout);
            }
            response
        }
        Ok(Err(err)) => {
            // The exchange failed because the client's body did: its fault.
            return Err(match watch.and_then(|watch| watch.client_failure()) {
                Some(reason) => ProxyError::ClientBody { reason },
                None => err,
            });
        }
        Err(Stall::Client) => {
            return Err(ProxyError::ClientBodyTimeout {
                timeout: limits.client_body_timeout,
            })
        }
        Err(Stall::UpstreamNotReading) => {
            return Err(ProxyError::UpstreamStoppedReading {
                upstream,
                timeout: response_timeout,
            })
        }
        Err(Stall::UpstreamResponse) => {
            return Err(ProxyError::UpstreamTimeout {
                upstream,
                timeout: response_timeout,
            })
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgrade = hyper::upgrade::on(&mut response);
        if !switch.is_some_and(|switch| switch.tunnel(upgrade, upstream)) {
            return Err(ProxyError::UnexpectedUpgrade { upstream });
        }
        let (mut parts, _empty) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        set_upgrade_headers(&mut parts.headers);
        return Ok(Response::from_parts(parts, pages::empty()));
    }
    // Any other answer: `switch` drops here and the connection task closes
    // the connection after it (`handle` marks it `Connection: close`).
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// The connections a request can go over: the shared pool, and the client
/// connection's own upstream connection when it has one (HTTP/1.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Via<'a> {
    pub(crate) pool: &'a UpstreamClient,
    pub(crate) own: Option<&'a OwnUpstream>,
}

impl Via<'_> {
    /// Sends `req` over the own upstream connection when there is one for
    /// this request, else (and when the own connection closed before the
    /// request was written) over the pool. An upgrade always takes the pool,
    /// whose connections hyper can hand over as a tunnel.
    async fn send(
        self,
        mut req: Request<RequestBody>,
        upstream: SocketAddr,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        if let Some(own) = self.own.filter(|_| !upgrade) {
            let sender =
                own.checkout(upstream)
                    .await
                    .map_err(|source| ProxyError::UpstreamConnect {
                        upstream,
                        source: source.into(),
                    })?;
            if let Some(mut sender) = sender {
                // A connection of our own takes the origin form, as on the wire.
                *req.uri_mut() = origin_form(req.uri());
                let sent = sender.try_send_request(req);
                own.check_in(upstream, sender);
                match sent.await {
                    Ok(response) => return Ok(response),
                    Err(mut err) => match err.take_message() {
                        // Never written (the upstream closed the idle
                        // connection): safe to send again, whatever the method.
                        Some(unsent) => req = unsent,
                        None => {
                            return Err(ProxyError::UpstreamRequest {
                                upstream,
                                source: err.into_error().into(),
                            })
                        }
                    },
                }
            }
        }
        *req.uri_mut() = upstream_uri(req.uri(), upstream)
            .map_err(|source| ProxyError::UpstreamUri { upstream, source })?;
        self.pool.request(req).await.map_err(|source| {
            if source.is_connect() {
                ProxyError::UpstreamConnect {
                    upstream,
                    source: source.into(),
                }
            } else {
                ProxyError::UpstreamRequest {
                    upstream,
                    source: source.into(),
                }
            }
        })
    }
}

/// The two headers of a WebSocket switch, on either side of the proxy.
fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
}

/// The request target as an HTTP/1.1 server expects it: `<path-and-query>`.
fn origin_form(original: &Uri) -> Uri {
    Uri::from(path_and_query(original))
}

/// `http://<upstream><path-and-query>`, the form the pooled client takes.
fn upstream_uri(original: &Uri, upstream: SocketAddr) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.to_string())
        .path_and_query(path_and_query(original))
        .build()
}

/// `/` for a request without one (an HTTP/2 `:path` is never empty, but the
/// type allows it).
fn path_and_query(original: &Uri) -> PathAndQuery {
    original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Sets `Host` and the forwarding headers, replacing whatever the client sent
/// (a client must not be able to claim another address), and adds this hop
/// to `Via` (RFC 9110 7.6.3: a gateway MUST, with the protocol it received).
fn set_forwarding_headers(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    host: &RequestHost,
    received: Version,
) {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let client_ip = client_ip.to_canonical();
    // `insert` replaces every value the client sent. `host.raw` passed host
    // validation, so these values are valid; skipping is only a defence. The
    // host value is made once and shared (a reference count, no copy).
    if let Ok(host_value) = HeaderValue::from_str(&host.raw) {
        headers.insert(HOST, host_value.clone());
        headers.insert(X_FORWARDED_HOST, host_value);
    } else {
        headers.remove(HOST);
        headers.remove(X_FORWARDED_HOST);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    headers.append(header::VIA, HeaderValue::from_static(via_entry(received)));
    for (name, value) in [
        (X_FORWARDED_FOR, client_ip.to_string()),
        (header::FORWARDED, forwarded_value(client_ip, &host.raw)),
    ] {
        match HeaderValue::try_from(value) {
            Ok(value) => headers.insert(name, value),
            Err(_) => headers.remove(name),
        };
    }
}

/// This hop's `Via` entry: the protocol version received, and a pseudonym
/// instead of a host name (RFC 9110 7.6.3 allows one).
fn via_entry(received: Version) -> &'static str {
    match received {
        Version::HTTP_09 => "0.9 previewd",
        Version::HTTP_10 => "1.0 previewd",
        Version::HTTP_2 => "2 previewd",
        Version::HTTP_3 => "3 previewd",
        _ => "1.1 previewd",
    }
}

/// RFC 9113 8.2.3: HTTP/2 may split `Cookie` into several fields; before
/// they go on an HTTP/1.1 connection they MUST be joined with "; ".
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    // Each part was a valid value, and "; " keeps it one.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// Writes `Content-Length` as the one number hyper read it as (no leading
/// zeros, no list), so the upstream cannot read a length of its own.
fn set_content_length(headers: &mut HeaderMap, body: &RequestBody) {
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(len) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// `Forwarded` (RFC 7239): IPv6 nodes and non-token hosts are quoted.
fn forwarded_value(client_ip: IpAddr, host: &str) -> String {
    let node = match client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    format!("for={node};proto=https;host={}", token_or_quoted(host))
}

fn token_or_quoted(value: &str) -> String {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !value.is_empty() && value.bytes().all(is_tchar) {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> RequestHost {
        RequestHost {
            raw: raw.into(),
            name: raw.split(':').next().unwrap_or_default().into(),
        }
    }

    #[test]
    fn uri_is_rewritten_to_the_upstream() {
        let upstream: SocketAddr = ([10, 0, 0, 5], 3000).into();
        let uri: Uri = "/a/b?c=d".parse().expect("uri");
        assert_eq!(
            upstream_uri(&uri, upstream).expect("rewrite").to_string(),
            "http://10.0.0.5:3000/a/b?c=d"
        );
        let h2: Uri = "https://app.preview.test/x".parse().expect("uri");
        assert_eq!(
            upstream_uri(&h2, upstream).expect("rewrite").to_string(),
            "http://10.0.0.5:3000/x"
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("addr");
        assert_eq!(
            upstream_uri(&uri, v6).expect("rewrite").to_string(),
            "http://[fd00::1]:80/a/b?c=d"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("x-kept", "yes"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn forwarding_headers_replace_client_values() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("7.7.7.7"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let ip: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        headers.insert(header::VIA, HeaderValue::from_static("1.0 corporate"));
        set_forwarding_headers(
            &mut headers,
            ip,
            &host("app.preview.test:8443"),
            Version::HTTP_2,
        );
        let via: Vec<_> = headers.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.0 corporate", "2 previewd"]);
        assert_eq!(headers.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "app.preview.test:8443");
        assert_eq!(headers[HOST], "app.preview.test:8443");
        assert_eq!(
            headers[header::FORWARDED],
            "for=192.0.2.1;proto=https;host=\"app.preview.test:8443\""
        );
    }

    #[test]
    fn split_cookies_are_joined_in_order() {
        let mut headers = HeaderMap::new();
        for cookie in ["a=1", "b=2", "c=3"] {
            headers.append(header::COOKIE, HeaderValue::from_static(cookie));
        }
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn forwarded_quotes_ipv6() {
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(
            forwarded_value(ip, "app.preview.test"),
            "for=\"[2001:db8::1]\";proto=https;host=app.preview.test"
        );
    }
}
