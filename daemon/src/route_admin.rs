//! The standalone proxy's admin API: HTTP/1.1 over a Unix socket to change routes while it
//! runs (`GET /v1/routes`, `PUT /v1/routes/<host>` with the upstream address as body,
//! `DELETE /v1/routes/<host>`), and the client the `previewd proxy route` verbs use. Every
//! change publishes one whole new route table; it never touches TLS or the listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use previewd_proxy::{normalize_host, Route, RouteTable, SharedRoutes};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::control;

const ROUTES: &str = "/v1/routes";
/// An upstream address is a few dozen bytes; refuse to buffer more.
const MAX_BODY: usize = 1024;

/// Why a `previewd proxy route` call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no proxy answers on {}: {source}", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin request failed: {0}")]
    Request(#[from] http::Error),
    #[error("proxy answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: UnixListener, routes: SharedRoutes, shutdown: CancellationToken) {
    control::serve_unix(listener, shutdown, "admin", move |req| {
        let routes = routes.clone();
        async move { handle(req, &routes).await }
    })
    .await;
}

async fn handle(req: Request<Incoming>, routes: &SharedRoutes) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == ROUTES {
        return match *req.method() {
            Method::GET => text(StatusCode::OK, list_routes(&routes.load())),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()),
        };
    }
    let Some(raw_host) = path.strip_prefix(ROUTES).and_then(|p| p.strip_prefix('/')) else {
        return text(StatusCode::NOT_FOUND, "no such endpoint\n".into());
    };
    let Some(host) = normalize_host(raw_host) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{raw_host:?} is not a host name\n"),
        );
    };
    match req.method().clone() {
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "body must be an upstream address such as 127.0.0.1:3000\n".into(),
                    )
                }
            };
            let Some(upstream) = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{:?} is not an upstream address such as 127.0.0.1:3000\n",
                        String::from_utf8_lossy(&body)
                    ),
                );
            };
            // One whole new table per change, built from the one it replaces.
            routes.rcu(|table| {
                let mut next = RouteTable::clone(table);
                next.insert(&host, Route::Live { upstream });
                next
            });
            tracing::info!(host = %host, upstream = %upstream, "route set");
            text(StatusCode::OK, format!("{host}={upstream}\n"))
        }
        Method::DELETE => {
            let previous = routes.rcu(|table| {
                let mut next = RouteTable::clone(table);
                next.remove(&host);
                next
            });
            if previous.get(&host).is_none() {
                return text(StatusCode::NOT_FOUND, format!("no route for {host}\n"));
            }
            tracing::info!(host = %host, "route removed");
            text(StatusCode::OK, format!("removed {host}\n"))
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE\n".into()),
    }
}

/// `HOST=ADDR` lines, sorted by host; routes that are not live show their kind.
fn list_routes(table: &RouteTable) -> String {
    let mut lines: Vec<String> = table
        .iter()
        .map(|(host, route)| match route {
            Route::Live { upstream } => format!("{host}={upstream}\n"),
            Route::Building { .. } => format!("{host} building\n"),
            Route::Failed { .. } => format!("{host} failed\n"),
            Route::Gone => format!("{host} gone\n"),
        })
        .collect();
    lines.sort_unstable();
    lines.concat()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// Routes `host` to `upstream` on the proxy behind `socket`; answers the proxy's one line.
pub async fn add(socket: &Path, host: &str, upstream: SocketAddr) -> Result<String, AdminError> {
    let path = format!("{ROUTES}/{host}");
    call(socket, Method::PUT, &path, upstream.to_string()).await
}

/// Removes the route of `host`; answers the proxy's one line.
pub async fn remove(socket: &Path, host: &str) -> Result<String, AdminError> {
    let path = format!("{ROUTES}/{host}");
    call(socket, Method::DELETE, &path, String::new()).await
}

/// Every route, one `HOST=ADDR` line each.
pub async fn list(socket: &Path) -> Result<String, AdminError> {
    call(socket, Method::GET, ROUTES, String::new()).await
}

async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: String,
) -> Result<String, AdminError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| AdminError::NotRunning {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "previewd-proxy")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let message = String::from_utf8_lossy(&body).trim_end().to_owned();
    if !status.is_success() {
        return Err(AdminError::Refused { status, message });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_listed_sorted_as_host_equals_addr() {
        let mut table = RouteTable::new();
        table.insert(
            "b.test",
            Route::Live {
                upstream: ([127, 0, 0, 1], 2).into(),
            },
        );
        table.insert(
            "A.test",
            Route::Live {
                upstream: ([127, 0, 0, 1], 1).into(),
            },
        );
        table.insert("c.test", Route::Gone);
        assert_eq!(
            list_routes(&table),
            "a.test=127.0.0.1:1\nb.test=127.0.0.1:2\nc.test gone\n"
        );
    }
}
