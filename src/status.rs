//! The workload's progress record, annotation `inplace-upgrade.io/status` (JSON). It is also
//! the workload's memory: the targets that failed (not retried until the annotation changes or
//! a retry is asked for) and the last retry request handled.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::plan::{Action, FailedTarget, Plan, Verdict};
use crate::target::TargetSource;
use crate::workload::WorkloadView;
use crate::{READINESS_GATE, STATUS_ANNOTATION};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadPhase {
    /// Pods are being upgraded (or wait for their turn).
    #[default]
    Progressing,
    /// Every targeted pod runs its target.
    Completed,
    /// Stopped before the next pod by `inplace-upgrade.io/paused` or a paused policy.
    Paused,
    /// An upgrade failed; nothing new starts until the annotation changes or a retry.
    Failed,
    /// Pods need an upgrade that cannot start (policy, PodDisruptionBudget, rollout slots,
    /// the workload's own rollout).
    Blocked,
    /// The annotation is malformed: reported, never acted on.
    Invalid,
    /// No InPlaceUpgradePolicy enables this workload.
    NoPolicy,
}

impl WorkloadPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadPhase::Progressing => "Progressing",
            WorkloadPhase::Completed => "Completed",
            WorkloadPhase::Paused => "Paused",
            WorkloadPhase::Failed => "Failed",
            WorkloadPhase::Blocked => "Blocked",
            WorkloadPhase::Invalid => "Invalid",
            WorkloadPhase::NoPolicy => "NoPolicy",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub phase: WorkloadPhase,
    /// The targets as written (workload or Namespace annotation).
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TargetSource>,
    /// The governing InPlaceUpgradePolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Targeted pods that run every target.
    #[serde(default)]
    pub upgraded: u32,
    /// Pods the targets apply to.
    #[serde(default)]
    pub total: u32,
    /// Pods being drained, upgraded or rolled back now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_pods: Vec<String>,
    /// Targeted pods without our readiness gate (created before the webhook ran): they are
    /// upgraded without being taken out of the EndpointSlices first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ungated_pods: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Targets that failed here: not started again until the annotation changes or a retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_targets: Vec<FailedTarget>,
    /// The last `inplace-upgrade.io/retry` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// When that retry was asked for: failure records of pods older than this are forgiven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_since: Option<Timestamp>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl WorkloadStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_str(raw).ok()
    }

    /// The record on a workload (its status annotation), if it has one that parses.
    pub fn of(workload: &WorkloadView) -> Option<Self> {
        Self::parse(workload.annotations.get(STATUS_ANNOTATION)?)
    }
}

impl WorkloadStatus {
    /// True when `next` differs from `self` only in progress: which pods are being upgraded
    /// (`currentPods`) and how many are done (`upgraded`). Such a change may wait a little and
    /// ride along with the next ones; a phase or message change, a failure or a retry may not.
    pub fn only_progress_since(&self, next: &WorkloadStatus) -> bool {
        WorkloadStatus {
            upgraded: next.upgraded,
            current_pods: next.current_pods.clone(),
            ..self.clone()
        } == *next
    }
}

/// The failure memory the controller plans with, read from the previous status and the
/// workload's current `inplace-upgrade.io/retry` value: a new retry request forgets the
/// remembered failures and forgives pod failure records from before it (the value is the
/// request's RFC 3339 time; any other value counts from `now`). Targets that failed in other
/// workloads under a Namespace annotation are not included.
pub fn failure_memory(
    previous: Option<&WorkloadStatus>,
    retry: Option<&str>,
    now: Timestamp,
) -> (Vec<FailedTarget>, Option<Timestamp>) {
    match previous {
        Some(p) if p.retry.as_deref() == retry => (p.failed_targets.clone(), p.retry_since),
        _ => (
            Vec::new(),
            retry.map(|r| r.parse::<Timestamp>().unwrap_or(now)),
        ),
    }
}

/// What the status reports besides the plan: what is asked and what stops it (from the
/// workload's decision, [`crate::intent::Intent::reported`]).
#[derive(Debug, Clone, Copy)]
pub struct Reported<'a> {
    /// The targets as written (normalised), `target` in the status.
    pub target: &'a str,
    pub source: Option<TargetSource>,
    /// The governing policy.
    pub policy: Option<&'a str>,
    /// Reported instead of the plan's verdict (`Invalid`, `NoPolicy`, `Blocked`).
    pub problem: Option<(WorkloadPhase, &'a str)>,
    /// Why new pods wait though the plan would start them (the workload's own rollout, a
    /// rollout slot): `Blocked` when nothing else is in flight.
    pub hold: Option<&'a str>,
    /// The `inplace-upgrade.io/retry` value in force, and when it was asked for.
    pub retry: Option<&'a str>,
    pub retry_since: Option<Timestamp>,
}

/// The status that a workload's plan gives: the phase and message from the plan's verdict (or
/// what stops it), progress from the plan's counts and steps, and the failure memory: what
/// `previous` remembered for the same targets and retry request, and what failed now.
pub fn progress(
    reported: &Reported<'_>,
    plan: &Plan,
    previous: Option<&WorkloadStatus>,
    now: Timestamp,
) -> WorkloadStatus {
    let finishing = |a: &Action| matches!(a, Action::MarkReady | Action::Finish { .. });
    let current_pods = plan
        .steps
        .iter()
        .filter(|s| !finishing(&s.action))
        .map(|s| s.pod.clone())
        .collect();
    let (mut phase, mut message) = match &plan.verdict {
        Verdict::Progressing => (WorkloadPhase::Progressing, None),
        Verdict::Completed => (WorkloadPhase::Completed, None),
        Verdict::Paused => (
            WorkloadPhase::Paused,
            Some("paused; resumes before the next pod".to_string()),
        ),
        Verdict::Blocked { reason } => (WorkloadPhase::Blocked, Some(reason.clone())),
        Verdict::Failed { pod, reason } => {
            (WorkloadPhase::Failed, Some(format!("pod {pod}: {reason}")))
        }
    };
    if let Some((p, m)) = reported.problem {
        (phase, message) = (p, Some(m.to_string()));
    } else if let Some(hold) = reported.hold
        && phase == WorkloadPhase::Progressing
        && plan.steps.iter().all(|s| finishing(&s.action))
    {
        (phase, message) = (WorkloadPhase::Blocked, Some(hold.to_string()));
    }
    let ungated = plan.counts.ungated;
    if ungated > 0 && phase == WorkloadPhase::Progressing {
        let note = format!(
            "{ungated} pod(s) have no {READINESS_GATE} readiness gate (created before the webhook): they are upgraded without being drained first"
        );
        message = Some(message.map_or(note.clone(), |m| format!("{m}; {note}")));
    }
    // What failed stays failed for these targets until a retry.
    let mut failed_targets: Vec<FailedTarget> = match previous {
        Some(p) if p.retry.as_deref() == reported.retry && p.target == reported.target => {
            p.failed_targets.clone()
        }
        _ => Vec::new(),
    };
    for record in &plan.failed_targets {
        if !failed_targets.contains(record) {
            failed_targets.push(record.clone());
        }
    }
    let last_transition_time = match previous {
        Some(p) if p.phase == phase => p.last_transition_time,
        _ => Some(now),
    };
    WorkloadStatus {
        phase,
        target: reported.target.to_string(),
        source: reported.source,
        policy: reported.policy.map(str::to_string),
        upgraded: plan.counts.upgraded,
        total: plan.counts.targeted,
        current_pods,
        ungated_pods: ungated,
        message,
        failed_targets,
        retry: reported.retry.map(str::to_string),
        retry_since: reported.retry_since,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_retry_forgets_remembered_failures() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().expect("time");
        let previous = WorkloadStatus {
            phase: WorkloadPhase::Failed,
            failed_targets: vec![FailedTarget {
                container: "istio-proxy".into(),
                image: "proxyv2:bad".into(),
                message: None,
            }],
            retry: Some("2026-01-01T00:00:00Z".into()),
            retry_since: Some("2026-01-01T00:00:00Z".parse().expect("time")),
            ..WorkloadStatus::default()
        };
        let (failed, since) = failure_memory(Some(&previous), Some("2026-01-01T00:00:00Z"), now);
        assert_eq!(failed.len(), 1);
        assert_eq!(since, previous.retry_since);
        let (failed, since) = failure_memory(Some(&previous), Some("2026-01-01T12:00:00Z"), now);
        assert!(failed.is_empty());
        assert_eq!(since, Some("2026-01-01T12:00:00Z".parse().expect("time")));
        let (failed, since) = failure_memory(Some(&previous), Some("please"), now);
        assert!(failed.is_empty());
        assert_eq!(since, Some(now));
        assert_eq!(failure_memory(None, None, now), (Vec::new(), None));
    }

    #[test]
    fn pods_starting_and_finishing_are_progress_but_a_new_phase_or_failure_is_not() {
        let rolling = WorkloadStatus {
            phase: WorkloadPhase::Progressing,
            upgraded: 1,
            total: 3,
            current_pods: vec!["b".into()],
            ..WorkloadStatus::default()
        };
        let next = WorkloadStatus {
            upgraded: 2,
            current_pods: vec!["c".into()],
            ..rolling.clone()
        };
        assert!(rolling.only_progress_since(&next));
        let done = WorkloadStatus {
            phase: WorkloadPhase::Completed,
            current_pods: vec![],
            ..next.clone()
        };
        assert!(!next.only_progress_since(&done));
        let failed = WorkloadStatus {
            failed_targets: vec![FailedTarget {
                container: "istio-proxy".into(),
                image: "proxyv2:bad".into(),
                message: None,
            }],
            ..next.clone()
        };
        assert!(!rolling.only_progress_since(&failed));
        let blocked = WorkloadStatus {
            message: Some("waiting for a rollout slot".into()),
            ..rolling.clone()
        };
        assert!(!rolling.only_progress_since(&blocked));
    }

    fn step(pod: &str, action: Action) -> crate::plan::Step {
        crate::plan::Step {
            pod: pod.into(),
            action,
            state: None,
        }
    }

    fn plan(verdict: Verdict, steps: Vec<crate::plan::Step>) -> Plan {
        Plan {
            steps,
            verdict,
            recheck_at: None,
            counts: crate::plan::Counts {
                targeted: 3,
                upgraded: 1,
                ungated: 0,
            },
            failed_targets: Vec::new(),
            pulls_wanted: Default::default(),
            held: Default::default(),
        }
    }

    fn reported() -> Reported<'static> {
        Reported {
            target: "istio-proxy=proxyv2:2",
            source: Some(TargetSource::Namespace),
            policy: Some("mesh"),
            problem: None,
            hold: None,
            retry: None,
            retry_since: None,
        }
    }

    fn bad() -> FailedTarget {
        FailedTarget {
            container: "istio-proxy".into(),
            image: "proxyv2:bad".into(),
            message: None,
        }
    }

    #[test]
    fn the_status_reports_the_plan() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().expect("time");
        let drain = || step("b", Action::Drain);
        let finish = || {
            step(
                "a",
                Action::Finish {
                    phase: crate::state::Phase::Succeeded,
                    reason: None,
                    message: None,
                    open_gate: true,
                },
            )
        };
        let progressing = progress(
            &reported(),
            &plan(Verdict::Progressing, vec![finish(), drain()]),
            None,
            now,
        );
        assert_eq!(
            (progressing.phase, progressing.upgraded, progressing.total),
            (WorkloadPhase::Progressing, 1, 3)
        );
        assert_eq!(
            progressing.current_pods,
            ["b"],
            "pods being finished are not current"
        );
        assert_eq!(progressing.policy.as_deref(), Some("mesh"));
        assert_eq!(progressing.source, Some(TargetSource::Namespace));
        assert_eq!(progressing.last_transition_time, Some(now));

        // A problem replaces the verdict.
        let no_policy = Reported {
            problem: Some((WorkloadPhase::NoPolicy, "no policy")),
            ..reported()
        };
        let s = progress(&no_policy, &plan(Verdict::Completed, vec![]), None, now);
        assert_eq!(
            (s.phase, s.message.as_deref()),
            (WorkloadPhase::NoPolicy, Some("no policy"))
        );

        // A hold is Blocked only when nothing else is in flight.
        let held = Reported {
            hold: Some("waiting for a rollout slot"),
            ..reported()
        };
        let s = progress(
            &held,
            &plan(Verdict::Progressing, vec![finish()]),
            None,
            now,
        );
        assert_eq!(
            (s.phase, s.message.as_deref()),
            (WorkloadPhase::Blocked, Some("waiting for a rollout slot"))
        );
        let s = progress(&held, &plan(Verdict::Progressing, vec![drain()]), None, now);
        assert_eq!(s.phase, WorkloadPhase::Progressing);

        // Ungated pods are named while rolling.
        let mut ungated = plan(Verdict::Progressing, vec![drain()]);
        ungated.counts.ungated = 2;
        let s = progress(&reported(), &ungated, None, now);
        assert!(
            s.message
                .is_some_and(|m| m.starts_with("2 pod(s) have no inplace-upgrade.io/ready"))
        );
        assert_eq!(s.ungated_pods, 2);

        // The same phase keeps its transition time.
        let earlier: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let before = WorkloadStatus {
            last_transition_time: Some(earlier),
            ..progressing.clone()
        };
        let s = progress(
            &reported(),
            &plan(Verdict::Progressing, vec![drain()]),
            Some(&before),
            now,
        );
        assert_eq!(s.last_transition_time, Some(earlier));
    }

    #[test]
    fn failures_are_remembered_for_the_same_targets_and_retry() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().expect("time");
        let mut failing = plan(
            Verdict::Failed {
                pod: "a".into(),
                reason: "ErrImagePull: not found".into(),
            },
            vec![],
        );
        failing.failed_targets = vec![bad()];
        let failed = progress(&reported(), &failing, None, now);
        assert_eq!(failed.phase, WorkloadPhase::Failed);
        assert_eq!(
            failed.message.as_deref(),
            Some("pod a: ErrImagePull: not found")
        );
        assert_eq!(failed.failed_targets, [bad()]);
        // Kept while the targets and the retry request stay, and not recorded twice.
        let again = progress(&reported(), &failing, Some(&failed), now);
        assert_eq!(again.failed_targets, [bad()]);
        let later = progress(
            &reported(),
            &plan(Verdict::Completed, vec![]),
            Some(&failed),
            now,
        );
        assert_eq!(later.failed_targets, [bad()]);
        // Forgotten when the targets change or a new retry is asked for.
        let changed = Reported {
            target: "istio-proxy=proxyv2:3",
            ..reported()
        };
        let s = progress(
            &changed,
            &plan(Verdict::Progressing, vec![]),
            Some(&failed),
            now,
        );
        assert!(s.failed_targets.is_empty());
        let retried = Reported {
            retry: Some("2026-01-01T12:00:00Z"),
            ..reported()
        };
        let s = progress(
            &retried,
            &plan(Verdict::Progressing, vec![]),
            Some(&failed),
            now,
        );
        assert!(s.failed_targets.is_empty());
        assert_eq!(s.retry.as_deref(), Some("2026-01-01T12:00:00Z"));
    }

    /// The webhook and the planner read this record through these very types: a field renamed
    /// here is renamed for every reader.
    #[test]
    fn the_failure_memory_round_trips_as_written() {
        let status = WorkloadStatus {
            phase: WorkloadPhase::Failed,
            source: Some(TargetSource::Namespace),
            failed_targets: vec![bad()],
            ..WorkloadStatus::default()
        };
        let raw = serde_json::to_string(&status).expect("json");
        assert!(
            raw.contains(r#""failedTargets":[{"container":"istio-proxy","image":"proxyv2:bad"}]"#),
            "{raw}"
        );
        assert_eq!(WorkloadStatus::parse(&raw), Some(status));
    }
}
