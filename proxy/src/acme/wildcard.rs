//! DNS-01, the default: one certificate for `*.<domain>` and `<domain>`,
//! served to every handshake once issued, renewed in the background. It owns
//! when the wildcard is issued; how is [`super::issue`], through the
//! operator's hook.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::dns_hook::DnsHook;
use super::issue::Solver;
use super::store::Store;
use super::{obtain, retry_delay, should_renew, AcmeError, AcmeSettings, AttemptError};
use crate::ca::CertificateAuthority;
use crate::cert_source::{CertSource, CertStatus, Serving};
use crate::pem_pair::{self, ServedCert};
use crate::tls::CaResolver;

/// The ACME certificate when there is one, previewd's CA until then.
#[derive(Debug)]
struct AcmeResolver {
    current: ArcSwapOption<CertifiedKey>,
    fallback: CaResolver,
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.load_full() {
            Some(key) => Some(key),
            None => self.fallback.resolve(client_hello),
        }
    }
}

/// Serves the persisted certificate (if any, valid for `domain`) and starts
/// the renewal loop until `shutdown`.
pub(super) fn start(
    settings: &AcmeSettings,
    store: Store,
    hook: DnsHook,
    domain: &str,
    ca: Arc<CertificateAuthority>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<CertSource, AcmeError> {
    let current = load_persisted(&store, domain)?;
    let resolver = Arc::new(AcmeResolver {
        current: ArcSwapOption::from(current.as_ref().map(|c| c.key.clone())),
        fallback: CaResolver::new(ca, domain),
    });
    match &current {
        Some(cert) => {
            tracing::info!(dir = %store.dir().display(), not_after = ?cert.not_after, "serving persisted ACME certificate")
        }
        None => tracing::info!(
            domain,
            "no ACME certificate yet; previewd's CA serves until one is issued"
        ),
    }
    let (status_tx, status) = watch::channel(status_of(current.as_ref(), None));
    let renewer = Renewer {
        settings: settings.clone(),
        store,
        hook,
        domain: domain.to_owned(),
        resolver: resolver.clone(),
        status: status_tx,
        current,
    };
    tokio::spawn(renewer.run(shutdown));
    Ok(CertSource {
        resolver,
        status,
        http01: None,
    })
}

/// The persisted certificate, if it parses, matches its key and covers
/// `*.<domain>` and `<domain>`; otherwise `None` (and a new one is issued).
fn load_persisted(store: &Store, domain: &str) -> Result<Option<ServedCert>, AcmeError> {
    let Some(stored) = store.load_cert()? else {
        return Ok(None);
    };
    match pem_pair::parse(&stored.cert_pem, &stored.key_pem) {
        Ok(cert) if covers(&cert, domain) => Ok(Some(cert)),
        Ok(cert) => {
            tracing::warn!(names = ?cert.dns_names, domain, "persisted ACME certificate is for other names; issuing a new one");
            Ok(None)
        }
        Err(err) => {
            tracing::warn!(dir = %store.dir().display(), error = %err, "persisted ACME certificate is unusable; issuing a new one");
            Ok(None)
        }
    }
}

fn covers(cert: &ServedCert, domain: &str) -> bool {
    let wildcard = format!("*.{domain}");
    cert.dns_names.contains(&wildcard) && cert.dns_names.iter().any(|n| n == domain)
}

fn status_of(current: Option<&ServedCert>, last_error: Option<String>) -> CertStatus {
    match current {
        Some(cert) => CertStatus {
            serving: Serving::Acme,
            not_after: Some(cert.not_after),
            last_error,
        },
        None => CertStatus {
            serving: Serving::AcmeFallback,
            not_after: None,
            last_error,
        },
    }
}

/// The renewal loop's state.
struct Renewer {
    settings: AcmeSettings,
    store: Store,
    hook: DnsHook,
    domain: String,
    resolver: Arc<AcmeResolver>,
    status: watch::Sender<CertStatus>,
    /// What handshakes get now; `None` while the CA stands in.
    current: Option<ServedCert>,
}

impl Renewer {
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            let due = self.current.as_ref().is_none_or(|cert| {
                should_renew(cert.not_after, SystemTime::now(), cert.lifetime())
            });
            let wait = if due {
                let attempt = tokio::select! {
                    () = &mut shutdown => return,
                    result = self.renew() => result,
                };
                match attempt {
                    Ok(cert) => {
                        failures = 0;
                        tracing::info!(domain = %self.domain, not_after = ?cert.not_after, "ACME certificate issued");
                        self.resolver.current.store(Some(cert.key.clone()));
                        self.current = Some(cert);
                        self.status
                            .send_replace(status_of(self.current.as_ref(), None));
                        self.settings.renew_check_interval
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let retry_in = retry_delay(failures, self.settings.renew_check_interval);
                        let serving = if self.current.is_some() {
                            "the current ACME certificate"
                        } else {
                            "previewd's CA"
                        };
                        tracing::warn!(domain = %self.domain, error = %err, ?retry_in, serving, "ACME issuance failed; keeping what is served");
                        self.status
                            .send_replace(status_of(self.current.as_ref(), Some(err.to_string())));
                        retry_in
                    }
                }
            } else {
                self.settings.renew_check_interval
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn renew(&self) -> Result<ServedCert, AttemptError> {
        let names = [format!("*.{}", self.domain), self.domain.clone()];
        let (issued, cert) = obtain(
            &self.settings,
            &self.store,
            &names,
            Solver::Dns01(&self.hook),
        )
        .await?;
        self.store.save_cert(&issued)?;
        Ok(cert)
    }
}
