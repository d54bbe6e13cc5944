//! The reconciler against a mocked API server: the tier between the pure table tests and the
//! e2e suites. A reconcile runs on a [`Context`] whose caches are objects fed by hand and whose
//! client is kube's `Client::new` over a `tower_test` mock (the pattern of kube-rs' own tests
//! and controller-rs); the mock answers each request as the API server would (a JSON patch is
//! applied, and its `test` ops can fail; a `pods/status` strategic merge merges conditions by
//! type; every write gets a new resourceVersion) and logs it, and each test asserts the exact
//! sequence of requests one reconcile makes. Milliseconds, no control plane.
//!
//! The mock keeps the objects as the API server stores them; the caches lag until the test
//! delivers the watch events ([`Api::deliver`]), which is when the reconciler's own memory of
//! its writes (`written`) matters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::reconcile::{ReconcileError, reconcile_workload};
use super::{Context, ControllerView, Metrics, Queue, Settings};
use crate::kubectl::render::PlanReport;
use crate::plan::{DrainRecord, PodEvents};
use crate::policy::InPlaceUpgradePolicy;
use crate::state::{Phase, PodUpgradeState};
use crate::workload::{
    Owner, WorkloadKey, WorkloadKind, WorkloadView, controller_of, deployment_settled,
    owning_workload,
};
use crate::{READINESS_GATE, STATE_ANNOTATION, STATUS_ANNOTATION, TARGETS_ANNOTATION};

const NS: &str = "shop";

/// The reconciler's tests run one at a time: one of them reads what the reconciler logs, and
/// `tracing` caches per log site, process-wide, whether anyone listens.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const OLD: &str = "nginx:1";
const NEW: &str = "nginx:2";

/// The objects of namespace `shop`, by kind and name, as JSON.
#[derive(Clone, Default)]
struct Objects {
    pods: BTreeMap<String, Value>,
    deployments: BTreeMap<String, Value>,
    replica_sets: BTreeMap<String, Value>,
}

impl Objects {
    fn replica_sets(&self) -> Vec<ReplicaSet> {
        self.replica_sets.values().cloned().map(obj).collect()
    }

    /// Deployment `key` as the controller's cache shows it (`settled` from its ReplicaSets).
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        let d: Deployment = obj(self.deployments.get(&key.name)?.clone());
        if key.kind != WorkloadKind::Deployment || key.namespace != NS {
            return None;
        }
        let replica_sets = self.replica_sets();
        let own: Vec<&ReplicaSet> = replica_sets
            .iter()
            .filter(|rs| controller_of(rs.owner_references()).is_some_and(|o| o.name == key.name))
            .collect();
        let mut view = WorkloadView::from_deployment(&d);
        view.settled = deployment_settled(&d, &own);
        Some(view)
    }

    /// The pods of workload `key` (through their ReplicaSet).
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        let replica_sets = self.replica_sets();
        let owner_of = |name: &str| {
            replica_sets
                .iter()
                .find(|rs| rs.name_any() == name)
                .map(|rs| controller_of(rs.owner_references()).cloned())
        };
        self.pods
            .values()
            .map(|p| obj::<Pod>(p.clone()))
            .filter(|p| {
                owning_workload(NS, p.owner_references(), p.labels(), owner_of)
                    == Owner::Workload(key.clone())
            })
            .collect()
    }
}

/// What the API server stores, what the caches show, and every request made.
#[derive(Default)]
struct World {
    stored: Objects,
    cached: Objects,
    namespace: Option<Namespace>,
    policies: Vec<InPlaceUpgradePolicy>,
    /// The last resourceVersion handed out (one etcd orders every write).
    version: u64,
    log: Vec<Logged>,
    /// The reasons of the Events published, in arrival order (the reconciler publishes them
    /// in the background: they are not part of a reconcile's request sequence).
    events: Vec<String>,
}

/// One request the reconciler made.
#[derive(Debug, Clone)]
struct Logged {
    /// `VERB path (patch type)`, the path without the namespace prefix.
    line: String,
    body: Value,
}

impl World {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    /// Stores an object (a new resourceVersion), as a write or the kubelet would.
    fn store(&mut self, kind: &str, mut object: Value) {
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let name = object["metadata"]["name"]
            .as_str()
            .expect("named")
            .to_string();
        let map = match kind {
            "pods" => &mut self.stored.pods,
            "deployments" => &mut self.stored.deployments,
            _ => &mut self.stored.replica_sets,
        };
        map.insert(name, object);
    }

    /// Answers one request as the API server would.
    fn answer(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let rest = path
            .strip_prefix(&format!("/api/v1/namespaces/{NS}/"))
            .or_else(|| path.strip_prefix(&format!("/apis/apps/v1/namespaces/{NS}/")))
            .or_else(|| path.strip_prefix(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/")))
            .unwrap_or(path);
        let short = content_type
            .strip_prefix("application/")
            .map_or(content_type, |t| t.strip_suffix("+json").unwrap_or(t));
        let parts: Vec<&str> = rest.split('/').collect();
        if (method, parts.as_slice()) == ("POST", ["events"].as_slice()) {
            self.events
                .push(body["reason"].as_str().unwrap_or_default().to_string());
            return (201, body);
        }
        self.log.push(Logged {
            line: format!("{method} {rest} ({short})"),
            body: body.clone(),
        });
        match (method, parts.as_slice(), short) {
            ("PATCH", ["pods", name], "json-patch") => {
                let Some(mut pod) = self.stored.pods.get(*name).cloned() else {
                    return not_found(rest);
                };
                let patch: json_patch::Patch = serde_json::from_value(body).expect("a JSON patch");
                if let Err(e) = json_patch::patch(&mut pod, &patch) {
                    // The API server's answer to a failed `test` op.
                    return (
                        422,
                        status(
                            422,
                            "Invalid",
                            &format!("testing value failed: test failed ({e})"),
                        ),
                    );
                }
                self.store("pods", pod.clone());
                (200, self.stored.pods[*name].clone())
            }
            ("PATCH", ["pods", name, "status"], "strategic-merge-patch") => {
                let Some(mut pod) = self.stored.pods.get(*name).cloned() else {
                    return not_found(rest);
                };
                // `status.conditions` merge by type; annotations merge by key.
                for condition in body["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let conditions = pod["status"]["conditions"]
                        .as_array_mut()
                        .expect("conditions");
                    conditions.retain(|c| c["type"] != condition["type"]);
                    conditions.push(condition.clone());
                }
                if let Some(annotations) = body["metadata"]["annotations"].as_object() {
                    for (k, v) in annotations {
                        pod["metadata"]["annotations"][k] = v.clone();
                    }
                }
                self.store("pods", pod);
                (200, self.stored.pods[*name].clone())
            }
            ("PATCH", ["deployments", name], "merge-patch") => {
                let Some(mut deployment) = self.stored.deployments.get(*name).cloned() else {
                    return not_found(rest);
                };
                json_patch::merge(&mut deployment, &body);
                self.store("deployments", deployment);
                (200, self.stored.deployments[*name].clone())
            }
            _ => (
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    &format!("not mocked: {method} {rest}"),
                ),
            ),
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
        "reason": reason, "message": message})
}

fn not_found(what: &str) -> (u16, Value) {
    (404, status(404, "NotFound", &format!("{what} not found")))
}

/// The mocked API server and the caches, shared with the reconciler's [`Context`].
#[derive(Clone)]
struct Api(Arc<Mutex<World>>);

impl Api {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A namespace with `policy`, a settled Deployment `web` annotated with `targets`, its
    /// ReplicaSet, and `pods` (stored and cached alike).
    fn new(policy: Value, targets: &str, pods: Vec<Value>) -> Self {
        let api = Api::namespace(policy, json!({}));
        api.add_deployment("web", json!({TARGETS_ANNOTATION: targets}), pods);
        api
    }

    /// Namespace `shop` with `annotations`, and the InPlaceUpgradePolicy `mesh` (`policy`)
    /// that selects it.
    fn namespace(policy: Value, annotations: Value) -> Self {
        Api(Arc::new(Mutex::new(World {
            namespace: Some(obj(json!({"metadata": {"name": NS,
                "labels": {"kubernetes.io/metadata.name": NS}, "annotations": annotations}}))),
            policies: vec![obj(json!({"apiVersion": "inplace-upgrade.io/v1alpha1",
                "kind": "InPlaceUpgradePolicy", "metadata": {"name": "mesh"}, "spec": policy}))],
            ..World::default()
        })))
    }

    /// A settled Deployment `name` with `annotations`, its ReplicaSet `<name>-5d4f`, and `pods`
    /// (see [`pod`]), stored and delivered.
    fn add_deployment(&self, name: &str, annotations: Value, pods: Vec<Value>) {
        let mut world = self.world();
        let template = json!({"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": OLD}]}});
        let replicas = pods.len();
        world.store(
            "deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                    "generation": 1, "annotations": annotations},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": template},
                "status": {"observedGeneration": 1, "replicas": replicas,
                    "updatedReplicas": replicas}}),
        );
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"]["pod-template-hash"] = json!("5d4f");
        world.store(
            "replicasets",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{name}-5d4f"), "namespace": NS,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": name, "uid": format!("uid-{name}"), "controller": true}]},
                "spec": {"replicas": replicas, "selector": {}, "template": rs_template},
                "status": {"replicas": replicas}}),
        );
        for pod in pods {
            world.store("pods", pod);
        }
        world.cached = world.stored.clone();
    }

    /// One Ready gated pod of `web` on the old image, the new one asked for, no drain grace.
    fn one_pod_to_upgrade() -> Self {
        Api::new(
            json!({"namespaceSelector": {}, "drain": {"gracePeriodSeconds": 0}}),
            &format!("app={NEW}"),
            vec![pod(
                "web-1",
                OLD,
                "containerd://a",
                ("True", "NotUpgrading"),
            )],
        )
    }

    /// The watches deliver: the caches show what is stored.
    fn deliver(&self) {
        let mut world = self.world();
        world.cached = world.stored.clone();
    }

    /// The kubelet (or another writer) changes a stored pod.
    fn change_pod(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let mut world = self.world();
        let mut pod = world.stored.pods[name].clone();
        change(&mut pod);
        world.store("pods", pod);
    }

    fn stored_pod(&self, name: &str) -> Pod {
        obj(self.world().stored.pods[name].clone())
    }

    /// Someone else changes a stored Deployment, and the watch delivers it.
    fn change_deployment(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let mut world = self.world();
        let mut deployment = world.stored.deployments[name].clone();
        change(&mut deployment);
        world.store("deployments", deployment);
        world.cached = world.stored.clone();
    }

    /// What `kubectl inplace plan deploy/<name>` reports, from what the API server stores (a
    /// dry run lists: it has no cache to lag).
    fn dry_run(&self, name: &str) -> PlanReport {
        let world = self.world();
        let stored = &world.stored;
        let view = stored.workload(&key(name)).expect("a stored Deployment");
        let siblings = crate::intent::sibling_statuses(
            &view.key,
            stored
                .deployments
                .keys()
                .filter_map(|n| stored.workload(&key(n))),
        );
        let pods = stored.pods_of(&view.key);
        let namespace = world.namespace.clone().expect("a namespace");
        let resource = format!("deploy/{name}").parse().expect("a resource");
        let cluster = crate::kubectl::Cluster {
            workload: &view,
            namespace: &namespace,
            policies: &world.policies,
            siblings,
            pods: &pods,
            pdbs: &[],
            slices: &[],
        };
        crate::kubectl::plan_report(
            &cluster,
            &resource,
            false,
            "inplace-upgrade-system",
            Timestamp::now(),
        )
        .expect("a report")
    }

    /// The reasons of the Events published since the last call, sorted, once `n` have
    /// arrived: the reconciler publishes them from tasks of their own, which run here while
    /// this one yields (a bounded number of times, not for a while).
    async fn events(&self, n: usize) -> Vec<String> {
        for _ in 0..10_000 {
            if self.world().events.len() >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut events = std::mem::take(&mut self.world().events);
        events.sort();
        events
    }

    /// The requests made since the last call.
    fn requests(&self) -> Vec<Logged> {
        std::mem::take(&mut self.world().log)
    }

    /// One reconcile of `web`, and the requests it made.
    async fn reconcile(
        &self,
        ctx: &Context,
    ) -> (
        Result<Option<std::time::Duration>, ReconcileError>,
        Vec<Logged>,
    ) {
        self.reconcile_one(ctx, "web").await
    }

    /// One reconcile of Deployment `name`, and the requests it made.
    async fn reconcile_one(
        &self,
        ctx: &Context,
        name: &str,
    ) -> (
        Result<Option<std::time::Duration>, ReconcileError>,
        Vec<Logged>,
    ) {
        let outcome = reconcile_workload(ctx, &key(name)).await;
        (outcome, self.requests())
    }

    /// A reconciler context over these caches, writing through a mocked client that this API
    /// answers. The mock serves until the context (and with it the client) is dropped.
    fn context(&self) -> Context {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, answer) = api.world().answer(&method, &path, &content_type, body);
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .expect("a response");
                respond.send_response(response);
            }
        });
        let client = kube::Client::new(service, NS);
        let settings = Settings {
            namespace: "inplace-upgrade-system".into(),
            identity: "test".into(),
            concurrency: 1,
            lease_duration: std::time::Duration::from_secs(15),
        };
        let metrics = Metrics::register(&mut Registry::default());
        Context::new(
            client,
            Arc::new(self.clone()),
            Queue::new().0,
            metrics,
            settings,
        )
    }
}

/// The caches, as the reconciler reads them: only what this suite stores (one namespace,
/// Deployments, their ReplicaSets and pods).
impl ControllerView for Api {
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.world().cached.workload(key)
    }
    fn workloads_in(&self, namespace: Option<&str>) -> Vec<WorkloadKey> {
        if namespace.is_some_and(|n| n != NS) {
            return Vec::new();
        }
        self.world()
            .cached
            .deployments
            .keys()
            .map(|name| key(name))
            .collect()
    }
    fn workload_annotation(&self, key: &WorkloadKey, annotation: &str) -> Option<String> {
        self.world().cached.deployments.get(&key.name)?["metadata"]["annotations"][annotation]
            .as_str()
            .map(str::to_string)
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        let world = self.world();
        world
            .namespace
            .clone()
            .filter(|n| n.name_any() == name)
            .map(Arc::new)
    }
    fn pods_of(&self, key: &WorkloadKey) -> Vec<Pod> {
        self.world().cached.pods_of(key)
    }
    /// This suite's pods run on no node: nothing is pre-pulled.
    fn prepull_pods_of(&self, _: &WorkloadKey) -> Vec<Pod> {
        Vec::new()
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.world().policies.clone()
    }
    /// No EndpointSlices in this suite: every pod counts as drained.
    fn endpoints_drained(
        &self,
        _: &str,
        pods: &[Pod],
        drains: &BTreeMap<String, DrainRecord>,
    ) -> BTreeSet<String> {
        crate::plan::inputs::endpoints_drained(std::iter::empty(), pods, drains)
    }
    fn slices_listing(&self, _: &str, _: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn pdbs_in(&self, _: &str) -> Vec<Arc<PodDisruptionBudget>> {
        Vec::new()
    }
    fn pod_events(&self, _: &[Pod]) -> PodEvents {
        PodEvents::new()
    }
}

fn obj<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("object literal matches its type")
}

fn key(name: &str) -> WorkloadKey {
    WorkloadKey::test_deployment(name)
}

fn at(offset_seconds: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() + offset_seconds)
        .expect("in range")
        .to_string()
}

/// A Ready pod `<deployment>-<n>` running `image` as container `app` (containerID `id`), with
/// our readiness gate and its condition `gate` (`(status, reason)`).
fn pod(name: &str, image: &str, id: &str, gate: (&str, &str)) -> Value {
    let deployment = name.rsplit_once('-').map_or(name, |(d, _)| d);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"app": deployment, "pod-template-hash": "5d4f"}, "annotations": {},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-5d4f"), "uid": "uid-rs", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": image}],
            "readinessGates": [{"conditionType": READINESS_GATE}]},
        "status": {"conditions": [
                {"type": "Ready", "status": if gate.0 == "True" { "True" } else { "False" }},
                {"type": READINESS_GATE, "status": gate.0, "reason": gate.1,
                    "lastTransitionTime": at(-60)}],
            "containerStatuses": [running(image, id, 0, -100)]}})
}

/// A running, Ready container status.
fn running(image: &str, id: &str, restarts: i32, started: i64) -> Value {
    json!({"name": "app", "image": format!("docker.io/library/{image}"), "imageID": "",
        "containerID": id, "ready": true, "restartCount": restarts,
        "state": {"running": {"startedAt": at(started)}}})
}

fn lines(requests: &[Logged]) -> Vec<&str> {
    requests.iter().map(|r| r.line.as_str()).collect()
}

fn gate_of(pod: &Pod) -> (String, String) {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == READINESS_GATE))
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
        .unwrap_or_default()
}

fn image_of(pod: &Pod) -> String {
    pod.spec.as_ref().expect("spec").containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn recorded_phase(pod: &Pod) -> Option<Phase> {
    PodUpgradeState::from_pod(pod)
        .expect("a valid record")
        .map(|s| s.phase)
}

/// The status annotation a logged workload patch writes.
fn written_status(request: &Logged) -> Value {
    serde_json::from_str(
        request.body["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .expect("a status annotation"),
    )
    .expect("status json")
}

/// The image that cannot be pulled.
const BAD: &str = "nginx:2-bad";

/// Pod `name`, drained and patched to [`BAD`] 20 s ago, its new container in
/// `ImagePullBackOff`.
fn failing_pod(name: &str) -> Value {
    let mut failing = pod(name, BAD, "containerd://a", ("False", "Draining"));
    let record = PodUpgradeState {
        version: crate::state::STATE_VERSION,
        phase: Phase::Patched,
        patched_at: Timestamp::now()
            .checked_sub(SignedDuration::from_secs(20))
            .expect("in range"),
        finished_at: None,
        containers: vec![crate::state::ContainerBaseline {
            name: "app".into(),
            kind: crate::target::ContainerKind::Container,
            index: 0,
            previous_image: OLD.into(),
            target_image: BAD.into(),
            container_id: Some("containerd://a".into()),
            restart_count: 0,
            image_id: None,
            was_running: true,
        }],
        readiness_gate: true,
        reason: None,
        message: None,
    };
    failing["metadata"]["annotations"][STATE_ANNOTATION] =
        json!(record.to_json().expect("record json"));
    failing["status"]["containerStatuses"][0] = json!({"name": "app", "image": BAD,
        "imageID": "", "containerID": "containerd://a", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}});
    failing
}

/// Drain, patch, finish: one gated pod from the annotation to `Completed`, each reconcile's
/// requests in order, three pod writes in all.
#[tokio::test]
async fn one_pod_is_drained_patched_and_finished() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let api = Api::one_pod_to_upgrade();
    let ctx = api.context();

    // Drain: the gate condition goes False through pods/status; the workload says why.
    let (outcome, requests) = api.reconcile(&ctx).await;
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    assert_eq!(
        lines(&requests),
        [
            "PATCH pods/web-1/status (strategic-merge-patch)",
            "PATCH deployments/web (merge-patch)",
        ]
    );
    let condition = &requests[0].body["status"]["conditions"][0];
    assert_eq!(
        (
            &condition["type"],
            &condition["status"],
            &condition["reason"]
        ),
        (&json!(READINESS_GATE), &json!("False"), &json!("Draining"))
    );
    let status = written_status(&requests[1]);
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(status["currentPods"], json!(["web-1"]));
    assert_eq!(api.events(1).await, ["Progressing"]);

    // Patch, before the watch has delivered the drain: our own write counts. One JSON patch:
    // test the name and the old image at the index, replace it, record the state.
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("patched");
    assert_eq!(lines(&requests), ["PATCH pods/web-1 (json-patch)"]);
    let ops: Vec<(&str, &str)> = requests[0]
        .body
        .as_array()
        .expect("ops")
        .iter()
        .map(|op| {
            (
                op["op"].as_str().unwrap_or(""),
                op["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("test", "/spec/containers/0/name"),
            ("test", "/spec/containers/0/image"),
            ("replace", "/spec/containers/0/image"),
            ("add", "/metadata/annotations/inplace-upgrade.io~1state"),
        ]
    );
    assert_eq!(requests[0].body[1]["value"], OLD);
    assert_eq!(requests[0].body[2]["value"], NEW);

    // The kubelet restarts the container on the new image; the watches deliver.
    api.change_pod("web-1", |p| {
        p["status"]["containerStatuses"][0] = running(NEW, "containerd://b", 1, 0);
    });
    api.deliver();
    // Finish: back into load balancing and the record closed in one pods/status write; the
    // pod's one Event. The status change is progress only: it waits (debounced).
    let (recheck, requests) = api.reconcile(&ctx).await;
    let recheck = recheck.expect("finished");
    assert_eq!(
        lines(&requests),
        ["PATCH pods/web-1/status (strategic-merge-patch)"]
    );
    assert_eq!(
        requests[0].body["status"]["conditions"][0]["status"],
        "True"
    );
    assert!(
        requests[0].body["metadata"]["annotations"][STATE_ANNOTATION]
            .as_str()
            .is_some_and(|s| s.contains("\"phase\":\"Succeeded\"")),
        "{:?}",
        requests[0].body
    );
    assert_eq!(api.events(1).await, ["Upgraded"]);
    assert!(
        recheck.is_some(),
        "comes back to write the deferred progress"
    );

    // Completed: written at once, announced.
    api.deliver();
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("completed");
    assert_eq!(lines(&requests), ["PATCH deployments/web (merge-patch)"]);
    let status = written_status(&requests[0]);
    assert_eq!(
        (&status["phase"], &status["upgraded"], &status["total"]),
        (&json!("Completed"), &json!(1), &json!(1))
    );
    assert_eq!(api.events(1).await, ["Completed"]);

    let done = api.stored_pod("web-1");
    assert_eq!(image_of(&done), NEW);
    assert_eq!(gate_of(&done), ("True".into(), "Serving".into()));
    assert_eq!(recorded_phase(&done), Some(Phase::Succeeded));
    // Nothing more to do.
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("idle");
    assert!(requests.is_empty(), "{requests:?}");
}

/// Someone else changed the pod after the cache last showed it: the `test` op fails, nothing
/// else is written, and the next reconcile plans from what is there now.
#[tokio::test]
async fn a_pod_changed_by_someone_else_is_re_read_not_overwritten() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let api = Api::new(
        json!({"namespaceSelector": {}, "drain": {"gracePeriodSeconds": 0}}),
        &format!("app={NEW}"),
        vec![pod("web-1", OLD, "containerd://a", ("False", "Draining"))],
    );
    // Another writer sets the image; the watch has not delivered it yet.
    api.change_pod("web-1", |p| {
        p["spec"]["containers"][0]["image"] = json!("nginx:3")
    });
    let ctx = api.context();

    let (outcome, requests) = api.reconcile(&ctx).await;
    assert!(
        matches!(&outcome, Err(ReconcileError::Conflict { pod }) if pod == "web-1"),
        "{outcome:?}"
    );
    assert_eq!(lines(&requests), ["PATCH pods/web-1 (json-patch)"]);
    assert_eq!(
        requests[0].body[1]["value"], OLD,
        "tested what the cache showed"
    );
    assert_eq!(
        image_of(&api.stored_pod("web-1")),
        "nginx:3",
        "not overwritten"
    );

    // The watch delivers the change: planned again from it.
    api.deliver();
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("patched");
    assert_eq!(
        lines(&requests),
        [
            "PATCH pods/web-1 (json-patch)",
            "PATCH deployments/web (merge-patch)",
        ]
    );
    assert_eq!(api.events(1).await, ["Progressing"]);
    assert_eq!(
        requests[0].body[1]["value"], "nginx:3",
        "tests the image it saw"
    );
    let patched = api.stored_pod("web-1");
    assert_eq!(image_of(&patched), NEW);
    let state = PodUpgradeState::from_pod(&patched)
        .expect("valid")
        .expect("recorded");
    assert_eq!(state.containers[0].previous_image, "nginx:3");
}

/// A failing image: the pod is patched back to its previous image, the workload fails and
/// remembers the target; once the old container runs again the pod is put back.
#[tokio::test]
async fn a_failing_upgrade_is_rolled_back_and_remembered() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let api = Api::new(
        json!({"namespaceSelector": {}}),
        &format!("app={BAD}"),
        vec![failing_pod("web-1")],
    );
    let ctx = api.context();

    let (outcome, requests) = api.reconcile(&ctx).await;

    outcome.expect("rolling back");
    assert_eq!(
        lines(&requests),
        [
            "PATCH pods/web-1 (json-patch)",
            "PATCH deployments/web (merge-patch)",
        ]
    );
    assert_eq!(requests[0].body[1]["value"], BAD, "tests the failing image");
    assert_eq!(
        requests[0].body[2]["value"], OLD,
        "puts the previous one back"
    );
    assert_eq!(api.events(2).await, ["Failed", "RollingBack"]);
    let status = written_status(&requests[1]);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(
        status["failedTargets"],
        json!([{"container": "app", "image": BAD}])
    );
    assert_eq!(
        recorded_phase(&api.stored_pod("web-1")),
        Some(Phase::RollingBack)
    );

    // The old image runs again: the pod goes back into load balancing, recorded RolledBack;
    // the workload stays Failed, with the rollback in its message.
    api.change_pod("web-1", |p| {
        p["status"]["containerStatuses"][0] = running(OLD, "containerd://c", 1, 0);
    });
    api.deliver();
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("rolled back");
    assert_eq!(
        lines(&requests),
        [
            "PATCH pods/web-1/status (strategic-merge-patch)",
            "PATCH deployments/web (merge-patch)",
        ]
    );
    assert_eq!(api.events(1).await, ["RolledBack"]);
    let status = written_status(&requests[1]);
    assert_eq!(status["phase"], "Failed");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pod web-1: rolled back after ImagePullBackOff")),
        "{status}"
    );
    assert_eq!(
        status["failedTargets"],
        json!([{"container": "app", "image": BAD}])
    );
    let back = api.stored_pod("web-1");
    assert_eq!(image_of(&back), OLD);
    assert_eq!(gate_of(&back), ("True".into(), "Serving".into()));
    assert_eq!(recorded_phase(&back), Some(Phase::RolledBack));

    // The same target is not tried again: the workload says so, once.
    api.deliver();
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("stays failed");
    assert_eq!(lines(&requests), ["PATCH deployments/web (merge-patch)"]);
    let status = written_status(&requests[0]);
    assert_eq!(status["phase"], "Failed");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("failed before; change the annotation or ask for a retry")),
        "{status}"
    );
    api.deliver();
    let (outcome, requests) = api.reconcile(&ctx).await;
    outcome.expect("stays failed");
    assert!(requests.is_empty(), "{requests:?}");
    assert_eq!(image_of(&api.stored_pod("web-1")), OLD);
}

/// Spans as controller-rs has them: every line a reconcile logs names the workload, and within
/// a step the pod and the step.
#[tokio::test]
async fn reconcile_and_execute_log_within_spans_that_name_workload_pod_and_step() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Tests that ran before, with no subscriber, may have had these log sites cached as
    // disabled.
    tracing::callsite::rebuild_interest_cache();

    let api = Api::one_pod_to_upgrade();
    let ctx = Arc::new(api.context());
    super::reconcile::reconcile(ctx.clone(), key("web")).await;
    let logged = String::from_utf8(buffer.0.lock().expect("log").clone()).expect("utf-8");
    assert!(
        logged.contains(
            r#"reconcile{workload=Deployment/shop/web}:execute{pod=web-1 step="drain"}: inplace_upgrade::controller::reconcile: written"#
        ),
        "{logged}"
    );
    assert!(
        logged.contains(r#"reconcile{workload=Deployment/shop/web}: inplace_upgrade::controller::reconcile: phase changed phase="Progressing""#),
        "{logged}"
    );
}

/// Under a Namespace annotation a target that failed in one workload is not started in the
/// next, even before the watch delivers the failure: the failure memory reads the siblings'
/// statuses as our own writes left them (issue 17, item 0, here in milliseconds).
#[tokio::test]
async fn a_target_that_failed_in_one_workload_does_not_start_in_the_next() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let api = Api::namespace(
        json!({"namespaceSelector": {}, "maxConcurrentWorkloads": 1,
            "drain": {"gracePeriodSeconds": 0}}),
        json!({TARGETS_ANNOTATION: format!("app={BAD}")}),
    );
    api.add_deployment("api", json!({}), vec![failing_pod("api-1")]);
    api.add_deployment(
        "web",
        json!({}),
        vec![pod(
            "web-1",
            OLD,
            "containerd://w",
            ("True", "NotUpgrading"),
        )],
    );
    let ctx = api.context();

    // `api` fails: rolled back, and its status remembers the target (not yet delivered).
    let (outcome, requests) = api.reconcile_one(&ctx, "api").await;
    outcome.expect("rolling back");
    assert_eq!(
        lines(&requests),
        [
            "PATCH pods/api-1 (json-patch)",
            "PATCH deployments/api (merge-patch)",
        ]
    );
    assert_eq!(api.events(2).await, ["Failed", "RollingBack"]);
    let status = written_status(&requests[1]);
    assert_eq!(
        (&status["phase"], &status["source"]),
        (&json!("Failed"), &json!("Namespace"))
    );

    // `web` is not drained, let alone patched: it reports the failure instead.
    let (outcome, requests) = api.reconcile_one(&ctx, "web").await;
    outcome.expect("held back");
    assert_eq!(lines(&requests), ["PATCH deployments/web (merge-patch)"]);
    assert_eq!(api.events(1).await, ["Failed"]);
    let status = written_status(&requests[0]);
    assert_eq!(status["phase"], "Failed");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("failed before")),
        "{status}"
    );
    let web = api.stored_pod("web-1");
    assert_eq!(image_of(&web), OLD);
    assert_eq!(gate_of(&web).0, "True");
}

/// `kubectl inplace plan` and the controller agree, world by world: the dry run, made of what
/// the API server stores just before a reconcile, reports the phase that reconcile records and
/// starts a pod (drain or patch) exactly when the reconcile writes one. Before issue 17 the
/// dry run said "upgrade now" (Progressing) in the sibling-failure and broken-policy worlds,
/// where the controller held the workload back.
#[tokio::test]
async fn kubectl_plan_agrees_with_the_controller() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    fn web_1() -> Value {
        pod("web-1", OLD, "containerd://w", ("True", "NotUpgrading"))
    }
    fn sibling_failed() -> Api {
        let api = Api::namespace(
            json!({"namespaceSelector": {}, "drain": {"gracePeriodSeconds": 0}}),
            json!({TARGETS_ANNOTATION: format!("app={BAD}")}),
        );
        api.add_deployment("api", json!({}), vec![failing_pod("api-1")]);
        api.add_deployment("web", json!({}), vec![web_1()]);
        api
    }
    fn broken_policy() -> Api {
        let api = Api::one_pod_to_upgrade();
        api.world().policies.push(obj(json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": "broken"},
            "spec": {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        })));
        api
    }
    fn no_policy() -> Api {
        let api = Api::one_pod_to_upgrade();
        api.world().policies.clear();
        api
    }
    fn paused() -> Api {
        let api = Api::one_pod_to_upgrade();
        if let Some(ns) = api.world().namespace.as_mut() {
            ns.annotations_mut()
                .insert(crate::PAUSED_ANNOTATION.into(), "true".into());
        }
        api
    }
    fn own_rollout() -> Api {
        let api = Api::one_pod_to_upgrade();
        api.change_deployment("web", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:9");
        });
        api
    }
    type World = fn() -> Api;
    let worlds: [(&str, World, &str, bool); 6] = [
        (
            "one pod to upgrade",
            Api::one_pod_to_upgrade,
            "Progressing",
            true,
        ),
        (
            "a sibling failed the Namespace's target",
            sibling_failed,
            "Failed",
            false,
        ),
        ("a broken policy", broken_policy, "Blocked", false),
        ("no policy", no_policy, "NoPolicy", false),
        ("a paused Namespace", paused, "Paused", false),
        (
            "the Deployment's own rollout",
            own_rollout,
            "Blocked",
            false,
        ),
    ];
    for (why, world, phase, starts) in worlds {
        let api = world();
        let ctx = api.context();
        if api.world().stored.deployments.contains_key("api") {
            // The sibling fails first; its status is stored, not yet delivered to the cache.
            let (outcome, _) = api.reconcile_one(&ctx, "api").await;
            outcome.expect("api rolled back");
        }
        let report = api.dry_run("web");
        let (outcome, requests) = api.reconcile(&ctx).await;
        outcome.unwrap_or_else(|e| panic!("{why}: {e}"));
        let recorded = requests
            .iter()
            .find(|r| r.line.starts_with("PATCH deployments/web "))
            .map(|r| written_status(r)["phase"].clone());
        let wrote_pod = requests.iter().any(|r| r.line.starts_with("PATCH pods/"));
        let planned_start = report
            .pods
            .iter()
            .any(|p| p.next == "upgrade now" || p.next.starts_with("drain now"));
        assert_eq!(
            (report.verdict.as_str(), planned_start),
            (phase, starts),
            "{why}: the dry run: {report:?}"
        );
        assert_eq!(
            (recorded, wrote_pod),
            (Some(json!(phase)), starts),
            "{why}: the controller: {:?}",
            lines(&requests)
        );
    }
}
