//! RFC 9112 and RFC 9110 over HTTP/1.1, one test per row of
//! docs/HTTP-CONFORMANCE.md: raw bytes over TLS to a proxy in front of an
//! upstream that records every byte it gets. A refused request is answered
//! with the status the row names, its connection is closed, and the
//! upstream gets nothing at all (no connection, no byte); a body the client
//! framed badly is the client's fault and no complete request reaches the
//! upstream; an accepted request reaches it as the row says.

mod support;

use std::time::Duration;

use previewd_proxy::Limits;

use support::*;

/// A request head for `APP` with `fields` after `Host`, ending the head.
fn get(fields: &str) -> String {
    format!("GET / HTTP/1.1\r\nhost: {APP}\r\n{fields}\r\n")
}

/// A chunked POST for `APP` with `body` as its raw chunked body.
fn chunked(body: &str) -> String {
    format!("POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n{body}")
}

/// `request` is refused with `status` before any byte reaches the upstream,
/// and the connection is closed after the answer.
async fn refused(request: impl AsRef<[u8]>, status: u16) -> String {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    // raw_h1 reads until the proxy closes the connection.
    let answer = raw_h1(&proxy, request.as_ref()).await;
    assert_eq!(raw_status(&answer), status, "{answer}");
    assert!(
        received.nothing(),
        "the upstream got {:?}",
        received.requests.lock().expect("requests")
    );
    answer
}

/// `request`'s body is malformed: the client's fault (`status`), the
/// connection closed, and no complete request at the upstream.
async fn refused_body(request: impl AsRef<[u8]>, status: u16, limits: Limits) -> String {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let answer = raw_h1(&proxy, request.as_ref()).await;
    assert_eq!(raw_status(&answer), status, "{answer}");
    let requests = received.requests.lock().expect("requests");
    assert!(requests.is_empty(), "the upstream got {requests:?}");
    answer
}

/// `request` (ending in `connection: close`) is forwarded; returns the
/// answer and the request exactly as the upstream got it.
async fn forwarded(request: impl AsRef<[u8]>) -> (String, String) {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(&proxy, request.as_ref()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    (answer, received.only_request())
}

/// The value of `name` in a raw request head (first occurrence).
fn field<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

macro_rules! refuses {
    ($($(#[$meta:meta])* $name:ident: $status:literal <= $request:expr;)*) => {
        $(
            $(#[$meta])*
            #[tokio::test]
            async fn $name() {
                refused($request, $status).await;
            }
        )*
    };
}

// RFC 9112 2.2: message parsing.
refuses! {
    /// A bare CR in a field value is invalid (MUST reject or replace).
    bare_cr_in_a_field_value_is_400: 400 <= get("x-a: a\rb\r\n");
    /// A bare CR as a line end.
    bare_cr_line_ends_are_400: 400 <= format!("GET / HTTP/1.1\rhost: {APP}\r\r");
    /// Whitespace between the start line and the first field (MUST reject
    /// or ignore the line).
    whitespace_before_the_first_field_is_400: 400 <= format!("GET / HTTP/1.1\r\n x: y\r\nhost: {APP}\r\n\r\n");
    /// Bytes that are no HTTP at all.
    binary_garbage_is_400: 400 <= &b"\x16\x03\x01\xff\xfe\x00\r\n\r\n"[..];
}

// RFC 9112 2.3: HTTP version.
refuses! {
    /// hyper reads HTTP/1.0 and HTTP/1.1 only.
    http_version_2_0_in_a_request_line_is_400: 400 <= format!("GET / HTTP/2.0\r\nhost: {APP}\r\n\r\n");
    /// HTTP-name is case-sensitive.
    lowercase_http_version_is_400: 400 <= format!("GET / http/1.1\r\nhost: {APP}\r\n\r\n");
    /// One digit each side of the dot.
    malformed_http_version_is_400: 400 <= format!("GET / HTTP/01.1\r\nhost: {APP}\r\n\r\n");
}

// RFC 9112 3: request line.
refuses! {
    /// Exactly one SP between the parts (SHOULD 400, no autocorrection).
    two_spaces_in_the_request_line_are_400: 400 <= format!("GET  / HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// A tab is not SP.
    a_tab_in_the_request_line_is_400: 400 <= format!("GET\t/ HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// An unencoded space splits the target.
    a_space_in_the_target_is_400: 400 <= format!("GET /a b HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// A fragment is no part of a request target; the `http` crate would
    /// silently drop it, so the framing scanner refuses it.
    a_fragment_in_the_target_is_400: 400 <= format!("GET /a#b HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// Octets above 0x7F: UTF-8 to one backend, Latin-1 to another.
    non_ascii_octets_in_the_target_are_400: 400 <= [b"GET /\xc3\xa9 HTTP/1.1\r\nhost: ".as_slice(), APP.as_bytes(), b"\r\n\r\n"].concat();
    /// A NUL in the target.
    nul_in_the_target_is_400: 400 <= [b"GET /a\0b HTTP/1.1\r\nhost: ".as_slice(), APP.as_bytes(), b"\r\n\r\n"].concat();
    /// However far into a long target the `#` is.
    a_fragment_after_the_first_kib_of_the_target_is_400: 400 <= format!("GET /{}#frag HTTP/1.1\r\nhost: {APP}\r\n\r\n", "a".repeat(3000));
    /// Longer than `max_uri_bytes` (MUST 414).
    an_overlong_target_is_414: 414 <= format!("GET /{} HTTP/1.1\r\nhost: {APP}\r\n\r\n", "a".repeat(9000));
}

// RFC 9112 3.2: request target forms.
refuses! {
    /// authority-form belongs to CONNECT only.
    authority_form_without_connect_is_400: 400 <= format!("GET {APP}:443 HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// asterisk-form belongs to OPTIONS only.
    asterisk_form_without_options_is_400: 400 <= format!("GET * HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// previewd is no tunnel (RFC 9110 9.3.6): 501, and never forwarded.
    connect_is_501: 501 <= format!("CONNECT {APP}:443 HTTP/1.1\r\nhost: {APP}:443\r\n\r\n");
    /// absolute-form names a scheme previewd does not serve.
    absolute_form_with_another_scheme_is_400: 400 <= format!("GET ftp://{APP}/ HTTP/1.1\r\nhost: {APP}\r\n\r\n");
    /// userinfo is deprecated and invalid in an http(s) authority.
    absolute_form_with_userinfo_is_400: 400 <= format!("GET https://user@{APP}/ HTTP/1.1\r\nhost: {APP}\r\n\r\n");
}

// RFC 9112 3.2: Host. Each is a MUST 400.
refuses! {
    http11_without_host_is_400: 400 <= "GET / HTTP/1.1\r\n\r\n";
    /// Host is required even when the target is in absolute-form.
    http11_absolute_form_without_host_is_400: 400 <= format!("GET https://{APP}/ HTTP/1.1\r\n\r\n");
    /// Two Host lines, even with one value.
    two_host_lines_are_400: 400 <= format!("GET / HTTP/1.1\r\nhost: {APP}\r\nhost: {APP}\r\n\r\n");
    two_host_values_are_400: 400 <= format!("GET / HTTP/1.1\r\nhost: {APP}, other.preview.test\r\n\r\n");
    an_empty_host_is_400: 400 <= "GET / HTTP/1.1\r\nhost:\r\n\r\n";
    a_host_with_a_path_is_400: 400 <= format!("GET / HTTP/1.1\r\nhost: {APP}/x\r\n\r\n");
    a_host_with_userinfo_is_400: 400 <= format!("GET / HTTP/1.1\r\nhost: user@{APP}\r\n\r\n");
    /// An invalid Host is refused even when absolute-form overrides it.
    an_invalid_host_under_absolute_form_is_400: 400 <= format!("GET https://{APP}/ HTTP/1.1\r\nhost: a b\r\n\r\n");
    /// HTTP/1.0 may omit Host, but then nothing names a preview.
    http10_without_any_host_is_400: 400 <= "GET / HTTP/1.0\r\n\r\n";
}

// RFC 9112 5 and RFC 9110 5.5: field syntax and values.
refuses! {
    /// MUST 400.
    whitespace_before_a_colon_is_400: 400 <= get("x-a : y\r\n");
    /// MUST 400 or replace with SP; hyper refuses.
    obs_fold_is_400: 400 <= get("x-a: a\r\n b\r\n");
    /// field-name = token.
    a_field_name_that_is_no_token_is_400: 400 <= get("x[1]: y\r\n");
    a_field_line_without_a_colon_is_400: 400 <= get("x-no-colon\r\n");
    an_empty_field_name_is_400: 400 <= get(": y\r\n");
    /// MUST reject or replace NUL.
    nul_in_a_field_value_is_400: 400 <= [get("").trim_end().as_bytes(), b"\r\nx-a: a\0b\r\n\r\n"].concat();
    /// Other controls are invalid too (RFC 9110 5.5); hyper refuses them.
    a_control_character_in_a_field_value_is_400: 400 <= [get("").trim_end().as_bytes(), b"\r\nx-a: a\x01b\r\n\r\n"].concat();
    /// RFC 9110 5.4: a header section larger than the server wishes to
    /// process gets a 4xx; RFC 6585 names 431.
    an_oversized_header_section_is_431: 431 <= get(&format!("x-big: {}\r\n", "a".repeat(70_000)));
    /// A CGI-style backend reads `Content_Length` as `Content-Length`.
    an_underscore_alias_of_content_length_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent_length: 5\r\n\r\nhello");
    /// ...and `X_Forwarded_For` as the address previewd sets.
    an_underscore_alias_of_a_forwarding_field_is_400: 400 <= get("x_forwarded_for: 6.6.6.6\r\n");
}

// RFC 9112 6 and RFC 9110 8.6: message body length.
refuses! {
    /// Both framings at once: refused, and the connection closed (MUST).
    content_length_with_transfer_encoding_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    /// chunked must be the final coding (MUST 400 and close).
    transfer_encoding_not_ending_in_chunked_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n");
    /// chunked applied twice (MUST NOT be sent).
    chunked_twice_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    /// An empty list element in the field that frames the body.
    an_empty_transfer_coding_element_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: , chunked\r\n\r\n0\r\n\r\n");
    /// A coding previewd does not decode (SHOULD 501).
    an_unknown_transfer_coding_is_501: 501 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    /// MUST treat the framing as faulty.
    transfer_encoding_on_http10_is_400: 400 <= format!("POST / HTTP/1.0\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    /// Content-Length = 1*DIGIT; an invalid one is an unrecoverable error
    /// (MUST 400 and close).
    a_signed_content_length_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: +5\r\n\r\nhello");
    a_content_length_with_a_space_inside_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 1 2\r\n\r\nhello");
    an_empty_content_length_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length:\r\n\r\nhello");
    /// MUST anticipate large numerals: no overflow, a refusal.
    an_overflowing_content_length_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 99999999999999999999999\r\n\r\nhello");
    two_different_content_lengths_are_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!");
    /// A framing field longer than the scanner's 1 KiB line: hyper reads
    /// 5, and the scanner could not check it.
    an_overlong_content_length_line_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length:{}5\r\n\r\nhello", " ".repeat(1100));
    /// The same value twice: hyper keeps one, so the scanner refuses it.
    two_equal_content_length_lines_are_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello");
    /// A list of one value repeated: RFC 9110 8.6 lets it be refused.
    a_content_length_list_is_400: 400 <= format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5, 5\r\n\r\nhello");
}

// RFC 9110 7.6.2: Max-Forwards.
refuses! {
    /// Not one decimal number on a method that uses it.
    an_invalid_max_forwards_on_trace_is_400: 400 <= get("").replacen("GET", "TRACE", 1).replace("\r\n\r\n", "\r\nmax-forwards: -1\r\n\r\n");
}

/// RFC 9112 6.1: after refusing a request with both framings, the server
/// MUST close the connection; a request pipelined behind it is never
/// answered or forwarded.
#[tokio::test]
async fn nothing_pipelined_after_an_ambiguous_request_is_processed() {
    let request = format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: {APP}\r\n\r\n"
    );
    let answer = refused(request, 400).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

/// RFC 9112 9.6: a request with `Connection: close` is the last one.
#[tokio::test]
async fn nothing_after_connection_close_is_processed() {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(
        &proxy,
        format!(
            "GET /one HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n\
             GET /two HTTP/1.1\r\nhost: {APP}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 ").count(), 1, "{answer}");
    let requests = received.requests.lock().expect("requests");
    assert_eq!(requests.len(), 1);
    assert!(requests[0].starts_with(b"GET /one "));
}

/// RFC 9112 9.3.2: pipelined requests are answered in order.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (answer, _) = {
        let (upstream, received) = raw_echo_upstream().await;
        let proxy = Proxy::start(app_at(upstream)).await;
        let mut pipeline = String::new();
        for n in 1..=3 {
            let close = if n == 3 { "connection: close\r\n" } else { "" };
            pipeline.push_str(&format!("GET /{n} HTTP/1.1\r\nhost: {APP}\r\n{close}\r\n"));
        }
        (raw_h1(&proxy, pipeline.as_bytes()).await, received)
    };
    let order: Vec<usize> = ["GET /1 ", "GET /2 ", "GET /3 "]
        .iter()
        .map(|line| answer.find(line).expect("each answered"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{answer}");
}

/// RFC 9112 9.3: an HTTP/1.0 connection without keep-alive ends after the
/// response.
#[tokio::test]
async fn http10_connections_close_after_the_response() {
    let (answer, _) = forwarded(format!("GET / HTTP/1.0\r\nhost: {APP}\r\n\r\n")).await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
}

// RFC 9112 7: chunked transfer coding. Body errors are the client's: 400,
// the connection closed, no complete request at the upstream.
macro_rules! refuses_body {
    ($($(#[$meta:meta])* $name:ident <= $body:expr;)*) => {
        $(
            $(#[$meta])*
            #[tokio::test]
            async fn $name() {
                let answer = refused_body(chunked($body), 400, Limits::default()).await;
                assert!(answer.contains("not in the preview"), "{answer}");
            }
        )*
    };
}

refuses_body! {
    /// chunk-size = 1*HEXDIG.
    a_chunk_size_with_0x_is_400 <= "0x5\r\nhello\r\n0\r\n\r\n";
    a_signed_chunk_size_is_400 <= "+5\r\nhello\r\n0\r\n\r\n";
    a_chunk_size_after_a_space_is_400 <= " 5\r\nhello\r\n0\r\n\r\n";
    /// No whitespace after the size unless an extension follows.
    a_chunk_size_before_a_space_is_400 <= "5 \r\nhello\r\n0\r\n\r\n";
    a_chunk_size_with_an_underscore_is_400 <= "5_0\r\nhello\r\n0\r\n\r\n";
    /// MUST anticipate large hex numerals.
    an_overflowing_chunk_size_is_400 <= "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n";
    /// chunk-ext-name = token.
    a_chunk_extension_without_a_name_is_400 <= "5;\r\nhello\r\n0\r\n\r\n";
    a_chunk_extension_name_that_is_no_token_is_400 <= "5;[x]\r\nhello\r\n0\r\n\r\n";
    a_nul_in_a_chunk_extension_is_400 <= "5;a\0\r\nhello\r\n0\r\n\r\n";
    /// Ought to limit chunk extensions: previewd allows 1 KiB per line.
    an_overlong_chunk_extension_is_400 <= &format!("5;a={}\r\nhello\r\n0\r\n\r\n", "b".repeat(2000));
    /// chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
    chunk_data_longer_than_its_size_is_400 <= "5\r\nhelloXX\r\n0\r\n\r\n";
    chunk_data_without_its_line_end_is_400 <= "5\r\nhello0\r\n\r\n";
    a_bare_cr_in_a_chunk_line_is_400 <= "5\rhello\r\n0\r\n\r\n";
    /// hyper ends chunk lines at CRLF only.
    a_bare_lf_chunk_line_is_400 <= "5\nhello\r\n0\r\n\r\n";
    /// RFC 9112 7.1.2: trailer fields are fields.
    a_malformed_trailer_field_is_400 <= "5\r\nhello\r\n0\r\nx t: 1\r\n\r\n";
    an_obs_folded_trailer_field_is_400 <= "5\r\nhello\r\n0\r\nx-t: 1\r\n 2\r\n\r\n";
}

/// The bug this pins: a bare LF ended the trailer section for the framing
/// scanner and not for hyper, so the scanner counted heads out of step and
/// let a request with both framings through behind it.
#[tokio::test]
async fn a_bare_lf_after_the_last_chunk_cannot_desynchronise_the_scanner() {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let stream = format!(
        "POST /a HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\n\
         GET /hidden HTTP/1.1\r\nhost: {APP}\r\n\r\n\
         POST /b HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\n"
    );
    let answer = raw_h1(&proxy, stream.as_bytes()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    for request in received.requests.lock().expect("requests").iter() {
        let text = String::from_utf8_lossy(request);
        assert!(
            !text.contains("/hidden") && !text.contains("/b "),
            "forwarded: {text}"
        );
    }
}

/// RFC 9112 6.2 and 8: a body that stops short of its Content-Length is
/// incomplete; the client's fault (408 after `client_body_timeout`), the
/// connection closed, and the upstream never gets the whole request.
#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_408() {
    let limits = Limits {
        client_body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let request = format!("POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 10\r\n\r\nhello");
    let answer = refused_body(request, 408, limits).await;
    assert!(answer.contains("stopped arriving"), "{answer}");
}

/// RFC 9112 7.1: a chunked body without its last chunk is incomplete.
#[tokio::test]
async fn a_chunked_body_without_its_last_chunk_is_408() {
    let limits = Limits {
        client_body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    refused_body(chunked("5\r\nhello\r\n"), 408, limits).await;
}

// What is accepted, and what the upstream gets.

/// RFC 9112 2.2: a recipient MAY take a bare LF as a line end.
#[tokio::test]
async fn bare_lf_line_ends_are_accepted() {
    let (_, sent) = forwarded(format!(
        "GET /lf HTTP/1.1\nhost: {APP}\nconnection: close\n\n"
    ))
    .await;
    assert!(sent.starts_with("GET /lf HTTP/1.1\r\n"), "{sent}");
}

/// RFC 9112 2.2: a server SHOULD ignore an empty line before the request.
#[tokio::test]
async fn an_empty_line_before_the_request_is_ignored() {
    let (_, sent) = forwarded(format!(
        "\r\nGET / HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(sent.starts_with("GET / HTTP/1.1\r\n"), "{sent}");
}

/// RFC 9112 3.2.2: with absolute-form the target's authority wins, and the
/// forwarded `Host` is made from it.
#[tokio::test]
async fn absolute_form_authority_replaces_host() {
    let (_, sent) = forwarded(format!(
        "GET https://{APP}/abs?q=1 HTTP/1.1\r\nhost: other.preview.test\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(sent.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{sent}");
    assert_eq!(field(&sent, "host"), Some(APP), "{sent}");
    assert!(!sent.contains("other.preview.test"), "{sent}");
}

/// RFC 9110 7.7: a proxy MUST NOT modify the path and query; what browsers
/// send raw (`{`, `|`, `^`, a backquote, `\`, and `"` in the path) passes
/// byte for byte.
#[tokio::test]
async fn path_and_query_are_forwarded_byte_for_byte() {
    let target = "/a/../b/./\"c\"//d%2F%2e%00?x={|}^`&y=\\";
    let (_, sent) = forwarded(format!(
        "GET {target} HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(
        sent.starts_with(&format!("GET {target} HTTP/1.1\r\n")),
        "{sent}"
    );
}

/// RFC 9112 3.2.4: asterisk-form OPTIONS is forwarded as `*`.
#[tokio::test]
async fn options_asterisk_is_forwarded_as_asterisk() {
    let (_, sent) = forwarded(format!(
        "OPTIONS * HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(sent.starts_with("OPTIONS * HTTP/1.1\r\n"), "{sent}");
}

/// RFC 9110 9.1: the method is a case-sensitive token; extension methods
/// pass and the preview decides.
#[tokio::test]
async fn method_tokens_pass_as_sent() {
    for method in ["PROPFIND", "get", "M-SEARCH"] {
        let (_, sent) = forwarded(format!(
            "{method} / HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n"
        ))
        .await;
        assert!(
            sent.starts_with(&format!("{method} / HTTP/1.1\r\n")),
            "{sent}"
        );
    }
}

/// RFC 9110 7.6.3: a gateway MUST add `Via` with the protocol it received,
/// after any the client sent.
#[tokio::test]
async fn via_names_this_hop_after_earlier_ones() {
    let (_, sent) = forwarded(get("via: 1.0 corporate-proxy\r\nconnection: close\r\n")).await;
    let via: Vec<&str> = sent
        .split("\r\n")
        .filter_map(|line| line.strip_prefix("via: "))
        .collect();
    assert_eq!(via, ["1.0 corporate-proxy", "1.1 previewd"], "{sent}");
    let (_, sent) = forwarded(format!("GET / HTTP/1.0\r\nhost: {APP}\r\n\r\n")).await;
    assert_eq!(field(&sent, "via"), Some("1.0 previewd"), "{sent}");
}

/// RFC 9110 7.6.2: OPTIONS and TRACE with `Max-Forwards: 0` are answered by
/// previewd as the final recipient; above 0 they go on with one less.
#[tokio::test]
async fn max_forwards_is_counted_down_and_zero_is_answered_here() {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let trace = raw_h1(
        &proxy,
        format!(
            "TRACE /t HTTP/1.1\r\nhost: {APP}\r\nmax-forwards: 0\r\ncookie: secret=1\r\n\
             x-seen: yes\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&trace), 200, "{trace}");
    assert!(trace.contains("content-type: message/http"), "{trace}");
    assert!(trace.contains("TRACE /t HTTP/1.1\r\n"), "{trace}");
    assert!(trace.contains("x-seen: yes"), "{trace}");
    assert!(!trace.contains("secret"), "a cookie was reflected: {trace}");
    let options = raw_h1(
        &proxy,
        format!(
            "OPTIONS / HTTP/1.1\r\nhost: {APP}\r\nmax-forwards: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&options), 200, "{options}");
    assert!(
        received.nothing(),
        "a Max-Forwards: 0 request was forwarded"
    );

    let (_, sent) = forwarded(format!(
        "OPTIONS / HTTP/1.1\r\nhost: {APP}\r\nmax-forwards: 3\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(field(&sent, "max-forwards"), Some("2"), "{sent}");
    // Other methods carry it unchanged (a recipient MAY ignore it there).
    let (_, sent) = forwarded(get("max-forwards: 0\r\nconnection: close\r\n")).await;
    assert_eq!(field(&sent, "max-forwards"), Some("0"), "{sent}");
}

/// RFC 9110 7.6.1: the fields `Connection` names, and the hop-by-hop ones,
/// are removed before forwarding.
#[tokio::test]
async fn hop_by_hop_fields_are_removed() {
    let (_, sent) = forwarded(get(
        "connection: close, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nte: trailers\r\n\
         upgrade: h2c\r\nproxy-connection: keep-alive\r\nproxy-authorization: Basic eA==\r\n\
         x-end-to-end: kept\r\n",
    ))
    .await;
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "connection",
    ] {
        assert_eq!(field(&sent, gone), None, "{gone} forwarded: {sent}");
    }
    assert_eq!(field(&sent, "x-end-to-end"), Some("kept"), "{sent}");
}

/// RFC 9110 5.3: a proxy MUST NOT reorder field lines of the same name.
#[tokio::test]
async fn field_lines_of_one_name_keep_their_order() {
    let (_, sent) = forwarded(get(
        "x-list: 1\r\nx-other: a\r\nx-list: 2\r\nx-list: 3\r\nconnection: close\r\n",
    ))
    .await;
    let values: Vec<&str> = sent
        .split("\r\n")
        .filter_map(|line| line.strip_prefix("x-list: "))
        .collect();
    assert_eq!(values, ["1", "2", "3"], "{sent}");
}

/// RFC 9110 8.6: `Content-Length` is forwarded as the one number read
/// (1*DIGIT allows leading zeros; octal-minded backends would differ).
#[tokio::test]
async fn content_length_is_forwarded_in_canonical_form() {
    let (_, sent) = forwarded(format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 005\r\nconnection: close\r\n\r\nhello"
    ))
    .await;
    assert_eq!(field(&sent, "content-length"), Some("5"), "{sent}");
    assert!(sent.ends_with("\r\n\r\nhello"), "{sent}");
}

/// RFC 9110 5.6.3: OWS is SP or HTAB, before a Content-Length value too.
#[tokio::test]
async fn a_tab_before_a_content_length_value_is_whitespace() {
    let (_, sent) = forwarded(format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length:\t5\r\nconnection: close\r\n\r\nhello"
    ))
    .await;
    assert!(sent.ends_with("\r\n\r\nhello"), "{sent}");
}

/// RFC 9112 7.1.1 and 7.1.2: chunk extensions are ignored (MUST), trailer
/// fields are never merged into the header section (MUST NOT); previewd
/// drops them, as a recipient that removes the chunked coding MAY.
#[tokio::test]
async fn chunk_extensions_pass_and_trailers_are_dropped_not_merged() {
    let (_, sent) = forwarded(format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: Chunked\r\nconnection: close\r\n\r\n\
         5;name=value;q=\"a b\"\r\nhello\r\n0\r\ncontent-length: 50\r\nx-trailer: t\r\n\r\n"
    ))
    .await;
    assert!(sent.contains("hello"), "{sent}");
    assert!(
        !sent.contains("x-trailer"),
        "a trailer was forwarded: {sent}"
    );
    assert!(
        !sent.contains("content-length: 50"),
        "a trailer was merged: {sent}"
    );
}

/// RFC 9112 7.1: chunk-size = 1*HEXDIG, leading zeros included.
#[tokio::test]
async fn a_chunk_size_with_leading_zeros_passes() {
    let (_, sent) = forwarded(format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         00000000000000000005\r\nhello\r\n0\r\n\r\n"
    ))
    .await;
    assert!(sent.contains("hello"), "{sent}");
}

/// RFC 9110 5.5: obs-text in a field value is kept for the application.
#[tokio::test]
async fn obs_text_in_a_field_value_passes() {
    let request = [
        get("").trim_end().as_bytes(),
        b"\r\nx-name: Jos\xe9\r\nconnection: close\r\n\r\n",
    ]
    .concat();
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(&proxy, &request).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let requests = received.requests.lock().expect("requests");
    let wanted = b"\r\nx-name: Jos\xe9\r\n";
    assert!(
        requests[0].windows(wanted.len()).any(|w| w == wanted),
        "{:?}",
        String::from_utf8_lossy(&requests[0])
    );
}

/// RFC 9110 7.8: Upgrade in an HTTP/1.0 request MUST be ignored: forwarded
/// as a plain request, no tunnel.
#[tokio::test]
async fn upgrade_on_http10_is_ignored() {
    let (answer, sent) = forwarded(format!(
        "GET / HTTP/1.0\r\nhost: {APP}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert_eq!(field(&sent, "upgrade"), None, "{sent}");
}

/// RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST
/// be ignored: no interim response.
#[tokio::test]
async fn expect_100_continue_on_http10_gets_no_interim_response() {
    let (answer, _) = forwarded(format!(
        "POST / HTTP/1.0\r\nhost: {APP}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello"
    ))
    .await;
    assert!(!answer.contains(" 100 "), "{answer}");
}

/// RFC 9110 15.6.4: the building page (503) says when to come back.
#[tokio::test]
async fn the_building_page_carries_retry_after() {
    let mut table = previewd_proxy::RouteTable::new();
    table.insert(
        APP,
        previewd_proxy::Route::Building {
            commit: "abc".into(),
            since: std::time::SystemTime::now(),
        },
    );
    let proxy = Proxy::start(table).await;
    let answer = proxy.get(APP, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), "2");
}
