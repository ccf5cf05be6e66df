//! A PEM certificate chain and its PEM private key turned into the key rustls
//! serves, refused unless the key belongs to the leaf. It reads no files and
//! keeps no state: callers decide where the bytes come from and what to swap.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// Why a certificate chain and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum PemPairError {
    /// The chain holds a broken PEM section (e.g. a half-written file).
    #[error("certificate chain is not valid PEM: {0}")]
    ChainPem(#[source] pem::Error),
    /// The chain holds no `CERTIFICATE` section at all.
    #[error("certificate chain holds no PEM certificate")]
    NoCertificate,
    /// The key is missing, broken PEM, or of an unknown PEM type.
    #[error("private key is not a PEM private key: {0}")]
    KeyPem(#[source] pem::Error),
    /// rustls cannot sign with the key (unsupported algorithm or curve).
    #[error("private key is not usable: {0}")]
    Key(#[source] rustls::Error),
    /// The key's public key is not the leaf certificate's.
    #[error("private key does not match the certificate: {0}")]
    Mismatch(#[source] rustls::Error),
    /// The leaf certificate is not parsable X.509.
    #[error("certificate cannot be parsed: {0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

/// A servable certificate with the leaf facts renewal and status need.
#[derive(Debug, Clone)]
pub struct ServedCert {
    /// Chain (leaf first) and signing key, as handed to handshakes.
    pub key: Arc<CertifiedKey>,
    /// Start of the leaf's validity.
    pub not_before: SystemTime,
    /// End of the leaf's validity.
    pub not_after: SystemTime,
    /// DNS names of the leaf's subjectAltName, as written (`*.example.com`).
    pub dns_names: Vec<String>,
}

impl ServedCert {
    /// Length of the leaf's validity window.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// Parses `cert_pem` (leaf first, then intermediates) and `key_pem` (PKCS#8,
/// PKCS#1 or SEC1) and checks that the key's public key is the leaf's.
pub fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServedCert, PemPairError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemPairError::ChainPem)?;
    let Some(leaf) = chain.first() else {
        return Err(PemPairError::NoCertificate);
    };
    let (not_before, not_after, dns_names) = leaf_facts(leaf)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(PemPairError::KeyPem)?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(PemPairError::Key)?;
    let key = CertifiedKey::new(chain, signing_key);
    key.keys_match().map_err(PemPairError::Mismatch)?;
    Ok(ServedCert {
        key: Arc::new(key),
        not_before,
        not_after,
        dns_names,
    })
}

fn leaf_facts(
    leaf: &CertificateDer<'_>,
) -> Result<(SystemTime, SystemTime, Vec<String>), PemPairError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(PemPairError::X509)?;
    let validity = cert.validity();
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        to_system_time(validity.not_before.timestamp()),
        to_system_time(validity.not_after.timestamp()),
        dns_names,
    ))
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair(names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn matching_pair_is_served_with_its_names() {
        let (cert, key) = pair(&["*.preview.test", "preview.test"]);
        let served = parse(cert.as_bytes(), key.as_bytes()).expect("parse");
        assert_eq!(served.dns_names, ["*.preview.test", "preview.test"]);
        assert!(served.not_after > served.not_before);
        assert!(served.lifetime() > Duration::from_secs(86_400));
    }

    #[test]
    fn foreign_key_is_a_mismatch() {
        let (cert, _) = pair(&["a.test"]);
        let (_, other_key) = pair(&["a.test"]);
        let err = parse(cert.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert!(matches!(err, PemPairError::Mismatch(_)), "{err}");
    }

    #[test]
    fn torn_and_empty_files_are_refused() {
        let (cert, key) = pair(&["a.test"]);
        let half = &cert.as_bytes()[..cert.len() / 2];
        assert!(matches!(
            parse(half, key.as_bytes()),
            Err(PemPairError::ChainPem(_))
        ));
        assert!(matches!(
            parse(b"", key.as_bytes()),
            Err(PemPairError::NoCertificate)
        ));
        let half_key = &key.as_bytes()[..key.len() / 2];
        assert!(matches!(
            parse(cert.as_bytes(), half_key),
            Err(PemPairError::KeyPem(_))
        ));
    }
}
