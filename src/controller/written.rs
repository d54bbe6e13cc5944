//! Our own writes, remembered until the watch delivers them.
//!
//! The cache lags our writes: a reconcile started by some other event (a flapping pod, a
//! PodDisruptionBudget) can run before the watch has delivered the drain or patch we just
//! made, see that pod as untouched, and start another one — more pods unavailable than the
//! budget allows (OpenKruise's stale-cache failures, #2274/#2277). So every pod a write
//! returns is kept here, and a reconcile uses it instead of the cached pod while the cache is
//! older. One etcd orders every write, so resourceVersions of one object compare as numbers;
//! one that is not a number is never trusted over the cache.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::workload::WorkloadKey;

#[derive(Default)]
pub struct Written {
    pods: Mutex<HashMap<WorkloadKey, HashMap<String, Pod>>>,
}

fn version(pod: &Pod) -> Option<u64> {
    pod.resource_version()?.parse().ok()
}

impl Written {
    pub fn remember(&self, workload: &WorkloadKey, pod: &Pod) {
        let mut written = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        written
            .entry(workload.clone())
            .or_default()
            .insert(pod.name_any(), pod.clone());
    }

    /// The freshest view of a workload's cached pods: our write's result where the cache has
    /// not caught up with it yet. Entries the cache has caught up with, and entries of pods
    /// no longer cached (deleted), are dropped.
    pub fn freshest(&self, workload: &WorkloadKey, cached: Vec<Pod>) -> Vec<Pod> {
        let mut all = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let Some(written) = all.get_mut(workload) else {
            return cached;
        };
        let mut kept = HashMap::new();
        let pods = cached
            .into_iter()
            .map(|pod| match written.remove(&pod.name_any()) {
                Some(ours) => match (version(&ours), version(&pod)) {
                    (Some(w), Some(c)) if w > c && ours.uid() == pod.uid() => {
                        kept.insert(pod.name_any(), ours.clone());
                        ours
                    }
                    _ => pod,
                },
                None => pod,
            })
            .collect();
        if kept.is_empty() {
            all.remove(workload);
        } else {
            *written = kept;
        }
        pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, rv: &str, gate: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv},
            "status": {"conditions": [{"type": "inplace-upgrade.io/ready", "status": gate}]},
        }))
        .expect("pod literal")
    }

    fn gate(p: &Pod) -> String {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c[0].status.clone())
            .unwrap_or_default()
    }

    fn key() -> WorkloadKey {
        WorkloadKey {
            kind: crate::controller::WorkloadKind::Deployment,
            namespace: "ns".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn our_write_wins_until_the_cache_catches_up() {
        let w = Written::default();
        w.remember(&key(), &pod("a", "u1", "120", "False"));
        // The cache still shows the pod before our drain.
        let seen = w.freshest(
            &key(),
            vec![pod("a", "u1", "100", "True"), pod("b", "u2", "90", "True")],
        );
        assert_eq!(gate(&seen[0]), "False", "our drain is not forgotten");
        assert_eq!(gate(&seen[1]), "True");
        let seen = w.freshest(&key(), vec![pod("a", "u1", "100", "True")]);
        assert_eq!(gate(&seen[0]), "False", "still not caught up");
        // The cache caught up (or moved past): the cache wins and the entry goes.
        let seen = w.freshest(&key(), vec![pod("a", "u1", "130", "True")]);
        assert_eq!(gate(&seen[0]), "True");
        assert!(w.pods.lock().unwrap().is_empty());
    }

    #[test]
    fn a_deleted_recreated_or_opaque_pod_never_takes_our_copy() {
        let w = Written::default();
        w.remember(&key(), &pod("a", "u1", "120", "False"));
        let seen = w.freshest(&key(), vec![pod("a", "u2", "100", "True")]);
        assert_eq!(gate(&seen[0]), "True", "same name, new pod");
        w.remember(&key(), &pod("a", "u1", "x", "False"));
        let seen = w.freshest(&key(), vec![pod("a", "u1", "100", "True")]);
        assert_eq!(gate(&seen[0]), "True", "not a number");
        w.remember(&key(), &pod("gone", "u3", "200", "False"));
        assert!(w.freshest(&key(), vec![]).is_empty());
        assert!(
            w.pods.lock().unwrap().is_empty(),
            "a deleted pod's entry goes"
        );
    }
}
