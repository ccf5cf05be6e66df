//! Request smuggling shapes, sent as raw bytes over TLS: each is refused
//! with 400 and never reaches the upstream (which counts every connection
//! it accepts). Also: forwarding headers a client sends are replaced, and
//! HTTP/1.0 and absolute-form targets behave.

mod support;

use std::sync::atomic::Ordering;

use http::StatusCode;

use support::*;

/// Each shape is a POST to `APP` whose framing headers are `framing`
/// followed by `body`, and the status it gets. "hyper" means hyper's parser
/// answers 400 itself; "conformance" is `conformance::admit` (501 for a
/// transfer coding previewd does not decode); "framing scanner" is
/// `framing`.
const SHAPES: &[(&str, &str, &str, u16)] = &[
    // Refused by framing scanner.
    (
        "CL then TE",
        "content-length: 4\r\ntransfer-encoding: chunked\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by framing scanner.
    (
        "TE then CL",
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by hyper.
    (
        "two differing CL",
        "content-length: 3\r\ncontent-length: 4\r\n",
        "abcd",
        400,
    ),
    // Refused by hyper.
    ("CL list", "content-length: 3, 4\r\n", "abcd", 400),
    // Refused by hyper.
    ("CL with plus", "content-length: +3\r\n", "abc", 400),
    // Refused by hyper.
    ("CL negative", "content-length: -1\r\n", "abc", 400),
    // Refused by hyper.
    (
        "TE xchunked",
        "transfer-encoding: xchunked\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by hyper.
    (
        "TE chunked, identity",
        "transfer-encoding: chunked, identity\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by conformance.
    (
        "TE gzip, chunked",
        "transfer-encoding: gzip, chunked\r\n",
        "0\r\n\r\n",
        501,
    ),
    // Refused by conformance.
    (
        "two TE fields",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by framing scanner.
    (
        "TE with odd spaces and CL",
        "transfer-encoding:    chunked   \r\ncontent-length: 4\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by framing scanner.
    (
        "TE after a tab and CL",
        "transfer-encoding:\tchunked\r\ncontent-length: 4\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by hyper.
    (
        "TE with a vertical tab",
        "transfer-encoding: \x0bchunked\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by hyper.
    (
        "space before the colon",
        "transfer-encoding : chunked\r\ncontent-length: 4\r\n",
        "0\r\n\r\n",
        400,
    ),
    // Refused by hyper.
    (
        "obs-fold",
        "content-length: 4\r\nx-folded: a\r\n b\r\n",
        "abcd",
        400,
    ),
    // Refused by hyper.
    (
        "obs-fold of TE",
        "transfer-encoding: identity\r\n chunked\r\ncontent-length: 4\r\n",
        "0\r\n\r\n",
        400,
    ),
];

#[tokio::test]
async fn smuggling_shapes_get_400_and_never_reach_the_upstream() {
    let (upstream, accepted) = counting_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    for (name, framing, body, status) in SHAPES {
        let request = format!(
            "POST /smuggle HTTP/1.1\r\nhost: {APP}\r\n{framing}connection: close\r\n\r\n{body}"
        );
        let answer = raw_h1(&proxy, request.as_bytes()).await;
        assert_eq!(raw_status(&answer), *status, "{name}: {answer}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "{name} reached the upstream"
        );
    }
    // HTTP/1.0 cannot carry Transfer-Encoding at all.
    let answer = raw_h1(
        &proxy,
        format!("POST / HTTP/1.0\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn plain_chunked_and_sized_bodies_still_pass() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let chunked = raw_h1(
        &proxy,
        format!(
            "POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&chunked), 200, "{chunked}");
    assert!(chunked.contains("body=hello\n"), "{chunked}");

    // Pipelined: a sized request, then a chunked one whose body contains
    // header-like text, on one connection.
    let pipelined = raw_h1(
        &proxy,
        format!(
            "POST /one HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\n\r\nfirst\
             POST /two HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n2f\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\
             \r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(pipelined.matches("HTTP/1.1 200 ").count(), 2, "{pipelined}");
    assert!(pipelined.contains("uri=/one\n"), "{pipelined}");
    assert!(pipelined.contains("uri=/two\n"), "{pipelined}");
}

#[tokio::test]
async fn client_forwarding_headers_are_replaced() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(
        &proxy,
        format!(
            "GET / HTTP/1.1\r\nhost: {APP}\r\nx-forwarded-for: 6.6.6.6\r\n\
             x-forwarded-host: evil.example\r\nx-forwarded-proto: http\r\n\
             forwarded: for=6.6.6.6;host=evil.example\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(!answer.contains("6.6.6.6"), "{answer}");
    assert!(!answer.contains("evil.example"), "{answer}");
    assert!(answer.contains("xff=127.0.0.1\n"), "{answer}");
    assert!(answer.contains(&format!("xfh={APP}\n")), "{answer}");
    assert!(answer.contains("xfp=https\n"), "{answer}");
    assert!(
        answer.contains(&format!("forwarded=for=127.0.0.1;proto=https;host={APP}\n")),
        "{answer}"
    );
}

#[tokio::test]
async fn http10_requests_are_forwarded_and_answered_in_http10() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(
        &proxy,
        format!("GET /old HTTP/1.0\r\nhost: {APP}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert!(answer.contains("uri=/old\n"), "{answer}");

    // Without a Host there is nothing to route.
    let answer = raw_h1(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        raw_status(&answer),
        StatusCode::BAD_REQUEST.as_u16(),
        "{answer}"
    );
}

#[tokio::test]
async fn absolute_form_targets_route_by_their_authority() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(
        &proxy,
        format!(
            "GET https://{APP}/abs?q=1 HTTP/1.1\r\nhost: ignored.preview.test\r\n\
             connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.contains("uri=/abs?q=1\n"), "{answer}");
    assert!(answer.contains(&format!("host={APP}\n")), "{answer}");

    // An absolute-form target for another host than the connection's SNI.
    let answer = raw_h1(
        &proxy,
        format!(
            "GET https://other.preview.test/ HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 421, "{answer}");
}
