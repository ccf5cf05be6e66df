//! One ACME (RFC 8555) issuance: account (loaded or registered), order for
//! the given names, their challenges answered by a [`Solver`], CSR from a
//! fresh key, certificate download. It does not decide when to issue nor
//! serve anything.

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
use super::http01::{Http01Responder, Pending};
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
    /// An authorization ended invalid or without a challenge of our type.
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
    /// The DNS hook failed (DNS-01).
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Generating the certificate key or CSR failed.
    #[error("generating the certificate key or CSR failed: {0}")]
    Csr(#[source] rcgen::Error),
    /// Saving the account failed.
    #[error("saving ACME state: {0}")]
    Store(#[from] StoreError),
}

/// How the names of an order are proven.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Solver<'a> {
    /// DNS-01: TXT records published and cleared by the operator's hook.
    Dns01(&'a DnsHook),
    /// HTTP-01: key authorizations answered by the plain-HTTP listener.
    Http01(&'a Http01Responder),
}

impl Solver<'_> {
    fn challenge_type(self) -> ChallengeType {
        match self {
            Solver::Dns01(_) => ChallengeType::Dns01,
            Solver::Http01(_) => ChallengeType::Http01,
        }
    }
}

/// A challenge answer that must be withdrawn once the order is decided,
/// whether it succeeded or not.
enum Published<'a> {
    /// A TXT record the hook set; the hook clears it.
    Record {
        hook: &'a DnsHook,
        name: String,
        value: String,
    },
    /// A key authorization the listener answers with until dropped.
    Token(Pending),
}

impl Published<'_> {
    async fn withdraw(self) {
        match self {
            Published::Record { hook, name, value } => {
                if let Err(err) = hook.clear(&name, &value).await {
                    tracing::warn!(record = %name, error = %err, "DNS hook could not clear a challenge record");
                }
            }
            Published::Token(pending) => drop(pending),
        }
    }
}

/// Issues one certificate for `names` (e.g. `*.<domain>` and `<domain>`, or
/// one preview host), proving them with `solver`.
pub(crate) async fn issue(
    settings: &AcmeSettings,
    store: &Store,
    names: &[String],
    solver: Solver<'_>,
) -> Result<StoredCert, IssueError> {
    let account = account(settings, store).await?;
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Vec::new();
    let challenged = answer_challenges(&mut order, solver, &mut published).await;
    let ready = match challenged {
        Ok(()) => order
            .poll_ready(&RetryPolicy::new().timeout(POLL_TIMEOUT))
            .await
            .map_err(IssueError::from),
        Err(err) => Err(err),
    };
    for answer in published {
        answer.withdraw().await;
    }
    match ready? {
        OrderStatus::Ready => {}
        status => return Err(IssueError::Order { status }),
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IssueError::Csr)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(IssueError::Csr)?;
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

/// Answers each pending authorization's challenge of the solver's type and
/// tells the server to validate it. Every answer published is pushed to
/// `published` (so it is withdrawn even when a later step fails).
async fn answer_challenges<'a>(
    order: &mut instant_acme::Order,
    solver: Solver<'a>,
    published: &mut Vec<Published<'a>>,
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
        let Some(mut challenge) = authz.challenge(solver.challenge_type()) else {
            return Err(IssueError::Authorization {
                identifier,
                problem: match solver {
                    Solver::Dns01(_) => "the server offers no dns-01 challenge",
                    Solver::Http01(_) => "the server offers no http-01 challenge",
                },
            });
        };
        // The name without `*.`: `*.example.com` and `example.com` share
        // `_acme-challenge.example.com.`.
        let Identifier::Dns(name) = challenge.identifier().identifier else {
            return Err(IssueError::Authorization {
                identifier,
                problem: "not a DNS name",
            });
        };
        let key_authorization = challenge.key_authorization();
        match solver {
            Solver::Dns01(hook) => {
                let record = format!("_acme-challenge.{name}.");
                let value = key_authorization.dns_value();
                hook.set(&record, &value).await?;
                published.push(Published::Record {
                    hook,
                    name: record,
                    value,
                });
            }
            Solver::Http01(responder) => {
                let pending = responder.publish(name, &challenge.token, key_authorization.as_str());
                published.push(Published::Token(pending));
            }
        }
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
