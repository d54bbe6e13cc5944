//! Pre-pull before drain: the target image is put on a pod's node before the pod is taken out
//! of load balancing, so the drained window is a container start, not a download (a real
//! kubelet kills the old container first and pulls after: DESIGN §10).
//!
//! No node daemon: for each (node, image) a short-lived pod, pinned to the node with
//! `spec.nodeName`, whose only job is to make kubelet pull the image. Its one container runs a
//! path that exists in no image, so nothing of the image ever runs: kubelet pulls, creates the
//! container, and the runtime fails to exec it (`terminated`, reason `StartError`, exit code
//! 128, after a successful pull), or the pull fails (`ErrImagePull`, `ImagePullBackOff`…).
//! Either way the pod says whether the image is on the node, and the controller deletes it.
//!
//! Everything here is pure: the pod we create ([`prepull_pod`]), its name, and what its status
//! says ([`pull_state`]). The controller creates and deletes; the planner waits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStatus, LocalObjectReference, Pod, PodSecurityContext,
    PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::workload::{WorkloadKey, WorkloadKind, WorkloadView};

/// Label on every pre-pull pod (value `"true"`): `kubectl get pods -l inplace-upgrade.io/prepull`.
pub const LABEL: &str = "inplace-upgrade.io/prepull";
/// Annotation naming the workload a pre-pull pod works for (`<Kind>/<name>`, same namespace):
/// the controller finds its pre-pull pods by it, and their changes wake that workload.
pub const FOR_ANNOTATION: &str = "inplace-upgrade.io/prepull-for";
/// Annotation with the node and image the pod pulls (`<node> <image>`), as the controller
/// keyed it (the spec holds them too, but the image there may be rewritten by other webhooks).
pub const PULL_ANNOTATION: &str = "inplace-upgrade.io/prepull-image";
/// The pre-pull pod's one container.
pub const CONTAINER: &str = "prepull";
/// What the container is told to run: a path no image has, so the runtime fails to start it
/// after kubelet pulled the image and nothing of the image runs.
pub const COMMAND: &str = "/.inplace-upgrade-prepull/does-not-exist";

/// kubelet's waiting reasons that say the image cannot be pulled (or will not be).
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
];

/// One image on one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PullKey {
    pub node: String,
    /// The resolved target image, as the plan names it.
    pub image: String,
}

/// What is known of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// A pre-pull pod exists and has not said yet.
    Pulling,
    /// The image is on the node.
    Pulled,
    /// kubelet could not pull it (`reason`: its waiting reason), or the pre-pull pod could not
    /// be created or run.
    Failed { reason: String, message: String },
    /// The API server refused the image patch itself (`reason`: its status reason, e.g.
    /// `Forbidden` from Pod Security admission, which checks an image change again): no pull
    /// can help, and every pod of the workload would be refused alike. Kept under
    /// [`refusal_key`], not per node.
    Refused { reason: String, message: String },
}

/// Where a refused image patch is remembered among a workload's [`Pulls`]: under the image, for
/// every node (admission refuses a pod for its namespace and spec, not for its node).
pub fn refusal_key(image: &str) -> PullKey {
    PullKey {
        node: String::new(),
        image: image.to_string(),
    }
}

/// Pulls known for a workload's pods.
pub type Pulls = BTreeMap<PullKey, PullState>;

/// Settings of the pre-pull pod.
#[derive(Debug, Clone, Copy)]
pub struct PrePullPod<'a> {
    pub workload: &'a WorkloadView,
    pub key: &'a PullKey,
    /// The pod that needs the image: its pull secrets and tolerations are copied.
    pub for_pod: &'a PodSpec,
    /// `activeDeadlineSeconds`: kubelet fails the pod when the pull takes longer.
    pub timeout_seconds: i64,
}

/// The name of the pre-pull pod of `workload` for `key`: one per (workload, node, image), so
/// a second create for the same pull is refused (`AlreadyExists`) instead of duplicated.
pub fn pod_name(workload: &WorkloadKey, key: &PullKey) -> String {
    let seed = format!(
        "{}/{}\n{}\n{}",
        workload.kind.as_str(),
        workload.name,
        key.node,
        key.image
    );
    let sum = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let hex: String = sum.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("inplace-prepull-{hex}")
}

/// The pre-pull pod: pinned to the node, the image's pull secrets, the pod's tolerations (so
/// that a taint the pod tolerates does not evict it), no service account token, no restart,
/// a deadline, and a security context that Pod Security `restricted` admits. Owned (not
/// controlled) by the workload, so garbage collection removes it with the workload and no
/// workload controller ever counts or adopts it (its labels are ours only).
pub fn prepull_pod(p: &PrePullPod<'_>) -> Pod {
    let w = &p.workload.key;
    let tiny = || {
        Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("16Mi".into())),
        ]))
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(w, p.key)),
            namespace: Some(w.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "inplace-upgrade".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    FOR_ANNOTATION.to_string(),
                    format!("{}/{}", w.kind.as_str(), w.name),
                ),
                (
                    PULL_ANNOTATION.to_string(),
                    format!("{} {}", p.key.node, p.key.image),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: w.kind.as_str().into(),
                name: w.name.clone(),
                uid: p.workload.uid.clone(),
                controller: None,
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.key.node.clone()),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(p.timeout_seconds.max(1)),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            image_pull_secrets: p
                .for_pod
                .image_pull_secrets
                .clone()
                .filter(|s: &Vec<LocalObjectReference>| !s.is_empty()),
            tolerations: p
                .for_pod
                .tolerations
                .clone()
                .filter(|t: &Vec<Toleration>| !t.is_empty()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65534),
                run_as_group: Some(65534),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(p.key.image.clone()),
                // Kubelet pulls by its policy for the tag (`:latest` or none: Always); the
                // container that would run it is the same either way.
                command: Some(vec![COMMAND.into()]),
                args: Some(Vec::new()),
                resources: Some(ResourceRequirements {
                    requests: tiny(),
                    limits: tiny(),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                termination_message_policy: Some("File".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The workload a pre-pull pod works for (its [`FOR_ANNOTATION`]), if it is one of ours.
pub fn workload_of(namespace: &str, for_annotation: &str) -> Option<WorkloadKey> {
    let (kind, name) = for_annotation.split_once('/')?;
    let kind = match kind {
        "Deployment" => WorkloadKind::Deployment,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        "ReplicaSet" => WorkloadKind::ReplicaSet,
        _ => return None,
    };
    (!name.is_empty()).then(|| WorkloadKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The pull a pre-pull pod is for ([`PULL_ANNOTATION`]).
pub fn pull_key(pod: &Pod) -> Option<PullKey> {
    let raw = pod.metadata.annotations.as_ref()?.get(PULL_ANNOTATION)?;
    let (node, image) = raw.split_once(' ')?;
    Some(PullKey {
        node: node.into(),
        image: image.into(),
    })
}

/// What a pre-pull pod's status says of its pull.
///
/// The image is on the node once kubelet created a container from it: the container ran,
/// or terminated (the expected `StartError`: the command does not exist), or has an imageID,
/// or waits for a reason that comes after the pull (`CreateContainerError`,
/// `CreateContainerConfigError`, `RunContainerError`: kubelet pulls first). A pull failure is a
/// waiting reason of [`PULL_FAILURES`]. A pod that failed without either (its deadline ran out
/// while pulling, or kubelet refused it) failed with the pod's reason.
pub fn pull_state(pod: &Pod) -> PullState {
    let status = pod.status.as_ref();
    let container: Option<&ContainerStatus> = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER));
    if let Some(c) = container {
        let state = c.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref());
        let created = state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || !c.image_id.is_empty()
            || waiting.and_then(|w| w.reason.as_deref()).is_some_and(|r| {
                matches!(
                    r,
                    "CreateContainerError" | "CreateContainerConfigError" | "RunContainerError"
                )
            });
        if created {
            return PullState::Pulled;
        }
        if let Some(w) = waiting
            && let Some(reason) = w.reason.as_deref()
            && PULL_FAILURES.contains(&reason)
        {
            return PullState::Failed {
                reason: reason.into(),
                message: w.message.clone().unwrap_or_default(),
            };
        }
    }
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PullState::Pulled,
        Some("Failed") => {
            let s = status.expect("a phase has a status");
            PullState::Failed {
                reason: s.reason.clone().unwrap_or_else(|| "Failed".into()),
                message: s.message.clone().unwrap_or_else(|| {
                    "the pre-pull pod failed before the image was pulled".into()
                }),
            }
        }
        _ => PullState::Pulling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload() -> WorkloadView {
        WorkloadView {
            key: WorkloadKey {
                kind: WorkloadKind::Deployment,
                namespace: "shop".into(),
                name: "web".into(),
            },
            uid: "uid-1".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            desired_replicas: 2,
            selector: None,
            settled: true,
        }
    }

    fn key() -> PullKey {
        PullKey {
            node: "node-a".into(),
            image: "registry.local/proxyv2:1.24.2".into(),
        }
    }

    fn built() -> Pod {
        let w = workload();
        let k = key();
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "app", "image": "app:1"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoExecute"}],
            "serviceAccountName": "powerful",
        }))
        .unwrap();
        prepull_pod(&PrePullPod {
            workload: &w,
            key: &k,
            for_pod: &spec,
            timeout_seconds: 300,
        })
    }

    #[test]
    fn the_pod_pulls_and_can_run_nothing() {
        let pod = built();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name, None, "never the pod's account");
        assert_eq!(spec.active_deadline_seconds, Some(300));
        assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/proxyv2:1.24.2"));
        assert_eq!(c.command.as_deref(), Some(&[COMMAND.to_string()][..]));
        assert_eq!(
            c.args.as_deref(),
            Some(&[][..]),
            "the image's CMD is not run"
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Deployment", "uid-1")
        );
        assert_eq!(
            owner.controller, None,
            "no workload controller may adopt it"
        );
        assert_eq!(pull_key(&pod), Some(key()));
        assert_eq!(
            workload_of(
                "shop",
                &pod.metadata.annotations.as_ref().unwrap()[FOR_ANNOTATION]
            ),
            Some(workload().key)
        );
    }

    /// The rules of Pod Security `restricted` (v1.35) that a pod spec can break, checked on
    /// the pod we create (the API server enforces them in `tests/e2e_controller.rs`).
    #[test]
    fn the_pod_is_restricted() {
        let pod = built();
        let spec = pod.spec.as_ref().unwrap();
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_ne!(psc.run_as_user, Some(0));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert!(spec.host_network.is_none() && spec.host_pid.is_none() && spec.volumes.is_none());
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.privileged, None);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
            assert!(c.ports.is_none());
        }
    }

    #[test]
    fn names_are_one_per_workload_node_and_image() {
        let w = workload().key;
        let a = pod_name(&w, &key());
        assert_eq!(a, pod_name(&w, &key()));
        assert!(a.len() <= 63, "{a}");
        let other_node = PullKey {
            node: "node-b".into(),
            ..key()
        };
        let other_image = PullKey {
            image: "registry.local/proxyv2:1.24.3".into(),
            ..key()
        };
        assert_ne!(a, pod_name(&w, &other_node));
        assert_ne!(a, pod_name(&w, &other_image));
    }

    fn with_status(status: serde_json::Value) -> Pod {
        let mut pod = built();
        pod.status = Some(serde_json::from_value(status).unwrap());
        pod
    }

    fn container(state: serde_json::Value, image_id: &str) -> serde_json::Value {
        json!({"containerStatuses": [{
            "name": CONTAINER, "image": "x", "imageID": image_id, "ready": false,
            "restartCount": 0, "state": state,
        }]})
    }

    #[test]
    fn pull_states_as_kubelet_reports_them() {
        let failed = |reason: &str| PullState::Failed {
            reason: reason.into(),
            message: "m".into(),
        };
        let cases = [
            (json!({"phase": "Pending"}), PullState::Pulling),
            (
                container(json!({"waiting": {"reason": "ContainerCreating"}}), ""),
                PullState::Pulling,
            ),
            // The expected end: pulled, then the runtime cannot exec the command.
            (
                container(
                    json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": "exec: no such file"}}),
                    "sha256:abc",
                ),
                PullState::Pulled,
            ),
            (
                container(json!({"running": {}}), "sha256:abc"),
                PullState::Pulled,
            ),
            (
                container(json!({"waiting": {"reason": "RunContainerError"}}), ""),
                PullState::Pulled,
            ),
            (
                container(
                    json!({"waiting": {"reason": "ErrImagePull", "message": "m"}}),
                    "",
                ),
                failed("ErrImagePull"),
            ),
            (
                container(
                    json!({"waiting": {"reason": "ImagePullBackOff", "message": "m"}}),
                    "",
                ),
                failed("ImagePullBackOff"),
            ),
            (
                container(
                    json!({"waiting": {"reason": "InvalidImageName", "message": "m"}}),
                    "",
                ),
                failed("InvalidImageName"),
            ),
            (
                json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "m"}),
                failed("DeadlineExceeded"),
            ),
        ];
        for (status, want) in cases {
            assert_eq!(pull_state(&with_status(status.clone())), want, "{status}");
        }
    }

    #[test]
    fn foreign_annotations_name_no_workload() {
        assert_eq!(workload_of("ns", "CronJob/x"), None);
        assert_eq!(workload_of("ns", "Deployment/"), None);
        assert_eq!(workload_of("ns", "garbage"), None);
    }
}
