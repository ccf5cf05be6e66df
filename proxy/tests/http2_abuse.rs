//! HTTP/2 abuse over raw frames (TLS, ALPN h2, hand-written frames): more
//! streams than allowed, rapid reset, CONTINUATION floods, oversized and
//! slowly sent header blocks. Each must end the stream or the connection
//! without harming the proxy or the next connection.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use previewd_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use support::*;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET https://APP<path>`, literals without indexing or Huffman.
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    literal_indexed_name(&mut block, 4, path.as_bytes()); // :path
    literal_indexed_name(&mut block, 1, APP.as_bytes()); // :authority
    block
}

/// HPACK for `POST https://APP<path>`.
fn post_block(path: &str) -> Vec<u8> {
    let mut block = get_block(path);
    block[0] = 0x83; // :method POST
    block
}

fn literal_indexed_name(block: &mut Vec<u8>, index: u8, value: &[u8]) {
    block.push(index); // 0000xxxx: literal without indexing, indexed name
    integer(block, 0, 7, value.len());
    block.extend_from_slice(value);
}

/// One small `x-junk-N: <value>` field with a new (literal) name.
fn junk_field(block: &mut Vec<u8>, n: usize, value_len: usize) {
    let name = format!("x-junk-{n}");
    block.push(0x00);
    integer(block, 0, 7, name.len());
    block.extend_from_slice(name.as_bytes());
    integer(block, 0, 7, value_len);
    block.extend(std::iter::repeat_n(b'v', value_len));
}

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 5.1).
fn integer(block: &mut Vec<u8>, high_bits: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        block.push(high_bits | u8::try_from(value).expect("small"));
        return;
    }
    block.push(high_bits | u8::try_from(max).expect("prefix"));
    value -= max;
    while value >= 128 {
        block.push(u8::try_from(value % 128).expect("7 bits") | 0x80);
        value /= 128;
    }
    block.push(u8::try_from(value).expect("7 bits"));
}

struct RawH2 {
    reader: ReadHalf<TlsStream<TcpStream>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

impl RawH2 {
    /// Preface and SETTINGS exchanged (ours empty, theirs acknowledged).
    async fn connect(proxy: &Proxy) -> RawH2 {
        let tls = proxy.tls(APP, &[b"h2"]).await.expect("TLS");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (reader, writer) = tokio::io::split(tls);
        let mut h2 = RawH2 { reader, writer };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello).await.expect("preface");
        loop {
            let settings = h2.read().await.expect("server SETTINGS");
            if settings.kind == SETTINGS && settings.flags & ACK == 0 {
                break;
            }
        }
        // Acknowledged before any stream, so the server's limits apply.
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await.expect("ack");
        h2
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    async fn read(&mut self) -> Option<Frame> {
        read_frame(&mut self.reader).await
    }
}

/// The next frame, or `None` once the connection is closed.
async fn read_frame(reader: &mut ReadHalf<TlsStream<TcpStream>>) -> Option<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff,
        payload,
    })
}

/// Frames until the connection closes; the last GOAWAY among them, if any.
async fn goaway(reader: &mut ReadHalf<TlsStream<TcpStream>>) -> Option<Frame> {
    let mut goaway = None;
    while let Some(frame) = read_frame(reader).await {
        if frame.kind == GOAWAY {
            goaway = Some(frame);
        }
    }
    goaway
}

async fn h2_get_works(proxy: &Proxy) {
    let tls = proxy.tls(APP, &[b"h2"]).await.expect("TLS");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("https://{APP}/fresh"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(10, "fresh request", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn streams_beyond_max_concurrent_streams_are_refused() {
    let limits = Limits {
        h2_max_concurrent_streams: 3,
        ..Limits::default()
    };
    // Requests to a silent upstream stay open.
    let proxy = Proxy::start_with(app_at(silent_upstream().await), limits).await;
    let mut h2 = RawH2::connect(&proxy).await;
    let mut burst = Vec::new();
    for stream in [1, 3, 5, 7, 9] {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &get_block("/"),
        ));
    }
    h2.send(&burst).await.expect("burst");
    let mut refused = Vec::new();
    within(10, "refused streams", async {
        while refused.len() < 2 {
            let frame = h2.read().await.expect("connection stays open");
            if frame.kind == RST_STREAM {
                assert_eq!(frame.error_code(), REFUSED_STREAM, "{frame:?}");
                refused.push(frame.stream);
            }
        }
    })
    .await;
    refused.sort_unstable();
    assert_eq!(refused, [7, 9]);
}

#[tokio::test]
async fn rapid_reset_burst_gets_goaway_enhance_your_calm() {
    let proxy = Proxy::start(app_at(echo_upstream().await)).await;
    let mut h2 = RawH2::connect(&proxy).await;
    let block = get_block("/");
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    // The server may close before taking all of it.
    let _ = h2.send(&burst).await;
    let goaway = within(10, "GOAWAY", goaway(&mut h2.reader))
        .await
        .expect("a GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");

    h2_get_works(&proxy).await;
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[tokio::test]
async fn endless_continuation_frames_close_the_connection() {
    let proxy = Proxy::start(app_at(echo_upstream().await)).await;
    let h2 = RawH2::connect(&proxy).await;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kib("VmRSS:");

    let mut continuation = Vec::new();
    // About 15 KiB: under the 16 KiB default frame size.
    for n in 0..135 {
        junk_field(&mut continuation, n, 100);
    }
    let headers = frame(HEADERS, END_STREAM, 1, &get_block("/"));
    let continuation = frame(CONTINUATION, 0, 1, &continuation);
    let RawH2 {
        mut reader,
        mut writer,
    } = h2;
    // 4096 frames (64 MiB) unless the proxy stops reading first.
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        if writer.write_all(&headers).await.is_err() {
            return sent;
        }
        for _ in 0..4096 {
            if writer.write_all(&continuation).await.is_err() {
                break;
            }
            sent += continuation.len();
        }
        sent
    });
    let goaway = within(30, "connection close", goaway(&mut reader)).await;
    let sent = within(30, "flood writer stops", flood).await.expect("join");
    assert!(
        sent < 4096 * 16 * 1024,
        "the proxy kept reading {sent} bytes"
    );
    // h2 allows a few CONTINUATION frames per header block (from the header
    // list limit and frame size), then calls the flood off.
    let goaway = goaway.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    let growth = status_kib("VmHWM:").saturating_sub(before);
    assert!(growth < 64 * 1024, "peak RSS grew by {growth} KiB");

    h2_get_works(&proxy).await;
}

#[tokio::test]
async fn oversized_header_block_on_http2_is_refused_and_never_forwarded() {
    let (upstream, accepted) = counting_upstream().await;
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let mut h2 = RawH2::connect(&proxy).await;
    let mut first = get_block("/");
    for n in 0..100 {
        junk_field(&mut first, n, 100);
    }
    let mut second = Vec::new();
    for n in 100..200 {
        junk_field(&mut second, n, 100);
    }
    let mut block = frame(HEADERS, END_STREAM, 1, &first);
    block.extend(frame(CONTINUATION, END_HEADERS, 1, &second));
    h2.send(&block).await.expect("header block");
    // h2 answers the stream itself with 431 and never hands it to hyper.
    let answer = within(10, "answer to the oversized block", async {
        loop {
            let frame = h2.read().await.expect("connection stays open");
            if frame.stream == 1 {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(answer.kind, HEADERS, "{answer:?}");
    assert_eq!(answer.flags, END_STREAM | END_HEADERS, "{answer:?}");
    // `:status: 431`: literal with indexed name 8, Huffman-coded "431".
    assert_eq!(answer.payload, [0x48, 0x83, 0x69, 0x90, 0xff], "{answer:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    // The proxy still serves the next request.
    assert_eq!(proxy.get(APP, "/").await.status, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slowly_sent_http2_header_block_is_cut_off_after_the_header_read_timeout() {
    let (upstream, accepted) = counting_upstream().await;
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let h2 = RawH2::connect(&proxy).await;
    let RawH2 {
        mut reader,
        mut writer,
    } = h2;
    let started = Instant::now();
    // HEADERS without END_HEADERS, then the CONTINUATION that ends the
    // block, 4 bytes every 300 ms: bytes keep moving (no idle timeout), and
    // the block stays far below the size and CONTINUATION-count limits, so
    // only the clock can end it.
    let dribble = tokio::spawn(async move {
        let headers = frame(HEADERS, END_STREAM, 1, &get_block("/"));
        if writer.write_all(&headers).await.is_err() {
            return;
        }
        let mut fields = Vec::new();
        for n in 0..20 {
            junk_field(&mut fields, n, 8);
        }
        for piece in frame(CONTINUATION, END_HEADERS, 1, &fields).chunks(4) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    within(10, "slow header block cut off", goaway(&mut reader)).await;
    dribble.abort();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the header read timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the request was forwarded"
    );
    h2_get_works(&proxy).await;
}

#[tokio::test]
async fn slowly_sent_http2_body_is_not_cut_off_by_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(echo_upstream().await), limits).await;
    let mut h2 = RawH2::connect(&proxy).await;
    h2.send(&frame(HEADERS, END_HEADERS, 1, &post_block("/upload")))
        .await
        .expect("request head");
    // Four DATA frames over about 2.4 s, each split mid-payload: the body
    // takes longer than the header read timeout, which must not apply to it.
    for (n, piece) in ["ab", "cd", "ef", "gh"].iter().enumerate() {
        let last = n == 3;
        let data = frame(DATA, if last { END_STREAM } else { 0 }, 1, piece.as_bytes());
        let (head_and_half, rest) = data.split_at(data.len() - 1);
        h2.send(head_and_half).await.expect("first part of DATA");
        tokio::time::sleep(Duration::from_millis(300)).await;
        h2.send(rest).await.expect("rest of DATA");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut body = Vec::new();
    let status = within(10, "answer to the slow upload", async {
        let mut status = None;
        loop {
            let frame = h2.read().await.expect("connection stays open");
            if frame.stream != 1 {
                continue;
            }
            if frame.kind == HEADERS {
                status = frame.payload.first().copied();
            }
            if frame.kind == DATA {
                body.extend_from_slice(&frame.payload);
            }
            if frame.flags & END_STREAM != 0 {
                return status;
            }
        }
    })
    .await;
    // 0x88: `:status: 200`, indexed.
    assert_eq!(status, Some(0x88), "{}", String::from_utf8_lossy(&body));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("body=abcdefgh"), "{body}");
}
