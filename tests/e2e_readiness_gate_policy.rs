//! End-to-end: the readiness gate without the webhook. On a control plane of its own with the
//! MutatingAdmissionPolicy API enabled (kube-apiserver 1.35:
//! `--feature-gates=MutatingAdmissionPolicy=true
//! --runtime-config=admissionregistration.k8s.io/v1beta1=true`), the policy that
//! `inplace-upgrade manifests readiness-gate-policy` prints adds `inplace-upgrade.io/ready` to
//! the pods of governed namespaces inside the API server; no webhook is registered. The
//! controller admits the gated pods (they become Ready) and upgrades the sidecar in place (the
//! target image comes from the controller). The gate is added once, whatever the pod already
//! has, and never outside governed namespaces.

mod common;

use std::time::Duration;

use common::{
    AnyResult, CONTROLLER_NAMESPACE, NEW_PROXY, TestResult, await_deployment_ready, await_governed,
    await_phase, await_webhook_gates_pods_of, create_policy, install, obj, scale_hello, spec_image,
};
use inplace_upgrade::admission::configuration::{
    MUTATING_ADMISSION_POLICY_API, readiness_gate_policy,
};
use inplace_upgrade::controller::{self, Settings};
use inplace_upgrade::{READINESS_GATE, TARGETS_ANNOTATION};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::api::{ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{Options, TestEnv};

const TARGET: &str = "istio-proxy=proxyv2:1.24.2";

fn gates(pod: &Pod) -> usize {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .map_or(0, |g| {
            g.iter()
                .filter(|g| g.condition_type == READINESS_GATE)
                .count()
        })
}

/// Server-side applies one object of the beta API (k8s-openapi has no type for it).
async fn apply(client: &Client, object: &Value) -> AnyResult<()> {
    let (group, version) = MUTATING_ADMISSION_POLICY_API
        .split_once('/')
        .ok_or("API version without a group")?;
    let kind = object["kind"].as_str().ok_or("object without kind")?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or("object without name")?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    api.patch(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// A dry-run pod created from the Deployment's template in `ns` (admission runs, nothing is
/// stored), owned by its ReplicaSet, with `extra_gates` already in its spec.
async fn dry_run_pod(
    client: &Client,
    ns: &str,
    template_of: &str,
    extra_gates: Value,
) -> AnyResult<Pod> {
    let rs = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client.clone(), template_of)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .next()
        .ok_or("no ReplicaSet")?;
    let mut spec = serde_json::to_value(
        rs.spec
            .and_then(|s| s.template)
            .and_then(|t| t.spec)
            .ok_or("ReplicaSet without a template")?,
    )?;
    spec["readinessGates"] = extra_gates;
    let pod: Pod = obj(json!({
        "metadata": {"generateName": "probe-", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.metadata.name,
            "uid": rs.metadata.uid, "controller": true,
        }]},
        "spec": spec,
    }));
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&dry_run, &pod)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_gate_policy_gates_governed_pods_without_the_webhook() -> TestResult {
    let env = TestEnv::start(Options {
        apiserver_args: vec![
            "--feature-gates=MutatingAdmissionPolicy=true".into(),
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true".into(),
        ],
        ..Options::default()
    })
    .await?;
    let client = env.client()?;
    install(&client)
        .await
        .map_err(|e| format!("installing the CRD: {e}"))?;
    // Served here: the API server lists the kind.
    let served = kube::discovery::group(&client, "admissionregistration.k8s.io")
        .await
        .map_err(|e| format!("discovery: {e}"))?;
    assert!(
        served
            .versioned_resources("v1beta1")
            .iter()
            .any(|(r, _)| r.kind == "MutatingAdmissionPolicy"),
        "kube-apiserver does not serve MutatingAdmissionPolicy at v1beta1 with the flags"
    );
    for object in readiness_gate_policy(CONTROLLER_NAMESPACE) {
        apply(&client, &object)
            .await
            .map_err(|e| format!("applying {}: {e}", object["kind"]))?;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let handle = controller::start(
        client.clone(),
        Settings {
            namespace: CONTROLLER_NAMESPACE.into(),
            identity: "e2e-map".into(),
            concurrency: 4,
            lease_duration: Duration::from_secs(15),
        },
        &mut registry,
    );
    let mut leading = handle.leading.clone();
    leading.wait_for(|l| *l).await?;

    let ns = env
        .namespace("map-gate")
        .await
        .map_err(|e| format!("ns: {e}"))?;
    let other = env.namespace("map-ungoverned").await?;
    create_policy(&client, &ns, json!({}))
        .await
        .map_err(|e| format!("policy: {e}"))?;
    await_governed(&client, &ns)
        .await
        .map_err(|e| format!("governed: {e}"))?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let mut deployment = common::hello_deployment("hello-old-version.yaml.injected", 0, false)?;
    deployment
        .annotations_mut()
        .insert(TARGETS_ANNOTATION.into(), TARGET.into());
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .map_err(|e| format!("deployment: {e}"))?;
    // The API server loads the policy asynchronously: probe with dry-run creations until it
    // gates (no webhook is registered: only the policy can).
    await_webhook_gates_pods_of(&client, &ns, &deployment)
        .await
        .map_err(|e| format!("probe: {e}"))?;

    // Pods gated by the policy are admitted by the controller (Ready) and upgraded in place.
    scale_hello(&client, &ns, 2).await?;
    await_deployment_ready(&deployments, "hello", 2).await?;
    await_phase(&deployments, "hello", TARGET, "Completed").await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    assert_eq!(pods.items.len(), 2);
    for pod in &pods.items {
        assert_eq!(gates(pod), 1, "{}: one gate", pod.name_any());
        assert_eq!(
            spec_image(pod, "istio-proxy").as_deref(),
            Some(NEW_PROXY),
            "{}: upgraded by the controller",
            pod.name_any()
        );
    }

    // Idempotent: a pod that has the gate (from the webhook, or its template) keeps exactly
    // one, and other gates are kept.
    let already = dry_run_pod(
        &client,
        &ns,
        &ns,
        json!([{"conditionType": "example.com/other"}, {"conditionType": READINESS_GATE}]),
    )
    .await?;
    assert_eq!(gates(&already), 1);
    let other_gate = dry_run_pod(
        &client,
        &ns,
        &ns,
        json!([{"conditionType": "example.com/other"}]),
    )
    .await?;
    let types: Vec<_> = other_gate
        .spec
        .and_then(|s| s.readiness_gates)
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.condition_type)
        .collect();
    assert_eq!(types, ["example.com/other", READINESS_GATE]);

    // Never outside governed namespaces (the same template, owned alike).
    let elsewhere = dry_run_pod(&client, &other, &ns, Value::Null).await?;
    assert_eq!(
        gates(&elsewhere),
        0,
        "a pod of an ungoverned namespace was gated"
    );

    handle.step_down().await;
    Ok(())
}
