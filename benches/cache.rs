//! Heap bytes per cached object: what the controller's and the webhook's caches keep of an
//! Istio-injected pod and of its share of a Deployment, ReplicaSet and EndpointSlice, counted
//! by a global allocator that tracks live bytes (no cluster; a few seconds).
//!
//! The pods are `hello` (the Istio fixture `hello-old-version.yaml.injected`) with the status
//! the simulated kubelet writes, every server-set field and managedFields, 5 per Deployment,
//! each Deployment behind a Service, as in `--bench scale`. Printed: live heap bytes and
//! allocations per pod for each role's cache, and for the same pods decoded whole into
//! `k8s_openapi` `Pod`s (what a cache of full objects holds).
//!
//! Run: `cargo bench -p inplace-upgrade --bench cache` (BENCH_PODS, default 5000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use inplace_upgrade::cache::{Cache, Role};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

/// The system allocator, counting live bytes and allocations.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        BLOCKS.load(Ordering::Relaxed),
    )
}

const PER: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pods: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let workloads = pods.div_ceil(PER);
    let deployment = serde_json::to_value(common::hello_deployment(
        "hello-old-version.yaml.injected",
        PER as i32,
        false,
    )?)?;
    let template = deployment["spec"]["template"].clone();

    // The objects as JSON, made before anything is counted.
    let mut objects: Vec<(&str, Value)> = Vec::new();
    for w in 0..workloads {
        let (name, ns) = (format!("app-{w}"), format!("scale-{}", w / 100));
        let rs = format!("{name}-5d8f7c9b4");
        let mut d = deployment.clone();
        served(&mut d, &name, &ns, None);
        d["status"] = json!({"observedGeneration": 1, "replicas": PER, "updatedReplicas": PER,
            "readyReplicas": PER, "availableReplicas": PER, "conditions": [
            {"type": "Available", "status": "True", "lastUpdateTime": "2026-12-07T01:57:27Z",
             "lastTransitionTime": "2026-12-07T01:57:27Z", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability."}]});
        objects.push(("Deployment", d.clone()));
        let mut r = d.clone();
        r["kind"] = json!("ReplicaSet");
        served(&mut r, &rs, &ns, Some(("Deployment", &name)));
        r["metadata"]["annotations"] = json!({"deployment.kubernetes.io/desired-replicas": "5",
            "deployment.kubernetes.io/max-replicas": "7", "deployment.kubernetes.io/revision": "1"});
        r["status"] = json!({"replicas": PER, "fullyLabeledReplicas": PER, "readyReplicas": PER,
            "availableReplicas": PER, "observedGeneration": 1});
        objects.push(("ReplicaSet", r));
        let mut endpoints = Vec::new();
        for p in 0..PER {
            let pod_name = format!("{rs}-{p:05}");
            let mut pod =
                json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
            served(&mut pod, &pod_name, &ns, Some(("ReplicaSet", &rs)));
            pod["spec"]["nodeName"] = json!("sim-node-1");
            pod["status"] = status(&pod);
            objects.push(("Pod", pod));
            endpoints.push(
                json!({"addresses": [format!("10.{}.{}.{}", w / 256 % 256, w % 256, p)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name,
                    "uid": "4bdc977d-8e12-4867-8d72-83c1e4518a72"}, "nodeName": "sim-node-1"}),
            );
        }
        let mut slice = json!({"addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "", "protocol": "TCP", "port": 80}]});
        served(
            &mut slice,
            &format!("{name}-x7k2p"),
            &ns,
            Some(("Service", &name)),
        );
        objects.push(("EndpointSlice", slice));
    }

    println!(
        "{pods} pods in {workloads} Deployments (each with a ReplicaSet and an EndpointSlice)"
    );
    println!("| what is kept | heap bytes per pod | allocations per pod |");
    println!("|---|---|---|");
    for role in [Role::Controller, Role::Webhook] {
        let before = live();
        let cache = Cache::new(role);
        // Kind by kind, so each kind's share is its own row (the pods' includes the owner
        // index they fill).
        let mut shares = Vec::new();
        for fed in ["Deployment", "ReplicaSet", "EndpointSlice", "Pod"] {
            if !role.kinds().iter().any(|k| k.name() == fed) {
                continue;
            }
            let kind_before = live();
            for (_, object) in objects.iter().filter(|(kind, _)| *kind == fed) {
                match fed {
                    "Pod" => feed::<Pod>(&cache, object)?,
                    "Deployment" => feed::<Deployment>(&cache, object)?,
                    "ReplicaSet" => feed::<ReplicaSet>(&cache, object)?,
                    _ => feed::<EndpointSlice>(&cache, object)?,
                }
            }
            shares.push((fed, kind_before, live()));
        }
        report(&format!("{role:?} cache"), before, pods);
        for (kind, before, after) in shares {
            println!(
                "| … of which {kind}s | {:.0} | {:.1} |",
                (after.0 - before.0) as f64 / pods as f64,
                (after.1 - before.1) as f64 / pods as f64
            );
        }
        drop(cache);
    }
    let before = live();
    let full: Vec<Pod> = objects
        .iter()
        .filter(|(k, _)| *k == "Pod")
        .map(|(_, o)| serde_json::from_value(o.clone()))
        .collect::<Result<_, _>>()?;
    report(
        "the pods alone, decoded whole (k8s_openapi Pod)",
        before,
        pods,
    );
    let before = live();
    let slim: Vec<Pod> = full.iter().map(previous_cut).collect();
    report(
        "the pods alone, as the cache kept them before (Pod: spec trimmed, status whole)",
        before,
        pods,
    );
    drop((full, slim));
    Ok(())
}

/// What the controller's cache kept of a pod until issue 17: a `Pod` without managedFields,
/// of the spec each container's name, image and restartPolicy, the readiness gates and the
/// node; the status whole.
fn previous_cut(pod: &Pod) -> Pod {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    let container = |c: &Container| Container {
        name: c.name.clone(),
        image: c.image.clone(),
        restart_policy: c.restart_policy.clone(),
        ..Container::default()
    };
    let spec = pod.spec.as_ref().map(|s| PodSpec {
        containers: s.containers.iter().map(container).collect(),
        init_containers: s
            .init_containers
            .as_ref()
            .map(|cs| cs.iter().map(container).collect()),
        readiness_gates: s.readiness_gates.clone(),
        node_name: s.node_name.clone(),
        ..PodSpec::default()
    });
    let mut metadata = pod.metadata.clone();
    metadata.managed_fields = None;
    Pod {
        metadata,
        spec,
        status: pod.status.clone(),
    }
}

fn feed<K>(cache: &Cache, object: &Value) -> Result<(), Box<dyn std::error::Error>>
where
    K: serde::de::DeserializeOwned + serde::Serialize + kube::Resource<DynamicType = ()>,
{
    let object: K = serde_json::from_value(object.clone())?;
    cache.feed(Event::Apply(object))?;
    Ok(())
}

fn report(what: &str, before: (isize, isize), pods: usize) {
    let now = live();
    println!(
        "| {what} | {:.0} | {:.1} |",
        (now.0 - before.0) as f64 / pods as f64,
        (now.1 - before.1) as f64 / pods as f64
    );
}

/// Server-set metadata, as a watch delivers it.
fn served(o: &mut Value, name: &str, ns: &str, owner: Option<(&str, &str)>) {
    let meta = &mut o["metadata"];
    meta["name"] = json!(name);
    meta["namespace"] = json!(ns);
    meta["uid"] = json!("4bdc977d-8e12-4867-8d72-83c1e4518a72");
    meta["resourceVersion"] = json!("123456");
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2026-12-07T01:57:26Z");
    meta["managedFields"] = json!([{"manager": "kube-controller-manager", "operation": "Update",
        "apiVersion": "apps/v1", "time": "2026-12-07T01:57:26Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}}}}]);
    if let Some((kind, owner)) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner,
            "uid": "af8e9216-538e-4511-8196-21afc329b904", "controller": true,
            "blockOwnerDeletion": true}]);
    }
}

/// The status the simulated kubelet writes for a running, Ready pod.
fn status(pod: &Value) -> Value {
    let container = |c: &Value, state: Value, n: usize| {
        let image = c["image"].as_str().unwrap_or_default();
        json!({"name": c["name"], "state": state, "lastState": {}, "ready": true, "restartCount": 0,
            "image": image, "imageID": format!("{image}@sha256:{:064}", n),
            "containerID": format!("containerd://{:064}", n), "started": true})
    };
    let running = json!({"running": {"startedAt": "2026-12-07T01:57:27Z"}});
    let done = json!({"terminated": {"exitCode": 0, "reason": "Completed",
        "startedAt": "2026-12-07T01:57:27Z", "finishedAt": "2026-12-07T01:57:27Z"}});
    let list = |key: &str, state: &Value| -> Vec<Value> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(n, c)| {
                let state = if c["restartPolicy"] == "Always" {
                    running.clone()
                } else {
                    state.clone()
                };
                container(c, state, n)
            })
            .collect()
    };
    let condition = |t: &str| {
        json!({"type": t, "status": "True", "lastProbeTime": null,
        "lastTransitionTime": "2026-12-07T01:57:27Z"})
    };
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ]
    .map(condition);
    json!({"observedGeneration": 1, "phase": "Running", "conditions": conditions,
        "hostIP": "172.20.0.3", "hostIPs": [{"ip": "172.20.0.3"}], "podIP": "10.129.0.1",
        "podIPs": [{"ip": "10.129.0.1"}], "startTime": "2026-12-07T01:57:27Z",
        "initContainerStatuses": list("initContainers", &done),
        "containerStatuses": list("containers", &running), "qosClass": "Burstable"})
}
