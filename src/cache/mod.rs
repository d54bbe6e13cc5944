//! What a process knows of the cluster: in-memory tables fed by watches. After the initial LIST
//! of each kind everything arrives by WATCH, so neither a reconcile nor an admission ever waits
//! on the API server.
//!
//! Three parts:
//! - [`lean`]: each object decoded straight from the wire into what is kept of it (a cached
//!   pod is a fraction of a decoded one);
//! - [`index`]: synchronous tables and the indexes kept with them, fed one watch event at a time
//!   — by the watches, or by hand in tests ([`Cache::feed`]);
//! - [`watch`]: which kinds each process [`Role`] watches, the one driver that runs each watch,
//!   and which workloads each change concerns (the controller's reconcile triggers).
//!
//! Readers get what they read today — [`WorkloadView`]s, `Pod`s, `Namespace`s — built from the
//! tables on each call, so the planner, the classifier and admission are unchanged.

mod index;
pub mod lean;
mod policy_watch;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::watcher;

use crate::STATE_ANNOTATION;
use crate::plan::DrainRecord;
use crate::plan::inputs::{not_serving, unchanged_since_drain};
use crate::policy::InPlaceUpgradePolicy;
use crate::state::PodUpgradeState;
use crate::workload::{
    Owner, ReplicaSetShape, WorkloadKey, WorkloadKind, WorkloadView, owning_workload,
    replica_sets_settled,
};
use index::Table;
use lean::{CachedPod, CachedSlice, CachedWorkload};
pub use watch::{FeedError, Kind, Role};

/// The tables of one process, shared by every task of it (clone it freely).
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

type Concerned = Box<dyn Fn(WorkloadKey) + Send + Sync>;

struct Shared {
    role: Role,
    tables: Tables,
    /// Told each workload a change concerns (the controller's queue).
    concerned: Option<Concerned>,
    /// True once every watch of the role has listed.
    synced: tokio::sync::watch::Sender<bool>,
    policies_seen: Mutex<policy_watch::PolicyWatch>,
    /// Bumped by every change to a Namespace or a policy: what decides which namespaces are
    /// governed ([`Cache::governance_changes`]).
    governance: tokio::sync::watch::Sender<u64>,
}

/// One table per kind; those the role does not watch stay empty.
#[derive(Default)]
struct Tables {
    pods: RwLock<Table<CachedPod>>,
    replica_sets: RwLock<Table<CachedWorkload>>,
    deployments: RwLock<Table<CachedWorkload>>,
    stateful_sets: RwLock<Table<CachedWorkload>>,
    daemon_sets: RwLock<Table<CachedWorkload>>,
    namespaces: RwLock<Table<Namespace>>,
    endpoint_slices: RwLock<Table<CachedSlice>>,
    pdbs: RwLock<Table<PodDisruptionBudget>>,
    policies: RwLock<Table<InPlaceUpgradePolicy>>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// An empty cache for `role`: fill it with [`Cache::watch`] (or [`Cache::feed`] in tests).
    pub fn new(role: Role) -> Cache {
        Self::build(role, None)
    }

    /// [`Cache::new`], calling `concerned` with every workload each change concerns (once per
    /// watch event; the controller queues them for reconcile).
    pub fn triggering(
        role: Role,
        concerned: impl Fn(WorkloadKey) + Send + Sync + 'static,
    ) -> Cache {
        Self::build(role, Some(Box::new(concerned)))
    }

    fn build(role: Role, concerned: Option<Concerned>) -> Cache {
        Cache {
            shared: Arc::new(Shared {
                role,
                tables: Tables::default(),
                concerned,
                synced: tokio::sync::watch::Sender::new(false),
                policies_seen: Mutex::default(),
                governance: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The role's watches: run each for the life of the process (leader or not, so a new
    /// leader starts warm). Each lists, then watches, and re-lists with backoff after errors.
    pub fn watch(&self, client: &kube::Client) -> Vec<futures::future::BoxFuture<'static, ()>> {
        self.shared
            .role
            .kinds()
            .iter()
            .map(|kind| kind.watch(self, client))
            .collect()
    }

    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// Waits until every watch of the role has finished its initial list.
    pub async fn synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Whether every watch of the role has finished its initial list.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// The workload behind `key`, if it exists and is a workload of its own (a ReplicaSet
    /// controlled by a Deployment is part of that Deployment).
    pub fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        let table = read(self.workloads(key.kind));
        let cached = table.get(ns, name)?;
        let mut view = cached.view.clone()?;
        if key.kind == WorkloadKind::Deployment {
            // Read in place (the webhook asks for every pod it admits): the template digests
            // compared as strings, which is what `deployment_settled` compares on the
            // templates they stand for. Only the Deployment's digest is copied, to hold one
            // table's lock at a time.
            let desired = cached.replicas.unwrap_or(1);
            let wanted = cached.template.clone();
            drop(table);
            let replica_sets = read(&self.shared.tables.replica_sets);
            view.settled = replica_sets_settled(
                desired,
                replica_sets
                    .index
                    .children_of(ns, "Deployment", name)
                    .iter()
                    .filter_map(|n| replica_sets.get(ns, n))
                    .map(|rs| ReplicaSetShape {
                        current: rs.template.is_some() && rs.template == wanted,
                        replicas: rs.replicas,
                        status_replicas: rs.status_replicas,
                    }),
            );
        }
        Some(view)
    }

    /// Every workload of its own in a namespace, or in the cluster, sorted.
    pub fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        let mut keys = Vec::new();
        for kind in [
            WorkloadKind::Deployment,
            WorkloadKind::StatefulSet,
            WorkloadKind::DaemonSet,
            WorkloadKind::ReplicaSet,
        ] {
            let table = read(self.workloads(kind));
            let key = |ns: &str, name: &str| WorkloadKey {
                kind,
                namespace: ns.to_string(),
                name: name.to_string(),
            };
            let own = |w: &CachedWorkload| w.view.is_some();
            match namespace {
                Some(ns) => keys.extend(
                    table
                        .in_namespace(ns)
                        .filter(|(_, w)| own(w))
                        .map(|(name, _)| key(ns, name)),
                ),
                None => keys.extend(
                    table
                        .all()
                        .filter(|(_, _, w)| own(w))
                        .map(|(ns, name, _)| key(ns, name)),
                ),
            }
        }
        keys.sort();
        keys
    }

    /// One annotation of a workload (ours only are kept), read in place.
    pub fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String> {
        let table = read(self.workloads(key.kind));
        let view = table.get(&key.namespace, &key.name)?.view.as_ref()?;
        view.annotations.get(annotation).cloned()
    }

    /// The pods a workload controls (for a Deployment: the pods of all its ReplicaSets,
    /// current and old), sorted by name, from the owner index.
    pub fn pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        let ns = key.namespace.as_str();
        let mut owners: Vec<(&str, Arc<str>)> = Vec::new();
        match key.kind {
            WorkloadKind::Deployment => {
                let replica_sets = read(&self.shared.tables.replica_sets);
                owners.extend(
                    replica_sets
                        .index
                        .children_of(ns, "Deployment", &key.name)
                        .iter()
                        .map(|rs| ("ReplicaSet", rs.clone())),
                );
            }
            kind => owners.push((kind.as_str(), Arc::from(key.name.as_str()))),
        }
        let pods = read(&self.shared.tables.pods);
        let mut names: Vec<&Arc<str>> = owners
            .iter()
            .flat_map(|(kind, owner)| pods.index.children_of(ns, kind, owner))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| Some(pods.get(ns, name)?.to_pod(ns, name)))
            .collect()
    }

    /// The pre-pull pods working for a workload ([`crate::prepull`]), sorted by name.
    pub fn prepull_pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        let ns = key.namespace.as_str();
        let pods = read(&self.shared.tables.pods);
        let owner = format!("{}/{}", key.kind.as_str(), key.name);
        pods.index
            .children_of(ns, index::PREPULL_OWNER, &owner)
            .iter()
            .filter_map(|name| Some(pods.get(ns, name)?.to_pod(ns, name)))
            .collect()
    }

    /// The pods (of `pods`, all in `namespace`) that no EndpointSlice lists as ready or
    /// serving, a slice unchanged since we drained a pod counting as serving it: the same
    /// answer as [`crate::plan::inputs::endpoints_drained`] over the namespace's slices,
    /// from an index.
    pub fn endpoints_drained(
        &self,
        namespace: &str,
        pods: &[Pod],
        drains: &BTreeMap<String, DrainRecord>,
    ) -> BTreeSet<String> {
        let slices = read(&self.shared.tables.endpoint_slices);
        not_serving(pods, |pod| {
            slices.index.serves(namespace, pod)
                || unchanged_since_drain(drains.get(pod), |slice| {
                    slices.get(namespace, slice)?.resource_version.as_deref()
                })
        })
    }

    /// The EndpointSlices of `namespace` that list `pod` in any condition (name →
    /// resourceVersion), for its [`DrainRecord`].
    pub fn slices_listing(&self, namespace: &str, pod: &str) -> BTreeMap<String, String> {
        read(&self.shared.tables.endpoint_slices)
            .in_namespace(namespace)
            .filter(|(_, slice)| slice.lists(pod))
            .map(|(name, slice)| {
                (
                    name.to_string(),
                    slice.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The PodDisruptionBudgets of a namespace.
    pub fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        read(&self.shared.tables.pdbs)
            .in_namespace(namespace)
            .map(|(_, pdb)| pdb.clone())
            .collect()
    }

    /// Every InPlaceUpgradePolicy, owned (the policy functions of the core take a slice).
    pub fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        let mut policies: Vec<InPlaceUpgradePolicy> = read(&self.shared.tables.policies)
            .all()
            .map(|(_, _, p)| InPlaceUpgradePolicy::clone(p))
            .collect();
        policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        policies
    }

    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        read(&self.shared.tables.namespaces).get("", name).cloned()
    }

    /// Every Namespace, by name.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        read(&self.shared.tables.namespaces)
            .all()
            .map(|(_, _, ns)| ns.clone())
            .collect()
    }

    /// Marks a change each time a Namespace or a policy changes (or their lists complete):
    /// wait on it with `changed()`, then read [`Cache::namespaces`] and [`Cache::policies`].
    pub fn governance_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.governance.subscribe()
    }

    /// A ReplicaSet, with what admission reads of it (its name and owner references).
    pub fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        let table = read(&self.shared.tables.replica_sets);
        Some(Arc::new(
            table.get(namespace, name)?.as_replica_set(namespace, name),
        ))
    }

    /// Whether the pod `namespace/name` is cached with UID `uid` and an upgrade or rollback in
    /// flight (its state record says so).
    pub fn pod_in_flight(&self, namespace: &str, name: &str, uid: &str) -> bool {
        let pods = read(&self.shared.tables.pods);
        pods.get(namespace, name).is_some_and(|pod| {
            pod.uid() == Some(uid)
                && pod
                    .annotation(STATE_ANNOTATION)
                    .and_then(|raw| PodUpgradeState::parse(raw).ok())
                    .is_some_and(|s| s.phase.in_progress())
        })
    }

    /// The workload the cached pod `namespace/name` belongs to.
    pub fn workload_of_pod_named(&self, namespace: &str, name: &str) -> Option<WorkloadKey> {
        let owner = read(&self.shared.tables.pods)
            .get(namespace, name)?
            .owner()
            .cloned()?;
        self.workload_of(namespace, Some(&owner))
    }

    /// The workload a pod in `namespace` with this controlling owner belongs to.
    fn workload_of(&self, namespace: &str, owner: Option<&OwnerReference>) -> Option<WorkloadKey> {
        let owners = [owner?.clone()];
        let replica_sets = read(&self.shared.tables.replica_sets);
        let lookup = |rs: &str| Some(replica_sets.get(namespace, rs)?.owner.clone());
        match owning_workload(namespace, &owners, &BTreeMap::new(), lookup) {
            Owner::Workload(key) => Some(key),
            Owner::UnknownReplicaSet(_) | Owner::NotOurs => None,
        }
    }

    fn workloads(&self, kind: WorkloadKind) -> &RwLock<Table<CachedWorkload>> {
        let t = &self.shared.tables;
        match kind {
            WorkloadKind::Deployment => &t.deployments,
            WorkloadKind::StatefulSet => &t.stateful_sets,
            WorkloadKind::DaemonSet => &t.daemon_sets,
            WorkloadKind::ReplicaSet => &t.replica_sets,
        }
    }

    /// Applies one event to its table, reports the workloads it concerns, and raises the
    /// synced flag once every watch of the role has listed.
    fn apply<W: watch::Watched>(&self, event: watcher::Event<lean::Decoded<W::Kept>>) {
        let list_done = matches!(event, watcher::Event::InitDone);
        let changes = write(W::table(&self.shared.tables)).apply(event);
        if (list_done || !changes.is_empty()) && W::GOVERNANCE {
            self.shared
                .governance
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        if list_done && !self.is_synced() && self.shared.role.kinds().iter().all(|k| k.listed(self))
        {
            self.shared.synced.send_replace(true);
        }
        let Some(concerned) = &self.shared.concerned else {
            return;
        };
        let mut keys = HashSet::new();
        for change in &changes {
            W::concerns(self, change, &mut |key| {
                keys.insert(key);
            });
        }
        let mut keys: Vec<WorkloadKey> = keys.into_iter().collect();
        keys.sort();
        keys.into_iter().for_each(concerned);
    }
}

#[cfg(test)]
mod tests;
