//! inplace-upgrade: upgrade container images of running pods in place.
//!
//! Everything that *decides* (annotation grammar, image resolution, target selection, policy
//! resolution, workload ownership, the decision before the plan, container state
//! classification, the planner, the workload's status and the JSON patches) is a plain function
//! over `k8s_openapi` types or small structs defined here, with no I/O and nothing async, so
//! most behaviour is proven by fast tests. The I/O lives at the edges: [`controller`] (watches,
//! the work queue, leader election, the API writes), [`admission`] (the webhook's handlers over
//! in-memory views), [`kubectl`] (the plugin's API reads and annotation writes), and
//! [`serve`], the wiring of the process roles that only the binary uses.
//!
//! How the edges use it:
//! - all three: [`intent::decide`] (what is asked, workload over Namespace annotation; which
//!   policy governs; paused or not; which targets failed before, Namespace-wide included) →
//!   [`plan::plan`] (next step per pod, a verdict, counts) → [`status::progress`] (the
//!   workload's status record);
//! - controller: for each step [`patch::upgrade_patch`], [`patch::rollback_patch`],
//!   [`patch::state_patch`] (JSON patches on the pod) or [`patch::gate_condition_patch`]
//!   (strategic merge patch on `pods/status`), with the pod's record as the planner read it;
//! - webhook ([`admission`]): [`workload::owning_workload`], then the decision and
//!   [`target::resolve`] on the new pod's spec, then [`patch::new_pod_patch`];
//!   [`annotation::parse`] to validate an annotation;
//! - status and `plan` output: [`classify::classify`], [`state::PodUpgradeState`], and the
//!   resolved images in [`target::ResolvedTarget`].

pub mod admission;
pub mod annotation;
pub mod cache;
pub mod classify;
pub mod controller;
pub mod image;
pub mod intent;
pub mod istio;
pub mod kubectl;
mod memo;
pub mod patch;
pub mod plan;
pub mod policy;
pub mod prepull;
pub mod serve;
pub mod state;
pub mod status;
pub mod target;
pub mod workload;

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
/// `"true"` on a Namespace that some InPlaceUpgradePolicy selects, kept by the controller: the
/// pod webhook's `namespaceSelector` matches it, so pods elsewhere never reach the webhook.
pub const GOVERNED_LABEL: &str = "inplace-upgrade.io/governed";
/// Field manager of the controller's writes of [`GOVERNED_LABEL`] (server-side apply): it owns
/// that one label and nothing else of a Namespace, whoever owns the rest.
pub const NAMESPACE_FIELD_MANAGER: &str = "inplace-upgrade-namespaces";
