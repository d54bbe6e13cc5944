//! What the reconciler reads of the cluster: the watched caches ([`Cache`]) in a running
//! controller, objects fed by hand in the reconciler's tests. Every read comes from memory: a
//! reconcile never asks the API server.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::Cache;
use crate::plan::PodEvents;
use crate::policy::InPlaceUpgradePolicy;
use crate::workload::{WorkloadKey, WorkloadView};

pub trait ControllerView: Send + Sync {
    /// The workload behind `key`, if it exists and is a workload of its own (a ReplicaSet a
    /// Deployment controls is part of that Deployment).
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView>;
    /// The workloads of a namespace (`None`: of every namespace), sorted.
    fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey>;
    /// One annotation of a workload, read in place.
    fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String>;
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>>;
    /// The workload's pods (through its ReplicaSets, old ones included, for a Deployment).
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Arc<Pod>>;
    fn policies(&self) -> Vec<InPlaceUpgradePolicy>;
    fn endpoint_slices_in(&self, namespace: &str) -> Vec<Arc<EndpointSlice>>;
    fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>>;
    /// kubelet's Warning Events kept for these pods (those with an upgrade in flight).
    fn pod_events(&self, pods: &[Pod]) -> PodEvents;
}

impl ControllerView for Cache {
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        Cache::workload(self, key)
    }
    fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        Cache::workloads_in(self, namespace)
    }
    fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String> {
        Cache::workload_annotation(self, key, annotation)
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        Cache::namespace(self, name)
    }
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Arc<Pod>> {
        Cache::pods_of(self, key)
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        Cache::policies(self)
    }
    fn endpoint_slices_in(&self, namespace: &str) -> Vec<Arc<EndpointSlice>> {
        Cache::endpoint_slices_in(self, namespace)
    }
    fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        Cache::pdbs_in(self, namespace)
    }
    fn pod_events(&self, pods: &[Pod]) -> PodEvents {
        self.events
            .of_pods(pods.iter().filter_map(|p| p.metadata.uid.as_deref()))
    }
}
