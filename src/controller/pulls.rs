//! What the controller knows of the pre-pulls of a workload's target images
//! ([`crate::prepull`]): what the pre-pull pods say, and what they said before they were
//! deleted.
//!
//! A pre-pull pod is deleted as soon as its result is known, so that "pulled" is remembered
//! here for the rest of the rollout: the next pods on the same node start without another
//! pull. Memory only: a controller that restarts asks again, and kubelet answers at once
//! ("already present on machine"). A pre-pull pod that could not be created at all (refused
//! by RBAC or Pod Security) has no pod to say so: that failure is handed to the next plan
//! once, which records it in the workload's status like any failed target.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

use crate::prepull::{PullKey, PullState, Pulls, pull_key, pull_state};
use crate::workload::WorkloadKey;

#[derive(Default)]
pub struct KnownPulls {
    by_workload: Mutex<HashMap<WorkloadKey, Pulls>>,
}

/// A pre-pull pod as the reconcile sees it.
pub struct SeenPrePull {
    pub name: String,
    pub key: PullKey,
    pub state: PullState,
    pub terminating: bool,
}

impl KnownPulls {
    /// The pulls known for `workload`: its pre-pull pods' results (those that say "pulled" are
    /// remembered), the remembered ones, and failed creates (handed over once). Also returns
    /// the pre-pull pods read.
    pub fn known(&self, workload: &WorkloadKey, pods: &[Pod]) -> (Pulls, Vec<SeenPrePull>) {
        let mut all = self.by_workload.lock().unwrap_or_else(|e| e.into_inner());
        let memory = all.entry(workload.clone()).or_default();
        let mut pulls = Pulls::new();
        let mut read = Vec::new();
        for pod in pods {
            let (Some(name), Some(key)) = (pod.metadata.name.clone(), pull_key(pod)) else {
                continue;
            };
            let state = pull_state(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            if state == PullState::Pulled {
                memory.insert(key.clone(), PullState::Pulled);
            }
            // A pod on its way out that had not pulled counts as none: a new one is asked for.
            if !(terminating && state == PullState::Pulling) {
                pulls.insert(key.clone(), state.clone());
            }
            read.push(SeenPrePull {
                name,
                key,
                state,
                terminating,
            });
        }
        memory.retain(|key, state| {
            let failed = matches!(state, PullState::Failed { .. } | PullState::Refused { .. });
            if failed || !pulls.contains_key(key) {
                pulls.insert(key.clone(), state.clone());
            }
            !failed
        });
        if memory.is_empty() {
            all.remove(workload);
        }
        (pulls, read)
    }

    /// Remembers a pull's result that no pod will tell (a create that was refused).
    pub fn remember(&self, workload: &WorkloadKey, key: PullKey, state: PullState) {
        self.by_workload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(workload.clone())
            .or_default()
            .insert(key, state);
    }

    /// Forgets a workload's pulls: its rollout ended, or it is gone.
    pub fn forget(&self, workload: &WorkloadKey) {
        self.by_workload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(workload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepull::{FOR_ANNOTATION, PULL_ANNOTATION};
    use crate::workload::WorkloadKind;
    use serde_json::json;

    fn workload() -> WorkloadKey {
        WorkloadKey {
            kind: WorkloadKind::Deployment,
            namespace: "ns".into(),
            name: "web".into(),
        }
    }

    fn key(node: &str) -> PullKey {
        PullKey {
            node: node.into(),
            image: "img:2".into(),
        }
    }

    fn pod(node: &str, state: serde_json::Value, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p-{node}"), "annotations": {
                FOR_ANNOTATION: "Deployment/web", PULL_ANNOTATION: format!("{node} img:2"),
            }},
            "status": {"containerStatuses": [{
                "name": crate::prepull::CONTAINER, "image": "img:2", "imageID": "",
                "ready": false, "restartCount": 0, "state": state,
            }]},
        }))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    #[test]
    fn pulled_is_remembered_after_the_pod_is_gone() {
        let known = KnownPulls::default();
        let pulled = pod(
            "a",
            json!({"terminated": {"exitCode": 128, "reason": "StartError"}}),
            false,
        );
        let pulling = pod(
            "b",
            json!({"waiting": {"reason": "ContainerCreating"}}),
            false,
        );
        let (pulls, read) = known.known(&workload(), &[pulled, pulling]);
        assert_eq!(pulls[&key("a")], PullState::Pulled);
        assert_eq!(pulls[&key("b")], PullState::Pulling);
        assert_eq!(read.len(), 2);
        let (pulls, _) = known.known(&workload(), &[]);
        assert_eq!(pulls.get(&key("a")), Some(&PullState::Pulled));
        assert_eq!(
            pulls.get(&key("b")),
            None,
            "a pull in flight is not remembered"
        );
        known.forget(&workload());
        assert!(known.known(&workload(), &[]).0.is_empty());
    }

    #[test]
    fn a_terminating_pod_that_had_not_pulled_counts_as_none() {
        let known = KnownPulls::default();
        let leaving = pod(
            "a",
            json!({"waiting": {"reason": "ContainerCreating"}}),
            true,
        );
        assert!(known.known(&workload(), &[leaving]).0.is_empty());
    }

    #[test]
    fn a_refused_create_is_handed_over_once() {
        let known = KnownPulls::default();
        let failed = PullState::Failed {
            reason: "Forbidden".into(),
            message: "pods is forbidden".into(),
        };
        known.remember(&workload(), key("a"), failed.clone());
        assert_eq!(
            known.known(&workload(), &[]).0.get(&key("a")),
            Some(&failed)
        );
        assert!(known.known(&workload(), &[]).0.is_empty());
    }
}
