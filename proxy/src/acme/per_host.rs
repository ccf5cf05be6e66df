//! HTTP-01 per host (opt-in): a certificate for exactly each host of the
//! route table, issued one at a time in the background, persisted per host,
//! renewed, and forgotten (memory and disk) some time after its host leaves
//! the table ([`GRACE`]). Handshakes get their host's own certificate by SNI
//! and previewd's CA's leaf until it has one; they never wait for an
//! issuance. It reads the route table and must not change it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::http01::Http01Responder;
use super::issue::Solver;
use super::store::Store;
use super::{obtain, retry_delay, should_renew, AcmeError, AcmeSettings, AttemptError};
use crate::ca::CertificateAuthority;
use crate::cert_source::{CertSource, CertStatus, Serving};
use crate::host::{is_within, normalize_host};
use crate::pem_pair::{self, ServedCert};
use crate::routes::SharedRoutes;
use crate::tls::CaResolver;

/// How often the route table is read. It has no change notification, and
/// reading it is one atomic load; a new preview then waits at most this long
/// before its issuance starts.
const POLL: Duration = Duration::from_secs(1);
/// A host gone from the route table keeps its certificate this long, so a
/// branch deleted and pushed again within Let's Encrypt's one-week
/// rate-limit window reuses it instead of costing another. The clock
/// restarts with previewd; an expired certificate goes at once.
const GRACE: Duration = Duration::from_secs(7 * 86_400);

/// What the issuer knows of one host.
#[derive(Debug, Default)]
struct Entry {
    /// Its certificate; `None` until the first issuance succeeds.
    cert: Option<ServedCert>,
    /// When it was first seen missing from the route table; `None` while it
    /// is in it.
    left: Option<Instant>,
    /// Failed issuances in a row.
    failures: u32,
    /// No attempt before this, after a failure.
    retry_at: Option<Instant>,
}

/// Every host the issuer tracks, by normalized name.
type Entries = BTreeMap<String, Entry>;

/// Brings `entries` in line with the hosts in the route table now: new hosts
/// get an entry, hosts back in the table stop their grace, hosts missing
/// start it. Removes and returns the hosts to forget: missing without a
/// certificate, missing for [`GRACE`], or missing with an expired one.
fn observe(
    entries: &mut Entries,
    table: &BTreeSet<String>,
    now: Instant,
    wall: SystemTime,
) -> Vec<String> {
    for host in table {
        entries.entry(host.clone()).or_default().left = None;
    }
    let mut forgotten = Vec::new();
    entries.retain(|host, entry| {
        if table.contains(host) {
            return true;
        }
        let left = *entry.left.get_or_insert(now);
        let keep = entry
            .cert
            .as_ref()
            .is_some_and(|cert| now.duration_since(left) < GRACE && cert.not_after > wall);
        if !keep {
            forgotten.push(host.clone());
        }
        keep
    });
    forgotten
}

/// The host to issue for next: in the table, without a certificate or due
/// for renewal, and not waiting after a failure. Hosts without one come
/// first, since previewd's CA stands in for them.
fn next_due(entries: &Entries, now: Instant, wall: SystemTime) -> Option<&str> {
    let mut renewal = None;
    let ready = entries
        .iter()
        .filter(|(_, entry)| entry.left.is_none() && entry.retry_at.is_none_or(|at| at <= now));
    for (host, entry) in ready {
        match &entry.cert {
            None => return Some(host),
            Some(cert) if should_renew(cert.not_after, wall, cert.lifetime()) => {
                renewal = renewal.or(Some(host.as_str()));
            }
            Some(_) => {}
        }
    }
    renewal
}

/// Each host's own certificate by SNI, previewd's CA for the rest.
#[derive(Debug)]
struct PerHostResolver {
    /// Normalized host to its certificate, replaced whole on every change.
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fallback: CaResolver,
}

impl ResolvesServerCert for PerHostResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let own = client_hello
            .server_name()
            .and_then(normalize_host)
            .and_then(|host| self.certs.load().get(&host).cloned());
        own.or_else(|| self.fallback.resolve(client_hello))
    }
}

/// Serves the persisted per-host certificates and starts the issuer, which
/// follows `routes` until `shutdown`.
pub(super) fn start(
    settings: &AcmeSettings,
    store: Store,
    domain: &str,
    routes: SharedRoutes,
    ca: Arc<CertificateAuthority>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<CertSource, AcmeError> {
    let entries = load_persisted(&store)?;
    let responder = Http01Responder::new();
    let resolver = Arc::new(PerHostResolver {
        certs: ArcSwap::default(),
        fallback: CaResolver::new(ca, domain),
    });
    let (status_tx, status) = watch::channel(status_of(&entries, None));
    tracing::info!(
        dir = %store.dir().display(),
        persisted = entries.values().filter(|e| e.cert.is_some()).count(),
        "ACME HTTP-01: a certificate per preview host; previewd's CA serves until each is issued"
    );
    let issuer = Issuer {
        settings: settings.clone(),
        store,
        domain: normalize_host(domain).unwrap_or_else(|| domain.to_ascii_lowercase()),
        routes,
        responder: responder.clone(),
        entries,
        resolver: resolver.clone(),
        status: status_tx,
        last_error: None,
    };
    issuer.publish();
    tokio::spawn(issuer.run(shutdown));
    Ok(CertSource {
        resolver,
        status,
        http01: Some(responder),
    })
}

/// The persisted certificates. One that is unusable or not for exactly its
/// host is logged and tracked without a certificate: re-issued if its host
/// is in the table, removed otherwise.
fn load_persisted(store: &Store) -> Result<Entries, AcmeError> {
    let mut entries = Entries::new();
    for (host, pair) in store.load_host_certs()? {
        let cert = match pair.map(|pair| pem_pair::parse(&pair.cert_pem, &pair.key_pem)) {
            Some(Ok(cert)) if cert.dns_names == [host.as_str()] => Some(cert),
            Some(Ok(cert)) => {
                tracing::warn!(host, names = ?cert.dns_names, "persisted ACME certificate is for other names; ignoring it");
                None
            }
            Some(Err(err)) => {
                tracing::warn!(host, error = %err, "persisted ACME certificate is unusable; ignoring it");
                None
            }
            None => {
                tracing::warn!(host, "persisted ACME certificate has no key; ignoring it");
                None
            }
        };
        entries.insert(
            host,
            Entry {
                cert,
                ..Entry::default()
            },
        );
    }
    Ok(entries)
}

fn status_of(entries: &Entries, last_error: Option<String>) -> CertStatus {
    CertStatus {
        serving: Serving::AcmePerHost,
        not_after: entries
            .values()
            .filter_map(|entry| entry.cert.as_ref().map(|cert| cert.not_after))
            .min(),
        last_error,
    }
}

/// The issuer loop's state; only its task touches it.
struct Issuer {
    settings: AcmeSettings,
    store: Store,
    /// Normalized base domain: only hosts under it are issued for.
    domain: String,
    routes: SharedRoutes,
    responder: Http01Responder,
    entries: Entries,
    resolver: Arc<PerHostResolver>,
    status: watch::Sender<CertStatus>,
    /// The last failure, as "<host>: <error>"; cleared by the next success.
    last_error: Option<String>,
}

impl Issuer {
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let (now, wall) = (Instant::now(), SystemTime::now());
            let table = self.hosts_in_table();
            let forgotten = observe(&mut self.entries, &table, now, wall);
            for host in &forgotten {
                match self.store.remove_host_cert(host) {
                    Ok(()) => tracing::debug!(
                        host,
                        "forgot the certificate of a host gone from the routes"
                    ),
                    Err(err) => {
                        tracing::warn!(host, error = %err, "cannot remove a departed host's certificate")
                    }
                }
            }
            if !forgotten.is_empty() {
                self.publish();
            }
            let Some(host) = next_due(&self.entries, now, wall).map(str::to_owned) else {
                continue;
            };
            let attempt = tokio::select! {
                () = &mut shutdown => return,
                attempt = self.issue_for(&host) => attempt,
            };
            self.record(&host, attempt);
            self.publish();
        }
    }

    /// Hosts of every route under the domain, whatever their state.
    fn hosts_in_table(&self) -> BTreeSet<String> {
        self.routes
            .load()
            .iter()
            .map(|(host, _)| host)
            .filter(|host| is_within(host, &self.domain))
            .map(str::to_owned)
            .collect()
    }

    async fn issue_for(&self, host: &str) -> Result<ServedCert, AttemptError> {
        let names = [host.to_owned()];
        let solver = Solver::Http01(&self.responder);
        let (issued, cert) = obtain(&self.settings, &self.store, &names, solver).await?;
        self.store.save_host_cert(host, &issued)?;
        Ok(cert)
    }

    fn record(&mut self, host: &str, attempt: Result<ServedCert, AttemptError>) {
        let Some(entry) = self.entries.get_mut(host) else {
            return;
        };
        match attempt {
            Ok(cert) => {
                tracing::info!(host, not_after = ?cert.not_after, "ACME certificate issued for host");
                entry.cert = Some(cert);
                entry.failures = 0;
                entry.retry_at = None;
                self.last_error = None;
            }
            Err(err) => {
                entry.failures = entry.failures.saturating_add(1);
                let retry_in = retry_delay(entry.failures, self.settings.renew_check_interval);
                entry.retry_at = Some(Instant::now() + retry_in);
                let serving = if entry.cert.is_some() {
                    "its current ACME certificate"
                } else {
                    "previewd's CA"
                };
                tracing::warn!(host, error = %err, ?retry_in, serving, "ACME issuance for host failed; keeping what is served");
                self.last_error = Some(format!("{host}: {err}"));
            }
        }
    }

    /// Hands the current certificates to handshakes and the status.
    fn publish(&self) {
        let certs = self
            .entries
            .iter()
            .filter_map(|(host, entry)| Some((host.clone(), entry.cert.as_ref()?.key.clone())))
            .collect();
        self.resolver.certs.store(Arc::new(certs));
        self.status
            .send_replace(status_of(&self.entries, self.last_error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A certificate of 90 days with `remaining` left at `wall`.
    fn cert(wall: SystemTime, remaining: Duration) -> ServedCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        let pem = params.self_signed(&key).expect("cert").pem();
        let mut cert =
            pem_pair::parse(pem.as_bytes(), key.serialize_pem().as_bytes()).expect("parse");
        cert.not_after = wall + remaining;
        cert.not_before = cert.not_after - 90 * DAY;
        cert
    }

    fn table(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| (*h).to_owned()).collect()
    }

    fn with_cert(cert: ServedCert) -> Entry {
        Entry {
            cert: Some(cert),
            ..Entry::default()
        }
    }

    #[test]
    fn departed_hosts_keep_their_certificate_for_the_grace_only() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = Entries::new();
        entries.insert("a".into(), with_cert(cert(wall, 60 * DAY)));
        entries.insert("b".into(), with_cert(cert(wall, 60 * DAY)));

        // Both leave; "a" comes back within the grace and keeps its certificate.
        assert!(observe(&mut entries, &table(&[]), now, wall).is_empty());
        assert_eq!(entries["a"].left, Some(now));
        let back = now + GRACE - Duration::from_secs(1);
        assert!(observe(&mut entries, &table(&["a"]), back, wall).is_empty());
        assert_eq!(entries["a"].left, None);
        assert!(entries["a"].cert.is_some());

        // "b" stays away: kept until the grace has passed since it left.
        let gone = observe(&mut entries, &table(&["a"]), now + GRACE, wall);
        assert_eq!(gone, ["b"]);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a"]);

        // "a" leaves again: its grace starts over.
        let later = now + 2 * GRACE;
        assert!(observe(&mut entries, &table(&[]), later, wall).is_empty());
        assert_eq!(entries["a"].left, Some(later));
    }

    #[test]
    fn departed_hosts_without_a_valid_certificate_are_forgotten_at_once() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = Entries::new();
        entries.insert(
            "expired".into(),
            with_cert(cert(wall - DAY, Duration::ZERO)),
        );
        entries.insert("never-issued".into(), Entry::default());
        entries.insert("fresh".into(), with_cert(cert(wall, 60 * DAY)));
        let mut gone = observe(&mut entries, &table(&["new"]), now, wall);
        gone.sort();
        assert_eq!(gone, ["expired", "never-issued"]);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["fresh", "new"]);
    }

    #[test]
    fn issuance_order_new_hosts_then_renewals_never_departed_or_backing_off() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = Entries::new();
        assert_eq!(next_due(&entries, now, wall), None);

        entries.insert("a-valid".into(), with_cert(cert(wall, 60 * DAY)));
        assert_eq!(next_due(&entries, now, wall), None);
        entries.insert("b-due".into(), with_cert(cert(wall, 10 * DAY)));
        assert_eq!(next_due(&entries, now, wall), Some("b-due"));
        entries.insert("c-new".into(), Entry::default());
        assert_eq!(next_due(&entries, now, wall), Some("c-new"));

        // A failure backs "c-new" off until its retry time.
        let retry_at = now + Duration::from_secs(60);
        entries.get_mut("c-new").expect("c").retry_at = Some(retry_at);
        assert_eq!(next_due(&entries, now, wall), Some("b-due"));
        assert_eq!(next_due(&entries, retry_at, wall), Some("c-new"));

        // Departed hosts are not renewed.
        entries.get_mut("b-due").expect("b").left = Some(now);
        assert_eq!(next_due(&entries, now, wall), None);
    }
}
