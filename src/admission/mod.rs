//! The admission webhook's domain half: what to do with a pod being created, and whether an
//! `inplace-upgrade` annotation or an InPlaceUpgradePolicy may be written.
//!
//! The decisions ([`mutate::mutate_pod`], [`validate::validate_workload_or_namespace`],
//! [`validate::validate_policy`]) are plain functions of the request and a [`ClusterView`]:
//! no I/O, nothing async, so they are table-tested on real Istio-injected objects. [`router`]
//! puts them at their paths for the transport crate; [`configuration`] builds the
//! Mutating/ValidatingWebhookConfigurations that point the API server at them. What backs the
//! live [`ClusterView`] and how the certificates are kept is the binary's wiring
//! ([`crate::serve`]).

pub mod configuration;
pub mod mutate;
pub mod pod;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use inplace_upgrade_webhook::{AdmissionRequest, AdmissionRouter, WebhookMetrics};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Namespace;

use crate::policy::InPlaceUpgradePolicy;
use crate::workload::{WorkloadKey, WorkloadView};

/// Path of the pod mutation.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
/// Path of the validation of workloads' and Namespaces' `inplace-upgrade` annotation.
pub const VALIDATE_WORKLOADS_PATH: &str = "/validate-workloads";
/// Path of the validation of InPlaceUpgradePolicy objects.
pub const VALIDATE_POLICIES_PATH: &str = "/validate-policies";

/// Every admission warning starts with this, so a user sees where it comes from.
const WARNING_PREFIX: &str = "inplace-upgrade: ";

/// What the admission decisions read of the cluster. Everything comes from memory (watched
/// caches): an admission must never wait on an API call.
pub trait ClusterView {
    /// False until the caches have finished their initial list: decisions made before that
    /// could miss a workload's annotation or a paused policy.
    fn synced(&self) -> bool;
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>>;
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>>;
    /// A workload of its own (a ReplicaSet controlled by a Deployment is not one).
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView>;
    /// Every workload of its own in a namespace.
    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView>;
    fn policies(&self) -> Vec<InPlaceUpgradePolicy>;
    /// Whether the controller's Lease has a live holder now.
    fn controller_alive(&self) -> bool;
}

/// Settings shared by every decision.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespace the controller and webhook run in: its Lease lives there, and policies
    /// with an empty namespaceSelector never reach it.
    pub controller_namespace: String,
}

/// The admission router: the three handlers at their paths, over `view` (served by the
/// transport crate).
pub fn router<V: ClusterView + Send + Sync + 'static>(
    view: Arc<V>,
    settings: Settings,
    metrics: WebhookMetrics,
) -> axum::Router {
    // Before the first review, not during it.
    crate::image::compile_grammar();
    let settings = Arc::new(settings);
    let (v1, s1) = (view.clone(), settings.clone());
    let (v2, s2) = (view, settings);
    AdmissionRouter::new(metrics)
        .handler(MUTATE_PODS_PATH, mutate::PodMutator::new(v1, s1))
        .handler(
            VALIDATE_WORKLOADS_PATH,
            move |r: &AdmissionRequest<validate::WorkloadObject>| {
                validate::validate_workload_or_namespace(r, &*v2, &s2)
            },
        )
        .handler(VALIDATE_POLICIES_PATH, validate::validate_policy)
        .into_router()
}

fn warning(message: impl std::fmt::Display) -> String {
    format!("{WARNING_PREFIX}{message}")
}

/// Decodes the request's object into a typed Kubernetes object.
fn typed<K: serde::de::DeserializeOwned>(
    object: &kube::core::DynamicObject,
) -> Result<K, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}
