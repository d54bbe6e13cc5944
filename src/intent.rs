//! The decision before the plan, made in one place for the controller, the admission webhook
//! and `kubectl inplace plan`: what a workload asks for (its own annotation, else its
//! Namespace's), which policy governs it, whether it is paused, which targets failed before
//! (its own memory, and under a Namespace annotation its siblings'), and what stops new pods
//! from starting. Pure: each caller reads the cluster its own way (watched caches, or the API
//! for a dry run) and passes what it read, so a dry run cannot disagree with the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::annotation::{self, AnnotationError, Target};
use crate::plan::{DisruptionBudget, DrainRecord, FailedTarget, PlanInput, PodEvents};
use crate::policy::{
    Governance, InPlaceUpgradePolicy, InPlaceUpgradePolicySpec, PolicyError, Scope,
    governing_policy,
};
use crate::prepull::Pulls;
use crate::status::{Reported, WorkloadPhase, WorkloadStatus, failure_memory};
use crate::target::{TargetSource, effective_targets};
use crate::workload::{WorkloadKey, WorkloadView};
use crate::{PAUSED_ANNOTATION, RETRY_ANNOTATION, TARGETS_ANNOTATION};

/// The policy a workload plans under when none governs it (or the governing one is broken):
/// nothing new starts then (the decision passes no targets), but pods already in flight are
/// finished and gated pods are released under the documented defaults. Built once.
pub static NO_POLICY: LazyLock<InPlaceUpgradePolicySpec> = LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({ "namespaceSelector": {} }))
        .expect("a policy spec with only namespaceSelector is valid (unit-tested)")
});

/// What the decision reads: one workload and what surrounds it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub workload: &'a WorkloadView,
    /// The workload's Namespace (`None`: not known, so no labels and no annotations).
    pub namespace: Option<&'a Namespace>,
    pub policies: &'a [InPlaceUpgradePolicy],
    /// The namespace the controller runs in: no empty namespaceSelector reaches it.
    pub controller_namespace: &'a str,
    /// The workload's last status record. The controller passes its own latest write, which
    /// counts before the watch delivers it.
    pub status: Option<&'a WorkloadStatus>,
    pub now: Timestamp,
}

/// What the caller read of the workload's pods and what surrounds them, for the planner
/// ([`Intent::plan_input`]; see [`PlanInput`] for each).
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    pub pods: &'a [Pod],
    pub desired_replicas: i32,
    pub disruption_budgets: &'a [DisruptionBudget],
    pub endpoints_drained: &'a BTreeSet<String>,
    /// The drains this controller made and remembers (none for a dry run).
    pub drains: &'a BTreeMap<String, DrainRecord>,
    /// kubelet's Warning Events of the pods (none for a dry run).
    pub events: &'a PodEvents,
    /// What is known of the target images' pulls onto the pods' nodes (none for a dry run:
    /// it shows the pre-pull a fresh start makes).
    pub pulls: &'a Pulls,
}

/// What a workload asks for: its own `inplace-upgrade` annotation, else its Namespace's (the
/// rule is [`effective_targets`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// Where the targets come from (`None`: nothing is asked, or the annotation is malformed).
    pub source: Option<TargetSource>,
    /// The targets asked for (empty when nothing is asked or the annotation is malformed).
    pub targets: Vec<Target>,
    /// The targets as the status records them (`target`): normalised, or a malformed value
    /// as written.
    pub written: String,
    /// The annotation in force is malformed: reported, never acted on.
    pub invalid: Option<AnnotationError>,
}

/// What a workload with these annotations asks for, in a Namespace with these.
pub fn asked(
    workload_annotations: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
) -> Asked {
    let here = workload_annotations
        .get(TARGETS_ANNOTATION)
        .map(String::as_str);
    let namespace = namespace_annotations
        .get(TARGETS_ANNOTATION)
        .map(String::as_str);
    match effective_targets(here, namespace) {
        Ok(Some((source, targets))) => Asked {
            source: Some(source),
            written: annotation::render(&targets),
            targets,
            invalid: None,
        },
        Ok(None) => Asked {
            source: None,
            targets: Vec::new(),
            written: String::new(),
            invalid: None,
        },
        Err(e) => Asked {
            source: None,
            targets: Vec::new(),
            written: here.or(namespace).unwrap_or_default().to_string(),
            invalid: Some(e),
        },
    }
}

/// The decision about one workload.
#[derive(Debug)]
pub struct Intent<'p> {
    pub asked: Asked,
    /// The policy that governs the workload; an error when a policy that might select it is
    /// broken (it may be the one meant to pause it: nothing starts until it is fixed).
    pub governance: Result<Option<Governance<'p>>, PolicyError>,
    /// The governing policy's name.
    pub policy: Option<String>,
    /// The governing policy's spec, or [`NO_POLICY`].
    pub spec: &'p InPlaceUpgradePolicySpec,
    /// `inplace-upgrade.io/paused: "true"` on the workload.
    pub paused_workload: bool,
    /// `inplace-upgrade.io/paused: "true"` on its Namespace.
    pub paused_namespace: bool,
    /// What the status reports instead of the plan's verdict: a malformed annotation
    /// (`Invalid`), no policy for an annotated workload (`NoPolicy`), a broken policy
    /// (`Blocked`). Then no target is acted on.
    pub problem: Option<(WorkloadPhase, String)>,
    /// Targets not started again: failed in this workload (until the annotation changes or a
    /// retry is asked for), or under a Namespace annotation in another workload of the
    /// namespace (a bad image must not spread).
    pub failed: Vec<FailedTarget>,
    /// The workload's `inplace-upgrade.io/retry` value.
    pub retry: Option<String>,
    /// When the retry in force was asked for: failure records of pods older than this are
    /// forgiven.
    pub retry_since: Option<Timestamp>,
    /// Why new pods may not start now though the plan would start them: the workload's own
    /// controller is mid-rollout (a template change). (The controller also holds them for a
    /// rollout slot; the admission webhook sets the target on new pods regardless.)
    pub hold: Option<String>,
    /// The Istio revision guard ([`crate::istio`]): the Namespace's labels, what it asks,
    /// when the governing policy keeps the guard on (its default), `None` when it turns it off.
    pub istio_guard: Option<&'p BTreeMap<String, String>>,
}

/// Whether the targets in force come from the Namespace's annotation: only then do the
/// statuses of the namespace's other workloads matter (their failures under the same
/// annotation). For callers that must fetch those statuses before they call [`decide`].
pub fn namespace_wide(workload: &WorkloadView, namespace: Option<&Namespace>) -> bool {
    let empty = BTreeMap::new();
    let ns_annotations = namespace.map_or(&empty, |n| n.annotations());
    asked(&workload.annotations, ns_annotations).source == Some(TargetSource::Namespace)
}

/// The status records of the workloads of a namespace (`namespace_workloads`) but `workload`,
/// for [`decide`]'s `siblings`, as the webhook and `kubectl inplace plan` read them. (The
/// controller reads them in place, its own writes counting before the watch delivers them.)
pub fn sibling_statuses(
    workload: &WorkloadKey,
    namespace_workloads: impl IntoIterator<Item = WorkloadView>,
) -> Vec<WorkloadStatus> {
    namespace_workloads
        .into_iter()
        .filter(|other| &other.key != workload)
        .filter_map(|other| WorkloadStatus::of(&other))
        .collect()
}

/// The decision for `subject`. `siblings` gives the status records of the namespace's other
/// workloads; it is called only when the targets come from the Namespace's annotation
/// ([`namespace_wide`]).
pub fn decide<'p>(
    subject: &Subject<'p>,
    siblings: impl FnOnce() -> Vec<WorkloadStatus>,
) -> Intent<'p> {
    let workload = subject.workload;
    // Borrowed for 'p: the Istio guard hands the Namespace's labels on to the plan.
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    let ns_labels: &'p BTreeMap<String, String> = subject.namespace.map_or(&NONE, |n| n.labels());
    let ns_annotations = subject.namespace.map_or(&NONE, |n| n.annotations());

    let asked = asked(&workload.annotations, ns_annotations);
    let governance = governing_policy(
        subject.policies,
        &Scope {
            namespace: &workload.key.namespace,
            namespace_labels: ns_labels,
            workload_labels: &workload.labels,
            controller_namespace: subject.controller_namespace,
        },
    );
    let problem = match (&asked.invalid, &governance) {
        (Some(e), _) => Some((WorkloadPhase::Invalid, e.to_string())),
        (None, Err(e)) => Some((WorkloadPhase::Blocked, e.to_string())),
        (None, Ok(None)) if asked.source.is_some() => Some((
            WorkloadPhase::NoPolicy,
            format!(
                "no InPlaceUpgradePolicy enables namespace {:?} for this workload; nothing is upgraded",
                workload.key.namespace
            ),
        )),
        (None, Ok(_)) => None,
    };
    let (policy, spec) = match &governance {
        Ok(Some(g)) => (Some(g.policy.name_any()), &g.policy.spec),
        Ok(None) | Err(_) => (None, &*NO_POLICY),
    };

    // The workload's own memory: a new retry request (its RFC 3339 time, as `kubectl inplace
    // retry` writes it; any other value counts from now) forgets it.
    let retry = workload.annotations.get(RETRY_ANNOTATION).cloned();
    let (mut failed, retry_since) = failure_memory(subject.status, retry.as_deref(), subject.now);
    if asked.source == Some(TargetSource::Namespace) {
        // Each sibling forgets its own failures only on a retry of its own (`kubectl inplace
        // retry` asks every sibling a failure blocks).
        for sibling in siblings() {
            if sibling.source == Some(TargetSource::Namespace) {
                failed.extend(sibling.failed_targets);
            }
        }
    }

    let paused_here =
        |a: &BTreeMap<String, String>| a.get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    Intent {
        asked,
        policy,
        spec,
        paused_workload: paused_here(&workload.annotations),
        paused_namespace: paused_here(ns_annotations),
        governance,
        problem,
        failed,
        retry,
        retry_since,
        istio_guard: spec.istio_revision_guard.then_some(ns_labels),
        hold: (!workload.settled).then(|| {
            format!(
                "waiting for the {}'s own rollout to finish",
                workload.key.kind.as_str()
            )
        }),
    }
}

impl<'p> Intent<'p> {
    /// The targets to act on: those asked for, unless a [`Intent::problem`] means nothing is
    /// (pods in flight are still finished, gated pods still released).
    pub fn targets(&self) -> &[Target] {
        if self.problem.is_some() {
            &[]
        } else {
            &self.asked.targets
        }
    }

    /// Paused: by the annotation on the workload or its Namespace, by any selecting policy
    /// with `paused: true` (whatever its priority: an emergency stop always works), or by a
    /// broken policy (it may be the one meant to pause). Pods in flight finish; nothing new
    /// starts, and no image changes, not even back.
    pub fn paused(&self) -> bool {
        self.paused_workload
            || self.paused_namespace
            || match &self.governance {
                Ok(Some(g)) => g.paused(),
                Ok(None) => false,
                Err(_) => true,
            }
    }

    /// The planner's input: this decision and what the caller read (`seen`).
    pub fn plan_input<'a>(&'a self, seen: Observed<'a>, now: Timestamp) -> PlanInput<'a> {
        PlanInput {
            targets: self.targets(),
            pods: seen.pods,
            policy: self.spec,
            desired_replicas: seen.desired_replicas,
            paused: self.paused(),
            failed_targets: &self.failed,
            retry_since: self.retry_since,
            disruption_budgets: seen.disruption_budgets,
            endpoints_drained: seen.endpoints_drained,
            drains: seen.drains,
            events: seen.events,
            pulls: seen.pulls,
            istio_guard: self.istio_guard,
            now,
        }
    }

    /// What the workload's status reports of this decision, with `hold` (why new pods wait:
    /// [`Intent::hold`], or a rollout slot).
    pub fn reported<'a>(&'a self, hold: Option<&'a str>) -> Reported<'a> {
        Reported {
            target: &self.asked.written,
            source: self.asked.source,
            policy: self.policy.as_deref(),
            problem: self.problem.as_ref().map(|(phase, m)| (*phase, m.as_str())),
            hold,
            retry: self.retry.as_deref(),
            retry_since: self.retry_since,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::workload::WorkloadKey;

    const NS: &str = "shop";
    const BAD: &str = "registry.example/proxyv2:bad";

    fn now() -> Timestamp {
        "2026-01-02T00:00:00Z".parse().expect("time")
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn workload(annotations: BTreeMap<String, String>) -> WorkloadView {
        WorkloadView {
            key: WorkloadKey::test_deployment("web"),
            uid: "u".into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            annotations,
            desired_replicas: 3,
            selector: None,
            settled: true,
        }
    }

    fn namespace(annotations: &[(&str, &str)]) -> Namespace {
        serde_json::from_value(json!({"metadata": {
            "name": NS,
            "labels": {"kubernetes.io/metadata.name": NS},
            "annotations": self::annotations(annotations),
        }}))
        .expect("namespace literal")
    }

    fn policy(name: &str, spec: Value) -> InPlaceUpgradePolicy {
        let mut full = json!({"namespaceSelector": {}});
        if let (Some(a), Value::Object(b)) = (full.as_object_mut(), spec) {
            a.extend(b);
        }
        serde_json::from_value(json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": name}, "spec": full,
        }))
        .expect("policy literal")
    }

    /// A workload of three replicas whose pods were not read.
    #[derive(Default)]
    struct Nothing {
        drained: BTreeSet<String>,
        drains: BTreeMap<String, DrainRecord>,
        events: PodEvents,
        pulls: Pulls,
    }

    impl Nothing {
        fn seen(&self) -> Observed<'_> {
            Observed {
                pods: &[],
                desired_replicas: 3,
                disruption_budgets: &[],
                endpoints_drained: &self.drained,
                drains: &self.drains,
                events: &self.events,
                pulls: &self.pulls,
            }
        }
    }

    fn failed(image: &str) -> FailedTarget {
        FailedTarget {
            container: "istio-proxy".into(),
            image: image.into(),
            message: None,
        }
    }

    /// The record a workload that failed `image` under `source` keeps.
    fn failed_status(source: TargetSource, image: &str) -> WorkloadStatus {
        WorkloadStatus {
            phase: WorkloadPhase::Failed,
            target: format!("istio-proxy={image}"),
            source: Some(source),
            failed_targets: vec![failed(image)],
            ..WorkloadStatus::default()
        }
    }

    struct Case<'a> {
        workload: WorkloadView,
        namespace: Option<Namespace>,
        policies: Vec<InPlaceUpgradePolicy>,
        status: Option<WorkloadStatus>,
        siblings: Option<Vec<WorkloadStatus>>,
        why: &'a str,
    }

    impl Case<'_> {
        /// The decision; `siblings: None` means they must not be read.
        fn decide(&self) -> Intent<'_> {
            let subject = Subject {
                workload: &self.workload,
                namespace: self.namespace.as_ref(),
                policies: &self.policies,
                controller_namespace: "inplace-upgrade-system",
                status: self.status.as_ref(),
                now: now(),
            };
            let why = self.why;
            decide(&subject, || match &self.siblings {
                Some(s) => s.clone(),
                None => panic!("{why}: the siblings were read"),
            })
        }
    }

    fn case<'a>(why: &'a str, workload_annotations: &[(&str, &str)]) -> Case<'a> {
        Case {
            workload: workload(annotations(workload_annotations)),
            namespace: Some(namespace(&[])),
            policies: vec![policy("mesh", json!({}))],
            status: None,
            siblings: None,
            why,
        }
    }

    #[test]
    fn the_workload_annotation_wins_and_then_siblings_are_never_read() {
        let mut c = case("own annotation", &[(TARGETS_ANNOTATION, "istio-proxy=:2")]);
        c.namespace = Some(namespace(&[(TARGETS_ANNOTATION, "istio-proxy=:3")]));
        let intent = c.decide();
        assert_eq!(intent.asked.source, Some(TargetSource::Workload));
        assert_eq!(intent.asked.written, "istio-proxy=:2");
        assert_eq!(intent.targets().len(), 1);
        assert!(!namespace_wide(&c.workload, c.namespace.as_ref()));
        assert!(intent.problem.is_none() && !intent.paused() && intent.hold.is_none());
        assert_eq!(intent.policy.as_deref(), Some("mesh"));
    }

    /// The disagreement `kubectl inplace plan` had: it read the workload's own memory only.
    #[test]
    fn under_a_namespace_annotation_a_target_failed_in_a_sibling_is_not_started() {
        let mut c = case("namespace annotation", &[]);
        c.namespace = Some(namespace(&[(
            TARGETS_ANNOTATION,
            &format!("istio-proxy={BAD}"),
        )]));
        c.siblings = Some(vec![
            failed_status(TargetSource::Namespace, BAD),
            // A sibling's own annotation failing says nothing about the namespace's target.
            failed_status(TargetSource::Workload, "registry.example/proxyv2:other"),
            WorkloadStatus::default(),
        ]);
        assert!(namespace_wide(&c.workload, c.namespace.as_ref()));
        let intent = c.decide();
        assert_eq!(intent.asked.source, Some(TargetSource::Namespace));
        assert_eq!(intent.failed, vec![failed(BAD)]);
        assert_eq!(
            intent
                .plan_input(Nothing::default().seen(), now())
                .failed_targets,
            [failed(BAD)]
        );
    }

    /// The disagreement the webhook had: it let a sibling's retry request, not yet taken up
    /// by the controller, lift that sibling's failure; the controller keeps it until the
    /// sibling's own status forgets it.
    #[test]
    fn a_siblings_failure_counts_until_its_own_status_forgets_it() {
        let mut c = case("sibling retry pending", &[]);
        c.namespace = Some(namespace(&[(
            TARGETS_ANNOTATION,
            &format!("istio-proxy={BAD}"),
        )]));
        let mut sibling = failed_status(TargetSource::Namespace, BAD);
        sibling.retry = Some("2026-01-01T00:00:00Z".into());
        c.siblings = Some(vec![sibling]);
        assert_eq!(c.decide().failed, vec![failed(BAD)]);
    }

    #[test]
    fn the_workloads_own_memory_lasts_until_a_new_retry_request() {
        let target = format!("istio-proxy={BAD}");
        let mut c = case("own memory", &[(TARGETS_ANNOTATION, &target)]);
        c.status = Some(failed_status(TargetSource::Workload, BAD));
        let intent = c.decide();
        assert_eq!(intent.failed, vec![failed(BAD)]);
        assert_eq!((intent.retry.as_deref(), intent.retry_since), (None, None));

        let asked_at = "2026-01-01T12:00:00Z";
        let mut c = case(
            "a new retry",
            &[(TARGETS_ANNOTATION, &target), (RETRY_ANNOTATION, asked_at)],
        );
        c.status = Some(failed_status(TargetSource::Workload, BAD));
        let intent = c.decide();
        assert!(intent.failed.is_empty());
        assert_eq!(intent.retry.as_deref(), Some(asked_at));
        assert_eq!(intent.retry_since, asked_at.parse().ok());

        // The retry taken up (recorded in the status): what failed since is remembered again.
        let mut c = case(
            "a retry taken up",
            &[(TARGETS_ANNOTATION, &target), (RETRY_ANNOTATION, asked_at)],
        );
        let mut status = failed_status(TargetSource::Workload, BAD);
        status.retry = Some(asked_at.into());
        status.retry_since = asked_at.parse().ok();
        c.status = Some(status);
        assert_eq!(c.decide().failed, vec![failed(BAD)]);

        // Not a time: counts from now.
        let mut c = case(
            "any value",
            &[(TARGETS_ANNOTATION, &target), (RETRY_ANNOTATION, "please")],
        );
        c.status = Some(failed_status(TargetSource::Workload, BAD));
        assert_eq!(c.decide().retry_since, Some(now()));
    }

    /// The disagreement `kubectl inplace plan` had: a broken policy paused the workload in the
    /// controller, not in the dry run.
    #[test]
    fn a_broken_policy_blocks_and_pauses_whatever_else_holds() {
        let broken = policy(
            "broken",
            json!({"workloadSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        );
        for (annotated, why) in [(true, "annotated"), (false, "nothing asked")] {
            let pairs: &[(&str, &str)] = if annotated {
                &[(TARGETS_ANNOTATION, "istio-proxy=:2")]
            } else {
                &[]
            };
            let mut c = case(why, pairs);
            c.policies.push(broken.clone());
            let intent = c.decide();
            assert!(intent.paused(), "{why}");
            assert!(
                matches!(&intent.problem, Some((WorkloadPhase::Blocked, m)) if m.contains("broken")),
                "{why}: {:?}",
                intent.problem
            );
            assert!(intent.targets().is_empty(), "{why}");
            assert!(
                intent.policy.is_none() && std::ptr::eq(intent.spec, &*NO_POLICY),
                "{why}"
            );
            let nothing = Nothing::default();
            let input = intent.plan_input(nothing.seen(), now());
            assert!(input.paused && input.targets.is_empty(), "{why}");
        }
    }

    #[test]
    fn a_malformed_annotation_is_reported_before_any_policy_problem() {
        let mut c = case("malformed", &[(TARGETS_ANNOTATION, "istio-proxy")]);
        c.policies = vec![policy(
            "broken",
            json!({"workloadSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        )];
        let intent = c.decide();
        assert!(intent.asked.invalid.is_some());
        assert_eq!(intent.asked.written, "istio-proxy", "kept as written");
        assert!(matches!(intent.problem, Some((WorkloadPhase::Invalid, _))));
        assert!(intent.targets().is_empty());
    }

    /// The defaults `kubectl inplace plan` built for itself are the controller's, built once.
    #[test]
    fn without_a_policy_nothing_starts_under_the_one_default() {
        let mut c = case("no policy", &[(TARGETS_ANNOTATION, "istio-proxy=:2")]);
        c.policies.clear();
        let intent = c.decide();
        assert!(matches!(intent.problem, Some((WorkloadPhase::NoPolicy, _))));
        assert!(intent.targets().is_empty() && !intent.paused());
        assert!(std::ptr::eq(intent.spec, &*NO_POLICY));
        // Nothing asked, no policy: nothing to report either.
        let mut c = case("nothing at all", &[]);
        c.policies.clear();
        assert!(c.decide().problem.is_none());
        // The controller's namespace is reached by no empty selector.
        let mut c = case("own namespace", &[(TARGETS_ANNOTATION, "istio-proxy=:2")]);
        c.workload.key.namespace = "inplace-upgrade-system".into();
        assert!(matches!(
            c.decide().problem,
            Some((WorkloadPhase::NoPolicy, _))
        ));
    }

    #[test]
    fn the_no_policy_default_takes_the_documented_defaults() {
        assert_eq!(NO_POLICY.max_unavailable_pods(10).ok(), Some(1));
        assert_eq!(NO_POLICY.on_failure, crate::policy::OnFailure::Rollback);
        assert!(NO_POLICY.readiness_gate && !NO_POLICY.paused);
    }

    #[test]
    fn any_pause_pauses() {
        let target = (TARGETS_ANNOTATION, "istio-proxy=:2");
        let paused = (PAUSED_ANNOTATION, "true");
        let cases: Vec<(Case, bool)> = vec![
            (case("not paused", &[target]), false),
            (case("workload annotation", &[target, paused]), true),
            (
                case(
                    "annotation not \"true\"",
                    &[target, (PAUSED_ANNOTATION, "yes")],
                ),
                false,
            ),
            (
                Case {
                    namespace: Some(namespace(&[paused])),
                    ..case("namespace annotation", &[target])
                },
                true,
            ),
            (
                Case {
                    // A paused policy of lower priority still pauses: an emergency stop.
                    policies: vec![
                        policy("mesh", json!({"priority": 10})),
                        policy("stop", json!({"paused": true})),
                    ],
                    ..case("paused policy", &[target])
                },
                true,
            ),
        ];
        for (c, expected) in cases {
            let intent = c.decide();
            assert_eq!(intent.paused(), expected, "{}", c.why);
            assert_eq!(
                intent.plan_input(Nothing::default().seen(), now()).paused,
                expected,
                "{}",
                c.why
            );
        }
    }

    #[test]
    fn new_pods_wait_for_the_workloads_own_rollout() {
        let mut c = case("mid-rollout", &[(TARGETS_ANNOTATION, "istio-proxy=:2")]);
        c.workload.settled = false;
        let intent = c.decide();
        assert_eq!(
            intent.hold.as_deref(),
            Some("waiting for the Deployment's own rollout to finish")
        );
        // Held is not paused: pods in flight go on, failures are rolled back.
        assert!(!intent.paused() && intent.problem.is_none());
        assert_eq!(
            intent.reported(intent.hold.as_deref()).hold,
            intent.hold.as_deref()
        );
    }
}
