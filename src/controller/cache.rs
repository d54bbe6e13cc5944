//! In-memory caches of everything the reconciler reads, fed by watches. After the initial
//! LIST of each type, everything arrives by WATCH: the reconciler never asks the API server.
//! Every event is also mapped to the workloads it concerns and queued for reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use super::queue::Queue;
use super::workload::{WorkloadKey, WorkloadKind, WorkloadView, controller_of, deployment_settled};
use crate::policy::InPlaceUpgradePolicy;

/// Children by their controlling owner: `(namespace, owner kind, owner name) -> child names`.
#[derive(Default)]
struct OwnerIndex {
    children: HashMap<(String, String, String), HashSet<String>>,
    owner_of: HashMap<(String, String), (String, String)>,
}

impl OwnerIndex {
    fn apply<K: ResourceExt>(&mut self, obj: &K) {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        self.delete(&ns, &name);
        if let Some(owner) = controller_of(obj.owner_references()) {
            self.children
                .entry((ns.clone(), owner.kind.clone(), owner.name.clone()))
                .or_default()
                .insert(name.clone());
            self.owner_of
                .insert((ns, name), (owner.kind.clone(), owner.name.clone()));
        }
    }

    fn delete(&mut self, ns: &str, name: &str) {
        if let Some((kind, owner)) = self.owner_of.remove(&(ns.to_string(), name.to_string())) {
            let key = (ns.to_string(), kind, owner);
            if let Some(set) = self.children.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.children.remove(&key);
                }
            }
        }
    }

    fn children_of(&self, ns: &str, kind: &str, name: &str) -> Vec<String> {
        self.children
            .get(&(ns.to_string(), kind.to_string(), name.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The controller's view of the cluster.
#[derive(Clone)]
pub struct Cache {
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub namespaces: Store<Namespace>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub policies: Store<InPlaceUpgradePolicy>,
    pods_by_owner: Arc<RwLock<OwnerIndex>>,
    replica_sets_by_owner: Arc<RwLock<OwnerIndex>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Drops what we never read, so a large cluster fits in little memory.
fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

impl Cache {
    /// Starts every watch; returns the cache and the futures that drive the watches (run them
    /// for the life of the process, leader or not, so a new leader starts warm).
    pub fn start(
        client: &Client,
        queue: Queue,
    ) -> (Cache, Vec<futures::future::BoxFuture<'static, ()>>) {
        let mut drivers: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        let (pods, w) = reflector::store();
        let (replica_sets, w_rs) = reflector::store();
        let (deployments, w_d) = reflector::store();
        let (stateful_sets, w_ss) = reflector::store();
        let (daemon_sets, w_ds) = reflector::store();
        let (namespaces, w_ns) = reflector::store();
        let (endpoint_slices, w_eps) = reflector::store();
        let (pdbs, w_pdb) = reflector::store();
        let (policies, w_pol) = reflector::store();
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let cache = Cache {
            pods,
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
            namespaces,
            endpoint_slices,
            pdbs,
            policies,
            pods_by_owner: Default::default(),
            replica_sets_by_owner: Default::default(),
            synced,
        };
        let waiter = cache.clone();
        drivers.push(Box::pin(async move {
            waiter.wait_for_stores().await;
            let _ = synced_tx.send(true);
            // Keep the sender (and so the flag) alive for the life of the other drivers.
            std::future::pending::<()>().await
        }));

        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(Api::<Pod>::all(client.clone()), w, move |ev| {
            for pod in ev.objects() {
                if ev.deleted {
                    c.pods_by_owner
                        .write()
                        .unwrap()
                        .delete(&pod.namespace().unwrap_or_default(), &pod.name_any());
                } else {
                    c.pods_by_owner.write().unwrap().apply(pod);
                }
                if let Some(key) = c.workload_of_pod(pod) {
                    q.enqueue(key);
                }
            }
        }));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            Api::<ReplicaSet>::all(client.clone()),
            w_rs,
            move |ev| {
                for rs in ev.objects() {
                    if ev.deleted {
                        c.replica_sets_by_owner
                            .write()
                            .unwrap()
                            .delete(&rs.namespace().unwrap_or_default(), &rs.name_any());
                    } else {
                        c.replica_sets_by_owner.write().unwrap().apply(rs);
                    }
                    let ns = rs.namespace().unwrap_or_default();
                    match controller_of(rs.owner_references()) {
                        Some(o) if o.kind == "Deployment" => q.enqueue(WorkloadKey {
                            kind: WorkloadKind::Deployment,
                            namespace: ns,
                            name: o.name.clone(),
                        }),
                        Some(_) => {}
                        None => q.enqueue(WorkloadKey {
                            kind: WorkloadKind::ReplicaSet,
                            namespace: ns,
                            name: rs.name_any(),
                        }),
                    }
                }
            },
        ));
        let q = queue.clone();
        drivers.push(drive(
            Api::<Deployment>::all(client.clone()),
            w_d,
            move |ev| own_keys(&q, &ev, WorkloadKind::Deployment),
        ));
        let q = queue.clone();
        drivers.push(drive(
            Api::<StatefulSet>::all(client.clone()),
            w_ss,
            move |ev| own_keys(&q, &ev, WorkloadKind::StatefulSet),
        ));
        let q = queue.clone();
        drivers.push(drive(
            Api::<DaemonSet>::all(client.clone()),
            w_ds,
            move |ev| own_keys(&q, &ev, WorkloadKind::DaemonSet),
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            Api::<Namespace>::all(client.clone()),
            w_ns,
            move |ev| {
                for ns in ev.objects() {
                    for key in c.workloads_in(Some(&ns.name_any())) {
                        q.enqueue(key);
                    }
                }
            },
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            Api::<EndpointSlice>::all(client.clone()),
            w_eps,
            move |ev| {
                // A drained pod leaving (or a pod re-joining) a slice moves its workload on.
                for slice in ev.objects() {
                    let ns = slice.namespace().unwrap_or_default();
                    let mut keys = HashSet::new();
                    for target in slice.endpoints.iter().filter_map(|e| e.target_ref.as_ref()) {
                        if target.kind.as_deref() == Some("Pod") {
                            let Some(name) = &target.name else { continue };
                            if let Some(pod) = c.pods.get(&ObjectRef::new(name).within(&ns)) {
                                keys.extend(c.workload_of_pod(&pod));
                            }
                        }
                    }
                    keys.into_iter().for_each(|k| q.enqueue(k));
                }
            },
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            Api::<PodDisruptionBudget>::all(client.clone()),
            w_pdb,
            move |ev| {
                for pdb in ev.objects() {
                    for key in c.workloads_in(pdb.namespace().as_deref()) {
                        q.enqueue(key);
                    }
                }
            },
        ));
        let c = cache.clone();
        let q = queue;
        drivers.push(drive(
            Api::<InPlaceUpgradePolicy>::all(client.clone()),
            w_pol,
            move |_| {
                for key in c.workloads_in(None) {
                    q.enqueue(key);
                }
            },
        ));
        (cache, drivers)
    }

    /// Waits until every watch has finished its initial list. Any number of tasks may wait
    /// (kube-runtime's `Store::wait_until_ready` wakes only one waiter, so one task waits on
    /// the stores and publishes the result).
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Whether every watch has finished its initial list.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    async fn wait_for_stores(&self) {
        let _ = tokio::join!(
            self.pods.wait_until_ready(),
            self.replica_sets.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.stateful_sets.wait_until_ready(),
            self.daemon_sets.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.endpoint_slices.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.policies.wait_until_ready(),
        );
    }

    pub fn workload_of_pod(&self, pod: &Pod) -> Option<WorkloadKey> {
        super::workload::workload_of_pod(pod, |rs_name| {
            let rs = self
                .replica_sets
                .get(&ObjectRef::new(rs_name).within(&pod.namespace()?))?;
            controller_of(rs.owner_references()).cloned()
        })
    }

    /// The workload behind `key`, if it still exists and is a workload of its own (a
    /// ReplicaSet controlled by a Deployment is part of that Deployment).
    pub fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        match key.kind {
            WorkloadKind::Deployment => {
                let d = self.deployments.get(&ObjectRef::new(name).within(ns))?;
                let mut view = WorkloadView::from_deployment(&d);
                let names = self
                    .replica_sets_by_owner
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .children_of(ns, "Deployment", name);
                let replica_sets: Vec<_> = names
                    .iter()
                    .filter_map(|n| self.replica_sets.get(&ObjectRef::new(n).within(ns)))
                    .collect();
                view.settled = deployment_settled(
                    &d,
                    &replica_sets.iter().map(|rs| &**rs).collect::<Vec<_>>(),
                );
                Some(view)
            }
            WorkloadKind::StatefulSet => self
                .stateful_sets
                .get(&ObjectRef::new(name).within(ns))
                .map(|s| WorkloadView::from_stateful_set(&s)),
            WorkloadKind::DaemonSet => self
                .daemon_sets
                .get(&ObjectRef::new(name).within(ns))
                .map(|d| WorkloadView::from_daemon_set(&d)),
            WorkloadKind::ReplicaSet => self
                .replica_sets
                .get(&ObjectRef::new(name).within(ns))
                .filter(|rs| controller_of(rs.owner_references()).is_none())
                .map(|rs| WorkloadView::from_replica_set(&rs)),
        }
    }

    /// The pods a workload controls (for a Deployment: the pods of all its ReplicaSets,
    /// current and old), from the owner index, not a scan.
    pub fn pods_of(&self, key: &WorkloadKey) -> Vec<Arc<Pod>> {
        let pods = self.pods_by_owner.read().unwrap();
        let mut names = Vec::new();
        match key.kind {
            WorkloadKind::Deployment => {
                let replica_sets = self.replica_sets_by_owner.read().unwrap();
                for rs in replica_sets.children_of(&key.namespace, "Deployment", &key.name) {
                    names.extend(pods.children_of(&key.namespace, "ReplicaSet", &rs));
                }
            }
            kind => names.extend(pods.children_of(&key.namespace, kind.as_str(), &key.name)),
        }
        drop(pods);
        names.sort();
        names
            .iter()
            .filter_map(|n| self.pods.get(&ObjectRef::new(n).within(&key.namespace)))
            .collect()
    }

    /// Every InPlaceUpgradePolicy, owned (the policy functions of the core take a slice).
    pub fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.policies
            .state()
            .iter()
            .map(|p| InPlaceUpgradePolicy::clone(p))
            .collect()
    }

    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// Every workload (of its own) in a namespace, or in the cluster.
    pub fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        let in_ns =
            |o: &dyn Fn() -> Option<String>| namespace.is_none() || o().as_deref() == namespace;
        let mut keys = Vec::new();
        let mut push = |kind, ns: Option<String>, name: String| {
            if let Some(ns) = ns {
                keys.push(WorkloadKey {
                    kind,
                    namespace: ns,
                    name,
                });
            }
        };
        for d in self
            .deployments
            .state()
            .iter()
            .filter(|d| in_ns(&|| d.namespace()))
        {
            push(WorkloadKind::Deployment, d.namespace(), d.name_any());
        }
        for s in self
            .stateful_sets
            .state()
            .iter()
            .filter(|s| in_ns(&|| s.namespace()))
        {
            push(WorkloadKind::StatefulSet, s.namespace(), s.name_any());
        }
        for d in self
            .daemon_sets
            .state()
            .iter()
            .filter(|d| in_ns(&|| d.namespace()))
        {
            push(WorkloadKind::DaemonSet, d.namespace(), d.name_any());
        }
        for rs in self.replica_sets.state().iter().filter(|rs| {
            in_ns(&|| rs.namespace()) && controller_of(rs.owner_references()).is_none()
        }) {
            push(WorkloadKind::ReplicaSet, rs.namespace(), rs.name_any());
        }
        keys
    }
}

/// A watch event reduced to what the triggers need.
pub struct Touched<K> {
    deleted: bool,
    object: K,
}

impl<K> Touched<K> {
    fn objects(&self) -> std::slice::Iter<'_, K> {
        std::slice::from_ref(&self.object).iter()
    }
}

fn own_keys<K: ResourceExt>(queue: &Queue, ev: &Touched<K>, kind: WorkloadKind) {
    for obj in ev.objects() {
        if let Some(namespace) = obj.namespace() {
            queue.enqueue(WorkloadKey {
                kind,
                namespace,
                name: obj.name_any(),
            });
        }
    }
}

/// Runs one watch into its store and calls `on_event` for every change, forever (the watcher
/// retries with backoff on errors and resumes from the last resourceVersion).
fn drive<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    on_event: impl Fn(Touched<K>) + Send + 'static,
) -> futures::future::BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default().page_size(500))
        .default_backoff()
        .modify(slim);
    let stream = reflector::reflector(writer, stream);
    Box::pin(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    on_event(Touched {
                        deleted: false,
                        object: o,
                    })
                }
                Ok(watcher::Event::Delete(o)) => on_event(Touched {
                    deleted: true,
                    object: o,
                }),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying")
                }
            }
        }
    })
}
