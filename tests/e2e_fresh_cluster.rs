//! The newcomer's path, on a fresh cluster (nothing of deploy/ applied: no namespace, no CRD,
//! no RBAC), with the binary as a user runs it:
//! - `controller` stops at once with one line naming what is missing and the fix — first the
//!   namespace of its leader Lease, then the CRD — instead of warning every 2 s forever;
//! - `run` (the laptop mode) creates its namespace and the CRD, leads, injects the readiness
//!   gate into new pods and upgrades a Deployment in place;
//! - afterwards `controller` starts and leads.
//!
//! This suite has its own control plane (one per test binary) and one test, whose steps
//! depend on each other.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use inplace_upgrade::TARGETS_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testenv::{TestEnv, wait_for};

/// Runs `inplace-upgrade controller` against the cluster until it exits (killed, and the test
/// failed, if it runs longer than the wait limit: that is the stall this suite is about).
async fn controller_until_exit(kubeconfig: &Path) -> AnyResult<Output> {
    let child = Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
        .args(["controller", "--admin-addr", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("POD_NAMESPACE")
        // What a user sees by default: anyhow adds a backtrace only when these ask for one.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let waited = tokio::time::timeout(
        testenv::WAIT_LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(output) => Ok(output??),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(format!(
                "the controller was still running after {:?} on a cluster it cannot work on",
                testenv::WAIT_LIMIT
            )
            .into())
        }
    }
}

/// The controller failed, and said so in exactly one line holding every one of `needles`.
fn assert_one_line_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status: {}", output.status);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line on stderr, got:\n{stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[tokio::test]
async fn the_controller_names_what_is_missing_and_run_works_on_a_fresh_cluster() -> TestResult {
    let env = TestEnv::shared()?;
    if env.is_external() {
        eprintln!(
            "skipped: this suite needs a fresh cluster of its own (it installs the CRD and creates inplace-upgrade-system); {} gives an existing one",
            testenv::E2E_KUBECONFIG_ENV
        );
        return Ok(());
    }
    let client = env.client()?;
    let kubeconfig = env.kubeconfig_path();

    // 1. Nothing installed: the Lease's namespace is named, with the fix.
    let output = controller_until_exit(kubeconfig).await?;
    assert_one_line_error(
        &output,
        &[
            "namespace \"inplace-upgrade-system\" does not exist",
            "kubectl create namespace inplace-upgrade-system",
            "kubectl apply -k deploy",
        ],
    );

    // 2. The namespace exists but the CRD does not: the CRD is named, with the fix.
    let ns: Namespace = obj(json!({"metadata": {"name": CONTROLLER_NAMESPACE}}));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let output = controller_until_exit(kubeconfig).await?;
    assert_one_line_error(
        &output,
        &["inplaceupgradepolicies.inplace-upgrade.io", "deploy/crds"],
    );

    // 3. `run` in a namespace that does not exist yet, on a cluster without the CRD.
    let laptop_ns = "laptop-mode";
    let (port, admin) = (free_port()?, free_port()?);
    let log = env.dir().join("logs").join("run.log");
    let mut run = WebhookProcess {
        child: Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
            .args(["run", "--namespace", laptop_ns, "--identity", "laptop"])
            .args(["--webhook-url", &format!("https://127.0.0.1:{port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log-level", "info"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
        admin: ([127, 0, 0, 1], admin).into(),
        log: log.clone(),
    };
    // Ready = certificate loaded and every watch listed (the policy watch needs the CRD).
    run.await_ready().await?;
    wait_for(
        &Api::<Lease>::namespaced(client.clone(), laptop_ns),
        inplace_upgrade::controller::LEASE_NAME,
        "the laptop mode holding its Lease",
        |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| h == "laptop")
        },
    )
    .await?;
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("created the controller's namespace")
            && text.contains("installed the InPlaceUpgradePolicy CRD"),
        "the log says what was created:\n{text}"
    );

    // The webhook injects the gate into new pods, and the controller upgrades them in place.
    let shop = "shop";
    let ns: Namespace = obj(json!({"metadata": {"name": shop}}));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    create_policy(&client, shop, json!({})).await?;
    // No replica until a pod would get the gate (the configurations, the policy and the
    // Lease reach the webhook by watches of their own).
    let deployments = Api::<Deployment>::namespaced(client.clone(), shop);
    let deployment = hello_deployment("hello-old-version.yaml.injected", 0, false)?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    await_webhook_gates_pods_of(&client, shop, &deployment).await?;
    deployments
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    await_deployment_ready(&deployments, "hello", 2).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), shop)
        .list(&ListParams::default().labels("app=hello"))
        .await?;
    assert_eq!(pods.items.len(), 2);
    for pod in &pods.items {
        let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.clone());
        assert!(
            gates.is_some_and(|g| g
                .iter()
                .any(|g| g.condition_type == inplace_upgrade::READINESS_GATE)),
            "the webhook injected the gate into {:?}",
            pod.metadata.name
        );
    }
    let target = "istio-proxy=proxyv2:1.24.2";
    annotate(&deployments, "hello", TARGETS_ANNOTATION, target).await?;
    await_phase(&deployments, "hello", target, "Completed").await?;
    await_deployment_ready(&deployments, "hello", 2).await?;

    // 4. With the namespace and the CRD in place, `controller` starts and leads.
    let status = run.child.kill().and_then(|()| run.child.wait())?;
    assert!(!status.success(), "killed");
    let mut replica = Replica::start(env, "newcomer")?;
    let held = await_holder(&client, &["newcomer"]).await;
    assert!(held.is_ok(), "{held:?}\n{}", replica.log_tail());
    replica.terminate()?;
    Ok(())
}
