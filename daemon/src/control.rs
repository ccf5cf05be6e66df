//! The control API on `<state-dir>/previewd.sock`: HTTP/1.1 over a Unix socket, spoken by the
//! CLI (`previewd ls`) and by the git hook (poke). The server only reads the published status
//! and sends triggers; it never touches git or Docker itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::PreviewStatus;
use crate::reconcile::{GcRequest, SharedStatus, Trigger};

/// How long a poke waits for its reconcile pass before answering with what is known.
const POKE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("previewd is not running (no control socket at {path}): {source}")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another previewd already serves {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("control request failed: {0}")]
    Request(#[from] http::Error),
    #[error("previewd answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("previewd answered something unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Binds the control socket, replacing a stale socket file left by a daemon that died, but
/// refusing to steal it from one that still answers.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    // The git hook runs as whoever pushes: members of the state dir's group may talk to the
    // daemon, others may not.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// What the control API reads and asks the reconciler through.
#[derive(Clone)]
pub struct Channels {
    pub status: SharedStatus,
    pub triggers: mpsc::Sender<Trigger>,
    pub gc: mpsc::Sender<GcRequest>,
}

/// Serves the control API until `shutdown`.
pub async fn serve(listener: UnixListener, channels: Channels, shutdown: CancellationToken) {
    serve_unix(listener, shutdown, "control", move |req| {
        handle(req, channels.clone())
    })
    .await;
}

/// HTTP/1.1 on a unix socket until `shutdown`: one task per connection, every request
/// answered by `handler`. `what` names the socket in logs.
pub async fn serve_unix<H, Fut>(
    listener: UnixListener,
    shutdown: CancellationToken,
    what: &'static str,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(socket = what, %error, "socket accept failed");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(socket = what, %error, "connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, channels: Channels) -> Response<Full<Bytes>> {
    let Channels {
        status,
        triggers,
        gc,
    } = channels;
    match (req.method(), req.uri().path()) {
        (method @ (&Method::GET | &Method::POST), "/v1/gc") => {
            let (reply, answer) = oneshot::channel();
            let request = GcRequest {
                apply: method == Method::POST,
                reply,
            };
            if gc.send(request).await.is_err() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "previewd is shutting down\n",
                );
            }
            match answer.await {
                Ok(Ok(lines)) => json(&lines),
                Ok(Err(error)) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{error}\n")),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "previewd is shutting down\n",
                ),
            }
        }
        (&Method::GET, "/v1/previews") => json(status.load().as_ref()),
        (&Method::POST, "/v1/poke") => {
            let (reply, answer) = oneshot::channel();
            // A full queue means a pass is already due: this poke is answered by it anyway.
            let _ = triggers.try_send(Trigger { reply: Some(reply) });
            match tokio::time::timeout(POKE_WAIT, answer).await {
                Ok(Ok(rows)) => json(&rows),
                _ => json(status.load().as_ref()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("static response")
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("control answers serialize");
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// The running daemon's previews, as `previewd ls` shows them.
pub async fn list(socket: &Path) -> Result<Vec<PreviewStatus>, ControlError> {
    call(socket, Method::GET, "/v1/previews").await
}

/// Asks the running daemon to reconcile now; answers with the previews after that pass.
pub async fn poke(socket: &Path) -> Result<Vec<PreviewStatus>, ControlError> {
    call(socket, Method::POST, "/v1/poke").await
}

/// What collection would remove now; with `apply`, the daemon then removes it.
pub async fn gc(socket: &Path, apply: bool) -> Result<Vec<String>, ControlError> {
    let method = if apply { Method::POST } else { Method::GET };
    call(socket, method, "/v1/gc").await
}

async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<T, ControlError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "previewd")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(ControlError::Status {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(serde_json::from_slice(&body)?)
}
