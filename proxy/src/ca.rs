//! previewd's own certificate authority: creating it once, keeping it across
//! restarts as two files in the state dir, and issuing leaf certificates.
//! It must not decide which names get certificates (that is `tls`).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use crate::atomic_file;

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";
const CA_COMMON_NAME: &str = "previewd local CA";
/// Backdating absorbs small clock differences between previewd and clients.
const BACKDATE: Duration = Duration::hours(1);
const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(90);

/// Why the certificate authority could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a CA file or its directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A CA file exists but does not hold a usable PEM certificate.
    #[error("{} is not a PEM certificate: {source}", path.display())]
    Pem {
        /// The unreadable file.
        path: PathBuf,
        /// The PEM parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA file exists but its certificate or key cannot be parsed.
    #[error("{} cannot be parsed: {source}", path.display())]
    Parse {
        /// The unparsable file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rcgen::Error,
    },
    /// `ca.pem` exists but its key is gone. Replacing a CA users may already
    /// trust is not done silently: delete `ca.pem` to start over.
    #[error("{} is missing while the CA certificate beside it exists", path.display())]
    MissingKey {
        /// The expected key file.
        path: PathBuf,
    },
    /// The key file does not belong to the certificate file.
    #[error("{} does not match the CA certificate: {source}", path.display())]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
        /// What rustls found inconsistent.
        #[source]
        source: rustls::Error,
    },
    /// Generating a key or a certificate failed.
    #[error("generating a key or certificate failed: {0}")]
    Generate(#[source] rcgen::Error),
    /// A freshly generated key could not be turned into a TLS signing key.
    #[error("loading a signing key into rustls failed: {0}")]
    Sign(#[source] rustls::Error),
}

/// previewd's own CA: its certificate (as users install it) and the issuer
/// that signs leaf certificates with its key.
#[derive(Debug)]
pub struct CertificateAuthority {
    /// `ca.pem` exactly as stored, so repeated loads hand out the same bytes.
    cert_pem: String,
    /// The CA certificate, appended to every leaf chain.
    cert_der: CertificateDer<'static>,
    /// Subject, key identifier and signing key of the CA.
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Loads `<dir>/ca.pem` + `<dir>/ca-key.pem`, or creates them once (ECDSA
    /// P-256, CN "previewd local CA", 10-year validity). Creates `dir` (mode
    /// 0700) if missing. Files are written atomically and the key with mode
    /// 0600, so a crash never leaves a half or world-readable key.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);

        let key_pem = read_optional(&key_path)?;
        let cert_pem = read_optional(&cert_path)?;
        let (key_pem, cert_pem) = match (key_pem, cert_pem) {
            (Some(key_pem), Some(cert_pem)) => {
                warn_if_key_readable_by_others(&key_path);
                (key_pem, cert_pem)
            }
            // The key is written first, so this is a crash between the two
            // writes: nobody can trust a certificate never written, so
            // self-sign a new one with the surviving key.
            (Some(key_pem), None) => {
                let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::Parse {
                    path: key_path.clone(),
                    source,
                })?;
                let cert_pem = ca_params()
                    .self_signed(&key)
                    .map_err(CaError::Generate)?
                    .pem();
                write_atomic(dir, CERT_FILE, cert_pem.as_bytes(), 0o644)?;
                (key_pem, cert_pem)
            }
            (None, Some(_)) => return Err(CaError::MissingKey { path: key_path }),
            (None, None) => {
                let key =
                    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
                let key_pem = key.serialize_pem();
                let cert_pem = ca_params()
                    .self_signed(&key)
                    .map_err(CaError::Generate)?
                    .pem();
                write_atomic(dir, KEY_FILE, key_pem.as_bytes(), 0o600)?;
                write_atomic(dir, CERT_FILE, cert_pem.as_bytes(), 0o644)?;
                tracing::info!(path = %cert_path.display(), "created previewd certificate authority");
                (key_pem, cert_pem)
            }
        };
        Self::from_pems(cert_pem, &cert_path, &key_pem, &key_path)
    }

    fn from_pems(
        cert_pem: String,
        cert_path: &Path,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| CaError::Pem {
                path: cert_path.to_owned(),
                source,
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| CaError::Parse {
            path: key_path.to_owned(),
            source,
        })?;
        check_key_matches(&cert_der, &key, key_path)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| CaError::Parse {
            path: cert_path.to_owned(),
            source,
        })?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// PEM of the CA certificate (what users pass to `curl --cacert`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `host` (ECDSA P-256, SAN `host`,
    /// serverAuth, valid from an hour ago for 90 days) signed by the CA, as a
    /// rustls key whose chain is `[leaf, ca]`.
    pub fn issue(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(CaError::Generate)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_before = not_before;
        params.not_after = not_before + LEAF_VALIDITY;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Generate)?;

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key =
            rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(CaError::Sign)?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_before = not_before;
    params.not_after = not_before + CA_VALIDITY;
    params
}

/// Refuses a key that does not belong to the certificate: signing with it
/// would produce leaves no client could verify.
fn check_key_matches(
    cert_der: &CertificateDer<'static>,
    key: &KeyPair,
    key_path: &Path,
) -> Result<(), CaError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
            CaError::KeyMismatch {
                path: key_path.to_owned(),
                source,
            }
        })?;
    CertifiedKey::new(vec![cert_der.clone()], signing_key)
        .keys_match()
        .map_err(|source| CaError::KeyMismatch {
            path: key_path.to_owned(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error(path)(err)),
    }
}

fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "CA key is readable by other users; chmod 600 it");
        }
    }
}

fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), CaError> {
    atomic_file::write(dir, name, contents, mode).map_err(|err| CaError::Io {
        path: err.path,
        source: err.source,
    })
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("nested/tls");
        let first = CertificateAuthority::load_or_create(&tls).expect("create");
        let second = CertificateAuthority::load_or_create(&tls).expect("load");
        assert_eq!(first.cert_pem(), second.cert_pem());
        let mode = fs::metadata(tls.join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(second.issue("x.preview.test").is_ok());
    }

    #[test]
    fn missing_key_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = CertificateAuthority::load_or_create(dir.path()).expect("create");
        fs::remove_file(dir.path().join(KEY_FILE)).expect("rm key");
        let err = CertificateAuthority::load_or_create(dir.path()).expect_err("must fail");
        assert!(matches!(err, CaError::MissingKey { .. }), "{err}");
    }

    #[test]
    fn missing_cert_is_recreated_from_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = CertificateAuthority::load_or_create(dir.path()).expect("create");
        let key_before = fs::read(dir.path().join(KEY_FILE)).expect("key");
        fs::remove_file(dir.path().join(CERT_FILE)).expect("rm cert");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("recover");
        assert_eq!(
            fs::read(dir.path().join(KEY_FILE)).expect("key"),
            key_before
        );
        assert!(ca.issue("x.preview.test").is_ok());
    }

    #[test]
    fn foreign_key_is_refused() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let _ = CertificateAuthority::load_or_create(a.path()).expect("a");
        let _ = CertificateAuthority::load_or_create(b.path()).expect("b");
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).expect("copy");
        let err = CertificateAuthority::load_or_create(a.path()).expect_err("must fail");
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_cert_is_a_pem_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = CertificateAuthority::load_or_create(dir.path()).expect("create");
        fs::write(dir.path().join(CERT_FILE), "not pem").expect("write");
        let err = CertificateAuthority::load_or_create(dir.path()).expect_err("must fail");
        assert!(matches!(err, CaError::Pem { .. }), "{err}");
    }

    #[test]
    fn leaf_chain_is_leaf_then_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("create");
        let leaf = ca.issue("a.preview.test").expect("issue");
        assert_eq!(leaf.cert.len(), 2);
        assert_eq!(leaf.cert[1], ca.cert_der);
        assert!(leaf.keys_match().is_ok());
    }
}
