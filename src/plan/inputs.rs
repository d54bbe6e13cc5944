//! Pure assembly of planner inputs from what the API shows: the PodDisruptionBudgets that
//! select a workload's pods, and the pods no EndpointSlice serves any more. Shared by the
//! controller's reconcile and `kubectl inplace plan`, so a dry run sees what the controller sees.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

use crate::plan::{DisruptionBudget, DrainRecord};
use crate::policy::selector_matches;

/// The PodDisruptionBudgets (of the workload's namespace) that select any of its pods. A PDB
/// whose status the disruption controller has not computed yet allows nothing; an invalid
/// selector is taken to select (the safe reading).
pub fn disruption_budgets<'a>(
    pdbs: impl Iterator<Item = &'a PodDisruptionBudget>,
    pods: &[Pod],
) -> Vec<DisruptionBudget> {
    let empty = BTreeMap::new();
    pdbs.filter_map(|pdb| {
        let selector = pdb.spec.as_ref()?.selector.as_ref()?;
        let selected: BTreeSet<String> = pods
            .iter()
            .filter(|p| {
                selector_matches(selector, p.metadata.labels.as_ref().unwrap_or(&empty))
                    .unwrap_or(true)
            })
            .map(|p| p.name_any())
            .collect();
        (!selected.is_empty()).then(|| DisruptionBudget {
            name: pdb.name_any(),
            disruptions_allowed: pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed),
            pods: selected,
        })
    })
    .collect()
}

/// The pods that no EndpointSlice (of the workload's namespace) lists as ready or serving:
/// load balancers send them no new requests. Absent conditions read as true, as the
/// EndpointConditions API says. (A Service with `publishNotReadyAddresses` keeps its pods
/// ready there: their drain ends at the policy's drain timeout.)
///
/// For a pod we drained (`drains`), a version of a slice that we already had when we drained
/// it counts as listing it ready whatever it says: a "not ready" there predates the drain —
/// typically the version from before the pod first became Ready, still in a cache that lags
/// the EndpointSlice controller (or an EndpointSlice controller that lags the pod) — and is
/// no evidence that the drain reached the load balancers. Only a later version of that slice
/// is. (Without a record, after a restart, every version is later: the caches were listed
/// after the drain.)
pub fn endpoints_drained<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    pods: &[Pod],
    drains: &BTreeMap<String, DrainRecord>,
) -> BTreeSet<String> {
    let mut serving: BTreeSet<&str> = BTreeSet::new();
    let mut versions: BTreeMap<String, &str> = BTreeMap::new();
    for slice in slices {
        serving.extend(slice.endpoints.iter().filter_map(serving_pod));
        if let Some(version) = slice.metadata.resource_version.as_deref() {
            versions.insert(slice.name_any(), version);
        }
    }
    not_serving(pods, |name| {
        serving.contains(name)
            || unchanged_since_drain(drains.get(name), |slice| versions.get(slice).copied())
    })
}

/// Whether one of the slices that listed a drained pod when it was drained still has the
/// version it had then (`version_of` answers by slice name): that version, whatever it says,
/// predates the drain. (The same resourceVersion is the same content, which listed the pod.)
pub fn unchanged_since_drain<'v>(
    drain: Option<&DrainRecord>,
    version_of: impl Fn(&str) -> Option<&'v str>,
) -> bool {
    drain.is_some_and(|d| {
        d.slices
            .iter()
            .any(|(slice, version)| version_of(slice) == Some(version.as_str()))
    })
}

/// The pod an endpoint is, if it is one.
pub fn endpoint_pod(endpoint: &Endpoint) -> Option<&str> {
    endpoint
        .target_ref
        .as_ref()
        .filter(|t| t.kind.as_deref() == Some("Pod"))
        .and_then(|t| t.name.as_deref())
}

/// The pod an endpoint sends traffic to, if it lists one as ready or serving. Absent
/// conditions read as true, as the EndpointConditions API says.
pub fn serving_pod(endpoint: &Endpoint) -> Option<&str> {
    let name = endpoint_pod(endpoint)?;
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    (ready || c.and_then(|c| c.serving).unwrap_or(ready)).then_some(name)
}

/// The names of the pods no endpoint serves (`serving` answers by pod name).
pub fn not_serving(pods: &[Pod], serving: impl Fn(&str) -> bool) -> BTreeSet<String> {
    pods.iter()
        .map(|p| p.name_any())
        .filter(|n| !serving(n))
        .collect()
}

/// The EndpointSlices that list `pod` (name → resourceVersion), for its [`DrainRecord`], from
/// whole slices: the reference the cache's [`crate::cache::Cache::slices_listing`] is tested
/// against.
#[cfg(test)]
pub fn slices_listing<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    pod: &str,
) -> BTreeMap<String, String> {
    slices
        .filter(|s| {
            s.endpoints
                .iter()
                .filter_map(endpoint_pod)
                .any(|name| name == pod)
        })
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, app: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}}))
            .expect("pod")
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": endpoints}),
        )
        .expect("slice")
    }

    fn endpoint(pod: &str, conditions: serde_json::Value) -> serde_json::Value {
        json!({"addresses": ["10.244.0.1"], "targetRef": {"kind": "Pod", "name": pod}, "conditions": conditions})
    }

    #[test]
    fn a_pod_is_drained_when_no_slice_lists_it_ready_or_serving() {
        let pods = [
            pod("a", "x"),
            pod("b", "x"),
            pod("c", "x"),
            pod("d", "x"),
            pod("e", "x"),
        ];
        let slices = [
            slice(json!([endpoint(
                "a",
                json!({"ready": true, "serving": true})
            )])),
            slice(json!([
                endpoint("b", json!({"ready": false, "serving": false})),
                // Terminating but still serving: not drained yet.
                endpoint(
                    "c",
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                // No conditions: read as ready.
                endpoint("d", json!({})),
            ])),
        ];
        let drained = endpoints_drained(slices.iter(), &pods, &BTreeMap::new());
        // e is in no slice at all (no Service selects it): nothing to wait for.
        assert_eq!(drained, BTreeSet::from(["b".to_string(), "e".to_string()]));
    }

    #[test]
    fn a_pod_listed_twice_is_drained_only_when_every_slice_agrees() {
        let pods = [pod("a", "x")];
        let slices = [
            slice(json!([endpoint(
                "a",
                json!({"ready": false, "serving": false})
            )])),
            slice(json!([endpoint("a", json!({"ready": true}))])),
        ];
        assert!(endpoints_drained(slices.iter(), &pods, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_slice_version_from_before_the_drain_is_no_evidence_of_it() {
        let pods = [pod("a", "x"), pod("b", "x")];
        let at = |rv: &str, a: serde_json::Value| {
            let mut s = slice(json!([
                endpoint("a", a),
                endpoint("b", json!({"ready": true}))
            ]));
            s.metadata.resource_version = Some(rv.into());
            s
        };
        let not_ready = json!({"ready": false, "serving": false});
        // When we drained `a`, our cache still had the slice from before `a` was Ready.
        let stale = at("5", not_ready.clone());
        let record = DrainRecord {
            uid: None,
            condition_time: "2026-01-01T00:00:00Z".parse().expect("time"),
            drained_at: "2026-01-01T00:00:00.1Z".parse().expect("time"),
            slices: slices_listing([&stale].into_iter(), "a"),
        };
        assert_eq!(record.slices, BTreeMap::from([("s".into(), "5".into())]));
        let drains = BTreeMap::from([("a".to_string(), record)]);
        assert!(
            endpoints_drained([&stale].into_iter(), &pods, &drains).is_empty(),
            "that version cannot show the drain"
        );
        assert_eq!(
            endpoints_drained([&stale].into_iter(), &pods, &BTreeMap::new()),
            BTreeSet::from(["a".to_string()]),
            "without the record (a restart: caches listed after the drain) it counts"
        );
        // The EndpointSlice controller publishes `a` Ready (its drain not yet seen), then not.
        let ready = at("6", json!({"ready": true}));
        assert!(endpoints_drained([&ready].into_iter(), &pods, &drains).is_empty());
        let drained = at("7", not_ready);
        assert_eq!(
            endpoints_drained([&drained].into_iter(), &pods, &drains),
            BTreeSet::from(["a".to_string()])
        );
        // A slice that no longer lists `a` at all, in a later version: nothing sends it traffic.
        let mut without = slice(json!([endpoint("b", json!({"ready": true}))]));
        without.metadata.resource_version = Some("8".into());
        assert_eq!(
            endpoints_drained([&without].into_iter(), &pods, &drains),
            BTreeSet::from(["a".to_string()])
        );
    }

    fn pdb(name: &str, selector: serde_json::Value, allowed: Option<i32>) -> PodDisruptionBudget {
        let mut v = json!({"metadata": {"name": name}, "spec": {"selector": selector}});
        if let Some(a) = allowed {
            v["status"] = json!({"disruptionsAllowed": a, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1});
        }
        serde_json::from_value(v).expect("pdb")
    }

    #[test]
    fn budgets_list_the_pods_they_select_and_allow_nothing_before_their_status() {
        let pods = [pod("a", "x"), pod("b", "y")];
        let pdbs = [
            pdb("x-only", json!({"matchLabels": {"app": "x"}}), Some(1)),
            pdb("fresh", json!({"matchLabels": {"app": "y"}}), None),
            pdb("other", json!({"matchLabels": {"app": "z"}}), Some(5)),
            pdb("everything", json!({}), Some(2)),
        ];
        let budgets = disruption_budgets(pdbs.iter(), &pods);
        let summary: Vec<(&str, i32, Vec<&str>)> = budgets
            .iter()
            .map(|b| {
                (
                    b.name.as_str(),
                    b.disruptions_allowed,
                    b.pods.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("x-only", 1, vec!["a"]),
                ("fresh", 0, vec!["b"]),
                ("everything", 2, vec!["a", "b"])
            ]
        );
    }
}
