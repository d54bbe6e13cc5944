//! In place vs recreate at an equal disruption budget, same app (Istio's `hello` fixture
//! behind a Service, N replicas), same control plane, one method after the other, each in its
//! own namespace and each moving to a proxy version no node has yet:
//! - **in place, maxUnavailable 25%**: the controller patches `istio-proxy` in each pod (gated
//!   pods, a policy with `maxUnavailable: 25%`, pre-pull on as by default);
//! - **rollout restart, maxSurge 25%**: what `kubectl rollout restart` does after an Istio
//!   upgrade (the template's `kubectl.kubernetes.io/restartedAt` annotation; the new pods get
//!   the new proxy, which Istio's injector would write, here written into the template), rolled
//!   by the real Deployment controller with `maxSurge: 25%`, `maxUnavailable: 0` (no capacity
//!   lost, as a mesh user runs it);
//! - **in place, maxUnavailable 1** and **rollout restart, maxSurge 1** (`maxUnavailable: 0`):
//!   both one pod at a time;
//! - **hand loop** (`BENCH_HANDLOOP=0` skips it): per old pod, scale +1, wait until all are
//!   Ready, delete the old pod, scale −1, wait until N are Ready. Its new pods come from the
//!   unchanged template (only an injector could give them the new proxy without a rollout), so
//!   they pull nothing: that favours it.
//!
//! For each: wall time, app pods created and deleted, pre-pull pods, pod IPs that went away,
//! the fewest Ready pods at any moment, API writes in the namespace by actor (audit log) and
//! scheduling decisions (`pods/binding` creates).
//!
//! **Profiles** (`BENCH_PROFILE`). `realistic`, the default, because the comparison is only
//! worth printing if neither side gets a free start:
//! - the app needs `BENCH_APP_READY_MS` (20000) to become Ready (a readinessProbe on `hello`),
//!   the proxy `BENCH_READINESS_MS` (1000);
//! - every node keeps the images it pulled (`KubeletOptions::image_cache`, kubelet's
//!   `IfNotPresent`): `BENCH_NODES` (4) nodes all run replicas from the start, so each has the
//!   app and the old proxy; only the new proxy is missing, on every node, at the start of each
//!   method (each method moves to its own tag). Pulling it takes `BENCH_PROXY_MB` (100, about
//!   the compressed size of `istio/proxyv2`) at `BENCH_PULL_RATE` (5000000 bytes/s, the rate
//!   `--bench prepull` slows its registry to), i.e. 20 s, once per node: in place pays it in
//!   the pre-pull before the node's first drain, a recreate in the node's first new pod
//!   (istio-init pulls it, istio-proxy then finds it);
//! - drain and termination as a user gets them: the policy's default drain grace (5 s), and
//!   pods that take `BENCH_TERMINATION_MS` (5000, Envoy's default drain duration) to stop;
//! - an in-place restart of a container whose image is on the node takes `BENCH_RESTART_MS`
//!   (1000).
//!
//! `quick`: the first version of this bench, a few minutes: two nodes that keep no images
//! (every container of a new pod pulls for `BENCH_PULL_MS`, 1000), an app ready as soon as it
//! runs, readiness 300 ms, termination 1000 ms, drain grace 1 s (`BENCH_GRACE_S`). Every knob
//! above overrides either profile; `BENCH_REPLICAS` (20).
//!
//! Run: `cargo bench -p inplace-upgrade --bench recreate` (realistic: ~20 min, most of it the
//! one-at-a-time recreates); `BENCH_PROFILE=quick` for the short one.

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
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;

/// The proxy the fixture runs, without its tag.
const PROXY: &str = "registry.istio.io/testing/proxyv2";
/// Bound on one rollout or deployment (a one-at-a-time recreate of 20 pods that need 20 s
/// each is ~8 min).
const ROLLOUT_LIMIT: Duration = Duration::from_secs(30 * 60);

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("recreate bench: {e}");
        std::process::exit(1);
    }
}

/// What the app is like.
struct Profile {
    name: &'static str,
    replicas: i32,
    /// Drain grace of the in-place policy, seconds.
    grace: u64,
    /// Readiness of the app container (`None`: no probe, ready once running).
    app_ready: Option<Duration>,
    /// Bytes of the new proxy image and the pull rate, when the pull time comes from them.
    pull_size: Option<(u64, u64)>,
}

#[derive(Default)]
struct Watched {
    /// uid -> (name, pod IP, Ready, terminating)
    pods: HashMap<String, (String, String, bool, bool)>,
    created: BTreeSet<String>,
    prepull: BTreeSet<String>,
    deleted: BTreeSet<String>,
    min_ready: Option<usize>,
}

struct Measured {
    name: String,
    wall: Duration,
    created: usize,
    deleted: usize,
    prepull: usize,
    ips_gone: usize,
    min_ready: usize,
    writes: BTreeMap<String, usize>,
    events: usize,
    bindings: usize,
}

/// How a recreate method rolls.
#[derive(Clone, Copy)]
enum Recreate {
    /// `kubectl rollout restart` with this `maxSurge` (`maxUnavailable: 0`).
    Restart(&'static str),
    /// The hand-written loop.
    HandLoop,
}

async fn run() -> AnyResult<()> {
    let realistic = match std::env::var("BENCH_PROFILE").as_deref() {
        Ok("realistic") | Err(_) => true,
        Ok("quick") => false,
        Ok(other) => return Err(format!("BENCH_PROFILE={other:?}: realistic or quick").into()),
    };
    let pick = |realistic_value: u64, quick_value: u64| {
        if realistic {
            realistic_value
        } else {
            quick_value
        }
    };
    let replicas = knob("BENCH_REPLICAS", 20) as i32;
    let mut options = testenv::Options::default();
    options.kubelet.nodes = knob("BENCH_NODES", pick(4, 2)) as usize;
    options.kubelet.image_cache = realistic;
    let pull_size = realistic.then(|| {
        (
            knob("BENCH_PROXY_MB", 100) * 1_000_000,
            knob("BENCH_PULL_RATE", 5_000_000).max(1),
        )
    });
    let d = &mut options.kubelet.delays;
    d.restart = Duration::from_millis(knob("BENCH_RESTART_MS", 1000));
    d.pull = match pull_size {
        Some((bytes, rate)) => Duration::from_secs_f64(bytes as f64 / rate as f64),
        None => Duration::from_millis(knob("BENCH_PULL_MS", 1000)),
    };
    d.readiness = Duration::from_millis(knob("BENCH_READINESS_MS", pick(1000, 300)));
    d.termination = Duration::from_millis(knob("BENCH_TERMINATION_MS", pick(5000, 1000)));
    let delays = *d;
    let nodes = options.kubelet.nodes;
    let profile = Profile {
        name: if realistic { "realistic" } else { "quick" },
        replicas,
        grace: knob("BENCH_GRACE_S", pick(5, 1)),
        app_ready: realistic.then(|| Duration::from_millis(knob("BENCH_APP_READY_MS", 20_000))),
        pull_size,
    };
    stamp(&format!("recreate bench start ({} profile)", profile.name));
    let bench = Bench::start(options, true).await?;
    let client = bench.client.clone();
    common::install(&client).await?;
    let (_controller, _) = bench.start_controller("controller.log").await?;

    // Each method moves to a tag no node has pulled yet; rows compare with the in-place row of
    // the same budget.
    let mut results: Vec<(Measured, usize)> = Vec::new();
    let r = in_place(&bench, &profile, "25%", "1.24.2").await?;
    results.push((r, 0));
    let r = recreate(&bench, &profile, Recreate::Restart("25%"), "1.24.3").await?;
    results.push((r, 0));
    let r = in_place(&bench, &profile, "1", "1.24.4").await?;
    results.push((r, 2));
    let r = recreate(&bench, &profile, Recreate::Restart("1"), "1.24.5").await?;
    results.push((r, 2));
    if knob("BENCH_HANDLOOP", 1) == 1 {
        let r = recreate(&bench, &profile, Recreate::HandLoop, "").await?;
        results.push((r, 2));
    }

    println!();
    println!(
        "## In place vs recreate ({replicas} replicas of hello, Istio-injected; {} profile; load at the end {})",
        profile.name,
        load_average()
    );
    let pull = match profile.pull_size {
        Some((bytes, rate)) => format!(
            "pull {:.1} s ({} MB at {:.1} MB/s) of an image not on the node yet, none of one that is ({nodes} nodes that keep their images)",
            delays.pull.as_secs_f64(),
            bytes / 1_000_000,
            rate as f64 / 1e6
        ),
        None => format!(
            "pull {} ms per container start of a new pod ({nodes} nodes that keep no images)",
            delays.pull.as_millis()
        ),
    };
    let app = match profile.app_ready {
        Some(d) => format!("app readiness {} ms", d.as_millis()),
        None => "app ready once running".to_owned(),
    };
    println!(
        "sim delays: {pull}, init {} ms, {app}, proxy readiness {} ms, in-place restart {} ms, termination {} ms; drain grace (in place) {} s",
        delays.init.as_millis(),
        delays.readiness.as_millis(),
        delays.restart.as_millis(),
        delays.termination.as_millis(),
        profile.grace
    );
    println!(
        "| method | wall s | vs in place (same budget) | app pods created | app pods deleted | pre-pull pods | pod IPs changed | fewest Ready | API writes (no Events) | Events | bindings |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (r, base) in &results {
        let total: usize = r.writes.values().sum();
        println!(
            "| {} | {:.1} | {:.2}x | {} | {} | {} | {} | {} of {replicas} | {total} {:?} | {} | {} |",
            r.name,
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / results[*base].0.wall.as_secs_f64(),
            r.created,
            r.deleted,
            r.prepull,
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

/// In place with the policy's `maxUnavailable` at `budget`, to proxy `tag`.
async fn in_place(
    bench: &Bench,
    profile: &Profile,
    budget: &'static str,
    tag: &str,
) -> AnyResult<Measured> {
    let client = &bench.client;
    let ns = bench
        .env
        .namespace(&format!("inplace-{}", budget.trim_end_matches('%')))
        .await?;
    common::create_policy(
        client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": profile.grace, "timeoutSeconds": 60},
               "maxUnavailable": int_or_string(budget), "readyTimeoutSeconds": 300}),
    )
    .await?;
    common::create_service(client, &ns, "hello").await?;
    let deployments = deploy(client, &ns, profile, true, "25%").await?;
    let target = format!("istio-proxy=proxyv2:{tag}");
    let name = format!("in place, maxUnavailable {budget}");
    measure(bench, &ns, name, async move {
        common::annotate(
            &deployments,
            "hello",
            inplace_upgrade::TARGETS_ANNOTATION,
            &target,
        )
        .await?;
        testenv::wait_for_within(
            &deployments,
            "hello",
            &format!("in-place rollout to {target} Completed"),
            ROLLOUT_LIMIT,
            |d: &Deployment| {
                common::workload_status(d.annotations())
                    .is_some_and(|s| s["phase"] == "Completed" && s["target"] == target)
            },
        )
        .await?;
        Ok(())
    })
    .await
}

/// A recreate method, to proxy `tag` (the hand loop keeps the template: no tag).
async fn recreate(
    bench: &Bench,
    profile: &Profile,
    how: Recreate,
    tag: &str,
) -> AnyResult<Measured> {
    let client = &bench.client;
    let (ns, surge, name) = match how {
        Recreate::Restart(surge) => (
            format!("restart-{}", surge.trim_end_matches('%')),
            surge,
            format!("rollout restart, maxSurge {surge} (maxUnavailable 0)"),
        ),
        Recreate::HandLoop => (
            "handloop".to_owned(),
            "25%",
            "hand loop (scale +1, delete, scale -1)".to_owned(),
        ),
    };
    let ns = bench.env.namespace(&ns).await?;
    common::create_service(client, &ns, "hello").await?;
    let deployments = deploy(client, &ns, profile, false, surge).await?;
    let replicas = profile.replicas;
    match how {
        Recreate::Restart(_) => {
            let image = format!("{PROXY}:{tag}");
            measure(bench, &ns, name, async move {
                // The injector's part: Istio's containers get the new proxy.
                let patch = json!({"spec": {"template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now_utc()}},
                "spec": {
                    "initContainers": [{"name": "istio-init", "image": image}],
                    "containers": [{"name": "istio-proxy", "image": image}],
                }}}});
                let d = deployments
                    .patch("hello", &PatchParams::default(), &Patch::Strategic(&patch))
                    .await?;
                let generation = d.metadata.generation.unwrap_or(0);
                testenv::wait_for_within(
                    &deployments,
                    "hello",
                    "rollout restart done",
                    ROLLOUT_LIMIT,
                    |d: &Deployment| {
                        let s = d.status.clone().unwrap_or_default();
                        s.observed_generation >= Some(generation)
                            && s.updated_replicas == Some(replicas)
                            && s.ready_replicas == Some(replicas)
                            && s.replicas == Some(replicas)
                    },
                )
                .await?;
                Ok(())
            })
            .await
        }
        Recreate::HandLoop => {
            let pods = Api::<Pod>::namespaced(client.clone(), &ns);
            measure(bench, &ns, name, async move {
                let old: Vec<String> = pods
                    .list(&ListParams::default().labels("app=hello"))
                    .await?
                    .items
                    .iter()
                    .map(|p| p.name_any())
                    .collect();
                for name in old {
                    scale(&deployments, replicas + 1).await?;
                    all_ready(&deployments, replicas + 1).await?;
                    pods.delete(&name, &DeleteParams::default()).await?;
                    scale(&deployments, replicas).await?;
                    testenv::wait_deleted(&pods, &name, "the old pod gone").await?;
                    all_ready(&deployments, replicas).await?;
                }
                Ok(())
            })
            .await
        }
    }
}

/// `"25%"` as a string, `"1"` as a number (the API takes an int-or-string).
fn int_or_string(v: &str) -> serde_json::Value {
    v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n))
}

/// The `hello` Deployment as the profile shapes it (gated for in place; `maxSurge` for the
/// Deployment controller, `maxUnavailable` 0), created and Ready.
async fn deploy(
    client: &kube::Client,
    ns: &str,
    profile: &Profile,
    gated: bool,
    max_surge: &str,
) -> AnyResult<Api<Deployment>> {
    let d = common::hello_deployment("hello-old-version.yaml.injected", profile.replicas, gated)?;
    let mut d = serde_json::to_value(d)?;
    d["spec"]["strategy"] = json!({
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": int_or_string(max_surge), "maxUnavailable": 0}
    });
    if let Some(ready) = profile.app_ready {
        let template = &mut d["spec"]["template"];
        let key = format!("{}hello.readiness-delay-ms", testenv::ANNOTATION_PREFIX);
        template["metadata"]["annotations"][key] = json!(ready.as_millis().to_string());
        if let Some(hello) = template["spec"]["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == "hello"))
        {
            hello["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}});
        }
    }
    let d: Deployment = serde_json::from_value(d)?;
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &d).await?;
    let replicas = profile.replicas;
    testenv::wait_for_within(
        &api,
        "hello",
        "hello Ready",
        ROLLOUT_LIMIT,
        |d: &Deployment| {
            d.status.as_ref().is_some_and(|s| {
                s.ready_replicas == Some(replicas) && s.updated_replicas == Some(replicas)
            })
        },
    )
    .await?;
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
    name: String,
    trigger: impl std::future::Future<Output = AnyResult<()>>,
) -> AnyResult<Measured> {
    stamp(&format!("{name}: start"));
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
                    if p.labels().contains_key(inplace_upgrade::prepull::LABEL) {
                        // Short-lived, never Ready, not a replica: counted apart.
                        w.prepull.insert(uid);
                        continue;
                    }
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
    stamp(&format!(
        "{name}: {:.1} s, {} pods created, {} pre-pull pods, fewest Ready {:?}",
        wall.as_secs_f64(),
        w.created.len(),
        w.prepull.len(),
        w.min_ready,
    ));
    let final_uids: BTreeSet<String> = final_pods.iter().filter_map(|p| p.uid()).collect();
    Ok(Measured {
        name,
        wall,
        created: w.created.len(),
        prepull: w.prepull.len(),
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
