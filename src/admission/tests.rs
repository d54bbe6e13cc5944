//! Table tests of the admission decisions on AdmissionReviews built from the real
//! Istio-injected fixtures, over an in-memory [`ClusterView`].

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::configuration::{self, ConfigurationOptions, Endpoint};
use super::*;
use crate::admission::pod::AdmittedPod;
use crate::workload::WorkloadView;
use crate::{READINESS_GATE, TARGETS_ANNOTATION};
use inplace_upgrade_webhook::{AdmissionRequest, AdmissionResponse, Decoded, decode_review_as};

const NS: &str = "dev";
const PROXY_OLD: &str = "registry.istio.io/testing/proxyv2:latest";
const PROXY_NEW: &str = "registry.istio.io/testing/proxyv2:1.24.2";

#[derive(Default, Clone)]
struct Fake {
    namespaces: Vec<Namespace>,
    replica_sets: Vec<ReplicaSet>,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    daemon_sets: Vec<DaemonSet>,
    policies: Vec<InPlaceUpgradePolicy>,
    alive: bool,
    unsynced: bool,
}

impl ClusterView for Fake {
    fn synced(&self) -> bool {
        !self.unsynced
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .iter()
            .find(|n| n.name_any() == name)
            .cloned()
            .map(Arc::new)
    }
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .iter()
            .find(|r| r.name_any() == name && r.namespace().as_deref() == Some(namespace))
            .cloned()
            .map(Arc::new)
    }
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.workloads_in(&key.namespace)
            .into_iter()
            .find(|w| &w.key == key)
    }
    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView> {
        let ns = |o: &dyn ResourceExtNs| o.ns() == Some(namespace.to_owned());
        let mut out = Vec::new();
        out.extend(
            self.deployments
                .iter()
                .filter(|d| ns(*d))
                .map(WorkloadView::from_deployment),
        );
        out.extend(
            self.stateful_sets
                .iter()
                .filter(|d| ns(*d))
                .map(WorkloadView::from_stateful_set),
        );
        out.extend(
            self.daemon_sets
                .iter()
                .filter(|d| ns(*d))
                .map(WorkloadView::from_daemon_set),
        );
        out.extend(
            self.replica_sets
                .iter()
                .filter(|r| {
                    ns(*r)
                        && !r
                            .owner_references()
                            .iter()
                            .any(|o| o.controller == Some(true))
                })
                .map(WorkloadView::from_replica_set),
        );
        out
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.policies.clone()
    }
    fn controller_alive(&self) -> bool {
        self.alive
    }
}

trait ResourceExtNs {
    fn ns(&self) -> Option<String>;
}
impl<K: ResourceExt> ResourceExtNs for K {
    fn ns(&self) -> Option<String> {
        self.namespace()
    }
}

fn settings() -> Settings {
    Settings {
        controller_namespace: "inplace-upgrade-system".into(),
    }
}

fn fixture(file: &str) -> Vec<Value> {
    let path = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/istio"
    ))
    .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read fixture {}: {e}; the Istio fixtures must be at <repo>/../shared/fixtures/istio",
            path.display()
        )
    });
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("fixture is YAML"))
        .collect()
}

/// The first `kind` object of a fixture, in namespace `dev`, annotated with `annotation`.
fn workload(file: &str, kind: &str, annotation: Option<&str>) -> Value {
    let mut w = fixture(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{file} has no {kind}"));
    w["metadata"]["namespace"] = json!(NS);
    w["metadata"]["uid"] = json!(format!("uid-{kind}"));
    if let Some(a) = annotation {
        w["metadata"]["annotations"] = json!({ TARGETS_ANNOTATION: a });
    }
    w
}

fn obj<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("object literal matches its type")
}

fn namespace(annotations: Value) -> Namespace {
    obj(
        json!({"metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}, "annotations": annotations}}),
    )
}

fn policy(name: &str, spec: Value) -> InPlaceUpgradePolicy {
    let mut full =
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}});
    if let (Some(a), Value::Object(b)) = (full.as_object_mut(), spec) {
        a.extend(b);
    }
    obj(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": name}, "spec": full,
    }))
}

fn base_view() -> Fake {
    Fake {
        namespaces: vec![namespace(json!({}))],
        policies: vec![policy("mesh", json!({}))],
        alive: true,
        ..Fake::default()
    }
}

/// The pod the workload's controller would create: its template, `generateName`, no name, no
/// namespace in metadata, a controller owner reference.
fn pod_of(template_owner: &Value, owner_kind: &str, owner_name: &str) -> Value {
    let mut pod = template_owner["spec"]["template"].clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["generateName"] = json!(format!("{owner_name}-"));
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name, "uid": "u", "controller": true
    }]);
    pod
}

/// The AdmissionReview body the API server would send.
fn review_body(
    kind: &str,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Vec<u8> {
    let (group, version, resource) = match kind {
        "Pod" => ("", "v1", "pods"),
        "Namespace" => ("", "v1", "namespaces"),
        "InPlaceUpgradePolicy" => ("inplace-upgrade.io", "v1alpha1", "inplaceupgradepolicies"),
        "Deployment" => ("apps", "v1", "deployments"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "DaemonSet" => ("apps", "v1", "daemonsets"),
        _ => ("apps", "v1", "replicasets"),
    };
    let namespaced = !matches!(kind, "Namespace" | "InPlaceUpgradePolicy");
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": if namespaced { json!(NS) } else { Value::Null },
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": old.cloned().unwrap_or(Value::Null),
            "dryRun": dry_run,
        }
    });
    serde_json::to_vec(&body).expect("json")
}

/// The review as the transport decodes it for a handler of `K` objects.
fn review<K: kube::Resource + serde::de::DeserializeOwned>(
    kind: &str,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> AdmissionRequest<K> {
    let body = review_body(kind, operation, object, old, dry_run);
    match decode_review_as::<K>(Some("application/json"), &body) {
        Ok(Decoded::Request(request)) => request,
        Ok(Decoded::UnreadableObject { error, .. }) => panic!("unreadable object: {error}"),
        Err(e) => panic!("not a valid AdmissionReview: {e}"),
    }
}

fn patch_of(response: &AdmissionResponse) -> Option<json_patch::Patch> {
    response
        .patch
        .as_ref()
        .map(|p| serde_json::from_slice(p).expect("the patch is a JSON patch"))
}

fn mutated(pod: &Value, response: &AdmissionResponse) -> Value {
    let mut pod = pod.clone();
    if let Some(patch) = patch_of(response) {
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    }
    pod
}

fn container_image(pod: &Value, field: &str, name: &str) -> Option<String> {
    pod["spec"][field]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["image"].as_str().map(str::to_owned))
}

fn gated(pod: &Value) -> bool {
    pod["spec"]["readinessGates"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g["conditionType"] == READINESS_GATE))
}

/// The pod mutation as the transport runs it: the review decoded into an `AdmittedPod`, or the answer
/// for a pod that is not one.
fn mutate(view: &Fake, pod: &Value) -> AdmissionResponse {
    let body = review_body("Pod", "CREATE", pod, None, false);
    match decode_review_as::<AdmittedPod>(Some("application/json"), &body) {
        Ok(Decoded::Request(request)) => mutate::mutate_pod(&request, view, &settings()),
        Ok(Decoded::UnreadableObject { request, error }) => {
            mutate::unreadable_pod(&request, &error)
        }
        Err(e) => panic!("not a valid AdmissionReview: {e}"),
    }
}

/// Every workload kind, native and regular sidecar: the view with that workload and the pod its
/// controller creates.
fn every_kind(annotation: &str) -> Vec<(String, Fake, Value, &'static str)> {
    let cases = [
        ("hello-multi.yaml.injected", "Deployment", "initContainers"),
        (
            "hello-old-version.yaml.injected",
            "Deployment",
            "containers",
        ),
        ("statefulset.yaml.injected", "StatefulSet", "initContainers"),
        (
            "statefulset-old-version.yaml.injected",
            "StatefulSet",
            "containers",
        ),
        ("daemonset.yaml.injected", "DaemonSet", "initContainers"),
        (
            "daemonset-old-version.yaml.injected",
            "DaemonSet",
            "containers",
        ),
        ("frontend.yaml.injected", "ReplicaSet", "initContainers"),
        (
            "hello-old-version.yaml.injected",
            "ReplicaSet",
            "containers",
        ),
    ];
    let mut out = Vec::new();
    for (file, kind, field) in cases {
        let mut view = base_view();
        let (pod, label) = match kind {
            "Deployment" => {
                let d = workload(file, "Deployment", Some(annotation));
                let name = d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let rs_name = format!("{name}-5d4f8c7b9");
                let mut rs = d.clone();
                rs["kind"] = json!("ReplicaSet");
                rs["metadata"]["name"] = json!(rs_name);
                rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": "u", "controller": true}]);
                view.replica_sets.push(obj(rs));
                view.deployments.push(obj(d.clone()));
                (
                    pod_of(&d, "ReplicaSet", &rs_name),
                    format!("{file} Deployment"),
                )
            }
            "StatefulSet" => {
                let s = workload(file, "StatefulSet", Some(annotation));
                view.stateful_sets.push(obj(s.clone()));
                let name = s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (
                    pod_of(&s, "StatefulSet", &name),
                    format!("{file} StatefulSet"),
                )
            }
            "DaemonSet" => {
                let s = workload(file, "DaemonSet", Some(annotation));
                view.daemon_sets.push(obj(s.clone()));
                let name = s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (pod_of(&s, "DaemonSet", &name), format!("{file} DaemonSet"))
            }
            _ => {
                let mut rs = workload(file, "Deployment", Some(annotation));
                rs["kind"] = json!("ReplicaSet");
                rs["metadata"]["name"] = json!("standalone");
                view.replica_sets.push(obj(rs.clone()));
                (
                    pod_of(&rs, "ReplicaSet", "standalone"),
                    format!("{file} standalone ReplicaSet"),
                )
            }
        };
        out.push((label, view, pod, field));
    }
    out
}

#[test]
fn a_new_pod_of_every_workload_kind_gets_the_target_and_the_gate() {
    for (label, view, pod, field) in every_kind(&format!("istio-proxy={PROXY_NEW}")) {
        let response = mutate(&view, &pod);
        assert!(response.allowed, "{label}");
        assert_eq!(response.warnings, None, "{label}");
        let after = mutated(&pod, &response);
        assert_eq!(
            container_image(&after, field, "istio-proxy").as_deref(),
            Some(PROXY_NEW),
            "{label}: istio-proxy in {field}"
        );
        assert_eq!(
            container_image(&after, "initContainers", "istio-init").as_deref(),
            Some(PROXY_OLD),
            "{label}: the run-to-completion istio-init is left alone"
        );
        assert!(gated(&after), "{label}: gate injected");
        // Reinvocation on the mutated pod changes nothing.
        let again = mutate(&view, &after);
        assert!(
            again.allowed && again.patch.is_none(),
            "{label}: reinvocation is a no-op"
        );
    }
}

#[test]
fn a_short_form_target_keeps_the_registry_and_repository() {
    for (label, view, pod, field) in every_kind("istio-proxy=proxyv2:1.25.0") {
        let after = mutated(&pod, &mutate(&view, &pod));
        assert_eq!(
            container_image(&after, field, "istio-proxy").as_deref(),
            Some("registry.istio.io/testing/proxyv2:1.25.0"),
            "{label}"
        );
    }
}

#[test]
fn istio_injecting_after_us_is_handled_on_reinvocation() {
    let (_, mut view, pod, _) = every_kind("x=y:1").remove(0);
    view.deployments[0].metadata.annotations = None;
    view.namespaces = vec![namespace(
        json!({ TARGETS_ANNOTATION: format!("istio-proxy={PROXY_NEW}") }),
    )];
    // First call: Istio has not injected yet, so the pod has no istio-proxy: nothing to
    // target, but the pod is governed, so it gets the gate.
    let mut bare = pod.clone();
    bare["spec"]["initContainers"] = json!([]);
    let first = mutate(&view, &bare);
    let gated_bare = mutated(&bare, &first);
    assert!(
        first.allowed && gated(&gated_bare),
        "the gate, nothing else"
    );
    assert_eq!(gated_bare["spec"]["initContainers"], json!([]));
    // Istio adds the sidecar to what we returned; the API server calls us again.
    let mut injected = gated_bare.clone();
    injected["spec"]["initContainers"] = pod["spec"]["initContainers"].clone();
    let second = mutate(&view, &injected);
    let after = mutated(&injected, &second);
    assert_eq!(
        container_image(&after, "initContainers", "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
    assert!(gated(&after));
    assert!(mutate(&view, &after).patch.is_none());
}

#[test]
fn the_workload_annotation_wins_over_the_namespace_annotation() {
    let (_, mut view, pod, field) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(1);
    view.namespaces = vec![namespace(
        json!({ TARGETS_ANNOTATION: "istio-proxy=:9.9.9" }),
    )];
    let after = mutated(&pod, &mutate(&view, &pod));
    assert_eq!(
        container_image(&after, field, "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
}

#[test]
fn a_stale_controller_lease_means_no_gate_but_the_image_is_set() {
    for (label, mut view, pod, field) in every_kind(&format!("istio-proxy={PROXY_NEW}")) {
        view.alive = false;
        let after = mutated(&pod, &mutate(&view, &pod));
        assert!(!gated(&after), "{label}");
        assert_eq!(
            container_image(&after, field, "istio-proxy").as_deref(),
            Some(PROXY_NEW),
            "{label}"
        );
    }
}

#[test]
fn a_policy_without_readiness_gate_means_no_gate() {
    let (_, mut view, pod, _) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
    view.policies = vec![policy("mesh", json!({"readinessGate": false}))];
    let after = mutated(&pod, &mutate(&view, &pod));
    assert!(!gated(&after));
}

#[test]
fn a_failed_target_is_not_set_on_new_pods() {
    for (label, mut view, pod, field) in every_kind(&format!("istio-proxy={PROXY_NEW}")) {
        let status = json!({"phase": "Failed", "failedTargets": [{"container": "istio-proxy", "image": PROXY_NEW}]}).to_string();
        for w in view.deployments.iter_mut() {
            w.annotations_mut()
                .insert(crate::STATUS_ANNOTATION.into(), status.clone());
        }
        for w in view.stateful_sets.iter_mut() {
            w.annotations_mut()
                .insert(crate::STATUS_ANNOTATION.into(), status.clone());
        }
        for w in view.daemon_sets.iter_mut() {
            w.annotations_mut()
                .insert(crate::STATUS_ANNOTATION.into(), status.clone());
        }
        for w in view
            .replica_sets
            .iter_mut()
            .filter(|r| r.owner_references().is_empty())
        {
            w.annotations_mut()
                .insert(crate::STATUS_ANNOTATION.into(), status.clone());
        }
        let response = mutate(&view, &pod);
        let after = mutated(&pod, &response);
        assert_eq!(
            container_image(&after, field, "istio-proxy").as_deref(),
            Some(PROXY_OLD),
            "{label}"
        );
        assert!(gated(&after), "{label}: the gate is still injected");
        let warnings = response.warnings.unwrap_or_default().join("\n");
        assert!(warnings.contains("failed before"), "{label}: {warnings}");
    }
}

#[test]
fn a_retry_request_lifts_the_failure_memory() {
    let (_, mut view, pod, field) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
    let status = json!({"phase": "Failed", "failedTargets": [{"container": "istio-proxy", "image": PROXY_NEW}]}).to_string();
    let d = &mut view.deployments[0];
    d.annotations_mut()
        .insert(crate::STATUS_ANNOTATION.into(), status);
    d.annotations_mut().insert(
        crate::RETRY_ANNOTATION.into(),
        "2026-11-22T03:00:00Z".into(),
    );
    let after = mutated(&pod, &mutate(&view, &pod));
    assert_eq!(
        container_image(&after, field, "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
}

#[test]
fn a_namespace_target_that_failed_in_another_workload_does_not_spread() {
    let (_, mut view, pod, field) = every_kind("x=y:1").remove(0);
    view.deployments[0].metadata.annotations = None;
    view.namespaces = vec![namespace(
        json!({ TARGETS_ANNOTATION: format!("istio-proxy={PROXY_NEW}") }),
    )];
    let mut other = workload("frontend.yaml.injected", "Deployment", None);
    other["metadata"]["annotations"] = json!({ crate::STATUS_ANNOTATION: json!({"phase": "Failed", "source": "Namespace", "failedTargets": [{"container": "istio-proxy", "image": PROXY_NEW}]}).to_string() });
    view.deployments.push(obj(other));
    let after = mutated(&pod, &mutate(&view, &pod));
    assert_eq!(
        container_image(&after, field, "istio-proxy").as_deref(),
        Some(PROXY_OLD)
    );
}

/// The record the controller writes, through its own type: the webhook reads that type too,
/// so a renamed status field cannot silently stop it refusing a bad image.
fn recorded_failure(source: crate::target::TargetSource, retry: Option<&str>) -> String {
    serde_json::to_string(&crate::status::WorkloadStatus {
        phase: crate::status::WorkloadPhase::Failed,
        source: Some(source),
        failed_targets: vec![crate::plan::FailedTarget {
            container: "istio-proxy".into(),
            image: PROXY_NEW.into(),
            message: None,
        }],
        retry: retry.map(str::to_string),
        ..Default::default()
    })
    .expect("status json")
}

/// Before, the webhook lifted a sibling's failure as soon as that sibling had a retry request
/// of its own, while the controller kept it until the sibling's status forgot it (`kubectl
/// inplace retry` asks every blocked sibling, then the workload itself).
#[test]
fn a_siblings_failure_blocks_until_its_status_forgets_it_as_in_the_controller() {
    let (_, mut view, pod, field) = every_kind("x=y:1").remove(0);
    view.deployments[0].metadata.annotations = None;
    view.namespaces = vec![namespace(
        json!({ TARGETS_ANNOTATION: format!("istio-proxy={PROXY_NEW}") }),
    )];
    let mut other = workload("frontend.yaml.injected", "Deployment", None);
    other["metadata"]["annotations"] = json!({
        crate::STATUS_ANNOTATION: recorded_failure(crate::target::TargetSource::Namespace, None),
        crate::RETRY_ANNOTATION: "2026-11-22T03:00:00Z",
    });
    view.deployments.push(obj(other.clone()));
    let response = mutate(&view, &pod);
    assert_eq!(
        container_image(&mutated(&pod, &response), field, "istio-proxy").as_deref(),
        Some(PROXY_OLD)
    );
    assert!(
        response
            .warnings
            .unwrap_or_default()
            .join("\n")
            .contains("failed before"),
        "named"
    );
    // The sibling's status took the retry up and forgot the failure: the target is set.
    other["metadata"]["annotations"][crate::STATUS_ANNOTATION] = json!(
        serde_json::to_string(&crate::status::WorkloadStatus {
            source: Some(crate::target::TargetSource::Namespace),
            retry: Some("2026-11-22T03:00:00Z".into()),
            ..Default::default()
        })
        .expect("json")
    );
    view.deployments.pop();
    view.deployments.push(obj(other));
    assert_eq!(
        container_image(&mutated(&pod, &mutate(&view, &pod)), field, "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
}

#[test]
fn the_workloads_own_recorded_failure_is_read_through_the_controllers_type() {
    let (_, mut view, pod, field) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
    view.deployments[0].annotations_mut().insert(
        crate::STATUS_ANNOTATION.into(),
        recorded_failure(crate::target::TargetSource::Workload, None),
    );
    assert_eq!(
        container_image(&mutated(&pod, &mutate(&view, &pod)), field, "istio-proxy").as_deref(),
        Some(PROXY_OLD)
    );
}

#[test]
fn paused_means_the_gate_but_no_image() {
    let pause_policy = |v: &mut Fake| v.policies.push(policy("stop", json!({"paused": true})));
    let pause_workload = |v: &mut Fake| {
        v.deployments[0]
            .annotations_mut()
            .insert(crate::PAUSED_ANNOTATION.into(), "true".into());
    };
    let pause_namespace = |v: &mut Fake| {
        v.namespaces[0]
            .annotations_mut()
            .insert(crate::PAUSED_ANNOTATION.into(), "true".into());
    };
    type Pause<'a> = &'a dyn Fn(&mut Fake);
    let cases: [(&str, Pause); 3] = [
        ("paused policy", &pause_policy),
        ("paused workload", &pause_workload),
        ("paused namespace", &pause_namespace),
    ];
    for (label, pause) in cases {
        let (_, mut view, pod, field) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
        pause(&mut view);
        let after = mutated(&pod, &mutate(&view, &pod));
        assert_eq!(
            container_image(&after, field, "istio-proxy").as_deref(),
            Some(PROXY_OLD),
            "{label}"
        );
        assert!(gated(&after), "{label}");
    }
}

#[test]
fn dry_run_is_answered_the_same() {
    for (label, view, pod, _) in every_kind(&format!("istio-proxy={PROXY_NEW}")) {
        let real = mutate::mutate_pod(
            &review("Pod", "CREATE", &pod, None, false),
            &view,
            &settings(),
        );
        let dry = mutate::mutate_pod(
            &review("Pod", "CREATE", &pod, None, true),
            &view,
            &settings(),
        );
        assert_eq!(real, dry, "{label}");
    }
}

#[test]
fn a_deployments_new_replica_set_not_yet_in_the_cache_is_found_by_its_hash() {
    let (_, mut view, mut pod, field) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
    view.replica_sets.clear();
    pod["metadata"]["labels"]["pod-template-hash"] = json!("5d4f8c7b9");
    let after = mutated(&pod, &mutate(&view, &pod));
    assert_eq!(
        container_image(&after, field, "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
    // Without the hash label it cannot be identified: allowed, not mutated, warned.
    pod["metadata"]["labels"]
        .as_object_mut()
        .map(|l| l.remove("pod-template-hash"));
    let response = mutate(&view, &pod);
    assert!(response.allowed && response.patch.is_none());
    assert!(response.warnings.unwrap_or_default()[0].contains("not in the webhook's cache"));
}

#[test]
fn problems_never_deny_a_pod() {
    let target = format!("istio-proxy={PROXY_NEW}");
    let (_, view, pod, _) = every_kind(&target).remove(0);
    let mut unsynced = view.clone();
    unsynced.unsynced = true;
    let mut bad_annotation = view.clone();
    bad_annotation.deployments[0]
        .annotations_mut()
        .insert(TARGETS_ANNOTATION.into(), "istio-proxy".into());
    let mut init_target = view.clone();
    init_target.deployments[0]
        .annotations_mut()
        .insert(TARGETS_ANNOTATION.into(), "istio-init=:2".into());
    let mut not_allowed = view.clone();
    not_allowed.policies = vec![policy("mesh", json!({"allowedImages": ["docker.io/**"]}))];
    let mut container_refused = view.clone();
    container_refused.policies = vec![policy("mesh", json!({"containers": ["app"]}))];
    let mut bad_selector = view.clone();
    bad_selector.policies.push(policy(
        "broken",
        json!({"workloadSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
    ));
    let cases = [
        ("caches not synced", unsynced, "syncing"),
        ("malformed annotation", bad_annotation, "invalid"),
        (
            "run-to-completion init target",
            init_target,
            "run-to-completion",
        ),
        ("image not allowed", not_allowed, "allowedImages"),
        ("container not allowed", container_refused, "containers"),
        ("invalid policy selector", bad_selector, "broken"),
    ];
    for (label, view, expected) in cases {
        let response = mutate(&view, &pod);
        assert!(response.allowed, "{label}");
        let after = mutated(&pod, &response);
        assert_eq!(
            container_image(&after, "initContainers", "istio-proxy").as_deref(),
            Some(PROXY_OLD),
            "{label}"
        );
        let warnings = response.warnings.unwrap_or_default().join("\n");
        assert!(
            warnings.starts_with("inplace-upgrade: "),
            "{label}: {warnings}"
        );
        assert!(warnings.contains(expected), "{label}: {warnings}");
    }
    // A pod that cannot be read is allowed with a warning.
    let garbage = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "x-"}, "spec": {"containers": "not a list"}});
    let response = mutate(&view, &garbage);
    assert!(response.allowed && response.patch.is_none());
    assert!(response.warnings.unwrap_or_default()[0].contains("cannot read the pod"));
}

#[test]
fn pods_that_are_not_ours_are_left_alone_silently() {
    let (_, view, pod, _) = every_kind(&format!("istio-proxy={PROXY_NEW}")).remove(0);
    let mut bare = pod.clone();
    bare["metadata"]
        .as_object_mut()
        .map(|m| m.remove("ownerReferences"));
    let mut job = pod.clone();
    job["metadata"]["ownerReferences"][0]["kind"] = json!("Job");
    let mut no_policy = view.clone();
    no_policy.policies.clear();
    for (label, view, pod) in [
        ("bare pod", &view, &bare),
        ("job pod", &view, &job),
        ("no policy", &no_policy, &pod),
    ] {
        let response = mutate(view, pod);
        assert!(
            response.allowed && response.patch.is_none() && response.warnings.is_none(),
            "{label}"
        );
    }
    // An UPDATE is never mutated.
    let response = mutate::mutate_pod(
        &review("Pod", "UPDATE", &pod, Some(&pod), false),
        &view,
        &settings(),
    );
    assert!(response.patch.is_none());
}

#[test]
fn a_standalone_pod_fixture_with_a_second_native_sidecar_gets_only_its_target() {
    let mut view = base_view();
    let pod_doc = fixture("native-sidecar.yaml.injected").remove(0);
    let mut rs = workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        Some(&format!("istio-proxy={PROXY_NEW}")),
    );
    rs["kind"] = json!("ReplicaSet");
    rs["metadata"]["name"] = json!("standalone");
    view.replica_sets.push(obj(rs));
    let mut pod = pod_doc.clone();
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "standalone", "uid": "u", "controller": true}]);
    pod["metadata"].as_object_mut().map(|m| m.remove("name"));
    let after = mutated(&pod, &mutate(&view, &pod));
    assert_eq!(
        container_image(&after, "initContainers", "istio-proxy").as_deref(),
        Some(PROXY_NEW)
    );
    assert_eq!(
        container_image(&after, "initContainers", "other-sidecar"),
        container_image(&pod, "initContainers", "other-sidecar")
    );
    assert!(gated(&after));
}

fn validate(
    view: &Fake,
    kind: &str,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
) -> AdmissionResponse {
    validate::validate_workload_or_namespace(
        &review(kind, operation, object, old, false),
        view,
        &settings(),
    )
}

#[test]
fn a_malformed_annotation_is_denied_with_the_entry_named() {
    let view = base_view();
    for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
        let file = match kind {
            "Deployment" => "hello-multi.yaml.injected",
            "StatefulSet" => "statefulset.yaml.injected",
            _ => "daemonset.yaml.injected",
        };
        let w = workload(file, kind, Some("istio-proxy=:1.24, app"));
        let response = validate(&view, kind, "CREATE", &w, None);
        assert!(!response.allowed, "{kind}");
        assert!(
            response.result.message.contains("\"app\""),
            "{kind}: {}",
            response.result.message
        );
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "annotations": {TARGETS_ANNOTATION: "istio-proxy=proxyv2:1.24,istio-proxy=:2"}}});
    let response = validate(
        &view,
        "Namespace",
        "UPDATE",
        &ns,
        Some(&json!({"metadata": {"name": NS}})),
    );
    assert!(!response.allowed);
    assert!(
        response.result.message.contains("already given"),
        "{}",
        response.result.message
    );
}

#[test]
fn only_a_new_or_changed_annotation_is_checked() {
    let view = base_view();
    let bad = workload("hello-multi.yaml.injected", "Deployment", Some("nonsense"));
    assert!(
        validate(&view, "Deployment", "UPDATE", &bad, Some(&bad)).allowed,
        "unchanged"
    );
    let none = workload("hello-multi.yaml.injected", "Deployment", None);
    assert!(
        validate(&view, "Deployment", "CREATE", &none, None).allowed,
        "absent"
    );
    assert!(
        !validate(&view, "Deployment", "UPDATE", &bad, Some(&none)).allowed,
        "added"
    );
    // A Deployment's ReplicaSet carries the Deployment's annotations: never checked.
    let mut rs = bad.clone();
    rs["kind"] = json!("ReplicaSet");
    rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello-v1", "uid": "u", "controller": true}]);
    assert!(validate(&view, "ReplicaSet", "CREATE", &rs, None).allowed);
    // A standalone ReplicaSet is a workload.
    rs["metadata"]
        .as_object_mut()
        .map(|m| m.remove("ownerReferences"));
    assert!(!validate(&view, "ReplicaSet", "CREATE", &rs, None).allowed);
}

#[test]
fn targets_are_checked_against_the_template_and_the_governing_policy() {
    let mut strict = base_view();
    strict.policies = vec![policy(
        "mesh",
        json!({"containers": ["istio-proxy"], "allowedImages": ["registry.istio.io/testing/*"]}),
    )];
    let cases: Vec<(&str, &str, Fake, Result<&str, &str>)> = vec![
        (
            "native sidecar target",
            "istio-proxy=:1.24.2",
            strict.clone(),
            Ok(""),
        ),
        (
            "regular container target",
            "hello=:2.0",
            base_view(),
            Ok(""),
        ),
        (
            "run-to-completion init container",
            "istio-init=:1.24.2",
            base_view(),
            Err("run-to-completion"),
        ),
        (
            "container not allowed",
            "hello=:2.0",
            strict.clone(),
            Err("InPlaceUpgradePolicy \"mesh\" rule containers"),
        ),
        (
            "image not allowed",
            "istio-proxy=docker.io/istio/proxyv2:1.24",
            strict.clone(),
            Err("InPlaceUpgradePolicy \"mesh\" rule allowedImages"),
        ),
        (
            "container not in the template",
            "sidecar=busybox:1",
            base_view(),
            Ok("not in the pod template"),
        ),
        (
            "no policy",
            "istio-proxy=:1.24.2",
            Fake {
                policies: vec![],
                ..base_view()
            },
            Ok("no InPlaceUpgradePolicy enables namespace"),
        ),
    ];
    for (label, annotation, view, expected) in cases {
        let w = workload("hello-multi.yaml.injected", "Deployment", Some(annotation));
        let response = validate(&view, "Deployment", "CREATE", &w, None);
        let warnings = response.warnings.clone().unwrap_or_default().join("\n");
        match expected {
            Ok("") => assert!(
                response.allowed && warnings.is_empty(),
                "{label}: {warnings} {}",
                response.result.message
            ),
            Ok(warning) => assert!(
                response.allowed && warnings.contains(warning),
                "{label}: {warnings}"
            ),
            Err(message) => assert!(
                !response.allowed && response.result.message.contains(message),
                "{label}: {}",
                response.result.message
            ),
        }
    }
}

#[test]
fn a_namespace_annotation_warns_when_no_policy_enables_the_namespace() {
    let view = Fake {
        policies: vec![],
        ..base_view()
    };
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}, "annotations": {TARGETS_ANNOTATION: "istio-proxy=proxyv2:1.24.2"}}});
    let response = validate(&view, "Namespace", "CREATE", &ns, None);
    assert!(response.allowed);
    assert!(
        response.warnings.unwrap_or_default()[0]
            .contains("no InPlaceUpgradePolicy enables namespace")
    );
    let response = validate(&base_view(), "Namespace", "CREATE", &ns, None);
    assert!(response.allowed && response.warnings.is_none());
}

#[test]
fn policies_are_validated_but_a_paused_one_is_always_admitted() {
    let p = |spec: Value| serde_json::to_value(policy("p", spec)).expect("json");
    let cases = [
        (json!({}), None),
        (
            json!({"workloadSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
            Some("workloadSelector"),
        ),
        (
            json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            Some("namespaceSelector"),
        ),
        (
            json!({"allowedImages": ["registry.io/{a"]}),
            Some("not a valid glob"),
        ),
        (json!({"maxUnavailable": "0%"}), Some("maxUnavailable")),
        (json!({"maxUnavailable": 0}), Some("maxUnavailable")),
    ];
    for (spec, expected) in cases {
        let object = p(spec.clone());
        let response = validate::validate_policy(&review(
            "InPlaceUpgradePolicy",
            "CREATE",
            &object,
            None,
            false,
        ));
        match expected {
            None => assert!(response.allowed, "{spec}"),
            Some(m) => {
                assert!(
                    !response.allowed && response.result.message.contains(m),
                    "{spec}: {}",
                    response.result.message
                );
                let mut paused = spec.clone();
                paused["paused"] = json!(true);
                let response = validate::validate_policy(&review(
                    "InPlaceUpgradePolicy",
                    "UPDATE",
                    &p(paused),
                    Some(&object),
                    false,
                ));
                assert!(response.allowed, "{spec}: an emergency stop goes through");
                assert!(response.warnings.unwrap_or_default()[0].contains(m));
            }
        }
    }
    let unreadable = json!({"apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy", "metadata": {"name": "p"}, "spec": {"containers": 3}});
    assert!(
        !validate::validate_policy(&review(
            "InPlaceUpgradePolicy",
            "CREATE",
            &unreadable,
            None,
            false
        ))
        .allowed
    );
}

#[test]
fn configurations_fail_open_and_exclude_the_control_plane() {
    let options = |endpoint| ConfigurationOptions {
        endpoint,
        ca_bundle: Some(b"PEM".to_vec()),
        own_namespace: "inplace-upgrade-system".into(),
        cert_manager_certificate: None,
    };
    let url = options(Endpoint::Url("https://127.0.0.1:9443/".into()));
    let (m, v) = configuration::webhook_configurations(&url);
    let mw = &m.webhooks.as_ref().expect("webhooks")[0];
    assert_eq!(
        mw.client_config.url.as_deref(),
        Some("https://127.0.0.1:9443/mutate-pods")
    );
    assert_eq!(mw.reinvocation_policy.as_deref(), Some("IfNeeded"));
    let vw = v.webhooks.as_ref().expect("webhooks");
    let all_policies: Vec<_> = std::iter::once(mw.failure_policy.clone())
        .chain(vw.iter().map(|w| w.failure_policy.clone()))
        .collect();
    assert!(all_policies.iter().all(|p| p.as_deref() == Some("Ignore")));
    let excluded = mw
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .expect("selector");
    assert_eq!(excluded[0].operator, "NotIn");
    assert_eq!(
        excluded[0].values.as_deref(),
        Some(
            &[
                "kube-system".to_owned(),
                "inplace-upgrade-system".to_owned()
            ][..]
        )
    );
    assert!(
        vw[0].match_conditions.as_ref().expect("CEL")[0]
            .expression
            .contains("oldObject")
    );
    let service = options(Endpoint::Service {
        namespace: "inplace-upgrade-system".into(),
        name: "inplace-upgrade-webhook".into(),
        port: None,
    });
    let (m, _) = configuration::webhook_configurations(&service);
    let s = m.webhooks.expect("webhooks")[0]
        .client_config
        .service
        .clone()
        .expect("service");
    assert_eq!(s.path.as_deref(), Some("/mutate-pods"));
    let yaml = configuration::webhook_configurations_yaml(&service).expect("yaml");
    assert!(
        yaml.contains("kind: MutatingWebhookConfiguration")
            && yaml.contains("kind: ValidatingWebhookConfiguration")
    );
}

#[test]
fn pods_of_a_governed_workload_get_the_gate_before_any_annotation() {
    // A readiness gate cannot be added to a running pod: only pods born with it can be
    // drained by the first in-place upgrade, so every governed pod gets it.
    for (label, mut view, pod, field) in every_kind("x=y:1") {
        view.deployments
            .iter_mut()
            .for_each(|d| d.metadata.annotations = None);
        view.stateful_sets
            .iter_mut()
            .for_each(|d| d.metadata.annotations = None);
        view.daemon_sets
            .iter_mut()
            .for_each(|d| d.metadata.annotations = None);
        view.replica_sets
            .iter_mut()
            .for_each(|d| d.metadata.annotations = None);
        let response = mutate(&view, &pod);
        let after = mutated(&pod, &response);
        assert!(gated(&after), "{label}: gated");
        assert_eq!(
            container_image(&after, field, "istio-proxy"),
            container_image(&pod, field, "istio-proxy"),
            "{label}: no image set without an annotation"
        );
    }
}

/// The Istio revision guard at annotation time. A template Istio's record is in (the fixtures,
/// revision `default`): a warning naming both revisions when the Namespace asks for another,
/// none within one revision or with the guard off. A Namespace annotation in a namespace that
/// asks for a revision says what the guard will hold back.
#[test]
fn a_target_across_istio_revisions_is_warned_about() {
    let view_with = |labels: Value, guard: bool| Fake {
        namespaces: vec![obj(json!({"metadata": {"name": NS, "labels": labels}}))],
        policies: vec![policy("mesh", json!({"istioRevisionGuard": guard}))],
        ..base_view()
    };
    let with_ns_name = |mut labels: Value| {
        labels["kubernetes.io/metadata.name"] = json!(NS);
        labels
    };
    let canary = with_ns_name(json!({"istio.io/rev": "canary"}));
    let default = with_ns_name(json!({"istio-injection": "enabled"}));
    let mismatch = "inplace-upgrade: IstioRevisionMismatch: istio-proxy was injected by Istio revision \"default\" but the Namespace label istio.io/rev asks for \"canary\"";
    for (file, kind) in [
        ("hello-multi.yaml.injected", "Deployment"),
        ("hello-old-version.yaml.injected", "Deployment"),
        ("statefulset.yaml.injected", "StatefulSet"),
        ("daemonset-old-version.yaml.injected", "DaemonSet"),
    ] {
        let w = workload(file, kind, Some("istio-proxy=:1.24.2"));
        let response = validate(&view_with(canary.clone(), true), kind, "CREATE", &w, None);
        assert!(response.allowed, "{file}: a warning, not a denial");
        let warnings = response.warnings.unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.starts_with(mismatch)),
            "{file}: {warnings:?}"
        );
        for (labels, guard) in [(default.clone(), true), (canary.clone(), false)] {
            let response = validate(&view_with(labels, guard), kind, "CREATE", &w, None);
            assert!(response.allowed);
            assert_eq!(response.warnings, None, "{file}");
        }
        // Only Istio's container: a target on the app container is not warned about.
        let app = workload(file, kind, Some("hello=nginx:2"));
        let response = validate(&view_with(canary.clone(), true), kind, "CREATE", &app, None);
        assert!(
            !response
                .warnings
                .unwrap_or_default()
                .iter()
                .any(|w| w.contains("IstioRevisionMismatch")),
            "{file}"
        );
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": canary,
        "annotations": {TARGETS_ANNOTATION: "istio-proxy=proxyv2:1.24.2"}}});
    let response = validate(
        &view_with(canary.clone(), true),
        "Namespace",
        "CREATE",
        &ns,
        None,
    );
    assert!(response.allowed);
    assert_eq!(
        response.warnings.unwrap_or_default(),
        [
            "inplace-upgrade: pods whose containers Istio's injector added with a revision other than \"canary\" (what the Namespace label istio.io/rev asks for) are held back (IstioRevisionMismatch): they need re-injection"
        ]
    );
    let response = validate(&view_with(canary, false), "Namespace", "CREATE", &ns, None);
    assert_eq!(response.warnings, None, "guard off");
}
