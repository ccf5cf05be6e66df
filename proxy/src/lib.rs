//! previewd's embedded TLS reverse proxy.
//!
//! It owns the HTTPS and plain-HTTP listeners, the certificates (previewd's
//! own CA, operator files, or ACME), the route table and forwarding to
//! upstreams, and the small status pages. It knows nothing of git or Docker:
//! the daemon hands it a [`SharedRoutes`] table and a [`TlsMode`].

mod acme;
pub mod atomic_file;
mod ca;
mod cert_files;
mod cert_source;
mod conformance;
mod deadline_io;
mod error;
mod forward;
mod framing;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h2_head_deadline;
mod handle;
mod host;
mod incoming;
mod limits;
mod max_forwards;
mod own_upstream;
mod pages;
mod pem_pair;
mod per_thread;
mod read_watch;
mod redirect;
mod request_body;
mod routes;
mod serve;
mod tls;
mod tunnel;
mod upstream_io;

pub use acme::{
    AcmeChallenge, AcmeError, AcmeSettings, HookError, Http01Responder, IssueError, StoreError,
    LETS_ENCRYPT_DIRECTORY,
};
pub use atomic_file::WriteError;
pub use ca::{CaError, CertificateAuthority};
pub use cert_files::CertFilesError;
pub use cert_source::{build_resolver, CertSource, CertStatus, Serving, TlsError, TlsMode};
pub use host::normalize_host;
pub use limits::Limits;
pub use pem_pair::PemPairError;
pub use routes::{Route, RouteTable, SharedRoutes};
pub use serve::{serve_https, serve_redirect};
pub use tls::{self_signed, server_config};
