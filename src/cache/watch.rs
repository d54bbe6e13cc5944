//! The watches: which kinds each process role caches, one driver for all of them, and which
//! workloads each change concerns (what the controller reconciles next).

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::{Deserialize, Deserializer};

use super::index::{Change, Kept, Table};
use super::lean::{CacheKind, CachedPod, CachedSlice, CachedWorkload, Decoded};
use super::{Cache, Tables, read};
use crate::policy::InPlaceUpgradePolicy;
use crate::workload::{WorkloadKey, WorkloadKind};

/// What a process does, and so what it caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The controller (alone, or with the webhook in one process: `run`): everything a
    /// reconcile reads and every change that moves a rollout on.
    Controller,
    /// The admission webhook alone: Namespaces, workloads, ReplicaSets (a pod's owner chain)
    /// and policies — never pods, EndpointSlices or PodDisruptionBudgets, so its memory does
    /// not grow with the pods of the cluster. (The controller's Lease it watches itself.)
    Webhook,
}

/// Every kind a cache can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Namespaces,
    Deployments,
    StatefulSets,
    DaemonSets,
    ReplicaSets,
    Policies,
    Pods,
    EndpointSlices,
    PodDisruptionBudgets,
}

/// What admission reads.
const WEBHOOK: &[Kind] = &[
    Kind::Namespaces,
    Kind::Deployments,
    Kind::StatefulSets,
    Kind::DaemonSets,
    Kind::ReplicaSets,
    Kind::Policies,
];

/// What a reconcile reads, and what moves it on.
const CONTROLLER: &[Kind] = &[
    Kind::Namespaces,
    Kind::Deployments,
    Kind::StatefulSets,
    Kind::DaemonSets,
    Kind::ReplicaSets,
    Kind::Policies,
    Kind::Pods,
    Kind::EndpointSlices,
    Kind::PodDisruptionBudgets,
];

/// Every kind (the controller's are all of them).
const ALL: &[Kind] = CONTROLLER;

impl Role {
    /// The kinds the role watches.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Role::Controller => CONTROLLER,
            Role::Webhook => WEBHOOK,
        }
    }
}

/// Something done with the type of one kind (the only `match` over kinds).
trait ForKind {
    type Out;
    fn run<W: Watched>(self) -> Self::Out;
}

impl Kind {
    fn visit<V: ForKind>(self, v: V) -> V::Out {
        match self {
            Kind::Namespaces => v.run::<Namespace>(),
            Kind::Deployments => v.run::<Deployment>(),
            Kind::StatefulSets => v.run::<StatefulSet>(),
            Kind::DaemonSets => v.run::<DaemonSet>(),
            Kind::ReplicaSets => v.run::<ReplicaSet>(),
            Kind::Policies => v.run::<InPlaceUpgradePolicy>(),
            Kind::Pods => v.run::<Pod>(),
            Kind::EndpointSlices => v.run::<EndpointSlice>(),
            Kind::PodDisruptionBudgets => v.run::<PodDisruptionBudget>(),
        }
    }

    /// The API's name of the kind (`Pod`, `InPlaceUpgradePolicy`, …).
    pub fn name(self) -> String {
        struct Name;
        impl ForKind for Name {
            type Out = String;
            fn run<W: Watched>(self) -> String {
                W::kind(&()).into_owned()
            }
        }
        self.visit(Name)
    }

    pub(super) fn watch(
        self,
        cache: &Cache,
        client: &kube::Client,
    ) -> futures::future::BoxFuture<'static, ()> {
        struct Start<'a>(&'a Cache, &'a kube::Client);
        impl ForKind for Start<'_> {
            type Out = futures::future::BoxFuture<'static, ()>;
            fn run<W: Watched>(self) -> Self::Out {
                drive::<W>(self.0.clone(), self.1.clone())
            }
        }
        self.visit(Start(cache, client))
    }

    pub(super) fn listed(self, cache: &Cache) -> bool {
        struct Listed<'a>(&'a Cache);
        impl ForKind for Listed<'_> {
            type Out = bool;
            fn run<W: Watched>(self) -> bool {
                read(W::table(&self.0.shared.tables)).listed
            }
        }
        self.visit(Listed(cache))
    }
}

/// A kind as the cache watches it: its table, and the workloads a change concerns.
pub(super) trait Watched: CacheKind<Kept: Kept> + Clone + std::fmt::Debug {
    /// Whether a change of this kind can change which namespaces a policy governs.
    const GOVERNANCE: bool = false;
    fn table(tables: &Tables) -> &RwLock<Table<Self::Kept>>;
    fn concerns(cache: &Cache, change: &Change<Self::Kept>, concerned: &mut dyn FnMut(WorkloadKey));
}

type Concerns<T> = fn(&Cache, &Change<T>, &mut dyn FnMut(WorkloadKey));

/// The table: each kind, where it is kept, and what its changes concern.
macro_rules! watched {
    ($($kind:ty $([$governance:literal])? => $table:ident, $concerns:expr;)*) => {$(
        impl Watched for $kind {
            $(const GOVERNANCE: bool = $governance;)?
            fn table(tables: &Tables) -> &RwLock<Table<Self::Kept>> {
                &tables.$table
            }
            fn concerns(
                cache: &Cache,
                change: &Change<Self::Kept>,
                concerned: &mut dyn FnMut(WorkloadKey),
            ) {
                let concerns: Concerns<Self::Kept> = $concerns;
                concerns(cache, change, concerned)
            }
        }
    )*};
}

watched! {
    Namespace [true] => namespaces, |cache, c, to| namespace(cache, &c.name, to);
    Deployment => deployments, |_, c, to| to(own_key(WorkloadKind::Deployment, c));
    StatefulSet => stateful_sets, |_, c, to| to(own_key(WorkloadKind::StatefulSet, c));
    DaemonSet => daemon_sets, |_, c, to| to(own_key(WorkloadKind::DaemonSet, c));
    ReplicaSet => replica_sets, replica_set;
    InPlaceUpgradePolicy [true] => policies, policy;
    Pod => pods, pod;
    EndpointSlice => endpoint_slices, endpoint_slice;
    PodDisruptionBudget => pdbs, |cache, c, to| namespace(cache, &c.namespace, to);
}

/// The objects of a change: what it was, and what it is.
fn both<T>(change: &Change<T>) -> impl Iterator<Item = &T> {
    change.old.iter().chain(change.new.iter()).map(|o| &**o)
}

/// Every workload of a namespace: its labels select policies, its annotations ask for
/// targets or pause; its PodDisruptionBudgets bound every workload in it.
fn namespace(cache: &Cache, name: &str, concerned: &mut dyn FnMut(WorkloadKey)) {
    cache
        .workloads_in(Some(name))
        .into_iter()
        .for_each(concerned);
}

fn own_key(kind: WorkloadKind, change: &Change<CachedWorkload>) -> WorkloadKey {
    WorkloadKey {
        kind,
        namespace: change.namespace.to_string(),
        name: change.name.to_string(),
    }
}

/// A pod moves its workload on.
fn pod(cache: &Cache, change: &Change<CachedPod>, concerned: &mut dyn FnMut(WorkloadKey)) {
    for pod in both(change) {
        if let Some(key) = cache.workload_of(&change.namespace, pod.owner()) {
            concerned(key);
        }
        // A pre-pull pod moves the workload it pulls for on.
        if let Some(key) = pod
            .annotation(crate::prepull::FOR_ANNOTATION)
            .and_then(|w| crate::prepull::workload_of(&change.namespace, w))
        {
            concerned(key);
        }
    }
}

/// A Deployment's ReplicaSet moves the Deployment on (its rollout settles); a ReplicaSet of
/// its own is a workload.
fn replica_set(_: &Cache, change: &Change<CachedWorkload>, concerned: &mut dyn FnMut(WorkloadKey)) {
    for rs in both(change) {
        match &rs.owner {
            Some(o) if o.kind == "Deployment" => concerned(WorkloadKey {
                kind: WorkloadKind::Deployment,
                namespace: change.namespace.to_string(),
                name: o.name.clone(),
            }),
            Some(_) => {}
            None => concerned(own_key(WorkloadKind::ReplicaSet, change)),
        }
    }
}

/// A drained pod leaving a slice (or a pod re-joining one) moves its workload on: the pods
/// whose serving changed.
fn endpoint_slice(
    cache: &Cache,
    change: &Change<CachedSlice>,
    concerned: &mut dyn FnMut(WorkloadKey),
) {
    let serving =
        |s: &Option<Arc<CachedSlice>>| s.as_ref().map(|s| s.serving.clone()).unwrap_or_default();
    let (old, new) = (serving(&change.old), serving(&change.new));
    let changed: Vec<&Arc<str>> = old
        .iter()
        .filter(|p| new.binary_search(p).is_err())
        .chain(new.iter().filter(|p| old.binary_search(p).is_err()))
        .collect();
    let owners: Vec<_> = {
        let pods = read(&cache.shared.tables.pods);
        changed
            .iter()
            .filter_map(|p| {
                pods.get(&change.namespace, p)
                    .map(|pod| pod.owner().cloned())
            })
            .collect()
    };
    for owner in owners {
        if let Some(key) = cache.workload_of(&change.namespace, owner.as_ref()) {
            concerned(key);
        }
    }
}

/// Our own status writes change nothing that governs (see `policy_watch`): only the
/// workloads of the namespaces a changed selector selected, or selects now.
fn policy(
    cache: &Cache,
    change: &Change<InPlaceUpgradePolicy>,
    concerned: &mut dyn FnMut(WorkloadKey),
) {
    let (policy, deleted) = match (&change.new, &change.old) {
        (Some(new), _) => (new, false),
        (None, Some(old)) => (old, true),
        (None, None) => return,
    };
    let affected = {
        let mut seen = cache
            .shared
            .policies_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.change(policy, deleted)
    };
    let Some(affected) = affected else { return };
    let namespaces: Vec<String> = read(&cache.shared.tables.namespaces)
        .all()
        .filter(|(_, _, ns)| {
            affected.namespace(ns.metadata.labels.as_ref().unwrap_or(&Default::default()))
        })
        .map(|(_, name, _)| name.to_string())
        .collect();
    for ns in namespaces {
        namespace(cache, &ns, concerned);
    }
}

/// A kind as the watch decodes it ([`CacheKind::decode`]), with the resourceVersion the
/// watcher resumes from.
#[derive(Clone, Debug)]
struct Wire<W: CacheKind> {
    meta: ObjectMeta,
    decoded: Decoded<W::Kept>,
}

impl<W: CacheKind> Resource for Wire<W> {
    type DynamicType = ();
    type Scope = W::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        W::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        W::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        W::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        W::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

impl<'de, W: CacheKind> Deserialize<'de> for Wire<W> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let decoded = W::decode(d)?;
        Ok(Wire {
            meta: ObjectMeta {
                resource_version: decoded.filed.resource_version.clone(),
                ..ObjectMeta::default()
            },
            decoded,
        })
    }
}

/// LIST pages: at most this many objects decoded at once during a (re-)list. Workloads carry
/// their whole pod template (with its managedFields) and keep a digest of it: pages of 500 of
/// them left the webhook, which lists nothing else of size, 39.8 MiB at 10,000 pods against
/// 28.7 with pages of 100 (peak 58.9 against 31.2; docs/benchmarks.md, "Memory at 10,000
/// pods"). Pods keep more of what they carry and list 500 at a time: pages of 100 saved the
/// controller no settled memory and cost its initial sync about a second at 10,000 pods.
fn page_size<W: Watched>() -> u32 {
    if WorkloadKind::from_kind(&W::kind(&())).is_some() {
        100
    } else {
        500
    }
}

/// A watch event with its object turned into another (or an error).
fn map_event<A, B, E>(
    event: watcher::Event<A>,
    f: impl FnOnce(A) -> Result<B, E>,
) -> Result<watcher::Event<B>, E> {
    Ok(match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)?),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)?),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// Runs one watch into its table, forever (the watcher retries with backoff on errors and
/// resumes from the last resourceVersion, or re-lists).
fn drive<W: Watched>(
    cache: Cache,
    client: kube::Client,
) -> futures::future::BoxFuture<'static, ()> {
    let api = Api::<Wire<W>>::all(client);
    let stream =
        watcher(api, watcher::Config::default().page_size(page_size::<W>())).default_backoff();
    Box::pin(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let Ok(event) =
                        map_event(event, |w| Ok::<_, std::convert::Infallible>(w.decoded));
                    cache.apply::<W>(event)
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = %W::kind(&()), "watch failed; retrying")
                }
            }
        }
    })
}

/// A fed object that is not what its kind says.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the cache keeps no {0}")]
    Kind(String),
    #[error("cannot decode the {kind}: {source}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Cache {
    /// Applies a watch event by hand, as a watch would deliver it (the object goes through
    /// the same lean decode): a cache for tests, without a cluster. Feed each kind an
    /// `Init`…`InitDone` (or just `InitDone`) to mark it listed.
    pub fn feed<K>(&self, event: watcher::Event<K>) -> Result<(), FeedError>
    where
        K: serde::Serialize + Resource<DynamicType = ()>,
    {
        struct Feed<'a>(&'a Cache, watcher::Event<serde_json::Value>);
        impl ForKind for Feed<'_> {
            type Out = Result<(), FeedError>;
            fn run<W: Watched>(self) -> Self::Out {
                let decode = |v: serde_json::Value| {
                    W::decode(v).map_err(|source| FeedError::Decode {
                        kind: W::kind(&()).into_owned(),
                        source,
                    })
                };
                self.0.apply::<W>(map_event(self.1, decode)?);
                Ok(())
            }
        }
        let kind = K::kind(&());
        let Some(of) = ALL.iter().find(|k| k.name() == kind) else {
            return Err(FeedError::Kind(kind.into_owned()));
        };
        let json = |o: K| {
            serde_json::to_value(o).map_err(|source| FeedError::Decode {
                kind: kind.to_string(),
                source,
            })
        };
        of.visit(Feed(self, map_event(event, json)?))
    }
}
