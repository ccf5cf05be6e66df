//! TLS server configuration (versions, ALPN, tickets) around a certificate
//! resolver, and the "self-signed" resolver: leaf certificates issued by
//! previewd's CA per SNI name on first use and cached. It must not look at
//! routes: every name under the base domain gets a certificate, and routing
//! decides later what the request sees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::ca::CertificateAuthority;
use crate::host::{is_within, normalize_host};

/// Leaves live 90 days; re-issue well before, so a long-running daemon never
/// serves an expired certificate.
const REISSUE_AFTER: Duration = Duration::from_secs(60 * 24 * 60 * 60);
/// Any name under the domain gets a certificate, so a client can make us
/// issue for endless random names; bound the memory that costs.
const MAX_CACHED: usize = 4096;

/// rustls `ServerConfig` (ring provider, TLS 1.2 + 1.3, ALPN `h2` and
/// `http/1.1`, session tickets and the in-memory session cache) whose
/// certificates come from `resolver` (see [`crate::build_resolver`]).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Our order, not the client's: AES-128-GCM-SHA256 first. Its SHA-256 (transcript, HKDF,
    // tickets) runs on the CPU's SHA extensions where ring's SHA-384 does not, and AES-128 has
    // fewer rounds (+7.5% full handshakes measured, docs/BENCHMARKS.md).
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // Unreachable: ring's default provider has suites for both versions,
        // and the crate is built with rustls' `tls12` feature.
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Resumption is an optimisation: serve without it rather than not at all.
        Err(err) => tracing::warn!(error = %err, "TLS session tickets disabled"),
    }
    Arc::new(config)
}

/// Mode "self-signed": a resolver that issues a leaf per SNI host from `ca`.
///
/// Only `domain` itself and names ending in `.<domain>` get their own
/// certificate; any other SNI, or none, gets the certificate for `domain`, so
/// a stray client completes the handshake and then sees a 404 instead of a
/// certificate for a name that is not ours.
pub fn self_signed(ca: Arc<CertificateAuthority>, domain: &str) -> Arc<dyn ResolvesServerCert> {
    Arc::new(CaResolver::new(ca, domain))
}

/// Issues and caches one leaf certificate per served name.
#[derive(Debug)]
pub(crate) struct CaResolver {
    /// Signs the leaves.
    ca: Arc<CertificateAuthority>,
    /// Normalized base domain; names outside it get its certificate.
    domain: String,
    /// Normalized name to its leaf and when it was issued.
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug)]
struct Cached {
    key: Arc<CertifiedKey>,
    issued: Instant,
}

impl CaResolver {
    pub(crate) fn new(ca: Arc<CertificateAuthority>, domain: &str) -> Self {
        let domain = normalize_host(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
        CaResolver {
            ca,
            domain,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The name a handshake's certificate is issued for.
    fn name_for(&self, sni: Option<&str>) -> String {
        sni.and_then(normalize_host)
            .filter(|name| is_within(name, &self.domain))
            .unwrap_or_else(|| self.domain.clone())
    }

    fn cert_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        {
            // A panic elsewhere while holding the lock leaves the map intact;
            // a poisoned cache is still a good cache.
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.get(name) {
                if cached.issued.elapsed() < REISSUE_AFTER {
                    return Some(cached.key.clone());
                }
            }
        }
        // Issue without the lock so one slow issuance does not stall every
        // other handshake. Two racing handshakes may both issue; both leaves
        // are valid and the later one wins the cache.
        match self.ca.issue(name) {
            Ok(key) => {
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(
                    name.to_owned(),
                    Cached {
                        key: key.clone(),
                        issued: Instant::now(),
                    },
                );
                tracing::debug!(host = %name, "issued leaf certificate");
                Some(key)
            }
            Err(err) => {
                tracing::warn!(host = %name, error = %err, "issuing leaf certificate failed");
                None
            }
        }
    }
}

impl ResolvesServerCert for CaResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = self.name_for(client_hello.server_name());
        self.cert_for(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> (tempfile::TempDir, CaResolver) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("ca");
        let resolver = CaResolver::new(Arc::new(ca), "Preview.Test.");
        (dir, resolver)
    }

    #[test]
    fn names_outside_the_domain_get_the_domain() {
        let (_dir, r) = resolver();
        assert_eq!(r.name_for(Some("App.Preview.Test")), "app.preview.test");
        assert_eq!(r.name_for(Some("preview.test")), "preview.test");
        assert_eq!(r.name_for(Some("evil.com")), "preview.test");
        assert_eq!(r.name_for(Some("preview.test.evil.com")), "preview.test");
        assert_eq!(r.name_for(None), "preview.test");
    }

    #[test]
    fn leaves_are_cached() {
        let (_dir, r) = resolver();
        let a = r.cert_for("a.preview.test").expect("a");
        let again = r.cert_for("a.preview.test").expect("a again");
        assert!(Arc::ptr_eq(&a, &again));
        let b = r.cert_for("b.preview.test").expect("b");
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn config_offers_h2_and_http11() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).expect("ca"));
        let config = server_config(self_signed(ca, "Preview.Test."));
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ticketer.enabled());
    }
}
