//! What the reconciler reads of the cluster: the watched caches ([`Cache`]) and the Warning
//! Events of pods in flight in a running controller ([`Watched`]), objects fed by hand in the
//! reconciler's tests. Every read comes from memory: a reconcile never asks the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::events::EventIndex;
use crate::cache::Cache;
use crate::plan::{DrainRecord, PodEvents};
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
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Pod>;
    /// The pre-pull pods working for the workload ([`crate::prepull`]).
    fn prepull_pods_of(&self, key: &WorkloadKey) -> Vec<Pod>;
    fn policies(&self) -> Vec<InPlaceUpgradePolicy>;
    /// The pods (of `pods`, all in `namespace`) that no EndpointSlice serves, as
    /// [`crate::plan::inputs::endpoints_drained`] judges them.
    fn endpoints_drained(
        &self,
        namespace: &str,
        pods: &[Pod],
        drains: &BTreeMap<String, DrainRecord>,
    ) -> BTreeSet<String>;
    /// The EndpointSlices of `namespace` that list `pod` (name → resourceVersion).
    fn slices_listing(&self, namespace: &str, pod: &str) -> BTreeMap<String, String>;
    fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>>;
    /// kubelet's Warning Events kept for these pods (those with an upgrade in flight).
    fn pod_events(&self, pods: &[Pod]) -> PodEvents;
}

/// A running controller's view: its watched caches and its watch of kubelet's Events.
pub struct Watched {
    pub cache: Cache,
    pub events: EventIndex,
}

impl ControllerView for Watched {
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.cache.workload(key)
    }
    fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        self.cache.workloads_in(namespace)
    }
    fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String> {
        self.cache.workload_annotation(key, annotation)
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.cache.namespace(name)
    }
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        self.cache.pods_of(key)
    }
    fn prepull_pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        self.cache.prepull_pods_of(key)
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.cache.policies()
    }
    fn endpoints_drained(
        &self,
        namespace: &str,
        pods: &[Pod],
        drains: &BTreeMap<String, DrainRecord>,
    ) -> BTreeSet<String> {
        self.cache.endpoints_drained(namespace, pods, drains)
    }
    fn slices_listing(&self, namespace: &str, pod: &str) -> BTreeMap<String, String> {
        self.cache.slices_listing(namespace, pod)
    }
    fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        self.cache.pdbs_in(namespace)
    }
    fn pod_events(&self, pods: &[Pod]) -> PodEvents {
        self.events
            .of_pods(pods.iter().filter_map(|p| p.metadata.uid.as_deref()))
    }
}
