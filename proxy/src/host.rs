//! Host name normalization: the one place that turns a `Host` header, an
//! HTTP/2 `:authority` or a route key into the form the route table uses.
//! It validates syntax only; it must not know which hosts exist.

use std::net::Ipv6Addr;

use http::header::HOST;
use http::Request;

/// Longest DNS name we accept (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// Normalizes a host (optionally with `:port`) for route lookup: lowercase,
/// port removed, one trailing dot removed. IPv6 literals keep their brackets
/// (`[::1]:8443` becomes `[::1]`).
///
/// Returns `None` for anything that is not a plausible host name: empty,
/// spaces, control characters, user info, a bad port, empty labels.
pub fn normalize_host(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        if !valid_port_suffix(after) {
            return None;
        }
        let addr: Ipv6Addr = literal.parse().ok()?;
        return Some(format!("[{addr}]"));
    }

    let name = match raw.split_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return None,
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok.then(|| name.to_ascii_lowercase())
}

/// The host a request is addressed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestHost {
    /// As the client sent it (may carry a port); forwarded in `Host` and
    /// `X-Forwarded-Host`. Only ever holds characters `normalize_host` accepts.
    pub(crate) raw: String,
    /// Normalized form, the route table key.
    pub(crate) name: String,
}

/// Reads the host from the URI authority (HTTP/2 `:authority`, or an HTTP/1.1
/// absolute-form target, which RFC 9112 says wins over `Host`) or else from
/// the `Host` header. `None` when absent or not a valid host.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<RequestHost> {
    let raw = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    RequestHost::parse(raw)
}

impl RequestHost {
    /// `raw` as a request host, `None` when it is not a valid one.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        let name = normalize_host(raw)?;
        Some(Self {
            raw: raw.to_owned(),
            name,
        })
    }
}

/// True when `name` (already normalized) is `domain` itself or a name below it.
pub(crate) fn is_within(name: &str, domain: &str) -> bool {
    if name.eq_ignore_ascii_case(domain) {
        return true;
    }
    // Compare bytes, not str slices: `name` may hold non-ASCII and a str slice
    // at an arbitrary offset could panic.
    let Some(dot) = name.len().checked_sub(domain.len() + 1) else {
        return false;
    };
    let bytes = name.as_bytes();
    dot > 0 && bytes[dot] == b'.' && bytes[dot + 1..].eq_ignore_ascii_case(domain.as_bytes())
}

fn valid_port_suffix(after: &str) -> bool {
    match after.strip_prefix(':') {
        Some(port) => valid_port(port),
        None => after.is_empty(),
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.parse::<u16>().is_ok()
        && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        normalize_host(s)
    }

    #[test]
    fn plain_names_are_lowercased() {
        assert_eq!(
            norm("Feature-X.Preview.LOCALHOST").as_deref(),
            Some("feature-x.preview.localhost")
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(
            norm("app.preview.test:8443").as_deref(),
            Some("app.preview.test")
        );
        assert_eq!(
            norm("app.preview.test:443").as_deref(),
            Some("app.preview.test")
        );
    }

    #[test]
    fn bad_ports_are_rejected() {
        assert_eq!(norm("app.preview.test:"), None);
        assert_eq!(norm("app.preview.test:99999"), None);
        assert_eq!(norm("app.preview.test:+80"), None);
        assert_eq!(norm("app.preview.test:80:80"), None);
    }

    #[test]
    fn one_trailing_dot_is_stripped() {
        assert_eq!(
            norm("app.preview.test.").as_deref(),
            Some("app.preview.test")
        );
        assert_eq!(
            norm("app.preview.test.:8443").as_deref(),
            Some("app.preview.test")
        );
        assert_eq!(norm("app.preview.test.."), None);
    }

    #[test]
    fn ipv6_literals_keep_brackets() {
        assert_eq!(norm("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(norm("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(norm("[FE80::1]").as_deref(), Some("[fe80::1]"));
        assert_eq!(norm("[::1"), None);
        assert_eq!(norm("[::1]x"), None);
        assert_eq!(norm("[nothex]"), None);
        assert_eq!(norm("::1"), None);
    }

    #[test]
    fn empty_and_garbage_are_rejected() {
        for bad in [
            "",
            ".",
            ":8443",
            "a b.test",
            " app.test",
            "app.test\r\nx: y",
            "app\0.test",
            "app\t.test",
            "user@app.test",
            "app..test",
            ".app.test",
            "app/test",
            "app.tést",
        ] {
            assert_eq!(norm(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn overlong_names_are_rejected() {
        let label = "a".repeat(64);
        assert_eq!(norm(&format!("{label}.test")), None);
        let long = vec!["abc"; 70].join(".");
        assert_eq!(norm(&long), None);
    }

    #[test]
    fn host_comes_from_authority_then_header() {
        let h2 = Request::get("https://App.Preview.Test:8443/x")
            .header(HOST, "ignored.test")
            .body(())
            .expect("request");
        let host = request_host(&h2).expect("host");
        assert_eq!(host.raw, "App.Preview.Test:8443");
        assert_eq!(host.name, "app.preview.test");

        let h1 = Request::get("/x")
            .header(HOST, "app.preview.test.")
            .body(())
            .expect("request");
        assert_eq!(request_host(&h1).expect("host").name, "app.preview.test");

        let none = Request::get("/x").body(()).expect("request");
        assert_eq!(request_host(&none), None);

        let user_info = Request::get("http://user@app.preview.test/")
            .body(())
            .expect("request");
        assert_eq!(request_host(&user_info), None);
    }

    #[test]
    fn within_domain() {
        assert!(!is_within("é.preview.test", "preview.tést"));
        assert!(!is_within("ab", "preview.test"));
        assert!(is_within("preview.test", "preview.test"));
        assert!(is_within("x.preview.test", "preview.test"));
        assert!(is_within("a.b.preview.test", "PREVIEW.test"));
        assert!(!is_within("xpreview.test", "preview.test"));
        assert!(!is_within("preview.test.evil.com", "preview.test"));
        assert!(!is_within("evil.com", "preview.test"));
        assert!(!is_within(".preview.test", "preview.test"));
        assert!(!is_within("", "preview.test"));
    }
}
