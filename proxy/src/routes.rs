//! The route table: which upstream or status page answers each preview host.
//! It is a plain value the daemon builds and publishes whole; this module
//! must not know how routes are decided.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::host::normalize_host;

/// What a preview host answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Serving: forward to this upstream (container IP:port, plain HTTP/1.1).
    Live {
        /// Address of the preview's app container.
        upstream: SocketAddr,
    },
    /// First build of this preview still running; no version serves yet.
    /// Answered with 503 and a page that refreshes every 2 s.
    Building {
        /// Commit being built (full id; the page shows a short form).
        commit: String,
        /// When the build started; the page shows the elapsed seconds.
        since: SystemTime,
    },
    /// Build or start failed and no version serves. Answered with 502 and
    /// the tail of the build log.
    Failed {
        /// Commit whose build failed.
        commit: String,
        /// Last lines of the build log, shown HTML-escaped.
        log_tail: String,
    },
    /// The branch was merged or deleted and everything was removed.
    /// Answered with 404 "This preview is gone".
    Gone,
}

/// Routes keyed by normalized host name, e.g. `feature-x.preview.localhost`.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Normalized host (lowercase, no port, no trailing dot) to its route.
    routes: HashMap<String, Route>,
}

/// The table as the proxy sees it. The reconciler publishes a whole new table
/// with `store`; each request `load`s it once (lock-free) and drops the guard
/// before any `.await`.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the route for `host`, normalized like request hosts are (lowercase,
    /// no port, no trailing dot). A host that is not a valid name could never
    /// match a request, so it is dropped with a warning.
    pub fn insert(&mut self, host: &str, route: Route) {
        match normalize_host(host) {
            Some(key) => {
                self.routes.insert(key, route);
            }
            None => tracing::warn!(host = ?host, "ignoring route for an invalid host name"),
        }
    }

    /// The route for `host`, normalized the same way as in [`RouteTable::insert`].
    pub fn get(&self, host: &str) -> Option<&Route> {
        self.routes.get(&normalize_host(host)?)
    }

    /// Removes the route for `host` (normalized like [`RouteTable::insert`]),
    /// returning it if there was one.
    pub fn remove(&mut self, host: &str) -> Option<Route> {
        self.routes.remove(&normalize_host(host)?)
    }

    /// Every host and its route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.routes
            .iter()
            .map(|(host, route)| (host.as_str(), route))
    }

    /// Number of hosts in the table.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no host has a route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_get_normalize_the_same_way() {
        let mut table = RouteTable::new();
        assert!(table.is_empty());
        table.insert("Feature-X.Preview.Localhost.", Route::Gone);
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("feature-x.preview.localhost"), Some(&Route::Gone));
        assert_eq!(
            table.get("FEATURE-X.preview.localhost:8443"),
            Some(&Route::Gone)
        );
        assert_eq!(table.get("other.preview.localhost"), None);
        assert_eq!(table.get("bad host"), None);
    }

    #[test]
    fn invalid_hosts_are_not_inserted() {
        let mut table = RouteTable::new();
        table.insert("not a host", Route::Gone);
        assert!(table.is_empty());
    }

    #[test]
    fn remove_normalizes_and_returns_the_route() {
        let mut table = RouteTable::new();
        table.insert("a.test", Route::Gone);
        assert_eq!(table.remove("A.Test."), Some(Route::Gone));
        assert_eq!(table.remove("a.test"), None);
        assert_eq!(table.remove("not a host"), None);
        assert!(table.iter().next().is_none());
    }

    #[test]
    fn insert_replaces() {
        let mut table = RouteTable::new();
        let upstream: SocketAddr = ([127, 0, 0, 1], 9).into();
        table.insert("a.test", Route::Gone);
        table.insert("a.test", Route::Live { upstream });
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("a.test"), Some(&Route::Live { upstream }));
    }
}
