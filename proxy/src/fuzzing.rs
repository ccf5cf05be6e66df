//! The crate's parsing and routing decisions, exposed for the fuzz targets
//! in `fuzz/` only (feature `fuzzing`). Nothing here is API.

use http::header::LOCATION;
use http::Request;

pub use crate::host::normalize_host;

/// True when normalized `name` is `domain` or a name below it.
pub fn is_within(name: &str, domain: &str) -> bool {
    crate::host::is_within(name, domain)
}

/// The normalized host a request is routed by, as the HTTPS handler sees it.
pub fn routed_host<B>(req: &Request<B>) -> Option<String> {
    crate::host::request_host(req).map(|host| host.name)
}

/// The `Location` the plain-HTTP listener would send for `req`, or `None`
/// when it refuses to redirect.
pub fn redirect_location<B>(req: &Request<B>, domain: &str, https_port: u16) -> Option<String> {
    let Ok(response) = crate::redirect::redirect(req, domain, https_port);
    let location = response.headers().get(LOCATION)?;
    Some(location.to_str().ok()?.to_owned())
}
