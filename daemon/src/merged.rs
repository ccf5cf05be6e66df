//! Whether a branch counts as merged into main: by ancestry, or by patch-id equivalence (what
//! `git cherry` sees), so squash and rebase merges count too. Reads commits and trees only: it
//! must not touch refs, the index, or anything outside the object database.
//!
//! Everything here is blocking git2 work, like [`crate::mirror`]: run it inside
//! `spawn_blocking`. The [`MergedCache`] holds no git2 objects, so it can live across passes.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use git2::{ErrorCode, Oid, Repository, Sort, Tree};

/// How merged-ness is decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MergedRule {
    /// The tip is main's tip or one of its ancestors.
    Ancestry,
    /// Ancestry, or every change of the branch is already in main by patch id: a rebase or
    /// cherry-pick merge (each branch commit has an equivalent on main) or a squash merge (the
    /// branch's whole change equals one commit on main).
    #[default]
    PatchId,
}

/// How many of main's most recent non-merge commits (not on the branch) are compared against.
/// A branch merged longer ago than that is no longer recognised by patch id; that errs towards
/// keeping a preview, never towards removing one.
const MAIN_SIDE_LIMIT: usize = 2_000;

/// A branch with more non-merge commits than this that all match main is not called merged by
/// the per-commit rule: it bounds the first, uncached scan of a huge branch.
const BRANCH_SIDE_LIMIT: usize = 2_000;

/// Entries per cache generation; the cache holds at most twice this many commits (about 64
/// bytes each) and as many branch ranges.
const CACHE_GENERATION: usize = 50_000;

/// Remembers across scans what deciding merged-ness costs: each commit's patch id and each
/// (tip, main) answer, none of which can change, so a scan of many branches stays cheap. Holds no git2 objects, so it is `Send`; the caller owns it.
/// Bounded: when full, entries not used since the previous fill are forgotten and recomputed
/// on demand.
#[derive(Debug)]
pub struct MergedCache {
    /// Per commit: what it contributes to patch-id matching.
    commits: Generations<Oid, CommitPatch>,
    /// Per (merge base, tip): the patch id of the branch's whole change, `None` when empty.
    ranges: Generations<(Oid, Oid), Option<Oid>>,
    /// Per (tip, main, rule): the answer. Objects never change, so neither does it, and a
    /// scan where main did not move answers every branch from here.
    verdicts: Generations<(Oid, Oid, MergedRule), bool>,
}

impl MergedCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::with_generation(CACHE_GENERATION)
    }

    fn with_generation(capacity: usize) -> Self {
        MergedCache {
            commits: Generations::new(capacity),
            ranges: Generations::new(capacity),
            verdicts: Generations::new(capacity),
        }
    }

    /// How many commits and branch ranges are remembered.
    pub fn len(&self) -> usize {
        self.commits.len() + self.ranges.len() + self.verdicts.len()
    }

    /// Whether nothing is remembered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MergedCache {
    fn default() -> Self {
        Self::new()
    }
}

/// What a commit contributes to patch-id matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitPatch {
    /// More than one parent: `git cherry` ignores merges, and so do we.
    Merge,
    /// Changes no file. Equal to nothing, not even another empty commit (unlike `git cherry`,
    /// which pairs empty commits up): an empty commit is no evidence that a branch landed.
    Empty,
    /// The stable patch id of the diff against the parent (the empty tree for a root commit).
    Id(Oid),
}

/// Whether `tip` counts as merged into `main` under `rule`.
///
/// Under [`MergedRule::PatchId`], after ancestry says no: with no merge base (unrelated
/// histories) the branch is not merged. Otherwise it is merged when either
/// - every non-merge commit reachable from `tip` but not from `main` has the patch id of one of
///   main's last 2,000 non-merge commits not reachable from `tip` (a rebase or cherry-pick
///   merge: `git cherry main tip` shows only `-`), and there is at least one such commit — a
///   branch of only merge commits does not count vacuously; or
/// - the diff from the merge base to `tip` has the patch id of one of those main commits (a
///   squash merge).
///
/// Patch ids ignore line numbers and whitespace but not context lines, so a squash that landed
/// next to other edits of the same lines is not recognised; neither is a change made
/// independently on main with an identical diff told apart from a merge. A commit or branch that
/// changes nothing never matches. Every doubt resolves to "not merged".
pub fn is_merged(
    repo: &Repository,
    tip: Oid,
    main: Oid,
    rule: MergedRule,
    cache: &mut MergedCache,
) -> Result<bool, git2::Error> {
    if let Some(verdict) = cache.verdicts.get(&(tip, main, rule)) {
        return Ok(verdict);
    }
    let verdict = is_merged_within(repo, tip, main, rule, cache, MAIN_SIDE_LIMIT)?;
    cache.verdicts.insert((tip, main, rule), verdict);
    Ok(verdict)
}

fn is_merged_within(
    repo: &Repository,
    tip: Oid,
    main: Oid,
    rule: MergedRule,
    cache: &mut MergedCache,
    main_limit: usize,
) -> Result<bool, git2::Error> {
    if tip == main || repo.graph_descendant_of(main, tip)? {
        return Ok(true);
    }
    match rule {
        MergedRule::Ancestry => Ok(false),
        MergedRule::PatchId => patch_equivalent(repo, tip, main, cache, main_limit),
    }
}

fn patch_equivalent(
    repo: &Repository,
    tip: Oid,
    main: Oid,
    cache: &mut MergedCache,
    main_limit: usize,
) -> Result<bool, git2::Error> {
    let base = match repo.merge_base(tip, main) {
        Ok(base) => base,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let on_main = main_side(repo, tip, main, cache, main_limit)?;
    if on_main.is_empty() {
        return Ok(false);
    }
    if every_commit_on(repo, tip, main, &on_main, cache)? {
        return Ok(true);
    }
    let whole = match cache.ranges.get(&(base, tip)) {
        Some(whole) => whole,
        None => {
            let old = repo.find_commit(base)?.tree()?;
            let new = repo.find_commit(tip)?.tree()?;
            let whole = tree_patch_id(repo, Some(&old), &new)?;
            cache.ranges.insert((base, tip), whole);
            whole
        }
    };
    Ok(whole.is_some_and(|id| on_main.contains(&id)))
}

/// Patch ids of main's most recent non-merge commits that are not on the branch. Empty
/// commits use up the limit but contribute no id.
fn main_side(
    repo: &Repository,
    tip: Oid,
    main: Oid,
    cache: &mut MergedCache,
    limit: usize,
) -> Result<HashSet<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    // Topological first so "most recent" follows the graph, not clocks, which may tie or lie.
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)?;
    walk.push(main)?;
    walk.hide(tip)?;
    let mut ids = HashSet::new();
    let mut counted = 0;
    for oid in walk {
        match commit_patch(repo, oid?, cache)? {
            CommitPatch::Merge => continue,
            CommitPatch::Empty => {}
            CommitPatch::Id(id) => {
                ids.insert(id);
            }
        }
        counted += 1;
        if counted >= limit {
            break;
        }
    }
    Ok(ids)
}

/// Whether the branch has at least one non-merge commit and all of them are in `on_main`.
/// Stops at the first commit that is not.
fn every_commit_on(
    repo: &Repository,
    tip: Oid,
    main: Oid,
    on_main: &HashSet<Oid>,
    cache: &mut MergedCache,
) -> Result<bool, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    walk.hide(main)?;
    let mut matched = 0;
    for oid in walk {
        match commit_patch(repo, oid?, cache)? {
            CommitPatch::Merge => {}
            CommitPatch::Id(id) if on_main.contains(&id) => {
                matched += 1;
                if matched > BRANCH_SIDE_LIMIT {
                    return Ok(false);
                }
            }
            CommitPatch::Id(_) | CommitPatch::Empty => return Ok(false),
        }
    }
    Ok(matched > 0)
}

fn commit_patch(
    repo: &Repository,
    oid: Oid,
    cache: &mut MergedCache,
) -> Result<CommitPatch, git2::Error> {
    if let Some(patch) = cache.commits.get(&oid) {
        return Ok(patch);
    }
    let commit = repo.find_commit(oid)?;
    let parent = match commit.parent_count() {
        0 => None,
        1 => Some(commit.parent(0)?.tree()?),
        _ => {
            cache.commits.insert(oid, CommitPatch::Merge);
            return Ok(CommitPatch::Merge);
        }
    };
    let patch = match tree_patch_id(repo, parent.as_ref(), &commit.tree()?)? {
        Some(id) => CommitPatch::Id(id),
        None => CommitPatch::Empty,
    };
    cache.commits.insert(oid, patch);
    Ok(patch)
}

/// The stable patch id (`git patch-id --stable`) of the diff `old` → `new`, or `None` when the
/// diff is empty: every empty diff would share one id and so "match" every other.
fn tree_patch_id(
    repo: &Repository,
    old: Option<&Tree<'_>>,
    new: &Tree<'_>,
) -> Result<Option<Oid>, git2::Error> {
    let diff = repo.diff_tree_to_tree(old, Some(new), None)?;
    if diff.deltas().len() == 0 {
        return Ok(None);
    }
    diff.patchid(None).map(Some)
}

/// A map bounded by keeping two generations: inserts go to the young one; when it is full it
/// becomes the old one and the previous old one is dropped. A hit in the old generation moves
/// the entry back to the young one, so what every pass uses survives.
#[derive(Debug)]
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    /// Entries per generation, at least 1.
    capacity: usize,
}

impl<K: Eq + Hash + Copy, V: Copy> Generations<K, V> {
    fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        if let Some(value) = self.young.get(key) {
            return Some(*value);
        }
        let value = self.old.remove(key)?;
        self.insert(*key, value);
        Some(value)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.capacity && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_git::git;
    use std::path::Path;

    /// A work repository in a temp dir, driven with the `git` CLI.
    struct Work {
        repo: Repository,
        tmp: tempfile::TempDir,
    }

    impl Work {
        /// A repository on `main` with one commit adding `base`.
        fn new() -> Work {
            let tmp = tempfile::tempdir().unwrap();
            git(tmp.path(), &["init", "-q", "-b", "main"]);
            let repo = Repository::open(tmp.path()).unwrap();
            let work = Work { repo, tmp };
            work.commit("base", "base\n", "base");
            work
        }

        fn dir(&self) -> &Path {
            self.tmp.path()
        }

        fn git(&self, args: &[&str]) -> String {
            git(self.dir(), args)
        }

        /// Writes `file` and commits it with `message`.
        fn commit(&self, file: &str, content: &str, message: &str) {
            std::fs::write(self.dir().join(file), content).unwrap();
            self.git(&["add", file]);
            self.git(&["commit", "-q", "-m", message]);
        }

        fn oid(&self, rev: &str) -> Oid {
            self.repo
                .revparse_single(rev)
                .unwrap()
                .peel_to_commit()
                .unwrap()
                .id()
        }

        fn merged(&self, branch: &str, rule: MergedRule, cache: &mut MergedCache) -> bool {
            let (tip, main) = (self.oid(branch), self.oid("main"));
            is_merged(&self.repo, tip, main, rule, cache).unwrap()
        }

        /// `git cherry main <branch>`: one `+` or `-` per branch commit, oldest first.
        fn cherry(&self, branch: &str) -> String {
            self.git(&["cherry", "main", branch])
                .lines()
                .map(|line| &line[..1])
                .collect()
        }
    }

    /// `f` at base; main moves on.
    fn ancestor() -> Work {
        let w = Work::new();
        w.git(&["branch", "f"]);
        w.commit("m", "m\n", "main moves");
        w
    }

    /// `f` is main.
    fn same_tip() -> Work {
        let w = Work::new();
        w.git(&["branch", "f"]);
        w
    }

    /// Two commits on `f`; main moves on, then cherry-picks both (a rebase merge).
    fn rebase_merged() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f one");
        w.commit("b", "b\n", "f two");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["cherry-pick", "main..f"]);
        w
    }

    /// Like [`rebase_merged`], then `f` gets new work.
    fn rebase_merged_then_more_work() -> Work {
        let w = rebase_merged();
        w.git(&["checkout", "-q", "f"]);
        w.commit("c", "c\n", "f three");
        w
    }

    /// Three commits on `f`, two touching the same file; main squash-merges them.
    fn squash_merged() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f one");
        w.commit("a", "a\nmore\n", "f two");
        w.commit("b", "b\n", "f three");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["merge", "-q", "--squash", "f"]);
        w.git(&["commit", "-q", "-m", "squash f"]);
        w
    }

    /// Two commits on `f`; main cherry-picks only the first.
    fn partly_picked() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f one");
        w.commit("b", "b\n", "f two");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["cherry-pick", "f~1"]);
        w
    }

    /// Main makes the same change as `f` on its own, with another message: patch-id
    /// equivalence cannot tell this from a merge, and the preview would show nothing new.
    fn same_change_made_on_main() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "same\n", "f adds a");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.commit("a", "same\n", "main adds a too");
        w
    }

    /// `f` is an orphan branch with its own content: no merge base.
    fn unrelated() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "--orphan", "f"]);
        w.git(&["rm", "-q", "-f", "base"]);
        w.commit("other", "other\n", "orphan root");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w
    }

    /// `f` is an orphan branch whose root adds what main's root adds: git cherry pairs the
    /// roots up, but without a merge base nothing is merged.
    fn unrelated_same_content() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "--orphan", "f"]);
        w.git(&["commit", "-q", "-m", "orphan root"]);
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w
    }

    /// `f` and main both merge `h`: `f`'s only own commit is a merge, with main's tree.
    fn only_merge_commits() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "h"]);
        w.commit("h", "h\n", "h");
        w.git(&["checkout", "-q", "-b", "f", "main"]);
        w.git(&["merge", "-q", "--no-ff", "-m", "f merges h", "h"]);
        w.git(&["checkout", "-q", "main"]);
        w.git(&["merge", "-q", "--no-ff", "-m", "main merges h", "h"]);
        w
    }

    /// `f` has only an empty commit, and so does main: `git cherry` pairs them, we do not.
    fn only_empty_commits() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.git(&["commit", "-q", "--allow-empty", "-m", "f empty"]);
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["commit", "-q", "--allow-empty", "-m", "main empty"]);
        w
    }

    /// A rebase merge that kept `f`'s empty commit. The empty commits do not pair up, but
    /// `f`'s whole change is the one picked commit, so the whole-branch rule still sees it.
    fn rebase_merged_one_and_empty() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f one");
        w.git(&["commit", "-q", "--allow-empty", "-m", "f empty"]);
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["cherry-pick", "--allow-empty", "main..f"]);
        w
    }

    /// As above with two real commits: neither rule matches, so the branch is not merged
    /// (conservative; its preview stays until the branch is deleted).
    fn rebase_merged_two_and_empty() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f one");
        w.git(&["commit", "-q", "--allow-empty", "-m", "f empty"]);
        w.commit("b", "b\n", "f two");
        w.git(&["checkout", "-q", "main"]);
        w.commit("m", "m\n", "main moves");
        w.git(&["cherry-pick", "--allow-empty", "main..f"]);
        w
    }

    /// `f`'s commits cancel out: its whole change is empty, and main has an empty commit.
    fn net_empty_branch() -> Work {
        let w = Work::new();
        w.git(&["checkout", "-q", "-b", "f"]);
        w.commit("a", "a\n", "f adds a");
        w.git(&["rm", "-q", "a"]);
        w.git(&["commit", "-q", "-m", "f removes a"]);
        w.git(&["checkout", "-q", "main"]);
        w.git(&["commit", "-q", "--allow-empty", "-m", "main empty"]);
        w
    }

    /// One history shape and what each rule, and real `git cherry`, say about branch `f`.
    struct Case {
        name: &'static str,
        fixture: fn() -> Work,
        ancestry: bool,
        patch_id: bool,
        /// `git cherry main f`, one sign per branch commit.
        cherry: &'static str,
    }

    const fn case(
        name: &'static str,
        fixture: fn() -> Work,
        ancestry: bool,
        patch_id: bool,
        cherry: &'static str,
    ) -> Case {
        Case {
            name,
            fixture,
            ancestry,
            patch_id,
            cherry,
        }
    }

    const CASES: &[Case] = &[
        case("ancestor", ancestor, true, true, ""),
        case("same tip", same_tip, true, true, ""),
        case("rebase merged", rebase_merged, false, true, "--"),
        case(
            "rebase merged then more work",
            rebase_merged_then_more_work,
            false,
            false,
            "--+",
        ),
        // git cherry sees no per-commit match; the whole-branch rule does.
        case("squash merged", squash_merged, false, true, "+++"),
        case("partly picked", partly_picked, false, false, "-+"),
        case(
            "same change on main",
            same_change_made_on_main,
            false,
            true,
            "-",
        ),
        case("unrelated", unrelated, false, false, "+"),
        case(
            "unrelated same content",
            unrelated_same_content,
            false,
            false,
            "-",
        ),
        case("only merge commits", only_merge_commits, false, false, ""),
        case("only empty commits", only_empty_commits, false, false, "-"),
        case(
            "rebase merged, one and empty",
            rebase_merged_one_and_empty,
            false,
            true,
            "--",
        ),
        case(
            "rebase merged, two and empty",
            rebase_merged_two_and_empty,
            false,
            false,
            "---",
        ),
        case("net empty branch", net_empty_branch, false, false, "++"),
    ];

    /// Where git cherry pairs commits up and we do not: empty commits, and unrelated roots.
    const STRICTER_THAN_GIT_CHERRY: &[&str] = &[
        "only empty commits",
        "rebase merged, two and empty",
        "unrelated same content",
    ];

    #[test]
    fn merged_by_rule() {
        for case in CASES {
            let w = (case.fixture)();
            let mut cache = MergedCache::new();
            let name = case.name;
            let by_ancestry = w.merged("f", MergedRule::Ancestry, &mut cache);
            assert_eq!(by_ancestry, case.ancestry, "{name}: ancestry");
            let by_patch_id = w.merged("f", MergedRule::PatchId, &mut cache);
            assert_eq!(by_patch_id, case.patch_id, "{name}: patch id");
        }
    }

    /// Pins the fixtures to what real `git cherry` says, and our rule to it: whenever git
    /// cherry finds every branch commit in main, we call the branch merged, except for the
    /// documented empty-commit cases.
    #[test]
    fn agrees_with_git_cherry() {
        for case in CASES {
            let w = (case.fixture)();
            let name = case.name;
            assert_eq!(w.cherry("f"), case.cherry, "{name}: git cherry main f");
            let all_in_main = !case.cherry.is_empty() && !case.cherry.contains('+');
            let ours = w.merged("f", MergedRule::PatchId, &mut MergedCache::new());
            if all_in_main && !STRICTER_THAN_GIT_CHERRY.contains(&name) {
                assert!(ours, "{name}: git cherry says merged");
            }
        }
    }

    #[test]
    fn cache_is_reused_and_gives_the_same_answer() {
        let w = rebase_merged();
        let mut cache = MergedCache::default();
        assert!(cache.is_empty());
        assert!(w.merged("f", MergedRule::PatchId, &mut cache));
        // base, main moves, two picks on main; two commits on f.
        assert_eq!(cache.commits.len(), 5, "{cache:?}");
        let len = cache.len();
        assert!(w.merged("f", MergedRule::PatchId, &mut cache));
        assert_eq!(cache.len(), len, "nothing recomputed");

        let w = squash_merged();
        let mut cache = MergedCache::new();
        assert!(w.merged("f", MergedRule::PatchId, &mut cache));
        assert_eq!(cache.ranges.len(), 1);
        let len = cache.len();
        assert!(w.merged("f", MergedRule::PatchId, &mut cache));
        assert_eq!(cache.len(), len);
    }

    #[test]
    fn a_tiny_cache_still_answers_right() {
        let w = squash_merged();
        let mut cache = MergedCache::with_generation(1);
        for _ in 0..3 {
            assert!(w.merged("f", MergedRule::PatchId, &mut cache));
            assert!(cache.len() <= 4, "{cache:?}");
        }
    }

    #[test]
    fn a_merge_older_than_the_main_side_limit_is_forgotten() {
        let w = rebase_merged();
        w.commit("later", "later\n", "main moves again");
        let (tip, main) = (w.oid("f"), w.oid("main"));
        let mut cache = MergedCache::new();
        let rule = MergedRule::PatchId;
        assert!(is_merged_within(&w.repo, tip, main, rule, &mut cache, 4).unwrap());
        assert!(!is_merged_within(&w.repo, tip, main, rule, &mut cache, 2).unwrap());
    }

    #[test]
    fn generations_keep_what_is_used_and_stay_bounded() {
        let mut g = Generations::new(2);
        g.insert(1, 'a');
        g.insert(2, 'b');
        g.insert(3, 'c'); // young {3}, old {1, 2}
        assert_eq!(g.get(&1), Some('a')); // promoted: young {3, 1}
        g.insert(4, 'd'); // young {4}, old {3, 1}: 2 dropped
        assert_eq!(g.get(&2), None);
        assert_eq!(g.get(&1), Some('a'));
        assert_eq!(g.get(&3), Some('c'));
        assert!(g.len() <= 4);
        g.insert(1, 'z'); // overwrite in place, no rotation
        assert_eq!(g.get(&1), Some('z'));
    }

    #[test]
    fn cache_is_send_and_default_rule_is_patch_id() {
        fn send<T: Send>() {}
        send::<MergedCache>();
        assert_eq!(MergedRule::default(), MergedRule::PatchId);
    }
}
