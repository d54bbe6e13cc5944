//! Side by side with OpenKruise, on one control plane (docs/comparison.md).
//!
//! OpenKruise's kruise-manager (built from its Go module by `tests/kruise/build.sh`, its CRDs
//! and webhook configurations from the same module version) runs out of cluster, as its "How
//! to DEBUG" describes: `WEBHOOK_HOST=127.0.0.1`, so it points its webhook configurations at a
//! URL on this host with a CA it generates. It runs as the ServiceAccount
//! `kruise-system/kruise-manager`, our controller as `bench-controller`, both bound to
//! cluster-admin, so the audit log tells their requests apart.
//!
//! Prints two tables:
//! - correctness: each scenario against a CloneSet (`InPlaceIfPossible`, `maxUnavailable: 1`)
//!   and against our controller on a Deployment (policy `maxUnavailable: 1`), 3 replicas each.
//!   The outcome is what the API showed: each side's own verdict (CloneSet status / our
//!   workload status), and the pods: recreated or kept (UID, IP), restarts of the container,
//!   Ready, the image in the spec — or how long it sat there before the bench gave up;
//! - performance: 20 replicas one at a time, the same drain grace (Kruise's
//!   `inPlaceUpdateStrategy.gracePeriodSeconds`, our policy's `drain.gracePeriodSeconds`):
//!   wall time against the floor N × (restart + readiness + grace), each controller's API
//!   writes per pod from the audit log by user, and its CPU.
//!
//! `BENCH_NODE=real` runs the correctness table on one real node instead (kubelet +
//! containerd on this host, root only; the test images imported, the loopback registry
//! behind every registry host, so a missing tag is a real 404 and `docker.io/library/nginx:1.25`
//! is a real pull of an image pushed under that name). The cells then also say what the
//! runtime reported: the container's status `image` and whether its `imageID` moved.
//! `BENCH_PARTS` picks the parts (comma-separated): `correctness`, `performance`
//! (default: both on the simulated kubelet, `correctness` on a real node).
//!
//! Knobs (environment): BENCH_REPLICAS (20), BENCH_RESTART_MS (1000), BENCH_GRACE_S (1),
//! BENCH_LIMIT_S (60: how long a scenario may take before it is reported stuck),
//! KRUISE_DIR (default: the directory `tests/kruise/build.sh` prints), BENCH_CONTROLLER (our
//! binary to run, controller and webhook, instead of the one cargo built for this bench).
//! Run: `cargo bench -p inplace-upgrade --bench kruise`;
//! `sudo BENCH_NODE=real cargo bench -p inplace-upgrade --bench kruise` for the real node.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inplace_upgrade::admission::configuration::{self, ConfigurationOptions, Endpoint};
use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::*;

const KRUISE_NS: &str = "kruise-system";
const KRUISE_USER: &str = "system:serviceaccount:kruise-system:kruise-manager";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("kruise bench: {e}");
        std::process::exit(1);
    }
}

/// One change applied to both sides.
struct Scenario {
    name: &'static str,
    /// Fixture file and the Deployment in it.
    fixture: &'static str,
    container: &'static str,
    /// The container's image before the change (None: the fixture's).
    from: Option<&'static str>,
    /// The image written into the CloneSet's template.
    to: &'static str,
    /// Our annotation's value.
    target: &'static str,
    /// After the verdict (or the limit), put the old image back and watch the pods return.
    recover: bool,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "sidecar image change (regular container)",
            fixture: "hello-old-version.yaml.injected",
            container: "istio-proxy",
            from: None,
            to: "registry.istio.io/testing/proxyv2:1.24.2",
            target: "istio-proxy=registry.istio.io/testing/proxyv2:1.24.2",
            recover: false,
        },
        Scenario {
            name: "native sidecar (initContainers, restartPolicy Always)",
            fixture: "frontend.yaml.injected",
            container: "istio-proxy",
            from: None,
            to: "registry.istio.io/testing/proxyv2:1.24.2",
            target: "istio-proxy=registry.istio.io/testing/proxyv2:1.24.2",
            recover: false,
        },
        Scenario {
            name: "retag to the same digest (proxyv2:1.24.2--b7 -> :stable--b7)",
            fixture: "hello-old-version.yaml.injected",
            container: "istio-proxy",
            from: Some("registry.istio.io/testing/proxyv2:1.24.2--b7"),
            to: "registry.istio.io/testing/proxyv2:stable--b7",
            target: "istio-proxy=registry.istio.io/testing/proxyv2:stable--b7",
            recover: false,
        },
        Scenario {
            name: "docker.io/library/nginx:1.25 -> nginx:1.25",
            fixture: "hello-old-version.yaml.injected",
            container: "hello",
            from: Some("docker.io/library/nginx:1.25"),
            to: "nginx:1.25",
            target: "hello=nginx:1.25",
            recover: false,
        },
        Scenario {
            name: "failing image (proxyv2:fail-pull), then the old image back",
            fixture: "hello-old-version.yaml.injected",
            container: "istio-proxy",
            from: None,
            to: "registry.istio.io/testing/proxyv2:fail-pull",
            target: "istio-proxy=registry.istio.io/testing/proxyv2:fail-pull",
            recover: true,
        },
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Kruise,
    Ours,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Kruise => "CloneSet InPlaceIfPossible",
            Side::Ours => "ours on a Deployment",
        }
    }
}

/// Which kubelet runs the pods.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Simulated,
    Real,
}

impl Node {
    fn from_env() -> AnyResult<Node> {
        match std::env::var("BENCH_NODE").as_deref() {
            Err(_) | Ok("" | "simulated") => Ok(Node::Simulated),
            Ok("real") => Ok(Node::Real),
            Ok(other) => {
                Err(format!("BENCH_NODE={other:?}: expected `simulated` or `real`").into())
            }
        }
    }
}

/// The parts to run: `BENCH_PARTS` (comma-separated) or the node's default.
fn parts(node: Node) -> AnyResult<Vec<String>> {
    const KNOWN: [&str; 4] = ["correctness", "performance", "webhook", "scale"];
    let default = match node {
        Node::Simulated => "correctness,performance",
        Node::Real => "correctness",
    };
    let spec = std::env::var("BENCH_PARTS").unwrap_or_else(|_| default.into());
    let parts: Vec<String> = spec
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(bad) = parts.iter().find(|p| !KNOWN.contains(&p.as_str())) {
        return Err(format!("BENCH_PARTS: unknown part {bad:?} (known: {KNOWN:?})").into());
    }
    Ok(parts)
}

/// The alias scenario's old spelling, pushed to the loopback registry for a real node.
const NGINX_LIBRARY: &str = "docker.io/library/nginx:1.25";
/// The test image it is (the app of the hello fixture: same ports, same probe).
const NGINX_SOURCE: &str = "fake.docker.io/google-samples/hello-go-gke:1.0";

async fn run() -> AnyResult<()> {
    let node = Node::from_env()?;
    let parts = parts(node)?;
    let replicas = knob("BENCH_REPLICAS", 20) as i32;
    let restart = Duration::from_millis(knob("BENCH_RESTART_MS", 1000));
    let grace = knob("BENCH_GRACE_S", 1);
    let limit = Duration::from_secs(knob("BENCH_LIMIT_S", 60));
    let kruise_dir = kruise_dir()?;
    let version = kruise_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let mut options = testenv::Options::default();
    options.kubelet.delays.restart = restart;
    if node == Node::Real {
        if !testenv::real_nodes_wanted()? {
            return Err("BENCH_NODE=real needs real nodes (root, Linux)".into());
        }
        options.real_nodes = 1;
        options.kubelet.nodes = 0;
        options.real.registry = true;
    }
    let delays = options.kubelet.delays;
    stamp("kruise bench start");
    let bench = Bench::start(options, true).await?;
    if node == Node::Real {
        push_alias(&bench)?;
    }
    let client = bench.client.clone();
    common::install(&client).await?;
    // Ours: BENCH_CONTROLLER (e.g. a release build when this bench runs as `--profile dev`)
    // or this build; see `support::binary_under_test`.
    let mut controller = bench.spawn_controller("controller.log", None).await?;
    let our_sync = controller.await_synced(Duration::from_secs(600)).await?;
    let mut kruise = Kruise::start(&bench, &kruise_dir).await?;
    let kruise_sync = kruise.await_ready(Duration::from_secs(600)).await?;
    eprintln!(
        "kruise-manager ready after {:.1} s; our controller synced after {:.1} s",
        kruise_sync.as_secs_f64(),
        our_sync.as_secs_f64()
    );

    let node_label = match node {
        Node::Simulated => format!(
            "simulated kubelet (restart {} ms, readiness {} ms)",
            restart.as_millis(),
            delays.readiness.as_millis()
        ),
        Node::Real => "one real node (kubelet v1.35.4 + containerd 1.6, test images imported, loopback registry)".to_string(),
    };
    println!();
    println!(
        "## OpenKruise {version} vs inplace-upgrade, {node_label}, load at start {}",
        load_average()
    );
    println!(
        "initial sync: kruise-manager {:.1} s (process start to /readyz 200 and its webhook configurations pointed at it), ours {:.1} s",
        kruise_sync.as_secs_f64(),
        our_sync.as_secs_f64()
    );

    if parts.iter().any(|p| p == "correctness") {
        let mut rows = Vec::new();
        for sc in scenarios() {
            let mut cells = Vec::new();
            for side in [Side::Kruise, Side::Ours] {
                stamp(&format!("{} / {}", sc.name, side.label()));
                let cell = match correctness(&bench, side, &sc, grace, limit).await {
                    Ok(c) => c,
                    Err(e) => format!("bench error: {e}"),
                };
                eprintln!("  {}: {cell}", side.label());
                cells.push(cell);
            }
            rows.push((sc.name, cells));
        }
        println!();
        println!(
            "### Correctness on the {} (3 replicas each; stuck = no verdict within {} s), load {}",
            match node {
                Node::Simulated => "simulated kubelet",
                Node::Real => "real node",
            },
            limit.as_secs(),
            load_average()
        );
        println!(
            "| scenario | {} | {} |",
            Side::Kruise.label(),
            Side::Ours.label()
        );
        println!("|---|---|---|");
        for (name, cells) in &rows {
            println!("| {name} | {} | {} |", cells[0], cells[1]);
        }
    }

    if parts.iter().any(|p| p == "performance") {
        let mut perf = Vec::new();
        for side in [Side::Kruise, Side::Ours] {
            stamp(&format!("performance / {}", side.label()));
            let pid = match side {
                Side::Kruise => kruise.child.id(),
                Side::Ours => controller.pid(),
            };
            perf.push(performance(&bench, side, pid, replicas, grace, limit * 4).await?);
        }
        let floor = (restart + delays.readiness + Duration::from_secs(grace)) * replicas as u32;
        println!();
        println!(
            "### Performance: {replicas} replicas one at a time, maxUnavailable 1, drain grace {grace} s; floor N x (restart + readiness + grace) = {:.1} s, load {}",
            floor.as_secs_f64(),
            load_average()
        );
        println!(
            "| | wall time | vs floor | writes per pod (all) | writes per pod (without Events) | controller CPU |"
        );
        println!("|---|---|---|---|---|---|");
        for (side, p) in [Side::Kruise, Side::Ours].iter().zip(&perf) {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} s ({:.0} ms/pod) |",
                side.label(),
                p.wall.map_or(
                    format!("not done in {} s", (limit * 4).as_secs()),
                    |w| format!("{:.1} s", w.as_secs_f64())
                ),
                p.wall.map_or("-".into(), |w| format!(
                    "{:.2}",
                    w.as_secs_f64() / floor.as_secs_f64()
                )),
                p.writes as f64 / replicas as f64,
                p.writes_no_events as f64 / replicas as f64,
                p.cpu,
                p.cpu * 1000.0 / replicas as f64
            );
        }
        for (side, p) in [Side::Kruise, Side::Ours].iter().zip(&perf) {
            println!(
                "{} writes by verb and resource: {:?}",
                side.label(),
                p.by_what
            );
        }
    }
    if parts.iter().any(|p| p == "webhook") {
        stamp("webhook cost");
        let kubeconfig = bench.controller_kubeconfig().await?;
        webhook_cost(
            &bench,
            &kubeconfig,
            knob("BENCH_WEBHOOK_PODS", 200) as usize,
            knob("BENCH_WEBHOOK_ROUNDS", 2).max(1),
        )
        .await?;
    }
    if parts.iter().any(|p| p == "scale") {
        let sizes: Vec<u64> = std::env::var("BENCH_SCALE_PODS")
            .unwrap_or_else(|_| "2500".into())
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("BENCH_SCALE_PODS: {e}"))?;
        let per = knob("BENCH_SCALE_REPLICAS", 25).max(1);
        let samples = scale(
            &bench,
            &kruise_dir,
            &mut kruise,
            &mut controller,
            &sizes,
            per,
        )
        .await?;
        println!();
        println!(
            "### At scale: pods that never schedule (Pending, marked Unschedulable), in workloads of {per} replicas of the hello fixture (half CloneSets, half Deployments under our policy, nothing rolling); each controller started afresh, one after the other, load {}",
            load_average()
        );
        println!(
            "| pods | controller | initial sync | CPU to sync | RSS at sync | RSS 10 s later | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|");
        for s in &samples {
            println!(
                "| {} | {} | {:.1} s | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                s.pods,
                match s.side {
                    Side::Kruise => "kruise-manager (to CloneSet workers)",
                    Side::Ours => "ours (to /readyz)",
                },
                s.sync.as_secs_f64(),
                s.cpu_at_sync,
                s.rss_at_sync,
                s.rss_later,
                s.peak
            );
        }
    }
    println!(
        "RSS after: kruise-manager {:.1} MiB (peak {:.1}), ours {:.1} MiB (peak {:.1})",
        proc_status(kruise.child.id(), "VmRSS:") / 1024.0,
        proc_status(kruise.child.id(), "VmHWM:") / 1024.0,
        controller.rss_mib(),
        controller.peak_rss_mib()
    );
    stamp("kruise bench end");
    Ok(())
}

/// Pushes the hello app's test image to the loopback registry as `docker.io/library/nginx:1.25`,
/// so the real node pulls the alias scenario's image for real (`nginx:1.25` is the same name
/// after docker's normalisation, so one push serves both spellings).
fn push_alias(bench: &Bench) -> AnyResult<()> {
    let registry = bench
        .env
        .registry()
        .ok_or("the real node runs no registry")?;
    let images = testenv::test_images()?;
    let source = images
        .get(NGINX_SOURCE)
        .ok_or(format!("{NGINX_SOURCE} is not in the test image set"))?;
    let tmp = bench.env.dir().join("skopeo-tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut skopeo = Command::new("skopeo");
    skopeo
        .args([
            "copy",
            "--quiet",
            "--insecure-policy",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!(
            "oci-archive:{}:{NGINX_SOURCE}",
            source.archive.display()
        ))
        .arg(format!("docker://{}", registry.reference(NGINX_LIBRARY)?))
        .env("TMPDIR", &tmp);
    common::run(skopeo)?;
    Ok(())
}

/// `KRUISE_DIR`, or what `tests/kruise/build.sh` prints (a no-op when its cache is warm).
fn kruise_dir() -> AnyResult<PathBuf> {
    if let Ok(d) = std::env::var("KRUISE_DIR") {
        return Ok(PathBuf::from(d));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kruise/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status).into());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// kruise-manager as its own process; killed when dropped.
struct Kruise {
    child: Child,
    health: u16,
    started: Instant,
    log: PathBuf,
    client: Client,
}

impl Kruise {
    async fn start(bench: &Bench, dir: &Path) -> AnyResult<Kruise> {
        let run = |args: &[&str]| -> AnyResult<()> {
            let mut c = bench.env.kubectl();
            c.args(args);
            common::run(c)?;
            Ok(())
        };
        run(&["create", "namespace", KRUISE_NS])?;
        let crds = dir.join("crds");
        run(&["apply", "--server-side", "-f", &crds.display().to_string()])?;
        run(&[
            "apply",
            "--server-side",
            "-f",
            &dir.join("webhook.yaml").display().to_string(),
        ])?;
        run(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=120s",
        ])?;
        Kruise::spawn(bench, dir, "kruise-manager.log").await
    }

    /// Another kruise-manager process (after [`Kruise::start`] installed what it needs),
    /// logging to `logs/<log>`.
    async fn spawn(bench: &Bench, dir: &Path, log: &str) -> AnyResult<Kruise> {
        let kubeconfig = bench
            .service_account_kubeconfig(KRUISE_NS, "kruise-manager")
            .await?;
        let port = |_: ()| -> AnyResult<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (webhook, health, metrics) = (port(())?, port(())?, port(())?);
        let certs = bench.env.dir().join("kruise-certs");
        let log = bench.env.dir().join("logs").join(log);
        let started = Instant::now();
        let mut command = Command::new(dir.join("bin/kruise-manager"));
        // Dies with the bench even when the bench is killed by a signal (Drop does not run
        // then). The signal fires when the forking thread exits: a runtime worker thread,
        // which lives as long as the runtime.
        // SAFETY: only prctl, async-signal-safe, runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args([
                "--enable-leader-election=false",
                "--enable-pprof=false",
                &format!("--metrics-addr=127.0.0.1:{metrics}"),
                &format!("--health-probe-addr=127.0.0.1:{health}"),
                &format!("--kubeconfig={}", kubeconfig.display()),
                "--v=2",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", KRUISE_NS)
            .env("WEBHOOK_HOST", "127.0.0.1")
            .env("WEBHOOK_PORT", webhook.to_string())
            .env("WEBHOOK_CERT_DIR", &certs)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Kruise {
            child,
            health,
            started,
            log,
            client: bench.client.clone(),
        })
    }

    /// Until its CloneSet controller starts its workers (controller-runtime does so once
    /// the informers of that controller have synced: every pod, CloneSet, revision and PVC
    /// listed) and `/readyz` answers 200: the time from the process start.
    async fn await_cloneset_workers(&mut self, limit: Duration) -> AnyResult<Duration> {
        self.await_ready(limit).await?;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().any(|l| {
                l.contains("\"Starting workers\"") && l.contains("\"cloneset-controller\"")
            }) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "kruise-manager exited ({status}); see {}",
                    self.log.display()
                )
                .into());
            }
            if self.started.elapsed() > limit {
                return Err(format!(
                    "kruise-manager's CloneSet controller did not start within {limit:?}; see {}",
                    self.log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Until `/readyz` answers 200 and the pod webhook points at a URL (the manager patched
    /// its configuration): the time from the process start.
    async fn await_ready(&mut self, limit: Duration) -> AnyResult<Duration> {
        let mutating: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk(&GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
            )),
        );
        loop {
            let ready = common::admin_get(([127, 0, 0, 1], self.health).into(), "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200);
            if ready
                && let Ok(m) = mutating.get("kruise-mutating-webhook-configuration").await
                && m.data["webhooks"]
                    .as_array()
                    .is_some_and(|w| w.iter().all(|w| w["clientConfig"]["url"].is_string()))
            {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "kruise-manager exited ({status}); see {}",
                    self.log.display()
                )
                .into());
            }
            if self.started.elapsed() > limit {
                return Err(format!(
                    "kruise-manager not ready within {limit:?}; see {}",
                    self.log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Kruise {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clonesets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "apps.kruise.io",
            "v1alpha1",
            "CloneSet",
        )),
    )
}

/// The fixture's Deployment with `replicas`, the container's image set to `from` (if given).
fn workload(sc: &Scenario, replicas: i32, gated: bool) -> AnyResult<Value> {
    let d: Deployment = common::fixture_workload(sc.fixture, "Deployment", Some(replicas), gated)?;
    let mut d = serde_json::to_value(d)?;
    if let Some(from) = sc.from {
        set_image(&mut d["spec"]["template"], sc.container, from)?;
    }
    Ok(d)
}

fn set_image(template: &mut Value, container: &str, image: &str) -> AnyResult<()> {
    for list in ["containers", "initContainers"] {
        if let Some(cs) = template["spec"][list].as_array_mut()
            && let Some(c) = cs.iter_mut().find(|c| c["name"] == container)
        {
            c["image"] = json!(image);
            return Ok(());
        }
    }
    Err(format!("no container {container} in the template").into())
}

/// Creates the workload for `side` in a fresh namespace and waits until its pods are Ready.
/// Returns the namespace, the workload's name and the pods' `app` label.
async fn create(
    bench: &Bench,
    side: Side,
    sc: &Scenario,
    replicas: i32,
    grace: u64,
    prefix: &str,
) -> AnyResult<(String, String, String)> {
    let client = &bench.client;
    let ns = bench.env.namespace(prefix).await?;
    let d = workload(sc, replicas, side == Side::Ours)?;
    let name = d["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let app = d["spec"]["selector"]["matchLabels"]["app"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    common::create_service(client, &ns, &app).await?;
    // The injected pods mount it; a real kubelet does not start them without it.
    common::create_istio_ca_configmap(client, &ns).await?;
    match side {
        Side::Ours => {
            common::create_policy(
                client,
                &ns,
                json!({"drain": {"gracePeriodSeconds": grace, "timeoutSeconds": 60}, "maxUnavailable": 1}),
            )
            .await?;
            let api = Api::<Deployment>::namespaced(client.clone(), &ns);
            api.create(&PostParams::default(), &serde_json::from_value(d)?)
                .await?;
        }
        Side::Kruise => {
            let cs = json!({
                "apiVersion": "apps.kruise.io/v1alpha1",
                "kind": "CloneSet",
                "metadata": {"name": name, "labels": d["metadata"]["labels"]},
                "spec": {
                    "replicas": replicas,
                    "selector": d["spec"]["selector"],
                    "template": d["spec"]["template"],
                    "updateStrategy": {
                        "type": "InPlaceIfPossible",
                        "maxUnavailable": 1,
                        "inPlaceUpdateStrategy": {"gracePeriodSeconds": grace},
                    },
                },
            });
            clonesets(client, &ns)
                .create(&PostParams::default(), &serde_json::from_value(cs)?)
                .await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120 + replicas as u64 * 3);
    loop {
        let pods = pods(client, &ns, &app).await?;
        if pods.len() == replicas as usize && pods.values().all(common::is_ready) {
            return Ok((ns, name, app));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{ns}: {} of {replicas} pods Ready after {} s",
                pods.values().filter(|p| common::is_ready(p)).count(),
                (120 + replicas * 3)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pods of `app` that are not being deleted, by name.
async fn pods(client: &Client, ns: &str, app: &str) -> AnyResult<BTreeMap<String, Pod>> {
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect())
}

/// Writes the change: the CloneSet's template, or our annotation.
async fn change(
    client: &Client,
    side: Side,
    ns: &str,
    name: &str,
    container: &str,
    image: &str,
    target: &str,
) -> AnyResult<()> {
    match side {
        Side::Kruise => {
            let api = clonesets(client, ns);
            let mut cs = api.get(name).await?;
            set_image(&mut cs.data["spec"]["template"], container, image)?;
            api.replace(name, &PostParams::default(), &cs).await?;
        }
        Side::Ours => {
            let api = Api::<Deployment>::namespaced(client.clone(), ns);
            common::annotate(&api, name, inplace_upgrade::TARGETS_ANNOTATION, target).await?;
        }
    }
    Ok(())
}

/// Each side's own verdict: `Some(text)` once it says it is done (or failed).
async fn verdict(client: &Client, side: Side, ns: &str, name: &str) -> AnyResult<Option<String>> {
    match side {
        Side::Kruise => {
            let cs = clonesets(client, ns).get(name).await?;
            let st = &cs.data["status"];
            let n = |k: &str| st[k].as_i64().unwrap_or(0);
            let generation = cs.metadata.generation.unwrap_or(0);
            let replicas = cs.data["spec"]["replicas"].as_i64().unwrap_or(0);
            Ok((n("observedGeneration") >= generation
                && n("updatedReplicas") == replicas
                && n("updatedReadyReplicas") == replicas)
                .then(|| {
                    format!(
                        "CloneSet updatedReady {}/{replicas}",
                        n("updatedReadyReplicas")
                    )
                }))
        }
        Side::Ours => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await?;
            let st = common::workload_status(d.annotations());
            let phase = st
                .as_ref()
                .and_then(|s| s["phase"].as_str())
                .unwrap_or("")
                .to_string();
            Ok(matches!(
                phase.as_str(),
                "Completed" | "Failed" | "Blocked" | "Invalid"
            )
            .then(|| format!("phase {phase}")))
        }
    }
}

/// The CloneSet's status counters or our status record, for a stuck rollout.
async fn progress(client: &Client, side: Side, ns: &str, name: &str) -> String {
    match side {
        Side::Kruise => match clonesets(client, ns).get(name).await {
            Ok(cs) => {
                let st = &cs.data["status"];
                format!(
                    "CloneSet updated {} updatedReady {} ready {}",
                    st["updatedReplicas"], st["updatedReadyReplicas"], st["readyReplicas"]
                )
            }
            Err(e) => e.to_string(),
        },
        Side::Ours => match Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await
        {
            Ok(d) => common::workload_status(d.annotations()).map_or("no status".into(), |s| {
                format!(
                    "phase {} ({})",
                    s["phase"],
                    s["message"].as_str().unwrap_or("")
                )
            }),
            Err(e) => e.to_string(),
        },
    }
}

/// What the pods show against `before`: recreated or kept, restarts of `container`, Ready,
/// the image in the spec, and what the runtime reported for the container: its status
/// `image` (distinct values) and in how many kept pods its `imageID` moved.
fn compare(
    before: &BTreeMap<String, Pod>,
    after: &BTreeMap<String, Pod>,
    container: &str,
    to: &str,
) -> String {
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    let restarts = |p: &Pod| common::status_of(p, container).map_or(0, |c| c.restart_count);
    let image_id = |p: &Pod| common::status_of(p, container).map(|c| c.image_id.clone());
    let by_uid: BTreeMap<String, &Pod> = before.values().map(|p| (uid(p), p)).collect();
    let (mut kept, mut same_ip, mut restarted, mut id_moved) = (0, 0, 0, 0);
    for p in after.values() {
        if let Some(b) = by_uid.get(&uid(p)) {
            kept += 1;
            same_ip += usize::from(ip(p) == ip(b));
            restarted += usize::from(restarts(p) > restarts(b));
            id_moved += usize::from(image_id(p) != image_id(b));
        }
    }
    let ready = after.values().filter(|p| common::is_ready(p)).count();
    let on_new = after
        .values()
        .filter(|p| common::spec_image(p, container).as_deref() == Some(to))
        .count();
    let status_images: std::collections::BTreeSet<String> = after
        .values()
        .filter_map(|p| common::status_of(p, container).map(|c| c.image.clone()))
        .collect();
    let n = after.len();
    let recreated = before.len() - kept;
    format!(
        "{} {recreated}/{} recreated, UID kept {kept}, IP kept {same_ip}, {container} restarted in {restarted}, spec on `{}` {on_new}/{n}, Ready {ready}/{n}; status image {}, imageID moved in {id_moved}/{kept}",
        if recreated == 0 {
            "in place:"
        } else {
            "RECREATED:"
        },
        before.len(),
        to.rsplit('/').next().unwrap_or(to),
        status_images
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Runs one scenario on one side (3 replicas) and describes what the API showed.
async fn correctness(
    bench: &Bench,
    side: Side,
    sc: &Scenario,
    grace: u64,
    limit: Duration,
) -> AnyResult<String> {
    let client = &bench.client;
    let prefix = match side {
        Side::Kruise => "kruise",
        Side::Ours => "ours",
    };
    let (ns, name, app) = create(bench, side, sc, 3, grace, prefix).await?;
    let before = pods(client, &ns, &app).await?;
    let from = common::spec_image(before.values().next().ok_or("no pods")?, sc.container)
        .ok_or("no such container")?;
    change(client, side, &ns, &name, sc.container, sc.to, sc.target).await?;
    let t0 = Instant::now();
    let mut said = None;
    while t0.elapsed() < limit {
        if let Some(v) = verdict(client, side, &ns, &name).await? {
            said = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    let mut after = pods(client, &ns, &app).await?;
    // A real kubelet reports `Ready` after it sees the readiness gate's condition: the
    // verdict may come first. How long until every pod is Ready, if it is within the limit.
    let mut ready_later = String::new();
    if said.is_some() && !after.values().all(common::is_ready) {
        let t1 = Instant::now();
        while t1.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = pods(client, &ns, &app).await?;
            if after.values().all(common::is_ready) {
                ready_later = format!(" (all Ready {:.1} s later)", t1.elapsed().as_secs_f64());
                break;
            }
        }
        if ready_later.is_empty() {
            ready_later = format!(" (NOT all Ready {} s later)", limit.as_secs());
        }
    }
    let mut cell = match &said {
        Some(v) => format!("{v} after {took:.1} s{ready_later}; "),
        None => format!(
            "STUCK: no verdict after {took:.0} s ({}); ",
            progress(client, side, &ns, &name).await
        ),
    };
    cell += &compare(&before, &after, sc.container, sc.to);
    if sc.recover {
        let target = format!("{}={from}", sc.container);
        change(client, side, &ns, &name, sc.container, &from, &target).await?;
        let t1 = Instant::now();
        let mut back = false;
        while t1.elapsed() < limit {
            let now = pods(client, &ns, &app).await?;
            if now.len() == before.len()
                && now.values().all(|p| {
                    common::is_ready(p)
                        && common::spec_image(p, sc.container).as_deref() == Some(&from)
                })
            {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let now = pods(client, &ns, &app).await?;
        cell += &format!(
            "; old image back: {} after {:.1} s ({})",
            if back { "all Ready" } else { "NOT all Ready" },
            t1.elapsed().as_secs_f64(),
            compare(&before, &now, sc.container, &from)
        );
    }
    // Frees the node for the next scenario (a real node holds few pods).
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await?;
    Ok(cell)
}

struct Perf {
    wall: Option<Duration>,
    writes: usize,
    writes_no_events: usize,
    cpu: f64,
    by_what: BTreeMap<String, usize>,
}

/// The 20-replica rollout on one side: from the change to every pod Ready with the new image
/// in its spec and the container running it.
async fn performance(
    bench: &Bench,
    side: Side,
    pid: u32,
    replicas: i32,
    grace: u64,
    limit: Duration,
) -> AnyResult<Perf> {
    let client = &bench.client;
    let sc = &scenarios()[0];
    let prefix = match side {
        Side::Kruise => "perf-kruise",
        Side::Ours => "perf-ours",
    };
    let (ns, name, app) = create(bench, side, sc, replicas, grace, prefix).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = bench.audit.mark();
    let cpu0 = cpu_seconds(pid);
    change(client, side, &ns, &name, sc.container, sc.to, sc.target).await?;
    let t0 = Instant::now();
    let mut wall = None;
    while t0.elapsed() < limit {
        let now = pods(client, &ns, &app).await?;
        if now.len() == replicas as usize
            && now.values().all(|p| {
                common::is_ready(p)
                    && common::status_of(p, sc.container)
                        .is_some_and(|c| c.ready && c.image == sc.to)
            })
        {
            wall = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The verdict write (CloneSet status, our status record) may trail the pods.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10)
        && verdict(client, side, &ns, &name).await?.is_none()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu0;
    let user = match side {
        Side::Kruise => KRUISE_USER,
        Side::Ours => CONTROLLER_USER,
    };
    let events = bench.audit.since(mark)?;
    let mine: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.user.username == user && e.is_write())
        .collect();
    Ok(Perf {
        wall,
        writes: mine.len(),
        writes_no_events: mine
            .iter()
            .filter(|e| e.resource() != "events" && e.resource() != "leases")
            .count(),
        cpu,
        by_what: by_what(mine.iter().copied()),
    })
}

/// Which pod webhooks the API server calls during a webhook-cost batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Registered {
    None,
    Kruise,
    Ours,
}

impl Registered {
    fn label(self) -> &'static str {
        match self {
            Registered::None => "no webhook (baseline)",
            Registered::Kruise => "Kruise's webhooks",
            Registered::Ours => "our webhooks",
        }
    }
}

/// Sums and counts of one histogram's series whose labels include all of `labels`, from
/// kube-apiserver's `/metrics`.
fn histogram_totals(metrics: &str, name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
    let (mut sum, mut count) = (0.0, 0.0);
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let slot = if metric == format!("{name}_sum") {
            &mut sum
        } else if metric == format!("{name}_count") {
            &mut count
        } else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *slot += value;
        }
    }
    (sum, count)
}

async fn apiserver_metrics(client: &Client) -> AnyResult<String> {
    Ok(client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?)
}

/// What one batch of dry-run creations cost: the client's latencies, and from the API
/// server's metrics the request's own duration and the admission webhooks' (sum, count).
#[derive(Default)]
struct WebhookCost {
    client_ms: Vec<f64>,
    request: (f64, f64),
    webhooks: (f64, f64),
}

const REQUEST_DURATION: &str = "apiserver_request_duration_seconds";
const WEBHOOK_DURATION: &str = "apiserver_admission_webhook_admission_duration_seconds";

/// `count` dry-run creations of `template`, one after another.
async fn create_batch(
    client: &Client,
    pods: &Api<Pod>,
    template: &Value,
    count: usize,
    into: &mut WebhookCost,
) -> AnyResult<()> {
    let request_labels = [("verb", "POST"), ("resource", "pods"), ("dry_run", "All")];
    let webhook_labels = [("operation", "CREATE")];
    let before = apiserver_metrics(client).await?;
    for i in 0..count {
        let mut pod = template.clone();
        pod["metadata"]["name"] = json!(format!("cost-{i}"));
        let pod: Pod = serde_json::from_value(pod)?;
        let t = Instant::now();
        pods.create(&dry_run(), &pod).await?;
        into.client_ms.push(ms(t.elapsed()));
    }
    let after = apiserver_metrics(client).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        let (s1, c1) = histogram_totals(&after, name, labels);
        let (s0, c0) = histogram_totals(&before, name, labels);
        (s1 - s0, c1 - c0)
    };
    let r = delta(REQUEST_DURATION, &request_labels);
    let w = delta(WEBHOOK_DURATION, &webhook_labels);
    into.request = (into.request.0 + r.0, into.request.1 + r.1);
    into.webhooks = (into.webhooks.0 + w.0, into.webhooks.1 + w.1);
    Ok(())
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Kruise's webhook configurations as its manager left them (pointed at it, its CA), and ours;
/// swapped in and out for each batch.
struct WebhookSets {
    kruise: (MutatingWebhookConfiguration, ValidatingWebhookConfiguration),
    ours: (MutatingWebhookConfiguration, ValidatingWebhookConfiguration),
}

fn fresh<K: kube::Resource>(mut object: K) -> K {
    let m = object.meta_mut();
    m.resource_version = None;
    m.uid = None;
    m.creation_timestamp = None;
    m.generation = None;
    m.managed_fields = None;
    object
}

/// Admission webhook calls so far, by whose webhook: (Kruise's `*.kb.io`, ours
/// `*.inplace-upgrade.io`), from kube-apiserver's metrics.
fn webhook_calls(metrics: &str) -> (f64, f64) {
    let prefix = format!("{WEBHOOK_DURATION}_count{{");
    let (mut kruise, mut ours) = (0.0, 0.0);
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let name = labels
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or("");
        if name.ends_with(".kb.io") {
            kruise += value;
        } else if name.ends_with(".inplace-upgrade.io") {
            ours += value;
        }
    }
    (kruise, ours)
}

/// Registers exactly `which`, then probes with dry-run creations until the API server acts
/// on it (its webhook informer lags the write): the probes reach that side's webhooks and not
/// the other's, by the API server's own count of webhook calls.
async fn register(
    client: &Client,
    pods: &Api<Pod>,
    templates: &[(Side, Value)],
    sets: &WebhookSets,
    which: Registered,
) -> AnyResult<()> {
    delete_configurations(client, "kruise-mutating-webhook-configuration").await?;
    delete_configurations(client, "kruise-validating-webhook-configuration").await?;
    delete_configurations(
        client,
        &sets.ours.0.metadata.name.clone().unwrap_or_default(),
    )
    .await?;
    let set = match which {
        Registered::None => None,
        Registered::Kruise => Some(&sets.kruise),
        Registered::Ours => Some(&sets.ours),
    };
    if let Some((m, v)) = set {
        common::create_webhook_configurations(client, &fresh(m.clone()), &fresh(v.clone())).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for probe in 0.. {
        let before = webhook_calls(&apiserver_metrics(client).await?);
        for (_, template) in templates {
            let mut pod = template.clone();
            pod["metadata"]["name"] = json!(format!("probe-{probe}"));
            pods.create(&dry_run(), &serde_json::from_value(pod)?)
                .await?;
        }
        let after = webhook_calls(&apiserver_metrics(client).await?);
        let (kruise, ours) = (after.0 > before.0, after.1 > before.1);
        if kruise == (which == Registered::Kruise) && ours == (which == Registered::Ours) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after 60 s the API server does not act as with {} (Kruise's webhooks called: {kruise}, ours: {ours})",
                which.label()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Webhook cost per pod CREATE as the API server sees it: in one namespace governed by our
/// policy, a CloneSet and our annotated Deployment (0 replicas each); the pods their
/// controllers would create (owned by the CloneSet / by the Deployment's ReplicaSet) are
/// created with `dryRun=All`, `pods` of each per batch, with no webhook, Kruise's (as its
/// manager registered them: every pod CREATE in every namespace) or ours, in turn, `rounds`
/// times. Prints per configuration and pod: the client's median and p99, the API server's
/// mean request duration, webhook calls per pod and their mean duration.
async fn webhook_cost(
    bench: &Bench,
    controller_kubeconfig: &Path,
    pods_per_batch: usize,
    rounds: u64,
) -> AnyResult<()> {
    let client = &bench.client;
    let ns = bench.env.namespace("webhook-cost").await?;
    common::create_policy(client, &ns, json!({})).await?;
    // Our pod webhook is called only in namespaces labelled governed, which our controller
    // does; none may run in this part, so the label is set here as the controller would
    // (server-side apply under its field manager).
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::apply(inplace_upgrade::NAMESPACE_FIELD_MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {inplace_upgrade::GOVERNED_LABEL: "true"}}})),
        )
        .await?;
    let sc = &scenarios()[0];
    // Not gated: our webhook injects the readiness gate (the probe looks for it).
    let mut d = workload(sc, 0, false)?;
    d["metadata"]["annotations"][inplace_upgrade::TARGETS_ANNOTATION] = json!(sc.target);
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(d.clone())?)
        .await?;
    let cs = clonesets(client, &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps.kruise.io/v1alpha1",
                "kind": "CloneSet",
                "metadata": {"name": deployment.name_any(), "labels": d["metadata"]["labels"]},
                "spec": {
                    "replicas": 0,
                    "selector": d["spec"]["selector"],
                    "template": workload(sc, 0, false)?["spec"]["template"],
                    "updateStrategy": {"type": "InPlaceIfPossible", "maxUnavailable": 1},
                },
            }))?,
        )
        .await?;
    let rs = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await?;
            if let Some(rs) = list.items.into_iter().next() {
                break rs;
            }
            if Instant::now() > deadline {
                return Err("no ReplicaSet for the Deployment within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let owned = |template: &Value, api_version: &str, kind: &str, name: String, uid: String| {
        let mut pod =
            json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true,
        }]);
        pod
    };
    let rs_template = serde_json::to_value(
        rs.spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .ok_or("the ReplicaSet has no template")?,
    )?;
    let templates = vec![
        (
            Side::Kruise,
            owned(
                &cs.data["spec"]["template"],
                "apps.kruise.io/v1alpha1",
                "CloneSet",
                cs.name_any(),
                cs.uid().unwrap_or_default(),
            ),
        ),
        (
            Side::Ours,
            owned(
                &rs_template,
                "apps/v1",
                "ReplicaSet",
                rs.name_any(),
                rs.uid().unwrap_or_default(),
            ),
        ),
    ];

    // Ours: `inplace-upgrade webhook` as its own process on a loopback port with a CA of
    // the bench's, registered as `inplace-upgrade webhook` registers itself.
    let ca = certs::generate_ca("kruise bench CA", Duration::from_secs(24 * 3600))?;
    let names = SubjectAltNames::default().with_ip_address([127, 0, 0, 1].into());
    let serving =
        certs::generate_serving_certificate(&ca, "127.0.0.1", &names, Duration::from_secs(3600))?;
    let cert_dir = bench.env.dir().join("webhook-tls");
    inplace_upgrade::serve::write_secret_dir(
        &cert_dir,
        &[
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
        ],
    )?;
    let port = common::free_port()?;
    // The controller's binary (`BENCH_CONTROLLER` or this build), privately copied.
    let mut webhook = common::WebhookProcess::start(
        &controller_binary()?,
        controller_kubeconfig,
        &cert_dir,
        port,
        bench.env.dir().join("logs/webhook.log"),
    )?;
    webhook.await_ready().await?;
    let ours = configuration::webhook_configurations(&ConfigurationOptions {
        endpoint: Endpoint::Url(format!("https://127.0.0.1:{port}")),
        ca_bundle: Some(ca.cert_pem.clone().into_bytes()),
        own_namespace: common::CONTROLLER_NAMESPACE.into(),
        cert_manager_certificate: None,
    });
    let kruise = (
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get("kruise-mutating-webhook-configuration")
            .await?,
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .get("kruise-validating-webhook-configuration")
            .await?,
    );
    let sets = WebhookSets { kruise, ours };
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let order = [Registered::None, Registered::Kruise, Registered::Ours];
    let mut results: BTreeMap<(usize, usize), WebhookCost> = BTreeMap::new();
    for round in 0..rounds {
        for (w, which) in order.iter().enumerate() {
            register(client, &pods, &templates, &sets, *which).await?;
            stamp(&format!(
                "webhook cost round {} / {}",
                round + 1,
                which.label()
            ));
            for (t, (_, template)) in templates.iter().enumerate() {
                create_batch(
                    client,
                    &pods,
                    template,
                    pods_per_batch,
                    results.entry((w, t)).or_default(),
                )
                .await?;
            }
        }
    }
    // Kruise's configurations back, for whatever runs next.
    register(client, &pods, &templates, &sets, Registered::Kruise).await?;
    println!();
    println!(
        "### Webhook cost per pod CREATE as the API server sees it (dryRun=All, {pods_per_batch} creations one after another per batch, {rounds} rounds alternating the configurations), load {}",
        load_average()
    );
    println!(
        "| webhooks registered | pod owned by | client p50 ms | client p99 ms | API server request mean ms | added vs baseline ms | webhook calls per pod | webhook mean ms per call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mean = |(sum, count): (f64, f64)| if count > 0.0 { sum / count * 1e3 } else { 0.0 };
    for (w, which) in order.iter().enumerate() {
        for (t, (side, _)) in templates.iter().enumerate() {
            let r = &results[&(w, t)];
            let base = mean(results[&(0, t)].request);
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:+.2} | {:.2} | {} |",
                which.label(),
                match side {
                    Side::Kruise => "a CloneSet",
                    Side::Ours => "our Deployment's ReplicaSet",
                },
                percentile(&r.client_ms, 50.0),
                percentile(&r.client_ms, 99.0),
                mean(r.request),
                mean(r.request) - base,
                r.webhooks.1 / r.client_ms.len().max(1) as f64,
                if r.webhooks.1 > 0.0 {
                    format!("{:.2}", mean(r.webhooks))
                } else {
                    "-".into()
                },
            );
        }
    }
    if let Some(status) = webhook.child.try_wait()? {
        return Err(format!("our webhook exited during the run ({status})").into());
    }
    Ok(())
}

/// `PodScheduled=False` (`Unschedulable`): the binder has looked at the pod and left it.
fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
}

/// The scale part's pods, and how many of them the binder has marked unschedulable.
async fn count_ready(client: &Client) -> AnyResult<(u64, u64)> {
    let api = Api::<Pod>::all(client.clone());
    let mut params = ListParams::default().labels("bench-scale=1").limit(500);
    let (mut pods, mut ready) = (0, 0);
    loop {
        let page = api.list(&params).await?;
        pods += page.items.len() as u64;
        ready += page.items.iter().filter(|p| unschedulable(p)).count() as u64;
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => return Ok((pods, ready)),
        }
    }
}

/// One controller's start in the scale part.
struct ScaleSample {
    side: Side,
    pods: u64,
    sync: Duration,
    cpu_at_sync: f64,
    rss_at_sync: f64,
    rss_later: f64,
    peak: f64,
}

/// At scale: grows the cluster to each size in `sizes` (pods in workloads of `per` replicas
/// of the hello fixture, half CloneSets and half Deployments under our policy, 100 workloads
/// per namespace, nothing rolling; pods that never schedule, see below), waits until every
/// pod exists and the binder has marked it unschedulable, then starts each controller afresh, one after the other, and measures its
/// initial sync (ours: process start to `/readyz`; kruise-manager: to its CloneSet
/// controller's workers, which controller-runtime starts once that controller's informers
/// have listed everything), its CPU until then, and its RSS at sync and 10 s later.
async fn scale(
    bench: &Bench,
    kruise_dir: &Path,
    kruise: &mut Kruise,
    controller: &mut Controller,
    sizes: &[u64],
    per: u64,
) -> AnyResult<Vec<ScaleSample>> {
    let client = &bench.client;
    let sc = &scenarios()[0];
    let mut samples = Vec::new();
    let mut workloads = 0u64;
    let mut namespace = String::new();
    for &size in sizes {
        stamp(&format!("scale: growing to {size} pods"));
        while workloads * per < size {
            if workloads.is_multiple_of(100) {
                namespace = bench.env.namespace("scale").await?;
                common::create_policy(client, &namespace, json!({})).await?;
            }
            let side = if workloads.is_multiple_of(2) {
                Side::Kruise
            } else {
                Side::Ours
            };
            let name = format!("w{workloads}");
            let mut d = workload(sc, per as i32, false)?;
            d["metadata"]["name"] = json!(name);
            d["spec"]["selector"]["matchLabels"] = json!({"app": name});
            d["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
            d["spec"]["template"]["metadata"]["labels"]["bench-scale"] = json!("1");
            // Pods that never schedule: no node has this label, so the binder marks each
            // `Unschedulable` once and nothing changes them after (the debug build of the
            // simulated kubelet cannot bring thousands of pods to Ready in useful time here).
            d["spec"]["template"]["spec"]["nodeSelector"] =
                json!({"bench.inplace-upgrade.io/no-such-node": "true"});
            match side {
                Side::Ours => {
                    Api::<Deployment>::namespaced(client.clone(), &namespace)
                        .create(&PostParams::default(), &serde_json::from_value(d)?)
                        .await?;
                }
                Side::Kruise => {
                    let cs = json!({
                        "apiVersion": "apps.kruise.io/v1alpha1",
                        "kind": "CloneSet",
                        "metadata": {"name": name},
                        "spec": {
                            "replicas": per,
                            "selector": d["spec"]["selector"],
                            "template": d["spec"]["template"],
                            "updateStrategy": {"type": "InPlaceIfPossible", "maxUnavailable": 1},
                        },
                    });
                    clonesets(client, &namespace)
                        .create(&PostParams::default(), &serde_json::from_value(cs)?)
                        .await?;
                }
            }
            workloads += 1;
        }
        let limit = Duration::from_secs(knob("BENCH_SCALE_WAIT_S", 1800));
        let t0 = Instant::now();
        loop {
            // Transient errors of a loaded API server are retried until the limit.
            match count_ready(client).await {
                Ok((pods, ready)) => {
                    eprintln!(
                        "  {pods} pods, {ready} marked unschedulable ({:.0} s)",
                        t0.elapsed().as_secs_f64()
                    );
                    if pods >= workloads * per && ready >= workloads * per {
                        break;
                    }
                }
                Err(e) => eprintln!("  counting pods: {e}; retrying"),
            }
            if t0.elapsed() > limit {
                return Err(
                    format!("not all {} pods Ready after {limit:?}", workloads * per).into(),
                );
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let pods = workloads * per;
        stamp(&format!("scale: {pods} pods in place; restarting ours"));
        controller.stop();
        *controller = bench
            .spawn_controller(&format!("controller-{pods}.log"), None)
            .await?;
        let sync = controller.await_synced(Duration::from_secs(600)).await?;
        let (cpu_at_sync, rss_at_sync) = (controller.cpu_seconds(), controller.rss_mib());
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push(ScaleSample {
            side: Side::Ours,
            pods,
            sync,
            cpu_at_sync,
            rss_at_sync,
            rss_later: controller.rss_mib(),
            peak: controller.peak_rss_mib(),
        });
        stamp(&format!("scale: {pods} pods; restarting kruise-manager"));
        let _ = kruise.child.kill();
        let _ = kruise.child.wait();
        *kruise = Kruise::spawn(bench, kruise_dir, &format!("kruise-manager-{pods}.log")).await?;
        let sync = kruise
            .await_cloneset_workers(Duration::from_secs(600))
            .await?;
        let pid = kruise.child.id();
        let (cpu_at_sync, rss_at_sync) = (cpu_seconds(pid), proc_status(pid, "VmRSS:") / 1024.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push(ScaleSample {
            side: Side::Kruise,
            pods,
            sync,
            cpu_at_sync,
            rss_at_sync,
            rss_later: proc_status(pid, "VmRSS:") / 1024.0,
            peak: proc_status(pid, "VmHWM:") / 1024.0,
        });
        for s in samples.iter().rev().take(2) {
            eprintln!(
                "  {}: sync {:.1} s, CPU {:.1} s, RSS {:.1} MiB, 10 s later {:.1} MiB",
                s.side.label(),
                s.sync.as_secs_f64(),
                s.cpu_at_sync,
                s.rss_at_sync,
                s.rss_later
            );
        }
    }
    Ok(samples)
}
