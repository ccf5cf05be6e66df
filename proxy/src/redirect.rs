//! The plain-HTTP answer: a permanent redirect to the same path over HTTPS,
//! only for hosts under our domain, so the listener can never be used to
//! bounce a client to someone else's site.

use std::convert::Infallible;

use http::header::{CACHE_CONTROL, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::conformance::Refusal;
use crate::error::ProxyError;
use crate::host::{is_within, request_host};
use crate::pages::{self, ProxyBody};

/// Answers `req` with 308 to `https://<host>[:port]<path-and-query>`, or 400
/// when the host is missing, invalid or not `domain`/under `domain`.
pub(crate) fn redirect<B>(
    req: &Request<B>,
    domain: &str,
    https_port: u16,
) -> Result<Response<ProxyBody>, Infallible> {
    let location = request_host(req)
        .filter(|host| is_within(&host.name, domain))
        .and_then(|host| {
            let port = match https_port {
                443 => String::new(),
                port => format!(":{port}"),
            };
            let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            HeaderValue::try_from(format!("https://{}{port}{path}", host.name)).ok()
        });
    let Some(location) = location else {
        tracing::debug!(uri = %req.uri(), "refusing to redirect a foreign or missing host");
        return Ok(pages::page(&ProxyError::Refused(Refusal::ForeignHost)));
    };
    let mut response = Response::new(pages::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    // The HTTPS port is configuration; do not let browsers pin it forever.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn answer(host: Option<&str>, uri: &str, port: u16) -> Response<ProxyBody> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        let req = builder.body(()).expect("request");
        match redirect(&req, "preview.test", port) {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    #[test]
    fn redirects_our_hosts_keeping_path_and_query() {
        let response = answer(Some("X.preview.test:8080"), "/path?q", 8443);
        assert_eq!(response.status(), 308);
        assert_eq!(
            response.headers()[LOCATION],
            "https://x.preview.test:8443/path?q"
        );
    }

    #[test]
    fn port_443_is_omitted() {
        let response = answer(Some("preview.test"), "/", 443);
        assert_eq!(response.headers()[LOCATION], "https://preview.test/");
    }

    #[test]
    fn foreign_or_missing_hosts_get_400() {
        for host in [
            Some("evil.com"),
            Some("preview.test.evil.com"),
            Some("bad host"),
            None,
        ] {
            assert_eq!(answer(host, "/", 8443).status(), 400, "{host:?}");
        }
    }
}
