//! The standalone proxy's TLS material from two PEM files: one certificate chain and its key,
//! loaded once at start and served for every SNI. It must not watch or reload the files; the
//! proxy's `files` certificate mode is meant to replace [`load_pem_files`] whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};

/// Why the certificate or key files cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("--cert {}: not a readable PEM certificate chain: {source}", path.display())]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--cert {}: holds no certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("--key {}: not a readable PEM private key: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--key {}: unsupported private key: {source}", path.display())]
    KeyType {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("--key {} does not belong to the certificate in {}: {source}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A rustls `ServerConfig` (ring, TLS 1.3 + 1.2, ALPN `h2` and `http/1.1`, session tickets and
/// the in-memory session cache, like the CA mode's) that answers every handshake, whatever its
/// SNI, with the chain in `cert` and the key in `key`.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFilesError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsFilesError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsFilesError::NoCert {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsFilesError::Key {
        path: key.to_owned(),
        source,
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
            TlsFilesError::KeyType {
                path: key.to_owned(),
                source,
            }
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key type cannot tell its public key; the handshake will show.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(source) => {
            return Err(TlsFilesError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })
        }
    }
    Ok(server_config(Arc::new(OneCert(Arc::new(certified)))))
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Our order, not the client's: AES-128-GCM-SHA256 first. Its SHA-256 (transcript, HKDF,
    // tickets) runs on the CPU's SHA extensions where ring's SHA-384 does not, and AES-128
    // has fewer rounds; both are as strong as a preview proxy needs (Go and Caddy pick it).
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // Unreachable: ring's default provider has suites for both versions.
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

/// The same certificate for every handshake.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
