//! Pod CREATE: set the target image on the containers the pod's workload (or Namespace) asks
//! for, and inject our readiness gate.
//!
//! Never denies: any problem gives an allowed response without a patch (or with the part of
//! the patch that is certain) and an admission warning naming the problem; the controller
//! converges whatever was missed. Idempotent: the patch only holds what differs, so the
//! reinvocation that Istio's injector triggers (`reinvocationPolicy: IfNeeded`) on an already
//! mutated pod gives an empty patch.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::pod::AdmittedPod;
use super::{ClusterView, Settings, warning};
use crate::intent::{self, Subject};
use crate::policy::PolicyError;
use crate::status::WorkloadStatus;
use crate::target::{ResolvedTarget, resolve};
use crate::workload::{Owner, controller_of, owning_workload};
use inplace_upgrade_webhook::{AdmissionHandler, AdmissionRequest, AdmissionResponse, Operation};

/// What the webhook does to one new pod.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodMutation {
    /// Targets to set (only those whose container does not already ask for the image).
    pub targets: Vec<ResolvedTarget>,
    pub inject_gate: bool,
    pub warnings: Vec<String>,
}

/// The pod mutation as an admission response, on a review decoded straight into the parts of
/// the pod it reads ([`AdmittedPod`]).
/// Only pod CREATE is mutated; anything else is allowed unchanged. `dryRun` requests get the
/// same answer: nothing here has side effects.
pub fn mutate_pod(
    request: &AdmissionRequest<AdmittedPod>,
    view: &impl ClusterView,
    settings: &Settings,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create || request.kind.kind != "Pod" {
        return response;
    }
    let Some(pod) = &request.object else {
        return with_warnings(response, vec![warning("pod CREATE without an object")]);
    };
    if pod.spec.is_none() {
        // The API server never sends one; a patch adding the gate under `/spec` would not apply.
        return with_warnings(response, vec![warning("the pod has no spec; not mutated")]);
    }
    // At CREATE the pod may have neither a name (generateName) nor a namespace in its
    // metadata; the request carries the namespace.
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .or(request.namespace.as_deref());
    let mutation = decide_in(pod, namespace, view, settings);
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref());
    let patch = crate::patch::new_pod_patch(gates, &mutation.targets, mutation.inject_gate);
    let response = if patch.0.is_empty() {
        response
    } else {
        match response.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => {
                return with_warnings(
                    response,
                    vec![warning(format!(
                        "cannot encode the patch: {e}; not mutated"
                    ))],
                );
            }
        }
    };
    with_warnings(response, mutation.warnings)
}

/// The answer to a pod review whose object is not a valid Pod: allowed, unchanged, with a
/// warning naming the problem (the webhook never denies a pod).
pub fn unreadable_pod(
    request: &AdmissionRequest<AdmittedPod>,
    error: &serde_json::Error,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create || request.kind.kind != "Pod" {
        return response;
    }
    with_warnings(
        response,
        vec![warning(format!(
            "cannot read the pod: {error}; not mutated"
        ))],
    )
}

/// [`mutate_pod`] and [`unreadable_pod`] as the transport's handler over `view`.
pub struct PodMutator<V> {
    view: Arc<V>,
    settings: Arc<Settings>,
}

impl<V> PodMutator<V> {
    pub fn new(view: Arc<V>, settings: Arc<Settings>) -> Self {
        PodMutator { view, settings }
    }
}

impl<V: ClusterView + Send + Sync + 'static> AdmissionHandler<AdmittedPod> for PodMutator<V> {
    fn review(&self, request: &AdmissionRequest<AdmittedPod>) -> AdmissionResponse {
        mutate_pod(request, &*self.view, &self.settings)
    }

    fn review_unreadable(
        &self,
        request: &AdmissionRequest<AdmittedPod>,
        error: &serde_json::Error,
    ) -> Option<AdmissionResponse> {
        Some(unreadable_pod(request, error))
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// The decision for one pod (namespace set), from the view alone.
pub fn decide(pod: &AdmittedPod, view: &impl ClusterView, settings: &Settings) -> PodMutation {
    decide_in(pod, pod.metadata.namespace.as_deref(), view, settings)
}

/// [`decide`] for a pod in `namespace` (which its metadata may not name yet).
fn decide_in(
    pod: &AdmittedPod,
    namespace: Option<&str>,
    view: &impl ClusterView,
    settings: &Settings,
) -> PodMutation {
    let mut out = PodMutation::default();
    let Some(namespace) = namespace.map(str::to_owned) else {
        out.warnings
            .push(warning("the pod has no namespace; not mutated"));
        return out;
    };
    let Some(owner) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return out; // a bare pod: no workload rolls it
    };
    if !matches!(
        owner.kind.as_str(),
        "ReplicaSet" | "StatefulSet" | "DaemonSet"
    ) {
        return out; // Jobs and the like: not ours
    }
    if !view.synced() {
        out.warnings.push(warning(
            "the webhook's caches are still syncing; this pod was not mutated (the controller will upgrade it in place)",
        ));
        return out;
    }
    let owner = owning_workload(&namespace, pod.owner_references(), pod.labels(), |rs| {
        view.replica_set(&namespace, rs)
            .map(|rs| controller_of(rs.owner_references()).cloned())
    });
    let workload = match owner {
        Owner::Workload(key) => match view.workload(&key) {
            Some(w) => w,
            None => return not_cached(out, key.to_string()),
        },
        Owner::UnknownReplicaSet(what) => return not_cached(out, what),
        Owner::NotOurs => return out,
    };
    let ns = view.namespace(&namespace);
    let policies = view.policies();
    let status = WorkloadStatus::of(&workload);
    let subject = Subject {
        workload: &workload,
        namespace: ns.as_deref(),
        policies: &policies,
        controller_namespace: &settings.controller_namespace,
        status: status.as_ref(),
        now: Timestamp::now(),
    };
    let intent = intent::decide(&subject, || {
        intent::sibling_statuses(&workload.key, view.workloads_in(&namespace))
    });
    let governance = match &intent.governance {
        Ok(Some(g)) => g,
        Ok(None) => return out, // the validating webhook and the status report this
        Err(e) => {
            out.warnings
                .push(warning(format!("{e}; this pod was not mutated")));
            return out;
        }
    };
    let spec = intent.spec;
    let policy_name = governance.policy.name_any();
    // The gate goes into every pod a policy governs, annotated or not: a readiness gate cannot
    // be added to a running pod, so only a pod born with it can be drained by a later
    // in-place upgrade. (The controller sets its condition True within moments.)
    out.inject_gate = spec.readiness_gate && view.controller_alive();

    if let Some(e) = &intent.asked.invalid {
        out.warnings.push(warning(format!(
            "the inplace-upgrade annotation of {} is invalid: {e}; no image was set on this pod",
            workload.key
        )));
        return out;
    }
    if intent.asked.source.is_none() {
        return out; // nothing asked
    }
    let resolved = match pod
        .spec
        .as_ref()
        .map(|spec| resolve(spec, intent.targets()))
    {
        Some(Ok(resolved)) => resolved,
        Some(Err(e)) => {
            out.warnings
                .push(warning(format!("{e}; no image was set on this pod")));
            return out;
        }
        None => return out,
    };
    if resolved.resolved.is_empty() {
        return out; // e.g. a Namespace-wide istio-proxy target on a pod without the sidecar (yet)
    }
    if intent.paused() {
        return out; // paused: no new image, but the gate keeps the pod upgradable later
    }
    let allowlist = match spec.image_allowlist() {
        Ok(a) => a,
        Err(e) => {
            out.warnings.push(warning(format!(
                "InPlaceUpgradePolicy {policy_name:?}: {e}; no image was set"
            )));
            return out;
        }
    };
    for target in resolved.pending() {
        let name = &target.location.name;
        if intent.failed.iter().any(|f| f.is(name, &target.image)) {
            out.warnings.push(warning(format!(
                "target {name}={} failed before in this workload; not set on the new pod (change the annotation or ask for a retry)",
                target.image
            )));
            continue;
        }
        match spec.check_target(&allowlist, name, &target.image) {
            Ok(()) => out.targets.push(target.clone()),
            Err(PolicyError::ContainerNotAllowed { .. }) => out.warnings.push(warning(format!(
                "InPlaceUpgradePolicy {policy_name:?} (containers) does not allow container {name:?}; not set"
            ))),
            Err(e) => out.warnings.push(warning(format!(
                "InPlaceUpgradePolicy {policy_name:?} (allowedImages): {e}; not set"
            ))),
        }
    }
    out
}

/// The pod's owner is not in the webhook's cache (yet): not mutated, and said so.
fn not_cached(mut out: PodMutation, what: String) -> PodMutation {
    out.warnings.push(warning(format!(
        "{what} is not in the webhook's cache yet; this pod was not mutated (the controller will upgrade it in place)"
    )));
    out
}
