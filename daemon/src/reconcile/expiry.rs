//! The operator's limits on what git wants: previews of branches idle for too long, and
//! previews beyond a cap (the idlest first), are dropped from the wanted set and so retired
//! like merged ones. A push brings an expired preview back. Pure: no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::mirror::Desired;

/// Why a branch's preview is not wanted although the branch is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// No commit for longer than the idle limit.
    Idle { limit: Duration },
    /// More open branches than the cap; this one is among the idlest.
    OverCap { cap: usize },
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Idle { limit } => {
                write!(f, "no push for {} days", limit.as_secs() / 86_400)
            }
            Expiry::OverCap { cap } => write!(f, "over the cap of {cap} previews"),
        }
    }
}

/// Which of `desired`'s branches the limits drop, at `now` (seconds since the epoch).
/// "Idle" is measured from the tip's committer time: git keeps no push times, and a rebase or
/// amend counts as activity.
pub fn expire(
    desired: &Desired,
    idle_limit: Option<Duration>,
    cap: Option<usize>,
    now: i64,
) -> BTreeMap<String, Expiry> {
    let mut dropped = BTreeMap::new();
    let activity = |branch: &str| desired.activity.get(branch).copied().unwrap_or(now);
    if let Some(limit) = idle_limit {
        let cutoff = now.saturating_sub(i64::try_from(limit.as_secs()).unwrap_or(i64::MAX));
        for branch in desired.branches.keys() {
            if activity(branch) < cutoff {
                dropped.insert(branch.clone(), Expiry::Idle { limit });
            }
        }
    }
    if let Some(cap) = cap {
        let mut open: Vec<&String> = desired
            .branches
            .keys()
            .filter(|b| !dropped.contains_key(*b))
            .collect();
        // Most recent first; names break ties so the choice is stable from pass to pass.
        open.sort_by(|a, b| activity(b).cmp(&activity(a)).then_with(|| a.cmp(b)));
        for branch in open.into_iter().skip(cap) {
            dropped.insert(branch.clone(), Expiry::OverCap { cap });
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Oid;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    fn desired(branches: &[(&str, i64)]) -> Desired {
        let mut d = Desired::default();
        for (name, age_days) in branches {
            d.branches.insert(name.to_string(), Oid::ZERO_SHA1);
            d.activity.insert(name.to_string(), NOW - age_days * DAY);
        }
        d
    }

    #[test]
    fn no_limits_drop_nothing() {
        let d = desired(&[("a", 400), ("b", 0)]);
        assert!(expire(&d, None, None, NOW).is_empty());
    }

    #[test]
    fn idle_branches_expire() {
        let d = desired(&[("old", 15), ("fresh", 1), ("edge", 14)]);
        let limit = Duration::from_secs(14 * 86_400);
        let dropped = expire(&d, Some(limit), None, NOW);
        assert_eq!(dropped.keys().collect::<Vec<_>>(), ["old"]);
        assert_eq!(dropped["old"].to_string(), "no push for 14 days");
    }

    #[test]
    fn the_cap_drops_the_idlest_first() {
        let d = desired(&[("a", 3), ("b", 1), ("c", 2), ("d", 5)]);
        let dropped = expire(&d, None, Some(2), NOW);
        assert_eq!(dropped.keys().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(dropped["a"], Expiry::OverCap { cap: 2 });
    }

    #[test]
    fn idle_ones_do_not_count_against_the_cap() {
        let d = desired(&[("ancient", 90), ("a", 1), ("b", 2)]);
        let dropped = expire(&d, Some(Duration::from_secs(30 * 86_400)), Some(2), NOW);
        assert_eq!(dropped.keys().collect::<Vec<_>>(), ["ancient"]);
    }

    #[test]
    fn ties_are_broken_by_name() {
        let d = desired(&[("b", 1), ("a", 1), ("c", 1)]);
        let dropped = expire(&d, None, Some(1), NOW);
        assert_eq!(dropped.keys().collect::<Vec<_>>(), ["b", "c"]);
    }
}
