//! The one place that turns a certificate mode into the resolver the HTTPS
//! listener uses (and, for ACME HTTP-01, the responder the plain-HTTP
//! listener uses), and starts the mode's background work (file polling, ACME
//! renewal) tied to the caller's shutdown. It must not read configuration
//! files: the daemon hands it a validated [`TlsMode`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::server::ResolvesServerCert;
use tokio::sync::watch;

use crate::acme::{self, AcmeError, AcmeSettings, Http01Responder};
use crate::ca::{CaError, CertificateAuthority};
use crate::cert_files::{self, CertFilesError};
use crate::routes::SharedRoutes;
use crate::tls::self_signed;

/// Where the served certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// previewd's own CA issues a leaf per host (`<state_dir>/tls/ca.pem`).
    #[default]
    SelfSigned,
    /// An operator-managed PEM chain and key, polled for replacement.
    Files {
        /// PEM certificate chain, leaf first.
        cert: PathBuf,
        /// PEM private key of the leaf.
        key: PathBuf,
    },
    /// Certificates from an ACME server: one wildcard via DNS-01, or one
    /// per route-table host via HTTP-01.
    Acme(AcmeSettings),
}

/// Which kind of certificate handshakes currently get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Per-host leaves from previewd's own CA (mode "self-signed").
    SelfSigned,
    /// The certificate read from the configured files.
    Files,
    /// The certificate issued by the ACME server.
    Acme,
    /// Mode "acme" before its first certificate: previewd's own CA stands in.
    AcmeFallback,
    /// Mode "acme" with HTTP-01: each host's own certificate once issued,
    /// previewd's own CA for hosts without one yet.
    AcmePerHost,
}

/// What the certificate source is doing, for logs, status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    /// What handshakes get now.
    pub serving: Serving,
    /// End of validity of the served certificate (with HTTP-01, of the one
    /// that expires first); `None` for previewd's CA leaves.
    pub not_after: Option<SystemTime>,
    /// The last reload or renewal failure, cleared by the next success.
    pub last_error: Option<String>,
}

/// A resolver for [`crate::server_config`] and a view of its state.
#[derive(Clone)]
pub struct CertSource {
    /// Chooses the certificate of each handshake.
    pub resolver: Arc<dyn ResolvesServerCert>,
    /// Updated whenever the served certificate or the last error changes.
    pub status: watch::Receiver<CertStatus>,
    /// ACME HTTP-01 only: the pending challenges the plain-HTTP listener
    /// must answer ([`crate::serve_redirect`]).
    pub http01: Option<Http01Responder>,
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSource")
            .field("status", &*self.status.borrow())
            .field("http01", &self.http01)
            .finish_non_exhaustive()
    }
}

/// Why no certificate source could be started; previewd must not start then.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// previewd's own CA (mode "self-signed", or the ACME stand-in).
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    /// Mode "files": the files are unreadable or not a matching pair.
    #[error(transparent)]
    Files(#[from] CertFilesError),
    /// Mode "acme": the persisted state or the settings are unusable.
    #[error(transparent)]
    Acme(#[from] AcmeError),
}

/// Builds the resolver for `mode` under base `domain`, keeping state in
/// `<state_dir>/tls`. Mode "files" loads the pair now and polls it every
/// second; mode "acme" serves persisted certificates at once and issues or
/// renews in the background, with HTTP-01 for each host of `routes` (the
/// other modes do not read `routes`). Background work stops when `shutdown`
/// resolves.
pub async fn build_resolver(
    mode: &TlsMode,
    state_dir: &Path,
    domain: &str,
    routes: &SharedRoutes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<CertSource, TlsError> {
    let tls_dir = state_dir.join("tls");
    match mode {
        TlsMode::SelfSigned => {
            let ca = Arc::new(CertificateAuthority::load_or_create(&tls_dir)?);
            let (_, status) = watch::channel(CertStatus {
                serving: Serving::SelfSigned,
                not_after: None,
                last_error: None,
            });
            Ok(CertSource {
                resolver: self_signed(ca, domain),
                status,
                http01: None,
            })
        }
        TlsMode::Files { cert, key } => {
            let (resolver, status) = cert_files::start(cert, key, shutdown).await?;
            Ok(CertSource {
                resolver,
                status,
                http01: None,
            })
        }
        TlsMode::Acme(settings) => {
            let ca = Arc::new(CertificateAuthority::load_or_create(&tls_dir)?);
            Ok(acme::start(settings, &tls_dir, domain, routes, ca, shutdown).await?)
        }
    }
}
