//! What the reconciler's unit tests share: commits, previews and the actions they expect.

use crate::model::PreviewRef;

use super::plan::Action;

pub const OLD: &str = "1111111111111111111111111111111111111111";
pub const NEW: &str = "2222222222222222222222222222222222222222";

pub fn preview(slug: &str, commit: &str) -> PreviewRef {
    PreviewRef {
        branch: format!("branch/{slug}"),
        slug: slug.into(),
        commit: commit.into(),
    }
}

pub fn remove_container(slug: &str, id: &str, running: bool) -> Action {
    Action::RemoveContainer {
        slug: slug.into(),
        id: id.into(),
        running,
    }
}

pub fn remove_image(slug: &str, id: &str) -> Action {
    Action::RemoveImage {
        slug: slug.into(),
        id: id.into(),
    }
}
