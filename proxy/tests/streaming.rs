//! Bodies stream through the proxy both ways and are never buffered whole:
//! 100 MiB up and 100 MiB down over HTTP/1.1 and HTTP/2, with the process's
//! peak resident memory growing far less than one body.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use support::*;

const BODY_BYTES: u64 = 100 * 1024 * 1024;
/// Far below one body: buffering a body whole would exceed it.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];
/// One transfer at a time, so each measures only its own memory.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `left` zero bytes in 64 KiB frames from a static buffer (no allocation),
/// with an exact size hint.
struct Zeros {
    left: u64,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        let n = usize::try_from(n).expect("chunk fits usize");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Counts a body frame by frame, never holding more than one frame.
async fn count(mut body: Incoming) -> u64 {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            total += data.len() as u64;
        }
    }
    total
}

/// `POST /upload` answers with the byte count it read; `GET /download`
/// sends `BODY_BYTES` zeros.
async fn counting_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/upload" {
                        let n = count(req.into_body()).await;
                        http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(
                            n.to_string(),
                        )))
                    } else {
                        http_body_util::Either::Right(Zeros { left: BODY_BYTES })
                    };
                    Ok::<_, hyper::Error>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Runs `transfer` and asserts the peak RSS grew less than the bound.
async fn with_bounded_memory<F: std::future::Future<Output = ()>>(what: &str, transfer: F) {
    let _one = ONE_AT_A_TIME.lock().await;
    // "5" resets the peak (VmHWM) to the current RSS; without it the peak
    // since process start is compared, which is only weaker.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kib("VmRSS:");
    transfer.await;
    let peak = status_kib("VmHWM:");
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "{what}: peak RSS grew by {growth} KiB for a {} MiB body",
        BODY_BYTES >> 20
    );
}

async fn start() -> Proxy {
    Proxy::start(app_at(counting_upstream().await)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mib_streams_over_http1() {
    let proxy = start().await;
    with_bounded_memory("HTTP/1.1 upload", async {
        let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("/upload")
            .header(HOST, APP)
            .body(Zeros { left: BODY_BYTES })
            .expect("request");
        let response = within(120, "upload", sender.send_request(req))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let answer = Answer::read(response).await;
        assert_eq!(answer.body, BODY_BYTES.to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_100_mib_streams_over_http1() {
    let proxy = start().await;
    with_bounded_memory("HTTP/1.1 download", async {
        let tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/download")
            .header(HOST, APP)
            .body(Zeros { left: 0 })
            .expect("request");
        let response = within(10, "download headers", sender.send_request(req))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let n = within(120, "download body", count(response.into_body())).await;
        assert_eq!(n, BODY_BYTES);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_100_mib_streams_over_http2() {
    let proxy = start().await;
    with_bounded_memory("HTTP/2 upload", async {
        let mut sender = h2_sender(&proxy, APP).await;
        let req = Request::post(format!("https://{APP}/upload"))
            .body(Zeros { left: BODY_BYTES })
            .expect("request");
        let response = within(120, "upload", sender.send_request(req))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let answer = Answer::read(response).await;
        assert_eq!(answer.body, BODY_BYTES.to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_100_mib_streams_over_http2() {
    let proxy = start().await;
    with_bounded_memory("HTTP/2 download", async {
        let mut sender = h2_sender(&proxy, APP).await;
        let req = Request::get(format!("https://{APP}/download"))
            .body(Zeros { left: 0 })
            .expect("request");
        let response = within(10, "download headers", sender.send_request(req))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let n = within(120, "download body", count(response.into_body())).await;
        assert_eq!(n, BODY_BYTES);
    })
    .await;
}
