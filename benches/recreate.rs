//! In place vs recreate, same app (Istio's `hello` fixture behind a Service, N replicas), same
//! control plane, one after the other:
//! - **in place**: the controller patches `istio-proxy` in each pod (gated pods, policy with
//!   maxUnavailable 1);
//! - **rollout restart**: what `kubectl rollout restart` does (the pod template's
//!   `kubectl.kubernetes.io/restartedAt` annotation), rolled by the real Deployment controller
//!   with maxSurge 25%, maxUnavailable 0 (no capacity lost, as a mesh user runs it);
//! - **hand loop**: per old pod, scale +1, wait until all are Ready, delete the old pod,
//!   scale −1, wait until N are Ready.
//!
//! For each: wall time, pods created and deleted, pod IPs that went away, the fewest Ready pods
//! at any moment, API writes in the namespace by actor (audit log) and scheduling decisions
//! (`pods/binding` creates).
//!
//! Knobs: BENCH_REPLICAS (20), BENCH_RESTART_MS (1000), BENCH_PULL_MS (1000),
//! BENCH_READINESS_MS (300), BENCH_TERMINATION_MS (1000), BENCH_GRACE_S (1).
//! Run: `cargo bench -p inplace-upgrade --bench recreate`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;

const TARGET: &str = "istio-proxy=proxyv2:1.24.2";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("recreate bench: {e}");
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Watched {
    /// uid -> (name, pod IP, Ready, terminating)
    pods: HashMap<String, (String, String, bool, bool)>,
    created: BTreeSet<String>,
    deleted: BTreeSet<String>,
    min_ready: Option<usize>,
}

struct Measured {
    name: &'static str,
    wall: Duration,
    created: usize,
    deleted: usize,
    ips_gone: usize,
    min_ready: usize,
    writes: BTreeMap<String, usize>,
    events: usize,
    bindings: usize,
}

async fn run() -> AnyResult<()> {
    let replicas = knob("BENCH_REPLICAS", 20) as i32;
    let grace = knob("BENCH_GRACE_S", 1);
    let mut options = testenv::Options::default();
    let d = &mut options.kubelet.delays;
    d.restart = Duration::from_millis(knob("BENCH_RESTART_MS", 1000));
    d.pull = Duration::from_millis(knob("BENCH_PULL_MS", 1000));
    d.readiness = Duration::from_millis(knob("BENCH_READINESS_MS", 300));
    d.termination = Duration::from_millis(knob("BENCH_TERMINATION_MS", 1000));
    let delays = *d;
    stamp("recreate bench start");
    let bench = Bench::start(options, true).await?;
    let client = bench.client.clone();
    common::install(&client).await?;
    let (_controller, _) = bench.start_controller("controller.log").await?;

    let mut results = Vec::new();

    // In place.
    let ns = bench.env.namespace("inplace").await?;
    common::create_policy(
        &client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": grace, "timeoutSeconds": 60}, "maxUnavailable": 1}),
    )
    .await?;
    common::create_service(&client, &ns, "hello").await?;
    let deployments = common::deploy_hello(&client, &ns, replicas, true).await?;
    let d2 = deployments.clone();
    results.push(
        measure(&bench, &ns, "in place (controller)", async move {
            common::annotate(&d2, "hello", inplace_upgrade::TARGETS_ANNOTATION, TARGET).await?;
            common::await_phase(&d2, "hello", TARGET, "Completed").await?;
            Ok(())
        })
        .await?,
    );

    // kubectl rollout restart, rolled by the Deployment controller.
    let ns = bench.env.namespace("restart").await?;
    common::create_service(&client, &ns, "hello").await?;
    let deployments = deploy_ungated(&client, &ns, replicas).await?;
    let d2 = deployments.clone();
    results.push(
        measure(
            &bench,
            &ns,
            "rollout restart (25% surge, 0 unavailable)",
            async move {
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": now_utc()}}}}});
                let d = d2
                    .patch("hello", &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                let generation = d.metadata.generation.unwrap_or(0);
                testenv::wait_for(&d2, "hello", "rollout restart done", |d: &Deployment| {
                    let s = d.status.clone().unwrap_or_default();
                    s.observed_generation >= Some(generation)
                        && s.updated_replicas == Some(replicas)
                        && s.ready_replicas == Some(replicas)
                        && s.replicas == Some(replicas)
                })
                .await?;
                Ok(())
            },
        )
        .await?,
    );

    // The hand-written loop.
    let ns = bench.env.namespace("handloop").await?;
    common::create_service(&client, &ns, "hello").await?;
    let deployments = deploy_ungated(&client, &ns, replicas).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let d2 = deployments.clone();
    results.push(
        measure(
            &bench,
            &ns,
            "hand loop (scale +1, delete, scale -1)",
            async move {
                let old: Vec<String> = pods
                    .list(&ListParams::default().labels("app=hello"))
                    .await?
                    .items
                    .iter()
                    .map(|p| p.name_any())
                    .collect();
                for name in old {
                    scale(&d2, replicas + 1).await?;
                    all_ready(&d2, replicas + 1).await?;
                    pods.delete(&name, &DeleteParams::default()).await?;
                    scale(&d2, replicas).await?;
                    testenv::wait_deleted(&pods, &name, "the old pod gone").await?;
                    all_ready(&d2, replicas).await?;
                }
                Ok(())
            },
        )
        .await?,
    );

    println!();
    println!("## In place vs recreate ({replicas} replicas of hello, Istio-injected)");
    println!(
        "sim delays: pull {} ms (per container start of a new pod), init {} ms, readiness {} ms (istio-proxy probe), restart {} ms (in-place image change), termination {} ms; drain grace (in place) {grace} s",
        delays.pull.as_millis(),
        delays.init.as_millis(),
        delays.readiness.as_millis(),
        delays.restart.as_millis(),
        delays.termination.as_millis()
    );
    let base = results[0].wall.as_secs_f64();
    println!(
        "| method | wall s | vs in place | pods created | pods deleted | pod IPs gone | fewest Ready | API writes (no Events) | Events | bindings |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let total: usize = r.writes.values().sum();
        println!(
            "| {} | {:.1} | {:.2}x | {} | {} | {} | {} of {replicas} | {total} {:?} | {} | {} |",
            r.name,
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / base,
            r.created,
            r.deleted,
            r.ips_gone,
            r.min_ready,
            r.writes,
            r.events,
            r.bindings
        );
    }
    stamp("recreate bench end");
    Ok(())
}

async fn deploy_ungated(
    client: &kube::Client,
    ns: &str,
    replicas: i32,
) -> AnyResult<Api<Deployment>> {
    let mut d = common::hello_deployment("hello-old-version.yaml.injected", replicas, false)?;
    if let Some(spec) = d.spec.as_mut() {
        spec.strategy = Some(common::obj(json!({
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}
        })));
    }
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    api.create(&Default::default(), &d).await?;
    common::await_deployment_ready(&api, "hello", replicas).await?;
    Ok(api)
}

async fn scale(api: &Api<Deployment>, replicas: i32) -> AnyResult<()> {
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch("hello", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn all_ready(api: &Api<Deployment>, replicas: i32) -> AnyResult<()> {
    testenv::wait_for(
        api,
        "hello",
        &format!("{replicas} Ready"),
        |d: &Deployment| {
            let s = d.status.clone().unwrap_or_default();
            s.replicas == Some(replicas) && s.ready_replicas == Some(replicas)
        },
    )
    .await?;
    Ok(())
}

/// Runs `trigger` (which returns when the rollout is done) while watching the namespace's
/// pods, and reads the audit log for the same span.
async fn measure(
    bench: &Bench,
    ns: &str,
    name: &'static str,
    trigger: impl std::future::Future<Output = AnyResult<()>>,
) -> AnyResult<Measured> {
    let pods = Api::<Pod>::namespaced(bench.client.clone(), ns);
    let initial: Vec<Pod> = pods.list(&ListParams::default()).await?.items;
    let initial_uids: BTreeSet<String> = initial.iter().filter_map(|p| p.uid()).collect();
    let initial_ips: BTreeSet<String> = initial
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let watched = Arc::new(Mutex::new(Watched::default()));
    let w = watched.clone();
    let known = initial_uids.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let mut w = w.lock().unwrap();
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let uid = p.uid().unwrap_or_default();
                    if !known.contains(&uid) {
                        w.created.insert(uid.clone());
                    }
                    let ip = p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .unwrap_or_default();
                    let entry = (
                        p.name_any(),
                        ip,
                        common::is_ready(&p),
                        p.metadata.deletion_timestamp.is_some(),
                    );
                    w.pods.insert(uid, entry);
                }
                Ok(watcher::Event::Delete(p)) => {
                    let uid = p.uid().unwrap_or_default();
                    w.pods.remove(&uid);
                    w.deleted.insert(uid);
                }
                _ => continue,
            }
            // A terminating pod still counts as Ready until kubelet says otherwise (its
            // endpoint is then only serving), as EndpointSlices report it; count only the
            // ones not terminating, the ones a load balancer sends new requests to.
            let ready = w.pods.values().filter(|p| p.2 && !p.3).count();
            w.min_ready = Some(w.min_ready.map_or(ready, |m| m.min(ready)));
        }
    });
    // Let the watch list before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watched.lock().unwrap().min_ready = None;
    let mark = bench.audit.mark();
    let started = Instant::now();
    trigger.await?;
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let final_pods: Vec<Pod> = Api::<Pod>::namespaced(bench.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    let final_ips: BTreeSet<String> = final_pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let events = bench.audit.since(mark)?;
    let in_ns: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.namespace() == ns && e.is_write() && e.actor() != Actor::Bench)
        .collect();
    let mut writes = BTreeMap::new();
    for e in in_ns.iter().filter(|e| e.resource() != "events") {
        *writes.entry(format!("{:?}", e.actor())).or_insert(0) += 1;
    }
    let w = watched.lock().unwrap();
    let final_uids: BTreeSet<String> = final_pods.iter().filter_map(|p| p.uid()).collect();
    Ok(Measured {
        name,
        wall,
        created: w.created.len(),
        deleted: initial_uids
            .iter()
            .chain(w.created.iter())
            .filter(|u| !final_uids.contains(*u))
            .count(),
        ips_gone: initial_ips.difference(&final_ips).count(),
        min_ready: w.min_ready.unwrap_or(0),
        writes,
        events: in_ns.iter().filter(|e| e.resource() == "events").count(),
        bindings: in_ns
            .iter()
            .filter(|e| e.resource() == "pods" && e.subresource() == "binding")
            .count(),
    })
}
