//! The workloads we roll: Deployments, StatefulSets, DaemonSets and standalone ReplicaSets,
//! seen through one small view so the reconciler treats them alike.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hasher;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::ResourceExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
        }
    }

    /// The workload kind named `kind` (an owner reference's, an object's), if it is one.
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Deployment" => Some(WorkloadKind::Deployment),
            "StatefulSet" => Some(WorkloadKind::StatefulSet),
            "DaemonSet" => Some(WorkloadKind::DaemonSet),
            "ReplicaSet" => Some(WorkloadKind::ReplicaSet),
            _ => None,
        }
    }
}

/// Identifies one workload: the unit the controller reconciles and reports on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

#[cfg(test)]
impl WorkloadKey {
    /// `Deployment shop/<name>`: the workload the controller's unit tests use.
    pub fn test_deployment(name: &str) -> Self {
        WorkloadKey {
            kind: WorkloadKind::Deployment,
            namespace: "shop".into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// What the reconciler needs of a workload, whatever its kind.
#[derive(Clone, Debug)]
pub struct WorkloadView {
    pub key: WorkloadKey,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Replicas the workload asks for (DaemonSet: the nodes it should run on).
    pub desired_replicas: i32,
    pub selector: Option<LabelSelector>,
    /// False while the workload's own controller is mid-rollout (template change being rolled
    /// out): we leave it alone until it settles so two rollouts never interleave.
    pub settled: bool,
}

fn generation_observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    match (generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

impl WorkloadView {
    pub fn from_deployment(d: &Deployment) -> Self {
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        // `kubectl rollout status`'s test, from the Deployment alone. The controller's cache
        // refines it with the ReplicaSets ([`deployment_settled`]): our own annotation writes
        // bump the generation.
        let settled = generation_observed(d.metadata.generation, status.observed_generation)
            && status.updated_replicas.unwrap_or(0) >= desired
            && status.replicas.unwrap_or(0) <= status.updated_replicas.unwrap_or(0);
        Self::new(
            WorkloadKind::Deployment,
            d,
            desired,
            d.spec.as_ref().map(|s| s.selector.clone()),
            settled,
        )
    }

    pub fn from_stateful_set(s: &StatefulSet) -> Self {
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = s.status.clone().unwrap_or_default();
        let revisions_match = match (&status.current_revision, &status.update_revision) {
            (Some(c), Some(u)) => c == u,
            _ => true,
        };
        let settled = generation_observed(s.metadata.generation, status.observed_generation)
            && revisions_match
            && status.updated_replicas.unwrap_or(0) >= desired.min(status.replicas);
        Self::new(
            WorkloadKind::StatefulSet,
            s,
            desired,
            s.spec.as_ref().map(|s| s.selector.clone()),
            settled,
        )
    }

    pub fn from_daemon_set(ds: &DaemonSet) -> Self {
        let status = ds.status.clone().unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let settled = generation_observed(ds.metadata.generation, status.observed_generation)
            && status.updated_number_scheduled.unwrap_or(0) >= desired;
        Self::new(
            WorkloadKind::DaemonSet,
            ds,
            desired,
            ds.spec.as_ref().map(|s| s.selector.clone()),
            settled,
        )
    }

    pub fn from_replica_set(rs: &ReplicaSet) -> Self {
        let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = rs.status.clone().unwrap_or_default();
        let settled = generation_observed(rs.metadata.generation, status.observed_generation);
        Self::new(
            WorkloadKind::ReplicaSet,
            rs,
            desired,
            rs.spec.as_ref().map(|s| s.selector.clone()),
            settled,
        )
    }

    fn new<K: ResourceExt>(
        kind: WorkloadKind,
        obj: &K,
        desired_replicas: i32,
        selector: Option<LabelSelector>,
        settled: bool,
    ) -> Self {
        WorkloadView {
            key: WorkloadKey {
                kind,
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
            },
            uid: obj.uid().unwrap_or_default(),
            labels: obj.labels().clone(),
            annotations: obj.annotations().clone(),
            desired_replicas,
            selector,
            settled,
        }
    }
}

impl WorkloadView {
    /// A reference for Events about the workload.
    pub fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(self.key.kind.as_str().into()),
            namespace: Some(self.key.namespace.clone()),
            name: Some(self.key.name.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

/// Whether a Deployment's own rollout is done, judged from its ReplicaSets rather than from its
/// generation. The API server bumps a Deployment's generation on every annotation change (the
/// Deployment controller copies annotations onto ReplicaSets), so each of our status writes
/// would otherwise make the Deployment look mid-rollout until its controller catches up. As
/// the Deployment controller's `EqualIgnoreHash` does: the ReplicaSet whose pod template equals
/// the Deployment's (ignoring the `pod-template-hash` label) wants every desired replica, and
/// every other ReplicaSet of the Deployment is scaled to zero with no pods left.
pub fn deployment_settled(d: &Deployment, replica_sets: &[&ReplicaSet]) -> bool {
    let Some(spec) = d.spec.as_ref() else {
        return false;
    };
    // Compared in place (every reconcile of a Deployment runs this; serialising two Istio
    // pod templates per ReplicaSet was a tenth of the controller's CPU at sync): the specs
    // as they are, the metadata without the hash label. (Works alike on full templates and
    // on the digests the controller's cache keeps instead: [`template_digest`].)
    let wanted = &spec.template;
    let wanted_meta = without_hash(wanted.metadata.as_ref());
    replica_sets_settled(
        spec.replicas.unwrap_or(1),
        replica_sets.iter().map(|rs| ReplicaSetShape {
            current: rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| {
                    t.spec == wanted.spec && without_hash(t.metadata.as_ref()) == wanted_meta
                }),
            replicas: rs.spec.as_ref().and_then(|s| s.replicas),
            status_replicas: rs.status.as_ref().map_or(0, |s| s.replicas),
        }),
    )
}

/// What [`deployment_settled`] reads of one ReplicaSet.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaSetShape {
    /// Its pod template is the Deployment's (`pod-template-hash` aside).
    pub current: bool,
    /// `spec.replicas` (absent: 1).
    pub replicas: Option<i32>,
    /// `status.replicas`.
    pub status_replicas: i32,
}

/// [`deployment_settled`]'s rule for a Deployment that wants `desired` replicas, on its
/// ReplicaSets as the caller keeps them (the caches compare their template digests in place,
/// without building objects per call): the current one wants every desired replica, and every
/// other is scaled to zero with no pods left.
pub fn replica_sets_settled(
    desired: i32,
    replica_sets: impl IntoIterator<Item = ReplicaSetShape>,
) -> bool {
    let mut current = 0;
    for rs in replica_sets {
        let wants = if rs.current {
            (desired, desired)
        } else {
            (0, 0)
        };
        if (rs.replicas.unwrap_or(1), rs.status_replicas) != wants {
            return false;
        }
        current += usize::from(rs.current);
    }
    current == 1
}

/// What a cached Deployment or ReplicaSet keeps of its pod template (an Istio-injected
/// template is tens of KiB decoded, and the controller keeps thousands): a template with
/// only this annotation, a digest of the template that [`deployment_settled`] compares as it
/// compares templates — equal exactly when the templates are, `pod-template-hash` aside.
pub const TEMPLATE_DIGEST_ANNOTATION: &str = "inplace-upgrade.io/cached-template-digest";

/// `template` reduced to its digest (see [`TEMPLATE_DIGEST_ANNOTATION`]).
pub fn template_digest(template: &PodTemplateSpec) -> PodTemplateSpec {
    /// Hashes what serde writes, without building the JSON.
    struct Hashing(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Default::default());
    // Serialising a k8s-openapi value to a writer that never fails cannot fail (its maps
    // have string keys); were it to, the digest would still be the same for equal templates.
    let _ = serde_json::to_writer(
        &mut hashing,
        &(without_hash(template.metadata.as_ref()), &template.spec),
    );
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                TEMPLATE_DIGEST_ANNOTATION.to_string(),
                format!("{:016x}", hashing.0.finish()),
            )])),
            ..ObjectMeta::default()
        }),
        spec: None,
    }
}

/// The digest a [`template_digest`] template carries (what a cache keeps of it).
pub fn digest_of(template: &PodTemplateSpec) -> Option<&str> {
    template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_DIGEST_ANNOTATION)
        .map(String::as_str)
}

/// A template's metadata without the `pod-template-hash` label the Deployment controller adds
/// to its ReplicaSets' templates.
fn without_hash(meta: Option<&ObjectMeta>) -> ObjectMeta {
    let mut m = meta.cloned().unwrap_or_default();
    if let Some(labels) = m.labels.as_mut() {
        labels.remove("pod-template-hash");
    }
    m
}

/// The controlling owner reference of an object, if any.
pub fn controller_of(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true))
}

/// Where a pod's controlling owner chain leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// One of our workloads (look it up: it may not be known yet).
    Workload(WorkloadKey),
    /// A ReplicaSet that is not known (yet), whose name and the pod's `pod-template-hash` label
    /// do not name a Deployment either.
    UnknownReplicaSet(String),
    /// Nothing we roll: a bare pod, a Job's pod, a pod of a ReplicaSet that another controller
    /// owns (e.g. an Argo Rollout).
    NotOurs,
}

/// The workload a pod belongs to, from its controlling owner reference (`owners`, in
/// `namespace`) and its `labels`; the controller and the webhook both go through here.
///
/// A pod of a ReplicaSet that a Deployment controls belongs to the Deployment (the Deployment
/// controller copies the Deployment's annotations onto its ReplicaSets, so such a ReplicaSet is
/// never a workload of its own). `replica_set` looks a ReplicaSet up by name: `None` when it is
/// not known (yet), else its controlling owner reference (`Some(None)`: a ReplicaSet of its
/// own). A Deployment's new ReplicaSet creates its first pods right after it is created,
/// possibly before a watch delivers it: its name is `<deployment>-<pod-template-hash>` and the
/// pod carries that hash label, which names the Deployment.
pub fn owning_workload(
    namespace: &str,
    owners: &[OwnerReference],
    labels: &BTreeMap<String, String>,
    replica_set: impl Fn(&str) -> Option<Option<OwnerReference>>,
) -> Owner {
    let Some(owner) = controller_of(owners) else {
        return Owner::NotOurs;
    };
    let key = |kind, name: &str| {
        Owner::Workload(WorkloadKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    };
    match WorkloadKind::from_kind(&owner.kind) {
        Some(WorkloadKind::ReplicaSet) => match replica_set(&owner.name) {
            Some(Some(rs_owner)) if rs_owner.kind == "Deployment" => {
                key(WorkloadKind::Deployment, &rs_owner.name)
            }
            Some(Some(_)) => Owner::NotOurs,
            Some(None) => key(WorkloadKind::ReplicaSet, &owner.name),
            None => labels
                .get("pod-template-hash")
                .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                .and_then(|prefix| prefix.strip_suffix('-'))
                .filter(|deployment| !deployment.is_empty())
                .map_or_else(
                    || Owner::UnknownReplicaSet(format!("ReplicaSet {namespace}/{}", owner.name)),
                    |deployment| key(WorkloadKind::Deployment, deployment),
                ),
        },
        // Pods are never owned by a Deployment directly.
        Some(WorkloadKind::Deployment) | None => Owner::NotOurs,
        Some(kind) => key(kind, &owner.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owned_by(kind: &str, name: &str) -> Vec<OwnerReference> {
        vec![owner(kind, name)]
    }

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn key(kind: WorkloadKind, name: &str) -> Owner {
        Owner::Workload(WorkloadKey {
            kind,
            namespace: "ns".into(),
            name: name.into(),
        })
    }

    #[test]
    fn a_pod_belongs_to_the_workload_at_the_top_of_its_owner_chain() {
        let deployment_rs = |_: &str| Some(Some(owner("Deployment", "web")));
        let standalone_rs = |_: &str| Some(None);
        let unknown_rs = |_: &str| None;
        let rollout_rs = |_: &str| Some(Some(owner("Rollout", "r")));
        let no_labels = BTreeMap::new();
        let hashed = BTreeMap::from([("pod-template-hash".to_string(), "5d4f8c7b9".to_string())]);
        /// How the test looks a ReplicaSet up.
        type Lookup<'a> = &'a dyn Fn(&str) -> Option<Option<OwnerReference>>;
        let of = |owners: &[OwnerReference], labels: &BTreeMap<String, String>, rs: Lookup| {
            owning_workload("ns", owners, labels, rs)
        };
        /// Owners, labels, the ReplicaSet lookup, the expected owner, why.
        type Case<'a> = (
            Vec<OwnerReference>,
            &'a BTreeMap<String, String>,
            Lookup<'a>,
            Owner,
            &'a str,
        );
        let cases: [Case; 10] = [
            (
                owned_by("ReplicaSet", "web-1"),
                &no_labels,
                &deployment_rs,
                key(WorkloadKind::Deployment, "web"),
                "a Deployment's ReplicaSet",
            ),
            (
                owned_by("ReplicaSet", "rs"),
                &no_labels,
                &standalone_rs,
                key(WorkloadKind::ReplicaSet, "rs"),
                "a ReplicaSet of its own",
            ),
            (
                owned_by("ReplicaSet", "rs"),
                &no_labels,
                &rollout_rs,
                Owner::NotOurs,
                "another controller's ReplicaSet",
            ),
            (
                owned_by("ReplicaSet", "web-5d4f8c7b9"),
                &hashed,
                &unknown_rs,
                key(WorkloadKind::Deployment, "web"),
                "a new ReplicaSet named by its hash",
            ),
            (
                owned_by("ReplicaSet", "web-5d4f8c7b9"),
                &no_labels,
                &unknown_rs,
                Owner::UnknownReplicaSet("ReplicaSet ns/web-5d4f8c7b9".into()),
                "unknown, no hash label",
            ),
            (
                owned_by("ReplicaSet", "5d4f8c7b9"),
                &hashed,
                &unknown_rs,
                Owner::UnknownReplicaSet("ReplicaSet ns/5d4f8c7b9".into()),
                "the hash alone names nothing",
            ),
            (
                owned_by("StatefulSet", "db"),
                &no_labels,
                &unknown_rs,
                key(WorkloadKind::StatefulSet, "db"),
                "a StatefulSet",
            ),
            (
                owned_by("DaemonSet", "agent"),
                &no_labels,
                &unknown_rs,
                key(WorkloadKind::DaemonSet, "agent"),
                "a DaemonSet",
            ),
            (
                owned_by("Job", "j"),
                &no_labels,
                &unknown_rs,
                Owner::NotOurs,
                "a Job",
            ),
            (
                vec![],
                &no_labels,
                &unknown_rs,
                Owner::NotOurs,
                "a bare pod",
            ),
        ];
        for (owners, labels, rs, expected, why) in cases {
            assert_eq!(of(&owners, labels, rs), expected, "{why}");
        }
        // Only the controlling owner counts.
        let mut not_controlling = owner("StatefulSet", "db");
        not_controlling.controller = None;
        assert_eq!(
            of(&[not_controlling], &no_labels, &unknown_rs),
            Owner::NotOurs
        );
    }

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("deployment literal")
    }

    #[test]
    fn a_deployment_is_settled_only_when_its_own_rollout_is_done() {
        let cases = [
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3}),
                true,
                "done",
            ),
            (
                json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3}),
                false,
                "new spec not seen yet",
            ),
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2}),
                false,
                "replicas on the old template",
            ),
            (
                json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3}),
                false,
                "an old replica still runs",
            ),
            (json!({}), false, "no status yet"),
        ];
        for (status, settled, why) in cases {
            assert_eq!(
                WorkloadView::from_deployment(&deployment(2, status)).settled,
                settled,
                "{why}"
            );
        }
    }

    #[test]
    fn a_daemon_set_is_settled_when_every_node_runs_the_newest_template() {
        let ds = |updated: i32| -> DaemonSet {
            serde_json::from_value(json!({
                "metadata": {"name": "agent", "namespace": "ns", "generation": 1},
                "spec": {"selector": {}, "template": {}},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                           "numberMisscheduled": 0, "numberReady": 2, "updatedNumberScheduled": updated},
            }))
            .expect("daemonset literal")
        };
        assert!(WorkloadView::from_daemon_set(&ds(2)).settled);
        assert!(!WorkloadView::from_daemon_set(&ds(1)).settled);
        assert_eq!(WorkloadView::from_daemon_set(&ds(2)).desired_replicas, 2);
    }

    fn replica_set(hash: &str, image: &str, replicas: i32, running: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": "ns"},
            "spec": {"replicas": replicas, "selector": {},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}},
            "status": {"replicas": running},
        }))
        .expect("replicaset literal")
    }

    fn web(image: &str, replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 7},
            "spec": {"replicas": replicas, "selector": {},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}},
            // A stale observedGeneration, as after an annotation change: it must not matter.
            "status": {"observedGeneration": 6},
        }))
        .expect("deployment literal")
    }

    #[test]
    fn a_deployment_is_settled_by_its_replica_sets_not_its_generation() {
        let (v1, v2) = ("nginx:1", "nginx:2");
        let cases: [(Deployment, Vec<ReplicaSet>, bool, &str); 6] = [
            (
                web(v1, 3),
                vec![replica_set("a", v1, 3, 3)],
                true,
                "one ReplicaSet, all replicas",
            ),
            (
                web(v1, 3),
                vec![replica_set("a", v1, 3, 3), replica_set("o", v2, 0, 0)],
                true,
                "old one scaled down",
            ),
            (
                web(v2, 3),
                vec![replica_set("a", v1, 3, 3)],
                false,
                "template changed, no new ReplicaSet yet",
            ),
            (
                web(v2, 3),
                vec![replica_set("a", v1, 1, 1), replica_set("b", v2, 3, 3)],
                false,
                "old pods left",
            ),
            (
                web(v2, 3),
                vec![replica_set("a", v1, 0, 1), replica_set("b", v2, 3, 3)],
                false,
                "an old pod terminating",
            ),
            (
                web(v1, 4),
                vec![replica_set("a", v1, 3, 3)],
                false,
                "being scaled",
            ),
        ];
        for (d, rss, settled, why) in cases {
            let refs: Vec<&ReplicaSet> = rss.iter().collect();
            assert_eq!(deployment_settled(&d, &refs), settled, "{why}");
            // The same with the digests the controller's cache keeps instead of templates.
            let mut d = d;
            let spec = d.spec.as_mut().unwrap();
            spec.template = template_digest(&spec.template);
            let rss: Vec<ReplicaSet> = rss
                .into_iter()
                .map(|mut rs| {
                    let t = rs.spec.as_mut().unwrap().template.as_mut().unwrap();
                    *t = template_digest(t);
                    rs
                })
                .collect();
            let refs: Vec<&ReplicaSet> = rss.iter().collect();
            assert_eq!(deployment_settled(&d, &refs), settled, "digests: {why}");
        }
    }

    #[test]
    fn template_digests_differ_where_templates_do() {
        let template = |image: &str, labels: serde_json::Value| -> PodTemplateSpec {
            serde_json::from_value(json!({"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]}}))
            .expect("template literal")
        };
        let web = template("nginx:1", json!({"app": "web"}));
        let digest = |t: &PodTemplateSpec| template_digest(t).metadata.unwrap().annotations;
        assert_eq!(
            digest(&web),
            digest(&template(
                "nginx:1",
                json!({"app": "web", "pod-template-hash": "x"})
            ))
        );
        assert_ne!(
            digest(&web),
            digest(&template("nginx:2", json!({"app": "web"})))
        );
        assert_ne!(
            digest(&web),
            digest(&template("nginx:1", json!({"app": "api"})))
        );
        assert!(template_digest(&web).spec.is_none());
    }
}
