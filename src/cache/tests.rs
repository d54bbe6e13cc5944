//! The cache fed by hand, as its watches feed it: what readers see, and what each change
//! triggers.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::workload::deployment_settled;

fn obj<K: DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("object literal")
}

/// A controller cache whose triggers are recorded.
fn cache() -> (Cache, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let cache = Cache::triggering(Role::Controller, move |k| {
        s.lock().unwrap().push(k.to_string())
    });
    (cache, seen)
}

fn triggered(seen: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

fn template(app: &str, image: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": image, "env": [{"name": "X", "value": "1"}]}]}})
}

fn deployment(name: &str, generation: i64, image: &str) -> Deployment {
    obj(
        json!({"metadata": {"name": name, "namespace": "ns", "uid": "d-uid", "generation": generation,
            "resourceVersion": format!("{generation}"),
            "labels": {"app": name},
            "annotations": {"inplace-upgrade": "app=nginx:2", "deployment.kubernetes.io/revision": "1"},
            "managedFields": [{"manager": "m"}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template(name, image)},
        "status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}}),
    )
}

fn replica_set(name: &str, owner: Option<&str>, replicas: i32, image: &str) -> ReplicaSet {
    let mut t = template("web", image);
    t["metadata"]["labels"]["pod-template-hash"] = json!(name);
    let mut rs = json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": "1",
            "labels": {"app": "web"}, "annotations": {"inplace-upgrade": "app=nginx:2"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": t},
        "status": {"replicas": replicas, "observedGeneration": 1}});
    if let Some(o) = owner {
        rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment",
            "name": o, "uid": "d-uid", "controller": true}]);
    }
    obj(rs)
}

fn pod(name: &str, owner_kind: &str, owner: &str) -> Pod {
    obj(
        json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": "1",
            "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner,
                "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}),
    )
}

fn slice(name: &str, pods: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(p, ready)| {
            json!({"addresses": ["10.0.0.1"], "conditions": {"ready": ready, "serving": ready},
            "targetRef": {"kind": "Pod", "name": p, "namespace": "ns"}})
        })
        .collect();
    obj(
        json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
        "addressType": "IPv4", "endpoints": endpoints}),
    )
}

fn key(kind: WorkloadKind, name: &str) -> WorkloadKey {
    WorkloadKey {
        kind,
        namespace: "ns".into(),
        name: name.into(),
    }
}

#[test]
fn a_deployment_reads_like_the_full_objects() {
    let (cache, _) = cache();
    let d = deployment("web", 3, "nginx:1");
    let current = replica_set("web-1", Some("web"), 2, "nginx:1");
    let old = replica_set("web-0", Some("web"), 0, "nginx:0");
    for rs in [&current, &old] {
        cache.feed(Event::Apply(rs.clone())).unwrap();
    }
    cache.feed(Event::Apply(d.clone())).unwrap();
    let view = cache
        .workload(&key(WorkloadKind::Deployment, "web"))
        .expect("cached");
    let mut expected = WorkloadView::from_deployment(&d);
    expected
        .annotations
        .remove("deployment.kubernetes.io/revision");
    expected.settled = deployment_settled(&d, &[&current, &old]);
    assert!(expected.settled);
    assert_eq!(format!("{view:?}"), format!("{expected:?}"));
    // The old ReplicaSet still has a pod: the Deployment's own rollout is not done.
    let old_with_pod = replica_set("web-0", Some("web"), 1, "nginx:0");
    cache.feed(Event::Apply(old_with_pod.clone())).unwrap();
    let view = cache
        .workload(&key(WorkloadKind::Deployment, "web"))
        .expect("cached");
    assert_eq!(
        view.settled,
        deployment_settled(&d, &[&current, &old_with_pod])
    );
    assert!(!view.settled);
    // Its ReplicaSets are not workloads of their own; a ReplicaSet of its own is.
    cache
        .feed(Event::Apply(replica_set("solo", None, 1, "nginx:1")))
        .unwrap();
    assert_eq!(
        cache.workloads_in(Some("ns")),
        [
            key(WorkloadKind::Deployment, "web"),
            key(WorkloadKind::ReplicaSet, "solo")
        ]
    );
    assert!(
        cache
            .workload(&key(WorkloadKind::ReplicaSet, "web-1"))
            .is_none()
    );
    assert_eq!(
        cache.workload_annotation(&key(WorkloadKind::Deployment, "web"), "inplace-upgrade"),
        Some("app=nginx:2".into())
    );
    let rs = cache.replica_set("ns", "web-1").expect("cached");
    assert_eq!(
        rs.metadata.owner_references,
        current.metadata.owner_references
    );
}

#[test]
fn stateful_and_daemon_sets_read_like_the_full_objects() {
    let (cache, _) = cache();
    let ss: StatefulSet = obj(
        json!({"metadata": {"name": "db", "namespace": "ns", "generation": 2},
        "spec": {"replicas": 3, "selector": {}, "serviceName": "db", "template": template("db", "pg:1")},
        "status": {"replicas": 3, "observedGeneration": 2, "currentRevision": "a", "updateRevision": "b",
            "updatedReplicas": 1}}),
    );
    let ds: DaemonSet = obj(
        json!({"metadata": {"name": "agent", "namespace": "ns", "generation": 1},
        "spec": {"selector": {}, "template": template("agent", "a:1")},
        "status": {"currentNumberScheduled": 2, "desiredNumberScheduled": 2, "numberMisscheduled": 0,
            "numberReady": 2, "updatedNumberScheduled": 2, "observedGeneration": 1}}),
    );
    cache.feed(Event::Apply(ss.clone())).unwrap();
    cache.feed(Event::Apply(ds.clone())).unwrap();
    let view = |kind, name| format!("{:?}", cache.workload(&key(kind, name)).expect("cached"));
    assert_eq!(
        view(WorkloadKind::StatefulSet, "db"),
        format!("{:?}", WorkloadView::from_stateful_set(&ss))
    );
    assert_eq!(
        view(WorkloadKind::DaemonSet, "agent"),
        format!("{:?}", WorkloadView::from_daemon_set(&ds))
    );
}

#[test]
fn pods_are_found_through_their_owners_and_trigger_their_workload() {
    let (cache, seen) = cache();
    cache
        .feed(Event::Apply(replica_set(
            "web-1",
            Some("web"),
            2,
            "nginx:1",
        )))
        .unwrap();
    cache
        .feed(Event::Apply(replica_set(
            "web-0",
            Some("web"),
            1,
            "nginx:0",
        )))
        .unwrap();
    cache
        .feed(Event::Apply(deployment("web", 1, "nginx:1")))
        .unwrap();
    triggered(&seen);
    for (name, rs) in [
        ("web-1-b", "web-1"),
        ("web-1-a", "web-1"),
        ("web-0-a", "web-0"),
    ] {
        cache
            .feed(Event::Apply(pod(name, "ReplicaSet", rs)))
            .unwrap();
    }
    cache
        .feed(Event::Apply(pod("db-0", "StatefulSet", "db")))
        .unwrap();
    assert_eq!(
        triggered(&seen),
        [
            "Deployment/ns/web",
            "Deployment/ns/web",
            "Deployment/ns/web",
            "StatefulSet/ns/db"
        ]
    );
    let names = |pods: Vec<Pod>| pods.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    use kube::ResourceExt;
    assert_eq!(
        names(cache.pods_of(&key(WorkloadKind::Deployment, "web"))),
        ["web-0-a", "web-1-a", "web-1-b"]
    );
    assert_eq!(
        names(cache.pods_of(&key(WorkloadKind::StatefulSet, "db"))),
        ["db-0"]
    );
    cache
        .feed(Event::Delete(pod("web-1-a", "ReplicaSet", "web-1")))
        .unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web"]);
    assert_eq!(
        names(cache.pods_of(&key(WorkloadKind::Deployment, "web"))),
        ["web-0-a", "web-1-b"]
    );
}

/// What the controller's Events watch asks of the pod cache: whether a pod (by UID) has an
/// upgrade or rollback in flight, and which workload to queue for it.
#[test]
fn a_pod_is_in_flight_while_its_state_record_says_so() {
    let (cache, _) = cache();
    cache
        .feed(Event::Apply(replica_set(
            "web-1",
            Some("web"),
            1,
            "nginx:1",
        )))
        .unwrap();
    let with_state = |phase: Option<&str>| {
        let mut p = pod("web-1-a", "ReplicaSet", "web-1");
        p.metadata.uid = Some("pod-uid".into());
        if let Some(phase) = phase {
            p.metadata.annotations = Some(
                [(
                    crate::STATE_ANNOTATION.to_string(),
                    json!({"version": 1, "phase": phase, "patchedAt": "2026-01-01T00:00:00Z",
                        "containers": []})
                    .to_string(),
                )]
                .into(),
            );
        }
        p
    };
    let in_flight = |uid: &str| cache.pod_in_flight("ns", "web-1-a", uid);
    cache.feed(Event::Apply(with_state(None))).unwrap();
    assert!(!in_flight("pod-uid"), "no record");
    cache
        .feed(Event::Apply(with_state(Some("Patched"))))
        .unwrap();
    assert!(in_flight("pod-uid"));
    assert!(
        !in_flight("another-uid"),
        "a pod of the same name, recreated"
    );
    assert!(
        !cache.pod_in_flight("ns", "web-1-b", "pod-uid"),
        "not cached"
    );
    assert_eq!(
        cache.workload_of_pod_named("ns", "web-1-a"),
        Some(key(WorkloadKind::Deployment, "web"))
    );
    assert_eq!(cache.workload_of_pod_named("ns", "web-1-b"), None);
    cache
        .feed(Event::Apply(with_state(Some("Succeeded"))))
        .unwrap();
    assert!(!in_flight("pod-uid"), "finished");
}

#[test]
fn slices_drain_and_trigger_only_the_pods_whose_serving_changed() {
    let (cache, seen) = cache();
    cache
        .feed(Event::Apply(replica_set(
            "web-1",
            Some("web"),
            2,
            "nginx:1",
        )))
        .unwrap();
    cache
        .feed(Event::Apply(pod("a", "ReplicaSet", "web-1")))
        .unwrap();
    cache
        .feed(Event::Apply(pod("b", "ReplicaSet", "web-1")))
        .unwrap();
    cache
        .feed(Event::Apply(pod("c", "StatefulSet", "db")))
        .unwrap();
    triggered(&seen);
    cache
        .feed(Event::Apply(slice(
            "s",
            &[("a", true), ("b", true), ("c", true)],
        )))
        .unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web", "StatefulSet/ns/db"]);
    // b is drained: only its workload moves on.
    cache
        .feed(Event::Apply(slice(
            "s",
            &[("a", true), ("b", false), ("c", true)],
        )))
        .unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web"]);
    let pods = [
        pod("a", "ReplicaSet", "web-1"),
        pod("b", "ReplicaSet", "web-1"),
    ];
    let none = BTreeMap::new();
    assert_eq!(
        cache.endpoints_drained("ns", &pods, &none),
        BTreeSet::from(["b".to_string()])
    );
    // What a drain of b records: the slices listing it, in any condition, as the reference
    // over the whole slice has it.
    let listed = slice("s", &[("a", true), ("b", false), ("c", true)]);
    assert_eq!(
        cache.slices_listing("ns", "b"),
        crate::plan::inputs::slices_listing([&listed].into_iter(), "b")
    );
    assert_eq!(
        cache.slices_listing("ns", "b"),
        BTreeMap::from([("s".to_string(), "1".to_string())])
    );
    assert!(cache.slices_listing("ns", "z").is_empty());
    // Drained while the cache had that version: it is no evidence of the drain.
    let drains = BTreeMap::from([(
        "b".to_string(),
        DrainRecord {
            uid: None,
            condition_time: "2026-01-01T00:00:00Z".parse().expect("time"),
            drained_at: "2026-01-01T00:00:00.1Z".parse().expect("time"),
            slices: cache.slices_listing("ns", "b"),
        },
    )]);
    assert!(cache.endpoints_drained("ns", &pods, &drains).is_empty());
    // A later version of the slice saying the same is.
    let mut later = listed.clone();
    later.metadata.resource_version = Some("2".into());
    cache.feed(Event::Apply(later)).unwrap();
    assert_eq!(
        cache.endpoints_drained("ns", &pods, &drains),
        BTreeSet::from(["b".to_string()])
    );
    cache.feed(Event::Delete(slice("s", &[]))).unwrap();
    assert_eq!(
        cache.endpoints_drained("ns", &pods, &none),
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );
}

#[test]
fn namespaces_budgets_and_policies_trigger_the_workloads_they_concern() {
    let (cache, seen) = cache();
    for ns in ["ns", "other"] {
        let namespace: Namespace = obj(json!({"metadata": {"name": ns, "labels": {"team": ns}}}));
        cache.feed(Event::Apply(namespace)).unwrap();
    }
    cache
        .feed(Event::Apply(deployment("web", 1, "nginx:1")))
        .unwrap();
    triggered(&seen);
    let pdb: PodDisruptionBudget = obj(json!({"metadata": {"name": "p", "namespace": "ns"},
        "spec": {"selector": {}}}));
    cache.feed(Event::Apply(pdb)).unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web"]);
    assert_eq!(cache.pdbs_in("ns").len(), 1);
    let policy = |generation: i64, team: &str| -> InPlaceUpgradePolicy {
        obj(
            json!({"apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": "sidecars", "uid": "p1", "generation": generation},
            "spec": {"namespaceSelector": {"matchLabels": {"team": team}}}}),
        )
    };
    cache.feed(Event::Apply(policy(1, "other"))).unwrap();
    assert!(
        triggered(&seen).is_empty(),
        "selects no namespace with workloads"
    );
    // A status write (same generation) concerns nobody; a new selector concerns its namespaces.
    cache.feed(Event::Apply(policy(1, "other"))).unwrap();
    assert!(triggered(&seen).is_empty());
    cache.feed(Event::Apply(policy(2, "ns"))).unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web"]);
    assert_eq!(cache.policies().len(), 1);
    let namespace: Namespace =
        obj(json!({"metadata": {"name": "ns", "annotations": {"inplace-upgrade": "app=x:1"}}}));
    cache.feed(Event::Apply(namespace)).unwrap();
    assert_eq!(triggered(&seen), ["Deployment/ns/web"]);
    assert!(cache.namespace("ns").is_some());
}

/// The cache is synced once every kind of its role has listed, and not before.
#[test]
fn synced_once_every_watch_of_the_role_listed() {
    let cache = Cache::new(Role::Webhook);
    assert!(!cache.is_synced());
    cache.feed(Event::<Namespace>::InitDone).unwrap();
    cache.feed(Event::<Deployment>::InitDone).unwrap();
    cache.feed(Event::<StatefulSet>::InitDone).unwrap();
    cache.feed(Event::<DaemonSet>::InitDone).unwrap();
    cache.feed(Event::<ReplicaSet>::InitDone).unwrap();
    assert!(!cache.is_synced(), "policies not listed yet");
    cache.feed(Event::<InPlaceUpgradePolicy>::InitDone).unwrap();
    assert!(
        cache.is_synced(),
        "the webhook watches no pods, slices or budgets"
    );
}

/// The webhook caches what admission reads, never what grows with the pods.
#[test]
fn the_webhook_watches_no_pods_slices_or_budgets() {
    let webhook = Role::Webhook.kinds();
    for kind in [Kind::Pods, Kind::EndpointSlices, Kind::PodDisruptionBudgets] {
        assert!(!webhook.contains(&kind), "{kind:?}");
        assert!(Role::Controller.kinds().contains(&kind), "{kind:?}");
    }
    for kind in webhook {
        assert!(Role::Controller.kinds().contains(kind), "{kind:?}");
    }
}

#[test]
fn a_kind_the_cache_does_not_keep_is_refused() {
    let cache = Cache::new(Role::Controller);
    let lease: k8s_openapi::api::coordination::v1::Lease = obj(json!({"metadata": {"name": "l"}}));
    assert!(matches!(cache.feed(Event::Apply(lease)), Err(FeedError::Kind(k)) if k == "Lease"));
}
