//! The Mutating- and ValidatingWebhookConfigurations, built by one pure function for every
//! mode: a URL (local `run`, the API server dials the process directly) or a Service
//! (in-cluster). `inplace-upgrade manifests webhooks` prints the Service form for deploy/.
//!
//! The pod webhook is called only for namespaces the controller labels governed
//! ([`crate::GOVERNED_LABEL`]); the ValidatingAdmissionPolicy that keeps the controller to that
//! label ([`namespace_label_policy`]) is printed with the configurations.
//!
//! Every webhook fails open (`failurePolicy: Ignore`), each for its own reason, written on
//! the constants below. `sideEffects: None` (the handlers only read memory), `admissionReviewVersions:
//! [v1]`, a small timeout, and neither `kube-system` nor our own namespace is ever sent to
//! us (`namespaceSelector` on `kubernetes.io/metadata.name NotIn`), so a broken webhook can
//! never stop the control plane's own pods or our own replicas from starting.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use super::{MUTATE_PODS_PATH, VALIDATE_POLICIES_PATH, VALIDATE_WORKLOADS_PATH};

/// Name of both configurations.
pub const CONFIGURATION_NAME: &str = "inplace-upgrade";
pub const MUTATE_PODS_WEBHOOK: &str = "pods.inplace-upgrade.io";
pub const VALIDATE_WORKLOADS_WEBHOOK: &str = "workloads.inplace-upgrade.io";
pub const VALIDATE_POLICIES_WEBHOOK: &str = "policies.inplace-upgrade.io";

/// Pod mutation fails open: with `Fail`, a webhook outage blocks every pod creation in the
/// cluster (scale-ups, evictions, node drains — OpenKruise #343, #1958). With `Ignore` a pod
/// created during an outage keeps its template image and has no gate; the controller then
/// upgrades it in place like any other pod, so the outage costs one restart, not availability.
pub const PODS_FAILURE_POLICY: &str = "Ignore";
/// Workload/Namespace validation fails open: with `Fail`, an outage would refuse every write
/// to an annotated Deployment — including the Deployment controller's own revision
/// annotation updates and our controller's status writes — and so stall rollouts. What a
/// missed validation lets through is harmless: the controller re-parses the annotation,
/// reports a malformed one in the workload's status (`Invalid`) and never acts on it, and
/// re-checks the policy before every pod.
pub const WORKLOADS_FAILURE_POLICY: &str = "Ignore";
/// Policy validation fails open: an admin must always be able to set `paused: true` on a
/// policy, above all while something is wrong (and the webhook may be what is wrong). The
/// CRD's schema and CEL rules still check structure and `maxUnavailable` without us, and the
/// controller treats a policy with an invalid selector as blocking, never as matching.
pub const POLICIES_FAILURE_POLICY: &str = "Ignore";
/// Short: the handlers answer from memory in microseconds; a slow answer means the webhook
/// is unwell and the API server should move on (fail open) quickly.
pub const TIMEOUT_SECONDS: i32 = 5;

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://host:port` (no path): the local `run` mode.
    Url(String),
    /// A Service in the cluster (port 443 unless given).
    Service {
        namespace: String,
        name: String,
        port: Option<i32>,
    },
}

/// What varies between the modes.
#[derive(Clone, Debug)]
pub struct ConfigurationOptions {
    pub endpoint: Endpoint,
    /// PEM CA bundle the API server verifies the serving certificate against. `None` leaves
    /// it out (cert-manager's CA injector fills it in).
    pub ca_bundle: Option<Vec<u8>>,
    /// Our own namespace: never sent to the webhook.
    pub own_namespace: String,
    /// `<namespace>/<Certificate>`: adds cert-manager's `cert-manager.io/inject-ca-from`.
    pub cert_manager_certificate: Option<String>,
}

fn client_config(options: &ConfigurationOptions, path: &str) -> WebhookClientConfig {
    let ca_bundle = options.ca_bundle.clone().map(ByteString);
    match &options.endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_owned()),
                port: *port,
            }),
        },
    }
}

fn metadata(options: &ConfigurationOptions) -> ObjectMeta {
    let annotations = options
        .cert_manager_certificate
        .as_ref()
        .map(|c| BTreeMap::from([("cert-manager.io/inject-ca-from".to_owned(), c.clone())]));
    ObjectMeta {
        name: Some(CONFIGURATION_NAME.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "inplace-upgrade".to_owned(),
        )])),
        annotations,
        ..ObjectMeta::default()
    }
}

fn excluded_namespaces(options: &ConfigurationOptions) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(vec![
                "kube-system".to_owned(),
                options.own_namespace.clone(),
            ]),
        }]),
        match_labels: None,
    }
}

/// The pod webhook's namespaces: those the controller labels governed (some policy selects
/// them, [`crate::GOVERNED_LABEL`]), never `kube-system` or our own. Every other namespace's
/// pod creations never reach the webhook: zero calls, zero latency, zero API server CPU.
fn governed_namespaces(options: &ConfigurationOptions) -> LabelSelector {
    let mut selector = excluded_namespaces(options);
    selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: crate::GOVERNED_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(vec!["true".to_owned()]),
        });
    selector
}

fn rule(group: &str, version: &str, resources: &[&str], scope: &str) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec![version.to_owned()]),
        operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some(scope.to_owned()),
    }
}

/// CEL: the object carries our annotation and it is new or changed (UPDATEs that leave it
/// alone — status writes, the Deployment controller's revision annotation — never reach us).
const ANNOTATION_NEW_OR_CHANGED: &str = "has(object.metadata.annotations) && 'inplace-upgrade' in object.metadata.annotations && (oldObject == null || !has(oldObject.metadata.annotations) || !('inplace-upgrade' in oldObject.metadata.annotations) || oldObject.metadata.annotations['inplace-upgrade'] != object.metadata.annotations['inplace-upgrade'])";

/// The two configurations, for any mode.
pub fn webhook_configurations(
    options: &ConfigurationOptions,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let versions = vec!["v1".to_owned()];
    let mut pods_rule = rule("", "v1", &["pods"], "Namespaced");
    pods_rule.operations = Some(vec!["CREATE".to_owned()]);
    let mutating = MutatingWebhookConfiguration {
        metadata: metadata(options),
        webhooks: Some(vec![MutatingWebhook {
            name: MUTATE_PODS_WEBHOOK.to_owned(),
            admission_review_versions: versions.clone(),
            client_config: client_config(options, MUTATE_PODS_PATH),
            failure_policy: Some(PODS_FAILURE_POLICY.to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            // No matchCondition: one ("the pod has a controller owner") filtered almost nothing
            // — nearly every pod has a controller — while evaluating it made kube-apiserver
            // convert each whole pod to unstructured for CEL, ~1.5 ms of its CPU per creation
            // (13.5% of its CPU in a profile); without it, its CPU per pod CREATE fell by
            // 2.4-3.6 ms (docs/benchmarks.md, `--bench admission`). A bare pod that reaches us
            // is allowed unchanged.
            match_conditions: None,
            namespace_selector: Some(governed_namespaces(options)),
            object_selector: None,
            // Istio's injector adds istio-proxy in its own webhook: when it runs after us, the
            // API server calls us again and we set the target on the container it added.
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(vec![pods_rule]),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
        }]),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: metadata(options),
        webhooks: Some(vec![
            ValidatingWebhook {
                name: VALIDATE_WORKLOADS_WEBHOOK.to_owned(),
                admission_review_versions: versions.clone(),
                client_config: client_config(options, VALIDATE_WORKLOADS_PATH),
                failure_policy: Some(WORKLOADS_FAILURE_POLICY.to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                match_conditions: Some(vec![MatchCondition {
                    name: "annotation-new-or-changed".to_owned(),
                    expression: ANNOTATION_NEW_OR_CHANGED.to_owned(),
                }]),
                namespace_selector: Some(excluded_namespaces(options)),
                object_selector: None,
                rules: Some(vec![
                    rule(
                        "apps",
                        "v1",
                        &["deployments", "statefulsets", "daemonsets", "replicasets"],
                        "Namespaced",
                    ),
                    rule("", "v1", &["namespaces"], "Cluster"),
                ]),
                side_effects: "None".to_owned(),
                timeout_seconds: Some(TIMEOUT_SECONDS),
            },
            ValidatingWebhook {
                name: VALIDATE_POLICIES_WEBHOOK.to_owned(),
                admission_review_versions: versions,
                client_config: client_config(options, VALIDATE_POLICIES_PATH),
                failure_policy: Some(POLICIES_FAILURE_POLICY.to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                match_conditions: None,
                namespace_selector: None,
                object_selector: None,
                rules: Some(vec![rule(
                    "inplace-upgrade.io",
                    "v1alpha1",
                    &["inplaceupgradepolicies"],
                    "Cluster",
                )]),
                side_effects: "None".to_owned(),
                timeout_seconds: Some(TIMEOUT_SECONDS),
            },
        ]),
    };
    (mutating, validating)
}

/// Both configurations as one YAML stream (what `inplace-upgrade manifests webhooks` prints).
pub fn webhook_configurations_yaml(
    options: &ConfigurationOptions,
) -> Result<String, serde_yaml::Error> {
    let (mutating, validating) = webhook_configurations(options);
    let (policy, binding) = namespace_label_policy(&options.own_namespace);
    let mut out = serde_yaml::to_string(&mutating)?;
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&validating)?);
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&policy)?);
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&binding)?);
    Ok(out)
}

/// Server-side applies both configurations (creating or updating them).
pub async fn apply(
    client: &kube::Client,
    options: &ConfigurationOptions,
    field_manager: &str,
) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let (mutating, validating) = webhook_configurations(options);
    let params = PatchParams::apply(field_manager).force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(CONFIGURATION_NAME, &params, &Patch::Apply(&mutating))
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(CONFIGURATION_NAME, &params, &Patch::Apply(&validating))
        .await?;
    Ok(())
}

/// Name of the ValidatingAdmissionPolicy (and its binding) that holds the controller to the
/// governed label.
pub const NAMESPACE_LABEL_POLICY: &str = "inplace-upgrade-namespace-label";
/// The controller's ServiceAccount (deploy/base/controller.yaml).
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "inplace-upgrade-controller";

/// CEL: `field` (a path under `object`/`oldObject`) is absent in both or equal in both.
fn unchanged(field: &str) -> String {
    let (parent, leaf) = field.rsplit_once('.').unwrap_or(("", field));
    let has = |root: &str| {
        if parent.is_empty() {
            format!("has({root}.{leaf})")
        } else {
            format!("has({root}.{parent}.{leaf})")
        }
    };
    format!(
        "{} == {} && (!{} || object.{field} == oldObject.{field})",
        has("object"),
        has("oldObject"),
        has("object"),
    )
}

/// Least privilege for the governed label. RBAC can grant `patch` on Namespaces but cannot
/// narrow it to one label; this policy (admissionregistration.k8s.io/v1, GA since 1.30,
/// evaluated inside the API server, no webhook) refuses any Namespace write by the
/// controller's ServiceAccount other than adding, changing or removing
/// [`crate::GOVERNED_LABEL`]: no other label, annotation, finalizer, owner or spec change, no
/// create or delete. `failurePolicy: Fail`: if the API server cannot evaluate it, the write is
/// refused (the label waits; nothing else is at stake).
pub fn namespace_label_policy(
    controller_namespace: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let label = crate::GOVERNED_LABEL;
    let username =
        format!("system:serviceaccount:{controller_namespace}:{CONTROLLER_SERVICE_ACCOUNT}");
    // Every label but ours is kept, with its value, and none is added.
    let other_labels_kept = format!(
        "variables.newLabels.all(k, k == '{label}' || (k in variables.oldLabels && variables.oldLabels[k] == variables.newLabels[k])) && variables.oldLabels.all(k, k == '{label}' || k in variables.newLabels)"
    );
    let others_kept = [
        "metadata.annotations",
        "metadata.finalizers",
        "metadata.ownerReferences",
        "spec",
    ]
    .iter()
    .map(|f| format!("({})", unchanged(f)))
    .collect::<Vec<_>>()
    .join(" && ");
    let message =
        format!("the inplace-upgrade controller may change only the label {label} of a Namespace");
    let metadata = serde_json::json!({
        "name": NAMESPACE_LABEL_POLICY,
        "labels": {"app.kubernetes.io/name": "inplace-upgrade"},
    });
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": metadata.clone(),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "resources": ["namespaces"],
            }]},
            "matchConditions": [{
                "name": "controller-service-account",
                "expression": format!("request.userInfo.username == '{username}'"),
            }],
            "variables": [
                {"name": "newLabels", "expression": "object != null && has(object.metadata.labels) ? object.metadata.labels : {}"},
                {"name": "oldLabels", "expression": "oldObject != null && has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}"},
            ],
            "validations": [{
                "expression": format!("request.operation == 'UPDATE' && {other_labels_kept} && {others_kept}"),
                "message": message,
                "reason": "Forbidden",
            }],
        },
    }))
    .expect("a ValidatingAdmissionPolicy literal");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": metadata,
        "spec": {"policyName": NAMESPACE_LABEL_POLICY, "validationActions": ["Deny"]},
    }))
    .expect("a ValidatingAdmissionPolicyBinding literal");
    (policy, binding)
}

/// Name of the MutatingAdmissionPolicy (and its binding) that adds the readiness gate without
/// the webhook.
pub const READINESS_GATE_POLICY: &str = "inplace-upgrade-readiness-gate";
/// The API version the readiness-gate policy is written for: beta in Kubernetes 1.34–1.35
/// (behind the `MutatingAdmissionPolicy` feature gate and
/// `--runtime-config=admissionregistration.k8s.io/v1beta1=true`), v1 from 1.36.
pub const MUTATING_ADMISSION_POLICY_API: &str = "admissionregistration.k8s.io/v1beta1";

/// The webhook-free alternative for the readiness gate: a MutatingAdmissionPolicy (evaluated
/// inside the API server: no certificates, no Service, no call) that adds
/// `inplace-upgrade.io/ready` to every pod created by a ReplicaSet, StatefulSet or DaemonSet in
/// a governed namespace (the same label and exclusions as the pod webhook), unless the pod has
/// it already — so it is idempotent, and the webhook (if both run) adds nothing twice, in
/// either order. The target image still comes from the webhook or, without it, from the
/// controller (an in-place upgrade right after creation).
///
/// What it cannot do that the webhook does: read the controller's Lease (the webhook gates no
/// pod while the controller is down, so an outage cannot keep new pods unready — under this
/// policy it does, until the controller is back), and match a policy's `workloadSelector` or
/// `readinessGate: false` (it gates every controller-owned pod of a governed namespace; the
/// controller admits every gated pod it sees, governed or not). JSON (k8s-openapi has no type
/// for the beta API).
pub fn readiness_gate_policy(controller_namespace: &str) -> [serde_json::Value; 2] {
    let gate = crate::READINESS_GATE;
    let metadata = serde_json::json!({
        "name": READINESS_GATE_POLICY,
        "labels": {"app.kubernetes.io/name": "inplace-upgrade"},
    });
    let selector = serde_json::to_value(governed_namespaces(&ConfigurationOptions {
        endpoint: Endpoint::Url(String::new()),
        ca_bundle: None,
        own_namespace: controller_namespace.to_owned(),
        cert_manager_certificate: None,
    }))
    .unwrap_or_default();
    let gate_value = format!("Object.spec.readinessGates{{conditionType: '{gate}'}}");
    let policy = serde_json::json!({
        "apiVersion": MUTATING_ADMISSION_POLICY_API,
        "kind": "MutatingAdmissionPolicy",
        "metadata": metadata.clone(),
        "spec": {
            // Like the pod webhook: a policy that cannot be evaluated never blocks a pod.
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": {
                "namespaceSelector": selector,
                "resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["pods"],
                }],
            },
            "matchConditions": [
                {
                    "name": "owned-by-a-workload",
                    "expression": "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, has(o.controller) && o.controller && o.kind in ['ReplicaSet', 'StatefulSet', 'DaemonSet'])",
                },
                {
                    "name": "not-gated-yet",
                    "expression": format!("!has(object.spec.readinessGates) || !object.spec.readinessGates.exists(g, g.conditionType == '{gate}')"),
                },
            ],
            // One JSON patch: the list created with our gate when the pod has none, our gate
            // appended otherwise (an apply configuration may not touch the atomic list). The
            // new list is a CEL map, not `[Object.spec.readinessGates{…}]`: kube-apiserver
            // 1.35.4 panics converting a list of typed objects as a patch value ("reflect.Set:
            // value of type *structpb.Struct is not assignable to type *structpb.Value"; the
            // request fails; kubernetes/kubernetes#142181, fixed by #139032).
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {"expression": format!(
                    "has(object.spec.readinessGates) ? [JSONPatch{{op: 'add', path: '/spec/readinessGates/-', value: {gate_value}}}] : [JSONPatch{{op: 'add', path: '/spec/readinessGates', value: [{{'conditionType': '{gate}'}}]}}]"
                )},
            }],
        },
    });
    let binding = serde_json::json!({
        "apiVersion": MUTATING_ADMISSION_POLICY_API,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": metadata,
        "spec": {"policyName": READINESS_GATE_POLICY},
    });
    [policy, binding]
}

/// [`readiness_gate_policy`] as one YAML stream.
pub fn readiness_gate_policy_yaml(controller_namespace: &str) -> Result<String, serde_yaml::Error> {
    let [policy, binding] = readiness_gate_policy(controller_namespace);
    let mut out = serde_yaml::to_string(&policy)?;
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&binding)?);
    Ok(out)
}
