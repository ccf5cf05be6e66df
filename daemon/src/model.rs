//! What previewd's parts talk about: a preview at a commit, the record of a failed commit, the
//! rows `previewd ls` shows. Owned by neither the planner nor the engine adapter, so each can
//! change without the other; the rows are also the control socket's wire format.

use serde::{Deserialize, Serialize};

/// One branch's preview at one commit: everything needed to name and label its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRef {
    pub branch: String,
    pub slug: String,
    /// Full 40-hex commit id.
    pub commit: String,
}

impl PreviewRef {
    pub fn short(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }
}

/// A branch whose tip could not be read (a corrupt object, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub branch: String,
    pub reason: String,
}

/// A commit that failed, kept so it is not retried in a loop. A new push clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBuild {
    pub branch: String,
    pub commit: String,
    pub log_tail: String,
}

/// What `previewd ls` shows of one preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreviewState {
    /// Waiting for a build slot.
    Queued,
    Building,
    Live,
    Failed,
}

impl PreviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            PreviewState::Queued => "queued",
            PreviewState::Building => "building",
            PreviewState::Live => "live",
            PreviewState::Failed => "failed",
        }
    }
}

/// One row of `previewd ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewStatus {
    pub branch: String,
    pub slug: String,
    /// The branch tip the preview is for (full id).
    pub commit: String,
    pub state: PreviewState,
    pub url: String,
    /// Place in the build queue while `queued`, 1 first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Why the branch cannot be read from git, when it cannot (its preview is kept as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The service of a preview built from a bare Dockerfile: the one-service case of a stack.
pub const APP_SERVICE: &str = "app";

/// How long an object of a preview lives, as its `previewd.lifetime` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lifetime {
    /// Lives as long as the preview: its network, services without a build (a database, a
    /// cache) and their volumes. A push keeps it; merge or delete removes it.
    Preview,
    /// Belongs to one commit: the services built from it, their images, one-off jobs. A push
    /// replaces it once the new commit serves.
    Commit,
}

impl Lifetime {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Preview => "preview",
            Lifetime::Commit => "commit",
        }
    }

    pub fn parse(label: &str) -> Option<Self> {
        match label {
            "preview" => Some(Lifetime::Preview),
            "commit" => Some(Lifetime::Commit),
            _ => None,
        }
    }
}

/// What one container of a preview may use, set by the host: a fork bomb or a leak in a
/// branch stops at its own container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Bytes of memory, swap included.
    pub memory: u64,
    /// CPUs in billionths, as the engine counts them.
    pub nano_cpus: i64,
    /// Processes and threads.
    pub pids: i64,
}

/// What one build may use, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Bytes of memory for each build step's container, swap included.
    pub memory: u64,
    /// CPUs in billionths.
    pub nano_cpus: i64,
    /// A build still running after this fails, and says so.
    pub timeout: std::time::Duration,
}
