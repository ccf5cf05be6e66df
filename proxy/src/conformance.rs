//! The requests RFC 9112, RFC 9110 and RFC 9113 say an intermediary must not
//! forward, judged on the request hyper parsed, before it is routed. hyper's
//! parsers already refuse most malformed syntax (request line, field names
//! and values, `Content-Length`, obs-fold); `framing` reads the raw HTTP/1.1
//! bytes for what a parsed request no longer shows. Each refusal names its
//! rule, so `docs/HTTP-CONFORMANCE.md` and the tests can point at it. This
//! module must not route, forward or render.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, Method, Request, StatusCode, Uri, Version};

use crate::host::{normalize_host, RequestHost};
use crate::max_forwards;

/// Why a request is refused before it reaches any upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// RFC 9112 3.2: an HTTP/1.1 request without `Host` (an HTTP/1.0 or
    /// HTTP/2 one without any host either).
    #[error("the request names no host")]
    MissingHost,
    /// RFC 9112 3.2: more than one `Host` field line.
    #[error("the request has more than one Host field")]
    DuplicateHost,
    /// RFC 9112 3.2: a `Host` (or authority) that is not a host name.
    #[error("the request's host is not a valid host name")]
    InvalidHost,
    /// The plain-HTTP listener redirects only hosts under its domain.
    #[error("the host is not served here")]
    ForeignHost,
    /// RFC 9113 8.3.1: `:authority` and `Host` differ.
    #[error(":authority and Host name different hosts")]
    AuthorityMismatch,
    /// RFC 9112 3.2.3 and 3.2.4: authority-form without CONNECT, or
    /// asterisk-form without OPTIONS.
    #[error("{0}")]
    TargetForm(&'static str),
    /// RFC 9112 3 and RFC 3986: octets above 0x7F in the request target,
    /// which backends decode as UTF-8 or as Latin-1.
    #[error("the request target holds octets outside US-ASCII")]
    TargetOctets,
    /// RFC 9112 3.2: a fragment (`#`) is not part of a request target.
    #[error("the request target holds a fragment (#)")]
    TargetFragment,
    /// RFC 9112 3 / RFC 9110 4.2: absolute-form with a scheme other than
    /// `http` or `https`.
    #[error("the request target's scheme is not http or https")]
    TargetScheme,
    /// RFC 9112 3: longer than `max_uri_bytes` (414).
    #[error("the request target of {len} bytes exceeds the limit of {max}")]
    TargetTooLong {
        /// Bytes in the request target.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// RFC 9110 9.3.6: previewd is no tunnel (501).
    #[error("CONNECT is not served")]
    Connect,
    /// RFC 9112 6.1 and 6.3: `Content-Length` together with
    /// `Transfer-Encoding` (found by `framing`; the connection is closed).
    #[error("content-length together with transfer-encoding")]
    LengthAndTransferEncoding,
    /// A `Content-Length` or `Transfer-Encoding` line longer than the
    /// framing scanner reads (1 KiB): its value cannot be checked twice.
    #[error("a Content-Length or Transfer-Encoding line longer than 1 KiB")]
    FramingFieldTooLong,
    /// RFC 9110 8.6: more than one `Content-Length` field line.
    #[error("the request has more than one Content-Length field")]
    DuplicateContentLength,
    /// RFC 9112 6.1: chunked applied twice.
    #[error("the chunked transfer coding is applied more than once")]
    ChunkedTwice,
    /// RFC 9110 5.6.1 would skip an empty list element; in the field that
    /// frames the body, parsers disagree on them, so previewd refuses.
    #[error("an empty element in Transfer-Encoding")]
    EmptyTransferCoding,
    /// RFC 9112 6.1: a transfer coding previewd does not decode (501).
    #[error("a transfer coding other than chunked")]
    UnknownTransferCoding,
    /// RFC 9113 8.2.1: an HTTP/2 field value with leading or trailing
    /// whitespace.
    #[error("an HTTP/2 field value starts or ends with whitespace")]
    FieldWhitespace,
    /// A field name with `_` that a CGI-style backend reads as another
    /// field of the request, or as one previewd sets (`Content_Length`,
    /// `X_Forwarded_For`): two readings of one request.
    #[error("a field name with an underscore aliases another field")]
    UnderscoreAlias,
    /// RFC 9110 7.6.2: a `Max-Forwards` on OPTIONS or TRACE that is not one
    /// decimal number.
    #[error("Max-Forwards is not a single decimal number")]
    InvalidMaxForwards,
}

impl Refusal {
    /// The status the refusal is answered with. No `_` arm: a new refusal
    /// must decide here.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refusal::TargetTooLong { .. } => StatusCode::URI_TOO_LONG,
            Refusal::Connect | Refusal::UnknownTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Refusal::MissingHost
            | Refusal::DuplicateHost
            | Refusal::InvalidHost
            | Refusal::ForeignHost
            | Refusal::AuthorityMismatch
            | Refusal::TargetForm(_)
            | Refusal::TargetOctets
            | Refusal::TargetFragment
            | Refusal::TargetScheme
            | Refusal::LengthAndTransferEncoding
            | Refusal::FramingFieldTooLong
            | Refusal::DuplicateContentLength
            | Refusal::ChunkedTwice
            | Refusal::EmptyTransferCoding
            | Refusal::FieldWhitespace
            | Refusal::UnderscoreAlias
            | Refusal::InvalidMaxForwards => StatusCode::BAD_REQUEST,
        }
    }
}

/// Judges `req` and returns the host it is addressed to, or why it must
/// not be forwarded. `max_uri_bytes` bounds the request target.
pub(crate) fn admit<B>(req: &Request<B>, max_uri_bytes: usize) -> Result<RequestHost, Refusal> {
    check_target(req.uri(), req.method(), max_uri_bytes)?;
    if req.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let host = host(req)?;
    let headers = req.headers();
    if req.version() <= Version::HTTP_11 {
        check_transfer_coding(headers)?;
    }
    if headers.get_all(CONTENT_LENGTH).iter().nth(1).is_some() {
        return Err(Refusal::DuplicateContentLength);
    }
    if req.version() == Version::HTTP_2 {
        check_h2_values(headers)?;
    }
    check_underscores(headers)?;
    max_forwards::check(req)?;
    Ok(host)
}

fn check_target(uri: &Uri, method: &Method, max: usize) -> Result<(), Refusal> {
    let path_and_query = uri.path_and_query().map_or("", |pq| pq.as_str());
    let len = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + path_and_query.len();
    if len > max {
        return Err(Refusal::TargetTooLong { len, max });
    }
    if !path_and_query.is_ascii() {
        return Err(Refusal::TargetOctets);
    }
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
            return Err(Refusal::TargetScheme);
        }
    }
    // The `http` crate reads `name:port` without a scheme as authority-form.
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if authority_form && method != Method::CONNECT {
        return Err(Refusal::TargetForm(
            "authority-form is only for CONNECT (RFC 9112 3.2.3)",
        ));
    }
    if uri.path() == "*" && method != Method::OPTIONS {
        return Err(Refusal::TargetForm(
            "asterisk-form is only for OPTIONS (RFC 9112 3.2.4)",
        ));
    }
    Ok(())
}

/// The one host of the request: `:authority` or an absolute-form target's
/// authority wins over `Host` (RFC 9112 3.2.2), but `Host` must still be
/// present on HTTP/1.1, single and valid (RFC 9112 3.2), and on HTTP/2 it
/// must name the same host as `:authority` (RFC 9113 8.3.1).
fn host<B>(req: &Request<B>) -> Result<RequestHost, Refusal> {
    let mut fields = req.headers().get_all(HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    let field = match field {
        Some(value) => Some(value.to_str().map_err(|_| Refusal::InvalidHost)?),
        None => None,
    };
    let field_host = field.map(parse_host).transpose()?;
    let authority = req.uri().authority().map(|a| a.as_str());
    match (authority, field_host) {
        (Some(authority), field_host) => {
            if field_host.is_none() && req.version() == Version::HTTP_11 {
                return Err(Refusal::MissingHost);
            }
            let target = parse_host(authority)?;
            let scheme = req.uri().scheme_str().unwrap_or("https");
            let mismatch = req.version() == Version::HTTP_2
                && field.is_some_and(|field| !same_authority(authority, field, scheme));
            if mismatch {
                return Err(Refusal::AuthorityMismatch);
            }
            Ok(target)
        }
        (None, Some(field_host)) => Ok(field_host),
        (None, None) => Err(Refusal::MissingHost),
    }
}

/// RFC 9113 8.3.1: `:authority` and `Host` name the same entity once
/// normalized: host names compared without case, a missing port read as
/// the scheme's default.
fn same_authority(authority: &str, host: &str, scheme: &str) -> bool {
    let default = if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    };
    let split = |raw: &str| {
        let name = normalize_host(raw)?;
        // An IPv6 literal's own colons are inside its brackets.
        let port = match raw.strip_prefix('[') {
            Some(literal) => literal
                .split_once(']')
                .and_then(|(_, rest)| rest.strip_prefix(':')),
            None => raw.split_once(':').map(|(_, port)| port),
        };
        let port = match port {
            Some(port) => port.parse::<u16>().ok()?,
            None => default,
        };
        Some((name, port))
    };
    matches!((split(authority), split(host)), (Some(a), Some(b)) if a == b)
}

fn parse_host(raw: &str) -> Result<RequestHost, Refusal> {
    RequestHost::parse(raw).ok_or(Refusal::InvalidHost)
}

/// hyper refuses a `Transfer-Encoding` whose last coding is not `chunked`
/// (RFC 9112 6.3: 400 and close). Left: `chunked` twice, and codings before
/// it, which previewd does not decode and could not relay faithfully (the
/// upstream hop is framed anew).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut codings = 0usize;
    let mut chunked = 0usize;
    for value in headers.get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                return Err(Refusal::EmptyTransferCoding);
            }
            codings += 1;
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            }
        }
    }
    match (codings, chunked) {
        (0, _) | (1, 1) => Ok(()),
        (_, 2..) => Err(Refusal::ChunkedTwice),
        _ => Err(Refusal::UnknownTransferCoding),
    }
}

/// RFC 9113 8.2.1: no leading or trailing SP or HTAB in a field value. (NUL,
/// CR and LF never get this far: the `http` crate refuses them.)
fn check_h2_values(headers: &HeaderMap) -> Result<(), Refusal> {
    let padded = |bytes: &[u8]| {
        matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t'))
    };
    if headers.values().any(|value| padded(value.as_bytes())) {
        return Err(Refusal::FieldWhitespace);
    }
    Ok(())
}

/// Fields previewd sets or frames by, in the form CGI and WSGI give every
/// field (`_` and `-` alike).
const ALIASED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "host",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// A name with `_` is refused when it reads as a field previewd relies on or
/// as another field of the same request once `_` is taken for `-`, which is
/// how CGI, WSGI and PHP name fields: a client could otherwise smuggle a
/// second `Content-Length` or a forged `X-Forwarded-For` past us.
fn check_underscores(headers: &HeaderMap) -> Result<(), Refusal> {
    for name in headers.keys() {
        if !name.as_str().contains('_') {
            continue;
        }
        let hyphened = name.as_str().replace('_', "-");
        let shadows = ALIASED.contains(&hyphened.as_str())
            || HeaderName::from_bytes(hyphened.as_bytes())
                .is_ok_and(|other| headers.contains_key(other));
        if shadows {
            return Err(Refusal::UnderscoreAlias);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        method: &str,
        target: &str,
        version: Version,
        fields: &[(&str, &str)],
    ) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn h1(fields: &[(&str, &str)]) -> Request<()> {
        let mut all = vec![("host", "app.test")];
        all.extend_from_slice(fields);
        request("POST", "/", Version::HTTP_11, &all)
    }

    fn refusal(req: &Request<()>) -> Option<Refusal> {
        admit(req, 8192).err()
    }

    #[test]
    fn host_rules_of_http11() {
        let ok = request("GET", "/", Version::HTTP_11, &[("host", "App.Test:8443")]);
        assert_eq!(admit(&ok, 8192).expect("admitted").name, "app.test");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, Refusal);
        let cases: [Case; 5] = [
            (&[], "/", Refusal::MissingHost),
            (&[], "https://app.test/", Refusal::MissingHost),
            (
                &[("host", "a.test"), ("host", "a.test")],
                "/",
                Refusal::DuplicateHost,
            ),
            (&[("host", "a.test, b.test")], "/", Refusal::InvalidHost),
            (
                &[("host", "a b")],
                "https://app.test/",
                Refusal::InvalidHost,
            ),
        ];
        for (fields, target, want) in cases {
            let req = request("GET", target, Version::HTTP_11, fields);
            assert_eq!(refusal(&req), Some(want), "{fields:?} {target}");
        }
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let req = request(
            "GET",
            "https://app.test/x",
            Version::HTTP_11,
            &[("host", "other.test")],
        );
        assert_eq!(admit(&req, 8192).expect("admitted").name, "app.test");
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let h2 =
            |fields: &[(&str, &str)]| request("GET", "https://app.test/", Version::HTTP_2, fields);
        assert!(admit(&h2(&[]), 8192).is_ok());
        assert!(admit(&h2(&[("host", "APP.test")]), 8192).is_ok());
        // The same entity, once the default port is read in.
        assert!(admit(&h2(&[("host", "app.test:443")]), 8192).is_ok());
        assert_eq!(
            refusal(&h2(&[("host", "app.test:8443")])),
            Some(Refusal::AuthorityMismatch)
        );
        assert!(same_authority("[::1]", "[0:0::1]:443", "https"));
        assert!(!same_authority("[::1]:80", "[::1]", "https"));
        assert_eq!(
            refusal(&h2(&[("host", "other.test")])),
            Some(Refusal::AuthorityMismatch)
        );
        let host_only = request("GET", "/", Version::HTTP_2, &[("host", "app.test")]);
        assert_eq!(admit(&host_only, 8192).expect("admitted").name, "app.test");
        assert_eq!(
            refusal(&request("GET", "/", Version::HTTP_2, &[])),
            Some(Refusal::MissingHost)
        );
    }

    #[test]
    fn target_forms_follow_their_methods() {
        let host = [("host", "app.test")];
        let v11 = Version::HTTP_11;
        assert!(admit(&request("OPTIONS", "*", v11, &host), 8192).is_ok());
        assert!(matches!(
            refusal(&request("GET", "*", v11, &host)),
            Some(Refusal::TargetForm(_))
        ));
        assert!(matches!(
            refusal(&request("GET", "app.test:443", v11, &host)),
            Some(Refusal::TargetForm(_))
        ));
        assert_eq!(
            refusal(&request("CONNECT", "app.test:443", v11, &host)),
            Some(Refusal::Connect)
        );
        assert_eq!(
            refusal(&request("GET", "ftp://app.test/", v11, &host)),
            Some(Refusal::TargetScheme)
        );
        let long = format!("/{}", "a".repeat(40));
        assert_eq!(
            admit(&request("GET", &long, v11, &host), 40).err(),
            Some(Refusal::TargetTooLong { len: 41, max: 40 })
        );
    }

    #[test]
    fn transfer_codings() {
        assert!(admit(&h1(&[("transfer-encoding", "Chunked")]), 8192).is_ok());
        let cases = [
            (
                &[("transfer-encoding", "chunked, chunked")][..],
                Refusal::ChunkedTwice,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ][..],
                Refusal::ChunkedTwice,
            ),
            (
                &[("transfer-encoding", "gzip, chunked")][..],
                Refusal::UnknownTransferCoding,
            ),
            (
                &[("transfer-encoding", "xchunked")][..],
                Refusal::UnknownTransferCoding,
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(refusal(&h1(fields)), Some(want), "{fields:?}");
            assert_eq!(
                want.status().as_u16() / 100,
                if want == Refusal::ChunkedTwice { 4 } else { 5 }
            );
        }
    }

    #[test]
    fn duplicate_content_length_is_refused_even_when_equal() {
        let req = h1(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(refusal(&req), Some(Refusal::DuplicateContentLength));
    }

    #[test]
    fn http2_values_may_not_be_padded() {
        for value in [" a", "a ", "\ta", "a\t"] {
            let req = request("GET", "https://app.test/", Version::HTTP_2, &[("x", value)]);
            assert_eq!(refusal(&req), Some(Refusal::FieldWhitespace), "{value:?}");
        }
        let inner = request("GET", "https://app.test/", Version::HTTP_2, &[("x", "a b")]);
        assert!(admit(&inner, 8192).is_ok());
    }

    #[test]
    fn underscores_that_alias_a_field_are_refused() {
        for fields in [
            &[("content_length", "5")][..],
            &[("Transfer_Encoding", "chunked")][..],
            &[("x_forwarded_for", "6.6.6.6")][..],
            &[("x_user", "a"), ("x-user", "b")][..],
        ] {
            assert_eq!(
                refusal(&h1(fields)),
                Some(Refusal::UnderscoreAlias),
                "{fields:?}"
            );
        }
        assert!(admit(&h1(&[("x_user", "a")]), 8192).is_ok());
    }

    #[test]
    fn non_ascii_targets_are_refused() {
        let host = [("host", "app.test")];
        let req = Request::builder()
            .uri(Uri::from_maybe_shared(bytes::Bytes::from_static(b"/\xc3\xa9")).expect("uri"))
            .header("host", "app.test")
            .body(())
            .expect("request");
        assert_eq!(refusal(&req), Some(Refusal::TargetOctets));
        assert!(admit(&request("GET", "/a?b={|}^`", Version::HTTP_11, &host), 8192).is_ok());
    }
}
