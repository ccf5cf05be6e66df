//! Mode "acme": one certificate for `*.<domain>` and `<domain>` from an ACME
//! (RFC 8555) server such as Let's Encrypt, validated by DNS-01 through an
//! operator hook ([`dns_hook`]), persisted in the state dir ([`store`]) and
//! renewed in the background. It owns when to issue; how is [`issue`].
//!
//! Why one DNS-01 wildcard: every certificate is published in Certificate
//! Transparency logs. Per-host certificates (HTTP-01 or TLS-ALPN-01) would
//! publish every branch name (`fix-login-bug.preview.example.com`) to the
//! world; a wildcard publishes only `*.preview.example.com`. Per-host
//! challenges are therefore not offered.
//!
//! Until the first certificate arrives (first start, ACME server or DNS
//! unreachable) handshakes get per-host leaves from previewd's own CA, as in
//! mode "self-signed". A persisted certificate is served at once on start, and
//! the ACME server is contacted only when it is missing or due for renewal.

mod dns_hook;
mod issue;
mod store;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub use dns_hook::HookError;
pub use issue::IssueError;
pub use store::StoreError;

use crate::ca::CertificateAuthority;
use crate::cert_source::{CertStatus, Serving};
use crate::pem_pair::{self, ServedCert};
use crate::tls::CaResolver;
use store::Store;

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Renew when less than this remains (Let's Encrypt's 90-day certificates
/// then renew at two thirds of their life).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// First retry after a failed issuance; doubles up to the check interval.
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// One issuance, hook calls and polling included, may take this long.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Settings of mode "acme".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Directory URL of the ACME server.
    pub directory: String,
    /// Extra PEM roots to trust for the ACME server's HTTPS (a private CA,
    /// pebble), on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// Contact address registered with the account (expiry notices).
    pub email: Option<String>,
    /// Program called as `<hook> set|clear <record-name> <value>`.
    pub dns_hook: PathBuf,
    /// Limit for one hook call.
    pub hook_timeout: Duration,
    /// How often the certificate's remaining validity is checked.
    pub renew_check_interval: Duration,
}

impl AcmeSettings {
    /// Let's Encrypt production, no contact, 2-minute hook timeout, checks
    /// every 12 hours.
    pub fn new(dns_hook: PathBuf) -> Self {
        Self {
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            ca_file: None,
            email: None,
            dns_hook,
            hook_timeout: Duration::from_secs(120),
            renew_check_interval: Duration::from_secs(12 * 3600),
        }
    }
}

/// Why mode "acme" cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The state directory cannot be created or read.
    #[error("ACME state: {0}")]
    Store(#[from] StoreError),
}

/// `true` when a certificate valid until `not_after` for `lifetime` in all
/// should be replaced at `now`: less than 30 days or a third of its lifetime
/// (whichever is shorter) remain, or it has expired.
pub(crate) fn should_renew(not_after: SystemTime, now: SystemTime, lifetime: Duration) -> bool {
    let threshold = RENEW_BEFORE.min(lifetime / 3);
    match not_after.duration_since(now) {
        Ok(remaining) => remaining < threshold,
        Err(_) => true,
    }
}

/// Wait before retry number `failures` (1 = after the first failure).
fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(cap)
}

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
pub(crate) async fn start(
    settings: &AcmeSettings,
    tls_dir: &Path,
    domain: &str,
    ca: Arc<CertificateAuthority>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Arc<dyn ResolvesServerCert>, watch::Receiver<CertStatus>), AcmeError> {
    let store = Store::open(tls_dir, &settings.directory)?;
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
        domain: domain.to_owned(),
        resolver: resolver.clone(),
        status: status_tx,
        current,
    };
    tokio::spawn(renewer.run(shutdown));
    Ok((resolver, status))
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
    domain: String,
    resolver: Arc<AcmeResolver>,
    status: watch::Sender<CertStatus>,
    /// What handshakes get now; `None` while the CA stands in.
    current: Option<ServedCert>,
}

/// Why one renewal attempt failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("issuance did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the ACME server's certificate is unusable: {0}")]
    Unusable(#[source] pem_pair::PemPairError),
    #[error("saving the new certificate: {0}")]
    Store(#[from] StoreError),
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

    async fn renew(&self) -> Result<ServedCert, RenewError> {
        let issued = tokio::time::timeout(
            ISSUE_TIMEOUT,
            issue::issue(&self.settings, &self.store, &self.domain),
        )
        .await
        .map_err(|_| RenewError::Timeout(ISSUE_TIMEOUT))??;
        let cert =
            pem_pair::parse(&issued.cert_pem, &issued.key_pem).map_err(RenewError::Unusable)?;
        self.store.save_cert(&issued)?;
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_timing() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        for (remaining_days, lifetime_days, expect) in [
            // Let's Encrypt's 90 days: renew in the last 30.
            (60, 90, false),
            (31, 90, false),
            (29, 90, true),
            (0, 90, true),
            // A year-long certificate still renews 30 days ahead, not 120.
            (100, 365, false),
            (29, 365, true),
            // Short-lived (6 days): a third of the lifetime.
            (3, 6, false),
            (1, 6, true),
        ] {
            let not_after = now + remaining_days * DAY;
            assert_eq!(
                should_renew(not_after, now, lifetime_days * DAY),
                expect,
                "{remaining_days} of {lifetime_days} days left"
            );
        }
        let expired = now - DAY;
        assert!(should_renew(expired, now, 90 * DAY));
    }

    #[test]
    fn retries_back_off_up_to_the_check_interval() {
        let cap = Duration::from_secs(12 * 3600);
        assert_eq!(retry_delay(1, cap), Duration::from_secs(60));
        assert_eq!(retry_delay(2, cap), Duration::from_secs(120));
        assert_eq!(retry_delay(5, cap), Duration::from_secs(960));
        assert_eq!(retry_delay(40, cap), cap);
        assert_eq!(
            retry_delay(1, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
