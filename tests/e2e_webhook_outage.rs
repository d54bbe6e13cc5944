//! End-to-end: the webhook fails while pods are being created, against a real kube-apiserver.
//!
//! The webhook runs as its own process (`inplace-upgrade webhook`, certificates from files,
//! registered by URL with their caBundle), the controller as another (`inplace-upgrade
//! controller`). Then, in turn:
//! - **up**: the baseline;
//! - **killed**: the webhook process is SIGKILLed (connections refused);
//! - **hung**: a listener of ours takes its port, completes the TLS handshake with the same
//!   certificate and never answers;
//! - **stopped**: the real webhook is started again, then frozen with SIGSTOP (the kernel still
//!   accepts TCP connections; nothing answers, not even the TLS handshake).
//!
//! In every phase, pod creations through the API server must succeed (`failurePolicy:
//! Ignore`): dry-run probe pods are created one after another and their latency recorded
//! (printed next to the configuration's `timeoutSeconds`), the API server's own fail-open
//! counter must grow by them, and the Deployment is scaled up by one. At the end every pod of
//! the Deployment must run the target and be Ready: the pods created during an outage were
//! not mutated (no target, no readiness gate: a gate cannot be added to an existing pod), so
//! the controller upgraded them in place without a drain, and the workload's status counts
//! them in `ungatedPods`, as documented.
//!
//! "Registered but nobody listens" at a URL is covered in `tests/e2e_webhook.rs`
//! (`with_the_webhook_down_…`); this suite adds a real process dying or hanging.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    AnyResult, CONTROLLER_NAMESPACE, NEW_PROXY, Replica, TestResult, WebhookProcess,
    await_governed, create_policy, free_port, install, is_ready, obj, spec_image,
};
use inplace_upgrade::admission::configuration::{self, ConfigurationOptions, Endpoint};
use inplace_upgrade::serve;
use inplace_upgrade::{READINESS_GATE, STATE_ANNOTATION, STATUS_ANNOTATION, TARGETS_ANNOTATION};
use inplace_upgrade_webhook::certs::{self, CertificatePem, SubjectAltNames};
use inplace_upgrade_webhook::{CertificateStore, TlsServer, WebhookMetrics};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_list};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const OLD_PROXY: &str = "registry.istio.io/testing/proxyv2:latest";
/// Dry-run pod creations per phase.
const PROBES: usize = 3;

/// The webhook as its own process, its log named after the `run`.
fn start_webhook(
    env: &TestEnv,
    cert_dir: &Path,
    port: u16,
    run: usize,
) -> AnyResult<WebhookProcess> {
    WebhookProcess::start(
        Path::new(env!("CARGO_BIN_EXE_inplace-upgrade")),
        env.kubeconfig_path(),
        cert_dir,
        port,
        env.dir()
            .join("logs")
            .join(format!("webhook-outage-{run}.log")),
    )
}

/// Our TLS server on the webhook's port, with the webhook's certificate: it completes the
/// handshake and reads each request, and its handler never answers.
struct HungWebhook {
    stop: tokio::sync::oneshot::Sender<()>,
    served: JoinHandle<inplace_upgrade_webhook::Result<()>>,
    requests: Arc<AtomicUsize>,
}

impl HungWebhook {
    async fn start(port: u16, serving: &CertificatePem) -> AnyResult<Self> {
        let store = CertificateStore::new(WebhookMetrics::unregistered());
        store.load_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let router = axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<&'static str>()
        });
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(
            TlsServer::new(listener, router, store.server_config()?)
                .drain_timeout(Duration::from_millis(100))
                .serve(async move {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            stop,
            served,
            requests,
        })
    }

    /// Closes the port and every connection; the requests it read.
    async fn stop(self) -> AnyResult<usize> {
        let _ = self.stop.send(());
        self.served.await??;
        Ok(self.requests.load(Ordering::SeqCst))
    }
}

/// The API server's count of calls to our pod webhook that failed open.
async fn fail_open_count(client: &Client) -> AnyResult<f64> {
    let text = client
        .request_text(axum::http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let name = format!("name=\"{}\"", configuration::MUTATE_PODS_WEBHOOK);
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_admission_webhook_fail_open_count{") && l.contains(&name)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Creates `PROBES` pods (dry run: through admission, never stored) owned by `owner`, one
/// after another; their latencies.
async fn probe(
    client: &Client,
    ns: &str,
    owner: &ConfigMap,
    phase: &str,
) -> AnyResult<Vec<Duration>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut latencies = Vec::new();
    for i in 0..PROBES {
        // A controller owner, as the pods the webhook acts on have.
        let pod: Pod = obj(json!({
            "metadata": {
                "name": format!("probe-{phase}-{i}"),
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
                    "uid": owner.uid().unwrap_or_default(), "controller": true,
                }],
            },
            "spec": {"containers": [{"name": "app", "image": OLD_PROXY}]},
        }));
        let started = Instant::now();
        pods.create(&params, &pod)
            .await
            .map_err(|e| format!("{phase}: pod creation failed during the outage: {e}"))?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
}

/// Scales `hello` to `replicas` and returns the new pod, as first seen.
async fn scale_up(
    client: &Client,
    ns: &str,
    replicas: usize,
    known: &BTreeMap<String, (Pod, bool)>,
) -> AnyResult<Pod> {
    common::scale_hello(client, ns, replicas).await?;
    let pods = wait_list(
        &Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels("app=hello"),
        "the new pod created",
        |pods: &[Pod]| pods.len() == replicas,
    )
    .await?;
    pods.into_iter()
        .find(|p| !known.contains_key(&p.name_any()))
        .ok_or_else(|| "no new pod".into())
}

fn describe(latencies: &[Duration]) -> String {
    let ms: Vec<String> = latencies
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    format!("[{}] ms", ms.join(", "))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_created_while_the_webhook_is_killed_or_hung_and_the_controller_converges_them()
-> TestResult {
    let env = TestEnv::shared()?;
    let client = env.client()?;
    install(&client).await?;
    let _controller = Replica::start(env, "outage-controller")?;

    // Certificates as a mounted Secret, for 127.0.0.1 (the URL the API server dials).
    let ca = certs::generate_ca("outage test CA", Duration::from_secs(24 * 3600))?;
    let names = SubjectAltNames::default().with_ip_address([127, 0, 0, 1].into());
    let serving =
        certs::generate_serving_certificate(&ca, "127.0.0.1", &names, Duration::from_secs(3600))?;
    let cert_dir = env.dir().join("webhook-outage-tls");
    serve::write_secret_dir(
        &cert_dir,
        &[
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
        ],
    )?;
    let port = free_port()?;
    let mut webhook = start_webhook(env, &cert_dir, port, 1)?;
    webhook.await_ready().await?;
    configuration::apply(
        &client,
        &ConfigurationOptions {
            endpoint: Endpoint::Url(format!("https://127.0.0.1:{port}")),
            ca_bundle: Some(ca.cert_pem.clone().into_bytes()),
            own_namespace: CONTROLLER_NAMESPACE.into(),
            cert_manager_certificate: None,
        },
        "e2e-outage",
    )
    .await?;

    let ns = env.namespace("outage").await?;
    create_policy(&client, &ns, json!({})).await?;
    await_governed(&client, &ns).await?;
    let owner = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "probe-owner"}})),
        )
        .await?;
    let mut deployment: Value = common::fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        Some(1),
        false,
    )?;
    deployment["metadata"]["annotations"] =
        json!({ TARGETS_ANNOTATION: "istio-proxy=proxyv2:1.24.2" });
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &obj(deployment))
        .await?;
    let first = wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=hello"),
        "the first pod",
        |pods: &[Pod]| pods.len() == 1,
    )
    .await?;
    // Every pod of the Deployment as first seen, and whether it was born during an outage.
    let mut known: BTreeMap<String, (Pod, bool)> = first
        .into_iter()
        .map(|p| (p.name_any(), (p, false)))
        .collect();
    let mut phases: Vec<(String, Vec<Duration>, f64, bool)> = Vec::new();
    let mut replicas = 1;

    // Each phase: probes, their fail-open count, one more replica; `true` when the webhook is
    // out (its pods must have been missed).
    macro_rules! phase {
        ($name:expr, $out:expr) => {{
            let before = fail_open_count(&client).await?;
            let latencies = probe(&client, &ns, &owner, $name).await?;
            replicas += 1;
            let pod = scale_up(&client, &ns, replicas, &known).await?;
            let failed_open = fail_open_count(&client).await? - before;
            known.insert(pod.name_any(), (pod, $out));
            phases.push(($name.to_string(), latencies, failed_open, $out));
        }};
    }

    phase!("up", false);

    webhook.signal("-KILL")?;
    let _ = webhook.child.wait();
    phase!("killed", true);

    let hung = HungWebhook::start(port, &serving).await?;
    phase!("hung", true);
    let hung_requests = hung.stop().await?;

    let mut webhook = start_webhook(env, &cert_dir, port, 2)?;
    webhook.await_ready().await?;
    phase!("restarted", false);
    webhook.signal("-STOP")?;
    phase!("stopped", true);
    webhook.signal("-CONT")?;

    // Every phase's creations succeeded (probe() fails otherwise). Now check who was mutated.
    let timeout = configuration::TIMEOUT_SECONDS;
    for (name, latencies, failed_open, out) in &phases {
        eprintln!(
            "outage {name}: {PROBES} pod creations succeeded, latencies {} (webhook timeoutSeconds {timeout}); API server failed open {failed_open} times",
            describe(latencies)
        );
        if *out {
            // The probes and the Deployment's pod, at least: the API server called us, failed,
            // and admitted anyway.
            assert!(
                *failed_open >= (PROBES + 1) as f64,
                "{name}: the API server failed open only {failed_open} times"
            );
        } else {
            assert_eq!(*failed_open, 0.0, "{name}: the webhook was up");
        }
    }
    assert!(
        hung_requests > PROBES,
        "the hung listener read only {hung_requests} requests"
    );
    eprintln!(
        "outage hung: the listener completed the TLS handshakes, read {hung_requests} requests and answered none"
    );

    let mut born_out = Vec::new();
    let mut born_up = Vec::new();
    for (pod, out) in known.values() {
        assert_eq!(
            gated(pod),
            !out,
            "{}: the readiness gate is there exactly when the webhook was up",
            pod.name_any()
        );
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref() == Some(NEW_PROXY),
            !out,
            "{}: the target image at creation exactly when the webhook was up",
            pod.name_any()
        );
        if *out {
            born_out.push(pod.uid().unwrap_or_default());
        } else {
            born_up.push(pod.uid().unwrap_or_default());
        }
    }

    // The controller converges every pod: in place (same UIDs), Ready on the target.
    let pods = wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=hello"),
        "every pod on the target and Ready",
        |pods: &[Pod]| {
            pods.len() == replicas
                && pods.iter().all(|p| {
                    spec_image(p, "istio-proxy").as_deref() == Some(NEW_PROXY)
                        && common::status_of(p, "istio-proxy").is_some_and(|s| s.image == NEW_PROXY)
                        && is_ready(p)
                })
        },
    )
    .await?;
    for pod in &pods {
        let uid = pod.uid().unwrap_or_default();
        assert!(
            born_out.contains(&uid) || born_up.contains(&uid),
            "{}: a pod that was not there before (recreated, not upgraded in place)",
            pod.name_any()
        );
        if born_out.contains(&uid) {
            let state: Value = serde_json::from_str(
                pod.annotations()
                    .get(STATE_ANNOTATION)
                    .ok_or("no state annotation: the controller never patched it")?,
            )?;
            assert_eq!(
                state["containers"][0]["previousImage"], OLD_PROXY,
                "{state}"
            );
        }
    }
    // The documented caveat, reported: the pods born during the outages have no gate.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("hello")
        .await?;
    let status: Value = serde_json::from_str(
        deployment
            .annotations()
            .get(STATUS_ANNOTATION)
            .ok_or("no workload status")?,
    )?;
    assert_eq!(status["ungatedPods"], json!(born_out.len()), "{status}");
    eprintln!(
        "outage: {} pods born during outages (ungated, upgraded in place without a drain), {} born with the webhook up; load average {}",
        born_out.len(),
        born_up.len(),
        load_average()
    );
    Ok(())
}
