//! Prometheus metrics of the controller (served on the admin port's `/metrics`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::report::PolicyReport;
use crate::STATUS_ANNOTATION;
use crate::cache::Cache;
use crate::patch::DRAINING_REASON;
use crate::plan::gate_condition;
use crate::state::PodUpgradeState;
use crate::status::{WorkloadPhase, WorkloadStatus};
use crate::workload::WorkloadKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: &'static str,
    pub resource: &'static str,
}

/// Label values known in advance, exported at 0 from the start: a series that first appears
/// at 1 hides its first increase from `rate()` and `increase()`, and so from the alerts in
/// deploy/monitoring (and a family with no series is not exported at all). The results are
/// the ones reconcile.rs counts; the errors are `ReconcileError::metric_label`'s.
const RESULTS: [&str; 3] = ["succeeded", "rolled_back", "failed"];
const RECONCILE_ERRORS: [&str; 3] = ["conflict", "kube", "state"];

#[derive(Clone)]
pub struct Metrics {
    /// Pods whose upgrade ended, by result (`succeeded`, `rolled_back`, `failed`).
    pub pods_upgraded: Family<ResultLabels, Counter>,
    /// From the image patch to the container running the target and Ready.
    pub pod_upgrade_duration: Histogram,
    /// Workloads with an upgrade in progress.
    pub workloads_in_progress: Gauge,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Writes to the API server, by verb and resource.
    pub api_writes: Family<WriteLabels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            pods_upgraded: Family::default(),
            pod_upgrade_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            workloads_in_progress: Gauge::default(),
            reconcile_errors: Family::default(),
            api_writes: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("inplace_upgrade");
        r.register(
            "pods_upgraded",
            "Pods whose in-place upgrade ended, by result",
            m.pods_upgraded.clone(),
        );
        r.register(
            "pod_upgrade_duration_seconds",
            "Time from a pod's image patch to its restarted container running the target and Ready",
            m.pod_upgrade_duration.clone(),
        );
        r.register(
            "workloads_in_progress",
            "Workloads with an in-place upgrade in progress",
            m.workloads_in_progress.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "api_writes",
            "Writes to the Kubernetes API by verb and resource",
            m.api_writes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the controller Lease",
            m.leader.clone(),
        );
        for result in RESULTS {
            m.pods_upgraded
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        for error in RECONCILE_ERRORS {
            m.reconcile_errors
                .get_or_create(&ErrorLabels { error })
                .inc_by(0);
        }
        m
    }

    pub fn write(&self, verb: &'static str, resource: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { verb, resource })
            .inc();
    }
}

/// Gauges computed at each scrape from the leader's record of workload phases and the caches,
/// so they describe the API as it is now even when the controller is stuck (a stuck
/// controller is what the alerts in deploy/monitoring look for):
/// - `inplace_upgrade_workloads{phase}`: governed workloads with a target, by phase;
/// - `inplace_upgrade_workload_phase{namespace,workload,policy,phase}` = 1 for each of them
///   that is not `Completed` (completed ones are only counted, to keep the series few);
/// - `inplace_upgrade_workload_progress_timestamp_seconds{namespace,workload,policy}`, for
///   each `Progressing` workload: the last time it moved (its phase changed, or one of its
///   pods was drained, patched, finished or undrained);
/// - `inplace_upgrade_pod_drain_started_timestamp_seconds` and
///   `inplace_upgrade_pod_drain_timeout_seconds` `{namespace,pod,workload,policy}`, for each pod
///   drained by our readiness gate and not patched since: when the drain began, and the
///   governing policy's `drain.timeoutSeconds` by which the patch should have followed.
///
/// A standby replica records no phases and exports only `inplace_upgrade_workloads` at 0.
pub(crate) struct RolloutCollector {
    pub report: Arc<PolicyReport>,
    pub cache: Cache,
}

impl std::fmt::Debug for RolloutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutCollector").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub namespace: String,
    /// `Kind/name`, e.g. `Deployment/reviews`.
    pub workload: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WorkloadPhaseLabels {
    pub namespace: String,
    pub workload: String,
    pub policy: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub policy: String,
}

/// What one scrape reports of the rollouts (see [`RolloutCollector`]).
#[derive(Debug, Default, PartialEq)]
pub struct RolloutGauges {
    pub workloads: BTreeMap<&'static str, i64>,
    pub not_completed: Vec<WorkloadPhaseLabels>,
    /// Seconds since the Unix epoch.
    pub progress: Vec<(WorkloadLabels, f64)>,
    /// Drain start (seconds since the Unix epoch) and the policy's drain timeout (seconds).
    pub drains: Vec<(PodLabels, f64, f64)>,
}

const PHASES: [WorkloadPhase; 7] = [
    WorkloadPhase::Progressing,
    WorkloadPhase::Completed,
    WorkloadPhase::Paused,
    WorkloadPhase::Failed,
    WorkloadPhase::Blocked,
    WorkloadPhase::Invalid,
    WorkloadPhase::NoPolicy,
];

fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The gauges for `recorded` workloads (key, governing policy, phase), reading each one's
/// status annotation and pods through `status_of` and `pods_of`, and a policy's drain timeout
/// through `drain_timeout`.
pub fn rollout_gauges(
    recorded: &[(WorkloadKey, String, WorkloadPhase)],
    status_of: impl Fn(&WorkloadKey) -> Option<String>,
    pods_of: impl Fn(&WorkloadKey) -> Vec<Pod>,
    drain_timeout: impl Fn(&str) -> Option<i64>,
) -> RolloutGauges {
    let mut out = RolloutGauges {
        workloads: PHASES.iter().map(|p| (p.as_str(), 0)).collect(),
        ..Default::default()
    };
    for (key, policy, phase) in recorded {
        *out.workloads.entry(phase.as_str()).or_default() += 1;
        let labels = WorkloadLabels {
            namespace: key.namespace.clone(),
            workload: format!("{}/{}", key.kind.as_str(), key.name),
            policy: policy.clone(),
        };
        if *phase == WorkloadPhase::Completed {
            continue;
        }
        out.not_completed.push(WorkloadPhaseLabels {
            namespace: labels.namespace.clone(),
            workload: labels.workload.clone(),
            policy: labels.policy.clone(),
            phase: phase.as_str(),
        });
        let pods = pods_of(key);
        let mut moved = status_of(key)
            .and_then(|s| WorkloadStatus::parse(&s))
            .and_then(|s| s.last_transition_time);
        for pod in &pods {
            let gate = gate_condition(pod);
            let state = PodUpgradeState::from_pod(pod).ok().flatten();
            let recorded_at = state
                .as_ref()
                .map(|s| s.finished_at.map_or(s.patched_at, |f| f.max(s.patched_at)));
            moved = moved
                .max(gate.as_ref().and_then(|g| g.since))
                .max(recorded_at);
            let Some(since) = gate
                .filter(|g| !g.ready && g.reason == Some(DRAINING_REASON))
                .and_then(|g| g.since)
            else {
                continue;
            };
            // Drained and nothing recorded since: waiting for the patch.
            if recorded_at.is_some_and(|r| r >= since) {
                continue;
            }
            if let Some(timeout) = drain_timeout(policy) {
                let pod_labels = PodLabels {
                    namespace: labels.namespace.clone(),
                    pod: pod.name_any(),
                    workload: labels.workload.clone(),
                    policy: labels.policy.clone(),
                };
                out.drains
                    .push((pod_labels, seconds(since), timeout as f64));
            }
        }
        if *phase == WorkloadPhase::Progressing
            && let Some(moved) = moved
        {
            out.progress.push((labels, seconds(moved)));
        }
    }
    out.not_completed.sort();
    out.progress.sort_by(|a, b| a.0.cmp(&b.0));
    out.drains.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Collector for RolloutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let policies = self.cache.policies();
        let gauges = rollout_gauges(
            &self.report.snapshot(),
            |key| self.cache.workload_annotation(key, STATUS_ANNOTATION),
            |key| self.cache.pods_of(key),
            |name| {
                policies
                    .iter()
                    .find(|p| p.name_any() == name)
                    .map(|p| p.spec.drain.timeout_seconds)
            },
        );
        let workloads = Family::<PhaseLabels, Gauge>::default();
        for (phase, n) in &gauges.workloads {
            workloads.get_or_create(&PhaseLabels { phase }).set(*n);
        }
        let phases = Family::<WorkloadPhaseLabels, Gauge>::default();
        for labels in &gauges.not_completed {
            phases.get_or_create(labels).set(1);
        }
        let progress = Family::<WorkloadLabels, Gauge<f64, AtomicU64>>::default();
        for (labels, at) in &gauges.progress {
            progress.get_or_create(labels).set(*at);
        }
        let drain_started = Family::<PodLabels, Gauge<f64, AtomicU64>>::default();
        let drain_timeout = Family::<PodLabels, Gauge<f64, AtomicU64>>::default();
        for (labels, since, timeout) in &gauges.drains {
            drain_started.get_or_create(labels).set(*since);
            drain_timeout.get_or_create(labels).set(*timeout);
        }
        fn put(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            metric: &impl EncodeMetric,
        ) -> std::fmt::Result {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        }
        put(
            &mut encoder,
            "workloads",
            "Governed workloads with a target, by phase (on the leader)",
            &workloads,
        )?;
        put(
            &mut encoder,
            "workload_phase",
            "1 for each governed workload with a target that is not Completed, with its phase",
            &phases,
        )?;
        put(
            &mut encoder,
            "workload_progress_timestamp_seconds",
            "When a Progressing workload last moved: its phase changed or one of its pods was drained, patched, finished or undrained",
            &progress,
        )?;
        put(
            &mut encoder,
            "pod_drain_started_timestamp_seconds",
            "When our readiness gate drained a pod that has not been patched since",
            &drain_started,
        )?;
        put(
            &mut encoder,
            "pod_drain_timeout_seconds",
            "drain.timeoutSeconds of the policy governing a drained, not yet patched pod",
            &drain_timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::STATE_ANNOTATION;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey::test_deployment(name)
    }

    /// A pod with our gate condition `(status, reason, lastTransitionTime)` and, if given, a
    /// state record `(phase, patchedAt, finishedAt)`.
    fn pod(
        name: &str,
        gate: Option<(&str, &str, &str)>,
        state: Option<(&str, &str, Option<&str>)>,
    ) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some((phase, patched, finished)) = state {
            let mut record =
                json!({"version": 1, "phase": phase, "patchedAt": patched, "containers": []});
            if let Some(f) = finished {
                record["finishedAt"] = json!(f);
            }
            annotations.insert(STATE_ANNOTATION.into(), json!(record.to_string()));
        }
        let conditions: Vec<_> = gate
            .map(|(status, reason, at)| {
                json!({"type": crate::READINESS_GATE, "status": status, "reason": reason, "lastTransitionTime": at})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "status": {"conditions": conditions},
        }))
        .expect("pod literal")
    }

    fn at(s: &str) -> f64 {
        seconds(s.parse().expect("timestamp literal"))
    }

    #[test]
    fn rollout_gauges_count_phases_and_show_drains_waiting_for_their_patch() {
        let recorded = vec![
            (
                key("web"),
                "sidecars".to_string(),
                WorkloadPhase::Progressing,
            ),
            (
                key("done"),
                "sidecars".to_string(),
                WorkloadPhase::Completed,
            ),
            (key("bad"), "sidecars".to_string(), WorkloadPhase::Failed),
        ];
        let status = |k: &WorkloadKey| {
            (k.name == "web").then(|| {
                json!({"phase": "Progressing", "lastTransitionTime": "2026-01-01T00:00:00Z"})
                    .to_string()
            })
        };
        let pods = |k: &WorkloadKey| match k.name.as_str() {
            "web" => vec![
                // Drained at 00:05, nothing recorded since: waiting for its patch.
                pod(
                    "web-a",
                    Some(("False", "Draining", "2026-01-01T00:05:00Z")),
                    None,
                ),
                // Drained, then patched at 00:03:10: waiting for Ready, not for the patch.
                pod(
                    "web-b",
                    Some(("False", "Draining", "2026-01-01T00:03:00Z")),
                    Some(("Patched", "2026-01-01T00:03:10Z", None)),
                ),
                // Upgraded earlier, drained again for a newer target at 00:04.
                pod(
                    "web-c",
                    Some(("False", "Draining", "2026-01-01T00:04:00Z")),
                    Some((
                        "Succeeded",
                        "2026-01-01T00:01:00Z",
                        Some("2026-01-01T00:02:00Z"),
                    )),
                ),
                // Serving, no gate news.
                pod(
                    "web-d",
                    Some(("True", "Serving", "2025-12-31T00:00:00Z")),
                    None,
                ),
                // No gate at all (created before the webhook).
                pod("web-e", None, None),
            ],
            // Failed with onFailure Pause: drained, patched, finished. Not waiting for a patch.
            "bad" => vec![pod(
                "bad-a",
                Some(("False", "Draining", "2026-01-01T00:00:00Z")),
                Some((
                    "Failed",
                    "2026-01-01T00:00:05Z",
                    Some("2026-01-01T00:05:05Z"),
                )),
            )],
            _ => vec![],
        };
        let gauges = rollout_gauges(&recorded, status, pods, |p| {
            (p == "sidecars").then_some(120)
        });

        assert_eq!(gauges.workloads["Progressing"], 1);
        assert_eq!(gauges.workloads["Completed"], 1);
        assert_eq!(gauges.workloads["Failed"], 1);
        assert_eq!(gauges.workloads["Paused"], 0, "every phase is exported");
        assert_eq!(gauges.workloads.len(), 7);
        let not_completed: Vec<_> = gauges
            .not_completed
            .iter()
            .map(|l| (l.workload.as_str(), l.phase))
            .collect();
        assert_eq!(
            not_completed,
            [
                ("Deployment/bad", "Failed"),
                ("Deployment/web", "Progressing")
            ]
        );
        // The latest move of `web`: web-a's drain at 00:05.
        assert_eq!(gauges.progress.len(), 1);
        assert_eq!(gauges.progress[0].0.workload, "Deployment/web");
        assert_eq!(gauges.progress[0].1, at("2026-01-01T00:05:00Z"));
        let drains: Vec<_> = gauges
            .drains
            .iter()
            .map(|(l, since, timeout)| (l.pod.as_str(), *since, *timeout))
            .collect();
        assert_eq!(
            drains,
            [
                ("web-a", at("2026-01-01T00:05:00Z"), 120.0),
                ("web-c", at("2026-01-01T00:04:00Z"), 120.0),
            ]
        );
    }

    #[test]
    fn a_progressing_workload_moves_with_its_status_when_no_pod_has_moved() {
        let recorded = vec![(key("web"), "p".to_string(), WorkloadPhase::Progressing)];
        let gauges = rollout_gauges(
            &recorded,
            |_| {
                Some(
                    json!({"phase": "Progressing", "lastTransitionTime": "2026-02-01T00:00:00Z"})
                        .to_string(),
                )
            },
            |_| {
                vec![pod(
                    "web-a",
                    Some(("True", "Serving", "2026-01-01T00:00:00Z")),
                    None,
                )]
            },
            |_| None,
        );
        assert_eq!(gauges.progress[0].1, at("2026-02-01T00:00:00Z"));
        assert!(gauges.drains.is_empty());
    }

    #[test]
    fn with_nothing_recorded_every_phase_counts_zero() {
        let gauges = rollout_gauges(&[], |_| None, |_| vec![], |_| None);
        assert!(gauges.workloads.values().all(|n| *n == 0));
        assert!(gauges.not_completed.is_empty() && gauges.progress.is_empty());
    }
}
