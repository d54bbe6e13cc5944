//! The admission webhook's domain half: what to do with a pod being created, and whether an
//! `inplace-upgrade` annotation or an InPlaceUpgradePolicy may be written.
//!
//! The decisions ([`mutate::mutate_pod`], [`validate::validate_workload_or_namespace`],
//! [`validate::validate_policy`]) are plain functions of the request and a [`ClusterView`]:
//! no I/O, nothing async, so they are table-tested on real Istio-injected objects. The live
//! [`ClusterView`] is [`LiveView`]: a watched [`Cache`] (the webhook's own, which holds no pods,
//! or the controller's in `run`) plus a watch of the controller's Lease, so an admission never
//! makes an API call. [`configuration`] builds the
//! Mutating/ValidatingWebhookConfigurations; [`serve`] runs the handlers over the transport
//! crate in each serving mode.

pub mod configuration;
pub mod mutate;
pub mod pod;
pub mod serve;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::cache::Cache;
use crate::controller::{self, WorkloadKey, WorkloadView};
use crate::policy::InPlaceUpgradePolicy;

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

/// The live view: a [`Cache`] (the controller's in `run`; in `webhook` one of
/// [`crate::cache::Role::Webhook`]) and a watch of the controller's Lease.
#[derive(Clone)]
pub struct LiveView {
    cache: Cache,
    lease: Store<Lease>,
    lease_namespace: String,
    lease_synced: Arc<AtomicBool>,
}

impl LiveView {
    /// Starts watching the controller's Lease on the current runtime (until the process
    /// exits); the view is synced once `cache` and the Lease watch have listed.
    pub fn start(client: &kube::Client, cache: Cache, controller_namespace: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let (lease, writer) = reflector::store();
        let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), controller_namespace);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", controller::LEASE_NAME));
        let stream = reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watch of the controller Lease failed; retrying");
                }
            });
        tokio::spawn(stream);
        let lease_synced = Arc::new(AtomicBool::new(false));
        let (set, waited) = (lease_synced.clone(), lease.clone());
        tokio::spawn(async move {
            if waited.wait_until_ready().await.is_ok() {
                set.store(true, Ordering::Relaxed);
            }
        });
        LiveView {
            cache,
            lease,
            lease_namespace: controller_namespace.to_owned(),
            lease_synced,
        }
    }
}

impl ClusterView for LiveView {
    fn synced(&self) -> bool {
        self.cache.is_synced() && self.lease_synced.load(Ordering::Relaxed)
    }

    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.cache.namespace(name)
    }

    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.cache.replica_set(namespace, name)
    }

    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.cache.workload(key)
    }

    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView> {
        self.cache
            .workloads_in(Some(namespace))
            .iter()
            .filter_map(|k| self.cache.workload(k))
            .collect()
    }

    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.cache.policies()
    }

    fn controller_alive(&self) -> bool {
        self.lease
            .get(&ObjectRef::new(controller::LEASE_NAME).within(&self.lease_namespace))
            .is_some_and(|lease| controller::lease_is_live(&lease, Timestamp::now()))
    }
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
