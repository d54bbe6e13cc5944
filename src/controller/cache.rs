//! In-memory caches of everything the reconciler reads, fed by watches. After the initial
//! LIST of each type, everything arrives by WATCH: the reconciler never asks the API server.
//! Every event is also mapped to the workloads it concerns and queued for reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, Deployment, DeploymentSpec, DeploymentStatus,
    ReplicaSet, ReplicaSetSpec, ReplicaSetStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    Container, Namespace, NamespaceSpec, NamespaceStatus, Pod, PodReadinessGate, PodSpec,
    PodStatus, PodTemplateSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use super::queue::Queue;
use super::workload::{
    WorkloadKey, WorkloadKind, WorkloadView, controller_of, deployment_settled, template_digest,
};
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

/// Object names by namespace, so a reconcile reads its namespace's EndpointSlices,
/// PodDisruptionBudgets and workloads without scanning the whole cluster's.
struct NamespaceIndex<T: std::hash::Hash + Eq + Clone> {
    by_namespace: HashMap<String, HashSet<T>>,
}

impl<T: std::hash::Hash + Eq + Clone> Default for NamespaceIndex<T> {
    fn default() -> Self {
        Self {
            by_namespace: HashMap::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Clone> NamespaceIndex<T> {
    fn set(&mut self, ns: &str, item: T, present: bool) {
        if present {
            self.by_namespace
                .entry(ns.to_string())
                .or_default()
                .insert(item);
        } else if let Some(set) = self.by_namespace.get_mut(ns) {
            set.remove(&item);
            if set.is_empty() {
                self.by_namespace.remove(ns);
            }
        }
    }

    fn in_namespace(&self, ns: &str) -> Vec<T> {
        self.by_namespace
            .get(ns)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn all(&self) -> Vec<T> {
        self.by_namespace.values().flatten().cloned().collect()
    }
}

type Shared<T> = Arc<RwLock<T>>;

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
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
    /// kubelet's Warning Events of pods in flight, fed by the controller's own watch
    /// (`events.rs`; the webhook, which shares this cache, reads no Events).
    pub events: super::events::EventIndex,
    pods_by_owner: Arc<RwLock<OwnerIndex>>,
    replica_sets_by_owner: Arc<RwLock<OwnerIndex>>,
    slices_by_namespace: Shared<NamespaceIndex<String>>,
    pdbs_by_namespace: Shared<NamespaceIndex<String>>,
    /// Workloads of their own (not a ReplicaSet a Deployment controls) by namespace.
    workloads_by_namespace: Shared<NamespaceIndex<WorkloadKey>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Drops what we never read, so a large cluster fits in little memory.
fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A pod as the controller reads it: metadata, status, and of the spec only what the
/// planner and the patches use (each container's name, image and restartPolicy — the index
/// in its list is the patch path —, the readiness gates and the node). An Istio-injected
/// pod's env, args, probes, mounts and volumes are most of its size and never read.
/// [`Lean<Pod>`] decodes exactly this from the wire; this is the same cut of a decoded pod.
#[cfg(test)]
fn slim_pod(pod: &mut Pod) {
    slim(pod);
    let Some(spec) = pod.spec.take() else { return };
    let container = |c: Container| Container {
        name: c.name,
        image: c.image,
        restart_policy: c.restart_policy,
        ..Container::default()
    };
    pod.spec = Some(PodSpec {
        containers: spec.containers.into_iter().map(container).collect(),
        init_containers: spec
            .init_containers
            .map(|cs| cs.into_iter().map(container).collect()),
        readiness_gates: spec.readiness_gates,
        node_name: spec.node_name,
        ..PodSpec::default()
    });
}

/// An object decoded with only what the controller reads: serde skips the rest of the JSON
/// without building it (managedFields above all; for a pod, most of its spec). Decoding the
/// full object and trimming it afterwards left the heap fragmented by the dropped parts, and
/// a freshly synced controller several hundred MiB large at 5,000 pods.
#[derive(Clone, Debug)]
struct Lean<K>(K);

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for Lean<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Metadata<Ty = ObjectMeta>> k8s_openapi::Metadata for Lean<K> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        self.0.metadata()
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        self.0.metadata_mut()
    }
}

/// `ObjectMeta` without `managedFields` (every other field kept).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LeanMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// The usual shape of an object: metadata, spec, status.
#[derive(Deserialize)]
struct LeanObject<S, T> {
    #[serde(default)]
    metadata: LeanMeta,
    spec: Option<S>,
    status: Option<T>,
}

macro_rules! lean_object {
    ($($kind:ident: $spec:ty, $status:ty, $trim:expr;)*) => {$(
        impl<'de> Deserialize<'de> for Lean<$kind> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let o = LeanObject::<$spec, $status>::deserialize(d)?;
                let mut object = $kind {
                    metadata: o.metadata.into(),
                    spec: o.spec,
                    status: o.status,
                };
                $trim(&mut object);
                Ok(Lean(object))
            }
        }
    )*};
}

/// Workloads keep a digest of their pod template (see [`template_digest`]): decoded in
/// passing, one template at a time, and dropped.
fn digest_templates<K: Templated>(object: &mut K) {
    if let Some(template) = object.template_mut() {
        *template = template_digest(template);
    }
}

/// A workload kind with a pod template.
trait Templated {
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec>;
}

impl Templated for Deployment {
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl Templated for StatefulSet {
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl Templated for DaemonSet {
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().map(|s| &mut s.template)
    }
}

impl Templated for ReplicaSet {
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        self.spec.as_mut().and_then(|s| s.template.as_mut())
    }
}

lean_object! {
    ReplicaSet: ReplicaSetSpec, ReplicaSetStatus, digest_templates;
    Deployment: DeploymentSpec, DeploymentStatus, digest_templates;
    StatefulSet: StatefulSetSpec, StatefulSetStatus, digest_templates;
    DaemonSet: DaemonSetSpec, DaemonSetStatus, digest_templates;
    Namespace: NamespaceSpec, NamespaceStatus, |_: &mut Namespace| {};
    PodDisruptionBudget: PodDisruptionBudgetSpec, PodDisruptionBudgetStatus, |_: &mut PodDisruptionBudget| {};
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LeanContainer {
    name: String,
    image: Option<String>,
    restart_policy: Option<String>,
}

impl From<LeanContainer> for Container {
    fn from(c: LeanContainer) -> Self {
        Container {
            name: c.name,
            image: c.image,
            restart_policy: c.restart_policy,
            ..Container::default()
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LeanPodSpec {
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
    readiness_gates: Option<Vec<PodReadinessGate>>,
    node_name: Option<String>,
}

impl<'de> Deserialize<'de> for Lean<Pod> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let o = LeanObject::<LeanPodSpec, PodStatus>::deserialize(d)?;
        let spec = o.spec.map(|s| PodSpec {
            containers: s.containers.into_iter().map(Container::from).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(Container::from).collect()),
            readiness_gates: s.readiness_gates,
            node_name: s.node_name,
            ..PodSpec::default()
        });
        Ok(Lean(Pod {
            metadata: o.metadata.into(),
            spec,
            status: o.status,
        }))
    }
}

impl<'de> Deserialize<'de> for Lean<EndpointSlice> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            #[serde(default)]
            metadata: LeanMeta,
            #[serde(default)]
            address_type: String,
            #[serde(default)]
            endpoints: Vec<Endpoint>,
            ports: Option<Vec<EndpointPort>>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Lean(EndpointSlice {
            metadata: w.metadata.into(),
            address_type: w.address_type,
            endpoints: w.endpoints,
            ports: w.ports,
        }))
    }
}

/// The watch of a built-in kind, decoded lean.
fn lean_api<K>(client: &Client) -> Api<Lean<K>>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta>,
    Lean<K>: Resource<DynamicType = ()>,
{
    Api::all(client.clone())
}

fn unwrap_lean<K>(lean: Lean<K>) -> K {
    lean.0
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
            events: Default::default(),
            pods_by_owner: Default::default(),
            replica_sets_by_owner: Default::default(),
            slices_by_namespace: Default::default(),
            pdbs_by_namespace: Default::default(),
            workloads_by_namespace: Default::default(),
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
        drivers.push(drive(
            lean_api::<Pod>(client),
            unwrap_lean,
            w,
            slim,
            move |ev| {
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
            },
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            lean_api::<ReplicaSet>(client),
            unwrap_lean,
            w_rs,
            slim,
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
                    let key = WorkloadKey {
                        kind: WorkloadKind::ReplicaSet,
                        namespace: ns.clone(),
                        name: rs.name_any(),
                    };
                    let own = controller_of(rs.owner_references()).is_none();
                    write(&c.workloads_by_namespace).set(&ns, key, own && !ev.deleted);
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
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            lean_api::<Deployment>(client),
            unwrap_lean,
            w_d,
            slim,
            move |ev| own_keys(&c, &q, &ev, WorkloadKind::Deployment),
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            lean_api::<StatefulSet>(client),
            unwrap_lean,
            w_ss,
            slim,
            move |ev| own_keys(&c, &q, &ev, WorkloadKind::StatefulSet),
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            lean_api::<DaemonSet>(client),
            unwrap_lean,
            w_ds,
            slim,
            move |ev| own_keys(&c, &q, &ev, WorkloadKind::DaemonSet),
        ));
        let c = cache.clone();
        let q = queue.clone();
        drivers.push(drive(
            lean_api::<Namespace>(client),
            unwrap_lean,
            w_ns,
            slim,
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
            lean_api::<EndpointSlice>(client),
            unwrap_lean,
            w_eps,
            slim,
            move |ev| {
                // A drained pod leaving (or a pod re-joining) a slice moves its workload on.
                for slice in ev.objects() {
                    let ns = slice.namespace().unwrap_or_default();
                    write(&c.slices_by_namespace).set(&ns, slice.name_any(), !ev.deleted);
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
            lean_api::<PodDisruptionBudget>(client),
            unwrap_lean,
            w_pdb,
            slim,
            move |ev| {
                for pdb in ev.objects() {
                    let ns = pdb.namespace().unwrap_or_default();
                    write(&c.pdbs_by_namespace).set(&ns, pdb.name_any(), !ev.deleted);
                    for key in c.workloads_in(Some(&ns)) {
                        q.enqueue(key);
                    }
                }
            },
        ));
        let c = cache.clone();
        let q = queue;
        let watched = RwLock::new(super::policy_watch::PolicyWatch::default());
        drivers.push(drive(
            Api::<InPlaceUpgradePolicy>::all(client.clone()),
            std::convert::identity,
            w_pol,
            slim,
            move |ev| {
                // Our own status writes change nothing that governs (see `policy_watch`).
                for policy in ev.objects() {
                    let Some(affected) = write(&watched).change(policy, ev.deleted) else {
                        continue;
                    };
                    for ns in c.namespaces.state() {
                        if affected.namespace(ns.labels()) {
                            c.workloads_in(Some(&ns.name_any()))
                                .into_iter()
                                .for_each(|k| q.enqueue(k));
                        }
                    }
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

    /// Every workload (of its own) in a namespace, or in the cluster, from the namespace
    /// index (sorted, so callers see a stable order).
    pub fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        let index = read(&self.workloads_by_namespace);
        let mut keys = match namespace {
            Some(ns) => index.in_namespace(ns),
            None => index.all(),
        };
        drop(index);
        // A re-listed watch does not report what was deleted meanwhile: the store decides.
        keys.retain(|k| self.has_workload(k));
        keys.sort();
        keys
    }

    fn has_workload(&self, key: &WorkloadKey) -> bool {
        macro_rules! at {
            () => {
                &ObjectRef::new(&key.name).within(&key.namespace)
            };
        }
        match key.kind {
            WorkloadKind::Deployment => self.deployments.get(at!()).is_some(),
            WorkloadKind::StatefulSet => self.stateful_sets.get(at!()).is_some(),
            WorkloadKind::DaemonSet => self.daemon_sets.get(at!()).is_some(),
            WorkloadKind::ReplicaSet => self
                .replica_sets
                .get(at!())
                .is_some_and(|rs| controller_of(rs.owner_references()).is_none()),
        }
    }

    /// One annotation of a workload, read in place (no [`WorkloadView`] built).
    pub fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        let of = |meta: &kube::api::ObjectMeta| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(annotation).cloned())
        };
        macro_rules! at {
            () => {
                &ObjectRef::new(name).within(ns)
            };
        }
        match key.kind {
            WorkloadKind::Deployment => self.deployments.get(at!()).and_then(|o| of(&o.metadata)),
            WorkloadKind::StatefulSet => {
                self.stateful_sets.get(at!()).and_then(|o| of(&o.metadata))
            }
            WorkloadKind::DaemonSet => self.daemon_sets.get(at!()).and_then(|o| of(&o.metadata)),
            WorkloadKind::ReplicaSet => self.replica_sets.get(at!()).and_then(|o| of(&o.metadata)),
        }
    }

    /// The EndpointSlices of a namespace.
    pub fn endpoint_slices_in(&self, namespace: &str) -> Vec<Arc<EndpointSlice>> {
        let names = read(&self.slices_by_namespace).in_namespace(namespace);
        names
            .iter()
            .filter_map(|n| {
                self.endpoint_slices
                    .get(&ObjectRef::new(n).within(namespace))
            })
            .collect()
    }

    /// The PodDisruptionBudgets of a namespace.
    pub fn pdbs_in(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        let names = read(&self.pdbs_by_namespace).in_namespace(namespace);
        names
            .iter()
            .filter_map(|n| self.pdbs.get(&ObjectRef::new(n).within(namespace)))
            .collect()
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

fn own_keys<K: ResourceExt>(cache: &Cache, queue: &Queue, ev: &Touched<K>, kind: WorkloadKind) {
    for obj in ev.objects() {
        if let Some(namespace) = obj.namespace() {
            let key = WorkloadKey {
                kind,
                namespace,
                name: obj.name_any(),
            };
            write(&cache.workloads_by_namespace).set(&key.namespace, key.clone(), !ev.deleted);
            queue.enqueue(key);
        }
    }
}

/// Runs one watch into its store and calls `on_event` for every change, forever (the watcher
/// retries with backoff on errors and resumes from the last resourceVersion).
/// The watch decodes `W` (a [`Lean`] kind, or the kind itself) and `unwrap` gives the `K`
/// the store keeps.
fn drive<K, W>(
    api: Api<W>,
    unwrap: fn(W) -> K,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    on_event: impl Fn(Touched<K>) + Send + 'static,
) -> futures::future::BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    W: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default().page_size(500))
        .map_ok(move |event| match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(unwrap(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(unwrap(o)),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(unwrap(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        })
        .default_backoff()
        .modify(trim);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture_files, fixture_pods};
    use serde_json::json;

    /// The slimmed pod must give the planner and the patches exactly what the full pod gives:
    /// same targets resolved at the same indexes, same upgrade patch.
    #[test]
    fn a_slim_pod_resolves_and_patches_like_the_full_pod() {
        let targets = crate::annotation::parse("istio-proxy=proxyv2:1.24.2").unwrap();
        let now = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut checked = 0;
        for file in fixture_files() {
            for full in fixture_pods(&file) {
                let mut slim = full.clone();
                slim_pod(&mut slim);
                let (f, s) = (full.spec.as_ref().unwrap(), slim.spec.as_ref().unwrap());
                let resolved = crate::target::resolve(f, &targets);
                assert_eq!(resolved, crate::target::resolve(s, &targets), "{file}");
                let Ok(resolved) = resolved else { continue };
                if resolved.resolved.is_empty() {
                    continue;
                }
                let patch = |p: &Pod| {
                    crate::patch::upgrade_patch(p, &resolved.resolved, now)
                        .map(|(patch, _)| serde_json::to_value(patch).unwrap())
                        .map_err(|e| e.to_string())
                };
                assert_eq!(patch(&full), patch(&slim), "{file}");
                assert_eq!(f.readiness_gates, s.readiness_gates);
                checked += 1;
            }
        }
        assert!(checked > 0, "no fixture pod has an istio-proxy container");
    }

    #[test]
    fn a_slim_pod_drops_what_is_never_read() {
        let mut pod = fixture_pods("hello-old-version.yaml.injected").remove(0);
        let before = serde_json::to_vec(&pod).unwrap().len();
        slim_pod(&mut pod);
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none());
        assert!(spec.containers.iter().all(|c| c.env.is_none()
            && c.args.is_none()
            && c.readiness_probe.is_none()
            && c.volume_mounts.is_none()));
        let after = serde_json::to_vec(&pod).unwrap().len();
        assert!(after * 3 < before, "{before} bytes -> {after} bytes");
    }

    /// Every field the API server writes on a pod, with the status a kubelet reports and
    /// managedFields, as a watch delivers it.
    fn served(mut pod: serde_json::Value) -> serde_json::Value {
        let meta = &mut pod["metadata"];
        meta["namespace"] = json!("ns");
        meta["uid"] = json!("0f2c");
        meta["resourceVersion"] = json!("42");
        meta["generation"] = json!(3);
        meta["creationTimestamp"] = json!("2026-11-22T08:00:00Z");
        meta["finalizers"] = json!(["example.com/keep"]);
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web-1", "uid": "u", "controller": true, "blockOwnerDeletion": true}]);
        meta["managedFields"] = json!([{"manager": "kubelet", "operation": "Update",
            "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:phase": {}}}}]);
        meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!("{}");
        pod["status"] = json!({"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "istio-proxy", "image": "proxyv2:1.24.1",
                "imageID": "sha256:1", "ready": true, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": "2026-11-22T08:00:01Z"}}}]});
        pod
    }

    /// A lean decode must give exactly what a full decode trimmed afterwards gives.
    #[test]
    fn a_lean_pod_is_the_slim_pod() {
        let mut checked = 0;
        for file in fixture_files() {
            for pod in fixture_pods(&file) {
                let mut wire = served(serde_json::to_value(&pod).unwrap());
                if wire["metadata"]["annotations"].is_null() {
                    wire["metadata"]["annotations"] = json!({});
                }
                let text = wire.to_string();
                let mut full: Pod = serde_json::from_str(&text).unwrap();
                assert!(full.metadata.managed_fields.is_some());
                slim_pod(&mut full);
                let Lean(mut lean) = serde_json::from_str::<Lean<Pod>>(&text).unwrap();
                slim(&mut lean);
                assert_eq!(lean, full, "{file}");
                checked += 1;
            }
        }
        assert!(checked > 5, "only {checked} fixture pods");
    }

    /// Every other kind: everything but managedFields, whatever the fields.
    #[test]
    fn lean_objects_keep_everything_but_managed_fields() {
        fn check<K>(wire: serde_json::Value, trim: fn(&mut K))
        where
            K: Resource + DeserializeOwned + PartialEq + Debug,
            Lean<K>: DeserializeOwned,
        {
            let mut wire = wire;
            wire["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
            wire["metadata"]["labels"] = json!({"app": "web"});
            wire["metadata"]["annotations"] =
                json!({"inplace-upgrade.io/targets": "istio-proxy=proxyv2:1.24.2"});
            wire["metadata"]["generation"] = json!(4);
            let mut full: K = serde_json::from_value(wire.clone()).unwrap();
            assert!(full.meta().managed_fields.is_some());
            full.meta_mut().managed_fields = None;
            trim(&mut full);
            let Lean(lean) = serde_json::from_value::<Lean<K>>(wire).unwrap();
            assert_eq!(lean, full);
        }
        let template = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1", "env": [{"name": "X", "value": "1"}]}]}});
        let selector = json!({"matchLabels": {"app": "web"}});
        check::<Deployment>(
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"replicas": 3, "selector": selector, "template": template},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}}),
            digest_templates,
        );
        check::<ReplicaSet>(
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-1", "namespace": "ns", "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
            "spec": {"replicas": 3, "selector": selector, "template": template},
            "status": {"observedGeneration": 4, "replicas": 3}}),
            digest_templates,
        );
        check::<StatefulSet>(
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"replicas": 2, "selector": selector, "serviceName": "db", "template": template},
            "status": {"replicas": 2, "currentRevision": "db-1", "updateRevision": "db-1"}}),
            digest_templates,
        );
        check::<DaemonSet>(
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ns"},
            "spec": {"selector": selector, "template": template},
            "status": {"currentNumberScheduled": 2, "desiredNumberScheduled": 2,
                "numberMisscheduled": 0, "numberReady": 2, "updatedNumberScheduled": 2}}),
            digest_templates,
        );
        check::<Namespace>(
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "ns"}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}}),
            |_| {},
        );
        check::<PodDisruptionBudget>(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"minAvailable": 2, "selector": selector},
            "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3}}),
            |_| {},
        );
        check::<EndpointSlice>(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "ns"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true},
                "targetRef": {"kind": "Pod", "name": "web-1-a", "namespace": "ns"}, "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
            |_| {},
        );
    }

    #[test]
    fn the_namespace_index_adds_and_forgets() {
        let mut index = NamespaceIndex::<String>::default();
        index.set("a", "x".into(), true);
        index.set("a", "y".into(), true);
        index.set("b", "z".into(), true);
        index.set("a", "x".into(), false);
        assert_eq!(index.in_namespace("a"), vec!["y".to_string()]);
        index.set("b", "z".into(), false);
        assert!(index.in_namespace("b").is_empty());
        assert!(!index.by_namespace.contains_key("b"));
        assert_eq!(index.all(), vec!["y".to_string()]);
    }
}
