//! The webhook's live [`ClusterView`]: watched caches and a watch of the controller's Lease, so
//! an admission never makes an API call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::admission::ClusterView;
use crate::cache::Cache;
use crate::controller;
use crate::policy::InPlaceUpgradePolicy;
use crate::workload::{WorkloadKey, WorkloadView};

/// The live view: a [`Cache`] (the controller's in `run`; in `webhook` one of
/// [`crate::cache::Role::Webhook`], which holds no pods) and a watch of the controller's Lease.
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
