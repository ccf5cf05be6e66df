//! The reconciler's clocks and memos, as a pure policy over an injected `now`: deploy backoff
//! after the engine failed, the quiet a burst of pushes must reach before it builds, the drain
//! a superseded container gets, the restart budget of a crashing service, and the second look
//! a mass removal waits for. It remembers facts between passes and judges a pass's actions;
//! it performs nothing and reads no clock of its own, so its rules are tested under tokio's
//! paused time. A restart of previewd forgets it all, which only ever makes it wait again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::plan::Action;
use crate::model::PreviewRef;

/// A service that stops this often within [`RESTART_WINDOW`] is marked failed.
pub const RESTART_BUDGET: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// How long a mass removal waits for a second look.
const RETIRE_CONFIRM: Duration = Duration::from_secs(10);
/// After a push cancels a deploy, the branch must be this quiet before the next deploy, so a
/// burst of pushes builds its last commit once instead of every commit in turn.
const BURST_QUIET: Duration = Duration::from_secs(1);
/// A superseded container that still runs keeps running at least this long after traffic
/// moved to its successor, so requests already sent to it can finish; then it is removed.
pub const SWAP_DRAIN: Duration = Duration::from_secs(3);
/// First and longest wait before retrying a deploy the engine (not the commit) failed.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A deploy the engine failed, to be retried no earlier than `at`.
#[derive(Debug)]
struct Backoff {
    at: Instant,
    delay: Duration,
}

/// What [`Policy::hold`] kept back from a pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Retirements held for a second look, when more previews than the threshold would go.
    pub mass_removal: Option<usize>,
    /// When a held action may be due: the caller runs a pass then.
    pub recheck: Option<Instant>,
}

/// Whether a stopped service may be started again.
#[derive(Debug, PartialEq, Eq)]
pub enum RestartVerdict {
    /// Start it; this is its `attempt`th start within the window.
    Start { attempt: usize },
    /// It stopped `stops` times within the window: give up and record the commit as failed.
    GiveUp { stops: usize },
}

#[derive(Debug)]
pub struct Policy {
    backoff: BTreeMap<String, Backoff>,
    /// Each preview's tip as last seen, and since when: a burst of pushes is built once.
    tips: BTreeMap<String, (String, Instant)>,
    /// Previews whose deploy a newer push cancelled: they deploy once pushes pause.
    bursting: BTreeSet<String>,
    /// Superseded containers still running, by id, and since when they are: each gets
    /// [`SWAP_DRAIN`] before it is removed.
    draining: HashMap<String, Instant>,
    /// When previewd started each container that stopped, by container id.
    restarts: HashMap<String, Vec<Instant>>,
    guard: RetireGuard,
}

impl Policy {
    /// `mass_removal_threshold`: more retirements than this at once wait for a second look.
    pub fn new(mass_removal_threshold: usize) -> Self {
        Policy {
            backoff: BTreeMap::new(),
            tips: BTreeMap::new(),
            bursting: BTreeSet::new(),
            draining: HashMap::new(),
            restarts: HashMap::new(),
            guard: RetireGuard::new(mass_removal_threshold, RETIRE_CONFIRM),
        }
    }

    /// Keeps the memos in step with a pass's look at the world: when each wanted tip last
    /// moved, and the restart counts of containers that still exist.
    pub fn observe<'a>(
        &mut self,
        wanted: &BTreeMap<String, PreviewRef>,
        container_ids: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) {
        let live: BTreeSet<&str> = container_ids.into_iter().collect();
        self.restarts.retain(|id, _| live.contains(id.as_str()));
        self.tips = wanted
            .iter()
            .map(|(slug, p)| {
                let since = match self.tips.get(slug) {
                    Some((commit, since)) if *commit == p.commit => *since,
                    _ => now,
                };
                (slug.clone(), (p.commit.clone(), since))
            })
            .collect();
        self.bursting.retain(|slug| wanted.contains_key(slug));
    }

    /// The deploy went live: no backoff any more.
    pub fn deployed(&mut self, slug: &str) {
        self.backoff.remove(slug);
    }

    /// The engine failed a deploy (not the commit): the next waits, twice as long each time.
    /// Returns how long.
    pub fn engine_failed(&mut self, slug: &str, now: Instant) -> Duration {
        let delay = self
            .backoff
            .get(slug)
            .map_or(BACKOFF_FIRST, |b| (b.delay * 2).min(BACKOFF_MAX));
        self.backoff.insert(
            slug.to_owned(),
            Backoff {
                at: now + delay,
                delay,
            },
        );
        delay
    }

    /// A newer push cancelled the preview's deploy: the next waits for pushes to pause.
    pub fn cancelled(&mut self, slug: &str) {
        self.bursting.insert(slug.to_owned());
    }

    /// Everything of the preview is gone: a new branch with its slug starts afresh.
    pub fn retired(&mut self, slug: &str) {
        self.backoff.remove(slug);
    }

    /// A stopped service asks to be started again: within [`RESTART_BUDGET`] starts per
    /// [`RESTART_WINDOW`] it may be.
    pub fn restart(&mut self, id: &str, now: Instant) -> RestartVerdict {
        let attempts = self.restarts.entry(id.to_owned()).or_default();
        attempts.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if attempts.len() >= RESTART_BUDGET {
            return RestartVerdict::GiveUp {
                stops: attempts.len() + 1,
            };
        }
        attempts.push(now);
        RestartVerdict::Start {
            attempt: attempts.len(),
        }
    }

    /// Drops from `actions` what must wait: removals of many previews at once until a second
    /// look agrees (`confirmed`: an operator already gave it), deploys in backoff after the
    /// engine failed them or while pushes keep coming, and superseded containers (with their
    /// images and volumes) while requests sent to them before the swap may still run.
    pub fn hold(&mut self, actions: &mut Vec<Action>, confirmed: bool, now: Instant) -> Held {
        let mut held = Held::default();
        let mut recheck = |at: Instant| {
            held.recheck = Some(held.recheck.map_or(at, |r: Instant| r.min(at)));
        };
        let retiring: BTreeSet<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Retire { slug } => Some(slug.clone()),
                _ => None,
            })
            .collect();
        let verdict = if confirmed {
            Verdict::Proceed
        } else {
            self.guard.check(&retiring, now)
        };
        if let Verdict::HoldUntil(at) = verdict {
            actions.retain(|a| !matches!(a, Action::Retire { .. }));
            held.mass_removal = Some(retiring.len());
            recheck(at);
        }

        self.backoff.retain(|_, b| b.at > now);
        let (backoff, bursting, tips) = (&self.backoff, &mut self.bursting, &self.tips);
        actions.retain(|a| match a {
            Action::Deploy(p) | Action::Restart { preview: p, .. } => {
                if let Some(b) = backoff.get(&p.slug) {
                    recheck(b.at);
                    return false;
                }
                // Pushes are still coming: build only once the branch has been quiet a moment.
                let quiet_at = tips.get(&p.slug).map(|(_, since)| *since + BURST_QUIET);
                match quiet_at {
                    Some(at) if bursting.contains(&p.slug) && at > now => {
                        recheck(at);
                        false
                    }
                    _ => {
                        bursting.remove(&p.slug);
                        true
                    }
                }
            }
            _ => true,
        });
        if let Some(at) = hold_draining(&mut self.draining, actions, now) {
            recheck(at);
        }
        held
    }
}

/// Keeps superseded running containers, and their previews' image and volume removals, until
/// each has drained for [`SWAP_DRAIN`] since it was first planned for removal (the route had
/// already moved on: routes are published before actions run). Returns when to look again.
fn hold_draining(
    draining: &mut HashMap<String, Instant>,
    actions: &mut Vec<Action>,
    now: Instant,
) -> Option<Instant> {
    let superseded: BTreeSet<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::RemoveContainer {
                id, running: true, ..
            } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    draining.retain(|id, _| superseded.contains(id.as_str()));
    for id in superseded {
        draining.entry(id.to_owned()).or_insert(now);
    }
    let mut held = BTreeSet::new();
    let mut next: Option<Instant> = None;
    actions.retain(|a| match a {
        Action::RemoveContainer {
            slug,
            id,
            running: true,
        } => {
            let until = draining.get(id).map_or(now, |since| *since + SWAP_DRAIN);
            if until <= now {
                return true;
            }
            held.insert(slug.clone());
            next = Some(next.map_or(until, |n| n.min(until)));
            false
        }
        _ => true,
    });
    // The image and the commit's volumes are still in use by the draining container.
    actions.retain(|a| match a {
        Action::RemoveImage { slug, .. } | Action::RemoveVolume { slug, .. } => {
            !held.contains(slug)
        }
        _ => true,
    });
    next
}

/// Never destroy on doubt: a pass that would retire more than `threshold` previews at once
/// (a mirror replaced by an empty one, a ref store half rewritten) waits until a second look,
/// `delay` later, still wants at least as much gone.
#[derive(Debug)]
struct RetireGuard {
    threshold: usize,
    delay: Duration,
    pending: Option<(BTreeSet<String>, Instant)>,
}

/// What a [`RetireGuard`] says of one pass's retirements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Proceed,
    /// Retire nothing now; look again at this instant.
    HoldUntil(Instant),
}

impl RetireGuard {
    fn new(threshold: usize, delay: Duration) -> Self {
        RetireGuard {
            threshold,
            delay,
            pending: None,
        }
    }

    fn check(&mut self, retiring: &BTreeSet<String>, now: Instant) -> Verdict {
        if retiring.len() <= self.threshold {
            self.pending = None;
            return Verdict::Proceed;
        }
        match &self.pending {
            Some((seen, since)) if retiring.is_subset(seen) => {
                let due = *since + self.delay;
                if now >= due {
                    self.pending = None;
                    Verdict::Proceed
                } else {
                    Verdict::HoldUntil(due)
                }
            }
            _ => {
                self.pending = Some((retiring.clone(), now));
                Verdict::HoldUntil(now + self.delay)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::{preview, remove_container, remove_image, NEW, OLD};
    use tokio::time::advance;

    fn wanted(previews: &[PreviewRef]) -> BTreeMap<String, PreviewRef> {
        previews
            .iter()
            .map(|p| (p.slug.clone(), p.clone()))
            .collect()
    }

    fn retire(slug: &str) -> Action {
        Action::Retire { slug: slug.into() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_superseded_container_and_its_image_wait_out_the_drain() {
        let planned = || {
            vec![
                remove_container("a", "old-a", true),
                remove_image("a", "img-a"),
                Action::RemoveVolume {
                    slug: "a".into(),
                    name: "scratch-a".into(),
                },
                remove_container("b", "dead-b", false),
                remove_image("b", "img-b"),
            ]
        };
        let mut policy = Policy::new(10);
        let start = Instant::now();

        let mut actions = planned();
        let held = policy.hold(&mut actions, false, Instant::now());
        assert_eq!(held.recheck, Some(start + SWAP_DRAIN));
        // A dead container drains nothing: it and its preview's image go at once.
        assert_eq!(
            actions,
            [
                remove_container("b", "dead-b", false),
                remove_image("b", "img-b")
            ]
        );

        // Still draining a moment later: the clock started when it was first superseded.
        advance(SWAP_DRAIN / 2).await;
        let mut actions = planned();
        let held = policy.hold(&mut actions, false, Instant::now());
        assert_eq!(held.recheck, Some(start + SWAP_DRAIN));
        assert_eq!(actions.len(), 2);

        advance(SWAP_DRAIN / 2).await;
        let mut actions = planned();
        assert_eq!(
            policy.hold(&mut actions, false, Instant::now()),
            Held::default()
        );
        assert_eq!(actions, planned());
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_no_longer_superseded_is_forgotten() {
        let mut policy = Policy::new(10);
        let mut actions = vec![remove_container("a", "old-a", true)];
        policy.hold(&mut actions, false, Instant::now());
        // A pass that no longer plans its removal (it serves again, say) drops its clock, so
        // a later supersession drains in full.
        advance(SWAP_DRAIN).await;
        policy.hold(&mut Vec::new(), false, Instant::now());
        advance(SWAP_DRAIN).await;
        let mut actions = vec![remove_container("a", "old-a", true)];
        let again = Instant::now();
        let held = policy.hold(&mut actions, false, again);
        assert_eq!(held.recheck, Some(again + SWAP_DRAIN));
        assert!(actions.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn engine_failures_back_off_doubling_up_to_a_minute() {
        let mut policy = Policy::new(10);
        let deploy = || vec![Action::Deploy(preview("a", NEW))];
        let mut delays = Vec::new();
        for _ in 0..7 {
            delays.push(policy.engine_failed("a", Instant::now()).as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60]);

        let failed_at = Instant::now();
        let mut actions = deploy();
        let held = policy.hold(&mut actions, false, Instant::now());
        assert!(actions.is_empty(), "held while backing off");
        assert_eq!(held.recheck, Some(failed_at + BACKOFF_MAX));

        advance(BACKOFF_MAX).await;
        let mut actions = deploy();
        policy.hold(&mut actions, false, Instant::now());
        assert_eq!(actions, deploy(), "due once the backoff ends");

        // A success resets the doubling.
        policy.deployed("a");
        assert_eq!(policy.engine_failed("a", Instant::now()), BACKOFF_FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_pushes_deploys_once_the_branch_is_quiet() {
        let mut policy = Policy::new(10);
        policy.observe(&wanted(&[preview("a", OLD)]), [], Instant::now());
        policy.cancelled("a");
        // Another push lands: its quiet starts now.
        advance(Duration::from_millis(600)).await;
        let pushed = Instant::now();
        policy.observe(&wanted(&[preview("a", NEW)]), [], pushed);
        let deploy = || vec![Action::Deploy(preview("a", NEW))];

        advance(Duration::from_millis(600)).await;
        let mut actions = deploy();
        let held = policy.hold(&mut actions, false, Instant::now());
        assert!(actions.is_empty());
        assert_eq!(held.recheck, Some(pushed + BURST_QUIET));

        advance(Duration::from_millis(400)).await;
        let mut actions = deploy();
        policy.hold(&mut actions, false, Instant::now());
        assert_eq!(actions, deploy());
        // Quiet reached: the next deploy of the branch does not wait.
        let mut actions = deploy();
        policy.hold(&mut actions, false, Instant::now());
        assert_eq!(actions, deploy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashing_service_is_restarted_three_times_in_ten_minutes() {
        let mut policy = Policy::new(10);
        let verdicts: Vec<_> = (0..4)
            .map(|_| policy.restart("c1", Instant::now()))
            .collect();
        assert_eq!(
            verdicts,
            [
                RestartVerdict::Start { attempt: 1 },
                RestartVerdict::Start { attempt: 2 },
                RestartVerdict::Start { attempt: 3 },
                RestartVerdict::GiveUp { stops: 4 },
            ]
        );
        // Starts older than the window no longer count.
        advance(RESTART_WINDOW).await;
        assert_eq!(
            policy.restart("c1", Instant::now()),
            RestartVerdict::Start { attempt: 1 }
        );
        // A container that is gone is forgotten.
        policy.observe(&BTreeMap::new(), ["c2"], Instant::now());
        assert!(policy.restarts.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_mass_removal_waits_for_a_second_look_unless_confirmed() {
        let mut policy = Policy::new(2);
        let retiring = || vec![retire("a"), retire("b"), retire("c")];
        let first = Instant::now();
        let mut actions = retiring();
        let held = policy.hold(&mut actions, false, first);
        assert!(actions.is_empty());
        assert_eq!(
            held,
            Held {
                mass_removal: Some(3),
                recheck: Some(first + RETIRE_CONFIRM)
            }
        );

        advance(RETIRE_CONFIRM).await;
        let mut actions = retiring();
        policy.hold(&mut actions, false, Instant::now());
        assert_eq!(actions, retiring(), "the second look agrees");

        let mut fresh = Policy::new(2);
        let mut actions = retiring();
        assert_eq!(
            fresh.hold(&mut actions, true, Instant::now()),
            Held::default()
        );
        assert_eq!(actions, retiring(), "an operator's gc is the second look");
    }

    fn slugs(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_retirements_proceed_at_once() {
        let mut guard = RetireGuard::new(3, Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(guard.check(&slugs(&["a", "b", "c"]), now), Verdict::Proceed);
        assert_eq!(guard.check(&slugs(&[]), now), Verdict::Proceed);
    }

    #[tokio::test(start_paused = true)]
    async fn many_retirements_wait_for_a_second_look() {
        let mut guard = RetireGuard::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let all = slugs(&["a", "b", "c", "d"]);
        assert_eq!(
            guard.check(&all, t0),
            Verdict::HoldUntil(t0 + Duration::from_secs(10))
        );
        // Too early: still held.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            guard.check(&all, t1),
            Verdict::HoldUntil(t0 + Duration::from_secs(10))
        );
        // The second look agrees: go.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(guard.check(&all, t2), Verdict::Proceed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_look_that_disagrees_starts_over() {
        let mut guard = RetireGuard::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        guard.check(&slugs(&["a", "b", "c", "d"]), t0);
        // The mirror came back: nothing to retire, and the doubt is forgotten.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(guard.check(&slugs(&[]), t1), Verdict::Proceed);
        let wider = slugs(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            guard.check(&wider, t1),
            Verdict::HoldUntil(t1 + Duration::from_secs(10))
        );
    }
}
