//! Validation of what users write: the `inplace-upgrade` annotation on workloads and
//! Namespaces, and InPlaceUpgradePolicy objects.
//!
//! Denials carry the core's message (it names the entry, the container, the policy and the
//! rule); things that may be fine later are admission warnings.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use kube::ResourceExt;
use kube::core::{ApiResource, DynamicObject, DynamicResourceScope, ObjectMeta, Resource};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClusterView, Settings, typed, warning};
use crate::TARGETS_ANNOTATION;
use crate::annotation::{self, Target};
use crate::istio;
use crate::policy::{InPlaceUpgradePolicy, PolicyError, Scope, governing_policy, selector_matches};
use crate::target::{TargetError, locate};
use crate::workload::WorkloadKind;
use inplace_upgrade_webhook::{AdmissionRequest, AdmissionResponse, Operation};

/// What validation concluded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub denied: Option<String>,
    pub warnings: Vec<String>,
}

impl Verdict {
    fn deny(message: impl Into<String>) -> Self {
        Verdict {
            denied: Some(message.into()),
            warnings: Vec::new(),
        }
    }

    fn respond<K: Resource>(self, request: &AdmissionRequest<K>) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(request);
        if let Some(message) = self.denied {
            response = response.deny(message);
        }
        if !self.warnings.is_empty() {
            response.warnings = Some(self.warnings);
        }
        response
    }
}

/// What the validation of a workload or Namespace reads: the metadata, decoded; the spec kept
/// as the JSON text it came in, read only when an annotation changed (most updates of a
/// workload never touch it, and an UPDATE review carries two copies of it).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkloadObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Box<RawValue>>,
}

impl WorkloadObject {
    /// The pod template, if the object has one that reads as a `PodTemplateSpec`.
    pub fn pod_template(&self) -> Option<PodTemplateSpec> {
        #[derive(Deserialize)]
        struct Spec {
            template: Option<PodTemplateSpec>,
        }
        let spec: Spec = serde_json::from_str(self.spec.as_ref()?.get()).ok()?;
        spec.template
    }

    /// The pod template's spec, if the object has one that reads as a `PodSpec`.
    pub fn pod_template_spec(&self) -> Option<PodSpec> {
        self.pod_template()?.spec
    }
}

impl Resource for WorkloadObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet) and Namespaces at CREATE and
/// UPDATE, when their `inplace-upgrade` annotation is new or changed.
pub fn validate_workload_or_namespace(
    request: &AdmissionRequest<WorkloadObject>,
    view: &impl ClusterView,
    settings: &Settings,
) -> AdmissionResponse {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return AdmissionResponse::from(request);
    }
    let Some(object) = &request.object else {
        return AdmissionResponse::from(request);
    };
    check_workload_or_namespace(
        &request.kind.kind,
        object,
        request.old_object.as_ref(),
        request.namespace.as_deref(),
        view,
        settings,
    )
    .respond(request)
}

/// The decision of [`validate_workload_or_namespace`] on the decoded parts of a request.
pub fn check_workload_or_namespace(
    kind: &str,
    object: &WorkloadObject,
    old_object: Option<&WorkloadObject>,
    request_namespace: Option<&str>,
    view: &impl ClusterView,
    settings: &Settings,
) -> Verdict {
    let value = |o: &WorkloadObject| o.annotations().get(TARGETS_ANNOTATION).cloned();
    let Some(written) = value(object) else {
        return Verdict::default();
    };
    if old_object.and_then(value).as_deref() == Some(written.as_str()) {
        return Verdict::default(); // unchanged: it was checked when written
    }
    let is_workload = WorkloadKind::from_kind(kind).is_some();
    if !is_workload && kind != "Namespace" {
        return Verdict::default();
    }
    // The Deployment controller copies the Deployment's annotations onto its ReplicaSets,
    // which are not workloads of their own: denying here would stall the Deployment's rollout
    // when a policy changed after the Deployment was admitted.
    if kind == "ReplicaSet"
        && object
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true))
    {
        return Verdict::default();
    }
    let targets = match annotation::parse(&written) {
        Ok(targets) => targets,
        Err(e) => {
            return Verdict::deny(format!(
                "annotation {TARGETS_ANNOTATION}: {written:?} is invalid: {e}"
            ));
        }
    };
    let empty = BTreeMap::new();
    if kind == "Namespace" {
        let name = object.name_any();
        return check_namespace(&name, object.labels(), &targets, view, settings);
    }
    let namespace = object
        .namespace()
        .or_else(|| request_namespace.map(str::to_owned))
        .unwrap_or_default();
    let pod_template = object.pod_template();
    let template = pod_template.as_ref().and_then(|t| t.spec.clone());
    let ns = view.namespace(&namespace);
    let ns_labels = ns.as_ref().map(|n| n.labels()).unwrap_or(&empty);
    let policies = view.policies();
    let scope = Scope {
        namespace: &namespace,
        namespace_labels: ns_labels,
        workload_labels: object.labels(),
        controller_namespace: &settings.controller_namespace,
    };
    let mut verdict = Verdict::default();
    let governance = match governing_policy(&policies, &scope) {
        Ok(g) => g,
        Err(e) => {
            verdict.warnings.push(warning(format!(
                "{e}; nothing is upgraded here until that policy is fixed"
            )));
            None
        }
    };
    if governance.is_none() && verdict.warnings.is_empty() {
        verdict.warnings.push(warning(format!(
            "no InPlaceUpgradePolicy enables namespace {namespace:?} for this {kind}; nothing is upgraded until one does"
        )));
    }
    let guard = governance
        .as_ref()
        .is_none_or(|g| g.policy.spec.istio_revision_guard);
    let template_pod = Pod {
        metadata: pod_template
            .as_ref()
            .and_then(|t| t.metadata.clone())
            .unwrap_or_default(),
        ..Pod::default()
    };
    for target in &targets {
        let location = match template
            .as_ref()
            .map(|spec| locate(spec, &target.container))
        {
            Some(Ok(Some(location))) => Some(location),
            Some(Ok(None)) | None => {
                let istio = match istio::asked(ns_labels, template_pod.labels()) {
                    istio::Asked::Revision { name, via } if guard => format!(
                        "; where Istio's injector adds it, pods injected by a revision other than {name:?} (what the {via} asks for) are held back ({}): they need re-injection",
                        istio::REASON
                    ),
                    _ => String::new(),
                };
                verdict.warnings.push(warning(format!(
                    "container {:?} is not in the pod template; the target applies once it is there (e.g. istio-proxy added by Istio's injector at pod creation){istio}",
                    target.container
                )));
                None
            }
            Some(Err(e @ TargetError::RunToCompletionInit { .. })) => {
                return Verdict::deny(format!("annotation {TARGETS_ANNOTATION}: {e}"));
            }
            Some(Err(e)) => return Verdict::deny(format!("annotation {TARGETS_ANNOTATION}: {e}")),
        };
        // A template Istio's record is already in (`istioctl kube-inject` output): its pods
        // carry that record, so the guard's verdict is known now.
        if guard
            && location.is_some()
            && let Some(m) = istio::check(
                &template_pod,
                ns_labels,
                [target.container.as_str()].into_iter(),
            )
        {
            verdict.warnings.push(warning(format!(
                "{m}; its pods will not be upgraded in place"
            )));
        }
        let Some(g) = &governance else { continue };
        let name = g.policy.name_any();
        if let Some(message) = policy_denial(&g.policy.spec, &name, target, location.as_ref()) {
            return Verdict::deny(message);
        }
    }
    verdict
}

/// Why the governing policy refuses a target, naming the policy and the rule.
fn policy_denial(
    spec: &crate::policy::InPlaceUpgradePolicySpec,
    policy: &str,
    target: &Target,
    location: Option<&crate::target::ContainerLocation>,
) -> Option<String> {
    if !spec.allows_container(&target.container) {
        let e = PolicyError::ContainerNotAllowed {
            container: target.container.clone(),
            allowed: spec.containers.clone(),
        };
        return Some(format!(
            "InPlaceUpgradePolicy {policy:?} rule containers refuses {target}: {e}"
        ));
    }
    // A short form (`:tag`, `name:tag`) resolves against the container's current image; without
    // the container in the template it is checked on each pod instead.
    let image = match location {
        Some(l) => target.image.resolve(&l.image).ok()?,
        None => target.image.resolve("").ok()?,
    };
    let allowlist = match spec.image_allowlist() {
        Ok(a) => a,
        Err(e) => return Some(format!("InPlaceUpgradePolicy {policy:?} is invalid: {e}")),
    };
    allowlist.check(&image).err().map(|e| {
        format!("InPlaceUpgradePolicy {policy:?} rule allowedImages refuses {target}: {e}")
    })
}

/// A Namespace annotation applies to every workload of the namespace whose pods have the
/// container, each under its own governing policy: beyond the grammar only warnings.
fn check_namespace(
    name: &str,
    labels: &BTreeMap<String, String>,
    targets: &[Target],
    view: &impl ClusterView,
    settings: &Settings,
) -> Verdict {
    let mut verdict = Verdict::default();
    // Whether any policy's namespaceSelector takes this namespace (workload selectors aside).
    let mut policies = view.policies();
    for p in &mut policies {
        p.spec.workload_selector = None;
    }
    let scope = Scope {
        namespace: name,
        namespace_labels: labels,
        workload_labels: &BTreeMap::new(),
        controller_namespace: &settings.controller_namespace,
    };
    match governing_policy(&policies, &scope) {
        Ok(Some(_)) => {}
        Ok(None) => verdict.warnings.push(warning(format!(
            "no InPlaceUpgradePolicy enables namespace {name:?}; nothing is upgraded until one does"
        ))),
        Err(e) => verdict.warnings.push(warning(e)),
    }
    let guarded = view
        .policies()
        .iter()
        .any(|p| scope_matches(p, name, labels, settings) && p.spec.istio_revision_guard);
    if guarded
        && let istio::Asked::Revision {
            name: revision,
            via,
        } = istio::asked(labels, &BTreeMap::new())
    {
        verdict.warnings.push(warning(format!(
            "pods whose containers Istio's injector added with a revision other than {revision:?} (what the {via} asks for) are held back ({}): they need re-injection",
            istio::REASON
        )));
    }
    for target in targets {
        for p in view.policies() {
            if scope_matches(&p, name, labels, settings)
                && let Some(message) = policy_denial(&p.spec, &p.name_any(), target, None)
            {
                verdict.warnings.push(warning(format!(
                    "{message}; workloads it governs in this namespace will not be upgraded"
                )));
            }
        }
    }
    verdict
}

fn scope_matches(
    policy: &InPlaceUpgradePolicy,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> bool {
    policy
        .spec
        .selects_namespace(namespace, labels, &settings.controller_namespace)
        .unwrap_or(false)
}

/// InPlaceUpgradePolicy CREATE/UPDATE: selectors valid, globs compile, `maxUnavailable`
/// valid. A policy with `paused: true` is never denied (only warned about): an emergency
/// stop must always go through, even on a policy that is broken otherwise.
pub fn validate_policy(request: &AdmissionRequest) -> AdmissionResponse {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return AdmissionResponse::from(request);
    }
    let Some(object) = &request.object else {
        return AdmissionResponse::from(request);
    };
    check_policy(object).respond(request)
}

/// The decision of [`validate_policy`] on the object.
pub fn check_policy(object: &DynamicObject) -> Verdict {
    let name = object.name_any();
    let paused = object
        .data
        .pointer("/spec/paused")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    let problems = match typed::<InPlaceUpgradePolicy>(object) {
        Err(e) => vec![format!("InPlaceUpgradePolicy {name:?} cannot be read: {e}")],
        Ok(policy) => policy_problems(&policy),
    };
    if problems.is_empty() {
        return Verdict::default();
    }
    if paused {
        return Verdict {
            denied: None,
            warnings: problems
                .into_iter()
                .map(|p| warning(format!("{p} (admitted because the policy is paused)")))
                .collect(),
        };
    }
    Verdict::deny(problems.join("; "))
}

fn policy_problems(policy: &InPlaceUpgradePolicy) -> Vec<String> {
    let name = policy.name_any();
    let spec = &policy.spec;
    let mut problems = Vec::new();
    let empty = BTreeMap::new();
    let selectors = [
        ("namespaceSelector", Some(&spec.namespace_selector)),
        ("workloadSelector", spec.workload_selector.as_ref()),
    ];
    for (field, selector) in selectors {
        if let Some(Err(reason)) = selector.map(|s| selector_matches(s, &empty)) {
            problems.push(
                PolicyError::InvalidSelector {
                    policy: name.clone(),
                    field,
                    reason,
                }
                .to_string(),
            );
        }
    }
    if let Err(e) = spec.image_allowlist() {
        problems.push(format!("InPlaceUpgradePolicy {name:?}: {e}"));
    }
    if let Err(e) = spec.max_unavailable_pods(1) {
        problems.push(format!("InPlaceUpgradePolicy {name:?}: {e}"));
    }
    problems
}
