//! Lean decoding: each object decoded straight from the API's JSON into what is kept of it.
//! serde skips every other field without building it (`managedFields` above all; for a pod,
//! most of its spec and status), so neither the cache nor the webhook ever holds — or
//! fragments the heap with — the parts nobody reads.
//!
//! What is kept, kind by kind:
//! - **Pods** ([`CachedPod`]): name, namespace, uid, resourceVersion, labels (PodDisruptionBudget
//!   selectors), our own annotations and Istio's injection record (only the containers and the
//!   revision: the revision guard), the controlling owner, deletionTimestamp; of the spec each
//!   container's and init container's name, image and restartPolicy (the index in its list is
//!   the patch path) and the readiness gates; of the status the phase, podIP, the `Ready` and
//!   `inplace-upgrade.io/ready` conditions, and per container status what the classifier reads
//!   (name, containerID, image, imageID, ready, started, restartCount, state and lastState:
//!   reasons, messages, exit codes and times), with `metadata.generation` and
//!   `status.observedGeneration` (whether kubelet has seen the patched spec). An
//!   Istio-injected pod's env, args, probes, mounts, volumes, other conditions and
//!   annotations are most of its size. [`CachedPod::to_pod`] gives it back as a `Pod` the
//!   planner and the patches read exactly as they read the full pod (unit-tested over every
//!   Istio fixture and the status shapes kubelets report). Labels and annotations are one
//!   sorted slice each ([`SmallMap`]), and every string that many pods hold alike is kept once
//!   per process ([`shared`]): 3.7 KB per cached pod, its workload's share included
//!   (`--bench cache`).
//! - **Workloads** ([`CachedWorkload`]): the [`WorkloadView`] built from the object, with only
//!   our annotations; the controlling owner; and for Deployments and ReplicaSets what
//!   [`deployment_settled`] compares: replicas and a digest of the pod template
//!   ([`template_digest`]), decoded in passing, one template at a time.
//! - **EndpointSlices** ([`CachedSlice`]): the names of the pods it sends traffic to
//!   ([`serving_pod`]).
//! - Namespaces, PodDisruptionBudgets: everything but `managedFields` ([`Lean`]).
//!
//! The wire types read a JSON object the way `k8s_openapi` does ([`wire_struct!`]), and the
//! webhook's partial pod decode ([`crate::admission::pod`]) is built from the same pieces
//! ([`LeanPodSpec`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, Deployment, DeploymentSpec, DeploymentStatus,
    ReplicaSet, ReplicaSetSpec, ReplicaSetStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Namespace, NamespaceSpec, NamespaceStatus, Pod,
    PodCondition, PodReadinessGate, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::de::{DeserializeSeed, Visitor};
use serde::{Deserialize, Deserializer};

use crate::plan::inputs::{endpoint_pod, serving_pod};
use crate::policy::InPlaceUpgradePolicy;
use crate::target::{ContainerRef, PodContainers};
use crate::workload::{WorkloadView, controller_of, digest_of, template_digest};
use crate::{READINESS_GATE, TARGETS_ANNOTATION};

/// Generates a struct of optional fields and a `Deserialize` for it that reads a JSON object
/// the way `k8s_openapi` reads its types: a field given twice keeps its last value, `null`
/// is absent, unknown fields are skipped unread, and anything but an object is refused.
macro_rules! wire_struct {
    ($name:ident, $expecting:literal, { $($field:ident: $ty:ty = $key:literal),+ $(,)? }) => {
        #[derive(Default)]
        pub(crate) struct $name {
            $(pub(crate) $field: Option<$ty>,)+
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> ::serde::de::Visitor<'de> for Fields {
                    type Value = $name;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: ::serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$name, A::Error> {
                        let mut out = $name::default();
                        let fields = $crate::cache::lean::FieldName(&[$($key),+]);
                        while let Some(key) = map.next_key_seed(fields)? {
                            match key {
                                $(Some($key) => out.$field = map.next_value()?,)+
                                _ => {
                                    map.next_value::<::serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    };
}
pub(crate) use wire_struct;

/// Reads an object key as one of the fields read, without allocating it.
#[derive(Clone, Copy)]
pub(crate) struct FieldName(pub(crate) &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldName {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|field| **field == key).copied())
    }
}

// ---------------------------------------------------------------------------------------------
// The pod spec: what the webhook's mutation and the controller both read.

/// One container (or init container) of a pod: what locating and patching it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeanContainer {
    pub name: Arc<str>,
    pub image: Option<Arc<str>>,
    pub restart_policy: Option<Arc<str>>,
}

/// The containers and readiness gates of a pod spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeanPodSpec {
    /// Every container, in the pod's order.
    pub containers: Vec<LeanContainer>,
    /// Every init container, in the pod's order (`None` when the pod has none).
    pub init_containers: Option<Vec<LeanContainer>>,
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
    /// The node the pod runs on (where its target images are pre-pulled).
    pub node_name: Option<String>,
}

wire_struct!(WireSpec, "a Pod's spec", {
    containers: Vec<WireContainer> = "containers",
    init_containers: Vec<WireContainer> = "initContainers",
    readiness_gates: Vec<PodReadinessGate> = "readinessGates",
    node_name: String = "nodeName",
});

wire_struct!(WireContainer, "a container", {
    name: String = "name",
    image: String = "image",
    restart_policy: String = "restartPolicy",
});

impl From<WireContainer> for LeanContainer {
    fn from(c: WireContainer) -> Self {
        LeanContainer {
            name: shared(c.name.unwrap_or_default()),
            image: c.image.map(shared),
            restart_policy: c.restart_policy.map(shared),
        }
    }
}

impl From<WireSpec> for LeanPodSpec {
    fn from(spec: WireSpec) -> Self {
        let containers = |list: Vec<WireContainer>| list.into_iter().map(Into::into).collect();
        LeanPodSpec {
            containers: spec.containers.map(containers).unwrap_or_default(),
            init_containers: spec.init_containers.map(containers),
            readiness_gates: spec.readiness_gates,
            node_name: spec.node_name,
        }
    }
}

impl PodContainers for LeanPodSpec {
    fn containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.containers.iter().map(LeanContainer::as_ref)
    }
    fn init_containers(&self) -> impl Iterator<Item = ContainerRef<'_>> {
        self.init_containers
            .iter()
            .flatten()
            .map(LeanContainer::as_ref)
    }
}

impl LeanContainer {
    fn as_ref(&self) -> ContainerRef<'_> {
        ContainerRef {
            name: &self.name,
            image: self.image.as_deref(),
            restart_policy: self.restart_policy.as_deref(),
        }
    }

    fn to_container(&self) -> Container {
        Container {
            name: self.name.to_string(),
            image: self.image.as_deref().map(str::to_owned),
            restart_policy: self.restart_policy.as_deref().map(str::to_owned),
            ..Container::default()
        }
    }
}

impl LeanPodSpec {
    fn to_spec(&self) -> PodSpec {
        let containers =
            |list: &[LeanContainer]| list.iter().map(LeanContainer::to_container).collect();
        PodSpec {
            containers: containers(&self.containers),
            init_containers: self.init_containers.as_deref().map(containers),
            readiness_gates: self.readiness_gates.clone(),
            node_name: self.node_name.clone(),
            ..PodSpec::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared strings.

/// The one copy of a string that many cached objects hold alike — container names, images
/// and image IDs, label keys and values, annotations, condition types — so ten thousand pods
/// of a few hundred templates keep each once (an `Arc<str>` each, 16 bytes). What is a pod's
/// own (its uid, name, resourceVersion, containerIDs, IP) is not shared: it would only grow
/// the set.
fn shared(s: String) -> Arc<str> {
    static STRINGS: std::sync::LazyLock<std::sync::Mutex<SharedStrings>> =
        std::sync::LazyLock::new(Default::default);
    STRINGS.lock().unwrap_or_else(|e| e.into_inner()).get(s)
}

#[derive(Default)]
struct SharedStrings {
    set: std::collections::HashSet<Arc<str>>,
    /// The set's size at which strings nothing holds any more (an old image, an old
    /// template's hash, a finished upgrade's record) are forgotten.
    sweep_at: usize,
}

impl SharedStrings {
    fn get(&mut self, s: String) -> Arc<str> {
        if let Some(kept) = self.set.get(s.as_str()) {
            return kept.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|kept| Arc::strong_count(kept) > 1);
            self.sweep_at = (2 * self.set.len()).max(1024);
        }
        let kept: Arc<str> = s.into();
        self.set.insert(kept.clone());
        kept
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata.

/// Name, namespace and resourceVersion of an object: how the cache files it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filed {
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: Option<String>,
}

impl Filed {
    fn of(meta: &ObjectMeta) -> Self {
        Filed {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
        }
    }
}

/// Whether an annotation is one of ours (the only ones the cache keeps on pods and workloads).
pub fn is_ours(annotation: &str) -> bool {
    annotation == TARGETS_ANNOTATION || annotation.starts_with("inplace-upgrade.io/")
}

/// What a pod keeps of its annotations: ours, and Istio's injection record in its lean form
/// ([`crate::istio::lean_status`]) for the revision guard. A pod that had others keeps an
/// empty map rather than none: a JSON patch adds to `metadata.annotations` when it exists and
/// creates it otherwise.
fn pod_annotations(
    annotations: Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    annotations.map(|a| {
        a.into_iter()
            .filter_map(|(k, v)| {
                if k == crate::istio::STATUS_ANNOTATION {
                    Some((k, crate::istio::lean_status(v)))
                } else {
                    is_ours(&k).then_some((k, v))
                }
            })
            .collect()
    })
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
        let mut annotations = m.annotations;
        if let Some(a) = annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        ObjectMeta {
            annotations,
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

/// An object decoded without `managedFields` (and, for a workload, with its pod template
/// replaced by its digest): a `k8s_openapi` type, every other field as the API sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Lean<K>(pub K);

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
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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

// ---------------------------------------------------------------------------------------------
// Pods.

/// A pod as the cache keeps it (see the module doc for what is kept). Its name and namespace
/// are the cache's keys; [`CachedPod::to_pod`] gives the `Pod` back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPod {
    uid: Option<String>,
    resource_version: Option<String>,
    /// `metadata.generation`: with `status.observedGeneration`, whether kubelet has seen the
    /// patched spec.
    generation: Option<i64>,
    labels: Option<SmallMap>,
    /// Ours and Istio's record (see [`pod_annotations`]).
    annotations: Option<SmallMap>,
    /// The controlling owner reference (the only one anything reads).
    owner: Option<OwnerReference>,
    deletion_timestamp: Option<Time>,
    spec: Option<LeanPodSpec>,
    status: Option<CachedPodStatus>,
}

/// A pod's labels or kept annotations: one sorted allocation of exact size (a `BTreeMap`
/// spends a 540-byte node on its first entry, and every cached pod has two).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SmallMap(Box<[(Arc<str>, Arc<str>)]>);

impl From<BTreeMap<String, String>> for SmallMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        SmallMap(
            map.into_iter()
                .map(|(k, v)| (shared(k), shared(v)))
                .collect(),
        )
    }
}

impl SmallMap {
    fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct CachedPodStatus {
    observed_generation: Option<i64>,
    phase: Option<String>,
    /// `reason` and `message` of a `Failed` pod only (a pre-pull pod whose deadline ran out).
    failed: Option<Box<(Option<String>, Option<String>)>>,
    pod_ip: Option<String>,
    /// `Ready` and our readiness gate's condition, without `message` and `lastProbeTime`.
    conditions: Vec<CachedCondition>,
    container_statuses: Option<Vec<CachedContainerStatus>>,
    init_container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// What is read of a pod condition (88 bytes; a `PodCondition` is 160).
#[derive(Clone, Debug, Default, PartialEq)]
struct CachedCondition {
    type_: Arc<str>,
    status: Arc<str>,
    reason: Option<Arc<str>>,
    last_transition_time: Option<Time>,
}

impl CachedCondition {
    fn to_condition(&self) -> PodCondition {
        PodCondition {
            type_: self.type_.to_string(),
            status: self.status.to_string(),
            reason: self.reason.as_deref().map(str::to_owned),
            last_transition_time: self.last_transition_time.clone(),
            ..PodCondition::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct CachedContainerStatus {
    name: Arc<str>,
    container_id: Option<String>,
    image: Arc<str>,
    /// The content that runs (what a baseline records, and a restart is compared against).
    image_id: Arc<str>,
    ready: bool,
    started: Option<bool>,
    restart_count: i32,
    state: Option<CachedState>,
    last_state: Option<Box<CachedState>>,
}

/// A container state: which of running, waiting, terminated is set, with their reasons,
/// messages, exit code and times (the rarer two boxed: most containers just run).
#[derive(Clone, Debug, Default, PartialEq)]
struct CachedState {
    running: Option<Option<Time>>,
    waiting: Option<Box<ContainerStateWaiting>>,
    terminated: Option<Box<ContainerStateTerminated>>,
}

wire_struct!(WirePod, "a Pod object", {
    metadata: WirePodMeta = "metadata",
    spec: WireSpec = "spec",
    status: WirePodStatus = "status",
});

// What the cache and the webhook's mutation read of a pod's metadata.
wire_struct!(WirePodMeta, "a Pod's metadata", {
    name: String = "name",
    generate_name: String = "generateName",
    namespace: String = "namespace",
    uid: String = "uid",
    resource_version: String = "resourceVersion",
    generation: i64 = "generation",
    labels: BTreeMap<String, String> = "labels",
    annotations: BTreeMap<String, String> = "annotations",
    owner_references: Vec<OwnerReference> = "ownerReferences",
    deletion_timestamp: Time = "deletionTimestamp",
});

wire_struct!(WirePodStatus, "a Pod's status", {
    observed_generation: i64 = "observedGeneration",
    phase: String = "phase",
    reason: String = "reason",
    message: String = "message",
    pod_ip: String = "podIP",
    conditions: Vec<WireCondition> = "conditions",
    container_statuses: Vec<WireContainerStatus> = "containerStatuses",
    init_container_statuses: Vec<WireContainerStatus> = "initContainerStatuses",
});

wire_struct!(WireCondition, "a pod condition", {
    type_: String = "type",
    status: String = "status",
    reason: String = "reason",
    last_transition_time: Time = "lastTransitionTime",
});

wire_struct!(WireContainerStatus, "a container status", {
    name: String = "name",
    container_id: String = "containerID",
    image: String = "image",
    image_id: String = "imageID",
    ready: bool = "ready",
    started: bool = "started",
    restart_count: i32 = "restartCount",
    state: WireState = "state",
    last_state: WireState = "lastState",
});

wire_struct!(WireState, "a container state", {
    running: WireRunning = "running",
    waiting: WireWaiting = "waiting",
    terminated: WireTerminated = "terminated",
});

wire_struct!(WireRunning, "a running state", {
    started_at: Time = "startedAt",
});

wire_struct!(WireWaiting, "a waiting state", {
    reason: String = "reason",
    message: String = "message",
});

wire_struct!(WireTerminated, "a terminated state", {
    exit_code: i32 = "exitCode",
    reason: String = "reason",
    message: String = "message",
    started_at: Time = "startedAt",
    finished_at: Time = "finishedAt",
});

impl From<WireState> for CachedState {
    fn from(s: WireState) -> Self {
        CachedState {
            running: s.running.map(|r| r.started_at),
            waiting: s.waiting.map(|w| {
                Box::new(ContainerStateWaiting {
                    reason: w.reason,
                    message: w.message,
                })
            }),
            terminated: s.terminated.map(|t| {
                Box::new(ContainerStateTerminated {
                    exit_code: t.exit_code.unwrap_or_default(),
                    reason: t.reason,
                    message: t.message,
                    started_at: t.started_at,
                    finished_at: t.finished_at,
                    ..ContainerStateTerminated::default()
                })
            }),
        }
    }
}

impl CachedState {
    fn to_state(&self) -> ContainerState {
        ContainerState {
            running: self
                .running
                .clone()
                .map(|started_at| ContainerStateRunning { started_at }),
            waiting: self.waiting.as_deref().cloned(),
            terminated: self.terminated.as_deref().cloned(),
        }
    }
}

impl From<WireContainerStatus> for CachedContainerStatus {
    fn from(s: WireContainerStatus) -> Self {
        CachedContainerStatus {
            name: shared(s.name.unwrap_or_default()),
            container_id: s.container_id,
            image: shared(s.image.unwrap_or_default()),
            image_id: shared(s.image_id.unwrap_or_default()),
            ready: s.ready.unwrap_or_default(),
            started: s.started,
            restart_count: s.restart_count.unwrap_or_default(),
            state: s.state.map(CachedState::from),
            last_state: s.last_state.map(|s| Box::new(s.into())),
        }
    }
}

impl CachedContainerStatus {
    fn to_status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.to_string(),
            container_id: self.container_id.clone(),
            image: self.image.to_string(),
            image_id: self.image_id.to_string(),
            ready: self.ready,
            started: self.started,
            restart_count: self.restart_count,
            state: self.state.as_ref().map(CachedState::to_state),
            last_state: self.last_state.as_deref().map(CachedState::to_state),
            ..ContainerStatus::default()
        }
    }
}

/// The pod conditions anything reads: the pod's readiness and our gate's.
fn kept_condition(type_: &str) -> bool {
    type_ == "Ready" || type_ == READINESS_GATE
}

impl From<WirePodStatus> for CachedPodStatus {
    fn from(s: WirePodStatus) -> Self {
        let statuses = |list: Vec<WireContainerStatus>| list.into_iter().map(Into::into).collect();
        CachedPodStatus {
            observed_generation: s.observed_generation,
            failed: (s.phase.as_deref() == Some("Failed")).then(|| Box::new((s.reason, s.message))),
            phase: s.phase,
            pod_ip: s.pod_ip,
            conditions: s
                .conditions
                .into_iter()
                .flatten()
                .filter(|c| c.type_.as_deref().is_some_and(kept_condition))
                .map(|c| CachedCondition {
                    type_: shared(c.type_.unwrap_or_default()),
                    status: shared(c.status.unwrap_or_default()),
                    reason: c.reason.map(shared),
                    last_transition_time: c.last_transition_time,
                })
                .collect(),
            container_statuses: s.container_statuses.map(statuses),
            init_container_statuses: s.init_container_statuses.map(statuses),
        }
    }
}

impl CachedPodStatus {
    fn to_status(&self) -> PodStatus {
        let statuses = |list: &Vec<CachedContainerStatus>| {
            list.iter().map(CachedContainerStatus::to_status).collect()
        };
        PodStatus {
            observed_generation: self.observed_generation,
            phase: self.phase.clone(),
            reason: self.failed.as_ref().and_then(|f| f.0.clone()),
            message: self.failed.as_ref().and_then(|f| f.1.clone()),
            pod_ip: self.pod_ip.clone(),
            conditions: (!self.conditions.is_empty()).then(|| {
                self.conditions
                    .iter()
                    .map(CachedCondition::to_condition)
                    .collect()
            }),
            container_statuses: self.container_statuses.as_ref().map(statuses),
            init_container_statuses: self.init_container_statuses.as_ref().map(statuses),
            ..PodStatus::default()
        }
    }
}

impl CachedPod {
    /// The pod as the planner, the classifier and the patches read it: everything kept, every
    /// other field empty.
    pub fn to_pod(&self, namespace: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                uid: self.uid.clone(),
                resource_version: self.resource_version.clone(),
                generation: self.generation,
                labels: self.labels.as_ref().map(SmallMap::to_map),
                annotations: self.annotations.as_ref().map(SmallMap::to_map),
                owner_references: self.owner.clone().map(|o| vec![o]),
                deletion_timestamp: self.deletion_timestamp.clone(),
                ..ObjectMeta::default()
            },
            spec: self.spec.as_ref().map(LeanPodSpec::to_spec),
            status: self.status.as_ref().map(CachedPodStatus::to_status),
        }
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// One of our annotations (the only ones kept).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)
    }

    /// The controlling owner reference.
    pub fn owner(&self) -> Option<&OwnerReference> {
        self.owner.as_ref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

fn decode_pod<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<CachedPod>, D::Error> {
    let pod = WirePod::deserialize(d)?;
    let meta = pod.metadata.unwrap_or_default();
    let filed = Filed {
        namespace: meta.namespace,
        name: meta.name.unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
    };
    let kept = CachedPod {
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        labels: meta.labels.map(SmallMap::from),
        annotations: pod_annotations(meta.annotations).map(SmallMap::from),
        owner: meta
            .owner_references
            .and_then(|o| o.into_iter().find(|o| o.controller == Some(true))),
        deletion_timestamp: meta.deletion_timestamp,
        spec: pod.spec.map(LeanPodSpec::from),
        status: pod.status.map(CachedPodStatus::from),
    };
    Ok(Decoded { filed, kept })
}

// ---------------------------------------------------------------------------------------------
// Workloads.

/// A Deployment, StatefulSet, DaemonSet or ReplicaSet as the cache keeps it.
#[derive(Clone, Debug)]
pub struct CachedWorkload {
    /// As the reconciler and the webhook read it (settled from the object alone), with only
    /// our annotations; `None` for a ReplicaSet a controller owns, never a workload of its own.
    pub view: Option<WorkloadView>,
    /// The controlling owner reference.
    pub owner: Option<OwnerReference>,
    /// What [`crate::controller::deployment_settled`] compares (Deployments and ReplicaSets):
    /// `spec.replicas`, `status.replicas` and the template's digest ([`template_digest`]; the
    /// digest alone: a `PodTemplateSpec` is 1.7 KiB before it holds anything).
    pub replicas: Option<i32>,
    pub status_replicas: i32,
    pub template: Option<String>,
    pub resource_version: Option<String>,
}

impl CachedWorkload {
    fn new<K: kube::Resource<DynamicType = ()>>(
        object: &K,
        view: impl FnOnce() -> WorkloadView,
        replicas: Option<i32>,
        status_replicas: i32,
        template: Option<&PodTemplateSpec>,
    ) -> Self {
        let owner = controller_of(
            object
                .meta()
                .owner_references
                .as_deref()
                .unwrap_or_default(),
        )
        .cloned();
        let is_part = owner.is_some() && K::kind(&()) == "ReplicaSet";
        CachedWorkload {
            view: (!is_part).then(|| {
                let mut view = view();
                view.annotations.retain(|k, _| is_ours(k));
                view
            }),
            owner,
            replicas,
            status_replicas,
            template: template.and_then(digest_of).map(str::to_owned),
            resource_version: object.meta().resource_version.clone(),
        }
    }

    /// The ReplicaSet's fields the webhook's owner chain reads, and its replica counts (not
    /// its template digest: nothing reads it from here, and the webhook asks for every pod).
    pub fn as_replica_set(&self, namespace: &str, name: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: self.replicas,
                ..ReplicaSetSpec::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: self.status_replicas,
                ..ReplicaSetStatus::default()
            }),
        }
    }
}

/// A workload decoded as [`Lean`] (its template reduced to a digest) and kept as a
/// [`CachedWorkload`].
fn workload<'de, K, D>(
    d: D,
    cached: fn(&K) -> CachedWorkload,
) -> Result<Decoded<CachedWorkload>, D::Error>
where
    K: kube::Resource<DynamicType = ()>,
    Lean<K>: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let Lean(object) = Lean::<K>::deserialize(d)?;
    Ok(Decoded {
        filed: Filed::of(object.meta()),
        kept: cached(&object),
    })
}

fn cached_deployment(d: &Deployment) -> CachedWorkload {
    let spec = d.spec.as_ref();
    CachedWorkload::new(
        d,
        || WorkloadView::from_deployment(d),
        spec.and_then(|s| s.replicas),
        d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        spec.map(|s| &s.template),
    )
}

fn cached_replica_set(rs: &ReplicaSet) -> CachedWorkload {
    let spec = rs.spec.as_ref();
    CachedWorkload::new(
        rs,
        || WorkloadView::from_replica_set(rs),
        spec.and_then(|s| s.replicas),
        rs.status.as_ref().map_or(0, |s| s.replicas),
        spec.and_then(|s| s.template.as_ref()),
    )
}

fn cached_stateful_set(s: &StatefulSet) -> CachedWorkload {
    CachedWorkload::new(s, || WorkloadView::from_stateful_set(s), None, 0, None)
}

fn cached_daemon_set(ds: &DaemonSet) -> CachedWorkload {
    CachedWorkload::new(ds, || WorkloadView::from_daemon_set(ds), None, 0, None)
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices.

/// An EndpointSlice as the cache keeps it: the pods it sends traffic to, and the others it
/// lists (what a drain record notes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedSlice {
    /// Pods the slice lists as ready or serving ([`serving_pod`]), sorted, each once.
    pub serving: Vec<Arc<str>>,
    /// Pods it lists only as neither (usually none), sorted, each once.
    pub not_serving: Vec<Arc<str>>,
    pub resource_version: Option<String>,
}

impl CachedSlice {
    /// Whether the slice lists `pod`, in any condition.
    pub fn lists(&self, pod: &str) -> bool {
        let has = |list: &[Arc<str>]| list.binary_search_by(|p| (**p).cmp(pod)).is_ok();
        has(&self.serving) || has(&self.not_serving)
    }
}

wire_struct!(WireSlice, "an EndpointSlice", {
    metadata: WireSliceMeta = "metadata",
    endpoints: Vec<Endpoint> = "endpoints",
});

wire_struct!(WireSliceMeta, "an EndpointSlice's metadata", {
    name: String = "name",
    namespace: String = "namespace",
    resource_version: String = "resourceVersion",
});

fn decode_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<CachedSlice>, D::Error> {
    let slice = WireSlice::deserialize(d)?;
    let meta = slice.metadata.unwrap_or_default();
    let mut serving: Vec<Arc<str>> = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(serving_pod)
        .map(Arc::from)
        .collect();
    serving.sort();
    serving.dedup();
    let mut not_serving: Vec<Arc<str>> = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(endpoint_pod)
        .filter(|pod| serving.binary_search_by(|p| (**p).cmp(pod)).is_err())
        .map(Arc::from)
        .collect();
    not_serving.sort();
    not_serving.dedup();
    Ok(Decoded {
        filed: Filed {
            namespace: meta.namespace,
            name: meta.name.unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
        },
        kept: CachedSlice {
            serving,
            not_serving,
            resource_version: meta.resource_version,
        },
    })
}

// ---------------------------------------------------------------------------------------------

/// One object off the wire: where the cache files it, and what it keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<T> {
    pub filed: Filed,
    pub kept: T,
}

/// A kind the cache watches: how it is decoded, and what is kept of it.
pub trait CacheKind: kube::Resource<DynamicType = ()> + Send + Sync + 'static {
    type Kept: Clone + fmt::Debug + Send + Sync + 'static;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<Self::Kept>, D::Error>;
}

impl CacheKind for Pod {
    type Kept = CachedPod;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<CachedPod>, D::Error> {
        decode_pod(d)
    }
}

impl CacheKind for EndpointSlice {
    type Kept = CachedSlice;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<CachedSlice>, D::Error> {
        decode_slice(d)
    }
}

macro_rules! workload_kind {
    ($($kind:ident: $cached:ident;)*) => {$(
        impl CacheKind for $kind {
            type Kept = CachedWorkload;
            fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<CachedWorkload>, D::Error> {
                workload(d, $cached)
            }
        }
    )*};
}

workload_kind! {
    Deployment: cached_deployment;
    ReplicaSet: cached_replica_set;
    StatefulSet: cached_stateful_set;
    DaemonSet: cached_daemon_set;
}

/// Kinds kept whole, minus `managedFields`: few objects, read as they are.
macro_rules! whole_kind {
    ($($kind:ident;)*) => {$(
        impl CacheKind for $kind {
            type Kept = $kind;
            fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<$kind>, D::Error> {
                let Lean(object) = Lean::<$kind>::deserialize(d)?;
                Ok(Decoded { filed: Filed::of(&object.metadata), kept: object })
            }
        }
    )*};
}

whole_kind! {
    Namespace;
    PodDisruptionBudget;
}

impl CacheKind for InPlaceUpgradePolicy {
    type Kept = InPlaceUpgradePolicy;
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Decoded<Self>, D::Error> {
        let mut policy = InPlaceUpgradePolicy::deserialize(d)?;
        policy.metadata.managed_fields = None;
        Ok(Decoded {
            filed: Filed::of(&policy.metadata),
            kept: policy,
        })
    }
}

#[cfg(test)]
mod tests;
