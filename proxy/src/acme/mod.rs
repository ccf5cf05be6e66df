//! Mode "acme": certificates from an ACME (RFC 8555) server such as Let's
//! Encrypt, persisted in the state dir ([`store`]) and renewed in the
//! background, in one of two shapes the operator chooses:
//!
//! - DNS-01 (the default, [`wildcard`]): one certificate for `*.<domain>` and
//!   `<domain>`, validated through an operator hook ([`dns_hook`]).
//! - HTTP-01 (opt-in, [`per_host`]): one certificate per host of the route
//!   table, validated through the plain-HTTP listener ([`http01`]).
//!
//! Why DNS-01 is the default: every certificate is published in Certificate
//! Transparency logs. Per-host certificates publish every branch name
//! (`fix-login-bug.preview.example.com`) to the world and cost one
//! certificate of the CA's rate limit per preview; a wildcard publishes only
//! `*.preview.example.com`. HTTP-01 is for operators who cannot automate their
//! DNS and accept that (previewd warns at start). TLS-ALPN-01 is not offered:
//! it meets the same need as HTTP-01 but would have to be answered inside the
//! HTTPS listener's handshakes, while HTTP-01 only needs the plain-HTTP
//! listener previewd already runs.
//!
//! Until a host's certificate arrives (first start, ACME server or DNS
//! unreachable, a preview seconds old) handshakes get per-host leaves from
//! previewd's own CA, as in mode "self-signed"; no handshake waits for an
//! issuance. Persisted certificates are served at once on start. This module
//! owns the settings and the rules both shapes share; one issuance is
//! [`issue`].

mod dns_hook;
mod http01;
mod issue;
mod per_host;
mod store;
mod wildcard;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use dns_hook::HookError;
pub use http01::Http01Responder;
pub use issue::IssueError;
pub use store::StoreError;

use crate::ca::CertificateAuthority;
use crate::cert_source::CertSource;
use crate::pem_pair::{self, ServedCert};
use crate::routes::SharedRoutes;
use issue::Solver;
use store::{Store, StoredCert};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Renew when less than this remains (Let's Encrypt's 90-day certificates
/// then renew at two thirds of their life).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// First retry after a failed issuance; doubles up to the check interval.
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// One issuance, hook calls and polling included, may take this long.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default limit for one DNS hook call.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// How names are proven, and so which certificates are issued.
    pub challenge: AcmeChallenge,
    /// How often the wildcard's remaining validity is checked; also the
    /// longest wait between retries of a failed issuance.
    pub renew_check_interval: Duration,
}

/// The ACME challenge type, which decides the shape of the certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// One wildcard certificate for `*.<domain>` and `<domain>`, validated by
    /// TXT records that the operator's hook publishes.
    Dns01 {
        /// Program called as `<hook> set|clear <record-name> <value>`.
        hook: PathBuf,
        /// Limit for one hook call.
        hook_timeout: Duration,
    },
    /// One certificate per host of the route table, validated through the
    /// plain-HTTP listener. Publishes every preview host name in Certificate
    /// Transparency logs and costs one certificate per preview.
    Http01,
}

impl AcmeChallenge {
    /// DNS-01 through `hook`, 2 minutes per hook call.
    pub fn dns01(hook: PathBuf) -> Self {
        Self::Dns01 {
            hook,
            hook_timeout: HOOK_TIMEOUT,
        }
    }
}

impl AcmeSettings {
    /// Let's Encrypt production, no contact, checks every 12 hours.
    pub fn new(challenge: AcmeChallenge) -> Self {
        Self {
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            ca_file: None,
            email: None,
            challenge,
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

/// Serves what is persisted and starts issuing and renewing in the
/// background until `shutdown`. HTTP-01 watches `routes` for its hosts and
/// hands back the responder the plain-HTTP listener must consult.
pub(crate) async fn start(
    settings: &AcmeSettings,
    tls_dir: &Path,
    domain: &str,
    routes: &SharedRoutes,
    ca: Arc<CertificateAuthority>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<CertSource, AcmeError> {
    let store = Store::open(tls_dir, &settings.directory)?;
    match &settings.challenge {
        AcmeChallenge::Dns01 { hook, hook_timeout } => {
            let hook = dns_hook::DnsHook::new(hook, *hook_timeout);
            wildcard::start(settings, store, hook, domain, ca, shutdown)
        }
        AcmeChallenge::Http01 => {
            per_host::start(settings, store, domain, routes.clone(), ca, shutdown)
        }
    }
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

/// Why one issuance attempt failed (logged, reported, then retried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("issuance did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the ACME server's certificate is unusable: {0}")]
    Unusable(#[source] pem_pair::PemPairError),
    #[error("saving the new certificate: {0}")]
    Store(#[from] StoreError),
}

/// One issuance for `names` within [`ISSUE_TIMEOUT`], refused unless it can
/// be served. The caller persists it.
async fn obtain(
    settings: &AcmeSettings,
    store: &Store,
    names: &[String],
    solver: Solver<'_>,
) -> Result<(StoredCert, ServedCert), AttemptError> {
    let issued = tokio::time::timeout(ISSUE_TIMEOUT, issue::issue(settings, store, names, solver))
        .await
        .map_err(|_| AttemptError::Timeout(ISSUE_TIMEOUT))??;
    let cert =
        pem_pair::parse(&issued.cert_pem, &issued.key_pem).map_err(AttemptError::Unusable)?;
    Ok((issued, cert))
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
