//! The drained window with and without pre-pull, on a real node pulling from a slowed
//! registry (issue 16 item 3).
//!
//! One real node (kubelet + containerd on this host) pulling from testenv's loopback
//! registry through its rate-limited proxy (`BENCH_PULL_RATE` bytes/s toward containerd,
//! default 5 MB/s; the proxy is part of the harness: nothing on the host is changed). The
//! target is `testapp:big` (the app plus a 50 MiB incompressible layer), which the node does
//! not have. For each variant, in turn and in the same run, a fresh Deployment of
//! `BENCH_REPLICAS` (2) gated pods (`app` = `testapp:1.0`, imported) in its own namespace is
//! moved to the big image by the controller (one pod at a time; the suites' policy: drain
//! grace 0 s, no Service, so the patch follows the drain write at once and the window is the
//! restart alone, pull included or not):
//! - **pre-pull off** (`prePull.enabled: false`): kubelet kills the old container, then pulls;
//! - **pre-pull on** (the default): the image is pulled onto the node before the first drain.
//!
//! Before each, the image is removed from the node for good ([`testenv::TestEnv::remove_image`]:
//! every name containerd holds for it, once no container uses its layers), so each variant
//! pulls it; a variant for which the registry served less than the 50 MiB layer only this
//! image has makes the run fail as invalid.
//!
//! The drained window, per pod, from kube-apiserver's audit log (microseconds, one clock; the
//! gate condition's `lastTransitionTime` has seconds only): from the `stageTimestamp` of the
//! controller's `pods/status` patch that set our readiness gate False (`Draining`) to that of
//! its patch setting it True again (undrained), and on to the real kubelet's patch setting
//! `Ready` True (when the pod is back in its Services). Printed per variant: each window, the
//! median, the wall time (annotation → Completed) and the bytes the registry served.
//!
//! Run: `sudo cargo bench -p inplace-upgrade --bench prepull`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
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
    windows: Vec<Window>,
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
    let bench = Bench::start(options, true).await?;
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
        let served = registry.bytes_served();
        let mark = bench.audit.mark();
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
        // kubelet's Ready write follows the last undrain.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            v.windows = drained_windows(&bench.audit.since(mark)?, &ns);
            let done = v.windows.iter().filter(|w| w.ready.is_some()).count();
            if done >= replicas as usize || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        registry.set_rate_limit(None);
        for w in &v.windows {
            println!(
                "{}: {} drained {} → undrained {} ({:.2} s) → Ready {} ({:.2} s)",
                v.name,
                w.pod,
                w.drained,
                w.undrained,
                w.undrain_secs(),
                w.ready.map_or("never".into(), |t| t.to_string()),
                w.ready_secs(),
            );
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
        "## Drained window with and without pre-pull ({replicas} replicas one at a time, 1 real node, target {} ({:.0} MiB of layers) from the loopback registry at {:.1} MB/s; windows from the audit log)",
        testenv::images::BIG,
        big.layers_size as f64 / (1 << 20) as f64,
        rate as f64 / 1e6,
    );
    println!(
        "| variant | drain → undrain per pod, s | median s | drain → Ready per pod, s | median s | wall s (annotation → Completed) | MiB served by the registry |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut invalid = Vec::new();
    for v in &variants {
        let undrain: Vec<f64> = v.windows.iter().map(Window::undrain_secs).collect();
        let ready: Vec<f64> = v.windows.iter().map(Window::ready_secs).collect();
        let each = |xs: &[f64]| {
            xs.iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {} | {:.2} | {} | {:.2} | {:.1} | {:.1} |",
            v.name,
            each(&undrain),
            percentile(&undrain, 50.0),
            each(&ready),
            percentile(&ready, 50.0),
            v.wall.as_secs_f64(),
            v.served as f64 / (1 << 20) as f64
        );
        // One pull of the padding layer per variant (the others are testapp:1.0's, on the
        // node already), or the variant measured nothing.
        let padding = testenv::images::BIG_PADDING as u64;
        if v.served < padding {
            invalid.push(format!(
                "{}: the registry served {} bytes, less than the {padding}-byte layer only this image has (the node did not pull it)",
                v.name, v.served
            ));
        }
        if v.windows.len() != replicas as usize || ready.iter().any(|s| s.is_nan()) {
            invalid.push(format!(
                "{}: {} complete windows of {replicas} in the audit log",
                v.name,
                v.windows.iter().filter(|w| w.ready.is_some()).count()
            ));
        }
    }
    if !invalid.is_empty() {
        return Err(format!("INVALID measurement:\n{}", invalid.join("\n")).into());
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

/// One pod's drained window, from the audit log.
struct Window {
    pod: String,
    /// The controller's write of our gate False (`Draining`).
    drained: Timestamp,
    /// Its write of the gate True again.
    undrained: Timestamp,
    /// The real kubelet's first write of `Ready` True after that.
    ready: Option<Timestamp>,
}

impl Window {
    fn undrain_secs(&self) -> f64 {
        ms_between(self.drained, self.undrained) / 1000.0
    }

    fn ready_secs(&self) -> f64 {
        self.ready
            .map_or(f64::NAN, |r| ms_between(self.drained, r) / 1000.0)
    }
}

/// The status of condition `type_` in a logged `pods/status` patch body (with its reason).
fn condition<'a>(body: &'a Value, type_: &str) -> Option<(&'a str, &'a str)> {
    let c = body
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((c["status"].as_str()?, c["reason"].as_str().unwrap_or("")))
}

/// Per pod of `ns`, in the order drained: the controller's drain and undrain writes and the
/// real kubelet's `Ready` write after the undrain, from the logged `pods/status` patches that
/// succeeded. A pod still drained, or not yet Ready, is left out or has no `ready`.
fn drained_windows(events: &[AuditEvent], ns: &str) -> Vec<Window> {
    let mut open: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut windows: Vec<Window> = Vec::new();
    for e in events {
        let ok = e
            .response_status
            .as_ref()
            .is_some_and(|s| (200..300).contains(&s.code));
        let Some(body) = e.request_object.as_ref() else {
            continue;
        };
        if !ok || e.namespace() != ns || e.what() != "patch pods/status" {
            continue;
        }
        let pod = e.name().to_string();
        if e.user.username == CONTROLLER_USER {
            match condition(body, inplace_upgrade::READINESS_GATE) {
                Some(("False", "Draining")) => {
                    open.entry(pod).or_insert(e.stage_timestamp);
                }
                Some(("True", _)) => {
                    if let Some(drained) = open.remove(&pod) {
                        windows.push(Window {
                            pod,
                            drained,
                            undrained: e.stage_timestamp,
                            ready: None,
                        });
                    }
                }
                _ => {}
            }
        } else if e.user.username.starts_with("system:node:")
            && condition(body, "Ready").is_some_and(|(s, _)| s == "True")
            && let Some(w) = windows
                .iter_mut()
                .find(|w| w.pod == pod && w.ready.is_none())
        {
            w.ready = Some(e.stage_timestamp);
        }
    }
    windows.sort_by_key(|w| w.drained);
    windows
}
