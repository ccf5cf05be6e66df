//! The crate's parsing and routing decisions, exposed for the fuzz targets
//! in `fuzz/` only (feature `fuzzing`). Nothing here is API.

use http::header::LOCATION;
use http::Request;

pub use crate::host::normalize_host;

/// True when normalized `name` is `domain` or a name below it.
pub fn is_within(name: &str, domain: &str) -> bool {
    crate::host::is_within(name, domain)
}

/// The normalized host the plain-HTTP redirect reads from a request.
pub fn routed_host<B>(req: &Request<B>) -> Option<String> {
    crate::host::request_host(req).map(|host| host.name)
}

/// The `Location` the plain-HTTP listener would send for `req`, or `None`
/// when it refuses to redirect.
pub fn redirect_location<B>(req: &Request<B>, domain: &str, https_port: u16) -> Option<String> {
    let Ok(response) = crate::redirect::redirect(req, domain, https_port);
    let location = response.headers().get(LOCATION)?;
    Some(location.to_str().ok()?.to_owned())
}

/// The HTTP/1.1 framing scanner's reading of `stream` fed in pieces of the
/// sizes `pieces` gives (cycled): each of the first `requests` heads'
/// refusal, if any (as text), and where the stream was cut and why.
pub fn scan_framing(
    stream: &[u8],
    pieces: &[usize],
    requests: usize,
) -> (Vec<Option<String>>, Option<(usize, &'static str)>) {
    let (refusals, cut) = crate::framing::scan(stream, pieces, requests);
    let refusals = refusals
        .into_iter()
        .map(|refusal| refusal.map(|refusal| refusal.to_string()))
        .collect();
    (refusals, cut)
}

/// One request as hyper dispatched it, on a connection whose bytes the
/// framing scanner also read, with the scanner's verdict for it.
#[derive(Debug)]
pub struct Dispatched {
    pub method: http::Method,
    pub uri: http::Uri,
    /// Field lines, as hyper kept them.
    pub fields: usize,
    /// The scanner's refusal for this request, if any.
    pub refused: bool,
}

/// One request head as the framing scanner read it.
#[derive(Debug)]
pub struct Scanned {
    /// The raw request line.
    pub request_line: Vec<u8>,
    /// Field lines.
    pub fields: usize,
}

/// `stream` served by hyper's HTTP/1.1 server over the framing scanner, as
/// previewd serves it (a refused or switching request ends the
/// connection): what hyper dispatched, and the request lines the scanner
/// saw, in order. The two must agree head for head up to the first refusal.
pub fn scanner_against_hyper(stream: &[u8]) -> (Vec<Dispatched>, Vec<Scanned>) {
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use http::header::{CONNECTION, UPGRADE};
    use http::{Method, Response};
    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    });
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (server, verdicts) = crate::framing::watch(server);
        let dispatched = Arc::new(Mutex::new(Vec::new()));
        let seen = dispatched.clone();
        let scanned = verdicts.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let refusal = scanned.next_refusal();
            let ends = refusal.is_some()
                || req.method() == Method::CONNECT
                || req.headers().contains_key(UPGRADE);
            if let Ok(mut seen) = seen.lock() {
                seen.push(Dispatched {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    fields: req.headers().len(),
                    refused: refusal.is_some(),
                });
            }
            async move {
                if !ends {
                    // Read the body as the upstream hop would.
                    let _ = req.into_body().collect().await;
                }
                let mut response = Response::new(Empty::<bytes::Bytes>::new());
                if ends {
                    response
                        .headers_mut()
                        .insert(CONNECTION, http::HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(1))
            .max_header_size(64 * 1024);
        let conn = builder.serve_connection(TokioIo::new(server), service);
        let talk = async {
            let _ = client.write_all(stream).await;
            let _ = client.shutdown().await;
            let mut answers = Vec::new();
            let _ = client.read_to_end(&mut answers).await;
        };
        let both = async { tokio::join!(conn, talk) };
        let _ = tokio::time::timeout(Duration::from_secs(5), both).await;
        let dispatched = std::mem::take(&mut *dispatched.lock().unwrap_or_else(|e| e.into_inner()));
        let scanned = verdicts
            .heads_read()
            .into_iter()
            .map(|(request_line, fields)| Scanned {
                request_line,
                fields,
            })
            .collect();
        (dispatched, scanned)
    })
}
