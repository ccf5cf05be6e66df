//! previewd's embedded TLS reverse proxy.
//!
//! It owns the HTTPS and plain-HTTP listeners, the certificate authority and
//! per-host leaf certificates, the route table and forwarding to upstreams,
//! and the small status pages. It knows nothing of git or Docker: the daemon
//! hands it a [`SharedRoutes`] table and a [`CertificateAuthority`].

mod ca;
mod error;
mod forward;
mod handle;
mod host;
mod limits;
mod pages;
mod redirect;
mod routes;
mod serve;
mod tls;

pub use ca::{CaError, CertificateAuthority};
pub use host::normalize_host;
pub use limits::Limits;
pub use routes::{Route, RouteTable, SharedRoutes};
pub use serve::{serve_https, serve_redirect};
pub use tls::server_config;
