//! HTTP/2 abuse over raw frames (TLS, ALPN h2, hand-written frames): more
//! streams than allowed, rapid reset, CONTINUATION floods, oversized and
//! slowly sent header blocks. Each must end the stream or the connection
//! without harming the proxy or the next connection.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::StatusCode;
use previewd_proxy::Limits;
use tokio::io::AsyncWriteExt;

use support::h2::*;
use support::*;

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
