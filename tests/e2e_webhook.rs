//! End-to-end: the admission webhook against a real kube-apiserver, which calls it over TLS at a
//! URL (the local `run` mode, through its library entry point: controller and webhook in one
//! process, a CA of its own, URL-based configurations registered with that caBundle).
//!
//! One control plane and one `run` per test binary; each test has its own namespace and its
//! own InPlaceUpgradePolicy, so tests run in parallel. Namespaces labelled
//! `e2e.inplace-upgrade.io/webhook: down` are left out of the live configuration and sent to a
//! second, registered configuration whose URL nobody serves: "the webhook is down" for those
//! namespaces only.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    AnyResult, CONTROLLER_NAMESPACE, NEW_PROXY, TestResult, await_governed, free_port, install,
    is_ready, obj, spec_image,
};
use inplace_upgrade::admission::ClusterView as _;
use inplace_upgrade::admission::configuration::{self, ConfigurationOptions, Endpoint};
use inplace_upgrade::controller::Settings;
use inplace_upgrade::policy::InPlaceUpgradePolicy;
use inplace_upgrade::serve::{self, LocalOptions};
use inplace_upgrade::{GOVERNED_LABEL, READINESS_GATE, TARGETS_ANNOTATION};
use inplace_upgrade_webhook::certs::{self, CertificatePem, SubjectAltNames};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_for, wait_list};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OLD_PROXY: &str = "registry.istio.io/testing/proxyv2:latest";
const DOWN_LABEL: &str = "e2e.inplace-upgrade.io/webhook";

struct Shared {
    env: &'static TestEnv,
    admin: SocketAddr,
    cert_dir: PathBuf,
    host: String,
}

/// Starts `run` (controller + webhook) once for the test binary, on a thread and runtime of its
/// own that live as long as the process, and returns once the API server's calls reach it.
fn shared() -> AnyResult<&'static Shared> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let env = TestEnv::shared().map_err(|e| e.to_string())?;
            let (tx, rx) = std::sync::mpsc::channel::<Result<Shared, String>>();
            std::thread::spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return drop(tx.send(Err(e.to_string()))),
                };
                let started = runtime.block_on(start(env));
                match started {
                    Ok((shared, local)) => {
                        let _ = tx.send(Ok(shared));
                        let served = runtime.block_on(local.serve(std::future::pending()));
                        eprintln!("the shared webhook stopped: {served:?}");
                    }
                    Err(e) => drop(tx.send(Err(e.to_string()))),
                }
            });
            rx.recv()
                .map_err(|_| "the webhook thread died".to_string())?
        })
        .as_ref()
        .map_err(|e| format!("starting the webhook: {e}").into())
}

async fn start(env: &'static TestEnv) -> AnyResult<(Shared, serve::LocalWebhook)> {
    if std::env::var_os("E2E_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("inplace_upgrade=debug"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let client = env.client()?;
    install(&client).await?;
    let host = "127.0.0.1".to_string();
    let port = free_port()?;
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let cert_dir = env.dir().join("webhook-tls");
    let local = serve::start_local(
        client.clone(),
        LocalOptions {
            webhook_url: format!("https://{host}:{port}"),
            listen: None,
            cert_dir: Some(cert_dir.clone()),
            controller: Settings {
                namespace: CONTROLLER_NAMESPACE.into(),
                identity: "e2e-run".into(),
                concurrency: 8,
                lease_duration: Duration::from_secs(15),
            },
            admin_addr: Some(admin),
        },
    )
    .await?;
    let mut leading = local.controller.leading.clone();
    leading.wait_for(|l| *l).await?;
    // Readiness, not an assertion: the view has listed and sees the Lease held.
    tokio::time::timeout(testenv::WAIT_LIMIT, async {
        while !(local.view.synced() && local.view.controller_alive()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| "the webhook's caches never synced or never saw the controller's Lease")?;
    simulate_outage_for_labelled_namespaces(&client).await?;
    eprintln!(
        "DEBUG controller synced={} leading={}",
        local.controller.is_synced(),
        *local.controller.leading.borrow()
    );
    Ok((
        Shared {
            env,
            admin,
            cert_dir,
            host,
        },
        local,
    ))
}

/// Leaves namespaces labelled `DOWN_LABEL: down` out of the live configuration, and registers a
/// second configuration (the same builder) for them whose URL no process serves.
async fn simulate_outage_for_labelled_namespaces(client: &Client) -> AnyResult<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let patch = json!([{
        "op": "add",
        "path": "/webhooks/0/namespaceSelector/matchExpressions/-",
        "value": {"key": DOWN_LABEL, "operator": "DoesNotExist"},
    }]);
    api.patch(
        configuration::CONFIGURATION_NAME,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch)?),
    )
    .await?;
    let ca = certs::generate_ca("nobody", Duration::from_secs(3600))?;
    let (mut dead, _) = configuration::webhook_configurations(&ConfigurationOptions {
        endpoint: Endpoint::Url(format!("https://127.0.0.1:{}", free_port()?)),
        ca_bundle: Some(ca.cert_pem.into_bytes()),
        own_namespace: CONTROLLER_NAMESPACE.into(),
        cert_manager_certificate: None,
    });
    dead.metadata.name = Some("inplace-upgrade-e2e-down".into());
    for w in dead.webhooks.iter_mut().flatten() {
        w.name = format!("down.{}", w.name);
        w.namespace_selector = Some(obj(json!({"matchLabels": {DOWN_LABEL: "down"}})));
    }
    api.create(&PostParams::default(), &dead).await?;
    Ok(())
}

/// A namespace of its own (labelled down when `webhook_down`) and a policy that selects it.
async fn setup(prefix: &str, policy: Value, webhook_down: bool) -> AnyResult<(Client, String)> {
    let shared = shared()?;
    let client = shared.env.client()?;
    let ns = if webhook_down {
        // Labelled from birth, so no pod of it ever reaches the live webhook.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("{prefix}-{:x}", nanos % 0xfffff);
        let object: Namespace =
            obj(json!({"metadata": {"name": name, "labels": {DOWN_LABEL: "down"}}}));
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await?;
        wait_for(
            &Api::<ServiceAccount>::namespaced(client.clone(), &name),
            "default",
            "default ServiceAccount",
            |_| true,
        )
        .await?;
        name
    } else {
        shared.env.namespace(prefix).await?
    };
    let mut spec = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "drain": {"gracePeriodSeconds": 0, "timeoutSeconds": 60},
        "readyTimeoutSeconds": 60,
    });
    if let (Some(a), Value::Object(b)) = (spec.as_object_mut(), policy) {
        a.extend(b);
    }
    let policy: InPlaceUpgradePolicy = obj(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1",
        "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": ns},
        "spec": spec,
    }));
    Api::<InPlaceUpgradePolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    await_governed(&client, &ns).await?;
    Ok((client, ns))
}

fn fixture_workload(
    file: &str,
    kind: &str,
    replicas: i32,
    annotation: Option<&str>,
) -> AnyResult<Value> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/istio"
    ))
    .join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "fixture {} is unreadable ({e}); shared/ must sit next to the repository",
            path.display()
        )
    })?;
    let mut w = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <Value as serde::Deserialize>::deserialize(d).ok())
        .find(|d| d["kind"] == kind)
        .ok_or(format!("{file} has no {kind}"))?;
    w["spec"]["replicas"] = json!(replicas);
    if let Some(o) = w.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = w["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
        if let Some(a) = annotation {
            m.insert("annotations".into(), json!({ TARGETS_ANNOTATION: a }));
        }
    }
    Ok(w)
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
}

fn proxy_status(pod: &Pod) -> Option<(String, i32, String)> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == "istio-proxy")
        .map(|c| {
            (
                c.image.clone(),
                c.restart_count,
                c.container_id.clone().unwrap_or_default(),
            )
        })
}

async fn await_pods(
    client: &Client,
    ns: &str,
    what: &str,
    count: usize,
    condition: impl Fn(&Pod) -> bool,
) -> AnyResult<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    Ok(wait_list(
        &pods,
        watcher::Config::default().labels("app=hello"),
        what,
        |pods: &[Pod]| {
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            live.len() == count && live.iter().all(|p| condition(p))
        },
    )
    .await?)
}

async fn scale(client: &Client, ns: &str, replicas: i32) -> AnyResult<()> {
    common::scale_hello(client, ns, usize::try_from(replicas)?).await
}

/// The admin endpoint's metrics text (plain HTTP/1.0, so no client library is needed).
async fn metrics(admin: SocketAddr) -> AnyResult<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn scaled_up_pods_get_the_target_and_the_gate_and_become_ready() -> TestResult {
    let (client, ns) = setup("scale", json!({}), false).await?;
    let admin = shared()?.admin;
    let calls_before = metric(
        &metrics(admin).await?,
        "webhook_admission_requests_total",
        &["/mutate-pods"],
    );
    let deployment = fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        1,
        Some("istio-proxy=proxyv2:1.24.2"),
    )?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &obj(deployment))
        .await?;
    let ok = |p: &Pod| {
        spec_image(p, "istio-proxy").as_deref() == Some(NEW_PROXY) && gated(p) && is_ready(p)
    };
    await_pods(&client, &ns, "1 pod at the target, gated, Ready", 1, ok).await?;
    scale(&client, &ns, 3).await?;
    let pods = await_pods(&client, &ns, "3 pods at the target, gated, Ready", 3, ok).await?;
    for pod in &pods {
        let (image, restarts, _) = proxy_status(pod).ok_or("no istio-proxy status")?;
        assert_eq!(
            image,
            NEW_PROXY,
            "{}: created with the target",
            pod.name_any()
        );
        assert_eq!(
            restarts,
            0,
            "{}: no in-place restart was needed",
            pod.name_any()
        );
        assert_eq!(spec_image(pod, "istio-init").as_deref(), Some(OLD_PROXY));
    }
    // The Deployment's template is not ours to change.
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("hello")
        .await?;
    let template = d.spec.and_then(|s| s.template.spec).ok_or("no template")?;
    let proxy = template
        .containers
        .iter()
        .find(|c| c.name == "istio-proxy")
        .ok_or("no istio-proxy")?;
    assert_eq!(proxy.image.as_deref(), Some(OLD_PROXY));
    let calls = metric(
        &metrics(admin).await?,
        "webhook_admission_requests_total",
        &["/mutate-pods"],
    );
    assert!(
        calls >= calls_before + 3.0,
        "the API server called us over TLS: {calls_before} -> {calls}"
    );
    Ok(())
}

#[tokio::test]
async fn a_statefulset_native_sidecar_gets_the_target_at_creation() -> TestResult {
    let (client, ns) = setup("sts", json!({}), false).await?;
    // Created empty, then scaled once the webhook has seen it: the StatefulSet controller
    // creates the first pod the moment the StatefulSet exists, which can be before the
    // webhook's watch delivers it (that pod is then admitted unchanged with a warning, and the
    // controller upgrades it later; e2e_webhook_outage covers that path).
    let sts = fixture_workload(
        "statefulset.yaml.injected",
        "StatefulSet",
        0,
        Some("istio-proxy=:1.24.2"),
    )?;
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let sts = statefulsets
        .create(&PostParams::default(), &obj(sts))
        .await?;
    await_webhook_knows(&client, &ns, &sts).await?;
    statefulsets
        .patch(
            &sts.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let pods = await_pods(&client, &ns, "2 pods at the target, gated, Ready", 2, |p| {
        spec_image(p, "istio-proxy").as_deref() == Some(NEW_PROXY) && gated(p) && is_ready(p)
    })
    .await?;
    for pod in &pods {
        let native = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| {
                ics.iter().any(|c| {
                    c.name == "istio-proxy"
                        && c.restart_policy.as_deref() == Some("Always")
                        && c.image.as_deref() == Some(NEW_PROXY)
                })
            });
        assert!(
            native,
            "{}: the native sidecar in initContainers carries the target",
            pod.name_any()
        );
    }
    Ok(())
}

/// Until a dry-run pod owned by `sts` comes back from the API server mutated: the webhook's
/// caches hold the StatefulSet and its policy.
async fn await_webhook_knows(client: &Client, ns: &str, sts: &StatefulSet) -> AnyResult<()> {
    let template = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .ok_or("the StatefulSet has no pod template")?;
    let probe: Pod = obj(json!({
        "metadata": {
            "name": format!("{}-probe", sts.name_any()),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts.name_any(),
                "uid": sts.uid().unwrap_or_default(), "controller": true,
            }],
        },
        "spec": template,
    }));
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = std::time::Instant::now() + testenv::WAIT_LIMIT;
    loop {
        let answered = pods.create(&dry_run, &probe).await?;
        let proxy = answered
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|ics| ics.iter().find(|c| c.name == "istio-proxy"))
            .and_then(|c| c.image.clone());
        if proxy.as_deref() == Some(NEW_PROXY) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the webhook never mutated a pod of StatefulSet {ns}/{}",
                sts.name_any()
            )
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn kubectl_apply(env: &TestEnv, ns: &str, object: &Value) -> AnyResult<std::process::Output> {
    kubectl_apply_with(env, ns, object, &[])
}

fn kubectl_apply_with(
    env: &TestEnv,
    ns: &str,
    object: &Value,
    flags: &[&str],
) -> AnyResult<std::process::Output> {
    use std::io::Write as _;
    let mut child = env
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(serde_json::to_string(object)?.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[tokio::test]
async fn kubectl_apply_of_a_bad_annotation_is_refused_and_warnings_reach_kubectl() -> TestResult {
    let (_client, ns) = setup(
        "kubectl",
        json!({"allowedImages": ["registry.istio.io/**"]}),
        false,
    )
    .await?;
    let env = shared()?.env;
    let cases = [
        ("istio-proxy=:1.24.2, app", Some("entry \"app\" has no '='")),
        (
            "istio-init=:1.24.2",
            Some("run-to-completion init container"),
        ),
        (
            "istio-proxy=docker.io/evil/proxy:1",
            Some("rule allowedImages"),
        ),
    ];
    for (annotation, refusal) in cases {
        let deployment = fixture_workload(
            "hello-old-version.yaml.injected",
            "Deployment",
            0,
            Some(annotation),
        )?;
        let out = kubectl_apply(env, &ns, &deployment)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{annotation}: refused");
        assert!(
            stderr.contains("denied the request"),
            "{annotation}: {stderr}"
        );
        assert!(
            stderr.contains(refusal.unwrap_or_default()),
            "{annotation}: {stderr}"
        );
    }
    // A container not in the template yet is admitted with a warning kubectl prints.
    let deployment = fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        0,
        Some("sidecar=busybox:1"),
    )?;
    let out = kubectl_apply(env, &ns, &deployment)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("Warning: inplace-upgrade: container \"sidecar\" is not in the pod template"),
        "{stderr}"
    );
    Ok(())
}

/// The Istio revision guard at annotation time: in a namespace that asks for Istio revision
/// `canary`, annotating a workload whose template revision `default` injected (the fixture, as
/// `istioctl kube-inject` writes it) is admitted with a warning kubectl prints, naming both
/// revisions; within one revision there is none.
#[tokio::test]
async fn a_target_across_istio_revisions_is_warned_about_at_annotation_time() -> TestResult {
    let (client, ns) = setup("istiorev", json!({}), false).await?;
    let env = shared()?.env;
    let namespaces = Api::<Namespace>::all(client.clone());
    let label =
        |revision: &str| Patch::Merge(json!({"metadata": {"labels": {"istio.io/rev": revision}}}));
    namespaces
        .patch(&ns, &PatchParams::default(), &label("canary"))
        .await?;
    let deployment = fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        0,
        Some("istio-proxy=:1.24.2"),
    )?;
    let warned = "Warning: inplace-upgrade: IstioRevisionMismatch: istio-proxy was injected by Istio revision \"default\" but the Namespace label istio.io/rev asks for \"canary\"";
    // Server-side dry runs (validated like the real request) until the webhook's watch has
    // delivered the label.
    let dry_run_until = async |object: &Value, warning: bool| -> AnyResult<String> {
        let deadline = std::time::Instant::now() + testenv::WAIT_LIMIT;
        loop {
            let out = kubectl_apply_with(env, &ns, object, &["--dry-run=server"])?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "admitted: {stderr}");
            if stderr.contains(warned) == warning {
                return Ok(stderr);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("no {warning} warning: {stderr}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    dry_run_until(&deployment, true).await?;
    let out = kubectl_apply(env, &ns, &deployment)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(warned), "{stderr}");
    assert!(
        stderr.contains("istioRevisionGuard: false"),
        "the way out is named: {stderr}"
    );

    // Back on the revision that injected it: no warning (a changed target, which validation
    // reads again; an unchanged one was checked when written).
    namespaces
        .patch(&ns, &PatchParams::default(), &label("default"))
        .await?;
    let mut retarget = deployment.clone();
    retarget["metadata"]["annotations"][TARGETS_ANNOTATION] = json!("istio-proxy=:1.24.3");
    let stderr = dry_run_until(&retarget, false).await?;
    assert!(!stderr.contains("IstioRevisionMismatch"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn with_the_webhook_down_pods_are_created_and_the_controller_upgrades_them_in_place()
-> TestResult {
    let (client, ns) = setup("down", json!({}), true).await?;
    let deployment = fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        2,
        Some("istio-proxy=proxyv2:1.24.2"),
    )?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &obj(deployment))
        .await?;
    // Creations straight through the API server while nobody serves the registered URL: each
    // succeeds (fail open). Dry run: admitted, never stored. A controller owner, as the pods
    // the webhook acts on have.
    let owner = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "probe-owner"}})),
        )
        .await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut latencies = Vec::new();
    for i in 0..3 {
        let pod: Pod = obj(json!({
            "metadata": {
                "name": format!("probe-{i}"),
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "probe-owner",
                    "uid": owner.uid().unwrap_or_default(), "controller": true,
                }],
            },
            "spec": {"containers": [{"name": "app", "image": OLD_PROXY}]},
        }));
        let started = std::time::Instant::now();
        let admitted = Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&dry_run, &pod)
            .await?;
        latencies.push(format!("{:.0}", started.elapsed().as_secs_f64() * 1e3));
        assert!(!gated(&admitted), "nobody mutated it");
    }
    eprintln!(
        "webhook down (URL not served): pod creations succeeded in [{}] ms (timeoutSeconds {})",
        latencies.join(", "),
        configuration::TIMEOUT_SECONDS
    );
    let created = await_pods(&client, &ns, "2 pods created", 2, |p| {
        proxy_status(p).is_some()
    })
    .await?;
    let done = await_pods(&client, &ns, "2 pods upgraded in place and Ready", 2, |p| {
        spec_image(p, "istio-proxy").as_deref() == Some(NEW_PROXY)
            && proxy_status(p).is_some_and(|(image, _, _)| image == NEW_PROXY)
            && is_ready(p)
    })
    .await;
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get("hello")
                .await?;
            let status = d
                .annotations()
                .get(inplace_upgrade::STATUS_ANNOTATION)
                .cloned();
            return Err(format!("{e}; the workload's status: {status:?}").into());
        }
    };
    for pod in &done {
        assert!(!gated(pod), "{}: the webhook never saw it", pod.name_any());
        // Created with the template's image, then patched in place by the controller (which
        // may happen before or after the container first started).
        let state: Value = serde_json::from_str(
            pod.annotations()
                .get(inplace_upgrade::STATE_ANNOTATION)
                .ok_or("no state annotation: the controller never patched it")?,
        )?;
        assert_eq!(
            state["containers"][0]["previousImage"],
            OLD_PROXY,
            "{}: {state}",
            pod.name_any()
        );
        assert!(
            created.iter().any(|c| c.uid() == pod.uid()),
            "{}: the same pod, upgraded in place (not recreated)",
            pod.name_any()
        );
    }
    // The documented caveat, reported in the workload's status: no gate on either pod.
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("hello")
        .await?;
    let status: Value = serde_json::from_str(
        d.annotations()
            .get(inplace_upgrade::STATUS_ANNOTATION)
            .ok_or("no workload status")?,
    )?;
    assert_eq!(status["ungatedPods"], json!(2), "{status}");
    Ok(())
}

fn rotate(shared: &Shared) -> AnyResult<()> {
    let read = |name: &str| std::fs::read_to_string(shared.cert_dir.join(name));
    let ca = CertificatePem {
        cert_pem: read("ca.crt")?,
        key_pem: read("ca.key")?,
    };
    let names = SubjectAltNames::default().with_ip_address(shared.host.parse()?);
    let serving = certs::generate_serving_certificate(
        &ca,
        &shared.host,
        &names,
        Duration::from_secs(24 * 3600),
    )?;
    serve::write_secret_dir(
        &shared.cert_dir,
        &[
            ("ca.crt", &ca.cert_pem),
            ("ca.key", &ca.key_pem),
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
        ],
    )?;
    Ok(())
}

async fn await_reloads(admin: SocketAddr, at_least: f64) -> AnyResult<()> {
    tokio::time::timeout(testenv::WAIT_LIMIT, async {
        loop {
            let text = metrics(admin).await.unwrap_or_default();
            if metric(
                &text,
                "webhook_certificate_reloads_total",
                &["result=\"success\""],
            ) >= at_least
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .map_err(|_| format!("the served certificate was not reloaded {at_least} times").into())
}

#[tokio::test]
async fn a_certificate_rotation_while_pods_are_created_loses_none() -> TestResult {
    let (client, ns) = setup("rotate", json!({}), false).await?;
    let shared = shared()?;
    let deployment = fixture_workload(
        "hello-old-version.yaml.injected",
        "Deployment",
        0,
        Some("istio-proxy=proxyv2:1.24.2"),
    )?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &obj(deployment))
        .await?;
    let base = metric(
        &metrics(shared.admin).await?,
        "webhook_certificate_reloads_total",
        &["result=\"success\""],
    );
    for round in 1..=3 {
        // Pod creations in flight while the files are swapped under the server.
        scale(&client, &ns, round * 3).await?;
        rotate(shared)?;
        await_reloads(shared.admin, base + f64::from(round)).await?;
    }
    let pods = await_pods(&client, &ns, "9 pods, every one mutated", 9, |p| {
        spec_image(p, "istio-proxy").as_deref() == Some(NEW_PROXY) && is_ready(p)
    })
    .await?;
    let missed: Vec<String> = pods
        .iter()
        .filter(|p| !gated(p) || proxy_status(p).is_some_and(|(_, restarts, _)| restarts > 0))
        .map(|p| p.name_any())
        .collect();
    assert!(
        missed.is_empty(),
        "pods the webhook missed during rotation: {missed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_policy_can_always_be_paused_and_bad_policies_are_refused() -> TestResult {
    let (client, ns) = setup("policy", json!({}), false).await?;
    let policies = Api::<InPlaceUpgradePolicy>::all(client.clone());
    let bad: InPlaceUpgradePolicy = obj(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": format!("{ns}-bad")},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}, "allowedImages": ["registry.io/{a"]},
    }));
    let refused = policies.create(&PostParams::default(), &bad).await;
    match refused {
        Err(kube::Error::Api(s)) => {
            assert!(s.message.contains("not a valid glob"), "{}", s.message)
        }
        other => return Err(format!("a policy with a broken glob was admitted: {other:?}").into()),
    }
    let mut paused = bad.clone();
    paused.spec.paused = true;
    policies.create(&PostParams::default(), &paused).await?;
    policies
        .delete(&paused.name_any(), &Default::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn replicas_starting_at_once_share_one_self_managed_ca() -> TestResult {
    let shared = shared()?;
    let ns = shared.env.namespace("certs").await?;
    let client = shared.env.client()?;
    let sm = serve::SelfManaged {
        namespace: ns.clone(),
        secret: "inplace-upgrade-webhook-tls".into(),
        service: "inplace-upgrade-webhook".into(),
        service_port: None,
        check_interval: Duration::from_secs(3600),
        dir: shared.cert_dir.clone(),
        reload_interval: Duration::from_secs(5),
    };
    // Three replicas race to create the Secret: one wins, the others serve its certificates.
    let (a, b, c) = tokio::join!(
        serve::ensure_secret(&client, &sm),
        serve::ensure_secret(&client, &sm),
        serve::ensure_secret(&client, &sm),
    );
    let (a, b, c) = (a?, b?, c?);
    assert_eq!(a, b);
    assert_eq!(b, c);
    // A restart keeps what is valid.
    assert_eq!(serve::ensure_secret(&client, &sm).await?, a);
    let names = SubjectAltNames::for_service(&sm.service, &ns);
    assert!(matches!(
        certs::check_serving_certificate(
            &a.ca.cert_pem,
            &a.serving,
            &names,
            Duration::from_secs(24 * 3600),
            std::time::SystemTime::now()
        ),
        certs::Renewal::NotNeeded { .. }
    ));
    Ok(())
}

/// The binary's `manifests webhooks` and `certs` subcommands (no cluster needed).
#[test]
fn the_binary_prints_the_in_cluster_configurations_and_writes_certificates() -> TestResult {
    let bin = env!("CARGO_BIN_EXE_inplace-upgrade");
    let out = std::process::Command::new(bin)
        .args([
            "manifests",
            "webhooks",
            "--namespace",
            "ops",
            "--service",
            "iu",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(<Value as serde::Deserialize>::deserialize)
        .collect::<Result<_, _>>()?;
    // The two configurations, then the policy that holds the controller to its namespace
    // label and its binding.
    assert_eq!(docs.len(), 4);
    assert_eq!(
        docs[0]["webhooks"][0]["clientConfig"]["service"]["name"],
        "iu"
    );
    assert_eq!(docs[2]["kind"], "ValidatingAdmissionPolicy");
    assert!(
        docs[2]["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .is_some_and(|e| e.contains("system:serviceaccount:ops:inplace-upgrade-controller")),
        "the policy binds the controller's ServiceAccount of the given namespace"
    );
    assert_eq!(docs[3]["kind"], "ValidatingAdmissionPolicyBinding");
    assert_eq!(
        docs[1]["webhooks"][1]["clientConfig"]["service"]["path"],
        "/validate-policies"
    );
    assert!(
        docs[0]["webhooks"][0]["clientConfig"]
            .get("caBundle")
            .is_none()
    );
    assert_eq!(
        docs[0]["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", "ops"])
    );
    assert_eq!(
        docs[0]["webhooks"][0]["namespaceSelector"]["matchExpressions"][1],
        json!({"key": GOVERNED_LABEL, "operator": "In", "values": ["true"]}),
        "the pod webhook is called in governed namespaces only"
    );

    let dir = std::env::temp_dir().join(format!("inplace-upgrade-certs-{}", std::process::id()));
    let out = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(&dir)
        .args(["--dns", "iu.ops.svc", "--ip", "127.0.0.1"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let serving = CertificatePem {
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
    };
    let names = SubjectAltNames::default()
        .with_dns_name("iu.ops.svc")
        .with_ip_address([127, 0, 0, 1].into());
    assert!(matches!(
        certs::check_serving_certificate(
            &read("ca.crt")?,
            &serving,
            &names,
            Duration::from_secs(24 * 3600),
            std::time::SystemTime::now()
        ),
        certs::Renewal::NotNeeded { .. }
    ));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("tls.key"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private keys are readable by their owner only");
    std::fs::remove_dir_all(&dir)?;
    let refused = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(&dir)
        .output()?;
    assert!(!refused.status.success(), "no names: refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--dns"));
    Ok(())
}
