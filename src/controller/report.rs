//! The policies' status: what each one governs and what is rolling or failed under it.
//! Reconciles record their workload's phase here; one writer, only while leading, folds the
//! records into `InPlaceUpgradePolicy.status` (server-side apply of the status subresource),
//! debounced and only when something changed, so a busy rollout costs few writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::Notify;

use super::Context;
use crate::FIELD_MANAGER;
use crate::policy::{
    InPlaceUpgradePolicy, InPlaceUpgradePolicySpec, InPlaceUpgradePolicyStatus, selector_matches,
};
use crate::status::WorkloadPhase;
use crate::workload::WorkloadKey;

/// How long the writer waits after a change for more changes to fold into the same write.
const DEBOUNCE: Duration = Duration::from_millis(500);

pub struct PolicyReport {
    workloads: Mutex<HashMap<WorkloadKey, (String, WorkloadPhase)>>,
    changed: Notify,
    /// `inplace_upgrade_workloads_in_progress`, kept equal to the Progressing records.
    in_progress: Gauge,
}

impl PolicyReport {
    pub fn new(in_progress: Gauge) -> Self {
        PolicyReport {
            workloads: Mutex::default(),
            changed: Notify::new(),
            in_progress,
        }
    }

    /// Records the phase of a workload under its governing policy (`None`: under none).
    pub fn record(&self, key: &WorkloadKey, governed: Option<(&str, WorkloadPhase)>) {
        let mut workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        let before = workloads.get(key).cloned();
        match governed {
            Some((policy, phase)) => {
                workloads.insert(key.clone(), (policy.to_string(), phase));
            }
            None => {
                workloads.remove(key);
            }
        }
        if workloads.get(key) != before.as_ref() {
            let rolling = workloads
                .values()
                .filter(|(_, phase)| *phase == WorkloadPhase::Progressing)
                .count();
            self.in_progress
                .set(i64::try_from(rolling).unwrap_or(i64::MAX));
            self.changed.notify_one();
        }
    }

    /// Every recorded workload with its governing policy and phase.
    pub fn snapshot(&self) -> Vec<(WorkloadKey, String, WorkloadPhase)> {
        let workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        workloads
            .iter()
            .map(|(key, (policy, phase))| (key.clone(), policy.clone(), *phase))
            .collect()
    }

    /// The status each policy should show.
    fn statuses(
        &self,
        policies: &[InPlaceUpgradePolicy],
    ) -> BTreeMap<String, InPlaceUpgradePolicyStatus> {
        let workloads = self.workloads.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<String, InPlaceUpgradePolicyStatus> = policies
            .iter()
            .map(|p| {
                let status = InPlaceUpgradePolicyStatus {
                    observed_generation: p.metadata.generation,
                    matched_workloads: Some(0),
                    message: problem(&p.spec),
                    ..Default::default()
                };
                (p.name_any(), status)
            })
            .collect();
        let mut keys: Vec<_> = workloads.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, (policy, phase)) in keys {
            let Some(status) = out.get_mut(policy) else {
                continue;
            };
            *status.matched_workloads.get_or_insert(0) += 1;
            let name = format!("{}/{}/{}", key.namespace, key.kind.as_str(), key.name);
            match phase {
                WorkloadPhase::Progressing => status.rolling_workloads.push(name),
                WorkloadPhase::Failed => status.failed_workloads.push(name),
                _ => {}
            }
        }
        out
    }
}

/// Why a policy cannot be used as written, if so.
fn problem(spec: &InPlaceUpgradePolicySpec) -> Option<String> {
    let empty = BTreeMap::new();
    let selectors = std::iter::once(("namespaceSelector", Some(&spec.namespace_selector))).chain(
        std::iter::once(("workloadSelector", spec.workload_selector.as_ref())),
    );
    for (field, selector) in selectors {
        if let Some(Err(reason)) = selector.map(|s| selector_matches(s, &empty)) {
            return Some(format!("{field}: {reason}"));
        }
    }
    if let Err(e) = spec.image_allowlist() {
        return Some(e.to_string());
    }
    spec.max_unavailable_pods(1).err().map(|e| e.to_string())
}

/// Writes policy statuses while this replica leads (runs until dropped).
pub async fn write_policy_statuses(ctx: &Context) {
    let api: Api<InPlaceUpgradePolicy> = Api::all(ctx.client.clone());
    let mut written: BTreeMap<String, InPlaceUpgradePolicyStatus> = BTreeMap::new();
    loop {
        let policies = ctx.cache.policies();
        for (name, status) in ctx.report.statuses(&policies) {
            let current = policies
                .iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.status.as_ref());
            if current == Some(&status) || written.get(&name) == Some(&status) {
                continue;
            }
            let body = json!({
                "apiVersion": "inplace-upgrade.io/v1alpha1",
                "kind": "InPlaceUpgradePolicy",
                "status": status,
            });
            ctx.metrics.write("patch", "inplaceupgradepolicies/status");
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await
            {
                Ok(_) => {
                    written.insert(name, status);
                }
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "cannot write the policy status")
                }
            }
        }
        // Policies change rarely; their own watch events re-trigger the workloads, which
        // re-record and so notify.
        ctx.report.changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey::test_deployment(name)
    }

    fn policy(name: &str, spec: serde_json::Value) -> InPlaceUpgradePolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": name, "generation": 3}, "spec": spec,
        }))
        .expect("policy literal")
    }

    #[test]
    fn the_report_folds_workload_phases_into_policy_statuses_and_the_gauge() {
        let gauge = Gauge::default();
        let report = PolicyReport::new(gauge.clone());
        report.record(&key("a"), Some(("sidecars", WorkloadPhase::Progressing)));
        report.record(&key("b"), Some(("sidecars", WorkloadPhase::Progressing)));
        report.record(&key("c"), Some(("sidecars", WorkloadPhase::Failed)));
        assert_eq!(gauge.get(), 2);
        report.record(&key("b"), Some(("sidecars", WorkloadPhase::Completed)));
        report.record(&key("a"), None);
        assert_eq!(gauge.get(), 0);

        let policies = [
            policy("sidecars", serde_json::json!({"namespaceSelector": {}})),
            policy(
                "broken",
                serde_json::json!({"namespaceSelector": {}, "allowedImages": ["[unclosed"]}),
            ),
        ];
        let statuses = report.statuses(&policies);
        let sidecars = &statuses["sidecars"];
        assert_eq!(sidecars.matched_workloads, Some(2));
        assert!(sidecars.rolling_workloads.is_empty());
        assert_eq!(sidecars.failed_workloads, ["shop/Deployment/c"]);
        assert_eq!(sidecars.observed_generation, Some(3));
        assert_eq!(sidecars.message, None);
        let broken = &statuses["broken"];
        assert_eq!(broken.matched_workloads, Some(0));
        assert!(
            broken
                .message
                .as_deref()
                .is_some_and(|m| m.contains("[unclosed")),
            "{broken:?}"
        );
    }
}
