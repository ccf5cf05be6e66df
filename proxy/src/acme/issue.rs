//! One ACME (RFC 8555) issuance: account (loaded or registered), order for
//! `*.<domain>` and `<domain>`, DNS-01 through the hook, CSR from a fresh key,
//! certificate download. It does not decide when to issue nor serve anything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::dns_hook::{DnsHook, HookError};
use super::store::{Store, StoreError, StoredCert};
use super::AcmeSettings;

/// How long the ACME server gets to validate and to sign.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The extra CA bundle for the ACME server cannot be read.
    #[error("ACME ca_file {}: {source}", path.display())]
    CaFile {
        /// The bundle.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The system's trust store cannot be used.
    #[error("cannot build the ACME server's TLS verifier: {0}")]
    Verifier(#[source] rustls::Error),
    /// The ACME server refused or failed a request.
    #[error("ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    /// An authorization ended invalid or without a DNS-01 challenge.
    #[error("ACME authorization for {identifier}: {problem}")]
    Authorization {
        /// The name being authorized.
        identifier: String,
        /// What went wrong.
        problem: &'static str,
    },
    /// The order did not become ready after the challenges.
    #[error("ACME order ended {status:?} instead of ready")]
    Order {
        /// The order's final status.
        status: OrderStatus,
    },
    /// The DNS hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Generating the certificate key or CSR failed.
    #[error("generating the certificate key or CSR failed: {0}")]
    Csr(#[source] rcgen::Error),
    /// Saving the account failed.
    #[error("saving ACME state: {0}")]
    Store(#[from] StoreError),
}

/// Issues one certificate for `*.<domain>` and `<domain>`.
pub(crate) async fn issue(
    settings: &AcmeSettings,
    store: &Store,
    domain: &str,
) -> Result<StoredCert, IssueError> {
    let account = account(settings, store).await?;
    let identifiers = [
        Identifier::Dns(format!("*.{domain}")),
        Identifier::Dns(domain.to_owned()),
    ];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let hook = DnsHook::new(&settings.dns_hook, settings.hook_timeout);
    let mut published: Vec<(String, String)> = Vec::new();
    let challenged = answer_challenges(&mut order, &hook, &mut published).await;
    let ready = match challenged {
        Ok(()) => order
            .poll_ready(&RetryPolicy::new().timeout(POLL_TIMEOUT))
            .await
            .map_err(IssueError::from),
        Err(err) => Err(err),
    };
    for (record, value) in &published {
        if let Err(err) = hook.clear(record, value).await {
            tracing::warn!(record = %record, error = %err, "DNS hook could not clear a challenge record");
        }
    }
    match ready? {
        OrderStatus::Ready => {}
        status => return Err(IssueError::Order { status }),
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IssueError::Csr)?;
    let mut params = CertificateParams::new(vec![format!("*.{domain}"), domain.to_owned()])
        .map_err(IssueError::Csr)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(IssueError::Csr)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(POLL_TIMEOUT))
        .await?;
    Ok(StoredCert {
        cert_pem: chain.into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    })
}

/// Publishes each pending authorization's DNS-01 record and tells the
/// server to validate it. Every record published is pushed to `published`
/// (so it is cleared even when a later step fails).
async fn answer_challenges(
    order: &mut instant_acme::Order,
    hook: &DnsHook,
    published: &mut Vec<(String, String)>,
) -> Result<(), IssueError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let identifier = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            _ => {
                return Err(IssueError::Authorization {
                    identifier,
                    problem: "not pending (invalid, expired or revoked)",
                })
            }
        }
        let Some(mut challenge) = authz.challenge(ChallengeType::Dns01) else {
            return Err(IssueError::Authorization {
                identifier,
                problem: "the server offers no dns-01 challenge",
            });
        };
        // `*.example.com` and `example.com` share `_acme-challenge.example.com.`.
        let Identifier::Dns(name) = challenge.identifier().identifier else {
            return Err(IssueError::Authorization {
                identifier,
                problem: "not a DNS name",
            });
        };
        let record = format!("_acme-challenge.{name}.");
        let value = challenge.key_authorization().dns_value();
        hook.set(&record, &value).await?;
        published.push((record, value));
        challenge.set_ready().await?;
    }
    Ok(())
}

/// The saved account for this server, or a newly registered (and saved) one.
async fn account(settings: &AcmeSettings, store: &Store) -> Result<Account, IssueError> {
    let http = http_client(settings.ca_file.as_deref())?;
    if let Some(credentials) = store.load_account()? {
        return Ok(Account::builder_with_http(http)
            .from_credentials(credentials)
            .await?);
    }
    let contact = settings
        .email
        .as_ref()
        .map(|email| format!("mailto:{email}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials): (Account, AccountCredentials) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    store.save_account(&credentials)?;
    tracing::info!(account = %account.id(), directory = %settings.directory, "registered ACME account");
    Ok(account)
}

/// HTTPS client for the ACME server: the system's roots, plus `ca_file`'s.
fn http_client(ca_file: Option<&Path>) -> Result<Box<dyn HttpClient>, IssueError> {
    let extra = match ca_file {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| IssueError::CaFile {
                path: path.to_owned(),
                source,
            })?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(IssueError::Verifier)?;
    // `dangerous()` only because the verifier is not rustls' own: it is the
    // platform verifier, which does full WebPKI validation.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(IssueError::Verifier)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}
