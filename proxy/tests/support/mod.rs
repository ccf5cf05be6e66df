//! Shared by the proxy's socket tests: a CA in a temp dir, the HTTPS server
//! on 127.0.0.1:0, in-process upstreams, and a rustls client that trusts
//! only the CA. Each test binary uses part of it.
#![allow(dead_code)]

pub mod certs;
pub mod h2;
pub mod nginx;
pub mod pebble;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use previewd_proxy::{
    self_signed, serve_https, server_config, CertificateAuthority, Limits, Route, RouteTable,
    SharedRoutes,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ResolvesServerCert;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const DOMAIN: &str = "preview.test";
pub const APP: &str = "app.preview.test";

/// Awaits `fut`, failing the test if it takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {secs}s"),
    }
}

/// A running HTTPS proxy with its CA; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub routes: SharedRoutes,
    pub ca_pem: String,
    pub _ca_dir: TempDir,
    pub stop: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    pub async fn start(table: RouteTable) -> Proxy {
        Self::start_with(table, Limits::default()).await
    }

    /// Like [`Proxy::start`], with the given limits.
    pub async fn start_with(table: RouteTable, limits: Limits) -> Proxy {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(&ca_dir.path().join("tls")).expect("CA");
        let ca_pem = ca.cert_pem().to_owned();
        let resolver = self_signed(Arc::new(ca), DOMAIN);
        Self::start_resolved(table, limits, resolver, ca_pem, ca_dir).await
    }

    /// Serves `table` with certificates from `resolver`; clients trust only
    /// `ca_pem`. `dir` is kept until the proxy is dropped.
    pub async fn start_resolved(
        table: RouteTable,
        limits: Limits,
        resolver: Arc<dyn ResolvesServerCert>,
        ca_pem: String,
        ca_dir: TempDir,
    ) -> Proxy {
        let tls = server_config(resolver);
        let routes: SharedRoutes = Arc::new(ArcSwap::from_pointee(table));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_https(
            listener,
            routes.clone(),
            tls,
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        Proxy {
            addr,
            routes,
            ca_pem,
            _ca_dir: ca_dir,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub async fn tls(
        &self,
        sni: &str,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<TcpStream>, std::io::Error> {
        tls_connect(self.addr, &self.ca_pem, sni, alpn).await
    }

    /// One HTTP/1.1 GET over a fresh TLS connection whose SNI is `host`.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        let req = Request::get(path)
            .header(HOST, host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let sni = host.split(':').next().unwrap_or(host);
        self.send_h1(sni, req).await
    }

    /// One HTTP/1.1 request over a fresh TLS connection with SNI `sni`.
    pub async fn send_h1(&self, sni: &str, req: Request<Full<Bytes>>) -> Answer {
        let tls = self.tls(sni, &[b"http/1.1"]).await.expect("TLS handshake");
        send_h1_over(tls, req).await
    }
}

/// An HTTP/2 client connection to the proxy with SNI `sni`, its connection
/// driven in a task of its own.
pub async fn h2_sender<B>(proxy: &Proxy, sni: &str) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = proxy.tls(sni, &[b"h2"]).await.expect("TLS");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// One HTTP/1.1 request over an already established TLS connection.
pub async fn send_h1_over(tls: TlsStream<TcpStream>, req: Request<Full<Bytes>>) -> Answer {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let response = within(10, "HTTP/1.1 request", sender.send_request(req))
        .await
        .expect("response");
    Answer::read(response).await
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let body = within(10, "response body", body.collect())
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn assert_noindex(&self) {
        assert_eq!(self.header("x-robots-tag"), "noindex", "{self:?}");
    }
}

pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let connector = TlsConnector::from(client_config(ca_pem, alpn));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    within(10, "TLS handshake", connector.connect(name, tcp)).await
}

/// An HTTP/1.1 upstream that echoes what it received, one `key=value` per line.
pub async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let header = |name: &str| {
                        req.headers()
                            .get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap_or("?").to_owned())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let mut text = format!(
                        "host={}\nxff={}\nxfp={}\nxfh={}\nforwarded={}\nhop={}\nuri={}\n",
                        header("host"),
                        header("x-forwarded-for"),
                        header("x-forwarded-proto"),
                        header("x-forwarded-host"),
                        header("forwarded"),
                        header("x-hop"),
                        req.uri(),
                    );
                    let body = req.into_body().collect().await?.to_bytes();
                    text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                    let response = Response::builder()
                        .header("connection", "x-upstream-hop")
                        .header("x-upstream-hop", "secret")
                        .body(Full::new(Bytes::from(text)))
                        .expect("echo response");
                    Ok::<_, hyper::Error>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

pub fn live(upstream: SocketAddr) -> Route {
    Route::Live { upstream }
}

/// Raw bytes over a fresh HTTP/1.1 TLS connection with SNI `APP`; returns
/// everything the proxy sent until it closed the connection.
pub async fn raw_h1(proxy: &Proxy, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = proxy.tls(APP, &[b"http/1.1"]).await.expect("TLS");
    tls.write_all(request).await.expect("write request");
    tls.flush().await.expect("flush");
    let mut out = Vec::new();
    // A reset after the answer still leaves the answer in `out`.
    let _ = within(
        10,
        "proxy closing the connection",
        tls.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1 `text`.
pub fn raw_status(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// An upstream that counts the TCP connections it accepts and answers
/// every request with 200 "upstream".
pub async fn counting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"upstream"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// An upstream that accepts connections and never reads or answers.
pub async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// Polls `check` every 20 ms until it is true, failing after `secs`.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    within(secs, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A table with `APP` live at `upstream`.
pub fn app_at(upstream: SocketAddr) -> RouteTable {
    let mut table = RouteTable::new();
    table.insert(APP, live(upstream));
    table
}

/// A route table with no routes, for certificate sources that do not read it.
pub fn no_routes() -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(RouteTable::new()))
}

/// What a [`raw_echo_upstream`] received.
#[derive(Clone, Default)]
pub struct Received {
    /// TCP connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes read, over all connections.
    pub bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Each complete request, exactly as it arrived.
    pub requests: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Received {
    /// Nothing at all reached the upstream: no connection, no byte.
    pub fn nothing(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }

    /// The only complete request, as text.
    pub fn only_request(&self) -> String {
        let requests = self.requests.lock().expect("requests");
        assert_eq!(requests.len(), 1, "requests: {requests:?}");
        String::from_utf8_lossy(&requests[0]).into_owned()
    }
}

/// An upstream that reads HTTP/1.1 itself (the head to its blank line, then
/// a body by `Content-Length` or chunked) and answers each request with 200
/// and the request's raw bytes as the body: tests see exactly what the
/// proxy sent, and whether anything reached the upstream at all.
pub async fn raw_echo_upstream() -> (SocketAddr, Received) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let received = Received::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(len) = complete_request(&buf) else {
                        let mut chunk = [0u8; 16 * 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                seen.bytes.fetch_add(n, Ordering::SeqCst);
                                buf.extend_from_slice(&chunk[..n]);
                            }
                        }
                        continue;
                    };
                    let request: Vec<u8> = buf.drain(..len).collect();
                    seen.requests
                        .lock()
                        .expect("requests")
                        .push(request.clone());
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        request.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&request);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// The length of the complete request at the start of `buf`, if it is all
/// there: its head to the blank line, then a body by `Content-Length` or
/// chunked, judging nothing else (what a proxy forwards is well-formed).
pub fn complete_request(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let field = |name: &str| {
        head.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
            })
            .map(|value| value.trim().to_owned())
    };
    if field("transfer-encoding").is_some() {
        let mut at = head_end;
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let line = String::from_utf8_lossy(&buf[at..line_end]);
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailer fields up to the blank line.
                loop {
                    let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                    let blank = end == at;
                    at = end + 2;
                    if blank {
                        return Some(at);
                    }
                }
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len = field("content-length").map_or(Some(0), |v| v.parse::<usize>().ok())?;
    (buf.len() >= head_end + len).then_some(head_end + len)
}
