//! The main scenarios on a real node: kubelet, containerd, runc and a CNI bridge on this host
//! (testenv's shared real-node environment: root only; skipped with a printed reason
//! otherwise, a failure with `INPLACE_REAL_NODES=require` as in CI), pods from the real Istio
//! injector's fixtures running the test images, the images pulled from the loopback registry
//! when not imported. The controller and the webhook run as processes beside the cluster,
//! with their own TLS and the webhook configuration pointing at 127.0.0.1.
//!
//! Tests run one at a time: each starts its own controller process, and two would share the
//! Lease.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use inplace_upgrade::TARGETS_ANNOTATION;
use inplace_upgrade::admission::configuration::{self, ConfigurationOptions, Endpoint};
use inplace_upgrade::serve;
use inplace_upgrade_webhook::certs::{self, SubjectAltNames};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use testenv::{TestEnv, wait_list};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real-node environment with a controller and a webhook process for one test.
struct Stack {
    env: &'static TestEnv,
    client: Client,
    controller: Replica,
    _webhook: WebhookProcess,
}

impl Stack {
    /// `None` when real nodes are skipped here.
    async fn start(name: &str) -> AnyResult<Option<Self>> {
        let Some(env) = TestEnv::shared_real()? else {
            return Ok(None);
        };
        let client = env.client()?;
        install(&client).await?;
        let controller = Replica::start(env, &format!("{name}-controller"))?;
        await_holder(&client, &[controller.identity.as_str()]).await?;

        // The webhook's certificate for 127.0.0.1 (the URL the API server dials), as a Secret
        // mounted in a directory.
        let ca = certs::generate_ca(&format!("{name} CA"), Duration::from_secs(24 * 3600))?;
        let names = SubjectAltNames::default().with_ip_address([127, 0, 0, 1].into());
        let serving = certs::generate_serving_certificate(
            &ca,
            "127.0.0.1",
            &names,
            Duration::from_secs(3600),
        )?;
        let cert_dir = env.dir().join(format!("{name}-webhook-tls"));
        serve::write_secret_dir(
            &cert_dir,
            &[
                ("tls.crt", &serving.cert_pem),
                ("tls.key", &serving.key_pem),
            ],
        )?;
        let port = free_port()?;
        let mut webhook = WebhookProcess::start(
            Path::new(env!("CARGO_BIN_EXE_inplace-upgrade")),
            env.kubeconfig_path(),
            &cert_dir,
            port,
            env.dir().join("logs").join(format!("{name}-webhook.log")),
        )?;
        webhook.await_ready().await?;
        configuration::apply(
            &client,
            &ConfigurationOptions {
                endpoint: Endpoint::Url(format!("https://127.0.0.1:{port}")),
                ca_bundle: Some(ca.cert_pem.clone().into_bytes()),
                own_namespace: CONTROLLER_NAMESPACE.into(),
                cert_manager_certificate: None,
            },
            "e2e-real",
        )
        .await?;
        Ok(Some(Self {
            env,
            client,
            controller,
            _webhook: webhook,
        }))
    }

    /// A namespace with a policy selecting it and the ConfigMap `istio-ca-root-cert` that
    /// the injected pods mount (istiod publishes it in every namespace; a real kubelet does
    /// not start such a pod without it).
    async fn namespace(&self, prefix: &str, policy: serde_json::Value) -> AnyResult<String> {
        let ns = self.env.namespace(prefix).await?;
        create_policy(&self.client, &ns, policy).await?;
        await_governed(&self.client, &ns).await?;
        create_istio_ca_configmap(&self.client, &ns).await?;
        Ok(ns)
    }

    /// Creates the fixture's Deployment (`replicas`; the webhook injects the readiness gate)
    /// and waits until it is ready.
    async fn deploy(
        &self,
        ns: &str,
        fixture: &str,
        replicas: i32,
    ) -> AnyResult<(Api<Deployment>, String)> {
        let d: Deployment = fixture_workload(fixture, "Deployment", Some(replicas), false)?;
        let name = d.name_any();
        let api = Api::<Deployment>::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &d).await?;
        await_deployment_ready(&api, &name, replicas).await?;
        Ok((api, name))
    }

    /// Waits for the workload's `phase` for `target`; on a timeout the controller's log tail
    /// is in the error.
    async fn await_phase(
        &self,
        api: &Api<Deployment>,
        name: &str,
        target: &str,
        phase: &str,
    ) -> AnyResult<Deployment> {
        await_phase(api, name, target, phase)
            .await
            .map_err(|e| format!("{e}\n--- controller log:\n{}", self.controller.log_tail()).into())
    }
}

/// The old instance's log of a container.
async fn previous_log(client: &Client, ns: &str, pod: &str, container: &str) -> AnyResult<String> {
    let params = LogParams {
        container: Some(container.into()),
        previous: true,
        ..LogParams::default()
    };
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &params)
        .await?)
}

/// The motivating case on a real kubelet: Istio's native `istio-proxy` sidecar of a gated
/// Deployment moved to a new image one pod at a time. Each pod keeps its UID, IP and node;
/// only the sidecar gets a new containerID (restartCount + 1) and the app container is
/// untouched; each pod leaves the Service's ready endpoints before its patch; Istio's own
/// preStop drain (`pilot-agent request POST drain`) runs in the old proxy.
#[tokio::test]
async fn gated_native_sidecar_rollout_keeps_uid_ip_and_node() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("rollout").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack.namespace("real-rollout", json!({})).await?;
    create_service(&client, &ns, "hello").await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 2).await?;
    let before = pods_by_name(&client, &ns, "hello").await?;
    assert_eq!(before.len(), 2);
    for (n, p) in &before {
        assert!(
            p.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| g
                    .iter()
                    .any(|g| g.condition_type == "inplace-upgrade.io/ready")),
            "the webhook gave {n} our readiness gate"
        );
    }
    let seen = observe(&client, &ns, "hello", "istio-proxy").await?;

    let target = "istio-proxy=proxyv2:1.25.0";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    stack
        .await_phase(&deployments, &name, target, "Completed")
        .await?;
    await_deployment_ready(&deployments, &name, 2).await?;

    let after = pods_by_name(&client, &ns, "hello").await?;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no pod was replaced"
    );
    for (pod_name, pod) in &after {
        let (b, a) = (
            facts(&before[pod_name], "istio-proxy", "nginx"),
            facts(pod, "istio-proxy", "nginx"),
        );
        assert_eq!(
            (&a.uid, &a.ip, &a.node),
            (&b.uid, &b.ip, &b.node),
            "{pod_name} kept its UID, IP and node"
        );
        assert_ne!(a.proxy_id, b.proxy_id, "{pod_name}: istio-proxy restarted");
        assert_eq!(a.proxy_restarts, b.proxy_restarts + 1, "{pod_name}");
        assert_eq!(a.app_id, b.app_id, "{pod_name}: the app did not restart");
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref(),
            Some("registry.istio.io/testing/proxyv2:1.25.0")
        );
        assert_eq!(state_phase(pod).as_deref(), Some("Succeeded"), "{pod_name}");
        assert!(is_ready(pod), "{pod_name}");
        // Istio's preStop hook asked the old proxy to drain before SIGTERM.
        let old = previous_log(&client, &ns, pod_name, "istio-proxy").await?;
        assert!(
            old.contains("event=hook") && old.contains("event=drain"),
            "{pod_name}: the old istio-proxy's preStop drain ran:\n{old}"
        );
    }
    let o = seen.lock().map_err(|_| "observer poisoned")?;
    assert!(o.max_not_ready <= 1, "max unavailable {}", o.max_not_ready);
    assert_eq!(
        o.patched_rv.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "every pod was patched once"
    );
    o.drained_before_patched()?;
    Ok(())
}

/// Pre-pull before drain on a real kubelet (issue 16 item 3): the target image, pulled from
/// the loopback registry, is pulled onto the node by a pre-pull pod before any pod is drained:
/// kubelet's `Pulled` Event on that pod, then the runtime's refusal of its command (it can run
/// nothing of the image: `StartError`, exit code 128), then the drain. The pre-pull pod is
/// gone at the end.
#[tokio::test]
async fn the_target_image_is_pulled_onto_the_node_before_the_drain() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("prepull").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack.namespace("real-prepull", json!({})).await?;
    create_service(&client, &ns, "hello").await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 2).await?;
    let seen = watch_prepulls(&client, &ns).await?;
    let target = "istio-proxy=proxyv2:1.26.0";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    stack
        .await_phase(&deployments, &name, target, "Completed")
        .await?;
    await_no_prepull_pods(&client, &ns).await?;
    let o = seen.lock().map_err(|_| "watch poisoned")?.clone();
    println!("pre-pull on a real kubelet: {:#?}", o.pulled_as);
    assert_eq!(o.drained_at.len(), 2, "{o:?}");
    for (pod, (node, drained)) in &o.drained_at {
        let pulled = o.pulled_at.get(node);
        assert!(
            pulled.is_some_and(|p| p < drained),
            "{pod} on {node} drained at rv {drained}, the image pulled there at {pulled:?}: {o:?}"
        );
    }
    for said in o.pulled_as.values() {
        assert!(
            said.starts_with("terminated StartError 128:") && said.contains("no such file"),
            "what a real kubelet reports after the pull: {said}"
        );
    }
    for pod in o.pods.keys() {
        let pulled = await_event(&client, &ns, pod, "Pulled").await?;
        assert!(
            pulled
                .message
                .as_deref()
                .is_some_and(|m| m.contains("registry.istio.io/testing/proxyv2:1.26.0")),
            "{pulled:?}"
        );
    }
    Ok(())
}

/// A tag the loopback registry does not have, with pre-pull on (the default): the pre-pull
/// pod's real pull fails (404, `ErrImagePull`) and the rollout stops there — no pod drained
/// or patched, the status names the image and kubelet's message, nothing left behind.
#[tokio::test]
async fn a_missing_tag_stops_the_rollout_at_its_pre_pull() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("prepull-missing").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack.namespace("real-prepull-missing", json!({})).await?;
    let (deployments, name) = stack
        .deploy(&ns, "hello-old-version.yaml.injected", 2)
        .await?;
    let before = pods_by_name(&client, &ns, "hello").await?;
    let seen = watch_prepulls(&client, &ns).await?;
    let target = "istio-proxy=proxyv2:1.24.2-fail-pull";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    let failed = stack
        .await_phase(&deployments, &name, target, "Failed")
        .await?;
    let status = workload_status(failed.annotations()).ok_or("no status")?;
    let message = status["message"].as_str().unwrap_or_default();
    println!("the status on a real kubelet: {message}");
    assert!(
        message.contains("pre-pull")
            && message.contains("registry.istio.io/testing/proxyv2:1.24.2-fail-pull")
            && (message.contains("ErrImagePull") || message.contains("ImagePullBackOff")),
        "{status}"
    );
    await_no_prepull_pods(&client, &ns).await?;
    let after = pods_by_name(&client, &ns, "hello").await?;
    for (pod_name, pod) in &after {
        let (b, a) = (
            facts(&before[pod_name], "istio-proxy", "hello"),
            facts(pod, "istio-proxy", "hello"),
        );
        assert_eq!(a.proxy_id, b.proxy_id, "{pod_name} untouched");
        assert!(state_phase(pod).is_none(), "{pod_name} was never patched");
        assert!(is_ready(pod), "{pod_name} is Ready");
    }
    let o = seen.lock().map_err(|_| "watch poisoned")?;
    assert!(o.drained_at.is_empty(), "no pod was drained: {o:?}");
    Ok(())
}

/// A target tag the loopback registry does not have: the real pull fails (404,
/// `ErrImagePull`), the first pod is rolled back to its previous image, the workload is
/// `Failed`, and no other pod is touched. (`istio-proxy` as a regular container here: a
/// native sidecar whose old process exits 0 shows no waiting reason — DESIGN §10 — which is
/// the fail-fast fix's own test.)
#[tokio::test]
async fn a_tag_missing_from_the_registry_rolls_the_first_pod_back_and_stops() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("missing").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    // Pre-pull off: this is kubelet's failure after the patch (with pre-pull the missing image
    // stops the rollout before it: `a_missing_tag_stops_the_rollout_at_its_pre_pull`).
    let ns = stack
        .namespace("real-missing", json!({"prePull": {"enabled": false}}))
        .await?;
    let (deployments, name) = stack
        .deploy(&ns, "hello-old-version.yaml.injected", 2)
        .await?;
    let before = pods_by_name(&client, &ns, "hello").await?;
    let target = "istio-proxy=proxyv2:1.24.2-fail-pull";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    let failed = stack
        .await_phase(&deployments, &name, target, "Failed")
        .await?;
    let status = workload_status(failed.annotations()).ok_or("no status")?;
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ErrImagePull") || message.contains("ImagePullBackOff"),
        "the pull failure is reported: {status}"
    );
    await_deployment_ready(&deployments, &name, 2).await?;
    let after = pods_by_name(&client, &ns, "hello").await?;
    let mut touched = Vec::new();
    for (pod_name, pod) in &after {
        let (b, a) = (
            facts(&before[pod_name], "istio-proxy", "hello"),
            facts(pod, "istio-proxy", "hello"),
        );
        assert_eq!((&a.uid, &a.ip), (&b.uid, &b.ip), "{pod_name}");
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref(),
            Some("registry.istio.io/testing/proxyv2:latest"),
            "{pod_name} runs the previous image"
        );
        assert!(is_ready(pod), "{pod_name} is Ready again");
        if a.proxy_id != b.proxy_id {
            touched.push(pod_name.clone());
            assert_eq!(
                state_phase(pod).as_deref(),
                Some("RolledBack"),
                "{pod_name}: {:?}",
                pod.annotations().get(inplace_upgrade::STATE_ANNOTATION)
            );
        } else {
            assert!(state_phase(pod).is_none(), "{pod_name} was never patched");
        }
    }
    assert_eq!(touched.len(), 1, "exactly one pod was tried: {touched:?}");
    Ok(())
}

/// The motivating failure on a real kubelet (DESIGN §10): Istio's native sidecar, whose old
/// process exits 0 on SIGTERM, patched to a tag the registry does not have. Its status keeps
/// the old `terminated` (Completed) state with no waiting reason; the controller sees the
/// failure in the pod's Events and rolls the pod back long before `readyTimeoutSeconds`
/// (300 s here, more than any wait in this test).
#[tokio::test]
async fn a_native_sidecar_failing_without_a_waiting_reason_is_rolled_back_from_events() -> TestResult
{
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("events").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack
        .namespace(
            "real-events",
            json!({"readyTimeoutSeconds": 300, "prePull": {"enabled": false}}),
        )
        .await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 2).await?;
    let target = "istio-proxy=proxyv2:1.24.2-fail-pull";
    let patched = std::time::Instant::now();
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    let failed = stack
        .await_phase(&deployments, &name, target, "Failed")
        .await?;
    println!(
        "failure detected and the workload Failed {:.1} s after the annotation",
        patched.elapsed().as_secs_f64()
    );
    let status = workload_status(failed.annotations()).ok_or("no status")?;
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ErrImagePull") && message.contains("pod Event"),
        "the failure names kubelet's Event: {status}"
    );
    assert!(!message.contains("ReadyTimeout"), "not a timeout: {status}");
    // The Deployment's status can still count both pods Ready from before the drain when the
    // workload turns Failed: wait on the pods themselves, until the rollback has finished.
    wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=hello"),
        "both pods Ready and no rollback in progress",
        |ps: &[Pod]| {
            ps.len() == 2
                && ps.iter().all(is_ready)
                && ps
                    .iter()
                    .all(|p| state_phase(p).as_deref() != Some("RollingBack"))
        },
    )
    .await?;
    let tried: Vec<String> = pods_by_name(&client, &ns, "hello")
        .await?
        .into_iter()
        .filter(|(_, p)| state_phase(p).is_some())
        .map(|(n, p)| {
            assert_eq!(state_phase(&p).as_deref(), Some("RolledBack"), "{n}");
            n
        })
        .collect();
    assert_eq!(tried.len(), 1, "exactly one pod was tried: {tried:?}");
    Ok(())
}

/// A target with the same digest as the running image under another tag (a retag): the
/// container still restarts and the rollout completes — `imageID` does not change, and
/// containerd may keep reporting the old tag as the container's `image`.
#[tokio::test]
async fn a_same_digest_retag_completes() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("retag").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack.namespace("real-retag", json!({})).await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 1).await?;
    let first = "istio-proxy=proxyv2:1.24.2--b7";
    annotate(&deployments, &name, TARGETS_ANNOTATION, first).await?;
    stack
        .await_phase(&deployments, &name, first, "Completed")
        .await?;
    let before = pods_by_name(&client, &ns, "hello").await?;
    let retag = "istio-proxy=proxyv2:stable--b7";
    annotate(&deployments, &name, TARGETS_ANNOTATION, retag).await?;
    stack
        .await_phase(&deployments, &name, retag, "Completed")
        .await?;
    let after = pods_by_name(&client, &ns, "hello").await?;
    for (pod_name, pod) in &after {
        let (b, a) = (&before[pod_name], pod);
        let (sb, sa) = (
            status_of(b, "istio-proxy").ok_or("no status")?,
            status_of(a, "istio-proxy").ok_or("no status")?,
        );
        assert_ne!(sa.container_id, sb.container_id, "{pod_name} restarted");
        assert_eq!(sa.image_id, sb.image_id, "{pod_name}: same digest");
        assert_eq!(a.uid(), b.uid());
        println!(
            "{pod_name}: spec {:?}, runtime reports image {:?}",
            spec_image(a, "istio-proxy"),
            sa.image
        );
    }
    Ok(())
}

/// The controller SIGKILLed while a pod is drained or patched; a new controller process takes
/// the Lease, finishes the rollout, and leaves no pod drained.
#[tokio::test]
async fn a_sigkilled_controller_resumes_the_rollout() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(mut stack) = Stack::start("resume").await? else {
        return Ok(());
    };
    let client = stack.client.clone();
    let ns = stack.namespace("real-resume", json!({})).await?;
    create_service(&client, &ns, "hello").await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 3).await?;
    let before = pods_by_name(&client, &ns, "hello").await?;
    let target = "istio-proxy=proxyv2:1.26.0";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    // Mid-rollout: a pod drained (gate False) or patched and not yet Ready.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let caught = wait_list(
        &pods,
        watcher::Config::default().labels("app=hello"),
        "a pod drained or patched",
        |ps: &[Pod]| {
            ps.iter().any(|p| {
                gate(p).is_some_and(|(s, _)| s == "False")
                    || state_phase(p).as_deref() == Some("Patched")
            })
        },
    )
    .await?;
    let mid: Vec<String> = caught
        .iter()
        .filter(|p| gate(p).is_some_and(|(s, _)| s == "False") || state_phase(p).is_some())
        .map(|p| {
            format!(
                "{} gate={:?} state={:?}",
                p.name_any(),
                gate(p),
                state_phase(p)
            )
        })
        .collect();
    stack.controller.kill();
    println!("SIGKILLed the controller with {mid:?}");
    let successor = Replica::start(stack.env, "resume-successor")?;
    await_holder(&client, &["resume-successor"]).await?;
    stack.controller = successor;
    stack
        .await_phase(&deployments, &name, target, "Completed")
        .await?;
    await_deployment_ready(&deployments, &name, 3).await?;
    let after = pods_by_name(&client, &ns, "hello").await?;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (pod_name, pod) in &after {
        assert_eq!(pod.uid(), before[pod_name].uid(), "{pod_name} kept its UID");
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref(),
            Some("registry.istio.io/testing/proxyv2:1.26.0")
        );
        assert_eq!(state_phase(pod).as_deref(), Some("Succeeded"), "{pod_name}");
        assert_eq!(
            gate(pod).map(|g| g.0).as_deref(),
            Some("True"),
            "{pod_name} is not left drained"
        );
        assert!(is_ready(pod), "{pod_name}");
    }
    Ok(())
}

/// Found on the real kubelet (2026-12): the target `registry.istio.io/testing/proxyv2:1.24.2`
/// is the same image (one digest) as `docker.io/istio/proxyv2:1.24.2`, both known to the
/// node's containerd (as with mirrored registries in real clusters). containerd reports the
/// image's first name as the container's `image`, here the `docker.io` one. Judged by that
/// name the upgraded, running and Ready proxy was never upgraded and was rolled back at
/// `readyTimeoutSeconds`; the classifier now goes by the `imageID` recorded at the patch and
/// kubelet's `observedGeneration` before the name (`runs_expected_image`, src/classify.rs).
#[tokio::test]
async fn a_target_known_under_another_repository_completes() -> TestResult {
    let _one = SERIAL.lock().await;
    let Some(stack) = Stack::start("alias").await? else {
        return Ok(());
    };
    let ns = stack.namespace("real-alias", json!({})).await?;
    let (deployments, name) = stack.deploy(&ns, "frontend.yaml.injected", 1).await?;
    let target = "istio-proxy=proxyv2:1.24.2";
    annotate(&deployments, &name, TARGETS_ANNOTATION, target).await?;
    stack
        .await_phase(&deployments, &name, target, "Completed")
        .await?;
    Ok(())
}
