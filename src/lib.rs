//! inplace-upgrade: upgrade container images of running pods in place.
//!
//! Everything that *decides* (annotation grammar, image resolution, target selection, policy
//! resolution, container state classification, the planner and the JSON patches) is a plain
//! function over `k8s_openapi` types or small structs defined here, with no I/O and nothing
//! async, so most behaviour is proven by fast tests. The I/O lives at the edges:
//! [`controller`] (watches, the work queue, leader election, the API writes).
//!
//! How the edges use it:
//! - controller: [`target::effective_targets`] (workload over Namespace annotation) →
//!   [`policy::governing_policy`] (which policy, paused?) → [`plan::plan`] (next step per pod and
//!   a verdict) → for each step [`patch::upgrade_patch`], [`patch::rollback_patch`],
//!   [`patch::state_patch`] (JSON patches on the pod) or [`patch::gate_condition_patch`]
//!   (strategic merge patch on `pods/status`);
//! - webhook ([`admission`]): [`annotation::parse`] to validate an annotation,
//!   [`target::resolve`] on the new pod's spec, then [`patch::new_pod_patch`];
//! - status and `plan` output: [`classify::classify`], [`state::PodUpgradeState`], and the
//!   resolved images in [`target::ResolvedTarget`].

pub mod admission;
pub mod annotation;
pub mod cache;
pub mod classify;
pub mod controller;
pub mod image;
pub mod kubectl;
pub mod patch;
pub mod plan;
pub mod policy;
pub mod state;
pub mod target;

#[cfg(test)]
mod testutil;

/// Annotation on a Deployment, StatefulSet, DaemonSet, ReplicaSet or Namespace naming the
/// targets: `inplace-upgrade: <container>=<image>[,<container>=<image>…]`.
pub const TARGETS_ANNOTATION: &str = "inplace-upgrade";
/// Workload progress (JSON), written by the controller.
pub const STATUS_ANNOTATION: &str = "inplace-upgrade.io/status";
/// Per-pod upgrade record (JSON, see [`state::PodUpgradeState`]).
pub const STATE_ANNOTATION: &str = "inplace-upgrade.io/state";
/// `"true"` on a workload or Namespace pauses it.
pub const PAUSED_ANNOTATION: &str = "inplace-upgrade.io/paused";
/// Set by `kubectl inplace retry` to allow a failed target to be tried again.
pub const RETRY_ANNOTATION: &str = "inplace-upgrade.io/retry";
/// Readiness gate condition type injected into new pods and driven by the controller.
pub const READINESS_GATE: &str = "inplace-upgrade.io/ready";
/// Field manager for every write we make.
pub const FIELD_MANAGER: &str = "inplace-upgrade";

/// Every error the domain core can report. Each variant's message names the offending input
/// and what to do about it, so it can be shown to a user as is (admission denial, Event).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Annotation(#[from] annotation::AnnotationError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    State(#[from] state::StateError),
}

impl Error {
    /// A short, stable label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Annotation(_) => "annotation",
            Error::Image(_) => "image",
            Error::Target(_) => "target",
            Error::Policy(_) => "policy",
            Error::State(_) => "state",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
