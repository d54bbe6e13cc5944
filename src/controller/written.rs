//! Our own writes, remembered until the watch delivers them.
//!
//! The cache lags our writes: a reconcile started by some other event (a flapping pod, a
//! PodDisruptionBudget) can run before the watch has delivered the drain or patch we just
//! made, see that pod as untouched, and start another one — more pods unavailable than the
//! budget allows (OpenKruise's stale-cache failures, #2274/#2277). So every pod a write
//! returns is kept here, and a reconcile uses it instead of the cached pod while the cache is
//! older. One etcd orders every write, so resourceVersions of one object compare as numbers;
//! one that is not a number is never trusted over the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::plan::DrainRecord;
use crate::workload::WorkloadKey;

#[derive(Default)]
pub struct Written {
    pods: Mutex<HashMap<WorkloadKey, HashMap<String, Pod>>>,
    /// Status annotations we wrote: (the value the cache showed then, ours).
    statuses: Mutex<HashMap<WorkloadKey, (Option<String>, String)>>,
    /// Since when a progress-only status change has waited to be written.
    deferred: Mutex<HashMap<WorkloadKey, Instant>>,
    /// The drains made in this leadership term, timed to the microsecond (the API keeps the
    /// condition's time to the second), by pod name.
    drains: Mutex<HashMap<WorkloadKey, BTreeMap<String, DrainRecord>>>,
}

/// How long a progress-only status change (pods started or finished) may wait to be written
/// together with the next ones: the workload's status is at most this far behind its pods,
/// and a rollout writes it about once per this period instead of twice per pod. Phase changes,
/// failures and messages are written at once.
pub const PROGRESS_DEBOUNCE: Duration = Duration::from_secs(5);

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

impl Written {
    pub fn remember_drain(&self, workload: &WorkloadKey, pod: &str, record: DrainRecord) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains
            .entry(workload.clone())
            .or_default()
            .insert(pod.to_string(), record);
    }

    /// The drain records of a workload that still apply to its `pods` (freshest view); the
    /// others (undrained, patched, deleted pods) are forgotten.
    pub fn drains(&self, workload: &WorkloadKey, pods: &[Pod]) -> BTreeMap<String, DrainRecord> {
        let mut all = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        let Some(records) = all.get_mut(workload) else {
            return BTreeMap::new();
        };
        records.retain(|name, record| {
            pods.iter()
                .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && record.applies_to(p))
        });
        let kept = records.clone();
        if kept.is_empty() {
            all.remove(workload);
        }
        kept
    }

    /// Forgets the drain records of a workload (deleted), or of every workload: at the start
    /// of a leadership term, as another replica may have undrained a pod and drained it again
    /// within the same second meanwhile.
    pub fn forget_drains(&self, workload: Option<&WorkloadKey>) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        match workload {
            Some(w) => drop(drains.remove(w)),
            None => drains.clear(),
        }
    }
}

impl Written {
    pub fn remember_status(&self, workload: &WorkloadKey, replaced: Option<&str>, ours: &str) {
        let mut written = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        written.insert(
            workload.clone(),
            (replaced.map(str::to_string), ours.to_string()),
        );
    }

    /// The workload's status annotation, ours while the cache still shows the value our last
    /// write replaced (so a reconcile before the watch catches up does not write it again).
    /// Only the controller writes it, so any other cached value is newer than ours.
    pub fn freshest_status(&self, workload: &WorkloadKey, cached: Option<&str>) -> Option<String> {
        let mut written = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        match written.get(workload) {
            Some((replaced, ours)) if replaced.as_deref() == cached => Some(ours.clone()),
            Some(_) => {
                written.remove(workload);
                cached.map(str::to_string)
            }
            None => cached.map(str::to_string),
        }
    }

    /// Forgets our status write and any wait (the write failed, the status was cleared, or
    /// the workload is gone).
    pub fn forget_status(&self, workload: &WorkloadKey) {
        let mut written = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        written.remove(workload);
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        deferred.remove(workload);
    }

    /// For a status change that is progress only: `None` to write it now (it has waited
    /// [`PROGRESS_DEBOUNCE`]), or how much longer to wait. `urgent` changes (and writes that
    /// are no longer needed) end the wait.
    pub fn defer_progress(
        &self,
        workload: &WorkloadKey,
        urgent: bool,
        now: Instant,
    ) -> Option<Duration> {
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if urgent {
            deferred.remove(workload);
            return None;
        }
        let since = *deferred.entry(workload.clone()).or_insert(now);
        match PROGRESS_DEBOUNCE.checked_sub(now.saturating_duration_since(since)) {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                deferred.remove(workload);
                None
            }
        }
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
            kind: crate::workload::WorkloadKind::Deployment,
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

    fn drained(name: &str, uid: &str, reason: &str, since: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "status": {"conditions": [{"type": "inplace-upgrade.io/ready", "status": "False",
                "reason": reason, "lastTransitionTime": since}]},
        }))
        .expect("pod literal")
    }

    #[test]
    fn drain_records_last_while_their_drain_does() {
        let w = Written::default();
        let since = "2026-01-01T00:00:00Z";
        let record = |uid: &str| DrainRecord {
            uid: Some(uid.into()),
            condition_time: since.parse().expect("time"),
            drained_at: "2026-01-01T00:00:00.25Z".parse().expect("time"),
            slices: BTreeMap::new(),
        };
        w.remember_drain(&key(), "a", record("u1"));
        w.remember_drain(&key(), "b", record("u2"));
        w.remember_drain(&key(), "c", record("u3"));
        let pods = [
            drained("a", "u1", "Draining", since),
            // Undrained (and drained again in a later second) / replaced by a new pod.
            drained("b", "u2", "Draining", "2026-01-01T00:00:09Z"),
            drained("c", "u4", "Draining", since),
        ];
        let kept = w.drains(&key(), &pods);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(kept["a"], record("u1"));
        assert_eq!(w.drains(&key(), &pods[..1]).len(), 1, "still there");
        assert!(
            w.drains(&key(), &[]).is_empty(),
            "a deleted pod's record goes"
        );
        assert!(w.drains.lock().unwrap().is_empty());
        // A new term starts with none: another replica may have drained since.
        w.remember_drain(&key(), "a", record("u1"));
        w.forget_drains(None);
        assert!(w.drains(&key(), &pods).is_empty());
        w.remember_drain(&key(), "a", record("u1"));
        w.forget_drains(Some(&key()));
        assert!(
            w.drains(&key(), &pods).is_empty(),
            "the workload was deleted"
        );
    }

    #[test]
    fn our_status_write_counts_until_the_cache_shows_something_else() {
        let w = Written::default();
        assert_eq!(w.freshest_status(&key(), Some("a")).as_deref(), Some("a"));
        w.remember_status(&key(), Some("a"), "b");
        assert_eq!(w.freshest_status(&key(), Some("a")).as_deref(), Some("b"));
        assert_eq!(w.freshest_status(&key(), Some("b")).as_deref(), Some("b"));
        assert_eq!(
            w.freshest_status(&key(), Some("a")).as_deref(),
            Some("a"),
            "caught up once: the cache is trusted again"
        );
        w.remember_status(&key(), None, "c");
        assert_eq!(w.freshest_status(&key(), None).as_deref(), Some("c"));
        w.forget_status(&key());
        assert_eq!(w.freshest_status(&key(), None), None);
    }

    #[test]
    fn progress_waits_at_most_the_debounce_and_urgent_changes_never_wait() {
        let w = Written::default();
        let t0 = Instant::now();
        assert_eq!(w.defer_progress(&key(), false, t0), Some(PROGRESS_DEBOUNCE));
        let half = PROGRESS_DEBOUNCE / 2;
        assert_eq!(
            w.defer_progress(&key(), false, t0 + half),
            Some(PROGRESS_DEBOUNCE - half)
        );
        assert_eq!(
            w.defer_progress(&key(), false, t0 + PROGRESS_DEBOUNCE),
            None
        );
        // The wait starts again for the next change; an urgent one ends it.
        assert!(
            w.defer_progress(&key(), false, t0 + PROGRESS_DEBOUNCE)
                .is_some()
        );
        assert_eq!(w.defer_progress(&key(), true, t0 + PROGRESS_DEBOUNCE), None);
        assert!(w.deferred.lock().unwrap().is_empty());
    }
}
