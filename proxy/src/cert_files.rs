//! Mode "files": serve an operator-managed PEM certificate chain and key, and
//! take a replacement within seconds without touching open connections. The
//! files are polled (content compared every second), which also sees atomic
//! renames and symlink swaps such as Kubernetes secret volumes and
//! cert-manager do. A broken or mismatched replacement is refused, logged once
//! per distinct content, and the last good pair keeps serving. It never writes
//! the files.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::cert_source::{CertStatus, Serving};
use crate::pem_pair::{self, PemPairError, ServedCert};

/// How often the files are read and compared with what is served.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the certificate files cannot be served at start.
#[derive(Debug, thiserror::Error)]
pub enum CertFilesError {
    /// One of the files cannot be read.
    #[error("cannot read TLS file {}: {source}", path.display())]
    Read {
        /// The unreadable file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The files are readable but not a usable certificate and key.
    #[error("TLS files {} and {}: {source}", cert.display(), key.display())]
    Invalid {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong with them.
        #[source]
        source: PemPairError,
    },
}

/// Serves whatever pair was last loaded successfully, for every SNI.
#[derive(Debug)]
struct FilesResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for FilesResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The two files' bytes as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Loads `cert` + `key` (an error if unreadable, unparsable or not a pair),
/// then polls them until `shutdown`.
pub(crate) async fn start(
    cert: &Path,
    key: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Arc<dyn ResolvesServerCert>, watch::Receiver<CertStatus>), CertFilesError> {
    let contents = read(cert, key).await?;
    let served = pem_pair::parse(&contents.cert, &contents.key).map_err(|source| {
        CertFilesError::Invalid {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        }
    })?;
    let resolver = Arc::new(FilesResolver {
        current: ArcSwap::new(served.key.clone()),
    });
    let (status_tx, status) = watch::channel(status_of(&served, None));
    tracing::info!(cert = %cert.display(), names = ?served.dns_names, "serving certificate files");
    let watcher = Watcher {
        cert: cert.to_owned(),
        key: key.to_owned(),
        resolver: resolver.clone(),
        status: status_tx,
        served,
        applied: contents,
        refused: None,
    };
    tokio::spawn(watcher.run(shutdown));
    Ok((resolver, status))
}

/// The polling loop's state.
struct Watcher {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<FilesResolver>,
    status: watch::Sender<CertStatus>,
    /// The pair being served.
    served: ServedCert,
    /// The bytes `served` came from.
    applied: Contents,
    /// The last refused bytes (or read error), so each is logged only once.
    refused: Option<Result<Contents, String>>,
}

impl Watcher {
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    async fn poll(&mut self) {
        let contents = match read(&self.cert, &self.key).await {
            Ok(contents) => contents,
            Err(err) => {
                let seen = Err(err.to_string());
                if self.refused.as_ref() != Some(&seen) {
                    tracing::warn!(error = %err, "cannot read replaced TLS files; the current certificate keeps serving");
                    self.refuse(seen);
                }
                return;
            }
        };
        if contents == self.applied {
            if self.refused.is_some() {
                // The files went back to what is served: nothing is wrong any more.
                self.refused = None;
                self.publish(None);
            }
            return;
        }
        if self.refused.as_ref() == Some(&Ok(contents.clone())) {
            return;
        }
        match pem_pair::parse(&contents.cert, &contents.key) {
            Ok(served) => {
                self.resolver.current.store(served.key.clone());
                tracing::info!(cert = %self.cert.display(), names = ?served.dns_names, "reloaded certificate files");
                self.served = served;
                self.applied = contents;
                self.refused = None;
                self.publish(None);
            }
            Err(source) => {
                let err = CertFilesError::Invalid {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    source,
                };
                tracing::warn!(error = %err, "refused replaced TLS files; the current certificate keeps serving");
                self.refuse(Ok(contents));
                self.publish(Some(err.to_string()));
            }
        }
    }

    fn refuse(&mut self, seen: Result<Contents, String>) {
        if let Err(message) = &seen {
            self.publish(Some(message.clone()));
        }
        self.refused = Some(seen);
    }

    fn publish(&self, last_error: Option<String>) {
        self.status
            .send_replace(status_of(&self.served, last_error));
    }
}

fn status_of(served: &ServedCert, last_error: Option<String>) -> CertStatus {
    CertStatus {
        serving: Serving::Files,
        not_after: Some(served.not_after),
        last_error,
    }
}

/// Reads both files, following symlinks to their current targets.
async fn read(cert: &Path, key: &Path) -> Result<Contents, CertFilesError> {
    let read_one = |path: &Path| {
        let path = path.to_owned();
        async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| CertFilesError::Read { path, source })
        }
    };
    Ok(Contents {
        cert: read_one(cert).await?,
        key: read_one(key).await?,
    })
}
