//! Branch names to DNS labels ("slugs"), and the one-to-one map from live branches to slugs.
//!
//! Pure functions only: no git, no Docker. Ownership of a slug is handed in by the caller,
//! read back from the labels of live objects, so the first branch to take a slug keeps it.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// The longest DNS label.
const MAX_LABEL: usize = 63;

/// Names a slug may never be, because previewd or the base domain's operator uses them.
const RESERVED: &[&str] = &["www", "admin", "api", "localhost", "_acme-challenge"];

/// The plain slug of a branch name: lowercase ASCII, each run of anything outside `[a-z0-9]`
/// turned into one `-`, no leading or trailing `-`. Empty when nothing is left.
fn plain(branch: &[u8]) -> String {
    let mut out = String::with_capacity(branch.len());
    let mut pending_dash = false;
    for &byte in branch {
        let c = byte.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c as char);
        } else {
            pending_dash = true;
        }
    }
    out
}

/// The first 6 hex digits of sha256 of the full ref name (`refs/heads/<branch>`).
fn suffix(branch: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"refs/heads/");
    hasher.update(branch);
    let digest = hasher.finalize();
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// The slug with the hash suffix: the plain slug cut so that `-` + 6 hex fits in 63 bytes.
fn suffixed(branch: &[u8]) -> String {
    let mut base = plain(branch);
    base.truncate(MAX_LABEL - 7);
    let base = base.trim_end_matches('-');
    if base.is_empty() {
        format!("b-{}", suffix(branch))
    } else {
        format!("{base}-{}", suffix(branch))
    }
}

/// The slug a branch gets when no other branch holds it: the plain slug, or the suffixed one
/// when the plain one is too long, empty, a reserved name, or looks like punycode (`xn--`).
pub fn slug(branch: &[u8]) -> String {
    let base = plain(branch);
    let unusable = base.is_empty()
        || base.len() > MAX_LABEL
        || base.starts_with("xn--")
        || RESERVED.contains(&base.as_str());
    if unusable {
        suffixed(branch)
    } else {
        base
    }
}

/// Gives every branch in `branches` a distinct slug.
///
/// `owned` maps slugs to the branch that holds them now (read from live objects' labels).
/// A branch that holds a slug keeps it; the others take their plain slug if it is free, else
/// the suffixed one. Branches are settled in name order, so the result does not depend on
/// the order of scanning.
pub fn assign(
    branches: &BTreeSet<String>,
    owned: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut assigned: BTreeMap<String, String> = BTreeMap::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (slug, branch) in owned {
        if branches.contains(branch) && !assigned.contains_key(branch) && taken.insert(slug.clone())
        {
            assigned.insert(branch.clone(), slug.clone());
        }
    }
    // Slugs held by objects of branches that are gone stay taken until those objects are
    // removed, so a new branch never inherits a dying preview's containers.
    taken.extend(owned.keys().cloned());
    for branch in branches {
        if assigned.contains_key(branch) {
            continue;
        }
        let mut candidate = slug(branch.as_bytes());
        if taken.contains(&candidate) {
            candidate = suffixed(branch.as_bytes());
        }
        // Two suffixed slugs can still meet (a 24-bit hash); walk on deterministically.
        let mut salt = 0u32;
        while taken.contains(&candidate) {
            salt += 1;
            candidate = suffixed(format!("{branch}\0{salt}").as_bytes());
        }
        taken.insert(candidate.clone());
        assigned.insert(branch.clone(), candidate);
    }
    assigned
}

/// Whether `s` is a valid DNS label as previewd makes them.
#[cfg(test)]
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_the_architecture() {
        assert_eq!(slug(b"feature/hello"), "feature-hello");
        assert_eq!(slug(b"feature/Login_page"), "feature-login-page");
        assert_eq!(slug(b"release/1.2"), "release-1-2");
        assert_eq!(slug(b"feature/login"), "feature-login");
    }

    #[test]
    fn runs_of_other_characters_become_one_dash() {
        assert_eq!(slug(b"a//..__b"), "a-b");
        assert_eq!(slug(b"--leading/and/trailing--"), "leading-and-trailing");
        assert_eq!(slug(b"tab\there\nnewline"), "tab-here-newline");
    }

    #[test]
    fn unicode_is_replaced_not_transliterated() {
        assert_eq!(slug("fix/café-menu".as_bytes()), "fix-caf-menu");
        assert_eq!(slug("feature/日本".as_bytes()), "feature");
    }

    #[test]
    fn names_with_nothing_usable_get_a_hash() {
        for name in ["..", "---", "日本語", "/", "_"] {
            let s = slug(name.as_bytes());
            assert!(s.starts_with("b-"), "{name:?} -> {s}");
            assert!(is_dns_label(&s), "{name:?} -> {s}");
        }
        assert_ne!(slug("日本".as_bytes()), slug("中文".as_bytes()));
    }

    #[test]
    fn long_names_are_cut_and_suffixed() {
        let name = "x".repeat(300);
        let s = slug(name.as_bytes());
        assert_eq!(s.len(), MAX_LABEL);
        assert!(is_dns_label(&s));
        let other = format!("{}y", "x".repeat(299));
        assert_ne!(slug(other.as_bytes()), s, "same prefix, different names");
        // A cut that lands on a dash must not leave `--`-free invariants broken.
        let dashy = format!("{}/tail", "a".repeat(55));
        assert!(is_dns_label(&slug(dashy.as_bytes())));
    }

    #[test]
    fn exactly_63_is_kept() {
        let name = "a".repeat(63);
        assert_eq!(slug(name.as_bytes()), name);
    }

    #[test]
    fn reserved_and_punycode_are_suffixed() {
        for name in ["www", "API", "admin", "localhost", "xn--80ak6aa92e"] {
            let s = slug(name.as_bytes());
            assert_ne!(s, name.to_ascii_lowercase(), "{name}");
            assert!(is_dns_label(&s));
            assert!(!s.starts_with("xn--"), "{s}");
        }
        // `_acme-challenge` loses its underscore, so it is already not the reserved name.
        assert_eq!(slug(b"_acme-challenge"), "acme-challenge");
    }

    #[test]
    fn invalid_utf8_does_not_panic() {
        let s = slug(&[0xff, 0xfe, b'o', b'k']);
        assert_eq!(s, "ok");
        assert!(is_dns_label(&slug(&[0xff, 0xfe])));
    }

    #[test]
    fn every_slug_is_a_dns_label() {
        let samples: Vec<Vec<u8>> = (0u8..=255)
            .map(|b| vec![b, b'-', b, b'.', b])
            .chain(["-a-", "a.-b", "Z", "9/9", "xn--a"].map(|s| s.as_bytes().to_vec()))
            .collect();
        for name in samples {
            let s = slug(&name);
            assert!(is_dns_label(&s), "{name:?} -> {s:?}");
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn collisions_get_distinct_slugs() {
        let branches = set(&["feature/a", "feature-a", "Feature/A", "feature.a"]);
        let slugs = assign(&branches, &BTreeMap::new());
        let distinct: BTreeSet<_> = slugs.values().collect();
        assert_eq!(distinct.len(), branches.len(), "{slugs:?}");
        // Name order decides who gets the plain slug on a fresh start.
        assert_eq!(slugs["Feature/A"], "feature-a");
        assert!(slugs.values().all(|s| is_dns_label(s)));
    }

    #[test]
    fn the_owner_keeps_its_slug() {
        let branches = set(&["feature/a", "feature-a"]);
        let owned = BTreeMap::from([("feature-a".to_string(), "feature/a".to_string())]);
        let slugs = assign(&branches, &owned);
        assert_eq!(slugs["feature/a"], "feature-a");
        assert_ne!(slugs["feature-a"], "feature-a");
    }

    #[test]
    fn a_dying_previews_slug_is_not_reused_yet() {
        let branches = set(&["feature-a"]);
        let owned = BTreeMap::from([("feature-a".to_string(), "feature/a".to_string())]);
        let slugs = assign(&branches, &owned);
        assert_ne!(slugs["feature-a"], "feature-a");
    }

    #[test]
    fn hash_collisions_between_suffixed_slugs_are_resolved() {
        let branches = set(&["x", "y"]);
        // Pretend both branches' suffixed slugs are held by other, dying branches.
        let owned = BTreeMap::from([
            ("x".to_string(), "old-x".to_string()),
            (suffixed(b"x"), "old-x2".to_string()),
            ("y".to_string(), "old-y".to_string()),
        ]);
        let slugs = assign(&branches, &owned);
        assert!(!owned.contains_key(&slugs["x"]));
        assert!(!owned.contains_key(&slugs["y"]));
        assert_ne!(slugs["x"], slugs["y"]);
    }
}
