//! The `InPlaceUpgradePolicy` CRD and the pure rules that read it: which policy governs a
//! workload, which containers and images it allows, and how many pods may be unavailable.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::image::ImageRef;
use crate::memo::Memo;

/// What cluster admins enable: which namespaces and workloads may be upgraded in place, and how.
///
/// Nothing is upgraded in a namespace that no policy selects. When several policies select a
/// workload, the one with the highest priority governs (ties: the smallest name), and any of
/// them that is paused pauses the workload.
// clippy reads the repeated `type_ = ...` of separate printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "inplace-upgrade.io",
    version = "v1alpha1",
    kind = "InPlaceUpgradePolicy",
    plural = "inplaceupgradepolicies",
    singular = "inplaceupgradepolicy",
    shortname = "iup",
    status = "InPlaceUpgradePolicyStatus",
    derive = "PartialEq",
    doc = "Allows in-place image upgrades of the selected workloads' containers, and says how they roll.",
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedWorkloads"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpgradePolicySpec {
    /// Namespaces this policy applies to. An empty selector (`{}`) selects every namespace
    /// except `kube-system` and the controller's own namespace; name those explicitly in
    /// `matchLabels`/`matchExpressions` to include them.
    pub namespace_selector: LabelSelector,
    /// Workloads (Deployments, StatefulSets, DaemonSets, ReplicaSets) this policy applies to, by
    /// their labels. Absent: all workloads in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Container names that may be changed in place. Empty: any container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Glob patterns the resolved target image, in docker's normalised form (e.g.
    /// `docker.io/library/nginx:1.25`), must match. `*` does not cross `/`; use `**` for that.
    /// Empty: any image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_images: Vec<String>,
    /// Pods of one workload that may be unavailable at once, counting pods that are already
    /// not Ready: an integer >= 1 or a percentage "1%".."100%" of the desired replicas, rounded
    /// down but never below 1.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "max_unavailable_schema")]
    pub max_unavailable: IntOrString,
    /// Workloads rolling at once under this policy.
    #[serde(default = "default_max_concurrent_workloads")]
    #[schemars(range(min = 1))]
    pub max_concurrent_workloads: i32,
    /// How traffic is taken away from a pod before its container restarts.
    #[serde(default)]
    pub drain: Drain,
    /// Getting the target image onto a pod's node before the pod is drained.
    #[serde(default)]
    pub pre_pull: PrePull,
    /// How long a restarted container may take to run the new image and be Ready before the
    /// upgrade of that pod counts as failed.
    #[serde(default = "default_ready_timeout_seconds")]
    #[schemars(range(min = 1))]
    pub ready_timeout_seconds: i64,
    /// What happens to a pod whose upgrade failed. Either way no other pod of the workload is
    /// touched.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Inject the `inplace-upgrade.io/ready` readiness gate into new pods, so that a pod can be
    /// taken out of load balancing before its container restarts.
    #[serde(default = "default_true")]
    pub readiness_gate: bool,
    /// Emergency stop: no image is changed in any workload this policy selects, whatever other
    /// policies say.
    #[serde(default)]
    pub paused: bool,
    /// When several policies select a workload, the highest priority governs (ties: the
    /// lexicographically smallest name).
    #[serde(default)]
    pub priority: i32,
    /// Hold back an in-place change of a container Istio injected (named in the pod's
    /// `sidecar.istio.io/status`) when the pod's injected revision differs from the one its
    /// Namespace now asks for (`istio.io/rev`, or `default` under `istio-injection=enabled`):
    /// the proxy's configuration is frozen at injection, so across revisions the pod needs
    /// re-injection, not a new image. `false` turns the guard off (e.g. revision tags whose
    /// names differ from the revision they point at).
    #[serde(default = "default_true")]
    pub istio_revision_guard: bool,
}

/// How a pod is drained before the patch.
///
/// The controller sets the readiness gate condition False (pods without the gate cannot be
/// drained and are patched directly), then waits until at least `gracePeriodSeconds` have
/// passed and, with `waitForEndpoints`, the pod's IP is gone from every EndpointSlice — but no
/// longer than `timeoutSeconds`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Wait until the pod's IP is no longer ready in the EndpointSlices that list it.
    #[serde(default = "default_true")]
    pub wait_for_endpoints: bool,
    /// Minimum time between the drain and the patch, for in-flight requests and proxies that
    /// lag behind EndpointSlices.
    #[serde(default = "default_drain_grace_period_seconds")]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i64,
    /// Upper bound on waiting for EndpointSlices; the patch goes ahead afterwards.
    #[serde(default = "default_drain_timeout_seconds")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: i64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            wait_for_endpoints: true,
            grace_period_seconds: default_drain_grace_period_seconds(),
            timeout_seconds: default_drain_timeout_seconds(),
        }
    }
}

/// Pre-pull before drain (on by default).
///
/// Before a pod is drained (or patched, if it cannot be drained), the controller creates for
/// each of its target images a short-lived pod pinned to the pod's node, whose only job is to
/// make kubelet pull the image (its command exists in no image, so nothing of the image runs),
/// and deletes it once kubelet has pulled. The drained window is then a container start, not
/// a download. A pull that fails stops the workload before any pod is drained, like any
/// failed target. Needs `create` and `delete` on pods in the governed namespaces (and `get`,
/// to copy the pod's imagePullSecrets and tolerations).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrePull {
    /// Pull the target image onto the node before the drain.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `activeDeadlineSeconds` of the pre-pull pod: a pull that takes longer fails the
    /// workload.
    #[serde(default = "default_pre_pull_timeout_seconds")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: i64,
}

impl Default for PrePull {
    fn default() -> Self {
        PrePull {
            enabled: true,
            timeout_seconds: default_pre_pull_timeout_seconds(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum OnFailure {
    /// Patch the failed pod back to its previous image, wait for it, and stop the workload.
    #[default]
    Rollback,
    /// Leave the failed pod as it is and stop the workload.
    Pause,
}

/// What the policy matched and what is rolling, written by the controller.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpgradePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workloads this policy governs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_workloads: Option<i32>,
    /// `namespace/kind/name` of the workloads rolling now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolling_workloads: Vec<String>,
    /// `namespace/kind/name` of the workloads whose last upgrade failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_workloads: Vec<String>,
    /// Why the policy cannot be used (an invalid selector or image pattern), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}
fn default_max_concurrent_workloads() -> i32 {
    3
}
fn default_ready_timeout_seconds() -> i64 {
    300
}
fn default_drain_grace_period_seconds() -> i64 {
    5
}
fn default_pre_pull_timeout_seconds() -> i64 {
    300
}
fn default_drain_timeout_seconds() -> i64 {
    60
}
fn default_true() -> bool {
    true
}

fn max_unavailable_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // anyOf with typed branches plus value validations is not a structural schema, so the
    // int-or-percent rule is a CEL validation.
    schemars::json_schema!({
        "description": "Pods of one workload that may be unavailable at once: an integer >= 1 or a percentage \"1%\"..\"100%\" of the desired replicas, rounded down but never below 1.",
        "default": 1,
        // kube marks optional int-or-string fields nullable; null would then defeat the default.
        "nullable": false,
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')",
            "message": "must be an integer >= 1 or a percentage from 1% to 100%"
        }]
    })
}

/// The CRD as YAML, exactly what `inplace-upgrade crd` prints and `deploy/crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&InPlaceUpgradePolicy::crd())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "InPlaceUpgradePolicy {policy:?}: {field}: {reason}; fix the selector (operators are In, NotIn, Exists, DoesNotExist)"
    )]
    InvalidSelector {
        policy: String,
        field: &'static str,
        reason: String,
    },
    #[error("allowedImages pattern {pattern:?} is not a valid glob: {reason}")]
    InvalidGlob { pattern: String, reason: String },
    #[error(
        "maxUnavailable {value:?} is invalid: use an integer >= 1 or a percentage from \"1%\" to \"100%\""
    )]
    InvalidMaxUnavailable { value: String },
    #[error(
        "container {container:?} may not be changed in place: it is not in the governing policy's containers {allowed:?}"
    )]
    ContainerNotAllowed {
        container: String,
        allowed: Vec<String>,
    },
    #[error(
        "image {image:?} (normalised {normalized:?}) is not allowed: it matches none of the governing policy's allowedImages {patterns:?}"
    )]
    ImageNotAllowed {
        image: String,
        normalized: String,
        patterns: Vec<String>,
    },
}

impl InPlaceUpgradePolicySpec {
    pub fn allows_container(&self, container: &str) -> bool {
        self.containers.is_empty() || self.containers.iter().any(|c| c == container)
    }

    /// `maxUnavailable` as a pod count for a workload with `desired_replicas`: an integer as
    /// is; a percentage of the desired replicas rounded down (as Deployment's maxUnavailable)
    /// but never below 1, so a rollout always makes progress.
    pub fn max_unavailable_pods(&self, desired_replicas: i32) -> Result<u32, PolicyError> {
        let invalid = || PolicyError::InvalidMaxUnavailable {
            value: match &self.max_unavailable {
                IntOrString::Int(i) => i.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        };
        match &self.max_unavailable {
            IntOrString::Int(i) if *i >= 1 => Ok(u32::try_from(*i).map_err(|_| invalid())?),
            IntOrString::Int(_) => Err(invalid()),
            IntOrString::String(s) => {
                let percent: u64 = s
                    .strip_suffix('%')
                    .filter(|p| !p.starts_with('+'))
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(invalid)?;
                let desired = u64::try_from(desired_replicas.max(0)).unwrap_or(0);
                let count = (desired * percent / 100).max(1);
                Ok(u32::try_from(count).unwrap_or(u32::MAX))
            }
        }
    }

    /// Whether this policy lets `container` change to `image` (resolved): its `containers`
    /// rule, then its `allowedImages` (`allowlist`, compiled once by [`Self::image_allowlist`]).
    pub fn check_target(
        &self,
        allowlist: &ImageAllowlist,
        container: &str,
        image: &str,
    ) -> Result<(), PolicyError> {
        if !self.allows_container(container) {
            return Err(PolicyError::ContainerNotAllowed {
                container: container.to_owned(),
                allowed: self.containers.clone(),
            });
        }
        allowlist.check(image)
    }

    /// Whether `namespaceSelector` selects a namespace with these labels. An empty selector
    /// selects every namespace except `kube-system` and the controller's own; an invalid one
    /// is an error naming the problem.
    pub fn selects_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        controller_namespace: &str,
    ) -> Result<bool, String> {
        if selector_is_empty(&self.namespace_selector) {
            return Ok(namespace != "kube-system" && namespace != controller_namespace);
        }
        selector_matches(&self.namespace_selector, labels)
    }

    /// Compile `allowedImages` once, to check many targets.
    pub fn image_allowlist(&self) -> Result<ImageAllowlist, PolicyError> {
        ImageAllowlist::new(&self.allowed_images)
    }
}

/// Compiled `allowedImages` globs.
///
/// Patterns are matched against the resolved image's docker-normalised form only
/// (`nginx:1` → `docker.io/library/nginx:1`): that is the identity the runtime pulls, so one
/// pattern means the same thing however the user spelled the image, and a short form can never
/// slip past a pattern written for the full name. An image that does not parse is not allowed.
#[derive(Debug, Clone)]
pub struct ImageAllowlist(Arc<CompiledAllowlist>);

#[derive(Debug)]
struct CompiledAllowlist {
    patterns: Vec<String>,
    set: GlobSet,
}

/// How many compiled allowlists are remembered (see [`ImageAllowlist::new`]) before the memory
/// is emptied: a cluster has a handful of policies, and each edit of `allowedImages` adds one.
const COMPILED_ALLOWLISTS: usize = 64;

impl ImageAllowlist {
    /// The allowlist of `patterns`, compiled once per distinct list and then shared: the
    /// webhook checks the governing policy's list for every pod it admits, and compiling the
    /// globs (a regex set) costs far more than the check.
    pub fn new(patterns: &[String]) -> Result<Self, PolicyError> {
        static COMPILED: Memo<Vec<String>, ImageAllowlist> = Memo::new(COMPILED_ALLOWLISTS);
        COMPILED.get_or_try(patterns, || Self::compile(patterns))
    }

    fn compile(patterns: &[String]) -> Result<Self, PolicyError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| PolicyError::InvalidGlob {
                    pattern: pattern.clone(),
                    reason: e.kind().to_string(),
                })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| PolicyError::InvalidGlob {
            pattern: patterns.join(","),
            reason: e.to_string(),
        })?;
        Ok(ImageAllowlist(Arc::new(CompiledAllowlist {
            patterns: patterns.to_vec(),
            set,
        })))
    }

    pub fn check(&self, image: &str) -> Result<(), PolicyError> {
        let CompiledAllowlist { patterns, set } = &*self.0;
        if patterns.is_empty() {
            return Ok(());
        }
        let normalized = ImageRef::parse(image)
            .map(|r| r.normalized())
            .unwrap_or_default();
        if !normalized.is_empty() && set.is_match(&normalized) {
            return Ok(());
        }
        Err(PolicyError::ImageNotAllowed {
            image: image.into(),
            normalized,
            patterns: patterns.clone(),
        })
    }
}

/// The workload a policy decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub workload_labels: &'a BTreeMap<String, String>,
    /// The namespace the controller runs in, excluded from empty namespace selectors.
    pub controller_namespace: &'a str,
}

/// The policy that governs a workload.
#[derive(Debug, Clone)]
pub struct Governance<'a> {
    pub policy: &'a InPlaceUpgradePolicy,
    /// Names of every matching policy with `paused: true` (sorted). Non-empty pauses the
    /// workload even when the governing policy is not paused.
    pub paused_by: Vec<String>,
}

impl Governance<'_> {
    pub fn paused(&self) -> bool {
        !self.paused_by.is_empty()
    }
}

/// Which policy governs a workload.
///
/// Among the policies whose `namespaceSelector` matches the Namespace's labels (an empty
/// selector matches every namespace except `kube-system` and the controller's own) and whose
/// `workloadSelector` matches the workload's labels (absent: every workload), the one with the
/// highest `priority` governs; ties go to the lexicographically smallest name. Any matching
/// policy with `paused: true` pauses the workload, whatever its priority: an emergency stop
/// must always work.
///
/// A policy with an invalid selector is an error, not a silent match or non-match: it may be
/// the one meant to pause things, so nothing is decided until it is fixed.
pub fn governing_policy<'a>(
    policies: &'a [InPlaceUpgradePolicy],
    scope: &Scope<'_>,
) -> Result<Option<Governance<'a>>, PolicyError> {
    let mut matching: Vec<&InPlaceUpgradePolicy> = Vec::new();
    for policy in policies {
        let name = policy.name_any();
        let ns_match = policy
            .spec
            .selects_namespace(
                scope.namespace,
                scope.namespace_labels,
                scope.controller_namespace,
            )
            .map_err(|reason| PolicyError::InvalidSelector {
                policy: name.clone(),
                field: "namespaceSelector",
                reason,
            })?;
        let workload_match = match &policy.spec.workload_selector {
            None => true,
            Some(selector) => {
                selector_matches(selector, scope.workload_labels).map_err(|reason| {
                    PolicyError::InvalidSelector {
                        policy: name.clone(),
                        field: "workloadSelector",
                        reason,
                    }
                })?
            }
        };
        if ns_match && workload_match {
            matching.push(policy);
        }
    }
    let mut paused_by: Vec<String> = matching
        .iter()
        .filter(|p| p.spec.paused)
        .map(|p| p.name_any())
        .collect();
    paused_by.sort();
    let governing = matching.into_iter().min_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(governing.map(|policy| Governance { policy, paused_by }))
}

/// Whether some policy's `namespaceSelector` selects this namespace: the pod webhook is called
/// only there ([`crate::GOVERNED_LABEL`]). A policy whose selector cannot be evaluated selects
/// nothing here: while it is broken every decision it could reach is blocked anyway
/// ([`governing_policy`] refuses to decide), so the webhook would only warn.
pub fn governs_namespace(
    policies: &[InPlaceUpgradePolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    controller_namespace: &str,
) -> bool {
    policies.iter().any(|p| {
        p.spec
            .selects_namespace(namespace, labels, controller_namespace)
            .unwrap_or(false)
    })
}

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Kubernetes label selector semantics: every `matchLabels` pair and every expression must
/// hold; an empty selector matches everything. An invalid expression is an error naming it.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let mut matches = true;
    for (key, value) in selector.match_labels.iter().flatten() {
        matches &= labels.get(key) == Some(value);
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default();
        let present = labels.get(&expr.key);
        let holds = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "matchExpressions key {:?} operator {} needs at least one value",
                    expr.key, expr.operator
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "matchExpressions key {:?} operator {} must not have values",
                    expr.key, expr.operator
                ));
            }
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => {
                return Err(format!(
                    "matchExpressions key {:?} has unknown operator {other:?}",
                    expr.key
                ));
            }
        };
        matches &= holds;
    }
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec_from_yaml(yaml: &str) -> InPlaceUpgradePolicySpec {
        serde_yaml::from_str(yaml).expect("valid spec")
    }

    fn policy(name: &str, yaml: &str) -> InPlaceUpgradePolicy {
        InPlaceUpgradePolicy::new(name, spec_from_yaml(yaml))
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn defaults_apply_to_a_minimal_spec() {
        let spec = spec_from_yaml("namespaceSelector: {}");
        assert_eq!(spec.max_unavailable, IntOrString::Int(1));
        assert_eq!(spec.max_concurrent_workloads, 3);
        assert_eq!(spec.ready_timeout_seconds, 300);
        assert_eq!(spec.on_failure, OnFailure::Rollback);
        assert!(spec.readiness_gate);
        assert!(!spec.paused);
        assert_eq!(spec.priority, 0);
        assert_eq!(spec.drain, Drain::default());
        assert!(spec.drain.wait_for_endpoints);
        assert!(serde_yaml::from_str::<InPlaceUpgradePolicySpec>("paused: true").is_err());
    }

    #[test]
    fn max_unavailable_to_pod_count() {
        let cases: Vec<(IntOrString, i32, Result<u32, ()>)> = vec![
            (IntOrString::Int(1), 10, Ok(1)),
            (IntOrString::Int(3), 2, Ok(3)),
            (IntOrString::Int(0), 10, Err(())),
            (IntOrString::Int(-1), 10, Err(())),
            (IntOrString::String("25%".into()), 10, Ok(2)),
            (IntOrString::String("25%".into()), 3, Ok(1)),
            (IntOrString::String("1%".into()), 1, Ok(1)),
            (IntOrString::String("1%".into()), 0, Ok(1)),
            (IntOrString::String("50%".into()), 7, Ok(3)),
            (IntOrString::String("100%".into()), 7, Ok(7)),
            (IntOrString::String("0%".into()), 7, Err(())),
            (IntOrString::String("101%".into()), 7, Err(())),
            (IntOrString::String("50".into()), 7, Err(())),
            (IntOrString::String("+5%".into()), 7, Err(())),
            (IntOrString::String("x%".into()), 7, Err(())),
        ];
        for (value, desired, expected) in cases {
            let mut spec = spec_from_yaml("namespaceSelector: {}");
            spec.max_unavailable = value.clone();
            let got = spec.max_unavailable_pods(desired).map_err(|_| ());
            assert_eq!(got, expected, "{value:?} of {desired}");
        }
    }

    #[test]
    fn selector_semantics() {
        let l = labels(&[("env", "dev"), ("team", "a")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        let cases = vec![
            (sel(&[], vec![]), Ok(true)),
            (sel(&[("env", "dev")], vec![]), Ok(true)),
            (sel(&[("env", "prod")], vec![]), Ok(false)),
            (sel(&[], vec![expr("env", "In", &["dev", "qa"])]), Ok(true)),
            (sel(&[], vec![expr("env", "NotIn", &["dev"])]), Ok(false)),
            (sel(&[], vec![expr("zone", "NotIn", &["x"])]), Ok(true)),
            (sel(&[], vec![expr("team", "Exists", &[])]), Ok(true)),
            (sel(&[], vec![expr("team", "DoesNotExist", &[])]), Ok(false)),
            (
                sel(&[("env", "dev")], vec![expr("zone", "Exists", &[])]),
                Ok(false),
            ),
            (
                sel(&[], vec![expr("env", "In", &[])]),
                Err(
                    "matchExpressions key \"env\" operator In needs at least one value".to_string(),
                ),
            ),
            (
                sel(&[], vec![expr("env", "Exists", &["x"])]),
                Err(
                    "matchExpressions key \"env\" operator Exists must not have values".to_string(),
                ),
            ),
            (
                sel(&[], vec![expr("env", "Equals", &["dev"])]),
                Err("matchExpressions key \"env\" has unknown operator \"Equals\"".to_string()),
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(selector_matches(&selector, &l), expected, "{selector:?}");
        }
    }

    #[test]
    fn governing_policy_rule() {
        let ns_labels = labels(&[("env", "dev")]);
        let wl_labels = labels(&[("app", "web")]);
        let scope = |namespace| Scope {
            namespace,
            namespace_labels: &ns_labels,
            workload_labels: &wl_labels,
            controller_namespace: "inplace-upgrade-system",
        };
        let policies = vec![
            policy("b-default", "namespaceSelector: {}"),
            policy("a-default", "namespaceSelector: {}"),
            policy(
                "prod-only",
                "namespaceSelector: {matchLabels: {env: prod}}\npriority: 100",
            ),
            policy(
                "web",
                "namespaceSelector: {matchLabels: {env: dev}}\nworkloadSelector: {matchLabels: {app: web}}\npriority: 10",
            ),
            policy(
                "api",
                "namespaceSelector: {matchLabels: {env: dev}}\nworkloadSelector: {matchLabels: {app: api}}\npriority: 20",
            ),
        ];
        let g = governing_policy(&policies, &scope("dev"))
            .expect("valid")
            .expect("governed");
        assert_eq!(g.policy.name_any(), "web");
        assert!(!g.paused());
        // Equal priority: smallest name wins, whatever the list order.
        let g = governing_policy(&policies[..2], &scope("dev"))
            .expect("valid")
            .expect("governed");
        assert_eq!(g.policy.name_any(), "a-default");
        // Empty selectors skip kube-system and the controller's namespace.
        assert!(
            governing_policy(&policies[..2], &scope("kube-system"))
                .expect("valid")
                .is_none()
        );
        assert!(
            governing_policy(&policies[..2], &scope("inplace-upgrade-system"))
                .expect("valid")
                .is_none()
        );
        // No policy selects: nothing governs.
        assert!(
            governing_policy(&policies[2..3], &scope("dev"))
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn a_namespace_is_governed_when_any_policy_selects_it_whatever_its_workloads() {
        let dev = labels(&[("env", "dev")]);
        let none = labels(&[]);
        let governs = |policies: &[InPlaceUpgradePolicy], ns: &str, l| {
            governs_namespace(policies, ns, l, "inplace-upgrade-system")
        };
        let team = [policy(
            "web",
            "namespaceSelector: {matchLabels: {env: dev}}\nworkloadSelector: {matchLabels: {app: web}}",
        )];
        // The workloadSelector narrows workloads, not namespaces: any pod there may be governed.
        assert!(governs(&team, "dev", &dev));
        assert!(!governs(&team, "other", &none));
        assert!(!governs(&[], "dev", &dev), "no policy, nothing governed");
        let everywhere = [policy("all", "namespaceSelector: {}")];
        assert!(governs(&everywhere, "other", &none));
        assert!(!governs(&everywhere, "kube-system", &none));
        assert!(!governs(&everywhere, "inplace-upgrade-system", &none));
        // A paused policy still governs (its pods keep getting the gate).
        let paused = [policy("stop", "namespaceSelector: {}\npaused: true")];
        assert!(governs(&paused, "other", &none));
        // A selector that cannot be evaluated selects nothing; the valid ones still count.
        let broken = policy(
            "broken",
            "namespaceSelector: {matchExpressions: [{key: env, operator: Sideways}]}",
        );
        assert!(!governs(std::slice::from_ref(&broken), "dev", &dev));
        assert!(governs(&[broken, team[0].clone()], "dev", &dev));
    }

    #[test]
    fn any_matching_paused_policy_pauses() {
        let ns_labels = labels(&[("env", "dev")]);
        let wl_labels = labels(&[]);
        let scope = Scope {
            namespace: "dev",
            namespace_labels: &ns_labels,
            workload_labels: &wl_labels,
            controller_namespace: "inplace-upgrade-system",
        };
        let policies = vec![
            policy("main", "namespaceSelector: {}\npriority: 100"),
            policy("stop", "namespaceSelector: {}\npaused: true\npriority: -5"),
            policy(
                "elsewhere",
                "namespaceSelector: {matchLabels: {env: prod}}\npaused: true",
            ),
        ];
        let g = governing_policy(&policies, &scope)
            .expect("valid")
            .expect("governed");
        assert_eq!(g.policy.name_any(), "main");
        assert_eq!(g.paused_by, vec!["stop".to_string()]);
        assert!(g.paused());
    }

    #[test]
    fn invalid_selector_is_an_error_naming_the_policy() {
        let ns_labels = labels(&[("env", "dev")]);
        let wl_labels = labels(&[]);
        let scope = Scope {
            namespace: "dev",
            namespace_labels: &ns_labels,
            workload_labels: &wl_labels,
            controller_namespace: "x",
        };
        let policies = vec![
            policy("ok", "namespaceSelector: {}"),
            policy(
                "broken",
                "namespaceSelector: {matchExpressions: [{key: env, operator: Is, values: [dev]}]}",
            ),
        ];
        let err = governing_policy(&policies, &scope).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "InPlaceUpgradePolicy \"broken\": namespaceSelector: matchExpressions key \"env\" has unknown operator \"Is\"; fix the selector (operators are In, NotIn, Exists, DoesNotExist)"
        );
    }

    #[test]
    fn container_allowlist_and_image_globs() {
        let spec = spec_from_yaml(
            "namespaceSelector: {}\ncontainers: [istio-proxy]\nallowedImages: ['registry.istio.io/**', 'docker.io/istio/proxyv2:*', 'docker.io/library/nginx:1.*']",
        );
        assert!(spec.allows_container("istio-proxy"));
        assert!(!spec.allows_container("app"));
        let allow = spec.image_allowlist().expect("valid globs");
        for ok in [
            "registry.istio.io/testing/proxyv2:1.24.2",
            "istio/proxyv2:1.24.2",
            "docker.io/istio/proxyv2:1.24.2",
            "nginx:1.25",
            "index.docker.io/library/nginx:1.27",
        ] {
            assert_eq!(allow.check(ok), Ok(()), "{ok}");
        }
        for denied in [
            "docker.io/istio/evil/proxyv2:1",
            "evil.io/istio/proxyv2:1",
            "nginx",
            "nginx:2.0",
            "Not An Image",
        ] {
            assert!(allow.check(denied).is_err(), "{denied}");
        }
        let err = allow.check("nginx:2.0").expect_err("denied");
        assert!(
            err.to_string().contains("\"docker.io/library/nginx:2.0\""),
            "{err}"
        );
        let any = spec_from_yaml("namespaceSelector: {}");
        assert!(any.allows_container("anything"));
        assert_eq!(
            any.image_allowlist().expect("empty").check("whatever"),
            Ok(())
        );
        let bad = spec_from_yaml("namespaceSelector: {}\nallowedImages: ['a[']");
        assert!(matches!(
            bad.image_allowlist(),
            Err(PolicyError::InvalidGlob { .. })
        ));
    }

    #[test]
    fn crd_is_cluster_scoped_with_validation() {
        let yaml = crd_yaml().expect("serialises");
        assert!(yaml.contains("scope: Cluster"));
        assert!(yaml.contains("group: inplace-upgrade.io"));
        assert!(yaml.contains("name: v1alpha1"));
        assert!(yaml.contains("x-kubernetes-int-or-string: true"));
        assert!(yaml.contains("status: {}"));
        let checked_in = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/crds/inplaceupgradepolicies.inplace-upgrade.io.yaml"
        );
        let on_disk = std::fs::read_to_string(checked_in).unwrap_or_else(|e| {
            panic!("read {checked_in}: {e}; run `cargo run -q -- crd > {checked_in}`")
        });
        assert_eq!(
            on_disk, yaml,
            "deploy/crds drifted from the Rust types: run `cargo run -q -- crd > {checked_in}`"
        );
    }
}
