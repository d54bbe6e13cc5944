//! The lean decode against the full one: what is kept must decide exactly as the whole object
//! does, over every Istio fixture and the status shapes kubelets report.

use super::*;
use crate::classify::{ContainerEvent, Expectation, classify};
use crate::patch::{rollback_patch, state_patch, upgrade_patch};
use crate::plan::{PlanInput, plan};
use crate::policy::InPlaceUpgradePolicySpec;
use crate::state::PodUpgradeState;
use crate::testutil::{fixture_files, fixture_pods};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

const T0: &str = "2026-11-22T08:00:00Z";
const NEW_PROXY: &str = "istio-proxy=proxyv2:1.24.2";

fn at(secs: i64) -> Timestamp {
    let t0: Timestamp = T0.parse().expect("time");
    t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .expect("in range")
}

fn time(secs: i64) -> String {
    at(secs).to_string()
}

/// The names of a pod's containers and of its init containers (sidecar or not).
fn names(pod: &Value, list: &str) -> Vec<(String, bool)> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["restartPolicy"] == "Always",
            )
        })
        .collect()
}

fn id(name: &str, n: u32) -> String {
    format!("containerd://{name}-{n:064}")
}

/// A container status as the simulated kubelet writes it (every field), in `state`.
fn status(pod: &Value, name: &str, state: Value, ready: bool, restarts: i32, n: u32) -> Value {
    let image = names_image(pod, name);
    json!({"name": name, "state": state, "lastState": {}, "ready": ready, "restartCount": restarts,
        "image": image, "imageID": format!("sha256:{n:064}"), "containerID": id(name, n),
        "started": state.get("running").is_some(),
        "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
        "resources": {"requests": {"cpu": "10m"}}, "user": {"linux": {"uid": 1337, "gid": 1337}}})
}

fn names_image(pod: &Value, name: &str) -> String {
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            if c["name"] == name {
                return c["image"].as_str().unwrap_or_default().to_string();
            }
        }
    }
    String::new()
}

fn running(secs: i64) -> Value {
    json!({"running": {"startedAt": time(secs)}})
}

/// The status shapes the e2e suites see from the simulated kubelet and DESIGN §10 saw from a
/// real one, for the pod's `istio-proxy` (the other containers run).
fn statuses(pod: &Value) -> Vec<(&'static str, Option<Value>)> {
    let proxy = |state: Value, ready: bool, restarts: i32, n: u32| (state, ready, restarts, n);
    let shapes = [
        ("running", proxy(running(1), true, 0, 1)),
        ("restarted, not ready", proxy(running(20), false, 1, 2)),
        ("restarted, ready", proxy(running(20), true, 1, 2)),
        (
            "ErrImagePull",
            proxy(
                json!({"waiting": {"reason": "ErrImagePull",
                    "message": "failed to pull and unpack image \"docker.io/istio/proxyv2:1.24.2\": not found"}}),
                false,
                1,
                2,
            ),
        ),
        (
            "CrashLoopBackOff",
            proxy(
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}),
                false,
                3,
                3,
            ),
        ),
        (
            "native sidecar, old process exited 0 (§10)",
            proxy(
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": time(1),
                    "finishedAt": time(12), "containerID": id("istio-proxy", 1)}}),
                false,
                0,
                1,
            ),
        ),
        ("no state", proxy(json!({}), false, 0, 4)),
    ];
    let mut out = vec![("no status", None)];
    let mut alias = Vec::new();
    for (shape, (state, ready, restarts, n)) in shapes {
        let each = |list: &str| -> Value {
            names(pod, list)
                .iter()
                .map(|(name, sidecar)| {
                    if name == "istio-proxy" {
                        let mut s = status(pod, name, state.clone(), ready, restarts, n);
                        if shape == "CrashLoopBackOff" {
                            s["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error",
                                "startedAt": time(30), "finishedAt": time(31)}});
                        }
                        s
                    } else if list == "initContainers" && !sidecar {
                        status(
                            pod,
                            name,
                            json!({"terminated": {"exitCode": 0, "reason": "Completed",
                                "startedAt": time(0), "finishedAt": time(1)}}),
                            true,
                            0,
                            1,
                        )
                    } else {
                        status(pod, name, running(1), true, 0, 1)
                    }
                })
                .collect()
        };
        let ready = if ready { "True" } else { "False" };
        let condition = |t: &str, s: &str| json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": time(1)});
        out.push((
            shape,
            Some(json!({
                "observedGeneration": 1, "phase": "Running",
                "conditions": [condition("PodReadyToStartContainers", "True"),
                    condition("Initialized", "True"), condition("ContainersReady", ready),
                    condition("Ready", ready), condition("PodScheduled", "True")],
                "hostIP": "172.20.0.3", "hostIPs": [{"ip": "172.20.0.3"}],
                "podIP": "10.129.0.1", "podIPs": [{"ip": "10.129.0.1"}],
                "startTime": time(0), "qosClass": "Burstable",
                "initContainerStatuses": each("initContainers"),
                "containerStatuses": each("containers"),
            })),
        ));
        if shape == "restarted, ready" {
            alias.push(out.last().and_then(|(_, s)| s.clone()));
        }
    }
    // The restarted proxy reported under another repository's name (containerd's first name
    // for the same content, seen on a real kubelet), by a kubelet that has seen the patched
    // spec (observedGeneration 2 of generation 2) or not yet (1 of 2).
    for (shape, observed) in [
        ("restarted, ready, alias name, spec seen", 2),
        ("restarted, ready, alias name, spec not seen", 1),
    ] {
        let Some(mut status) = alias[0].clone() else {
            continue;
        };
        status["observedGeneration"] = json!(observed);
        for list in ["containerStatuses", "initContainerStatuses"] {
            for c in status[list].as_array_mut().into_iter().flatten() {
                if c["name"] == "istio-proxy" {
                    c["image"] = json!("registry.local/mirror/proxy:same-digest");
                }
            }
        }
        out.push((shape, Some(status)));
    }
    out
}

/// The pod as a watch delivers it: every field the API server writes, managedFields, the
/// annotations Istio's injector adds.
fn served(mut pod: Value, status: Option<Value>) -> Value {
    let meta = &mut pod["metadata"];
    meta["namespace"] = json!("ns");
    meta["uid"] = json!("4bdc977d-8e12-4867-8d72-83c1e4518a72");
    meta["resourceVersion"] = json!("266");
    meta["generation"] = json!(2);
    meta["generateName"] = json!("hello-69c5c7bd99-");
    meta["creationTimestamp"] = json!(time(0));
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "hello-69c5c7bd99", "uid": "af8e", "controller": true, "blockOwnerDeletion": true}]);
    meta["managedFields"] = json!([{"manager": "kubelet", "operation": "Update",
        "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}]);
    meta["annotations"]["sidecar.istio.io/status"] =
        json!("{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"]}");
    pod["spec"]["nodeName"] = json!("sim-node-1");
    match status {
        Some(s) => pod["status"] = s,
        None => {
            pod.as_object_mut().expect("object").remove("status");
        }
    }
    pod
}

fn lean(wire: &Value) -> Pod {
    let decoded = Pod::decode(wire.clone()).expect("lean decode");
    assert_eq!(decoded.filed.namespace.as_deref(), Some("ns"));
    decoded.kept.to_pod("ns", decoded.filed.name.as_str())
}

fn full(wire: &Value) -> Pod {
    serde_json::from_value(wire.clone()).expect("full decode")
}

/// Everything the planner, the classifier and the patches make of a pod, as comparable text.
fn decisions(pod: &Pod) -> Vec<String> {
    let targets = crate::annotation::parse(NEW_PROXY).expect("targets");
    // kubelet failing to pull the target for the proxy, whichever kind of container it is.
    let events: Vec<ContainerEvent> = ["containers", "initContainers"]
        .iter()
        .map(|list| ContainerEvent {
            field_path: format!("spec.{list}{{istio-proxy}}"),
            reason: "Failed".into(),
            message: "Failed to pull image \"docker.io/istio/proxyv2:1.24.2\": not found".into(),
            last_seen: at(20),
        })
        .collect();
    let by_uid = crate::plan::PodEvents::from([(
        pod.metadata.uid.clone().unwrap_or_default(),
        events.clone(),
    )]);
    let spec = pod.spec.as_ref().expect("spec");
    let mut out = vec![format!(
        "resolve {:?}",
        crate::target::resolve(spec, &targets)
    )];
    if let Ok(resolved) = crate::target::resolve(spec, &targets)
        && !resolved.resolved.is_empty()
    {
        let patch = upgrade_patch(pod, None, &resolved.resolved, at(10))
            .map(|(p, s)| (serde_json::to_string(&p).expect("json"), s));
        out.push(format!("upgrade {patch:?}"));
    }
    let state = PodUpgradeState::from_pod(pod);
    out.push(format!("state {state:?}"));
    if let Ok(Some(state)) = &state {
        out.push(format!(
            "state patch {:?}",
            state_patch(pod, state).map(|p| serde_json::to_string(&p).expect("json"))
        ));
        out.push(format!(
            "rollback {:?}",
            rollback_patch(pod, state, "ErrImagePull", "no", at(40))
                .map(|(p, s)| (serde_json::to_string(&p).expect("json"), s))
        ));
        for baseline in &state.containers {
            for secs in [30, 1000] {
                for events in [&[][..], &events] {
                    let expect = Expectation {
                        baseline,
                        image: baseline.expected_image(state.phase),
                        patched_at: state.patched_at,
                        ready_timeout: std::time::Duration::from_secs(300),
                        events,
                    };
                    out.push(format!("classify {:?}", classify(pod, &expect, at(secs))));
                }
            }
        }
    }
    let policy: InPlaceUpgradePolicySpec =
        serde_json::from_value(json!({"namespaceSelector": {}})).expect("policy");
    let pods = std::slice::from_ref(pod);
    for drained in [BTreeSet::new(), BTreeSet::from([pod.name_any()])] {
        for secs in [30, 1000] {
            let input = PlanInput {
                targets: &targets,
                pods,
                policy: &policy,
                desired_replicas: 1,
                paused: false,
                failed_targets: &[],
                retry_since: None,
                disruption_budgets: &[],
                endpoints_drained: &drained,
                drains: &BTreeMap::new(),
                events: &by_uid,
                pulls: &Default::default(),
                istio_guard: None,
                now: at(secs),
            };
            out.push(format!("plan {:?}", plan(&input)));
        }
    }
    out.push(format!(
        "workload {:?}",
        crate::workload::owning_workload(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.owner_references(),
            pod.labels(),
            |_| None
        )
    ));
    out.push(format!("labels {:?}", pod.metadata.labels));
    out
}

use kube::ResourceExt;
use std::collections::BTreeSet;

/// Sets the pod's state annotation to what our upgrade patch (at `at(10)`) would record, and
/// optionally our readiness gate and its condition.
fn variants(pod: &Value) -> Vec<(String, Value)> {
    let mut out = vec![("as injected".to_string(), pod.clone())];
    let targets = crate::annotation::parse(NEW_PROXY).expect("targets");
    let as_pod = full(pod);
    if let Some(spec) = as_pod.spec.as_ref()
        && let Ok(resolved) = crate::target::resolve(spec, &targets)
        && !resolved.resolved.is_empty()
    {
        let (_, state) = upgrade_patch(&as_pod, None, &resolved.resolved, at(10)).expect("patch");
        let mut patched = pod.clone();
        patched["metadata"]["annotations"][crate::STATE_ANNOTATION] =
            json!(state.to_json().expect("json"));
        for list in ["containers", "initContainers"] {
            for c in patched["spec"][list].as_array_mut().into_iter().flatten() {
                if c["name"] == "istio-proxy" {
                    c["image"] = json!(resolved.resolved[0].image);
                }
            }
        }
        out.push(("patched".into(), patched.clone()));
        let rolling = state.finished(
            crate::state::Phase::RollingBack,
            Some("ErrImagePull".into()),
            None,
            at(12),
        );
        let mut rolling_back = patched.clone();
        rolling_back["metadata"]["annotations"][crate::STATE_ANNOTATION] =
            json!(rolling.to_json().expect("json"));
        out.push(("rolling back".into(), rolling_back));
    }
    let mut gated = Vec::new();
    for (name, pod) in &out {
        for (gate, condition) in [
            (
                "gate True",
                json!({"type": crate::READINESS_GATE, "status": "True",
                "reason": "NotUpgrading", "message": "m", "lastTransitionTime": time(2)}),
            ),
            (
                "gate Draining",
                json!({"type": crate::READINESS_GATE, "status": "False",
                "reason": crate::patch::DRAINING_REASON, "message": "m", "lastTransitionTime": time(5)}),
            ),
        ] {
            let mut pod = pod.clone();
            pod["spec"]["readinessGates"] = json!([{"conditionType": crate::READINESS_GATE}]);
            gated.push((format!("{name}, {gate}"), pod, condition));
        }
    }
    let mut out: Vec<(String, Value)> = out;
    for (name, pod, condition) in gated {
        // The condition goes into each status shape below.
        let mut pod = pod;
        pod["__gate"] = condition;
        out.push((name, pod));
    }
    out
}

#[test]
fn a_lean_pod_decides_like_the_full_pod() {
    let mut checked = 0;
    for file in fixture_files() {
        for fixture in fixture_pods(&file) {
            let base = serde_json::to_value(&fixture).expect("json");
            for (variant, pod) in variants(&base) {
                let mut pod = pod;
                let gate = pod.as_object_mut().and_then(|o| o.remove("__gate"));
                for (shape, status) in statuses(&pod) {
                    let status = status.map(|mut s| {
                        if let Some(g) = &gate {
                            s["conditions"]
                                .as_array_mut()
                                .expect("list")
                                .push(g.clone());
                        }
                        s
                    });
                    let wire = served(pod.clone(), status);
                    let (full, lean) = (full(&wire), lean(&wire));
                    assert_eq!(
                        decisions(&full),
                        decisions(&lean),
                        "{file}, {variant}, {shape}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} cases");
}

/// Kept: what is read. Dropped: what is not (the bulk of an Istio pod).
#[test]
fn a_lean_pod_keeps_what_is_read_and_drops_the_rest() {
    let pod = fixture_pods("native-sidecar.yaml.injected").remove(0);
    let base = serde_json::to_value(&pod).expect("json");
    let (_, status) = statuses(&base).remove(5);
    let wire = served(base, status);
    let lean = lean(&wire);
    let full = full(&wire);
    assert_eq!(lean.metadata.labels, full.metadata.labels);
    assert_eq!(lean.metadata.uid, full.metadata.uid);
    assert_eq!(
        lean.metadata.resource_version,
        full.metadata.resource_version
    );
    assert_eq!(
        lean.metadata.owner_references,
        full.metadata.owner_references
    );
    // Only ours and Istio's record (what the revision guard reads of it).
    assert_eq!(
        lean.metadata.annotations,
        Some(BTreeMap::from([(
            "sidecar.istio.io/status".to_string(),
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"]}"#.to_string()
        )]))
    );
    assert!(lean.metadata.managed_fields.is_none());
    let (spec, status) = (
        lean.spec.as_ref().expect("spec"),
        lean.status.as_ref().expect("status"),
    );
    assert!(spec.volumes.is_none());
    // The node is kept: the target images are pre-pulled onto it.
    assert_eq!(
        spec.node_name,
        full.spec.as_ref().and_then(|s| s.node_name.clone())
    );
    assert!(
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .all(|c| c.env.is_none()
                && c.args.is_none()
                && c.readiness_probe.is_none()
                && c.volume_mounts.is_none())
    );
    let conditions: Vec<&str> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(conditions, ["Ready"]);
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "istio-proxy")
        .expect("sidecar status");
    assert!(sidecar.volume_mounts.is_none() && sidecar.resources.is_none());
    let full_sidecar = full
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|l| l.iter().find(|c| c.name == "istio-proxy"))
        .expect("sidecar status");
    assert_eq!(
        sidecar.state, full_sidecar.state,
        "reasons, exit code and times"
    );
    assert!(!sidecar.image_id.is_empty());
    assert_eq!(
        sidecar.image_id, full_sidecar.image_id,
        "the content that runs"
    );
    assert_eq!(lean.metadata.generation, Some(2));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        (
            sidecar.ready,
            sidecar.started,
            sidecar.restart_count,
            &sidecar.container_id
        ),
        (
            full_sidecar.ready,
            full_sidecar.started,
            full_sidecar.restart_count,
            &full_sidecar.container_id
        )
    );
}

/// A pod without annotations has none after the lean decode too (the JSON patch that records
/// our state then creates the map).
#[test]
fn a_pod_without_annotations_keeps_none() {
    let wire = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": []}});
    assert_eq!(lean(&wire).metadata.annotations, None);
}

/// Every kind kept whole: everything but managedFields, whatever the fields.
#[test]
fn namespaces_and_budgets_keep_everything_but_managed_fields() {
    fn check<K>(wire: Value)
    where
        K: CacheKind<Kept = K> + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        let mut wire = wire;
        wire["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Apply",
            "fieldsType": "FieldsV1", "fieldsV1": {}}]);
        wire["metadata"]["labels"] = json!({"team": "a"});
        wire["metadata"]["annotations"] = json!({"inplace-upgrade": "istio-proxy=proxyv2:1.24.2"});
        let mut full: K = serde_json::from_value(wire.clone()).expect("full");
        assert!(full.meta().managed_fields.is_some());
        full.meta_mut().managed_fields = None;
        let lean = K::decode(wire).expect("lean");
        assert_eq!(lean.kept, full);
    }
    check::<Namespace>(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "ns"}, "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}}));
    check::<PodDisruptionBudget>(
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        "status": {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1, "expectedPods": 3}}),
    );
}

/// A slice keeps the pods it serves: the same as the planner's reading of the full slice.
#[test]
fn a_lean_slice_serves_the_pods_the_full_slice_serves() {
    let wire = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "ns", "resourceVersion": "7",
            "managedFields": [{"manager": "m"}]},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true},
                "targetRef": {"kind": "Pod", "name": "a", "namespace": "ns"}, "nodeName": "n1"},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true},
                "targetRef": {"kind": "Pod", "name": "b"}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false},
                "targetRef": {"kind": "Pod", "name": "c"}},
            {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "d"}},
            {"addresses": ["10.0.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Node", "name": "e"}},
            {"addresses": ["10.0.0.6"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "a"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
    let full: EndpointSlice = serde_json::from_value(wire.clone()).expect("full");
    let lean = EndpointSlice::decode(wire).expect("lean");
    let pods: Vec<Pod> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| serde_json::from_value(json!({"metadata": {"name": n}})).expect("pod"))
        .collect();
    let drained =
        crate::plan::inputs::endpoints_drained([&full].into_iter(), &pods, &BTreeMap::new());
    let lean_drained =
        crate::plan::inputs::not_serving(&pods, |p| lean.kept.serving.iter().any(|s| &**s == p));
    assert_eq!(drained, lean_drained);
    assert_eq!(drained, BTreeSet::from(["c".to_string(), "e".to_string()]));
    assert_eq!(
        lean.kept.serving.len(),
        3,
        "each pod once: {:?}",
        lean.kept.serving
    );
    assert_eq!(lean.filed.resource_version.as_deref(), Some("7"));
}

/// What main's classifier reads beyond the container's name and state (19f8f4c): the
/// `imageID` recorded at the patch and reported after the restart, and whether kubelet has seen
/// the patched spec (`status.observedGeneration` against `metadata.generation`). A lean pod
/// keeps all three, so a restart reported under another repository's name (containerd's first
/// name for the same content) reads as upgraded from the cache as from the full pod.
#[test]
fn a_lean_pod_classifies_an_alias_named_restart_as_upgraded() {
    let fixture = fixture_pods("native-sidecar.yaml.injected").remove(0);
    let base = serde_json::to_value(&fixture).expect("json");
    let shapes = statuses(&base);
    let status_of = |shape: &str| {
        shapes
            .iter()
            .find(|(s, _)| *s == shape)
            .and_then(|(_, s)| s.clone())
            .expect("shape")
    };
    // The patch is taken from the lean pod, as the controller takes it from its cache.
    let before = lean(&served(base.clone(), Some(status_of("running"))));
    let targets = crate::annotation::parse(NEW_PROXY).expect("targets");
    let resolved = crate::target::resolve(before.spec.as_ref().expect("spec"), &targets)
        .expect("resolve")
        .resolved;
    let (_, state) = upgrade_patch(&before, None, &resolved, at(10)).expect("patch");
    let baseline = state.container("istio-proxy").expect("baseline");
    assert_eq!(
        baseline.image_id.as_deref(),
        Some(format!("sha256:{:064}", 1).as_str()),
        "the baseline records the imageID the lean pod kept"
    );
    let mut patched = base.clone();
    patched["metadata"]["annotations"][crate::STATE_ANNOTATION] =
        json!(state.to_json().expect("json"));
    for c in patched["spec"]["initContainers"]
        .as_array_mut()
        .expect("init containers")
    {
        if c["name"] == "istio-proxy" {
            c["image"] = json!(resolved[0].image);
        }
    }
    let classified = |shape: &str| {
        let pod = lean(&served(patched.clone(), Some(status_of(shape))));
        let expect = Expectation {
            baseline,
            image: baseline.expected_image(state.phase),
            patched_at: state.patched_at,
            ready_timeout: std::time::Duration::from_secs(300),
            events: &[],
        };
        (
            pod.metadata.generation,
            pod.status.as_ref().and_then(|s| s.observed_generation),
            classify(&pod, &expect, at(30)),
        )
    };
    assert_eq!(
        classified("restarted, ready, alias name, spec seen"),
        (Some(2), Some(2), crate::classify::ContainerState::Upgraded)
    );
    // Other content than at the patch (imageID changed) runs the patched spec even before
    // kubelet reports having seen it.
    assert_eq!(
        classified("restarted, ready, alias name, spec not seen"),
        (Some(2), Some(1), crate::classify::ContainerState::Upgraded)
    );
}

/// A shared string is one allocation for every holder, and the set forgets the strings no
/// holder keeps once it has grown to its sweep size.
#[test]
fn shared_strings_are_kept_once_and_forgotten_when_unheld() {
    let mut strings = SharedStrings::default();
    let a = strings.get("proxyv2:1.24.2".to_string());
    let b = strings.get("proxyv2:1.24.2".to_string());
    assert!(Arc::ptr_eq(&a, &b), "the same string is shared");
    drop(strings.get("held by no one".to_string()));
    for n in 0..1024 {
        strings.get(format!("old-{n}"));
    }
    assert!(
        strings.set.len() < 1024,
        "the sweep forgot the unheld strings ({} kept)",
        strings.set.len()
    );
    assert!(
        strings.set.contains("proxyv2:1.24.2"),
        "a held string stays"
    );
    assert!(!strings.set.contains("held by no one"));
    let c = strings.get("proxyv2:1.24.2".to_string());
    assert!(Arc::ptr_eq(&a, &c), "and is still the one shared");
}
