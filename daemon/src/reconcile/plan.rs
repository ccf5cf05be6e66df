//! The pure heart of the reconciler: given what git wants and what Docker has, which actions
//! move the world closer, what each host should serve, and what `previewd ls` shows.
//! No I/O here, so every rule has a table test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use previewd_proxy::Route;

use crate::engine::{tag_is_for, ContainerInfo, Inventory, Stack};
use crate::mirror::Desired;
use crate::model::{FailedBuild, Lifetime, PreviewRef, PreviewState, PreviewStatus, Unreadable};
use crate::slug;

/// Everything a plan is made from, read fresh on every pass.
#[derive(Debug)]
pub struct World<'a> {
    /// Previews git wants, by slug.
    pub wanted: &'a BTreeMap<String, PreviewRef>,
    /// Branches git could not read, by slug: whatever they have is kept as it is.
    pub unreadable: &'a BTreeMap<String, Unreadable>,
    /// What Docker holds for this instance.
    pub inventory: &'a Inventory,
    /// Deploys running now, by slug.
    pub in_flight: &'a BTreeMap<String, Flight>,
    /// Last failure per slug: a commit that failed to build, start or keep running.
    pub failed: &'a BTreeMap<String, FailedBuild>,
}

/// A deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    pub commit: String,
    /// When the deploy was started (shown on the building page).
    pub since: SystemTime,
    /// Place in the build queue, 1 first; `None` once building (or when no build is needed).
    pub queue_position: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build the commit if its image is missing, run it, wait until it answers.
    Deploy(PreviewRef),
    /// The tip's container stopped: start it again (within a budget the caller keeps).
    Restart { preview: PreviewRef, id: String },
    /// A container the preview no longer needs: superseded by a live newer one (`running`),
    /// or dead.
    RemoveContainer {
        slug: String,
        id: String,
        running: bool,
    },
    /// An image tag (or, untagged, an image id) no container of the preview uses and that is
    /// not the wanted commit's.
    RemoveImage { slug: String, id: String },
    /// A volume whose lifetime was a commit the preview no longer keeps.
    RemoveVolume { slug: String, name: String },
    /// An untagged build layer nothing is built on: left by a build that failed, was
    /// cancelled or was killed (and, with multi-stage Dockerfiles, by finished ones).
    RemoveLeftoverLayer { id: String },
    /// A deploy of a commit the branch has moved past: stop it, the tip deploys instead.
    Cancel { slug: String },
    /// The branch is merged or deleted: stop its deploy and remove every object of the slug.
    Retire { slug: String },
}

impl World<'_> {
    fn deploying(&self, slug: &str) -> Option<&str> {
        self.in_flight.get(slug).map(|f| f.commit.as_str())
    }

    fn failed_at(&self, preview: &PreviewRef) -> bool {
        self.failed
            .get(&preview.slug)
            .is_some_and(|f| f.commit == preview.commit)
    }

    /// The running container that serves `slug` at `commit`, if it may take traffic: a
    /// container whose deploy is still running has not been health-checked yet.
    fn serving(&self, slug: &str, commit: &str) -> Option<&ContainerInfo> {
        let deploying = self.deploying(slug);
        self.inventory.containers.iter().find(|c| {
            c.slug == slug
                && c.web
                && c.commit == commit
                && c.running
                && c.upstream.is_some()
                && deploying != Some(commit)
        })
    }

    /// The container to route to: the tip's if it serves, else the last good version's.
    fn last_good(&self, preview: &PreviewRef) -> Option<&ContainerInfo> {
        self.serving(&preview.slug, &preview.commit).or_else(|| {
            let deploying = self.deploying(&preview.slug);
            self.inventory.containers.iter().find(|c| {
                c.slug == preview.slug
                    && c.web
                    && c.running
                    && c.upstream.is_some()
                    && deploying != Some(c.commit.as_str())
            })
        })
    }
}

/// Gives every branch git knows its slug and says which previews git wants.
///
/// A slug belongs to the branch whose live objects carry it (and to branches whose deploy is
/// under way, `deploying` as slug and branch), so the first branch to take a slug keeps it
/// across restarts without a table of its own. Branches git could not read keep their slug
/// too, as unreadable.
pub fn assign<'a>(
    desired: &Desired,
    inventory: &'a Inventory,
    deploying: impl Iterator<Item = (&'a String, &'a String)>,
) -> (BTreeMap<String, PreviewRef>, BTreeMap<String, Unreadable>) {
    let mut owned: BTreeMap<String, String> = BTreeMap::new();
    for (slug, branch) in inventory.owners().chain(deploying) {
        owned.entry(slug.clone()).or_insert_with(|| branch.clone());
    }
    let branches: BTreeSet<String> = desired
        .branches
        .keys()
        .chain(desired.unreadable.keys())
        .cloned()
        .collect();
    let mut wanted = BTreeMap::new();
    let mut unreadable = BTreeMap::new();
    for (branch, slug) in slug::assign(&branches, &owned) {
        match desired.branches.get(&branch) {
            Some(tip) => {
                let preview = PreviewRef {
                    branch,
                    slug: slug.clone(),
                    commit: tip.to_string(),
                };
                wanted.insert(slug, preview);
            }
            None => {
                let reason = desired.unreadable.get(&branch).cloned().unwrap_or_default();
                unreadable.insert(slug, Unreadable { branch, reason });
            }
        }
    }
    (wanted, unreadable)
}

/// The actions that move Docker towards what git wants.
///
/// A preview is a stack: objects whose lifetime is the preview (its network, services without
/// a build and their volumes) stay across pushes; objects whose lifetime is a commit (the
/// services built from it, their images, one-off jobs) give way once a newer commit serves.
/// The tip serves when its web service (the one that takes traffic) runs and is not still
/// being deployed; a job that exited 0 is done, not crashed.
pub fn plan(world: &World<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    let stacks = world.inventory.stacks();
    let empty = Stack::default();
    for (slug, preview) in world.wanted {
        let stack = stacks.get(slug.as_str()).unwrap_or(&empty);
        let tip_serves = world.serving(slug, &preview.commit).is_some();
        if let Some(flight) = world.in_flight.get(slug) {
            if flight.commit != preview.commit {
                actions.push(Action::Cancel { slug: slug.clone() });
            }
            // The deploy owns the preview's objects until it reports back.
            continue;
        }
        let kept_by_push =
            |c: &ContainerInfo| c.lifetime == Lifetime::Preview || c.commit == preview.commit;
        if !world.failed_at(preview) {
            let stopped = |c: &ContainerInfo| kept_by_push(c) && !c.running && !c.job;
            if tip_serves {
                // Something the serving tip relies on stopped (its cache, say).
                for c in stack.containers.iter().filter(|c| stopped(c)) {
                    actions.push(Action::Restart {
                        preview: preview.clone(),
                        id: c.id.clone(),
                    });
                }
            } else {
                let stopped_web = stack.web_at(&preview.commit).filter(|c| !c.running);
                actions.push(match stopped_web {
                    Some(c) => Action::Restart {
                        preview: preview.clone(),
                        id: c.id.clone(),
                    },
                    None => Action::Deploy(preview.clone()),
                });
            }
        }
        // Of an older commit, and superseded by a serving tip or dead: nothing will route to it
        // again.
        let doomed = |c: &ContainerInfo| !kept_by_push(c) && (tip_serves || !c.running);
        for c in stack.containers.iter().filter(|c| doomed(c)) {
            actions.push(Action::RemoveContainer {
                slug: slug.clone(),
                id: c.id.clone(),
                running: c.running,
            });
        }
        // The commits whose objects stay: the tip, and what still runs of an older one. A
        // database's commit label only says which push created it.
        let kept_commits: Vec<&str> = stack
            .containers
            .iter()
            .filter(|c| c.lifetime == Lifetime::Commit && !doomed(c))
            .map(|c| c.commit.as_str())
            .chain([preview.commit.as_str()])
            .collect();
        let commit_kept = |commit: &str| kept_commits.contains(&commit);
        let kept = |tag: &str| kept_commits.iter().any(|c| tag_is_for(tag, c));
        for image in &stack.images {
            if image.tags.is_empty() {
                // Lost every tag (retagged by hand, say): nothing can run it by name any more.
                actions.push(Action::RemoveImage {
                    slug: slug.clone(),
                    id: image.id.clone(),
                });
            }
            for tag in image.tags.iter().filter(|t| !kept(t)) {
                actions.push(Action::RemoveImage {
                    slug: slug.clone(),
                    id: tag.clone(),
                });
            }
        }
        for volume in &stack.volumes {
            if volume.lifetime == Lifetime::Commit && !commit_kept(&volume.commit) {
                actions.push(Action::RemoveVolume {
                    slug: slug.clone(),
                    name: volume.name.clone(),
                });
            }
        }
    }

    let present: BTreeSet<&str> = stacks
        .keys()
        .copied()
        .chain(world.in_flight.keys().map(String::as_str))
        .collect();
    for slug in present {
        if !world.wanted.contains_key(slug) && !world.unreadable.contains_key(slug) {
            actions.push(Action::Retire { slug: slug.into() });
        }
    }
    for id in &world.inventory.leftover_layers {
        actions.push(Action::RemoveLeftoverLayer { id: id.clone() });
    }
    actions
}

/// What each preview's host serves now.
pub fn routes(world: &World<'_>) -> BTreeMap<String, Route> {
    let wanted = world.wanted.iter().map(|(slug, preview)| {
        let route = if let Some(c) = world.last_good(preview) {
            Route::Live {
                upstream: c.upstream.expect("serving containers have an upstream"),
            }
        } else if let Some(f) = world.failed.get(slug).filter(|_| world.failed_at(preview)) {
            Route::Failed {
                commit: f.commit.clone(),
                log_tail: f.log_tail.clone(),
            }
        } else {
            Route::Building {
                commit: preview.commit.clone(),
                since: world
                    .in_flight
                    .get(slug)
                    .map_or_else(SystemTime::now, |f| f.since),
            }
        };
        (slug.clone(), route)
    });
    // A branch git cannot read keeps serving what it served; with nothing running, the page
    // says why.
    let unreadable = world.unreadable.iter().map(|(slug, u)| {
        let running = world
            .inventory
            .containers
            .iter()
            .find(|c| &c.slug == slug && c.running && c.upstream.is_some());
        let route = match running {
            Some(c) => Route::Live {
                upstream: c.upstream.expect("filtered on upstream"),
            },
            None => Route::Failed {
                commit: String::new(),
                log_tail: format!("git cannot read branch {}: {}", u.branch, u.reason),
            },
        };
        (slug.clone(), route)
    });
    wanted.chain(unreadable).collect()
}

/// The state of each preview, as `previewd ls` shows it. `url` makes a slug's URL.
pub fn statuses(world: &World<'_>, url: impl Fn(&str) -> String) -> Vec<PreviewStatus> {
    let wanted = world.wanted.iter().map(|(slug, preview)| {
        let flight = world.in_flight.get(slug);
        let state = match flight {
            Some(f) if f.queue_position.is_some() => PreviewState::Queued,
            Some(_) => PreviewState::Building,
            None if world.serving(slug, &preview.commit).is_some() => PreviewState::Live,
            None if world.failed_at(preview) => PreviewState::Failed,
            None => PreviewState::Building,
        };
        PreviewStatus {
            branch: preview.branch.clone(),
            slug: slug.clone(),
            commit: preview.commit.clone(),
            state,
            url: url(slug),
            queue_position: flight.and_then(|f| f.queue_position),
            error: None,
        }
    });
    let unreadable = world.unreadable.iter().map(|(slug, u)| PreviewStatus {
        branch: u.branch.clone(),
        slug: slug.clone(),
        // What still runs, if anything: git cannot say what the tip is.
        commit: world
            .inventory
            .containers
            .iter()
            .find(|c| &c.slug == slug)
            .map(|c| c.commit.clone())
            .unwrap_or_default(),
        state: PreviewState::Failed,
        url: url(slug),
        queue_position: None,
        error: Some(u.reason.clone()),
    });
    let mut rows: Vec<PreviewStatus> = wanted.chain(unreadable).collect();
    rows.sort_by(|a, b| a.branch.cmp(&b.branch));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ImageInfo, NetworkInfo, VolumeInfo};
    use crate::reconcile::test_support::{preview, remove_container, NEW, OLD};
    use std::net::SocketAddr;

    fn container(id: &str, slug: &str, commit: &str, running: bool) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: format!("previewd-t-{slug}-app"),
            branch: format!("branch/{slug}"),
            slug: slug.into(),
            commit: commit.into(),
            service: "app".into(),
            lifetime: Lifetime::Commit,
            job: false,
            web: true,
            running,
            exit_code: None,
            upstream: Some(SocketAddr::from(([172, 18, 0, 2], 8080))),
        }
    }

    /// A service that does not take traffic: a database (lifetime preview), a worker or a job
    /// (lifetime commit).
    fn service(
        id: &str,
        slug: &str,
        commit: &str,
        name: &str,
        lifetime: Lifetime,
    ) -> ContainerInfo {
        ContainerInfo {
            name: format!("previewd-t-{slug}-{name}"),
            service: name.into(),
            lifetime,
            web: false,
            upstream: None,
            ..container(id, slug, commit, true)
        }
    }

    fn job(id: &str, slug: &str, commit: &str, exit_code: i64) -> ContainerInfo {
        ContainerInfo {
            job: true,
            running: false,
            exit_code: Some(exit_code),
            ..service(id, slug, commit, "migrate", Lifetime::Commit)
        }
    }

    fn volume(name: &str, slug: &str, commit: &str, lifetime: Lifetime) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            branch: format!("branch/{slug}"),
            slug: slug.into(),
            commit: commit.into(),
            lifetime,
        }
    }

    fn image(id: &str, slug: &str, commit: &str) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            branch: format!("branch/{slug}"),
            slug: slug.into(),
            tags: vec![format!("previewd-t/{slug}:{}", &commit[..12])],
        }
    }

    fn network(id: &str, slug: &str) -> NetworkInfo {
        NetworkInfo {
            id: id.into(),
            name: format!("previewd-t-{slug}"),
            branch: format!("branch/{slug}"),
            slug: slug.into(),
        }
    }

    #[derive(Default)]
    struct Case {
        wanted: Vec<PreviewRef>,
        unreadable: Vec<&'static str>,
        inventory: Inventory,
        in_flight: Vec<(&'static str, &'static str)>,
        failed: Vec<(&'static str, &'static str)>,
    }

    impl Case {
        fn run<T>(&self, f: impl FnOnce(&World<'_>) -> T) -> T {
            let in_flight = self
                .in_flight
                .iter()
                .map(|(s, c)| {
                    let flight = Flight {
                        commit: c.to_string(),
                        since: SystemTime::UNIX_EPOCH,
                        queue_position: None,
                    };
                    (s.to_string(), flight)
                })
                .collect();
            let failed = self
                .failed
                .iter()
                .map(|(s, c)| {
                    let f = FailedBuild {
                        branch: format!("branch/{s}"),
                        commit: c.to_string(),
                        log_tail: "boom".into(),
                    };
                    (s.to_string(), f)
                })
                .collect();
            let wanted = self
                .wanted
                .iter()
                .map(|p| (p.slug.clone(), p.clone()))
                .collect();
            let unreadable = self
                .unreadable
                .iter()
                .map(|s| {
                    let u = Unreadable {
                        branch: format!("branch/{s}"),
                        reason: "object not found".into(),
                    };
                    (s.to_string(), u)
                })
                .collect();
            let world = World {
                wanted: &wanted,
                unreadable: &unreadable,
                inventory: &self.inventory,
                in_flight: &in_flight,
                failed: &failed,
            };
            f(&world)
        }
    }

    #[test]
    fn a_new_branch_is_deployed() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![Action::Deploy(preview("a", NEW))]);
        assert_eq!(
            case.run(|w| statuses(w, |s| s.into()))[0].state,
            PreviewState::Building
        );
        assert!(matches!(case.run(routes)["a"], Route::Building { .. }));
    }

    #[test]
    fn layers_unfinished_builds_left_are_removed() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("c1", "a", NEW, true)],
                images: vec![image("i1", "a", NEW)],
                leftover_layers: vec!["sha256:left".into()],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::RemoveLeftoverLayer {
                id: "sha256:left".into()
            }]
        );
    }

    #[test]
    fn a_running_tip_is_adopted_not_rebuilt() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("c1", "a", NEW, true)],
                images: vec![image("i1", "a", NEW)],
                networks: vec![network("n1", "a")],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        assert_eq!(
            case.run(|w| statuses(w, |s| s.into()))[0].state,
            PreviewState::Live
        );
        assert!(matches!(case.run(routes)["a"], Route::Live { .. }));
    }

    #[test]
    fn an_update_keeps_the_old_version_serving_until_the_new_one_is_up() {
        let mut case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("old", "a", OLD, true)],
                images: vec![image("i-old", "a", OLD)],
                networks: vec![],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![Action::Deploy(preview("a", NEW))]);

        // While the deploy runs, its container is up but not yet health-checked.
        case.in_flight = vec![("a", NEW)];
        case.inventory
            .containers
            .push(container("new", "a", NEW, true));
        assert_eq!(case.run(plan), vec![]);
        let Route::Live { .. } = case.run(routes)["a"] else {
            panic!("old version must keep serving");
        };
        assert_eq!(
            case.run(|w| statuses(w, |s| s.into()))[0].state,
            PreviewState::Building
        );

        // Deploy done: the old container and its image go.
        case.in_flight.clear();
        case.inventory.images.push(image("i-new", "a", NEW));
        assert_eq!(
            case.run(plan),
            vec![
                Action::RemoveContainer {
                    slug: "a".into(),
                    id: "old".into(),
                    running: true,
                },
                Action::RemoveImage {
                    slug: "a".into(),
                    id: format!("previewd-t/a:{}", &OLD[..12])
                },
            ]
        );
    }

    #[test]
    fn routes_follow_the_new_container_only_after_the_deploy() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("new", "a", NEW, true)],
                ..Inventory::default()
            },
            in_flight: vec![("a", NEW)],
            ..Case::default()
        };
        assert!(matches!(case.run(routes)["a"], Route::Building { .. }));
    }

    #[test]
    fn a_failed_commit_is_not_retried_and_the_old_version_serves() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("old", "a", OLD, true)],
                ..Inventory::default()
            },
            failed: vec![("a", NEW)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        assert!(matches!(case.run(routes)["a"], Route::Live { .. }));
        assert_eq!(
            case.run(|w| statuses(w, |s| s.into()))[0].state,
            PreviewState::Failed
        );
    }

    #[test]
    fn a_failed_first_build_shows_the_failure() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            failed: vec![("a", NEW)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        assert!(matches!(case.run(routes)["a"], Route::Failed { .. }));
    }

    #[test]
    fn a_push_after_a_failure_deploys_again() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            failed: vec![("a", OLD)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![Action::Deploy(preview("a", NEW))]);
    }

    #[test]
    fn a_dead_tip_container_is_restarted_not_rebuilt() {
        let mut case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("c", "a", NEW, false)],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::Restart {
                preview: preview("a", NEW),
                id: "c".into()
            }]
        );
        assert!(matches!(case.run(routes)["a"], Route::Building { .. }));

        // Out of restarts: the failure is recorded and shown, nothing more is tried.
        case.failed = vec![("a", NEW)];
        assert_eq!(case.run(plan), vec![]);
        assert!(matches!(case.run(routes)["a"], Route::Failed { .. }));
    }

    #[test]
    fn a_dead_old_container_goes_once_the_tip_serves() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![
                    container("old", "a", OLD, false),
                    container("new", "a", NEW, true),
                ],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::RemoveContainer {
                slug: "a".into(),
                id: "old".into(),
                running: false,
            }]
        );
    }

    #[test]
    fn a_deploy_of_a_superseded_commit_is_cancelled() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            in_flight: vec![("a", OLD)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![Action::Cancel { slug: "a".into() }]);
    }

    #[test]
    fn an_image_shared_by_two_commits_loses_only_the_old_tag() {
        let mut shared = image("img", "a", OLD);
        shared.tags.push(format!("previewd-t/a:{}", &NEW[..12]));
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![
                    container("old", "a", OLD, true),
                    container("new", "a", NEW, true),
                ],
                images: vec![shared],
                networks: vec![],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![
                Action::RemoveContainer {
                    slug: "a".into(),
                    id: "old".into(),
                    running: true,
                },
                Action::RemoveImage {
                    slug: "a".into(),
                    id: format!("previewd-t/a:{}", &OLD[..12]),
                },
            ]
        );
    }

    #[test]
    fn queued_deploys_show_their_place() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            in_flight: vec![("a", NEW)],
            ..Case::default()
        };
        let rows = case.run(|w| {
            let mut flights = w.in_flight.clone();
            flights.get_mut("a").unwrap().queue_position = Some(2);
            statuses(
                &World {
                    in_flight: &flights,
                    ..*w
                },
                |s| s.into(),
            )
        });
        assert_eq!(rows[0].state, PreviewState::Queued);
        assert_eq!(rows[0].queue_position, Some(2));
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(json["state"], "queued");
        assert_eq!(json["queue_position"], 2);
    }

    #[test]
    fn merged_or_deleted_branches_are_retired_once() {
        let case = Case {
            wanted: vec![],
            inventory: Inventory {
                containers: vec![container("c", "gone", OLD, true)],
                images: vec![image("i", "gone", OLD)],
                networks: vec![network("n", "gone")],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::Retire {
                slug: "gone".into()
            }]
        );
        assert!(case.run(routes).is_empty());
    }

    #[test]
    fn a_deploy_of_a_deleted_branch_is_retired() {
        let case = Case {
            in_flight: vec![("gone", NEW)],
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::Retire {
                slug: "gone".into()
            }]
        );
    }

    #[test]
    fn unreadable_branches_keep_their_objects() {
        let case = Case {
            unreadable: vec!["broken"],
            inventory: Inventory {
                containers: vec![container("c", "broken", OLD, true)],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        let rows = case.run(|w| statuses(w, |s| s.into()));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, PreviewState::Failed);
        assert_eq!(rows[0].commit, OLD, "what still runs");
        assert_eq!(rows[0].error.as_deref(), Some("object not found"));
        assert!(
            matches!(case.run(routes)["broken"], Route::Live { .. }),
            "keeps serving"
        );
    }

    #[test]
    fn previews_do_not_touch_each_other() {
        let case = Case {
            wanted: vec![preview("a", NEW), preview("b", OLD)],
            inventory: Inventory {
                containers: vec![container("cb", "b", OLD, true)],
                images: vec![image("ib", "b", OLD)],
                networks: vec![],
                ..Inventory::default()
            },
            failed: vec![("a", NEW)],
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        let routes = case.run(routes);
        assert!(matches!(routes["a"], Route::Failed { .. }));
        assert!(matches!(routes["b"], Route::Live { .. }));
    }

    #[test]
    fn a_push_keeps_the_services_whose_lifetime_is_the_preview() {
        // The tip serves; the database and its volume came with the first commit.
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![
                    container("web-old", "a", OLD, true),
                    container("web-new", "a", NEW, true),
                    service("db", "a", OLD, "db", Lifetime::Preview),
                    service("worker-old", "a", OLD, "worker", Lifetime::Commit),
                ],
                images: vec![image("img-old", "a", OLD), image("img-new", "a", NEW)],
                volumes: vec![
                    volume("a-data", "a", OLD, Lifetime::Preview),
                    volume("a-scratch-old", "a", OLD, Lifetime::Commit),
                    volume("a-scratch-new", "a", NEW, Lifetime::Commit),
                ],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![
                remove_container("a", "web-old", true),
                remove_container("a", "worker-old", true),
                Action::RemoveImage {
                    slug: "a".into(),
                    id: format!("previewd-t/a:{}", &OLD[..12])
                },
                Action::RemoveVolume {
                    slug: "a".into(),
                    name: "a-scratch-old".into()
                },
            ]
        );
    }

    #[test]
    fn a_job_that_exited_0_is_done_not_crashed() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![
                    container("web", "a", NEW, true),
                    job("migrate", "a", NEW, 0),
                ],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![]);
        assert_eq!(
            case.run(|w| statuses(w, |s| s.into()))[0].state,
            PreviewState::Live
        );
        assert!(case.inventory.containers[1].job_done());
    }

    #[test]
    fn a_failed_job_is_not_restarted_and_an_old_one_goes_with_its_commit() {
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![
                    container("web", "a", NEW, true),
                    job("migrate-new", "a", NEW, 1),
                    job("migrate-old", "a", OLD, 0),
                ],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![remove_container("a", "migrate-old", false)]
        );
        assert!(!case.inventory.containers[1].job_done());
    }

    #[test]
    fn a_stopped_service_behind_a_serving_tip_is_started_again() {
        let mut cache = service("cache", "a", OLD, "cache", Lifetime::Preview);
        cache.running = false;
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![container("web", "a", NEW, true), cache],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::Restart {
                preview: preview("a", NEW),
                id: "cache".into()
            }]
        );
    }

    #[test]
    fn only_the_web_service_takes_traffic() {
        // The database runs and has an address, but the web service is still to be deployed.
        let mut db = service("db", "a", NEW, "db", Lifetime::Preview);
        db.upstream = Some(SocketAddr::from(([172, 18, 0, 3], 5432)));
        let case = Case {
            wanted: vec![preview("a", NEW)],
            inventory: Inventory {
                containers: vec![db],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(case.run(plan), vec![Action::Deploy(preview("a", NEW))]);
        assert!(matches!(case.run(routes)["a"], Route::Building { .. }));
    }

    #[test]
    fn a_preview_with_only_a_volume_left_is_retired() {
        let case = Case {
            inventory: Inventory {
                volumes: vec![volume("gone-data", "gone", OLD, Lifetime::Preview)],
                ..Inventory::default()
            },
            ..Case::default()
        };
        assert_eq!(
            case.run(plan),
            vec![Action::Retire {
                slug: "gone".into()
            }]
        );
    }
}
