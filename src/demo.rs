//! `inplace-upgrade demo`: the main job, shown end to end. Without a cluster it starts the
//! embedded local control plane (etcd, kube-apiserver, kube-controller-manager and simulated
//! kubelets, from `tests/testenv`); with `--kubeconfig` or `KUBECONFIG` it uses that cluster.
//! It installs the CRD and a policy, runs the controller (and, locally, the webhook), deploys a
//! small mesh-like app — a Deployment whose pods carry an `istio-proxy` sidecar, behind a
//! Service — annotates it, prints the rollout live, and checks that every pod kept its UID, IP
//! and node while only its sidecar restarted. Then it stops what it started.
//!
//! Compiled only with `--features demo`, so the production binary never links the harness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use inplace_upgrade::policy::InPlaceUpgradePolicy;
use inplace_upgrade::{STATE_ANNOTATION, STATUS_ANNOTATION, TARGETS_ANNOTATION, controller};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::cli::ClientArgs;

const NAMESPACE: &str = "mesh-demo";
const APP: &str = "reviews";
const REPLICAS: i32 = 4;
const CONTROLLER_NAMESPACE: &str = "inplace-upgrade-system";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run on this cluster instead of the embedded local control plane (`KUBECONFIG` works
    /// too). Only the controller runs then: the API server cannot call a webhook on this
    /// machine, so the pods carry no readiness gate and are upgraded without a drain.
    #[arg(long, env = "INPLACE_UPGRADE_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Keep the local control plane's directory (logs, kubeconfig) here.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// How long the simulated runtime takes to restart a container, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub restart_delay_ms: u64,
}

/// The images: on the simulated kubelet nothing is pulled, so the Istio ones are used; on a
/// real cluster, small public images that run anywhere.
struct Images {
    app: &'static str,
    sidecar: &'static str,
    /// The annotation value, and the image it resolves to.
    target: &'static str,
    resolved: &'static str,
    sidecar_command: Option<Value>,
}

const LOCAL: Images = Images {
    app: "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
    sidecar: "docker.io/istio/proxyv2:1.23.0",
    target: "istio-proxy=proxyv2:1.24.2",
    resolved: "docker.io/istio/proxyv2:1.24.2",
    sidecar_command: None,
};

const REAL: Images = Images {
    app: "registry.k8s.io/pause:3.10",
    sidecar: "docker.io/library/busybox:1.36",
    target: "istio-proxy=:1.37",
    resolved: "docker.io/library/busybox:1.37",
    sidecar_command: Some(Value::Null),
};

/// Runs the demo. The local control plane, when one is started, is handed out through `env`
/// so the caller stops it only after the runtime's tasks (the controller's watches) are gone.
pub async fn run(args: DemoArgs, env: &mut Option<testenv::TestEnv>) -> anyhow::Result<()> {
    let external = args.kubeconfig.is_some() || std::env::var_os("KUBECONFIG").is_some();
    let started = Instant::now();
    let (client, images) = if external {
        let client = ClientArgs {
            kubeconfig: args.kubeconfig.clone(),
            context: None,
        }
        .client()
        .await?;
        println!("Using the cluster from your kubeconfig (namespace {NAMESPACE}).");
        (client, &REAL)
    } else {
        println!(
            "Starting the local control plane: etcd, kube-apiserver, kube-controller-manager, 2 simulated nodes"
        );
        println!("(the first run builds Kubernetes 1.35 from source: about 8 minutes on 2 cores)…");
        let mut options = testenv::Options {
            dir: args.dir.clone(),
            ..Default::default()
        };
        options.kubelet.nodes = 2;
        options.kubelet.delays.restart = Duration::from_millis(args.restart_delay_ms);
        let local = env.insert(
            testenv::TestEnv::start(options)
                .await
                .context("starting the local control plane")?,
        );
        let client = local.client()?;
        println!(
            "  ready in {:.1}s; kubeconfig: {}",
            started.elapsed().as_secs_f64(),
            local.kubeconfig_path().display()
        );
        (client, &LOCAL)
    };

    install(&client).await?;
    let settings = controller::Settings {
        namespace: CONTROLLER_NAMESPACE.into(),
        identity: format!("demo-{}", std::process::id()),
        concurrency: 4,
        lease_duration: Duration::from_secs(15),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = if external {
        let mut registry = prometheus_client::registry::Registry::default();
        let handle = controller::start(client.clone(), settings, &mut registry);
        tokio::spawn(async move {
            let _ = stopped.await;
            handle.step_down().await;
            Ok(())
        })
    } else {
        use inplace_upgrade::serve;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let local = serve::start_local(
            client.clone(),
            serve::LocalOptions {
                webhook_url: format!("https://127.0.0.1:{port}"),
                listen: None,
                cert_dir: None,
                controller: settings,
                admin_addr: None,
            },
        )
        .await?;
        println!(
            "Controller and admission webhook running (https://127.0.0.1:{port}, called by the API server)."
        );
        tokio::spawn(async move {
            local
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .map_err(anyhow::Error::from)
        })
    };

    let result = show_rollout(&client, images, external).await;
    let _ = stop.send(());
    served.await.context("the controller task")??;
    if external {
        let _ = Api::<Namespace>::all(client)
            .delete(NAMESPACE, &DeleteParams::default())
            .await;
        println!(
            "Deleted namespace {NAMESPACE}; the CRD, the policy and the Lease namespace stay."
        );
    } else {
        println!("Stopping the local control plane.");
    }
    result
}

async fn apply<K>(api: &Api<K>, obj: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply("inplace-upgrade-demo").force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

async fn install(client: &Client) -> anyhow::Result<()> {
    let crd: Value = serde_yaml::from_str(&inplace_upgrade::policy::crd_yaml()?)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&crds, crd).await?;
    let name = "inplaceupgradepolicies.inplace-upgrade.io";
    let established = |c: &CustomResourceDefinition| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    };
    let mut stream = watcher(
        crds,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(c)) = stream.next().await {
            if established(&c) {
                return;
            }
        }
    })
    .await
    .context("the CRD did not become Established")?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(&namespaces, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}})).await?;
    apply(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": NAMESPACE, "labels": {"istio-injection": "enabled"}}}),
    )
    .await?;
    // The example policy of deploy/examples: istio-proxy, in namespaces with injection on.
    apply(
        &Api::<InPlaceUpgradePolicy>::all(client.clone()),
        json!({
            "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
            "metadata": {"name": "istio-sidecars-demo"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
                "containers": ["istio-proxy"],
                "maxUnavailable": 1,
                "drain": {"gracePeriodSeconds": 1, "timeoutSeconds": 30},
                "readyTimeoutSeconds": 120,
            },
        }),
    )
    .await?;
    println!(
        "Installed the InPlaceUpgradePolicy CRD and policy istio-sidecars-demo (istio-proxy, namespaces labelled istio-injection=enabled)."
    );
    Ok(())
}

fn app(images: &Images) -> Value {
    let mut sidecar = json!({
        "name": "istio-proxy", "image": images.sidecar, "restartPolicy": "Always",
        "ports": [{"name": "http-envoy-prom", "containerPort": 15090}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2},
    });
    if images.sidecar_command.is_some() {
        sidecar["command"] = json!(["sleep", "infinity"]);
        sidecar.as_object_mut().map(|s| s.remove("readinessProbe"));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    // Istio's native-sidecar mode: the proxy is an init container that keeps running.
                    "initContainers": [sidecar],
                    "containers": [{"name": APP, "image": images.app, "ports": [{"containerPort": 9080}]}],
                },
            },
        },
    })
}

fn short(s: &str, n: usize) -> String {
    let s = s.rsplit("//").next().unwrap_or(s);
    s.chars().take(n).collect()
}

fn sidecar_status(pod: &Pod) -> (String, String, i32, bool) {
    let status = pod.status.as_ref();
    let c = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "istio-proxy"));
    (
        c.map(|c| c.image.clone()).unwrap_or_default(),
        c.and_then(|c| c.container_id.clone()).unwrap_or_default(),
        c.map_or(0, |c| c.restart_count),
        c.is_some_and(|c| c.ready),
    )
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some(c.status.clone())
}

/// One line of what a pod is doing, in the words of the upgrade.
fn describe(pod: &Pod) -> String {
    let (image, id, restarts, ready) = sidecar_status(pod);
    let gate = condition(pod, "inplace-upgrade.io/ready");
    let state = pod
        .annotations()
        .get(STATE_ANNOTATION)
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    let phase = state
        .as_ref()
        .and_then(|v| v["phase"].as_str().map(str::to_string));
    // The containerID recorded at the patch: a different one is the restarted container.
    let restarted = state.as_ref().and_then(|v| {
        v["containers"][0]["containerId"]
            .as_str()
            .map(|old| old != id)
    });
    let drained = gate.as_deref() == Some("False");
    let what = match (phase.as_deref(), restarted, ready) {
        (None, _, _) if drained => "drained: out of the Service's endpoints, waiting to restart",
        (Some("Patched"), Some(false), _) => "patched: kubelet is restarting istio-proxy",
        (Some("Patched"), Some(true), false) => {
            "istio-proxy restarted on the new image, not Ready yet"
        }
        (Some("Patched"), Some(true), true) if drained => {
            "istio-proxy Ready on the new image; back into the endpoints"
        }
        (Some("Patched" | "Succeeded"), _, true) => "upgraded, serving",
        (_, _, true) => "serving",
        _ => "starting",
    };
    format!(
        "{what:<62} istio-proxy {} ({}, restarts {restarts})",
        short(&image, 40),
        short(&id, 8)
    )
}

struct Facts {
    uid: String,
    ip: String,
    node: String,
    sidecar_id: String,
    restarts: i32,
    app_id: String,
}

fn facts(pod: &Pod) -> Facts {
    let (_, sidecar_id, restarts, _) = sidecar_status(pod);
    let app_id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == APP))
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default();
    Facts {
        uid: pod.uid().unwrap_or_default(),
        ip: pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        sidecar_id,
        restarts,
        app_id,
    }
}

fn table(title: &str, pods: &BTreeMap<String, Pod>) {
    println!("\n{title}");
    println!(
        "  {:<28} {:<10} {:<14} {:<12} {:<40} {:<10}",
        "POD", "UID", "IP", "NODE", "ISTIO-PROXY IMAGE", "CONTAINER"
    );
    for (name, pod) in pods {
        let f = facts(pod);
        let (image, ..) = sidecar_status(pod);
        println!(
            "  {name:<28} {:<10} {:<14} {:<12} {:<40} {:<10}",
            short(&f.uid, 8),
            f.ip,
            f.node,
            short(&image, 40),
            short(&f.sidecar_id, 8)
        );
    }
}

async fn current_pods(pods: &Api<Pod>) -> anyhow::Result<BTreeMap<String, Pod>> {
    let list = pods
        .list(&kube::api::ListParams::default().labels(&format!("app={APP}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect())
}

async fn show_rollout(client: &Client, images: &Images, external: bool) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    // The pod webhook is called only in namespaces the controller has labelled governed; the
    // pods are created once it has (else they would be born without the gate, as during a
    // webhook outage, and the controller would upgrade them without a drain).
    let governed = kube::runtime::wait::await_condition(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        NAMESPACE,
        |n: Option<&k8s_openapi::api::core::v1::Namespace>| {
            n.is_some_and(|n| {
                n.labels()
                    .get(inplace_upgrade::GOVERNED_LABEL)
                    .is_some_and(|v| v == "true")
            })
        },
    );
    if tokio::time::timeout(Duration::from_secs(60), governed)
        .await
        .is_err()
    {
        bail!(
            "the controller did not label namespace {NAMESPACE} {} within 60 s",
            inplace_upgrade::GOVERNED_LABEL
        );
    }
    apply(&deployments, app(images)).await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), NAMESPACE),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": APP, "namespace": NAMESPACE},
               "spec": {"selector": {"app": APP}, "ports": [{"port": 9080}]}}),
    )
    .await?;
    println!(
        "Deployed {NAMESPACE}/{APP}: {REPLICAS} pods, app container + istio-proxy native sidecar, behind Service {APP}."
    );
    let ready = watcher(
        deployments.clone(),
        watcher::Config::default().fields(&format!("metadata.name={APP}")),
    )
    .applied_objects()
    .boxed()
    .filter_map(|d| async move { d.ok() })
    .any(|d| async move { d.status.and_then(|s| s.ready_replicas) == Some(REPLICAS) });
    if !tokio::time::timeout(Duration::from_secs(600), ready)
        .await
        .unwrap_or(false)
    {
        bail!("{APP} did not become ready");
    }
    let before = current_pods(&pods).await?;
    table("Before:", &before);
    if !external {
        let gated = before.values().all(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| {
                    g.iter()
                        .any(|g| g.condition_type == "inplace-upgrade.io/ready")
                })
        });
        println!(
            "  (the webhook injected the inplace-upgrade.io/ready readiness gate: {})",
            if gated { "yes" } else { "no" }
        );
    }

    println!(
        "\nkubectl annotate deployment/{APP} '{TARGETS_ANNOTATION}={}'",
        images.target
    );
    let patch = json!({"metadata": {"annotations": {TARGETS_ANNOTATION: images.target}}});
    deployments
        .patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let t0 = Instant::now();

    let mut pod_events = watcher(
        pods.clone(),
        watcher::Config::default().labels(&format!("app={APP}")),
    )
    .applied_objects()
    .boxed();
    let mut workload_events = watcher(
        deployments.clone(),
        watcher::Config::default().fields(&format!("metadata.name={APP}")),
    )
    .applied_objects()
    .boxed();
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    let mut last_status = String::new();
    let limit = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            Some(Ok(pod)) = pod_events.next() => {
                let line = describe(&pod);
                if said.get(&pod.name_any()) != Some(&line) {
                    println!("  [{:>5.1}s] {:<28} {line}", t0.elapsed().as_secs_f64(), pod.name_any());
                    said.insert(pod.name_any(), line);
                }
            }
            Some(Ok(d)) = workload_events.next() => {
                let Some(status) = d.annotations().get(STATUS_ANNOTATION).and_then(|s| serde_json::from_str::<Value>(s).ok()) else { continue };
                let line = format!("{} {}/{}", status["phase"].as_str().unwrap_or("?"), status["upgraded"], status["total"]);
                if line != last_status {
                    println!("  [{:>5.1}s] deployment/{APP} {line}{}", t0.elapsed().as_secs_f64(),
                        status["message"].as_str().map(|m| format!(" — {m}")).unwrap_or_default());
                    last_status = line;
                }
                match status["phase"].as_str() {
                    Some("Completed") if status["target"] == images.target => break,
                    // `Blocked` may pass (the Deployment's own rollout settling, a PDB): keep watching.
                    Some("Failed" | "Invalid" | "NoPolicy") => bail!("the rollout stopped: {status}"),
                    _ => {}
                }
            }
            _ = &mut limit => bail!("the rollout did not complete within 10 minutes"),
        }
    }
    let elapsed = t0.elapsed();
    let after = current_pods(&pods).await?;
    table("After:", &after);
    let mut problems = Vec::new();
    for (name, pod) in &after {
        let Some(b) = before.get(name) else {
            problems.push(format!("{name} is a new pod"));
            continue;
        };
        let (b, a) = (facts(b), facts(pod));
        let (image, ..) = sidecar_status(pod);
        if (a.uid != b.uid) || (a.ip != b.ip) || (a.node != b.node) {
            problems.push(format!("{name} changed UID, IP or node"));
        }
        if a.sidecar_id == b.sidecar_id || a.restarts != b.restarts + 1 || image != images.resolved
        {
            problems.push(format!(
                "{name}: istio-proxy did not restart once on {}",
                images.resolved
            ));
        }
        if a.app_id != b.app_id {
            problems.push(format!("{name}: the app container restarted"));
        }
    }
    if after.len() != before.len() {
        problems.push(format!(
            "{} pods before, {} after",
            before.len(),
            after.len()
        ));
    }
    if !problems.is_empty() {
        bail!("the rollout completed, but: {}", problems.join("; "));
    }
    println!(
        "\nDone in {:.1}s: all {} pods kept their UID, IP and node; only istio-proxy restarted (once, on {}); the app container never did.",
        elapsed.as_secs_f64(),
        after.len(),
        images.resolved
    );
    Ok(())
}
