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
//! Knobs (environment): BENCH_REPLICAS (20), BENCH_RESTART_MS (1000), BENCH_GRACE_S (1),
//! BENCH_LIMIT_S (60: how long a scenario may take before it is reported stuck),
//! KRUISE_DIR (default: the directory `tests/kruise/build.sh` prints), BENCH_CONTROLLER (our
//! binary to run instead of the one cargo built for this bench).
//! Run: `cargo bench -p inplace-upgrade --bench kruise`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
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

async fn run() -> AnyResult<()> {
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
    let delays = options.kubelet.delays;
    stamp("kruise bench start");
    let bench = Bench::start(options, true).await?;
    let client = bench.client.clone();
    common::install(&client).await?;
    // BENCH_CONTROLLER: another build of ours (e.g. a release build when this bench runs
    // under `cargo test --bench kruise`, whose own build is a debug one).
    let variant = std::env::var("BENCH_CONTROLLER").ok().map(|b| Variant {
        label: "BENCH_CONTROLLER".into(),
        binary: Some(PathBuf::from(b)),
        env: Vec::new(),
    });
    let mut controller = bench
        .spawn_controller("controller.log", variant.as_ref())
        .await?;
    let our_sync = controller.await_synced(Duration::from_secs(600)).await?;
    let mut kruise = Kruise::start(&bench, &kruise_dir).await?;
    let kruise_sync = kruise.await_ready(Duration::from_secs(600)).await?;
    eprintln!(
        "kruise-manager ready after {:.1} s; our controller synced after {:.1} s",
        kruise_sync.as_secs_f64(),
        our_sync.as_secs_f64()
    );

    // Correctness.
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

    // Performance.
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
        "## OpenKruise {version} vs inplace-upgrade, simulated kubelet (restart {} ms, readiness {} ms), load {}",
        restart.as_millis(),
        delays.readiness.as_millis(),
        load_average()
    );
    println!(
        "initial sync: kruise-manager {:.1} s (process start to /readyz 200 and its webhook configurations pointed at it), ours {:.1} s",
        kruise_sync.as_secs_f64(),
        our_sync.as_secs_f64()
    );
    println!();
    println!(
        "### Correctness (3 replicas each; stuck = no verdict within {} s)",
        limit.as_secs()
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
    println!();
    println!(
        "### Performance: {replicas} replicas one at a time, maxUnavailable 1, drain grace {grace} s; floor N x (restart + readiness + grace) = {:.1} s",
        floor.as_secs_f64()
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
        let log = bench.env.dir().join("logs").join("kruise-manager.log");
        let started = Instant::now();
        let child = Command::new(dir.join("bin/kruise-manager"))
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
/// the image in the spec.
fn compare(
    before: &BTreeMap<String, Pod>,
    after: &BTreeMap<String, Pod>,
    container: &str,
    to: &str,
) -> String {
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    let restarts = |p: &Pod| common::status_of(p, container).map_or(0, |c| c.restart_count);
    let by_uid: BTreeMap<String, &Pod> = before.values().map(|p| (uid(p), p)).collect();
    let (mut kept, mut same_ip, mut restarted) = (0, 0, 0);
    for p in after.values() {
        if let Some(b) = by_uid.get(&uid(p)) {
            kept += 1;
            same_ip += usize::from(ip(p) == ip(b));
            restarted += usize::from(restarts(p) > restarts(b));
        }
    }
    let ready = after.values().filter(|p| common::is_ready(p)).count();
    let on_new = after
        .values()
        .filter(|p| common::spec_image(p, container).as_deref() == Some(to))
        .count();
    let n = after.len();
    let recreated = before.len() - kept;
    format!(
        "{} {recreated}/{} recreated, UID kept {kept}, IP kept {same_ip}, {container} restarted in {restarted}, spec on `{}` {on_new}/{n}, Ready {ready}/{n}",
        if recreated == 0 {
            "in place:"
        } else {
            "RECREATED:"
        },
        before.len(),
        to.rsplit('/').next().unwrap_or(to)
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
    let after = pods(client, &ns, &app).await?;
    let mut cell = match &said {
        Some(v) => format!("{v} after {took:.1} s; "),
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
