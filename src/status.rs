//! The workload's progress record, annotation `inplace-upgrade.io/status` (JSON). It is also
//! the workload's memory: the targets that failed (not retried until the annotation changes or
//! a retry is asked for) and the last retry request handled.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::plan::FailedTarget;
use crate::target::TargetSource;

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
}
