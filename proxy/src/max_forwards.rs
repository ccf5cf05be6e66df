//! `Max-Forwards` (RFC 9110 7.6.2) on OPTIONS and TRACE: an intermediary
//! decrements it, and at zero answers as the final recipient instead of
//! forwarding. Other methods carry the field through untouched, as the RFC
//! lets a recipient ignore it there. It must not route or forward.

use bytes::{BufMut, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, MAX_FORWARDS, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::conformance::Refusal;
use crate::pages::{self, ProxyBody};

/// Fields a TRACE reflection leaves out: RFC 9110 9.3.8 asks a server to
/// exclude what is likely to carry secrets.
const NOT_REFLECTED: [http::HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

fn applies(method: &Method) -> bool {
    method == Method::OPTIONS || method == Method::TRACE
}

/// The field's value on an OPTIONS or TRACE request, `None` when absent or
/// when the method ignores it.
fn value<B>(req: &Request<B>) -> Result<Option<u64>, Refusal> {
    if !applies(req.method()) {
        return Ok(None);
    }
    count(req.headers())
}

/// `Max-Forwards` as one number; `None` when absent.
fn count(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let mut fields = headers.get_all(MAX_FORWARDS).iter();
    let Some(field) = fields.next() else {
        return Ok(None);
    };
    if fields.next().is_some() {
        return Err(Refusal::InvalidMaxForwards);
    }
    let digits = field.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::InvalidMaxForwards);
    }
    // Any run of digits is valid; one beyond u64 is as good as u64::MAX.
    Ok(Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(u64::MAX),
    ))
}

/// Refuses an OPTIONS or TRACE whose `Max-Forwards` is not one number.
pub(crate) fn check<B>(req: &Request<B>) -> Result<(), Refusal> {
    value(req).map(drop)
}

/// The answer previewd gives as the final recipient of an OPTIONS or TRACE
/// with `Max-Forwards: 0`; `None` when the request is to be forwarded.
/// OPTIONS: 200 with no content (nothing about the preview is known here).
/// TRACE: 200 reflecting the request head as `message/http`, without the
/// fields in [`NOT_REFLECTED`].
pub(crate) fn final_answer<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    if value(req).ok()?? != 0 {
        return None;
    }
    if req.method() == Method::OPTIONS {
        return Some(Response::new(pages::empty()));
    }
    let mut response = Response::new(pages::full(reflect(req)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("message/http"));
    *response.status_mut() = StatusCode::OK;
    Some(response)
}

/// Counts this hop: the forwarded request carries one less. (`check` has
/// refused a value that is not one number.)
pub(crate) fn decrement(method: &Method, headers: &mut HeaderMap) {
    if !applies(method) {
        return;
    }
    if let Ok(Some(left)) = count(headers) {
        headers.insert(MAX_FORWARDS, HeaderValue::from(left.saturating_sub(1)));
    }
}

fn reflect<B>(req: &Request<B>) -> bytes::Bytes {
    let version = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let mut out = BytesMut::new();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    out.put_slice(format!("{} {target} {version}\r\n", req.method()).as_bytes());
    for (name, value) in req.headers() {
        if NOT_REFLECTED.contains(name) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, fields: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/p?q");
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_options_and_trace_are_judged() {
        assert_eq!(value(&request("GET", &[("max-forwards", "x")])), Ok(None));
        assert_eq!(
            value(&request("TRACE", &[("max-forwards", "07")])),
            Ok(Some(7))
        );
        let huge = "9".repeat(40);
        assert_eq!(
            value(&request("OPTIONS", &[("max-forwards", huge.as_str())])),
            Ok(Some(u64::MAX))
        );
        for bad in [
            &[("max-forwards", "")][..],
            &[("max-forwards", "-1")],
            &[("max-forwards", "1, 2")],
            &[("max-forwards", "1"), ("max-forwards", "1")],
        ] {
            assert_eq!(
                value(&request("TRACE", bad)),
                Err(Refusal::InvalidMaxForwards),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_is_answered_here_and_more_is_decremented() {
        assert!(final_answer(&request("OPTIONS", &[("max-forwards", "1")])).is_none());
        assert!(final_answer(&request("GET", &[("max-forwards", "0")])).is_none());
        let options = final_answer(&request("OPTIONS", &[("max-forwards", "0")])).expect("answer");
        assert_eq!(options.status(), StatusCode::OK);

        let mut headers = HeaderMap::new();
        headers.insert(MAX_FORWARDS, HeaderValue::from_static("3"));
        decrement(&Method::TRACE, &mut headers);
        assert_eq!(headers[MAX_FORWARDS], "2");
        decrement(&Method::GET, &mut headers);
        assert_eq!(headers[MAX_FORWARDS], "2");
    }

    #[test]
    fn trace_reflection_leaves_secrets_out() {
        let req = request(
            "TRACE",
            &[
                ("max-forwards", "0"),
                ("x-seen", "yes"),
                ("cookie", "session=secret"),
                ("authorization", "Bearer secret"),
            ],
        );
        let text = reflect(&req);
        let text = std::str::from_utf8(&text).expect("utf-8");
        assert!(text.starts_with("TRACE /p?q HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("x-seen: yes\r\n"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
