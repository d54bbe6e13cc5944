//! The API server's own view of the webhook: pods created through a real kube-apiserver with
//! our webhook registered (URL mode, TLS, `inplace-upgrade webhook` as its own process), next
//! to the same creations with the webhook configurations removed (the baseline, same run).
//!
//! What is sent: pods built from the pod template of Istio's injected `hello` Deployment
//! (`hello-old-version.yaml.injected`, `istio-proxy` as a regular container), owned by the
//! ReplicaSet of that Deployment, which carries `inplace-upgrade: istio-proxy=proxyv2:1.24.2`
//! — exactly what the ReplicaSet controller sends on a scale-up — in a namespace whose policy
//! has an `allowedImages` list that allows the targets. They are created with
//! `dryRun=All`: the request runs the whole admission chain, our webhook included, and is not
//! stored, so the ReplicaSet controller never sees (and deletes) the extra pods and every
//! round starts from the same cluster. Before each round a probe checks that the webhook
//! really mutates (target image and readiness gate) or, in the baseline, really is gone.
//! Then, per mode: `BENCH_PODS` creations one after another, the same number `BENCH_CONCURRENCY`
//! at a time, and `BENCH_UPDATES` Deployment updates that change the annotation (the
//! validating webhook's full check).
//!
//! Modes, alternating within each round: our configurations as registered; none (the
//! baseline); the same pods created in a namespace no policy selects, with our configurations
//! (the pod webhook selects governed namespaces only: 0 calls) and with the pod webhook
//! selecting every namespace as it did before (`ungoverned … (before)`: called for every pod);
//! and, with `BENCH_HAS_CONTROLLER=1`, ours plus the pod webhook's former matchCondition
//! (`has-controller`) — what that CEL filter cost the API server, the measurement that
//! removed it. The Deployment updates run in the governed namespace only.
//!
//! Printed per phase and mode: the client's latency (median, p99, mean; the client is this
//! process); from kube-apiserver's `/metrics`, deltas over the phase:
//! `apiserver_request_duration_seconds` of the requests, and for our webhooks
//! `apiserver_admission_webhook_admission_duration_seconds` (count, mean from `_sum`, share
//! under 5 ms, and p50/p99 interpolated within its buckets — 5, 25, 100 ms…, so coarse: the
//! mean and the client's figures are the precise ones). Rounds alternate the modes
//! (`BENCH_ROUNDS`), so drift of this shared machine hits both.
//!
//! Knobs: BENCH_PODS (300), BENCH_CONCURRENCY (16), BENCH_UPDATES (100), BENCH_ROUNDS (2);
//! BENCH_PPROF_DIR=<dir> also saves a 10 s kube-apiserver CPU profile per mode (read with
//! `go tool pprof -top <file>`); BENCH_CONTROLLER (the `inplace-upgrade` binary to run as
//! controller and webhook, e.g. a release build while this bench runs as `--profile dev`).
//! Run: `cargo bench -p inplace-upgrade --bench admission`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{CONTROLLER_NAMESPACE, WebhookProcess, admin_get, free_port};
use futures::{StreamExt, stream};
use inplace_upgrade::admission::configuration::{
    self, CONFIGURATION_NAME, ConfigurationOptions, Endpoint,
};
use inplace_upgrade::serve;
use inplace_upgrade::{READINESS_GATE, TARGETS_ANNOTATION};
use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
use k8s_openapi::api::admissionregistration::v1::MatchCondition;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::*;

const TARGET: &str = "istio-proxy=proxyv2:1.24.2";
/// Dry-run updates never store, so the Deployment keeps `TARGET`: alternating these two, every
/// update changes the annotation and the validating webhook's matchCondition sends each one.
const UPDATE_TARGETS: [&str; 2] = ["istio-proxy=proxyv2:1.24.3", "istio-proxy=proxyv2:1.24.4"];
const NEW_TAG: &str = ":1.24.2";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("admission bench: {e}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    /// Our configurations as `inplace-upgrade` registers them.
    Webhook,
    /// The same with the pod webhook's former matchCondition ("has a controller owner"), to
    /// show what such a CEL filter costs the API server (see the configuration's comment).
    WebhookWithControllerCondition,
    Baseline,
    /// Our configurations, pods created in a namespace no policy selects: the pod webhook's
    /// `namespaceSelector` (the governed label) keeps them away from it.
    Ungoverned,
    /// The same pods with the pod webhook selecting every namespace, as before the governed
    /// label: called for each, answering "not governed".
    UngovernedBefore,
}

/// The modes run by default; `BENCH_HAS_CONTROLLER=1` adds the former matchCondition's.
fn modes() -> Vec<Mode> {
    let mut modes = vec![
        Mode::Webhook,
        Mode::Baseline,
        Mode::Ungoverned,
        Mode::UngovernedBefore,
    ];
    if std::env::var_os("BENCH_HAS_CONTROLLER").is_some() {
        modes.push(Mode::WebhookWithControllerCondition);
    }
    modes
}

/// The matchCondition the pod webhook had until this benchmark measured it.
const POD_HAS_CONTROLLER: &str = "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, has(o.controller) && o.controller)";

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Webhook => "webhook",
            Mode::WebhookWithControllerCondition => "webhook + has-controller matchCondition",
            Mode::Baseline => "no webhook",
            Mode::Ungoverned => "ungoverned namespace",
            Mode::UngovernedBefore => "ungoverned namespace, webhook for all namespaces (before)",
        }
    }

    /// Whether its pods are created in the namespace the policy selects.
    fn governed(self) -> bool {
        !matches!(self, Mode::Ungoverned | Mode::UngovernedBefore)
    }

    fn calls_webhook(self) -> bool {
        self != Mode::Baseline
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    PodsSequential,
    PodsConcurrent,
    DeploymentUpdates,
}

/// What one phase measured, summed over rounds.
#[derive(Default)]
struct Measured {
    client_ms: Vec<f64>,
    request: Histogram,
    webhook: Histogram,
    /// The webhook's own `webhook_admission_duration_seconds` (decode, decide, encode).
    server: Histogram,
    /// CPU seconds of kube-apiserver and of the webhook process over the phase.
    apiserver_cpu: f64,
    webhook_cpu: f64,
    /// Wall seconds of the phase.
    wall: f64,
}

async fn run() -> AnyResult<()> {
    let pods = knob("BENCH_PODS", 300) as usize;
    let concurrency = knob("BENCH_CONCURRENCY", 16).max(1) as usize;
    let updates = knob("BENCH_UPDATES", 100) as usize;
    let rounds = knob("BENCH_ROUNDS", 2).max(1);
    stamp("admission bench start");
    let mut options = testenv::Options::default();
    if std::env::var_os("BENCH_PPROF_DIR").is_some() {
        options.apiserver_args.push("--profiling=true".into());
    }
    let bench = Bench::start(options, false).await?;
    let client = bench.client.clone();
    common::install(&client).await?;

    // The controller runs for its Lease only: the webhook injects the readiness gate only
    // while the controller is alive.
    let kubeconfig = bench.controller_kubeconfig().await?;
    await_binary().await?;
    let mut controller = Controller::start(
        &kubeconfig,
        bench.env.dir().join("logs/controller.log"),
        &[],
    )?;
    controller.await_synced(Duration::from_secs(120)).await?;

    let ca = certs::generate_ca("admission bench CA", Duration::from_secs(24 * 3600))?;
    let names = SubjectAltNames::default().with_ip_address([127, 0, 0, 1].into());
    let serving =
        certs::generate_serving_certificate(&ca, "127.0.0.1", &names, Duration::from_secs(3600))?;
    let cert_dir = bench.env.dir().join("webhook-tls");
    serve::write_secret_dir(
        &cert_dir,
        &[
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
        ],
    )?;
    let port = free_port()?;
    // The controller's binary (`BENCH_CONTROLLER` or this build), privately copied.
    let mut webhook = WebhookProcess::start(
        &controller_binary()?,
        bench.env.kubeconfig_path(),
        &cert_dir,
        port,
        bench.env.dir().join("logs/webhook.log"),
    )?;
    webhook.await_ready().await?;
    let options = ConfigurationOptions {
        endpoint: Endpoint::Url(format!("https://127.0.0.1:{port}")),
        ca_bundle: Some(ca.cert_pem.clone().into_bytes()),
        own_namespace: CONTROLLER_NAMESPACE.into(),
        cert_manager_certificate: None,
    };

    let ns = bench.env.namespace("admission").await?;
    // With an image allowlist, as a production policy has: the webhook checks every target
    // it sets against it.
    let allowed = json!({"allowedImages": ["registry.istio.io/testing/proxyv2:*", "docker.io/istio/proxyv2:*"]});
    common::create_policy(&client, &ns, allowed).await?;
    // The controller labels the namespace governed: from then on its pods reach the webhook.
    common::await_governed(&client, &ns).await?;
    let free = bench.env.namespace("admission-free").await?;
    let mut deployment = common::hello_deployment("hello-old-version.yaml.injected", 0, true)?;
    deployment
        .annotations_mut()
        .insert(TARGETS_ANNOTATION.into(), TARGET.into());
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let template = pod_template(&client, &ns, &deployment).await?;
    let pod_bytes = serde_json::to_vec(&template)?.len();
    println!(
        "pods: the `hello` template of hello-old-version.yaml.injected, {pod_bytes} bytes as JSON, \
         owned by the Deployment's ReplicaSet; dryRun=All; {pods} one at a time, {pods} with \
         {concurrency} in flight, {updates} Deployment annotation updates; {rounds} rounds"
    );

    let apiserver = bench
        .env
        .pids()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "kube-apiserver")
        })
        .ok_or("no kube-apiserver process among the control plane's")?;
    // What kube-apiserver burns with nothing sent (watches, leases, the controllers): taken
    // off each phase's CPU in proportion to its wall time.
    let idle_from = cpu_seconds(apiserver);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rate = (cpu_seconds(apiserver) - idle_from) / 5.0;
    println!(
        "kube-apiserver idle: {:.0} ms CPU per second (taken off the per-request CPU below)",
        idle_rate * 1e3
    );
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let free_pods = Api::<Pod>::namespaced(client.clone(), &free);
    let mut results: BTreeMap<(Phase, Mode), Measured> = BTreeMap::new();
    for round in 0..rounds {
        for mode in modes() {
            set_mode(&client, &pods_api, &template, &options, mode).await?;
            stamp(&format!("round {} {}", round + 1, mode.label()));
            let created_in = if mode.governed() {
                &pods_api
            } else {
                &free_pods
            };
            let before = Metrics::scrape(&client, &webhook, apiserver).await?;
            let latencies = create_pods(created_in, &template, pods, 1).await?;
            let after_sequential = Metrics::scrape(&client, &webhook, apiserver).await?;
            record(
                results.entry((Phase::PodsSequential, mode)).or_default(),
                latencies,
                &before,
                &after_sequential,
                &POD_CREATE,
            );
            let latencies = create_pods(created_in, &template, pods, concurrency).await?;
            let after_concurrent = Metrics::scrape(&client, &webhook, apiserver).await?;
            record(
                results.entry((Phase::PodsConcurrent, mode)).or_default(),
                latencies,
                &after_sequential,
                &after_concurrent,
                &POD_CREATE,
            );
            if !mode.governed() {
                continue; // the Deployment updates are the governed namespace's
            }
            let latencies = update_deployment(&deployments, updates).await?;
            let after_updates = Metrics::scrape(&client, &webhook, apiserver).await?;
            record(
                results.entry((Phase::DeploymentUpdates, mode)).or_default(),
                latencies,
                &after_concurrent,
                &after_updates,
                &DEPLOYMENT_UPDATE,
            );
            if mode.calls_webhook() {
                println!(
                    "  TCP connections to the webhook now: {}",
                    connections(port)
                );
            }
        }
    }
    if let Ok(dir) = std::env::var("BENCH_PPROF_DIR") {
        for mode in modes() {
            set_mode(&client, &pods_api, &template, &options, mode).await?;
            let file = Path::new(&dir).join(format!(
                "kube-apiserver-{}.pprof",
                mode.label().replace(' ', "-")
            ));
            let created = profile_creations(&client, &pods_api, &template, &file).await?;
            println!(
                "kube-apiserver CPU profile over {created} sequential creations, {}: {}",
                mode.label(),
                file.display()
            );
        }
    }
    stamp("admission bench end");
    report(&results, pods, concurrency, idle_rate);
    println!(
        "webhook process: RSS {:.1} MiB (peak {:.1})",
        proc_status(webhook.child.id(), "VmRSS:") / 1024.0,
        proc_status(webhook.child.id(), "VmHWM:") / 1024.0,
    );
    if let Some(status) = webhook.child.try_wait()? {
        return Err(format!("the webhook exited during the run ({status})").into());
    }
    Ok(())
}

/// The pod the ReplicaSet controller would create from the Deployment's template.
async fn pod_template(client: &Client, ns: &str, deployment: &Deployment) -> AnyResult<Value> {
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let uid = deployment.uid().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rs = loop {
        let list = replica_sets.list(&ListParams::default()).await?;
        if let Some(rs) = list.items.into_iter().find(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        }) {
            break rs;
        }
        if Instant::now() > deadline {
            return Err("the Deployment controller created no ReplicaSet within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .ok_or("the ReplicaSet has no pod template")?;
    let mut pod = json!({
        "metadata": serde_json::to_value(template.metadata.clone().unwrap_or_default())?,
        "spec": serde_json::to_value(template.spec.clone().ok_or("the template has no spec")?)?,
    });
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name_any(),
        "uid": rs.uid().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true,
    }]);
    Ok(pod)
}

fn pod_named(template: &Value, name: &str) -> AnyResult<Pod> {
    let mut pod = template.clone();
    pod["metadata"]["name"] = json!(name);
    Ok(serde_json::from_value(pod)?)
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Whether the API server answered the creation with our mutation applied.
fn mutated(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let image = spec
        .and_then(|s| s.containers.iter().find(|c| c.name == "istio-proxy"))
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default();
    let gated = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE));
    image.ends_with(NEW_TAG) && gated
}

/// Registers or removes the webhook configurations, then waits until a probe creation shows
/// the API server acting on it (its webhook informer lags the write).
async fn set_mode(
    client: &Client,
    pods: &Api<Pod>,
    template: &Value,
    options: &ConfigurationOptions,
    mode: Mode,
) -> AnyResult<()> {
    // Always through "none": a probe cannot tell the two webhook modes apart, but it can
    // tell none from some.
    delete_configurations(client, CONFIGURATION_NAME).await?;
    await_probe(pods, template, false).await?;
    if !mode.calls_webhook() {
        return Ok(());
    }
    let (mut mutating, validating) = configuration::webhook_configurations(options);
    if mode == Mode::UngovernedBefore {
        for webhook in mutating.webhooks.iter_mut().flatten() {
            if let Some(expressions) = webhook
                .namespace_selector
                .as_mut()
                .and_then(|s| s.match_expressions.as_mut())
            {
                expressions.retain(|e| e.key != inplace_upgrade::GOVERNED_LABEL);
            }
        }
    }
    if mode == Mode::WebhookWithControllerCondition {
        for webhook in mutating.webhooks.iter_mut().flatten() {
            webhook.match_conditions = Some(vec![MatchCondition {
                name: "has-controller".into(),
                expression: POD_HAS_CONTROLLER.into(),
            }]);
        }
    }
    common::create_webhook_configurations(client, &mutating, &validating).await?;
    await_probe(pods, template, true).await
}

/// Probes with dry-run creations until one comes back mutated (or not, as asked).
async fn await_probe(pods: &Api<Pod>, template: &Value, mutating: bool) -> AnyResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probes = 0;
    loop {
        probes += 1;
        let probe = pods
            .create(
                &dry_run(),
                &pod_named(template, &format!("probe-{probes}"))?,
            )
            .await?;
        if mutated(&probe) == mutating {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after 60 s the API server still {} our webhook",
                if mutating {
                    "does not call (or the webhook does not mutate for)"
                } else {
                    "calls"
                }
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kube-apiserver's own CPU profile (its `/debug/pprof/profile`, 10 s; Go keeps function
/// names even in a stripped binary, which `perf` cannot read) while pods are created one
/// after another; how many were created.
async fn profile_creations(
    client: &Client,
    pods: &Api<Pod>,
    template: &Value,
    file: &Path,
) -> AnyResult<usize> {
    let request = http::Request::get("/debug/pprof/profile?seconds=10").body(Vec::new())?;
    let profile = client.request_stream(request);
    tokio::pin!(profile);
    let mut created = 0;
    let params = dry_run();
    let stream = loop {
        let pod = pod_named(template, &format!("hello-profile-{created}"))?;
        tokio::select! {
            stream = &mut profile => break stream?,
            result = pods.create(&params, &pod) => {
                result?;
                created += 1;
            }
        }
    };
    let mut bytes = Vec::new();
    futures::AsyncReadExt::read_to_end(&mut Box::pin(stream), &mut bytes).await?;
    std::fs::write(file, bytes)?;
    Ok(created)
}

/// `count` dry-run creations, `in_flight` at a time; each one's latency in ms.
async fn create_pods(
    pods: &Api<Pod>,
    template: &Value,
    count: usize,
    in_flight: usize,
) -> AnyResult<Vec<f64>> {
    let requests = (0..count).map(|i| {
        let pods = pods.clone();
        let pod = pod_named(template, &format!("hello-bench-{i}"));
        async move {
            let pod = pod?;
            let started = Instant::now();
            pods.create(&dry_run(), &pod).await?;
            Ok::<f64, Box<dyn std::error::Error>>(ms(started.elapsed()))
        }
    });
    let results: Vec<_> = stream::iter(requests)
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `count` dry-run Deployment updates, each changing the target, one at a time.
async fn update_deployment(deployments: &Api<Deployment>, count: usize) -> AnyResult<Vec<f64>> {
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let target = UPDATE_TARGETS[i % 2];
        let patch = json!({"metadata": {"annotations": {TARGETS_ANNOTATION: target}}});
        let started = Instant::now();
        deployments
            .patch("hello", &params, &Patch::Merge(&patch))
            .await?;
        latencies.push(ms(started.elapsed()));
    }
    Ok(latencies)
}

const REQUEST: &str = "apiserver_request_duration_seconds";
const ADMISSION: &str = "apiserver_admission_webhook_admission_duration_seconds";
const SERVER: &str = "webhook_admission_duration_seconds";

/// Which requests a phase sends: the API server's labels for them, and the webhook that
/// sees them.
struct Requests {
    verb: &'static str,
    resource: &'static str,
    webhook: &'static str,
    route: &'static str,
}

const POD_CREATE: Requests = Requests {
    verb: "POST",
    resource: "pods",
    webhook: configuration::MUTATE_PODS_WEBHOOK,
    route: "/mutate-pods",
};

const DEPLOYMENT_UPDATE: Requests = Requests {
    verb: "PATCH",
    resource: "deployments",
    webhook: configuration::VALIDATE_WORKLOADS_WEBHOOK,
    route: "/validate-workloads",
};

fn record(
    into: &mut Measured,
    latencies: Vec<f64>,
    before: &Metrics,
    after: &Metrics,
    requests: &Requests,
) {
    into.client_ms.extend(latencies);
    into.apiserver_cpu += after.apiserver_cpu - before.apiserver_cpu;
    into.webhook_cpu += after.webhook_cpu - before.webhook_cpu;
    into.wall += (after.at - before.at).as_secs_f64();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after
            .histogram(name, labels)
            .minus(&before.histogram(name, labels))
    };
    let request = [
        ("verb", requests.verb),
        ("resource", requests.resource),
        ("dry_run", "All"),
    ];
    into.request.add(&delta(REQUEST, &request));
    into.webhook
        .add(&delta(ADMISSION, &[("name", requests.webhook)]));
    into.server
        .add(&delta(SERVER, &[("route", requests.route)]));
}

fn report(
    results: &BTreeMap<(Phase, Mode), Measured>,
    pods: usize,
    concurrency: usize,
    idle_rate: f64,
) {
    let apiserver_cpu =
        |m: &Measured| (m.apiserver_cpu - idle_rate * m.wall) / m.client_ms.len().max(1) as f64;
    println!();
    println!(
        "| phase | mode | requests | client p50 ms | client p99 ms | client mean ms | API server mean ms | API server p50/p99 ms (buckets) | webhook calls | webhook mean ms | webhook ≤ 5 ms | webhook p50/p99 ms (buckets) | webhook server-side mean ms | kube-apiserver CPU µs/request (net of idle) | webhook CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((phase, mode), m) in results {
        let phase_label = match phase {
            Phase::PodsSequential => format!("pod CREATE ×{pods}, 1 in flight"),
            Phase::PodsConcurrent => format!("pod CREATE ×{pods}, {concurrency} in flight"),
            Phase::DeploymentUpdates => "Deployment UPDATE (annotation)".to_string(),
        };
        let webhook = if m.webhook.count > 0.0 {
            format!(
                "{:.0} | {:.2} | {:.1}% | {} / {} | {:.3}",
                m.webhook.count,
                m.webhook.mean() * 1e3,
                m.webhook.share_at_most(0.005) * 100.0,
                m.webhook.quantile_ms(0.5),
                m.webhook.quantile_ms(0.99),
                m.server.mean() * 1e3,
            )
        } else {
            "0 | – | – | – | –".to_string()
        };
        let per_request = |cpu: f64| cpu / m.client_ms.len().max(1) as f64 * 1e6;
        println!(
            "| {phase_label} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} | {webhook} | {:.0} | {:.0} |",
            mode.label(),
            m.client_ms.len(),
            percentile(&m.client_ms, 50.0),
            percentile(&m.client_ms, 99.0),
            mean(&m.client_ms),
            m.request.mean() * 1e3,
            m.request.quantile_ms(0.5),
            m.request.quantile_ms(0.99),
            apiserver_cpu(m) * 1e6,
            per_request(m.webhook_cpu),
        );
    }
    println!();
    println!("ratios against no webhook (same run):");
    for phase in [
        Phase::PodsSequential,
        Phase::PodsConcurrent,
        Phase::DeploymentUpdates,
    ] {
        let Some(base) = results.get(&(phase, Mode::Baseline)) else {
            continue;
        };
        for mode in [
            Mode::Webhook,
            Mode::Ungoverned,
            Mode::UngovernedBefore,
            Mode::WebhookWithControllerCondition,
        ] {
            let Some(ours) = results.get(&(phase, mode)) else {
                continue;
            };
            println!(
                "  {phase:?}, {}: client p50 ×{:.2}, client p99 ×{:.2}, API server mean ×{:.2} (+{:.2} ms; the webhook call's own mean {:.2} ms), kube-apiserver CPU per request ×{:.2}",
                mode.label(),
                percentile(&ours.client_ms, 50.0) / percentile(&base.client_ms, 50.0),
                percentile(&ours.client_ms, 99.0) / percentile(&base.client_ms, 99.0),
                ours.request.mean() / base.request.mean(),
                (ours.request.mean() - base.request.mean()) * 1e3,
                ours.webhook.mean() * 1e3,
                apiserver_cpu(ours) / apiserver_cpu(base),
            );
        }
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// A Prometheus histogram (cumulative buckets), summed over the series that matched.
#[derive(Clone, Default, Debug)]
struct Histogram {
    /// Upper bound → cumulative count; `f64::INFINITY` for `+Inf`.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        for &(le, n) in &other.buckets {
            match self.buckets.iter_mut().find(|(l, _)| *l == le) {
                Some((_, m)) => *m += n,
                None => self.buckets.push((le, n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.sum += other.sum;
        self.count += other.count;
    }

    fn minus(&self, earlier: &Histogram) -> Histogram {
        let mut out = self.clone();
        for (le, n) in &mut out.buckets {
            if let Some((_, m)) = earlier.buckets.iter().find(|(l, _)| l == le) {
                *n -= m;
            }
        }
        out.sum -= earlier.sum;
        out.count -= earlier.count;
        out
    }

    fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }

    fn share_at_most(&self, bound: f64) -> f64 {
        let within = self
            .buckets
            .iter()
            .find(|(le, _)| *le == bound)
            .map_or(f64::NAN, |(_, n)| *n);
        within / self.count
    }

    /// The `q` quantile as Prometheus's `histogram_quantile` estimates it (linear within the
    /// bucket), in ms; "> X" when it falls in the `+Inf` bucket.
    fn quantile_ms(&self, q: f64) -> String {
        if self.count <= 0.0 {
            return "–".into();
        }
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return format!("> {:.0}", lower.0 * 1e3);
                }
                let within = if n > lower.1 {
                    (rank - lower.1) / (n - lower.1)
                } else {
                    0.0
                };
                return format!("{:.1}", (lower.0 + (le - lower.0) * within) * 1e3);
            }
            lower = (le, n);
        }
        "–".into()
    }
}

/// One scrape of kube-apiserver's and the webhook's `/metrics`: the lines of the metrics
/// this bench reads.
struct Metrics {
    lines: Vec<String>,
    /// CPU seconds so far of kube-apiserver and of the webhook process.
    apiserver_cpu: f64,
    webhook_cpu: f64,
    at: Instant,
}

impl Metrics {
    async fn scrape(
        client: &Client,
        webhook: &WebhookProcess,
        apiserver: u32,
    ) -> AnyResult<Metrics> {
        let at = Instant::now();
        let apiserver_cpu = cpu_seconds(apiserver);
        let webhook_cpu = cpu_seconds(webhook.child.id());
        let apiserver = client
            .request_text(http::Request::get("/metrics").body(Vec::new())?)
            .await?;
        let ours = match admin_get(webhook.admin, "/metrics").await {
            Some((200, body)) => body,
            _ => return Err("the webhook's /metrics did not answer 200".into()),
        };
        let lines = apiserver
            .lines()
            .chain(ours.lines())
            .filter(|l| {
                [REQUEST, ADMISSION, SERVER]
                    .iter()
                    .any(|m| l.starts_with(m))
            })
            .map(str::to_owned)
            .collect();
        Ok(Metrics {
            lines,
            apiserver_cpu,
            webhook_cpu,
            at,
        })
    }

    /// The histogram `name`, summed over every series whose labels include `labels`.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let mut h = Histogram::default();
        for line in &self.lines {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let pairs = parse_labels(label_text);
            if !labels
                .iter()
                .all(|(k, v)| pairs.get(*k).is_some_and(|x| x == v))
            {
                continue;
            }
            match metric.strip_prefix(name) {
                Some("_bucket") => {
                    let le = match pairs.get("le").map(String::as_str) {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::NAN),
                        None => continue,
                    };
                    h.add(&Histogram {
                        buckets: vec![(le, value)],
                        ..Histogram::default()
                    });
                }
                Some("_sum") => h.sum += value,
                Some("_count") => h.count += value,
                _ => {}
            }
        }
        h
    }
}

/// `a="x",b="y"` → map (label values here never hold quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The sockets of connections to `port` on this host by state (`ss`; both ends are local, so
/// one connection shows twice): many in TIME-WAIT would mean the API server opens a
/// connection per call instead of reusing one.
fn connections(port: u16) -> String {
    let Ok(out) = Command::new("ss")
        .args(["-Htan", &format!("( sport = :{port} or dport = :{port} )")])
        .output()
    else {
        return "unknown (no ss)".into();
    };
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(state) = line.split_whitespace().next() {
            *states.entry(state.to_owned()).or_default() += 1;
        }
    }
    if states.is_empty() {
        return "none".into();
    }
    states
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}
