//! Whose fault an error is: what the client sent (its body's framing, a
//! body that stops arriving) is answered as the client's error, never as a
//! "preview broken" 502/504; what the upstream does (not answering, not
//! reading the body) stays 502/504. The pages and the logs say which side
//! failed.

mod support;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use previewd_proxy::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// The proxy's log lines, for every test of this binary (the proxy logs
/// from threads of its own, so the subscriber is global).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("previewd_proxy=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &[&str]) -> bool {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    text.lines()
        .any(|line| needle.iter().all(|part| line.contains(part)))
}

/// An upstream on loopback that runs `serve` on each connection it accepts.
async fn serving<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// The bug this pins: a malformed chunk was answered 502 "Preview not
/// reachable", blaming a preview that never got the request.
#[tokio::test]
async fn a_malformed_request_body_is_400_not_502() {
    logs();
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = raw_h1(
        &proxy,
        format!(
            "POST /bad-chunk HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n\
             zz\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(
        answer.contains("The body of this request is malformed"),
        "{answer}"
    );
    assert!(!answer.contains("Preview not reachable"), "{answer}");
    assert!(received.requests.lock().expect("requests").is_empty());
    eventually(5, "the client's fault logged", || {
        // Only this test sends a chunk size of "zz".
        logged(&[
            "fault=\"client\"",
            "request body is malformed",
            "Invalid chunk size",
        ])
    })
    .await;
}

/// An upstream that accepts, reads nothing, and never answers: the request
/// head and the first of the body sit in the socket buffers.
async fn deaf_upstream() -> SocketAddr {
    silent_upstream().await
}

/// Starts an upload far larger than loopback buffers hold, so a proxy in
/// front of a deaf upstream must stop reading it; returns the side the
/// answer comes on, and the writer (abort it when done).
async fn endless_upload(
    proxy: &Proxy,
) -> (
    tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    const BODY: usize = 256 * 1024 * 1024;
    let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let (reader, mut writer) = tokio::io::split(tls);
    let upload = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nhost: {APP}\r\ncontent-length: {BODY}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        Ok(())
    });
    (reader, upload)
}

/// The upstream stops reading an upload: that is the upstream's stall
/// (504), not the client's, though no body byte moves.
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_504() {
    logs();
    let limits = Limits {
        upstream_response_timeout: Duration::from_secs(1),
        client_body_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let upstream = deaf_upstream().await;
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let (mut reader, upload) = endless_upload(&proxy).await;
    let mut answer = vec![0u8; 4096];
    let n = within(20, "the 504", reader.read(&mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    upload.abort();
    assert_eq!(raw_status(&answer), 504, "{answer}");
    assert!(
        answer.contains("stopped reading the request body"),
        "{answer}"
    );
    eventually(5, "the upstream's fault logged", || {
        // Its own upstream's line, not another test's.
        let error = format!("upstream {upstream} read none of the request body");
        logged(&["fault=\"upstream\"", &error])
    })
    .await;
}

/// A body that keeps arriving may take longer than the response timeout:
/// that clock starts once the body is in.
#[tokio::test]
async fn a_steady_upload_may_outlast_the_response_timeout() {
    let limits = Limits {
        upstream_response_timeout: Duration::from_secs(1),
        client_body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (upstream, received) = raw_echo_upstream().await;
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let pieces = ["one ", "two ", "three ", "four ", "five"];
    let len: usize = pieces.iter().map(|piece| piece.len()).sum();
    let head = format!(
        "POST /slow HTTP/1.1\r\nhost: {APP}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    // 2 s in all, never 1 s without a byte: the client being slow, on purpose.
    for piece in pieces {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tls.write_all(piece.as_bytes()).await.expect("piece");
    }
    let mut answer = Vec::new();
    within(10, "the answer", tls.read_to_end(&mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(received.only_request().ends_with("one two three four five"));
}

/// Answers every request at once with a 200 that announces 1000 bytes and
/// sends 10; sends the other 990 only once the request's chunked body has
/// come whole (its last chunk), and nothing more if it ends otherwise.
async fn early_answering_upstream() -> SocketAddr {
    serving(|mut stream| async move {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut answered = false;
        loop {
            let Ok(n) = stream.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&chunk[..n]);
            if !answered && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                answered = true;
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789";
                if stream.write_all(head).await.is_err() {
                    return;
                }
            }
            if seen.ends_with(b"\r\n0\r\n\r\n") {
                let _ = stream.write_all(&[b'.'; 990]).await;
                return;
            }
        }
    })
    .await
}

/// When the response has already begun, a body error can only end the
/// connection: the upstream never sees the body end as if whole, so the
/// client never gets the rest of a response to a broken request.
#[tokio::test]
async fn a_body_error_after_the_response_began_closes_the_connection() {
    let proxy = Proxy::start(app_at(early_answering_upstream().await)).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    // The response head comes back while the body is still open.
    let mut answer = vec![0u8; 4096];
    let mut got = 0;
    while !String::from_utf8_lossy(&answer[..got]).contains("0123456789") {
        let n = within(10, "the response head", tls.read(&mut answer[got..]))
            .await
            .expect("read");
        assert!(n > 0, "closed early");
        got += n;
    }
    // A bad chunk size, then what would end the body if it were read.
    tls.write_all(b"zz\r\nhello\r\n0\r\n\r\n")
        .await
        .expect("bad chunk");
    let mut rest = Vec::new();
    let _ = within(10, "the connection closed", tls.read_to_end(&mut rest)).await;
    let whole = [&answer[..got], &rest[..]].concat();
    let text = String::from_utf8_lossy(&whole);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    assert_eq!(
        body, "0123456789",
        "the response went on after a body error: {text}"
    );
}

/// An upstream that reads a request whole and never answers.
async fn mute_upstream() -> SocketAddr {
    serving(|mut stream| async move {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    })
    .await
}

/// The bug this pins: a sized body never counted as over (hyper stops
/// polling it after its last frame), so an upstream slow to answer a POST
/// was said to have stopped reading its body.
#[tokio::test]
async fn a_sized_upload_answered_late_is_504_for_not_answering() {
    let limits = Limits {
        upstream_response_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(mute_upstream().await), limits).await;
    let answer = raw_h1(
        &proxy,
        format!(
            "POST / HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 504, "{answer}");
    assert!(
        answer.contains("did not answer within 1 seconds"),
        "{answer}"
    );
}

/// Established TCP connections from this process to `port`, from
/// /proc/net/tcp (state 01).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// The bug this pins: after the 504 for an upload the upstream stopped
/// reading, both connections stayed open for as long as the upstream
/// stayed deaf (hyper waited to flush what it could not write).
#[tokio::test]
async fn an_upload_the_upstream_stopped_reading_frees_both_connections() {
    let limits = Limits {
        upstream_response_timeout: Duration::from_secs(1),
        client_body_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let upstream = deaf_upstream().await;
    let proxy = Proxy::start_with(app_at(upstream), limits).await;
    let (mut reader, upload) = endless_upload(&proxy).await;
    let mut answer = Vec::new();
    // The 504, then the client connection closed (not left for the idle timeout).
    within(20, "the 504 and the close", reader.read_to_end(&mut answer))
        .await
        .expect("read");
    upload.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), 504, "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // The upstream connection goes too, though the upstream never reads.
    eventually(10, "the upstream connection closed", || {
        established_to(upstream.port()) == 0
    })
    .await;
}

/// A body that stops arriving after the upstream answered early cannot
/// hold the connections either: the exchange is given up after the body
/// timeout.
#[tokio::test]
async fn a_body_that_stops_after_an_early_answer_ends_the_connection() {
    let limits = Limits {
        client_body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start_with(app_at(early_answering_upstream().await), limits).await;
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // Nothing more is sent: the proxy must end it (an abort, with the
    // response cut short), well before the 75 s idle timeout.
    let _ = within(10, "the connection closed", tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// An upstream that dies without answering is still the upstream's: 502.
#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_502() {
    logs();
    let upstream = serving(|mut stream| async move {
        let mut head = [0u8; 1024];
        let _ = stream.read(&mut head).await;
    })
    .await;
    let proxy = Proxy::start(app_at(upstream)).await;
    let answer = proxy.get(APP, "/").await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.body.contains("Preview not reachable"),
        "{}",
        answer.body
    );
    eventually(5, "the upstream's fault logged", || {
        let error = format!("request to upstream {upstream} failed");
        logged(&["fault=\"upstream\"", "upstream failed", &error])
    })
    .await;
}

/// Answers every request after `delay`.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    serving(move |mut stream| async move {
        let mut head = [0u8; 4096];
        if stream.read(&mut head).await.is_err() {
            return;
        }
        // The preview taking its time, on purpose.
        tokio::time::sleep(delay).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
            .await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await
}

/// The bug this pins: upstream connections got the client's idle timeout,
/// so on HTTP/2 (whose client connection stays busy) an answer slower than
/// `idle_timeout` but within `upstream_response_timeout` became a 502.
#[tokio::test]
async fn an_answer_slower_than_the_idle_timeout_still_arrives_over_http2() {
    use support::h2::*;
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        upstream_response_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let proxy =
        Proxy::start_with(app_at(slow_upstream(Duration::from_secs(2)).await), limits).await;
    let mut h2 = RawH2::connect(&proxy).await;
    h2.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/slow"),
    ))
    .await
    .expect("request");
    // PINGs keep the client connection itself from going idle.
    let RawH2 {
        mut reader,
        mut writer,
    } = h2;
    let pings = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer
                .write_all(&frame(0x6, 0, 0, &[0u8; 8]))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let status = within(10, "the slow answer", async {
        loop {
            let frame = read_frame(&mut reader).await.expect("connection open");
            if frame.stream == 1 && frame.kind == HEADERS {
                return status_of(&frame.payload);
            }
            if frame.stream == 1 && frame.kind == RST_STREAM {
                panic!("stream reset: {frame:?}");
            }
        }
    })
    .await;
    pings.abort();
    assert_eq!(status, Some(200));
}
