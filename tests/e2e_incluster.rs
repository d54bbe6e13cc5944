//! End-to-end, installed as users install it: `kubectl apply -k` of `deploy/` with an overlay
//! that only swaps the image, on a real node (kubelet + containerd on this host), and a real
//! in-place rollout driven by the controller and webhook running there as pods.
//!
//! - The environment: one real node, kube-proxy from the same Kubernetes build (so Service
//!   IPs work on the host and in pods, as in a cluster; the Service range is routed into a
//!   port-less bridge, so no Service IP leaves the machine — DESIGN §7), kube-apiserver on the
//!   node's IP (pods reach it through the `kubernetes` Service, whose endpoint it publishes).
//! - The image: what `deploy/` runs, built by the product image code — in CI from the debug
//!   binary this test build already made plus the shared libraries it links
//!   ([`testenv::product::build_with_shared_libraries`]): a static release build is a second
//!   compile of everything (58 min cold under load here), too slow for CI. `tests/e2e/real/run.sh`
//!   installs the static product image proper.
//! - Installed: the controller (2 replicas, one leader on the Lease) and the webhook (2
//!   replicas, self-managed certificates: its Secret and both configurations' caBundle, a
//!   PodDisruptionBudget) run as pods under their ServiceAccounts; the API server calls the
//!   webhook through its Service (the configurations name no URL): an invalid annotation is
//!   refused by it, and new pods get the readiness gate from it.
//! - Then a rollout: a Deployment annotated to a new image is upgraded in place pod by pod
//!   (same UIDs, node and IPs, the container restarted once with the new image), and a scale-up
//!   gives a pod born on the target with the gate, made Ready by the in-cluster controller.
//!
//! Needs real nodes (root; `INPLACE_REAL_NODES=require` in CI makes a missing one a failure)
//! and the host's kube-proxy slot (one environment per host may run kube-proxy).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use inplace_upgrade::{STATE_ANNOTATION, TARGETS_ANNOTATION};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use testenv::{Options, TestEnv, wait_for, wait_list};

const OLD: &str = "registry.inplace.test/testapp:1.0";
const NEW: &str = "registry.inplace.test/testapp:2.0";
const CONTROLLER: &str = "inplace-upgrade-controller";
const WEBHOOK: &str = "inplace-upgrade-webhook";

/// Where this build's image goes: beside the binary, so worktrees and CI never share it.
fn image_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join("inplace-upgrade-image")
}

fn kubectl(env: &TestEnv, args: &[&str]) -> AnyResult<String> {
    let mut command = env.kubectl();
    command.args(args);
    run(command)
}

/// What an in-place restart must keep and change, per pod: (UID, node, pod IP, containerID,
/// restartCount) of container `app`.
fn identity(pod: &Pod) -> (String, String, String, String, i32) {
    let status = status_of(pod, "app");
    (
        pod.uid().unwrap_or_default(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        status
            .and_then(|s| s.container_id.clone())
            .unwrap_or_default(),
        status.map_or(-1, |s| s.restart_count),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_installed_in_cluster_on_a_real_node_upgrades_in_place() -> AnyResult<()> {
    if !testenv::real_nodes_wanted()? {
        return Ok(());
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_inplace-upgrade"));
    let image = tokio::task::spawn_blocking(move || {
        testenv::product::build_with_shared_libraries(&image_dir(), &binary)
    })
    .await??;
    let set = testenv::test_images()?;
    let mut options = Options {
        real_nodes: 1,
        ..Options::default()
    };
    options.kubelet.nodes = 0;
    options.real.kube_proxy = true;
    let env = TestEnv::start(options).await?;
    env.import_images(std::slice::from_ref(&image.archive))
        .await?;
    let client = env.client()?;

    // Install: deploy/ with only the image swapped, as a user would.
    let overlay = env.dir().join("overlay");
    testenv::product::write_overlay(&image, &overlay)?;
    let overlay = overlay.display().to_string();
    kubectl(&env, &["apply", "-k", &overlay, "--server-side"])?;
    let system = CONTROLLER_NAMESPACE;
    let deployments = Api::<Deployment>::namespaced(client.clone(), system);
    for name in [CONTROLLER, WEBHOOK] {
        let d = deployments.get(name).await?;
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "{name}: deploy/ asks for 2 replicas"
        );
        await_deployment_ready(&deployments, name, 2).await?;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), system);
    let mut controller_pods = Vec::new();
    for name in [CONTROLLER, WEBHOOK] {
        let listed = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={name}")))
            .await?;
        assert_eq!(listed.items.len(), 2, "{name} pods: {:?}", listed.items);
        for pod in &listed.items {
            let spec = pod.spec.as_ref().ok_or("pod without spec")?;
            assert_eq!(spec.service_account_name.as_deref(), Some(name));
            assert_eq!(
                spec.containers[0].image.as_deref(),
                Some(image.name.as_str())
            );
            let node = spec.node_name.as_deref().unwrap_or_default();
            assert!(env.real_nodes().iter().any(|n| n == node), "{node}");
            assert!(is_ready(pod), "{}", pod.name_any());
        }
        if name == CONTROLLER {
            controller_pods = listed.items.iter().map(ResourceExt::name_any).collect();
        }
    }
    // One leader among the two controller pods (their identity is the pod's name).
    let among: Vec<&str> = controller_pods.iter().map(String::as_str).collect();
    let leader = await_holder(&client, &among).await?;
    eprintln!("controller leader: {leader}");

    // The webhook's self-managed certificates: one CA in the Secret, in both configurations.
    let secret = Api::<Secret>::namespaced(client.clone(), system)
        .get("inplace-upgrade-webhook-tls")
        .await?;
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key")),
        "the webhook's Secret holds a serving certificate"
    );
    let mutating = wait_for(
        &Api::<MutatingWebhookConfiguration>::all(client.clone()),
        "inplace-upgrade",
        "the mutating configuration's caBundle",
        |c: &MutatingWebhookConfiguration| {
            c.webhooks.iter().flatten().all(|w| {
                w.client_config.url.is_none()
                    && w.client_config.service.is_some()
                    && w.client_config.ca_bundle.is_some()
            })
        },
    )
    .await?;
    let ca = mutating.webhooks.as_ref().ok_or("no webhooks")?[0]
        .client_config
        .ca_bundle
        .clone();
    wait_for(
        &Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        "inplace-upgrade",
        "the validating configurations' caBundle, the same CA",
        |c: &ValidatingWebhookConfiguration| {
            c.webhooks.iter().flatten().all(|w| {
                w.client_config.url.is_none()
                    && w.client_config.service.is_some()
                    && w.client_config.ca_bundle == ca
            })
        },
    )
    .await?;
    let pdb = wait_for(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), system),
        WEBHOOK,
        "the webhook's PodDisruptionBudget sees both replicas",
        |p: &PodDisruptionBudget| p.status.as_ref().is_some_and(|s| s.current_healthy == 2),
    )
    .await?;
    assert_eq!(pdb.status.as_ref().map(|s| s.disruptions_allowed), Some(1));

    // A workload and a policy that governs its namespace.
    let ns = env.namespace("incluster").await?;
    create_policy(&client, &ns, json!({})).await?;
    let apps = Api::<Deployment>::namespaced(client.clone(), &ns);
    let web: Deployment = obj(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": OLD,
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": 8080},
                            "periodSeconds": 1,
                        },
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }],
                },
            },
        },
    }));
    apps.create(&PostParams::default(), &web).await?;
    await_deployment_ready(&apps, "web", 2).await?;

    // The validating webhook answers through the Service: a bad annotation is refused.
    let bad = json!({"metadata": {"annotations": {TARGETS_ANNOTATION: "app=:2.0, oops"}}});
    let refused = apps
        .patch("web", &PatchParams::default(), &Patch::Merge(&bad))
        .await;
    match refused {
        Err(kube::Error::Api(e))
            if e.message.contains("denied the request")
                && e.message.contains("entry \"oops\" has no '='") =>
        {
            eprintln!("refused by the in-cluster webhook: {}", e.message)
        }
        other => return Err(format!("an invalid target was not refused: {other:?}").into()),
    }

    // The rollout: annotate, and every pod is upgraded in place.
    let app_pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let by_app = ListParams::default().labels("app=web");
    let before: BTreeMap<String, _> = app_pods
        .list(&by_app)
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), identity(p)))
        .collect();
    let target = format!("app={NEW}");
    annotate(&apps, "web", TARGETS_ANNOTATION, &target).await?;
    await_phase(&apps, "web", &target, "Completed").await?;
    // The last pod's gate was opened as the rollout completed; kubelet then reports it Ready.
    let after = wait_list(
        &app_pods,
        watcher::Config::default().labels("app=web"),
        "both pods of web Ready on the new image",
        |pods: &[Pod]| {
            pods.len() == 2
                && pods
                    .iter()
                    .all(|p| is_ready(p) && spec_image(p, "app").as_deref() == Some(NEW))
        },
    )
    .await?;
    let new_id = set
        .get(NEW)
        .ok_or("testapp:2.0 in the image set")?
        .id
        .clone();
    assert_eq!(after.len(), 2, "{after:?}");
    for pod in &after {
        let name = pod.name_any();
        let (uid, node, ip, container, restarts) = before
            .get(&name)
            .ok_or_else(|| format!("{name} is a new pod: the rollout recreated one"))?;
        let now = identity(pod);
        assert_eq!((&now.0, &now.1, &now.2), (uid, node, ip), "{name} kept");
        assert_ne!(&now.3, container, "{name}: a new container");
        assert_eq!(now.4, restarts + 1, "{name}: restarted once");
        assert_eq!(spec_image(pod, "app").as_deref(), Some(NEW));
        let status = status_of(pod, "app").ok_or("no status for app")?;
        assert_eq!(status.image_id, new_id, "{name} runs the new image");
        assert!(status.ready && is_ready(pod), "{name} Ready");
        assert!(pod.annotations().contains_key(STATE_ANNOTATION), "{name}");
    }

    // Scale up: the new pod is born on the target, with the gate, and becomes Ready.
    let current = apps.get("web").await?;
    await_webhook_mutates_pods_of(&client, &ns, &current, "the target image", |p| {
        spec_image(p, "app").as_deref() == Some(NEW)
    })
    .await?;
    let scale = json!({"spec": {"replicas": 3}});
    apps.patch("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    await_deployment_ready(&apps, "web", 3).await?;
    let born: Vec<Pod> = app_pods
        .list(&by_app)
        .await?
        .items
        .into_iter()
        .filter(|p| !before.contains_key(&p.name_any()))
        .collect();
    assert_eq!(born.len(), 1, "one new pod: {born:?}");
    let pod = &born[0];
    assert_eq!(
        spec_image(pod, "app").as_deref(),
        Some(NEW),
        "born on the target"
    );
    assert!(has_gate(pod), "born with the readiness gate");
    assert_eq!(
        gate(pod).map(|g| g.0).as_deref(),
        Some("True"),
        "the in-cluster controller opened the gate"
    );
    assert_eq!(status_of(pod, "app").map(|s| s.restart_count), Some(0));

    // Nothing in either component's log says it lacked a permission.
    for name in [CONTROLLER, WEBHOOK] {
        let logs = kubectl(
            &env,
            &[
                "-n",
                system,
                "logs",
                "--tail=-1",
                "-l",
                &format!("app.kubernetes.io/name={name}"),
            ],
        )?;
        assert!(!logs.contains("forbidden"), "{name} log:\n{logs}");
    }
    Ok(())
}
