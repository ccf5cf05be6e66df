//! Certificates made in the test: a CA the client trusts and wildcard leaves
//! it signs, written as PEM files the way operators and cert-manager do.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use super::tls_connect;

/// A test CA; its PEM is what clients trust.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf as the two PEM files hold it.
#[derive(Clone)]
pub struct Leaf {
    /// Leaf then CA.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A wildcard leaf valid from `age` ago until `left` from now.
    pub fn expiring_wildcard(&self, age: Duration, left: Duration) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["*.preview.test".to_owned(), "preview.test".to_owned()])
                .expect("leaf params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - age;
        params.not_after = now + left;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The wildcard leaf for the test domain.
    pub fn wildcard(&self) -> Leaf {
        self.leaf(&["*.preview.test", "preview.test"])
    }
}

/// The leaf certificate a fresh handshake with SNI `sni` gets.
pub async fn served_leaf(addr: SocketAddr, ca_pem: &str, sni: &str) -> CertificateDer<'static> {
    let tls = tls_connect(addr, ca_pem, sni, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Polls fresh handshakes until they get `want`, failing after `secs`.
pub async fn wait_for_leaf(addr: SocketAddr, ca_pem: &str, want: &CertificateDer<'_>, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if served_leaf(addr, ca_pem, "app.preview.test").await == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes did not get the new certificate within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `contents` to `dir/name` via a temp file and rename, as most tools do.
pub fn write_renamed(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}
