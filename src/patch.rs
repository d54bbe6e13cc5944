//! The JSON patches we send, shared by the controller and the webhook.
//!
//! Pod image changes are one `application/json-patch+json` request: `test` that the container
//! at the recorded index still has the expected name and image, `replace` the image, and write
//! the state annotation, for every changed container at once. A failed `test` means someone
//! else changed the pod: the caller re-reads and re-plans, never overwrites blindly.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, TestOperation};
use k8s_openapi::api::core::v1::{Pod, PodReadinessGate};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::classify::container_status;
use crate::state::{ContainerBaseline, Phase, PodUpgradeState, STATE_VERSION, StateError};
use crate::target::{ContainerKind, ResolvedTarget};
use crate::{READINESS_GATE, STATE_ANNOTATION};

/// Reason of the gate condition while a pod is drained by us. The planner recognises our own
/// drains by it (a new pod's missing condition is not a drain).
pub const DRAINING_REASON: &str = "Draining";
/// Reason of the gate condition set True after an upgrade, a rollback or a cancelled drain.
pub const SERVING_REASON: &str = "Serving";
/// Reason of the gate condition set True on a new pod that needs no upgrade now.
pub const NOT_UPGRADING_REASON: &str = "NotUpgrading";

/// `now` truncated to whole seconds. Kubernetes timestamps (`startedAt`,
/// `lastTransitionTime`) have second precision: a container started in the same second as the
/// patch must not look older than it.
pub fn kubernetes_time(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn image_path(kind: ContainerKind, index: usize, field: &str) -> PointerBuf {
    PointerBuf::from_tokens(["spec", kind.spec_field(), &index.to_string(), field])
}

fn test(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Test(TestOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// The three operations that change one container's image, and the rule that makes the change
/// safe: `test` that the container at `index` is still `name` and still runs `from`, then
/// `replace` the image with `to`. Sent in one request with the state annotation, they apply
/// together or not at all; a pod someone else changed since we read it (another writer's
/// image, a reordered container list) fails the `test` and is re-read and re-planned, never
/// overwritten.
fn swap_image(
    kind: ContainerKind,
    index: usize,
    name: &str,
    from: &str,
    to: &str,
) -> [PatchOperation; 3] {
    [
        test(image_path(kind, index, "name"), json!(name)),
        test(image_path(kind, index, "image"), json!(from)),
        replace(image_path(kind, index, "image"), json!(to)),
    ]
}

/// Set one annotation, creating `metadata.annotations` when the pod has none. The key is a
/// JSON-pointer token, so `/` is escaped (`inplace-upgrade.io~1state`).
pub fn set_annotation(pod: &Pod, key: &str, value: &str) -> PatchOperation {
    if pod.metadata.annotations.is_none() {
        add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            json!({ key: value }),
        )
    } else {
        add(
            PointerBuf::from_tokens(["metadata", "annotations", key]),
            Value::String(value.into()),
        )
    }
}

/// What runs in a container when it is patched, as its baseline records it.
struct Running {
    container_id: Option<String>,
    restart_count: i32,
    was_running: bool,
    image_id: Option<String>,
}

fn baseline_of(pod: &Pod, kind: ContainerKind, name: &str) -> Running {
    match container_status(pod, kind, name) {
        Some(s) => Running {
            container_id: s.container_id.clone(),
            restart_count: s.restart_count,
            was_running: s.state.as_ref().is_some_and(|st| st.running.is_some()),
            image_id: Some(s.image_id.clone()).filter(|id| !id.is_empty()),
        },
        None => Running {
            container_id: None,
            restart_count: 0,
            was_running: false,
            image_id: None,
        },
    }
}

fn has_readiness_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
}

/// The upgrade patch for the pending targets of a pod, and the state it records.
///
/// The previous image is what the spec has now, unless an upgrade is already in progress
/// (`recorded`, the pod's state annotation, is `Patched`: the annotation changed mid-rollout):
/// then the last image known to run before it is kept, so a rollback returns to it.
pub fn upgrade_patch(
    pod: &Pod,
    recorded: Option<&PodUpgradeState>,
    targets: &[ResolvedTarget],
    now: Timestamp,
) -> Result<(Patch, PodUpgradeState), StateError> {
    let now = kubernetes_time(now);
    let existing = recorded.filter(|s| s.phase == Phase::Patched);
    let mut ops = Vec::new();
    let mut containers = Vec::new();
    for t in targets {
        let loc = &t.location;
        ops.extend(swap_image(
            loc.kind, loc.index, &loc.name, &loc.image, &t.image,
        ));
        let running = baseline_of(pod, loc.kind, &loc.name);
        let previous_image = existing
            .as_ref()
            .and_then(|s| s.container(&loc.name))
            .map_or_else(|| loc.image.clone(), |c| c.previous_image.clone());
        containers.push(ContainerBaseline {
            name: loc.name.clone(),
            kind: loc.kind,
            index: loc.index,
            previous_image,
            target_image: t.image.clone(),
            container_id: running.container_id,
            restart_count: running.restart_count,
            image_id: running.image_id,
            was_running: running.was_running,
        });
    }
    let state = PodUpgradeState {
        version: STATE_VERSION,
        phase: Phase::Patched,
        patched_at: now,
        finished_at: None,
        containers,
        readiness_gate: has_readiness_gate(pod),
        reason: None,
        message: None,
    };
    ops.push(set_annotation(pod, STATE_ANNOTATION, &state.to_json()?));
    Ok((Patch(ops), state))
}

/// Patch every recorded container back to its previous image, and record the rollback with a
/// fresh baseline (the failed containers' IDs) so that its completion is judged the same way.
pub fn rollback_patch(
    pod: &Pod,
    state: &PodUpgradeState,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(Patch, PodUpgradeState), StateError> {
    let now = kubernetes_time(now);
    let mut ops = Vec::new();
    let mut containers = Vec::new();
    for c in &state.containers {
        ops.extend(swap_image(
            c.kind,
            c.index,
            &c.name,
            &c.target_image,
            &c.previous_image,
        ));
        let running = baseline_of(pod, c.kind, &c.name);
        containers.push(ContainerBaseline {
            container_id: running.container_id,
            restart_count: running.restart_count,
            image_id: running.image_id,
            was_running: running.was_running,
            ..c.clone()
        });
    }
    let rolled = PodUpgradeState {
        version: STATE_VERSION,
        phase: Phase::RollingBack,
        patched_at: now,
        finished_at: None,
        containers,
        readiness_gate: state.readiness_gate,
        reason: Some(reason.into()),
        message: Some(message.into()),
    };
    ops.push(set_annotation(pod, STATE_ANNOTATION, &rolled.to_json()?));
    Ok((Patch(ops), rolled))
}

/// Record a new state without touching the spec (a terminal phase).
pub fn state_patch(pod: &Pod, state: &PodUpgradeState) -> Result<Patch, StateError> {
    Ok(Patch(vec![set_annotation(
        pod,
        STATE_ANNOTATION,
        &state.to_json()?,
    )]))
}

/// The webhook's mutation of a pod being created: set the target images and, when asked,
/// inject our readiness gate (creating `readinessGates` if absent). It reads only the pod's
/// `spec.readinessGates` (the webhook decodes only part of the pod). Idempotent: a pod that
/// already has the images and the gate gets an empty patch, so reinvocation changes nothing.
pub fn new_pod_patch(
    readiness_gates: Option<&[PodReadinessGate]>,
    targets: &[ResolvedTarget],
    inject_gate: bool,
) -> Patch {
    let mut ops = Vec::new();
    for t in targets.iter().filter(|t| t.location.image != t.image) {
        let loc = &t.location;
        ops.push(replace(
            image_path(loc.kind, loc.index, "image"),
            json!(t.image),
        ));
    }
    let has_gate =
        readiness_gates.is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE));
    if inject_gate && !has_gate {
        let gate = json!({ "conditionType": READINESS_GATE });
        if readiness_gates.is_some() {
            ops.push(add(
                PointerBuf::from_tokens(["spec", "readinessGates", "-"]),
                gate,
            ));
        } else {
            ops.push(add(
                PointerBuf::from_tokens(["spec", "readinessGates"]),
                json!([gate]),
            ));
        }
    }
    Patch(ops)
}

/// The `pods/status` patch that sets our readiness gate condition.
///
/// This is a **strategic merge patch** body (`application/strategic-merge-patch+json`): pod
/// `status.conditions` merge by `type` there, so only our condition changes. A JSON merge
/// patch would replace the whole list and drop `Ready`, `PodScheduled`, … — never send it as
/// one. `Ready` itself is never written: kubelet derives it from the gate.
pub fn gate_condition_patch(ready: bool, reason: &str, message: &str, now: Timestamp) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": READINESS_GATE,
                "status": if ready { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": kubernetes_time(now).to_string(),
            }]
        }
    })
}

/// One `pods/status` strategic merge patch that records a finished upgrade in the state
/// annotation and sets our readiness gate condition True. The API server keeps the spec of a
/// `pods/status` write but persists `metadata.annotations` (checked against a real API server
/// in `tests/e2e_controller.rs`), so a drained pod is put back and its record closed in one
/// atomic write: no step between the two for a crash to stop at.
pub fn finish_with_gate_patch(
    state: &PodUpgradeState,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<Value, StateError> {
    let mut body = gate_condition_patch(true, reason, message, now);
    body["metadata"] = json!({ "annotations": { STATE_ANNOTATION: state.to_json()? } });
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation;
    use crate::target;
    use crate::testutil::{fixture_files, fixture_pods};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodStatus,
    };

    const NEW_PROXY: &str = "registry.istio.io/testing/proxyv2:1.24.2";

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().expect("timestamp")
    }

    fn apply(pod: &Pod, patch: &Patch) -> Result<Pod, json_patch::PatchError> {
        let mut doc = serde_json::to_value(pod).expect("pod json");
        json_patch::patch(&mut doc, patch)?;
        Ok(serde_json::from_value(doc).expect("still a pod"))
    }

    fn with_running_status(mut pod: Pod) -> Pod {
        let status = |name: &str, id: &str| ContainerStatus {
            name: name.into(),
            container_id: Some(id.into()),
            restart_count: 1,
            ready: true,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: None }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let spec = pod.spec.clone().unwrap_or_default();
        pod.status = Some(PodStatus {
            container_statuses: Some(
                spec.containers
                    .iter()
                    .map(|c| status(&c.name, &format!("containerd://{}-1", c.name)))
                    .collect(),
            ),
            init_container_statuses: spec.init_containers.as_ref().map(|list| {
                list.iter()
                    .map(|c| status(&c.name, &format!("containerd://{}-1", c.name)))
                    .collect()
            }),
            ..PodStatus::default()
        });
        pod
    }

    fn recorded(pod: &Pod) -> Option<PodUpgradeState> {
        PodUpgradeState::from_pod(pod).expect("a valid record")
    }

    fn gates_of(pod: &Pod) -> Option<&[PodReadinessGate]> {
        pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref())
    }

    fn image_of(pod: &Pod, name: &str) -> String {
        let spec = pod.spec.as_ref().expect("spec");
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
            .expect("container")
    }

    #[test]
    fn upgrade_patch_on_every_istio_fixture_changes_only_istio_proxy() {
        let targets = annotation::parse("istio-proxy=proxyv2:1.24.2").expect("valid");
        let files = fixture_files();
        assert!(
            files.len() >= 9,
            "expected the 9 Istio fixtures, found {files:?}"
        );
        for file in files {
            for pod in fixture_pods(&file) {
                let pod = with_running_status(pod);
                let spec = pod.spec.as_ref().expect("spec");
                let resolved = target::resolve(spec, &targets).expect("resolves");
                let pending: Vec<_> = resolved.pending().cloned().collect();
                assert_eq!(pending.len(), 1, "{file}");
                let (patch, state) = upgrade_patch(&pod, None, &pending, now()).expect("patch");
                let patched = apply(&pod, &patch).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(image_of(&patched, "istio-proxy"), NEW_PROXY, "{file}");
                // istio-init runs the same image and must be left alone.
                assert_eq!(
                    image_of(&patched, "istio-init"),
                    "registry.istio.io/testing/proxyv2:latest",
                    "{file}"
                );
                let recorded = PodUpgradeState::from_pod(&patched)
                    .expect("valid state")
                    .expect("state present");
                assert_eq!(recorded, state);
                let c = &state.containers[0];
                assert_eq!(c.previous_image, "registry.istio.io/testing/proxyv2:latest");
                assert_eq!(
                    c.container_id.as_deref(),
                    Some("containerd://istio-proxy-1")
                );
                assert!(c.was_running);
                let native = file.contains("native-sidecar.")
                    || !(file.contains("old-version") || file.contains("opt-out"));
                let expected_kind = if native {
                    ContainerKind::NativeSidecar
                } else {
                    ContainerKind::Container
                };
                assert_eq!(c.kind, expected_kind, "{file}");
                // Everything else is unchanged.
                let mut back = serde_json::to_value(&patched).expect("json");
                let mut orig = serde_json::to_value(&pod).expect("json");
                let field = expected_kind.spec_field();
                let idx = c.index;
                back["spec"][field][idx]["image"] = json!("x");
                orig["spec"][field][idx]["image"] = json!("x");
                back["metadata"]["annotations"]
                    .as_object_mut()
                    .expect("annotations")
                    .remove(STATE_ANNOTATION);
                if orig["metadata"]["annotations"].is_null() {
                    back["metadata"]
                        .as_object_mut()
                        .expect("metadata")
                        .remove("annotations");
                }
                assert_eq!(
                    back, orig,
                    "{file}: only the image and the state may change"
                );
            }
        }
    }

    #[test]
    fn patch_paths_are_exact_and_escaped() {
        let pod = with_running_status(fixture_pods("native-sidecar.yaml.injected").remove(0));
        let targets = annotation::parse("istio-proxy=:1.24.2").expect("valid");
        let resolved = target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
        let (patch, _) = upgrade_patch(&pod, None, &resolved.resolved, now()).expect("patch");
        let ops = serde_json::to_value(&patch).expect("json");
        let paths: Vec<(&str, &str)> = ops
            .as_array()
            .expect("array")
            .iter()
            .map(|op| {
                (
                    op["op"].as_str().expect("op"),
                    op["path"].as_str().expect("path"),
                )
            })
            .collect();
        assert_eq!(
            paths,
            vec![
                ("test", "/spec/initContainers/1/name"),
                ("test", "/spec/initContainers/1/image"),
                ("replace", "/spec/initContainers/1/image"),
                ("add", "/metadata/annotations/inplace-upgrade.io~1state"),
            ]
        );
    }

    #[test]
    fn upgrade_patch_creates_the_annotations_map() {
        let mut pod =
            with_running_status(fixture_pods("hello-old-version.yaml.injected").remove(0));
        pod.metadata.annotations = None;
        let targets = annotation::parse("istio-proxy=:2").expect("valid");
        let resolved = target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
        let (patch, state) = upgrade_patch(&pod, None, &resolved.resolved, now()).expect("patch");
        let patched = apply(&pod, &patch).expect("applies to a pod without annotations");
        assert_eq!(
            PodUpgradeState::from_pod(&patched).expect("ok"),
            Some(state)
        );
        assert_eq!(patched.metadata.annotations.map(|a| a.len()), Some(1));
    }

    #[test]
    fn a_changed_pod_fails_the_test_op() {
        let pod = with_running_status(fixture_pods("hello-old-version.yaml.injected").remove(0));
        let targets = annotation::parse("istio-proxy=:2").expect("valid");
        let resolved = target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
        let (patch, _) = upgrade_patch(&pod, None, &resolved.resolved, now()).expect("patch");
        let mut changed = pod.clone();
        if let Some(c) = changed
            .spec
            .as_mut()
            .and_then(|s| s.containers.iter_mut().find(|c| c.name == "istio-proxy"))
        {
            c.image = Some("someone/else:1".into());
        }
        assert!(apply(&changed, &patch).is_err());
    }

    #[test]
    fn rollback_restores_the_previous_image_with_a_fresh_baseline() {
        let pod = with_running_status(fixture_pods("hello-multi.yaml.injected").remove(0));
        let targets = annotation::parse("istio-proxy=:bad").expect("valid");
        let resolved = target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
        let (patch, state) = upgrade_patch(&pod, None, &resolved.resolved, now()).expect("patch");
        let mut upgraded = apply(&pod, &patch).expect("applies");
        // The new container crash-loops with a new ID.
        if let Some(s) = upgraded
            .status
            .as_mut()
            .and_then(|s| s.init_container_statuses.as_mut())
            .and_then(|l| l.iter_mut().find(|s| s.name == "istio-proxy"))
        {
            s.container_id = Some("containerd://bad".into());
            s.restart_count = 4;
        }
        let (rollback, rolled) =
            rollback_patch(&upgraded, &state, "CrashLoopBackOff", "back-off", now()).expect("rb");
        let restored = apply(&upgraded, &rollback).expect("applies");
        assert_eq!(
            image_of(&restored, "istio-proxy"),
            "registry.istio.io/testing/proxyv2:latest"
        );
        assert_eq!(rolled.phase, Phase::RollingBack);
        assert_eq!(
            rolled.containers[0].container_id.as_deref(),
            Some("containerd://bad")
        );
        assert_eq!(rolled.containers[0].restart_count, 4);
        assert_eq!(rolled.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(
            PodUpgradeState::from_pod(&restored).expect("ok"),
            Some(rolled.clone())
        );
        // Recording the outcome touches only the annotation.
        let done = rolled.finished(Phase::RolledBack, None, None, now());
        let finished =
            apply(&restored, &state_patch(&restored, &done).expect("patch")).expect("applies");
        assert_eq!(
            PodUpgradeState::from_pod(&finished).expect("ok"),
            Some(done)
        );
        assert_eq!(finished.spec, restored.spec);
    }

    #[test]
    fn re_planning_mid_rollout_keeps_the_last_good_image() {
        let pod = with_running_status(fixture_pods("hello-old-version.yaml.injected").remove(0));
        let spec = pod.spec.clone().expect("spec");
        let first =
            target::resolve(&spec, &annotation::parse("istio-proxy=:2").expect("v")).expect("ok");
        let (patch, _) = upgrade_patch(&pod, None, &first.resolved, now()).expect("patch");
        let mid = apply(&pod, &patch).expect("applies");
        let second = target::resolve(
            mid.spec.as_ref().expect("spec"),
            &annotation::parse("istio-proxy=:3").expect("v"),
        )
        .expect("ok");
        let (_, state) =
            upgrade_patch(&mid, recorded(&mid).as_ref(), &second.resolved, now()).expect("patch");
        assert_eq!(
            state.containers[0].previous_image,
            "registry.istio.io/testing/proxyv2:latest"
        );
        assert_eq!(
            state.containers[0].target_image,
            "registry.istio.io/testing/proxyv2:3"
        );
    }

    #[test]
    fn new_pod_mutation_sets_images_and_injects_the_gate_idempotently() {
        for file in fixture_files() {
            for pod in fixture_pods(&file) {
                let targets = annotation::parse("istio-proxy=:1.24.2").expect("valid");
                let resolved =
                    target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
                let patch = new_pod_patch(gates_of(&pod), &resolved.resolved, true);
                let mutated = apply(&pod, &patch).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(image_of(&mutated, "istio-proxy"), NEW_PROXY, "{file}");
                let gates = mutated
                    .spec
                    .as_ref()
                    .and_then(|s| s.readiness_gates.clone())
                    .expect("gates");
                assert_eq!(
                    gates
                        .iter()
                        .filter(|g| g.condition_type == READINESS_GATE)
                        .count(),
                    1
                );
                // Reinvocation on the mutated pod is a no-op.
                let again =
                    target::resolve(mutated.spec.as_ref().expect("spec"), &targets).expect("ok");
                assert!(
                    new_pod_patch(gates_of(&mutated), &again.resolved, true)
                        .0
                        .is_empty(),
                    "{file}"
                );
                // Without the gate only the image changes.
                let no_gate = apply(
                    &pod,
                    &new_pod_patch(gates_of(&pod), &resolved.resolved, false),
                )
                .expect("applies");
                assert_eq!(
                    no_gate
                        .spec
                        .as_ref()
                        .and_then(|s| s.readiness_gates.clone()),
                    pod.spec.as_ref().and_then(|s| s.readiness_gates.clone())
                );
            }
        }
    }

    #[test]
    fn gate_is_appended_to_existing_readiness_gates() {
        let mut pod = fixture_pods("frontend.yaml.injected").remove(0);
        if let Some(spec) = pod.spec.as_mut() {
            spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/other".into(),
            }]);
        }
        let mutated = apply(&pod, &new_pod_patch(gates_of(&pod), &[], true)).expect("applies");
        let gates: Vec<String> = mutated
            .spec
            .and_then(|s| s.readiness_gates)
            .expect("gates")
            .into_iter()
            .map(|g| g.condition_type)
            .collect();
        assert_eq!(
            gates,
            vec!["example.com/other".to_string(), READINESS_GATE.to_string()]
        );
    }

    #[test]
    fn recorded_times_have_kubernetes_second_precision() {
        let pod = with_running_status(fixture_pods("hello-old-version.yaml.injected").remove(0));
        let targets = annotation::parse("istio-proxy=:2").expect("valid");
        let resolved = target::resolve(pod.spec.as_ref().expect("spec"), &targets).expect("ok");
        let precise: Timestamp = "2026-01-01T00:00:07.999Z".parse().expect("timestamp");
        let (_, state) = upgrade_patch(&pod, None, &resolved.resolved, precise).expect("patch");
        assert_eq!(state.patched_at.to_string(), "2026-01-01T00:00:07Z");
        let (_, rolled) = rollback_patch(&pod, &state, "x", "y", precise).expect("patch");
        assert_eq!(rolled.patched_at.to_string(), "2026-01-01T00:00:07Z");
        assert_eq!(
            gate_condition_patch(true, SERVING_REASON, "", precise)["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:07Z"
        );
    }

    #[test]
    fn gate_condition_is_a_strategic_merge_body() {
        let body = gate_condition_patch(
            false,
            DRAINING_REASON,
            "draining before the image change",
            now(),
        );
        assert_eq!(
            body,
            json!({"status": {"conditions": [{
                "type": "inplace-upgrade.io/ready",
                "status": "False",
                "reason": "Draining",
                "message": "draining before the image change",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]}})
        );
        assert_eq!(
            gate_condition_patch(true, SERVING_REASON, "", now())["status"]["conditions"][0]["status"],
            "True"
        );
    }
}
