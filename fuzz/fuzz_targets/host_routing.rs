//! Host/authority parsing and routing under arbitrary input.
//!
//! The input is split on newlines into two host candidates, a request
//! target and a base domain. Besides "never panics", it checks what routing
//! relies on: normalization is idempotent and canonical, the route table
//! finds a host exactly when the normalized names agree, `is_within` means a
//! real suffix on a label boundary, and the plain-HTTP redirect only ever
//! points at HTTPS on a host under our domain.
#![no_main]

use http::{HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;
use previewd_proxy::fuzzing::{is_within, normalize_host, redirect_location, routed_host};
use previewd_proxy::{Route, RouteTable};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let host_a = parts.next().unwrap_or_default();
    let host_b = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let domain = String::from_utf8_lossy(parts.next().unwrap_or(b"preview.test"));
    let (a, b) = (
        String::from_utf8_lossy(host_a),
        String::from_utf8_lossy(host_b),
    );

    let norm_a = check_normalized(&a);
    let norm_b = check_normalized(&b);
    check_route_lookup(&a, &b, norm_a.as_deref(), norm_b.as_deref());

    if let Some(name) = norm_a.as_deref() {
        if is_within(name, &domain) {
            let suffix = format!(".{}", domain.to_ascii_lowercase());
            assert!(
                name.eq_ignore_ascii_case(&domain) || name.to_ascii_lowercase().ends_with(&suffix),
                "{name:?} is not within {domain:?}"
            );
        }
    }

    check_redirect(host_a, target, &domain);
});

/// Normalizes `raw` and checks the result is canonical.
fn check_normalized(raw: &str) -> Option<String> {
    let name = normalize_host(raw)?;
    assert_eq!(
        normalize_host(&name).as_deref(),
        Some(name.as_str()),
        "not idempotent"
    );
    assert!(!name.is_empty());
    assert!(!name.ends_with('.'), "trailing dot kept: {name:?}");
    assert!(
        !name.bytes().any(|b| b.is_ascii_uppercase()),
        "not lowercase: {name:?}"
    );
    if !name.starts_with('[') {
        assert!(!name.contains(':'), "port kept: {name:?}");
        assert!(name.len() <= 253, "too long: {}", name.len());
    }
    Some(name)
}

/// A route inserted under one spelling is found under another exactly when
/// both normalize to the same name.
fn check_route_lookup(a: &str, b: &str, norm_a: Option<&str>, norm_b: Option<&str>) {
    let mut table = RouteTable::new();
    table.insert(a, Route::Gone);
    assert_eq!(table.len(), usize::from(norm_a.is_some()));
    assert_eq!(table.get(a).is_some(), norm_a.is_some());
    let same = norm_a.is_some() && norm_a == norm_b;
    assert_eq!(
        table.get(b).is_some(),
        same,
        "lookup of {b:?} after insert of {a:?}"
    );
}

/// The redirect never sends a client anywhere but HTTPS on a host of ours.
fn check_redirect(host: &[u8], target: &[u8], domain: &str) {
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut req = Request::get(uri);
    if let Ok(value) = HeaderValue::from_bytes(host) {
        req = req.header(http::header::HOST, value);
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    // serve_redirect normalizes its domain once, at start.
    let domain = normalize_host(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
    let Some(location) = redirect_location(&req, &domain, 8443) else {
        return;
    };
    let routed = routed_host(&req).expect("a redirect needs a routed host");
    let parsed: Uri = location.parse().expect("Location is a valid URI");
    assert_eq!(parsed.scheme_str(), Some("https"));
    let authority = parsed.authority().expect("Location has an authority");
    assert!(
        !authority.as_str().contains('@'),
        "userinfo in {location:?}"
    );
    assert_eq!(
        authority.host(),
        routed,
        "Location host differs from the routed host"
    );
    assert!(
        is_within(&routed, &domain),
        "{location:?} leaves {domain:?}"
    );
}
