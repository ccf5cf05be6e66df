//! Words for what collection removes, for `previewd gc`: one line per Docker object, with
//! why it goes. Pure: it reads a plan and the inventory it was made from.

use std::collections::BTreeMap;

use crate::engine::Inventory;

use super::expiry::Expiry;
use super::plan::Action;

/// One line per object the `actions` remove. Objects of expired branches say why they
/// expired; other retirements are merged or deleted branches.
pub fn describe(
    actions: &[Action],
    inventory: &Inventory,
    expired: &BTreeMap<String, Expiry>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for action in actions {
        match action {
            Action::Retire { slug } => {
                let branch = inventory
                    .owners()
                    .find(|(s, _)| *s == slug)
                    .map(|(_, b)| b.as_str());
                let why = match branch.and_then(|b| expired.get(b)) {
                    Some(expiry) => format!("{}: {expiry}", branch.unwrap_or(slug)),
                    None => format!("{}: merged or deleted", branch.unwrap_or(slug)),
                };
                for c in inventory.containers.iter().filter(|c| &c.slug == slug) {
                    lines.push(format!("container {} ({why})", c.name));
                }
                for i in inventory.images.iter().filter(|i| &i.slug == slug) {
                    let name = i.tags.first().unwrap_or(&i.id);
                    lines.push(format!("image {name} ({why})"));
                }
                for v in inventory.volumes.iter().filter(|v| &v.slug == slug) {
                    lines.push(format!("volume {} ({why})", v.name));
                }
                for n in inventory.networks.iter().filter(|n| &n.slug == slug) {
                    lines.push(format!("network {} ({why})", n.name));
                }
            }
            Action::RemoveContainer { id, .. } => {
                let name = inventory
                    .containers
                    .iter()
                    .find(|c| &c.id == id)
                    .map_or(id.as_str(), |c| c.name.as_str());
                lines.push(format!("container {name} (superseded)"));
            }
            Action::RemoveImage { id, .. } => lines.push(format!("image {id} (superseded)")),
            Action::RemoveVolume { name, .. } => {
                lines.push(format!("volume {name} (its commit was superseded)"));
            }
            Action::RemoveLeftoverLayer { id } => {
                lines.push(format!("image {id} (a layer an unfinished build left)"));
            }
            Action::Deploy(_) | Action::Restart { .. } | Action::Cancel { .. } => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ContainerInfo, ImageInfo, NetworkInfo};
    use crate::model::Lifetime;
    use std::time::Duration;

    #[test]
    fn retired_and_superseded_objects_are_named_with_a_reason() {
        let inventory = Inventory {
            containers: vec![
                ContainerInfo {
                    id: "c1".into(),
                    name: "previewd-x-old-app-1".into(),
                    branch: "old".into(),
                    slug: "old".into(),
                    commit: "1".into(),
                    service: "app".into(),
                    lifetime: Lifetime::Commit,
                    job: false,
                    web: true,
                    exit_code: None,
                    running: true,
                    upstream: None,
                },
                ContainerInfo {
                    id: "c2".into(),
                    name: "previewd-x-idle-app-2".into(),
                    branch: "feature/idle".into(),
                    slug: "feature-idle".into(),
                    commit: "2".into(),
                    service: "app".into(),
                    lifetime: Lifetime::Commit,
                    job: false,
                    web: true,
                    exit_code: None,
                    running: true,
                    upstream: None,
                },
            ],
            images: vec![ImageInfo {
                id: "sha256:i".into(),
                branch: "old".into(),
                slug: "old".into(),
                tags: vec!["previewd-x/old:1".into()],
            }],
            networks: vec![NetworkInfo {
                id: "n1".into(),
                name: "previewd-x-old".into(),
                branch: "old".into(),
                slug: "old".into(),
            }],
            ..Inventory::default()
        };
        let expired = BTreeMap::from([(
            "feature/idle".to_string(),
            Expiry::Idle {
                limit: Duration::from_secs(30 * 86_400),
            },
        )]);
        let actions = [
            Action::Retire { slug: "old".into() },
            Action::Retire {
                slug: "feature-idle".into(),
            },
            Action::RemoveImage {
                slug: "a".into(),
                id: "previewd-x/a:9".into(),
            },
        ];
        assert_eq!(
            describe(&actions, &inventory, &expired),
            [
                "container previewd-x-old-app-1 (old: merged or deleted)",
                "image previewd-x/old:1 (old: merged or deleted)",
                "network previewd-x-old (old: merged or deleted)",
                "container previewd-x-idle-app-2 (feature/idle: no push for 30 days)",
                "image previewd-x/a:9 (superseded)",
            ]
        );
    }
}
