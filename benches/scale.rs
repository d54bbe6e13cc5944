//! Scale: many Istio-injected pods in many Deployments on simulated nodes.
//!
//! 1. Grows the cluster in steps (BENCH_SIZES pods; Deployments of `hello`, each with
//!    BENCH_PODS/BENCH_WORKLOADS replicas, 100 per namespace, each behind a Service) and at
//!    each step, once every pod is Ready, starts a fresh controller and measures its initial
//!    sync time (process start to `/readyz`), RSS, CPU to sync, CPU in the 5 s after it (the
//!    controller's first term reconciles every workload once: an upper bound of the CPU per
//!    reconcile of an idle workload) and over the next 10 s;
//!    then a fresh `inplace-upgrade webhook` (its own caches, registered nowhere) and its sync
//!    time and RSS. Memory per cached pod is the RSS slope between steps (it includes each
//!    pod's share of its ReplicaSet, Deployment and EndpointSlice).
//! 2. A namespace-wide upgrade (the Namespace's `inplace-upgrade` annotation) of
//!    BENCH_WIDE single-replica gated Deployments in that cluster, once per
//!    `maxConcurrentWorkloads` in BENCH_CONCURRENCY: time and the most pods unavailable and
//!    workloads Progressing at once.
//!
//! Knobs: BENCH_PODS (10000), BENCH_WORKLOADS (2000), BENCH_SIZES (pods at each step;
//! "1000,<half>,<all>"), BENCH_NODES (20), BENCH_WIDE (500),
//! BENCH_CONCURRENCY ("50,10,1"; empty: no namespace-wide upgrade), BENCH_PERF_DIR (perf
//! profiles of each controller), BENCH_COMPARE (other controllers measured in the same
//! cluster right before this build, at every step, controller and webhook: `label=TOKENS;…`,
//! each token a binary path — e.g. main's build, or this one built with `--features
//! jemalloc` — or a `KEY=VALUE` for its environment), BENCH_CONTROLLER (the build under
//! test: an `inplace-upgrade` binary, e.g. `cargo build --release`'s while this bench runs as
//! `--profile dev`; default: the one cargo built for this bench).
//! Run: `cargo bench -p inplace-upgrade --bench scale` (long: tens of minutes at full size).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use inplace_upgrade::policy::InPlaceUpgradePolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;

const LABEL: &str = "bench.inplace-upgrade.io/scale";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("scale bench: {e}");
        std::process::exit(1);
    }
}

struct Sample {
    /// `controller` or `webhook`.
    role: &'static str,
    controller: String,
    pods: u64,
    workloads: u64,
    sync: Duration,
    rss: f64,
    peak_rss: f64,
    cpu_sync: f64,
    /// CPU in the 5 s after sync: the controller's first term reconciles every workload once.
    cpu_first_term: f64,
    cpu_idle: f64,
}

async fn run() -> AnyResult<()> {
    let pods = knob("BENCH_PODS", 10_000);
    let workloads = knob("BENCH_WORKLOADS", 2_000).max(2);
    let per = (pods / workloads).max(1);
    let wide = knob("BENCH_WIDE", 500);
    let compare = variants(&std::env::var("BENCH_COMPARE").unwrap_or_default())?;
    let concurrency: Vec<i32> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "50,10,1".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut options = testenv::Options::default();
    options.kubelet.nodes = knob("BENCH_NODES", 20) as usize;
    options.kubelet.events = false;
    stamp("scale bench start");
    let bench = Bench::start(options, false).await?;
    let client = bench.client.clone();
    common::install(&client).await?;

    let ready = track_ready(&client);
    let mut samples = Vec::new();
    let mut created = 0;
    let mut namespaces: Vec<String> = Vec::new();
    for size in sizes(pods, per) {
        let started = Instant::now();
        create_workloads(&bench, &mut namespaces, created, size, per as i32).await?;
        created = size;
        await_ready(&ready, size * per).await?;
        println!(
            "# {} pods in {size} Deployments Ready after {:.0} s (load average {})",
            size * per,
            started.elapsed().as_secs_f64(),
            load_average()
        );
        // The variants first, so the build under test is measured last either way.
        for variant in compare.iter().map(Some).chain([None]) {
            for role in ["controller", "webhook"] {
                samples.push(measure(&bench, role, variant, size, per).await?);
            }
        }
    }

    print_scale(&samples);
    if concurrency.is_empty() {
        stamp("scale bench end");
        return Ok(());
    }
    // The namespace-wide upgrade, in the full cluster.
    let ns = bench.env.namespace("wide").await?;
    common::create_policy(
        &client,
        &ns,
        json!({"drain": {"gracePeriodSeconds": 0, "timeoutSeconds": 60}, "maxUnavailable": 1}),
    )
    .await?;
    let (controller, _) = bench.start_controller("controller-wide.log").await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    futures::stream::iter(0..wide)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let d = workload(&format!("w{i}"), 1, true)?;
                deployments.create(&PostParams::default(), &d).await?;
                Ok::<(), Box<dyn std::error::Error>>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    await_ready(&ready, created * per + wide).await?;
    let mut wide_results = Vec::new();
    for (i, c) in concurrency.iter().enumerate() {
        let patch = json!({"spec": {"maxConcurrentWorkloads": c}});
        Api::<InPlaceUpgradePolicy>::all(client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let target = format!("istio-proxy=proxyv2:1.24.{}", 10 + i);
        let watch = watch_wide(&client, &ns, &target);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stamp(&format!("wide upgrade, maxConcurrentWorkloads {c}"));
        let cpu0 = controller.cpu_seconds();
        let mut perf = Perf::attach(controller.pid(), &format!("wide-{c}"));
        let started = Instant::now();
        common::annotate(
            &Api::<Namespace>::all(client.clone()),
            &ns,
            inplace_upgrade::TARGETS_ANNOTATION,
            &target,
        )
        .await?;
        let limit = Duration::from_secs(60 + wide * 5);
        loop {
            if watch.lock().unwrap().completed.len() as u64 >= wide {
                break;
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "the namespace-wide upgrade to {target} did not complete within {limit:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        perf.stop();
        let w = watch.lock().unwrap();
        wide_results.push((
            *c,
            took,
            w.max_not_ready,
            w.max_progressing,
            controller.cpu_seconds() - cpu0,
        ));
        println!(
            "# maxConcurrentWorkloads {c}: {:.1} s, at most {} pods unavailable and {} workloads Progressing at once (load average {})",
            took.as_secs_f64(),
            w.max_not_ready,
            w.max_progressing,
            load_average()
        );
    }
    let rss_wide = controller.rss_mib();

    println!();
    println!(
        "namespace-wide upgrade of {wide} single-replica Deployments (restart 300 ms, readiness 300 ms, drain grace 0) beside {} pods; controller RSS {rss_wide:.1} MiB at the end",
        created * per
    );
    println!(
        "| maxConcurrentWorkloads | time s | vs 1 | most pods unavailable | most workloads Progressing | controller CPU s |"
    );
    println!("|---|---|---|---|---|---|");
    let base = wide_results
        .iter()
        .find(|r| r.0 == 1)
        .map(|r| r.1.as_secs_f64());
    for (c, took, nr, prog, cpu) in &wide_results {
        println!(
            "| {c} | {:.1} | {} | {nr} | {prog} | {cpu:.1} |",
            took.as_secs_f64(),
            base.map_or("-".into(), |b| format!("{:.2}x", took.as_secs_f64() / b)),
        );
    }
    stamp("scale bench end");
    Ok(())
}

/// Starts a fresh controller or webhook (`role`; a variant, or the build under test) in the
/// synced cluster and measures its initial sync, then its RSS and idle CPU.
async fn measure(
    bench: &Bench,
    role: &'static str,
    variant: Option<&Variant>,
    workloads: u64,
    per: u64,
) -> AnyResult<Sample> {
    let pods = workloads * per;
    let controller = variant.map_or("this build".to_string(), |v| v.label.clone());
    let tag = variant.map_or(String::new(), |v| format!("{}-", v.label));
    let log = format!("{role}-{tag}{pods}.log");
    let mut c = match role {
        "webhook" => bench.spawn_webhook(&log, variant).await?,
        _ => bench.spawn_controller(&log, variant).await?,
    };
    let mut perf = Perf::attach(c.pid(), &format!("sync-{role}-{tag}{pods}"));
    let sync = c.await_synced(Duration::from_secs(600)).await?;
    let cpu_sync = c.cpu_seconds();
    // The controller's first term reconciles every workload once; give it a moment, then
    // measure a quiet 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    perf.stop();
    let before = c.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_idle = (c.cpu_seconds() - before) / 10.0;
    let s = Sample {
        role,
        controller,
        pods,
        workloads,
        sync,
        rss: c.rss_mib(),
        peak_rss: c.peak_rss_mib(),
        cpu_sync,
        cpu_first_term: before - cpu_sync,
        cpu_idle,
    };
    println!(
        "# {role}, {}, {pods} pods: sync {:.2} s, RSS {:.1} MiB (peak {:.1}), CPU to sync {:.2} s, {:.2} s in the 5 s after ({:.2} ms per Deployment), then {:.1}% of a core (load average {})",
        s.controller,
        s.sync.as_secs_f64(),
        s.rss,
        s.peak_rss,
        s.cpu_sync,
        s.cpu_first_term,
        s.cpu_first_term * 1e3 / workloads as f64,
        s.cpu_idle * 100.0,
        load_average()
    );
    // SIGTERM: a controller releases its Lease, so the next one leads (and starts its first
    // term) at once instead of after the Lease expires.
    c.stop();
    Ok(s)
}

/// The steps, in Deployments: BENCH_SIZES (pods), or 1,000 pods, half and all.
fn sizes(pods: u64, per: u64) -> Vec<u64> {
    let asked = std::env::var("BENCH_SIZES").unwrap_or_default();
    let mut sizes: Vec<u64> = if asked.trim().is_empty() {
        vec![1000, pods / 2, pods]
    } else {
        asked
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    sizes.retain(|s| *s <= pods);
    let mut steps: Vec<u64> = sizes.iter().map(|s| (s / per).max(1)).collect();
    steps.sort();
    steps.dedup();
    steps
}

fn print_scale(samples: &[Sample]) {
    for role in ["controller", "webhook"] {
        let samples: Vec<&Sample> = samples.iter().filter(|s| s.role == role).collect();
        println!();
        println!("## Scale: {role}");
        println!(
            "| build | pods | Deployments | initial sync s | CPU to sync s | CPU, 5 s after sync, ms per Deployment | RSS MiB after sync | peak RSS MiB | idle CPU after sync |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for s in &samples {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1}% |",
                s.controller,
                s.pods,
                s.workloads,
                s.sync.as_secs_f64(),
                s.cpu_sync,
                s.cpu_first_term * 1e3 / s.workloads as f64,
                s.rss,
                s.peak_rss,
                s.cpu_idle * 100.0
            );
        }
        let mut builds: Vec<&str> = samples.iter().map(|s| s.controller.as_str()).collect();
        builds.sort();
        builds.dedup();
        for build in &builds {
            let of: Vec<&&Sample> = samples.iter().filter(|s| s.controller == *build).collect();
            for pair in of.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                println!(
                    "{role}, {build}: {} -> {} pods: {:.2} KiB per pod (RSS slope), sync time x{:.2}",
                    a.pods,
                    b.pods,
                    (b.rss - a.rss) * 1024.0 / (b.pods - a.pods) as f64,
                    b.sync.as_secs_f64() / a.sync.as_secs_f64()
                );
            }
        }
        for ours in samples.iter().filter(|s| s.controller == "this build") {
            for base in samples
                .iter()
                .filter(|s| s.controller != "this build" && s.pods == ours.pods)
            {
                println!(
                    "{role}, {} pods, this build / {}: RSS {:.2}, CPU to sync {:.2}, sync time {:.2}",
                    ours.pods,
                    base.controller,
                    ours.rss / base.rss,
                    ours.cpu_sync / base.cpu_sync,
                    ours.sync.as_secs_f64() / base.sync.as_secs_f64()
                );
            }
        }
    }
}

/// A `hello` Deployment named `name` with its own `app` label.
fn workload(name: &str, replicas: i32, gated: bool) -> AnyResult<Deployment> {
    let d = common::hello_deployment("hello-old-version.yaml.injected", replicas, gated)?;
    let mut v = serde_json::to_value(d)?;
    v["metadata"]["name"] = json!(name);
    v["metadata"]["labels"] = json!({"app": name, LABEL: "true"});
    v["spec"]["selector"] = json!({"matchLabels": {"app": name}});
    v["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
    Ok(serde_json::from_value(v)?)
}

async fn create_workloads(
    bench: &Bench,
    namespaces: &mut Vec<String>,
    from: u64,
    to: u64,
    replicas: i32,
) -> AnyResult<()> {
    while (namespaces.len() as u64) * 100 < to {
        namespaces.push(bench.env.namespace("scale").await?);
    }
    let client = bench.client.clone();
    let namespaces = namespaces.clone();
    futures::stream::iter(from..to)
        .map(|i| {
            let ns = namespaces[(i / 100) as usize].clone();
            let api = Api::<Deployment>::namespaced(client.clone(), &ns);
            let client = client.clone();
            async move {
                let name = format!("app-{i}");
                let d = workload(&name, replicas, false)?;
                // A create the API server completed but answered too late for the client
                // (seen at load average 15) is retried by the client: already there is done.
                // An etcd timeout under load (seen at load average 20) is tried again.
                created(|| async {
                    api.create(&PostParams::default(), &d)
                        .await
                        .map(drop)
                        .map_err(Into::into)
                })
                .await?;
                // Every app behind its own Service, as in a mesh: one EndpointSlice each.
                created(|| common::create_service(&client, &ns, &name)).await?;
                Ok::<(), Box<dyn std::error::Error>>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Runs a create until it is done: "already exists" is done, a server-side timeout (etcd
/// overloaded) is tried again, up to 10 times.
async fn created<F, Fut>(create: F) -> AnyResult<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = AnyResult<()>>,
{
    let mut tries = 0;
    loop {
        match create().await {
            Err(e) if e.to_string().contains("already exists") => return Ok(()),
            Err(e) if e.to_string().contains("timed out") && tries < 10 => {
                tries += 1;
                eprintln!("  create timed out ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Ready replicas of every benchmark Deployment, kept by a watch.
fn track_ready(client: &kube::Client) -> Arc<Mutex<HashMap<(String, String), i32>>> {
    let ready: Arc<Mutex<HashMap<(String, String), i32>>> = Arc::default();
    let r = ready.clone();
    let api = Api::<Deployment>::all(client.clone());
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default().labels(LABEL)).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev {
                let n = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                r.lock()
                    .unwrap()
                    .insert((d.namespace().unwrap_or_default(), d.name_any()), n);
            }
        }
    });
    ready
}

async fn await_ready(
    ready: &Arc<Mutex<HashMap<(String, String), i32>>>,
    pods: u64,
) -> AnyResult<()> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let n: i64 = ready.lock().unwrap().values().map(|v| i64::from(*v)).sum();
        if n as u64 >= pods {
            return Ok(());
        }
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {n}/{pods} pods Ready after {:.0} s (load average {})",
                started.elapsed().as_secs_f64(),
                load_average()
            );
            said = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(format!("only {n} of {pods} pods Ready after an hour").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Default)]
struct Wide {
    not_ready: HashSet<String>,
    max_not_ready: usize,
    progressing: HashSet<String>,
    max_progressing: usize,
    completed: HashSet<String>,
}

/// Watches the namespace-wide upgrade: pods not Ready, workloads Progressing and Completed
/// for `target`.
fn watch_wide(client: &kube::Client, ns: &str, target: &str) -> Arc<Mutex<Wide>> {
    let seen: Arc<Mutex<Wide>> = Arc::default();
    let s = seen.clone();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let target = target.to_string();
    tokio::spawn(async move {
        let mut pods = watcher(pods, watcher::Config::default()).boxed();
        let mut deployments = watcher(deployments, watcher::Config::default()).boxed();
        loop {
            tokio::select! {
                ev = pods.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                        let mut w = s.lock().unwrap();
                        if common::is_ready(&p) {
                            w.not_ready.remove(&p.name_any());
                        } else {
                            w.not_ready.insert(p.name_any());
                        }
                        w.max_not_ready = w.max_not_ready.max(w.not_ready.len());
                    }
                    Some(_) => {}
                    None => break,
                },
                ev = deployments.next() => match ev {
                    Some(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d))) => {
                        let mut w = s.lock().unwrap();
                        let status = common::workload_status(d.annotations());
                        let of_target = status.as_ref().is_some_and(|s| s["target"] == target.as_str());
                        let phase = status.as_ref().and_then(|s| s["phase"].as_str().map(str::to_string));
                        if of_target && phase.as_deref() == Some("Progressing") {
                            w.progressing.insert(d.name_any());
                        } else {
                            w.progressing.remove(&d.name_any());
                        }
                        if of_target && phase.as_deref() == Some("Completed") {
                            w.completed.insert(d.name_any());
                        }
                        w.max_progressing = w.max_progressing.max(w.progressing.len());
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
    });
    seen
}
