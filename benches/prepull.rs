//! The drained window with and without pre-pull, on a real node pulling from a slowed
//! registry (issue 16 item 3).
//!
//! One real node (kubelet + containerd on this host) pulling from testenv's loopback
//! registry through its rate-limited proxy (`BENCH_PULL_RATE` bytes/s toward containerd,
//! default 5 MB/s; the proxy is part of the harness: nothing on the host is changed). The
//! target is `testapp:big` (the app plus a 50 MiB incompressible layer), which the node does
//! not have. For each variant, in turn and in the same run, a fresh Deployment of
//! `BENCH_REPLICAS` (2) gated pods (`app` = `testapp:1.0`, imported) in its own namespace is
//! moved to the big image by the controller (one pod at a time, default drain: the
//! EndpointSlices and at least 5 s):
//! - **pre-pull off** (`prePull.enabled: false`): kubelet kills the old container, then pulls;
//! - **pre-pull on** (the default): the image is pulled onto the node before the first drain.
//!
//! Between the two the image is removed from the node (`ctr images rm --sync`), so each
//! variant pulls it once. Per pod, the drained window: from the watch seeing our readiness
//! gate go False (`Draining`) to seeing it True again (the pod is back in its Services).
//! Printed per variant: each window, the median, the wall time (annotation → Completed) and
//! the bytes the registry served.
//!
//! Run: `sudo cargo bench -p inplace-upgrade --bench prepull`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;

const OLD: &str = "registry.inplace.test/testapp:1.0";
const NAME: &str = "web";

#[tokio::main]
async fn main() {
    match testenv::real_nodes_wanted() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("prepull bench: needs real nodes (root); nothing measured");
            return;
        }
        Err(e) => {
            eprintln!("prepull bench: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run().await {
        eprintln!("prepull bench failed: {e}");
        std::process::exit(1);
    }
    // Everything of the environment was stopped and removed when `run` returned; the first run
    // then hung in the runtime's shutdown (a blocking thread of the harness), so exit here.
    std::process::exit(0);
}

struct Variant {
    name: &'static str,
    pre_pull: bool,
    /// Per pod, the drained window.
    windows: Vec<(String, Duration)>,
    wall: Duration,
    served: u64,
}

async fn run() -> AnyResult<()> {
    let replicas = knob("BENCH_REPLICAS", 2) as i32;
    let rate = knob("BENCH_PULL_RATE", 5_000_000);
    let mut options = testenv::Options {
        real_nodes: 1,
        ..testenv::Options::default()
    };
    options.kubelet.nodes = 0;
    options.real.registry = true;
    stamp("prepull bench start");
    let bench = Bench::start(options, false).await?;
    let client = bench.client.clone();
    common::install(&client).await?;
    let registry = bench.env.registry().ok_or("no registry")?;
    // The big image goes into the registry (not onto the node), built in a directory of this
    // run (the shared default one holds whichever worktree's testapp built it last).
    let images_dir = tempfile::Builder::new()
        .prefix("inplace-prepull-images-")
        .tempdir()?;
    let path = images_dir.path().to_path_buf();
    let set = tokio::task::spawn_blocking(move || testenv::images::build(&path)).await??;
    let big = set
        .get(testenv::images::BIG)
        .ok_or("the image set has no big image")?;
    registry.push(&big.archive, testenv::images::BIG)?;
    let (_controller, _) = bench.start_controller("controller.log").await?;

    let mut variants = vec![
        Variant {
            name: "pre-pull off (kubelet pulls after the kill)",
            pre_pull: false,
            windows: Vec::new(),
            wall: Duration::ZERO,
            served: 0,
        },
        Variant {
            name: "pre-pull on (the default)",
            pre_pull: true,
            windows: Vec::new(),
            wall: Duration::ZERO,
            served: 0,
        },
    ];
    for v in &mut variants {
        bench.env.remove_image(testenv::images::BIG).await?;
        registry.set_rate_limit(Some(rate));
        let ns = bench.env.namespace("prepull-bench").await?;
        common::create_policy(&client, &ns, json!({"prePull": {"enabled": v.pre_pull}})).await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment(replicas)?)
            .await?;
        common::await_deployment_ready(&deployments, NAME, replicas).await?;
        let windows = watch_drains(&client, &ns).await?;
        let served = registry.bytes_served();
        stamp(v.name);
        let target = format!("app={}", testenv::images::BIG);
        let start = Instant::now();
        common::annotate(
            &deployments,
            NAME,
            inplace_upgrade::TARGETS_ANNOTATION,
            &target,
        )
        .await?;
        common::await_phase(&deployments, NAME, &target, "Completed").await?;
        v.wall = start.elapsed();
        v.served = registry.bytes_served() - served;
        // The last undrain may reach the watch just after the status.
        let deadline = Instant::now() + Duration::from_secs(30);
        while windows.lock().map_err(|_| "poisoned")?.closed.len() < replicas as usize
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        v.windows = windows.lock().map_err(|_| "poisoned")?.closed.clone();
        registry.set_rate_limit(None);
        for (pod, w) in &v.windows {
            println!("{}: {pod} drained for {:.1} s", v.name, w.as_secs_f64());
        }
        // The pods of this variant go before the image is removed for the next.
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(&ns, &Default::default())
            .await?;
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pods.list(&Default::default()).await?.items.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stamp("prepull bench end");

    println!();
    println!(
        "## Drained window with and without pre-pull ({replicas} replicas one at a time, 1 real node, target {} ({:.0} MiB of layers) from the loopback registry at {:.1} MB/s)",
        testenv::images::BIG,
        big.layers_size as f64 / (1 << 20) as f64,
        rate as f64 / 1e6,
    );
    println!(
        "| variant | drained window per pod, s | median s | wall s (annotation → Completed) | MiB served by the registry |"
    );
    println!("|---|---|---|---|---|");
    for v in &variants {
        let mut secs: Vec<f64> = v.windows.iter().map(|(_, w)| w.as_secs_f64()).collect();
        let each: Vec<String> = secs.iter().map(|s| format!("{s:.1}")).collect();
        secs.sort_by(f64::total_cmp);
        let median = if secs.is_empty() {
            f64::NAN
        } else {
            secs[secs.len() / 2]
        };
        println!(
            "| {} | {} | {median:.1} | {:.1} | {:.1} |",
            v.name,
            each.join(", "),
            v.wall.as_secs_f64(),
            v.served as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// A Deployment of gated pods running the app (the controller admits new gated pods).
fn deployment(replicas: i32) -> AnyResult<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "readinessGates": [{"conditionType": inplace_upgrade::READINESS_GATE}],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "app", "image": OLD}],
                },
            },
        },
    }))?)
}

#[derive(Default)]
struct Drains {
    open: BTreeMap<String, Instant>,
    closed: Vec<(String, Duration)>,
}

/// Watches the namespace's pods: when each one's gate goes False (`Draining`) and True again.
async fn watch_drains(client: &kube::Client, ns: &str) -> AnyResult<Arc<Mutex<Drains>>> {
    let seen = Arc::new(Mutex::new(Drains::default()));
    let s = seen.clone();
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let mut stream = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .boxed();
    tokio::spawn(async move {
        let mut listed_tx = Some(listed_tx);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let now = Instant::now();
                    let Ok(mut o) = s.lock() else { return };
                    let name = p.name_any();
                    match common::gate(&p) {
                        Some((status, reason)) if status == "False" && reason == "Draining" => {
                            o.open.entry(name).or_insert(now);
                        }
                        Some((status, _)) if status == "True" => {
                            if let Some(at) = o.open.remove(&name) {
                                o.closed.push((name, now - at));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), listed)
        .await
        .map_err(|_| "the pods were not listed")?
        .map_err(|_| "the pod watch ended")?;
    Ok(seen)
}
