//! RFC 9113 8.1-8.3 over HTTP/2, one test per row of
//! docs/HTTP-CONFORMANCE.md: header blocks written by hand (a client
//! library refuses to send most of these), sent over TLS to a proxy in
//! front of an upstream that records every byte. A malformed request is a
//! stream error (RST_STREAM or GOAWAY with PROTOCOL_ERROR, RFC 9113 8.1.1)
//! or, for the rules previewd checks itself, a 400/501 answer; either way
//! the upstream gets nothing.

mod support;

use support::h2::*;
use support::*;

type Fields = Vec<(&'static [u8], &'static [u8])>;

/// Sends one request of `fields` (and `body` as one DATA frame) on stream 1
/// of a fresh connection; returns how the proxy ended the stream, and what
/// the upstream got.
async fn send(fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> (Outcome, Received) {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let mut h2 = RawH2::connect(&proxy).await;
    let flags = if body.is_some() {
        END_HEADERS
    } else {
        END_HEADERS | END_STREAM
    };
    let mut bytes = frame(HEADERS, flags, 1, &block_of(fields));
    if let Some(body) = body {
        bytes.extend(frame(DATA, END_STREAM, 1, body));
    }
    h2.send(&bytes).await.expect("request");
    (h2.outcome(1).await, received)
}

/// The request is malformed: a stream (or connection) error PROTOCOL_ERROR,
/// and nothing reaches the upstream.
async fn malformed(fields: &[(&[u8], &[u8])], body: Option<&[u8]>) {
    let (outcome, received) = send(fields, body).await;
    assert!(
        matches!(
            outcome,
            Outcome::Reset(PROTOCOL_ERROR) | Outcome::GoAway(PROTOCOL_ERROR)
        ),
        "{outcome:?} for {fields:?}"
    );
    assert!(received.nothing(), "forwarded: {fields:?}");
}

/// previewd refuses the request with `status`; nothing reaches the upstream.
async fn refused(fields: &[(&[u8], &[u8])], status: u16) {
    let (outcome, received) = send(fields, None).await;
    assert_eq!(outcome, Outcome::Status(status), "{fields:?}");
    assert!(received.nothing(), "forwarded: {fields:?}");
}

/// The request is forwarded; returns it as the upstream got it.
async fn forwarded(fields: &[(&[u8], &[u8])]) -> String {
    let (outcome, received) = send(fields, None).await;
    assert_eq!(outcome, Outcome::Status(200), "{fields:?}");
    received.only_request()
}

fn fields_of(fields: &[(&'static [u8], &'static [u8])]) -> Fields {
    fields.to_vec()
}

fn without(name: &[u8]) -> Fields {
    get_fields()
        .into_iter()
        .filter(|(n, _)| *n != name)
        .collect()
}

fn with(extra: &[(&'static [u8], &'static [u8])]) -> Fields {
    let mut fields = get_fields();
    fields.extend_from_slice(extra);
    fields
}

fn with_path(path: &'static [u8]) -> Fields {
    let mut fields = without(b":path");
    fields.push((b":path", path));
    fields
}

macro_rules! malformed {
    ($($(#[$meta:meta])* $name:ident <= $fields:expr;)*) => {
        $(
            $(#[$meta])*
            #[tokio::test]
            async fn $name() {
                malformed(&$fields, None).await;
            }
        )*
    };
}

// RFC 9113 8.3.1: request pseudo-header fields (h2 enforces these).
malformed! {
    a_request_without_method_is_malformed <= without(b":method");
    a_request_without_scheme_is_malformed <= without(b":scheme");
    a_request_without_path_is_malformed <= without(b":path");
    an_empty_path_is_malformed <= with_path(b"");
    a_path_not_starting_with_a_slash_is_malformed <= with_path(b"a");
    a_path_with_a_space_is_malformed <= with_path(b"/a b");
    /// RFC 9113 8.3: each pseudo-field once.
    a_repeated_pseudo_field_is_malformed <= with(&[(b":path", b"/again")]);
    /// RFC 9113 8.3: only the defined pseudo-fields.
    an_unknown_pseudo_field_is_malformed <= with(&[(b":foo", b"x")]);
    /// RFC 9113 8.3: no response pseudo-field in a request.
    a_status_pseudo_field_in_a_request_is_malformed <= with(&[(b":status", b"200")]);
    /// RFC 9113 8.3: pseudo-fields before regular ones.
    a_pseudo_field_after_a_regular_one_is_malformed <= fields_of(&[
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b"x-early", b"1"),
        (b":authority", APP.as_bytes()),
        (b":path", b"/"),
    ]);
    /// RFC 9113 8.3.1: CONNECT has neither :scheme nor :path.
    connect_with_a_path_is_malformed <= fields_of(&[
        (b":method", b"CONNECT"),
        (b":scheme", b"https"),
        (b":authority", APP.as_bytes()),
        (b":path", b"/"),
    ]);
}

// RFC 9113 8.2.1 and 8.2.2: field validity and connection-specific fields.
malformed! {
    /// Field names MUST be lowercase.
    an_uppercase_field_name_is_malformed <= with(&[(b"X-Upper", b"1")]);
    a_field_name_with_a_space_is_malformed <= with(&[(b"x y", b"1")]);
    a_field_name_with_a_colon_is_malformed <= with(&[(b"x:y", b"1")]);
    /// Values MUST NOT contain NUL, CR or LF.
    nul_in_a_field_value_is_malformed <= with(&[(b"x-v", b"a\0b")]);
    cr_in_a_field_value_is_malformed <= with(&[(b"x-v", b"a\rb")]);
    lf_in_a_field_value_is_malformed <= with(&[(b"x-v", b"a\nb")]);
    /// Connection-specific fields MUST NOT appear.
    a_connection_field_is_malformed <= with(&[(b"connection", b"keep-alive")]);
    a_keep_alive_field_is_malformed <= with(&[(b"keep-alive", b"timeout=5")]);
    a_proxy_connection_field_is_malformed <= with(&[(b"proxy-connection", b"keep-alive")]);
    a_transfer_encoding_field_is_malformed <= with(&[(b"transfer-encoding", b"chunked")]);
    an_upgrade_field_is_malformed <= with(&[(b"upgrade", b"websocket")]);
    /// TE may only be "trailers".
    te_other_than_trailers_is_malformed <= with(&[(b"te", b"gzip")]);
}

/// RFC 9113 8.1.1: DATA that does not add up to `content-length` makes the
/// request malformed. That shows only once the body comes, after the head
/// was forwarded: the upstream gets an aborted request, never a whole one.
async fn content_length_mismatch(declared: &'static [u8], data: &[u8]) {
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let mut h2 = RawH2::connect(&proxy).await;
    let mut fields = with(&[(b"content-length", declared)]);
    fields[0].1 = b"POST";
    h2.send(&frame(HEADERS, END_HEADERS, 1, &block_of(&fields)))
        .await
        .expect("head");
    let bytes = received.bytes.clone();
    eventually(5, "the head reaching the upstream", || {
        bytes.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    h2.send(&frame(DATA, END_STREAM, 1, data))
        .await
        .expect("data");
    let outcome = h2.outcome(1).await;
    assert!(
        matches!(
            outcome,
            Outcome::Reset(PROTOCOL_ERROR) | Outcome::GoAway(PROTOCOL_ERROR)
        ),
        "{outcome:?}"
    );
    assert!(received.requests.lock().expect("requests").is_empty());
}

#[tokio::test]
async fn more_data_than_content_length_is_malformed() {
    content_length_mismatch(b"3", b"hello").await;
}

#[tokio::test]
async fn less_data_than_content_length_is_malformed() {
    content_length_mismatch(b"9", b"hello").await;
}

macro_rules! refuses {
    ($($(#[$meta:meta])* $name:ident: $status:literal <= $fields:expr;)*) => {
        $(
            $(#[$meta])*
            #[tokio::test]
            async fn $name() {
                refused(&$fields, $status).await;
            }
        )*
    };
}

// The rules previewd checks itself, answered before routing.
refuses! {
    /// RFC 9113 8.3.1: if both are present they MUST be the same.
    authority_and_a_different_host_are_400: 400 <= with(&[(b"host", b"other.preview.test")]);
    /// RFC 9112 3.2 applies to the Host field of any version.
    two_host_fields_are_400: 400 <= with(&[(b"host", APP.as_bytes()), (b"host", APP.as_bytes())]);
    /// RFC 9113 8.3.1: an http(s) request MUST carry :authority or Host.
    a_request_without_authority_or_host_is_400: 400 <= without(b":authority");
    /// RFC 9113 8.3.1: no userinfo in :authority.
    userinfo_in_the_authority_is_400: 400 <= {
        let mut fields = without(b":authority");
        fields.push((b":authority", b"user@app.preview.test"));
        fields
    };
    /// RFC 9113 8.2.1: no leading or trailing whitespace in a value.
    a_value_with_a_leading_space_is_400: 400 <= with(&[(b"x-v", b" a")]);
    a_value_with_a_trailing_space_is_400: 400 <= with(&[(b"x-v", b"a ")]);
    a_value_with_a_leading_tab_is_400: 400 <= with(&[(b"x-v", b"\ta")]);
    /// As on HTTP/1.1: octets above 0x7F in the target.
    non_ascii_octets_in_the_path_are_400: 400 <= with_path(b"/\xc3\xa9");
    /// RFC 9113 8.3.1: "*" is for OPTIONS only.
    an_asterisk_path_without_options_is_400: 400 <= with_path(b"*");
    /// previewd is no tunnel (RFC 9110 9.3.6).
    connect_is_501: 501 <= fields_of(&[(b":method", b"CONNECT"), (b":authority", b"app.preview.test:443")]);
    /// A scheme previewd does not serve.
    another_scheme_is_400: 400 <= {
        let mut fields = without(b":scheme");
        fields.insert(1, (b":scheme", b"ftp"));
        fields
    };
    /// RFC 9110 8.6, as on HTTP/1.1.
    two_content_length_fields_are_400: 400 <= with(&[(b"content-length", b"0"), (b"content-length", b"0")]);
    /// As on HTTP/1.1: an underscore alias of a field previewd sets.
    an_underscore_alias_is_400: 400 <= with(&[(b"x_forwarded_for", b"6.6.6.6")]);
}

/// RFC 9113 8.2.3: split Cookie fields MUST be joined with "; " before they
/// go on an HTTP/1.1 connection.
#[tokio::test]
async fn split_cookies_are_joined_for_the_upstream() {
    let sent = forwarded(&with(&[(b"cookie", b"a=1"), (b"cookie", b"b=2")])).await;
    let cookies: Vec<&str> = sent
        .split("\r\n")
        .filter_map(|line| line.strip_prefix("cookie: "))
        .collect();
    assert_eq!(cookies, ["a=1; b=2"], "{sent}");
}

/// RFC 9110 7.6.3 with the protocol received: "2".
#[tokio::test]
async fn via_says_http2_was_received() {
    let sent = forwarded(&get_fields()).await;
    assert!(sent.contains("\r\nvia: 2 previewd\r\n"), "{sent}");
    assert!(sent.starts_with("GET / HTTP/1.1\r\n"), "{sent}");
}

/// RFC 9113 8.2.2: TE: trailers is allowed (and, being hop-by-hop, not
/// forwarded).
#[tokio::test]
async fn te_trailers_is_accepted_and_not_forwarded() {
    let sent = forwarded(&with(&[(b"te", b"trailers")])).await;
    assert!(!sent.contains("\r\nte:"), "{sent}");
}

/// RFC 9113 8.3.1: `:authority` and `Host` are compared as entities: the
/// default port written out is the same authority.
#[tokio::test]
async fn authority_and_host_differing_only_by_the_default_port_agree() {
    let sent = forwarded(&with(&[(b"host", b"app.preview.test:443")])).await;
    assert!(sent.starts_with("GET / HTTP/1.1\r\n"), "{sent}");
}

/// RFC 9113 8.3.1: without :authority, Host names the target.
#[tokio::test]
async fn host_serves_when_authority_is_absent() {
    let mut fields = without(b":authority");
    fields.push((b"host", APP.as_bytes()));
    let sent = forwarded(&fields).await;
    assert!(sent.contains(&format!("\r\nhost: {APP}\r\n")), "{sent}");
}

/// RFC 9113 8.3.1: an OPTIONS for the whole server has :path "*".
#[tokio::test]
async fn options_asterisk_is_forwarded_as_asterisk() {
    let mut fields = with_path(b"*");
    fields[0].1 = b"OPTIONS";
    let sent = forwarded(&fields).await;
    assert!(sent.starts_with("OPTIONS * HTTP/1.1\r\n"), "{sent}");
}

/// A documented departure: the `http` crate drops a fragment from :path
/// before previewd sees the request, so it cannot be refused as on
/// HTTP/1.1; the upstream gets the path without it, never the fragment.
#[tokio::test]
async fn a_fragment_in_the_path_is_dropped_before_previewd_sees_it() {
    let sent = forwarded(&with_path(b"/a#frag")).await;
    assert!(sent.starts_with("GET /a HTTP/1.1\r\n"), "{sent}");
    assert!(!sent.contains("frag"), "{sent}");
}

/// The hand-written HPACK decoding these tests rely on reads statuses the
/// way hyper writes them.
#[test]
fn statuses_decode_as_hyper_writes_them() {
    assert_eq!(status_of(&[0x88]), Some(200));
    assert_eq!(status_of(&[0x8c]), Some(400));
    assert_eq!(status_of(&[0x48, 0x83, 0x69, 0x90, 0xff]), Some(431));
    assert_eq!(status_of(&[0x08, 0x03, b'5', b'0', b'1']), Some(501));
}
