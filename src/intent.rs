//! The decision before the plan, made in one place for the controller, the admission webhook
//! and `kubectl inplace plan`: what a workload asks for (its own annotation, else its
//! Namespace's), which policy governs it, whether it is paused, which targets failed before
//! (its own memory, and under a Namespace annotation its siblings'), and what stops new pods
//! from starting. Pure: each caller reads the cluster its own way (watched caches, or the API
//! for a dry run) and passes what it read, so a dry run cannot disagree with the controller.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::annotation::{self, AnnotationError, Target};
use crate::plan::{DisruptionBudget, FailedTarget, PlanInput};
use crate::policy::{
    Governance, InPlaceUpgradePolicy, InPlaceUpgradePolicySpec, PolicyError, Scope,
    governing_policy,
};
use crate::status::{Reported, WorkloadPhase, WorkloadStatus, failure_memory};
use crate::target::{TargetSource, effective_targets};
use crate::workload::WorkloadView;
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
}

/// Whether the targets in force come from the Namespace's annotation: only then do the
/// statuses of the namespace's other workloads matter (their failures under the same
/// annotation). For callers that must fetch those statuses before they call [`decide`].
pub fn namespace_wide(workload: &WorkloadView, namespace: Option<&Namespace>) -> bool {
    let empty = BTreeMap::new();
    let ns_annotations = namespace.map_or(&empty, |n| n.annotations());
    asked(&workload.annotations, ns_annotations).source == Some(TargetSource::Namespace)
}

/// The decision for `subject`. `siblings` gives the status records of the namespace's other
/// workloads; it is called only when the targets come from the Namespace's annotation
/// ([`namespace_wide`]).
pub fn decide<'p>(
    subject: &Subject<'p>,
    siblings: impl FnOnce() -> Vec<WorkloadStatus>,
) -> Intent<'p> {
    let workload = subject.workload;
    let empty = BTreeMap::new();
    let ns_labels = subject.namespace.map_or(&empty, |n| n.labels());
    let ns_annotations = subject.namespace.map_or(&empty, |n| n.annotations());

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

    /// The planner's input for this decision and what the caller read of the pods.
    pub fn plan_input<'a>(
        &'a self,
        pods: &'a [Pod],
        desired_replicas: i32,
        disruption_budgets: &'a [DisruptionBudget],
        endpoints_drained: &'a BTreeSet<String>,
        now: Timestamp,
    ) -> PlanInput<'a> {
        PlanInput {
            targets: self.targets(),
            pods,
            policy: self.spec,
            desired_replicas,
            paused: self.paused(),
            failed_targets: &self.failed,
            retry_since: self.retry_since,
            disruption_budgets,
            endpoints_drained,
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
